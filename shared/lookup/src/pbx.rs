//! One PBX interface for every helper: extension state, voicemail counts,
//! missed calls and the events that change them, whatever the PBX system.
//!
//! Two layers:
//!
//! - [`PbxBackend`]: what a PBX system implements (the Asterisk AMI client
//!   in [`crate::ami`] is the first). One back end may serve several PBXs,
//!   each known by the name users' `pbx` settings refer to.
//! - [`Pbx`]: what a helper talks to. It routes each question to the back
//!   end serving the named PBX and answers from a cache, so that a banner
//!   costs no PBX round trip in the common case:
//!   - an entry is reused for `ttl`; events overwrite entries as they happen,
//!     so a cached value is fresh without polling;
//!   - concurrent questions for the same key share one round trip (the first
//!     starts it, the others wait for its result);
//!   - failures are not cached: the next question asks again (and a PBX that
//!     is down answers at once, so asking again costs nothing).
//!
//! State is never guessed. A back end sends [`PbxEvent::Resync`] whenever it
//! may have missed events (link lost, a subscriber lagging) and
//! [`PbxEvent::Connected`] when it can answer again; on either the cache
//! forgets everything it learnt from that PBX, and on `Connected` it rebuilds
//! the extension table from one [`PbxBackend::extensions`] snapshot. Until
//! then a question goes to the PBX itself. What the cache holds was always
//! said by the PBX: an answer, the snapshot or an event.

use cgp_runtime::sync;
use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{OnceCell, broadcast};

/// Why a PBX question got no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PbxError {
    /// No PBX of that name is configured.
    #[error("unknown PBX {0:?}")]
    UnknownPbx(String),
    /// The PBX is not connected (down, or reconnecting).
    #[error("PBX {0} is not connected")]
    Down(String),
    /// No answer within the back end's bound.
    #[error("PBX {0} did not answer in time")]
    Timeout(String),
    /// The PBX answered with an error.
    #[error("PBX refused the request: {0}")]
    Refused(String),
    /// The answer could not be used (missing fields, broken list, lost link).
    #[error("PBX protocol error: {0}")]
    Protocol(String),
    /// The PBX system does not report this kind of value.
    #[error("PBX {pbx} does not report {what}")]
    Unsupported { pbx: String, what: &'static str },
    /// Two back ends claim the same PBX name.
    #[error("PBX name {0:?} is configured twice")]
    DuplicateName(String),
}

/// A voicemail box's message counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Voicemail {
    pub new: u32,
    pub old: u32,
}

/// Calls to an extension that nobody answered, counted from `since`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissedCalls {
    pub count: u32,
    pub since: SystemTime,
}

/// An extension: its number and the namespace it lives in (the Asterisk
/// dialplan context; back ends without namespaces ignore it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExtensionId {
    pub exten: String,
    pub context: String,
}

/// What a phone is doing, in terms every PBX system can be mapped to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtState {
    Idle,
    InUse,
    Busy,
    Unavailable,
    Ringing,
    InUseRinging,
    OnHold,
    InUseOnHold,
    /// The extension no longer exists on the PBX.
    Removed,
    /// The PBX itself does not know.
    Unknown,
}

impl ExtState {
    /// The state in words, as banners show it.
    pub fn words(self) -> &'static str {
        match self {
            ExtState::Idle => "idle",
            ExtState::InUse => "in use",
            ExtState::Busy => "busy",
            ExtState::Unavailable => "unavailable",
            ExtState::Ringing => "ringing",
            ExtState::InUseRinging => "in use and ringing",
            ExtState::OnHold => "on hold",
            ExtState::InUseOnHold => "in use and on hold",
            ExtState::Removed => "removed",
            ExtState::Unknown => "unknown",
        }
    }
}

/// What the PBXs report, tagged with the PBX's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PbxEvent {
    /// Logged in (again): the PBX answers; what was learnt before is stale.
    Connected { pbx: Arc<str> },
    /// Events may have been missed: forget everything learnt from this PBX.
    Resync { pbx: Arc<str> },
    /// A voicemail box's counts changed.
    Voicemail {
        pbx: Arc<str>,
        mailbox: String,
        counts: Voicemail,
    },
    /// An extension's state changed.
    Extension {
        pbx: Arc<str>,
        extension: ExtensionId,
        state: ExtState,
    },
    /// An extension's missed-call count changed.
    MissedCalls {
        pbx: Arc<str>,
        extension: ExtensionId,
        missed: MissedCalls,
    },
}

