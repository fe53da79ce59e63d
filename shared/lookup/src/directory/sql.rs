//! The SQL back end (PostgreSQL): a password query checked here against the
//! hash it returns (with disabled, locked, expired and must-change columns
//! for the password policy), a query that finds a person and their
//! attributes, one for their groups and one for their secret.
//!
//! Queries name the account with the template placeholders; each is
//! compiled once, when the configuration is read, into SQL text with `$1`,
//! `$2`… and the list of values to bind to them. A value is only ever a
//! bound parameter, never part of the SQL text.

use super::password::{self, Stored};
use super::template::{self, Field, Part, TemplateError};
use super::{Account, Backend, BoxFuture, By, DirectoryError, Group, GroupRef, Person, Verdict};
use cgp_runtime::config::{self as secret, Secret, SecretFile};
use cgp_runtime::{KeyError, sync};
use serde::{Deserialize, Deserializer};
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, Statement};

/// `[directory.sql]`: where the database is and what to ask it.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlConfig {
    /// Servers in failover order: `host:port`, or the directory of a Unix
    /// socket (`/run/postgresql`, port 5432 unless `:port` follows).
    pub hosts: Vec<Host>,
    pub dbname: String,
    pub user: String,
    /// The database password; never logged.
    pub password: Option<Secret>,
    /// A file holding the database password (first line).
    pub password_file: Option<SecretFile>,
    pub tls: TlsMode,
    /// PEM file with the CA certificates to trust instead of the system ones.
    pub ca_file: Option<PathBuf>,
    /// Connections per server; each carries many queries at once
    /// (pipelined).
    pub pool_size: usize,
    /// Connecting to one server, TLS and log-in included.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// One query; the server is told the same limit
    /// (`statement_timeout`).
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// A server that failed is tried after the others for this long.
    #[serde(with = "humantime_serde")]
    pub failback_after: Duration,
    /// The password hash and policy of an account: one row with a
    /// `password` column and, optionally, boolean `disabled`, `locked`,
    /// `expired` and `must_change` columns.
    pub password_query: Option<Query>,
    /// Finds a person by login name: one row, an `id` column (default: the
    /// address asked for), every other column an attribute.
    pub user_query: Option<Query>,
    /// Finds a person by mail address (default: `user_query`).
    pub mail_query: Option<Query>,
    /// A person's groups: one name per row, in the first column.
    pub groups_query: Option<Query>,
    /// The clear secret READPLAIN answers with: the first column of the
    /// first row.
    pub secret_query: Option<Query>,
    /// Only members of one of these groups are let in; empty: everybody.
    pub required_groups: Vec<GroupRef>,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            hosts: vec![Host {
                host: "127.0.0.1".into(),
                port: 5432,
            }],
            dbname: "mail".into(),
            user: "cgp".into(),
            password: None,
            password_file: None,
            tls: TlsMode::Disable,
            ca_file: None,
            pool_size: 4,
            connect_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(3),
            failback_after: Duration::from_secs(30),
            password_query: None,
            user_query: None,
            mail_query: None,
            groups_query: None,
            secret_query: None,
            required_groups: Vec::new(),
        }
    }
}

// Hand-written so that the password can never reach a log through `{:?}`.
impl fmt::Debug for SqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlConfig")
            .field("hosts", &self.hosts)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "(hidden)"))
            .field("password_file", &self.password_file)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("failback_after", &self.failback_after)
            .field("password_query", &self.password_query)
            .field("user_query", &self.user_query)
            .field("mail_query", &self.mail_query)
            .field("groups_query", &self.groups_query)
            .field("secret_query", &self.secret_query)
            .field("required_groups", &self.required_groups)
            .finish()
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain connections (loopback, Unix sockets).
    #[default]
    Disable,
    /// TLS, with the server's certificate and name verified.
    Require,
}

