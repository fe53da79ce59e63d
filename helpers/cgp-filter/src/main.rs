//! `cgp-filter`: a rule-driven content filter for CommuniGate Pro mail rules
//! (`ExternalFilter`), with directory facts about the sender.

use cgp_lookup::cloudpbx::sms::SmsGateway;
use cgp_lookup::store::remote::Outcome;
use cgp_runtime::{Ctx, Helper, HelperInfo, run};
use cgp_wire::{Reply, Request};
use clap::Parser;
use cli::Cli;
use config::FilterConfig;
use filter::{Filter, Parts};
use limit::Counter;
use sms::Notifier;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

mod cli;
mod config;
mod directory;
mod filter;
mod limit;
mod message;
mod patterns;
mod queue;
mod rules;
mod sms;
mod template;
mod wire;

struct FilterHelper {
    filter: Arc<Filter<cgp_lookup::directory::Directory>>,
    /// The `*` line about left-out modifiers is written once per process.
    warned_modifiers: AtomicBool,
}

impl Helper for FilterHelper {
    type Config = FilterConfig;

    async fn build(cfg: FilterConfig, previous: Option<Arc<Self>>) -> Result<Self, String> {
        // Compiled when the file was read; `validate` reported an error.
        let rules = cfg.rules.map_err(|e| e.to_string())?;
        let cfg = cfg.file;
        // The directory is asked for the attributes the rules read.
        let attributes: Vec<&str> = rules.attributes.iter().map(String::as_str).collect();
        let directory = match &cfg.directory {
            Some(d) => Some(d.open(&attributes).map_err(|e| e.to_string())?),
            None => None,
        };
        // The counting store stays open across a reload (sled locks it);
        // `[store]` changes take effect at the next start.
        let kept = previous.and_then(|p| p.filter.counter().cloned());
        let counter = match kept {
            Some(c) => Some(c),
            None if !rules.limits.is_empty() => {
                let store = cfg.store.clone();
                let c = tokio::task::spawn_blocking(move || Counter::open(&store))
                    .await
                    .map_err(|e| format!("opening the store: {e}"))??;
                Some(Arc::new(c))
            }
            None => None,
        };
        let notifier = match &cfg.sms {
            Some(sms) => {
                let gateway =
                    SmsGateway::new(&sms.cloudpbx).map_err(|e| format!("sms.cloudpbx: {e}"))?;
                Some(Notifier::start(sms, gateway, directory.clone()))
            }
            None => None,
        };
        let parts = Parts { counter, notifier };
        Ok(FilterHelper {
            filter: Arc::new(Filter::new(&cfg, rules, directory, parts)?),
            warned_modifiers: AtomicBool::new(false),
        })
    }

    async fn handle(self: Arc<Self>, ctx: Ctx, req: Request) -> Reply {
        let (reply, notes) = self.filter.answer(ctx.intf(), &req).await;
        if notes.dropped_modifiers && !self.warned_modifiers.swap(true, Ordering::Relaxed) {
            ctx.info("MIRRORTO/ADDROUTE rules matched but the server speaks INTF 3 or lower: they are left out (set filter.dialect = \"v4\" if the server takes them)");
        }
        if let Some(health) = notes.store {
            let outcome = Outcome::<()> {
                result: Ok(()),
                health: Some(health),
            };
            outcome.reported(
                &|text| ctx.info(text),
                "cgp-filter",
                "sender limits follow failure.store_down",
                "sender limits counted again",
            );
        }
        if let Some(path) = notes.refused {
            ctx.info(&format!(
                "FILE {path:?} refused: it leads outside the base directory"
            ));
        }
        reply
    }

    fn timeout_reply(&self, _: &str) -> Reply {
        self.filter.timeout_reply()
    }

    fn oversize_reply(&self, _: &str) -> Reply {
        self.filter.oversize_reply()
    }
}

/// Process policy is the binary's own (see `cgp_runtime::process`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    cgp_runtime::process::helper_defaults();
    let cli = Cli::parse();
    let info = HelperInfo {
        name: "cgp-filter",
        version: env!("CARGO_PKG_VERSION"),
        max_intf: 4,
    };
    run::<FilterHelper>(info, &cli.common)
}