/// The future of one PBX question.
pub type PbxFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, PbxError>> + Send + 'a>>;

/// A PBX system. Every call is bounded by the back end (a PBX that is down
/// fails at once with [`PbxError::Down`], one that does not answer within
/// its bound with [`PbxError::Timeout`]); `pbx` is one of
/// [`PbxBackend::pbx_names`].
pub trait PbxBackend: Send + Sync + 'static {
    /// The PBXs this back end serves, in configuration order.
    fn pbx_names(&self) -> Vec<Arc<str>>;

    /// Events of all its PBXs from now on, including `Connected` and
    /// `Resync` as the module documentation describes.
    fn subscribe(&self) -> broadcast::Receiver<PbxEvent>;

    /// The counts of one voicemail box.
    fn voicemail<'a>(&'a self, pbx: &'a str, mailbox: &'a str) -> PbxFuture<'a, Voicemail>;

    /// The state of one extension.
    fn extension<'a>(&'a self, pbx: &'a str, extension: &'a ExtensionId)
    -> PbxFuture<'a, ExtState>;

    /// The state of every extension the PBX reports, read after each
    /// (re)connect to rebuild the cache.
    fn extensions<'a>(&'a self, pbx: &'a str) -> PbxFuture<'a, Vec<(ExtensionId, ExtState)>>;

    /// The key under which this system's events report `extension`:
    /// systems without namespaces drop the context, so that what a helper
    /// asks and what an event says meet in one cache entry.
    fn extension_key(&self, extension: &ExtensionId) -> ExtensionId {
        extension.clone()
    }

    /// Missed calls of one extension. Systems that do not count them (the
    /// Asterisk Manager Interface has no such action) keep this default.
    fn missed_calls<'a>(
        &'a self,
        pbx: &'a str,
        _extension: &'a ExtensionId,
    ) -> PbxFuture<'a, MissedCalls> {
        Box::pin(std::future::ready(Err(PbxError::Unsupported {
            pbx: pbx.to_string(),
            what: "missed calls",
        })))
    }
}

type Cell<T> = Arc<OnceCell<Result<T, PbxError>>>;

struct Entry<T> {
    at: Instant,
    cell: Cell<T>,
}

type Entries<K, T> = HashMap<(Arc<str>, K), Entry<T>>;

/// Cached values of one kind, keyed by (PBX, key).
struct Table<K, T> {
    map: Mutex<Entries<K, T>>,
}

