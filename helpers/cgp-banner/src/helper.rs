//! The banner helper: picks the first rule that matches a request, gathers
//! what its template needs (directory, PBX, announcements) within the
//! request's deadline, and answers the rendered banner, or the rule's
//! default banner when any of that cannot be had.

use crate::announce::{Announcement, Announcements};
use crate::config::{BannerConfig, Rule};
use crate::people::in_group;
use crate::template::{Filled, Format, Var, push_escaped};
use crate::wire::{self, BannerRequest, Refused};
use cgp_lookup::ami::Ami;
use cgp_lookup::cloudpbx::CloudPbx;
use cgp_lookup::directory::{Account, Directory, DirectoryError, Person};
use cgp_lookup::pbx::{ExtState, ExtensionId, MissedCalls, Pbx, PbxBackend};
use cgp_lookup::store::Backend;
use cgp_runtime::metrics::{self, Event};
use cgp_runtime::{Ctx, Helper};
use cgp_wire::data::encode_quoted;
use cgp_wire::shape::UnknownShapes;
use cgp_wire::{Reply, Request};
use std::sync::Arc;
use std::time::Duration;

/// Kept back from the request deadline so that the default banner is sent
/// before the runtime's own timeout reply would be.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);

/// Longest reply line CGP accepts, end of line included.
const MAX_LINE: usize = 4096;

pub struct Banner {
    config: BannerConfig,
    /// `[[announcement]]`s of the configuration.
    fixed: Vec<Announcement>,
    /// Where people are found, by the request's address.
    directory: Directory,
    pbx: Option<Arc<Pbx>>,
    announcements: Option<Arc<Announcements>>,
    /// Requests outside the reconstructed grammar, reported once per shape
    /// (kept over a reload, so a shape is reported once per process).
    unknown_shapes: Arc<UnknownShapes>,
}

impl Helper for Banner {
    type Config = BannerConfig;

    async fn build(config: BannerConfig, previous: Option<Arc<Self>>) -> Result<Self, String> {
        // Keep what is expensive or exclusive when its settings did not
        // change: PBX connections with their cache, and the store's lock.
        let same_pbx =
            |p: &&Arc<Banner>| p.config.ami == config.ami && p.config.cloudpbx == config.cloudpbx;
        let pbx = match previous.as_ref().filter(same_pbx) {
            Some(p) => p.pbx.clone(),
            None => start_pbx(&config)?,
        };
        let keep_store = |p: &&Arc<Banner>| match config.store.backend {
            // The running helper holds the store's lock: opening the same
            // path again would wait for itself.
            Backend::Sled => {
                p.config.store.backend == Backend::Sled && p.config.store.path == config.store.path
            }
            // Nothing exclusive: a changed `[store.redis]` applies at once.
            Backend::Redis => p.config.store == config.store,
        };
        let announcements = match previous.as_ref().filter(keep_store) {
            Some(p) => {
                if p.config.store != config.store {
                    tracing::warn!("store.spool and store.spool_poll take effect after a restart");
                }
                p.announcements.clone()
            }
            None => match (
                &config.store.backend,
                &config.store.path,
                config.store.spool_dir(),
            ) {
                (Backend::Redis, _, _) => Some(
                    Announcements::start_shared(&config.store.redis, config.store.refresh).await?,
                ),
                (Backend::Sled, Some(path), Some(spool)) => {
                    Some(Announcements::start(path.clone(), spool, config.store.spool_poll).await)
                }
                (Backend::Sled, _, _) => None,
            },
        };
        Ok(Banner {
            fixed: config
                .announcements
                .iter()
                .enumerate()
                .map(|(i, a)| a.to_announcement(i))
                .collect(),
            directory: config
                .directory
                .open(&config.attributes.names())
                .map_err(|e| e.to_string())?,
            config,
            pbx,
            announcements,
            unknown_shapes: previous
                .map(|p| p.unknown_shapes.clone())
                .unwrap_or_default(),
        })
    }

    async fn handle(self: Arc<Self>, ctx: Ctx, req: Request) -> Reply {
        if let Some(a) = &self.announcements {
            for line in a.take_notices() {
                ctx.info(&line);
            }
        }
        let br = match wire::parse(&req) {
            Ok(b) => b,
            Err(Refused::UnknownShape) => {
                self.unknown_shapes.report(&req, "no banner");
                return wire::no_banner();
            }
            Err(Refused::Bad(reply)) => return reply,
        };
        let Some(rule) = self
            .config
            .banners
            .iter()
            .find(|r| r.matches(&br.kind, br.account.as_deref(), br.domain()))
        else {
            return wire::no_banner();
        };
        let budget = ctx.remaining().saturating_sub(DEADLINE_MARGIN);
        let rendered = tokio::time::timeout(budget, self.render(rule, &br)).await;
        match rendered {
            Ok(Some(text)) if text.trim().is_empty() => wire::no_banner(),
            Ok(Some(text)) => {
                fit(&req.seq, text, rule.format).unwrap_or_else(|| self.fallback(Some(rule)))
            }
            Ok(None) | Err(_) => self.fallback(Some(rule)),
        }
    }

