//! Configuration files: TOML, unknown keys rejected, errors that name the
//! file, the key and the line without echoing the line itself (it may hold a
//! password).

use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod secret;
pub use secret::{Exposure, Secret, SecretError, SecretFile, either, holds_secret, judge};

/// Settings of the runtime itself, the `[runtime]` table of every helper.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Time a request may take before the helper answers its own timeout
    /// reply. Keep it below the Time-out set for the helper in WebAdmin.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Requests processed at once; further requests wait (none is dropped).
    pub max_in_flight: usize,
    /// Longest request line read; longer lines are discarded and answered
    /// with an error.
    pub max_line_bytes: usize,
    /// Period of the `* stats` line, and of the metrics file; `0s` turns
    /// both off.
    #[serde(with = "humantime_serde")]
    pub stats_interval: Duration,
    /// `[runtime.metrics]`: the counters for Prometheus.
    pub metrics: MetricsConfig,
}

/// Where the helper's counters go for node_exporter's textfile collector.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// The file written at each stats interval (none: no metrics file).
    pub file: Option<PromFile>,
}

/// The path of a metrics file: absolute, ending in `.prom` (the textfile
/// collector reads nothing else), in a directory. Checked once, where the
/// configuration is read, so the error carries its line.
#[derive(Clone, Debug, PartialEq)]
pub struct PromFile {
    path: PathBuf,
}

impl PromFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file name without `.prom`, which tells two instances of one
    /// helper apart in the metrics.
    pub fn stem(&self) -> &str {
        self.path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
    }
}

impl<'de> Deserialize<'de> for PromFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PromFile, D::Error> {
        let path = PathBuf::deserialize(d)?;
        let named = path.extension().is_some_and(|e| e == "prom")
            && path.file_stem().and_then(|s| s.to_str()).is_some();
        if !path.is_absolute() || !named {
            return Err(serde::de::Error::custom(
                "must be an absolute path ending in .prom (node_exporter's textfile collector reads only *.prom files)",
            ));
        }
        Ok(PromFile { path })
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            deadline: Duration::from_secs(20),
            max_in_flight: 256,
            max_line_bytes: 64 * 1024,
            stats_interval: Duration::from_secs(300),
            metrics: MetricsConfig::default(),
        }
    }
}

/// Where logs go: journald when its socket exists, else `file`, else nowhere.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub journald: bool,
    pub file: Option<PathBuf>,
    /// error, warn, info, debug or trace.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            journald: true,
            file: None,
            level: "info".into(),
        }
    }
}

/// What every helper's configuration provides to the runtime.
pub trait HelperConfig: DeserializeOwned + Default + Clone + Send + Sync + 'static {
    fn runtime(&self) -> &RuntimeConfig;
    fn log(&self) -> &LogConfig;
    /// Checks that span several keys; single values are checked while they
    /// are deserialized so that their errors carry a line number.
    fn validate(&self) -> Result<(), KeyError> {
        Ok(())
    }
}

/// A semantic error found after parsing, tied to a dotted key path.
#[derive(Debug)]
pub struct KeyError {
    pub key: String,
    pub message: String,
    /// Where in the file, when the helper knows (a `toml::Spanned` span);
    /// otherwise the line is looked for by the key.
    pub span: Option<std::ops::Range<usize>>,
}

impl KeyError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> KeyError {
        KeyError {
            key: key.into(),
            message: message.into(),
            span: None,
        }
    }

    /// The error, placed at `span` (byte offsets into the file).
    pub fn at(self, span: std::ops::Range<usize>) -> KeyError {
        KeyError {
            span: Some(span),
            ..self
        }
    }
}

/// The configuration of a helper that has only the common sections.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BasicConfig {
    pub runtime: RuntimeConfig,
    pub log: LogConfig,
}

