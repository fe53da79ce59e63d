//! One `FILE` request from start to reply: the path check, the read, the
//! rules, the failure policy and the reply dialect.

use crate::config::{ConfigFile, FailureConfig, Policy, Settings};
use crate::directory::{Directory, DirectoryError, Recall};
use crate::limit::Counter;
use crate::queue::{BaseDir, Limits, OpenError, QueueFile};
use crate::rules::{Known, Missing, RuleSet};
use crate::sms::Notifier;
use crate::wire::{self, Verdict};
use cgp_lookup::store::remote::Health;
use cgp_runtime::compute;
use cgp_wire::{Reply, Request};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub struct Filter<D> {
    rules: Arc<RuleSet>,
    settings: Settings,
    failure: FailureConfig,
    base: BaseDir,
    directory: Option<D>,
    /// Where `sender_limit` counts; present when some rule has one.
    counter: Option<Arc<Counter>>,
    notifier: Option<Notifier>,
}

/// What a filter has besides its configuration and directory.
pub struct Parts {
    pub counter: Option<Arc<Counter>>,
    pub notifier: Option<Notifier>,
}

/// What the handler reports besides the reply, for `*` lines.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Notes {
    pub dropped_modifiers: bool,
    /// A `FILE` path refused because it leads out of the base directory.
    pub refused: Option<String>,
    /// The shared store was lost or is back (once per change).
    pub store: Option<Health>,
}

/// Where a request stands after its file was read and its rules evaluated.
enum Step {
    Decided(Verdict),
    Refused(String),
    /// The rules need a directory answer: the request waits for it with
    /// these, then reads its file again. No buffer of the message is held
    /// while it waits.
    Asks(Missing, Waiting),
}

/// What a request keeps while it waits for the directory: small facts.
struct Waiting {
    file: File,
    path: PathBuf,
    queue_id: String,
    age: Duration,
    known: Known,
}

impl<D: Directory + Recall> Filter<D> {
    /// Builds the filter from a configuration and its compiled rules;
    /// `directory` is the back end for `[directory]`, when there is one.
    pub fn new(
        cfg: &ConfigFile,
        rules: Arc<RuleSet>,
        directory: Option<D>,
        parts: Parts,
    ) -> Result<Filter<D>, String> {
        let base = match &cfg.filter.base_dir {
            Some(b) => b.clone(),
            None => std::env::current_dir().map_err(|e| format!("working directory: {e}"))?,
        };
        let base =
            BaseDir::open(&base).map_err(|e| format!("filter.base_dir {}: {e}", base.display()))?;
        Ok(Filter {
            rules,
            settings: cfg.filter.clone(),
            failure: cfg.failure.clone(),
            base,
            directory,
            counter: parts.counter,
            notifier: parts.notifier,
        })
    }

    /// The counting store, to keep across a reload (sled locks it).
    pub fn counter(&self) -> Option<&Arc<Counter>> {
        self.counter.as_ref()
    }

    /// Answers one request other than INTF, KEY and QUIT. Opening, reading
    /// and evaluating run on the blocking pool (`compute`), so at most one
    /// message per core is in memory; waits for the directory do not.
    pub async fn answer(self: &Arc<Self>, intf: u32, req: &Request) -> (Reply, Notes) {
        let name = match wire::file_name(req) {
            Ok(name) => name,
            Err(reply) => return (reply, Notes::default()),
        };
        let this = self.clone();
        let mut step = compute(move || this.first_step(&name)).await;
        let mut store = None;
        let verdict = loop {
            match step {
                Step::Decided(v) => break v,
                Step::Refused(shown) => {
                    let notes = Notes {
                        refused: Some(shown),
                        ..Notes::default()
                    };
                    return (Reply::failure("file outside the base directory"), notes);
                }
                Step::Asks(Missing::Count { limit, user }, mut waiting) => {
                    let rate = self.rules.limits[limit];
                    let Some(counter) = &self.counter else {
                        // Built with every configuration that has limits.
                        break self.policy(self.failure.store_down, Some(waiting.age));
                    };
                    let counted = counter.count(&user, &waiting.queue_id, rate).await;
                    store = store.or(counted.health);
                    match counted.result {
                        Ok(n) => waiting.known.counted(limit, n),
                        Err(e) => {
                            cgp_runtime::metrics::count(cgp_runtime::metrics::Event::BackendError);
                            tracing::warn!(queue_id = %waiting.queue_id, error = %e, "sender limit not counted");
                            break self.policy(self.failure.store_down, Some(waiting.age));
                        }
                    }
                    let this = self.clone();
                    step = compute(move || this.next_step(waiting)).await;
                }
                Step::Asks(missing, mut waiting) => {
                    if let Err(e) = self.ask(missing, &mut waiting.known).await {
                        cgp_runtime::metrics::count(cgp_runtime::metrics::Event::BackendError);
                        tracing::warn!(queue_id = %waiting.queue_id, error = %e, "directory unavailable");
                        break self.policy(self.failure.directory_down, Some(waiting.age));
                    }
                    let this = self.clone();
                    step = compute(move || this.next_step(waiting)).await;
                }
            }
        };
        let (reply, dropped) = verdict.reply(self.settings.dialect.modifiers(intf));
        if dropped {
            tracing::warn!("MIRRORTO/ADDROUTE left out: the negotiated dialect has no modifiers");
        }
        let notes = Notes {
            dropped_modifiers: dropped,
            store,
            ..Notes::default()
        };
        (reply, notes)
    }

