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
/// Runs the binary `helper` with `--check-config --config <config>`.
pub fn check_config(helper: &str, config: &Path) -> std::process::Output {
    std::process::Command::new(bin(helper))
        .arg("--check-config")
        .arg("--config")
        .arg(config)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {helper}: {e}"))
}

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

/// The testdata directory of one helper, its configuration files closed
/// to group and others (see [`close_config`]).
pub fn testdata(dir: &str) -> PathBuf {
    let path = workspace().join("testdata").join(dir);
    for entry in std::fs::read_dir(&path).expect("testdata directory") {
        let file = entry.expect("testdata entry").path();
        if file.extension().is_some_and(|e| e == "toml") {
            close_config(&file);
        }
    }
    path
}

/// An example configuration of `packaging/examples/`, closed to group and
/// others (see [`close_config`]).
pub fn example(name: &str) -> PathBuf {
    let path = workspace().join("packaging/examples").join(name);
    close_config(&path);
    path
}

/// Writes a helper's configuration file the way an administrator must:
/// mode 0600, since the helpers refuse one that holds a secret when group
/// or others may read it.
pub fn write_config(path: impl AsRef<Path>, text: impl AsRef<[u8]>) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path.as_ref())?;
    // An existing file keeps its mode through `open`: close it first.
    close_config(path.as_ref());
    file.write_all(text.as_ref())
}

/// Sets a checked-in configuration file (testdata, packaging/examples) to
/// mode 0600: git keeps no modes, and a checkout is readable by everyone.
pub fn close_config(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod 600 {}: {e}", path.display()));
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
