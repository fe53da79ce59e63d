//! Secrets in configuration files, and the rule that keeps them closed.
//!
//! A value typed [`Secret`] (a password, an API key written in the file) or
//! [`SecretFile`] (the path of a file that holds one) tells the loader, as it
//! is deserialized, where in the file it was. After parsing, [`super::load`]
//! checks the configuration file (when it holds a secret inline) and every
//! secret file that exists, as OpenSSH checks a private key:
//!
//! - nothing for others, and never writable by the group;
//! - owned by root or by the helper's own user (anyone else could rewrite it);
//! - readable by the group only when the helper does not own the file: that
//!   is how a helper running as CGP's own user reads a `root:cgp-helpers`
//!   0640 file. When the helper owns the file itself (CGP running as root,
//!   root's file), the group can only widen who reads the secret.
//!
//! A secret file read later ([`SecretFile::read`]) is checked again, so one
//! created or opened up after the start is refused too.

use serde::{Deserialize, Deserializer};
use std::cell::RefCell;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// A secret written in a configuration file. Never shown by `{:?}`. Read
/// only from TOML text (`toml::from_str`, as [`super::load`] does): where
/// it stands in the file is what names its key, and another deserializer
/// is refused rather than the mode check skipped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one call that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        let value = Spanned::<String>::deserialize(d)?;
        holds_secret(value.span());
        Ok(Secret(value.into_inner()))
    }
}

/// The path of a file that holds a secret on its first line
/// (`password_file`, `bind_password_file`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretFile(PathBuf);

impl SecretFile {
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The secret: the file's first line, once its mode passes the rule.
    pub fn read(&self) -> Result<Secret, SecretError> {
        let unreadable = |e: std::io::Error| SecretError::Unreadable {
            file: self.0.clone(),
            reason: e.to_string(),
        };
        let file = std::fs::File::open(&self.0).map_err(unreadable)?;
        // The mode of the file opened, not of whatever the path names later.
        let meta = file.metadata().map_err(unreadable)?;
        if let Some(exposure) = exposure(&meta) {
            let file = self.0.clone();
            return Err(SecretError::Exposed { file, exposure });
        }
        let text = std::io::read_to_string(file).map_err(unreadable)?;
        Ok(Secret(text.lines().next().unwrap_or_default().to_string()))
    }
}

impl From<&str> for SecretFile {
    fn from(s: &str) -> SecretFile {
        SecretFile(s.into())
    }
}

impl From<PathBuf> for SecretFile {
    fn from(p: PathBuf) -> SecretFile {
        SecretFile(p)
    }
}

impl<'de> Deserialize<'de> for SecretFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SecretFile, D::Error> {
        let value = Spanned::<PathBuf>::deserialize(d)?;
        note(Held {
            span: value.span(),
            file: Some(value.get_ref().clone()),
        });
        Ok(SecretFile(value.into_inner()))
    }
}

/// The secret given either in the file (`password`) or in a secret file
/// (`password_file`), as most back ends take it; none when neither is set.
/// Both set is refused by each back end's own checks, with its key names;
/// here the inline value wins.
pub fn either(
    inline: Option<&Secret>,
    file: Option<&SecretFile>,
) -> Result<Option<Secret>, SecretError> {
    match (inline, file) {
        (Some(s), _) => Ok(Some(s.clone())),
        (None, Some(f)) => f.read().map(Some),
        (None, None) => Ok(None),
    }
}

/// Tells the loader that the value at `span` of the file being loaded holds
/// a secret, for values that hold one only sometimes (a password in a URL,
/// a `{PLAIN}` password). Outside [`super::load`] it does nothing.
pub fn holds_secret(span: Range<usize>) {
    note(Held { span, file: None });
}

/// Why a file that holds a secret is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exposure {
    /// Some permission for others.
    Others { mode: u32, owner_is_helper: bool },
    /// Writable (or executable) by the group.
    GroupWrite { mode: u32, owner_is_helper: bool },
    /// Readable by the group of a file the helper owns.
    GroupRead { mode: u32 },
    /// Owned by a user who is neither root nor the helper's.
    Owner { uid: u32 },
}

impl std::fmt::Display for Exposure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exposure::Others { mode, .. } => write!(f, "mode {mode:04o}, open to others"),
            Exposure::GroupWrite { mode, .. } => {
                write!(f, "mode {mode:04o}, writable by its group")
            }
            Exposure::GroupRead { mode } => write!(
                f,
                "mode {mode:04o}, readable by its group (the helper owns it and needs no group)"
            ),
            Exposure::Owner { uid } => write!(
                f,
                "owned by uid {uid}, neither root nor the helper's user (who could rewrite it)"
            ),
        }
    }
}

impl Exposure {
    /// The command that closes the file.
    fn fix(&self, file: &Path) -> String {
        let file = file.display();
        match self {
            Exposure::Others {
                owner_is_helper: false,
                ..
            }
            | Exposure::GroupWrite {
                owner_is_helper: false,
                ..
            } => format!("chmod 640 {file}"),
            Exposure::Owner { .. } => format!("chown root {file}"),
            _ => format!("chmod 600 {file}"),
        }
    }
}

