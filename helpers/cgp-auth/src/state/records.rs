//! The records the state keeps in sled, each with its key and a small
//! encode/decode, so that the byte layout is written down once.
//!
//! | tree | key | value |
//! |---|---|---|
//! | cache | `p` account | [`Positive`]: fingerprint (32), stamp (8) |
//! | cache | `n` fingerprint | [`Negative`]: stamp (8) |
//! | throttle | `u` account, `4` IPv4 address, `6` IPv6 /64 | [`Failures`]: count (4), stamp (8), recent tags (8 each) |
//! | meta | `salt` | the fingerprint salt (32) |
//!
//! Numbers are big-endian; stamps are milliseconds since the Unix epoch.
//!
//! The same throttle keys in the shared store (Redis), under the configured
//! namespace: `NS:auth:throttle:u:ACCOUNT`, `…:4:HEX` (IPv4 address),
//! `…:6:HEX` (IPv6 /64), each a hash of `n` (the count) and `r` (the recent
//! tags, hex, each followed by `,`) that expires `reset_after` after the
//! latest failure. Account names are not secrets; a tag is 8 bytes of a
//! fingerprint salted with this member's salt, which never leaves its local
//! store, so nothing in Redis lets a reader test password guesses.

use super::Fingerprint;
use std::net::IpAddr;

/// Key prefixes.
const POSITIVE: u8 = b'p';
const NEGATIVE: u8 = b'n';
const ACCOUNT: u8 = b'u';
const IPV4: u8 = b'4';
const IPV6: u8 = b'6';

/// The bytes of a failed password's fingerprint kept to spot a retry.
pub type Tag = [u8; 8];

fn key(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(body.len() + 1);
    k.push(kind);
    k.extend_from_slice(body);
    k
}

pub fn positive_key(account: &str) -> Vec<u8> {
    key(POSITIVE, account.as_bytes())
}

pub fn negative_key(fp: &Fingerprint) -> Vec<u8> {
    key(NEGATIVE, fp)
}

/// The throttle keys of a login: the account's, and the client's when known
/// (an IPv6 client usually holds a whole /64).
pub fn throttle_keys(account: &str, ip: Option<IpAddr>) -> Vec<Vec<u8>> {
    let mut keys = vec![account_key(account)];
    match ip {
        Some(IpAddr::V4(a)) => keys.push(key(IPV4, &a.octets())),
        Some(IpAddr::V6(a)) => keys.push(key(IPV6, &a.octets()[..8])),
        None => {}
    }
    keys
}

/// The shared store's names for [`throttle_keys`], after the namespace.
pub fn shared_throttle_keys(account: &str, ip: Option<IpAddr>) -> Vec<[String; 4]> {
    let mut keys = vec![shared_account_key(account)];
    match ip {
        Some(IpAddr::V4(a)) => keys.push(shared(IPV4, hex(&a.octets()))),
        Some(IpAddr::V6(a)) => keys.push(shared(IPV6, hex(&a.octets()[..8]))),
        None => {}
    }
    keys
}

pub fn shared_account_key(account: &str) -> [String; 4] {
    shared(ACCOUNT, account.to_string())
}

fn shared(kind: u8, id: String) -> [String; 4] {
    [
        "auth".into(),
        "throttle".into(),
        char::from(kind).to_string(),
        id,
    ]
}

/// A tag as the shared store keeps it.
pub fn shared_tag(tag: &Tag) -> String {
    hex(tag)
}

/// Lower-case hex into one string, not a string per byte (this runs at
/// every login on the shared store).
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub fn account_key(account: &str) -> Vec<u8> {
    key(ACCOUNT, account.as_bytes())
}

fn u64_at(v: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(at..at + 8)?.try_into().ok()?))
}

/// The stamp of a cache record of either kind, by its key.
pub fn cache_stamp(key: &[u8], value: &[u8]) -> Option<u64> {
    match *key.first()? {
        POSITIVE => Positive::decode(value).map(|p| p.stamp),
        NEGATIVE => Negative::decode(value).map(|n| n.stamp),
        _ => None,
    }
}

/// An account's latest good password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Positive {
    pub fp: Fingerprint,
    pub stamp: u64,
}

impl Positive {
    pub fn encode(&self) -> [u8; 40] {
        let mut v = [0u8; 40];
        v[..32].copy_from_slice(&self.fp);
        v[32..].copy_from_slice(&self.stamp.to_be_bytes());
        v
    }

    pub fn decode(v: &[u8]) -> Option<Positive> {
        Some(Positive {
            fp: v.get(..32)?.try_into().ok()?,
            stamp: u64_at(v, 32)?,
        })
    }
}

/// A password found wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negative {
    pub stamp: u64,
}

impl Negative {
    pub fn encode(&self) -> [u8; 8] {
        self.stamp.to_be_bytes()
    }

    pub fn decode(v: &[u8]) -> Option<Negative> {
        Some(Negative {
            stamp: u64_at(v, 0)?,
        })
    }
}

/// The failures of one throttle key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failures {
    pub count: u32,
    /// When the last one happened.
    pub stamp: u64,
    /// The latest failed passwords' tags, oldest first.
    pub recent: Vec<Tag>,
}

impl Failures {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(12 + 8 * self.recent.len());
        v.extend_from_slice(&self.count.to_be_bytes());
        v.extend_from_slice(&self.stamp.to_be_bytes());
        for tag in &self.recent {
            v.extend_from_slice(tag);
        }
        v
    }

    pub fn decode(v: &[u8]) -> Option<Failures> {
        Some(Failures {
            count: u32::from_be_bytes(v.get(..4)?.try_into().ok()?),
            stamp: u64_at(v, 4)?,
            recent: v
                .get(12..)?
                .chunks_exact(8)
                .map(|c| c.try_into().expect("8 bytes"))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_short_values_are_refused() {
        let p = Positive {
            fp: [7; 32],
            stamp: 1_700_000_000_123,
        };
        assert_eq!(Positive::decode(&p.encode()), Some(p));
        assert_eq!(Positive::decode(&p.encode()[..39]), None);
        let n = Negative { stamp: 42 };
        assert_eq!(Negative::decode(&n.encode()), Some(n));
        let f = Failures {
            count: 3,
            stamp: 99,
            recent: vec![[1; 8], [2; 8]],
        };
        assert_eq!(Failures::decode(&f.encode()), Some(f));
        assert_eq!(Failures::decode(&[0; 11]), None);
        assert_eq!(
            cache_stamp(&positive_key("a@x"), &p.encode()),
            Some(p.stamp)
        );
        assert_eq!(cache_stamp(&negative_key(&[0; 32]), &n.encode()), Some(42));
        assert_eq!(cache_stamp(b"zz", &n.encode()), None);
    }

    #[test]
    fn shared_keys_name_the_account_and_the_address_in_hex() {
        let v4 = shared_throttle_keys("a@x", Some("192.0.2.10".parse().unwrap()));
        assert_eq!(v4[0].join(":"), "auth:throttle:u:a@x");
        assert_eq!(v4[1].join(":"), "auth:throttle:4:c000020a");
        // An IPv6 client counts by its /64.
        let v6 = shared_throttle_keys("a@x", Some("2001:db8:0:ff::1".parse().unwrap()));
        assert_eq!(v6[1].join(":"), "auth:throttle:6:20010db8000000ff");
        assert_eq!(
            shared_tag(&[0, 1, 0xab, 0xff, 2, 3, 4, 5]),
            "0001abff02030405"
        );
    }
}
