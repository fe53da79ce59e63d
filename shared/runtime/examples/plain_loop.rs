//! The benchmark's baseline: the classic helper shape with no runtime, a
//! blocking loop that reads a line and writes `<seq> OK` (or the INTF echo),
//! flushing each reply. What the runtime costs is measured against this.

use std::io::{BufRead, Write};

fn main() {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    let mut line = Vec::new();
    let mut input = stdin.lock();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = line.trim_ascii_end();
        let mut parts = text.splitn(3, |b| *b == b' ');
        let seq = parts.next().unwrap_or_default();
        let command = parts.next().unwrap_or_default();
        let reply: &[u8] = if command.eq_ignore_ascii_case(b"INTF") {
            b"INTF 4"
        } else {
            b"OK"
        };
        let done = command.eq_ignore_ascii_case(b"QUIT");
        let ok = out
            .write_all(seq)
            .and_then(|()| out.write_all(b" "))
            .and_then(|()| out.write_all(reply))
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
        if ok.is_err() || done {
            return;
        }
    }
}
