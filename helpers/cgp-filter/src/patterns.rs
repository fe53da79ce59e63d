//! The values rules match against: addresses and domains, networks and
//! regexes, as written in the configuration and as compiled for matching.
//!
//! Every pattern is checked when the configuration is read; list files
//! (`file:PATH`, one entry per line, `#` comments) are read when the rules
//! are compiled, at start, on `--check-config` and on SIGHUP.

use cgp_protocol::runtime::config::KeyError;
use ipnet::IpNet;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;

/// A regex compiled when the configuration is read.
#[derive(Clone, Debug)]
pub struct Regex(pub regex::Regex);

impl<'de> Deserialize<'de> for Regex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        regex::Regex::new(&text)
            .map(Regex)
            .map_err(|e| D::Error::custom(format!("invalid regex: {e}")))
    }
}

/// One entry of an address list: `user@domain` (exact), `domain` or
/// `@domain` (every address of the domain), `/regex/` (on the whole address,
/// case-insensitive) or `file:PATH` (a list of such entries, regexes aside).
#[derive(Clone, Debug)]
pub enum AddressPattern {
    Exact(String),
    Domain(String),
    Regex(regex::Regex),
    File(PathBuf),
}

impl AddressPattern {
    fn parse(text: &str, allow_file: bool) -> Result<AddressPattern, String> {
        let t = text.trim();
        if let Some(path) = t.strip_prefix("file:") {
            if !allow_file {
                return Err("a list file cannot name another list file".into());
            }
            return Ok(AddressPattern::File(PathBuf::from(path)));
        }
        if t.len() >= 2 && t.starts_with('/') && t.ends_with('/') {
            if !allow_file {
                return Err("list files hold addresses and domains, not regexes".into());
            }
            return regex::RegexBuilder::new(&t[1..t.len() - 1])
                .case_insensitive(true)
                .build()
                .map(AddressPattern::Regex)
                .map_err(|e| format!("invalid regex: {e}"));
        }
        if t.is_empty() || t.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(format!("{t:?} is not an address or a domain"));
        }
        let t = t.to_lowercase();
        match t.find('@') {
            Some(0) => Ok(AddressPattern::Domain(t[1..].to_string())),
            Some(_) => Ok(AddressPattern::Exact(t)),
            None => Ok(AddressPattern::Domain(t)),
        }
    }
}

impl<'de> Deserialize<'de> for AddressPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        AddressPattern::parse(&text, true).map_err(D::Error::custom)
    }
}

/// A compiled address list.
#[derive(Clone, Debug, Default)]
pub struct AddressSet {
    exact: HashSet<String>,
    domains: HashSet<String>,
    regexes: Option<regex::RegexSet>,
}

impl AddressSet {
    /// Compiles `patterns`, reading list files; `key` names the setting in
    /// errors.
    pub fn compile(patterns: &[AddressPattern], key: &str) -> Result<AddressSet, KeyError> {
        let mut set = AddressSet::default();
        let mut regexes = Vec::new();
        for p in patterns {
            set.add(p, &mut regexes, key)?;
        }
        if !regexes.is_empty() {
            let sources = regexes.iter().map(|r: &regex::Regex| r.as_str());
            set.regexes = Some(
                regex::RegexSetBuilder::new(sources)
                    .case_insensitive(true)
                    .build()
                    .map_err(|e| KeyError::new(key, format!("invalid regex: {e}")))?,
            );
        }
        Ok(set)
    }

    fn add(
        &mut self,
        p: &AddressPattern,
        regexes: &mut Vec<regex::Regex>,
        key: &str,
    ) -> Result<(), KeyError> {
        match p {
            AddressPattern::Exact(a) => {
                self.exact.insert(a.clone());
            }
            AddressPattern::Domain(d) => {
                self.domains.insert(d.clone());
            }
            AddressPattern::Regex(r) => regexes.push(r.clone()),
            AddressPattern::File(path) => {
                for entry in list_file(path, key)? {
                    let p = AddressPattern::parse(&entry, false)
                        .map_err(|e| KeyError::new(key, format!("{}: {e}", path.display())))?;
                    self.add(&p, regexes, key)?;
                }
            }
        }
        Ok(())
    }

    /// Whether `address` (any case) is in the list.
    /// Whether `lower`, an address in lower case, is in the list.
    pub fn matches(&self, lower: &str) -> bool {
        if self.exact.contains(lower) {
            return true;
        }
        let domain = lower.rsplit_once('@').map_or("", |(_, d)| d);
        if !domain.is_empty() && self.domains.contains(domain) {
            return true;
        }
        self.regexes.as_ref().is_some_and(|r| r.is_match(lower))
    }

    /// Whether `domain` is listed as a domain.
    /// Whether `lower`, a domain in lower case, is listed as a domain.
    pub fn has_domain(&self, lower: &str) -> bool {
        self.domains.contains(lower)
    }
}

/// One entry of a network list: an address, a CIDR block or `file:PATH`.
#[derive(Clone, Debug)]
pub enum IpPattern {
    Net(IpNet),
    File(PathBuf),
}

