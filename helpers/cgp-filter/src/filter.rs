//! One `FILE` request from start to reply: the path check, the read, the
//! rules, the failure policy and the reply dialect.

use crate::config::{FailureConfig, FilterConfig, Policy, Settings};
use crate::directory::{Cached, Directory};
use crate::queue::{BaseDir, Limits, OpenError, QueueFile};
use crate::reply::Verdict;
use crate::rules::RuleSet;
use cgp_wire::data::Value;
use cgp_wire::{Reply, Request};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

pub struct Filter<D> {
    rules: Arc<RuleSet>,
    settings: Settings,
    failure: FailureConfig,
    base: BaseDir,
    directory: Option<Cached<D>>,
}

/// What the handler reports besides the reply, for `*` lines.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Notes {
    pub dropped_modifiers: bool,
    /// A `FILE` path refused because it leads out of the base directory.
    pub refused: Option<String>,
}

impl<D: Directory> Filter<D> {
    /// Builds the filter from a configuration and its compiled rules;
    /// `directory` is the back end for `[directory]`, when there is one.
    pub fn new(
        cfg: &FilterConfig,
        rules: Arc<RuleSet>,
        directory: Option<D>,
    ) -> Result<Filter<D>, String> {
        let base = match &cfg.filter.base_dir {
            Some(b) => b.clone(),
            None => std::env::current_dir().map_err(|e| format!("working directory: {e}"))?,
        };
        let base =
            BaseDir::open(&base).map_err(|e| format!("filter.base_dir {}: {e}", base.display()))?;
        let ttl = cfg
            .directory
            .as_ref()
            .map(|d| d.cache_ttl)
            .unwrap_or_default();
        Ok(Filter {
            rules,
            settings: cfg.filter.clone(),
            failure: cfg.failure.clone(),
            base,
            directory: directory.map(|d| Cached::new(d, ttl)),
        })
    }

    /// Answers one request other than INTF, KEY and QUIT.
    pub async fn answer(&self, intf: u32, req: &Request) -> (Reply, Notes) {
        if req.command != "FILE" {
            // protocol.md §7 row 9: filters answer FAILURE to what they do not know.
            return (Reply::failure("unsupported command"), Notes::default());
        }
        let name = match req.args().as_deref() {
            Ok([Value::Str(name), rest @ ..]) => {
                if !rest.is_empty()
                    && !matches!(rest, [h] if h.as_str().is_some_and(|s| s.eq_ignore_ascii_case("HEADERS")))
                {
                    tracing::debug!(args = rest.len(), "extra FILE arguments ignored");
                }
                name.clone()
            }
            _ => return (Reply::failure("FILE needs a file name"), Notes::default()),
        };
        let name = OsStr::from_bytes(&name);
        let shown = name.to_string_lossy().into_owned();
        let (file, path) = match self.base.open_file(name) {
            Ok(opened) => opened,
            Err(OpenError::Escapes) => {
                tracing::warn!(file = %shown, base = %self.base.path().display(), "FILE outside the base directory refused");
                let notes = Notes {
                    refused: Some(shown),
                    ..Notes::default()
                };
                return (Reply::failure("file outside the base directory"), notes);
            }
            Err(OpenError::Unreadable(e)) => {
                tracing::warn!(file = %shown, error = %e, "queue file cannot be opened");
                let v = self.policy(self.failure.unreadable, None);
                return (v.reply(true).0, Notes::default());
            }
        };
        let verdict = self.verdict(file, path, &shown).await;
        let (reply, dropped) = verdict.reply(self.settings.dialect.modifiers(intf));
        if dropped {
            tracing::warn!("MIRRORTO/ADDROUTE left out: the negotiated dialect has no modifiers");
        }
        let notes = Notes {
            dropped_modifiers: dropped,
            ..Notes::default()
        };
        (reply, notes)
    }

    /// The verdict on a queue file inside the base directory.
    async fn verdict(&self, file: std::fs::File, path: PathBuf, shown: &str) -> Verdict {
        let limits = Limits {
            envelope: self.settings.max_envelope_bytes,
            header: self.settings.max_header_bytes,
            body: if self.rules.needs_body {
                self.settings.scan_limit
            } else {
                0
            },
        };
        // Read on the dispatcher thread, before the first wait: a queue file
        // CGP has just written is in the page cache, and a hand-off to the
        // blocking pool costs more (two thread wake-ups) than reading a few
        // KiB. Attachment rules also read up to `scan_limit` of body; that
        // stays here too, so that no more bodies than dispatcher threads
        // are ever in memory at once.
        let qf = match QueueFile::read(file, &path, limits) {
            Ok(qf) => qf,
            Err(e) => {
                tracing::warn!(file = %shown, error = %e, "queue file cannot be read");
                let age = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok());
                return self.policy(self.failure.unreadable, age);
            }
        };
        if qf.header_truncated {
            tracing::info!(queue_id = %qf.queue_id, limit = self.settings.max_header_bytes, "header longer than the limit; the rest is not looked at");
        }
        let verdict = match self.rules.evaluate(&qf, self.directory.as_ref()).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(queue_id = %qf.queue_id, error = %e.0, "directory unavailable");
                return self.policy(self.failure.directory_down, Some(qf.age));
            }
        };
        // The whole envelope, unknown lines included, for whoever turns on
        // debug logging to see why a rule matched or not.
        tracing::debug!(
            queue_id = %qf.queue_id,
            envelope = ?qf.envelope.lines().collect::<Vec<_>>(),
            ?verdict,
            "filtered"
        );
        self.not_for_ever(verdict, Some(qf.age))
    }

    /// The verdict of a failure policy.
    fn policy(&self, policy: Policy, age: Option<std::time::Duration>) -> Verdict {
        let v = policy_verdict(policy, &self.failure.text);
        self.not_for_ever(v, age)
    }

    /// A temporary reject of a file older than `failure.max_age` becomes the
    /// `after_max_age` verdict, so no message stays queued for ever.
    fn not_for_ever(&self, v: Verdict, age: Option<std::time::Duration>) -> Verdict {
        match (&v, age) {
            (Verdict::Reject(_), Some(age)) if age > self.failure.max_age => {
                tracing::info!(
                    age_s = age.as_secs(),
                    "queue file past failure.max_age: not rejected again"
                );
                policy_verdict(self.failure.after_max_age, &self.failure.text)
            }
            _ => v,
        }
    }

    /// The reply when the deadline passes: most likely a directory that
    /// stopped answering, so its policy applies.
    pub fn timeout_reply(&self) -> Reply {
        policy_verdict(self.failure.directory_down, &self.failure.text)
            .reply(true)
            .0
    }

    pub fn oversize_reply(&self) -> Reply {
        policy_verdict(self.settings.oversize.action, &self.settings.oversize.text)
            .reply(true)
            .0
    }
}

fn policy_verdict(policy: Policy, text: &str) -> Verdict {
    match policy {
        Policy::Pass => Verdict::pass(),
        Policy::Rejected => Verdict::Reject(text.to_string()),
        Policy::Failure => Verdict::Failure(text.to_string()),
    }
}
