//! cgp-balancer against live balancers: a real HAProxy (Debian package)
//! started by the test, every result read back from HAProxy itself
//! (`show servers state`); and real IPVS in a network namespace where the
//! machine allows it (reported as run or not run).

use cgp_tests::bin;
use cgp_tests::haproxy::{Haproxy, LIMIT, Server, sbin};
use cgp_tests::session::Session;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BACKENDS: &str = "backend cgp
    balance roundrobin
    server static1 127.0.0.1:1
backend tpl
    balance source
    server-template cgp 1-3 0.0.0.0:25 disabled
";

/// Writes a helper configuration for one group driving `hx`.
fn config(dir: &Path, socket: &str, backend: &str, grace: &str, interval: &str) -> PathBuf {
    let path = dir.join("balancer.toml");
    let text = format!(
        "state_path = \"{d}/state\"\ndrain_grace = \"{grace}\"\nreconcile_interval = \"{interval}\"\n\
         [runtime]\ndeadline = \"8s\"\nstats_interval = \"0s\"\n\
         [log]\njournald = false\nfile = \"{d}/helper.log\"\nlevel = \"info\"\n\
         [groups.{backend}]\n{weight}[groups.{backend}.haproxy]\nsocket = \"{socket}\"\nbackend = \"{backend}\"\n\
         port = {port}\ntimeout = \"1s\"\n",
        d = dir.display(),
        port = if backend == "tpl" { 25 } else { 2525 },
        // A static balancing algorithm (the template backend) takes no weights.
        weight = if backend == "tpl" { "" } else { "weight = 5\n" },
    );
    cgp_tests::write_config(&path, text).expect("write config");
    path
}

fn ours(servers: &[Server]) -> Vec<&Server> {
    servers
        .iter()
        .filter(|s| s.name.starts_with("cgp"))
        .collect()
}

fn find<'a>(servers: &'a [Server], addr: &str, port: u16) -> Option<&'a Server> {
    servers
        .iter()
        .find(|s| s.name.starts_with("cgp") && s.addr == addr && s.port == port && !s.maint())
}

#[test]
fn dynamic_servers_follow_the_cluster_with_drain_and_re_add() {
    let hx = Haproxy::start(BACKENDS);
    let work = tempfile::tempdir().unwrap();
    let socket = hx.socket().display().to_string();
    let mut h = Session::start(
        &bin("cgp-balancer"),
        &config(work.path(), &socket, "cgp", "2s", "0s"),
    );

    assert_eq!(h.ask("START cgp"), "OK");
    assert_eq!(
        h.ask("SERVERS cgp (127.0.0.2, [127.0.0.3]:2526, 127.0.0.4)"),
        "OK"
    );
    let s = hx.servers("cgp");
    assert_eq!(ours(&s).len(), 3, "{s:#?}");
    for (addr, port) in [
        ("127.0.0.2", 2525),
        ("127.0.0.3", 2526),
        ("127.0.0.4", 2525),
    ] {
        let srv = find(&s, addr, port).unwrap_or_else(|| panic!("{addr}:{port} missing: {s:#?}"));
        assert!(srv.ready() && srv.weight == 5, "{srv:?}");
    }
    assert!(
        s.iter().any(|x| x.name == "static1" && x.ready()),
        "the unmanaged server is left alone"
    );

    // The same set again, in another order: HAProxy keeps the same servers.
    assert_eq!(
        h.ask("SERVERS cgp (127.0.0.4, 127.0.0.2, 127.0.0.3:2526)"),
        "OK"
    );
    assert_eq!(hx.servers("cgp"), s);

    // A server that leaves drains first...
    assert_eq!(h.ask("REMOVE cgp 127.0.0.4"), "OK");
    let s2 = hx.servers("cgp");
    let drained = find(&s2, "127.0.0.4", 2525).expect("still there while draining");
    assert!(drained.drain(), "{drained:?}");
    // ...and comes back as the same server when re-added during the drain.
    assert_eq!(h.ask("ADD cgp [127.0.0.4]:2525"), "OK");
    let s3 = hx.servers("cgp");
    let back = find(&s3, "127.0.0.4", 2525).expect("re-added");
    assert!(
        back.ready() && back.id == drained.id,
        "{back:?} vs {drained:?}"
    );

    // Once the grace period is over, it is removed.
    assert_eq!(h.ask("REMOVE cgp 127.0.0.4"), "OK");
    assert!(find(&hx.servers("cgp"), "127.0.0.4", 2525).unwrap().drain());
    hx.wait_for("cgp", LIMIT, |s| {
        find(s, "127.0.0.4", 2525).is_none() && ours(s).len() == 2
    });

    // STOP: everything drains, then goes; the unmanaged server stays.
    assert_eq!(h.ask("STOP cgp"), "OK");
    assert!(ours(&hx.servers("cgp")).iter().all(|s| s.drain()));
    let end = hx.wait_for("cgp", LIMIT, |s| ours(s).is_empty());
    assert!(end.iter().any(|x| x.name == "static1" && x.ready()));
    assert_eq!(h.ask("STOP cgp"), "OK", "STOP twice is fine");
    h.finish();
}

