//! The cgp-auth benchmark (run it through `bench/auth.sh`, which builds the
//! binaries first). In one run, against one local slapd loaded with USERS
//! distinct users:
//!
//! 1. baseline: a direct ldap3 bind loop, IN_FLIGHT tasks each on its own
//!    connection;
//! 2. cold VRFY (cache off) through cgp-helper-sim at IN_FLIGHT, search then
//!    bind, and with the DN-template fast path (bind only);
//! 3. cached VRFY (users cycled, all but the first USERS requests are cache
//!    hits) against the null helper on the same runtime;
//! 4. peak resident memory of cgp-auth at 256 in flight.
//!
//! Usage: auth_bench [REQUESTS] [USERS] [IN_FLIGHT]

use base64::Engine;
use cgp_tests::slapd::{BASE, SERVICE_DN, SERVICE_PASSWORD, Slapd};
use sha1::Digest;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ssha(password: &str, salt: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(password.as_bytes());
    h.update(salt);
    let mut raw = h.finalize().to_vec();
    raw.extend_from_slice(salt);
    format!(
        "{{SSHA}}{}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// The shared test directory plus `users` people `benchN` / `pwN`.
fn ldif(users: usize, out: &Path) {
    let mut text = std::fs::read_to_string(cgp_tests::testdata("ldap").join("directory.ldif"))
        .expect("read directory.ldif");
    for i in 0..users {
        let salt = (i as u64).to_be_bytes();
        text.push_str(&format!(
            "\ndn: uid=bench{i},ou=people,{BASE}\nobjectClass: inetOrgPerson\nuid: bench{i}\ncn: Bench {i}\nsn: {i}\nuserPassword: {}\n",
            ssha(&format!("pw{i}"), &salt)
        ));
    }
    std::fs::write(out, text).expect("write bench LDIF");
}

/// target/release, from target/release/examples/auth_bench.
fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/release/examples")
        .to_path_buf()
}

struct Run {
    rate: f64,
    summary: String,
    peak_rss_kib: u64,
}

/// Peak resident set of the sim's child (the helper), read from /proc.
fn child_rss(sim_pid: u32) -> Option<u64> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse::<u32>().ok());
        if ppid == Some(sim_pid) {
            return status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
        }
    }
    None
}

