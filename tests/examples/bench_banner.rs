//! The cgp-banner benchmark (run by `bench/banner.sh`; figures in
//! docs/banner.md):
//! 1. cached PBX banners at 16 in flight, as a ratio of the null helper's
//!    rate measured by the same driver in the same run; and cached banners
//!    with the CloudPBX source (missed calls, phone state) as a ratio of the
//!    AMI source's rate, the three contenders alternating;
//! 2. with the AMI server answering in 5 ms, the AMI actions sent for a
//!    burst of 1,000 requests for 100 distinct users.

use cgp_tests::banner::{ALICE_IDLE, config, pbx, session, static_user};
use cgp_tests::bin;
use cgp_tests::fake_ami::{FakeAmi, Fault};
use cgp_tests::fake_cloudpbx::{DAY, FakeCloudPbx};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn main() {
    const N: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let fake = pbx();
    let users = hundred_users(&fake, "u", 2000);
    let cfg = config(dir.path(), fake.port(), &users);
    let cloud = FakeCloudPbx::start(CLOUD, CLOUD_KEY);
    let cloud_dir = tempfile::tempdir().unwrap();
    let cloud_cfg = cloud_config(cloud_dir.path(), &cloud, &users);
    // Each contender shows a real PBX banner before it is timed (the
    // CloudPBX's phone state stays unknown: no event reports it).
    for (cfg, shows) in [
        (&cfg, "7 new, 0 old, phone idle"),
        (&cloud_cfg, ": 1 missed since "),
    ] {
        let mut s = session(cfg);
        let wanted = |r: &str| r.contains(shows);
        let reply = (0..50)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(100));
                s.ask("BANNER Phone u7@example.com")
            })
            .find(|r| wanted(r))
            .unwrap_or_else(|| panic!("{}: no PBX banner", cfg.display()));
        println!("sample: {reply}");
        s.finish();
    }

    // cgp-helper-sim drives both helpers; rounds alternate so that load
    // from elsewhere on the machine hits both alike; the median is reported.
    let sim = |program: &Path, args: &[&std::ffi::OsStr]| -> f64 {
        let out = Command::new(bin("cgp-helper-sim"))
            .args(["--generate", &N.to_string(), "--in-flight", "16"])
            .args(["--request", "BANNER Phone u{n%100}@example.com"])
            .arg("--")
            .arg(program)
            .args(args)
            .output()
            .expect("run cgp-helper-sim");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        text.split_whitespace()
            .find_map(|w| w.strip_prefix("rate=")?.strip_suffix("/s")?.parse().ok())
            .unwrap_or_else(|| panic!("no rate in {text:?}"))
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut nulls, mut banners, mut clouds) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        nulls.push(sim(&bin("null_helper"), &[]));
        banners.push(sim(
            &bin("cgp-banner"),
            &["--config".as_ref(), cfg.as_os_str()],
        ));
        clouds.push(sim(
            &bin("cgp-banner"),
            &["--config".as_ref(), cloud_cfg.as_os_str()],
        ));
    }
    let (null_rate, rate, cloud_rate) = (median(nulls), median(banners), median(clouds));
    println!(
        "cached banners (name, voicemail, phone state), 16 in flight, {N} requests for 100 users, \
         median of 5: null helper {null_rate:.0}/s, cgp-banner {rate:.0}/s, ratio {:.2} (target >= 0.5); \
         MailboxCount actions over the 5 runs: {}",
        rate / null_rate,
        fake.count("MailboxCount")
    );
    println!(
        "cached banners, CloudPBX source (name, missed calls, phone state) against the AMI source, \
         same run, 16 in flight, {N} requests for 100 users, median of 5: AMI {rate:.0}/s, \
         CloudPBX {cloud_rate:.0}/s, ratio {:.2} (target >= 0.8); /cdr reads over the 5 runs: {}, \
         event streams: {}",
        cloud_rate / rate,
        cloud.cdr_calls(),
        cloud.streams()
    );

    let slow = pbx();
    slow.set_fault(Fault::Slow(Duration::from_millis(5)));
    let users = hundred_users(&slow, "v", 3000);
    let dir2 = tempfile::tempdir().unwrap();
    let mut s = session(&config(dir2.path(), slow.port(), &users));
    s.ask_until("BANNER Phone alice@example.com", ALICE_IDLE);
    let before = slow.counts();
    let (time, bodies) = s.drive(1000, 1000, |n| {
        format!("BANNER Phone v{}@example.com", n % 100)
    });
    let after = slow.counts();
    let mut sent: Vec<(String, usize)> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, d)| *d > 0)
        .collect();
    sent.sort();
    let total: usize = sent.iter().map(|(_, d)| d).sum();
    let pbx_banners: usize = bodies
        .iter()
        .filter(|(b, _)| b.contains(" new, "))
        .map(|(_, c)| c)
        .sum();
    println!(
        "burst of 1000 requests for 100 users, AMI answering in 5 ms: {total} AMI actions {sent:?} \
         (target <= 100), {pbx_banners} PBX banners, {:.0} ms",
        time.as_secs_f64() * 1000.0
    );
    s.finish();
}

const CLOUD: &str = "BenchPbx";
const CLOUD_KEY: &str = "bench-key";

/// A configuration of cgp-banner on the CloudPBX `cloud` for `users` (the
/// AMI users, whose extension is `AstAccountName`): each extension gets one
/// missed call and is idle.
fn cloud_config(dir: &Path, cloud: &FakeCloudPbx, users: &str) -> std::path::PathBuf {
    for ext in 2000..2100 {
        cloud.add_raw_record(serde_json::json!({
            "calldate": format!("{DAY} 09:12:00"), "clid": "", "src": "200", "dst": ext.to_string(),
            "channel": "", "dstchannel": "", "lastapp": "Dial", "duration": 5, "billsec": 0,
            "disposition": "NO ANSWER", "uniqueid": format!("1639559520.{ext}"), "cost": "", "zone": ""
        }));
    }
    let text = format!(
        r#"
[runtime]
deadline = "2s"
stats_interval = "0s"

[log]
journald = false

[attributes]
extension = "AstAccountName"

[[cloudpbx]]
name = "{CLOUD}"
base_urls = ["{base}"]
api_key = "{CLOUD_KEY}"
timezone = "UTC"
timeout = "1s"
reconnect_min = "50ms"
reconnect_max = "200ms"

{users}

[[banner]]
type = "Phone"
template = "{{real_name}}: {{missed_calls}} missed since {{missed_since}}, phone {{ext_state}}"
default = "PBX unavailable"
"#,
        base = cloud.base_url(),
    );
    let path = dir.join("banner-cloudpbx.toml");
    cgp_tests::write_config(&path, text).unwrap();
    path
}

/// 100 users `<prefix>0@example.com`… with mailboxes and extensions from
/// `first` on, set up on the PBX and returned as configuration.
fn hundred_users(pbx: &FakeAmi, prefix: &str, first: u32) -> String {
    (0..100)
        .map(|i| {
            let ext = first + i;
            pbx.set_mailbox(&format!("{ext}@default"), i, 0);
            pbx.set_extension(&ext.to_string(), "default", "PJSIP/x", 0);
            let upper = prefix.to_uppercase();
            static_user(
                &format!("{prefix}{i}@example.com"),
                &format!("{upper}{i}"),
                Some(ext),
            )
        })
        .collect()
}