    fn timeout_reply(&self, _: &str) -> Reply {
        self.fallback(None)
    }

    fn panic_reply(&self, _: &str) -> Reply {
        self.fallback(None)
    }

    fn oversize_reply(&self, _: &str) -> Reply {
        self.fallback(None)
    }
}

/// Every PBX system of the configuration behind the one PBX interface (the
/// banner never talks to a system directly); `None` when there is none.
fn start_pbx(config: &BannerConfig) -> Result<Option<Arc<Pbx>>, String> {
    let mut backends: Vec<Arc<dyn PbxBackend>> = Vec::new();
    if !config.ami.servers.is_empty() {
        backends.push(Arc::new(Ami::start(&config.ami)));
    }
    for c in &config.cloudpbx {
        backends.push(Arc::new(CloudPbx::start(c).map_err(|e| e.to_string())?));
    }
    if backends.is_empty() {
        return Ok(None);
    }
    Pbx::start(backends, config.cache.pbx_ttl)
        .map(Some)
        .map_err(|e| e.to_string())
}

impl Banner {
    /// The rule's default banner, else the global one, else no banner.
    fn fallback(&self, rule: Option<&Rule>) -> Reply {
        rule.and_then(|r| r.default.as_deref())
            .or(self.config.default_banner.as_deref())
            .map_or_else(wire::no_banner, wire::banner)
    }

    /// The banner text, or `None` when some value it needs is unavailable.
    async fn render(&self, rule: &Rule, br: &BannerRequest) -> Option<String> {
        let t = &rule.template;
        let wants_person = [
            Var::RealName,
            Var::Department,
            Var::VmNew,
            Var::VmOld,
            Var::ExtState,
            Var::MissedCalls,
            Var::MissedSince,
        ]
        .into_iter()
        .any(|v| t.uses(v));
        let wants_groups = t.uses(Var::Announcements);
        let person = match &br.account {
            Some(a) if wants_person || wants_groups => match self.person(a).await {
                Ok(p) => p,
                Err(e) => {
                    metrics::count(Event::BackendError);
                    tracing::warn!(error = %e, "directory lookup failed");
                    // Announcements for everyone can still be shown; the
                    // person's own values cannot.
                    if wants_person {
                        return None;
                    }
                    None
                }
            },
            _ => None,
        };
        let person = person.as_deref();
        let (vm, ext, missed) = tokio::join!(
            self.voicemail(t.uses(Var::VmNew) || t.uses(Var::VmOld), person),
            self.extension(t.uses(Var::ExtState), person),
            self.missed_calls(t.uses(Var::MissedCalls) || t.uses(Var::MissedSince), person),
        );
        let announcements = t
            .uses(Var::Announcements)
            .then(|| self.announcements_text(br, person, rule.format));
        let attrs = &self.config.attributes;
        t.render(rule.format, |v| {
            let raw = match v {
                Var::Account => br.account.clone(),
                Var::User => br.user().map(str::to_string),
                Var::Domain => br.domain().map(str::to_string),
                Var::Type => Some(br.kind.clone()),
                Var::RealName => attrs.real_name(person?).map(str::to_string),
                Var::Department => attrs.department(person?).map(str::to_string),
                Var::VmNew => vm.map(|(n, _)| n.to_string()),
                Var::VmOld => vm.map(|(_, o)| o.to_string()),
                Var::ExtState => ext.map(|s| s.words().to_string()),
                Var::MissedCalls => missed.map(|m| m.count.to_string()),
                Var::MissedSince => missed.and_then(|m| clock(m.since)),
                Var::Announcements => return announcements.clone().map(Filled::Escaped),
            };
            raw.map(Filled::Raw)
        })
    }

    /// The person whose mail address the request's account is.
    async fn person(&self, account: &str) -> Result<Option<Arc<Person>>, DirectoryError> {
        // The wire already checked `user@domain`; what the directory's
        // account type refuses is nobody's address.
        let Ok(address) = Account::parse(account.as_bytes()) else {
            return Ok(None);
        };
        self.directory.find_by_mail(&address).await
    }

