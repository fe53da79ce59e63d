//! The configuration file of `cgp-banner` (reference in `docs/banner.md`).

use crate::announce::{Announcement, LATEST, Target};
use crate::people::Attributes;
use crate::template::{Format, Template};
use cgp_lookup::ami::AmiConfig;
use cgp_lookup::cloudpbx::CloudPbxConfig;
use cgp_lookup::directory::DirectoryConfig;
use cgp_lookup::store::Backend;
use cgp_lookup::store::remote::RedisConfig;
use cgp_runtime::config::{HelperConfig, KeyError, LogConfig, RuntimeConfig};
use regex::Regex;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BannerConfig {
    pub runtime: RuntimeConfig,
    pub log: LogConfig,
    /// Returned when a rule's data cannot be had (back end down or slow,
    /// user unknown) and the rule has no `default` of its own. Unset: the
    /// answer is `ERROR "no banner"`.
    pub default_banner: Option<String>,
    pub store: StoreConfig,
    pub cache: CacheConfig,
    pub ami: AmiConfig,
    /// CloudPBX exchanges (`[[cloudpbx]]`), after the AMI servers.
    pub cloudpbx: Vec<CloudPbxConfig>,
    /// The suite's one directory shape (README, "Directory").
    pub directory: DirectoryConfig,
    /// Which directory attribute gives each value a banner shows.
    pub attributes: Attributes,
    /// Banner rules; the first that matches a request answers it.
    #[serde(rename = "banner")]
    pub banners: Vec<Rule>,
    /// Announcements fixed in the configuration, shown next to those of the
    /// store (standing policy notices, or a demo without a store).
    #[serde(rename = "announcement")]
    pub announcements: Vec<FixedAnnouncement>,
}

/// An `[[announcement]]` of the configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedAnnouncement {
    pub text: String,
    #[serde(default = "target_all")]
    pub target: Target,
    /// RFC 3339; unset: always started.
    pub from: Option<Rfc3339>,
    /// RFC 3339; unset: never ends.
    pub until: Option<Rfc3339>,
    #[serde(default)]
    pub types: Vec<String>,
}

fn target_all() -> Target {
    Target::All
}

impl FixedAnnouncement {
    pub fn to_announcement(&self, index: usize) -> Announcement {
        Announcement {
            id: format!("config-{index}"),
            text: self.text.clone(),
            target: self.target.clone(),
            from: self.from.map_or(0, |t| t.0),
            until: self.until.map_or(LATEST, |t| t.0),
            types: self.types.clone(),
        }
    }
}

/// A point in time written in RFC 3339, as Unix seconds.
#[derive(Clone, Copy, Debug)]
pub struct Rfc3339(pub u64);

impl<'de> Deserialize<'de> for Rfc3339 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s)
            .map(|t| Rfc3339(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())))
            .map_err(|e| {
                serde::de::Error::custom(format!("{e} (use RFC 3339, e.g. 2026-11-23T08:00:00Z)"))
            })
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The sled store of announcements. Unset: announcements are off
    /// (unless `backend` is `redis`).
    pub path: Option<PathBuf>,
    /// Where `cgp-banner announce` queues changes; `<path>.spool` when unset.
    pub spool: Option<PathBuf>,
    /// How often the running helper imports the spool.
    #[serde(with = "humantime_serde")]
    pub spool_poll: Duration,
    /// `redis`: announcements shared by every member of a cluster, in
    /// `[store.redis]` instead of `path`.
    pub backend: Backend,
    pub redis: RedisConfig,
    /// How often the running helper reads the announcements from Redis: a
    /// change made on any member shows on this one within it.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: None,
            spool: None,
            spool_poll: Duration::from_secs(2),
            backend: Backend::Sled,
            redis: RedisConfig::default(),
            refresh: Duration::from_secs(5),
        }
    }
}

