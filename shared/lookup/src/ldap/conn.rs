//! The connection pools behind [`super::Directory`].
//!
//! Service connections are shared: each pool slot holds one connection and
//! every search on it runs on a clone of the ldap3 handle (ldap3 multiplexes
//! operations on one connection). Bind connections are checked out
//! exclusively, one bind at a time each, because a bind changes the identity
//! of the whole connection.

use super::{BindOutcome, Entry, LdapConfig, LdapError, Scope, ppolicy};
use cgp_runtime::sync;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapResult, SearchEntry};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;
use tokio::time::timeout;

/// The first wait before retrying a failed server; it doubles per failure.
const MIN_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Bound as the service account, for searches.
    Service,
    /// Left anonymous, for user binds.
    UserBind,
}

struct Conn {
    ldap: Ldap,
    id: u64,
    server: usize,
    opened: Instant,
    last_used: Instant,
    driver: AbortHandle,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The driver task would otherwise outlive a connection to a hung
        // server until TCP gives up.
        self.driver.abort();
    }
}

#[derive(Default)]
struct ServerState {
    failures: u32,
    retry_at: Option<Instant>,
}

pub struct Pools {
    uris: Vec<String>,
    service_bind: Option<(String, String)>,
    connect_timeout: Duration,
    op_timeout: Duration,
    starttls: bool,
    tls_verify: bool,
    tls_config: Option<Arc<rustls::ClientConfig>>,
    idle_probe: Duration,
    max_backoff: Duration,
    failback_after: Duration,
    servers: Mutex<Vec<ServerState>>,
    service: Vec<tokio::sync::Mutex<Option<Conn>>>,
    next_service: AtomicUsize,
    binders: Semaphore,
    idle_binders: Mutex<Vec<Conn>>,
    next_id: AtomicU64,
}

impl Pools {
    pub fn new(cfg: &LdapConfig) -> Result<Pools, String> {
        let password = cgp_runtime::config::either(
            cfg.bind_password.as_ref(),
            cfg.bind_password_file.as_ref(),
        )
        .map_err(|e| format!("bind_password_file {e}"))?;
        let service_bind = match (&cfg.bind_dn, password) {
            (Some(dn), Some(pw)) => Some((dn.clone(), pw.expose().to_string())),
            (Some(_), None) => return Err("bind_dn needs a bind password".into()),
            (None, _) => None,
        };
        let tls_config = match (&cfg.ca_file, cfg.tls_verify) {
            (Some(path), true) => Some(tls_config_with_ca(path)?),
            _ => None,
        };
        Ok(Pools {
            uris: cfg.uris.clone(),
            service_bind,
            connect_timeout: cfg.connect_timeout,
            op_timeout: cfg.op_timeout,
            starttls: cfg.starttls,
            tls_verify: cfg.tls_verify,
            tls_config,
            idle_probe: cfg.idle_probe,
            max_backoff: cfg.max_backoff,
            failback_after: cfg.failback_after,
            servers: Mutex::new(cfg.uris.iter().map(|_| ServerState::default()).collect()),
            service: (0..cfg.pool_size.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next_service: AtomicUsize::new(0),
            binders: Semaphore::new(cfg.bind_pool_size.max(1)),
            idle_binders: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
        })
    }

    pub fn uris(&self) -> &[String] {
        &self.uris
    }

    pub async fn probe(&self, purpose: Purpose) -> Result<(), LdapError> {
        self.connect(purpose).await.map(drop)
    }

    pub async fn search(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
    ) -> Result<Vec<Entry>, LdapError> {
        // One retry on a fresh connection when the first one turns out dead
        // (the server restarted since it was last used), but not after a
        // timeout: that would double the wait on a hung server.
        let mut retried = false;
        loop {
            let (slot, id, server, mut ldap) = self.service_conn().await?;
            // The operation timeout is `run`'s alone (one timer per
            // operation): a connection that passes it is dropped, so ldap3
            // need not forget the message itself.
            let result = self
                .run(async {
                    let (entries, _) = ldap
                        .search(base, scope.into(), filter, attrs)
                        .await?
                        .success()?;
                    Ok(entries)
                })
                .await;
            match result {
                Ok(entries) => {
                    // An answer proves the server alive: end its backoff.
                    self.server_ok(server);
                    return Ok(entries
                        .into_iter()
                        .map(|e| {
                            let e = SearchEntry::construct(e);
                            Entry::new(e.dn, e.attrs)
                        })
                        .collect());
                }
                Err(Failure::Answer(e)) => return Err(e),
                Err(Failure::Broken(e, timed_out)) => {
                    self.drop_service(slot, id).await;
                    self.server_failed(server);
                    if timed_out || retried {
                        return Err(e);
                    }
                    retried = true;
                }
            }
        }
    }

    pub async fn user_bind(&self, dn: &str, password: &str) -> Result<BindOutcome, LdapError> {
        let _permit = self
            .binders
            .acquire()
            .await
            .map_err(|_| LdapError::Other("bind pool closed".into()))?;
        let idle = sync::lock(&self.idle_binders).pop();
        let mut conn = match idle {
            Some(c) => match self.revalidate(c).await {
                Some(c) => c,
                None => self.connect(Purpose::UserBind).await?,
            },
            None => self.connect(Purpose::UserBind).await?,
        };
        let mut ldap = conn.ldap.clone();
        // `run`'s timeout only, as for searches: a connection whose bind
        // timed out is not put back.
        let result = self
            .run(async {
                ldap.with_controls(vec![ppolicy::request()])
                    .simple_bind(dn, password)
                    .await
            })
            .await;
        match result {
            Ok(res) => {
                self.server_ok(conn.server);
                let outcome = bind_outcome(&res);
                conn.last_used = Instant::now();
                sync::lock(&self.idle_binders).push(conn);
                outcome
            }
            Err(Failure::Answer(e)) => Err(e),
            Err(Failure::Broken(e, _)) => {
                self.server_failed(conn.server);
                Err(e)
            }
        }
    }

    /// Runs one operation under the operation timeout and sorts its errors.
    async fn run<T>(
        &self,
        op: impl Future<Output = Result<T, ldap3::LdapError>>,
    ) -> Result<T, Failure> {
        match timeout(self.op_timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(e)),
            Err(_) => Err(Failure::Broken(
                LdapError::Unavailable(format!("no answer within {:?}", self.op_timeout)),
                true,
            )),
        }
    }

