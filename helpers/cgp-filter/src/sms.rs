//! The rules' `sms` notifications: a bounded queue in front of one sender
//! task, so that a filter reply never waits for the SMS gateway.
//!
//! A request puts its notices in the queue without waiting (a full queue
//! drops the notice, logged and counted); the sender task finds the
//! recipients' numbers in the directory, checks them and the per-number
//! rate, and sends one message at a time. A message that fails is logged
//! and not sent again: the mail went its way already.

use crate::config::{Rate, SmsSettings};
use crate::directory::Directory;
use cgp_lookup::cloudpbx::sms::{GsmNumber, SmsGateway};
use cgp_runtime::metrics::{Event, count};
use std::collections::{HashMap, VecDeque};
use std::time::Instant;
use tokio::sync::mpsc;

/// One rule's text message about one mail message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub rule: String,
    pub queue_id: String,
    /// The expanded template (the gateway client cuts it to its limit).
    pub text: String,
    /// Fixed numbers.
    pub to: Vec<GsmNumber>,
    /// The directory attribute holding the recipients' numbers, and the
    /// recipients (lower case) to look up.
    pub attribute: Option<String>,
    pub recipients: Vec<String>,
}

/// The queue's sending end; dropping it lets the sender task finish what
/// is queued and end (a reload starts a new one).
pub struct Notifier {
    queue: mpsc::Sender<Notice>,
}

impl Notifier {
    /// Starts the sender task; must run inside a tokio runtime.
    pub fn start<D: Directory + Clone>(
        settings: &SmsSettings,
        gateway: SmsGateway,
        directory: Option<D>,
    ) -> Notifier {
        let (queue, rx) = mpsc::channel(settings.queue);
        let limiter = Limiter::new(settings.per_number);
        tokio::spawn(send_all(rx, gateway, directory, limiter));
        Notifier { queue }
    }

    /// Queues `notice` without waiting; a full queue drops it.
    pub fn submit(&self, notice: Notice) {
        let (n, why) = match self.queue.try_send(notice) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(n)) => (n, "SMS queue full; notification dropped"),
            // Only if the sender task panicked.
            Err(mpsc::error::TrySendError::Closed(n)) => {
                (n, "SMS sender stopped; notification dropped")
            }
        };
        count(Event::NotificationDropped);
        tracing::warn!(queue_id = %n.queue_id, rule = %n.rule, "{why}");
    }
}

async fn send_all<D: Directory>(
    mut rx: mpsc::Receiver<Notice>,
    gateway: SmsGateway,
    directory: Option<D>,
    mut limiter: Limiter,
) {
    while let Some(n) = rx.recv().await {
        let mut numbers = n.to.clone();
        if let (Some(attr), Some(dir)) = (&n.attribute, &directory) {
            numbers.extend(recipient_numbers(&n, attr, dir).await);
        }
        numbers.sort();
        numbers.dedup();
        for to in numbers {
            if !limiter.allow(&to, Instant::now()) {
                count(Event::NotificationDropped);
                tracing::info!(queue_id = %n.queue_id, rule = %n.rule, to = %to, "SMS rate limit of the number reached; notification dropped");
                continue;
            }
            match gateway.send(&to, &n.text).await {
                Ok(r) => {
                    tracing::info!(queue_id = %n.queue_id, rule = %n.rule, to = %to, id = %r.id, status = %r.status, "SMS sent")
                }
                Err(e) => {
                    count(Event::BackendError);
                    tracing::warn!(queue_id = %n.queue_id, rule = %n.rule, to = %to, error = %e, "SMS not sent");
                }
            }
        }
    }
}

/// The numbers the directory gives the notice's recipients; a number the
/// gateway would not take is logged and left out.
async fn recipient_numbers<D: Directory>(n: &Notice, attr: &str, dir: &D) -> Vec<GsmNumber> {
    let mut numbers = Vec::new();
    for rcpt in &n.recipients {
        let person = match dir.person(rcpt).await {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(queue_id = %n.queue_id, rule = %n.rule, recipient = %rcpt, error = %e, "SMS recipient not looked up: directory unavailable");
                continue;
            }
        };
        let Some(given) = person.first(attr) else {
            continue;
        };
        match GsmNumber::parse(given) {
            Ok(number) => numbers.push(number),
            Err(e) => {
                tracing::warn!(queue_id = %n.queue_id, rule = %n.rule, recipient = %rcpt, attribute = attr, error = %e, "SMS number refused");
            }
        }
    }
    numbers
}

/// Numbers a rate table remembers, at most: past it, a number not in the
/// table is refused until some number's window empties.
const MAX_NUMBERS: usize = 10_000;

/// Per-number sliding window: the send times within the window.
struct Limiter {
    rate: Rate,
    sent: HashMap<GsmNumber, VecDeque<Instant>>,
}

impl Limiter {
    fn new(rate: Rate) -> Limiter {
        Limiter {
            rate,
            sent: HashMap::new(),
        }
    }

    /// Whether `to` may get one more message at `now`; counts it if so.
    fn allow(&mut self, to: &GsmNumber, now: Instant) -> bool {
        let window = self.rate.window;
        let fresh = |t: &Instant| now.duration_since(*t) < window;
        if !self.sent.contains_key(to) && self.sent.len() >= MAX_NUMBERS {
            self.sent.retain(|_, times| times.back().is_some_and(fresh));
            if self.sent.len() >= MAX_NUMBERS {
                return false;
            }
        }
        let times = self.sent.entry(to.clone()).or_default();
        while times.front().is_some_and(|t| !fresh(t)) {
            times.pop_front();
        }
        if times.len() as u64 >= self.rate.count {
            return false;
        }
        times.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_rate_is_per_number_over_a_sliding_window() {
        let mut l = Limiter::new(Rate {
            count: 2,
            window: Duration::from_secs(60),
        });
        let a = GsmNumber::parse("600100200").unwrap();
        let b = GsmNumber::parse("600100201").unwrap();
        let t0 = Instant::now();
        assert!(l.allow(&a, t0));
        assert!(l.allow(&a, t0 + Duration::from_secs(30)));
        assert!(!l.allow(&a, t0 + Duration::from_secs(40)));
        assert!(l.allow(&b, t0 + Duration::from_secs(40)));
        // The first one leaves the window.
        assert!(l.allow(&a, t0 + Duration::from_secs(61)));
        assert!(!l.allow(&a, t0 + Duration::from_secs(62)));
    }
}
