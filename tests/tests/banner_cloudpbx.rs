//! The CloudPBX back end of the PBX interface against the fake CloudPBX API
//! (`support/fake_cloudpbx.rs`): alone, behind `Pbx`, and under
//! `cgp-banner` ("3 missed calls since 09:12").

use cgp_lookup::cloudpbx::{CloudPbx, CloudPbxConfig};
use cgp_lookup::pbx::{ExtState, ExtensionId, Pbx, PbxBackend, PbxError, PbxEvent};
use cgp_tests::banner::session;
use cgp_tests::fake_cloudpbx::{EVENTS_FIXTURE, FakeCloudPbx, Mode};
use cgp_tests::transcript::check_case_with_config;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::broadcast;

const KEY: &str = "k3y&=?";
const NAME: &str = "MojaCentrala";

fn fake() -> FakeCloudPbx {
    FakeCloudPbx::start(NAME, KEY)
}

fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}/", l.local_addr().unwrap())
}

fn config(bases: &[&str]) -> CloudPbxConfig {
    let urls = bases
        .iter()
        .map(|b| format!("{b:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let c: CloudPbxConfig = toml::from_str(&format!(
        r#"
        name = "{NAME}"
        base_urls = [{urls}]
        api_key = "{}"
        timezone = "UTC"
        timeout = "300ms"
        max_response_bytes = 65536
        reconnect_min = "50ms"
        reconnect_max = "200ms"
        "#,
        KEY.replace('\\', "\\\\")
    ))
    .unwrap();
    c.check("cloudpbx").unwrap();
    c
}

fn ext(e: &str) -> ExtensionId {
    ExtensionId {
        exten: e.into(),
        context: String::new(),
    }
}

/// The next event that `pick` takes, within 5 s.
async fn expect<T>(
    rx: &mut broadcast::Receiver<PbxEvent>,
    mut pick: impl FnMut(&PbxEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let e = rx.recv().await.unwrap();
            if let Some(t) = pick(&e) {
                return t;
            }
        }
    })
    .await
    .expect("event in time")
}

fn connected(e: &PbxEvent) -> Option<()> {
    matches!(e, PbxEvent::Connected { .. }).then_some(())
}

fn resync(e: &PbxEvent) -> Option<()> {
    matches!(e, PbxEvent::Resync { .. }).then_some(())
}

fn local(time: &str) -> SystemTime {
    let today = jiff::Zoned::now()
        .with_time_zone(jiff::tz::TimeZone::UTC)
        .date();
    let t: jiff::civil::Time = time.parse().unwrap();
    SystemTime::from(
        today
            .to_datetime(t)
            .to_zoned(jiff::tz::TimeZone::UTC)
            .unwrap()
            .timestamp(),
    )
}

#[tokio::test]
async fn missed_calls_come_from_records_and_states_from_the_stream_on_the_host_that_answers() {
    let f = fake();
    let base = f.base_url().to_string();
    f.add_record("105", "10:00:00", "NO ANSWER");
    f.add_record("105", "09:12:30", "BUSY");
    f.add_record("105", "11:00:00", "FAILED");
    f.add_record("101", "08:00:00", "NO ANSWER");
    // Another day's record, although the host was asked for today.
    f.add_raw_record(serde_json::json!({"calldate": "2001-01-01 07:00:00", "dst": "105", "disposition": "NO ANSWER"}));
    // The first host is down: the second answers.
    let cloud = Arc::new(CloudPbx::start(&config(&[&closed_port(), &base])).unwrap());
    let mut rx = cloud.subscribe();
    expect(&mut rx, connected).await;
    let pbx = Pbx::start(vec![cloud.clone()], Duration::from_secs(300)).unwrap();
    let m = pbx.missed_calls(None, &ext("105")).await.unwrap();
    assert_eq!((m.count, m.since), (2, local("09:12:30")));
    assert_eq!(pbx.missed_calls(None, &ext("101")).await.unwrap().count, 1);
    let none = pbx.missed_calls(None, &ext("999")).await.unwrap();
    assert_eq!((none.count, none.since), (0, local("00:00:00")));
    // Nothing reported yet: unknown, not idle.
    assert_eq!(
        pbx.extension(None, &ext("101")).await,
        Ok(ExtState::Unknown)
    );

    // Every event of the document's examples in one message, then garbage:
    // states are taken, the rest ignored, the stream stays up.
    let all: serde_json::Value = serde_json::from_str(EVENTS_FIXTURE).unwrap();
    f.send_events(386, all);
    f.send_text("{not json");
    f.send_events(387, serde_json::json!({"brandNew": {"x": 1}}));
    f.send_events(
        388,
        serde_json::json!({"subscriber": {"peer": "MojaCentrala-105", "statusValue": 8}}),
    );
    expect(&mut rx, |e| match e {
        PbxEvent::Extension {
            extension, state, ..
        } if extension.exten == "105" => {
            assert_eq!(*state, ExtState::Ringing);
            Some(())
        }
        _ => None,
    })
    .await;
    assert_eq!(pbx.extension(None, &ext("101")).await, Ok(ExtState::InUse));
    assert_eq!(
        pbx.extension(None, &ext("130")).await,
        Ok(ExtState::Unavailable)
    );
    assert_eq!(
        pbx.extension(None, &ext("105")).await,
        Ok(ExtState::Ringing)
    );
    assert_eq!(f.streams(), 1);

    // The ringing ends unanswered: the records are read again.
    f.add_record("105", "12:00:00", "NO ANSWER");
    f.send_events(
        389,
        serde_json::json!({"extstatus": {"exten": "105", "status": 0}}),
    );
    let m = expect(&mut rx, |e| match e {
        PbxEvent::MissedCalls {
            extension, missed, ..
        } if extension.exten == "105" => Some(*missed),
        _ => None,
    })
    .await;
    assert_eq!((m.count, m.since), (3, local("09:12:30")));
    tokio::task::yield_now().await;
    assert_eq!(pbx.missed_calls(None, &ext("105")).await.unwrap().count, 3);
}

