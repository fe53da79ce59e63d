//! The command line of `cgp-helper-sim`, kept in its own module so that the
//! man page generator (`packaging/manpages`) renders this very definition.
//! Keep it self-contained: it may use only `clap` and `std`.

use clap::Parser;
use std::path::PathBuf;

/// Play the CGP side of the Helper protocol against a helper program.
#[derive(Parser, Debug)]
#[command(name = "cgp-helper-sim", version)]
#[command(after_help = "Examples:\n  \
    cgp-helper-sim --transcript testdata/auth/demo.in --print -- cgp-auth --config auth.toml\n  \
    cgp-helper-sim --generate 100000 --in-flight 16 -- cgp-filter\n  \
    cgp-helper-sim --generate 10000 --request 'VRFY user{n%100}@example.test pw' -- cgp-auth")]
pub struct Cli {
    /// Working directory of the helper (CGP starts helpers in its base
    /// directory).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Requests sent before waiting for replies.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub in_flight: u32,
    /// Interface version sent in the opening INTF (a transcript that starts
    /// with INTF sends its own).
    #[arg(long, default_value_t = 4)]
    pub intf: u32,
    /// Send the lines of this file (a `.in` transcript).
    #[arg(long, value_name = "FILE", conflicts_with = "generate")]
    pub transcript: Option<PathBuf>,
    /// Send this many generated requests, then QUIT.
    #[arg(long, value_name = "N")]
    pub generate: Option<u64>,
    /// Text of a generated request after its sequence number; `{n}` becomes
    /// the request index and `{n%K}` the index modulo K. Repeat to mix;
    /// requests cycle through the templates. Default: KEY, INTF, unknown
    /// commands.
    #[arg(long = "request", value_name = "TEMPLATE")]
    pub requests: Vec<String>,
    /// Print every line the helper writes.
    #[arg(long)]
    pub print: bool,
    /// Longest wait for any one reply, in seconds.
    #[arg(long, default_value_t = 30)]
    pub reply_timeout: u64,
    /// The helper program and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}
