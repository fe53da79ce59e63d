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
    std::fs::write(
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
