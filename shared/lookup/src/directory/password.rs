//! Stored password hashes in the forms directories use (RFC 2307 style
//! `{SCHEME}` prefixes, as OpenLDAP's slappasswd and Dovecot write them, and
//! the bare modular-crypt forms of bcrypt and argon2), checked in constant
//! time; and the checks an unknown name costs.

use argon2::PasswordVerifier;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::Digest;
use std::hash::{BuildHasher, RandomState};
use subtle::ConstantTimeEq;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sha {
    Sha1,
    Sha256,
    Sha512,
}

impl Sha {
    fn len(self) -> usize {
        match self {
            Sha::Sha1 => 20,
            Sha::Sha256 => 32,
            Sha::Sha512 => 64,
        }
    }

    fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().to_vec()
        }
        match self {
            Sha::Sha1 => run::<sha1::Sha1>(parts),
            Sha::Sha256 => run::<sha2::Sha256>(parts),
            Sha::Sha512 => run::<sha2::Sha512>(parts),
        }
    }
}

/// Why a stored value cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("{{{0}}} value is not base64")]
    NotBase64(String),
    #[error("{{{0}}} value has the wrong length")]
    WrongLength(String),
    #[error("bad bcrypt hash: {0}")]
    Bcrypt(String),
    #[error("bad argon2 hash: {0}")]
    Argon2(String),
    #[error("clear-text passwords are refused (set allow_plaintext to allow them)")]
    Plaintext,
    #[error("unsupported password scheme {{{0}}}")]
    Unsupported(String),
    #[error("random source: {0}")]
    Random(String),
}

/// A parsed stored password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// `{SHA}`/`{SSHA}` and the 256/512 variants: digest(password + salt).
    Sha {
        alg: Sha,
        hash: Vec<u8>,
        salt: Vec<u8>,
    },
    /// bcrypt in modular crypt form (`$2a$`, `$2b$`, `$2y$`).
    Bcrypt(String),
    /// argon2 in PHC form (`$argon2id$v=19$…`).
    Argon2(String),
    /// Clear text, only where explicitly allowed.
    Plain(Vec<u8>),
}

/// The schemes `--hash-password` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewScheme {
    Ssha512,
    Bcrypt,
    Argon2,
}

impl Stored {
    pub fn parse(stored: &str, allow_plain: bool) -> Result<Stored, PasswordError> {
        let (scheme, body) = match stored.strip_prefix('{').and_then(|s| s.split_once('}')) {
            Some((scheme, body)) => (scheme.to_ascii_uppercase(), body),
            None => (String::new(), stored),
        };
        let sha = |alg: Sha, salted: bool| -> Result<Stored, PasswordError> {
            let raw = STANDARD
                .decode(body.trim())
                .map_err(|_| PasswordError::NotBase64(scheme.clone()))?;
            let n = alg.len();
            if raw.len() < n || (!salted && raw.len() != n) || (salted && raw.len() == n) {
                return Err(PasswordError::WrongLength(scheme.clone()));
            }
            Ok(Stored::Sha {
                alg,
                hash: raw[..n].to_vec(),
                salt: raw[n..].to_vec(),
            })
        };
        match scheme.as_str() {
            "SHA" => sha(Sha::Sha1, false),
            "SSHA" => sha(Sha::Sha1, true),
            "SHA256" => sha(Sha::Sha256, false),
            "SSHA256" => sha(Sha::Sha256, true),
            "SHA512" => sha(Sha::Sha512, false),
            "SSHA512" => sha(Sha::Sha512, true),
            "BLF-CRYPT" | "BCRYPT" | "CRYPT" | "" if is_bcrypt(body) => {
                body.parse::<bcrypt::HashParts>()
                    .map_err(|e| PasswordError::Bcrypt(e.to_string()))?;
                Ok(Stored::Bcrypt(body.to_string()))
            }
            "ARGON2" | "ARGON2I" | "ARGON2ID" | "" if body.starts_with("$argon2") => {
                let parsed = argon2::PasswordHash::new(body)
                    .map_err(|e| PasswordError::Argon2(e.to_string()))?;
                if parsed.hash.is_none() || parsed.salt.is_none() {
                    return Err(PasswordError::Argon2("no salt or hash".into()));
                }
                Ok(Stored::Argon2(body.to_string()))
            }
            "PLAIN" | "CLEARTEXT" | "" if allow_plain => {
                Ok(Stored::Plain(body.as_bytes().to_vec()))
            }
            "PLAIN" | "CLEARTEXT" | "" => Err(PasswordError::Plaintext),
            other => Err(PasswordError::Unsupported(other.to_string())),
        }
    }

