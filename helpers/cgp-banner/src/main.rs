//! `cgp-banner`: Banner helper for CommuniGate Pro XIMSS and WebUser clients.

use cgp_runtime::{HelperInfo, run};
use clap::Parser;
use cli::{Cli, Command};
use std::process::ExitCode;

mod admin;
mod announce;
mod cli;
mod config;
mod helper;
mod people;
mod template;
mod wire;

/// Process policy is the binary's own (see `cgp_runtime::process`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    cgp_runtime::process::helper_defaults();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Announce(cmd)) => admin::announce(&cli.common, cmd),
        None => {
            let info = HelperInfo {
                name: "cgp-banner",
                version: env!("CARGO_PKG_VERSION"),
                max_intf: 3,
            };
            run::<helper::Banner>(info, &cli.common)
        }
    }
}
