//! Stored password hashes in the forms directories use (RFC 2307 style
//! `{SCHEME}` prefixes, as OpenLDAP's slappasswd and Dovecot write them, and
//! the bare modular-crypt forms of bcrypt and argon2), checked in constant
//! time.

use argon2::PasswordVerifier;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::Digest;
use subtle::ConstantTimeEq;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

impl Stored {
    pub fn parse(stored: &str, allow_plain: bool) -> Result<Stored, String> {
        let (scheme, body) = match stored.strip_prefix('{').and_then(|s| s.split_once('}')) {
            Some((scheme, body)) => (scheme.to_ascii_uppercase(), body),
            None => (String::new(), stored),
        };
        let sha = |alg: Sha, salted: bool| -> Result<Stored, String> {
            let raw = STANDARD
                .decode(body.trim())
                .map_err(|_| format!("{{{scheme}}} value is not base64"))?;
            let n = alg.len();
            if raw.len() < n || (!salted && raw.len() != n) || (salted && raw.len() == n) {
                return Err(format!("{{{scheme}}} value has the wrong length"));
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
                    .map_err(|e| format!("bad bcrypt hash: {e}"))?;
                Ok(Stored::Bcrypt(body.to_string()))
            }
            "ARGON2" | "ARGON2I" | "ARGON2ID" | "" if body.starts_with("$argon2") => {
                let parsed =
                    argon2::PasswordHash::new(body).map_err(|e| format!("bad argon2 hash: {e}"))?;
                if parsed.hash.is_none() || parsed.salt.is_none() {
                    return Err("bad argon2 hash: no salt or hash".into());
                }
                Ok(Stored::Argon2(body.to_string()))
            }
            "PLAIN" | "CLEARTEXT" | "" if allow_plain => {
                Ok(Stored::Plain(body.as_bytes().to_vec()))
            }
            "PLAIN" | "CLEARTEXT" | "" => Err(
                "clear-text passwords are refused (set static.allow_plaintext to allow them)"
                    .into(),
            ),
            other => Err(format!("unsupported password scheme {{{other}}}")),
        }
    }

    /// Whether `password` matches. bcrypt and argon2 are slow on purpose:
    /// call this off the async threads.
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
}

/// A new stored value for `password` (the `--hash-password` command).
pub fn make(scheme: crate::cli::HashScheme, password: &[u8]) -> Result<String, String> {
    use crate::cli::HashScheme;
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("random source: {e}"))?;
    match scheme {
        HashScheme::Ssha512 => {
            let mut raw = Sha::Sha512.digest(&[password, &salt]);
            raw.extend_from_slice(&salt);
            Ok(format!("{{SSHA512}}{}", STANDARD.encode(raw)))
        }
        HashScheme::Bcrypt => bcrypt::hash_with_salt(password, bcrypt::DEFAULT_COST, salt)
            .map(|h| h.format_for_version(bcrypt::Version::TwoB))
            .map_err(|e| e.to_string()),
        HashScheme::Argon2 => {
            use argon2::password_hash::{PasswordHasher, SaltString};
            let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
            argon2::Argon2::default()
                .hash_password(password, &salt)
                .map(|h| h.to_string())
                .map_err(|e| e.to_string())
        }
    }
}

fn is_bcrypt(s: &str) -> bool {
    ["$2a$", "$2b$", "$2y$", "$2x$"]
        .iter()
        .any(|p| s.starts_with(p))
}

/// Checks a password against a stored value, off the async threads when the
/// scheme is slow. An unparseable stored value never matches.
pub async fn verify(stored: Stored, password: Vec<u8>) -> bool {
    #[cfg(test)]
    tests::VERIFIED.with(|v| v.borrow_mut().push(stored.clone()));
    if stored.is_slow() {
        tokio::task::spawn_blocking(move || stored.verify(&password))
            .await
            .unwrap_or(false)
    } else {
        stored.verify(&password)
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    thread_local! {
        /// The stored values [`verify`] checked on this thread, so that
        /// tests can see which paths check a password.
        pub static VERIFIED: std::cell::RefCell<Vec<Stored>> = const { std::cell::RefCell::new(Vec::new()) };
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
        let b = bcrypt::hash_with_salt("s3cret", 4, [7u8; 16])
            .unwrap()
            .format_for_version(bcrypt::Version::TwoB);
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
        use crate::cli::HashScheme;
        for scheme in [HashScheme::Ssha512, HashScheme::Bcrypt, HashScheme::Argon2] {
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
}
