//! `cgp-banner announce …`: an administrator's command, not the protocol
//! loop, so it prints to stdout/stderr. Every change goes through the spool
//! (see `announce.rs`); when no helper holds the store the command imports
//! the spool itself, so the change is in the store before it returns.

use crate::announce::{Announcement, Op, Spool, Target, new_id, now};
use crate::cli::AnnounceCmd;
use crate::config::BannerConfig;
use cgp_lookup::store::Store;
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
    let (Some(path), Some(spool_dir)) = (config.store.path.clone(), config.store.spool_dir())
    else {
        return Err("store.path is not set in the configuration".into());
    };
    let spool = Spool::new(&spool_dir);
    let list_all = match cmd {
        AnnounceCmd::Add {
            text,
            target,
            from,
            until,
            duration,
            types,
        } => {
            let a = announcement(text, target, from, until, duration, types)?;
            spool
                .push(&Op::Add(a.clone()))
                .map_err(|e| format!("cannot queue: {e}"))?;
            println!("{}", a.id);
            None
        }
        AnnounceCmd::Remove { id } => {
            spool
                .push(&Op::Remove { id })
                .map_err(|e| format!("cannot queue: {e}"))?;
            None
        }
        AnnounceCmd::List { all } => Some(all),
    };
    let applied = match Store::open(&path, LOCK_WAIT) {
        Ok((store, _)) => Some(spool.import(&store)?),
        Err(reason) => {
            let waiting = spool.pending().len();
            eprintln!(
                "store not opened ({reason}); {waiting} change(s) queued for the running helper, \
                 applied within {}",
                humantime::format_duration(config.store.spool_poll)
            );
            None
        }
    };
    if let Some(all) = list_all {
        let mut shown = applied.unwrap_or_else(|| spool.snapshot());
        shown.sort_by(|a, b| (a.from, &a.id).cmp(&(b.from, &b.id)));
        let t = now();
        for a in shown.iter().filter(|a| all || a.until > t) {
            println!("{}", line(a));
        }
    }
    Ok(())
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
