//! `cgp-banner`: Banner helper for CommuniGate Pro XIMSS and WebUser clients.

use cgp_protocol::runtime::{CommonArgs, HelperInfo, Unsupported, run};
use clap::Parser;
use std::process::ExitCode;

/// Banner helper for CommuniGate Pro XIMSS and WebUser clients.
#[derive(Parser)]
#[command(name = "cgp-banner", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let info = HelperInfo {
        name: "cgp-banner",
        version: env!("CARGO_PKG_VERSION"),
        max_intf: 3,
    };
    run::<Unsupported>(info, &cli.common)
}
