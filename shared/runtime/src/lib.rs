//! The helper runtime: everything between CGP's pipes and a helper's request
//! handler, so that the Helper protocol contract holds for every helper by
//! construction.
//!
//! - exactly one reply per request: handler errors, panics and deadline
//!   expiry all turn into the helper's own reply;
//! - replies in any order through one writer, one whole line per write,
//!   never over 4096 bytes;
//! - INTF, KEY and QUIT handled here; QUIT, end of input and SIGTERM drain the
//!   requests in flight before exit 0; SIGHUP reloads the configuration.
//!
//! Three kinds of thread carry a request: the stdin reader, which also
//! dispatches (and answers at once what a helper can answer on the first
//! poll, see [`Helper::INLINE_FIRST_POLL`]; one per core with
//! [`Helper::PARALLEL_DISPATCH`]), the async workers for requests that
//! wait, and the stdout writer. Signals, reloads and the drain run on the
//! main thread.

pub mod config;
pub mod io;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod stats;
pub mod sync;

use cgp_wire::request::{LineError, Reply, Request, sequence_token};
use config::{ConfigError, HelperConfig, RuntimeConfig};
use io::{Input, MAX_REPLY_LINE, Writer};
use stats::Stats;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::os::fd::AsFd;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

pub use config::{BasicConfig, KeyError, LogConfig};

/// Names a helper binary for logs and the start-up line.
#[derive(Clone, Copy, Debug)]
pub struct HelperInfo {
    pub name: &'static str,
    pub version: &'static str,
    /// The highest INTF version the helper speaks.
    pub max_intf: u32,
}

/// A helper's request handling. The runtime owns the protocol; a helper only
/// turns one request into one reply.
pub trait Helper: Send + Sync + Sized + 'static {
    type Config: HelperConfig;

    /// Builds the helper from its configuration, at start and on SIGHUP.
    /// On reload `previous` is the running instance, so state that must not
    /// be opened twice (stores, connection pools) can be carried over.
    fn build(
        config: Self::Config,
        previous: Option<Arc<Self>>,
    ) -> impl Future<Output = Result<Self, String>> + Send;

    /// Answers one request other than INTF, KEY and QUIT.
    fn handle(self: Arc<Self>, ctx: Ctx, req: Request) -> impl Future<Output = Reply> + Send;

    /// Requests that must be handled in arrival order return the same key
    /// (the balancer's commands for one group): such a request starts only
    /// once the one before it with its key has been answered, and the wait
    /// counts against its deadline. Requests with no key run freely.
    fn order_key(&self, _req: &Request) -> Option<Vec<u8>> {
        None
    }

    /// The reply when the deadline passes before `handle` finishes.
    fn timeout_reply(&self, _command: &str) -> Reply {
        Reply::failure("timeout")
    }

    /// The reply when `handle` panics.
    fn panic_reply(&self, _command: &str) -> Reply {
        Reply::failure("internal error")
    }

    /// The reply that replaces one whose line would pass 4096 bytes.
    fn oversize_reply(&self, _command: &str) -> Reply {
        Reply::failure("reply too long")
    }

    /// Set by helpers whose handlers are mostly answered without a wait
    /// (cache hits, state lookups, computing over a file). The runtime then
    /// polls each new request once on the dispatcher and answers it there
    /// when it is ready: no task spawn and no hand-over to another worker
    /// thread, which is most of a quick request's cost. A helper whose
    /// handlers compute for long before they first wait sets
    /// [`Self::PARALLEL_DISPATCH`] as well, so that its requests do not
    /// queue behind one dispatcher.
    const INLINE_FIRST_POLL: bool = false;

    /// Set by helpers that compute before their first wait and answer on
    /// the first poll ([`Self::INLINE_FIRST_POLL`]), such as the content
    /// filter: one dispatcher thread per core (plus one) then takes request
    /// lines one at a time and runs their handlers side by side, with no
    /// hand-over to a worker thread and back. Arrival order still holds for
    /// everything but the handlers themselves: INTF, QUIT, duplicate tokens
    /// and order keys are dealt with one line at a time.
    const PARALLEL_DISPATCH: bool = false;
}

