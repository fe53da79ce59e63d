//! `cgp-filter`: Content filter for CommuniGate Pro mail rules (ExternalFilter).

use cgp_protocol::runtime::{CommonArgs, HelperInfo, Unsupported, run};
use clap::Parser;
use std::process::ExitCode;

/// Content filter for CommuniGate Pro mail rules (ExternalFilter).
#[derive(Parser)]
#[command(name = "cgp-filter", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let info = HelperInfo {
        name: "cgp-filter",
        version: env!("CARGO_PKG_VERSION"),
        max_intf: 3,
    };
    run::<Unsupported>(info, &cli.common)
}
