//! How long a refusal takes for a name nobody has, against a known name
//! with a wrong password, on the static back end, for several mixes of
//! password schemes (the shipped example file's users among them). The
//! ratio unknown/known should be near 1 for every mix: the time of a refusal
//! must not tell which names exist. An unknown name takes the cost of one
//! scheme of the mix, chosen per name in proportion to the users, so the
//! ratio converges on 1 as SAMPLES grows; the share of slow refusals (over
//! 5 ms: bcrypt, argon2) is printed for both kinds too.
//!
//! Usage: cargo run --release -p cgp-lookup --example unknown_timing [SAMPLES]
//! (SAMPLES refusals of each kind per mix, default 40; bcrypt at cost 12
//! takes a few hundred milliseconds each.)

use cgp_lookup::directory::{Account, DirectoryConfig};
use std::time::{Duration, Instant};

/// The users of packaging/examples/auth-embedded.toml: {SSHA}, bcrypt
/// (cost 12), argon2id (m=19456, t=2, p=1), {SSHA512}.
const SSHA: &str = "{SSHA}X2W8QR6LP+CsG3vDkc6H+BFqXBKaduqD";
const BCRYPT: &str = "$2b$12$upgiMIkmWVuTV0vnwrOTR.YAoU8yiNR8/lP4MZf1gNAQ.B9ghxyMi";
const ARGON2: &str = "$argon2id$v=19$m=19456,t=2,p=1$wxdiuNr9T6y0Y+zbluX8Cw$ps7jXtwb6bKi5Y77wVpIaKmLxjw6yLYLMKvdrRks/YI";
const SSHA512: &str = "{SSHA512}xo+z58b4VAiTRs3eNy69pFJrYT9bCmQgMbMjw8bM0vsgMQ9zBu8SZWyRJf07DxYdnJ2mDOMGHi8GB2q6UOWsJQMNfXtUjuWN+8SZjve22Kk=";

fn main() {
    let samples: usize = std::env::args()
        .nth(1)
        .map_or(40, |s| s.parse().expect("SAMPLES is a number"));
    let mixes: [(&str, &[&str]); 5] = [
        (
            "shipped example (ssha, bcrypt, argon2, ssha512)",
            &[SSHA, BCRYPT, ARGON2, SSHA512],
        ),
        ("ssha only", &[SSHA, SSHA, SSHA]),
        ("bcrypt only", &[BCRYPT, BCRYPT]),
        ("argon2 only", &[ARGON2, ARGON2]),
        ("3 ssha, 1 bcrypt", &[SSHA, SSHA, SSHA, BCRYPT]),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    println!(
        "{:<50} {:>9} {:>10} {:>6} {:>10} {:>12}",
        "scheme mix", "known ms", "unknown ms", "ratio", "slow known", "slow unknown"
    );
    for (name, hashes) in mixes {
        let mut text = String::from("type = \"static\"\n");
        for (i, h) in hashes.iter().enumerate() {
            text.push_str(&format!(
                "[[static.users]]\nname = \"user{i}@example.test\"\npassword = {h:?}\n"
            ));
        }
        let config: DirectoryConfig = toml::from_str(&text).expect("a valid mix");
        let dir = config.open(&[]).expect("the directory opens");
        let time = |who: String| {
            let account = Account::parse(who.as_bytes()).expect("an account");
            let t = Instant::now();
            rt.block_on(dir.verify(&account, b"not the password"))
                .expect("an answer");
            t.elapsed()
        };
        // Known users in turn (each scheme in its share), and as many
        // distinct unknown names, alternating, so that the load of a shared
        // machine falls on both alike.
        let (mut known, mut unknown) = (Vec::new(), Vec::new());
        for i in 0..samples {
            known.push(time(format!("user{}@example.test", i % hashes.len())));
            unknown.push(time(format!("nobody{i}@example.test")));
        }
        let ms =
            |d: &[Duration]| d.iter().sum::<Duration>().as_secs_f64() * 1000.0 / samples as f64;
        let slow = |d: &[Duration]| {
            d.iter().filter(|t| **t > Duration::from_millis(5)).count() as f64 / samples as f64
        };
        println!(
            "{name:<50} {:>9.3} {:>10.3} {:>6.2} {:>10.2} {:>12.2}",
            ms(&known),
            ms(&unknown),
            ms(&unknown) / ms(&known),
            slow(&known),
            slow(&unknown)
        );
    }
}
