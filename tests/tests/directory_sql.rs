//! `cgp_lookup::directory` on its SQL back end against a real PostgreSQL,
//! and cgp-auth on it: people, attributes, groups and secrets from the
//! configured queries, every password scheme, the policy columns, hostile
//! names bound as values, failover; and the faults (server stopped, frozen,
//! a query that never returns, a table renamed) each answered by a
//! temporary failure within the deadline, then recovery.

use base64::Engine;
use cgp_lookup::directory::password::{self, NewScheme};
use cgp_lookup::directory::{
    Account, Directory, DirectoryConfig, DirectoryError, GroupRef, Verdict,
};
use cgp_tests::postgres::{PASSWORD, Postgres, ROLE};
use cgp_tests::session::Session;
use cgp_tests::{bin, process::free_port, testdata};
use sha1::Digest;
use std::path::Path;
use std::time::{Duration, Instant};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn ssha(password: &str) -> String {
    let salt = b"salt4sql";
    let mut raw = sha1::Sha1::digest([password.as_bytes(), salt].concat()).to_vec();
    raw.extend_from_slice(salt);
    format!(
        "{{SSHA}}{}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn argon2_cheap(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(1024, 1, 1, None).unwrap();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(
            password.as_bytes(),
            &SaltString::encode_b64(b"argon2salt").unwrap(),
        )
        .unwrap()
        .to_string()
}

/// The schema of docs/auth.md and its people, one per scheme and policy.
fn people() -> String {
    let bcrypt = bcrypt::hash_with_salt("carolpw", 4, [7u8; 16])
        .unwrap()
        .format_for_version(bcrypt::Version::TwoB);
    let rows = [
        ("alice@example.test", ssha("alicepw"), "false", "false"),
        (
            "bob@example.test",
            password::make(NewScheme::Ssha512, b"bobpw").unwrap(),
            "false",
            "false",
        ),
        ("carol@example.test", bcrypt, "false", "false"),
        (
            "dave@example.test",
            argon2_cheap("davepw"),
            "false",
            "false",
        ),
        ("dis@example.test", ssha("dispw"), "true", "false"),
        ("lucy@example.test", ssha("lucypw"), "false", "true"),
        ("o'brien@example.test", ssha("obrienpw"), "false", "false"),
    ];
    let mut sql = std::fs::read_to_string(testdata("sql").join("schema.sql")).unwrap();
    for (email, hash, disabled, locked) in rows {
        sql.push_str(&format!(
            "INSERT INTO users (email, password_hash, disabled, locked) VALUES ('{}', '{hash}', {disabled}, {locked});\n",
            email.replace('\'', "''")
        ));
    }
    sql.push_str(
        "UPDATE users SET real_name = 'Alice Liddell', role = 'admin', sip_secret = 'alicesip' WHERE email = 'alice@example.test';
         INSERT INTO aliases VALUES ('a.liddell@example.test', 'alice@example.test');
         INSERT INTO user_groups VALUES ('alice@example.test', 'Staff'), ('alice@example.test', 'admins'), ('bob@example.test', 'staff');",
    );
    sql
}

/// The queries of docs/auth.md.
const QUERIES: &str = r#"
password_query = "SELECT password_hash AS password, disabled, locked FROM users WHERE email = {address}"
user_query = "SELECT email AS id, real_name AS cn, role FROM users WHERE email = {address}"
mail_query = "SELECT u.email AS id, u.real_name AS cn, u.role FROM users u LEFT JOIN aliases a ON a.email = u.email WHERE u.email = {address} OR a.alias = {address}"
groups_query = "SELECT group_name FROM user_groups WHERE email = {id}"
secret_query = "SELECT sip_secret FROM users WHERE email = {id}"
"#;

/// The `[directory.sql]` table body for `hosts`, plus `extra`.
fn sql_table(hosts: &[String], extra: &str) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    format!(
        r#"hosts = [{}]
dbname = "mail"
user = "{ROLE}"
password = "{PASSWORD}"
connect_timeout = "1s"
statement_timeout = "1s"
pool_size = 4
{QUERIES}
{extra}
"#,
        hosts.join(", ")
    )
}

fn open(hosts: &[String], extra: &str) -> Directory {
    let text = format!("type = \"sql\"\n[sql]\n{}", sql_table(hosts, extra));
    let config: DirectoryConfig = toml::from_str(&text).unwrap();
    config.validate("directory").unwrap();
    config.open(&[]).unwrap()
}

fn account(s: &str) -> Account {
    Account::parse(s.as_bytes()).unwrap()
}

