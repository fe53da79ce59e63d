//! The rule engine: rules compiled once per configuration, evaluated in
//! order against one queue file. The first matching rule that stops decides;
//! the header fields, copies and routes of the matching rules before it
//! accumulate.
//!
//! Conditions are checked cheapest first (envelope, then header, body and
//! directory), and the header, the attachments and the sender's directory
//! entry are each worked out at most once per message, and only when a rule
//! reaches a condition that needs them.
//!
//! Evaluation never waits: a directory answer that is neither cached nor
//! [`Known`] stops it with [`Missing`]. The caller asks the directory,
//! keeping only the small [`Known`] facts (not the message) while it waits,
//! and evaluates again with them.

use crate::config::{Action, CompileError, Conditions, ConfigFile, Rate, RuleConfig};
use crate::directory::{Directory, DirectoryError, Person, Recall};
use crate::message::{HeaderParser, Headers};
use crate::patterns::{Address, AddressLists, AddressListsBuilder, IpSet, lower_case};
use crate::queue::QueueFile;
use crate::sms::Notice;
use crate::template::{HeaderTemplate, Template, Var};
use crate::wire::{Dialect, Modifiers, Verdict};
use cgp_lookup::cloudpbx::sms::GsmNumber;
use cgp_lookup::directory::{GroupLookup, GroupRef, Kind};
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;

/// A configuration's rules, ready to run; shared by every request (the
/// regexes keep their scratch space per thread in their own pools).
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    local: AddressLists,
    /// Every rule's sender lists, and recipient lists: an address is
    /// looked up once per message whatever the number of lists.
    sender_lists: AddressLists,
    recipient_lists: AddressLists,
    /// Every header regex of every rule, one set per field name, so each
    /// field value is scanned once whatever the number of rules.
    header_sets: Vec<HeaderSet>,
    /// The length of a message's header hits: a flag per set (scanned),
    /// then one per pattern of every set.
    header_hits_len: usize,
    /// Parses only the fields the rules look at.
    header_parser: Arc<HeaderParser>,
    /// Some rule looks at attachments: the body prefix must be read.
    pub needs_body: bool,
    /// Directory attributes some rule or template reads.
    pub attributes: BTreeSet<String>,
    /// The distinct rates of the `sender_limit` conditions.
    pub limits: Vec<Rate>,
    /// Attributes holding a person's addresses (`from_is_own`).
    address_attributes: Vec<String>,
    local_by_directory: bool,
}

/// Directory answers one message's rules were missing and got, kept across
/// the waits for them: a few small facts, not the message.
#[derive(Debug, Default)]
pub struct Known {
    /// The sender's entry (`Some(None)`: not in the directory).
    person: Option<Option<Arc<Person>>>,
    /// The recipients before this one are local or in the directory.
    local_upto: usize,
    /// Some recipient is neither local nor in the directory.
    external: bool,
    /// The sender's count under each `RuleSet::limits` rate asked about.
    counts: Vec<(usize, u64)>,
}

/// What the rules need from the directory to go on.
#[derive(Debug, PartialEq, Eq)]
pub enum Missing {
    /// The entry of the sender (the authenticated user, else the envelope
    /// sender), lower case.
    Person(String),
    /// Whether these recipients (lower case, with their place in the
    /// envelope, in envelope order) are in the directory.
    Recipients(Vec<(usize, String)>),
    /// The authenticated user's (lower case) count of messages, this one
    /// included, under the rate `RuleSet::limits[limit]`.
    Count { limit: usize, user: String },
}

/// How many recipients one wait asks the directory about, at most: a wait
/// holds no more addresses than this, and a long list of recipients takes
/// few rounds.
const ASK_AT_ONCE: usize = 64;

impl Known {
    /// The count `Missing::Count` asked for.
    pub fn counted(&mut self, limit: usize, n: u64) {
        self.counts.push((limit, n));
    }