#[test]
fn haproxy_restarted_under_the_helper_is_repaired() {
    let mut hx = Haproxy::start(BACKENDS);
    let work = tempfile::tempdir().unwrap();
    let socket = hx.socket().display().to_string();
    let mut h = Session::start(
        &bin("cgp-balancer"),
        &config(work.path(), &socket, "cgp", "30s", "1s"),
    );
    assert_eq!(h.ask("START cgp"), "OK");
    assert_eq!(h.ask("SERVERS cgp (127.0.0.2, 127.0.0.3)"), "OK");
    assert_eq!(ours(&hx.servers("cgp")).len(), 2);

    // The helper is held still while HAProxy restarts, to see that the
    // restart really lost the dynamic servers.
    h.signal(libc::SIGSTOP);
    hx.restart();
    assert!(ours(&hx.servers("cgp")).is_empty());
    h.signal(libc::SIGCONT);
    // The background reconcile puts them back without any command.
    hx.wait_for("cgp", LIMIT, |s| {
        find(s, "127.0.0.2", 2525).is_some_and(Server::ready)
            && find(s, "127.0.0.3", 2525).is_some_and(Server::ready)
    });
    // And commands go on working against the new process.
    assert_eq!(h.ask("ADD cgp 127.0.0.5"), "OK");
    assert!(find(&hx.servers("cgp"), "127.0.0.5", 2525).is_some_and(Server::ready));
    h.finish();
}

#[test]
fn helper_killed_mid_change_is_repaired_at_restart() {
    let hx = Haproxy::start(BACKENDS);
    let work = tempfile::tempdir().unwrap();
    let socket = hx.socket().display().to_string();
    let cfg = config(work.path(), &socket, "cgp", "30s", "0s");
    let mut h = Session::start(&bin("cgp-balancer"), &cfg);
    assert_eq!(h.ask("START cgp"), "OK");
    assert_eq!(h.ask("SERVERS cgp (127.0.0.2, 127.0.0.3)"), "OK");
    let before = hx.servers("cgp");

    // HAProxy stops answering; the helper saves the new desired state, then
    // waits on HAProxy; it is killed right there.
    let log = work.path().join("helper.log");
    let saves = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("desired state saved")
            .count()
    };
    let saved_before = saves();
    hx.freeze();
    h.send("SERVERS cgp (127.0.0.2, 127.0.0.3, 127.0.0.6, 127.0.0.7)");
    let started = Instant::now();
    while saves() == saved_before {
        assert!(
            started.elapsed() < LIMIT,
            "the helper never saved the state"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    h.kill();
    hx.thaw();
    assert_eq!(
        hx.servers("cgp"),
        before,
        "the killed change never reached HAProxy"
    );

    // A new helper on the same store finishes the change by itself.
    let mut h = Session::start(&bin("cgp-balancer"), &cfg);
    let done = hx.wait_for("cgp", LIMIT, |s| {
        ["127.0.0.2", "127.0.0.3", "127.0.0.6", "127.0.0.7"]
            .iter()
            .all(|a| find(s, a, 2525).is_some_and(Server::ready))
    });
    // The cluster re-sending the command changes nothing more.
    assert_eq!(
        h.ask("SERVERS cgp (127.0.0.2, 127.0.0.3, 127.0.0.6, 127.0.0.7)"),
        "OK"
    );
    assert_eq!(hx.servers("cgp"), done);
    h.finish();
}

#[test]
fn template_slots_over_the_tcp_admin_socket() {
    let hx = Haproxy::start(BACKENDS);
    let work = tempfile::tempdir().unwrap();
    let mut h = Session::start(
        &bin("cgp-balancer"),
        &config(work.path(), &hx.tcp_socket(), "tpl", "1s", "0s"),
    );
    assert_eq!(h.ask("START tpl"), "OK");
    assert_eq!(h.ask("SERVERS tpl (127.0.0.5, 127.0.0.6)"), "OK");
    let s = hx.servers("tpl");
    assert_eq!(s.len(), 3, "slots are reused, never added: {s:#?}");
    assert!(find(&s, "127.0.0.5", 25).is_some_and(Server::ready));
    assert!(find(&s, "127.0.0.6", 25).is_some_and(Server::ready));
    assert_eq!(s.iter().filter(|x| x.maint()).count(), 1);

    // More servers than slots: refused, and HAProxy keeps what it had.
    let r = h.ask("SERVERS tpl (127.0.0.5, 127.0.0.6, 127.0.0.7, 127.0.0.8)");
    assert!(r.starts_with("ERROR \"no free server-template slot"), "{r}");
    assert_eq!(hx.servers("tpl"), s);
    // The refused set was not kept: the one free slot still takes a server.
    assert_eq!(h.ask("ADD tpl 127.0.0.7"), "OK");
    assert!(hx.servers("tpl").iter().all(|x| !x.maint()));

    // A smaller set: the leaving servers drain, then their slots are freed.
    assert_eq!(h.ask("SERVERS tpl (127.0.0.6)"), "OK");
    assert!(find(&hx.servers("tpl"), "127.0.0.5", 25).is_some_and(Server::drain));
    assert!(find(&hx.servers("tpl"), "127.0.0.7", 25).is_some_and(Server::drain));
    hx.wait_for("tpl", LIMIT, |s| {
        s.iter().filter(|x| x.maint()).count() == 2
    });
    assert_eq!(h.ask("ADD tpl 127.0.0.9"), "OK");
    assert!(find(&hx.servers("tpl"), "127.0.0.9", 25).is_some_and(Server::ready));
    h.finish();
}

#[test]
fn a_frozen_haproxy_gets_an_error_within_the_deadline() {
    let hx = Haproxy::start(BACKENDS);
    let work = tempfile::tempdir().unwrap();
    let socket = hx.socket().display().to_string();
    let mut h = Session::start(
        &bin("cgp-balancer"),
        &config(work.path(), &socket, "cgp", "30s", "0s"),
    );
    assert_eq!(h.ask("START cgp"), "OK");
    hx.freeze();
    let started = Instant::now();
    let r = h.ask("ADD cgp 127.0.0.9");
    assert!(
        r.starts_with("ERROR \"HAProxy admin socket: no answer within"),
        "{r}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "answered after the deadline"
    );
    hx.thaw();
    assert_eq!(h.ask("ADD cgp 127.0.0.9"), "OK");
    assert!(find(&hx.servers("cgp"), "127.0.0.9", 2525).is_some_and(Server::ready));
    h.finish();
}

/// Why real IPVS cannot be used here, if it cannot.
fn ipvs_unavailable() -> Option<String> {
    match Command::new("unshare")
        .args(["-n", "ipvsadm", "-Ln"])
        .output()
    {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().replace('\n', " ")),
        Err(e) => Some(format!("cannot run unshare/ipvsadm: {e}")),
    }
}

