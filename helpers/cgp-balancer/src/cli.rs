//! The command line of `cgp-balancer`, kept in its own module so that the man
//! page generator (`packaging/manpages`) renders this very definition.
//! Keep it self-contained: it may use only `clap` and `cgp_runtime`.

use cgp_runtime::CommonArgs;
use clap::Parser;

/// Load-balancer helper for a CommuniGate Pro Dynamic Cluster.
#[derive(Parser)]
#[command(name = "cgp-balancer", version)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
}
