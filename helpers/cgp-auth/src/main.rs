//! `cgp-auth`: External authenticator for CommuniGate Pro (VRFY, SASL,
//! READPLAIN, NEW) with a static or LDAP back end, a verdict cache and
//! throttling in sled, and account provisioning through the CGP CLI.

use cgp_lookup::cgp_cli::{CliClient, CliError};
use cgp_lookup::directory::password::{self, NewScheme};
use cgp_lookup::directory::{Account, Directory, DirectoryError, Verdict};
use cgp_lookup::store::Backend;
use cgp_lookup::store::remote::RedisStore;
use cgp_runtime::metrics::{self, Event};
use cgp_runtime::{Ctx, Helper, HelperInfo, run};
use cgp_wire::{Reply, Request};
use clap::Parser;
use cli::Cli;
use config::AuthConfig;
use profile::Profiles;
use provision::{NotReady, Outcome};
use state::{Cached, State};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use wire::Vrfy;

mod cli;
mod config;
mod profile;
mod provision;
mod state;
mod wire;

/// Time kept back from the deadline for the back end when a throttling
/// delay would eat into it.
const DEADLINE_MARGIN: Duration = Duration::from_secs(2);
const SWEEP_EVERY: Duration = Duration::from_secs(60);

struct Auth {
    config: Arc<AuthConfig>,
    dir: Directory,
    state: Arc<State>,
    /// The cache generation this configuration writes under.
    generation: u64,
    cli: Option<Arc<CliClient>>,
    profiles: Arc<Profiles>,
}

/// Who tried to log in, for the throttling that follows the verdict.
#[derive(Clone, Copy)]
struct Login<'a> {
    address: &'a str,
    ip: Option<std::net::IpAddr>,
    fp: &'a state::Fingerprint,
}

const INVALID: &str = "invalid credentials";
const UNAVAILABLE: &str = "directory unavailable";

fn usage(text: &str) -> Reply {
    Reply::error(text)
}

impl Auth {
    fn refusal(&self, v: Verdict) -> Reply {
        if self.config.detailed_errors {
            Reply::error(v.reason())
        } else {
            Reply::error(INVALID)
        }
    }

    async fn vrfy(&self, ctx: &Ctx, req: &Request) -> Reply {
        let Vrfy {
            account,
            password,
            ip,
        } = match Vrfy::parse(&req.rest) {
            Ok(v) => v,
            Err(e) => return usage(e),
        };
        let address = account.address();
        let cfg = &self.config;
        let fp = self.state.fingerprint(address, &password);
        let info = |text: &str| ctx.info(text);
        let login = Login {
            address,
            ip,
            fp: &fp,
        };
        let owed = self.state.delay(&info, &cfg.throttle, address, ip).await;
        let delay = owed.delay;
        if !delay.is_zero() {
            metrics::count(Event::Throttled);
            let budget = ctx.remaining().saturating_sub(DEADLINE_MARGIN);
            tracing::debug!(account = %address, ?ip, ?delay, "throttled");
            tokio::time::sleep(delay.min(budget)).await;
        }
        if let Some(hit) = self.state.cached(&cfg.cache, address, &fp, Duration::ZERO) {
            metrics::count(Event::CacheHit);
            return self.finish(&info, &owed, login, hit.into(), "cache").await;
        }
        // Boxed: the back end's futures (LDAP operations, pooled
        // connections) are large, and the runtime moves the whole request
        // future into its task; a cache hit should not pay for copying them.
        match Box::pin(self.dir.verify(&account, &password)).await {
            Ok(v) => {
                match v {
                    Verdict::Ok => {
                        self.state
                            .remember(self.generation, &cfg.cache, address, &fp, Cached::Ok)
                    }
                    Verdict::Invalid => self.state.remember(
                        self.generation,
                        &cfg.cache,
                        address,
                        &fp,
                        Cached::Invalid,
                    ),
                    _ => {}
                }
                self.finish(&info, &owed, login, v, "directory").await
            }
            Err(e) => {
                let stale = (!cfg.cache.stale_window.is_zero())
                    .then(|| {
                        self.state
                            .cached(&cfg.cache, address, &fp, cfg.cache.stale_window)
                    })
                    .flatten();
                match stale {
                    Some(hit) => {
                        metrics::count(Event::BackendError);
                        metrics::count(Event::CacheHit);
                        tracing::warn!(account = %address, error = %e, "directory failed; answered from the stale cache");
                        self.finish(&info, &owed, login, hit.into(), "stale cache")
                            .await
                    }
                    None => {
                        tracing::warn!(account = %address, ?ip, error = %e, "VRFY failed");
                        Reply::failure(directory_failure(&e))
                    }
                }
            }
        }
    }