    /// Whether `password` matches. bcrypt and argon2 are slow on purpose:
    /// call [`check`] from async code.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            Stored::Sha { alg, hash, salt } => {
                bool::from(alg.digest(&[password, salt]).ct_eq(hash))
            }
            Stored::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            Stored::Argon2(h) => argon2::PasswordHash::new(h).is_ok_and(|parsed| {
                argon2::Argon2::default()
                    .verify_password(password, &parsed)
                    .is_ok()
            }),
            Stored::Plain(p) => bool::from(p.as_slice().ct_eq(password)),
        }
    }

    /// True for the schemes worth moving off the async threads.
    pub fn is_slow(&self) -> bool {
        matches!(self, Stored::Bcrypt(_) | Stored::Argon2(_))
    }

    /// The scheme and the parameters its cost depends on: values of one
    /// cost class take one time to check.
    pub fn cost_class(&self) -> String {
        match self {
            Stored::Sha { alg, salt, .. } => format!("{alg:?}/{}", salt.len()),
            // `$2b$12$`: variant and cost.
            Stored::Bcrypt(h) => h.chars().take(7).collect(),
            // `$argon2id$v=19$m=19456,t=2,p=1$`: everything before the salt.
            Stored::Argon2(h) => h.rsplitn(3, '$').last().unwrap_or_default().to_string(),
            Stored::Plain(p) => format!("plain/{}", p.len()),
        }
    }

    /// A value of the same scheme and parameters for a random password, so
    /// that checking it costs what checking this one costs. Slow for bcrypt
    /// and argon2 (one hash): done when a configuration is loaded.
    pub fn dummy_like(&self) -> Result<Stored, PasswordError> {
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).map_err(|e| PasswordError::Random(e.to_string()))?;
        let (secret, salt16) = (
            &random[..16],
            <[u8; 16]>::try_from(&random[16..]).unwrap_or_default(),
        );
        Ok(match self {
            Stored::Sha { alg, salt, .. } => Stored::Sha {
                alg: *alg,
                hash: alg.digest(&[secret]),
                salt: salt
                    .iter()
                    .zip(random.iter().cycle())
                    .map(|(_, r)| *r)
                    .collect(),
            },
            Stored::Bcrypt(h) => {
                let parts: bcrypt::HashParts = h
                    .parse()
                    .map_err(|e: bcrypt::BcryptError| PasswordError::Bcrypt(e.to_string()))?;
                let made = bcrypt::hash_with_salt(secret, parts.get_cost(), salt16)
                    .map_err(|e| PasswordError::Bcrypt(e.to_string()))?;
                Stored::Bcrypt(made.format_for_version(bcrypt::Version::TwoB))
            }
            Stored::Argon2(h) => {
                use argon2::password_hash::{PasswordHasher, SaltString};
                let parsed = argon2::PasswordHash::new(h)
                    .map_err(|e| PasswordError::Argon2(e.to_string()))?;
                let err = |e: argon2::password_hash::Error| PasswordError::Argon2(e.to_string());
                let algorithm = argon2::Algorithm::try_from(parsed.algorithm).map_err(err)?;
                let version = parsed
                    .version
                    .map(argon2::Version::try_from)
                    .transpose()
                    .map_err(|e| PasswordError::Argon2(e.to_string()))?
                    .unwrap_or_default();
                let params = argon2::Params::try_from(&parsed).map_err(err)?;
                let salt = SaltString::encode_b64(&salt16).map_err(err)?;
                let made = argon2::Argon2::new(algorithm, version, params)
                    .hash_password(secret, &salt)
                    .map_err(err)?;
                Stored::Argon2(made.to_string())
            }
            Stored::Plain(p) => Stored::Plain(
                p.iter()
                    .zip(random.iter().cycle())
                    .map(|(_, r)| *r)
                    .collect(),
            ),
        })
    }
}

