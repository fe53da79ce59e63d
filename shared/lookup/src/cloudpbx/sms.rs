//! `POST /sendSMS` of the CloudPBX API: a text message to a GSM number
//! through the exchange's SMS gateway (form fields `to`, `body`, optional
//! `test`; Bearer API key). The answer is a JSON object with `responseId`,
//! `responseStatus` and `responseErrorMessage` (null when the message was
//! handed to the gateway).
//!
//! A request is sent to one host only, unless it could not even be
//! connected: a host that took the request and then failed or fell silent
//! may have sent the message, and asking the other host could send it twice.

use super::{Failed, check_base_urls, exchange, host};
use crate::http::endpoint;
use crate::pbx::PbxError;
use cgp_runtime::config::{Secret, SecretFile, either};
use cgp_runtime::sync;
use serde::Deserialize;
use std::sync::Mutex;
use std::time::Duration;
use url::Url;

/// The longest body the API takes, in characters.
pub const MAX_BODY_CHARS: usize = 1024;

/// The SMS gateway of a CloudPBX exchange (`[sms.cloudpbx]` of cgp-filter).
/// The key is a secret: its file, or the configuration file holding it,
/// must be closed to group and others (checked at load).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    /// API hosts, tried in this order while they cannot be connected to.
    pub base_urls: Vec<Url>,
    /// The API key, sent as `Authorization: Bearer`; or `api_key_file`.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// A file whose first line is the API key.
    #[serde(default)]
    pub api_key_file: Option<SecretFile>,
    /// Bound on one request, body included.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest answer taken; larger ones are an error.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Sends `test=true`: the gateway takes the message but neither
    /// delivers nor bills it.
    #[serde(default)]
    pub test: bool,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_response_bytes() -> usize {
    64 << 10
}

impl SmsConfig {
    /// Checks of the table, as `(dotted key, message)`; `at` is the
    /// table's key (`sms.cloudpbx`).
    pub fn check(&self, at: &str) -> Result<(), (String, String)> {
        let key = |k: &str| format!("{at}.{k}");
        check_base_urls(&self.base_urls, at)?;
        match (&self.api_key, &self.api_key_file) {
            (Some(k), None) if k.is_empty() => {
                return Err((key("api_key"), "must not be empty".into()));
            }
            (Some(_), None) | (None, Some(_)) => {}
            _ => {
                return Err((
                    key("api_key"),
                    "give api_key or api_key_file, exactly one".into(),
                ));
            }
        }
        if self.timeout.is_zero() {
            return Err((key("timeout"), "must be more than 0s".into()));
        }
        if self.max_response_bytes == 0 {
            return Err((key("max_response_bytes"), "must be more than 0".into()));
        }
        Ok(())
    }

    /// The API key, read from `api_key_file` when given there (its mode
    /// checked again).
    fn key(&self) -> Result<Secret, String> {
        either(self.api_key.as_ref(), self.api_key_file.as_ref())
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "no api_key".into())
    }
}

/// A number the gateway takes: nine digits of a Polish mobile network.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GsmNumber(String);

/// Why a number is not one the gateway takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    #[error("not a phone number (only digits, spaces, dashes and a leading +48 are taken)")]
    NotANumber,
    #[error("a number of another country: the gateway takes +48 numbers only")]
    Abroad,
    #[error("not nine digits")]
    Length,
}

impl GsmNumber {
    /// `600 100 200`, `600-100-200`, `+48 600100200` and `0048600100200`
    /// all give `600100200`.
    pub fn parse(text: &str) -> Result<GsmNumber, NumberError> {
        let plain: String = text
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '\t'))
            .collect();
        let (international, digits) = match plain.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => match plain.strip_prefix("00") {
                Some(rest) => (true, rest),
                None => (false, plain.as_str()),
            },
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NumberError::NotANumber);
        }
        let national = if international {
            digits.strip_prefix("48").ok_or(NumberError::Abroad)?
        } else {
            digits
        };
        if national.len() != 9 || national.starts_with('0') {
            return Err(NumberError::Length);
        }
        Ok(GsmNumber(national.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for GsmNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `text` cut to the API's [`MAX_BODY_CHARS`] characters.
pub fn cut_body(text: &str) -> &str {
    match text.char_indices().nth(MAX_BODY_CHARS) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// What the gateway said of a message it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsReceipt {
    /// `responseId`: the message's id (also the `uniqueid` of its record).
    pub id: String,
    /// `responseStatus`, e.g. `QUEUE`.
    pub status: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    #[serde(default, deserialize_with = "id_text")]
    response_id: String,
    #[serde(default)]
    response_status: String,
    #[serde(default)]
    response_error_message: Option<String>,
}

/// `responseId` as the document shows it (a string), or as a number.
fn id_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    })
}

