//! Writes the suite's man pages, one per binary (plus one per subcommand),
//! from each binary's own clap definition, so that the pages cannot drift
//! from the options the binaries really take. Run at package build time:
//!
//! ```text
//! cargo run -p cgp-manpages -- OUT_DIR [EXAMPLES_DIR]
//! ```
//!
//! Each helper page gets a CONFIGURATION section: the `[runtime]` and `[log]`
//! keys every helper shares, with their defaults read from the runtime
//! itself, and the helper's example configurations from `EXAMPLES_DIR`
//! (default `packaging/examples`): `<short>.toml` and `<short>-*.toml`.

use cgp_runtime::config::{LogConfig, RuntimeConfig};
use clap::{Command, CommandFactory};
use roff::{Roff, bold, italic, roman};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

// The binaries' own command-line modules, compiled here as they are compiled
// into each binary. The generator reads only the clap definitions, never
// parsed values, hence the dead-code allowance.
#[allow(dead_code)]
#[path = "../../../helpers/cgp-auth/src/cli.rs"]
mod auth;
#[allow(dead_code)]
#[path = "../../../helpers/cgp-balancer/src/cli.rs"]
mod balancer;
#[allow(dead_code)]
#[path = "../../../helpers/cgp-banner/src/cli.rs"]
mod banner;
#[allow(dead_code)]
#[path = "../../../helpers/cgp-filter/src/cli.rs"]
mod filter;
#[allow(dead_code)]
#[path = "../../../helpers/cgp-helper-sim/src/cli.rs"]
mod sim;

/// One binary; for a helper, the short name its example configuration and
/// its store directory use (the simulator has neither).
struct Page {
    command: Command,
    short: Option<&'static str>,
}

fn pages() -> Vec<Page> {
    let helper = |command, short| Page {
        command,
        short: Some(short),
    };
    vec![
        helper(auth::Cli::command(), "auth"),
        helper(filter::Cli::command(), "filter"),
        helper(banner::Cli::command(), "banner"),
        helper(balancer::Cli::command(), "balancer"),
        Page {
            command: sim::Cli::command(),
            short: None,
        },
    ]
}

const MANUAL: &str = "CommuniGate Pro helpers";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (out, examples) = match args.as_slice() {
        [out] => (PathBuf::from(out), default_examples()),
        [out, examples] => (PathBuf::from(out), PathBuf::from(examples)),
        _ => {
            eprintln!("usage: cgp-manpages OUT_DIR [EXAMPLES_DIR]");
            return ExitCode::from(2);
        }
    };
    match write_all(&out, &examples) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cgp-manpages: {e}");
            ExitCode::from(1)
        }
    }
}

fn default_examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Writes every page into `out` and returns the files written.
fn write_all(out: &Path, examples: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out)?;
    let all = pages();
    let names: Vec<String> = all
        .iter()
        .map(|p| p.command.get_name().to_string())
        .collect();
    let mut written = Vec::new();
    for p in all {
        let mut cmd = p.command.disable_help_subcommand(true);
        // Gives subcommands their `parent-sub` display names.
        cmd.build();
        let name = cmd.get_name().to_string();
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .manual(MANUAL)
            .render(&mut page)?;
        let mut extra = Roff::new();
        match p.short {
            Some(short) => {
                let found = find_examples(examples, short, &name)?;
                helper_sections(&mut extra, short, &found);
            }
            None => sim_sections(&mut extra),
        }
        see_also(&mut extra, &name, &names);
        page.extend_from_slice(extra.to_roff().as_bytes());
        let path = out.join(format!("{name}.1"));
        std::fs::write(&path, page)?;
        written.push(path);
        write_subcommands(&cmd, out, &mut written)?;
    }
    Ok(written)
}

/// Pages for subcommands such as `cgp-banner announce`, named the way
/// clap_mangen names them (`cgp-banner-announce.1`).
fn write_subcommands(cmd: &Command, out: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        written.push(
            clap_mangen::Man::new(sub.clone())
                .manual(MANUAL)
                .generate_to(out)?,
        );
        write_subcommands(sub, out, written)?;
    }
    Ok(())
}

