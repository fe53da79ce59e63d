//! `cgp_lookup::cgp_cli::CliClient` against the scripted CLI server: login,
//! data replies, error replies, a session the server closed, a hung server.

use cgp_lookup::cgp_cli::{CliClient, CliConfig, CliError};
use cgp_tests::fake_cli::FakeCli;
use cgp_wire::Value;
use std::time::{Duration, Instant};

fn client(cli: &FakeCli, password: &str) -> CliClient {
    CliClient::new(&CliConfig {
        address: cli.address(),
        login: "postmaster".into(),
        password: Some(password.into()),
        connect_timeout: Duration::from_secs(1),
        op_timeout: Duration::from_secs(1),
        ..CliConfig::default()
    })
    .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn commands_data_and_errors() {
    let cli = FakeCli::start("postmaster", "clipw");
    runtime().block_on(async {
        let c = client(&cli, "clipw");
        let settings = r#"{RealName="Zoë \"Q\" Smith";}"#;
        assert_eq!(
            c.command(&format!("CREATEACCOUNT zoe@x.test {settings}"))
                .await,
            Ok(None)
        );
        let got = c
            .command("GETACCOUNTSETTINGS zoe@x.test")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.get("RealName"), Some(&Value::str("Zoë \"Q\" Smith")));
        match c.command("GETACCOUNTSETTINGS ghost@x.test").await {
            Err(CliError::Refused { code: 513, text }) => {
                assert!(text.contains("unknown"), "{text}")
            }
            other => panic!("{other:?}"),
        }
        match c.command("CREATEACCOUNT zoe@x.test {}").await {
            Err(CliError::Refused { text, .. }) => assert!(text.contains("already exists")),
            other => panic!("{other:?}"),
        }
        // A line break can never reach the server as a second command.
        assert!(matches!(
            c.command("GETACCOUNTSETTINGS zoe@x.test\r\nDELETEACCOUNT zoe@x.test")
                .await,
            Err(CliError::Refused { code: 0, .. })
        ));
        assert_eq!(cli.logins(), 1);
        assert!(cli.commands().iter().all(|l| !l.starts_with("DELETE")));
    });
}

#[test]
fn a_closed_session_is_reopened_and_a_bad_login_is_unavailable() {
    let cli = FakeCli::start("postmaster", "clipw");
    runtime().block_on(async {
        let c = client(&cli, "clipw");
        assert_eq!(c.command("QUIT").await, Ok(None));
        // The server closed that session; the next command logs in again.
        assert_eq!(c.command("CREATEACCOUNT a@x.test {}").await, Ok(None));
        assert_eq!(cli.logins(), 2);
        let bad = client(&cli, "wrong");
        match bad.command("CREATEACCOUNT b@x.test {}").await {
            Err(CliError::Unavailable(text)) => {
                assert!(text.contains("login"), "{text}");
                assert!(!text.contains("wrong"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        assert!(cli.account("b@x.test").is_none());
    });
}

#[test]
fn a_hung_or_absent_server_is_unavailable_in_time() {
    let cli = FakeCli::start("postmaster", "clipw");
    runtime().block_on(async {
        let c = client(&cli, "clipw");
        assert_eq!(c.command("CREATEACCOUNT a@x.test {}").await, Ok(None));
        cli.set_silent(true);
        let t = Instant::now();
        assert!(matches!(
            c.command("CREATEACCOUNT b@x.test {}").await,
            Err(CliError::Unavailable(_))
        ));
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        cli.set_silent(false);
        assert_eq!(c.command("CREATEACCOUNT c@x.test {}").await, Ok(None));
        let port = cgp_tests::slapd::free_port();
        let absent = CliClient::new(&CliConfig {
            address: format!("127.0.0.1:{port}"),
            password: Some("x".into()),
            ..CliConfig::default()
        })
        .unwrap();
        assert!(matches!(
            absent.command("LISTDOMAINS").await,
            Err(CliError::Unavailable(_))
        ));
    });
}
