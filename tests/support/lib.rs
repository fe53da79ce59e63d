//! Support for the suite's whole-binary tests: finding the built binaries,
//! running a helper on a transcript and checking the Helper protocol contract
//! on everything it wrote.

pub mod banner;
pub mod fake_ami;
pub mod fake_cli;
pub mod haproxy;
pub mod postgres;
pub mod process;
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