#[tokio::test]
async fn a_dropped_stream_is_reopened_and_state_rebuilt_never_kept() {
    let f = fake();
    let base = f.base_url().to_string();
    let cloud = CloudPbx::start(&config(&[&base])).unwrap();
    let mut rx = cloud.subscribe();
    expect(&mut rx, connected).await;
    f.send_events(
        1,
        serde_json::json!({"subscriber": {"peer": "MojaCentrala-101", "statusValue": 1}}),
    );
    expect(&mut rx, |e| {
        matches!(e, PbxEvent::Extension { .. }).then_some(())
    })
    .await;
    assert_eq!(
        cloud.extension(NAME, &ext("101")).await,
        Ok(ExtState::InUse)
    );
    let reads = f.cdr_calls();

    f.drop_streams();
    expect(&mut rx, resync).await;
    expect(&mut rx, connected).await;
    assert_eq!(f.streams(), 2);
    assert!(f.cdr_calls() > reads, "records read again");
    // The state from before the gap is not served.
    assert_eq!(
        cloud.extension(NAME, &ext("101")).await,
        Ok(ExtState::Unknown)
    );
    assert_eq!(
        cloud.extensions(NAME).await.map(|l| l.len()),
        Ok(0),
        "nothing reported since"
    );
}

#[tokio::test]
async fn record_faults_keep_it_down_until_they_clear_and_down_answers_at_once() {
    let f = fake();
    let base = f.base_url().to_string();
    for mode in [Mode::Error500, Mode::Malformed, Mode::Huge, Mode::Slow] {
        f.set_mode(mode);
        let cloud = CloudPbx::start(&config(&[&base])).unwrap();
        let before = f.cdr_calls();
        // Several rounds of backoff pass, each failing.
        tokio::time::timeout(Duration::from_secs(5), async {
            while f.cdr_calls() < before + 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{mode:?}: records asked again"));
        assert!(!cloud.is_up(), "{mode:?}");
        let asked = std::time::Instant::now();
        assert!(
            matches!(
                cloud.missed_calls(NAME, &ext("105")).await,
                Err(PbxError::Down(_))
            ),
            "{mode:?}"
        );
        assert!(asked.elapsed() < Duration::from_millis(50));
    }
    // Cleared: the next round connects.
    f.set_mode(Mode::Ok);
    let cloud = CloudPbx::start(&config(&[&base])).unwrap();
    let mut rx = cloud.subscribe();
    expect(&mut rx, connected).await;
    assert_eq!(
        cloud.missed_calls(NAME, &ext("105")).await.unwrap().count,
        0
    );
}

#[tokio::test]
async fn a_wrong_key_is_refused_and_not_tried_elsewhere_nor_shown() {
    let f = fake();
    let base = f.base_url().to_string();
    let mut c = config(&[&base]);
    c.api_key = "wrong-secret".into();
    let cloud = CloudPbx::start(&c).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!cloud.is_up());
    assert_eq!(f.cdr_calls(), 0, "the stream refused it first");
    assert!(!format!("{c:?}").contains("wrong-secret"));
}

/// `HH:MM` of `time` (UTC, today) in the host's time zone, as banners show it.
fn shown(time: &str) -> String {
    let at = jiff::Timestamp::try_from(local(time)).unwrap();
    at.to_zoned(jiff::tz::TimeZone::system())
        .strftime("%H:%M")
        .to_string()
}

#[test]
fn the_banner_shows_missed_calls_and_phone_state_and_its_default_when_the_pbx_is_down() {
    let f = fake();
    f.add_record("105", "09:12:30", "NO ANSWER");
    f.add_record("105", "10:00:00", "BUSY");
    f.add_record("105", "10:30:00", "NO ANSWER");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("banner.toml");
    cgp_tests::write_config(
        &path,
        format!(
            r#"
[runtime]
deadline = "2s"
stats_interval = "0s"

[log]
journald = false

# The account's extension, found by its mail address in the directory.
[attributes]
extension = "telephoneNumber"

[[cloudpbx]]
name = "{NAME}"
base_urls = ["{down}", "{base}"]
api_key = "{key}"
timezone = "UTC"
timeout = "300ms"
reconnect_min = "50ms"
reconnect_max = "200ms"

[[directory.static.users]]
name = "alice@example.com"
attributes = {{ cn = ["Alice"], telephoneNumber = ["105"] }}

[[directory.static.users]]
name = "bob@example.com"
attributes = {{ cn = ["Bob"] }}

[[banner]]
type = "Phone"
template = "{{missed_calls}} missed calls since {{missed_since}}, phone {{ext_state}}"
default = "PBX unavailable"
"#,
            down = closed_port(),
            base = f.base_url(),
            key = KEY,
        ),
    )
    .unwrap();
    let mut s = session(&path);
    let since = shown("09:12:30");
    // No state reported yet: the PBX does not know, and the banner says so.
    s.ask_until(
        "BANNER Phone alice@example.com",
        &format!(r#"OK "3 missed calls since {since}, phone unknown""#),
    );
    f.send_events(
        7,
        serde_json::json!({"subscriber": {"peer": "MojaCentrala-105", "statusValue": 1}}),
    );
    s.ask_until(
        "BANNER Phone alice@example.com",
        &format!(r#"OK "3 missed calls since {since}, phone in use""#),
    );
    // No extension in the directory: nothing to show.
    assert_eq!(
        s.ask("BANNER Phone bob@example.com"),
        r#"OK "PBX unavailable""#
    );
    // The stream drops and the records cannot be read: no old value shown.
    f.set_mode(Mode::Error500);
    f.drop_streams();
    s.ask_until("BANNER Phone alice@example.com", r#"OK "PBX unavailable""#);
    f.set_mode(Mode::Ok);
    s.ask_until(
        "BANNER Phone alice@example.com",
        &format!(r#"OK "3 missed calls since {since}, phone unknown""#),
    );
    s.finish();
}

#[test]
fn the_cloudpbx_example_passes_check_config_and_errors_name_their_key() {
    let example = cgp_tests::example("banner-cloudpbx.toml");
    let out = cgp_tests::check_config("cgp-banner", &example);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&example).unwrap();
    for (from, to, key) in [
        (
            "\"Europe/Warsaw\"",
            "\"Mars/Olympus\"",
            "cloudpbx[0].timezone",
        ),
        (
            "base_urls = [\"https://api.cloudpbx.pl\", \"https://api2.cloudpbx.pl\"]",
            "base_urls = []",
            "cloudpbx[0].base_urls",
        ),
        (
            "[[banner]]",
            "[[cloudpbx]]\nname = \"MojaCentrala\"\nbase_urls = [\"http://h/\"]\napi_key = \"k\"\n[[banner]]",
            "cloudpbx[1].name",
        ),
    ] {
        let bad = dir.path().join("bad.toml");
        cgp_tests::write_config(&bad, text.replace(from, to)).unwrap();
        let out = cgp_tests::check_config("cgp-banner", &bad);
        let err = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success() && err.contains(key), "{key}: {err}");
        assert!(!err.contains("change-me"), "{err}");
    }
}

/// The example of `packaging/examples/`, pointed at the fake: the transcript
/// `testdata/cloudpbx/banner` (the default banner for an unknown account,
/// missed calls and phone state for alice once the stream told her state).
#[test]
fn the_cloudpbx_example_answers_its_transcript() {
    let f = FakeCloudPbx::start(NAME, "change-me");
    f.add_record("101", "09:12:30", "NO ANSWER");
    f.add_record("101", "10:30:00", "BUSY");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("banner.log");
    let path = dir.path().join("banner-cloudpbx.toml");
    let text = std::fs::read_to_string(cgp_tests::example("banner-cloudpbx.toml")).unwrap();
    cgp_tests::write_config(
        &path,
        text.replace(
            "[\"https://api.cloudpbx.pl\", \"https://api2.cloudpbx.pl\"]",
            &format!("[{:?}]", f.base_url()),
        )
        // The log tells when the stream's state has been taken.
        .replace(
            "journald = true\nlevel = \"info\"",
            &format!("journald = false\nlevel = \"debug\"\nfile = {log:?}"),
        ),
    )
    .unwrap();
    let logged = |what: &str| std::fs::read_to_string(&log).is_ok_and(|l| l.contains(what));
    let wait = |what: &str| {
        let start = std::time::Instant::now();
        while !logged(what) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no {what:?} logged"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    check_case_with_config(
        &cgp_tests::bin("cgp-banner"),
        "cloudpbx",
        "banner",
        &path,
        &|line| {
            if line.starts_with(b"3 ") {
                wait("CloudPBX connected");
                f.send_events(
                1,
                serde_json::json!({"subscriber": {"peer": "MojaCentrala-101", "statusValue": 2}}),
            );
                wait("CloudPBX extension state");
            }
        },
    );
}
