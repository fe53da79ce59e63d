//! The metrics file of `[runtime.metrics]`, on the probe helper: it
//! appears, parses as the Prometheus text format node_exporter reads, counts
//! requests and replies, and is replaced whole at each interval.

use cgp_tests::bin;
use cgp_tests::session::Session;
use prometheus_parse::{Scrape, Value};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn scrape(path: &Path) -> Scrape {
    let text = std::fs::read_to_string(path).unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

fn counter(s: &Scrape, name: &str, kind: Option<&str>) -> f64 {
    helper_counter(s, "probe-helper", "probe", name, kind)
}

/// A counter of `helper`'s metrics file named `file`.prom.
fn helper_counter(s: &Scrape, helper: &str, file: &str, name: &str, kind: Option<&str>) -> f64 {
    let sample = s
        .samples
        .iter()
        .find(|x| x.metric == name && kind.is_none_or(|k| x.labels.get("kind") == Some(k)))
        .unwrap_or_else(|| panic!("no {name} {kind:?} in {:?}", s.samples));
    assert_eq!(sample.labels.get("helper"), Some(helper));
    assert_eq!(sample.labels.get("file"), Some(file));
    match sample.value {
        // A counter read as untyped would mean the TYPE line did not name
        // the sample, which node_exporter refuses.
        Value::Counter(v) => v,
        ref other => panic!("{name} is not a counter: {other:?}"),
    }
}

/// Waits until the file's inode is not `old` (it was replaced).
fn replaced(path: &Path, old: Option<u64>) -> u64 {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(m) = std::fs::metadata(path) {
            if Some(m.ino()) != old {
                return m.ino();
            }
        }
        assert!(Instant::now() < until, "{} not (re)written", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_metrics_file_appears_parses_counts_and_is_replaced_whole() {
    let dir = tempfile::tempdir().unwrap();
    let prom = dir.path().join("probe.prom");
    let config = dir.path().join("probe.toml");
    cgp_tests::write_config(
        &config,
        format!(
            "[runtime]\nstats_interval = \"200ms\"\n[runtime.metrics]\nfile = \"{}\"\n",
            prom.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin("probe_helper"));
    cmd.arg("--config").arg(&config);
    let mut h = Session::spawn(cmd);
    assert_eq!(h.ask("INTF 3"), "INTF 3");
    assert_eq!(h.ask("ECHO a"), "OK (a)");
    assert_eq!(h.ask("SLEEP 1"), "OK");
    assert_eq!(h.ask("NOSUCH"), "ERROR \"unsupported command\"");

    let first = replaced(&prom, None);
    // After the requests above, the next write holds them all.
    let second = replaced(&prom, Some(first));
    let s = scrape(&prom);
    assert_eq!(counter(&s, "cgp_helper_requests_total", None), 4.0);
    assert_eq!(counter(&s, "cgp_helper_replies_total", Some("OK")), 2.0);
    assert_eq!(counter(&s, "cgp_helper_replies_total", Some("ERROR")), 1.0);
    assert_eq!(counter(&s, "cgp_helper_replies_total", Some("INTF")), 1.0);
    for name in [
        "cgp_helper_cache_hits_total",
        "cgp_helper_backend_errors_total",
        "cgp_helper_throttled_requests_total",
        "cgp_helper_notifications_dropped_total",
    ] {
        assert_eq!(counter(&s, name, None), 0.0, "{name}");
    }
    let histogram = s
        .samples
        .iter()
        .find(|x| x.metric == "cgp_helper_request_duration_seconds")
        .expect("latency histogram");
    match &histogram.value {
        Value::Histogram(buckets) => {
            let all = buckets.last().expect("buckets");
            assert_eq!(all.count, 4.0, "{buckets:?}");
        }
        other => panic!("not a histogram: {other:?}"),
    }
    // For the collector, which runs as another user; and no temporary file
    // left beside it.
    let mode = std::fs::metadata(&prom).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
    // Replaced by a rename each time (a new inode), never rewritten in
    // place, where the collector could read half a file.
    let third = replaced(&prom, Some(second));
    assert_ne!(third, second);
    h.send_line("9 QUIT");
    let (code, err) = h.close();
    assert_eq!((code, err.as_str()), (Some(0), ""));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // The final counts are written at exit.
    let s = scrape(&prom);
    assert_eq!(counter(&s, "cgp_helper_requests_total", None), 4.0);
}

/// A helper's own events reach the file: cgp-auth counts a VRFY answered
/// from its cache.
#[test]
fn a_helper_counts_its_cache_hits() {
    let dir = tempfile::tempdir().unwrap();
    let prom = dir.path().join("auth.prom");
    let base = std::fs::read_to_string(cgp_tests::testdata("auth").join("config.toml")).unwrap();
    let config = dir.path().join("auth.toml");
    let text = base.replace(
        "stats_interval = \"0s\"\n",
        &format!(
            "stats_interval = \"200ms\"\n[runtime.metrics]\nfile = \"{}\"\n",
            prom.display()
        ),
    );
    assert_ne!(
        text, base,
        "the test config has no stats_interval line to replace"
    );
    cgp_tests::write_config(&config, text).unwrap();
    let mut h = Session::start(&bin("cgp-auth"), &config);
    assert_eq!(h.ask("VRFY alice@example.test alicepw"), "OK");
    assert_eq!(h.ask("VRFY alice@example.test alicepw"), "OK");
    h.send_line("9 QUIT");
    let (code, err) = h.close();
    assert_eq!((code, err.as_str()), (Some(0), ""));
    // The final counts are written at exit.
    let s = scrape(&prom);
    let hits = helper_counter(&s, "cgp-auth", "auth", "cgp_helper_cache_hits_total", None);
    assert_eq!(hits, 1.0);
}
