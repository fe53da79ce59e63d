//! A helper on the runtime whose commands exercise the runtime itself, for
//! the transcript tests in `testdata/runtime/`:
//! `SLEEP <ms>`, `BLOCK <ms>` (holds its thread, as a handler that
//! computes does), `BIG <bytes>`, `PANIC`, `HANG`, `ECHO <values>`,
//! `ORDERED <key> <ms>` (sleeps, in arrival order per key).
//! With `--inline` it sets `Helper::INLINE_FIRST_POLL`, and with
//! `--parallel` also `Helper::PARALLEL_DISPATCH`, so the same cases cover
//! each of the runtime's dispatch paths.

use cgp_runtime::{BasicConfig, CommonArgs, Ctx, Helper, HelperInfo, run};
use cgp_wire::data::{Value, parse_values};
use cgp_wire::{Reply, Request};
use clap::Parser;
use std::sync::Arc;
use std::time::Duration;

struct Probe<const INLINE: bool, const PARALLEL: bool>;

impl<const INLINE: bool, const PARALLEL: bool> Helper for Probe<INLINE, PARALLEL> {
    type Config = BasicConfig;

    const INLINE_FIRST_POLL: bool = INLINE;
    const PARALLEL_DISPATCH: bool = PARALLEL;

    async fn build(_: BasicConfig, _: Option<Arc<Self>>) -> Result<Self, String> {
        Ok(Probe)
    }

    fn order_key(&self, req: &Request) -> Option<Vec<u8>> {
        let key = req.rest.split(|b| *b == b' ').next().unwrap_or_default();
        (req.command == "ORDERED").then(|| key.to_vec())
    }

    async fn handle(self: Arc<Self>, ctx: Ctx, req: Request) -> Reply {
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
            "BIG" => Reply::ok().quoted(&vec![b'x'; arg() as usize]),
            "PANIC" => panic!("probe asked to panic"),
            "HANG" => std::future::pending().await,
            "ECHO" => match parse_values(&req.rest) {
                Ok(values) => Reply::ok().value(&Value::Array(values)),
                Err(e) => Reply::error(&format!("bad arguments: {e}")),
            },
            "INTFVALUE" => Reply::ok().then(&ctx.intf().to_string()),
            _ => Reply::error("unsupported command"),
        }
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Answer requests ready at their first poll on the dispatcher.
    #[arg(long)]
    inline: bool,
    /// Dispatch on one thread per core, one line at a time (implies
    /// `--inline`).
    #[arg(long)]
    parallel: bool,
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
    match (cli.inline, cli.parallel) {
        (_, true) => run::<Probe<true, true>>(info, &cli.common),
        (true, false) => run::<Probe<true, false>>(info, &cli.common),
        (false, false) => run::<Probe<false, false>>(info, &cli.common),
    }
}
