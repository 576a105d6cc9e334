//! Pieces every scenario uses: account names, registration, the payload
//! format that carries a send time, and per-second counters.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use parley_client::{Client, ErrorCode};
use rand::Rng;

/// Registrations in flight at once. Each costs the bench one PBKDF2
/// derivation, so more would only queue on the two cores.
const REGISTER_CONCURRENCY: usize = 16;
/// Bytes of the payload header: 16 hex digits of sequence, 16 of send time.
pub const PAYLOAD_HEADER: usize = 32;

/// A fresh account-name prefix: `b` and eight random hex digits, so runs
/// never collide with each other or with real accounts (names must start
/// with a letter and stay within 32 characters).
pub fn run_prefix() -> String {
    let n: u32 = rand::rng().random();
    format!("b{n:08x}")
}

/// The password of every account of a run. Benchmark accounts are
/// throwaway; a per-run value keeps them from being guessable across runs.
pub fn password(prefix: &str) -> String {
    format!("pw-{prefix}-bench")
}

/// The fresh accounts of N sender → receiver pairs.
pub struct PairAccounts {
    /// Every account's password.
    pub password: String,
    /// `PREFIX-sN`.
    pub senders: Vec<String>,
    /// `PREFIX-rN`, the recipient of sender N.
    pub receivers: Vec<String>,
}

/// Registers 2×`pairs` fresh accounts under a new run prefix.
pub async fn register_pairs(server: &str, pairs: usize) -> anyhow::Result<PairAccounts> {
    let prefix = run_prefix();
    let password = password(&prefix);
    let senders: Vec<String> = (0..pairs).map(|i| format!("{prefix}-s{i}")).collect();
    let receivers: Vec<String> = (0..pairs).map(|i| format!("{prefix}-r{i}")).collect();
    let all: Vec<String> = senders.iter().chain(&receivers).cloned().collect();
    register_all(server, &all, &password).await?;
    Ok(PairAccounts {
        password,
        senders,
        receivers,
    })
}

/// Logs each of `names` in on its own client-library connection, a few at
/// a time.
pub async fn login_all(server: &str, names: &[String], password: &str) -> anyhow::Result<Vec<Client>> {
    let clients: Vec<anyhow::Result<Client>> = futures::stream::iter(names)
        .map(|name| login_client(server, name, password))
        .buffered(LOGIN_CONCURRENCY)
        .collect()
        .await;
    clients.into_iter().collect()
}

/// Logins in flight while setting up connections.
pub const LOGIN_CONCURRENCY: usize = 16;

/// Registers `names` with `password`, a few at a time over a few
/// connections. The iteration count is the one the server's Welcome asks
/// for (the client library reads it from there).
pub async fn register_all(server: &str, names: &[String], password: &str) -> anyhow::Result<()> {
    let connections = names.len().clamp(1, 4);
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(
            connect(server)
                .await
                .with_context(|| format!("connecting to {server}"))?,
        );
    }
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(names.iter().enumerate())
        .map(|(i, name)| {
            let client = &clients[i % connections];
            async move {
                match client.register(name, password).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.code() == Some(ErrorCode::NameTaken) => Ok(()),
                    Err(e) => Err(anyhow::anyhow!("registering {name}: {e}")),
                }
            }
        })
        .buffer_unordered(REGISTER_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Connects to `server` as the `parley` client would: `HOST:PORT` in
/// plaintext, `tls://HOST:PORT` or `quic://HOST:PORT`. Any certificate is
/// accepted: the bench trusts the server it was pointed at (on loopback).
pub async fn connect(server: &str) -> anyhow::Result<Client> {
    let address = parley_client::ServerAddress::parse(server).map_err(anyhow::Error::msg)?;
    Ok(Client::connect_to(&address, Some(&parley_client::Trust::Pinned(None))).await?)
}

/// A connected client logged in as `name`.
pub async fn login_client(server: &str, name: &str, password: &str) -> anyhow::Result<Client> {
    let client = connect(server)
        .await
        .with_context(|| format!("connecting to {server}"))?;
    client
        .login(name, password)
        .await
        .with_context(|| format!("logging in as {name}"))?;
    Ok(client)
}

/// The instant all in-process timestamps count from, so a sender and a
/// receiver in the same process agree on time without wall clocks.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Nanoseconds since the common origin.
pub fn now_ns() -> u64 {
    instant_ns(Instant::now())
}

pub fn instant_ns(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(origin()).as_nanos()).unwrap_or(u64::MAX)
}

/// A message body of `size` bytes (at least the header) carrying the
/// sender's sequence number and send time.
pub fn payload(seq: u64, sent_ns: u64, size: usize) -> String {
    let mut body = String::with_capacity(size.max(PAYLOAD_HEADER));
    // By hand, not `write!`: the formatter pads with one `char` at a time,
    // 5% of the generator's CPU under an overload flood.
    push_hex(&mut body, seq);
    push_hex(&mut body, sent_ns);
    // Padding by slices, not by characters: extending a String one `char`
    // at a time took 8% of the generator's CPU under an overload flood.
    let mut pad = size.saturating_sub(body.len());
    while pad > 0 {
        let chunk = pad.min(PADDING.len());
        body.push_str(&PADDING[..chunk]);
        pad -= chunk;
    }
    body
}

/// `bytes` in lowercase hex, two digits each.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Appends `value` as 16 lowercase hex digits.
fn push_hex(out: &mut String, value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        out.push(char::from(DIGITS[((value >> (shift * 4)) & 0xf) as usize]));
    }
}

