//! `cgp-banner announce …`: an administrator's command, not the protocol
//! loop, so it prints to stdout/stderr. On the local store every change goes
//! through the spool (see `announce.rs`); when no helper holds the store the
//! command imports the spool itself, so the change is in the store before it
//! returns. With `store.backend = "redis"` it writes Redis directly.

use crate::announce::{Announcement, Op, Spool, Target, decode, new_id, now, shared_key};
use crate::cli::AnnounceCmd;
use crate::config::BannerConfig;
use cgp_lookup::store::remote::{Health, Outcome, RedisConfig, RedisStore};
use cgp_lookup::store::{Backend, Store};
use cgp_runtime::CommonArgs;
use cgp_runtime::config::load;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

/// How long the command waits for a store lock before leaving the change to
/// the running helper.
const LOCK_WAIT: Duration = Duration::from_millis(300);

pub fn announce(common: &CommonArgs, cmd: AnnounceCmd) -> ExitCode {
    match run(common, cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cgp-banner announce: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(common: &CommonArgs, cmd: AnnounceCmd) -> Result<(), String> {
    let config: BannerConfig = load(common.config.as_deref()).map_err(|e| e.to_string())?;
    let (op, list_all) = match cmd {
        AnnounceCmd::Add {
            text,
            target,
            from,
            until,
            duration,
            types,
        } => (
            Some(Op::Add(announcement(
                text, target, from, until, duration, types,
            )?)),
            None,
        ),
        AnnounceCmd::Remove { id } => (Some(Op::Remove { id }), None),
        AnnounceCmd::List { all } => (None, Some(all)),
    };
    let shown = match config.store.backend {
        Backend::Sled => local(&config, op.as_ref())?,
        Backend::Redis => shared(&config, op.as_ref(), list_all.is_some())?,
    };
    if let Some(Op::Add(a)) = &op {
        println!("{}", a.id);
    }
    if let Some(all) = list_all {
        let mut shown = shown;
        shown.sort_by(|a, b| (a.from, &a.id).cmp(&(b.from, &b.id)));
        let t = now();
        for a in shown.iter().filter(|a| all || a.until > t) {
            println!("{}", line(a));
        }
    }
    Ok(())
}

/// Queues `op` in the spool and imports it when no helper holds the
/// store; the announcements as stored, or as the running helper last wrote
/// them.
fn local(config: &BannerConfig, op: Option<&Op>) -> Result<Vec<Announcement>, String> {
    let (Some(path), Some(spool_dir)) = (config.store.path.clone(), config.store.spool_dir())
    else {
        return Err("store.path is not set in the configuration".into());
    };
    let spool = Spool::new(&spool_dir);
    if let Some(op) = op {
        spool.push(op).map_err(|e| format!("cannot queue: {e}"))?;
    }
    match Store::open(&path, LOCK_WAIT) {
        Ok((store, _)) => spool.import(&store),
        Err(reason) => {
            let waiting = spool.pending().len();
            eprintln!(
                "store not opened ({reason}); {waiting} change(s) queued for the running helper, \
                 applied within {}",
                humantime::format_duration(config.store.spool_poll)
            );
            Ok(spool.snapshot())
        }
    }
}

/// Applies `op` in Redis, on the first of `store.redis.urls` that answers,
/// and reads the announcements there when `list`. Every member shows the
/// change within `store.refresh`.
fn shared(config: &BannerConfig, op: Option<&Op>, list: bool) -> Result<Vec<Announcement>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start: {e}"))?;
    runtime.block_on(async {
        let mut unreachable = Vec::new();
        for url in &config.store.redis.urls {
            let one = RedisConfig {
                urls: vec![url.clone()],
                ..config.store.redis.clone()
            };
            let redis = RedisStore::new(&one).map_err(|e| e.to_string())?;
            match apply(&redis, op, list).await {
                Ok(shown) => return shown,
                Err(why) => unreachable.push(why),
            }
        }
        Err(format!(
            "Redis unreachable, nothing changed: {}",
            unreachable.join("; ")
        ))
    })
}

/// One server's attempt: the outer `Err` says it could not be had (the
/// next URL is tried), the inner one that it refused the change.
async fn apply(
    redis: &RedisStore,
    op: Option<&Op>,
    list: bool,
) -> Result<Result<Vec<Announcement>, String>, String> {
    let key = shared_key(redis);
    match op {
        Some(Op::Add(a)) => {
            let json = serde_json::to_vec(a).map_err(|e| e.to_string())?;
            had(redis.hash_set(&key, &a.id, &json).await)?;
        }
        Some(Op::Remove { id }) => {
            let removed = had(redis.hash_remove(&key, id).await)?;
            if !removed {
                return Ok(Err(format!("no announcement has the id {id:?}")));
            }
        }
        None => {}
    }
    if !list {
        return Ok(Ok(Vec::new()));
    }
    Ok(Ok(decode(had(redis.hash_all(&key).await)?)))
}

/// The value of an operation, or why the server could not be had (the
/// server's URL, without its password, and the cause).
fn had<T>(o: Outcome<T>) -> Result<T, String> {
    match (o.result, o.health) {
        (Ok(v), _) => Ok(v),
        (Err(_), Some(Health::Lost(why))) => Err(why),
        (Err(e), _) => Err(e.to_string()),
    }
}

fn announcement(
    text: String,
    target: String,
    from: Option<String>,
    until: Option<String>,
    duration: Option<String>,
    types: Vec<String>,
) -> Result<Announcement, String> {
    if text.trim().is_empty() {
        return Err("--text must not be empty".into());
    }
    let target = Target::try_from(target)?;
    let from = from.map_or(Ok(now()), |s| time(&s))?;
    let until = match (until, duration) {
        (Some(u), _) => time(&u)?,
        (None, Some(text)) => {
            let d = humantime::parse_duration(&text).map_err(|e| format!("--for {text:?}: {e}"))?;
            let until = from.saturating_add(d.as_secs());
            Announcement::check(from, until).map_err(|e| format!("--for {text:?}: {e}"))?;
            until
        }
        (None, None) => return Err("give --until or --for".into()),
    };
    Announcement::check(from, until).map_err(|e| e.to_string())?;
    Ok(Announcement {
        id: new_id(),
        text,
        target,
        from,
        until,
        types,
    })
}

fn time(s: &str) -> Result<u64, String> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s:?}: {e} (use RFC 3339, e.g. 2026-11-23T08:00:00Z)"))
        .map(|t| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

fn line(a: &Announcement) -> String {
    let show =
        |secs: u64| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs));
    let types = if a.types.is_empty() {
        "*".to_string()
    } else {
        a.types.join(",")
    };
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}",
        a.id,
        show(a.from),
        show(a.until),
        String::from(a.target.clone()),
        types,
        a.text.escape_debug()
    )
}