impl<K: Eq + Hash + Clone, T: Clone> Table<K, T> {
    fn new() -> Self {
        Table {
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<K, T>> {
        sync::lock(&self.map)
    }

    /// The cached value, or the result of `fetch` shared by every caller
    /// that arrives while it runs.
    async fn get<F, Fut>(
        &self,
        pbx: &Arc<str>,
        key: K,
        ttl: Duration,
        fetch: F,
    ) -> Result<T, PbxError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, PbxError>>,
    {
        let k = (pbx.clone(), key);
        let cell = {
            let mut map = self.lock();
            match map.get(&k) {
                Some(e) if e.at.elapsed() < ttl => e.cell.clone(),
                _ => {
                    let cell: Cell<T> = Arc::new(OnceCell::new());
                    map.insert(
                        k.clone(),
                        Entry {
                            at: Instant::now(),
                            cell: cell.clone(),
                        },
                    );
                    cell
                }
            }
        };
        let result = cell.get_or_init(fetch).await.clone();
        if result.is_err() {
            let mut map = self.lock();
            if map.get(&k).is_some_and(|e| Arc::ptr_eq(&e.cell, &cell)) {
                map.remove(&k);
            }
        }
        result
    }

    fn entry(value: T) -> Entry<T> {
        Entry {
            at: Instant::now(),
            cell: Arc::new(OnceCell::new_with(Some(Ok(value)))),
        }
    }

    /// An event's value: newer than anything held.
    fn put(&self, pbx: &Arc<str>, key: K, value: T) {
        self.lock().insert((pbx.clone(), key), Self::entry(value));
    }

    /// A snapshot's value: older than an event or answer that arrived while
    /// the snapshot was read, so it only fills gaps.
    fn fill(&self, pbx: &Arc<str>, key: K, value: T) {
        if let MapEntry::Vacant(v) = self.lock().entry((pbx.clone(), key)) {
            v.insert(Self::entry(value));
        }
    }

    fn forget(&self, pbx: &str) {
        self.lock().retain(|(p, _), _| &**p != pbx);
    }
}

/// The PBXs of a helper behind one cache. Built with [`Pbx::start`].
pub struct Pbx {
    backends: Vec<Arc<dyn PbxBackend>>,
    /// PBX name → (the name shared by cache keys, index in `backends`).
    routes: HashMap<Arc<str>, (Arc<str>, usize)>,
    default: Option<Arc<str>>,
    ttl: Duration,
    voicemail: Table<String, Voicemail>,
    extensions: Table<ExtensionId, ExtState>,
    missed: Table<ExtensionId, MissedCalls>,
}

impl Pbx {
    /// Starts applying the back ends' events to a new cache whose entries
    /// live `ttl`; must run inside a tokio runtime. The first PBX of the
    /// first back end is the default for users that name none.
    pub fn start(backends: Vec<Arc<dyn PbxBackend>>, ttl: Duration) -> Result<Arc<Pbx>, PbxError> {
        let mut routes = HashMap::new();
        let mut default = None;
        for (i, b) in backends.iter().enumerate() {
            for name in b.pbx_names() {
                default.get_or_insert_with(|| name.clone());
                if routes.insert(name.clone(), (name.clone(), i)).is_some() {
                    return Err(PbxError::DuplicateName(name.to_string()));
                }
            }
        }
        let receivers: Vec<_> = backends.iter().map(|b| b.subscribe()).collect();
        let pbx = Arc::new(Pbx {
            backends,
            routes,
            default,
            ttl,
            voicemail: Table::new(),
            extensions: Table::new(),
            missed: Table::new(),
        });
        for (i, events) in receivers.into_iter().enumerate() {
            tokio::spawn(apply_events(Arc::downgrade(&pbx), i, events));
        }
        Ok(pbx)
    }

    /// The named PBX (the default one for `None`) and its back end.
    fn route(&self, pbx: Option<&str>) -> Result<(&Arc<str>, &dyn PbxBackend), PbxError> {
        let name = pbx
            .or(self.default.as_deref())
            .ok_or_else(|| PbxError::UnknownPbx("(none configured)".into()))?;
        let (name, i) = self
            .routes
            .get(name)
            .ok_or_else(|| PbxError::UnknownPbx(name.into()))?;
        Ok((name, &*self.backends[*i]))
    }

    /// `key` on the named PBX, from `table` or else from `ask`.
    async fn ask<'a, K, T>(
        &'a self,
        table: &Table<K, T>,
        pbx: Option<&str>,
        key: K,
        ask: impl FnOnce(&'a dyn PbxBackend, &'a str) -> PbxFuture<'a, T>,
    ) -> Result<T, PbxError>
    where
        K: Eq + Hash + Clone,
        T: Clone,
    {
        let (name, backend) = self.route(pbx)?;
        table.get(name, key, self.ttl, || ask(backend, name)).await
    }

    /// The counts of `mailbox` on the named PBX.
    pub async fn voicemail(&self, pbx: Option<&str>, mailbox: &str) -> Result<Voicemail, PbxError> {
        self.ask(&self.voicemail, pbx, mailbox.to_string(), |b, name| {
            b.voicemail(name, mailbox)
        })
        .await
    }

    /// The state of `extension` on the named PBX.
    pub async fn extension(
        &self,
        pbx: Option<&str>,
        extension: &ExtensionId,
    ) -> Result<ExtState, PbxError> {
        let (name, backend) = self.route(pbx)?;
        let key = backend.extension_key(extension);
        let ask = || backend.extension(name, &key);
        self.extensions.get(name, key.clone(), self.ttl, ask).await
    }

    /// The missed calls of `extension` on the named PBX.
    pub async fn missed_calls(
        &self,
        pbx: Option<&str>,
        extension: &ExtensionId,
    ) -> Result<MissedCalls, PbxError> {
        let (name, backend) = self.route(pbx)?;
        let key = backend.extension_key(extension);
        let ask = || backend.missed_calls(name, &key);
        self.missed.get(name, key.clone(), self.ttl, ask).await
    }

    fn forget(&self, pbx: &str) {
        self.voicemail.forget(pbx);
        self.extensions.forget(pbx);
        self.missed.forget(pbx);
    }

    /// Rebuilds the extension table of a PBX that (re)connected.
    async fn load_extensions(&self, backend: usize, pbx: Arc<str>) {
        match self.backends[backend].extensions(&pbx).await {
            Ok(list) => {
                for (extension, state) in list {
                    self.extensions.fill(&pbx, extension, state);
                }
            }
            Err(e) => tracing::warn!(pbx = %pbx, error = %e, "extension states not loaded"),
        }
    }

    /// The cache's own name for `pbx`, when it is one of `backend`'s.
    fn known(&self, backend: usize, pbx: &str) -> Option<Arc<str>> {
        self.routes
            .get(pbx)
            .filter(|(_, i)| *i == backend)
            .map(|(name, _)| name.clone())
    }
}

/// Applies one back end's events to the cache for as long as the [`Pbx`]
/// lives.
async fn apply_events(pbx: Weak<Pbx>, backend: usize, mut events: broadcast::Receiver<PbxEvent>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = events.recv().await;
        let Some(pbx) = pbx.upgrade() else { return };
        match event {
            Ok(PbxEvent::Voicemail {
                pbx: name,
                mailbox,
                counts,
            }) => pbx.voicemail.put(&name, mailbox, counts),
            Ok(PbxEvent::Extension {
                pbx: name,
                extension,
                state,
            }) => pbx.extensions.put(&name, extension, state),
            Ok(PbxEvent::MissedCalls {
                pbx: name,
                extension,
                missed,
            }) => pbx.missed.put(&name, extension, missed),
            Ok(PbxEvent::Resync { pbx: name }) => pbx.forget(&name),
            Ok(PbxEvent::Connected { pbx: name }) => {
                pbx.forget(&name);
                if let Some(name) = pbx.known(backend, &name) {
                    let p = pbx.clone();
                    tokio::spawn(async move { p.load_extensions(backend, name).await });
                }
            }
            // Events were lost: everything this back end told may be stale.
            Err(RecvError::Lagged(_)) => {
                for name in pbx.backends[backend].pbx_names() {
                    pbx.forget(&name);
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A PBX system that is not Asterisk: values set by the test, calls
    /// counted, events sent by the test.
    struct Scripted {
        names: Vec<Arc<str>>,
        states: Mutex<HashMap<String, ExtState>>,
        calls: AtomicUsize,
        events: broadcast::Sender<PbxEvent>,
    }

    impl Scripted {
        fn new(names: &[&str]) -> Arc<Scripted> {
            Arc::new(Scripted {
                names: names.iter().map(|n| Arc::from(*n)).collect(),
                states: Mutex::new(HashMap::new()),
                calls: AtomicUsize::new(0),
                events: broadcast::channel(16).0,
            })
        }

        fn set(&self, exten: &str, state: ExtState) {
            sync::lock(&self.states).insert(exten.into(), state);
        }

        fn send(&self, e: PbxEvent) {
            self.events.send(e).unwrap();
        }
    }

    impl PbxBackend for Scripted {
        fn pbx_names(&self) -> Vec<Arc<str>> {
            self.names.clone()
        }
        fn subscribe(&self) -> broadcast::Receiver<PbxEvent> {
            self.events.subscribe()
        }
        fn voicemail<'a>(&'a self, pbx: &'a str, _: &'a str) -> PbxFuture<'a, Voicemail> {
            Box::pin(std::future::ready(Err(PbxError::Down(pbx.into()))))
        }
        fn extension<'a>(&'a self, pbx: &'a str, e: &'a ExtensionId) -> PbxFuture<'a, ExtState> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let state = sync::lock(&self.states).get(&e.exten).copied();
            Box::pin(std::future::ready(
                state.ok_or_else(|| PbxError::Down(pbx.into())),
            ))
        }
        fn extensions<'a>(&'a self, _: &'a str) -> PbxFuture<'a, Vec<(ExtensionId, ExtState)>> {
            let all = sync::lock(&self.states)
                .iter()
                .map(|(k, v)| (ext(k), *v))
                .collect();
            Box::pin(std::future::ready(Ok(all)))
        }
    }

