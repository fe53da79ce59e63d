//! The configuration file of `cgp-auth` (TOML). Single values are checked
//! while deserializing, so errors carry a line number; rules between keys are
//! checked in `validate`.

use crate::profile::{CompileError, Profiles, ProvisionFile};
use cgp_lookup::cgp_cli::CliConfig;
use cgp_lookup::directory::{DirectoryConfig, Kind};
use cgp_lookup::store::StoreConfig;
use cgp_runtime::config::{HelperConfig, KeyError, LogConfig, RuntimeConfig};
use ipnet::IpNet;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub runtime: RuntimeConfig,
    pub log: LogConfig,
    /// Tell "account locked", "password expired", "account disabled" and
    /// "not permitted" apart in ERROR replies (CGP shows the text to the
    /// user); otherwise every refusal reads "invalid credentials".
    pub detailed_errors: bool,
    /// Answer READPLAIN from the directory (off: `FAILURE "not supported"`).
    pub readplain: bool,
    /// Where users and passwords live: the suite's one directory
    /// configuration (README, "Directory").
    pub directory: DirectoryConfig,
    /// The verdict cache (salted fingerprints of passwords).
    pub cache: CacheConfig,
    pub throttle: ThrottleConfig,
    pub provision: ProvisionConfig,
    /// The sled directory holds the verdict cache and, with the Redis back
    /// end, the throttling counters while Redis is down.
    pub store: StoreConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// How long a successful check answers from the cache (0s: never).
    #[serde(with = "humantime_serde")]
    pub positive_ttl: Duration,
    /// How long a wrong password answers from the cache (0s: never).
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// While the directory is unavailable, entries up to this long past
    /// their TTL still answer (0s: off).
    #[serde(with = "humantime_serde")]
    pub stale_window: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            positive_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(60),
            stale_window: Duration::ZERO,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    pub enabled: bool,
    /// The delay after the first failure; it doubles with each further one.
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Failures older than this are forgotten.
    #[serde(with = "humantime_serde")]
    pub reset_after: Duration,
    /// Client networks never delayed.
    pub trusted_networks: Vec<IpNet>,
    /// With the shared store (Redis): how long this member trusts the
    /// store's answer that an account or client address has no failures
    /// before asking again; 0: ask at every login.
    #[serde(with = "humantime_serde")]
    pub shared_recheck: Duration,
}

/// The longest `throttle.shared_recheck` accepted.
const MAX_SHARED_RECHECK: Duration = Duration::from_secs(60);

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            enabled: true,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            reset_after: Duration::from_secs(900),
            trusted_networks: vec![
                "127.0.0.0/8".parse().expect("valid net"),
                "::1/128".parse().expect("valid net"),
            ],
            shared_recheck: Duration::from_secs(1),
        }
    }
}

/// `[provision]` with its profiles compiled (written as [`ProvisionFile`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "ProvisionFile")]
pub struct ProvisionConfig {
    /// Create accounts for NEW requests (off: NEW is refused).
    pub enabled: bool,
    pub cli: CliConfig,
    /// The compiled profiles, or why they do not compile (reported by
    /// `validate`).
    pub profiles: Result<Arc<Profiles>, CompileError>,
}

impl From<ProvisionFile> for ProvisionConfig {
    fn from(file: ProvisionFile) -> Self {
        ProvisionConfig {
            enabled: file.enabled,
            profiles: Profiles::compile(&file).map(Arc::new),
            cli: file.cli,
        }
    }
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        ProvisionFile::default().into()
    }
}

impl HelperConfig for AuthConfig {
    fn runtime(&self) -> &RuntimeConfig {
        &self.runtime
    }

    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn validate(&self) -> Result<(), KeyError> {
        self.directory.validate("directory")?;
        let t = &self.throttle;
        if t.enabled && (t.initial_delay.is_zero() || t.max_delay < t.initial_delay) {
            return Err(KeyError::new(
                "throttle.max_delay",
                "needs 0 < initial_delay <= max_delay",
            ));
        }
        if t.shared_recheck > MAX_SHARED_RECHECK {
            return Err(KeyError::new(
                "throttle.shared_recheck",
                "at most 1m: for that long a member overlooks failures counted on the others",
            ));
        }
        self.store
            .validate("store")
            .map_err(|e| KeyError::new(e.key, e.message))?;
        let profiles = match &self.provision.profiles {
            Ok(p) => p,
            Err(e) => return Err(KeyError::new(&e.key, &e.message)),
        };
        if self.provision.enabled && self.directory.kind == Kind::Static {
            // The only directory whose attributes are known before a person
            // is looked up.
            let known = |a: &str| {
                self.directory
                    .static_file
                    .users
                    .iter()
                    .any(|u| u.attributes.keys().any(|k| k.eq_ignore_ascii_case(a)))
            };
            if let Some((key, a)) = profiles.attributes().into_iter().find(|(_, a)| !known(a)) {
                return Err(KeyError::new(
                    key,
                    format!("no user of the static directory has the attribute {a:?}"),
                ));
            }
        }
        if self.provision.enabled {
            let c = &self.provision.cli;
            if c.password.is_none() == c.password_file.is_none() {
                return Err(KeyError::new(
                    "provision.cli.password",
                    "give exactly one of password and password_file",
                ));
            }
        }
        Ok(())
    }
}
