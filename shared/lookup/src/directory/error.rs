//! The one error type of the directory layer.

/// Why the directory gave no answer. "No such person" and "wrong password"
/// are answers, not errors (`Ok(None)`, [`super::Verdict::Invalid`]); an
/// error means the question could not be decided now, and a helper answers
/// it with a temporary failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// No server answered in time (down, hung, refusing, busy).
    #[error("directory unavailable: {0}")]
    Unavailable(String),
    /// A server answered with an error (a bad filter, no such base, a
    /// refused service bind): asking again will not help until it is fixed.
    #[error("directory error: {0}")]
    Failed(String),
}

impl From<crate::ldap::LdapError> for DirectoryError {
    fn from(e: crate::ldap::LdapError) -> Self {
        match e {
            crate::ldap::LdapError::Unavailable(s) => DirectoryError::Unavailable(s),
            crate::ldap::LdapError::Other(s) => DirectoryError::Failed(s),
        }
    }
}