/// The helper's example configurations, by file name: `<short>.toml`,
/// `<short>-<variant>.toml` (e.g. `auth-ldap.toml`) or `<binary>.toml`.
fn find_examples(dir: &Path, short: &str, name: &str) -> std::io::Result<Vec<(String, String)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let file = entry?.file_name().to_string_lossy().into_owned();
        let Some(stem) = file.strip_suffix(".toml") else {
            continue;
        };
        if stem == short || stem == name || stem.starts_with(&format!("{short}-")) {
            found.push((file.clone(), std::fs::read_to_string(dir.join(&file))?));
        }
    }
    found.sort();
    Ok(found)
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// CONFIGURATION, FILES and EXIT STATUS of a helper.
fn helper_sections(r: &mut Roff, short: &str, examples: &[(String, String)]) {
    let rt = RuntimeConfig::default();
    let log = LogConfig::default();
    r.control("SH", ["CONFIGURATION"]).text([
        roman("The configuration is a TOML file named with "),
        bold("--config"),
        roman(". Without it the built-in defaults apply. Unknown keys are refused; "),
        bold("--check-config"),
        roman(
            " reports the file, the key and the line of the first error and exits 1. \
             SIGHUP reloads the file; a file that does not load is refused and the running \
             configuration kept.",
        ),
    ]);
    r.control("SS", ["Common keys"]);
    let keys: [(&str, String, &str); 8] = [
        (
            "runtime.deadline",
            secs(rt.deadline),
            "time a request may take before the helper answers its timeout reply; keep it below the Time-out set in WebAdmin",
        ),
        (
            "runtime.max_in_flight",
            rt.max_in_flight.to_string(),
            "requests processed at once; further requests wait, none is dropped",
        ),
        (
            "runtime.max_line_bytes",
            rt.max_line_bytes.to_string(),
            "longest request line read; a longer line is discarded and answered with an error",
        ),
        (
            "runtime.stats_interval",
            secs(rt.stats_interval),
            "period of the * stats line in the CGP log and of the metrics file; 0s turns both off",
        ),
        (
            "runtime.metrics.file",
            "unset".to_string(),
            "Prometheus text file for node_exporter's textfile collector (an absolute path ending in .prom), replaced at each stats interval, mode 0644",
        ),
        (
            "log.journald",
            log.journald.to_string(),
            "log to journald when its socket exists",
        ),
        (
            "log.file",
            "unset".to_string(),
            "log file used when journald is off or absent (created mode 0600)",
        ),
        (
            "log.level",
            log.level.clone(),
            "error, warn, info, debug or trace",
        ),
    ];
    for (key, default, what) in keys {
        r.control("TP", [])
            .text([bold(key), roman(format!(" (default {default})"))])
            .text([roman(what)]);
    }
    if examples.is_empty() {
        r.control("SS", ["Example"]).text([roman(
            "See /usr/share/doc/cgp-helpers/examples/ for example configurations.",
        )]);
    }
    for (file, text) in examples {
        r.control("SS", [format!("Example: {file}").as_str()])
            .text([roman(format!(
                "Shipped as /usr/share/doc/cgp-helpers/examples/{file}:"
            ))]);
        r.control("PP", []).control("nf", []).control("RS", ["4"]);
        for line in text.lines() {
            r.text([roman(line)]);
        }
        r.control("RE", []).control("fi", []);
    }
    r.control("SH", ["FILES"]);
    for (path, what) in [
        (
            format!("/etc/cgp-helpers/{short}.toml"),
            "the configuration named with --config in WebAdmin (mode 0640, group cgp-helpers)",
        ),
        (
            format!("/var/lib/cgp-helpers/{short}/"),
            "the helper's local store, when it keeps one",
        ),
        (
            "/usr/share/doc/cgp-helpers/".to_string(),
            "deployment guide, troubleshooting guide and example configurations",
        ),
    ] {
        r.control("TP", []).text([italic(path)]).text([roman(what)]);
    }
    r.control("SH", ["EXIT STATUS"]).text([roman(
        "0 after QUIT, end of input or SIGTERM once the requests in flight are answered, \
         and for a valid --check-config; 1 when the configuration cannot be loaded or the \
         helper cannot start (the reason is the one line written to stderr).",
    )]);
}

/// EXIT STATUS of the simulator.
fn sim_sections(r: &mut Roff) {
    r.control("SH", ["EXIT STATUS"]).text([roman(
        "0 when the helper kept the protocol contract on every request; 1 on any \
         violation (the first 20 are printed on stderr; the summary line is on stdout \
         either way); 2 when the helper cannot be started, the transcript cannot be \
         read, or neither --transcript nor --generate is given. The tap subcommand \
         ends as its helper ended (the same exit status, or the same signal), and \
         exits 1 when the helper cannot be started.",
    )]);
}

/// SEE ALSO: the other pages and the guides.
fn see_also(r: &mut Roff, name: &str, all: &[String]) {
    let mut see: Vec<_> = all
        .iter()
        .filter(|n| n.as_str() != name)
        .map(|n| format!("{n}(1)"))
        .collect();
    see.sort();
    r.control("SH", ["SEE ALSO"]).text([roman(format!(
        "{}; /usr/share/doc/cgp-helpers/deployment.md and troubleshooting.md.",
        see.join(", ")
    ))]);
}
