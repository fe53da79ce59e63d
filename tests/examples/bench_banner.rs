//! The cgp-banner benchmark (run by `bench/banner.sh`; figures in
//! docs/banner.md):
//! 1. cached PBX banners at 16 in flight, as a ratio of the null helper's
//!    rate measured by the same driver in the same run;
//! 2. with the AMI server answering in 5 ms, the AMI actions sent for a
//!    burst of 1,000 requests for 100 distinct users.

use cgp_tests::banner::{ALICE_IDLE, config, pbx, session, static_user};
use cgp_tests::bin;
use cgp_tests::fake_ami::{FakeAmi, Fault};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn main() {
    const N: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let fake = pbx();
    let users = hundred_users(&fake, "u", 2000);
    let cfg = config(dir.path(), fake.port(), &users);

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
    let (mut nulls, mut banners) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        nulls.push(sim(&bin("null_helper"), &[]));
        banners.push(sim(
            &bin("cgp-banner"),
            &["--config".as_ref(), cfg.as_os_str()],
        ));
    }
    let (null_rate, rate) = (median(nulls), median(banners));
    println!(
        "cached banners (name, voicemail, phone state), 16 in flight, {N} requests for 100 users, \
         median of 5: null helper {null_rate:.0}/s, cgp-banner {rate:.0}/s, ratio {:.2} (target >= 0.5); \
         MailboxCount actions over the 5 runs: {}",
        rate / null_rate,
        fake.count("MailboxCount")
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
