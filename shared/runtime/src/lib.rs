//! The helper runtime: everything between CGP's pipes and a helper's request
//! handler, so that the Helper protocol contract holds for every helper by
//! construction.
//!
//! - exactly one reply per request: handler errors, panics and deadline
//!   expiry all turn into the helper's own reply, and a token already in
//!   flight is never answered twice, whatever its command;
//! - replies in any order through one writer, one whole line per write,
//!   never over 4096 bytes;
//! - INTF, KEY and QUIT handled here; QUIT, end of input and SIGTERM drain
//!   the requests in flight, close the writer and exit 0, also while CGP
//!   keeps stdin open; SIGHUP reloads the configuration.
//!
//! Every request takes one path: the stdin reader thread reads it, admits
//! it under the in-flight bound (one permit, held until its reply is
//! written or queued), polls its handler once right there (a request that
//! is ready, such as a cache hit, is answered without a task or a timer),
//! and hands what must wait to the async workers as a task under its
//! deadline. The reader's own replies go to the one writer thread; a reply
//! that waited is written by the thread that finished it; one line at a
//! time either way. CPU-heavy handler work goes through [`compute`].
//! Signals, reloads and the drain run on the main thread.

mod compute;
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
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

pub use compute::compute;
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
    // Before anything else: a SIGTERM or SIGHUP that CGP sends while the
    // helper is still starting (loading its configuration, connecting to
    // its directory) waits, blocked, until the handlers below take it,
    // instead of killing the process with the default action. Every thread
    // started from here on inherits the mask; this one unblocks once the
    // handlers are in place.
    let early = EarlySignals::block();
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
    let signals = runtime.block_on(async {
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        )
    });
    let signals = match signals {
        (Ok(term), Ok(hup)) => Signals { term, hup },
        _ => {
            eprintln!("{}: cannot install signal handlers", info.name);
            return ExitCode::from(1);
        }
    };
    early.release();
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
    let code = runtime.block_on(serve::<H>(
        info,
        args.config.clone(),
        config,
        target,
        signals,
    ));
    // Leave without waiting for the reader thread, which may be blocked on
    // stdin for ever.
    std::process::exit(code)
}

/// SIGTERM and SIGHUP held back while the handlers are not in place yet.
struct EarlySignals(libc::sigset_t);

impl EarlySignals {
    fn block() -> EarlySignals {
        // SAFETY: the set is initialised by sigemptyset before use, and
        // pthread_sigmask only changes this thread's mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGHUP);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            EarlySignals(set)
        }
    }

    /// Unblocks them on this thread, where a pending one is delivered to
    /// the handlers now in place.
    fn release(self) {
        // SAFETY: as in `block`.
        unsafe {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &self.0, std::ptr::null_mut());
        }
    }
}

struct Signals {
    term: Signal,
    hup: Signal,
}

