//! Reading password-policy verdicts out of a failed (or successful) bind:
//! the OpenLDAP/draft-behera ppolicy response control, and the sub-codes
//! Active Directory puts in the diagnostic message.

use super::BindOutcome;
use ldap3::controls::RawControl;

/// OID of the password policy control (draft-behera-ldap-password-policy).
pub const OID: &str = "1.3.6.1.4.1.42.2.27.8.5.1";

/// The request control: asks the server to explain bind failures.
pub fn request() -> RawControl {
    RawControl {
        ctype: OID.into(),
        crit: false,
        val: None,
    }
}

/// The `error` field of a PasswordPolicyResponseValue, if present:
/// `SEQUENCE { warning [0] ... OPTIONAL, error [1] ENUMERATED OPTIONAL }`.
pub fn response_error(val: &[u8]) -> Option<u8> {
    let (tag, body, _) = tlv(val)?;
    if tag != 0x30 {
        return None;
    }
    let mut rest = body;
    while !rest.is_empty() {
        let (tag, value, after) = tlv(rest)?;
        if tag == 0x81 && value.len() == 1 {
            return Some(value[0]);
        }
        rest = after;
    }
    None
}

/// One BER tag-length-value: (tag, value, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Maps a ppolicy error value: passwordExpired(0), accountLocked(1),
/// changeAfterReset(2).
pub fn outcome_of_error(code: u8) -> Option<BindOutcome> {
    match code {
        0 => Some(BindOutcome::Expired),
        1 => Some(BindOutcome::Locked),
        2 => Some(BindOutcome::MustChange),
        _ => None,
    }
}

/// Active Directory explains an invalidCredentials with `data NNN` in the
/// diagnostic text.
pub fn outcome_of_ad_text(text: &str) -> Option<BindOutcome> {
    let pos = text.find("data ")?;
    let code = text[pos + 5..].split([',', ' ']).next()?;
    match code.to_ascii_lowercase().as_str() {
        "530" | "531" => Some(BindOutcome::NotPermitted),
        "532" => Some(BindOutcome::Expired),
        "533" | "701" => Some(BindOutcome::Disabled),
        "773" => Some(BindOutcome::MustChange),
        "775" => Some(BindOutcome::Locked),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_error_field() {
        // SEQUENCE { error [1] accountLocked }
        assert_eq!(response_error(&[0x30, 0x03, 0x81, 0x01, 0x01]), Some(1));
        // SEQUENCE { warning [0] { graceAuthNsRemaining [1] 2 }, error [1] passwordExpired }
        let v = [0x30, 0x08, 0xa0, 0x03, 0x81, 0x01, 0x02, 0x81, 0x01, 0x00];
        assert_eq!(response_error(&v), Some(0));
        // warning only
        assert_eq!(
            response_error(&[0x30, 0x05, 0xa0, 0x03, 0x80, 0x01, 0x05]),
            None
        );
        // truncated
        assert_eq!(response_error(&[0x30, 0x05, 0x81]), None);
        assert_eq!(response_error(&[]), None);
    }

    #[test]
    fn maps_ad_codes() {
        let t = "80090308: LdapErr: DSID-0C09042F, comment: AcceptSecurityContext error, data 775, v2580";
        assert_eq!(outcome_of_ad_text(t), Some(BindOutcome::Locked));
        assert_eq!(outcome_of_ad_text("data 52e, v893"), None);
        assert_eq!(outcome_of_ad_text("no data here"), None);
    }
}