/// One server: a host name or address and a port, or a socket directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl<'de> Deserialize<'de> for Host {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let err = |why: &str| serde::de::Error::custom(format!("{s:?}: {why}"));
        let port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| err("the port is not a number"))
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(|| err("no closing ]"))?;
            match after {
                "" => (h, 5432),
                _ => (
                    h,
                    port(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| err("expected :port after ]"))?,
                    )?,
                ),
            }
        } else if s.matches(':').count() > 1 {
            return Err(err("write an IPv6 address as [address]:port"));
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) => (h, port(p)?),
                None => (s.as_str(), 5432),
            }
        };
        if host.is_empty() {
            return Err(err("no host"));
        }
        Ok(Host {
            host: host.to_string(),
            port,
        })
    }
}

/// A query compiled for bound parameters: `text` has `$1`, `$2`… where the
/// configuration had placeholders, `params` what each is bound to.
#[derive(Clone, PartialEq, Eq)]
pub struct Query {
    source: String,
    text: String,
    params: Vec<Field>,
}

impl fmt::Debug for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Query({:?})", self.source)
    }
}

const QUERY_FIELDS: &[Field] = &[Field::User, Field::Domain, Field::Address, Field::Id];

impl Query {
    /// Compiles `source`: `{user}`, `{domain}`, `{address}` and `{id}`
    /// become `$n` (one number per placeholder, however often it appears).
    pub fn parse(source: &str) -> Result<Query, TemplateError> {
        let mut text = String::with_capacity(source.len());
        let mut params: Vec<Field> = Vec::new();
        for part in template::split(source, QUERY_FIELDS)? {
            match part {
                Part::Text(t) => text.push_str(&t),
                Part::Field(f) => {
                    if text.ends_with('\'') {
                        // '{user}' would be the text "$1", not the value.
                        return Err(TemplateError::Invalid(format!(
                            "{} is a bound parameter: write it without quotes",
                            f.name()
                        )));
                    }
                    let n = match params.iter().position(|p| *p == f) {
                        Some(i) => i + 1,
                        None => {
                            params.push(f);
                            params.len()
                        }
                    };
                    text.push('$');
                    text.push_str(&n.to_string());
                }
            }
        }
        if text.trim().is_empty() {
            return Err(TemplateError::Invalid("the query is empty".into()));
        }
        Ok(Query {
            source: source.to_string(),
            text,
            params,
        })
    }

    /// The SQL text sent to the server.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn uses(&self, field: Field) -> bool {
        self.params.contains(&field)
    }

    fn values<'a>(&self, account: &'a Account, id: &'a str) -> Vec<&'a str> {
        self.params
            .iter()
            .map(|f| match f {
                Field::User => account.user(),
                Field::Domain => account.domain(),
                Field::Address => account.address(),
                Field::Dn | Field::Id => id,
            })
            .collect()
    }
}

impl<'de> Deserialize<'de> for Query {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Query::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl SqlConfig {
    /// Rules between keys; `prefix` is the table's dotted key.
    pub fn validate(&self, prefix: &str) -> Result<(), KeyError> {
        let key = |k: &str| format!("{prefix}.{k}");
        if self.hosts.is_empty() {
            return Err(KeyError::new(key("hosts"), "needs at least one server"));
        }
        if self.pool_size == 0 {
            return Err(KeyError::new(key("pool_size"), "must be at least 1"));
        }
        for (k, d) in [
            ("connect_timeout", self.connect_timeout),
            ("statement_timeout", self.statement_timeout),
        ] {
            if d.is_zero() {
                return Err(KeyError::new(key(k), "must be more than zero"));
            }
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err(KeyError::new(
                key("password_file"),
                "set password or password_file, not both",
            ));
        }
        if self.password_query.is_none() {
            return Err(KeyError::new(
                key("password_query"),
                "the sql back end needs a password query",
            ));
        }
        // Only a person already found has an id.
        for (k, q) in [
            ("password_query", &self.password_query),
            ("user_query", &self.user_query),
            ("mail_query", &self.mail_query),
        ] {
            if q.as_ref().is_some_and(|q| q.uses(Field::Id)) {
                return Err(KeyError::new(
                    key(k),
                    "{id} is the person this query finds; use {user}, {domain} or {address}",
                ));
            }
        }
        if !self.required_groups.is_empty() && self.groups_query.is_none() {
            return Err(KeyError::new(
                key("required_groups"),
                "needs sql.groups_query",
            ));
        }
        if self.tls == TlsMode::Disable && self.ca_file.is_some() {
            return Err(KeyError::new(
                key("ca_file"),
                "is only used with tls = \"require\"",
            ));
        }
        Ok(())
    }
}

/// How connections are made secure.
#[derive(Clone)]
enum Tls {
    None,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

/// One connection: a client that pipelines the queries of many requests,
/// the task that drives its socket, and its prepared statements.
struct Conn {
    client: Client,
    task: tokio::task::JoinHandle<()>,
    statements: Mutex<HashMap<String, Statement>>,
}

impl Drop for Conn {
    /// A connection to a hung server would wait for its answers forever.
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    async fn prepare(&self, text: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = sync::lock(&self.statements).get(text) {
            return Ok(s.clone());
        }
        let prepared = self.client.prepare(text).await?;
        sync::lock(&self.statements).insert(text.to_string(), prepared.clone());
        Ok(prepared)
    }
}

/// One server and its connections, shared round-robin by the requests.
struct Server {
    name: String,
    pg: tokio_postgres::Config,
    tls: Tls,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    next: AtomicUsize,
    /// Until when it is tried after the others, having failed.
    failed_until: Mutex<Option<Instant>>,
}

impl Server {
    async fn connect(&self) -> Result<Conn, tokio_postgres::Error> {
        let (client, task) = match &self.tls {
            Tls::None => {
                let (client, conn) = self.pg.connect(tokio_postgres::NoTls).await?;
                (client, tokio::spawn(async move { drop(conn.await) }))
            }
            Tls::Rustls(tls) => {
                let (client, conn) = self.pg.connect(tls.clone()).await?;
                (client, tokio::spawn(async move { drop(conn.await) }))
            }
        };
        Ok(Conn {
            client,
            task,
            statements: Mutex::new(HashMap::new()),
        })
    }

