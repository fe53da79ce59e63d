//! A helper on the runtime whose commands exercise the runtime itself, for
//! the transcript tests in `testdata/runtime/`:
//! `SLEEP <ms>`, `BLOCK <ms>` (holds its thread, as a handler that
//! computes does), `BIG <bytes>`, `PANIC`, `HANG`, `ECHO <values>`,
//! `ORDERED <key> <ms>` (sleeps, in arrival order per key).
//! `COMPUTE <ms>` (holds a thread of `cgp_runtime::compute`), `COMPUTEPANIC`
//! (panics there), `PEAK` (the
//! most handlers that ever ran at once, this one included).
//! With `--build-delay MS` its start takes that long, as a helper that
//! connects to its directory does, to test signals that come early.

use cgp_runtime::{BasicConfig, CommonArgs, Ctx, Helper, HelperInfo, run};
use cgp_wire::data::{Value, parse_values};
use cgp_wire::{Reply, Request};
use clap::Parser;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

struct Probe;

/// Handlers running now, and the most that ever ran at once: the
/// in-flight bound seen from the inside.
static RUNNING: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// Counts one running handler until dropped (with the handler's future,
/// also when a deadline cancels it).
struct Running;

impl Running {
    fn enter() -> Running {
        let now = RUNNING.fetch_add(1, Ordering::Relaxed) + 1;
        PEAK.fetch_max(now, Ordering::Relaxed);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `--build-delay`, read by `build`.
static BUILD_DELAY: AtomicU64 = AtomicU64::new(0);

impl Helper for Probe {
    type Config = BasicConfig;

    async fn build(_: BasicConfig, _: Option<Arc<Self>>) -> Result<Self, String> {
        let delay = BUILD_DELAY.load(Ordering::Relaxed);
        // Blocking on purpose: a start that is busy, not one that waits.
        std::thread::sleep(Duration::from_millis(delay));
        Ok(Probe)
    }

    fn order_key(&self, req: &Request) -> Option<Vec<u8>> {
        let key = req.rest.split(|b| *b == b' ').next().unwrap_or_default();
        (req.command == "ORDERED").then(|| key.to_vec())
    }

    async fn handle(self: Arc<Self>, ctx: Ctx, req: Request) -> Reply {
        let _running = Running::enter();
        let text = String::from_utf8_lossy(&req.rest).into_owned();
        // The number is the last word: `SLEEP 5`, `ORDERED key 5`, `BIG 9`.
        let arg = || {
            let last = text.split_whitespace().last().unwrap_or_default();
            last.parse::<u64>().unwrap_or(0)
        };
        match req.command.as_str() {
            "SLEEP" | "ORDERED" => {
                tokio::time::sleep(Duration::from_millis(arg())).await;
                Reply::ok()
            }
            "BLOCK" => {
                std::thread::sleep(Duration::from_millis(arg()));
                Reply::ok()
            }
            "COMPUTE" => {
                let ms = arg();
                cgp_runtime::compute(move || std::thread::sleep(Duration::from_millis(ms))).await;
                Reply::ok()
            }
            "BIG" => Reply::ok().quoted(&vec![b'x'; arg() as usize]),
            "PANIC" => panic!("probe asked to panic"),
            "COMPUTEPANIC" => cgp_runtime::compute(|| panic!("probe asked to panic")).await,
            "HANG" => std::future::pending().await,
            "ECHO" => match parse_values(&req.rest) {
                Ok(values) => Reply::ok().value(&Value::Array(values)),
                Err(e) => Reply::error(&format!("bad arguments: {e}")),
            },
            "PEAK" => Reply::ok().then(&PEAK.load(Ordering::Relaxed).to_string()),
            "INTFVALUE" => Reply::ok().then(&ctx.intf().to_string()),
            _ => Reply::error("unsupported command"),
        }
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Milliseconds that the start takes.
    #[arg(long, default_value_t = 0)]
    build_delay: u64,
}

/// Process policy is the binary's own (see `cgp_runtime::process`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cgp_runtime::process::helper_defaults();
    let info = HelperInfo {
        name: "probe-helper",
        version: env!("CARGO_PKG_VERSION"),
        max_intf: 4,
    };
    let cli = Cli::parse();
    BUILD_DELAY.store(cli.build_delay, Ordering::Relaxed);
    run::<Probe>(info, &cli.common)
}