    /// Asks the directory what the rules miss.
    async fn ask(&self, missing: Missing, known: &mut Known) -> Result<(), DirectoryError> {
        match &self.directory {
            Some(dir) => known.ask(missing, dir).await,
            // Without a directory nothing is missing: `evaluate` gets no
            // `Recall` and takes every answer as "none".
            None => Ok(()),
        }
    }

    /// Opens the file a request names and decides what it can.
    fn first_step(&self, name: &[u8]) -> Step {
        let name = OsStr::from_bytes(name);
        match self.base.open_file(name) {
            Ok((file, path)) => self.decide(file, path, Known::default()),
            Err(OpenError::Escapes) => {
                let shown = name.to_string_lossy().into_owned();
                tracing::warn!(file = %shown, base = %self.base.path().display(), "FILE outside the base directory refused");
                Step::Refused(shown)
            }
            Err(OpenError::Unreadable(e)) => {
                tracing::warn!(file = %name.to_string_lossy(), error = %e, "queue file cannot be opened");
                Step::Decided(self.policy(self.failure.unreadable, None))
            }
        }
    }

    /// Reads the file again, from its start, with the answers got.
    fn next_step(&self, mut w: Waiting) -> Step {
        if let Err(e) = w.file.seek(SeekFrom::Start(0)) {
            tracing::warn!(queue_id = %w.queue_id, error = %e, "queue file cannot be read");
            return Step::Decided(self.policy(self.failure.unreadable, Some(w.age)));
        }
        self.decide(w.file, w.path, w.known)
    }

    /// Reads a queue file inside the base directory and runs the rules on
    /// it, with the directory answers `known` and those the cache has.
    fn decide(&self, file: File, path: PathBuf, known: Known) -> Step {
        let limits = Limits {
            envelope: self.settings.max_envelope_bytes,
            header: self.settings.max_header_bytes,
            body: if self.rules.needs_body {
                self.settings.scan_limit
            } else {
                0
            },
        };
        let qf = match QueueFile::read(&file, &path, limits) {
            Ok(qf) => qf,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "queue file cannot be read");
                let age = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok());
                return Step::Decided(self.policy(self.failure.unreadable, age));
            }
        };
        if qf.header_truncated {
            tracing::info!(queue_id = %qf.queue_id, limit = self.settings.max_header_bytes, "header longer than the limit; the rest is not looked at");
        }
        let recall = self.directory.as_ref().map(|d| d as &dyn Recall);
        let mut notices = Vec::new();
        let verdict = match self.rules.evaluate(&qf, &known, recall, &mut notices) {
            Ok(v) => v,
            Err(missing) => {
                let waiting = Waiting {
                    file,
                    path,
                    age: qf.age,
                    queue_id: qf.queue_id,
                    known,
                };
                return Step::Asks(missing, waiting);
            }
        };
        if let Some(n) = &self.notifier {
            for notice in notices {
                n.submit(notice);
            }
        }
        // The whole envelope, unknown lines included, for whoever turns on
        // debug logging to see why a rule matched or not.
        tracing::debug!(
            queue_id = %qf.queue_id,
            envelope = ?qf.envelope.lines().collect::<Vec<_>>(),
            ?verdict,
            "filtered"
        );
        Step::Decided(self.not_for_ever(verdict, Some(qf.age)))
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
