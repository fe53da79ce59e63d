//! `cgp-balancer`: Load-balancer helper for a CommuniGate Pro Dynamic Cluster.
//! It keeps the desired state of each balancer group and reconciles HAProxy,
//! Linux IPVS or an administrator's program to it.

use cgp_runtime::{HelperInfo, run};
use clap::Parser;
use cli::Cli;
use std::process::ExitCode;

mod balancer;
mod cli;
mod config;
mod driver;
mod state;
mod wire;

/// Process policy is the binary's own (see `cgp_runtime::process`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    cgp_runtime::process::helper_defaults();
    let cli = Cli::parse();
    let info = HelperInfo {
        name: "cgp-balancer",
        version: env!("CARGO_PKG_VERSION"),
        max_intf: 3,
    };
    run::<balancer::Balancer>(info, &cli.common)
}