    /// A handle on a live service connection, opening one if needed.
    async fn service_conn(&self) -> Result<(usize, u64, usize, Ldap), LdapError> {
        let slot = self.next_service.fetch_add(1, Ordering::Relaxed) % self.service.len();
        // Holding the slot while connecting makes concurrent requests on it
        // wait for one connection instead of each opening their own.
        let mut guard = self.service[slot].lock().await;
        if let Some(c) = guard.take() {
            *guard = self.revalidate(c).await;
        }
        if guard.is_none() {
            *guard = Some(self.connect(Purpose::Service).await?);
        }
        let conn = guard.as_mut().expect("set above");
        conn.last_used = Instant::now();
        Ok((slot, conn.id, conn.server, conn.ldap.clone()))
    }

    async fn drop_service(&self, slot: usize, id: u64) {
        let mut guard = self.service[slot].lock().await;
        if guard.as_ref().is_some_and(|c| c.id == id) {
            *guard = None;
        }
    }

    /// Keeps a pooled connection only if it is open, due no fail-back, and
    /// (after a long idle time) answers a WhoAmI probe.
    async fn revalidate(&self, mut conn: Conn) -> Option<Conn> {
        if conn.ldap.is_closed() {
            return None;
        }
        if conn.server != 0
            && conn.opened.elapsed() >= self.failback_after
            && !self.backing_off(0, Instant::now())
        {
            tracing::debug!(uri = %self.uris[conn.server], "dropping a fail-over connection to retry the first server");
            return None;
        }
        if conn.last_used.elapsed() >= self.idle_probe {
            let mut ldap = conn.ldap.clone();
            let op = self.op_timeout;
            let probe = self
                .run(async {
                    ldap.with_timeout(op)
                        .extended(ldap3::exop::WhoAmI)
                        .await?
                        .success()
                })
                .await;
            if let Err(e) = probe {
                tracing::info!(uri = %self.uris[conn.server], error = ?e, "idle LDAP connection failed its probe");
                return None;
            }
            conn.last_used = Instant::now();
        }
        Some(conn)
    }

    fn backing_off(&self, server: usize, now: Instant) -> bool {
        sync::lock(&self.servers)[server]
            .retry_at
            .is_some_and(|t| t > now)
    }

    fn server_failed(&self, server: usize) {
        let mut servers = sync::lock(&self.servers);
        let s = &mut servers[server];
        s.failures = s.failures.saturating_add(1);
        let wait = MIN_BACKOFF
            .saturating_mul(1u32 << (s.failures - 1).min(16))
            .min(self.max_backoff);
        s.retry_at = Some(Instant::now() + wait);
    }

    fn server_ok(&self, server: usize) {
        let mut servers = sync::lock(&self.servers);
        if servers[server].failures != 0 {
            servers[server] = ServerState::default();
        }
    }

    /// Opens a connection to the first server that is not backing off.
    async fn connect(&self, purpose: Purpose) -> Result<Conn, LdapError> {
        let mut last_error = None;
        for server in 0..self.uris.len() {
            if self.backing_off(server, Instant::now()) {
                continue;
            }
            match self.connect_to(server, purpose).await {
                Ok(conn) => {
                    if server != 0 {
                        tracing::info!(uri = %self.uris[server], "using a fail-over LDAP server");
                    }
                    self.server_ok(server);
                    return Ok(conn);
                }
                Err(e) => {
                    tracing::warn!(uri = %self.uris[server], error = %e, "LDAP connect failed");
                    self.server_failed(server);
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            LdapError::Unavailable("every LDAP server failed recently; waiting to retry".into())
        }))
    }