fn parse_net(t: &str) -> Result<IpNet, String> {
    let t = t.trim();
    t.parse::<IpNet>()
        .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{t:?} is not an IP address or a CIDR block"))
}

impl<'de> Deserialize<'de> for IpPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.strip_prefix("file:") {
            Some(path) => Ok(IpPattern::File(PathBuf::from(path))),
            None => parse_net(&text)
                .map(IpPattern::Net)
                .map_err(D::Error::custom),
        }
    }
}

/// A compiled network list.
#[derive(Clone, Debug, Default)]
pub struct IpSet(Vec<IpNet>);

impl IpSet {
    pub fn compile(patterns: &[IpPattern], key: &str) -> Result<IpSet, KeyError> {
        let mut nets = Vec::new();
        for p in patterns {
            match p {
                IpPattern::Net(n) => nets.push(*n),
                IpPattern::File(path) => {
                    for entry in list_file(path, key)? {
                        nets.push(
                            parse_net(&entry).map_err(|e| {
                                KeyError::new(key, format!("{}: {e}", path.display()))
                            })?,
                        );
                    }
                }
            }
        }
        // Merging overlapping blocks keeps the per-message scan short.
        Ok(IpSet(IpNet::aggregate(&nets)))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client may be written as an IPv4-mapped IPv6 address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// The entries of a list file: trimmed lines, blank lines and `#` comments
/// left out.
fn list_file(path: &PathBuf, key: &str) -> Result<Vec<String>, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        KeyError::new(
            key,
            format!("cannot read list file {}: {e}", path.display()),
        )
    })?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// An address written in an action (`mirror_to`, `add_route`): one
/// `local@domain` without spaces, quotes or angle brackets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailAddress(pub String);

impl<'de> Deserialize<'de> for MailAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bad = |c: char| c.is_whitespace() || c.is_control() || "\"<>()[],;\\".contains(c);
        match text.split_once('@') {
            Some((l, dom)) if !l.is_empty() && !dom.is_empty() && !text.contains(bad) => {
                Ok(MailAddress(text))
            }
            _ => Err(D::Error::custom(format!(
                "{text:?} is not a plain address (local@domain)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(entries: &[&str]) -> AddressSet {
        let patterns: Vec<AddressPattern> = entries
            .iter()
            .map(|e| AddressPattern::parse(e, true).unwrap())
            .collect();
        AddressSet::compile(&patterns, "k").unwrap()
    }

    #[test]
    fn addresses_domains_and_regexes() {
        let s = set(&[
            "Alice@Example.test",
            "@corp.test",
            "partner.test",
            "/^list-.*@/",
        ]);
        assert!(s.matches("alice@example.test"));
        assert!(!s.matches("bob@example.test"));
        assert!(s.matches("anyone@corp.test"));
        assert!(s.matches("x@partner.test"));
        assert!(!s.matches("x@sub.partner.test"));
        assert!(s.matches("list-dev@elsewhere.test"));
        assert!(!s.matches(""));
    }

    #[test]
    fn list_files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("vip.txt");
        std::fs::write(
            &list,
            "# VIPs\nceo@example.test\n\n@board.test  # all of them\n",
        )
        .unwrap();
        let s = set(&[&format!("file:{}", list.display())]);
        assert!(s.matches("ceo@example.test") && s.matches("x@board.test"));
        assert!(!s.matches("cfo@example.test"));
        std::fs::write(&list, "/regex/\n").unwrap();
        let p = AddressPattern::parse(&format!("file:{}", list.display()), true).unwrap();
        let e = AddressSet::compile(&[p], "rule[0].when.sender").unwrap_err();
        assert_eq!(e.key, "rule[0].when.sender");
        assert!(e.message.contains("not regexes"), "{}", e.message);
        let missing = AddressPattern::File(dir.path().join("nope.txt"));
        let e = AddressSet::compile(&[missing], "k").unwrap_err();
        assert!(e.message.contains("cannot read list file"), "{}", e.message);
    }

    #[test]
    fn networks() {
        let nets: Vec<IpPattern> = ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]
            .iter()
            .map(|t| IpPattern::Net(parse_net(t).unwrap()))
            .collect();
        let s = IpSet::compile(&nets, "k").unwrap();
        assert!(s.contains("192.0.2.200".parse().unwrap()));
        assert!(s.contains("::ffff:192.0.2.1".parse().unwrap()));
        assert!(s.contains("198.51.100.7".parse().unwrap()));
        assert!(!s.contains("198.51.100.8".parse().unwrap()));
        assert!(s.contains("2001:db8::1".parse().unwrap()));
        assert!(parse_net("300.1.1.1").is_err());
    }

    #[test]
    fn action_addresses_are_plain() {
        let ok: MailAddress = toml::from_str::<toml::Value>("a = \"archive@example.test\"")
            .unwrap()["a"]
            .clone()
            .try_into()
            .unwrap();
        assert_eq!(ok.0, "archive@example.test");
        for bad in ["\"x y@example.test\"", "\"<a@b>\"", "\"nodomain\""] {
            let v = toml::from_str::<toml::Value>(&format!("a = {bad}")).unwrap()["a"].clone();
            assert!(v.try_into::<MailAddress>().is_err(), "{bad}");
        }
    }
}