    async fn voicemail(&self, wanted: bool, person: Option<&Person>) -> Option<(u32, u32)> {
        if !wanted {
            return None;
        }
        let (pbx, p, attrs) = (self.pbx.as_ref()?, person?, &self.config.attributes);
        match pbx.voicemail(attrs.pbx(p), attrs.mailbox(p)?).await {
            Ok(c) => Some((c.new, c.old)),
            Err(e) => {
                metrics::count(Event::BackendError);
                tracing::debug!(error = %e, "voicemail count unavailable");
                None
            }
        }
    }

    /// The person's extension: the PBX it is on and its id there.
    fn extension_of<'p>(
        &self,
        person: Option<&'p Person>,
    ) -> Option<(Option<&'p str>, ExtensionId)> {
        let (p, attrs) = (person?, &self.config.attributes);
        let extension = ExtensionId {
            exten: attrs.extension(p)?.to_string(),
            context: attrs.context(p).to_string(),
        };
        Some((attrs.pbx(p), extension))
    }

    async fn extension(&self, wanted: bool, person: Option<&Person>) -> Option<ExtState> {
        if !wanted {
            return None;
        }
        let (pbx, (name, extension)) = (self.pbx.as_ref()?, self.extension_of(person)?);
        match pbx.extension(name, &extension).await {
            Ok(s) => Some(s),
            Err(e) => {
                metrics::count(Event::BackendError);
                tracing::debug!(error = %e, "extension state unavailable");
                None
            }
        }
    }

    async fn missed_calls(&self, wanted: bool, person: Option<&Person>) -> Option<MissedCalls> {
        if !wanted {
            return None;
        }
        let (pbx, (name, extension)) = (self.pbx.as_ref()?, self.extension_of(person)?);
        match pbx.missed_calls(name, &extension).await {
            Ok(m) => Some(m),
            Err(e) => {
                metrics::count(Event::BackendError);
                tracing::debug!(error = %e, "missed calls unavailable");
                None
            }
        }
    }

    /// The announcements that apply, escaped for the format and joined one
    /// per line.
    fn announcements_text(
        &self,
        br: &BannerRequest,
        person: Option<&Person>,
        format: Format,
    ) -> String {
        let stored = self
            .announcements
            .as_ref()
            .map(|a| a.current())
            .unwrap_or_default();
        let now = crate::announce::now();
        let separator = match format {
            Format::Text => "\n",
            Format::Html => "<br>",
        };
        let mut out = String::new();
        for ann in self
            .fixed
            .iter()
            .chain(stored.iter())
            .filter(|x| x.applies(now, &br.kind, br.domain(), |g| in_group(person, g)))
        {
            if !out.is_empty() {
                out.push_str(separator);
            }
            push_escaped(&mut out, &ann.text, format);
        }
        out
    }
}

/// A point in time as `HH:MM` in the host's time zone (`None` outside the
/// years a clock can show).
fn clock(t: std::time::SystemTime) -> Option<String> {
    let ts = jiff::Timestamp::try_from(t).ok()?;
    let local = ts.to_zoned(jiff::tz::TimeZone::system());
    Some(local.strftime("%H:%M").to_string())
}

/// The reply for a rendered banner, within the 4096-byte line. Text banners
/// too long are cut (ending in `…`); an HTML banner cannot be cut safely, so
/// `None` (the caller sends the default banner).
fn fit(seq: &[u8], text: String, format: Format) -> Option<Reply> {
    let whole = wire::banner(&text);
    if whole.line_len(seq) <= MAX_LINE {
        return Some(whole);
    }
    if format == Format::Html {
        return None;
    }
    let budget = MAX_LINE - wire::banner("…").line_len(seq);
    let (mut used, mut end) = (0, 0);
    for (i, c) in text.char_indices() {
        let mut buf = [0u8; 4];
        // Escapes make some characters longer on the wire than in the text.
        let width = encode_quoted(c.encode_utf8(&mut buf).as_bytes()).len() - 2;
        if used + width > budget {
            break;
        }
        used += width;
        end = i + c.len_utf8();
    }
    Some(wire::banner(&format!("{}…", &text[..end])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_banners_are_cut_to_the_line_limit_and_html_ones_refused() {
        let long = "ab\"\n".repeat(3000);
        let r = fit(b"123", long.clone(), Format::Text).unwrap();
        let len = r.line_len(b"123");
        assert!(len <= MAX_LINE && len > MAX_LINE - 4, "{len}");
        assert!(r.body().ends_with("…\"".as_bytes()));
        assert!(fit(b"123", long, Format::Html).is_none());
        let short = fit(b"1", "hi".into(), Format::Html).unwrap();
        assert_eq!(short.body(), br#"OK "hi""#);
    }
}
