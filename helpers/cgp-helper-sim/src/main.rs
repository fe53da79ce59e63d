//! `cgp-helper-sim`: plays the CommuniGate Pro side of the Helper protocol.
//!
//! It starts a helper the way CGP does (a program with arguments, in the CGP
//! base directory), sends `INTF`, then the requests of a transcript (or of a
//! capture made by `tap`) or of a generated workload with a chosen number in
//! flight, and checks the contract on everything the helper writes: exactly
//! one reply per request carrying its own sequence token, no line over 4096
//! bytes, the reply to QUIT last, nothing on stderr, exit status 0. It prints
//! throughput and latency percentiles and exits 1 on any violation.
//!
//! `cgp-helper-sim tap` is the other way round: CGP runs it in front of a
//! helper, and it records their conversation (see [`tap`]).

mod capture;
mod cli;
mod session;
mod tap;

use clap::Parser;
use cli::{Cli, Mode};
use session::{Plan, Session};
use std::process::ExitCode;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Locks a mutex whether or not a thread panicked while holding it: what
/// the tap guards (its stdout, a pending notice) stays usable.
fn sync_lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Mode::Tap(t)) = cli.mode {
        let tap = tap::Tap {
            out: t.out,
            max_bytes: t.max_bytes,
            keep: t.keep,
            command: t.command,
        };
        match tap.run() {
            Ok(status) => tap::exit_like(status),
            Err(e) => {
                // As a helper that cannot start: one line on stderr.
                eprintln!("cgp-helper-sim tap: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let mut plan = match (&cli.transcript, cli.generate) {
        (Some(path), _) => {
            let fills = match capture::Fills::parse(&cli.fills) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("cgp-helper-sim: {e}");
                    return ExitCode::from(2);
                }
            };
            match std::fs::File::open(path) {
                Ok(file) => Plan::transcript(Box::new(file), fills, cli.intf),
                Err(e) => {
                    eprintln!("cgp-helper-sim: cannot read {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            }
        }
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
    match session.run(&mut plan) {
        Ok(report) => {
            for v in report.violations.iter().take(20) {
                eprintln!("violation: {v}");
            }
            if report.violation_count > 20 {
                eprintln!("… and {} more violations", report.violation_count - 20);
            }
            if plan.unfilled() > 0 {
                eprintln!(
                    "note: {} masked value(s) of the capture were sent as stand-ins; \
                     give them with --fill N=VALUE",
                    plan.unfilled()
                );
            }
            println!("{}", report.summary());
            if report.violation_count == 0 {
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
