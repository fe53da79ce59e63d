//! The command line of `cgp-helper-sim`, kept in its own module so that the
//! man page generator (`packaging/manpages`) renders this very definition.
//! Keep it self-contained: it may use only `clap` and `std`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// The largest `--generate` count: past it a run would take hours, so a
/// larger number is a typing error.
pub const MAX_GENERATE: u64 = 100_000_000;

/// Play the CGP side of the Helper protocol against a helper program.
#[derive(Parser, Debug)]
#[command(name = "cgp-helper-sim", version)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
#[command(after_help = "Examples:\n  \
    cgp-helper-sim --transcript testdata/auth/demo.in --print -- cgp-auth --config auth.toml\n  \
    cgp-helper-sim --generate 100000 --in-flight 16 -- cgp-filter\n  \
    cgp-helper-sim --generate 10000 --request 'VRFY user{n%100}@example.test pw' -- cgp-auth\n  \
    cgp-helper-sim tap --out /var/lib/cgp-helpers/capture/banner.cap -- /usr/bin/cgp-banner --config /etc/cgp-helpers/banner.toml\n  \
    cgp-helper-sim --transcript banner.cap --fill 3='\"pa ss\"' -- cgp-banner --config banner.toml")]
pub struct Cli {
    #[command(subcommand)]
    pub mode: Option<Mode>,
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
    /// Send the lines of this file (a `.in` transcript, or a capture made
    /// by `tap`: its requests), read as they are sent, so a pipe or an
    /// endless file works.
    #[arg(long, value_name = "FILE", conflicts_with = "generate")]
    pub transcript: Option<PathBuf>,
    /// A value for the masked value `{secret:N}` of a capture, as it goes on
    /// the wire (quote a password with spaces: `3='"pa ss"'`). Unfilled ones
    /// get a stand-in of their type and length.
    #[arg(long = "fill", value_name = "N=VALUE", requires = "transcript")]
    pub fills: Vec<String>,
    /// Send this many generated requests, then QUIT.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_GENERATE))]
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

#[derive(Subcommand, Debug)]
pub enum Mode {
    /// Run a helper under CGP and record its conversation, secrets masked
    ///
    /// Set it as the helper's Program Path in front of the real one. Bytes
    /// pass through unchanged both ways; both directions are recorded with
    /// times, secrets masked, to a file created 0600. Signals (TERM, HUP,
    /// INT) are passed to the helper and its exit status is passed on.
    Tap(TapArgs),
}

#[derive(clap::Args, Debug)]
pub struct TapArgs {
    /// The capture file (appended to; rotated to FILE.1, FILE.2, …).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Size at which the capture file is rotated.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20,
          value_parser = clap::value_parser!(u64).range(4096..))]
    pub max_bytes: u64,
    /// Rotated files kept (FILE.1 … FILE.N); older ones are removed.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub keep: u32,
    /// The helper program and its arguments, as they stood in Program Path.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}
