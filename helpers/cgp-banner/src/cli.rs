//! The command line of `cgp-banner`, kept in its own module so that the man
//! page generator (`packaging/manpages`) renders this very definition.
//! Keep it self-contained: it may use only `clap` and `cgp_protocol`.

use cgp_protocol::runtime::CommonArgs;
use clap::Parser;

/// Banner helper for CommuniGate Pro XIMSS and WebUser clients.
#[derive(Parser)]
#[command(name = "cgp-banner", version)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
}