/// A new stored value for `password` (the `--hash-password` command).
pub fn make(scheme: NewScheme, password: &[u8]) -> Result<String, PasswordError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| PasswordError::Random(e.to_string()))?;
    match scheme {
        NewScheme::Ssha512 => {
            let mut raw = Sha::Sha512.digest(&[password, &salt]);
            raw.extend_from_slice(&salt);
            Ok(format!("{{SSHA512}}{}", STANDARD.encode(raw)))
        }
        NewScheme::Bcrypt => bcrypt::hash_with_salt(password, bcrypt::DEFAULT_COST, salt)
            .map(|h| h.format_for_version(bcrypt::Version::TwoB))
            .map_err(|e| PasswordError::Bcrypt(e.to_string())),
        NewScheme::Argon2 => {
            use argon2::password_hash::{PasswordHasher, SaltString};
            let salt =
                SaltString::encode_b64(&salt).map_err(|e| PasswordError::Argon2(e.to_string()))?;
            argon2::Argon2::default()
                .hash_password(password, &salt)
                .map(|h| h.to_string())
                .map_err(|e| PasswordError::Argon2(e.to_string()))
        }
    }
}

fn is_bcrypt(s: &str) -> bool {
    ["$2a$", "$2b$", "$2y$", "$2x$"]
        .iter()
        .any(|p| s.starts_with(p))
}

/// Checks a password against a stored value, through
/// [`cgp_runtime::compute`] when the scheme is slow.
pub async fn check(stored: &Stored, password: &[u8]) -> bool {
    if stored.is_slow() {
        let (stored, password) = (stored.clone(), password.to_vec());
        cgp_runtime::compute(move || stored.verify(&password)).await
    } else {
        stored.verify(password)
    }
}

/// What an unknown name's password is checked against, so that a miss
/// costs what a real check costs whatever mix of schemes the users have:
/// one dummy per cost class, made for a random password with the same
/// parameters, and chosen per name by a keyed hash in proportion to how
/// many users have that class. The same name always takes the same dummy
/// (as a real user always takes their own scheme), and which dummy a name
/// takes cannot be worked out without the key, made at load.
pub struct Dummies {
    /// (users of the class so far, cumulative) and the class's dummy.
    classes: Vec<(usize, Stored)>,
    total: usize,
    key: RandomState,
}