/// The rule on a secret-holding file's mode bits and owner, for a helper
/// running as `helper_uid`.
pub fn judge(mode: u32, file_uid: u32, helper_uid: u32) -> Option<Exposure> {
    let mode = mode & 0o7777;
    let owner_is_helper = file_uid == helper_uid;
    if mode & 0o007 != 0 {
        Some(Exposure::Others {
            mode,
            owner_is_helper,
        })
    } else if mode & 0o030 != 0 {
        Some(Exposure::GroupWrite {
            mode,
            owner_is_helper,
        })
    } else if !owner_is_helper && file_uid != 0 {
        Some(Exposure::Owner { uid: file_uid })
    } else if mode & 0o040 != 0 && owner_is_helper {
        Some(Exposure::GroupRead { mode })
    } else {
        None
    }
}

fn exposure(meta: &std::fs::Metadata) -> Option<Exposure> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    judge(meta.mode(), meta.uid(), me)
}

/// A secret-holding file the rule refuses, or cannot check.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("{}: {exposure}; a file that holds a secret must be closed to group and others: run `{}`", file.display(), exposure.fix(file))]
    Exposed { file: PathBuf, exposure: Exposure },
    #[error("{}: cannot read: {reason}", file.display())]
    Unreadable { file: PathBuf, reason: String },
}

/// Where a secret was seen while a file was parsed.
pub(super) struct Held {
    pub span: Range<usize>,
    /// The secret file it names; none: the secret is in the configuration.
    pub file: Option<PathBuf>,
}

thread_local! {
    /// Filled while [`super::load`] parses a file on this thread.
    static SEEN: RefCell<Option<Vec<Held>>> = const { RefCell::new(None) };
}

fn note(held: Held) {
    SEEN.with(|s| {
        if let Some(seen) = s.borrow_mut().as_mut() {
            seen.push(held);
        }
    });
}

/// Runs `parse` and returns what it returned with the secrets it saw.
pub(super) fn collect<T>(parse: impl FnOnce() -> T) -> (T, Vec<Held>) {
    let outer = SEEN.with(|s| s.replace(Some(Vec::new())));
    let parsed = parse();
    let seen = SEEN.with(|s| s.replace(outer)).unwrap_or_default();
    (parsed, seen)
}

/// The first secret-holding file the rule refuses: the configuration when
/// it holds a secret itself, then each secret file that exists (one that
/// does not yet is reported by the back end that reads it).
pub(super) fn check(config: &Path, seen: &[Held]) -> Option<(usize, SecretError)> {
    seen.iter().enumerate().find_map(|(i, held)| {
        let file = held.file.as_deref().unwrap_or(config);
        let meta = match std::fs::metadata(file) {
            Ok(m) => m,
            Err(_) if held.file.is_some() => return None,
            Err(e) => {
                let reason = e.to_string();
                let file = file.to_path_buf();
                return Some((i, SecretError::Unreadable { file, reason }));
            }
        };
        exposure(&meta).map(|exposure| {
            let file = file.to_path_buf();
            (i, SecretError::Exposed { file, exposure })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u32 = 1000;

    #[test]
    fn closed_files_pass() {
        for mode in [0o600, 0o400, 0o100600] {
            assert_eq!(judge(mode, ME, ME), None, "{mode:o}");
            assert_eq!(judge(mode, 0, 0), None, "{mode:o}");
        }
        // Root's file, read by the helper through its group (the package's
        // `root:cgp-helpers` 0640 with CGP running as its own user).
        assert_eq!(judge(0o640, 0, ME), None);
        assert_eq!(judge(0o440, 0, ME), None);
    }

    #[test]
    fn open_files_are_refused_with_the_fix() {
        let f = Path::new("/etc/x.toml");
        let e = judge(0o644, ME, ME).unwrap();
        assert_eq!(e.to_string(), "mode 0644, open to others");
        assert_eq!(e.fix(f), "chmod 600 /etc/x.toml");
        let e = judge(0o640, ME, ME).unwrap();
        assert!(matches!(e, Exposure::GroupRead { mode: 0o640 }), "{e}");
        assert_eq!(e.fix(f), "chmod 600 /etc/x.toml");
        // Root on a standard install owns its file: the group is too much.
        assert!(matches!(
            judge(0o640, 0, 0),
            Some(Exposure::GroupRead { .. })
        ));
        let e = judge(0o660, 0, ME).unwrap();
        assert_eq!(e.to_string(), "mode 0660, writable by its group");
        assert_eq!(e.fix(f), "chmod 640 /etc/x.toml");
        let e = judge(0o604, 0, ME).unwrap();
        assert_eq!(e.fix(f), "chmod 640 /etc/x.toml");
        let e = judge(0o600, 1234, ME).unwrap();
        assert_eq!(e, Exposure::Owner { uid: 1234 });
        assert_eq!(e.fix(f), "chown root /etc/x.toml");
    }

    #[test]
    fn debug_hides_the_secret() {
        let s = Secret::from("hunter2");
        assert_eq!(format!("{s:?}"), "<hidden>");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn a_secret_file_is_checked_when_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("cgp-secret-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pw");
        std::fs::write(&path, "s3cret\nignored\n").unwrap();
        let file = SecretFile::from(path.clone());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = file.read().unwrap_err().to_string();
        assert!(e.contains("mode 0644, open to others"), "{e}");
        assert!(e.contains(&format!("chmod 600 {}", path.display())), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(file.read().unwrap().expose(), "s3cret");
        assert_eq!(
            either(Some(&"inline".into()), Some(&file)).unwrap(),
            Some("inline".into())
        );
        assert_eq!(either(None, Some(&file)).unwrap(), Some("s3cret".into()));
        assert_eq!(either(None, None).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
