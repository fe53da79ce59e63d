//! Any bytes as a request line and as CGP data: nothing may panic, and
//! whatever parses must survive an encode/parse round trip unchanged.

#![no_main]

use cgp_wire::data::{Value, parse_value, parse_values};
use cgp_wire::request::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(values) = parse_values(data) {
        for v in values {
            let wire = v.encode();
            assert!(!wire.contains(&b'\n'), "encoded value holds a raw LF");
            assert_eq!(parse_value(&wire).as_ref(), Ok(&v));
        }
    }
    if let Ok(req) = Request::parse(data) {
        assert!(!req.seq.is_empty() && req.seq.iter().all(u8::is_ascii_digit));
        let _ = req.args();
        let _ = Value::Array(req.args().unwrap_or_default()).encode();
    }
});
