//! `cgp-balancer`: Load-balancer helper for a CommuniGate Pro Dynamic Cluster.
//! It keeps the desired state of each balancer group and reconciles HAProxy,
//! Linux IPVS or an administrator's program to it.

use cgp_protocol::runtime::{HelperInfo, run};
use clap::Parser;
use cli::Cli;
use std::process::ExitCode;

mod balancer;
mod cli;
mod config;
mod driver;
mod grammar;
mod state;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let info = HelperInfo {
        name: "cgp-balancer",
        version: env!("CARGO_PKG_VERSION"),
        max_intf: 3,
    };
    run::<balancer::Balancer>(info, &cli.common)
}
