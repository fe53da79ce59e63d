//! The metrics file: a helper's counters in the Prometheus text format, for
//! node_exporter's textfile collector, written at each stats interval
//! (`[runtime.metrics] file`, see [`crate::config::MetricsConfig`]).
//!
//! The runtime counts requests, replies by kind and their latency; a
//! helper counts what only it sees with [`count`]: cache hits, back-end
//! errors, throttled requests, dropped notifications. The text is made by `prometheus-client`;
//! the file is replaced whole (a temporary file, then a rename), so the
//! collector never reads half of it. It holds counts only, never a name
//! or a request, and is made readable by all (0644) for the collector.

use crate::config::MetricsConfig;
use crate::stats::Stats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode_registry;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a helper counts for the metrics file, wherever it notices it.
#[derive(Clone, Copy, Debug)]
pub enum Event {
    /// A request answered from a cache, without asking the back end.
    CacheHit,
    /// A back end that failed to answer (down, timed out, refused).
    BackendError,
    /// A request slowed down or refused by throttling.
    Throttled,
    /// A notification (the filter's SMS) dropped: its queue was full or
    /// its number's rate was reached.
    NotificationDropped,
}

const EVENTS: [(Event, &str, &str); 4] = [
    (
        Event::CacheHit,
        "cgp_helper_cache_hits",
        "Requests answered from the helper's cache",
    ),
    (
        Event::BackendError,
        "cgp_helper_backend_errors",
        "Back-end requests that failed (down, timed out, refused)",
    ),
    (
        Event::Throttled,
        "cgp_helper_throttled_requests",
        "Requests slowed down or refused by throttling",
    ),
    (
        Event::NotificationDropped,
        "cgp_helper_notifications_dropped",
        "Notifications dropped (queue full or rate reached)",
    ),
];

/// One counter per [`Event`], for the whole process (one helper runs per
/// process, and these are counted where no request context may be at hand).
static COUNTS: [AtomicU64; EVENTS.len()] = [const { AtomicU64::new(0) }; EVENTS.len()];

/// Counts one event for the metrics file.
pub fn count(event: Event) {
    COUNTS[event as usize].fetch_add(1, Ordering::Relaxed);
}

/// The counters at the moment of writing, as `prometheus-client` encodes
/// them.
#[derive(Debug)]
struct Counters {
    requests: u64,
    replies: Vec<(String, u64)>,
}

impl Collector for Counters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let requests = ConstCounter::new(self.requests);
        requests.encode(encoder.encode_descriptor(
            "cgp_helper_requests",
            "Requests read, the runtime's own (INTF, KEY) included",
            None,
            requests.metric_type(),
        )?)?;
        let mut replies = encoder.encode_descriptor(
            "cgp_helper_replies",
            "Replies written, by kind (their first word: OK, ERROR, FAILURE, ...)",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (kind, n) in &self.replies {
            let labels = [("kind", kind.as_str())];
            ConstCounter::new(*n).encode(replies.encode_family(&labels)?)?;
        }
        for (event, name, help) in EVENTS {
            let c = ConstCounter::new(COUNTS[event as usize].load(Ordering::Relaxed));
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}

/// The text of the metrics file. `prometheus-client` writes OpenMetrics,
/// whose counter family is named without `_total` on its `# HELP` and
/// `# TYPE` lines; node_exporter reads the Prometheus text format, where
/// those lines name the sample (`…_total`), and rejects `# EOF`. So the
/// encoder's family lines of counters get the suffix, and no EOF is added.
pub fn render(helper: &str, instance: &str, stats: &Stats) -> String {
    let snapshot = stats.snapshot();
    let labels = [("helper", helper), ("file", instance)]
        .map(|(k, v)| (Cow::Borrowed(k), Cow::Owned(v.to_string())));
    let mut registry = Registry::with_labels(labels.into_iter());
    registry.register(
        "cgp_helper_request_duration_seconds",
        "Time from reading a request to queueing its reply",
        snapshot.latency,
    );
    registry.register_collector(Box::new(Counters {
        requests: snapshot.requests,
        replies: snapshot.replies,
    }));
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode_registry(&mut text, &registry);
    prometheus_text(&text)
}

fn prometheus_text(open_metrics: &str) -> String {
    let counters: Vec<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len() + 16 * counters.len());
    for line in open_metrics.lines() {
        let family = ["# HELP ", "# TYPE "].into_iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(&name).then_some((p, name, tail))
        });
        match family {
            Some((p, name, tail)) => out.push_str(&format!("{p}{name}_total {tail}")),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Replaces the metrics file with the current counters: written beside it
/// under a name the collector skips (not `*.prom`), then renamed over it.
pub fn write(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        // The helpers' umask makes files 0600; the collector runs as
        // another user.
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(text.as_bytes())?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes the metrics file when one is configured. A failure is logged
/// once until the file can be written again, not at every interval.
pub fn publish(config: &MetricsConfig, helper: &str, stats: &Stats) {
    static LAST_ERROR: Mutex<Option<String>> = Mutex::new(None);
    let Some(file) = &config.file else {
        return;
    };
    let result = write(file.path(), &render(helper, file.stem(), stats));
    let mut last = crate::sync::lock(&LAST_ERROR);
    match result {
        Ok(()) => {
            if last.take().is_some() {
                tracing::info!(file = %file.path().display(), "metrics file written again");
            }
        }
        Err(e) => {
            let e = e.to_string();
            if last.as_deref() != Some(e.as_str()) {
                tracing::warn!(file = %file.path().display(), error = %e, "cannot write the metrics file");
                *last = Some(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counters_have_prometheus_family_lines_and_no_eof() {
        let stats = Stats::default();
        stats.request();
        stats.reply("OK", Duration::from_micros(300));
        count(Event::CacheHit);
        let text = render("cgp-auth", "auth", &stats);
        for want in [
            "# TYPE cgp_helper_requests_total counter\n",
            "# HELP cgp_helper_replies_total Replies written",
            "cgp_helper_requests_total{helper=\"cgp-auth\",file=\"auth\"} 1\n",
            "cgp_helper_replies_total{helper=\"cgp-auth\",file=\"auth\",kind=\"OK\"} 1\n",
            "# TYPE cgp_helper_request_duration_seconds histogram\n",
            "cgp_helper_request_duration_seconds_bucket{helper=\"cgp-auth\",file=\"auth\",le=\"0.0005\"} 1\n",
            "# TYPE cgp_helper_cache_hits_total counter\n",
        ] {
            assert!(text.contains(want), "{want:?} not in:\n{text}");
        }
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            !text.contains("# TYPE cgp_helper_requests counter"),
            "{text}"
        );
    }
}
