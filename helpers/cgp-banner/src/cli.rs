//! The command line of `cgp-banner`, kept in its own module so that the man
//! page generator (`packaging/manpages`) renders this very definition.
//! Keep it self-contained: it may use only `clap` and `cgp_runtime`.

use cgp_runtime::CommonArgs;
use clap::{Parser, Subcommand};

/// Banner helper for CommuniGate Pro XIMSS and WebUser clients.
///
/// Without a subcommand it runs the Helper protocol on stdin/stdout (as CGP
/// starts it). `announce` manages announcements, also while the helper runs.
#[derive(Parser)]
#[command(name = "cgp-banner", version)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Add, list or remove announcements (store.path of --config).
    #[command(subcommand)]
    Announce(AnnounceCmd),
}

#[derive(Subcommand)]
pub enum AnnounceCmd {
    /// Add an announcement; prints its id.
    Add {
        /// The text shown (escaped for HTML banners).
        #[arg(long)]
        text: String,
        /// Who sees it: all, domain:<domain> or group:<group>.
        #[arg(long, default_value = "all")]
        target: String,
        /// Start, RFC 3339 (`2026-11-23T08:00:00Z`); default now.
        #[arg(long)]
        from: Option<String>,
        /// End, RFC 3339.
        #[arg(
            long,
            required_unless_present = "duration",
            conflicts_with = "duration"
        )]
        until: Option<String>,
        /// Length of the window from its start (`2h`, `3days`).
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        /// Banner types it shows in (repeatable); default all.
        #[arg(long = "type", value_name = "TYPE")]
        types: Vec<String>,
    },
    /// List announcements.
    List {
        /// Include expired ones.
        #[arg(long)]
        all: bool,
    },
    /// Remove an announcement by id.
    Remove { id: String },
}
