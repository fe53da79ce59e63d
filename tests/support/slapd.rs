// Usage: `let slapd = Slapd::start(&testdata("ldap").join("directory.ldif"));`
// then point a helper at `slapd.uri()`; `stop()`/`start_again()`, `freeze()`/
// `thaw()` inject faults; dropping it kills slapd and removes its directory.

//! A real OpenLDAP slapd (Debian `slapd` package) on a free loopback port,
//! loaded from an LDIF, run as `nobody` when the tests run as root.
//! The configuration follows the recipe in ecosystem.md §D.1, plus the
//! ppolicy overlay so that locked and expired accounts can be tested.

pub use crate::process::free_port;
use crate::process::{self, chown_tree, unprivileged, wait_ready};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The service account in `testdata/ldap/directory.ldif`.
pub const SERVICE_DN: &str = "cn=cgp-helper,ou=services,dc=example,dc=org";
pub const SERVICE_PASSWORD: &str = "helperpw";
pub const BASE: &str = "dc=example,dc=org";

pub struct Slapd {
    dir: tempfile::TempDir,
    port: u16,
    /// The LDAPS port, when started with TLS.
    tls_port: Option<u16>,
    child: Option<Child>,
}

/// A throwaway CA and a server certificate for 127.0.0.1 and localhost,
/// made with the openssl command line in `dir`.
pub fn make_certificates(dir: &Path) {
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("write extensions");
    let openssl = |args: &[&str]| {
        run_ok(
            Command::new("openssl").current_dir(dir).args(args),
            &format!("openssl {}", args[0]),
        )
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=cgp-helpers test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
}

fn tls_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "TLSCACertificateFile {d}/ca.pem\nTLSCertificateFile {d}/server.pem\nTLSCertificateKeyFile {d}/server.key\n"
    )
}

fn config(dir: &Path, tls: bool) -> String {
    let d = dir.display();
    let tls = if tls { tls_config(dir) } else { String::new() };
    format!(
        r#"include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
include {d}/asterisk.schema
pidfile {d}/slapd.pid
argsfile {d}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload ppolicy
moduleload memberof
{tls}database mdb
maxsize 104857600
suffix "{BASE}"
rootdn "cn=admin,{BASE}"
rootpw secret
directory {d}/db
index objectClass eq
index uid,mail,AstAccountName eq
overlay memberof
overlay ppolicy
ppolicy_default "cn=default,ou=policies,{BASE}"
ppolicy_use_lockout
access to attrs=userPassword,AstAccountSecret,AstAccountRealmedPassword,AstMD5secret
  by dn.exact="{SERVICE_DN}" read
  by anonymous auth
  by self write
  by * none
access to * by * read
"#
    )
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Slapd {
    /// Loads `ldif` into a fresh database and starts slapd on a free port.
    pub fn start(ldif: &Path) -> Slapd {
        Slapd::start_with(ldif, false)
    }

    /// The shared LDIF, with TLS: StartTLS on `uri()`, LDAPS on
    /// `ldaps_uri()`, a certificate for 127.0.0.1 signed by `ca_file()`.
    pub fn start_tls() -> Slapd {
        Slapd::start_with(&crate::testdata("ldap").join("directory.ldif"), true)
    }

    fn start_with(ldif: &Path, tls: bool) -> Slapd {
        let dir = tempfile::Builder::new()
            .prefix("cgp-slapd-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir(dir.path().join("db")).expect("db dir");
        std::fs::copy(
            crate::testdata("ldap").join("asterisk.schema"),
            dir.path().join("asterisk.schema"),
        )
        .expect("copy schema");
        let conf = dir.path().join("slapd.conf");
        if tls {
            make_certificates(dir.path());
        }
        std::fs::write(&conf, config(dir.path(), tls)).expect("write slapd.conf");
        run_ok(
            Command::new("slapadd")
                .arg("-f")
                .arg(&conf)
                .arg("-l")
                .arg(ldif),
            "slapadd",
        );
        if let Some((uid, gid)) = unprivileged() {
            chown_tree(dir.path(), uid, gid);
        }
        let mut slapd = Slapd {
            dir,
            port: free_port(),
            tls_port: tls.then(free_port),
            child: None,
        };
        slapd.start_again();
        slapd
    }

    /// Starts slapd with the LDIF every suite shares.
    pub fn start_default() -> Slapd {
        Slapd::start(&crate::testdata("ldap").join("directory.ldif"))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn uri(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    pub fn ldaps_uri(&self) -> String {
        format!(
            "ldaps://127.0.0.1:{}",
            self.tls_port.expect("started with TLS")
        )
    }

    /// The CA that signed the server certificate (TLS only).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// slapd's own log (stderr at debug level 0).
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("slapd.log")
    }

    /// (Re)starts slapd on the same port with the same data.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "slapd is already running");
        let log = std::fs::File::create(self.log()).expect("slapd log");
        if let Some((uid, gid)) = unprivileged() {
            std::os::unix::fs::chown(self.log(), Some(uid), Some(gid)).expect("chown log");
        }
        // Started in its own directory: running as `nobody`, it could not
        // return to a test working directory that only root may enter.
        let mut cmd = Command::new("slapd");
        cmd.current_dir(self.dir.path())
            .arg("-f")
            .arg(self.dir.path().join("slapd.conf"))
            .arg("-h")
            .arg(self.listeners())
            .args(["-d", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some((uid, gid)) = unprivileged() {
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn().expect("spawn slapd");
        let port = self.port;
        wait_ready(&mut child, "slapd", &self.log(), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        self.child = Some(child);
    }

    fn listeners(&self) -> String {
        let plain = format!("ldap://127.0.0.1:{}/", self.port);
        match self.tls_port {
            Some(p) => format!("{plain} ldaps://127.0.0.1:{p}/"),
            None => plain,
        }
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(child) = &self.child {
            process::signal(child, sig);
        }
    }

    /// Stops slapd (the port stays reserved for `start_again`).
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            process::terminate(child);
        }
    }

    /// Suspends slapd with SIGSTOP (see `process::freeze`).
    pub fn freeze(&self) {
        if let Some(child) = &self.child {
            process::freeze(child, "slapd");
        }
    }

    /// Resumes a frozen slapd.
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The body of a `[directory.ldap]` table for tests: these servers, the
/// service account, short timeouts.
pub fn connection_toml(uris: &[String]) -> String {
    let uris: Vec<String> = uris.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "uris = [{}]\nbind_dn = \"{SERVICE_DN}\"\nbind_password = \"{SERVICE_PASSWORD}\"\nconnect_timeout = \"1s\"\nop_timeout = \"1s\"\nmax_backoff = \"200ms\"\n",
        uris.join(", ")
    )
}

/// A two-thread tokio runtime for tests that drive cgp-lookup directly.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
