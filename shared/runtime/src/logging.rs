//! Log set-up. CGP reads a helper's stderr only after it exits, so while the
//! helper runs nothing may go there: logs go to journald when its socket
//! exists, else to the configured file, else nowhere. `--log-stderr` is for
//! an administrator running the helper by hand.

use super::config::LogConfig;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

/// Where the logs of this process went, for the start-up `*` line.
#[derive(Debug, PartialEq, Eq)]
pub enum LogTarget {
    Journald,
    File(String),
    Stderr,
    Nowhere,
}

pub fn init(name: &'static str, cfg: &LogConfig, to_stderr: bool) -> Result<LogTarget, String> {
    let level: LevelFilter = cfg
        .level
        .parse()
        .map_err(|_| format!("log.level: unknown level {:?}", cfg.level))?;
    let registry = tracing_subscriber::registry().with(level);
    if to_stderr {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init();
        return Ok(LogTarget::Stderr);
    }
    if cfg.journald && Path::new(JOURNALD_SOCKET).exists() {
        if let Ok(layer) = tracing_journald::layer() {
            registry
                .with(layer.with_syslog_identifier(name.to_string()))
                .init();
            return Ok(LogTarget::Journald);
        }
    }
    if let Some(path) = &cfg.file {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("log.file: cannot open {}: {e}", path.display()))?;
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(Mutex::new(file)),
            )
            .init();
        return Ok(LogTarget::File(path.display().to_string()));
    }
    Ok(LogTarget::Nowhere)
}
