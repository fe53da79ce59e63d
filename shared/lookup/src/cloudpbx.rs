//! CloudPBX back end of the PBX interface ([`crate::pbx`]): missed calls per
//! extension and extension state of one hosted CloudPBX exchange.
//!
//! The API has two halves, and this client uses both:
//!
//! - REST (`GET /cdr?datestart&datestop`, Bearer API key): the call records
//!   of the day. Missed calls are counted from them, never from events: a
//!   record whose `dst` is the extension and whose `disposition` is
//!   `NO ANSWER` or `BUSY` is one missed call.
//! - WebSocket (`/ws/pbx_<name>?pbxkey=<key>`): a stream of JSON messages,
//!   each carrying one or more events. `subscriber` and `extstatus` give an
//!   extension's state (the document's state values are Asterisk's device
//!   states, so [`ExtState::from_asterisk`] maps them); an extension that
//!   stops ringing makes the client read the records again, since that is
//!   when a missed call appears in them. Other event types are ignored.
//!
//! One supervisor keeps the stream open: it connects (trying every base URL
//! in turn, with exponential backoff between rounds), reads the records, and
//! only then reports [`PbxEvent::Connected`]. While it is not connected every
//! question fails at once with [`PbxError::Down`]; when the stream ends it
//! reports [`PbxEvent::Resync`] and forgets every state: the API has no list
//! of extension states, so after a reconnect an extension's state is
//! [`ExtState::Unknown`] until the PBX reports it again.

use crate::http::{self, BodyError, endpoint};
use crate::pbx::{
    ExtState, ExtensionId, MissedCalls, PbxBackend, PbxError, PbxEvent, PbxFuture, Voicemail,
};
use asterisk_rs_core::config::ReconnectPolicy;
use cgp_runtime::config::Secret;
use cgp_runtime::sync;
use futures_util::StreamExt;
use jiff::tz::TimeZone;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use url::Url;

pub mod sms;

/// One `[[cloudpbx]]` table of a helper's configuration.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CloudPbxConfig {
    /// The exchange's name: the `pbx_<name>` channel of the stream, the
    /// prefix of its peer names, and the name users' `pbx` settings use.
    pub name: String,
    /// API hosts, tried in this order (the first that answers is kept).
    pub base_urls: Vec<Url>,
    /// The API key, sent as `Authorization: Bearer` and as `pbxkey`.
    pub api_key: Secret,
    /// Time zone of the exchange's clock (`calldate`, the day the records
    /// are read for); unset: the system's.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Bound on one REST call, body included, and on opening the stream.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest REST body or stream message taken; larger ones are an error.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// How often the records are read again although no ringing ended
    /// (a new day starts a new count).
    #[serde(default = "default_cdr_refresh", with = "humantime_serde")]
    pub cdr_refresh: Duration,
    /// First and longest pause between reconnection rounds.
    #[serde(default = "default_reconnect_min", with = "humantime_serde")]
    pub reconnect_min: Duration,
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_max_response_bytes() -> usize {
    4 << 20
}
fn default_cdr_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_reconnect_min() -> Duration {
    Duration::from_millis(500)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}

/// Keeps the API key out of logs and error texts.
impl std::fmt::Debug for CloudPbxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudPbxConfig")
            .field("name", &self.name)
            .field("base_urls", &self.base_urls)
            .field("api_key", &"<hidden>")
            .field("timezone", &self.timezone)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl CloudPbxConfig {
    /// Checks of one table, as `(dotted key, message)`; `at` is the table's
    /// key (`cloudpbx[0]`).
    pub fn check(&self, at: &str) -> Result<(), (String, String)> {
        let key = |k: &str| format!("{at}.{k}");
        if self.name.is_empty() {
            return Err((key("name"), "must not be empty".into()));
        }
        check_base_urls(&self.base_urls, at)?;
        if self.api_key.is_empty() {
            return Err((key("api_key"), "must not be empty".into()));
        }
        self.time_zone().map_err(|e| (key("timezone"), e))?;
        for (k, d) in [
            ("timeout", self.timeout),
            ("cdr_refresh", self.cdr_refresh),
            ("reconnect_min", self.reconnect_min),
        ] {
            if d.is_zero() {
                return Err((key(k), "must be more than 0s".into()));
            }
        }
        if self.reconnect_max < self.reconnect_min {
            return Err((
                key("reconnect_max"),
                "must not be shorter than reconnect_min".into(),
            ));
        }
        if self.max_response_bytes == 0 {
            return Err((key("max_response_bytes"), "must be more than 0".into()));
        }
        Ok(())
    }

    fn time_zone(&self) -> Result<TimeZone, String> {
        match &self.timezone {
            None => Ok(TimeZone::system()),
            Some(name) => TimeZone::get(name).map_err(|e| format!("unknown time zone: {e}")),
        }
    }
}

