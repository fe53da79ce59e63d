//! The banner helper's wire grammar, parse and format, in this one module.
//!
//! RECONSTRUCTED (protocol.md §10.1): no public source gives the syntax of
//! CGP's banner helper, so a correction after a capture from a real server
//! should touch only this file.
//!
//! ```text
//! <seq> BANNER <type> <account> [<parameters>]
//! <seq> OK "<banner>"
//! <seq> ERROR "no banner"
//! ```
//! `<type>` is an atom or quoted string, `<account>` is `user@domain` or
//! `""`, `<parameters>` an optional dictionary; further arguments are
//! accepted and ignored.

use cgp_wire::data::Value;
use cgp_wire::{Reply, Request};

/// One understood BANNER request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BannerRequest {
    pub kind: String,
    /// Lower-cased `user@domain`; `None` before a user is logged in.
    pub account: Option<String>,
    /// The `<parameters>` dictionary, when sent.
    pub params: Option<Value>,
    /// Arguments after the ones above, ignored.
    pub extra: usize,
}

impl BannerRequest {
    pub fn domain(&self) -> Option<&str> {
        self.account
            .as_deref()
            .and_then(|a| a.rsplit_once('@'))
            .map(|(_, d)| d)
    }

    pub fn user(&self) -> Option<&str> {
        self.account
            .as_deref()
            .and_then(|a| a.rsplit_once('@'))
            .map(|(u, _)| u)
    }
}

/// Parses a request other than INTF/KEY/QUIT; `Err` is the reply.
pub fn parse(req: &Request) -> Result<BannerRequest, Reply> {
    if req.command != "BANNER" {
        return Err(Reply::error("unsupported command"));
    }
    let args = req
        .args()
        .map_err(|e| Reply::error(&format!("bad arguments: {e}")))?;
    let mut args = args.into_iter();
    let kind = match args.next() {
        Some(Value::Str(s)) if !s.is_empty() => {
            String::from_utf8(s).map_err(|_| Reply::error("banner type is not UTF-8"))?
        }
        Some(_) => return Err(Reply::error("banner type must be a non-empty string")),
        None => return Err(Reply::error("BANNER needs a type and an account")),
    };
    let account = match args.next() {
        Some(Value::Str(s)) if s.is_empty() => None,
        Some(Value::Str(s)) => {
            let a = String::from_utf8(s)
                .map_err(|_| Reply::error("account is not UTF-8"))?
                .to_lowercase();
            match a.rsplit_once('@') {
                Some((u, d)) if !u.is_empty() && !d.is_empty() => Some(a),
                _ => return Err(Reply::error("account must be user@domain or \"\"")),
            }
        }
        Some(_) => return Err(Reply::error("account must be user@domain or \"\"")),
        None => return Err(Reply::error("BANNER needs a type and an account")),
    };
    let params = match args.next() {
        None => None,
        Some(d @ Value::Dict(_)) => Some(d),
        Some(_) => return Err(Reply::error("parameters must be a dictionary")),
    };
    Ok(BannerRequest {
        kind,
        account,
        params,
        extra: args.count(),
    })
}

/// `OK "<banner>"`.
pub fn banner(text: &str) -> Reply {
    Reply::ok().quoted(text.as_bytes())
}

/// `ERROR "no banner"`.
pub fn no_banner() -> Reply {
    Reply::error("no banner")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(line: &str) -> Result<BannerRequest, Reply> {
        parse(&Request::parse(line.as_bytes()).unwrap())
    }

    #[test]
    fn full_request_with_parameters() {
        let r =
            req(r#"7 BANNER WebUserTop Alice@Example.COM {protocol=XIMSS; clientIP="192.0.2.7";}"#)
                .unwrap();
        assert_eq!(r.kind, "WebUserTop");
        assert_eq!(r.account.as_deref(), Some("alice@example.com"));
        assert_eq!(r.user(), Some("alice"));
        assert_eq!(r.domain(), Some("example.com"));
        assert_eq!(
            r.params.unwrap().get("clientIP").unwrap().as_str(),
            Some("192.0.2.7")
        );
        assert_eq!(r.extra, 0);
    }

    #[test]
    fn anonymous_quoted_type_and_extra_arguments() {
        let r = req(r#"8 banner "XIMSS Login" "" {} more stuff"#).unwrap();
        assert_eq!(r.kind, "XIMSS Login");
        assert_eq!(r.account, None);
        assert_eq!(r.extra, 2);
    }

    #[test]
    fn malformed_requests_get_clear_errors() {
        let body = |l: &str| String::from_utf8(req(l).unwrap_err().body().to_vec()).unwrap();
        assert_eq!(
            body("1 BANNER"),
            r#"ERROR "BANNER needs a type and an account""#
        );
        assert_eq!(
            body("1 BANNER x"),
            r#"ERROR "BANNER needs a type and an account""#
        );
        assert_eq!(
            body("1 BANNER x nobody"),
            r#"ERROR "account must be user@domain or \"\"""#
        );
        assert_eq!(
            body("1 BANNER x @d"),
            r#"ERROR "account must be user@domain or \"\"""#
        );
        assert_eq!(
            body("1 BANNER (a) u@d"),
            r#"ERROR "banner type must be a non-empty string""#
        );
        assert_eq!(
            body("1 BANNER x u@d (1)"),
            r#"ERROR "parameters must be a dictionary""#
        );
        assert!(body(r#"1 BANNER "x u@d"#).starts_with(r#"ERROR "bad arguments"#));
        assert_eq!(body("1 FILE x"), r#"ERROR "unsupported command""#);
    }

    #[test]
    fn replies() {
        assert_eq!(banner("a \"b\"\nc").body(), br#"OK "a \"b\"\ec""#);
        assert_eq!(no_banner().body(), br#"ERROR "no banner""#);
    }
}