    /// Asks `dir` what `missing` says is missing.
    pub async fn ask<D: Directory>(
        &mut self,
        missing: Missing,
        dir: &D,
    ) -> Result<(), DirectoryError> {
        match missing {
            Missing::Person(who) => self.person = Some(dir.person(&who).await?),
            Missing::Recipients(recipients) => {
                for (at, address) in recipients {
                    if dir.person(&address).await?.is_none() {
                        self.external = true;
                        break;
                    }
                    // The ones in between were local or found already.
                    self.local_upto = at + 1;
                }
            }
            // Counts are the store's to answer (`counted`), never the
            // directory's.
            Missing::Count { .. } => {}
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Rule {
    name: String,
    when: Cond,
    unless: Option<Cond>,
    action: Action,
    stop: bool,
    text: Template,
    headers: Vec<HeaderTemplate>,
    mirror_to: Vec<String>,
    add_route: Vec<String>,
    sms: Option<SmsAction>,
}

/// The `sms` of a rule, compiled.
#[derive(Debug)]
struct SmsAction {
    to: Vec<GsmNumber>,
    /// Lower case.
    recipient_attribute: Option<String>,
    text: Template,
}

/// The largest count of a `sender_limit`: a sender's window holds an entry
/// per message up to it, rewritten whole at each message in the local
/// store.
const MAX_SENDER_LIMIT: u64 = 10_000;

/// Recipients whose numbers one notification looks up, at most.
const SMS_RECIPIENTS: usize = 64;

#[derive(Debug, Default)]
struct Cond {
    source: Option<Vec<String>>,
    self_generated: Option<bool>,
    authenticated: Option<bool>,
    /// Lists in `RuleSet::sender_lists` and `recipient_lists`.
    sender: Option<usize>,
    recipient: Option<usize>,
    external_recipient: Option<bool>,
    client_ip: Option<IpSet>,
    size_over: Option<u64>,
    size_under: Option<u64>,
    /// (header set, pattern in the set)
    header: Vec<(usize, usize)>,
    attachment_name: Option<regex::Regex>,
    attachment_type: Option<regex::Regex>,
    member_of: Option<Vec<GroupRef>>,
    attribute: Vec<(String, regex::Regex)>,
    from_is_own: Option<bool>,
    /// The rate in `RuleSet::limits`.
    sender_limit: Option<usize>,
    /// Whether there are envelope conditions, and header or attachment
    /// ones: most rules have only one kind, and the other check is then
    /// not even called.
    has_envelope: bool,
    has_content: bool,
}

impl Cond {
    fn uses_directory(&self) -> bool {
        self.member_of.is_some() || !self.attribute.is_empty() || self.from_is_own.is_some()
    }
}

#[derive(Debug)]
struct HeaderSet {
    /// The field name, lower case.
    name: String,
    regexes: regex::RegexSet,
    /// Where the set's patterns start in a message's header hits.
    hits_at: usize,
}

/// What conditions gather across rules while they compile.
#[derive(Default)]
struct Shared {
    headers: HeaderSets,
    senders: AddressListsBuilder,
    recipients: AddressListsBuilder,
    limits: Vec<Rate>,
}

/// Collects header regexes into per-name lists while rules compile.
#[derive(Default)]
struct HeaderSets(Vec<(String, Vec<String>)>);

impl HeaderSets {
    fn add(&mut self, name: &str, regex: &str) -> (usize, usize) {
        let name = name.to_ascii_lowercase();
        let set = match self.0.iter().position(|(n, _)| *n == name) {
            Some(i) => i,
            None => {
                self.0.push((name, Vec::new()));
                self.0.len() - 1
            }
        };
        self.0[set].1.push(regex.to_string());
        (set, self.0[set].1.len() - 1)
    }
}

impl RuleSet {
    pub fn compile(cfg: &ConfigFile) -> Result<RuleSet, CompileError> {
        if cfg.failure.after_max_age == crate::config::Policy::Rejected {
            return Err(CompileError::new(
                "failure.after_max_age",
                "must be pass or failure: rejecting again would keep the message queued for ever",
            ));
        }
        if cfg.failure.max_age.is_zero() {
            return Err(CompileError::new("failure.max_age", "must be more than 0s"));
        }
        let mut shared = Shared::default();
        let mut rules = Vec::with_capacity(cfg.rules.len());
        for (i, r) in cfg.rules.iter().enumerate() {
            let rule = compile_rule(cfg, r.get_ref(), &format!("rule[{i}]"), &mut shared);
            rules.push(rule.map_err(|e| e.within(r.span()))?);
        }
        let mut header_hits_len = shared.headers.0.len();
        let mut header_sets = Vec::with_capacity(header_hits_len);
        for (name, sources) in shared.headers.0 {
            let regexes = regex::RegexSet::new(&sources)
                .map_err(|e| CompileError::new("rule", format!("header regexes: {e}")))?;
            header_sets.push(HeaderSet {
                name,
                regexes,
                hits_at: header_hits_len,
            });
            header_hits_len += sources.len();
        }
        let mut attributes = BTreeSet::new();
        let mut needs_groups = false;
        let mut needs_body = false;
        for r in &rules {
            for c in std::iter::once(&r.when).chain(&r.unless) {
                attributes.extend(c.attribute.iter().map(|(a, _)| a.clone()));
                needs_groups |= c.member_of.is_some();
                needs_body |= c.attachment_name.is_some() || c.attachment_type.is_some();
            }
            let sms_text = r.sms.as_ref().map(|s| &s.text);
            for t in r
                .headers
                .iter()
                .map(|h| &h.value)
                .chain([&r.text])
                .chain(sms_text)
            {
                attributes.extend(t.attributes().map(str::to_ascii_lowercase));
            }
            if let Some(a) = r.sms.as_ref().and_then(|s| s.recipient_attribute.as_ref()) {
                attributes.insert(a.clone());
            }
        }
        let dir = cfg.directory.as_ref();
        let address_attributes: Vec<String> = cfg
            .filter
            .address_attributes
            .iter()
            .map(|a| a.to_ascii_lowercase())
            .collect();
        let uses_from = rules.iter().any(|r| {
            r.when.from_is_own.is_some()
                || r.unless.as_ref().is_some_and(|u| u.from_is_own.is_some())
        });
        if uses_from {
            attributes.extend(address_attributes.iter().cloned());
        }
        let no_groups = |d: &cgp_lookup::directory::DirectoryConfig| {
            d.kind == Kind::Ldap && d.groups.lookup == GroupLookup::None
        };
        if needs_groups && dir.is_some_and(no_groups) {
            return Err(CompileError::new(
                "directory.groups.lookup",
                "the member_of conditions need groups: set search or member_of",
            ));
        }
        Ok(RuleSet {
            rules,
            local: {
                let mut local = AddressListsBuilder::default();
                local.add(&cfg.filter.local_domains, "filter.local_domains")?;
                local.build("filter.local_domains")?
            },
            sender_lists: shared.senders.build("rule")?,
            recipient_lists: shared.recipients.build("rule")?,
            header_parser: Arc::new(HeaderParser::new(
                header_sets.iter().map(|s| s.name.clone()),
                uses_from,
            )),
            header_sets,
            header_hits_len,
            needs_body,
            attributes,
            limits: shared.limits,
            address_attributes,
            local_by_directory: cfg.filter.recipients_in_directory_are_local,
        })
    }

    /// Runs the rules on one message, with the directory answers `known`
    /// and those `dir` recalls, and puts in `notices` the text messages of
    /// the rules that matched. `Err` when a condition or template needs a
    /// directory answer or a count that neither has.
    pub fn evaluate(
        &self,
        qf: &QueueFile,
        known: &Known,
        dir: Option<&dyn Recall>,
        notices: &mut Vec<Notice>,
    ) -> Result<Verdict, Missing> {
        notices.clear();
        let env = &qf.envelope;
        let mut facts = Facts {
            sender: Address::new(env.sender.as_deref().unwrap_or_default()),
            recipients: env.recipients.iter().map(|r| Address::new(r)).collect(),
            tag: env.source.as_ref().map_or("", |s| s.tag.as_str()),
            self_generated: env.self_generated(),
            authenticated: env.auth_user().is_some(),
            client_ip: env.client_ip(),
            set: self,
            qf,
            dir,
            known,
            headers: None,
            header_hits: Vec::new(),
            sender_in: None,
            recipients_in: None,
            person: None,
            external: None,
        };
        let mut m = Modifiers::default();
        for rule in &self.rules {
            if !facts.holds(&rule.when)? {
                continue;
            }
            if let Some(unless) = &rule.unless {
                if facts.holds(unless)? {
                    continue;
                }
            }
            tracing::debug!(rule = %rule.name, queue_id = %qf.queue_id, "rule matched");
            if rule.action == Action::Accept {
                for h in &rule.headers {
                    if facts.must_look_up(&h.value) {
                        facts.look_up_person()?;
                    }
                    m.push_header(h, |v| facts.var(v, rule));
                }
                m.mirror_to.extend(rule.mirror_to.iter().cloned());
                m.add_route.extend(rule.add_route.iter().cloned());
            }
            if let Some(sms) = &rule.sms {
                notices.push(facts.notice(sms, rule)?);
            }
            if !rule.stop {
                continue;
            }
            let text = facts.text(&rule.text, rule)?;
            return Ok(match rule.action {
                Action::Accept => Verdict::Accept(m),
                Action::Discard => Verdict::Discard,
                Action::Bounce => Verdict::Bounce(text),
                Action::Reject => Verdict::Reject(text),
            });
        }
        Ok(Verdict::Accept(m))
    }
}

fn compile_rule(
    cfg: &ConfigFile,
    r: &RuleConfig,
    key: &str,
    shared: &mut Shared,
) -> Result<Rule, CompileError> {
    let when = compile_cond(&r.when, &format!("{key}.when"), shared)?;
    let unless = match &r.unless {
        Some(u) => Some(compile_cond(u, &format!("{key}.unless"), shared)?),
        None => None,
    };
    let terminal = r.action != Action::Accept;
    let stop = r.stop.unwrap_or(terminal);
    if terminal && !stop {
        return Err(CompileError::new(
            format!("{key}.stop"),
            "discard, bounce and reject end rule processing; stop cannot be false",
        ));
    }
    if terminal && !(r.add_header.is_empty() && r.mirror_to.is_empty() && r.add_route.is_empty()) {
        return Err(CompileError::new(
            format!("{key}.action"),
            "header fields, mirrors and routes only go with accept",
        ));
    }
    let uses_directory = when.uses_directory()
        || unless.as_ref().is_some_and(Cond::uses_directory)
        || r.add_header
            .iter()
            .any(|h| h.value.attributes().next().is_some())
        || r.text
            .as_ref()
            .is_some_and(|t| t.attributes().next().is_some())
        || r.sms
            .as_ref()
            .is_some_and(|s| s.text.attributes().next().is_some());
    if uses_directory && cfg.directory.is_none() {
        return Err(CompileError::new(
            key.to_string(),
            "uses directory facts but there is no [directory] table",
        ));
    }
    if unless.as_ref().is_some_and(|u| u.sender_limit.is_some()) {
        return Err(CompileError::new(
            format!("{key}.unless.sender_limit"),
            "a sender limit counts the message: it goes in `when`",
        ));
    }
    if when.sender_limit.is_some() && !matches!(r.action, Action::Bounce | Action::Reject) {
        return Err(CompileError::new(
            format!("{key}.action"),
            "a rule with sender_limit must bounce or reject",
        ));
    }
    if r.when
        .sender_limit
        .is_some_and(|rate| rate.count > MAX_SENDER_LIMIT)
    {
        return Err(CompileError::new(
            format!("{key}.when.sender_limit"),
            format!("at most {MAX_SENDER_LIMIT} messages: the window keeps one entry per message"),
        ));
    }
    let sms = r
        .sms
        .as_ref()
        .map(|s| compile_sms(cfg, s, key))
        .transpose()?;
    if cfg.filter.dialect == Dialect::V3 && !(r.mirror_to.is_empty() && r.add_route.is_empty()) {
        return Err(CompileError::new(
            format!("{key}.mirror_to"),
            "MIRRORTO and ADDROUTE need the v4 dialect (filter.dialect = \"v3\")",
        ));
    }
    let default_text = match r.action {
        Action::Reject => "message temporarily refused by rule {rule}",
        _ => "message refused by rule {rule}",
    };
    Ok(Rule {
        name: r.name.clone(),
        when,
        unless,
        action: r.action,
        stop,
        text: r
            .text
            .clone()
            .unwrap_or_else(|| Template::parse(default_text).unwrap_or_default()),
        headers: r.add_header.clone(),
        mirror_to: r.mirror_to.iter().map(|a| a.0.clone()).collect(),
        add_route: r.add_route.iter().map(|a| a.0.clone()).collect(),
        sms,
    })
}

fn compile_sms(
    cfg: &ConfigFile,
    s: &crate::config::SmsRule,
    key: &str,
) -> Result<SmsAction, CompileError> {
    if cfg.sms.is_none() {
        return Err(CompileError::new(
            format!("{key}.sms"),
            "sends text messages but there is no [sms] table",
        ));
    }
    if s.to.is_empty() && s.recipient_attribute.is_none() {
        return Err(CompileError::new(
            format!("{key}.sms"),
            "needs `to` (numbers) or `recipient_attribute`",
        ));
    }
    if s.recipient_attribute.is_some() && cfg.directory.is_none() {
        return Err(CompileError::new(
            format!("{key}.sms.recipient_attribute"),
            "reads the directory but there is no [directory] table",
        ));
    }
    Ok(SmsAction {
        to: s.to.iter().map(|n| n.0.clone()).collect(),
        recipient_attribute: s
            .recipient_attribute
            .as_ref()
            .map(|a| a.to_ascii_lowercase()),
        text: s.text.clone(),
    })
}

fn compile_cond(c: &Conditions, key: &str, shared: &mut Shared) -> Result<Cond, CompileError> {
    let addresses = |lists: &mut AddressListsBuilder, list: &Option<Vec<_>>, name: &str| {
        list.as_ref()
            .map(|l: &Vec<_>| lists.add(l, &format!("{key}.{name}")))
            .transpose()
    };
    if let (Some(over), Some(under)) = (c.size_over, c.size_under) {
        if over >= under {
            return Err(CompileError::new(
                format!("{key}.size_under"),
                "must be more than size_over",
            ));
        }
    }
    let mut cond = Cond {
        source: c
            .source
            .as_ref()
            .map(|l| l.iter().map(|s| s.to_ascii_uppercase()).collect()),
        self_generated: c.self_generated,
        authenticated: c.authenticated,
        sender: addresses(&mut shared.senders, &c.sender, "sender")?,
        recipient: addresses(&mut shared.recipients, &c.recipient, "recipient")?,
        external_recipient: c.external_recipient,
        client_ip: c
            .client_ip
            .as_ref()
            .map(|l| IpSet::compile(l, &format!("{key}.client_ip")))
            .transpose()?,
        size_over: c.size_over,
        size_under: c.size_under,
        header: c
            .header
            .iter()
            .map(|(name, re)| shared.headers.add(name, re.0.as_str()))
            .collect(),
        attachment_name: c.attachment_name.as_ref().map(|r| r.0.clone()),
        attachment_type: c.attachment_type.as_ref().map(|r| r.0.clone()),
        member_of: c
            .member_of
            .as_ref()
            .map(|l| l.iter().map(|g| GroupRef::new(g)).collect()),
        attribute: c
            .attribute
            .iter()
            .map(|(a, r)| (a.to_ascii_lowercase(), r.0.clone()))
            .collect(),
        from_is_own: c.from_is_own,
        sender_limit: c.sender_limit.map(|rate| {
            match shared.limits.iter().position(|r| *r == rate) {
                Some(i) => i,
                None => {
                    shared.limits.push(rate);
                    shared.limits.len() - 1
                }
            }
        }),
        ..Cond::default()
    };
    cond.has_envelope = cond.authenticated.is_some()
        || cond.self_generated.is_some()
        || cond.size_over.is_some()
        || cond.size_under.is_some()
        || cond.source.is_some()
        || cond.client_ip.is_some()
        || cond.sender.is_some()
        || cond.recipient.is_some();
    cond.has_content =
        !cond.header.is_empty() || cond.attachment_name.is_some() || cond.attachment_type.is_some();
    Ok(cond)
}

/// What is known about one message, worked out on first use.
struct Facts<'a> {
    /// The envelope sender and recipients in lower case, as lists compare.
    sender: Address<'a>,
    recipients: Vec<Address<'a>>,
    /// Envelope facts that many rules ask about, worked out once.
    tag: &'a str,
    self_generated: bool,
    authenticated: bool,
    client_ip: Option<std::net::IpAddr>,
    set: &'a RuleSet,
    qf: &'a QueueFile,
    dir: Option<&'a dyn Recall>,
    known: &'a Known,
    headers: Option<Headers<'a>>,
    /// Which header sets were scanned and which of their patterns matched
    /// (laid out as `RuleSet::header_hits_len` says), once a condition asks.
    header_hits: Vec<bool>,
    /// The sender lists the sender is in, and the recipient lists some
    /// recipient is in, once a condition asks.
    sender_in: Option<Vec<usize>>,
    recipients_in: Option<Vec<usize>>,
    person: Option<Option<Arc<Person>>>,
    external: Option<bool>,
}

impl<'a> Facts<'a> {
    /// The address directory facts are about: the authenticated user, else
    /// the envelope sender.
    fn identity(&self) -> Option<Cow<'a, str>> {
        let env = &self.qf.envelope;
        env.auth_user()
            .or(env.sender.as_deref())
            .filter(|a| !a.is_empty())
            .map(lower_case)
    }

    /// Finds the sender's entry. Callers check first that it is not known
    /// yet: most rules find it known, and a call that would find so costs
    /// more than the check.
    fn look_up_person(&mut self) -> Result<(), Missing> {
        let p = match self.identity() {
            None => None,
            Some(who) => match &self.known.person {
                Some(p) => p.clone(),
                None => match self.recall(&who) {
                    Some(p) => p,
                    None => return Err(Missing::Person(who.into_owned())),
                },
            },
        };
        self.person = Some(p);
        Ok(())
    }

    /// The directory's answer for `address` (lower case) at hand: always
    /// "none" without a directory.
    fn recall(&self, address: &str) -> Option<Option<Arc<Person>>> {
        match self.dir {
            Some(dir) => dir.recall(address),
            None => Some(None),
        }
    }

    /// The sender's entry, once looked up.
    fn person(&self) -> Option<&Person> {
        self.person.as_ref().and_then(Option::as_deref)
    }

    /// Whether `t` reads the sender's entry, not looked up yet.
    fn must_look_up(&self, t: &Template) -> bool {
        self.person.is_none() && t.attributes().next().is_some()
    }

    fn var<'v>(&'v self, v: &Var, rule: &'v Rule) -> Option<&'v str> {
        let env = &self.qf.envelope;
        match v {
            Var::Sender => Some(env.sender.as_deref().unwrap_or_default()),
            Var::User => Some(env.auth_user().unwrap_or_default()),
            Var::Rule => Some(&rule.name),
            Var::QueueId => Some(&self.qf.queue_id),
            Var::Attr(a) => self.person()?.values(a).first().map(String::as_str),
        }
    }

    fn headers(&mut self) -> &Headers<'a> {
        parsed(&mut self.headers, self.set, self.qf)
    }