impl StoreConfig {
    pub fn spool_dir(&self) -> Option<PathBuf> {
        self.spool.clone().or_else(|| {
            self.path.as_ref().map(|p| {
                let mut s = p.clone().into_os_string();
                s.push(".spool");
                PathBuf::from(s)
            })
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// How long PBX data (voicemail counts, extension state) is reused
    /// without an event refreshing it.
    #[serde(with = "humantime_serde")]
    pub pbx_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            pbx_ttl: Duration::from_secs(300),
        }
    }
}

/// One banner rule.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Banner type (`WebUserTop`, `XIMSSLogin`…); `*` or unset: any.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Domain pattern (`*` wildcards); unset: any, including no user.
    #[serde(default)]
    pub domain: Option<Pattern>,
    /// `user@domain` pattern (`*` wildcards); unset: any.
    #[serde(default)]
    pub account: Option<Pattern>,
    #[serde(default)]
    pub format: Format,
    pub template: Template,
    /// Answer when the template's data cannot be had.
    #[serde(default)]
    pub default: Option<String>,
}

impl Rule {
    pub fn matches(&self, kind: &str, account: Option<&str>, domain: Option<&str>) -> bool {
        let kind_ok = self.kind.as_deref().is_none_or(|k| k == "*" || k == kind);
        let field_ok = |p: &Option<Pattern>, v: Option<&str>| {
            p.as_ref()
                .is_none_or(|p| v.is_some_and(|v| p.0.is_match(v)))
        };
        kind_ok && field_ok(&self.domain, domain) && field_ok(&self.account, account)
    }
}

/// A case-insensitive wildcard pattern: `*` stands for any run of characters.
#[derive(Clone, Debug)]
pub struct Pattern(Regex);