/// What a handler may know about its request's context.
#[derive(Clone)]
pub struct Ctx {
    intf: Arc<AtomicU32>,
    deadline: Instant,
    writer: Writer,
}

impl Ctx {
    /// The negotiated interface version; 0 before INTF.
    pub fn intf(&self) -> u32 {
        self.intf.load(Ordering::Relaxed)
    }

    /// When the runtime will answer the timeout reply instead.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Sends a `*` line to the CGP log.
    pub fn info(&self, text: &str) {
        self.writer.info(text);
    }
}

/// Runs a handler's CPU-heavy work (reading and parsing a file, matching
/// rules) on tokio's blocking threads, at most one piece of work per core at
/// a time, and waits for its result. Async workers stay free for the
/// requests that only wait, and the bound keeps a flood of requests from
/// starting more threads (and holding more buffers) than the cores can
/// serve. A panic in `work` is passed on to the handler, so the runtime
/// answers it with the helper's panic reply like any other.
pub async fn compute<T, F>(work: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    static POOL: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(Semaphore::new(cores))
    });
    // The semaphore is never closed, so acquiring cannot fail.
    let _slot = pool.clone().acquire_owned().await.ok();
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only a runtime shutting down cancels blocking work, and then
            // nobody waits for this reply.
            Err(_) => std::future::pending().await,
        },
    }
}

/// The command-line options every helper binary has.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Configuration file (TOML). Without it, built-in defaults apply.
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Check the configuration, print the result and exit (0 when valid).
    #[arg(long)]
    pub check_config: bool,
    /// Log to stderr, for running the helper by hand. Never use it under CGP:
    /// CGP reads stderr only after the helper exits.
    #[arg(long)]
    pub log_stderr: bool,
}

/// Runs a helper binary: configuration check, logging, then the protocol
/// loop on stdin/stdout until QUIT, end of input or SIGTERM.
pub fn run<H: Helper>(info: HelperInfo, args: &CommonArgs) -> ExitCode {
    let config = match config::load::<H::Config>(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            // The one permitted stderr write: the reason for a failed start.
            eprintln!("{}: {e}", info.name);
            return ExitCode::from(1);
        }
    };
    if args.check_config {
        let what = args
            .config
            .as_ref()
            .map_or("built-in defaults".to_string(), |p| p.display().to_string());
        println!("{what}: configuration is valid");
        return ExitCode::SUCCESS;
    }
    let target = match logging::init(info.name, config.log(), args.log_stderr) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", info.name);
            return ExitCode::from(1);
        }
    };
    // A panic must never print to stderr (the default hook does).
    std::panic::set_hook(Box::new(
        |p| tracing::error!(panic = %p, "handler panicked"),
    ));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: cannot start the async runtime: {e}", info.name);
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(serve::<H>(info, args.config.clone(), config, target));
    // Leave without waiting for the reader thread, which may be blocked on
    // stdin for ever.
    std::process::exit(code)
}

struct Shared<H> {
    helper: RwLock<Arc<H>>,
    runtime: RwLock<RuntimeConfig>,
    intf: Arc<AtomicU32>,
    in_flight: Mutex<HashSet<SeqKey>>,
    /// Per order key, the signal that the last request with that key is done.
    order_tails: Mutex<HashMap<Vec<u8>, oneshot::Receiver<()>>>,
    stats: Stats,
    /// Set on SIGTERM: the reader dispatches nothing more.
    stopping: AtomicBool,
    /// Set once QUIT or the end of input is read: no thread reads on.
    input_ended: AtomicBool,
    /// Held (shared) by a dispatcher thread while it dispatches a batch, so
    /// that the drain starts only once no request is half dispatched.
    dispatching: RwLock<()>,
    writer: Writer,
    info: HelperInfo,
}

/// A sequence token as a set key without an allocation: tokens are at most
/// 32 decimal digits, so (length, value) fits in integers and keeps `042`
/// and `42` apart.
#[derive(Clone, Copy, Hash, PartialEq, Eq)]
struct SeqKey(u8, u128);

impl SeqKey {
    fn of(seq: &[u8]) -> SeqKey {
        let value = seq
            .iter()
            .fold(0u128, |v, d| v * 10 + u128::from(d.wrapping_sub(b'0') % 10));
        SeqKey(seq.len() as u8, value)
    }
}