    fn header_hit(&mut self, set: usize, pattern: usize) -> bool {
        if self.header_hits.is_empty() {
            self.header_hits = vec![false; self.set.header_hits_len];
        }
        let s = &self.set.header_sets[set];
        if !self.header_hits[set] {
            self.header_hits[set] = true;
            let headers = parsed(&mut self.headers, self.set, self.qf);
            for value in headers.values(&s.name) {
                // Most values match none of the set: `is_match` can say so
                // without tracking every pattern.
                if !s.regexes.is_match(value) {
                    continue;
                }
                for i in s.regexes.matches(value).iter() {
                    self.header_hits[s.hits_at + i] = true;
                }
            }
        }
        self.header_hits[s.hits_at + pattern]
    }

    fn has_external_recipient(&mut self) -> Result<bool, Missing> {
        if let Some(e) = self.external {
            return Ok(e);
        }
        let mut unknown = Vec::new();
        let mut external = self.known.external;
        let start = self.known.local_upto;
        for (at, rcpt) in self.recipients.iter().enumerate().skip(start) {
            if external {
                break;
            }
            // `<postmaster>` and other bare names are local by definition.
            if !rcpt.lower.contains('@') || self.set.local.has_domain(rcpt.domain()) {
                continue;
            }
            if self.set.local_by_directory {
                match self.recall(&rcpt.lower) {
                    Some(Some(_)) => continue,
                    Some(None) => {}
                    None => {
                        if unknown.len() < ASK_AT_ONCE {
                            unknown.push((at, rcpt.lower.to_string()));
                        }
                        continue;
                    }
                }
            }
            external = true;
        }
        if !external && !unknown.is_empty() {
            return Err(Missing::Recipients(unknown));
        }
        self.external = Some(external);
        Ok(external)
    }

