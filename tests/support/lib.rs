//! Support for the suite's whole-binary tests: finding the built binaries,
//! running a helper on a transcript and checking the Helper protocol contract
//! on everything it wrote.

pub mod banner;
pub mod fake_ami;
pub mod fake_cli;
pub mod fake_cloudpbx;
pub mod fake_mxproxy;
pub mod haproxy;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod serve;
pub mod session;
pub mod slapd;
pub mod transcript;

use std::path::{Path, PathBuf};

/// The workspace's top directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// A binary built by this workspace (`cargo build --workspace
/// --all-targets` builds them all; `cargo test` does too).
pub fn bin(name: &str) -> PathBuf {
    // Tests run from target/<profile>/deps/.
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    for candidate in [
        profile_dir.join(name),
        profile_dir.join("examples").join(name),
    ] {
        if candidate.exists() {
            return candidate;
        }
    }
    panic!(
        "binary {name} is not built in {}; run `cargo build --workspace --all-targets` first",
        profile_dir.display()
    )
}

/// The testdata directory of one helper.
pub fn testdata(dir: &str) -> PathBuf {
    workspace().join("testdata").join(dir)
}

/// A `[log]` section writing warnings to `<dir>/helper.log`, and that path.
pub fn warn_log(dir: &Path) -> (String, PathBuf) {
    let path = dir.join("helper.log");
    let section = format!(
        "[log]\njournald = false\nfile = \"{}\"\nlevel = \"warn\"\n",
        path.display()
    );
    (section, path)
}

/// The whole log at `path`, and its `unknown shape` lines.
pub fn unknown_shape_lines(path: &Path) -> (String, Vec<String>) {
    let logged = std::fs::read_to_string(path).unwrap_or_default();
    let lines = logged
        .lines()
        .filter(|l| l.contains("unknown shape"))
        .map(str::to_string)
        .collect();
    (logged, lines)
}