/// Checks `base_urls` of the table at `at`: at least one, each an
/// http(s) URL that can take a path.
fn check_base_urls(urls: &[Url], at: &str) -> Result<(), (String, String)> {
    if urls.is_empty() {
        return Err((format!("{at}.base_urls"), "needs at least one URL".into()));
    }
    for (i, u) in urls.iter().enumerate() {
        if !matches!(u.scheme(), "http" | "https") || u.cannot_be_a_base() {
            return Err((
                format!("{at}.base_urls[{i}]"),
                "must be an http:// or https:// URL".into(),
            ));
        }
    }
    Ok(())
}

/// The event stream's URL on `base`: `ws(s)://host/ws/pbx_<name>?pbxkey=<key>`.
pub fn stream_url(base: &Url, name: &str, key: &str) -> Url {
    let mut url = endpoint(base, &["ws", &format!("pbx_{name}")], &[("pbxkey", key)]);
    let scheme = if base.scheme() == "https" {
        "wss"
    } else {
        "ws"
    };
    // Only fails for a scheme change across special/non-special kinds,
    // which http→ws and https→wss are not.
    let _ = url.set_scheme(scheme);
    url
}

/// One call record, with the fields the count uses.
#[derive(Clone, Debug, Deserialize)]
pub struct CallRecord {
    pub calldate: String,
    #[serde(default)]
    pub src: String,
    #[serde(default)]
    pub dst: String,
    #[serde(default)]
    pub disposition: String,
    #[serde(default)]
    pub uniqueid: String,
}

impl CallRecord {
    fn missed(&self) -> bool {
        matches!(self.disposition.as_str(), "NO ANSWER" | "BUSY")
    }
}

/// What one stream message said about extensions.
#[derive(Debug, Default, PartialEq)]
struct Update {
    states: Vec<(String, ExtState)>,
    /// Event types that are not about extensions, or not known at all.
    ignored: usize,
}

