//! The cgp-auth benchmark (run it through `bench/auth.sh`, which builds the
//! binaries first). In one run, against one local slapd loaded with USERS
//! distinct users:
//!
//! 1. baselines: a direct ldap3 bind loop, IN_FLIGHT tasks each on its own
//!    connection; and the same loop preceded by the helper's user search
//!    (the helper's two operations without the helper);
//! 2. cold VRFY (caches off) through cgp-helper-sim at IN_FLIGHT, search
//!    then bind, with the DN-template fast path (bind only), and search then
//!    bind with the directory cache on (`[directory.cache] ttl`, who a user
//!    is; verdicts still uncached);
//! 3. cached VRFY (users cycled; the cache on disk, filled by an untimed
//!    pass over the users before the timed run) against the null helper on
//!    the same runtime;
//! 4. peak resident memory of cgp-auth at 256 in flight;
//!
//! and the CPU time per request of the client (or helper) and of slapd in
//! each, since on a small machine they share the cores.
//!
//! With `AUTH_BASE_BIN` set to an earlier cgp-auth binary (one that reads
//! the configuration shape before `[directory]`), every helper row is run
//! with it too, in the same run, alternating, and the ratios are printed.
//!
//! With `AUTH_WRAP` set, this tree's binary runs under that command, with
//! `{row}` replaced by the row's name, to profile it where it is measured:
//! `AUTH_WRAP='perf record -g -o /tmp/auth-{row}.data --'`.
//!
//! With `sql` first, the SQL directory instead (`bench/auth-sql.sh`): one
//! PostgreSQL with USERS users ({SSHA} hashes); a direct tokio-postgres
//! loop, IN_FLIGHT tasks each on its own connection running the helper's
//! password query and checking the hash, against cold VRFY through
//! cgp-helper-sim at IN_FLIGHT (the default pool: 4 pipelined connections).
//!
//! Usage: auth_bench [sql] [REQUESTS] [USERS] [IN_FLIGHT]

use base64::Engine;
use cgp_lookup::directory::password::{self, Stored};
use cgp_tests::postgres::{PASSWORD, Postgres, ROLE};
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
    /// CPU seconds (user + system) of the helper and of slapd.
    helper_cpu: f64,
    slapd_cpu: f64,
}

/// The sim's child (the helper): found once, so that the sampling loop
/// does not scan /proc while it measures.
fn child_of(sim_pid: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let status = std::fs::read_to_string(e.path().join("status")).ok()?;
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))?
            .trim()
            .parse::<u32>()
            .ok()?;
        (ppid == sim_pid).then(|| e.file_name().to_str()?.parse().ok())?
    })
}

