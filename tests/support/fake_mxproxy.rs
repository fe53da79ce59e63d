//! A fake MX Proxy written from its API document: `POST /auth` (password
//! grant, form body, HTTP Basic client credentials), `GET /auth` (the
//! token's owner: mx, ext, jid) and `GET /contacts` (Bearer token), on a
//! local port served by its own thread, with fault modes and tokens that
//! can be expired at will. Fixtures `testdata/mxproxy/` are the document's
//! examples.

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const AUTH_FIXTURE: &str = include_str!("../../testdata/mxproxy/auth.json");
pub const CONTACTS_FIXTURE: &str = include_str!("../../testdata/mxproxy/contacts.json");
/// `GET /auth`'s example: Peter Hyde (`peterh@xyzrd.com` in the contacts).
pub const ME_FIXTURE: &str = include_str!("../../testdata/mxproxy/me.json");

/// How the fake answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Ok,
    /// Every answer after 5 s.
    Slow,
    /// `500` to everything.
    Error500,
}

struct Shared {
    client: String,
    mode: Mutex<Mode>,
    users: Mutex<HashMap<String, String>>,
    /// Who each token was granted to.
    tokens: Mutex<HashMap<String, String>>,
    /// `GET /auth` answers other than the fixture's, by user.
    profiles: Mutex<HashMap<String, serde_json::Value>>,
    grants: AtomicUsize,
    contact_reads: AtomicUsize,
    profile_reads: AtomicUsize,
    /// The next this many `GET /auth` say the token expired.
    expire_profile_reads: AtomicUsize,
}

pub struct FakeMxProxy {
    shared: Arc<Shared>,
    base: String,
}

impl FakeMxProxy {
    /// A fake whose registered application is `client_id:secret`.
    pub fn start(client_id: &str, secret: &str) -> FakeMxProxy {
        use base64::Engine;
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}"));
        let shared = Arc::new(Shared {
            client: format!("Basic {basic}"),
            mode: Mutex::new(Mode::Ok),
            users: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            profiles: Mutex::new(HashMap::new()),
            grants: AtomicUsize::new(0),
            contact_reads: AtomicUsize::new(0),
            profile_reads: AtomicUsize::new(0),
            expire_profile_reads: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/auth", post(auth).get(me))
            .route("/contacts", get(contacts))
            .with_state(shared.clone());
        let base = crate::serve::serve(app);
        FakeMxProxy { shared, base }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    pub fn add_user(&self, username: &str, password: &str) {
        self.shared
            .users
            .lock()
            .unwrap()
            .insert(username.into(), password.into());
    }

    /// `GET /auth` for `username` answers these instead of the fixture's
    /// values (its `softPhonePwd` is kept).
    pub fn set_profile(&self, username: &str, mx: &str, ext: &str, jid: &str) {
        let mut v: serde_json::Value = serde_json::from_str(ME_FIXTURE).unwrap();
        v["mx"] = mx.into();
        v["ext"] = ext.into();
        v["jid"] = jid.into();
        self.shared
            .profiles
            .lock()
            .unwrap()
            .insert(username.into(), v);
    }

    /// The next `n` calls of `GET /auth` answer 401, as for an expired
    /// token.
    pub fn expire_profile_reads(&self, n: usize) {
        self.shared.expire_profile_reads.store(n, Ordering::SeqCst);
    }

    /// `GET /auth` calls answered 200.
    pub fn profile_reads(&self) -> usize {
        self.shared.profile_reads.load(Ordering::SeqCst)
    }

    /// Every token granted so far stops working (401).
    pub fn expire_tokens(&self) {
        self.shared.tokens.lock().unwrap().clear();
    }

    /// Grants asked for with the right client credentials.
    pub fn grants(&self) -> usize {
        self.shared.grants.load(Ordering::SeqCst)
    }

    pub fn contact_reads(&self) -> usize {
        self.shared.contact_reads.load(Ordering::SeqCst)
    }
}

async fn fault(f: &Shared) -> Option<Response> {
    let mode = *f.mode.lock().unwrap();
    match mode {
        Mode::Ok => None,
        Mode::Slow => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            None
        }
        Mode::Error500 => Some(StatusCode::INTERNAL_SERVER_ERROR.into_response()),
    }
}

async fn auth(
    State(f): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(r) = fault(&f).await {
        return r;
    }
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(f.client.as_str()) {
        return (StatusCode::UNAUTHORIZED, r#"{"error":"invalid_client"}"#).into_response();
    }
    f.grants.fetch_add(1, Ordering::SeqCst);
    let (Some(user), Some(password), Some("password")) = (
        form.get("username"),
        form.get("password"),
        form.get("grant_type").map(String::as_str),
    ) else {
        return (StatusCode::BAD_REQUEST, r#"{"error":"invalid_request"}"#).into_response();
    };
    if f.users.lock().unwrap().get(user) != Some(password) {
        return (StatusCode::BAD_REQUEST, r#"{"error":"invalid_grant"}"#).into_response();
    }
    let mut grant: serde_json::Value = serde_json::from_str(AUTH_FIXTURE).unwrap();
    let token = format!("token-{}", f.grants.load(Ordering::SeqCst));
    grant["access_token"] = token.clone().into();
    f.tokens.lock().unwrap().insert(token, user.clone());
    grant.to_string().into_response()
}

/// The user a request's Bearer token was granted to.
fn bearer(f: &Shared, headers: &HeaderMap) -> Option<String> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))?;
    f.tokens.lock().unwrap().get(token).cloned()
}

fn expired() -> Response {
    (StatusCode::UNAUTHORIZED, r#"{"error":"token expired"}"#).into_response()
}

async fn me(State(f): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = fault(&f).await {
        return r;
    }
    let expire = f
        .expire_profile_reads
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let Some(user) = bearer(&f, &headers).filter(|_| !expire) else {
        return expired();
    };
    f.profile_reads.fetch_add(1, Ordering::SeqCst);
    match f.profiles.lock().unwrap().get(&user) {
        Some(v) => v.to_string().into_response(),
        None => ME_FIXTURE.into_response(),
    }
}

async fn contacts(State(f): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = fault(&f).await {
        return r;
    }
    if bearer(&f, &headers).is_none() {
        return expired();
    }
    f.contact_reads.fetch_add(1, Ordering::SeqCst);
    CONTACTS_FIXTURE.into_response()
}
