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

/// An address in lower case with its domain found once, as address lists
/// compare it: a message's sender and recipients meet many lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub lower: String,
    /// Where the domain starts (past the last `@`); the end when none.
    domain_at: usize,
}

impl Address {
    pub fn new(address: &str) -> Address {
        let lower = address.to_lowercase();
        let domain_at = lower.rfind('@').map_or(lower.len(), |at| at + 1);
        Address { lower, domain_at }
    }

    /// The domain, empty when the address has no `@`.
    pub fn domain(&self) -> &str {
        &self.lower[self.domain_at..]
    }
}

/// A compiled address list.
#[derive(Clone, Debug, Default)]
pub struct AddressSet {
    /// Sorted (binary search: no hashing of every address against every
    /// list, and list files of thousands of entries stay cheap).
    exact: Vec<String>,
    domains: Vec<String>,
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
        for list in [&mut set.exact, &mut set.domains] {
            list.sort_unstable();
            list.dedup();
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
            AddressPattern::Exact(a) => self.exact.push(a.clone()),
            AddressPattern::Domain(d) => self.domains.push(d.clone()),
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

    /// Whether `address` is in the list.
    pub fn matches(&self, address: &Address) -> bool {
        if listed(&self.exact, &address.lower) {
            return true;
        }
        let domain = address.domain();
        if !domain.is_empty() && listed(&self.domains, domain) {
            return true;
        }
        self.regexes
            .as_ref()
            .is_some_and(|r| r.is_match(&address.lower))
    }

    /// Whether `lower`, a domain in lower case, is listed as a domain.
    pub fn has_domain(&self, lower: &str) -> bool {
        listed(&self.domains, lower)
    }
}

fn listed(sorted: &[String], item: &str) -> bool {
    sorted.binary_search_by(|e| e.as_str().cmp(item)).is_ok()
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
        let m = |a: &str| s.matches(&Address::new(a));
        assert!(m("Alice@example.test"));
        assert!(!m("bob@example.test"));
        assert!(m("anyone@corp.test"));
        assert!(m("x@partner.test"));
        assert!(!m("x@sub.partner.test"));
        assert!(m("list-dev@elsewhere.test"));
        assert!(!m(""));
        assert!(!m("partner.test"));
        assert!(s.has_domain("corp.test") && !s.has_domain("example.test"));
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
        let m = |a: &str| s.matches(&Address::new(a));
        assert!(m("ceo@example.test") && m("x@board.test"));
        assert!(!m("cfo@example.test"));
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
