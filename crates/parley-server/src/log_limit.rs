//! Rate-limiting repeated log lines: the same event written more than
//! [`REPEATS_PER_SECOND`] times in one second is dropped for the rest of
//! that second, and one line `<message> (N similar lines suppressed)`
//! follows within about a second.
//!
//! Two events are the same when they come from the same callsite with the
//! same message text and, when they have a `peer` field, the same source
//! address (its port aside): a flood of refusals from one address is cut,
//! another address's refusals still show. On the access log
//! (`parley::access`) only refusals are limited — events with a `reason`
//! field, such as `connection refused` — because the other access lines
//! are the record of work done (every request behind a reverse proxy
//! comes from one address). Everything else is limited, on stderr and in
//! files alike, since the limiter is a filter in front of every output.
//!
//! State is a fixed table of [`REPEAT_SLOTS`] slots indexed by the event's
//! hash, each behind its own mutex held for a few instructions: an event
//! costs one hash of its message and one uncontended lock. Two events that
//! share a slot take it over from each other (the one pushed out has its
//! suppressed count reported), so the table never grows.

use std::fmt::{self, Write as _};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

use crate::logging::ACCESS_TARGET;
use parley_core::sync::lock;

/// Times the same event is written per second before the rest of that
/// second's repeats are suppressed.
pub const REPEATS_PER_SECOND: u32 = 10;
/// Slots in the table of recent events.
pub const REPEAT_SLOTS: usize = 1024;
/// Suppressed counts waiting to be reported after their slot was taken
/// over; beyond this they are only counted.
const MAX_PENDING_REPORTS: usize = 1024;
/// How often suppressed counts are written out.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Lines suppressed so far, in this process.
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Log lines suppressed so far as repeats (`parley_log_lines_suppressed_total`).
pub fn suppressed_lines() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

/// What a suppressed event looked like, for its report line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Its level: the report has the same one.
    pub level: Level,
    /// Whether it went to the access log: the report goes there too.
    pub access: bool,
    /// Its message text.
    pub message: String,
}

/// A report to write: `count` repeats of `sample` were suppressed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub sample: Sample,
    pub count: u64,
}

/// One slot of the table: the event that holds it and its current second.
#[derive(Default)]
struct Slot {
    /// The event's hash (0: free).
    key: u64,
    /// The second (since the limiter started) being counted.
    second: u64,
    /// Lines written in that second.
    written: u32,
    /// Lines suppressed and not yet reported.
    suppressed: u64,
    /// The event, once one was suppressed.
    sample: Option<Sample>,
}

impl Slot {
    fn take_report(&mut self) -> Option<Report> {
        let count = std::mem::take(&mut self.suppressed);
        let sample = self.sample.take()?;
        (count > 0).then_some(Report { sample, count })
    }
}

/// The table of recent events; see the module documentation.
pub struct RepeatLimiter {
    slots: Box<[Mutex<Slot>]>,
    /// Reports of events pushed out of their slot.
    pending: Mutex<Vec<Report>>,
    /// Second 0.
    started: Instant,
}

impl Default for RepeatLimiter {
    fn default() -> RepeatLimiter {
        RepeatLimiter::new()
    }
}

impl RepeatLimiter {
    pub fn new() -> RepeatLimiter {
        RepeatLimiter {
            slots: (0..REPEAT_SLOTS).map(|_| Mutex::new(Slot::default())).collect(),
            pending: Mutex::new(Vec::new()),
            started: Instant::now(),
        }
    }

