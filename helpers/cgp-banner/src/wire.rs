//! The banner helper's wire grammar, parse and format, in this one module.
//!
//! RECONSTRUCTED (docs/wire.md, cgp-banner): no public source gives the syntax of
//! CGP's banner helper, so a correction after a capture from a real server
//! should touch only this file.
//!
//! ```text
//! <seq> BANNER <type> <account> [<parameters>]
//! <seq> OK "<banner>"
//! <seq> ERROR "no banner"
//! ```
//! `<type>` is an atom or quoted string, `<account>` is `user@domain` or
//! `""`, `<parameters>` an optional dictionary. A request in any other shape
//! (another command, fewer or more arguments, other types) is not guessed
//! at: it gets the safe answer, no banner, and its shape is logged (see
//! [`Refused::UnknownShape`]).

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
}

/// Why a request is not answered with a banner.
#[derive(Debug)]
pub enum Refused {
    /// Not in the reconstructed grammar: answered with no banner, and the
    /// shape is logged once.
    UnknownShape,
    /// In the grammar, with a value it cannot take: this error reply.
    Bad(Reply),
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

/// Parses a request other than INTF/KEY/QUIT.
pub fn parse(req: &Request) -> Result<BannerRequest, Refused> {
    use Refused::{Bad, UnknownShape};
    if req.command != "BANNER" || req.command_group.is_some() {
        return Err(UnknownShape);
    }
    let args = req.args().map_err(|_| UnknownShape)?;
    let mut args = args.into_iter();
    let (Some(Value::Str(kind)), Some(Value::Str(account))) = (args.next(), args.next()) else {
        return Err(UnknownShape);
    };
    let params = match args.next() {
        None => None,
        Some(d @ Value::Dict(_)) => Some(d),
        Some(_) => return Err(UnknownShape),
    };
    if args.next().is_some() {
        return Err(UnknownShape);
    }
    if kind.is_empty() {
        return Err(Bad(Reply::error("banner type must be a non-empty string")));
    }
    let kind =
        String::from_utf8(kind).map_err(|_| Bad(Reply::error("banner type is not UTF-8")))?;
    let account = if account.is_empty() {
        None
    } else {
        let a = String::from_utf8(account)
            .map_err(|_| Bad(Reply::error("account is not UTF-8")))?
            .to_lowercase();
        match a.rsplit_once('@') {
            Some((u, d)) if !u.is_empty() && !d.is_empty() => Some(a),
            _ => return Err(Bad(Reply::error("account must be user@domain or \"\""))),
        }
    };
    Ok(BannerRequest {
        kind,
        account,
        params,
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

    fn req(line: &str) -> Result<BannerRequest, Refused> {
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
    }

    #[test]
    fn anonymous_and_quoted_type() {
        let r = req(r#"8 banner "XIMSS Login" "" {}"#).unwrap();
        assert_eq!(r.kind, "XIMSS Login");
        assert_eq!(r.account, None);
    }

    #[test]
    fn other_shapes_are_not_guessed_at() {
        for line in [
            "1 BANNER",
            "1 BANNER x",
            "1 BANNER (a) u@d",
            "1 BANNER x (u@d)",
            "1 BANNER x u@d (1)",
            "1 BANNER x u@d {} extra",
            r#"1 BANNER "x u@d"#,
            "1 BANNER(x) y u@d",
            "1 FILE x",
        ] {
            assert!(matches!(req(line), Err(Refused::UnknownShape)), "{line}");
        }
    }

    #[test]
    fn bad_values_get_clear_errors() {
        let body = |l: &str| match req(l) {
            Err(Refused::Bad(r)) => String::from_utf8(r.body().to_vec()).unwrap(),
            other => panic!("{l}: {other:?}"),
        };
        assert_eq!(
            body("1 BANNER x nobody"),
            r#"ERROR "account must be user@domain or \"\"""#
        );
        assert_eq!(
            body("1 BANNER x @d"),
            r#"ERROR "account must be user@domain or \"\"""#
        );
        assert_eq!(
            body(r#"1 BANNER "" u@d"#),
            r#"ERROR "banner type must be a non-empty string""#
        );
    }

    #[test]
    fn replies() {
        assert_eq!(banner("a \"b\"\nc").body(), br#"OK "a \"b\"\ec""#);
        assert_eq!(no_banner().body(), br#"ERROR "no banner""#);
    }
}