/// `ipvsadm -Ln` inside the helper's network namespace.
fn ipvs_table(pid: u32) -> String {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n"])
        .arg(sbin("ipvsadm"))
        .arg("-Ln")
        .output()
        .expect("nsenter ipvsadm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn ipvs_for_real_in_a_network_namespace() {
    if let Some(why) = ipvs_unavailable() {
        // Printed, never hidden: this machine cannot run the real IPVS test.
        eprintln!("IPVS real test NOT RUN: {why}");
        return;
    }
    eprintln!("IPVS real test RUN (network namespace, kernel ip_vs)");
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("ipvs.toml");
    cgp_tests::write_config(
        &cfg,
        format!(
            "drain_grace = \"1s\"\nreconcile_interval = \"0s\"\n[runtime]\nstats_interval = \"0s\"\n\
         [log]\njournald = false\n[groups.edge]\nvips = [\"192.0.2.10\"]\n\
         [groups.edge.ipvs]\nipvsadm = \"{}\"\nports = [25, 110]\n",
            sbin("ipvsadm").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "--"]).arg(bin("cgp-balancer"));
    cmd.arg("--config").arg(&cfg);
    let mut h = Session::start_cmd(cmd);
    let pid = h.child.id();
    assert_eq!(h.ask("START edge"), "OK");
    assert_eq!(h.ask("SERVERS edge (10.0.0.11, 10.0.0.12)"), "OK");
    let t = ipvs_table(pid);
    for line in [
        "TCP 192.0.2.10:25 wlc -> 10.0.0.11:25 Route 1 0 0 -> 10.0.0.12:25 Route 1 0 0",
        "TCP 192.0.2.10:110 wlc -> 10.0.0.11:110 Route 1 0 0 -> 10.0.0.12:110 Route 1 0 0",
    ] {
        assert!(t.contains(line), "{line} not in {t}");
    }
    assert_eq!(h.ask("REMOVE edge 10.0.0.12"), "OK");
    assert!(ipvs_table(pid).contains("-> 10.0.0.12:25 Route 0 0 0"));
    assert_eq!(h.ask("STOP edge"), "OK");
    let started = Instant::now();
    while ipvs_table(pid).contains("TCP") {
        assert!(
            started.elapsed() < LIMIT,
            "services left after STOP: {}",
            ipvs_table(pid)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    h.finish();
}
