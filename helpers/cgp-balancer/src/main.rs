//! `cgp-balancer`: Load-balancer helper for a CommuniGate Pro Dynamic Cluster.

use cgp_protocol::runtime::{HelperInfo, Unsupported, run};
use clap::Parser;
use cli::Cli;
use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let info = HelperInfo {
        name: "cgp-balancer",
        version: env!("CARGO_PKG_VERSION"),
        max_intf: 3,
    };
    run::<Unsupported>(info, &cli.common)
}
