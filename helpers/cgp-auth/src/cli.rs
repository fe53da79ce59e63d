//! The command line of `cgp-auth`, kept in its own module so that the man
//! page generator (`packaging/manpages`) renders this very definition.
//! Keep it self-contained: it may use only `clap` and `cgp_runtime`.

use cgp_runtime::CommonArgs;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// External authenticator for CommuniGate Pro (VRFY, SASL, READPLAIN, NEW).
///
/// Without a subcommand it runs the Helper protocol on stdin/stdout (as CGP
/// starts it). `provision` runs or shows what NEW does for one account.
#[derive(Parser)]
#[command(name = "cgp-auth", version)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Read a password from stdin (one line), print its hash in this scheme
    /// for a `[[static.users]]` entry, and exit.
    #[arg(long, value_name = "SCHEME")]
    pub hash_password: Option<HashScheme>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run what NEW does for one account, or only show it.
    ///
    /// Looks the account's person up and runs the steps of its provisioning
    /// profile through the CGP CLI, reporting each (as NEW would, for
    /// accounts made ahead of first use). Exit status: 0 done, 1 bad
    /// configuration or argument, 2 no such person, not permitted or a
    /// value missing from the entry, 3 directory or CLI unavailable, 4 the
    /// CLI refused a step.
    Provision {
        /// Print the CLI commands with their values (passwords masked) and
        /// send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Configuration file (TOML); the same as the global --config.
        #[arg(long, short = 'c', value_name = "PATH")]
        config: Option<PathBuf>,
        /// The account, user@domain.
        #[arg(value_name = "ACCOUNT")]
        account: String,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum HashScheme {
    Ssha512,
    Bcrypt,
    Argon2,
}