    /// A live connection from the next slot, made there if it has none
    /// (or a closed one). Requests on one slot wait for its connect.
    async fn get(&self) -> Result<(usize, Arc<Conn>), tokio_postgres::Error> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok((i, conn.clone()));
        }
        *slot = None;
        let conn = Arc::new(self.connect().await?);
        *slot = Some(conn.clone());
        Ok((i, conn))
    }

    /// Takes a connection that failed out of its slot (unless it was
    /// replaced already).
    async fn discard(&self, i: usize, conn: &Arc<Conn>) {
        let mut slot = self.slots[i].lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *slot = None;
        }
    }
}

pub struct SqlDirectory {
    config: SqlConfig,
    servers: Vec<Server>,
    /// The last stored hash read, checked against when there is no such
    /// account, so that an unknown name costs what a wrong password costs
    /// (until one is seen, an `{SSHA}` value).
    dummy: Mutex<Stored>,
}

/// Why one attempt on one server failed.
enum Attempt {
    /// Try the next server.
    Unavailable(String),
    /// The server answered with an error another server would give too.
    Failed(String),
}

fn tls_connector(config: &SqlConfig) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let client = match &config.ca_file {
        Some(path) => (*crate::ldap::conn::tls_config_with_ca(path)?).clone(),
        None => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err("no system CA certificates found: set ca_file".into());
            }
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS set-up: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth()
        }
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(client))
}

impl SqlDirectory {
    /// Builds one pool per server; reads `password_file` and `ca_file`,
    /// opens no connection.
    pub fn new(config: &SqlConfig) -> Result<SqlDirectory, DirectoryError> {
        let password = secret::either(config.password.as_ref(), config.password_file.as_ref())
            .map_err(|e| DirectoryError::Failed(format!("password_file {e}")))?;
        let tls = match config.tls {
            TlsMode::Disable => Tls::None,
            TlsMode::Require => Tls::Rustls(tls_connector(config).map_err(DirectoryError::Failed)?),
        };
        let mut servers = Vec::with_capacity(config.hosts.len());
        for host in &config.hosts {
            let mut pg = tokio_postgres::Config::new();
            pg.host(&host.host)
                .port(host.port)
                .dbname(&config.dbname)
                .user(&config.user)
                .application_name("cgp-helpers")
                .connect_timeout(config.connect_timeout)
                .ssl_mode(match tls {
                    Tls::None => tokio_postgres::config::SslMode::Disable,
                    Tls::Rustls(_) => tokio_postgres::config::SslMode::Require,
                })
                // The server stops a query the client has given up on.
                .options(format!(
                    "-c statement_timeout={}",
                    config.statement_timeout.as_millis()
                ));
            if let Some(p) = &password {
                pg.password(p.expose());
            }
            servers.push(Server {
                name: host.to_string(),
                pg,
                tls: tls.clone(),
                slots: (0..config.pool_size)
                    .map(|_| tokio::sync::Mutex::new(None))
                    .collect(),
                next: AtomicUsize::new(0),
                failed_until: Mutex::new(None),
            });
        }
        Ok(SqlDirectory {
            config: config.clone(),
            servers,
            dummy: Mutex::new(
                Stored::parse("{SSHA}AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", false)
                    .expect("a well-formed {SSHA} value"),
            ),
        })
    }

