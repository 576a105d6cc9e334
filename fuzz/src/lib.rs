//! What the fuzz targets and the seed generator share: the layout of a
//! `server_requests` input, the server settings it runs with and the
//! fixtures the harness creates before a connection starts.
//!
//! Nothing here runs the server; `fuzz_targets/server_requests.rs` does.
#![forbid(unsafe_code)]

/// Frame limit of the server under test, and of the seeds: small, so that
/// limits are reached.
pub const MAX_FRAME_BYTES: u32 = 4096;

/// The server's settings, as `parleyd` flags (see `SettingArgs`), each
/// small so that its limit is reached within one short connection.
pub mod settings {
    /// Largest message body; must stay 1024 bytes below the frame limit.
    pub const MAX_BODY_BYTES: u32 = 2048;
    /// Requests in flight per connection.
    pub const PIPELINE_WINDOW: usize = 4;
    /// Requests in flight across the server before new work is BUSY. Runs
    /// use one or the other (see `mode`): one connection alone never
    /// reaches the first, and soon reaches the second, which is below the
    /// window.
    pub const MAX_BACKLOG: usize = 1000;
    pub const TIGHT_MAX_BACKLOG: usize = 2;
    /// Output buffered before reading pauses: the smallest allowed (one frame).
    pub const OUTBOUND_BUFFER_BYTES: usize = super::MAX_FRAME_BYTES as usize;
    /// Events queued per session before notifications are dropped.
    pub const SESSION_QUEUE: usize = 2;
    /// Pushes left unacknowledged before pushing pauses.
    pub const MAX_UNACKED: usize = 3;
    /// Contacts per account.
    pub const MAX_CONTACTS: u32 = 2;
    /// Failed logins per account name, and per address, before RATE_LIMITED.
    pub const LOGIN_FAILURES_PER_ACCOUNT: u32 = 2;
    pub const LOGIN_FAILURES_PER_IP: u32 = 4;
    /// Seconds of silence before the server closes the connection.
    pub const KEEPALIVE_SECS: u64 = 10;
    /// First wait for an ack before a re-push, and the longest.
    pub const ACK_TIMEOUT_MS: u64 = 1000;
    pub const MAX_ACK_BACKOFF_MS: u64 = 4000;
    /// Seconds a connection may stay unauthenticated.
    pub const AUTH_TIMEOUT_SECS: u64 = 30;
    /// PBKDF2 iterations required of registrations and used by the
    /// harness's accounts: 1, below the 4096 that `parleyd` allows at
    /// least. The server never runs PBKDF2 (only the client does), so this
    /// changes nothing on the server's path except which registrations it
    /// accepts, while 4096 iterations would cost the harness's login
    /// milliseconds per run.
    pub const SCRAM_ITERATIONS: u32 = 1;
}

/// The accounts and the resume token the harness creates.
pub mod fixtures {
    /// The account the harness logs in as.
    pub const USER: &str = "alice";
    /// Password of both accounts.
    pub const PASSWORD: &str = "correct horse";
    /// A second account, the sender of the messages already in alice's mailbox.
    pub const OTHER_USER: &str = "bob";
    /// A live resume token of alice's, so that `Resume` can succeed.
    pub const RESUME_TOKEN: &[u8; 32] = b"fuzz-resume-token-for-alice-0001";
    /// Request ids of the harness's own login frames; seeds use ids from 10.
    pub const LOGIN_REQUEST_IDS: (u64, u64) = (1, 2);
}

/// How the first byte of a `server_requests` input steers the harness.
pub mod mode {
    use std::time::Duration;

    /// Bit 0: log in as alice (real SCRAM frames) before the input.
    const LOG_IN: u8 = 0b1;
    /// Bit 1: shut the server down once the input is written.
    const SHUT_DOWN: u8 = 0b10;
    /// Bit 2: the tight backlog limit, so that requests get BUSY.
    const TIGHT_BACKLOG: u8 = 0b100;
    /// Bits 3–4: index into [`CHUNK_SIZES`].
    const CHUNK_SHIFT: u32 = 3;
    /// Bits 5–7: index into [`PAUSES`].
    const PAUSE_SHIFT: u32 = 5;

    /// Bytes written at a time (0: the whole input at once), so that
    /// frames arrive split across reads.
    pub const CHUNK_SIZES: [usize; 4] = [0, 1, 3, 16];
    /// Virtual time the client waits after each chunk: none in half the
    /// cases; otherwise long enough for a BUSY pause to end, for one and for
    /// several re-pushes of unacknowledged messages, or for the keep-alive
    /// to close the connection.
    pub const PAUSES: [Duration; 8] = [
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        Duration::from_millis(50),
        Duration::from_millis(1500),
        Duration::from_secs(5),
        Duration::from_secs(super::settings::KEEPALIVE_SECS + 1),
    ];

    /// The harness's choices for one input.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Mode {
        pub log_in: bool,
        pub shut_down: bool,
        pub tight_backlog: bool,
        /// Index into [`CHUNK_SIZES`].
        pub chunk: usize,
        /// Index into [`PAUSES`].
        pub pause: usize,
    }

    impl Mode {
        pub fn from_byte(byte: u8) -> Mode {
            Mode {
                log_in: byte & LOG_IN != 0,
                shut_down: byte & SHUT_DOWN != 0,
                tight_backlog: byte & TIGHT_BACKLOG != 0,
                chunk: usize::from((byte >> CHUNK_SHIFT) & 0b11),
                pause: usize::from(byte >> PAUSE_SHIFT),
            }
        }

        /// The first byte that selects this mode; indexes are taken modulo
        /// the length of their table.
        pub fn to_byte(self) -> u8 {
            let mut byte = ((self.chunk as u8 & 0b11) << CHUNK_SHIFT) | ((self.pause as u8 & 0b111) << PAUSE_SHIFT);
            if self.log_in {
                byte |= LOG_IN;
            }
            if self.shut_down {
                byte |= SHUT_DOWN;
            }
            if self.tight_backlog {
                byte |= TIGHT_BACKLOG;
            }
            byte
        }

        pub fn chunk_size(self) -> usize {
            CHUNK_SIZES[self.chunk]
        }

        pub fn pause(self) -> Duration {
            PAUSES[self.pause]
        }
    }
}