struct Shared<H> {
    helper: RwLock<Arc<H>>,
    runtime: RwLock<RuntimeConfig>,
    intf: Arc<AtomicU32>,
    /// Tokens of requests whose replies are not written yet. A request
    /// answered by its first poll never enters it: the reader, the only
    /// one to look, is busy with it until its reply is queued.
    in_flight: Mutex<HashSet<SeqKey>>,
    /// Per order key, the signal that the last request with that key is done.
    order_tails: Mutex<HashMap<Vec<u8>, oneshot::Receiver<()>>>,
    permits: Arc<Semaphore>,
    stats: Stats,
    /// Set on SIGTERM: the reader admits nothing more.
    stopping: AtomicBool,
    /// Held (shared) by the reader while it handles a line, so that the
    /// drain starts only once no request is half admitted.
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

async fn serve<H: Helper>(
    info: HelperInfo,
    path: Option<PathBuf>,
    config: H::Config,
    target: logging::LogTarget,
    mut signals: Signals,
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
            writer_thread.close();
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
        permits: Arc::new(Semaphore::new(max_in_flight)),
        stats: Stats::default(),
        stopping: AtomicBool::new(false),
        dispatching: RwLock::new(()),
        writer,
        info,
    });
    // The reader reports QUIT (its token) or the end of input; if it died,
    // the sender is dropped, which ends the loop too.
    let (ended_tx, mut ended) = oneshot::channel::<Option<Vec<u8>>>();
    {
        let shared = shared.clone();
        let handle = Handle::current();
        std::thread::Builder::new()
            .name("stdin-reader".into())
            .spawn(move || {
                let _runtime = handle.enter();
                let input = io::LineReader::new(std::io::stdin(), max_line);
                let _ = ended_tx.send(read_requests(&shared, &handle, input));
            })
            .expect("spawning the stdin reader thread");
    }
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
            _ = signals.term.recv() => {
                // Nothing more is admitted; the reader may stay blocked on
                // stdin, which neither the drain nor the exit waits for.
                shared.stopping.store(true, Ordering::Relaxed);
                shared.writer.info("SIGTERM received, finishing requests in flight");
                tracing::info!("SIGTERM received");
                break None;
            }
            _ = signals.hup.recv() => reload(&shared, path.as_ref()).await,
            _ = stats_tick.tick(), if !stats_every.is_zero() => {
                shared.writer.info(&shared.stats.line());
                // metrics hook (tap branch): the metrics file beside each stats line.
                metrics::publish(&current(&shared.runtime).metrics, shared.info.name, &shared.stats);
            }
        }
    };

    // A line the reader is handling now gets its reply or its permit before
    // the drain counts what is in flight.
    drop(sync::write(&shared.dispatching));
    // Drain: every request in flight holds a permit until its reply is
    // written or queued, and each is bounded by its deadline.
    let drain_limit = current(&shared.runtime).deadline + Duration::from_secs(2);
    let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain_limit, shared.permits.acquire_many(all))
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
    // Closed explicitly: the reader thread keeps its clone of the writer
    // while it waits on a stdin that CGP may keep open. A request still
    // running past the drain limit writes nothing after QUIT's reply.
    writer_thread.close();
    0
}

/// The stdin reader: reads request lines and handles each in arrival order
/// until QUIT (returns its token), the end of input or SIGTERM (`None`).
fn read_requests<H: Helper>(
    shared: &Arc<Shared<H>>,
    handle: &Handle,
    mut input: io::LineReader<std::io::Stdin>,
) -> Option<Vec<u8>> {
    while let Some(batch) = input.next_batch() {
        for item in batch.inputs() {
            let _busy = sync::read(&shared.dispatching);
            if shared.stopping.load(Ordering::Relaxed) {
                return None;
            }
            let line = match item {
                Input::Line(line) => line,
                Input::TooLong { prefix } => {
                    too_long(shared, prefix);
                    continue;
                }
            };
            if let Some(quit) = dispatch(shared, handle, line) {
                return Some(quit);
            }
        }
    }
    None
}

/// The current value of a setting that SIGHUP may replace.
fn current<T: Clone>(setting: &RwLock<T>) -> T {
    sync::read(setting).clone()
}

fn too_long<H>(shared: &Shared<H>, prefix: &[u8]) {
    let max = current(&shared.runtime).max_line_bytes;
    match sequence_token(prefix) {
        Some(seq) if !shared.is_in_flight(seq) => {
            answer_now(shared, seq, Reply::error("request line too long"));
        }
        Some(_) => {}
        None => shared.writer.info(&format!(
            "request line over {max} bytes without a sequence number discarded"
        )),
    }
}

impl<H> Shared<H> {
    /// The duplicate-token rule, for every command: a token whose request
    /// is still in flight is not answered again, or CGP would take the
    /// first of two replies for the request it sent first.
    fn is_in_flight(&self, seq: &[u8]) -> bool {
        let in_flight = sync::lock(&self.in_flight);
        if in_flight.is_empty() || !in_flight.contains(&SeqKey::of(seq)) {
            return false;
        }
        drop(in_flight);
        self.writer.info(&format!(
            "request {} dropped: its sequence number is already in flight",
            String::from_utf8_lossy(seq)
        ));
        true
    }
}