/// Peak resident set of a process, in KiB.
fn peak_rss(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised name: utime and stime are the 12th
    // and 13th, in clock ticks (100 per second on Linux).
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn slapd_cpu(slapd: &Slapd) -> f64 {
    std::fs::read_to_string(slapd.dir().join("slapd.pid"))
        .ok()
        .and_then(|pid| cpu_seconds(pid.trim()))
        .unwrap_or(0.0)
}

/// Runs `helper` under cgp-helper-sim; `server_cpu` reads the CPU seconds
/// of the back end the helper asks (0 where not measured).
fn sim(
    server_cpu: &dyn Fn() -> f64,
    requests: usize,
    in_flight: usize,
    template: &str,
    helper: &[String],
) -> Run {
    let dir = release_dir();
    let slapd_before = server_cpu();
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
    let (mut helper_pid, mut peak, mut helper_cpu) = (None, 0, 0.0);
    while child.try_wait().expect("wait sim").is_none() {
        helper_pid = helper_pid.or_else(|| child_of(pid));
        if let Some(h) = helper_pid {
            peak = peak.max(peak_rss(h).unwrap_or(0));
            // The last sample before the helper exits: at most one
            // interval short.
            helper_cpu = cpu_seconds(&h.to_string()).unwrap_or(helper_cpu);
        }
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
        helper_cpu,
        slapd_cpu: server_cpu() - slapd_before,
    }
}

/// A direct ldap3 loop: `in_flight` tasks, each binding on its own
/// connection. With `search_conns` above 0 each bind is preceded by the
/// helper's user search, on that many shared connections bound as the
/// service account (the helper's two operations without the helper).
/// Returns operations per second and the CPU seconds of this process and
/// of slapd.
fn direct_loop(
    slapd: &Slapd,
    requests: usize,
    users: usize,
    in_flight: usize,
    search_conns: usize,
) -> (f64, f64, f64) {
    let uri = slapd.uri();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let connect = || async {
            let (conn, ldap) = ldap3::LdapConnAsync::new(&uri).await.expect("connect");
            ldap3::drive!(conn);
            ldap
        };
        let mut conns = Vec::new();
        for _ in 0..in_flight {
            conns.push(connect().await);
        }
        let mut searchers = Vec::new();
        for _ in 0..search_conns {
            let mut ldap = connect().await;
            ldap.simple_bind(SERVICE_DN, SERVICE_PASSWORD)
                .await
                .and_then(|r| r.success())
                .expect("service bind");
            searchers.push(ldap);
        }
        let started = Instant::now();
        let (own_before, slapd_before) = (cpu_seconds("self").unwrap_or(0.0), slapd_cpu(slapd));
        let tasks: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(t, mut ldap)| {
                let mut searcher =
                    (!searchers.is_empty()).then(|| searchers[t % searchers.len()].clone());
                tokio::spawn(async move {
                    for n in (t..requests).step_by(in_flight) {
                        let i = n % users;
                        let mut dn = format!("uid=bench{i},ou=people,{BASE}");
                        if let Some(s) = searcher.as_mut() {
                            let filter = format!("(&(objectClass=inetOrgPerson)(uid=bench{i}))");
                            let (entries, _) = s
                                .search(
                                    &format!("ou=people,{BASE}"),
                                    ldap3::Scope::Subtree,
                                    &filter,
                                    vec!["1.1"],
                                )
                                .await
                                .and_then(|r| r.success())
                                .expect("search");
                            dn = ldap3::SearchEntry::construct(
                                entries.into_iter().next().expect("one entry"),
                            )
                            .dn;
                        }
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
        (
            requests as f64 / started.elapsed().as_secs_f64(),
            cpu_seconds("self").unwrap_or(0.0) - own_before,
            slapd_cpu(slapd) - slapd_before,
        )
    })
}

/// Which configuration shape a cgp-auth binary reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `[directory]` (this tree).
    Directory,
    /// `backend`, `[ldap]`, `[lookup]`, `cache.dn_ttl` (before it).
    Base,
}

/// The keys every benchmarked cgp-auth configuration shares.
fn common_config() -> &'static str {
    r#"[runtime]
stats_interval = "0s"
[log]
journald = false
level = "warn"
[throttle]
trusted_networks = ["10.0.0.0/8"]
"#
}

/// A cgp-auth configuration: `cache_ttl` for verdicts, `dn_ttl` for who a
/// user is (the DN), `template` for the DN-template fast path.
#[allow(clippy::too_many_arguments)]
fn config(
    dir: &Path,
    name: &str,
    slapd: &Slapd,
    cache_ttl: &str,
    dn_ttl: &str,
    template: bool,
    store: bool,
    shape: Shape,
) -> String {
    // On disk, the cache outlives a helper process: a warm-up run fills it
    // for the run that is timed.
    let store = if store {
        format!(
            "[store]\npath = \"{}\"\n",
            dir.join(format!("{name}.store")).display()
        )
    } else {
        String::new()
    };
    let lookup_extra = if template {
        format!("dn_template = \"uid={{user}},ou=people,{BASE}\"\n")
    } else {
        String::new()
    };
    let connection = format!(
        r#"uris = ["{uri}"]
bind_dn = "{SERVICE_DN}"
bind_password = "{SERVICE_PASSWORD}"
pool_size = 4
bind_pool_size = 32"#,
        uri = slapd.uri()
    );
    let common = format!("{}{store}", common_config());
    let text = match shape {
        Shape::Directory => format!(
            r#"{common}
[directory]
type = "ldap"
[directory.ldap]
{connection}
[directory.search]
base = "ou=people,{BASE}"
{lookup_extra}
[directory.cache]
ttl = "{dn_ttl}"
negative_ttl = "0s"
[cache]
positive_ttl = "{cache_ttl}"
negative_ttl = "0s"
"#
        ),
        Shape::Base => format!(
            r#"backend = "ldap"
{common}
[ldap]
{connection}
[lookup]
base = "ou=people,{BASE}"
{lookup_extra}
[cache]
positive_ttl = "{cache_ttl}"
negative_ttl = "0s"
dn_ttl = "{dn_ttl}"
"#
        ),
    };
    let path = dir.join(name);
    cgp_tests::write_config(&path, text).expect("write config");
    path.display().to_string()
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let sql = args.first().is_some_and(|a| a == "sql");
    if sql {
        args.remove(0);
    }
    let args: Vec<usize> = args.iter().map(|a| a.parse().expect("numbers")).collect();
    let requests = args.first().copied().unwrap_or(20_000);
    let users = args.get(1).copied().unwrap_or(2_000);
    let in_flight = args.get(2).copied().unwrap_or(32);
    if sql {
        return sql_bench(requests, users, in_flight);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let ldif_path = dir.path().join("bench.ldif");
    ldif(users, &ldif_path);
    let slapd = Slapd::start(&ldif_path);
    let slapd_cpu_of = || slapd_cpu(&slapd);
    let auth = release_dir().join("cgp-auth").display().to_string();
    let base = std::env::var("AUTH_BASE_BIN").ok();
    let wrap = std::env::var("AUTH_WRAP").ok();
    let null = release_dir()
        .join("examples/null_helper")
        .display()
        .to_string();
    let vrfy = format!("VRFY (IMAP [10.0.0.1]) bench{{n%{users}}}@example.test pw{{n%{users}}}");
    let tree = (Shape::Directory, auth.clone(), "");
    let before = base.map(|b| (Shape::Base, b, "base-"));
    let binaries: Vec<_> = std::iter::once(tree).chain(before).collect();

    println!(
        "cgp-auth benchmark: {requests} requests, {users} users, {in_flight} in flight, slapd {}",
        slapd.uri()
    );
    let bind_loop = direct_loop(&slapd, requests, users, in_flight, 0);
    // The helper's two operations without the helper: 4 search connections,
    // as the helper's default pool_size.
    let search_loop = direct_loop(&slapd, requests, users, in_flight, 4);
    let cached_requests = requests * 10;
    // (row, requests, verdict TTL, DN TTL, DN template, store, in flight)
    let rows = [
        ("cold", requests, "0s", "0s", false, false, in_flight),
        ("template", requests, "0s", "0s", true, false, in_flight),
        ("dn-cache", requests, "0s", "1h", false, false, in_flight),
        (
            "cached",
            cached_requests,
            "1h",
            "0s",
            false,
            true,
            in_flight,
        ),
        ("cold@256", requests, "0s", "0s", false, false, 256),
    ];
    // results[row][binary]
    let mut results: Vec<Vec<Run>> = Vec::new();
    for (name, n, cache_ttl, dn_ttl, template, store, flight) in rows {
        let mut per_binary = Vec::new();
        // Binaries alternate row by row, so that load on the shared
        // machine falls on both alike.
        for (shape, bin, prefix) in &binaries {
            let cfg = config(
                dir.path(),
                &format!("{prefix}{name}.toml"),
                &slapd,
                cache_ttl,
                dn_ttl,
                template,
                store,
                *shape,
            );
            let mut helper: Vec<String> = match (&wrap, prefix.is_empty()) {
                (Some(w), true) => w
                    .replace("{row}", name)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect(),
                _ => Vec::new(),
            };
            helper.extend([bin.clone(), "--config".into(), cfg]);
            if store {
                // Cached VRFY is measured with the cache filled: one
                // untimed pass over the users first, then a new helper
                // process on the same store, whose first look at each user
                // reads sled.
                sim(&slapd_cpu_of, users, flight, &vrfy, &helper);
            }
            per_binary.push(sim(&slapd_cpu_of, n, flight, &vrfy, &helper));
        }
        results.push(per_binary);
    }
    let null_run = sim(&slapd_cpu_of, cached_requests, in_flight, &vrfy, &[null]);
    let row = |name: &str| &results[rows.iter().position(|r| r.0 == name).expect("a row")][0];
    let (cold, tmpl, dn_cached, cached, big) = (
        row("cold"),
        row("template"),
        row("dn-cache"),
        row("cached"),
        row("cold@256"),
    );

    for ((name, ..), runs) in rows.iter().zip(&results) {
        for (run, (_, _, prefix)) in runs.iter().zip(&binaries) {
            println!("  {:<14} {}", format!("{prefix}{name}"), run.summary);
        }
    }
    println!("  {:<14} {}", "null", null_run.summary);
    // Where the time goes: on two cores the client and slapd share the CPU.
    let per_request = |cpu: f64, n: usize| cpu * 1e6 / n as f64;
    println!("CPU microseconds per request, client (or helper) + slapd:");
    for (name, (_, client, slapd_cpu)) in
        [("bind loop", bind_loop), ("search+bind loop", search_loop)]
    {
        println!(
            "  {name:<17} {:>6.1} + {:>6.1}",
            per_request(client, requests),
            per_request(slapd_cpu, requests)
        );
    }
    for ((name, n, ..), runs) in rows.iter().zip(&results) {
        for (run, (_, _, prefix)) in runs.iter().zip(&binaries) {
            println!(
                "  {:<17} {:>6.1} + {:>6.1}",
                format!("{prefix}{name}"),
                per_request(run.helper_cpu, *n),
                per_request(run.slapd_cpu, *n)
            );
        }
    }
    println!(
        "  {:<17} {:>6.1} + {:>6.1}",
        "null",
        per_request(null_run.helper_cpu, cached_requests),
        per_request(null_run.slapd_cpu, cached_requests)
    );
    let baseline = bind_loop.0;
    println!("direct ldap3 bind loop:                {baseline:>9.0} binds/s");
    println!(
        "direct ldap3 search+bind loop:         {:>9.0} /s      = {:.2}x the bind loop",
        search_loop.0,
        search_loop.0 / baseline
    );
    println!(
        "cold VRFY, search+bind:                {:>9.0} req/s  = {:.2}x the search+bind loop (target >= 0.9x), {:.2}x the bind loop",
        cold.rate,
        cold.rate / search_loop.0,
        cold.rate / baseline
    );
    println!(
        "cold VRFY, DN template (bind only):    {:>9.0} req/s  = {:.2}x the bind loop",
        tmpl.rate,
        tmpl.rate / baseline
    );
    println!(
        "cold VRFY, search+bind, DNs kept 1h:   {:>9.0} req/s  = {:.2}x the bind loop ({:.0}% of DNs kept)",
        dn_cached.rate,
        dn_cached.rate / baseline,
        100.0 * requests.saturating_sub(users) as f64 / requests as f64
    );
    println!(
        "cached VRFY (cache warmed):            {:>9.0} req/s  = {:.2}x the null helper ({:.0} req/s, target >= 0.5x)",
        cached.rate,
        cached.rate / null_run.rate,
        null_run.rate
    );
    println!(
        "helper CPU per cold login: {:.1} us (target <= 50); per cached VRFY: {:.1} us (target <= 3)",
        per_request(cold.helper_cpu, requests),
        per_request(cached.helper_cpu, cached_requests)
    );
    println!(
        "peak RSS of cgp-auth at 256 in flight: {:.1} MiB (target < 64 MiB)",
        big.peak_rss_kib as f64 / 1024.0
    );
    if binaries.len() > 1 {
        println!(
            "against AUTH_BASE_BIN, same run (rate ratio, helper CPU per request now / before):"
        );
        for ((name, n, ..), runs) in rows.iter().zip(&results) {
            println!(
                "  {name:<9} {:>6.2}x rate   CPU {:>6.1} / {:>6.1} us",
                runs[0].rate / runs[1].rate,
                per_request(runs[0].helper_cpu, *n),
                per_request(runs[1].helper_cpu, *n)
            );
        }
    }
}

/// The helper's password query, as the SQL rows run it.
const SQL_PASSWORD_QUERY: &str =
    "SELECT password_hash AS password, disabled, locked FROM users WHERE email = $1";

/// A direct tokio-postgres loop: `in_flight` tasks on `conns` connections
/// (tasks sharing one pipeline their queries), running the password query
/// and checking the {SSHA} hash (the helper's work without the helper).
/// Operations per second and the CPU seconds of this process.
fn sql_direct_loop(
    pg: &Postgres,
    requests: usize,
    users: usize,
    in_flight: usize,
    conns: usize,
) -> (f64, f64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let url = format!(
        "host=127.0.0.1 port={} user={ROLE} password={PASSWORD} dbname=mail",
        pg.port()
    );
    rt.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..conns {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(conn);
            let statement = client.prepare(SQL_PASSWORD_QUERY).await.expect("prepare");
            clients.push(std::sync::Arc::new((client, statement)));
        }
        let started = Instant::now();
        let own_before = cpu_seconds("self").unwrap_or(0.0);
        let tasks: Vec<_> = (0..in_flight)
            .map(|t| {
                let shared = clients[t % conns].clone();
                tokio::spawn(async move {
                    let (client, statement) = &*shared;
                    for n in (t..requests).step_by(in_flight) {
                        let i = n % users;
                        let email = format!("bench{i}@example.test");
                        let row = client.query_one(statement, &[&email]).await.expect("query");
                        let hash: String = row.get("password");
                        let stored = Stored::parse(&hash, false).expect("a hash");
                        assert!(password::check(&stored, format!("pw{i}").as_bytes()).await);
                        assert!(!row.get::<_, bool>("disabled"));
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("query task");
        }
        (
            requests as f64 / started.elapsed().as_secs_f64(),
            cpu_seconds("self").unwrap_or(0.0) - own_before,
        )
    })
}

fn sql_bench(requests: usize, users: usize, in_flight: usize) {
    let mut sql = std::fs::read_to_string(cgp_tests::testdata("sql").join("schema.sql"))
        .expect("read schema.sql");
    sql.push_str("INSERT INTO users (email, password_hash) VALUES\n");
    let rows: Vec<String> = (0..users)
        .map(|i| {
            let salt = (i as u64).to_be_bytes();
            format!(
                "('bench{i}@example.test', '{}')",
                ssha(&format!("pw{i}"), &salt)
            )
        })
        .collect();
    sql.push_str(&rows.join(",\n"));
    sql.push_str(";\nANALYZE users;\n");
    let pg = Postgres::start(&sql);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("auth-sql.toml");
    cgp_tests::write_config(
        &config,
        format!(
            r#"{common}[cache]
positive_ttl = "0s"
negative_ttl = "0s"
[directory]
type = "sql"
[directory.sql]
hosts = ["{host}"]
dbname = "mail"
user = "{ROLE}"
password = "{PASSWORD}"
password_query = "SELECT password_hash AS password, disabled, locked FROM users WHERE email = {{address}}"
"#,
            common = common_config(),
            host = pg.host()
        ),
    )
    .expect("write config");
    let helper = vec![
        release_dir().join("cgp-auth").display().to_string(),
        "--config".into(),
        config.display().to_string(),
    ];
    let vrfy = format!("VRFY (IMAP [10.0.0.1]) bench{{n%{users}}}@example.test pw{{n%{users}}}");
    println!(
        "cgp-auth SQL benchmark: {requests} requests, {users} users, {in_flight} in flight, PostgreSQL {}",
        pg.host()
    );
    let no_server_cpu = || 0.0;
    // Alternating, twice, so that load on the shared machine falls on both.
    let mut ratios = Vec::new();
    for round in 1..=2 {
        let (direct, direct_cpu) = sql_direct_loop(&pg, requests, users, in_flight, in_flight);
        // The helper's way: its default 4 connections, pipelined.
        let (piped, piped_cpu) = sql_direct_loop(&pg, requests, users, in_flight, 4);
        let cold = sim(&no_server_cpu, requests, in_flight, &vrfy, &helper);
        println!("  round {round}: {}", cold.summary);
        println!(
            "  round {round}: direct loop, a connection per task {direct:>8.0} /s ({:.1} us CPU each); 4 pipelined connections {piped:>8.0} /s ({:.1} us); cold VRFY {:>8.0} req/s ({:.1} us helper CPU each) = {:.2}x the first (target >= 0.8x), {:.2}x the second",
            direct_cpu * 1e6 / requests as f64,
            piped_cpu * 1e6 / requests as f64,
            cold.rate,
            cold.helper_cpu * 1e6 / requests as f64,
            cold.rate / direct,
            cold.rate / piped
        );
        ratios.push(format!(
            "{:.2}x ({:.2}x)",
            cold.rate / direct,
            cold.rate / piped
        ));
    }
    println!(
        "cold VRFY over the direct loop, a connection per task (4 pipelined): {}",
        ratios.join(", ")
    );
}