/// What [`payload`] pads with, a slice at a time.
const PADDING: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// Sequence number and send time from a payload made by [`payload`].
pub fn parse_payload(body: &[u8]) -> Option<(u64, u64)> {
    let header = std::str::from_utf8(body.get(..PAYLOAD_HEADER)?).ok()?;
    let seq = u64::from_str_radix(&header[..16], 16).ok()?;
    let sent_ns = u64::from_str_radix(&header[16..], 16).ok()?;
    Some((seq, sent_ns))
}

/// Events counted per whole second since a start instant.
pub struct PerSecond {
    /// When second 0 began.
    start: Instant,
    /// One counter per second; events past the end land in the last one.
    buckets: Vec<AtomicU64>,
}

impl PerSecond {
    pub fn new(start: Instant, span: Duration) -> PerSecond {
        let seconds = span.as_secs() as usize + 2;
        PerSecond {
            start,
            buckets: (0..seconds).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn add(&self, at: Instant, n: u64) {
        let second = at.saturating_duration_since(self.start).as_secs() as usize;
        let index = second.min(self.buckets.len() - 1);
        self.buckets[index].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts for the seconds up to `until` (a partial last second is
    /// scaled up to a per-second rate).
    pub fn rates(&self, until: Instant) -> Vec<f64> {
        let elapsed = until.saturating_duration_since(self.start).as_secs_f64();
        let whole = elapsed.floor() as usize;
        let mut out: Vec<f64> = self
            .buckets
            .iter()
            .take(whole.min(self.buckets.len()))
            .map(|b| b.load(Ordering::Relaxed) as f64)
            .collect();
        let partial = elapsed - whole as f64;
        if partial > 0.2 && whole < self.buckets.len() {
            out.push(self.buckets[whole].load(Ordering::Relaxed) as f64 / partial);
        }
        out
    }
}

/// Seconds from a command-line value, refusing nonsense.
pub fn secs(value: f64, what: &str) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        value.is_finite() && (0.0..1e7).contains(&value),
        "{what} must be a number of seconds"
    );
    Ok(Duration::from_secs_f64(value))
}

/// A size from the command line: a whole number of bytes, optionally with
/// a binary suffix (`K`/`KiB`, `M`/`MiB`, `G`/`GiB`: powers of 1024) or a
/// decimal one (`KB`, `MB`, `GB`: powers of 1000); `64M` is 64 MiB.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let multiplier: u64 = match suffix.trim() {
        "" | "B" | "b" => 1,
        "K" | "k" | "KiB" => 1 << 10,
        "M" | "m" | "MiB" => 1 << 20,
        "G" | "g" | "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use bytes, K/KiB, M/MiB, G/GiB (1024s) or KB, MB, GB (1000s)"
            ));
        }
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (a whole number, e.g. 64M or 1000000)"))?;
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A size for people: whole KiB, MiB or GiB when it is one, else bytes.
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let body = payload(42, 123_456_789, 100);
        assert_eq!(body.len(), 100);
        assert_eq!(parse_payload(body.as_bytes()), Some((42, 123_456_789)));
        assert_eq!(payload(1, 2, 3).len(), PAYLOAD_HEADER);
        // Padding longer than one slice of it, and exactly one.
        for size in [PAYLOAD_HEADER + PADDING.len(), 1000, 64 * 1024] {
            let body = payload(7, 8, size);
            assert_eq!(body.len(), size);
            assert!(body[PAYLOAD_HEADER..].bytes().all(|b| b == b'x'));
            assert_eq!(parse_payload(body.as_bytes()), Some((7, 8)));
        }
        assert_eq!(parse_payload(b"short"), None);
    }

    #[test]
    fn sizes_from_the_command_line() {
        for (text, bytes) in [
            ("1000", 1000),
            ("64M", 64 << 20),
            ("64MiB", 64 << 20),
            ("64m", 64 << 20),
            ("512K", 512 << 10),
            ("2G", 2 << 30),
            ("5MB", 5_000_000),
            ("3kB", 3_000),
            (" 7 B ", 7),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in [
            "",
            "M",
            "1.5M",
            "-1",
            "64 furlongs",
            "99999999999999999999",
            "18446744073709551615G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(format_size(64 << 20), "64 MiB");
        assert_eq!(format_size(3 << 30), "3 GiB");
        assert_eq!(format_size(1536 << 10), "1536 KiB");
        assert_eq!(format_size(1000), "1000 bytes");
        assert_eq!(format_size(0), "0 bytes");
        for size in ["64M", "1G", "12345", "7K"] {
            let bytes = parse_size(size).unwrap_or(0);
            assert_eq!(parse_size(&format_size(bytes).replace(" bytes", "")), Ok(bytes));
        }
    }

    #[test]
    fn prefixes_are_valid_names() {
        let prefix = run_prefix();
        assert_eq!(prefix.len(), 9);
        assert!(prefix.starts_with('b'));
    }

    #[test]
    fn per_second_buckets() {
        let start = Instant::now();
        let counts = PerSecond::new(start, Duration::from_secs(2));
        counts.add(start, 5);
        counts.add(start + Duration::from_millis(1500), 3);
        counts.add(start + Duration::from_secs(60), 1);
        let rates = counts.rates(start + Duration::from_secs(2));
        assert_eq!(rates, vec![5.0, 3.0]);
    }
}
