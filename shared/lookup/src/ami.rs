//! Asterisk Manager Interface (AMI) back end of the PBX interface
//! ([`crate::pbx`]): several PBXs, each kept connected by a supervisor, with
//! typed results and an event stream.
//!
//! The wire work (framing, ActionID correlation, MD5-challenge and plain
//! login, EventList gathering, Ping keep-alive, per-action timeouts) is done
//! by the `asterisk-rs-ami` crate; `docs/banner.md` records why it was
//! chosen. This module adds what the helpers need on top of it:
//!
//! - one supervisor per server that connects, and reconnects with
//!   exponential backoff and jitter, with a new client for every login (the
//!   crate gives up on a PBX that is down at start, and its own reconnect is
//!   invisible to the caches, see [`supervise`]);
//! - `Response: Error` turned into [`PbxError::Refused`];
//! - a hard bound on every call, so a PBX that stops answering costs a caller
//!   at most `action_timeout`, and a PBX that is down costs nothing: calls
//!   fail at once with [`PbxError::Down`];
//! - one event stream over all servers, with [`PbxEvent::Resync`] whenever
//!   events may have been missed (disconnect, lagging subscriber), so caches
//!   fed by events know to forget what they hold.

use crate::pbx::{ExtState, ExtensionId, PbxBackend, PbxError, PbxEvent, PbxFuture, Voicemail};
use asterisk_rs_ami::action::{
    ExtensionStateAction, ExtensionStateListAction, MailboxCountAction, PingAction,
};
use asterisk_rs_ami::{AmiClient, AmiEvent, AmiResponse};
use asterisk_rs_core::config::{ConnectionState, ReconnectPolicy};
use asterisk_rs_core::event::EventReceive;
use cgp_runtime::config::Secret;
use cgp_runtime::sync;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// The `[ami]` section of a helper's configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AmiConfig {
    /// The PBXs; the first is the default for users that name none.
    pub servers: Vec<AmiServer>,
    /// Bound on one action, response included.
    #[serde(with = "humantime_serde")]
    pub action_timeout: Duration,
    /// Bound on connecting and logging in.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Period of the keep-alive Ping that detects dead connections.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// First and longest pause between reconnection attempts (jittered).
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
}

impl Default for AmiConfig {
    fn default() -> Self {
        AmiConfig {
            servers: Vec::new(),
            action_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(20),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

/// One Asterisk server (`manager.conf` user).
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AmiServer {
    /// The name users' `pbx` settings refer to.
    pub name: String,
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub username: String,
    pub secret: Secret,
    /// Refuse to log in when the server offers no MD5 challenge, instead of
    /// falling back to a plain-text `Secret`.
    #[serde(default)]
    pub require_md5: bool,
}

fn default_port() -> u16 {
    5038
}

/// Keeps the secret out of logs and error texts.
impl std::fmt::Debug for AmiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmiServer")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("secret", &"<hidden>")
            .field("require_md5", &self.require_md5)
            .finish()
    }
}

impl AmiConfig {
    /// Cross-key checks, as `(dotted key, message)`.
    pub fn check(&self) -> Result<(), (String, String)> {
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.servers.iter().enumerate() {
            if s.name.is_empty() || !seen.insert(s.name.as_str()) {
                return Err((
                    format!("ami.servers[{i}].name"),
                    "must be a non-empty name used once".into(),
                ));
            }
        }
        for (key, d) in [
            ("ami.action_timeout", self.action_timeout),
            ("ami.connect_timeout", self.connect_timeout),
            ("ami.ping_interval", self.ping_interval),
            ("ami.reconnect_min", self.reconnect_min),
        ] {
            if d.is_zero() {
                return Err((key.into(), "must be more than 0s".into()));
            }
        }
        if self.reconnect_max < self.reconnect_min {
            return Err((
                "ami.reconnect_max".into(),
                "must not be shorter than ami.reconnect_min".into(),
            ));
        }
        Ok(())
    }
}

/// One extension's state, as `ExtensionState`/`ExtensionStateList` report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtensionState {
    pub exten: String,
    pub context: String,
    pub status: i32,
}

