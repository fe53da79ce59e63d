//! A fake CloudPBX API written from the API document: `GET /cdr` (Bearer
//! key, `datestart`/`datestop`), `POST /sendSMS` (form fields `to`, `body`,
//! `test`) and the WebSocket `/ws/pbx_<name>?pbxkey=`, on a local port,
//! served by its own thread, with fault modes.
//!
//! The records start as the document's example (`testdata/cloudpbx/cdr.json`);
//! the day [`DAY`] in the records becomes the day the client asks for, so
//! that records are "today" for the client.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// The document's example record.
pub const CDR_FIXTURE: &str = include_str!("../../testdata/cloudpbx/cdr.json");
/// Every event of the document's examples (its `SIP\…` locations have the
/// backslash escaped, which the document's JSON lacks).
pub const EVENTS_FIXTURE: &str = include_str!("../../testdata/cloudpbx/events.json");
/// The day of the fixture's records; served as the day asked for.
pub const DAY: &str = "2021-12-15";

/// How `/cdr` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Ok,
    /// Answers after 5 s.
    Slow,
    /// `500 Action Error`.
    Error500,
    /// A JSON text cut in the middle.
    Malformed,
    /// 1 MiB of body.
    Huge,
}

#[derive(Clone, Debug)]
enum Push {
    Text(String),
    Drop,
}

struct Shared {
    name: String,
    key: String,
    mode: Mutex<Mode>,
    records: Mutex<Vec<serde_json::Value>>,
    cdr_calls: AtomicUsize,
    streams: AtomicUsize,
    push: broadcast::Sender<Push>,
    sms_mode: Mutex<Mode>,
    sms: Mutex<Vec<Vec<(String, String)>>>,
}

/// The fake; it serves until the test process ends.
pub struct FakeCloudPbx {
    shared: Arc<Shared>,
    base: String,
}