    /// Runs a query on the first server that answers: those that have not
    /// failed lately first, in the configured order.
    async fn query(
        &self,
        q: &Query,
        account: &Account,
        id: &str,
    ) -> Result<Vec<Row>, DirectoryError> {
        let values = q.values(account, id);
        let params: Vec<&(dyn ToSql + Sync)> =
            values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let now = Instant::now();
        let failed = |s: &Server| sync::lock(&s.failed_until).is_some_and(|t| t > now);
        let order = self
            .servers
            .iter()
            .filter(|s| !failed(s))
            .chain(self.servers.iter().filter(|s| failed(s)));
        let mut last = String::new();
        for server in order {
            match self.query_on(server, q, &params).await {
                Ok(rows) => {
                    *sync::lock(&server.failed_until) = None;
                    return Ok(rows);
                }
                Err(Attempt::Unavailable(e)) => {
                    tracing::debug!(server = %server.name, error = %e, "sql server failed");
                    *sync::lock(&server.failed_until) = Some(now + self.config.failback_after);
                    last = format!("{}: {e}", server.name);
                }
                Err(Attempt::Failed(e)) => {
                    return Err(DirectoryError::Failed(format!("{}: {e}", server.name)));
                }
            }
        }
        Err(DirectoryError::Unavailable(last))
    }

    async fn query_on(
        &self,
        server: &Server,
        q: &Query,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Attempt> {
        // tokio-postgres' connect_timeout covers the TCP connect only: a
        // server that accepts and then says nothing is cut off here.
        let (slot, conn) = tokio::time::timeout(self.config.connect_timeout, server.get())
            .await
            .map_err(|_| {
                Attempt::Unavailable(format!(
                    "no connection within {:?}",
                    self.config.connect_timeout
                ))
            })?
            .map_err(|e| classify(&e))?;
        let run = async {
            let statement = conn.prepare(q.text()).await?;
            conn.client.query(&statement, params).await
        };
        match tokio::time::timeout(self.config.statement_timeout, run).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => {
                let attempt = classify(&e);
                if conn.client.is_closed() {
                    server.discard(slot, &conn).await;
                } else {
                    // A renamed table or changed column leaves prepared
                    // statements that would fail again after it is fixed.
                    sync::lock(&conn.statements).clear();
                }
                Err(attempt)
            }
            Err(_) => {
                // The connection still owes the answer: never reuse it.
                server.discard(slot, &conn).await;
                Err(Attempt::Unavailable(format!(
                    "no answer within {:?}",
                    self.config.statement_timeout
                )))
            }
        }
    }

    /// The one row a query must give: `None` for none, refused (with a
    /// warning) for several.
    fn one(rows: Vec<Row>, what: &str, account: &Account) -> Option<Row> {
        if rows.len() > 1 {
            tracing::warn!(%account, rows = rows.len(), query = what, "several rows match; refused as ambiguous");
            return None;
        }
        rows.into_iter().next()
    }

    async fn groups(&self, account: &Account, id: &str) -> Result<Vec<Group>, DirectoryError> {
        let Some(q) = &self.config.groups_query else {
            return Ok(Vec::new());
        };
        let mut groups = Vec::new();
        for row in self.query(q, account, id).await? {
            for name in column_text(&row, 0).map_err(DirectoryError::Failed)? {
                groups.push(Group::named(&name));
            }
        }
        Ok(groups)
    }

