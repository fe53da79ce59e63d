//! `cgp-balancer`: Load-balancer helper for a CommuniGate Pro Dynamic Cluster.

use cgp_protocol::runtime::{CommonArgs, HelperInfo, Unsupported, run};
use clap::Parser;
use std::process::ExitCode;

/// Load-balancer helper for a CommuniGate Pro Dynamic Cluster.
#[derive(Parser)]
#[command(name = "cgp-balancer", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let info = HelperInfo {
        name: "cgp-balancer",
        version: env!("CARGO_PKG_VERSION"),
        max_intf: 3,
    };
    run::<Unsupported>(info, &cli.common)
}
