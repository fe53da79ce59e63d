//! The benchmark's subject: a helper on the runtime that answers OK to every
//! request, so a run measures the runtime alone.

use cgp_runtime::{BasicConfig, CommonArgs, Ctx, Helper, HelperInfo, run};
use cgp_wire::{Reply, Request};
use clap::Parser;
use std::sync::Arc;

struct Null;

impl Helper for Null {
    type Config = BasicConfig;

    async fn build(_: BasicConfig, _: Option<Arc<Self>>) -> Result<Self, String> {
        Ok(Null)
    }

    async fn handle(self: Arc<Self>, _: Ctx, _: Request) -> Reply {
        Reply::ok()
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

/// Process policy is the binary's own (see `cgp_runtime::process`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cgp_runtime::process::helper_defaults();
    let info = HelperInfo {
        name: "null-helper",
        version: env!("CARGO_PKG_VERSION"),
        max_intf: 4,
    };
    run::<Null>(info, &Cli::parse().common)
}