    async fn person(&self, row: &Row, account: &Account) -> Result<Person, DirectoryError> {
        let mut person = Person::default();
        for (i, column) in row.columns().iter().enumerate() {
            let values = column_text(row, i).map_err(DirectoryError::Failed)?;
            if column.name() == "id" {
                person.id = values.into_iter().next().unwrap_or_default();
            } else {
                person.push_values(column.name(), values);
            }
        }
        if person.id.is_empty() {
            person.id = account.address().to_string();
        }
        person.groups = self.groups(account, &person.id).await?;
        Ok(person)
    }
}

/// SQLSTATE classes that another try (or another server) may get past:
/// connection exceptions, operator intervention (shutdown, a cancelled or
/// timed-out statement), insufficient resources, transaction rollback.
fn classify(e: &tokio_postgres::Error) -> Attempt {
    match e.code() {
        Some(code) if !["08", "57", "53", "40"].contains(&&code.code()[..2]) => {
            Attempt::Failed(describe(e))
        }
        _ => Attempt::Unavailable(describe(e)),
    }
}

/// The server's message for its errors, or the chain of causes for the
/// others ("db error" or "error performing TLS handshake" alone say
/// nothing).
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.to_string();
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A column's values as text: text types, booleans and integers, and arrays
/// of text (several values); NULL is no value.
fn column_text(row: &Row, i: usize) -> Result<Vec<String>, String> {
    let column = &row.columns()[i];
    let err = |e: tokio_postgres::Error| format!("column {}: {e}", column.name());
    Ok(match *column.type_() {
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => row
            .try_get::<_, Option<String>>(i)
            .map_err(err)?
            .into_iter()
            .collect(),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)
            .map_err(err)?
            .map(|b| if b { "TRUE" } else { "FALSE" }.to_string())
            .into_iter()
            .collect(),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)
            .map_err(err)?
            .map(|n| n.to_string())
            .into_iter()
            .collect(),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)
            .map_err(err)?
            .map(|n| n.to_string())
            .into_iter()
            .collect(),
        Type::INT8 => row
            .try_get::<_, Option<i64>>(i)
            .map_err(err)?
            .map(|n| n.to_string())
            .into_iter()
            .collect(),
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY => row
            .try_get::<_, Option<Vec<Option<String>>>>(i)
            .map_err(err)?
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .collect(),
        ref other => {
            return Err(format!(
                "column {} has type {other}: cast it to text",
                column.name()
            ));
        }
    })
}

/// A boolean policy column: absent or NULL is false.
fn flag(row: &Row, name: &str) -> Result<bool, DirectoryError> {
    match row.columns().iter().position(|c| c.name() == name) {
        None => Ok(false),
        Some(i) => row
            .try_get::<_, Option<bool>>(i)
            .map(|b| b.unwrap_or(false))
            .map_err(|e| DirectoryError::Failed(format!("column {name}: {e}"))),
    }
}

impl Backend for SqlDirectory {
    fn find<'a>(&'a self, by: By<'a>) -> BoxFuture<'a, Result<Vec<Arc<Person>>, DirectoryError>> {
        Box::pin(async move {
            let account = by.account();
            let query = match by {
                By::Account(_) => self.config.user_query.as_ref(),
                By::Mail(_) => self
                    .config
                    .mail_query
                    .as_ref()
                    .or(self.config.user_query.as_ref()),
            };
            let Some(query) = query else {
                // No person query: a person is an account with a password
                // row, and has no attributes.
                let q = self.config.password_query.as_ref().expect("validated");
                let rows = self.query(q, account, "").await?;
                return Ok(rows
                    .iter()
                    .map(|_| {
                        Arc::new(Person {
                            id: account.address().to_string(),
                            ..Person::default()
                        })
                    })
                    .collect());
            };
            let rows = self.query(query, account, "").await?;
            if rows.len() > 1 {
                // Refused by the directory: no group query for them.
                return Ok(rows.iter().map(|_| Arc::default()).collect());
            }
            let mut people = Vec::with_capacity(1);
            for row in &rows {
                people.push(Arc::new(self.person(row, account).await?));
            }
            Ok(people)
        })
    }

