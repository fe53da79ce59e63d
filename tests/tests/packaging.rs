//! The Debian package and the man pages: built from this workspace's binaries
//! (the debug build the other tests use), inspected with dpkg-deb, then
//! installed, reconfigured, removed and purged with dpkg into a temporary
//! root. As root dpkg runs directly (no chroot, the maintainer scripts honour
//! DPKG_ROOT); as another user it runs under fakeroot, whose saved state the
//! checks read back, so the same assertions hold either way.

use cgp_tests::{bin, workspace};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const BINARIES: [&str; 5] = [
    "cgp-auth",
    "cgp-filter",
    "cgp-banner",
    "cgp-balancer",
    "cgp-helper-sim",
];
const HELPERS: [&str; 4] = ["cgp-auth", "cgp-filter", "cgp-banner", "cgp-balancer"];

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).expect("UTF-8 output")
}

/// The package, built once for all the tests of this file, into the build
/// profile's directory (a temporary directory held by a static would never
/// be removed).
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let bin_dir = bin("cgp-auth").parent().expect("profile dir").to_path_buf();
        let out = bin_dir.join("packaging-test");
        let _ = std::fs::remove_dir_all(&out);
        let printed = stdout(
            Command::new(workspace().join("packaging/debian/build-deb.sh"))
                .arg("--bin-dir")
                .arg(&bin_dir)
                .arg("--out")
                .arg(&out)
                .args(["--compress", "gzip"]),
        );
        let path = PathBuf::from(printed.trim());
        assert!(path.is_file(), "build-deb.sh printed {printed:?}");
        path
    })
}

/// `dpkg-deb -c` as path → (mode string, owner/group).
fn contents(deb: &Path) -> BTreeMap<String, (String, String)> {
    stdout(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f[5].trim_start_matches('.').to_string();
            (path, (f[0].to_string(), f[1].to_string()))
        })
        .collect()
}

/// The names of the files of a workspace directory that end in `suffix`.
fn files_ending(dir: &str, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(workspace().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .collect();
    names.sort();
    names
}

#[test]
fn package_holds_binaries_man_pages_examples_and_closed_config_dir() {
    let files = contents(deb());
    let entry = |p: &str| {
        files
            .get(p)
            .unwrap_or_else(|| panic!("{p} missing from the package: {files:#?}"))
            .clone()
    };
    for b in BINARIES {
        assert_eq!(
            entry(&format!("/usr/bin/{b}")),
            ("-rwxr-xr-x".into(), "root/root".into())
        );
        assert_eq!(
            entry(&format!("/usr/share/man/man1/{b}.1.gz")).0,
            "-rw-r--r--"
        );
    }
    // Secrets live under /etc/cgp-helpers: never readable by others, even
    // before postinst hands the directory to the group.
    assert_eq!(entry("/etc/cgp-helpers/").0, "drwxr-x---");
    assert_eq!(entry("/var/lib/cgp-helpers/").0, "drwxr-x---");
    assert_eq!(entry("/var/log/cgp-helpers/").0, "drwxr-x---");
    entry("/etc/logrotate.d/cgp-helpers");
    entry("/usr/share/doc/cgp-helpers/copyright");
    entry("/usr/share/doc/cgp-helpers/changelog.Debian.gz");
    for doc in files_ending("docs", ".md") {
        entry(&format!("/usr/share/doc/cgp-helpers/{doc}"));
    }
    for example in files_ending("packaging/examples", ".toml") {
        entry(&format!("/usr/share/doc/cgp-helpers/examples/{example}"));
    }
    for (path, (mode, owner)) in &files {
        assert_eq!(owner, "root/root", "{path}");
        assert_ne!(&mode[8..9], "w", "{path} is world-writable");
    }
}

#[test]
fn control_fields_and_maintainer_scripts() {
    let field = |name: &str| {
        stdout(Command::new("dpkg-deb").arg("-f").arg(deb()).arg(name))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "cgp-helpers");
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    let arch = stdout(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(field("Architecture"), arch.trim());
    let depends = field("Depends");
    assert!(depends.starts_with("libc6 (>= 2."), "{depends}");
    assert!(
        depends.contains("passwd"),
        "postinst runs groupadd: {depends}"
    );

    let control = tempfile::tempdir().expect("temp dir");
    run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(deb())
        .arg(control.path()));
    assert_eq!(
        std::fs::read_to_string(control.path().join("conffiles")).expect("conffiles"),
        "/etc/logrotate.d/cgp-helpers\n"
    );
    for script in ["postinst", "postrm"] {
        let path = control.path().join(script);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).expect("script").permissions(),
        );
        assert_eq!(mode & 0o777, 0o755, "{script}");
        run(Command::new("sh").arg("-n").arg(&path));
    }
    // Every packaged file is listed with its checksum.
    let sums = std::fs::read_to_string(control.path().join("md5sums")).expect("md5sums");
    for b in BINARIES {
        assert!(
            sums.contains(&format!("  usr/bin/{b}\n")),
            "{b} not in md5sums"
        );
    }
}