    fn ext(exten: &str) -> ExtensionId {
        ExtensionId {
            exten: exten.into(),
            context: String::new(),
        }
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn routes_by_name_and_refuses_a_name_twice() {
        let (a, b) = (Scripted::new(&["one", "two"]), Scripted::new(&["three"]));
        a.set("10", ExtState::Busy);
        b.set("10", ExtState::Idle);
        let backends: Vec<Arc<dyn PbxBackend>> = vec![a.clone(), b.clone()];
        let pbx = Pbx::start(backends, Duration::from_secs(60)).unwrap();
        assert_eq!(pbx.extension(None, &ext("10")).await, Ok(ExtState::Busy));
        assert_eq!(
            pbx.extension(Some("three"), &ext("10")).await,
            Ok(ExtState::Idle)
        );
        assert_eq!(
            pbx.extension(Some("four"), &ext("10")).await,
            Err(PbxError::UnknownPbx("four".into()))
        );
        assert!(matches!(
            pbx.missed_calls(None, &ext("10")).await,
            Err(PbxError::Unsupported { .. })
        ));
        let twice: Vec<Arc<dyn PbxBackend>> = vec![a, Scripted::new(&["one"])];
        assert!(matches!(
            Pbx::start(twice, Duration::from_secs(1)),
            Err(PbxError::DuplicateName(n)) if n == "one"
        ));
    }

    #[tokio::test]
    async fn events_refresh_resync_forgets_and_connect_rebuilds_without_guessing() {
        let s = Scripted::new(&["p"]);
        s.set("10", ExtState::Idle);
        let pbx = Pbx::start(vec![s.clone()], Duration::from_secs(60)).unwrap();
        let name: Arc<str> = Arc::from("p");
        assert_eq!(pbx.extension(None, &ext("10")).await, Ok(ExtState::Idle));
        assert_eq!(s.calls.load(Ordering::SeqCst), 1);
        // An event is newer than the cache: taken without asking.
        s.send(PbxEvent::Extension {
            pbx: name.clone(),
            extension: ext("10"),
            state: ExtState::Ringing,
        });
        settle().await;
        assert_eq!(pbx.extension(None, &ext("10")).await, Ok(ExtState::Ringing));
        assert_eq!(s.calls.load(Ordering::SeqCst), 1);
        // Events may have been missed: the cached value is not served, the
        // PBX is asked (and here it cannot answer).
        s.send(PbxEvent::Resync { pbx: name.clone() });
        sync::lock(&s.states).clear();
        settle().await;
        assert_eq!(
            pbx.extension(None, &ext("10")).await,
            Err(PbxError::Down("p".into()))
        );
        // Back: the table is rebuilt from the snapshot, not from memory.
        s.set("10", ExtState::OnHold);
        s.send(PbxEvent::Connected { pbx: name.clone() });
        settle().await;
        let calls = s.calls.load(Ordering::SeqCst);
        assert_eq!(pbx.extension(None, &ext("10")).await, Ok(ExtState::OnHold));
        assert_eq!(s.calls.load(Ordering::SeqCst), calls, "from the snapshot");
        // A snapshot never overwrites an event that came in first.
        pbx.extensions.put(&name, ext("10"), ExtState::InUse);
        pbx.extensions.fill(&name, ext("10"), ExtState::Idle);
        assert_eq!(pbx.extension(None, &ext("10")).await, Ok(ExtState::InUse));
    }
}
