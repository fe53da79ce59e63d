//! Where `sender_limit` counts an authenticated sender's messages: the
//! local sled store (one server), or Redis for every member of a Dynamic
//! Cluster at once.
//!
//! Both keep, per sender and window length, the messages counted within
//! the window, by queue ID: a message filtered again (CGP retries a `FILE`
//! request after a restart) is found and not counted twice, and a message
//! over the limit is not kept, so a sender never has more than the limit
//! kept. The window slides exactly (each message drops out of it at its own
//! time), which a pair of fixed buckets only approximates; with at most
//! `limit` entries per sender that costs little.

use crate::config::Rate;
use cgp_lookup::store::remote::{Health, RedisStore};
use cgp_lookup::store::{Backend, LOCK_WAIT, Store, StoreConfig};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The counting store.
pub enum Counter {
    Local { tree: sled::Tree, _store: Store },
    Shared { redis: RedisStore, host: String },
}

/// A count, or why there is none, and the shared store's health change.
pub struct Counted {
    pub result: Result<u64, String>,
    pub health: Option<Health>,
}

impl Counter {
    /// Opens the configured store (sled: may wait up to `LOCK_WAIT` for a
    /// lock; call it off the async workers). Redis connects at the first
    /// count, so that one down at start costs no more than one down later.
    pub fn open(cfg: &StoreConfig) -> Result<Counter, String> {
        match cfg.backend {
            Backend::Redis => Ok(Counter::Shared {
                redis: RedisStore::new(&cfg.redis).map_err(|e| e.to_string())?,
                host: host_name(),
            }),
            Backend::Sled => {
                let store = match &cfg.path {
                    Some(path) => Store::open(path, LOCK_WAIT)?.0,
                    None => Store::temporary().map_err(|e| format!("temporary store: {e}"))?,
                };
                let tree = store
                    .tree("sender_limit")
                    .map_err(|e| format!("store: {e}"))?;
                Ok(Counter::Local {
                    tree,
                    _store: store,
                })
            }
        }
    }

    /// Counts the message `queue_id` of `user` (lower case) under `rate`
    /// and gives the window's count with it (`rate.count + 1` once over).
    pub async fn count(&self, user: &str, queue_id: &str, rate: Rate) -> Counted {
        let window_ms = rate.window.as_millis().to_string();
        match self {
            Counter::Shared { redis, host } => {
                let key = redis.key(&["filter", "sent", &window_ms, user]);
                // Queue IDs are each member's own: the host tells them apart.
                let member = format!("{host}:{queue_id}");
                let o = redis
                    .count_in_window(&key, &member, rate.window, rate.count)
                    .await;
                Counted {
                    result: o.result.map_err(|e| e.to_string()),
                    health: o.health,
                }
            }
            Counter::Local { tree, .. } => {
                let (tree, key, id) = (
                    tree.clone(),
                    format!("{window_ms}:{user}"),
                    queue_id.to_string(),
                );
                // On disk before the verdict: a message filtered again after
                // a restart must find its count. Blocking, so on the pool.
                let result = cgp_runtime::compute(move || {
                    let n = count_local(&tree, &key, &id, rate)?;
                    tree.flush().map_err(|e| format!("store: {e}"))?;
                    Ok(n)
                })
                .await;
                Counted {
                    result,
                    health: None,
                }
            }
        }
    }
}

/// The local window: one sled value per key, the entries `(ms, queue ID)`
/// in time order, updated atomically.
fn count_local(tree: &sled::Tree, key: &str, queue_id: &str, rate: Rate) -> Result<u64, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64;
    let since = now.saturating_sub(rate.window.as_millis() as u64);
    let mut n = 0;
    tree.fetch_and_update(key.as_bytes(), |old| {
        let mut entries: Vec<(u64, &[u8])> = decode(old.unwrap_or_default())
            .into_iter()
            .filter(|(at, _)| *at > since)
            .collect();
        if entries.iter().any(|(_, id)| *id == queue_id.as_bytes()) {
            n = entries.len() as u64;
        } else if entries.len() as u64 >= rate.count {
            n = rate.count + 1;
        } else {
            entries.push((now, queue_id.as_bytes()));
            n = entries.len() as u64;
        }
        (!entries.is_empty()).then(|| encode(&entries))
    })
    .map_err(|e| format!("store: {e}"))?;
    Ok(n)
}

/// `[ms: u64 BE][length: u16 BE][id]…`
fn encode(entries: &[(u64, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (at, id) in entries {
        let id = &id[..id.len().min(u16::MAX as usize)];
        out.extend_from_slice(&at.to_be_bytes());
        out.extend_from_slice(&(id.len() as u16).to_be_bytes());
        out.extend_from_slice(id);
    }
    out
}

/// The entries of `encode`; a cut entry at the end is dropped.
fn decode(mut bytes: &[u8]) -> Vec<(u64, &[u8])> {
    let mut out = Vec::new();
    while bytes.len() >= 10 {
        let at = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
        let len = u16::from_be_bytes([bytes[8], bytes[9]]) as usize;
        let Some(id) = bytes.get(10..10 + len) else {
            break;
        };
        out.push((at, id));
        bytes = &bytes[10 + len..];
    }
    out
}

/// This machine's name, which tells the members of a cluster apart.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_window_counts_each_message_once_and_keeps_at_most_the_limit() {
        let store = Store::temporary().unwrap();
        let tree = store.tree("t").unwrap();
        let rate = Rate {
            count: 2,
            window: Duration::from_secs(3600),
        };
        let count = |id: &str| count_local(&tree, "3600000:a@x.test", id, rate).unwrap();
        assert_eq!(count("1"), 1);
        assert_eq!(count("1"), 1, "the same queue file counts once");
        assert_eq!(count("2"), 2);
        assert_eq!(count("3"), 3, "over the limit");
        assert_eq!(count("4"), 3);
        assert_eq!(count("2"), 2, "a counted message stays within the limit");
        let kept = tree.get("3600000:a@x.test").unwrap().unwrap();
        assert_eq!(decode(&kept).len(), 2);
        // Another sender, another count.
        assert_eq!(
            count_local(&tree, "3600000:b@x.test", "1", rate).unwrap(),
            1
        );
    }

    #[test]
    fn the_local_window_slides() {
        let store = Store::temporary().unwrap();
        let tree = store.tree("t").unwrap();
        let rate = Rate {
            count: 1,
            window: Duration::from_millis(200),
        };
        assert_eq!(count_local(&tree, "k", "1", rate).unwrap(), 1);
        assert_eq!(count_local(&tree, "k", "2", rate).unwrap(), 2);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(count_local(&tree, "k", "3", rate).unwrap(), 1);
    }

    #[test]
    fn entries_round_trip() {
        let e: Vec<(u64, &[u8])> = vec![(1, b"a"), (u64::MAX, b""), (7, b"queue\n1")];
        assert_eq!(decode(&encode(&e)), e);
        assert!(decode(&[0; 9]).is_empty());
    }
}