impl ExtState {
    /// Asterisk's extension-state bit set (`ExtensionStatus` `Status`).
    pub fn from_asterisk(status: i32) -> ExtState {
        match status {
            -2 => ExtState::Removed,
            0 => ExtState::Idle,
            1 => ExtState::InUse,
            2 => ExtState::Busy,
            4 => ExtState::Unavailable,
            8 => ExtState::Ringing,
            9 => ExtState::InUseRinging,
            16 => ExtState::OnHold,
            17 => ExtState::InUseOnHold,
            _ => ExtState::Unknown,
        }
    }
}

struct Link {
    name: Arc<str>,
    client: RwLock<Option<AmiClient>>,
}

impl Link {
    /// The client, when logged in right now.
    fn connected(&self) -> Option<AmiClient> {
        let guard = sync::read(&self.client);
        guard
            .as_ref()
            .filter(|c| c.connection_state() == ConnectionState::Connected)
            .cloned()
    }

    fn set(&self, client: Option<AmiClient>) {
        *sync::write(&self.client) = client;
    }
}

/// Connections to every configured PBX. Dropping it stops the supervisors.
pub struct Ami {
    links: BTreeMap<String, Arc<Link>>,
    /// Server names in configuration order; the first is the default.
    names: Vec<Arc<str>>,
    action_timeout: Duration,
    events: broadcast::Sender<PbxEvent>,
    /// Subscribed before the supervisors start, for the first subscriber:
    /// a link can come up (and send `Connected`) before anyone else could
    /// subscribe, and a missed `Connected` means states never loaded.
    first: std::sync::Mutex<Option<broadcast::Receiver<PbxEvent>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// How often a supervisor checks its client's connection state.
const STATE_POLL: Duration = Duration::from_millis(100);

impl Ami {
    /// Starts one supervisor per server; must run inside a tokio runtime.
    /// Returns at once: servers connect in the background.
    pub fn start(config: &AmiConfig) -> Ami {
        let (events, first) = broadcast::channel(4096);
        let mut links = BTreeMap::new();
        let mut tasks = Vec::new();
        let mut names = Vec::new();
        for server in &config.servers {
            let link = Arc::new(Link {
                name: Arc::from(server.name.as_str()),
                client: RwLock::new(None),
            });
            links.insert(server.name.clone(), link.clone());
            names.push(link.name.clone());
            tasks.push(tokio::spawn(supervise(
                link,
                server.clone(),
                config.clone(),
                events.clone(),
            )));
        }
        Ami {
            links,
            names,
            action_timeout: config.action_timeout,
            events,
            first: std::sync::Mutex::new(Some(first)),
            tasks,
        }
    }

    /// The server for users that name none.
    pub fn default_server(&self) -> Option<&str> {
        self.names.first().map(|n| &**n)
    }

    /// Events of all servers: for the first caller from the start, for
    /// later ones from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<PbxEvent> {
        cgp_runtime::sync::lock(&self.first)
            .take()
            .unwrap_or_else(|| self.events.subscribe())
    }

    /// Whether the server is logged in right now.
    pub fn is_up(&self, server: &str) -> bool {
        self.links
            .get(server)
            .is_some_and(|l| l.connected().is_some())
    }

    /// `Ping` → `Ping: Pong`.
    pub async fn ping(&self, server: &str) -> Result<(), PbxError> {
        self.call(server, |c| async move { c.send_action(&PingAction).await })
            .await
            .map(|_| ())
    }

    /// `MailboxCount` for `mailbox@context`.
    pub async fn mailbox_count(&self, server: &str, mailbox: &str) -> Result<Voicemail, PbxError> {
        let action = MailboxCountAction {
            mailbox: mailbox.to_string(),
        };
        let r = self
            .call(server, |c| async move { c.send_action(&action).await })
            .await?;
        Ok(Voicemail {
            new: field(&r, "NewMessages")?,
            old: field(&r, "OldMessages")?,
        })
    }