/// A throw-away root that dpkg can install into: an empty package database
/// that knows the packages cgp-helpers depends on (copied from this
/// system's database, so the Depends line is checked for real), and the
/// account files groupadd edits.
struct Root {
    dir: tempfile::TempDir,
    fakeroot_state: Option<PathBuf>,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        for sub in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "etc"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        let deps = ["libc6", "libgcc-s1", "passwd"];
        let status = run(Command::new("dpkg-query").arg("-s").args(deps)).stdout;
        std::fs::write(d.join("var/lib/dpkg/status"), status).expect("status");
        let installed = stdout(
            Command::new("dpkg-query")
                .args(["-W", "-f", "${binary:Package}\n"])
                .args(deps),
        );
        for pkg in installed.lines() {
            std::fs::write(d.join(format!("var/lib/dpkg/info/{pkg}.list")), "").expect("list");
        }
        std::fs::write(d.join("var/lib/dpkg/available"), "").expect("available");
        std::fs::write(d.join("etc/group"), "root:x:0:\n").expect("group");
        std::fs::write(d.join("etc/gshadow"), "root:*::\n").expect("gshadow");
        let fakeroot_state = (unsafe { libc::geteuid() } != 0).then(|| {
            let state = d.join("fakeroot.state");
            std::fs::write(&state, "").expect("fakeroot state");
            state
        });
        Root {
            dir,
            fakeroot_state,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }

    /// A command run as root: directly, or under fakeroot with the saved
    /// ownership state of this root.
    fn as_root(&self, program: &str) -> Command {
        let mut cmd = match &self.fakeroot_state {
            None => Command::new(program),
            Some(state) => {
                let mut c = Command::new("fakeroot");
                c.arg("-i").arg(state).arg("-s").arg(state).arg(program);
                c
            }
        };
        cmd.env("DPKG_ROOT", self.dir.path());
        cmd
    }

    fn dpkg(&self, args: &[&str]) -> Output {
        let root = format!("--root={}", self.dir.path().display());
        run(self
            .as_root("dpkg")
            .args([
                root.as_str(),
                "--force-script-chrootless",
                "--log=/dev/null",
            ])
            .args(args))
    }

    /// Mode (octal) and group id, as root sees them.
    fn stat(&self, p: &str) -> (String, u32) {
        let out = stdout(self.as_root("stat").args(["-c", "%a %g"]).arg(self.path(p)));
        let (mode, gid) = out.trim().split_once(' ').expect("mode gid");
        (mode.to_string(), gid.parse().expect("gid"))
    }

    /// The package's state in this root's database (`ii`, `rc`), or None
    /// when the database no longer knows it.
    fn status(&self) -> Option<String> {
        let out = self
            .as_root("dpkg-query")
            .args(["-W", "-f", "${db:Status-Abbrev}", "cgp-helpers"])
            .output()
            .expect("dpkg-query");
        if out.status.success() {
            return Some(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no packages found matching cgp-helpers"),
            "{err}"
        );
        None
    }

    fn group_gid(&self) -> Option<u32> {
        std::fs::read_to_string(self.path("etc/group"))
            .expect("etc/group")
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f[0] == "cgp-helpers").then(|| f[2].parse().expect("gid"))
            })
    }
}

#[test]
fn installs_reconfigures_removes_and_purges_in_a_temporary_root() {
    let root = Root::new();
    let deb = deb().to_str().expect("UTF-8 path").to_string();
    root.dpkg(&["-i", &deb]);

    let gid = root
        .group_gid()
        .expect("postinst created the cgp-helpers group");
    assert_eq!(root.stat("/etc/cgp-helpers"), ("750".into(), gid));
    assert_eq!(root.stat("/var/lib/cgp-helpers"), ("2770".into(), gid));
    assert_eq!(root.stat("/var/log/cgp-helpers"), ("2770".into(), gid));
    for b in BINARIES {
        let version = stdout(Command::new(root.path(&format!("usr/bin/{b}"))).arg("--version"));
        assert_eq!(version.trim(), format!("{b} {}", env!("CARGO_PKG_VERSION")));
    }

    // The administrator's configuration and an override of the store
    // directory's mode survive a reinstall (the upgrade path).
    std::fs::write(root.path("etc/cgp-helpers/cgp-auth.toml"), "# site\n").expect("config");
    run(root.as_root("dpkg-statoverride").args([
        "--update",
        "--add",
        "root",
        "root",
        "0700",
        "/var/lib/cgp-helpers",
    ]));
    root.dpkg(&["-i", &deb]);
    assert_eq!(root.group_gid(), Some(gid), "group created once");
    assert_eq!(root.stat("/var/lib/cgp-helpers").0, "700");
    assert_eq!(root.stat("/etc/cgp-helpers"), ("750".into(), gid));

    // Remove keeps configuration; purge takes configuration, stores and
    // logs away.
    assert_eq!(root.status().as_deref(), Some("ii"));
    root.dpkg(&["-r", "cgp-helpers"]);
    assert_eq!(root.status().as_deref(), Some("rc"), "removed, config kept");
    for b in BINARIES {
        assert!(
            !root.path(&format!("usr/bin/{b}")).exists(),
            "{b} left behind"
        );
    }
    assert!(root.path("etc/cgp-helpers/cgp-auth.toml").exists());
    assert!(root.path("etc/logrotate.d/cgp-helpers").exists());
    root.dpkg(&["-P", "cgp-helpers"]);
    for gone in [
        "etc/cgp-helpers",
        "etc/logrotate.d/cgp-helpers",
        "var/lib/cgp-helpers",
        "var/log/cgp-helpers",
    ] {
        assert!(!root.path(gone).exists(), "{gone} left after purge");
    }
    assert_eq!(root.status(), None, "purged from the package database");
}

