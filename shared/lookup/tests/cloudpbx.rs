//! The CloudPBX back end against a fake CloudPBX API (REST `cdr` and the
//! WebSocket event stream) written from the API document, with fault modes.
//!
//! Fixtures in `fixtures/cloudpbx/` are the document's examples (its
//! `SIP\…` locations have the backslash escaped, which the document's JSON
//! lacks).

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cgp_lookup::cloudpbx::{CloudPbx, CloudPbxConfig};
use cgp_lookup::pbx::{ExtState, ExtensionId, Pbx, PbxBackend, PbxError, PbxEvent};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::broadcast;

const KEY: &str = "k3y&=?";
const NAME: &str = "MojaCentrala";
const CDR_FIXTURE: &str = include_str!("fixtures/cloudpbx/cdr.json");
const EVENTS_FIXTURE: &str = include_str!("fixtures/cloudpbx/events.json");

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Ok,
    Slow,
    Error500,
    Malformed,
    Huge,
}

/// What the stream of the fake sends next.
#[derive(Clone, Debug)]
enum Push {
    Text(String),
    Drop,
}

struct Fake {
    mode: Mutex<Mode>,
    /// Records served by `cdr`; `DAY` in them becomes the asked day.
    records: Mutex<Vec<serde_json::Value>>,
    cdr_calls: AtomicUsize,
    streams: AtomicUsize,
    push: broadcast::Sender<Push>,
}

const DAY: &str = "2021-12-15";

async fn cdr(
    State(f): State<Arc<Fake>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {KEY}"))
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    f.cdr_calls.fetch_add(1, Ordering::SeqCst);
    let (Some(start), Some(stop)) = (q.get("datestart"), q.get("datestop")) else {
        return (StatusCode::BAD_REQUEST, "Parameter is missing").into_response();
    };
    assert_eq!(start, stop, "one day is asked for");
    let mode = *f.mode.lock().unwrap();
    match mode {
        Mode::Error500 => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "Action Error").into_response();
        }
        Mode::Malformed => return "[{\"calldate\": \"2021-".into_response(),
        Mode::Huge => return format!("[{}]", " ".repeat(1 << 20)).into_response(),
        Mode::Slow => tokio::time::sleep(Duration::from_secs(5)).await,
        Mode::Ok => {}
    }
    let body = serde_json::to_string(&*f.records.lock().unwrap()).unwrap();
    body.replace(DAY, start).into_response()
}

async fn stream(
    State(f): State<Arc<Fake>>,
    Path(channel): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    if channel != format!("pbx_{NAME}") || q.get("pbxkey").map(String::as_str) != Some(KEY) {
        return StatusCode::FORBIDDEN.into_response();
    }
    f.streams.fetch_add(1, Ordering::SeqCst);
    let rx = f.push.subscribe();
    ws.on_upgrade(move |socket| serve_stream(socket, rx))
}

async fn serve_stream(mut socket: WebSocket, mut rx: broadcast::Receiver<Push>) {
    while let Ok(p) = rx.recv().await {
        match p {
            Push::Text(t) => {
                if socket.send(Message::Text(t.into())).await.is_err() {
                    return;
                }
            }
            // Dropped mid-stream: no close frame.
            Push::Drop => return,
        }
    }
}

