//! The values rules match against: addresses and domains, networks and
//! regexes, as written in the configuration and as compiled for matching.
//!
//! Every pattern is checked when the configuration is read; list files
//! (`file:PATH`, one entry per line, `#` comments) are read when the rules
//! are compiled, at start, on `--check-config` and on SIGHUP.

use crate::config::CompileError;
use ipnet::IpNet;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
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

/// Why an address-list or network-list entry does not parse.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    #[error("a list file cannot name another list file")]
    NestedFile,
    #[error("list files hold addresses and domains, not regexes")]
    RegexInFile,
    #[error("invalid regex: {0}")]
    Regex(#[from] regex::Error),
    #[error("{0:?} is not an address or a domain")]
    NotAnAddress(String),
    #[error("{0:?} is not an IP address or a CIDR block")]
    NotANetwork(String),
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
    fn parse(text: &str, allow_file: bool) -> Result<AddressPattern, PatternError> {
        let t = text.trim();
        if let Some(path) = t.strip_prefix("file:") {
            if !allow_file {
                return Err(PatternError::NestedFile);
            }
            return Ok(AddressPattern::File(PathBuf::from(path)));
        }
        if t.len() >= 2 && t.starts_with('/') && t.ends_with('/') {
            if !allow_file {
                return Err(PatternError::RegexInFile);
            }
            return regex::RegexBuilder::new(&t[1..t.len() - 1])
                .case_insensitive(true)
                .build()
                .map(AddressPattern::Regex)
                .map_err(PatternError::from);
        }
        if t.is_empty() || t.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(PatternError::NotAnAddress(t.to_string()));
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
pub struct Address<'a> {
    pub lower: Cow<'a, str>,
    /// Where the domain starts (past the last `@`); the end when none.
    domain_at: usize,
}

impl<'a> Address<'a> {
    pub fn new(address: &'a str) -> Address<'a> {
        let lower = lower_case(address);
        let domain_at = lower.rfind('@').map_or(lower.len(), |at| at + 1);
        Address { lower, domain_at }
    }

    /// The domain, empty when the address has no `@`.
    pub fn domain(&self) -> &str {
        &self.lower[self.domain_at..]
    }
}

/// `s` in lower case, copied only when it is not already (addresses are
/// mostly written in lower-case ASCII).
pub fn lower_case(s: &str) -> Cow<'_, str> {
    if !s.is_ascii() {
        Cow::Owned(s.to_lowercase())
    } else if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// The address lists of one side (envelope senders, or recipients) of every
/// rule, merged: an address is looked up once per message, whatever the
/// number of lists, and the answer is the lists it is in. Each list is known
/// by its number, in the order [`AddressListsBuilder::add`] gave them.
#[derive(Clone, Debug, Default)]
pub struct AddressLists {
    /// `(entry, list)`, sorted: the lists naming an entry are one range
    /// (binary search: list files of thousands of entries stay cheap).
    exact: Vec<(String, usize)>,
    domains: Vec<(String, usize)>,
    /// Every regex of every list, in one set: one scan of the address.
    regexes: Option<regex::RegexSet>,
    /// The list of each regex in `regexes`.
    regex_lists: Vec<usize>,
}

/// Collects address lists while rules compile.
#[derive(Default)]
pub struct AddressListsBuilder {
    lists: AddressLists,
    regex_sources: Vec<String>,
    count: usize,
}

impl AddressListsBuilder {
    /// Adds one list, reading list files; `key` names the setting in
    /// errors. Returns the list's number.
    pub fn add(&mut self, patterns: &[AddressPattern], key: &str) -> Result<usize, CompileError> {
        let list = self.count;
        self.count += 1;
        for p in patterns {
            self.add_pattern(p, list, key)?;
        }
        Ok(list)
    }

    fn add_pattern(
        &mut self,
        p: &AddressPattern,
        list: usize,
        key: &str,
    ) -> Result<(), CompileError> {
        match p {
            AddressPattern::Exact(a) => self.lists.exact.push((a.clone(), list)),
            AddressPattern::Domain(d) => self.lists.domains.push((d.clone(), list)),
            AddressPattern::Regex(r) => {
                self.regex_sources.push(r.as_str().to_string());
                self.lists.regex_lists.push(list);
            }
            AddressPattern::File(path) => {
                for entry in list_file(path, key)? {
                    let p = AddressPattern::parse(&entry, false)
                        .map_err(|e| CompileError::new(key, format!("{}: {e}", path.display())))?;
                    self.add_pattern(&p, list, key)?;
                }
            }
        }
        Ok(())
    }

    /// The lists, ready to match; `key` names the settings in errors.
    pub fn build(mut self, key: &str) -> Result<AddressLists, CompileError> {
        let mut lists = self.lists;
        for entries in [&mut lists.exact, &mut lists.domains] {
            entries.sort_unstable();
            entries.dedup();
        }
        if !self.regex_sources.is_empty() {
            lists.regexes = Some(
                regex::RegexSetBuilder::new(std::mem::take(&mut self.regex_sources))
                    .case_insensitive(true)
                    .build()
                    .map_err(|e| CompileError::new(key, format!("invalid regex: {e}")))?,
            );
        }
        Ok(lists)
    }
}

impl AddressLists {
    /// Adds the numbers of the lists `address` is in to `hits` (in no
    /// particular order, possibly twice).
    pub fn lists_of(&self, address: &Address, hits: &mut Vec<usize>) {
        hits.extend(named(&self.exact, &address.lower));
        let domain = address.domain();
        if !domain.is_empty() {
            hits.extend(named(&self.domains, domain));
        }
        if let Some(set) = &self.regexes {
            // Most addresses match no regex: `is_match` says so without
            // tracking every pattern.
            if set.is_match(&address.lower) {
                hits.extend(
                    set.matches(&address.lower)
                        .iter()
                        .map(|i| self.regex_lists[i]),
                );
            }
        }
    }

    /// Whether `lower`, a domain in lower case, is listed as a domain.
    pub fn has_domain(&self, lower: &str) -> bool {
        named(&self.domains, lower).next().is_some()
    }
}

/// The lists naming `item` in `sorted`.
fn named<'a>(sorted: &'a [(String, usize)], item: &str) -> impl Iterator<Item = usize> + 'a {
    let start = sorted.partition_point(|(e, _)| e.as_str() < item);
    let len = sorted[start..].partition_point(|(e, _)| e.as_str() == item);
    sorted[start..start + len].iter().map(|&(_, list)| list)
}