    /// `ExtensionState` for one extension.
    pub async fn extension_state(
        &self,
        server: &str,
        exten: &str,
        context: &str,
    ) -> Result<ExtensionState, PbxError> {
        let action = ExtensionStateAction {
            exten: exten.to_string(),
            context: context.to_string(),
        };
        let r = self
            .call(server, |c| async move { c.send_action(&action).await })
            .await?;
        Ok(ExtensionState {
            exten: exten.to_string(),
            context: context.to_string(),
            status: field(&r, "Status")?,
        })
    }

    /// `ExtensionStateList`: every hinted extension, gathered from the
    /// EventList into one result.
    pub async fn extension_states(&self, server: &str) -> Result<Vec<ExtensionState>, PbxError> {
        let list = self
            .call_list(server, |c| async move {
                c.send_collecting(&ExtensionStateListAction).await
            })
            .await?;
        Ok(list
            .events
            .into_iter()
            .filter_map(|e| match e {
                AmiEvent::ExtensionStatus {
                    exten,
                    context,
                    status,
                    ..
                } => Some(ExtensionState {
                    exten,
                    context,
                    status: i32::try_from(status).unwrap_or(-1),
                }),
                _ => None,
            })
            .collect())
    }

    async fn call<F, Fut>(&self, server: &str, f: F) -> Result<AmiResponse, PbxError>
    where
        F: FnOnce(AmiClient) -> Fut,
        Fut: Future<Output = Result<AmiResponse, asterisk_rs_ami::AmiError>>,
    {
        let r = self.bounded(server, f).await?;
        if r.success {
            Ok(r)
        } else {
            Err(PbxError::Refused(r.message.unwrap_or(r.response_type)))
        }
    }

    async fn call_list<F, Fut>(
        &self,
        server: &str,
        f: F,
    ) -> Result<asterisk_rs_ami::EventListResponse, PbxError>
    where
        F: FnOnce(AmiClient) -> Fut,
        Fut: Future<Output = Result<asterisk_rs_ami::EventListResponse, asterisk_rs_ami::AmiError>>,
    {
        let r = self.bounded(server, f).await?;
        if r.response.success {
            Ok(r)
        } else {
            let resp = r.response;
            Err(PbxError::Refused(
                resp.message.unwrap_or(resp.response_type),
            ))
        }
    }

    /// Runs one call on a connected client within `action_timeout`.
    async fn bounded<T, F, Fut>(&self, server: &str, f: F) -> Result<T, PbxError>
    where
        F: FnOnce(AmiClient) -> Fut,
        Fut: Future<Output = Result<T, asterisk_rs_ami::AmiError>>,
    {
        let link = self
            .links
            .get(server)
            .ok_or_else(|| PbxError::UnknownPbx(server.to_string()))?;
        let client = link
            .connected()
            .ok_or_else(|| PbxError::Down(server.to_string()))?;
        match tokio::time::timeout(self.action_timeout, f(client)).await {
            Err(_) => Err(PbxError::Timeout(server.to_string())),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(
                asterisk_rs_ami::AmiError::Timeout(_)
                | asterisk_rs_ami::AmiError::OutcomeUnknown { .. },
            )) => Err(PbxError::Timeout(server.to_string())),
            Ok(Err(e)) => Err(PbxError::Protocol(e.to_string())),
        }
    }
}

impl Drop for Ami {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn field<T: std::str::FromStr>(r: &AmiResponse, key: &str) -> Result<T, PbxError> {
    r.get(key)
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| PbxError::Protocol(format!("response without a valid {key}")))
}