/// What dispatching one line leads to.
#[expect(
    clippy::large_enum_variant,
    reason = "made once per request and moved straight on; a box would cost an allocation per request"
)]
enum Step<H> {
    Continue,
    Quit(Vec<u8>),
    Admitted(Admitted<H>),
}

async fn serve<H: Helper>(
    info: HelperInfo,
    path: Option<PathBuf>,
    config: H::Config,
    target: logging::LogTarget,
) -> i32 {
    let queue = config.runtime().max_in_flight + 256;
    // Straight to the pipe through a duplicate of fd 1: std's Stdout would
    // take its lock and copy every line into its line buffer first.
    let (writer, writer_thread) = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => io::spawn_writer(std::fs::File::from(fd), queue),
        Err(_) => io::spawn_writer(std::io::stdout(), queue),
    };
    writer.info(&format!("{} {} started", info.name, info.version));
    tracing::info!(name = info.name, version = info.version, logs = ?target, "started");
    let runtime_cfg = config.runtime().clone();
    let helper = match H::build(config, None).await {
        Ok(h) => h,
        Err(e) => {
            writer.info(&format!("{} cannot start: {e}", info.name));
            tracing::error!(error = %e, "cannot start");
            drop(writer);
            let _ = writer_thread.join();
            eprintln!("{}: {e}", info.name);
            return 1;
        }
    };
    let max_in_flight = runtime_cfg.max_in_flight;
    let max_line = runtime_cfg.max_line_bytes;
    let shared = Arc::new(Shared {
        helper: RwLock::new(Arc::new(helper)),
        runtime: RwLock::new(runtime_cfg),
        intf: Arc::new(AtomicU32::new(0)),
        in_flight: Mutex::new(HashSet::new()),
        order_tails: Mutex::new(HashMap::new()),
        stats: Stats::default(),
        stopping: AtomicBool::new(false),
        input_ended: AtomicBool::new(false),
        dispatching: RwLock::new(()),
        writer,
        info,
    });
    let permits = Arc::new(Semaphore::new(max_in_flight));
    // The reader threads dispatch what they read themselves: a request
    // ready at its first poll is answered without waking another thread,
    // and the rest become tasks on the runtime. The thread that reads QUIT
    // (its token) or the end of input reports it; if every thread died, the
    // sender is dropped, which ends the loop too.
    let (ended_tx, mut ended) = oneshot::channel::<Option<Vec<u8>>>();
    let ended_tx = Arc::new(Mutex::new(Some(ended_tx)));
    let intake = Arc::new(Mutex::new(io::Intake::new(io::LineReader::new(
        std::io::stdin(),
        max_line,
    ))));
    for _ in 0..dispatch_threads::<H>() {
        let (shared, permits) = (shared.clone(), permits.clone());
        let (intake, ended_tx) = (intake.clone(), ended_tx.clone());
        let handle = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("stdin-reader".into())
            .spawn(move || {
                let _runtime = handle.enter();
                if H::PARALLEL_DISPATCH {
                    io::write_on_this_thread();
                }
                let Some(quit) = dispatcher(&shared, &permits, &handle, &intake) else {
                    return;
                };
                if let Some(tx) = sync::lock(&ended_tx).take() {
                    let _ = tx.send(quit);
                }
            })
            .expect("spawning the stdin reader thread");
    }
    drop(ended_tx);
    let (mut term, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(h)) => (t, h),
        _ => {
            eprintln!("{}: cannot install signal handlers", info.name);
            return 1;
        }
    };
    let stats_every = current(&shared.runtime).stats_interval;
    let mut stats_tick = tokio::time::interval(if stats_every.is_zero() {
        Duration::from_secs(u64::from(u32::MAX))
    } else {
        stats_every
    });
    stats_tick.reset();

    let quit = loop {
        tokio::select! {
            end = &mut ended => break end.unwrap_or_else(|_| {
                tracing::error!("the stdin reader stopped unexpectedly");
                None
            }),
            _ = term.recv() => {
                // Nothing more is dispatched; the reader may stay blocked on
                // stdin, which the exit does not wait for.
                shared.stopping.store(true, Ordering::Relaxed);
                shared.writer.info("SIGTERM received, finishing requests in flight");
                break None;
            }
            _ = hup.recv() => reload(&shared, path.as_ref()).await,
            _ = stats_tick.tick(), if !stats_every.is_zero() => {
                shared.writer.info(&shared.stats.line());
                // metrics hook (tap branch): the metrics file beside each stats line.
                metrics::publish(&current(&shared.runtime).metrics, shared.info.name, &shared.stats);
            }
        }
    };

    // A request being dispatched now, by the thread that read QUIT or by
    // another one, gets its task (or its reply) before the drain counts what
    // is in flight. Only this thread waits, and only for the rest of a
    // batch.
    drop(sync::write(&shared.dispatching));
    // Drain: every request in flight holds a permit until its reply is
    // queued, and each is bounded by its deadline.
    let drain_limit = current(&shared.runtime).deadline + Duration::from_secs(2);
    let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain_limit, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::error!("requests still in flight after the drain limit");
    }
    shared.writer.info(&shared.stats.line());
    // metrics hook (tap branch): the final counts, with the final stats line.
    metrics::publish(
        &current(&shared.runtime).metrics,
        shared.info.name,
        &shared.stats,
    );
    if let Some(seq) = quit {
        shared.writer.reply(&seq, &Reply::ok());
    }
    tracing::info!("stopped");
    drop(shared);
    let _ = writer_thread.join();
    0
}

