//! Fixtures for driving `cgp-banner`: a session on its binary, a
//! configuration using a scripted PBX, and the PBX with its mailboxes. Used by
//! `tests/tests/banner.rs` and the benchmark `examples/bench_banner.rs`.

use crate::bin;
use crate::fake_ami::FakeAmi;
use crate::session::Session;
use std::path::Path;

/// `cgp-banner --config <config>`, started and past INTF.
pub fn session(config: &Path) -> Session {
    Session::start(&bin("cgp-banner"), config)
}

pub const USERS: &str = r#"
[attributes]
pbx = "AstPbx"

[[directory.static.users]]
name = "alice@example.com"
groups = ["staff"]
attributes = { cn = ["Alice Example"], AstAccountMailbox = ["1001@default"], AstAccountName = ["1001"], AstPbx = ["pbx1"] }

[[directory.static.users]]
name = "bob@example.com"
attributes = { cn = ["Bob"], AstAccountMailbox = ["1002@default"], AstAccountName = ["1002"] }
"#;

/// A static person as configuration: name, mailbox and extension.
pub fn static_user(address: &str, real_name: &str, exten: Option<u32>) -> String {
    let pbx = exten.map_or(String::new(), |e| {
        format!(r#", AstAccountMailbox = ["{e}@default"], AstAccountName = ["{e}"]"#)
    });
    format!(
        "[[directory.static.users]]\nname = \"{address}\"\nattributes = {{ cn = [{real_name:?}]{pbx} }}\n"
    )
}

pub const RULES: &str = r#"
[[banner]]
type = "Phone"
template = "{real_name}: {vm_new} new, {vm_old} old, phone {ext_state}"
default = "PBX unavailable"

[[banner]]
type = "Voicemail"
template = "{vm_new} new"
default = "PBX unavailable"

[[banner]]
type = "Notices"
format = "html"
template = "{announcements}"

[[banner]]
type = "Long"
template = "{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}"

[[banner]]
type = "LongHtml"
format = "html"
template = "{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}{real_name}"
default = "<i>short</i>"
"#;

/// Writes a configuration for a helper using the PBX on `port`.
pub fn config(dir: &Path, port: u16, extra: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[runtime]
deadline = "2s"
stats_interval = "0s"

[log]
journald = false

[store]
path = "{store}"
spool_poll = "100ms"

[ami]
action_timeout = "1500ms"
connect_timeout = "1s"
ping_interval = "1s"
reconnect_min = "50ms"
reconnect_max = "200ms"

[[ami.servers]]
name = "pbx1"
host = "127.0.0.1"
port = {port}
username = "cgp"
secret = "s3cret"
{extra}
{USERS}
{RULES}
"#,
        store = dir.join("state").display()
    );
    let path = dir.join("banner.toml");
    crate::write_config(&path, text).unwrap();
    path
}

pub fn pbx() -> FakeAmi {
    let fake = FakeAmi::start("cgp", "s3cret", true);
    fake.set_mailbox("1001@default", 2, 5);
    fake.set_mailbox("1002@default", 0, 1);
    fake.set_extension("1001", "default", "PJSIP/1001", 0);
    fake.set_extension("1002", "default", "PJSIP/1002", 2);
    fake
}

pub const ALICE_IDLE: &str = r#"OK "Alice Example: 2 new, 5 old, phone idle""#;