    /// The current second since the limiter started.
    pub fn second(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Whether the event `key` may be written in `second`. `sample` is
    /// called (once per slot and report) when it is the first suppressed.
    pub fn admit(&self, key: u64, second: u64, sample: impl FnOnce() -> Sample) -> bool {
        // 0 marks a free slot.
        let key = key.max(1);
        let index = (key % REPEAT_SLOTS as u64) as usize;
        let Some(slot) = self.slots.get(index) else {
            return true;
        };
        let mut slot = lock(slot);
        if slot.key != key {
            if let Some(report) = slot.take_report() {
                let mut pending = lock(&self.pending);
                if pending.len() < MAX_PENDING_REPORTS {
                    pending.push(report);
                }
            }
            *slot = Slot {
                key,
                second,
                written: 1,
                suppressed: 0,
                sample: None,
            };
            return true;
        }
        if slot.second != second {
            slot.second = second;
            slot.written = 0;
        }
        if slot.written < REPEATS_PER_SECOND {
            slot.written += 1;
            return true;
        }
        slot.suppressed += 1;
        if slot.sample.is_none() {
            slot.sample = Some(sample());
        }
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// The reports due: events with suppressed lines whose second is over
    /// before `second` (all of them with `u64::MAX`).
    pub fn take_reports(&self, second: u64) -> Vec<Report> {
        let mut reports = std::mem::take(&mut *lock(&self.pending));
        for slot in self.slots.iter() {
            let mut slot = lock(slot);
            if slot.suppressed > 0 && slot.second < second {
                reports.extend(slot.take_report());
            }
        }
        reports
    }
}

/// Writes one report line as an event of the suppressed event's level, on
/// the access log if it came from there.
pub fn emit(report: &Report) {
    let text = format!("{} ({} similar lines suppressed)", report.sample.message, report.count);
    let count = report.count;
    macro_rules! at {
        ($level:expr) => {
            if report.sample.access {
                tracing::event!(target: ACCESS_TARGET, $level, suppressed = count, "{text}")
            } else {
                tracing::event!($level, suppressed = count, "{text}")
            }
        };
    }
    match report.sample.level {
        Level::ERROR => at!(Level::ERROR),
        Level::WARN => at!(Level::WARN),
        Level::INFO => at!(Level::INFO),
        Level::DEBUG => at!(Level::DEBUG),
        _ => at!(Level::TRACE),
    }
}

/// The limiter as a tracing layer in front of every output.
pub struct RepeatLimitLayer {
    limiter: Arc<RepeatLimiter>,
}

impl RepeatLimitLayer {
    /// The layer, and a thread that writes the reports every
    /// [`REPORT_INTERVAL`] for as long as the process runs.
    pub fn start(limiter: Arc<RepeatLimiter>) -> RepeatLimitLayer {
        let reporter = Arc::clone(&limiter);
        let spawned = std::thread::Builder::new()
            .name("parley-log-repeats".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(REPORT_INTERVAL);
                    for report in reporter.take_reports(reporter.second()) {
                        emit(&report);
                    }
                }
            });
        if let Err(e) = spawned {
            // Suppressed counts are then written only at exit.
            eprintln!("parleyd: cannot start the log repeat reporter: {e}");
        }
        RepeatLimitLayer { limiter }
    }
}

impl<S: Subscriber> Layer<S> for RepeatLimitLayer {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        let access = meta.target() == ACCESS_TARGET;
        if access && meta.fields().field("reason").is_none() {
            return true;
        }
        let mut key = KeyVisitor::new(meta);
        event.record(&mut key);
        self.limiter.admit(key.hasher.finish(), self.limiter.second(), || {
            let mut message = MessageVisitor::default();
            event.record(&mut message);
            Sample {
                level: *meta.level(),
                access,
                message: message.text,
            }
        })
    }
}

/// Hashes what makes two events the same: callsite, message, peer address.
struct KeyVisitor {
    hasher: std::collections::hash_map::DefaultHasher,
}

impl KeyVisitor {
    fn new(meta: &'static tracing::Metadata<'static>) -> KeyVisitor {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        // The callsite's metadata is a static: its address identifies it.
        std::ptr::from_ref(meta).hash(&mut hasher);
        KeyVisitor { hasher }
    }
}

impl Visit for KeyVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(HashWriter(&mut self.hasher), "{value:?}");
            }
            "peer" => {
                let mut text = StackText::default();
                let _ = write!(text, "{value:?}");
                address_of(text.as_str()).hash(&mut self.hasher);
            }
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => value.hash(&mut self.hasher),
            "peer" => address_of(value).hash(&mut self.hasher),
            _ => {}
        }
    }
}