    async fn finish(
        &self,
        info: &(dyn Fn(&str) + Sync),
        owed: &state::Owed,
        login: Login<'_>,
        v: Verdict,
        source: &str,
    ) -> Reply {
        let Login { address, ip, fp } = login;
        if v == Verdict::Ok {
            // One line per login at info wrote 160 MB in one benchmark:
            // successes are debug, refusals info.
            tracing::debug!(account = %address, ?ip, verdict = v.reason(), source, "VRFY");
            self.state.succeeded(info, address, owed).await;
            Reply::ok()
        } else {
            tracing::info!(account = %address, ?ip, verdict = v.reason(), source, "VRFY refused");
            self.state
                .failed(info, &self.config.throttle, address, ip, fp)
                .await;
            self.refusal(v)
        }
    }

    async fn readplain(&self, req: &Request) -> Reply {
        if !self.config.readplain {
            return Reply::failure("not supported");
        }
        let account = match wire::single_account(&req.rest, "expected: READPLAIN user@domain") {
            Ok(a) => a,
            Err(e) => return usage(e),
        };
        match self.secret(&account).await {
            Ok(Some(Some(secret))) => Reply::ok().quoted(secret.as_bytes()),
            Ok(Some(None)) => Reply::error("no plain password available"),
            Ok(None) => Reply::error("unknown user"),
            Err(e) => {
                tracing::warn!(account = %account, error = %e, "READPLAIN failed");
                Reply::failure(directory_failure(&e))
            }
        }
    }

    /// `None` for an unknown or not permitted user, `Some(None)` when the
    /// user has no secret.
    async fn secret(&self, account: &Account) -> Result<Option<Option<String>>, DirectoryError> {
        let Some(person) = self.dir.find(account).await? else {
            return Ok(None);
        };
        if !self.dir.permitted(account, &person).await? {
            return Ok(None);
        }
        Ok(Some(self.dir.secret(account, &person).await?))
    }

    async fn new_account(&self, req: &Request) -> Reply {
        let account = match wire::single_account(&req.rest, "expected: NEW user@domain") {
            Ok(a) => a,
            Err(e) => return usage(e),
        };
        let (Some(cli), true) = (&self.cli, self.config.provision.enabled) else {
            return Reply::error("account creation is disabled");
        };
        let reply = self.provision(cli, &account).await;
        tracing::info!(account = %account, reply = %String::from_utf8_lossy(reply.body()), "NEW");
        reply
    }

    async fn provision(&self, cli: &CliClient, account: &Account) -> Reply {
        let (profile, plan) = match provision::prepare(&self.dir, &self.profiles, account).await {
            Ok(p) => p,
            Err(NotReady::Unknown) => return Reply::error("no such user in directory"),
            Err(NotReady::NotPermitted) => return Reply::error("not permitted"),
            Err(NotReady::Missing(profile, m)) => {
                tracing::info!(account = %account, profile, step = m.step, command = %m.verb, missing = %m.what, "NEW: the directory entry lacks a value");
                return Reply::error("incomplete directory entry");
            }
            Err(NotReady::Directory(e)) => {
                tracing::warn!(account = %account, error = %e, "NEW: directory failed");
                return Reply::failure(directory_failure(&e));
            }
        };
        match provision::run(cli, &plan, |_, _, _| {}).await {
            Ok(()) => Reply::ok(),
            Err(f) => {
                // FAILURE either way: CGP retries NEW, and the retry
                // completes the steps (each is idempotent).
                tracing::info!(account = %account, profile = %profile.name, step = f.step, command = %f.verb, error = %f.error, "NEW: provisioning step failed");
                match f.error {
                    CliError::Unavailable(_) => {
                        metrics::count(Event::BackendError);
                        Reply::failure("account server unavailable")
                    }
                    CliError::Refused { .. } => Reply::failure("account provisioning failed"),
                }
            }
        }
    }
}