/// How many threads read and dispatch: one, or with
/// [`Helper::PARALLEL_DISPATCH`] one per core plus one, so that every core
/// can run a handler while one more thread waits for input.
fn dispatch_threads<H: Helper>() -> usize {
    // Capped: on a large machine dozens of threads would mostly wait for
    // the one input lock.
    if H::PARALLEL_DISPATCH {
        std::thread::available_parallelism().map_or(2, |n| n.get().min(16)) + 1
    } else {
        1
    }
}

/// One dispatcher thread: takes input and dispatches it until QUIT (its
/// token), the end of input or SIGTERM (`Some(None)`), or until another
/// thread ended the input (`None`: that one reports).
///
/// What must happen in arrival order (parsing, INTF, KEY, QUIT, the
/// duplicate check, the permit and the place in an order key's queue) is
/// done while the input lock is held; only the handlers run side by side.
fn dispatcher<H: Helper>(
    shared: &Arc<Shared<H>>,
    permits: &Arc<Semaphore>,
    handle: &Handle,
    intake: &Mutex<io::Intake<std::io::Stdin>>,
) -> Option<Option<Vec<u8>>> {
    let parallel = H::PARALLEL_DISPATCH;
    let mut admitted = Vec::new();
    loop {
        let mut input = Some(sync::lock(intake));
        if shared.input_ended.load(Ordering::Relaxed) {
            return None;
        }
        // Alone, a thread takes whole batches; side by side, one line each,
        // so that no thread works through a batch while another waits.
        let Some(batch) = input.as_mut().and_then(|i| i.take(!parallel)) else {
            shared.input_ended.store(true, Ordering::Relaxed);
            return Some(None);
        };
        // Taken before the next line can be read, so that the drain after
        // QUIT or SIGTERM waits for what this thread has taken.
        let _busy = sync::read(&shared.dispatching);
        if !parallel {
            input = None;
        }
        for item in batch.inputs() {
            if shared.stopping.load(Ordering::Relaxed) {
                shared.input_ended.store(true, Ordering::Relaxed);
                return Some(None);
            }
            let line = match item {
                Input::Line(line) => line,
                Input::TooLong { prefix } => {
                    too_long(shared, prefix);
                    continue;
                }
            };
            match dispatch(shared, permits, handle, line) {
                Step::Continue => {}
                Step::Quit(seq) => {
                    shared.input_ended.store(true, Ordering::Relaxed);
                    return Some(Some(seq));
                }
                Step::Admitted(request) if parallel => admitted.push(request),
                Step::Admitted(request) => start(shared, permits, handle, request),
            }
        }
        drop(input);
        for request in admitted.drain(..) {
            start(shared, permits, handle, request);
        }
    }
}