#[test]
fn every_example_configuration_passes_check_config() {
    let examples = files_ending("packaging/examples", ".toml");
    // The cluster examples (Redis), the resource-domain profiles and the
    // filter's text messages among them, by name.
    for named in [
        "auth-cluster.toml",
        "auth-resources.toml",
        "banner-cluster.toml",
        "filter-cluster.toml",
        "filter-sms.toml",
    ] {
        assert!(examples.iter().any(|e| e == named), "{named} missing");
    }
    for example in examples {
        // `auth-ldap.toml` is cgp-auth's, `banner.toml` cgp-banner's.
        let helper = format!(
            "cgp-{}",
            example.split(['-', '.']).next().unwrap_or_default()
        );
        assert!(
            HELPERS.contains(&helper.as_str()),
            "{example}: no helper {helper}"
        );
        let path = cgp_tests::example(&example);
        let text = stdout(
            Command::new(bin(&helper))
                .arg("--check-config")
                .arg("--config")
                .arg(&path),
        );
        assert!(text.contains("configuration is valid"), "{example}: {text}");
    }
}

/// The options of a page as `--help` prints them, without roff escapes.
fn long_options(help: &str) -> Vec<String> {
    let mut opts: Vec<String> = help
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(String::from)
        .collect();
    opts.sort();
    opts.dedup();
    opts
}

#[test]
fn man_pages_document_every_option_and_subcommand_the_binaries_accept() {
    let out = tempfile::tempdir().expect("temp dir");
    let examples = tempfile::tempdir().expect("temp dir");
    for (file, text) in [
        ("auth-ldap.toml", "# marker-7f3a: an auth example\n"),
        ("auth.toml", "# marker-91c2: the other auth example\n"),
        ("authority.toml", "# marker-0d4e: no helper's example\n"),
    ] {
        std::fs::write(examples.path().join(file), text).expect("example");
    }
    run(Command::new(bin("cgp-manpages"))
        .arg(out.path())
        .arg(examples.path()));
    let page = |name: &str| {
        std::fs::read_to_string(out.path().join(format!("{name}.1")))
            .unwrap_or_else(|e| panic!("{name}.1: {e}"))
            .replace("\\-", "-")
    };
    for b in BINARIES {
        let text = page(b);
        let help = stdout(Command::new(bin(b)).arg("--help"));
        let options = long_options(&help);
        assert!(options.contains(&"--version".to_string()), "{help}");
        for opt in options {
            assert!(text.contains(&opt), "{b}.1 lacks {opt}");
        }
        for sub in subcommands(&help) {
            page(&format!("{b}-{sub}"));
        }
        for section in ["EXIT STATUS", "SEE ALSO"] {
            assert!(has_section(&text, section), "{b}.1 lacks {section}");
        }
        for other in BINARIES.iter().filter(|o| **o != b) {
            assert!(
                text.contains(&format!("{other}(1)")),
                "{b}.1 SEE ALSO lacks {other}"
            );
        }
    }
    for b in HELPERS {
        let text = page(b);
        for section in ["CONFIGURATION", "FILES"] {
            assert!(has_section(&text, section), "{b}.1 lacks {section}");
        }
        // Defaults come from the runtime itself.
        assert!(text.contains("runtime.deadline"), "{b}.1");
        assert!(text.contains("(default 20s)"), "{b}.1");
        for marker in ["marker-7f3a", "marker-91c2"] {
            assert_eq!(
                text.contains(marker),
                b == "cgp-auth",
                "{b}.1 and the example configurations"
            );
        }
        assert!(!text.contains("marker-0d4e"), "{b}.1 took authority.toml");
    }
}

fn has_section(page: &str, name: &str) -> bool {
    page.lines()
        .any(|l| l == format!(".SH {name}") || l == format!(".SH \"{name}\""))
}

/// The subcommands `--help` lists under "Commands:", without `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect()
}