    /// Whether the envelope conditions of `c` hold.
    #[inline]
    fn envelope_holds(&mut self, c: &Cond) -> bool {
        !c.has_envelope || self.envelope_checks(c)
    }

    /// `envelope_holds` of a condition that has some, cheapest first.
    fn envelope_checks(&mut self, c: &Cond) -> bool {
        c.authenticated
            .is_none_or(|want| self.authenticated == want)
            && c.self_generated
                .is_none_or(|want| self.self_generated == want)
            && c.size_over.is_none_or(|n| self.qf.size > n)
            && c.size_under.is_none_or(|n| self.qf.size < n)
            && c.source
                .as_ref()
                .is_none_or(|l| l.iter().any(|t| t.eq_ignore_ascii_case(self.tag)))
            && c.client_ip
                .as_ref()
                .is_none_or(|s| self.client_ip.is_some_and(|ip| s.contains(ip)))
            && c.sender.is_none_or(|list| self.sender_in().contains(&list))
            && c.recipient
                .is_none_or(|list| self.recipients_in().contains(&list))
    }

    fn sender_in(&mut self) -> &[usize] {
        let sender = std::slice::from_ref(&self.sender);
        lists_in(&mut self.sender_in, &self.set.sender_lists, sender)
    }

    fn recipients_in(&mut self) -> &[usize] {
        lists_in(
            &mut self.recipients_in,
            &self.set.recipient_lists,
            &self.recipients,
        )
    }

    /// Whether every condition given in `c` holds.
    fn holds(&mut self, c: &Cond) -> Result<bool, Missing> {
        if !self.envelope_holds(c) {
            return Ok(false);
        }
        if let Some(want) = c.external_recipient {
            if self.has_external_recipient()? != want {
                return Ok(false);
            }
        }
        if !self.content_holds(c) {
            return Ok(false);
        }
        if c.uses_directory() && !self.directory_holds(c)? {
            return Ok(false);
        }
        // Last: reaching it counts the message.
        match c.sender_limit {
            Some(limit) => self.over_limit(limit),
            None => Ok(true),
        }
    }