impl TryFrom<String> for Pattern {
    type Error = String;
    fn try_from(glob: String) -> Result<Pattern, String> {
        let body = glob
            .split('*')
            .map(regex::escape)
            .collect::<Vec<_>>()
            .join(".*");
        Regex::new(&format!("(?i)^{body}$"))
            .map(Pattern)
            .map_err(|e| e.to_string())
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Pattern::try_from(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl HelperConfig for BannerConfig {
    fn runtime(&self) -> &RuntimeConfig {
        &self.runtime
    }
    fn log(&self) -> &LogConfig {
        &self.log
    }
    fn validate(&self) -> Result<(), KeyError> {
        self.ami.check().map_err(|(k, m)| KeyError::new(k, m))?;
        for (i, c) in self.cloudpbx.iter().enumerate() {
            let at = format!("cloudpbx[{i}]");
            c.check(&at).map_err(|(k, m)| KeyError::new(k, m))?;
            if self.ami.servers.iter().any(|s| s.name == c.name)
                || self.cloudpbx[..i].iter().any(|o| o.name == c.name)
            {
                return Err(KeyError::new(
                    format!("{at}.name"),
                    format!("PBX name {:?} is used twice", c.name),
                ));
            }
        }
        self.directory.validate("directory")?;
        if self.cache.pbx_ttl.is_zero() {
            return Err(KeyError::new("cache.pbx_ttl", "must be more than 0s"));
        }
        if self.store.spool_poll.is_zero() {
            return Err(KeyError::new("store.spool_poll", "must be more than 0s"));
        }
        if self.store.spool.is_some() && self.store.path.is_none() {
            return Err(KeyError::new("store.spool", "needs store.path"));
        }
        if self.store.backend == Backend::Redis {
            self.store
                .redis
                .validate("store.redis")
                .map_err(|e| KeyError::new(e.key, e.message))?;
            if self.store.path.is_some() {
                return Err(KeyError::new(
                    "store.path",
                    "announcements live in [store.redis] with backend = \"redis\"; remove store.path",
                ));
            }
            if self.store.refresh.is_zero() {
                return Err(KeyError::new("store.refresh", "must be more than 0s"));
            }
        }
        for (i, a) in self.announcements.iter().enumerate() {
            let a = a.to_announcement(i);
            Announcement::check(a.from, a.until)
                .map_err(|e| KeyError::new(format!("announcement[{i}].until"), e.to_string()))?;
        }
        // A static person's PBX is known now; an LDAP person's only when
        // asked (an unknown name then shows the default banner).
        let names: Vec<&str> = self.pbx_names().collect();
        let Some(attr) = &self.attributes.pbx else {
            return Ok(());
        };
        for (i, u) in self.directory.static_file.users.iter().enumerate() {
            let pbx = u
                .attributes
                .iter()
                .filter(|(name, _)| name.eq_ignore_ascii_case(attr))
                .flat_map(|(_, values)| values.first());
            for pbx in pbx {
                if !names.contains(&pbx.as_str()) {
                    return Err(KeyError::new(
                        format!("directory.static.users[{i}].attributes.{attr}"),
                        format!("no [[ami.servers]] or [[cloudpbx]] is named {pbx:?}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl BannerConfig {
    /// Every configured PBX, in the order of their back ends.
    pub fn pbx_names(&self) -> impl Iterator<Item = &str> {
        let ami = self.ami.servers.iter().map(|s| s.name.as_str());
        ami.chain(self.cloudpbx.iter().map(|c| c.name.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BannerConfig, String> {
        let c: BannerConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate()
            .map_err(|e| format!("{}: {}", e.key, e.message))?;
        Ok(c)
    }

    #[test]
    fn rules_match_type_domain_and_account_patterns() {
        let c = parse(
            r#"
            [[banner]]
            type = "WebUserTop"
            domain = "*.example.com"
            account = "a*@*"
            template = "x"
            "#,
        )
        .unwrap();
        let r = &c.banners[0];
        assert!(r.matches(
            "WebUserTop",
            Some("alice@sales.example.com"),
            Some("sales.example.com")
        ));
        assert!(!r.matches(
            "XIMSSLogin",
            Some("alice@sales.example.com"),
            Some("sales.example.com")
        ));
        assert!(!r.matches(
            "WebUserTop",
            Some("bob@sales.example.com"),
            Some("sales.example.com")
        ));
        assert!(!r.matches("WebUserTop", None, None));
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let e = parse("[[banner]]\ntemplate = \"{secret}\"\n").unwrap_err();
        assert!(
            e.contains("unknown placeholder") && e.contains("line 2"),
            "{e}"
        );
        let e = parse("[[banner]]\ntemplate = \"x\"\nfromat = \"html\"\n").unwrap_err();
        assert!(e.contains("fromat"), "{e}");
        let e = parse(
            "[attributes]\npbx = \"AstPbx\"\n[[directory.static.users]]\nname = \"a@b.c\"\nattributes = { astpbx = [\"nope\"] }\n",
        )
        .unwrap_err();
        assert!(
            e.starts_with("directory.static.users[0].attributes.AstPbx"),
            "{e}"
        );
        let e = parse("[directory.search]\nmail_filter = \"(mail={local})\"\n").unwrap_err();
        assert!(e.contains("{user}"), "{e}");
        let e = parse("[store]\nspool = \"/tmp/x\"\n").unwrap_err();
        assert!(e.starts_with("store.spool"), "{e}");
        let e = parse("[store]\nbackend = \"redis\"\n").unwrap_err();
        assert!(e.starts_with("store.redis.urls"), "{e}");
        let e = parse(
            "[store]\nbackend = \"redis\"\npath = \"/tmp/x\"\n[store.redis]\nurls = [\"redis://127.0.0.1\"]\n",
        )
        .unwrap_err();
        assert!(e.starts_with("store.path"), "{e}");
        let e = parse(
            "[[announcement]]\ntext = \"x\"\nfrom = \"2030-01-02T00:00:00Z\"\nuntil = \"2030-01-01T00:00:00Z\"\n",
        )
        .unwrap_err();
        assert!(e.starts_with("announcement[0].until"), "{e}");
    }
}