/// One entry of a network list: an address, a CIDR block or `file:PATH`.
#[derive(Clone, Debug)]
pub enum IpPattern {
    Net(IpNet),
    File(PathBuf),
}

fn parse_net(t: &str) -> Result<IpNet, PatternError> {
    let t = t.trim();
    t.parse::<IpNet>()
        .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| PatternError::NotANetwork(t.to_string()))
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
    pub fn compile(patterns: &[IpPattern], key: &str) -> Result<IpSet, CompileError> {
        let mut nets = Vec::new();
        for p in patterns {
            match p {
                IpPattern::Net(n) => nets.push(*n),
                IpPattern::File(path) => {
                    for entry in list_file(path, key)? {
                        nets.push(parse_net(&entry).map_err(|e| {
                            CompileError::new(key, format!("{}: {e}", path.display()))
                        })?);
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
fn list_file(path: &PathBuf, key: &str) -> Result<Vec<String>, CompileError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CompileError::new(
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

    fn patterns(entries: &[&str]) -> Vec<AddressPattern> {
        entries
            .iter()
            .map(|e| AddressPattern::parse(e, true).unwrap())
            .collect()
    }

    /// Lists built from `lists`, and a function giving the (sorted, unique)
    /// numbers of the lists an address is in.
    fn lists(lists: &[&[&str]]) -> impl Fn(&str) -> Vec<usize> + use<> {
        let mut b = AddressListsBuilder::default();
        for (i, l) in lists.iter().enumerate() {
            assert_eq!(b.add(&patterns(l), "k").unwrap(), i);
        }
        let built = b.build("k").unwrap();
        move |a| {
            let mut hits = Vec::new();
            built.lists_of(&Address::new(a), &mut hits);
            hits.sort_unstable();
            hits.dedup();
            hits
        }
    }

    #[test]
    fn addresses_domains_and_regexes() {
        let of = lists(&[
            &[
                "Alice@Example.test",
                "@corp.test",
                "partner.test",
                "/^list-.*@/",
            ],
            &["corp.test", "/^LIST-dev@/", "/^bulk-/"],
            &[],
        ]);
        let one = |a: &str| of(a) == [0];
        assert!(one("Alice@example.test"));
        assert!(of("bob@example.test").is_empty());
        assert_eq!(of("anyone@corp.test"), [0, 1]);
        assert!(one("x@partner.test"));
        assert!(of("x@sub.partner.test").is_empty());
        assert!(one("list-team@elsewhere.test"));
        assert_eq!(of("List-Dev@elsewhere.test"), [0, 1]);
        assert_eq!(of("bulk-1@elsewhere.test"), [1]);
        assert!(of("").is_empty());
        assert!(of("partner.test").is_empty());
        let mut b = AddressListsBuilder::default();
        b.add(&patterns(&["@corp.test", "a@example.test"]), "k")
            .unwrap();
        let local = b.build("k").unwrap();
        assert!(local.has_domain("corp.test") && !local.has_domain("example.test"));
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
        let file = format!("file:{}", list.display());
        let of = lists(&[&["/^x/"], &[&file]]);
        assert!(of("ceo@example.test") == [1] && of("x@board.test") == [0, 1]);
        assert!(of("cfo@example.test").is_empty());
        std::fs::write(&list, "/regex/\n").unwrap();
        let p = AddressPattern::parse(&file, true).unwrap();
        let e = AddressListsBuilder::default()
            .add(&[p], "rule[0].when.sender")
            .unwrap_err();
        assert_eq!(e.key, "rule[0].when.sender");
        assert!(e.message.contains("not regexes"), "{}", e.message);
        let missing = AddressPattern::File(dir.path().join("nope.txt"));
        let e = AddressListsBuilder::default()
            .add(&[missing], "k")
            .unwrap_err();
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
