//! cgp-balancer as a whole binary: transcript cases (IPVS dry-run demo,
//! grammar, failing back ends) and the VIP hook.

use cgp_tests::session::Session;
use cgp_tests::{bin, transcript::run_all};

#[test]
fn balancer_transcripts() {
    run_all(&bin("cgp-balancer"), "balancer");
}

#[test]
fn vip_hook_brings_vips_up_and_down_once() {
    let work = tempfile::tempdir().unwrap();
    let d = work.path().display();
    let cfg = work.path().join("hook.toml");
    cgp_tests::write_config(
        &cfg,
        format!(
            "state_path = \"{d}/state\"\nreconcile_interval = \"0s\"\n\
             [runtime]\nstats_interval = \"0s\"\n[log]\njournald = false\n\
             [groups.edge]\nvip_hook = [\"/bin/sh\", \"-c\", \"echo \\\"$@\\\" >> {d}/hook.log\", \"hook\"]\n\
             [groups.edge.ipvs]\nports = [25]\ndry_run = true\n"
        ),
    )
    .unwrap();
    let log = || std::fs::read_to_string(work.path().join("hook.log")).unwrap_or_default();
    let mut h = Session::start(&bin("cgp-balancer"), &cfg);
    assert_eq!(h.ask("START edge (192.0.2.20, 192.0.2.21)"), "OK");
    assert_eq!(log(), "up edge 192.0.2.20 192.0.2.21\n");
    // A new VIP list: only the difference goes down and up.
    assert_eq!(h.ask("START edge (192.0.2.21, 192.0.2.22)"), "OK");
    assert_eq!(h.ask("START edge (192.0.2.21, 192.0.2.22)"), "OK");
    assert_eq!(h.ask("SERVERS edge (10.0.0.5)"), "OK");
    assert_eq!(
        log(),
        "up edge 192.0.2.20 192.0.2.21\ndown edge 192.0.2.20\nup edge 192.0.2.22\n"
    );
    assert_eq!(h.ask("STOP edge"), "OK");
    assert_eq!(h.ask("STOP edge"), "OK");
    let stopped = "up edge 192.0.2.20 192.0.2.21\ndown edge 192.0.2.20\nup edge 192.0.2.22\n\
                   down edge 192.0.2.21 192.0.2.22\n";
    assert_eq!(log(), stopped);
    h.finish();
    // A restarted helper does not know what the machine has: it runs the
    // hook again for the stored state (hooks are idempotent).
    let h = Session::start(&bin("cgp-balancer"), &cfg);
    let again = format!("{stopped}down edge 192.0.2.21 192.0.2.22\n");
    let started = std::time::Instant::now();
    while log() != again {
        assert!(
            started.elapsed() < cgp_tests::haproxy::LIMIT,
            "hook log: {}",
            log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    h.finish();
}

/// Issue 18: a request outside the reconstructed grammar is refused with
/// the state left as it is, and its shape (never its values) is logged at
/// warn level once.
#[test]
fn unknown_request_shapes_are_refused_and_logged_once_without_values() {
    let work = tempfile::tempdir().unwrap();
    let (log_section, log) = cgp_tests::warn_log(work.path());
    let cfg = work.path().join("shapes.toml");
    cgp_tests::write_config(
        &cfg,
        format!(
            "reconcile_interval = \"0s\"\n[runtime]\nstats_interval = \"0s\"\n{log_section}\
             [groups.edge.ipvs]\nports = [25]\ndry_run = true\n"
        ),
    )
    .unwrap();
    let mut h = Session::start(&bin("cgp-balancer"), &cfg);
    assert_eq!(h.ask("SERVERS edge (10.0.0.5)"), "OK");
    for _ in 0..3 {
        assert_eq!(
            h.ask("ADD edge 10.0.0.6 weight-77"),
            r#"ERROR "ADD takes <group> <address>""#
        );
        assert_eq!(
            h.ask("DRAIN edge 10.0.0.5"),
            r#"ERROR "unsupported command""#
        );
    }
    // The helper goes on with the state it had.
    assert_eq!(h.ask("REMOVE edge 10.0.0.6"), "OK");
    assert_eq!(h.ask("REMOVE edge 10.0.0.5"), "OK");
    h.finish();
    let (logged, lines) = cgp_tests::unknown_shape_lines(&log);
    assert_eq!(lines.len(), 2, "{logged}");
    assert!(
        lines[0].contains("WARN")
            && lines[0].contains("shape=ADD string string string")
            && lines[0].contains("lengths=4 8 9"),
        "{logged}"
    );
    assert!(lines[1].contains("shape=DRAIN string string"), "{logged}");
    for value in ["10.0.0.6", "weight-77", "edge"] {
        assert!(!logged.contains(value), "{value} in {logged}");
    }
}
