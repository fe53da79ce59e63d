//! `cgp_lookup::ldap::Directory` against a real slapd: searches, binds,
//! password-policy verdicts, escaping, failover and fault injection.

use cgp_lookup::ldap::{BindOutcome, Directory, LdapConfig, LdapError, Scope};
use cgp_tests::slapd::{BASE, SERVICE_DN, SERVICE_PASSWORD, Slapd, runtime};
use std::time::{Duration, Instant};

fn config(uris: Vec<String>) -> LdapConfig {
    LdapConfig {
        uris,
        bind_dn: Some(SERVICE_DN.into()),
        bind_password: Some(SERVICE_PASSWORD.into()),
        connect_timeout: Duration::from_secs(1),
        op_timeout: Duration::from_secs(1),
        max_backoff: Duration::from_millis(200),
        ..LdapConfig::default()
    }
}

const ALICE: &str = "uid=alice,ou=people,dc=example,dc=org";

async fn find_uid(dir: &Directory, uid: &str) -> Result<Vec<String>, LdapError> {
    let filter = format!("(uid={})", ldap3::ldap_escape(uid));
    let entries = dir.search(BASE, Scope::Sub, &filter, &["uid"]).await?;
    Ok(entries.into_iter().map(|e| e.dn).collect())
}

/// Retries until the directory answers again, within a generous bound.
async fn until_answers(dir: &Directory) -> Duration {
    let started = Instant::now();
    loop {
        if find_uid(dir, "alice").await.is_ok() {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn searches_and_binds() {
    let slapd = Slapd::start_default();
    runtime().block_on(async {
        let dir = Directory::new(&config(vec![slapd.uri()])).unwrap();
        let e = dir
            .search(
                BASE,
                Scope::Sub,
                "(uid=alice)",
                &["mail", "AstAccountSecret", "cn"],
            )
            .await
            .unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].dn, ALICE);
        assert_eq!(e[0].all("MAIL").len(), 2);
        // The service account may read the secret (the ACL lets only it).
        assert_eq!(e[0].first("astaccountsecret"), Some("alicesip"));
        assert_eq!(e[0].first("cn"), Some("Alice Liddell"));

        let check = |dn: &'static str, pw: &'static [u8]| {
            let dir = dir.clone();
            async move { dir.check_password(dn, pw).await.unwrap() }
        };
        assert_eq!(check(ALICE, b"alicepw").await, BindOutcome::Ok);
        assert_eq!(
            check(ALICE, b"wrong").await,
            BindOutcome::InvalidCredentials
        );
        // An empty password would be an anonymous bind that succeeds.
        assert_eq!(check(ALICE, b"").await, BindOutcome::InvalidCredentials);
        assert_eq!(
            check(
                "uid=carol,ou=people,dc=example,dc=org",
                "sp ace \"quote\" back\\slash é".as_bytes()
            )
            .await,
            BindOutcome::Ok
        );
        assert_eq!(
            check("uid=lucy,ou=people,dc=example,dc=org", b"lucypw").await,
            BindOutcome::Locked
        );
        assert_eq!(
            check("uid=erin,ou=people,dc=example,dc=org", b"erinpw").await,
            BindOutcome::Expired
        );
        assert_eq!(
            check("uid=nobody,ou=people,dc=example,dc=org", b"x").await,
            BindOutcome::InvalidCredentials
        );
        // Many binds at once share the bind pool without mixing identities,
        // and the service connections keep their identity.
        let mut tasks = Vec::new();
        for i in 0..40 {
            let pw: &'static [u8] = if i % 2 == 0 { b"alicepw" } else { b"bad" };
            tasks.push(tokio::spawn(check(ALICE, pw)));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let want = if i % 2 == 0 {
                BindOutcome::Ok
            } else {
                BindOutcome::InvalidCredentials
            };
            assert_eq!(t.await.unwrap(), want);
        }
        let e = dir
            .search(ALICE, Scope::Base, "(objectClass=*)", &["AstAccountSecret"])
            .await
            .unwrap();
        assert_eq!(e[0].first("AstAccountSecret"), Some("alicesip"));
    });
}

#[test]
fn hostile_values_match_literally() {
    let slapd = Slapd::start_default();
    runtime().block_on(async {
        let dir = Directory::new(&config(vec![slapd.uri()])).unwrap();
        assert_eq!(
            find_uid(&dir, "alice").await.unwrap(),
            vec![ALICE.to_string()]
        );
        for hostile in ["*", "*)(uid=*", "\\2a", "alice)(|(uid=*", "al*"] {
            assert!(
                find_uid(&dir, hostile).await.unwrap().is_empty(),
                "{hostile}"
            );
        }
        // A broken filter is an error from the server, not "unavailable".
        assert!(matches!(
            dir.search(BASE, Scope::Sub, "(uid=", &["uid"]).await,
            Err(LdapError::Other(_))
        ));
    });
}

#[test]
fn anonymous_cannot_read_secrets() {
    let slapd = Slapd::start_default();
    runtime().block_on(async {
        let cfg = LdapConfig {
            bind_dn: None,
            bind_password: None,
            ..config(vec![slapd.uri()])
        };
        let dir = Directory::new(&cfg).unwrap();
        let e = dir
            .search(
                ALICE,
                Scope::Base,
                "(objectClass=*)",
                &["AstAccountSecret", "userPassword", "cn"],
            )
            .await
            .unwrap();
        assert_eq!(e[0].first("cn"), Some("Alice Liddell"));
        assert!(e[0].all("AstAccountSecret").is_empty());
        assert!(e[0].all("userPassword").is_empty());
    });
}

#[test]
fn a_wrong_service_password_is_an_error_not_an_outage() {
    let slapd = Slapd::start_default();
    runtime().block_on(async {
        let cfg = LdapConfig {
            bind_password: Some("wrong".into()),
            ..config(vec![slapd.uri()])
        };
        let dir = Directory::new(&cfg).unwrap();
        match find_uid(&dir, "alice").await {
            Err(LdapError::Other(text)) => {
                assert!(text.contains("service bind refused"), "{text}");
                assert!(!text.contains("wrong"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn stopped_server_is_unavailable_then_recovers() {
    let mut slapd = Slapd::start_default();
    runtime().block_on(async {
        let dir = Directory::new(&config(vec![slapd.uri()])).unwrap();
        assert!(find_uid(&dir, "alice").await.is_ok());
        assert_eq!(
            dir.check_password(ALICE, b"alicepw").await,
            Ok(BindOutcome::Ok)
        );
        slapd.stop();
        let started = Instant::now();
        assert!(matches!(
            find_uid(&dir, "alice").await,
            Err(LdapError::Unavailable(_))
        ));
        assert!(matches!(
            dir.check_password(ALICE, b"alicepw").await,
            Err(LdapError::Unavailable(_))
        ));
        // connect_timeout and op_timeout are 1s each: far below 10s.
        assert!(started.elapsed() < Duration::from_secs(10));
        slapd.start_again();
        until_answers(&dir).await;
        assert_eq!(
            dir.check_password(ALICE, b"alicepw").await,
            Ok(BindOutcome::Ok)
        );
    });
}

#[test]
fn frozen_server_times_out_then_recovers() {
    let slapd = Slapd::start_default();
    runtime().block_on(async {
        let dir = Directory::new(&config(vec![slapd.uri()])).unwrap();
        assert!(find_uid(&dir, "alice").await.is_ok());
        assert_eq!(
            dir.check_password(ALICE, b"alicepw").await,
            Ok(BindOutcome::Ok)
        );
        slapd.freeze();
        for _ in 0..3 {
            let started = Instant::now();
            assert!(matches!(
                find_uid(&dir, "alice").await,
                Err(LdapError::Unavailable(_))
            ));
            assert!(matches!(
                dir.check_password(ALICE, b"alicepw").await,
                Err(LdapError::Unavailable(_))
            ));
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{:?}",
                started.elapsed()
            );
        }
        slapd.thaw();
        until_answers(&dir).await;
        assert_eq!(
            dir.check_password(ALICE, b"alicepw").await,
            Ok(BindOutcome::Ok)
        );
    });
}

#[test]
fn fails_over_and_back() {
    // The second server holds one more entry, so a search tells which
    // server answered.
    let ldif = tempfile::NamedTempFile::new().unwrap();
    let mut text =
        std::fs::read_to_string(cgp_tests::testdata("ldap").join("directory.ldif")).unwrap();
    text.push_str(
        "\ndn: uid=marker,ou=people,dc=example,dc=org\nobjectClass: account\nuid: marker\n",
    );
    std::fs::write(ldif.path(), text).unwrap();
    let mut first = Slapd::start_default();
    let second = Slapd::start(ldif.path());
    runtime().block_on(async {
        let cfg = LdapConfig {
            failback_after: Duration::from_millis(300),
            pool_size: 1,
            ..config(vec![first.uri(), second.uri()])
        };
        let dir = Directory::new(&cfg).unwrap();
        let on_second = || async { !find_uid(&dir, "marker").await.unwrap().is_empty() };
        assert!(!on_second().await);
        first.stop();
        // The connection to the first server dies; the retry goes to the second.
        until_answers(&dir).await;
        assert!(on_second().await);
        assert_eq!(
            dir.check_password(ALICE, b"alicepw").await,
            Ok(BindOutcome::Ok)
        );
        first.start_again();
        // Fail-back once the fail-over connection is older than 300ms.
        let started = Instant::now();
        while on_second().await {
            assert!(started.elapsed() < Duration::from_secs(20), "no fail-back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(second);
        assert!(find_uid(&dir, "alice").await.is_ok());
        assert_eq!(
            dir.check_password(ALICE, b"alicepw").await,
            Ok(BindOutcome::Ok)
        );
    });
}

#[test]
fn tls_verifies_certificates_by_default() {
    let slapd = Slapd::start_tls();
    runtime().block_on(async {
        let tls = |uri: String, starttls: bool, ca: bool, verify: bool| LdapConfig {
            starttls,
            tls_verify: verify,
            ca_file: ca.then(|| slapd.ca_file()),
            ..config(vec![uri])
        };
        // StartTLS and LDAPS against the test CA.
        for cfg in [
            tls(slapd.uri(), true, true, true),
            tls(slapd.ldaps_uri(), false, true, true),
        ] {
            let dir = Directory::new(&cfg).unwrap();
            assert_eq!(
                find_uid(&dir, "alice").await.unwrap(),
                vec![ALICE.to_string()]
            );
            assert_eq!(
                dir.check_password(ALICE, b"alicepw").await,
                Ok(BindOutcome::Ok)
            );
        }
        // The system roots do not know the test CA: no connection.
        for cfg in [
            tls(slapd.uri(), true, false, true),
            tls(slapd.ldaps_uri(), false, false, true),
        ] {
            let dir = Directory::new(&cfg).unwrap();
            assert!(matches!(
                find_uid(&dir, "alice").await,
                Err(LdapError::Unavailable(_))
            ));
            assert!(matches!(
                dir.check_password(ALICE, b"alicepw").await,
                Err(LdapError::Unavailable(_))
            ));
        }
        // Verification off (explicitly) connects anyway.
        let dir = Directory::new(&tls(slapd.ldaps_uri(), false, false, false)).unwrap();
        assert!(find_uid(&dir, "alice").await.is_ok());
        // A CA file that holds no certificate is refused up front.
        let empty = tempfile::NamedTempFile::new().unwrap();
        let cfg = LdapConfig {
            ca_file: Some(empty.path().to_path_buf()),
            ..config(vec![slapd.ldaps_uri()])
        };
        assert!(Directory::new(&cfg).is_err());
    });
}
