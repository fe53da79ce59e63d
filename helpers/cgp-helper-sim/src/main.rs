//! `cgp-helper-sim`: plays the CommuniGate Pro side of the Helper protocol.
//!
//! It starts a helper the way CGP does (a program with arguments, in the CGP
//! base directory), sends `INTF`, then the requests of a transcript or of a
//! generated workload with a chosen number in flight, and checks the
//! contract on everything the helper writes: exactly one reply per request
//! carrying its own sequence token, no line over 4096 bytes, the reply to
//! QUIT last, nothing on stderr, exit status 0. It prints throughput and
//! latency percentiles and exits 1 on any violation.

mod session;

use clap::Parser;
use session::{Plan, Session};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Play the CGP side of the Helper protocol against a helper program.
#[derive(Parser, Debug)]
#[command(name = "cgp-helper-sim", version)]
#[command(after_help = "Examples:\n  \
    cgp-helper-sim --transcript testdata/auth/demo.in --print -- cgp-auth --config auth.toml\n  \
    cgp-helper-sim --generate 100000 --in-flight 16 -- cgp-filter\n  \
    cgp-helper-sim --generate 10000 --request 'VRFY user{n%100}@example.test pw' -- cgp-auth")]
struct Cli {
    /// Working directory of the helper (CGP starts helpers in its base
    /// directory).
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Requests sent before waiting for replies.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    in_flight: u32,
    /// Interface version sent in the opening INTF (a transcript that starts
    /// with INTF sends its own).
    #[arg(long, default_value_t = 4)]
    intf: u32,
    /// Send the lines of this file (a `.in` transcript).
    #[arg(long, value_name = "FILE", conflicts_with = "generate")]
    transcript: Option<PathBuf>,
    /// Send this many generated requests, then QUIT.
    #[arg(long, value_name = "N")]
    generate: Option<u64>,
    /// Text of a generated request after its sequence number; `{n}` becomes
    /// the request index and `{n%K}` the index modulo K. Repeat to mix;
    /// requests cycle through the templates. Default: KEY, INTF, unknown
    /// commands.
    #[arg(long = "request", value_name = "TEMPLATE")]
    requests: Vec<String>,
    /// Print every line the helper writes.
    #[arg(long)]
    print: bool,
    /// Longest wait for any one reply, in seconds.
    #[arg(long, default_value_t = 30)]
    reply_timeout: u64,
    /// The helper program and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

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