    /// Whether the authenticated user has sent more than the rate
    /// `limit` allows, this message included; false without a login.
    fn over_limit(&self, limit: usize) -> Result<bool, Missing> {
        let Some(user) = self.qf.envelope.auth_user().map(lower_case) else {
            return Ok(false);
        };
        match self.known.counts.iter().find(|(l, _)| *l == limit) {
            Some((_, n)) => Ok(*n > self.set.limits[limit].count),
            None => Err(Missing::Count {
                limit,
                user: user.into_owned(),
            }),
        }
    }

    /// The text of `t` for `rule`, a placeholder without a value left
    /// empty; the sender's entry looked up first if `t` reads it.
    fn text(&mut self, t: &Template, rule: &Rule) -> Result<String, Missing> {
        if self.must_look_up(t) {
            self.look_up_person()?;
        }
        Ok(t.expand(|v| Some(self.var(v, rule).unwrap_or("")))
            .unwrap_or_default())
    }

    /// The text message of a matching rule's `sms`.
    fn notice(&mut self, sms: &SmsAction, rule: &Rule) -> Result<Notice, Missing> {
        let text = self.text(&sms.text, rule)?;
        let recipients = match &sms.recipient_attribute {
            Some(_) => self
                .recipients
                .iter()
                .filter(|r| r.lower.contains('@'))
                .take(SMS_RECIPIENTS)
                .map(|r| r.lower.to_string())
                .collect(),
            None => Vec::new(),
        };
        Ok(Notice {
            rule: rule.name.clone(),
            queue_id: self.qf.queue_id.clone(),
            text,
            to: sms.to.clone(),
            attribute: sms.recipient_attribute.clone(),
            recipients,
        })
    }

    /// Whether the header and attachment conditions of `c` hold.
    #[inline]
    fn content_holds(&mut self, c: &Cond) -> bool {
        !c.has_content || self.content_checks(c)
    }

    /// `content_holds` of a condition that has some.
    fn content_checks(&mut self, c: &Cond) -> bool {
        for &(set, pattern) in &c.header {
            if !self.header_hit(set, pattern) {
                return false;
            }
        }
        if let Some(re) = &c.attachment_name {
            let mut names = self.qf.attachments.iter().filter_map(|a| a.name.as_deref());
            if !names.any(|n| re.is_match(n)) {
                return false;
            }
        }
        if let Some(re) = &c.attachment_type {
            if !self
                .qf
                .attachments
                .iter()
                .any(|a| re.is_match(&a.content_type))
            {
                return false;
            }
        }
        true
    }

    /// Whether the directory conditions of `c` hold.
    fn directory_holds(&mut self, c: &Cond) -> Result<bool, Missing> {
        if self.person.is_none() {
            // Without a login or a From, `from_is_own` is decided without
            // the sender's entry: a failing one asks the directory nothing.
            let decided =
                |f: &mut Self, want| !f.own_from_needs_entry() && f.sends_as_self() != want;
            if c.from_is_own.is_some_and(|want| decided(self, want)) {
                return Ok(false);
            }
            self.look_up_person()?;
        }
        if c.from_is_own
            .is_some_and(|want| self.sends_as_self() != want)
        {
            return Ok(false);
        }
        let person = self.person();
        if let Some(groups) = &c.member_of {
            let member = person.is_some_and(|p| groups.iter().any(|g| p.in_group(g)));
            if !member {
                return Ok(false);
            }
        }
        Ok(c.attribute.iter().all(|(attr, re)| {
            person.is_some_and(|p| p.values(attr).iter().any(|v| re.is_match(v)))
        }))
    }

    /// Whether `sends_as_self` reads the sender's entry: there is a login
    /// and a From.
    fn own_from_needs_entry(&mut self) -> bool {
        self.qf.envelope.auth_user().is_some() && !self.headers().from.is_empty()
    }

    /// Every From address is the authenticated user's: the login itself or
    /// one of the addresses the directory lists for them (once looked up).
    fn sends_as_self(&mut self) -> bool {
        let Some(user) = self.qf.envelope.auth_user().map(lower_case) else {
            return false;
        };
        if self.headers().from.is_empty() {
            return false;
        }
        let person = self.person();
        let from = self.headers.as_ref().map_or(&[][..], |h| &h.from[..]);
        let own = |addr: &String| {
            *addr == *user
                || person.is_some_and(|p| {
                    self.set
                        .address_attributes
                        .iter()
                        .flat_map(|a| p.values(a))
                        .any(|v| v.eq_ignore_ascii_case(addr))
                })
        };
        from.iter().all(own)
    }
}

/// A message's header, parsed on first use.
fn parsed<'h, 'a>(
    headers: &'h mut Option<Headers<'a>>,
    set: &'a RuleSet,
    qf: &'a QueueFile,
) -> &'h Headers<'a> {
    headers.get_or_insert_with(|| set.header_parser.parse(&qf.header))
}

