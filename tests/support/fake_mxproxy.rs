//! A fake MX Proxy written from its API document: `POST /auth` (password
//! grant, form body, HTTP Basic client credentials) and `GET /contacts`
//! (Bearer token), on a local port served by its own thread, with fault
//! modes and tokens that can be expired at will. Fixtures
//! `testdata/mxproxy/` are the document's examples.

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const AUTH_FIXTURE: &str = include_str!("../../testdata/mxproxy/auth.json");
pub const CONTACTS_FIXTURE: &str = include_str!("../../testdata/mxproxy/contacts.json");

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
    tokens: Mutex<HashSet<String>>,
    grants: AtomicUsize,
    contact_reads: AtomicUsize,
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
            tokens: Mutex::new(HashSet::new()),
            grants: AtomicUsize::new(0),
            contact_reads: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/auth", post(auth))
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
    f.tokens.lock().unwrap().insert(token);
    grant.to_string().into_response()
}

async fn contacts(State(f): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = fault(&f).await {
        return r;
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !token.is_some_and(|t| f.tokens.lock().unwrap().contains(t)) {
        return (StatusCode::UNAUTHORIZED, r#"{"error":"token expired"}"#).into_response();
    }
    f.contact_reads.fetch_add(1, Ordering::SeqCst);
    CONTACTS_FIXTURE.into_response()
}
