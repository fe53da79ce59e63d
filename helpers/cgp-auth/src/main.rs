//! `cgp-auth`: External authenticator for CommuniGate Pro (VRFY, SASL, READPLAIN, NEW).

use cgp_protocol::runtime::{CommonArgs, HelperInfo, Unsupported, run};
use clap::Parser;
use std::process::ExitCode;

/// External authenticator for CommuniGate Pro (VRFY, SASL, READPLAIN, NEW).
#[derive(Parser)]
#[command(name = "cgp-auth", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let info = HelperInfo {
        name: "cgp-auth",
        version: env!("CARGO_PKG_VERSION"),
        max_intf: 3,
    };
    run::<Unsupported>(info, &cli.common)
}
