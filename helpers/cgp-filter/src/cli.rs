//! The command line of `cgp-filter`, kept in its own module so that the man
//! page generator (`packaging/manpages`) renders this very definition.
//! Keep it self-contained: it may use only `clap` and `cgp_runtime`.

use cgp_runtime::CommonArgs;
use clap::Parser;

/// Content filter for CommuniGate Pro mail rules (ExternalFilter).
#[derive(Parser)]
#[command(name = "cgp-filter", version)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
}