/// A client of the SMS gateway.
pub struct SmsGateway {
    http: reqwest::Client,
    config: SmsConfig,
    key: Secret,
    /// The host that took the last request.
    preferred: Mutex<usize>,
}

/// The name errors give the gateway.
const NAME: &str = "CloudPBX SMS gateway";

impl SmsGateway {
    /// Reads the key and builds the client; `config` must have passed
    /// [`SmsConfig::check`].
    pub fn new(config: &SmsConfig) -> Result<SmsGateway, String> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(SmsGateway {
            http,
            key: config.key()?,
            config: config.clone(),
            preferred: Mutex::new(0),
        })
    }

    /// Sends `body` (cut to [`MAX_BODY_CHARS`]) to `to`. The fields are
    /// form-encoded by the HTTP client, never spliced.
    pub async fn send(&self, to: &GsmNumber, body: &str) -> Result<SmsReceipt, PbxError> {
        let bases = &self.config.base_urls;
        let first = *sync::lock(&self.preferred);
        let mut form = vec![("to", to.as_str()), ("body", cut_body(body))];
        if self.config.test {
            form.push(("test", "true"));
        }
        let mut last = PbxError::Down(NAME.into());
        for i in (0..bases.len()).map(|k| (first + k) % bases.len()) {
            let req = self
                .http
                .post(endpoint(&bases[i], &["sendSMS"], &[]))
                .bearer_auth(self.key.expose())
                .form(&form);
            match exchange(req, NAME, self.config.max_response_bytes).await {
                Ok(body) => {
                    *sync::lock(&self.preferred) = i;
                    return receipt(&body);
                }
                Err(Failed {
                    error,
                    unsent: true,
                }) => {
                    tracing::warn!(host = %host(&bases[i]), error = %error, "CloudPBX SMS gateway not reached; trying the next host");
                    last = error;
                }
                Err(Failed { error, .. }) => return Err(error),
            }
        }
        Err(last)
    }
}

fn receipt(body: &[u8]) -> Result<SmsReceipt, PbxError> {
    let r: Response =
        serde_json::from_slice(body).map_err(|e| PbxError::Protocol(format!("sendSMS: {e}")))?;
    match r.response_error_message {
        Some(m) => Err(PbxError::Refused(m)),
        None => Ok(SmsReceipt {
            id: r.response_id,
            status: r.response_status,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_normalised_or_refused() {
        for ok in [
            "600100200",
            "600 100 200",
            "600-100-200",
            "+48 600 100 200",
            "+48-600-100-200",
            "0048600100200",
        ] {
            assert_eq!(GsmNumber::parse(ok).unwrap().as_str(), "600100200", "{ok}");
        }
        for (bad, why) in [
            ("", NumberError::NotANumber),
            ("600 100 20x", NumberError::NotANumber),
            ("600100200&to=1", NumberError::NotANumber),
            ("+49 600 100 200", NumberError::Abroad),
            ("60010020", NumberError::Length),
            ("6001002001", NumberError::Length),
            ("48600100200", NumberError::Length),
            ("022 100 200", NumberError::Length),
        ] {
            assert_eq!(GsmNumber::parse(bad), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn bodies_are_cut_at_the_character_limit() {
        let long = "ż".repeat(MAX_BODY_CHARS + 10);
        assert_eq!(cut_body(&long).chars().count(), MAX_BODY_CHARS);
        assert_eq!(cut_body("short"), "short");
    }

    #[test]
    fn receipts_and_refusals() {
        let ok = br#"{"responseId": "3421756012963258480", "responseStatus": "QUEUE", "responseErrorMessage": null}"#;
        assert_eq!(
            receipt(ok).unwrap(),
            SmsReceipt {
                id: "3421756012963258480".into(),
                status: "QUEUE".into()
            }
        );
        let refused = br#"{"responseId": 1, "responseStatus": "ERROR", "responseErrorMessage": "no gateway"}"#;
        assert!(matches!(receipt(refused), Err(PbxError::Refused(m)) if m == "no gateway"));
        assert!(matches!(receipt(b"{"), Err(PbxError::Protocol(_))));
    }

    #[test]
    fn the_key_stays_out_of_debug_and_one_key_is_needed() {
        let cfg = SmsConfig {
            base_urls: vec!["https://api.example/".parse().unwrap()],
            api_key: Some(Secret::from("s3cret")),
            api_key_file: None,
            timeout: default_timeout(),
            max_response_bytes: 10,
            test: false,
        };
        assert!(!format!("{cfg:?}").contains("s3cret"));
        assert!(cfg.check("sms.cloudpbx").is_ok());
        let none = SmsConfig {
            api_key: None,
            ..cfg.clone()
        };
        assert_eq!(none.check("s").unwrap_err().0, "s.api_key");
    }
}