/// A fake on a local port, and a base URL where nothing listens.
async fn fake() -> (Arc<Fake>, String) {
    let f = Arc::new(Fake {
        mode: Mutex::new(Mode::Ok),
        records: Mutex::new(serde_json::from_str(CDR_FIXTURE).unwrap()),
        cdr_calls: AtomicUsize::new(0),
        streams: AtomicUsize::new(0),
        push: broadcast::channel(64).0,
    });
    let app = axum::Router::new()
        .route("/cdr", get(cdr))
        .route("/ws/{channel}", get(stream))
        .with_state(f.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (f, format!("http://{addr}/"))
}

fn record(dst: &str, time: &str, disposition: &str) -> serde_json::Value {
    serde_json::json!({
        "calldate": format!("{DAY} {time}"), "clid": "", "src": "200", "dst": dst,
        "channel": "", "dstchannel": "", "lastapp": "Dial", "duration": 5, "billsec": 0,
        "disposition": disposition, "uniqueid": format!("{time}.1"), "cost": "", "zone": ""
    })
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

fn message(id: u32, events: serde_json::Value) -> Push {
    Push::Text(
        serde_json::json!({"id": id, "channel": format!("pbx_{NAME}"), "text": events}).to_string(),
    )
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
    let (f, base) = fake().await;
    {
        let mut r = f.records.lock().unwrap();
        r.push(record("105", "10:00:00", "NO ANSWER"));
        r.push(record("105", "09:12:30", "BUSY"));
        r.push(record("105", "11:00:00", "FAILED"));
        r.push(record("101", "08:00:00", "NO ANSWER"));
        // Another day's record, although the host was asked for today.
        r.push(serde_json::json!({"calldate": "2001-01-01 07:00:00", "dst": "105", "disposition": "NO ANSWER"}));
    }
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
    f.push.send(message(386, all)).unwrap();
    f.push.send(Push::Text("{not json".into())).unwrap();
    f.push
        .send(message(387, serde_json::json!({"brandNew": {"x": 1}})))
        .unwrap();
    f.push
        .send(message(
            388,
            serde_json::json!({"subscriber": {"peer": "MojaCentrala-105", "statusValue": 8}}),
        ))
        .unwrap();
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
    assert_eq!(f.streams.load(Ordering::SeqCst), 1);

    // The ringing ends unanswered: the records are read again.
    f.records
        .lock()
        .unwrap()
        .push(record("105", "12:00:00", "NO ANSWER"));
    f.push
        .send(message(
            389,
            serde_json::json!({"extstatus": {"exten": "105", "status": 0}}),
        ))
        .unwrap();
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
    let (f, base) = fake().await;
    let cloud = CloudPbx::start(&config(&[&base])).unwrap();
    let mut rx = cloud.subscribe();
    expect(&mut rx, connected).await;
    f.push
        .send(message(
            1,
            serde_json::json!({"subscriber": {"peer": "MojaCentrala-101", "statusValue": 1}}),
        ))
        .unwrap();
    expect(&mut rx, |e| {
        matches!(e, PbxEvent::Extension { .. }).then_some(())
    })
    .await;
    assert_eq!(
        cloud.extension(NAME, &ext("101")).await,
        Ok(ExtState::InUse)
    );
    let reads = f.cdr_calls.load(Ordering::SeqCst);

    f.push.send(Push::Drop).unwrap();
    expect(&mut rx, resync).await;
    expect(&mut rx, connected).await;
    assert_eq!(f.streams.load(Ordering::SeqCst), 2);
    assert!(
        f.cdr_calls.load(Ordering::SeqCst) > reads,
        "records read again"
    );
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
    let (f, base) = fake().await;
    for mode in [Mode::Error500, Mode::Malformed, Mode::Huge, Mode::Slow] {
        *f.mode.lock().unwrap() = mode;
        let cloud = CloudPbx::start(&config(&[&base])).unwrap();
        let before = f.cdr_calls.load(Ordering::SeqCst);
        // Several rounds of backoff pass, each failing.
        tokio::time::timeout(Duration::from_secs(5), async {
            while f.cdr_calls.load(Ordering::SeqCst) < before + 2 {
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
    *f.mode.lock().unwrap() = Mode::Ok;
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
    let (f, base) = fake().await;
    let mut c = config(&[&base]);
    c.api_key = "wrong-secret".into();
    let cloud = CloudPbx::start(&c).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!cloud.is_up());
    assert_eq!(
        f.cdr_calls.load(Ordering::SeqCst),
        0,
        "the stream refused it first"
    );
    assert!(!format!("{c:?}").contains("wrong-secret"));
}