/// What a line without a sequence token shows in the log: its length and,
/// when the second word looks like a command, that word. Never more of
/// its text: it may hold a password (`x VRFY user@domain secret`).
fn unnumbered_line(line: &[u8]) -> String {
    let command = line
        .split(u8::is_ascii_whitespace)
        .filter(|w| !w.is_empty())
        .nth(1)
        .filter(|w| {
            w.len() <= 16
                && w[0].is_ascii_uppercase()
                && w.iter()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        });
    match command {
        Some(word) => format!(
            "line without a sequence number discarded ({} bytes, command {})",
            line.len(),
            String::from_utf8_lossy(word)
        ),
        None => format!(
            "line without a sequence number discarded ({} bytes)",
            line.len()
        ),
    }
}

/// Handles one line in arrival order: the runtime's own commands are
/// answered here, a helper request is admitted and started. Returns QUIT's
/// token.
fn dispatch<H: Helper>(shared: &Arc<Shared<H>>, handle: &Handle, line: &[u8]) -> Option<Vec<u8>> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let req = match Request::parse(line) {
        Ok(r) => r,
        Err(LineError::NoSequence) => {
            shared.writer.info(&unnumbered_line(line));
            return None;
        }
        Err(LineError::NoCommand { seq }) => {
            if !shared.is_in_flight(&seq) {
                answer_now(shared, &seq, Reply::error("missing command"));
            }
            return None;
        }
    };
    if shared.is_in_flight(&req.seq) {
        return None;
    }
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
        }
        "KEY" => answer_now(shared, &req.seq, Reply::ok()),
        "QUIT" => return Some(req.seq),
        _ => {
            if let Some(permit) = admit(shared, handle) {
                start(shared, handle, req, permit);
            }
        }
    }
    None
}

fn answer_now<H>(shared: &Shared<H>, seq: &[u8], reply: Reply) {
    shared.stats.request();
    shared.stats.reply(reply.kind(), Duration::ZERO);
    shared.writer.reply(seq, &reply);
}

/// The in-flight bound: a request's permit, taken in arrival order. With
/// every permit taken the reader waits here, so further requests wait in
/// the pipe instead of being dropped. `None` only when the runtime is
/// shutting down.
fn admit<H>(shared: &Shared<H>, handle: &Handle) -> Option<OwnedSemaphorePermit> {
    let permits = &shared.permits;
    (permits.clone().try_acquire_owned().ok())
        .or_else(|| handle.block_on(permits.clone().acquire_owned()).ok())
}