fn sim(requests: usize, in_flight: usize, template: &str, helper: &[String]) -> Run {
    let dir = release_dir();
    let mut child = Command::new(dir.join("cgp-helper-sim"))
        .arg("--generate")
        .arg(requests.to_string())
        .arg("--in-flight")
        .arg(in_flight.to_string())
        .arg("--request")
        .arg(template)
        .arg("--")
        .args(helper)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start cgp-helper-sim");
    let pid = child.id();
    let mut peak = 0;
    while child.try_wait().expect("wait sim").is_none() {
        peak = peak.max(child_rss(pid).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("sim output");
    let summary = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.status.success(), "cgp-helper-sim failed: {summary}");
    let rate = summary
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rate="))
        .and_then(|r| r.trim_end_matches("/s").parse().ok())
        .expect("rate in the summary");
    Run {
        rate,
        summary,
        peak_rss_kib: peak,
    }
}

/// The baseline: `in_flight` tasks, each binding on its own connection.
fn bind_loop(uri: &str, requests: usize, users: usize, in_flight: usize) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut conns = Vec::new();
        for _ in 0..in_flight {
            let (conn, ldap) = ldap3::LdapConnAsync::new(uri).await.expect("connect");
            ldap3::drive!(conn);
            conns.push(ldap);
        }
        let started = Instant::now();
        let tasks: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(t, mut ldap)| {
                tokio::spawn(async move {
                    for n in (t..requests).step_by(in_flight) {
                        let i = n % users;
                        let dn = format!("uid=bench{i},ou=people,{BASE}");
                        let r = ldap
                            .simple_bind(&dn, &format!("pw{i}"))
                            .await
                            .expect("bind");
                        assert_eq!(r.rc, 0, "bind {dn}");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("bind task");
        }
        requests as f64 / started.elapsed().as_secs_f64()
    })
}

fn config(dir: &Path, name: &str, slapd: &Slapd, cache_ttl: &str, template: bool) -> String {
    let lookup_extra = if template {
        format!("dn_template = \"uid={{user}},ou=people,{BASE}\"\n")
    } else {
        String::new()
    };
    let text = format!(
        r#"backend = "ldap"
[runtime]
stats_interval = "0s"
[log]
journald = false
level = "warn"
[ldap]
uris = ["{uri}"]
bind_dn = "{SERVICE_DN}"
bind_password = "{SERVICE_PASSWORD}"
pool_size = 4
bind_pool_size = 32
[lookup]
base = "ou=people,{BASE}"
{lookup_extra}
[cache]
positive_ttl = "{cache_ttl}"
negative_ttl = "0s"
[throttle]
trusted_networks = ["10.0.0.0/8"]
"#,
        uri = slapd.uri()
    );
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let requests = args.first().copied().unwrap_or(20_000);
    let users = args.get(1).copied().unwrap_or(2_000);
    let in_flight = args.get(2).copied().unwrap_or(32);
    let dir = tempfile::tempdir().expect("temp dir");
    let ldif_path = dir.path().join("bench.ldif");
    ldif(users, &ldif_path);
    let slapd = Slapd::start(&ldif_path);
    let auth = release_dir().join("cgp-auth").display().to_string();
    let null = release_dir()
        .join("examples/null_helper")
        .display()
        .to_string();
    let vrfy = format!("VRFY (IMAP [10.0.0.1]) bench{{n%{users}}}@example.test pw{{n%{users}}}");

    println!(
        "cgp-auth benchmark: {requests} requests, {users} users, {in_flight} in flight, slapd {}",
        slapd.uri()
    );
    let baseline = bind_loop(&slapd.uri(), requests, users, in_flight);
    let cold_cfg = config(dir.path(), "cold.toml", &slapd, "0s", false);
    let cold = sim(
        requests,
        in_flight,
        &vrfy,
        &[auth.clone(), "--config".into(), cold_cfg.clone()],
    );
    let tmpl_cfg = config(dir.path(), "template.toml", &slapd, "0s", true);
    let tmpl = sim(
        requests,
        in_flight,
        &vrfy,
        &[auth.clone(), "--config".into(), tmpl_cfg],
    );
    let cached_requests = requests * 10;
    let warm_cfg = config(dir.path(), "cached.toml", &slapd, "1h", false);
    let cached = sim(
        cached_requests,
        in_flight,
        &vrfy,
        &[auth.clone(), "--config".into(), warm_cfg],
    );
    let null_run = sim(cached_requests, in_flight, &vrfy, &[null]);
    let big = sim(requests, 256, &vrfy, &[auth, "--config".into(), cold_cfg]);

    for (name, run) in [
        ("cold", &cold),
        ("template", &tmpl),
        ("cached", &cached),
        ("null", &null_run),
        ("cold@256", &big),
    ] {
        println!("  {name:<9} {}", run.summary);
    }
    println!("direct ldap3 bind loop:             {baseline:>9.0} binds/s");
    println!(
        "cold VRFY, search+bind:             {:>9.0} req/s  = {:.2}x the bind loop (target >= 0.7x)",
        cold.rate,
        cold.rate / baseline
    );
    println!(
        "cold VRFY, DN template (bind only): {:>9.0} req/s  = {:.2}x the bind loop",
        tmpl.rate,
        tmpl.rate / baseline
    );
    println!(
        "cached VRFY ({:.1}% hits):           {:>9.0} req/s  = {:.2}x the null helper ({:.0} req/s, target >= 0.5x)",
        100.0 * (cached_requests - users) as f64 / cached_requests as f64,
        cached.rate,
        cached.rate / null_run.rate,
        null_run.rate
    );
    println!(
        "peak RSS of cgp-auth at 256 in flight: {:.1} MiB (target < 64 MiB)",
        big.peak_rss_kib as f64 / 1024.0
    );
}
