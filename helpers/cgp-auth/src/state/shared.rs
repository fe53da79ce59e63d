//! Throttling on the cluster's shared store, with the local store standing
//! in while the shared one is down.

use super::records::{self, Tag};
use super::{Fingerprint, RECENT, State, delay_for, exempt};
use crate::config::ThrottleConfig;
use cgp_lookup::store::remote::{Outcome, RedisStore};
use std::net::IpAddr;
use std::time::Duration;

/// What a login owes before its answer.
pub struct Owed {
    pub delay: Duration,
    /// The shared store was asked and holds no failure of the account, so
    /// a success has nothing there to clear: a good login then costs one
    /// round trip, not two.
    clean: bool,
}

impl Owed {
    fn local(delay: Duration) -> Owed {
        Owed {
            delay,
            clean: false,
        }
    }
}

impl State {
    /// The delay owed before answering (see `local_delay`); `info` sends a
    /// `*` line to the CGP log when the shared store is lost or back.
    pub async fn delay(
        &self,
        info: &(dyn Fn(&str) + Sync),
        cfg: &ThrottleConfig,
        account: &str,
        ip: Option<IpAddr>,
    ) -> Owed {
        let Some(shared) = &self.shared else {
            return Owed::local(self.local_delay(cfg, account, ip));
        };
        if exempt(cfg, ip) {
            return Owed::local(Duration::ZERO);
        }
        let keys = names(shared, records::shared_throttle_keys(account, ip));
        match report(info, shared.counts(&keys, cfg.shared_recheck).await) {
            Some(counts) => Owed {
                // The account's key comes first.
                clean: counts.first() == Some(&0),
                delay: counts
                    .into_iter()
                    .map(|n| delay_for(cfg, n))
                    .max()
                    .unwrap_or(Duration::ZERO),
            },
            None => Owed::local(self.local_delay(cfg, account, ip)),
        }
    }

    /// Counts a failed attempt, unless this very password failed recently.
    pub async fn failed(
        &self,
        info: &(dyn Fn(&str) + Sync),
        cfg: &ThrottleConfig,
        account: &str,
        ip: Option<IpAddr>,
        fp: &Fingerprint,
    ) {
        let Some(shared) = &self.shared else {
            return self.local_failed(cfg, account, ip, fp);
        };
        if !cfg.enabled {
            return;
        }
        let keys = names(shared, records::shared_throttle_keys(account, ip));
        let tag: Tag = fp[..8].try_into().expect("8 bytes");
        let bumped = shared
            .bump(&keys, &records::shared_tag(&tag), cfg.reset_after, RECENT)
            .await;
        if report(info, bumped).is_none() {
            self.local_failed(cfg, account, ip, fp);
        }
    }

    /// A successful login clears the account's failures (not the client's).
    pub async fn succeeded(&self, info: &(dyn Fn(&str) + Sync), account: &str, owed: &Owed) {
        // The local store too: failures counted there during an outage
        // belong to the same account.
        self.local_succeeded(account);
        if let Some(shared) = self.shared.as_ref().filter(|_| !owed.clean) {
            let key = shared.key(
                &records::shared_account_key(account)
                    .each_ref()
                    .map(String::as_str),
            );
            report(info, shared.remove(&key).await);
        }
    }
}

fn names(shared: &RedisStore, keys: Vec<[String; 4]>) -> Vec<String> {
    keys.iter()
        .map(|k| shared.key(&k.each_ref().map(String::as_str)))
        .collect()
}

/// Logs a change of the shared store's health, once per change, and gives
/// the value if there is one.
fn report<T>(info: &(dyn Fn(&str) + Sync), outcome: Outcome<T>) -> Option<T> {
    outcome.reported(
        info,
        "cgp-auth",
        "throttling on the local store",
        "throttling shared again",
    )
}