    async fn connect_to(&self, server: usize, purpose: Purpose) -> Result<Conn, LdapError> {
        let uri = &self.uris[server];
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.connect_timeout)
            .set_starttls(self.starttls && uri.starts_with("ldap://"))
            .set_no_tls_verify(!self.tls_verify);
        if let Some(cfg) = &self.tls_config {
            settings = settings.set_config(cfg.clone());
        }
        let bind = match purpose {
            Purpose::Service => self.service_bind.as_ref(),
            Purpose::UserBind => None,
        };
        let op = self.op_timeout;
        let mut driver = None;
        let attempt = async {
            let (conn, mut ldap) = LdapConnAsync::with_settings(settings, uri).await?;
            let uri_for_log = uri.clone();
            driver = Some(
                tokio::spawn(async move {
                    if let Err(e) = conn.drive().await {
                        tracing::debug!(uri = %uri_for_log, error = %e, "LDAP connection ended");
                    }
                })
                .abort_handle(),
            );
            if let Some((dn, pw)) = bind {
                ldap.with_timeout(op).simple_bind(dn, pw).await?.success()?;
            }
            Ok::<_, ldap3::LdapError>(ldap)
        };
        let result = timeout(self.connect_timeout, attempt).await;
        let abort = |d: &Option<AbortHandle>| {
            if let Some(d) = d {
                d.abort();
            }
        };
        match result {
            Ok(Ok(ldap)) => {
                let now = Instant::now();
                Ok(Conn {
                    ldap,
                    id: self.next_id.fetch_add(1, Ordering::Relaxed),
                    server,
                    opened: now,
                    last_used: now,
                    driver: driver.expect("set once connected"),
                })
            }
            Ok(Err(e)) => {
                abort(&driver);
                Err(match classify(e) {
                    Failure::Broken(e, _) => e,
                    Failure::Answer(LdapError::Other(s)) if bind.is_some() => {
                        LdapError::Other(format!("service bind refused: {s}"))
                    }
                    Failure::Answer(e) => e,
                })
            }
            Err(_) => {
                abort(&driver);
                Err(LdapError::Unavailable(format!(
                    "no connection within {:?}",
                    self.connect_timeout
                )))
            }
        }
    }
}

/// An error that says something about the connection (drop it, count the
/// server as failed; the flag tells a timeout) or only about the request.
#[derive(Debug)]
enum Failure {
    Broken(LdapError, bool),
    Answer(LdapError),
}

/// LDAP result codes that mean "try later": busy(51), unavailable(52),
/// other(80, which OpenLDAP uses for back-end trouble).
fn is_temporary(rc: u32) -> bool {
    matches!(rc, 51 | 52 | 80)
}

fn classify(e: ldap3::LdapError) -> Failure {
    use ldap3::LdapError as E;
    match e {
        E::LdapResult { result } if is_temporary(result.rc) => Failure::Broken(
            LdapError::Unavailable(format!("server answered {}", describe(&result))),
            false,
        ),
        E::LdapResult { result } => Failure::Answer(LdapError::Other(describe(&result))),
        E::Timeout { .. } => Failure::Broken(LdapError::Unavailable("timed out".into()), true),
        E::FilterParsing => Failure::Answer(LdapError::Other("invalid search filter".into())),
        E::UrlParsing { .. } | E::UnknownScheme(_) | E::EmptyUnixPath | E::PortInUnixPath => {
            Failure::Answer(LdapError::Other(e.to_string()))
        }
        // I/O, TLS, closed channels, premature end of stream.
        other => Failure::Broken(LdapError::Unavailable(other.to_string()), false),
    }
}

fn describe(r: &LdapResult) -> String {
    if r.text.is_empty() {
        format!("result code {}", r.rc)
    } else {
        format!("result code {} ({})", r.rc, r.text)
    }
}

/// The verdict of a user bind from its result code and controls.
fn bind_outcome(res: &LdapResult) -> Result<BindOutcome, LdapError> {
    let policy = res
        .ctrls
        .iter()
        .filter(|c| c.1.ctype == ppolicy::OID)
        .find_map(|c| c.1.val.as_deref().and_then(ppolicy::response_error))
        .and_then(ppolicy::outcome_of_error);
    match res.rc {
        0 => Ok(match policy {
            Some(BindOutcome::MustChange) => BindOutcome::MustChange,
            _ => BindOutcome::Ok,
        }),
        49 => Ok(policy
            .or_else(|| ppolicy::outcome_of_ad_text(&res.text))
            .unwrap_or(BindOutcome::InvalidCredentials)),
        // unwillingToPerform: disabled accounts on several servers.
        53 => Ok(ppolicy::outcome_of_ad_text(&res.text).unwrap_or(BindOutcome::Disabled)),
        rc if is_temporary(rc) => Err(LdapError::Unavailable(describe(res))),
        _ => Err(LdapError::Other(describe(res))),
    }
}

pub(crate) fn tls_config_with_ca(
    path: &std::path::Path,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("ca_file {}: no certificates", path.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