/// A number sent as a JSON number or as a string holding one.
fn int(v: &serde_json::Value) -> Option<i32> {
    match v {
        serde_json::Value::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Reads one stream message: `{"id":…,"channel":"pbx_<name>","text":…}`
/// where `text` holds the events, as one object with an event per key, a
/// list of such objects, or such JSON in a string.
fn parse_message(name: &str, text: &str) -> Result<Update, String> {
    let msg: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut body = msg.get("text").cloned().ok_or("message without text")?;
    if let serde_json::Value::String(s) = &body {
        body = serde_json::from_str(s).map_err(|e| format!("text: {e}"))?;
    }
    let objects = match body {
        serde_json::Value::Array(list) => list,
        one => vec![one],
    };
    let prefix = format!("{name}-");
    let mut update = Update::default();
    for object in objects {
        let serde_json::Value::Object(events) = object else {
            update.ignored += 1;
            continue;
        };
        for (kind, event) in events {
            let found = match kind.as_str() {
                "subscriber" => event
                    .get("peer")
                    .and_then(|p| p.as_str()?.strip_prefix(&prefix))
                    .zip(event.get("statusValue").and_then(int)),
                // The document's example says `status`, its text `statusValue`.
                "extstatus" => event.get("exten").and_then(|e| e.as_str()).zip(
                    event
                        .get("status")
                        .or_else(|| event.get("statusValue"))
                        .and_then(int),
                ),
                _ => None,
            };
            match found {
                Some((exten, status)) => update
                    .states
                    .push((exten.to_string(), ExtState::from_asterisk(status))),
                None => update.ignored += 1,
            }
        }
    }
    Ok(update)
}

/// What the client knows while connected.
struct Live {
    states: HashMap<String, ExtState>,
    /// `None` while the records could not be read again.
    missed: Option<Counts>,
}

#[derive(Clone, PartialEq)]
struct Counts {
    /// Start of the day the records are of.
    day: SystemTime,
    per_extension: HashMap<String, MissedCalls>,
}

impl Counts {
    fn of(&self, exten: &str) -> MissedCalls {
        self.per_extension
            .get(exten)
            .copied()
            .unwrap_or(MissedCalls {
                count: 0,
                since: self.day,
            })
    }
}

/// The REST side: HTTP client, base URLs and the one that answered last.
struct Rest {
    http: reqwest::Client,
    config: CloudPbxConfig,
    zone: TimeZone,
    preferred: Mutex<usize>,
}

impl Rest {
    /// `GET <base>/<segments>?<query>` on the first base URL that answers,
    /// starting with the one that answered last; the body is cut at
    /// `max_response_bytes`.
    async fn get(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Vec<u8>, PbxError> {
        let bases = &self.config.base_urls;
        let first = *sync::lock(&self.preferred);
        let mut last = PbxError::Down(self.config.name.clone());
        for i in (0..bases.len()).map(|k| (first + k) % bases.len()) {
            let url = endpoint(&bases[i], segments, query);
            match self.get_one(url).await {
                Ok(body) => {
                    *sync::lock(&self.preferred) = i;
                    return Ok(body);
                }
                // The key or the request is wrong: another host says the same.
                Err(e @ PbxError::Refused(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(pbx = %self.config.name, host = %host(&bases[i]), error = %e, "CloudPBX request failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn get_one(&self, url: Url) -> Result<Vec<u8>, PbxError> {
        let c = &self.config;
        let req = self.http.get(url).bearer_auth(c.api_key.expose());
        exchange(req, &c.name, c.max_response_bytes)
            .await
            .map_err(|f| f.error)
    }

    /// Missed calls of the exchange's current day, per extension.
    async fn missed_today(&self) -> Result<Counts, PbxError> {
        let now = jiff::Zoned::now().with_time_zone(self.zone.clone());
        let today = now.date().to_string();
        let day = now
            .start_of_day()
            .map_err(|e| PbxError::Protocol(e.to_string()))?
            .timestamp();
        let body = self
            .get(&["cdr"], &[("datestart", &today), ("datestop", &today)])
            .await?;
        let records: Vec<CallRecord> =
            serde_json::from_slice(&body).map_err(|e| PbxError::Protocol(format!("cdr: {e}")))?;
        let mut per_extension: HashMap<String, MissedCalls> = HashMap::new();
        for r in records.iter().filter(|r| r.missed()) {
            let Ok(at) = jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", r.calldate.trim())
                .and_then(|t| t.to_zoned(self.zone.clone()))
                .map(|z| z.timestamp())
            else {
                return Err(PbxError::Protocol(format!(
                    "cdr: calldate {:?} is not YYYY-MM-DD HH:MM:SS",
                    r.calldate
                )));
            };
            // The host was asked for this day only; anything else is not counted.
            if at < day {
                continue;
            }
            let since = SystemTime::from(at);
            let m = per_extension
                .entry(r.dst.clone())
                .or_insert(MissedCalls { count: 0, since });
            m.count += 1;
            m.since = m.since.min(since);
        }
        Ok(Counts {
            day: SystemTime::from(day),
            per_extension,
        })
    }
}

/// Why one HTTP exchange failed, and whether the request surely never
/// reached the host (so that another host may be asked without doing the
/// same thing twice).
struct Failed {
    error: PbxError,
    unsent: bool,
}

/// Sends `req` (with its key) and reads the body up to `limit` bytes.
/// `name` names the exchange in errors.
async fn exchange(
    req: reqwest::RequestBuilder,
    name: &str,
    limit: usize,
) -> Result<Vec<u8>, Failed> {
    let resp = req.send().await.map_err(|e| Failed {
        unsent: e.is_connect(),
        error: http_error(name, e),
    })?;
    let status = resp.status();
    let failed = |error| Failed {
        error,
        unsent: false,
    };
    if status.is_server_error() {
        let e = PbxError::Down(format!("{name} (HTTP {})", status.as_u16()));
        return Err(failed(e));
    }
    if !status.is_success() {
        return Err(failed(PbxError::Refused(format!(
            "HTTP {}",
            status.as_u16()
        ))));
    }
    http::read_body(resp, limit).await.map_err(|e| {
        failed(match e {
            BodyError::Transport(e) => http_error(name, e),
            e @ BodyError::TooLarge(_) => PbxError::Protocol(e.to_string()),
        })
    })
}

/// A transport error in words, without the URL (it may hold the key).
fn http_error(name: &str, e: reqwest::Error) -> PbxError {
    if e.is_timeout() {
        PbxError::Timeout(name.to_string())
    } else {
        PbxError::Down(format!("{name} ({})", e.without_url()))
    }
}

/// The host of a base URL, for logs.
fn host(url: &Url) -> String {
    url.host_str().unwrap_or("?").to_string()
}

/// A CloudPBX exchange. Dropping it stops the supervisor.
pub struct CloudPbx {
    name: Arc<str>,
    live: Arc<RwLock<Option<Live>>>,
    events: broadcast::Sender<PbxEvent>,
    /// Subscribed before the supervisor starts (see `Ami::subscribe`).
    first: Mutex<Option<broadcast::Receiver<PbxEvent>>>,
    task: JoinHandle<()>,
}

impl Drop for CloudPbx {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CloudPbx {
    /// Starts the supervisor; must run inside a tokio runtime, and `config`
    /// must have passed [`CloudPbxConfig::check`]. Returns at once.
    pub fn start(config: &CloudPbxConfig) -> Result<CloudPbx, PbxError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()
            .map_err(|e| PbxError::Protocol(e.to_string()))?;
        let zone = config.time_zone().map_err(PbxError::Protocol)?;
        let rest = Arc::new(Rest {
            http,
            config: config.clone(),
            zone,
            preferred: Mutex::new(0),
        });
        let (events, first) = broadcast::channel(4096);
        let live = Arc::new(RwLock::new(None));
        let name: Arc<str> = Arc::from(config.name.as_str());
        let task = tokio::spawn(supervise(name.clone(), rest, live.clone(), events.clone()));
        Ok(CloudPbx {
            name,
            live,
            events,
            first: Mutex::new(Some(first)),
            task,
        })
    }

    /// Whether the stream is open and the records are read.
    pub fn is_up(&self) -> bool {
        sync::read(&self.live).is_some()
    }

    /// `f` of what is known, or `Down` while not connected.
    fn known<T>(
        &self,
        pbx: &str,
        f: impl FnOnce(&Live) -> Result<T, PbxError>,
    ) -> Result<T, PbxError> {
        if pbx != &*self.name {
            return Err(PbxError::UnknownPbx(pbx.to_string()));
        }
        match &*sync::read(&self.live) {
            Some(live) => f(live),
            None => Err(PbxError::Down(pbx.to_string())),
        }
    }
}

impl PbxBackend for CloudPbx {
    fn pbx_names(&self) -> Vec<Arc<str>> {
        vec![self.name.clone()]
    }

    fn subscribe(&self) -> broadcast::Receiver<PbxEvent> {
        sync::lock(&self.first)
            .take()
            .unwrap_or_else(|| self.events.subscribe())
    }

    fn voicemail<'a>(&'a self, pbx: &'a str, _: &'a str) -> PbxFuture<'a, Voicemail> {
        Box::pin(std::future::ready(Err(PbxError::Unsupported {
            pbx: pbx.to_string(),
            what: "voicemail counts",
        })))
    }

    fn extension<'a>(&'a self, pbx: &'a str, e: &'a ExtensionId) -> PbxFuture<'a, ExtState> {
        let r = self.known(pbx, |l| {
            Ok(l.states.get(&e.exten).copied().unwrap_or(ExtState::Unknown))
        });
        Box::pin(std::future::ready(r))
    }

    fn extensions<'a>(&'a self, pbx: &'a str) -> PbxFuture<'a, Vec<(ExtensionId, ExtState)>> {
        let r = self.known(pbx, |l| {
            Ok(l.states
                .iter()
                .map(|(exten, s)| (extension_id(exten), *s))
                .collect())
        });
        Box::pin(std::future::ready(r))
    }

    /// CloudPBX has no dialplan contexts.
    fn extension_key(&self, extension: &ExtensionId) -> ExtensionId {
        extension_id(&extension.exten)
    }

    fn missed_calls<'a>(&'a self, pbx: &'a str, e: &'a ExtensionId) -> PbxFuture<'a, MissedCalls> {
        let r = self.known(pbx, |l| match &l.missed {
            Some(c) => Ok(c.of(&e.exten)),
            None => Err(PbxError::Down(format!("{pbx} (call records unavailable)"))),
        });
        Box::pin(std::future::ready(r))
    }
}

/// CloudPBX has no dialplan contexts.
fn extension_id(exten: &str) -> ExtensionId {
    ExtensionId {
        exten: exten.to_string(),
        context: String::new(),
    }
}

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the stream on the first base URL that accepts it.
async fn open(rest: &Rest) -> Result<Stream, String> {
    let c = &rest.config;
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(c.max_response_bytes))
        .max_frame_size(Some(c.max_response_bytes));
    let mut errors = Vec::new();
    for base in &c.base_urls {
        let url = stream_url(base, &c.name, c.api_key.expose());
        let connect =
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(ws_config), false);
        match tokio::time::timeout(c.timeout, connect).await {
            Ok(Ok((stream, _))) => return Ok(stream),
            // tungstenite's errors name neither the URL nor the key.
            Ok(Err(e)) => errors.push(format!("{}: {e}", host(base))),
            Err(_) => errors.push(format!("{}: no answer in {:?}", host(base), c.timeout)),
        }
    }
    Err(errors.join("; "))
}

