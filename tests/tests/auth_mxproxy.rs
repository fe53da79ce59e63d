//! The MX Proxy back end of the directory against the fake MX Proxy
//! (`support/fake_mxproxy.rs`): the password grant as `Directory::verify`,
//! the contact list as people, an expired service token, faults; and
//! `cgp-auth` answering `VRFY` on it.

use cgp_lookup::directory::{Account, DirectoryConfig, DirectoryError, Verdict};
use cgp_tests::bin;
use cgp_tests::fake_cli::FakeCli;
use cgp_tests::fake_mxproxy::{FakeMxProxy, Mode};
use cgp_tests::session::Session;
use cgp_tests::transcript::check_case_with_config;
use std::time::{Duration, Instant};

const CLIENT: &str = "client7664";
const SECRET: &str = "Mmx0OlWEDIDhPGgGpLQFxBwpCSPp9IIY";

fn fake() -> FakeMxProxy {
    let f = FakeMxProxy::start(CLIENT, SECRET);
    f.add_user("peterh@xyzrd.com", "78561");
    f.add_user("svc@xyzrd.com", "svc-pw");
    f
}

fn table(base: &str, extra: &str) -> String {
    format!(
        r#"
[directory]
type = "mxproxy"
[directory.cache]
ttl = "0s"
negative_ttl = "0s"
[directory.mxproxy]
base_url = "{base}"
client_id = "{CLIENT}"
client_secret = "{SECRET}"
service_username = "svc@xyzrd.com"
service_password = "svc-pw"
timeout = "300ms"
{extra}
"#
    )
}

fn directory(base: &str) -> cgp_lookup::directory::Directory {
    directory_with(&table(base, ""))
}

fn directory_with(text: &str) -> cgp_lookup::directory::Directory {
    // From the text, as the loader reads it: secrets carry where they are.
    #[derive(serde::Deserialize)]
    struct Top {
        directory: DirectoryConfig,
    }
    let config = toml::from_str::<Top>(text).unwrap().directory;
    config.validate("directory").unwrap();
    config.open(&[]).unwrap()
}

fn who(a: &str) -> Account {
    a.parse().unwrap()
}

#[tokio::test]
async fn the_grant_decides_and_unknown_names_look_like_wrong_passwords() {
    let f = fake();
    let dir = directory(f.base_url());
    assert_eq!(
        dir.verify(&who("PeterH@xyzrd.com"), b"78561").await,
        Ok(Verdict::Ok)
    );
    assert_eq!(
        dir.verify(&who("peterh@xyzrd.com"), b"wrong").await,
        Ok(Verdict::Invalid)
    );
    assert_eq!(
        dir.verify(&who("nobody@xyzrd.com"), b"78561").await,
        Ok(Verdict::Invalid)
    );
    // Metacharacters travel form-encoded, never spliced into the body.
    assert_eq!(
        dir.verify(&who("peterh@xyzrd.com"), b"78561&grant_type=x")
            .await,
        Ok(Verdict::Invalid)
    );
    assert_eq!(
        f.grants(),
        4,
        "each name, known or not, asks the server once"
    );
}

#[tokio::test]
async fn faults_are_temporary_failures_within_the_deadline() {
    let f = fake();
    let dir = directory(f.base_url());
    for mode in [Mode::Error500, Mode::Slow] {
        f.set_mode(mode);
        let t = Instant::now();
        let r = dir.verify(&who("peterh@xyzrd.com"), b"78561").await;
        assert!(
            matches!(r, Err(DirectoryError::Unavailable(_))),
            "{mode:?}: {r:?}"
        );
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "{mode:?}: {:?}",
            t.elapsed()
        );
        if let Err(e) = r {
            assert!(!e.to_string().contains(SECRET) && !e.to_string().contains("78561"));
        }
    }
    let down = directory("http://127.0.0.1:9/");
    assert!(matches!(
        down.verify(&who("peterh@xyzrd.com"), b"78561").await,
        Err(DirectoryError::Unavailable(_))
    ));
}