    fn check<'a>(
        &'a self,
        account: &'a Account,
        _person: &'a Person,
        password: &'a [u8],
    ) -> BoxFuture<'a, Result<Verdict, DirectoryError>> {
        Box::pin(async move {
            let q = self.config.password_query.as_ref().expect("validated");
            let rows = self.query(q, account, "").await?;
            let Some(row) = Self::one(rows, "password_query", account) else {
                self.check_unknown(account, password).await;
                return Ok(Verdict::Invalid);
            };
            let column = row
                .columns()
                .iter()
                .position(|c| c.name() == "password")
                .ok_or_else(|| {
                    DirectoryError::Failed("password_query returns no password column".into())
                })?;
            let value: Option<String> = row
                .try_get(column)
                .map_err(|e| DirectoryError::Failed(format!("column password: {e}")))?;
            // Clear-text values in the database are never accepted.
            let stored = match value.as_deref().map(|v| Stored::parse(v, false)) {
                Some(Ok(stored)) => stored,
                Some(Err(e)) => {
                    tracing::warn!(%account, error = %e, "unusable password value");
                    self.check_unknown(account, password).await;
                    return Ok(Verdict::Invalid);
                }
                None => {
                    self.check_unknown(account, password).await;
                    return Ok(Verdict::Invalid);
                }
            };
            let matched = password::check(&stored, password).await;
            *sync::lock(&self.dummy) = stored;
            if !matched {
                return Ok(Verdict::Invalid);
            }
            // The policy is told only to someone who knows the password, as
            // LDAP's password policy does.
            Ok(if flag(&row, "disabled")? {
                Verdict::Disabled
            } else if flag(&row, "locked")? {
                Verdict::Locked
            } else if flag(&row, "expired")? {
                Verdict::Expired
            } else if flag(&row, "must_change")? {
                Verdict::MustChange
            } else {
                Verdict::Ok
            })
        })
    }

    fn check_unknown<'a>(&'a self, _account: &'a Account, password: &'a [u8]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let dummy = sync::lock(&self.dummy).clone();
            password::check(&dummy, password).await;
        })
    }

    /// The password query finds the account itself: a login costs one
    /// query, not a lookup and a check.
    fn direct(&self, account: &Account) -> Option<Person> {
        Some(Person {
            id: account.address().to_string(),
            ..Person::default()
        })
    }

    fn permitted<'a>(
        &'a self,
        account: &'a Account,
        person: &'a Person,
    ) -> BoxFuture<'a, Result<bool, DirectoryError>> {
        Box::pin(async move {
            let required = &self.config.required_groups;
            if required.is_empty() {
                return Ok(true);
            }
            let groups = if person.groups.is_empty() {
                // Checked through `direct`: the groups were not read.
                self.groups(account, &person.id).await?
            } else {
                person.groups.clone()
            };
            let whole = Person {
                groups,
                ..Person::default()
            };
            Ok(required.iter().any(|g| whole.in_group(g)))
        })
    }

    fn secret<'a>(
        &'a self,
        account: &'a Account,
        person: &'a Person,
    ) -> BoxFuture<'a, Result<Option<String>, DirectoryError>> {
        Box::pin(async move {
            let Some(q) = &self.config.secret_query else {
                return Ok(None);
            };
            let rows = self.query(q, account, &person.id).await?;
            match Self::one(rows, "secret_query", account) {
                Some(row) if !row.is_empty() => Ok(column_text(&row, 0)
                    .map_err(DirectoryError::Failed)?
                    .into_iter()
                    .next()),
                _ => Ok(None),
            }
        })
    }

    /// Connects to the first server and prepares every query, so that a
    /// wrong table or column name shows at start.
    fn probe(&self) -> BoxFuture<'_, Result<(), DirectoryError>> {
        Box::pin(async move {
            let c = &self.config;
            let queries = [
                &c.password_query,
                &c.user_query,
                &c.mail_query,
                &c.groups_query,
                &c.secret_query,
            ];
            let mut last = String::new();
            for server in &self.servers {
                let conn = match tokio::time::timeout(c.connect_timeout, server.get()).await {
                    Ok(Ok((_, conn))) => conn,
                    Ok(Err(e)) => {
                        last = format!("{}: {}", server.name, describe(&e));
                        continue;
                    }
                    Err(_) => {
                        last = format!("{}: no connection", server.name);
                        continue;
                    }
                };
                for q in queries.into_iter().flatten() {
                    let prepared =
                        tokio::time::timeout(c.statement_timeout, conn.prepare(q.text()))
                            .await
                            .map_err(|_| {
                                DirectoryError::Unavailable(format!("{}: no answer", server.name))
                            })?
                            .map_err(|e| {
                                DirectoryError::Failed(format!("{}: {}", server.name, describe(&e)))
                            })?;
                    let has = |name: &str| prepared.columns().iter().any(|col| col.name() == name);
                    if std::ptr::eq(q, c.password_query.as_ref().expect("validated"))
                        && !has("password")
                    {
                        return Err(DirectoryError::Failed(
                            "password_query returns no password column".into(),
                        ));
                    }
                }
                return Ok(());
            }
            Err(DirectoryError::Unavailable(last))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_numbered_parameters() {
        let q = Query::parse(
            "SELECT password FROM users WHERE local = {user} AND domain = {domain} OR email = {address} OR alias = {user}",
        )
        .unwrap();
        assert_eq!(
            q.text(),
            "SELECT password FROM users WHERE local = $1 AND domain = $2 OR email = $3 OR alias = $1"
        );
        // A value is bound, never spliced: quotes in it change nothing.
        let a = Account::parse(b"o'brien--@example.test").unwrap();
        assert_eq!(
            q.values(&a, ""),
            vec!["o'brien--", "example.test", "o'brien--@example.test"]
        );
        let q = Query::parse("SELECT g FROM m WHERE person = {id}").unwrap();
        assert_eq!(q.values(&a, "42"), vec!["42"]);
    }

    #[test]
    fn quoted_and_unknown_placeholders_are_refused() {
        let e = Query::parse("SELECT 1 WHERE email = '{address}'").unwrap_err();
        assert_eq!(
            e.to_string(),
            "{address} is a bound parameter: write it without quotes"
        );
        let e = Query::parse("SELECT 1 WHERE email = {email}").unwrap_err();
        assert_eq!(e.to_string(), "placeholder {email} is now {address}");
        assert!(Query::parse("SELECT 1 WHERE x = {dn}").is_err());
        assert!(Query::parse("  ").is_err());
    }

    #[test]
    fn hosts_parse_with_and_without_port() {
        let h: Vec<Host> = hosts(r#"["db1:6432", "db2", "/run/postgresql", "[::1]:5433"]"#);
        assert_eq!(
            h[0],
            Host {
                host: "db1".into(),
                port: 6432
            }
        );
        assert_eq!(
            h[1],
            Host {
                host: "db2".into(),
                port: 5432
            }
        );
        assert_eq!(
            h[2],
            Host {
                host: "/run/postgresql".into(),
                port: 5432
            }
        );
        assert_eq!(
            h[3],
            Host {
                host: "::1".into(),
                port: 5433
            }
        );
    }

    fn hosts(list: &str) -> Vec<Host> {
        parse_hosts(list).unwrap()
    }

    fn parse_hosts(list: &str) -> Result<Vec<Host>, toml::de::Error> {
        #[derive(Deserialize)]
        struct T {
            h: Vec<Host>,
        }
        toml::from_str::<T>(&format!("h = {list}")).map(|t| t.h)
    }

    #[test]
    fn bad_hosts_are_refused() {
        for (bad, why) in [
            (r#"["::1"]"#, "write an IPv6 address as [address]:port"),
            (r#"["db:x"]"#, "the port is not a number"),
            (r#"["[::1"]"#, "no closing ]"),
            (r#"[":5432"]"#, "no host"),
        ] {
            let e = parse_hosts(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn the_id_of_the_person_is_refused_where_no_person_is_known_yet() {
        let c: SqlConfig =
            toml::from_str(r#"password_query = "SELECT password FROM u WHERE id = {id}""#).unwrap();
        let e = c.validate("directory.sql").unwrap_err();
        assert_eq!(e.key, "directory.sql.password_query");
        let c: SqlConfig = toml::from_str("").unwrap();
        assert!(c.validate("d").is_err(), "a password query is required");
    }
}