/// The current value of a setting that SIGHUP may replace.
fn current<T: Clone>(setting: &RwLock<T>) -> T {
    sync::read(setting).clone()
}

fn too_long<H>(shared: &Shared<H>, prefix: &[u8]) {
    let max = current(&shared.runtime).max_line_bytes;
    match sequence_token(prefix) {
        Some(seq) => {
            shared.stats.request();
            shared.stats.reply("ERROR", Duration::ZERO);
            shared
                .writer
                .reply(seq, &Reply::error("request line too long"));
        }
        None => shared.writer.info(&format!(
            "request line over {max} bytes without a sequence number discarded"
        )),
    }
}

/// Handles one line in arrival order: the runtime's own commands are
/// answered here, a helper request is admitted.
fn dispatch<H: Helper>(
    shared: &Arc<Shared<H>>,
    permits: &Arc<Semaphore>,
    handle: &Handle,
    line: &[u8],
) -> Step<H> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Step::Continue;
    }
    let req = match Request::parse(line) {
        Ok(r) => r,
        Err(LineError::NoSequence) => {
            let shown: String = String::from_utf8_lossy(&line[..line.len().min(40)]).into();
            shared.writer.info(&format!(
                "line without a sequence number discarded: {shown:?}"
            ));
            return Step::Continue;
        }
        Err(LineError::NoCommand { seq }) => {
            answer_now(shared, &seq, Reply::error("missing command"));
            return Step::Continue;
        }
    };
    match req.command.as_str() {
        "INTF" => {
            let reply = match req.args().ok().as_deref() {
                Some([v, ..]) => match v.as_str().and_then(|s| s.parse::<u32>().ok()) {
                    Some(server) => {
                        let agreed = server.min(shared.info.max_intf);
                        shared.intf.store(agreed, Ordering::Relaxed);
                        Reply::word("INTF").then(&agreed.to_string())
                    }
                    None => Reply::error("INTF needs a version number"),
                },
                _ => Reply::error("INTF needs a version number"),
            };
            answer_now(shared, &req.seq, reply);
            Step::Continue
        }
        "KEY" => {
            answer_now(shared, &req.seq, Reply::ok());
            Step::Continue
        }
        "QUIT" => Step::Quit(req.seq),
        _ => match admit(shared, permits, handle, req) {
            Some(admitted) => Step::Admitted(admitted),
            None => Step::Continue,
        },
    }
}

fn answer_now<H>(shared: &Shared<H>, seq: &[u8], reply: Reply) {
    shared.stats.request();
    shared.stats.reply(reply.kind(), Duration::ZERO);
    shared.writer.reply(seq, &reply);
}

/// A request let in, with what it needs to run.
struct Admitted<H> {
    job: Job<H>,
    key: SeqKey,
    /// Whether it is polled once where it was read before it becomes a
    /// task.
    inline: bool,
    /// Taken unless `inline`; a request that becomes a task holds one.
    permit: Option<OwnedSemaphorePermit>,
    /// Whether `key` is in the in-flight set already.
    registered: bool,
}

/// What the request's task takes with it.
struct Job<H> {
    req: Request,
    helper: Arc<H>,
    started: Instant,
    until: Instant,
    /// The request before this one with the same order key, and the signal
    /// for the one after.
    previous: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
}