impl HelperConfig for BasicConfig {
    fn runtime(&self) -> &RuntimeConfig {
        &self.runtime
    }
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

/// A configuration that could not be loaded; its Display is the message an
/// administrator sees from `--check-config`.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Loads a configuration: the defaults when no file is named.
pub fn load<C: HelperConfig>(path: Option<&Path>) -> Result<C, ConfigError> {
    let Some(path) = path else {
        let c = C::default();
        check_common(&c, Path::new("(built-in defaults)"), "")?;
        return Ok(c);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
    let (parsed, held) = secret::collect(|| toml::from_str::<C>(&text));
    let config: C = parsed.map_err(|e| {
        let location = e
            .span()
            .map(|s| {
                let (line, col) = line_col(&text, s.start);
                format!("line {line}, column {col}: ")
            })
            .unwrap_or_default();
        ConfigError(format!(
            "{}: {location}{}",
            path.display(),
            redact(e.message().trim_end())
        ))
    })?;
    check_common(&config, path, &text)?;
    if let Some((i, e)) = secret::check(path, &held) {
        let start = held[i].span.start;
        let key = key_at(&text, start).unwrap_or_default();
        return Err(ConfigError(format!(
            "{}: line {}, key `{key}` holds a secret: {e}",
            path.display(),
            line_col(&text, start).0,
        )));
    }
    Ok(config)
}

fn check_common<C: HelperConfig>(c: &C, path: &Path, text: &str) -> Result<(), ConfigError> {
    let rt = c.runtime();
    let checks = [
        (
            rt.deadline.is_zero(),
            "runtime.deadline",
            "must be more than 0s",
        ),
        (
            rt.max_in_flight == 0,
            "runtime.max_in_flight",
            "must be at least 1",
        ),
        (
            rt.max_line_bytes < 1024,
            "runtime.max_line_bytes",
            "must be at least 1024",
        ),
        (
            rt.metrics.file.is_some() && rt.stats_interval.is_zero(),
            "runtime.stats_interval",
            "must be more than 0s when runtime.metrics.file is set (the file is written at each interval)",
        ),
        (
            !matches!(
                c.log().level.as_str(),
                "error" | "warn" | "info" | "debug" | "trace"
            ),
            "log.level",
            "must be one of error, warn, info, debug, trace",
        ),
    ];
    let failed = checks
        .iter()
        .find(|(bad, _, _)| *bad)
        .map(|(_, key, msg)| KeyError::new(*key, *msg));
    match failed.map_or_else(|| c.validate(), Err) {
        Ok(()) => Ok(()),
        Err(e) => {
            let line = (e.span.as_ref().map(|s| line_col(text, s.start).0))
                .or_else(|| key_line(text, &e.key))
                .map(|l| format!("line {l}, "))
                .unwrap_or_default();
            Err(ConfigError(format!(
                "{}: {line}key `{}`: {}",
                path.display(),
                e.key,
                e.message
            )))
        }
    }
}

/// serde's "invalid type: string \"…\", expected …" quotes the offending
/// value, which may be a password; keep only what was expected.
fn redact(message: &str) -> String {
    for kind in ["invalid type", "invalid value", "invalid length"] {
        if let Some(rest) = message.strip_prefix(kind) {
            if let Some(pos) = rest.find(", expected ") {
                return format!("{kind}{}", &rest[pos..]);
            }
        }
    }
    message.to_string()
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |p| p + 1) + 1;
    (line, col)
}

/// The line where a dotted key (`directory.static.users[2].password`) is
/// set, from the spans toml's parser keeps. A key may itself hold dots
/// (`directory.domains.example.com.base`): the longest names that exist are
/// tried first. `None` when the key is not in the file (a default).
fn key_line(text: &str, key: &str) -> Option<usize> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let segments: Vec<&str> = key.split('.').collect();
    let start = key_span(root.get_ref(), &segments)?;
    Some(line_col(text, start).0)
}

/// The dotted key (`store.redis.urls[1]`) whose value is at `offset`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let root = toml::de::DeTable::parse(text).ok()?;
    value_key(root.get_ref(), offset)
}

fn value_key(table: &toml::de::DeTable<'_>, offset: usize) -> Option<String> {
    table.iter().find_map(|(k, v)| {
        let name = k.get_ref().as_ref();
        let inner = match v.get_ref() {
            toml::de::DeValue::Table(t) => value_key(t, offset)?,
            toml::de::DeValue::Array(a) => a.iter().enumerate().find_map(|(i, item)| {
                let at = format!("[{i}]");
                match item.get_ref() {
                    toml::de::DeValue::Table(t) => Some(format!("{at}.{}", value_key(t, offset)?)),
                    _ => item.span().contains(&offset).then_some(at),
                }
            })?,
            _ => return v.span().contains(&offset).then(|| name.to_string()),
        };
        Some(format!(
            "{name}{}",
            if inner.starts_with('[') {
                inner
            } else {
                format!(".{inner}")
            }
        ))
    })
}

