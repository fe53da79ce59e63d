//! The command line of `cgp-auth`, kept in its own module so that the man
//! page generator (`packaging/manpages`) renders this very definition.
//! Keep it self-contained: it may use only `clap` and `cgp_runtime`.

use cgp_runtime::CommonArgs;
use clap::Parser;

/// External authenticator for CommuniGate Pro (VRFY, SASL, READPLAIN, NEW).
#[derive(Parser)]
#[command(name = "cgp-auth", version)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Read a password from stdin (one line), print its hash in this scheme
    /// for a `[[static.users]]` entry, and exit.
    #[arg(long, value_name = "SCHEME")]
    pub hash_password: Option<HashScheme>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum HashScheme {
    Ssha512,
    Bcrypt,
    Argon2,
}