/// The reply text for a directory that failed, counted as a back-end
/// error: every path that answers a directory failure goes through here.
fn directory_failure(e: &DirectoryError) -> &'static str {
    metrics::count(Event::BackendError);
    match e {
        DirectoryError::Unavailable(_) => UNAVAILABLE,
        DirectoryError::Failed(_) => "directory error",
    }
}

impl From<Cached> for Verdict {
    fn from(c: Cached) -> Self {
        match c {
            Cached::Ok => Verdict::Ok,
            Cached::Invalid => Verdict::Invalid,
        }
    }
}

impl Helper for Auth {
    type Config = AuthConfig;

    async fn build(config: AuthConfig, previous: Option<Arc<Self>>) -> Result<Self, String> {
        let config = Arc::new(config);
        // Opening a static directory hashes one dummy password per scheme
        // in use (bcrypt, argon2: slow on purpose); a reload builds new LDAP
        // pools (the old ones close when their last request finishes), which
        // picks up a changed password file too.
        let profiles = config
            .provision
            .profiles
            .clone()
            .map_err(|e| e.to_string())?;
        let dir = {
            let (config, profiles) = (config.clone(), profiles.clone());
            cgp_runtime::compute(move || {
                open_directory(&config, &profiles, config.provision.enabled)
            })
            .await
            .map_err(|e| e.to_string())?
        };
        let state = match &previous {
            // The store stays open across a reload (sled locks it); its
            // verdicts were reached under the old configuration.
            Some(p) => {
                p.state.clear_cache();
                p.state.clone()
            }
            None => {
                let path = config.store.path.clone();
                let state = tokio::task::spawn_blocking(move || State::open(path.as_deref()))
                    .await
                    .map_err(|e| format!("opening the store: {e}"))?;
                // Connects at the first request, so that a Redis down at
                // start costs no more than one down later.
                let state = match config.store.backend {
                    Backend::Sled => state,
                    Backend::Redis => state.with_shared(
                        RedisStore::new(&config.store.redis).map_err(|e| e.to_string())?,
                    ),
                };
                tracing::info!(store = %state.opened, backend = ?config.store.backend, "state ready");
                let state = Arc::new(state);
                spawn_sweeper(&state, &config);
                state
            }
        };
        let cli = if config.provision.enabled {
            Some(Arc::new(CliClient::new(&config.provision.cli)?))
        } else {
            None
        };
        Ok(Auth {
            config,
            dir,
            generation: state.generation(),
            state,
            cli,
            profiles,
        })
    }

    async fn handle(self: Arc<Self>, ctx: Ctx, req: Request) -> Reply {
        match req.command.as_str() {
            "VRFY" => self.vrfy(&ctx, &req).await,
            "SASL" => Reply::error("unsupported SASL method"),
            // Boxed for the same reason as the back-end call in `vrfy`.
            "READPLAIN" => Box::pin(self.readplain(&req)).await,
            "NEW" => Box::pin(self.new_account(&req)).await,
            _ => Reply::error("unsupported command"),
        }
    }

    fn timeout_reply(&self, command: &str) -> Reply {
        match command {
            "VRFY" | "READPLAIN" | "NEW" => Reply::failure(UNAVAILABLE),
            _ => Reply::failure("timeout"),
        }
    }
}

/// Expired entries are dropped in the background, so a flood of random
/// passwords cannot grow the store without bound.
fn spawn_sweeper(state: &Arc<State>, config: &Arc<AuthConfig>) {
    let weak = Arc::downgrade(state);
    let (cache, throttle) = (config.cache.clone(), config.throttle.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(state) = weak.upgrade() else { return };
            let (c, t) = (cache.clone(), throttle.clone());
            let _ = tokio::task::spawn_blocking(move || {
                state.sweep(&c, &t);
                state.flush();
            })
            .await;
        }
    });
}

/// The directory, reading the attributes the profiles need when
/// `provisioning` (NEW on, or the `provision` subcommand, which also serves
/// sites that keep NEW off and create accounts ahead).
fn open_directory(
    config: &AuthConfig,
    profiles: &Profiles,
    provisioning: bool,
) -> Result<Directory, DirectoryError> {
    let attrs: Vec<&str> = if provisioning {
        profiles.attributes().into_iter().map(|(_, a)| a).collect()
    } else {
        Vec::new()
    };
    config.directory.open(&attrs)
}