/// Where the key `segments` names starts in a table.
fn key_span(table: &toml::de::DeTable<'_>, segments: &[&str]) -> Option<usize> {
    (1..=segments.len()).rev().find_map(|n| {
        let joined = segments[..n].join(".");
        // `name[2]`: element 2 of the array `name`.
        let (name, index) = match joined.strip_suffix(']').and_then(|j| j.rsplit_once('[')) {
            Some((name, i)) => (name.to_string(), Some(i.parse::<usize>().ok()?)),
            None => (joined, None),
        };
        let (k, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name)?;
        let (value, span) = match index {
            Some(i) => match v.get_ref() {
                toml::de::DeValue::Array(a) => {
                    let item = a.get(i)?;
                    (item.get_ref(), item.span().start)
                }
                _ => return None,
            },
            None => (v.get_ref(), k.span().start),
        };
        match (&segments[n..], value) {
            ([], _) => Some(span),
            (rest, toml::de::DeValue::Table(t)) => key_span(t, rest),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::new(text)
    }

    /// A tiny stand-in for a temp file, so the tests need no extra crate.
    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn new(text: &str) -> TempPath {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "cgp-config-test-{}-{}.toml",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&p, text).unwrap();
                TempPath(p)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn defaults_without_a_file() {
        let c: BasicConfig = load(None).unwrap();
        assert_eq!(c.runtime.deadline, Duration::from_secs(20));
        assert_eq!(c.runtime.max_in_flight, 256);
        assert_eq!(c.runtime.max_line_bytes, 65536);
    }

    #[test]
    fn reads_durations_and_sizes() {
        let f = write(
            "[runtime]\ndeadline = \"2s 500ms\"\nmax_in_flight = 8\n[log]\nlevel = \"debug\"\n",
        );
        let c: BasicConfig = load(Some(&f.0)).unwrap();
        assert_eq!(c.runtime.deadline, Duration::from_millis(2500));
        assert_eq!(c.runtime.max_in_flight, 8);
        assert_eq!(c.log.level, "debug");
    }

    #[test]
    fn unknown_key_names_file_key_and_line() {
        let f = write("[runtime]\ndeadline = \"2s\"\nmax_inflight = 8\n");
        let e = load::<BasicConfig>(Some(&f.0)).unwrap_err().to_string();
        assert!(e.starts_with(&f.0.display().to_string()), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("max_inflight"), "{e}");
    }

    #[test]
    fn bad_value_does_not_echo_the_line() {
        let f = write("[runtime]\ndeadline = \"hunter2-secret\"\n");
        let e = load::<BasicConfig>(Some(&f.0)).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn semantic_error_names_the_key_and_its_line() {
        let f = write("# comment\n[runtime]\nmax_in_flight = 0\n");
        let e = load::<BasicConfig>(Some(&f.0)).unwrap_err().to_string();
        assert!(
            e.contains("line 3, key `runtime.max_in_flight`: must be at least 1"),
            "{e}"
        );
        let f = write("[log]\nlevel = \"loud\"\n");
        let e = load::<BasicConfig>(Some(&f.0)).unwrap_err().to_string();
        assert!(e.contains("line 2, key `log.level`"), "{e}");
    }

    #[test]
    fn semantic_errors_in_arrays_of_tables_and_dotted_names_point_at_their_line() {
        let text = "[[a.users]]\nname = \"x\"\n[[a.users]]\nname = \"y\"\n\n[a.domains.\"ex.test\"]\nbase = \"\"\n";
        // Element 1's key, not the first `name =` of the file.
        assert_eq!(key_line(text, "a.users[1].name"), Some(4));
        assert_eq!(key_line(text, "a.users[0].name"), Some(2));
        assert_eq!(key_line(text, "a.domains.ex.test.base"), Some(7));
        assert_eq!(key_line(text, "a.users[2].name"), None);
        assert_eq!(key_line(text, "a.missing"), None);
    }

    #[test]
    fn type_errors_do_not_echo_the_value() {
        let f = write("[log]\nlevel = 1234567\n");
        let e = load::<BasicConfig>(Some(&f.0)).unwrap_err().to_string();
        assert!(
            e.contains("line 2") && e.contains("expected a string"),
            "{e}"
        );
        assert!(!e.contains("1234567"), "{e}");
    }

    #[test]
    fn metrics_file_is_an_absolute_prom_path_written_at_an_interval() {
        let f = write("[runtime.metrics]\nfile = \"/var/lib/node/cgp-auth.prom\"\n");
        let c: BasicConfig = load(Some(&f.0)).unwrap();
        let file = c.runtime.metrics.file.unwrap();
        assert_eq!(file.path(), Path::new("/var/lib/node/cgp-auth.prom"));
        assert_eq!(file.stem(), "cgp-auth");
        for bad in [
            "cgp-auth.prom",
            "/var/lib/node/cgp-auth.txt",
            "/var/lib/node/.prom",
        ] {
            let f = write(&format!("[runtime.metrics]\nfile = \"{bad}\"\n"));
            let e = load::<BasicConfig>(Some(&f.0)).unwrap_err().to_string();
            assert!(
                e.contains("line 2") && e.contains("ending in .prom"),
                "{bad}: {e}"
            );
        }
        let f =
            write("[runtime]\nstats_interval = \"0s\"\n[runtime.metrics]\nfile = \"/m/a.prom\"\n");
        let e = load::<BasicConfig>(Some(&f.0)).unwrap_err().to_string();
        assert!(e.contains("line 2, key `runtime.stats_interval`"), "{e}");
    }

    /// A helper's configuration with secrets in it.
    #[derive(Clone, Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct WithSecrets {
        runtime: RuntimeConfig,
        log: LogConfig,
        db: Db,
    }

    #[derive(Clone, Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Db {
        password: Option<Secret>,
        password_file: Option<SecretFile>,
    }

    impl HelperConfig for WithSecrets {
        fn runtime(&self) -> &RuntimeConfig {
            &self.runtime
        }
        fn log(&self) -> &LogConfig {
            &self.log
        }
    }

    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_secret_in_an_open_file_is_refused_naming_file_key_mode_and_fix() {
        let f = write("[log]\nlevel = \"info\"\n[db]\npassword = \"hunter2\"\n");
        chmod(&f.0, 0o644);
        let e = load::<WithSecrets>(Some(&f.0)).unwrap_err().to_string();
        let name = f.0.display().to_string();
        assert!(
            e.starts_with(&format!("{name}: line 4, key `db.password` holds a secret: {name}: mode 0644, open to others")),
            "{e}"
        );
        assert!(e.contains(&format!("run `chmod 600 {name}`")), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        chmod(&f.0, 0o600);
        let c = load::<WithSecrets>(Some(&f.0)).unwrap();
        assert_eq!(c.db.password.unwrap().expose(), "hunter2");
        // The same file without a secret may be read by anyone.
        let f = write("[log]\nlevel = \"info\"\n");
        chmod(&f.0, 0o644);
        load::<WithSecrets>(Some(&f.0)).unwrap();
    }

    #[test]
    fn an_open_secret_file_is_refused_and_a_missing_one_left_to_its_reader() {
        let secret = write("s3cret\n");
        chmod(&secret.0, 0o640);
        let f = write(&format!(
            "[db]\n\npassword_file = \"{}\"\n",
            secret.0.display()
        ));
        chmod(&f.0, 0o644);
        let e = load::<WithSecrets>(Some(&f.0)).unwrap_err().to_string();
        let name = secret.0.display().to_string();
        assert!(
            e.contains(&format!("line 3, key `db.password_file` holds a secret: {name}: mode 0640, readable by its group")),
            "{e}"
        );
        assert!(e.contains(&format!("run `chmod 600 {name}`")), "{e}");
        chmod(&secret.0, 0o600);
        load::<WithSecrets>(Some(&f.0)).unwrap();
        let f = write("[db]\npassword_file = \"/nonexistent/pw\"\n");
        load::<WithSecrets>(Some(&f.0)).unwrap();
    }

    #[test]
    fn a_value_that_holds_a_secret_sometimes_says_so() {
        #[derive(Clone, Debug, Default, Deserialize)]
        #[serde(default)]
        struct Urls {
            runtime: RuntimeConfig,
            log: LogConfig,
            urls: Vec<Url>,
        }
        #[derive(Clone, Debug, Default)]
        struct Url;
        impl<'de> Deserialize<'de> for Url {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Url, D::Error> {
                let u = toml::Spanned::<String>::deserialize(d)?;
                if u.get_ref().contains('@') {
                    holds_secret(u.span());
                }
                Ok(Url)
            }
        }
        impl HelperConfig for Urls {
            fn runtime(&self) -> &RuntimeConfig {
                &self.runtime
            }
            fn log(&self) -> &LogConfig {
                &self.log
            }
        }
        let f = write("urls = [\"redis://a\", \"redis://:pw@b\"]\n");
        chmod(&f.0, 0o604);
        let e = load::<Urls>(Some(&f.0)).unwrap_err().to_string();
        assert!(e.contains("line 1, key `urls[1]` holds a secret"), "{e}");
        let f = write("urls = [\"redis://a\"]\n");
        chmod(&f.0, 0o604);
        load::<Urls>(Some(&f.0)).unwrap();
    }

    #[test]
    fn keys_of_values_are_found_in_tables_and_arrays_of_tables() {
        let text =
            "a = 1\n[x.y]\np = \"s\"\n[[u]]\nn = \"1\"\n[[u]]\nn = \"2\"\nl = [\"q\", \"r\"]\n";
        let at = |needle: &str| key_at(text, text.find(needle).unwrap());
        assert_eq!(at("\"s\"").as_deref(), Some("x.y.p"));
        assert_eq!(at("\"2\"").as_deref(), Some("u[1].n"));
        assert_eq!(at("\"r\"").as_deref(), Some("u[1].l[1]"));
        assert_eq!(at("1\n").as_deref(), Some("a"));
    }

    #[test]
    fn missing_file_is_named() {
        let e = load::<BasicConfig>(Some(Path::new("/nonexistent/x.toml"))).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/x.toml: cannot read")
        );
    }
}
