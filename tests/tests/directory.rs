//! `cgp_lookup::directory` on its LDAP back end against a real slapd: people
//! found by login name and by mail address, attributes and groups (by
//! search and from memberOf), passwords by bind and by compare, templates
//! filled once at every site, several matching entries refused, and a
//! server that is down reported as unavailable.

use cgp_lookup::directory::{
    Account, Directory, DirectoryConfig, DirectoryError, GroupRef, Person, Verdict,
};
use cgp_tests::slapd::{Slapd, connection_toml, runtime};
use std::sync::Arc;

/// A directory on `slapd` with `extra` TOML after the connection table.
fn open(slapd: &Slapd, extra: &str) -> Directory {
    let text = format!(
        r#"
type = "ldap"
attributes = ["cn", "mail", "departmentNumber"]
[ldap]
{}
{extra}
"#,
        connection_toml(&[slapd.uri()])
    );
    let config: DirectoryConfig = toml::from_str(&text).unwrap();
    config.validate("directory").unwrap();
    config.open(&["telephoneNumber"]).unwrap()
}

/// A slapd, a runtime, and a directory on the slapd with `extra`.
fn start(extra: &str) -> (Slapd, tokio::runtime::Runtime, Directory) {
    let slapd = Slapd::start_default();
    let dir = open(&slapd, extra);
    (slapd, runtime(), dir)
}

fn account(s: &str) -> Account {
    Account::parse(s.as_bytes()).unwrap()
}

/// The person with this login name, `None` when there is none.
async fn person(dir: &Directory, name: &str) -> Option<Arc<Person>> {
    dir.find(&account(name)).await.unwrap()
}

const PEOPLE: &str = r#"
[search]
base = "ou=people,dc=example,dc=org"
"#;