/// Lets a helper request in, in arrival order: refuses a token already in
/// flight, takes a permit (waiting for one holds back further input, so the
/// in-flight bound queues requests in the pipe instead of dropping them)
/// and queues it behind the last request with its order key.
fn admit<H: Helper>(
    shared: &Arc<Shared<H>>,
    permits: &Arc<Semaphore>,
    handle: &Handle,
    req: Request,
) -> Option<Admitted<H>> {
    // A token already in flight would make two replies CGP cannot tell apart.
    let key = SeqKey::of(&req.seq);
    // With one dispatcher, a request answered by its first poll is over
    // before the next token is looked at; with several, another thread may
    // be polling one with the same token, so every request is registered.
    let registered = H::PARALLEL_DISPATCH;
    {
        let mut in_flight = sync::lock(&shared.in_flight);
        if !in_flight.is_empty() && in_flight.contains(&key) {
            drop(in_flight);
            shared.writer.info(&format!(
                "request {} dropped: its sequence number is already in flight",
                req.seq_str()
            ));
            return None;
        }
        if registered {
            in_flight.insert(key);
        }
    }
    // A request answered by its first poll needs no permit: it is over
    // before its dispatcher reads on. Only dispatchers take permits, so with
    // one of them a free one now is still free after that poll; with
    // several, at most one more request per dispatcher runs.
    let inline = H::INLINE_FIRST_POLL && permits.available_permits() > 0;
    let permit = if inline {
        None
    } else {
        match acquire(permits, handle) {
            Some(p) => Some(p),
            None => {
                sync::lock(&shared.in_flight).remove(&key);
                return None;
            }
        }
    };
    shared.stats.request();
    let helper = current(&shared.helper);
    let started = Instant::now();
    let until = started + current(&shared.runtime).deadline;
    let (previous, done) = match helper.order_key(&req) {
        Some(order) => {
            let (done, tail) = oneshot::channel::<()>();
            (join_order(&shared.order_tails, order, tail), Some(done))
        }
        None => (None, None),
    };
    let job = Job {
        req,
        helper,
        started,
        until,
        previous,
        done,
    };
    Some(Admitted {
        job,
        key,
        inline,
        permit,
        registered,
    })
}

fn acquire(permits: &Arc<Semaphore>, handle: &Handle) -> Option<OwnedSemaphorePermit> {
    (permits.clone().try_acquire_owned().ok())
        .or_else(|| handle.block_on(permits.clone().acquire_owned()).ok())
}

/// Runs an admitted request: its handler under the deadline, with panics
/// caught, and its one reply.
fn start<H: Helper>(
    shared: &Arc<Shared<H>>,
    permits: &Arc<Semaphore>,
    handle: &Handle,
    admitted: Admitted<H>,
) {
    let Admitted {
        job,
        key,
        inline,
        permit,
        registered,
    } = admitted;
    let ctx = Ctx {
        intf: shared.intf.clone(),
        deadline: job.until,
        writer: shared.writer.clone(),
    };
    let task_shared = shared.clone();
    // Boxed so that spawning moves a pointer, not the whole future.
    let mut task = Box::pin(async move {
        let shared = task_shared;
        let helper = &job.helper;
        // The reply line starts with the token now, so the token needs no
        // copy of its own once the handler owns the request.
        let seq_len = job.req.seq.len();
        let mut line = Vec::with_capacity(seq_len + 32);
        line.extend_from_slice(&job.req.seq);
        line.push(b' ');
        let command = job.req.command.clone();
        let until = tokio::time::Instant::from_std(job.until);
        // Waiting for the previous request with the same order key counts
        // against the deadline. Err only means that request's task is gone:
        // either way it is finished.
        let in_turn = match job.previous {
            Some(previous) => tokio::time::timeout_at(until, previous).await.is_ok(),
            None => true,
        };
        let outcome = if in_turn {
            // Pinned in place and polled through references: wrapping the
            // handler's future in catch_unwind and timeout adapters moved
            // it (memcpy) at each layer.
            let mut handler = std::pin::pin!(helper.clone().handle(ctx, job.req));
            // A panic inside the handler is caught here and never reaches
            // the runtime.
            let mut guarded = std::pin::pin!(std::future::poll_fn(|cx| {
                match std::panic::catch_unwind(AssertUnwindSafe(|| handler.as_mut().poll(cx))) {
                    Ok(Poll::Pending) => Poll::Pending,
                    Ok(Poll::Ready(reply)) => Poll::Ready(Some(reply)),
                    Err(_) => Poll::Ready(None),
                }
            }));
            // The first poll needs no timer: most quick requests are
            // answered by it. Dropping the handler's future at the deadline
            // cancels it.
            match poll_once(guarded.as_mut()).await {
                Poll::Ready(outcome) => Ok(outcome),
                Poll::Pending => tokio::time::timeout_at(until, guarded)
                    .await
                    .map_err(|_| ()),
            }
        } else {
            Err(())
        };
        let seq = || String::from_utf8_lossy(&line[..seq_len]);
        let mut reply = match outcome {
            Ok(Some(reply)) => reply,
            Ok(None) => helper.panic_reply(&command),
            Err(_) => {
                tracing::warn!(seq = %seq(), %command, "deadline passed");
                helper.timeout_reply(&command)
            }
        };
        if line.len() + reply.body().len() + 1 > MAX_REPLY_LINE {
            tracing::warn!(seq = %seq(), %command, "reply over 4096 bytes replaced");
            reply = helper.oversize_reply(&command);
            if line.len() + reply.body().len() + 1 > MAX_REPLY_LINE {
                reply = Reply::failure("reply too long");
            }
        }
        let latency = job.started.elapsed();
        shared.stats.reply(reply.kind(), latency);
        tracing::debug!(seq = %seq(), %command, kind = reply.kind(), latency_us = latency.as_micros() as u64, "answered");
        line.extend_from_slice(reply.body());
        line.push(b'\n');
        shared.writer.line(line);
        // The next request with this order key may start now that this
        // reply is out.
        drop(job.done);
    });
    // One poll with a waker that does nothing: if the request is not ready,
    // its task's first poll follows at once and registers the task's own
    // waker wherever the request waits, so no wake-up is lost. A request
    // answered by this poll needs no permit and no scheduler, and with one
    // dispatcher never touches the in-flight set.
    if inline
        && task
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    {
        if registered {
            sync::lock(&shared.in_flight).remove(&key);
        }
        return;
    }
    let Some(permit) = permit.or_else(|| acquire(permits, handle)) else {
        sync::lock(&shared.in_flight).remove(&key);
        return;
    };
    if !registered {
        sync::lock(&shared.in_flight).insert(key);
    }
    let shared = shared.clone();
    handle.spawn(async move {
        task.await;
        sync::lock(&shared.in_flight).remove(&key);
        drop(permit);
    });
}