#[test]
fn people_attributes_groups_and_verdicts() {
    let pg = Postgres::start(&people());
    let rt = runtime();
    let dir = open(&[pg.host()], "");
    rt.block_on(async {
        dir.probe().await.unwrap();
        let alice = account("Alice@Example.TEST");
        let p = dir.find(&alice).await.unwrap().unwrap();
        assert_eq!(p.id, "alice@example.test");
        assert_eq!(p.first("cn"), Some("Alice Liddell"));
        assert_eq!(p.first("ROLE"), Some("admin"));
        assert!(p.in_group(&GroupRef::new("staff")));
        assert!(p.in_group(&GroupRef::new("admins")));
        let by_alias = dir
            .find_by_mail(&account("a.liddell@example.test"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(by_alias.id, "alice@example.test");
        assert_eq!(dir.secret(&alice, &p).await, Ok(Some("alicesip".into())));
        assert_eq!(dir.find(&account("ghost@example.test")).await, Ok(None));

        let verify = |who: &'static str, pw: &'static str| {
            let dir = dir.clone();
            async move { dir.verify(&account(who), pw.as_bytes()).await.unwrap() }
        };
        // Every scheme: {SSHA}, {SSHA512}, bcrypt, argon2.
        for (who, pw) in [
            ("alice@example.test", "alicepw"),
            ("bob@example.test", "bobpw"),
            ("carol@example.test", "carolpw"),
            ("dave@example.test", "davepw"),
        ] {
            assert_eq!(verify(who, pw).await, Verdict::Ok, "{who}");
            assert_eq!(verify(who, "wrong").await, Verdict::Invalid, "{who}");
        }
        assert_eq!(verify("ghost@example.test", "x").await, Verdict::Invalid);
        // The policy columns, told only to someone with the password.
        assert_eq!(verify("dis@example.test", "dispw").await, Verdict::Disabled);
        assert_eq!(verify("dis@example.test", "wrong").await, Verdict::Invalid);
        assert_eq!(verify("lucy@example.test", "lucypw").await, Verdict::Locked);
        // A quote in a name is a value, not SQL.
        assert_eq!(
            verify("o'brien@example.test", "obrienpw").await,
            Verdict::Ok
        );
        for hostile in ["alice@example.test'--", "x'or'1'='1@example.test"] {
            if let Ok(a) = Account::parse(hostile.as_bytes()) {
                assert_eq!(dir.verify(&a, b"alicepw").await, Ok(Verdict::Invalid));
                assert_eq!(dir.find(&a).await, Ok(None));
            }
        }
    });
    // The group rule: only admins.
    let dir = open(&[pg.host()], "required_groups = [\"admins\"]");
    rt.block_on(async {
        let v = |who: &'static str, pw: &'static str| {
            let dir = dir.clone();
            async move { dir.verify(&account(who), pw.as_bytes()).await.unwrap() }
        };
        assert_eq!(v("alice@example.test", "alicepw").await, Verdict::Ok);
        assert_eq!(v("bob@example.test", "bobpw").await, Verdict::NotPermitted);
    });
}

#[test]
fn a_wrong_column_or_table_shows_at_probe() {
    let pg = Postgres::start(&people());
    let rt = runtime();
    let text = format!("type = \"sql\"\n[sql]\n{}", sql_table(&[pg.host()], ""))
        .replace("password_hash AS password", "password_hash AS pw");
    let config: DirectoryConfig = toml::from_str(&text).unwrap();
    let dir = config.open(&[]).unwrap();
    let e = rt.block_on(dir.probe()).unwrap_err();
    assert!(
        matches!(e, DirectoryError::Failed(ref t) if t.contains("no password column")),
        "{e}"
    );
    let dir = open(&[pg.host()], "");
    pg.psql("ALTER TABLE user_groups RENAME TO groups_old");
    let e = rt.block_on(dir.probe()).unwrap_err();
    assert!(
        matches!(e, DirectoryError::Failed(ref t) if t.contains("user_groups")),
        "{e}"
    );
}

#[test]
fn fails_over_to_the_second_server_and_back() {
    let first = Postgres::start(&people());
    let second = Postgres::start(&people());
    let rt = runtime();
    // Nothing listens on the first address: the second answers.
    let nobody = format!("127.0.0.1:{}", free_port());
    let dir = open(&[nobody, second.host()], "failback_after = \"1s\"");
    rt.block_on(async {
        assert_eq!(
            dir.verify(&account("alice@example.test"), b"alicepw").await,
            Ok(Verdict::Ok)
        );
    });
    // A frozen first server: the first request waits out its timeouts and
    // fails over; the next ones go straight to the second.
    let dir = open(&[first.host(), second.host()], "failback_after = \"60s\"");
    rt.block_on(async {
        let a = account("bob@example.test");
        assert_eq!(dir.verify(&a, b"bobpw").await, Ok(Verdict::Ok));
        first.freeze();
        let t = Instant::now();
        assert_eq!(dir.verify(&a, b"bobpw").await, Ok(Verdict::Ok));
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
        let t = Instant::now();
        assert_eq!(dir.verify(&a, b"bobpw").await, Ok(Verdict::Ok));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        first.thaw();
    });
}

#[test]
fn tls_verifies_the_server_certificate() {
    let pg = Postgres::start_tls(&people());
    let rt = runtime();
    let with_ca = |ca: &Path| {
        open(
            &[pg.host()],
            &format!("tls = \"require\"\nca_file = \"{}\"", ca.display()),
        )
    };
    let alice = account("alice@example.test");
    let dir = with_ca(&pg.ca_file());
    assert_eq!(rt.block_on(dir.verify(&alice, b"alicepw")), Ok(Verdict::Ok));
    // A certificate from a CA the helper was not told to trust.
    let other = tempfile::tempdir().unwrap();
    cgp_tests::slapd::make_certificates(other.path());
    let dir = with_ca(&other.path().join("ca.pem"));
    let e = rt.block_on(dir.verify(&alice, b"alicepw")).unwrap_err();
    assert!(
        matches!(e, DirectoryError::Unavailable(ref t) if t.contains("certificate")),
        "{e}"
    );
}

fn start_auth(dir: &Path, pg_host: &str) -> Session {
    let config = format!(
        r#"detailed_errors = true

[directory]
type = "sql"

[directory.sql]
{sql}

[runtime]
deadline = "8s"
stats_interval = "0s"

[log]
journald = false
level = "debug"
file = "{log}"

[store]
path = "{store}"

[cache]
positive_ttl = "0s"
negative_ttl = "0s"

[throttle]
enabled = false
"#,
        sql = sql_table(&[pg_host.to_string()], ""),
        log = dir.join("auth.log").display(),
        store = dir.join("store").display(),
    );
    let path = dir.join("auth.toml");
    cgp_tests::write_config(&path, config).unwrap();
    Session::start(&bin("cgp-auth"), &path)
}

fn vrfy(h: &mut Session, user: &str, password: &str) -> String {
    h.ask(&format!(
        "VRFY (IMAP [192.0.2.10]) {user} {}",
        String::from_utf8(cgp_wire::data::encode_quoted(password.as_bytes())).unwrap()
    ))
}

/// Asks until alice logs in again; panics after 20 s.
fn recovers(h: &mut Session, what: &str) {
    let started = Instant::now();
    while vrfy(h, "alice@example.test", "alicepw") != "OK" {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no recovery after {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A temporary failure, within the deadline.
fn fails_in_time(h: &mut Session, want: &str, what: &str) {
    let t = Instant::now();
    assert_eq!(
        vrfy(h, "alice@example.test", "alicepw"),
        format!("FAILURE {want:?}"),
        "{what}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "{what}: {:?}",
        t.elapsed()
    );
}

#[test]
fn cgp_auth_verdicts_faults_and_recovery() {
    let mut pg = Postgres::start(&people());
    let dir = tempfile::Builder::new()
        .prefix("cgp-auth-sql-")
        .tempdir()
        .unwrap();
    let mut h = start_auth(dir.path(), &pg.host());
    for (user, password, want) in [
        ("alice@example.test", "alicepw", "OK"),
        (
            "alice@example.test",
            "wrong-pass",
            r#"ERROR "invalid credentials""#,
        ),
        (
            "ghost@example.test",
            "alicepw",
            r#"ERROR "invalid credentials""#,
        ),
        ("dis@example.test", "dispw", r#"ERROR "account disabled""#),
        ("lucy@example.test", "lucypw", r#"ERROR "account locked""#),
    ] {
        assert_eq!(vrfy(&mut h, user, password), want, "{user}");
    }

    // Stopped: refused at once.
    pg.stop();
    fails_in_time(&mut h, "directory unavailable", "stopped");
    pg.start_again();
    recovers(&mut h, "restart");

    // Frozen: the open connections hang, so do new ones.
    pg.freeze();
    fails_in_time(&mut h, "directory unavailable", "frozen");
    fails_in_time(&mut h, "directory unavailable", "frozen, again");
    pg.thaw();
    recovers(&mut h, "thaw");

    // A query that never returns: another session holds the table.
    let lock = pg.hold_lock("users");
    fails_in_time(&mut h, "directory unavailable", "locked table");
    drop(lock);
    recovers(&mut h, "the lock released");

    // The table renamed under the helper, then back.
    pg.psql("ALTER TABLE users RENAME TO users_old");
    fails_in_time(&mut h, "directory error", "renamed table");
    pg.psql("ALTER TABLE users_old RENAME TO users");
    recovers(&mut h, "the table renamed back");
    h.finish();
    let log = std::fs::read_to_string(dir.path().join("auth.log")).unwrap();
    assert!(
        !log.contains("alicepw") && !log.contains(PASSWORD),
        "secret in the log"
    );
}

#[test]
fn the_sql_example_passes_check_config_and_a_spliced_value_does_not() {
    let example = cgp_tests::example("auth-sql.toml");
    let check = |path: &Path| cgp_tests::check_config("cgp-auth", path);
    let out = check(&example);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("auth.toml");
    let text = std::fs::read_to_string(&example).unwrap().replace(
        "locked FROM users WHERE email = {address}",
        "locked FROM users WHERE email = '{address}'",
    );
    cgp_tests::write_config(&bad, text).unwrap();
    let out = check(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("line 51") && err.contains("{address} is a bound parameter"),
        "{err}"
    );
}
