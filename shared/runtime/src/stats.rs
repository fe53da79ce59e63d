//! Counters and latency percentiles for the periodic `* stats` line, and
//! the latency histogram of the metrics file (`crate::metrics`).

use crate::sync;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency samples kept per interval; past this, reservoir sampling keeps
/// the memory fixed while the percentiles stay representative.
const SAMPLES: usize = 8192;

/// Upper bounds of the latency histogram, in seconds: from a cache hit to
/// a back end at its deadline.
const BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

pub struct Stats {
    requests: AtomicU64,
    inner: Mutex<Inner>,
    /// Since the start, never reset (Prometheus computes rates itself).
    latency: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            requests: AtomicU64::default(),
            inner: Mutex::default(),
            latency: Histogram::new(BUCKETS),
        }
    }
}

/// The counters at one moment, for the metrics file.
pub struct Snapshot {
    pub requests: u64,
    /// Replies by kind (the reply's first word), since the start.
    pub replies: Vec<(String, u64)>,
    pub latency: Histogram,
}

#[derive(Default)]
struct Inner {
    kinds: BTreeMap<String, u64>,
    samples: Vec<u32>,
    seen: u64,
    rng: u64,
}

impl Stats {
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reply(&self, kind: &str, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
        let micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        let mut g = sync::lock(&self.inner);
        if let Some(n) = g.kinds.get_mut(kind) {
            *n += 1;
        } else {
            g.kinds.insert(kind.to_string(), 1);
        }
        g.seen += 1;
        if g.samples.len() < SAMPLES {
            g.samples.push(micros);
        } else {
            // xorshift: cheap and good enough to pick a slot to replace.
            g.rng ^= g.rng << 13 | 1;
            g.rng ^= g.rng >> 7;
            g.rng ^= g.rng << 17;
            let slot = g.rng % g.seen;
            if let Some(s) = g.samples.get_mut(slot as usize) {
                *s = micros;
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let replies = sync::lock(&self.inner)
            .kinds
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        Snapshot {
            requests: self.requests.load(Ordering::Relaxed),
            replies,
            latency: self.latency.clone(),
        }
    }

    /// The text of a `* stats` line; latency samples start afresh after it.
    pub fn line(&self) -> String {
        let mut g = sync::lock(&self.inner);
        let mut sorted = std::mem::take(&mut g.samples);
        g.seen = 0;
        sorted.sort_unstable();
        let pct = |p: usize| {
            if sorted.is_empty() {
                0.0
            } else {
                f64::from(sorted[(sorted.len() - 1) * p / 100]) / 1000.0
            }
        };
        let kinds: Vec<String> = g.kinds.iter().map(|(k, n)| format!("{k}={n}")).collect();
        format!(
            "stats requests={} replies: {} p50={:.3}ms p99={:.3}ms",
            self.requests.load(Ordering::Relaxed),
            if kinds.is_empty() {
                "none".to_string()
            } else {
                kinds.join(" ")
            },
            pct(50),
            pct(99)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_kinds_and_percentiles() {
        let s = Stats::default();
        for i in 1..=100u64 {
            s.request();
            s.reply(
                if i % 10 == 0 { "ERROR" } else { "OK" },
                Duration::from_micros(i * 100),
            );
        }
        let line = s.line();
        assert!(line.contains("requests=100"), "{line}");
        assert!(line.contains("ERROR=10 OK=90"), "{line}");
        assert!(line.contains("p50=5.000ms p99=9.900ms"), "{line}");
        // Samples restart after each line; counters do not.
        assert!(s.line().contains("p50=0.000ms"));
    }

    #[test]
    fn memory_stays_bounded() {
        let s = Stats::default();
        for _ in 0..(SAMPLES * 3) {
            s.reply("OK", Duration::from_micros(1));
        }
        assert_eq!(s.inner.lock().unwrap().samples.len(), SAMPLES);
    }
}
