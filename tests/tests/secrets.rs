//! Every helper refuses a configuration that holds a secret, or names a
//! secret file, that group or others may read or write: the start fails and
//! `--check-config` fails, naming the file, the key, the mode and the fix.
//! Each secret-holding key of each helper is tried, from the example
//! configurations.

use cgp_tests::{bin, example, write_config};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// One secret-holding key: the helper, its example, the edits that put the
/// secret in (`@FILE@` stands for a secret file of the test), the key.
struct Case {
    helper: &'static str,
    example: &'static str,
    edits: &'static [(&'static str, &'static str)],
    key: &'static str,
}

const LDAP_FILE: &str = "bind_password_file = \"/etc/cgp-helpers/ldap-bind.secret\"";
const CLI_FILE: &str = "password_file = \"/etc/cgp-helpers/cli.secret\"";
const SQL_FILE: &str = "password_file = \"/etc/cgp-helpers/sql.secret\"";
const REDIS_FILE: &str = "password_file = \"/etc/cgp-helpers/redis.secret\"";
const FILTER_LDAP_FILE: &str = "bind_password_file = \"/etc/cgp-helpers/ldap.secret\"";
const SMS_FILE: &str = "api_key_file = \"/etc/cgp-helpers/cloudpbx.secret\"";

const CASES: &[Case] = &[
    Case {
        helper: "cgp-auth",
        example: "auth-embedded.toml",
        edits: &[],
        key: "directory.static.users[0].secret",
    },
    Case {
        helper: "cgp-auth",
        example: "auth-embedded.toml",
        edits: &[
            ("secret = \"alicesip\"", ""),
            ("{SSHA}X2W8QR6LP+CsG3vDkc6H+BFqXBKaduqD", "{PLAIN}alicepw"),
            (
                "[directory.static]",
                "[directory.static]\nallow_plaintext = true",
            ),
        ],
        key: "directory.static.users[0].password",
    },
    Case {
        helper: "cgp-auth",
        example: "auth-mxproxy.toml",
        edits: &[],
        key: "directory.mxproxy.client_secret",
    },
    Case {
        helper: "cgp-auth",
        example: "auth-ldap.toml",
        edits: &[(LDAP_FILE, "bind_password = \"pw\"")],
        key: "directory.ldap.bind_password",
    },
    Case {
        helper: "cgp-auth",
        example: "auth-ldap.toml",
        edits: &[(LDAP_FILE, "bind_password_file = \"@FILE@\"")],
        key: "directory.ldap.bind_password_file",
    },
    Case {
        helper: "cgp-auth",
        example: "auth-ldap.toml",
        edits: &[(CLI_FILE, "password = \"pw\"")],
        key: "provision.cli.password",
    },
    Case {
        helper: "cgp-auth",
        example: "auth-ldap.toml",
        edits: &[(CLI_FILE, "password_file = \"@FILE@\"")],
        key: "provision.cli.password_file",
    },
    Case {
        helper: "cgp-auth",
        example: "auth-sql.toml",
        edits: &[(SQL_FILE, "password = \"pw\"")],
        key: "directory.sql.password",
    },
    Case {
        helper: "cgp-auth",
        example: "auth-sql.toml",
        edits: &[(SQL_FILE, "password_file = \"@FILE@\"")],
        key: "directory.sql.password_file",
    },
    Case {
        helper: "cgp-auth",
        example: "auth-cluster.toml",
        edits: &[
            (REDIS_FILE, ""),
            ("rediss://redis2.", "rediss://cgp:pw@redis2."),
        ],
        key: "store.redis.urls[1]",
    },
    Case {
        helper: "cgp-auth",
        example: "auth-cluster.toml",
        edits: &[(REDIS_FILE, "password = \"pw\"")],
        key: "store.redis.password",
    },
    Case {
        helper: "cgp-auth",
        example: "auth-cluster.toml",
        edits: &[(REDIS_FILE, "password_file = \"@FILE@\"")],
        key: "store.redis.password_file",
    },
    Case {
        helper: "cgp-filter",
        example: "filter.toml",
        edits: &[(FILTER_LDAP_FILE, "bind_password = \"pw\"")],
        key: "directory.ldap.bind_password",
    },
    Case {
        helper: "cgp-filter",
        example: "filter.toml",
        edits: &[(FILTER_LDAP_FILE, "bind_password_file = \"@FILE@\"")],
        key: "directory.ldap.bind_password_file",
    },
    Case {
        helper: "cgp-filter",
        example: "filter-sms.toml",
        edits: &[(SMS_FILE, "api_key = \"pw\"")],
        key: "sms.cloudpbx.api_key",
    },
    Case {
        helper: "cgp-filter",
        example: "filter-sms.toml",
        edits: &[(SMS_FILE, "api_key_file = \"@FILE@\"")],
        key: "sms.cloudpbx.api_key_file",
    },
    Case {
        helper: "cgp-banner",
        example: "banner.toml",
        edits: &[],
        key: "ami.servers[0].secret",
    },
    Case {
        helper: "cgp-banner",
        example: "banner-cluster.toml",
        edits: &[(REDIS_FILE, "password_file = \"@FILE@\"")],
        key: "store.redis.password_file",
    },
    Case {
        helper: "cgp-banner",
        example: "banner-cloudpbx.toml",
        edits: &[],
        key: "cloudpbx[0].api_key",
    },
];

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Exit status and stderr of the helper on `config`, checked or started.
fn run(helper: &str, config: &Path, check: bool) -> (bool, String) {
    let mut cmd = Command::new(bin(helper));
    if check {
        cmd.arg("--check-config");
    }
    let out = cmd
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn each_secret_key_of_each_helper_is_refused_in_a_file_others_can_read() {
    for case in CASES {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("helper.toml");
        let secret = dir.path().join("helper.secret");
        write_config(&secret, "pw\n").unwrap();
        let mut text = std::fs::read_to_string(example(case.example)).unwrap();
        for (from, to) in case.edits {
            assert!(text.contains(from), "{}: no {from:?}", case.example);
            text = text.replace(from, &to.replace("@FILE@", &secret.to_string_lossy()));
        }
        write_config(&config, &text).unwrap();
        let what = format!("{} {} {}", case.helper, case.example, case.key);
        let (ok, err) = run(case.helper, &config, true);
        assert!(ok, "{what}: closed files pass: {err}");
        // The file that holds the secret: the configuration, or the secret
        // file it names.
        let held = if case.key.ends_with("_file") {
            &secret
        } else {
            &config
        };
        for (mode, exposure) in [
            (0o644, "mode 0644, open to others"),
            (0o640, "mode 0640, readable by its group"),
            (0o620, "mode 0620, writable by its group"),
        ] {
            chmod(held, mode);
            for check in [true, false] {
                let (ok, err) = run(case.helper, &config, check);
                assert!(!ok, "{what} {mode:o} check={check}: accepted");
                let name = config.display();
                assert!(
                    err.contains(&format!("{name}: line "))
                        && err.contains(&format!("key `{}` holds a secret: ", case.key))
                        && err.contains(&format!("{}: {exposure}", held.display()))
                        && err.contains(&format!("run `chmod 600 {}`", held.display())),
                    "{what} {mode:o} check={check}: {err}"
                );
                assert!(
                    !err.contains("\"pw\"") && !err.contains("change-me"),
                    "{err}"
                );
            }
        }
        chmod(held, 0o600);
        let (ok, err) = run(case.helper, &config, true);
        assert!(ok, "{what}: {err}");
    }
}

#[test]
fn a_configuration_without_secrets_may_be_read_by_anyone() {
    let dir = tempfile::tempdir().unwrap();
    for (helper, name, text) in [
        ("cgp-balancer", "balancer.toml", None),
        (
            "cgp-auth",
            "auth-embedded.toml",
            Some(("secret = \"alicesip\"", "")),
        ),
    ] {
        let mut body = std::fs::read_to_string(example(name)).unwrap();
        if let Some((from, to)) = text {
            body = body.replace(from, to);
        }
        let config = dir.path().join(name);
        std::fs::write(&config, body).unwrap();
        chmod(&config, 0o644);
        let (ok, err) = run(helper, &config, true);
        assert!(ok, "{helper}: {err}");
    }
}

#[test]
fn a_reload_of_a_file_opened_up_meanwhile_is_refused_and_the_old_configuration_kept() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("auth.toml");
    let text = std::fs::read_to_string(example("auth-embedded.toml")).unwrap();
    write_config(&config, text).unwrap();
    let mut h = cgp_tests::session::Session::start(&bin("cgp-auth"), &config);
    chmod(&config, 0o644);
    h.signal(libc::SIGHUP);
    let refused = h.info_starting("* configuration reload refused, old configuration kept:");
    assert!(
        refused.contains("key `directory.static.users[0].secret` holds a secret")
            && refused.contains("mode 0644, open to others"),
        "{refused}"
    );
    assert!(!refused.contains("alicesip"), "{refused}");
    // Still serving, on the old configuration.
    assert_eq!(h.ask("READPLAIN alice@example.test"), r#"OK "alicesip""#);
    h.finish();
}
