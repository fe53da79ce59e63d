//! `cgp-helper-sim`: plays the CommuniGate Pro side of the Helper protocol.
//!
//! It starts a helper the way CGP does (a program with arguments, in the CGP
//! base directory), sends `INTF`, then the requests of a transcript or of a
//! generated workload with a chosen number in flight, and checks the
//! contract on everything the helper writes: exactly one reply per request
//! carrying its own sequence token, no line over 4096 bytes, the reply to
//! QUIT last, nothing on stderr, exit status 0. It prints throughput and
//! latency percentiles and exits 1 on any violation.

mod cli;
mod session;

use clap::Parser;
use cli::Cli;
use session::{Plan, Session};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let plan = match (&cli.transcript, cli.generate) {
        (Some(path), _) => match std::fs::read(path) {
            Ok(bytes) => Plan::transcript(&bytes, cli.intf),
            Err(e) => {
                eprintln!("cgp-helper-sim: cannot read {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        (None, Some(n)) => {
            let templates = if cli.requests.is_empty() {
                ["KEY", "INTF 4", "FROB {n}", "NOSUCH{n%5} x \"y z\""]
                    .map(String::from)
                    .to_vec()
            } else {
                cli.requests.clone()
            };
            Plan::generated(n, &templates, cli.intf)
        }
        (None, None) => {
            eprintln!("cgp-helper-sim: give --transcript FILE or --generate N");
            return ExitCode::from(2);
        }
    };
    let session = Session {
        command: cli.command,
        cwd: cli.cwd,
        in_flight: cli.in_flight as usize,
        print: cli.print,
        reply_timeout: Duration::from_secs(cli.reply_timeout),
    };
    match session.run(&plan) {
        Ok(report) => {
            for v in report.violations.iter().take(20) {
                eprintln!("violation: {v}");
            }
            if report.violations.len() > 20 {
                eprintln!("… and {} more violations", report.violations.len() - 20);
            }
            println!("{}", report.summary());
            if report.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("cgp-helper-sim: {e}");
            ExitCode::from(2)
        }
    }
}
