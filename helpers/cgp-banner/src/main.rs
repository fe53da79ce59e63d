//! `cgp-banner`: Banner helper for CommuniGate Pro XIMSS and WebUser clients.

use cgp_protocol::runtime::{HelperInfo, run};
use clap::Parser;
use cli::{Cli, Command};
use std::process::ExitCode;

mod admin;
mod announce;
mod cli;
mod config;
mod directory;
mod helper;
mod pbx;
mod template;
mod wire;

fn main() -> ExitCode {
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