/// Keeps one server connected for ever: connects (retrying with backoff and
/// jitter while it is down), forwards its events, and reports each session:
/// `Connected` when it starts, `Resync` when it ends.
///
/// The crate's own reconnect is turned off: it logs in again behind the
/// client, and a reconnect quicker than one look at the client's state
/// would go unnoticed, leaving caches with values from before the gap
/// (events of the gap are lost). Here every login is a new client, so
/// every session is announced and its state rebuilt.
async fn supervise(
    link: Arc<Link>,
    server: AmiServer,
    config: AmiConfig,
    events: broadcast::Sender<PbxEvent>,
) {
    let policy = ReconnectPolicy::exponential(config.reconnect_min, config.reconnect_max);
    let mut attempt = 0u32;
    loop {
        let built = AmiClient::builder()
            .host(&server.host)
            .port(server.port)
            .credentials(&server.username, server.secret.expose())
            .require_challenge(server.require_md5)
            .timeout(config.action_timeout)
            .connect_timeout(config.connect_timeout)
            .ping_interval(config.ping_interval)
            .reconnect(ReconnectPolicy::none())
            .build()
            .await;
        match built {
            Ok(client) => {
                attempt = 0;
                tracing::info!(server = %link.name, "AMI connected");
                follow(&link, &client, &events).await;
                link.set(None);
                tracing::warn!(server = %link.name, "AMI connection lost; reconnecting");
            }
            Err(e) => {
                // The crate's errors never contain the secret.
                tracing::warn!(server = %link.name, error = %e, "AMI connection failed");
            }
        }
        let _ = events.send(PbxEvent::Resync {
            pbx: link.name.clone(),
        });
        tokio::time::sleep(policy.delay_for_attempt(attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

/// Serves one logged-in client until its connection ends.
async fn follow(link: &Link, client: &AmiClient, events: &broadcast::Sender<PbxEvent>) {
    let mut sub = client.subscribe();
    link.set(Some(client.clone()));
    let name = link.name.clone();
    let _ = events.send(PbxEvent::Connected { pbx: name.clone() });
    let mut tick = tokio::time::interval(STATE_POLL);
    loop {
        tokio::select! {
            got = sub.recv() => match got {
                EventReceive::Event(e) => {
                    if let Some(ev) = translate(&name, e) {
                        let _ = events.send(ev);
                    }
                }
                EventReceive::Lagged(n) => {
                    tracing::warn!(server = %name, lost = n, "AMI events lost");
                    let _ = events.send(PbxEvent::Resync { pbx: name.clone() });
                }
                EventReceive::Closed => return,
            },
            _ = tick.tick() => {
                if client.connection_state() != ConnectionState::Connected {
                    return;
                }
            }
        }
    }
}

fn translate(pbx: &Arc<str>, e: AmiEvent) -> Option<PbxEvent> {
    match e {
        AmiEvent::MessageWaiting {
            mailbox,
            new_messages,
            old_messages,
            ..
        } => Some(PbxEvent::Voicemail {
            pbx: pbx.clone(),
            mailbox,
            counts: Voicemail {
                new: new_messages,
                old: old_messages,
            },
        }),
        // Events that belong to an action's EventList are that action's.
        AmiEvent::ExtensionStatus { .. } if e.action_id().is_some() => None,
        AmiEvent::ExtensionStatus {
            exten,
            context,
            status,
            ..
        } => Some(PbxEvent::Extension {
            pbx: pbx.clone(),
            extension: ExtensionId { exten, context },
            state: ExtState::from_asterisk(i32::try_from(status).unwrap_or(-1)),
        }),
        _ => None,
    }
}

/// The AMI servers as PBXs of the PBX interface.
impl PbxBackend for Ami {
    fn pbx_names(&self) -> Vec<Arc<str>> {
        self.names.clone()
    }

    fn subscribe(&self) -> broadcast::Receiver<PbxEvent> {
        Ami::subscribe(self)
    }

    fn voicemail<'a>(&'a self, pbx: &'a str, mailbox: &'a str) -> PbxFuture<'a, Voicemail> {
        Box::pin(self.mailbox_count(pbx, mailbox))
    }

    fn extension<'a>(
        &'a self,
        pbx: &'a str,
        extension: &'a ExtensionId,
    ) -> PbxFuture<'a, ExtState> {
        Box::pin(async move {
            let s = self
                .extension_state(pbx, &extension.exten, &extension.context)
                .await?;
            Ok(ExtState::from_asterisk(s.status))
        })
    }

    fn extensions<'a>(&'a self, pbx: &'a str) -> PbxFuture<'a, Vec<(ExtensionId, ExtState)>> {
        Box::pin(async move {
            Ok(self
                .extension_states(pbx)
                .await?
                .into_iter()
                .map(|s| {
                    let state = ExtState::from_asterisk(s.status);
                    (
                        ExtensionId {
                            exten: s.exten,
                            context: s.context,
                        },
                        state,
                    )
                })
                .collect())
        })
    }
}