#[test]
fn people_attributes_and_groups() {
    let slapd = Slapd::start_default();
    let rt = runtime();
    for groups in [
        "[groups]\nlookup = \"search\"\nbase = \"ou=groups,dc=example,dc=org\"",
        "[groups]\nlookup = \"member_of\"",
    ] {
        let dir = open(&slapd, &format!("{PEOPLE}{groups}"));
        rt.block_on(async {
            let alice = person(&dir, "Alice@Example.TEST").await.unwrap();
            assert_eq!(alice.id, "uid=alice,ou=people,dc=example,dc=org");
            assert_eq!(alice.first("CN"), Some("Alice Liddell"));
            assert_eq!(alice.values("mail").len(), 2);
            assert_eq!(alice.first("telephonenumber"), Some("+1 555 0101"));
            // Group DNs as an administrator writes them match.
            assert!(alice.in_group(&GroupRef::new("CN=Outbound, OU=Groups, DC=example, DC=org")));
            assert!(alice.in_group(&GroupRef::new("staff")));
            let carol = person(&dir, "carol@example.test").await.unwrap();
            assert!(carol.groups.is_empty(), "{groups}: {carol:?}");
            // By mail address (default filter: (mail={address})).
            let by_mail = dir
                .find_by_mail(&account("alice.liddell@example.test"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(by_mail.id, alice.id);
            assert!(person(&dir, "ghost@example.test").await.is_none());
        });
    }
}

#[test]
fn passwords_by_bind_and_by_compare() {
    let (_slapd, rt, dir) = start(
        r#"
[search]
base = "ou=people,dc=example,dc=org"
[domains."Compare.TEST"]
base = "ou=people,dc=example,dc=org"
mode = "compare"
"#,
    );
    // lucy is locked by the password policy, which compare mode does not
    // see; compare.test is matched without regard to the key's case.
    for (who, password, verdict) in [
        ("alice@example.test", "alicepw", Verdict::Ok),
        ("alice@example.test", "bobpw", Verdict::Invalid),
        ("lucy@example.test", "lucypw", Verdict::Locked),
        ("bob@compare.test", "bobpw", Verdict::Ok),
        ("lucy@compare.test", "lucypw", Verdict::Ok),
        ("ghost@compare.test", "bobpw", Verdict::Invalid),
    ] {
        let got = rt.block_on(dir.verify(&account(who), password.as_bytes()));
        assert_eq!(got, Ok(verdict), "{who}");
    }
}

/// A local part that looks like a placeholder stays itself at every
/// template site: before, `{domain}@alice` was filled as `alice`.
#[test]
fn templates_are_filled_once_at_every_site() {
    let slapd = Slapd::start_default();
    let rt = runtime();
    let tricky = account("{domain}@alice");
    let people = open(
        &slapd,
        r#"
[search]
base = "ou=people,dc=example,dc=org"
user_filter = "(uid={user})"
mail_filter = "(mail={user}@example.test)"
dn_template = "uid={user},ou=people,dc=example,dc=org"
"#,
    );
    // Names whose directory part is fixed, so that only the rule under
    // test sees the tricky local part.
    let fixed = open(
        &slapd,
        r#"
[search]
base = "ou=people,dc=example,dc=org"
[domains.alice]
base = "ou=people,dc=example,dc=org"
dn_template = "uid=alice,ou=people,dc=example,dc=org"
access_filter = "(uid={user})"
[domains.staff]
base = "ou=people,dc=example,dc=org"
user_filter = "(uid=carol)"
[groups]
lookup = "search"
base = "ou=groups,dc=example,dc=org"
filter = "(|(member={dn})(cn={user}))"
"#,
    );
    rt.block_on(async {
        // user_filter, mail_filter: nobody has these names.
        assert!(person(&people, "{domain}@alice").await.is_none());
        assert!(people.find_by_mail(&tricky).await.unwrap().is_none());
        // dn_template: no bind as uid=alice.
        assert_eq!(
            people.verify(&tricky, b"alicepw").await,
            Ok(Verdict::Invalid)
        );
        assert_eq!(
            people.verify(&account("alice@alice"), b"alicepw").await,
            Ok(Verdict::Ok)
        );
        // access_filter: the bind as alice succeeds; the filter asks for
        // uid={domain}, which alice is not.
        assert_eq!(
            fixed.verify(&tricky, b"alicepw").await,
            Ok(Verdict::NotPermitted)
        );
        assert_eq!(
            fixed.verify(&account("alice@alice"), b"alicepw").await,
            Ok(Verdict::Ok)
        );
        // The group filter: carol is in no group, and no group is named
        // `{domain}` (staff, the domain, is one).
        let carol = person(&fixed, "{domain}@staff").await.unwrap();
        assert!(carol.groups.is_empty(), "{carol:?}");
        let carol = person(&fixed, "staff@staff").await.unwrap();
        assert!(carol.in_group(&GroupRef::new("staff")));
    });
}

#[test]
fn several_matching_entries_are_refused() {
    let (_slapd, rt, dir) = start(
        r#"
[search]
base = "ou=people,dc=example,dc=org"
user_filter = "(|(uid={user})(uid=bob))"
"#,
    );
    rt.block_on(async {
        let alice = account("alice@example.test");
        assert_eq!(dir.find(&alice).await, Ok(None));
        assert_eq!(dir.verify(&alice, b"alicepw").await, Ok(Verdict::Invalid));
        // bob alone matches for bob.
        assert!(person(&dir, "bob@example.test").await.is_some());
    });
}

#[test]
fn a_server_that_is_down_is_unavailable() {
    let (mut slapd, rt, dir) = start(PEOPLE);
    slapd.stop();
    rt.block_on(async {
        assert!(matches!(
            dir.find(&account("alice@example.test")).await,
            Err(DirectoryError::Unavailable(_))
        ));
        assert!(matches!(
            dir.verify(&account("alice@example.test"), b"alicepw").await,
            Err(DirectoryError::Unavailable(_))
        ));
    });
}