/// `"1.2.3.4:5678"` → `"1.2.3.4"`, `"[::1]:5678"` → `"[::1]"`; anything
/// without a port as it is.
fn address_of(peer: &str) -> &str {
    match peer.rsplit_once(':') {
        Some((address, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => address,
        _ => peer,
    }
}

/// Feeds formatted text to a hasher without allocating.
struct HashWriter<'a, H: Hasher>(&'a mut H);

impl<H: Hasher> fmt::Write for HashWriter<'_, H> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.write(s.as_bytes());
        Ok(())
    }
}

/// A short text formatted on the stack (a socket address); longer text
/// is cut, which only makes two long addresses compare by their start.
struct StackText {
    bytes: [u8; 64],
    len: usize,
}

impl Default for StackText {
    fn default() -> StackText {
        StackText { bytes: [0; 64], len: 0 }
    }
}

impl StackText {
    fn as_str(&self) -> &str {
        let bytes = self.bytes.get(..self.len).unwrap_or_default();
        match std::str::from_utf8(bytes) {
            Ok(text) => text,
            // Cut inside a character: keep the whole ones.
            Err(e) => std::str::from_utf8(bytes.get(..e.valid_up_to()).unwrap_or_default()).unwrap_or_default(),
        }
    }
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.bytes.len() - self.len;
        let take = s.len().min(room);
        if let (Some(to), Some(from)) = (self.bytes.get_mut(self.len..self.len + take), s.as_bytes().get(..take)) {
            to.copy_from_slice(from);
            self.len += take;
        }
        Ok(())
    }
}

/// Collects an event's message text (only for the first suppressed line).
#[derive(Default)]
struct MessageVisitor {
    text: String,
}

impl Visit for MessageVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.text, "{value:?}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.text.push_str(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(message: &str) -> Sample {
        Sample {
            level: Level::WARN,
            access: false,
            message: message.to_owned(),
        }
    }

    #[test]
    fn repeats_past_the_rate_are_suppressed_and_reported_once_their_second_is_over() {
        let limiter = RepeatLimiter::new();
        let before = suppressed_lines();
        let admitted = (0..100).filter(|_| limiter.admit(7, 5, || sample("disk full"))).count();
        assert_eq!(admitted, REPEATS_PER_SECOND as usize);
        // Another event is counted on its own.
        assert!(limiter.admit(8, 5, || sample("other")));
        assert!(suppressed_lines() - before >= 90);
        // Nothing is reported while the second lasts.
        assert_eq!(limiter.take_reports(5), []);
        assert_eq!(
            limiter.take_reports(6),
            [Report {
                sample: sample("disk full"),
                count: 90
            }]
        );
        assert_eq!(limiter.take_reports(6), []);
        // A new second writes again.
        assert!(limiter.admit(7, 6, || sample("disk full")));
    }

    #[test]
    fn an_event_pushed_out_of_its_slot_still_has_its_count_reported() {
        let limiter = RepeatLimiter::new();
        let first = 3;
        let second = 3 + REPEAT_SLOTS as u64;
        for _ in 0..REPEATS_PER_SECOND + 5 {
            limiter.admit(first, 1, || sample("first"));
        }
        assert!(limiter.admit(second, 1, || sample("second")));
        assert_eq!(
            limiter.take_reports(1),
            [Report {
                sample: sample("first"),
                count: 5
            }]
        );
    }

    #[test]
    fn the_peer_key_is_the_address_without_the_port() {
        assert_eq!(address_of("127.0.0.1:5555"), "127.0.0.1");
        assert_eq!(address_of("[::1]:5555"), "[::1]");
        assert_eq!(address_of("unix"), "unix");
        let mut text = StackText::default();
        let long = "x".repeat(100);
        let _ = write!(text, "{long}");
        assert_eq!(text.as_str().len(), 64);
    }
}