/// Keeps the stream open for ever, announcing each session (`Connected`
/// once the records are read, `Resync` when it ends).
async fn supervise(
    name: Arc<str>,
    rest: Arc<Rest>,
    live: Arc<RwLock<Option<Live>>>,
    events: broadcast::Sender<PbxEvent>,
) {
    let c = &rest.config;
    let policy = ReconnectPolicy::exponential(c.reconnect_min, c.reconnect_max);
    let mut attempt = 0u32;
    loop {
        let started = Instant::now();
        match open(&rest).await {
            Err(e) => tracing::warn!(pbx = %name, error = %e, "CloudPBX stream not opened"),
            Ok(stream) => match rest.missed_today().await {
                Err(e) => tracing::warn!(pbx = %name, error = %e, "CloudPBX call records not read"),
                Ok(counts) => {
                    *sync::write(&live) = Some(Live {
                        states: HashMap::new(),
                        missed: Some(counts),
                    });
                    tracing::info!(pbx = %name, "CloudPBX connected");
                    let _ = events.send(PbxEvent::Connected { pbx: name.clone() });
                    let why = follow(&name, &rest, &live, &events, stream).await;
                    tracing::warn!(pbx = %name, reason = %why, "CloudPBX stream lost; reconnecting");
                }
            },
        }
        *sync::write(&live) = None;
        let _ = events.send(PbxEvent::Resync { pbx: name.clone() });
        // A session that lasted is not a failure in a row.
        if started.elapsed() > c.reconnect_max {
            attempt = 0;
        }
        tokio::time::sleep(policy.delay_for_attempt(attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

/// How long after a ringing ends the records are read: the exchange writes
/// the record when the call is over, which may be a moment later.
const RECORD_DELAY: Duration = Duration::from_millis(500);

/// Applies one session's events until the stream ends; returns why it did.
async fn follow(
    name: &Arc<str>,
    rest: &Rest,
    live: &RwLock<Option<Live>>,
    events: &broadcast::Sender<PbxEvent>,
    mut stream: Stream,
) -> String {
    let far = || tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    let mut refresh = tokio::time::interval(rest.config.cdr_refresh);
    refresh.reset();
    let mut reread = far();
    loop {
        tokio::select! {
            msg = stream.next() => {
                let text = match msg {
                    None => return "closed".into(),
                    Some(Err(e)) => return e.to_string(),
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) => return "closed by the server".into(),
                    Some(Ok(_)) => continue,
                };
                let update = match parse_message(name, &text) {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::warn!(pbx = %name, error = %e, "CloudPBX message not understood");
                        continue;
                    }
                };
                if update.ignored > 0 {
                    tracing::debug!(pbx = %name, events = update.ignored, "CloudPBX events ignored");
                }
                let mut guard = sync::write(live);
                let Some(l) = guard.as_mut() else { return "stopped".into() };
                for (exten, state) in update.states {
                    tracing::debug!(pbx = %name, exten = %exten, state = state.words(), "CloudPBX extension state");
                    let before = l.states.insert(exten.clone(), state);
                    if before == Some(ExtState::Ringing) && state != ExtState::Ringing {
                        reread = tokio::time::Instant::now() + RECORD_DELAY;
                    }
                    let _ = events.send(PbxEvent::Extension {
                        pbx: name.clone(),
                        extension: extension_id(&exten),
                        state,
                    });
                }
            }
            _ = tokio::time::sleep_until(reread) => {
                reread = far();
                reload(name, rest, live, events).await;
            }
            _ = refresh.tick() => reload(name, rest, live, events).await,
        }
    }
}

/// Reads the records again and reports the counts that changed; when they
/// cannot be read, missed calls are unavailable (never the old counts).
async fn reload(
    name: &Arc<str>,
    rest: &Rest,
    live: &RwLock<Option<Live>>,
    events: &broadcast::Sender<PbxEvent>,
) {
    let got = rest.missed_today().await;
    let mut guard = sync::write(live);
    let Some(l) = guard.as_mut() else { return };
    match got {
        Ok(new) => {
            let old = l.missed.take();
            let mut extens: Vec<&String> = new.per_extension.keys().collect();
            if let Some(old) = &old {
                extens.extend(old.per_extension.keys());
            }
            for exten in extens {
                let now = new.of(exten);
                if old.as_ref().map(|o| o.of(exten)) != Some(now) {
                    let _ = events.send(PbxEvent::MissedCalls {
                        pbx: name.clone(),
                        extension: extension_id(exten),
                        missed: now,
                    });
                }
            }
            // A new day resets extensions with no record yet too.
            let day_changed = old.as_ref().is_some_and(|o| o.day != new.day);
            l.missed = Some(new);
            drop(guard);
            if old.is_none() || day_changed {
                let _ = events.send(PbxEvent::Resync { pbx: name.clone() });
            }
        }
        Err(e) => {
            tracing::warn!(pbx = %name, error = %e, "CloudPBX call records not read; missed calls unavailable");
            l.missed = None;
            drop(guard);
            let _ = events.send(PbxEvent::Resync { pbx: name.clone() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_keys_are_encoded_not_spliced() {
        let base: Url = "https://api.example/v1/".parse().unwrap();
        let u = stream_url(&base, "a b/../x?y", "k&e=y#");
        assert_eq!(
            u.as_str(),
            "wss://api.example/v1/ws/pbx_a%20b%2F..%2Fx%3Fy?pbxkey=k%26e%3Dy%23"
        );
        let u = endpoint(&base, &["cdr"], &[("datestart", "2021-10-01&x=1")]);
        assert_eq!(
            u.as_str(),
            "https://api.example/v1/cdr?datestart=2021-10-01%26x%3D1"
        );
    }

    #[test]
    fn messages_give_extension_states_and_skip_other_events() {
        let m = r#"{"id":386,"channel":"pbx_Moja","text":{"subscriber":{"peer":"Moja-101","statusValue":8},"queue":{"peer":"K1","calls":"1"}}}"#;
        let u = parse_message("Moja", m).unwrap();
        assert_eq!(u.states, vec![("101".into(), ExtState::Ringing)]);
        assert_eq!(u.ignored, 1);
        let m = r#"{"id":1,"text":"[{\"extstatus\":{\"exten\":\"130\",\"status\":4}},{\"whatever\":{}}]"}"#;
        let u = parse_message("Moja", m).unwrap();
        assert_eq!(u.states, vec![("130".into(), ExtState::Unavailable)]);
        assert_eq!(u.ignored, 1);
        // Another exchange's peer is not ours.
        let m = r#"{"text":{"subscriber":{"peer":"Other-101","statusValue":"0"}}}"#;
        assert_eq!(parse_message("Moja", m).unwrap().states, vec![]);
        assert!(parse_message("Moja", "{not json").is_err());
        assert!(parse_message("Moja", r#"{"id":1}"#).is_err());
    }
}