#[tokio::test]
async fn contacts_are_people_by_mail_and_by_extension_and_an_expired_token_is_renewed() {
    let f = fake();
    let dir = directory(f.base_url());
    let p = dir
        .find_by_mail(&who("PeterH@xyzrd.com"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.first("cn"), Some("Peter Hyde"));
    assert_eq!(p.first("telephoneNumber"), Some("3044"));
    assert_eq!(p.first("mobile"), Some("+1-512-555-0136"));
    assert_eq!(p.first("did"), Some("15125550136"));
    let by_ext = dir.find(&who("3055@xyzrd.com")).await.unwrap().unwrap();
    assert_eq!(by_ext.first("mail"), Some("mikef@xyzrd.com"));
    assert_eq!(
        dir.find_by_mail(&who("3055@xyzrd.com")).await,
        Ok(None),
        "by mail only"
    );
    assert_eq!(f.grants(), 1, "the service token is reused");
    f.expire_tokens();
    let again = dir.find_by_mail(&who("mikef@xyzrd.com")).await.unwrap();
    assert!(again.is_some());
    assert_eq!(
        f.grants(),
        2,
        "granted again after the server said it expired"
    );
}

#[tokio::test]
async fn a_good_password_learns_mx_ext_and_jid_and_find_gives_them() {
    let f = fake();
    let dir = directory(f.base_url());
    let peter = who("peterh@xyzrd.com");
    assert_eq!(dir.verify(&peter, b"wrong").await, Ok(Verdict::Invalid));
    assert_eq!(f.profile_reads(), 0, "only a good password asks");
    assert_eq!(dir.find(&peter).await.unwrap().unwrap().first("mx"), None);
    assert_eq!(dir.verify(&peter, b"78561").await, Ok(Verdict::Ok));
    assert_eq!(f.profile_reads(), 1);
    let p = dir.find(&peter).await.unwrap().unwrap();
    // The contact (by mail), with what the login told added.
    assert_eq!(p.first("cn"), Some("Peter Hyde"));
    assert_eq!(p.first("mx"), Some("63022"));
    assert_eq!(p.first("ext"), Some("3044"));
    assert_eq!(p.first("jid"), Some("43884851428118509"));
    assert!(
        p.attributes
            .iter()
            .all(|(_, v)| v.iter().all(|v| !v.contains("EqNe45"))),
        "the soft phone password is never kept: {p:?}"
    );
    assert_eq!(dir.verify(&peter, b"78561").await, Ok(Verdict::Ok));
    assert_eq!(f.profile_reads(), 1, "kept for profile_ttl");
}

#[tokio::test]
async fn without_contacts_the_login_alone_makes_the_person() {
    let f = fake();
    f.add_user("newbie@xyzrd.com", "pw");
    f.set_profile("newbie@xyzrd.com", "63023", "3999", "4388485000000001");
    let text = table(f.base_url(), "")
        .replace("service_username = \"svc@xyzrd.com\"", "")
        .replace("service_password = \"svc-pw\"", "");
    let dir = directory_with(&text);
    let newbie = who("Newbie@xyzrd.com");
    assert_eq!(dir.find(&newbie).await, Ok(None));
    assert_eq!(dir.verify(&newbie, b"pw").await, Ok(Verdict::Ok));
    let p = dir.find(&newbie).await.unwrap().unwrap();
    assert_eq!(p.first("mx"), Some("63023"));
    assert_eq!(p.first("ext"), Some("3999"));
    assert_eq!(p.first("telephoneNumber"), Some("3999"));
    assert_eq!(p.id, "4388485000000001");
    assert_eq!(dir.find(&who("other@xyzrd.com")).await, Ok(None));
    // profile_ttl = "0s": GET /auth is not asked.
    let f = fake();
    let dir = directory_with(&table(f.base_url(), "profile_ttl = \"0s\""));
    assert_eq!(
        dir.verify(&who("peterh@xyzrd.com"), b"78561").await,
        Ok(Verdict::Ok)
    );
    assert_eq!(f.profile_reads(), 0);
}

#[tokio::test]
async fn an_expired_user_token_is_granted_again_once_and_the_verdict_stands() {
    let f = fake();
    let dir = directory(f.base_url());
    let peter = who("peterh@xyzrd.com");
    f.expire_profile_reads(1);
    assert_eq!(dir.verify(&peter, b"78561").await, Ok(Verdict::Ok));
    assert_eq!(
        (f.grants(), f.profile_reads()),
        (2, 1),
        "granted again once"
    );
    assert_eq!(
        dir.find(&peter).await.unwrap().unwrap().first("mx"),
        Some("63022")
    );
    // Refused twice: the password was right, the attributes stay unknown.
    let f = fake();
    let dir = directory(f.base_url());
    f.expire_profile_reads(2);
    assert_eq!(dir.verify(&peter, b"78561").await, Ok(Verdict::Ok));
    assert_eq!((f.grants(), f.profile_reads()), (2, 0));
    assert_eq!(dir.find(&peter).await.unwrap().unwrap().first("mx"), None);
}

#[test]
fn cgp_auth_new_after_a_login_maps_mx_ext_and_jid() {
    let f = fake();
    f.add_user("newbie@xyzrd.com", "pw");
    f.set_profile("newbie@xyzrd.com", "63023", "3999", "4388485000000001");
    let cli = FakeCli::start("postmaster", "clipw");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.toml");
    // No service account: the contact list is not read, the login alone
    // tells who the user is.
    let directory = table(f.base_url(), "")
        .replace("service_username = \"svc@xyzrd.com\"", "")
        .replace("service_password = \"svc-pw\"", "");
    cgp_tests::write_config(
        &path,
        format!(
            r#"[runtime]
deadline = "3s"
stats_interval = "0s"
[log]
journald = false
{directory}
[provision]
enabled = true
[provision.settings]
PBXExtension = "ext"
MXServer = "mx"
MXJid = "jid"
[provision.cli]
address = "{}"
login = "postmaster"
password = "clipw"
"#,
            cli.address()
        ),
    )
    .unwrap();
    let mut s = Session::start(&bin("cgp-auth"), &path);
    assert_eq!(
        s.ask("NEW newbie@xyzrd.com"),
        r#"ERROR "no such user in directory""#
    );
    assert_eq!(
        s.ask("VRFY (IMAP [192.0.2.10]) newbie@xyzrd.com \"pw\""),
        "OK"
    );
    assert_eq!(s.ask("NEW newbie@xyzrd.com"), "OK");
    s.finish();
    let a = cli.account("newbie@xyzrd.com").expect("account created");
    let setting = |k: &str| {
        a.settings
            .get(k)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    assert_eq!(setting("PBXExtension").as_deref(), Some("3999"));
    assert_eq!(setting("MXServer").as_deref(), Some("63023"));
    assert_eq!(setting("MXJid").as_deref(), Some("4388485000000001"));
}

#[test]
fn cgp_auth_answers_vrfy_from_mx_proxy() {
    let f = fake();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("auth.log");
    let path = dir.path().join("auth.toml");
    cgp_tests::write_config(
        &path,
        format!(
            "[runtime]\ndeadline = \"3s\"\nstats_interval = \"0s\"\n[log]\njournald = false\nlevel = \"debug\"\nfile = {log:?}\n{}",
            table(f.base_url(), "")
        ),
    )
    .unwrap();
    let mut s = Session::start(&bin("cgp-auth"), &path);
    let vrfy = |s: &mut Session, user: &str, pw: &str| {
        s.ask(&format!("VRFY (IMAP [192.0.2.10]) {user} {pw:?}"))
    };
    assert_eq!(vrfy(&mut s, "peterh@xyzrd.com", "78561"), "OK");
    let wrong = vrfy(&mut s, "peterh@xyzrd.com", "nope");
    assert_eq!(wrong, r#"ERROR "invalid credentials""#);
    assert_eq!(vrfy(&mut s, "ghost@xyzrd.com", "78561"), wrong);
    f.set_mode(Mode::Error500);
    let failed = vrfy(&mut s, "mikef@xyzrd.com", "x");
    assert!(failed.starts_with("FAILURE"), "{failed}");
    s.finish();
    let text = std::fs::read_to_string(&log).unwrap();
    for secret in [SECRET, "78561", "token-"] {
        assert!(!text.contains(secret), "{secret} in the log");
    }
}

#[test]
fn the_mx_proxy_example_passes_check_config_and_errors_name_their_key() {
    let example = cgp_tests::example("auth-mxproxy.toml");
    let check = |path: &std::path::Path| {
        let out = cgp_tests::check_config("cgp-auth", path);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, err) = check(&example);
    assert!(ok, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    cgp_tests::write_config(
        &bad,
        text.replace("service_password = \"change-me-too\"", ""),
    )
    .unwrap();
    let (ok, err) = check(&bad);
    assert!(
        !ok && err.contains("directory.mxproxy.service_password"),
        "{err}"
    );
    assert!(!err.contains("change-me"), "{err}");
    cgp_tests::write_config(
        &bad,
        text.replace("[directory.mxproxy]", "[directory.other]"),
    )
    .unwrap();
    let (ok, err) = check(&bad);
    assert!(!ok && err.contains("other"), "{err}");
}

/// The example of `packaging/examples/`, pointed at the fake: its
/// transcripts `testdata/mxproxy/vrfy` (OK, the one refusal for a wrong
/// password and an unknown user) and `vrfy_down` (FAILURE on a 500).
#[test]
fn the_mx_proxy_example_answers_its_transcripts() {
    let f = FakeMxProxy::start("cgp-helpers", "change-me");
    f.add_user("peterh@xyzrd.com", "78561");
    f.add_user("cgp-directory@example.com", "change-me-too");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth-mxproxy.toml");
    let text = std::fs::read_to_string(cgp_tests::example("auth-mxproxy.toml")).unwrap();
    cgp_tests::write_config(&path, text.replace("https://mx.example.com/", f.base_url())).unwrap();
    let auth = bin("cgp-auth");
    check_case_with_config(&auth, "mxproxy", "vrfy", &path, &|_| {});
    f.set_mode(Mode::Error500);
    check_case_with_config(&auth, "mxproxy", "vrfy_down", &path, &|_| {});
}