/// Polls a future once with the current task's waker.
async fn poll_once<F: Future + Unpin>(mut fut: F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut fut).poll(cx))).await
}

/// Queues a request behind the last one with the same order key; returns the
/// signal to wait for. Finished keys are pruned so that a stream of distinct
/// keys cannot grow the map.
fn join_order(
    tails: &Mutex<HashMap<Vec<u8>, oneshot::Receiver<()>>>,
    key: Vec<u8>,
    tail: oneshot::Receiver<()>,
) -> Option<oneshot::Receiver<()>> {
    let mut tails = sync::lock(tails);
    if tails.len() >= 64 {
        tails.retain(|_, rx| matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
    }
    tails.insert(key, tail)
}

async fn reload<H: Helper>(shared: &Arc<Shared<H>>, path: Option<&PathBuf>) {
    let loaded: Result<H::Config, ConfigError> = config::load(path.map(|p| p.as_path()));
    let result = match loaded {
        Ok(cfg) => {
            let new_runtime = cfg.runtime().clone();
            let old = current(&shared.helper);
            H::build(cfg, Some(old)).await.map(|h| (h, new_runtime))
        }
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok((helper, new_runtime)) => {
            let old_runtime = current(&shared.runtime);
            if new_runtime.max_in_flight != old_runtime.max_in_flight
                || new_runtime.max_line_bytes != old_runtime.max_line_bytes
            {
                shared.writer.info(
                    "runtime.max_in_flight and runtime.max_line_bytes take effect after a restart",
                );
            }
            *sync::write(&shared.helper) = Arc::new(helper);
            *sync::write(&shared.runtime) = new_runtime;
            shared.writer.info("configuration reloaded");
            tracing::info!("configuration reloaded");
        }
        Err(e) => {
            shared.writer.info(&format!(
                "configuration reload refused, old configuration kept: {e}"
            ));
            tracing::warn!(error = %e, "configuration reload refused");
        }
    }
}

/// A helper that answers every command other than INTF, KEY and QUIT with
/// `ERROR "unsupported command"`.
pub struct Unsupported;

impl Helper for Unsupported {
    type Config = BasicConfig;

    const INLINE_FIRST_POLL: bool = true;

    async fn build(_: BasicConfig, _: Option<Arc<Self>>) -> Result<Self, String> {
        Ok(Unsupported)
    }

    async fn handle(self: Arc<Self>, _: Ctx, _: Request) -> Reply {
        Reply::error("unsupported command")
    }
}