impl FakeCloudPbx {
    /// A fake for the exchange `name` with API key `key`.
    pub fn start(name: &str, key: &str) -> FakeCloudPbx {
        let shared = Arc::new(Shared {
            name: name.into(),
            key: key.into(),
            mode: Mutex::new(Mode::Ok),
            records: Mutex::new(serde_json::from_str(CDR_FIXTURE).unwrap()),
            cdr_calls: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            push: broadcast::channel(64).0,
            sms_mode: Mutex::new(Mode::Ok),
            sms: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/cdr", get(cdr))
            .route("/ws/{channel}", get(stream))
            .route("/sendSMS", post(send_sms))
            .with_state(shared.clone());
        let base = crate::serve::serve(app);
        FakeCloudPbx { shared, base }
    }

    /// `http://127.0.0.1:<port>/`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Adds a record of a call to `dst` at `time` (`HH:MM:SS`) of the day.
    pub fn add_record(&self, dst: &str, time: &str, disposition: &str) {
        self.add_raw_record(serde_json::json!({
            "calldate": format!("{DAY} {time}"), "clid": "", "src": "200", "dst": dst,
            "channel": "", "dstchannel": "", "lastapp": "Dial", "duration": 5, "billsec": 0,
            "disposition": disposition, "uniqueid": format!("{time}.1"), "cost": "", "zone": ""
        }));
    }

    pub fn add_raw_record(&self, record: serde_json::Value) {
        self.shared.records.lock().unwrap().push(record);
    }

    /// Sends one message carrying `events` on every open stream.
    pub fn send_events(&self, id: u32, events: serde_json::Value) {
        let channel = format!("pbx_{}", self.shared.name);
        let text = serde_json::json!({"id": id, "channel": channel, "text": events});
        self.send_text(&text.to_string());
    }

    /// Sends `text` as it is (broken JSON included) on every open stream.
    pub fn send_text(&self, text: &str) {
        let _ = self.shared.push.send(Push::Text(text.into()));
    }

    /// Ends every open stream mid-way, without a close frame.
    pub fn drop_streams(&self) {
        let _ = self.shared.push.send(Push::Drop);
    }

    /// How `/sendSMS` answers (`Slow`: after 5 s).
    pub fn set_sms_mode(&self, mode: Mode) {
        *self.shared.sms_mode.lock().unwrap() = mode;
    }

    /// The form fields of every `/sendSMS` request that carried the right
    /// key, in arrival order (recorded when it arrives, before any fault).
    pub fn sms(&self) -> Vec<Vec<(String, String)>> {
        self.shared.sms.lock().unwrap().clone()
    }

    /// `/cdr` requests that carried the right key.
    pub fn cdr_calls(&self) -> usize {
        self.shared.cdr_calls.load(Ordering::SeqCst)
    }

    /// Streams opened with the right channel and key.
    pub fn streams(&self) -> usize {
        self.shared.streams.load(Ordering::SeqCst)
    }
}

async fn cdr(
    State(f): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !f.authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    f.cdr_calls.fetch_add(1, Ordering::SeqCst);
    let (Some(start), Some(stop)) = (q.get("datestart"), q.get("datestop")) else {
        return (StatusCode::BAD_REQUEST, "Parameter is missing").into_response();
    };
    if start != stop {
        return (StatusCode::BAD_REQUEST, "one day is asked for").into_response();
    }
    let mode = *f.mode.lock().unwrap();
    if let Some(fault) = fault(mode, "[{\"calldate\": \"2021-").await {
        return fault;
    }
    let body = serde_json::to_string(&*f.records.lock().unwrap()).unwrap();
    body.replace(DAY, start).into_response()
}

impl Shared {
    /// The request carries `Authorization: Bearer <key>`.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let bearer = format!("Bearer {}", self.key);
        headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(bearer.as_str())
    }
}

/// The answer of a fault mode (`malformed`: a JSON text cut short), or
/// `None` to answer normally (after 5 s when `Slow`).
async fn fault(mode: Mode, malformed: &'static str) -> Option<Response> {
    match mode {
        Mode::Error500 => Some((StatusCode::INTERNAL_SERVER_ERROR, "Action Error").into_response()),
        Mode::Malformed => Some(malformed.into_response()),
        Mode::Huge => Some(format!("[{}]", " ".repeat(1 << 20)).into_response()),
        Mode::Slow => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            None
        }
        Mode::Ok => None,
    }
}

async fn send_sms(
    State(f): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    if !f.authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let n = {
        let mut sms = f.sms.lock().unwrap();
        sms.push(fields.clone());
        sms.len()
    };
    let field = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let to_ok = field("to").is_some_and(|t| t.len() == 9 && t.bytes().all(|b| b.is_ascii_digit()));
    let body_ok = field("body").is_some_and(|b| !b.is_empty() && b.chars().count() <= 1024);
    if !to_ok || !body_ok {
        return (StatusCode::BAD_REQUEST, "Parameter is missing").into_response();
    }
    let mode = *f.sms_mode.lock().unwrap();
    if let Some(fault) = fault(mode, "{\"responseId\": ").await {
        return fault;
    }
    serde_json::json!({
        "responseId": format!("34217560129632584{n:02}"),
        "responseStatus": "QUEUE",
        "responseErrorMessage": null
    })
    .to_string()
    .into_response()
}

async fn stream(
    State(f): State<Arc<Shared>>,
    Path(channel): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    if channel != format!("pbx_{}", f.name) || q.get("pbxkey") != Some(&f.key) {
        return StatusCode::FORBIDDEN.into_response();
    }
    f.streams.fetch_add(1, Ordering::SeqCst);
    let rx = f.push.subscribe();
    ws.on_upgrade(move |socket| serve_stream(socket, rx))
}

async fn serve_stream(mut socket: WebSocket, mut rx: broadcast::Receiver<Push>) {
    while let Ok(p) = rx.recv().await {
        match p {
            Push::Text(t) => {
                if socket.send(Message::Text(t.into())).await.is_err() {
                    return;
                }
            }
            Push::Drop => return,
        }
    }
}