/// Runs an admitted request: its handler under the deadline, with panics
/// caught, and its one reply. Polled once here, on the reader; what is not
/// ready then continues as a task.
fn start<H: Helper>(
    shared: &Arc<Shared<H>>,
    handle: &Handle,
    req: Request,
    permit: OwnedSemaphorePermit,
) {
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
    let key = SeqKey::of(&req.seq);
    let ctx = Ctx {
        intf: shared.intf.clone(),
        deadline: until,
        writer: shared.writer.clone(),
    };
    let task_shared = shared.clone();
    // Set once the task is spawned: from then on its token is in the
    // in-flight set, and the reply must leave it under the set's lock.
    let spawned = Arc::new(AtomicBool::new(false));
    let task_spawned = spawned.clone();
    // Boxed so that spawning moves a pointer, not the whole future.
    let mut task = Box::pin(async move {
        let shared = task_shared;
        // The reply line starts with the token now, so the token needs no
        // copy of its own once the handler owns the request.
        let seq_len = req.seq.len();
        let mut line = Vec::with_capacity(seq_len + 32);
        line.extend_from_slice(&req.seq);
        line.push(b' ');
        let command = req.command.clone();
        let deadline = tokio::time::Instant::from_std(until);
        // Waiting for the previous request with the same order key counts
        // against the deadline. Err only means that request's task is gone:
        // either way it is finished.
        let in_turn = match previous {
            Some(previous) => tokio::time::timeout_at(deadline, previous).await.is_ok(),
            None => true,
        };
        let outcome = if in_turn {
            // Pinned in place and polled through references: wrapping the
            // handler's future in catch_unwind and timeout adapters moved
            // it (memcpy) at each layer.
            let mut handler = std::pin::pin!(helper.clone().handle(ctx, req));
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
                Poll::Pending => tokio::time::timeout_at(deadline, guarded)
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
        let latency = started.elapsed();
        shared.stats.reply(reply.kind(), latency);
        tracing::debug!(seq = %seq(), %command, kind = reply.kind(), latency_us = latency.as_micros() as u64, "answered");
        line.extend_from_slice(reply.body());
        line.push(b'\n');
        if task_spawned.load(Ordering::Relaxed) {
            // A reply that waited is written here, on the thread that
            // finished it (a worker or a compute thread), not handed to the
            // writer thread: that hand-over was a wake-up per request.
            // Taken out of the set under the output's lock, just before the
            // line is written: the reader sees the token either in flight
            // or answered, never neither, and a duplicate admitted as soon
            // as it is out is answered after this reply. The set's own lock
            // is never held across a write.
            shared.writer.write_now(&line, || {
                sync::lock(&shared.in_flight).remove(&key);
            });
        } else {
            shared.writer.line(line);
        }
        // The next request with this order key may start now that this
        // reply is out.
        drop(done);
        drop(permit);
    });
    // Polled once here. A request ready at once (a cache hit) needs no
    // scheduler and never touches the in-flight set; one that must wait is
    // parked until what it waits for wakes it (see `Parked`).
    let parked = Arc::new(Parked {
        task: Mutex::new(None),
        woken: AtomicBool::new(false),
        handle: handle.clone(),
    });
    let waker = Waker::from(parked.clone());
    if task
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_ready()
    {
        return;
    }
    sync::lock(&shared.in_flight).insert(key);
    spawned.store(true, Ordering::Relaxed);
    // Woken while the reader polled it: the reader reads on, a worker
    // polls it again.
    if let Some(task) = parked.park(task) {
        handle.spawn(task);
    }
}

/// A request's task that waits, between the reader's first poll and the
/// wake-up it waits for. Not spawned at once: a first poll by a worker
/// would find it still waiting and cost a wake-up for nothing. Woken by a
/// compute thread (its work is done), it runs on that thread, whose next
/// job waits meanwhile, usually only for writing the reply; woken anywhere
/// else it becomes a tokio task. Each of these skips a hand-over to another
/// thread, the largest cost of a request that computes.
struct Parked {
    task: Mutex<Option<Task>>,
    /// Set by every wake-up; a poller that finds it set after parking the
    /// task takes the task back, so a wake-up during a poll is not lost.
    woken: AtomicBool,
    handle: Handle,
}

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Parked {
    /// Leaves `task` to the next wake-up; gives it back when one came while
    /// it was being polled (then nobody else will poll it).
    fn park(&self, task: Task) -> Option<Task> {
        *sync::lock(&self.task) = Some(task);
        if !self.woken.swap(false, Ordering::SeqCst) {
            return None;
        }
        // The wake-up may have taken the task itself already.
        sync::lock(&self.task).take()
    }

    /// Polls `task` on this thread until it is done or parked.
    fn run(self: &Arc<Self>, mut task: Task) {
        let waker = Waker::from(self.clone());
        loop {
            self.woken.store(false, Ordering::SeqCst);
            if task
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
            {
                return;
            }
            match self.park(task) {
                Some(again) => task = again,
                None => return,
            }
        }
    }
}

impl std::task::Wake for Parked {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        let Some(task) = sync::lock(&self.task).take() else {
            // Being polled now: its poller sees `woken`.
            return;
        };
        if compute::on_pool_thread() {
            self.run(task);
        } else {
            self.handle.spawn(task);
        }
    }
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

    async fn build(_: BasicConfig, _: Option<Arc<Self>>) -> Result<Self, String> {
        Ok(Unsupported)
    }

    async fn handle(self: Arc<Self>, _: Ctx, _: Request) -> Reply {
        Reply::error("unsupported command")
    }
}