impl Dummies {
    /// From the stored values of every user; no dummy with no users.
    pub fn new<'a>(stored: impl IntoIterator<Item = &'a Stored>) -> Result<Dummies, PasswordError> {
        let mut counts: Vec<(String, usize, &Stored)> = Vec::new();
        for s in stored {
            let class = s.cost_class();
            match counts.iter_mut().find(|(c, _, _)| *c == class) {
                Some((_, n, _)) => *n += 1,
                None => counts.push((class, 1, s)),
            }
        }
        let mut classes = Vec::with_capacity(counts.len());
        let mut total = 0;
        for (_, n, s) in counts {
            total += n;
            classes.push((total, s.dummy_like()?));
        }
        Ok(Dummies {
            classes,
            total,
            key: RandomState::new(),
        })
    }

    /// The dummy for a name; `None` with no users at all.
    pub fn pick(&self, name: &str) -> Option<&Stored> {
        if self.total == 0 {
            return None;
        }
        let slot = (self.key.hash_one(name) % self.total as u64) as usize;
        self.classes
            .iter()
            .find(|(upto, _)| slot < *upto)
            .map(|(_, s)| s)
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn ssha(password: &[u8], salt: &[u8]) -> String {
        let mut raw = Sha::Sha1.digest(&[password, salt]);
        raw.extend_from_slice(salt);
        format!("{{SSHA}}{}", STANDARD.encode(raw))
    }

    pub fn bcrypt4(password: &str) -> String {
        bcrypt::hash_with_salt(password, 4, [7u8; 16])
            .unwrap()
            .format_for_version(bcrypt::Version::TwoB)
    }

    #[test]
    fn slappasswd_ssha_matches() {
        // slappasswd -h '{SSHA}' -s alicepw
        let s = Stored::parse("{SSHA}X2W8QR6LP+CsG3vDkc6H+BFqXBKaduqD", false).unwrap();
        assert!(s.verify(b"alicepw"));
        assert!(!s.verify(b"alicepw "));
        assert!(!s.verify(b""));
    }

    #[test]
    fn all_sha_variants_round_trip() {
        for (scheme, alg) in [
            ("SSHA", Sha::Sha1),
            ("SSHA256", Sha::Sha256),
            ("SSHA512", Sha::Sha512),
        ] {
            let salt = b"saltsalt";
            let mut raw = alg.digest(&[b"pw \"x\"", salt]);
            raw.extend_from_slice(salt);
            let s = Stored::parse(&format!("{{{scheme}}}{}", STANDARD.encode(raw)), false).unwrap();
            assert!(s.verify(b"pw \"x\""), "{scheme}");
            assert!(!s.verify(b"pw"), "{scheme}");
        }
        let unsalted = format!("{{SHA}}{}", STANDARD.encode(Sha::Sha1.digest(&[b"abc"])));
        assert!(Stored::parse(&unsalted, false).unwrap().verify(b"abc"));
    }

    #[test]
    fn bcrypt_and_argon2() {
        let b = bcrypt4("s3cret");
        for form in [
            b.clone(),
            format!("{{BLF-CRYPT}}{b}"),
            format!("{{CRYPT}}{b}"),
        ] {
            let s = Stored::parse(&form, false).unwrap();
            assert!(s.verify(b"s3cret"));
            assert!(!s.verify(b"s3cret!"));
        }
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let a = argon2::Argon2::default()
            .hash_password(b"s3cret", &salt)
            .unwrap()
            .to_string();
        for form in [a.clone(), format!("{{ARGON2}}{a}")] {
            let s = Stored::parse(&form, false).unwrap();
            assert!(s.verify(b"s3cret"));
            assert!(!s.verify(b"other"));
        }
    }

    #[test]
    fn made_hashes_verify() {
        for scheme in [NewScheme::Ssha512, NewScheme::Bcrypt, NewScheme::Argon2] {
            let made = make(scheme, "pa ss\"é".as_bytes()).unwrap();
            let s = Stored::parse(&made, false).unwrap();
            assert!(s.verify("pa ss\"é".as_bytes()), "{made}");
            assert!(!s.verify(b"pa ss"), "{made}");
        }
    }

    #[test]
    fn plain_only_when_allowed_and_junk_refused() {
        assert!(Stored::parse("secret", false).is_err());
        assert!(Stored::parse("{PLAIN}secret", false).is_err());
        assert!(
            Stored::parse("{PLAIN}secret", true)
                .unwrap()
                .verify(b"secret")
        );
        assert!(Stored::parse("{MD5}abc", false).is_err());
        assert!(Stored::parse("{SSHA}not base64!", false).is_err());
        assert!(Stored::parse("{SSHA}", false).is_err());
        assert!(Stored::parse("$2b$04$short", false).is_err());
        assert!(Stored::parse("$argon2id$junk", false).is_err());
    }

    #[test]
    fn dummies_have_the_parameters_of_the_users_and_their_mix() {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let argon = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(1024, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &SaltString::encode_b64(b"0123456789abcdef").unwrap())
        .unwrap()
        .to_string();
        let users: Vec<Stored> = [ssha(b"pw", b"salt0001"), bcrypt4("pw"), argon]
            .iter()
            .map(|s| Stored::parse(s, false).unwrap())
            .collect();
        let dummies = Dummies::new(&users).unwrap();
        let mut seen = std::collections::HashMap::new();
        for i in 0..3000 {
            let name = format!("nobody{i}@x");
            let d = dummies.pick(&name).unwrap();
            // The same name, the same dummy.
            assert_eq!(dummies.pick(&name), Some(d));
            // Never the user's own value, and never their password.
            assert!(!users.contains(d));
            assert!(!d.verify(b"pw"));
            *seen.entry(d.cost_class()).or_insert(0) += 1;
        }
        // Every class of the users, in about their share (a third each).
        assert_eq!(seen.len(), 3, "{seen:?}");
        for u in &users {
            let n = seen[&u.cost_class()];
            assert!((800..1200).contains(&n), "{seen:?}");
        }
        assert!(Dummies::new([]).unwrap().pick("a@b").is_none());
    }
}
