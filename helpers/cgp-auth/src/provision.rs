//! NEW: create a CGP account for a directory user through the CGP CLI.

use crate::config::ProvisionConfig;
use cgp_lookup::cgp_cli::{CliClient, CliError};
use cgp_lookup::directory::{Account, Person};
use cgp_wire::Value;

/// The account's settings dictionary from the mapped attributes; keys in
/// the configuration's (sorted) order, attributes the person lacks left out.
pub fn settings(cfg: &ProvisionConfig, person: &Person) -> Value {
    Value::Dict(
        cfg.settings
            .iter()
            .filter_map(|(setting, attr)| {
                person
                    .first(attr)
                    .map(|v| (setting.as_bytes().to_vec(), Value::str(v)))
            })
            .collect(),
    )
}

/// Aliases: the local parts of the alias attribute's addresses in the
/// account's own domain, other than the account name itself.
pub fn aliases(cfg: &ProvisionConfig, account: &Account, person: &Person) -> Vec<String> {
    let Some(attr) = &cfg.aliases_attribute else {
        return Vec::new();
    };
    let mut out: Vec<String> = person
        .values(attr)
        .iter()
        .filter_map(|addr| {
            let (local, domain) = addr.rsplit_once('@')?;
            let local = local.to_lowercase();
            (domain.eq_ignore_ascii_case(account.domain())
                && local != account.user()
                && !local.is_empty()
                && !local.contains(|c: char| c.is_whitespace() || c.is_control()))
            .then_some(local)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn encode(v: &Value) -> String {
    String::from_utf8_lossy(&v.encode()).into_owned()
}

/// What came of the CLI part of NEW.
#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    New,
    Existed,
}

/// Creates the account (an existing one counts as success), then sets its
/// aliases. Alias failures are logged, not fatal: the account exists.
pub async fn create(
    cli: &CliClient,
    account: &Account,
    settings: &Value,
    aliases: &[String],
) -> Result<Created, CliError> {
    let name = encode(&Value::str(account.address()));
    let created = match cli
        .command(&format!("CREATEACCOUNT {name} {}", encode(settings)))
        .await
    {
        Ok(_) => Created::New,
        Err(CliError::Refused { text, .. })
            if text.to_ascii_lowercase().contains("already exist") =>
        {
            Created::Existed
        }
        Err(e) => return Err(e),
    };
    if !aliases.is_empty() {
        let list = Value::Array(aliases.iter().map(Value::str).collect());
        if let Err(e) = cli
            .command(&format!("SETACCOUNTALIASES {name} {}", encode(&list)))
            .await
        {
            tracing::warn!(account = %account.address(), error = %e, "setting aliases failed");
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn maps_settings_and_aliases() {
        let mut entry = Person {
            id: "uid=alice".into(),
            ..Person::default()
        };
        entry.push_values("cn", ["Alice Liddell".to_string()]);
        entry.push_values(
            "mail",
            [
                "alice@example.test".to_string(),
                "Alice.Liddell@EXAMPLE.test".to_string(),
                "alice@elsewhere.test".to_string(),
            ],
        );
        let cfg = ProvisionConfig {
            settings: BTreeMap::from([
                ("RealName".to_string(), "cn".to_string()),
                ("ou".to_string(), "departmentNumber".to_string()),
            ]),
            ..ProvisionConfig::default()
        };
        let account = Account::parse(b"alice@example.test").unwrap();
        assert_eq!(
            encode(&settings(&cfg, &entry)),
            r#"{RealName="Alice Liddell";}"#
        );
        assert_eq!(
            aliases(&cfg, &account, &entry),
            vec!["alice.liddell".to_string()]
        );
    }
}