/// The lists of `lists` that one of `addresses` is in, found on first use.
fn lists_in<'c>(
    found: &'c mut Option<Vec<usize>>,
    lists: &AddressLists,
    addresses: &[Address],
) -> &'c [usize] {
    found.get_or_insert_with(|| {
        let mut hits = Vec::new();
        for a in addresses {
            lists.lists_of(a, &mut hits);
        }
        hits
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::fake::Fake;
    use crate::message::attachments;
    use crate::queue::Envelope;
    use std::sync::atomic::Ordering;

    fn config(toml_text: &str) -> ConfigFile {
        toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}"))
    }

    const DIRECTORY: &str = "[directory]\ntype = \"ldap\"\n[directory.search]\nbase = \"ou=people,dc=example,dc=org\"\n[directory.groups]\nlookup = \"search\"\n";

    /// `OUTBOUND` with directory recipients counted as local.
    fn outbound_local() -> String {
        let local = "[filter]\nrecipients_in_directory_are_local = true\n";
        format!("{}{DIRECTORY}", OUTBOUND.replacen("[filter]\n", local, 1))
    }

    fn message(env: &[&str], header: &str) -> QueueFile {
        QueueFile {
            queue_id: "42".into(),
            envelope: Envelope::parse(env.iter().copied()),
            header: header.as_bytes().to_vec(),
            size: header.len() as u64,
            ..QueueFile::default()
        }
    }

    fn alice_out() -> QueueFile {
        message(
            &[
                "S <alice@example.test> SMTP [192.0.2.10]",
                "P I x <alice@example.test>",
                "R W x <bob@example.test>",
                "R W x <partner@elsewhere.test>",
            ],
            "From: Alice <alice@example.test>\r\nSubject: Quarterly report\r\n\r\n",
        )
    }

    fn fake() -> Fake {
        Fake::default()
            .with(
                "alice@example.test",
                &["outbound", "staff"],
                &[
                    ("departmentNumber", "Research"),
                    ("mail", "alice@example.test"),
                    ("mail", "a.liddell@example.test"),
                    ("AstAccountCallerID", "Alice <1001>"),
                ],
            )
            .with(
                "bob@example.test",
                &["staff"],
                &[("mail", "bob@example.test"), ("departmentNumber", "Sales")],
            )
    }

    const OUTBOUND: &str = r#"
[filter]
local_domains = ["example.test"]
[[rule]]
name = "outbound"
when = { authenticated = true, external_recipient = true }
unless = { member_of = ["outbound"] }
action = "bounce"
text = "{user} may not send outside the organisation"
"#;

    async fn run(cfg: &str, qf: &QueueFile, dir: &Fake) -> Result<Verdict, DirectoryError> {
        let set =
            RuleSet::compile(&config(cfg)).unwrap_or_else(|e| panic!("{}: {}", e.key, e.message));
        settle(&set, qf, dir).await
    }

    /// Evaluates, asks the directory what is missing, and again, as the
    /// filter does. The fake recalls nothing: every answer is asked for.
    async fn settle(set: &RuleSet, qf: &QueueFile, dir: &Fake) -> Result<Verdict, DirectoryError> {
        let mut known = Known::default();
        loop {
            match set.evaluate(qf, &known, Some(dir), &mut Vec::new()) {
                Ok(v) => return Ok(v),
                Err(missing) => known.ask(missing, dir).await?,
            }
        }
    }

    #[tokio::test]
    async fn many_recipients_are_asked_about_in_rounds() {
        let cfg = outbound_local();
        let mut dir = fake();
        let mut env = vec!["S <bob@example.test> SMTP [192.0.2.11]".to_string()];
        for i in 0..100 {
            env.push(format!("R W x <r{i}@other.test>"));
            if i != 80 {
                dir = dir.with(&format!("r{i}@other.test"), &[], &[]);
            }
        }
        let mut m = alice_out();
        m.envelope = Envelope::parse(&env);
        let set = RuleSet::compile(&config(&cfg)).unwrap();
        let first = set.evaluate(&m, &Known::default(), Some(&dir), &mut Vec::new());
        let Err(Missing::Recipients(asked)) = first else {
            panic!("{first:?}")
        };
        assert_eq!(asked.len(), ASK_AT_ONCE);
        assert_eq!(asked[0], (0, "r0@other.test".to_string()));
        // r80 is not in the directory: bob may not send there.
        assert!(matches!(
            settle(&set, &m, &dir).await,
            Ok(Verdict::Bounce(_))
        ));
        // The recipients up to r80, then bob's groups.
        assert_eq!(dir.calls.load(Ordering::Relaxed), 81 + 1);
        env.remove(81);
        m.envelope = Envelope::parse(&env);
        assert_eq!(settle(&set, &m, &dir).await, Ok(Verdict::pass()));
    }

    #[tokio::test]
    async fn recipients_in_the_directory_can_count_as_local() {
        let cfg = outbound_local();
        let dir = fake().with("partner@other.test", &[], &[]);
        let mut bob = alice_out();
        bob.envelope = Envelope::parse([
            "S <bob@example.test> SMTP [192.0.2.11]",
            "R W x <Partner@other.test>",
        ]);
        assert_eq!(run(&cfg, &bob, &dir).await, Ok(Verdict::pass()));
        bob.envelope.recipients.push("stranger@other.test".into());
        assert!(matches!(
            run(&cfg, &bob, &dir).await,
            Ok(Verdict::Bounce(_))
        ));
        // Without the setting, only local_domains count.
        bob.envelope.recipients.pop();
        let cfg = format!("{OUTBOUND}{DIRECTORY}");
        assert!(matches!(
            run(&cfg, &bob, &dir).await,
            Ok(Verdict::Bounce(_))
        ));
    }

    #[tokio::test]
    async fn outbound_restriction_by_group() {
        let cfg = format!("{OUTBOUND}{DIRECTORY}");
        let dir = fake();
        assert_eq!(run(&cfg, &alice_out(), &dir).await, Ok(Verdict::pass()));
        let mut bob = alice_out();
        bob.envelope = Envelope::parse([
            "S <bob@example.test> SMTP [192.0.2.11]",
            "R W x <x@elsewhere.test>",
        ]);
        assert_eq!(
            run(&cfg, &bob, &dir).await,
            Ok(Verdict::Bounce(
                "bob@example.test may not send outside the organisation".into()
            ))
        );
        bob.envelope = Envelope::parse([
            "S <bob@example.test> SMTP [192.0.2.11]",
            "R W x <alice@EXAMPLE.test>",
            "R W x <postmaster>",
        ]);
        assert_eq!(run(&cfg, &bob, &dir).await, Ok(Verdict::pass()));
        dir.down.store(true, Ordering::Relaxed);
        bob.envelope = Envelope::parse([
            "S <bob@example.test> SMTP [192.0.2.11]",
            "R W x <x@elsewhere.test>",
        ]);
        assert!(run(&cfg, &bob, &dir).await.is_err());
        // Local-only mail never asks the directory, so it passes while it is down.
        bob.envelope = Envelope::parse([
            "S <bob@example.test> SMTP [192.0.2.11]",
            "R W x <alice@example.test>",
        ]);
        assert_eq!(run(&cfg, &bob, &dir).await, Ok(Verdict::pass()));
    }

    #[tokio::test]
    async fn actions_accumulate_until_a_stop_rule() {
        let cfg = format!(
            r#"
[[rule]]
name = "tag"
add_header = ["X-Filtered: yes", "X-Queue: {{queue_id}}"]
[[rule]]
name = "journal"
when = {{ sender = ["@example.test"] }}
mirror_to = ["journal@example.test"]
add_header = ["X-Department: {{attr:departmentNumber}}", "X-Caller: {{attr:AstAccountCallerID}}", "X-Missing: {{attr:title}}"]
[[rule]]
name = "audit"
when = {{ header = {{ subject = "(?i)report" }} }}
add_route = ["audit@example.test"]
stop = true
[[rule]]
name = "never reached"
action = "discard"
{DIRECTORY}"#
        );
        let v = run(&cfg, &alice_out(), &fake()).await.unwrap();
        assert_eq!(
            v,
            Verdict::Accept(Modifiers {
                headers:
                    "X-Filtered: yes\nX-Queue: 42\nX-Department: Research\nX-Caller: Alice <1001>"
                        .into(),
                mirror_to: vec!["journal@example.test".into()],
                add_route: vec!["audit@example.test".into()],
            })
        );
        let mut other = alice_out();
        other.header = b"Subject: hello\r\n\r\n".to_vec();
        assert_eq!(run(&cfg, &other, &fake()).await, Ok(Verdict::Discard));
    }

    #[tokio::test]
    async fn envelope_conditions() {
        let cfg = r#"
[[rule]]
name = "cgp"
when = { self_generated = true }
stop = true
[[rule]]
name = "nets"
when = { client_ip = ["198.51.100.0/24"], source = ["smtp"], authenticated = false }
action = "reject"
text = "try later"
[[rule]]
name = "big"
when = { size_over = 1000 }
action = "bounce"
[[rule]]
name = "rcpt"
when = { recipient = ["/^spamtrap@/"], sender = ["@spam.test"] }
action = "discard"
"#;
        let dir = Fake::default();
        let dsn = message(
            &[
                "S DSN [0.0.0.0]",
                "P I x <>",
                "R W x <spamtrap@example.test>",
            ],
            "Subject: x\n\n",
        );
        assert_eq!(run(cfg, &dsn, &dir).await, Ok(Verdict::pass()));
        let anon = message(
            &["S SMTP [198.51.100.9]", "R W x <a@example.test>"],
            "Subject: x\n\n",
        );
        assert_eq!(
            run(cfg, &anon, &dir).await,
            Ok(Verdict::Reject("try later".into()))
        );
        let mut big = message(&["S SMTP [192.0.2.9]"], "Subject: x\n\n");
        big.size = 5000;
        assert_eq!(
            run(cfg, &big, &dir).await,
            Ok(Verdict::Bounce("message refused by rule big".into()))
        );
        let trap = message(
            &[
                "S SMTP [192.0.2.9]",
                "P I x <x@SPAM.test>",
                "R W x <Spamtrap@example.test>",
            ],
            "S: x\n\n",
        );
        assert_eq!(run(cfg, &trap, &dir).await, Ok(Verdict::Discard));
        let authed = message(
            &["S <a@example.test> SMTP [198.51.100.9]"],
            "Subject: x\n\n",
        );
        assert_eq!(run(cfg, &authed, &dir).await, Ok(Verdict::pass()));
    }

    #[tokio::test]
    async fn from_address_must_belong_to_the_user() {
        let cfg = format!(
            r#"
[[rule]]
name = "from"
when = {{ authenticated = true }}
unless = {{ from_is_own = true }}
action = "bounce"
text = "{{user}} may not send as someone else"
{DIRECTORY}"#
        );
        let dir = fake();
        let mut m = alice_out();
        assert_eq!(run(&cfg, &m, &dir).await, Ok(Verdict::pass()));
        m.header = b"From: \"Al\" <A.Liddell@example.test>\r\n\r\n".to_vec();
        assert_eq!(run(&cfg, &m, &dir).await, Ok(Verdict::pass()));
        m.header = b"From: Bob <bob@example.test>\r\n\r\n".to_vec();
        assert_eq!(
            run(&cfg, &m, &dir).await,
            Ok(Verdict::Bounce(
                "alice@example.test may not send as someone else".into()
            ))
        );
        m.header = b"Subject: no from\r\n\r\n".to_vec();
        assert!(matches!(run(&cfg, &m, &dir).await, Ok(Verdict::Bounce(_))));
    }

    #[tokio::test]
    async fn from_is_own_asks_the_directory_only_when_it_must() {
        let cfg = format!(
            "[[rule]]\nname = \"own\"\nwhen = {{ from_is_own = true }}\naction = \"discard\"\n{DIRECTORY}"
        );
        let dir = fake();
        dir.down.store(true, Ordering::Relaxed);
        // No login: not the user's own From, whatever the directory says.
        let mut m = alice_out();
        m.envelope = Envelope::parse(["S SMTP [192.0.2.1]", "R W x <bob@example.test>"]);
        assert_eq!(run(&cfg, &m, &dir).await, Ok(Verdict::pass()));
        assert_eq!(dir.calls.load(Ordering::Relaxed), 0);
        // A login and a From: the entry is needed, and the directory is down.
        assert!(run(&cfg, &alice_out(), &dir).await.is_err());
        dir.down.store(false, Ordering::Relaxed);
        assert_eq!(run(&cfg, &alice_out(), &dir).await, Ok(Verdict::Discard));
    }

    #[tokio::test]
    async fn attributes_and_attachments() {
        let cfg = format!(
            r#"
[[rule]]
name = "research exe"
when = {{ attribute = {{ departmentNumber = "^Research$" }}, attachment_name = "(?i)\\.exe$" }}
action = "bounce"
[[rule]]
name = "pdf"
when = {{ attachment_type = "^application/pdf$" }}
add_header = ["X-PDF: yes"]
{DIRECTORY}"#
        );
        let set = RuleSet::compile(&config(&cfg)).unwrap();
        assert!(set.needs_body);
        assert!(set.attributes.contains("departmentnumber"));
        let mut m = alice_out();
        m.header = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n".to_vec();
        let body = b"--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=Setup.EXE\r\n\r\nMZ\r\n--b--\r\n";
        m.attachments = attachments(&[&m.header[..], body].concat());
        let dir = fake();
        assert!(matches!(
            settle(&set, &m, &dir).await,
            Ok(Verdict::Bounce(_))
        ));
        m.envelope = Envelope::parse(["S <bob@example.test> SMTP [192.0.2.1]"]);
        assert_eq!(settle(&set, &m, &dir).await, Ok(Verdict::pass()));
        m.attachments = attachments(
            &[
                &m.header[..],
                b"--b\r\nContent-Type: application/pdf; name=a.pdf\r\n\r\n%PDF\r\n--b--\r\n",
            ]
            .concat(),
        );
        let Ok(Verdict::Accept(mods)) = settle(&set, &m, &dir).await else {
            panic!()
        };
        assert_eq!(mods.headers, "X-PDF: yes");
    }

    const SMS: &str = r#"
[sms.cloudpbx]
base_urls = ["http://127.0.0.1:1/"]
api_key = "k"
"#;

    #[tokio::test]
    async fn matching_rules_give_their_text_messages_whatever_the_reply() {
        let cfg = format!(
            r#"
[[rule]]
name = "notify"
when = {{ sender = ["@example.test"] }}
sms = {{ to = ["+48 600-100-200"], recipient_attribute = "Mobile", text = "{{sender}} ({{attr:departmentNumber}}) wrote, queue {{queue_id}}" }}
[[rule]]
name = "not matching"
when = {{ size_over = 100000 }}
sms = {{ to = ["600100201"], text = "never" }}
[[rule]]
name = "drop"
action = "discard"
sms = {{ to = ["600100202"], text = "dropped {{rule}}" }}
{DIRECTORY}{SMS}"#
        );
        let set = RuleSet::compile(&config(&cfg)).unwrap();
        assert!(set.attributes.contains("mobile"));
        let dir = fake();
        let mut known = Known::default();
        let mut notices = Vec::new();
        let verdict = loop {
            match set.evaluate(&alice_out(), &known, Some(&dir), &mut notices) {
                Ok(v) => break v,
                Err(missing) => known.ask(missing, &dir).await.unwrap(),
            }
        };
        assert_eq!(verdict, Verdict::Discard);
        let number = |n: &str| GsmNumber::parse(n).unwrap();
        assert_eq!(
            notices,
            [
                Notice {
                    rule: "notify".into(),
                    queue_id: "42".into(),
                    text: "alice@example.test (Research) wrote, queue 42".into(),
                    to: vec![number("600100200")],
                    attribute: Some("mobile".into()),
                    recipients: vec!["bob@example.test".into(), "partner@elsewhere.test".into()],
                },
                Notice {
                    rule: "drop".into(),
                    queue_id: "42".into(),
                    text: "dropped drop".into(),
                    to: vec![number("600100202")],
                    attribute: None,
                    recipients: vec![],
                },
            ]
        );
    }

    #[tokio::test]
    async fn a_sender_limit_asks_for_the_count_once_and_decides_by_it() {
        let cfg = r#"
[[rule]]
name = "limit"
when = { sender_limit = "500 per 1h" }
action = "reject"
text = "{user} sent too much"
[[rule]]
name = "limit again"
when = { sender_limit = "500 per 1h", size_over = 1 }
action = "bounce"
"#;
        let set = RuleSet::compile(&config(cfg)).unwrap();
        assert_eq!(
            set.limits,
            [Rate {
                count: 500,
                window: std::time::Duration::from_secs(3600)
            }]
        );
        let dir = Fake::default();
        let m = alice_out();
        let mut known = Known::default();
        let asked = set.evaluate(&m, &known, Some(&dir), &mut Vec::new());
        assert_eq!(
            asked,
            Err(Missing::Count {
                limit: 0,
                user: "alice@example.test".into()
            })
        );
        known.counted(0, 500);
        assert_eq!(
            set.evaluate(&m, &known, Some(&dir), &mut Vec::new()),
            Ok(Verdict::pass())
        );
        let mut over = Known::default();
        over.counted(0, 501);
        assert_eq!(
            set.evaluate(&m, &over, Some(&dir), &mut Vec::new()),
            Ok(Verdict::Reject("alice@example.test sent too much".into()))
        );
        // Without a login nothing is counted.
        let anon = message(&["S SMTP [192.0.2.1]", "P I x <a@x.test>"], "S: x\n\n");
        assert_eq!(
            set.evaluate(&anon, &Known::default(), Some(&dir), &mut Vec::new()),
            Ok(Verdict::pass())
        );
    }

    #[test]
    fn configuration_errors_name_the_key() {
        let no_to = format!("[[rule]]\nname = \"a\"\nsms = {{ text = \"x\" }}\n{SMS}");
        let no_directory = format!(
            "[[rule]]\nname = \"a\"\nsms = {{ recipient_attribute = \"mobile\", text = \"x\" }}\n{SMS}"
        );
        let cases = [
            (
                "[[rule]]\nname = \"a\"\nwhen = { member_of = [\"x\"] }\n",
                "rule[0]",
                "no [directory]",
            ),
            (
                "[[rule]]\nname = \"a\"\naction = \"bounce\"\nstop = false\n",
                "rule[0].stop",
                "cannot be false",
            ),
            (
                "[[rule]]\nname = \"a\"\naction = \"discard\"\nadd_header = [\"X: y\"]\n",
                "rule[0].action",
                "only go with accept",
            ),
            (
                "[filter]\ndialect = \"v3\"\n[[rule]]\nname = \"a\"\nmirror_to = [\"j@x.test\"]\n",
                "rule[0].mirror_to",
                "v4",
            ),
            (
                "[failure]\nafter_max_age = \"rejected\"\n",
                "failure.after_max_age",
                "for ever",
            ),
            (
                "[[rule]]\nname = \"a\"\nwhen = { size_over = 10, size_under = 5 }\n",
                "rule[0].when.size_under",
                "more than",
            ),
            (
                "[[rule]]\nname = \"a\"\nwhen = { member_of = [\"x\"] }\n[directory]\ntype = \"ldap\"\n",
                "directory.groups.lookup",
                "member_of",
            ),
            (
                "[[rule]]\nname = \"a\"\nunless = { sender_limit = \"5 per 1m\" }\naction = \"reject\"\n",
                "rule[0].unless.sender_limit",
                "goes in `when`",
            ),
            (
                "[[rule]]\nname = \"a\"\nwhen = { sender_limit = \"5 per 1m\" }\n",
                "rule[0].action",
                "bounce or reject",
            ),
            (
                "[[rule]]\nname = \"a\"\nwhen = { sender_limit = \"10001 per 1h\" }\naction = \"reject\"\n",
                "rule[0].when.sender_limit",
                "at most 10000",
            ),
            (
                "[[rule]]\nname = \"a\"\nsms = { to = [\"600100200\"], text = \"x\" }\n",
                "rule[0].sms",
                "no [sms]",
            ),
            (no_to.as_str(), "rule[0].sms", "needs `to`"),
            (
                no_directory.as_str(),
                "rule[0].sms.recipient_attribute",
                "no [directory]",
            ),
        ];
        for (text, key, msg) in cases {
            let e = RuleSet::compile(&config(text)).unwrap_err();
            assert_eq!(e.key, key, "{text}");
            assert!(e.message.contains(msg), "{text}: {}", e.message);
        }
        for bad in [
            "[[rule]]\nname = \"a\"\nwhen = { header = { subject = \"(\" } }\n",
            "[[rule]]\nname = \"a\"\nwhen = { client_ip = [\"10.0.0.0/33\"] }\n",
            "[[rule]]\nname = \"a\"\nadd_header = [\"Bad Name: x\"]\n",
            "[[rule]]\nname = \"a\"\ntext = \"{nope}\"\n",
            "[[rule]]\nname = \"a\"\nwhen = { colour = \"red\" }\n",
            "[[rule]]\nname = \"a\"\nwhen = { sender_limit = \"500 an hour\" }\n",
            "[[rule]]\nname = \"a\"\nwhen = { sender_limit = \"0 per 1h\" }\n",
            "[[rule]]\nname = \"a\"\nsms = { to = [\"+49 600 100 200\"], text = \"x\" }\n",
        ] {
            assert!(toml::from_str::<ConfigFile>(bad).is_err(), "{bad}");
        }
        // An error in a rule is placed at that rule.
        let text =
            "[[rule]]\nname = \"a\"\n\n[[rule]]\nname = \"b\"\naction = \"bounce\"\nstop = false\n";
        let e = RuleSet::compile(&config(text)).unwrap_err();
        assert_eq!(e.key, "rule[1].stop");
        // The toml crate places a table of an array at its header.
        assert_eq!(e.span.map(|s| s.start), text.rfind("[[rule]]"));
    }
}
