//! PBX data for banners: voicemail counts and extension states, answered
//! from a cache so that a banner costs no AMI action in the common case.
//!
//! - An entry is reused for `pbx_ttl`; AMI events (`MessageWaiting`,
//!   `ExtensionStatus`) overwrite entries as they happen, so a cached banner
//!   is fresh without polling.
//! - Concurrent requests for the same mailbox share one action (the first
//!   starts it, the others wait for its result), so a burst for N users costs
//!   at most N actions.
//! - On (re)connect the extension table is loaded with one
//!   `ExtensionStateList`; a link loss, or events lost to a slow reader, drops
//!   everything learnt from that server, because events may have been missed.
//! - Failures are not cached: the next request asks again (and a server that
//!   is down answers at once, so asking again costs nothing).

use cgp_lookup::ami::{Ami, AmiError, MailboxCount, PbxEvent};
use cgp_runtime::sync;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

type Cell<T> = Arc<OnceCell<Result<T, AmiError>>>;

struct Entry<T> {
    at: Instant,
    cell: Cell<T>,
}

type Entries<K, T> = HashMap<(Arc<str>, K), Entry<T>>;

/// Cached values of one kind, keyed by (server, key).
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
        server: &Arc<str>,
        key: K,
        ttl: Duration,
        fetch: F,
    ) -> Result<T, AmiError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, AmiError>>,
    {
        let k = (server.clone(), key);
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

    fn put(&self, server: &Arc<str>, key: K, value: T) {
        let cell = Arc::new(OnceCell::new_with(Some(Ok(value))));
        self.lock().insert(
            (server.clone(), key),
            Entry {
                at: Instant::now(),
                cell,
            },
        );
    }

    fn forget_server(&self, server: &str) {
        self.lock().retain(|(s, _), _| &**s != server);
    }
}

/// The PBX side of the banner helper.
pub struct Pbx {
    ami: Ami,
    ttl: Duration,
    mailboxes: Table<String, MailboxCount>,
    /// (exten, context) → Asterisk extension status
    extensions: Table<(String, String), i32>,
    names: HashMap<String, Arc<str>>,
}

impl Pbx {
    /// Starts the AMI links and the task that applies their events.
    pub fn start(ami: Ami, ttl: Duration, server_names: &[String]) -> Arc<Pbx> {
        let events = ami.subscribe();
        let pbx = Arc::new(Pbx {
            ami,
            ttl,
            mailboxes: Table::new(),
            extensions: Table::new(),
            names: server_names
                .iter()
                .map(|n| (n.clone(), Arc::from(n.as_str())))
                .collect(),
        });
        tokio::spawn(apply_events(Arc::downgrade(&pbx), events));
        pbx
    }

    /// The server a user's `pbx` names, or the first one.
    fn server(&self, name: Option<&str>) -> Result<Arc<str>, AmiError> {
        let name = name
            .or(self.ami.default_server())
            .ok_or_else(|| AmiError::UnknownServer("(none configured)".into()))?;
        self.names
            .get(name)
            .cloned()
            .ok_or_else(|| AmiError::UnknownServer(name.into()))
    }

    pub async fn mailbox(
        &self,
        pbx: Option<&str>,
        mailbox: &str,
    ) -> Result<MailboxCount, AmiError> {
        let server = self.server(pbx)?;
        self.mailboxes
            .get(&server, mailbox.to_string(), self.ttl, || {
                self.ami.mailbox_count(&server, mailbox)
            })
            .await
    }

    pub async fn extension(
        &self,
        pbx: Option<&str>,
        exten: &str,
        context: &str,
    ) -> Result<i32, AmiError> {
        let server = self.server(pbx)?;
        let key = (exten.to_string(), context.to_string());
        self.extensions
            .get(&server, key, self.ttl, || async {
                self.ami
                    .extension_state(&server, exten, context)
                    .await
                    .map(|s| s.status)
            })
            .await
    }

    async fn load_extensions(&self, server: &Arc<str>) {
        match self.ami.extension_states(server).await {
            Ok(list) => {
                for s in list {
                    self.extensions.put(server, (s.exten, s.context), s.status);
                }
            }
            Err(e) => tracing::warn!(server = %server, error = %e, "ExtensionStateList failed"),
        }
    }
}

/// Applies PBX events to the cache for as long as the [`Pbx`] lives.
async fn apply_events(pbx: Weak<Pbx>, mut events: tokio::sync::broadcast::Receiver<PbxEvent>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = events.recv().await;
        let Some(pbx) = pbx.upgrade() else { return };
        match event {
            Ok(PbxEvent::Mailbox {
                server,
                mailbox,
                new,
                old,
            }) => pbx
                .mailboxes
                .put(&server, mailbox, MailboxCount { new, old }),
            Ok(PbxEvent::Extension {
                server,
                exten,
                context,
                status,
            }) => pbx.extensions.put(&server, (exten, context), status),
            Ok(PbxEvent::Resync { server }) => {
                pbx.mailboxes.forget_server(&server);
                pbx.extensions.forget_server(&server);
            }
            Ok(PbxEvent::Connected { server }) => {
                pbx.mailboxes.forget_server(&server);
                pbx.extensions.forget_server(&server);
                let p = pbx.clone();
                tokio::spawn(async move { p.load_extensions(&server).await });
            }
            Err(RecvError::Lagged(_)) => {
                for server in pbx.names.values() {
                    pbx.mailboxes.forget_server(server);
                    pbx.extensions.forget_server(server);
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}