/// `provision`: what NEW does for one account, run by hand (not the
/// protocol loop, so it prints). The exit codes are the subcommand's doc.
fn provision_command(dry_run: bool, path: Option<&std::path::Path>, account: &str) -> ExitCode {
    let fail = |code: u8, text: &str| {
        eprintln!("cgp-auth: {text}");
        ExitCode::from(code)
    };
    let config = match cgp_runtime::config::load::<AuthConfig>(path) {
        Ok(c) => c,
        Err(e) => return fail(1, &e.to_string()),
    };
    let Ok(account) = Account::parse(account.as_bytes()) else {
        return fail(1, &format!("{account:?} is not user@domain"));
    };
    let profiles = match &config.provision.profiles {
        Ok(p) => p.clone(),
        Err(e) => return fail(1, &e.to_string()),
    };
    let cli = match dry_run {
        true => None,
        false => match CliClient::new(&config.provision.cli) {
            Ok(c) => Some(c),
            Err(e) => return fail(1, &format!("provision.cli: {e}")),
        },
    };
    let dir = match open_directory(&config, &profiles, true) {
        Ok(d) => d,
        Err(e) => return fail(1, &e.to_string()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(1, &format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(async {
        let (profile, plan) = match provision::prepare(&dir, &profiles, &account).await {
            Ok(p) => p,
            Err(NotReady::Unknown) => return fail(2, &format!("{account}: no such user in directory")),
            Err(NotReady::NotPermitted) => return fail(2, &format!("{account}: not permitted")),
            Err(NotReady::Missing(profile, m)) => {
                return fail(
                    2,
                    &format!(
                        "{account}: profile {profile:?}, step {} ({}): the directory entry has no value for {}",
                        m.step, m.verb, m.what
                    ),
                );
            }
            Err(NotReady::Directory(e)) => return fail(3, &format!("directory: {e}")),
        };
        println!("profile {:?} for {account}", profile.name);
        let Some(cli) = cli else {
            for c in &plan {
                println!("{}", c.shown());
            }
            return ExitCode::SUCCESS;
        };
        let result = provision::run(&cli, &plan, |n, c, r| {
            let outcome = match r {
                Ok(Outcome::Done) => "OK".to_string(),
                Ok(Outcome::Existed) => "OK (already existed)".to_string(),
                Err(e) => format!("FAILED: {e}"),
            };
            println!("{n}. {} -> {outcome}", c.shown());
        })
        .await;
        cli.close().await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(f) => ExitCode::from(match f.error {
                CliError::Unavailable(_) => 3,
                CliError::Refused { .. } => 4,
            }),
        }
    })
}

/// `--hash-password`: not the protocol loop, so it may print.
fn print_hash(scheme: cli::HashScheme) -> ExitCode {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() {
        eprintln!("cgp-auth: cannot read the password from stdin");
        return ExitCode::from(1);
    }
    let password = line.trim_end_matches(['\r', '\n']);
    let scheme = match scheme {
        cli::HashScheme::Ssha512 => NewScheme::Ssha512,
        cli::HashScheme::Bcrypt => NewScheme::Bcrypt,
        cli::HashScheme::Argon2 => NewScheme::Argon2,
    };
    match password::make(scheme, password.as_bytes()) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cgp-auth: {e}");
            ExitCode::from(1)
        }
    }
}

/// Process policy is the binary's own (see `cgp_runtime::process`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    cgp_runtime::process::helper_defaults();
    let cli = Cli::parse();
    if let Some(scheme) = cli.hash_password {
        return print_hash(scheme);
    }
    if let Some(cli::Command::Provision {
        dry_run,
        config,
        account,
    }) = &cli.command
    {
        let path = config.as_deref().or(cli.common.config.as_deref());
        return provision_command(*dry_run, path, account);
    }
    let info = HelperInfo {
        name: "cgp-auth",
        version: env!("CARGO_PKG_VERSION"),
        max_intf: 3,
    };
    run::<Auth>(info, &cli.common)
}
