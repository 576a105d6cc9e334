//! Staying connected: when the server goes away, `watch` and the shell
//! connect again, log in again and pick delivery up where it stopped, so
//! that no message is lost and none is shown twice. This module owns the
//! schedule, the login state a reconnect needs ([`Link`]) and the record of
//! what was shown ([`Delivery`]); the callers own the terminal and decide
//! what to print.
//!
//! Schedule: capped exponential backoff with full jitter. Before attempt n
//! (0, 1, 2, ...) the client sleeps a random time between 0 and
//! min([`RECONNECT_CAP`], [`RECONNECT_BASE`] * [`RECONNECT_FACTOR`]^n), that
//! is at most 0.25, 0.5, 1, 2, 4, 8, then 10 s per attempt, and keeps trying
//! until it is connected or stopped. The random wait keeps a crowd of clients
//! from coming back in lockstep when a server restarts. The count starts
//! over only once a connection has stayed up for [`STABLE_AFTER`], so a
//! server that accepts and then drops connections is not hammered.
//!
//! Login: the resume token of the last password login, then the password
//! (which this process always knows: it logged in with it) when the server
//! refuses the token as expired or revoked. A refused password is final
//! (exit 3), and so is a Goodbye saying the account was deleted.
//!
//! Delivery: `Subscribe{after_seq}` with the highest seq this process has
//! shown; the server pushes every unacknowledged message after it, so none
//! is lost. Acknowledgements that did not reach the server are sent again
//! first. The server also pushes unacknowledged messages again on its own
//! (after its ack timeout), so every message id shown is remembered (the
//! last [`RECENT_MESSAGE_IDS`]) and a repeat is acknowledged, not shown.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::time::{Duration, Instant};

use parley_client::{Client, ClientError, ErrorCode, LoginInfo, Message, Visibility};

use crate::exit::{Exit, Failure, server_code};
use crate::session::{self, Credentials, timed};

/// Longest wait before the first attempt.
pub const RECONNECT_BASE: Duration = Duration::from_millis(250);
/// How much the longest wait grows with each failed attempt.
pub const RECONNECT_FACTOR: u32 = 2;
/// The longest wait grows up to this and no further.
pub const RECONNECT_CAP: Duration = Duration::from_secs(10);
/// A connection that lasted this long starts the schedule over when lost.
pub const STABLE_AFTER: Duration = RECONNECT_CAP;
/// Message ids remembered to drop repeated pushes.
pub const RECENT_MESSAGE_IDS: usize = 10_000;
/// Most seqs one Ack request may carry (parley-core's limit).
const MAX_SEQS_PER_ACK: usize = 1000;

/// The longest wait before attempt `attempt` (counted from 0):
/// min(cap, base * factor^attempt).
pub fn backoff_ceiling(attempt: u32) -> Duration {
    RECONNECT_BASE
        .saturating_mul(RECONNECT_FACTOR.saturating_pow(attempt))
        .min(RECONNECT_CAP)
}

/// The wait before attempt `attempt`: uniformly random up to its ceiling
/// ("full jitter").
pub fn backoff_delay(attempt: u32) -> Duration {
    let ceiling = u64::try_from(backoff_ceiling(attempt).as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::random_range(0..=ceiling))
}

/// Whether an error means the connection is gone or not answering (as
/// opposed to the server refusing the request): the connection dropped, or
/// a request or connect timed out.
pub fn is_disconnect(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<ClientError>(),
            Some(ClientError::Io(_) | ClientError::Disconnected(_))
        ) || cause
            .downcast_ref::<Failure>()
            .is_some_and(|f| f.exit == Exit::Unavailable && f.code == "UNAVAILABLE")
    })
}

/// Whether another attempt may succeed where this one failed.
fn worth_retrying(err: &anyhow::Error) -> bool {
    is_disconnect(err)
        || matches!(
            server_code(err),
            Some(
                ErrorCode::Busy
                    | ErrorCode::ShuttingDown
                    | ErrorCode::Timeout
                    | ErrorCode::RateLimited
                    | ErrorCode::Internal
            )
        )
}

/// The server's hint for when to try again, if it gave one.
fn retry_after(err: &anyhow::Error) -> Duration {
    Duration::from_millis(u64::from(crate::exit::retry_after_ms(err).unwrap_or(0)))
}

/// How a connection ended.
#[derive(Debug)]
pub enum End {
    /// The server went away (or stopped answering): connecting again may
    /// help. Carries the error to report when not reconnecting.
    Lost(Failure),
    /// Connecting again would not help.
    Fatal(Failure),
}

impl End {
    /// Judges the end of a connection from the Goodbye that announced it
    /// (`None`: the connection just closed).
    pub fn from_goodbye(goodbye: Option<(ErrorCode, String)>) -> End {
        let Some((code, message)) = goodbye else {
            return End::Lost(Failure::unavailable("the server closed the connection"));
        };
        let name = code.as_str_name();
        let text = format!("the server closed the connection: {message} ({name})");
        match code {
            ErrorCode::ShuttingDown | ErrorCode::Timeout => End::Lost(Failure::new(Exit::Unavailable, name, text)),
            ErrorCode::AccountDeleted => End::Fatal(Failure::new(Exit::Auth, name, text)),
            _ => End::Fatal(Failure::new(Exit::Unavailable, name, text)),
        }
    }

    /// A request failed because the connection is gone.
    pub fn request_failed(err: &anyhow::Error) -> End {
        End::Lost(Failure::unavailable(format!(
            "lost the connection: {}",
            crate::exit::describe(err)
        )))
    }
}

/// The last message ids shown, bounded: the oldest is forgotten first.
pub struct RecentIds {
    /// For lookups.
    ids: HashSet<u64>,
    /// Insertion order, to know which to forget.
    order: VecDeque<u64>,
    /// Most ids kept.
    capacity: usize,
}

impl RecentIds {
    pub fn new(capacity: usize) -> RecentIds {
        RecentIds {
            ids: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `id`; false if it was recorded already.
    pub fn insert(&mut self, id: u64) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        true
    }
}

/// A pushed batch, sorted by [`Delivery::sort`].
#[derive(Debug, Default)]
pub struct Sorted {
    /// Not shown before: to show now (already recorded as shown).
    pub new: Vec<Message>,
    /// Seqs of messages shown before and pushed again: to acknowledge only.
    pub repeated: Vec<u64>,
    /// Whether new messages were left out because of the limit.
    pub cut: bool,
}

impl Sorted {
    /// Everything to acknowledge once the new messages are shown.
    pub fn seqs_to_ack(&self) -> Vec<u64> {
        let mut seqs: Vec<u64> = self
            .new
            .iter()
            .map(|m| m.seq)
            .chain(self.repeated.iter().copied())
            .collect();
        seqs.sort_unstable();
        seqs
    }
}

/// What this process has shown, across connections.
pub struct Delivery {
    /// Highest seq shown live (or the starting point): where a new
    /// subscription starts.
    last_seq_seen: u64,
    /// Message ids shown, to drop repeats.
    recent: RecentIds,
    /// Seqs shown whose acknowledgement did not reach the server.
    unacked: BTreeSet<u64>,
}

impl Delivery {
    /// Delivery that starts after `after_seq`.
    pub fn new(after_seq: u64) -> Delivery {
        Delivery {
            last_seq_seen: after_seq,
            recent: RecentIds::new(RECENT_MESSAGE_IDS),
            unacked: BTreeSet::new(),
        }
    }

    pub fn last_seq_seen(&self) -> u64 {
        self.last_seq_seen
    }

    /// Splits a pushed batch into messages not shown yet (at most `limit`,
    /// recorded as shown) and repeats.
    pub fn sort(&mut self, batch: Vec<Message>, limit: Option<u64>) -> Sorted {
        let mut sorted = Sorted::default();
        for m in batch {
            if self.recent.ids.contains(&m.message_id) {
                sorted.repeated.push(m.seq);
            } else if limit.is_some_and(|limit| sorted.new.len() as u64 >= limit) {
                sorted.cut = true;
            } else {
                self.recent.insert(m.message_id);
                self.last_seq_seen = self.last_seq_seen.max(m.seq);
                sorted.new.push(m);
            }
        }
        sorted
    }

    /// Keeps the messages of a fetch not shown yet and records them as
    /// shown; a fetch does not move where live delivery starts.
    pub fn unseen(&mut self, messages: Vec<Message>) -> Vec<Message> {
        messages
            .into_iter()
            .filter(|m| self.recent.insert(m.message_id))
            .collect()
    }

    /// Remembers shown messages whose acknowledgement failed.
    pub fn ack_failed(&mut self, seqs: &[u64]) {
        self.unacked.extend(seqs);
    }

    /// Seqs to acknowledge on the next connection.
    pub fn pending_acks(&self) -> Vec<u64> {
        self.unacked.iter().copied().collect()
    }

    /// Forgets acknowledgements that reached the server.
    pub fn acked(&mut self, seqs: &[u64]) {
        for seq in seqs {
            self.unacked.remove(seq);
        }
    }
}

/// What connecting again needs: where, who, and the token to resume with.
pub struct Link {
    /// The servers, tried from the one that last worked.
    server: crate::trust::Servers,
    /// For a password login when the token no longer works.
    credentials: Credentials,
    /// Resume token of the last password login (kept across resumes, which
    /// return none); empty when there is none.
    token: Vec<u8>,
    /// The account logged in to. A password login that lands elsewhere
    /// means the account was deleted and its name registered again while
    /// disconnected: a new mailbox, whose seqs say nothing about the old one.
    user_id: u64,
    /// Attempts made since the schedule last started over.
    attempt: u32,
    /// When the current connection was made.
    connected_at: Instant,
}

impl Link {
    /// Connects and logs in with the password; no retries (a server that
    /// is not there at the start is an error for the caller to report).
    pub async fn open(
        server: &crate::trust::Servers,
        credentials: Credentials,
    ) -> anyhow::Result<(Link, Client, LoginInfo)> {
        let (client, info) = session::open(server, &credentials, Visibility::Online).await?;
        let link = Link {
            server: server.clone(),
            credentials,
            token: info.resume_token.clone(),
            user_id: info.user_id,
            attempt: 0,
            connected_at: Instant::now(),
        };
        Ok((link, client, info))
    }

    /// Connects again after a loss, following the schedule: logs in,
    /// acknowledges `pending_acks`, subscribes after `after_seq`. `status`
    /// hears about failed attempts (each different failure once) and about a
    /// fallback to the password. Returns once connected, or with an error
    /// that another attempt would not fix.
    pub async fn reconnect(
        &mut self,
        after_seq: u64,
        pending_acks: &[u64],
        status: &mut (dyn FnMut(String) + Send),
    ) -> anyhow::Result<Client> {
        if self.connected_at.elapsed() >= STABLE_AFTER {
            self.attempt = 0;
        }
        let mut hint = Duration::ZERO;
        let mut last_failure = String::new();
        loop {
            tokio::time::sleep(backoff_delay(self.attempt).max(hint)).await;
            self.attempt = self.attempt.saturating_add(1);
            match self.attempt_once(after_seq, pending_acks, status).await {
                Ok(client) => {
                    self.connected_at = Instant::now();
                    return Ok(client);
                }
                Err(e) if worth_retrying(&e) => {
                    let failure = crate::exit::describe(&e);
                    if failure != last_failure {
                        status(format!("still reconnecting: {failure}"));
                        last_failure = failure;
                    }
                    hint = retry_after(&e).min(RECONNECT_CAP);
                }
                Err(e) => return Err(e.context("reconnecting")),
            }
        }
    }

    async fn attempt_once(
        &mut self,
        after_seq: u64,
        pending_acks: &[u64],
        status: &mut (dyn FnMut(String) + Send),
    ) -> anyhow::Result<Client> {
        let client = session::connect(&self.server).await?;
        let ready = async {
            self.log_in(&client, status).await?;
            for chunk in pending_acks.chunks(MAX_SEQS_PER_ACK) {
                timed("marking messages read", client.ack(0, chunk.to_vec())).await?;
            }
            timed("subscribing", client.subscribe(after_seq)).await
        };
        match ready.await {
            Ok(_) => Ok(client),
            Err(e) => {
                // A server that is going away, or went away after answering,
                // is tried last next time.
                if is_disconnect(&e) || server_code(&e) == Some(ErrorCode::ShuttingDown) {
                    self.server.pass_over_current();
                }
                Err(e)
            }
        }
    }

    /// What to say once reconnected: with several servers, which one.
    pub fn reconnected(&self) -> String {
        if self.server.all().len() > 1 {
            format!("reconnected to {}", self.server.current().given)
        } else {
            "reconnected".to_owned()
        }
    }

    /// Resumes with the token, or logs in with the password when the server
    /// refuses the token (expired, revoked, or lost with the server's data).
    async fn log_in(&mut self, client: &Client, status: &mut (dyn FnMut(String) + Send)) -> anyhow::Result<()> {
        if !self.token.is_empty() {
            match timed("resuming the session", client.resume(&self.token)).await {
                Ok(info) => {
                    // A resume replaces the token it used.
                    if !info.resume_token.is_empty() {
                        self.token = info.resume_token;
                    }
                    return Ok(());
                }
                Err(e) if server_code(&e) == Some(ErrorCode::AuthFailed) => {
                    self.token.clear();
                    status("the session could not be resumed; logging in again".to_owned());
                }
                Err(e) => return Err(e),
            }
        }
        let info = session::login(
            client,
            &self.credentials.user,
            &self.credentials.password,
            Visibility::Online,
        )
        .await?;
        if info.user_id != self.user_id {
            return Err(Failure::new(
                Exit::Auth,
                "ACCOUNT_DELETED",
                format!(
                    "account {} was deleted while disconnected (the name now belongs to a new account)",
                    self.credentials.user
                ),
            )
            .into());
        }
        self.token = info.resume_token;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: u64, seq: u64) -> Message {
        Message {
            message_id: id,
            seq,
            from: "bob".into(),
            timestamp_ms: 0,
            body: format!("m{id}"),
            client_msg_id: String::new(),
            acked: false,
        }
    }

    #[test]
    fn schedule_doubles_from_250ms_up_to_10s() {
        let ceilings: Vec<u128> = (0..8).map(|n| backoff_ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(backoff_ceiling(u32::MAX), RECONNECT_CAP);
        for attempt in 0..40 {
            assert!(backoff_delay(attempt) <= backoff_ceiling(attempt));
        }
        // Full jitter: the waits are spread, not all at the ceiling.
        let waits: HashSet<Duration> = (0..50).map(|_| backoff_delay(6)).collect();
        assert!(waits.len() > 10, "{waits:?}");
    }

    #[test]
    fn recent_ids_forget_the_oldest() {
        let mut recent = RecentIds::new(3);
        assert!(recent.insert(1) && recent.insert(2) && recent.insert(3));
        assert!(!recent.insert(2));
        assert!(recent.insert(4));
        assert!(recent.insert(1), "1 was the oldest and is forgotten");
        assert!(!recent.insert(4));
    }

    #[test]
    fn delivery_drops_repeats_and_counts_only_new_messages() {
        let mut delivery = Delivery::new(2);
        let first = delivery.sort(vec![message(10, 3), message(11, 4)], None);
        assert_eq!(first.new.len(), 2);
        assert_eq!(delivery.last_seq_seen(), 4);

        // Pushed again (ack timeout or a reconnect), plus one new, with a
        // limit of one more message.
        let again = delivery.sort(vec![message(11, 4), message(12, 5), message(13, 6)], Some(1));
        assert_eq!(again.new.iter().map(|m| m.message_id).collect::<Vec<_>>(), [12]);
        assert_eq!(again.repeated, [4]);
        assert!(again.cut);
        assert_eq!(again.seqs_to_ack(), [4, 5]);
        assert_eq!(delivery.last_seq_seen(), 5);

        // A fetch shows only what was not shown, and does not move the start.
        let fetched = delivery.unseen(vec![message(12, 5), message(13, 6)]);
        assert_eq!(fetched.iter().map(|m| m.message_id).collect::<Vec<_>>(), [13]);
        assert_eq!(delivery.last_seq_seen(), 5);
        assert!(delivery.sort(vec![message(13, 6)], None).new.is_empty());

        delivery.ack_failed(&[5, 4]);
        assert_eq!(delivery.pending_acks(), [4, 5]);
        delivery.acked(&[4, 5]);
        assert!(delivery.pending_acks().is_empty());
    }

    #[test]
    fn ends_are_judged_by_their_goodbye() {
        assert!(matches!(End::from_goodbye(None), End::Lost(_)));
        for code in [ErrorCode::ShuttingDown, ErrorCode::Timeout] {
            assert!(matches!(End::from_goodbye(Some((code, "m".into()))), End::Lost(_)));
        }
        match End::from_goodbye(Some((ErrorCode::AccountDeleted, "gone".into()))) {
            End::Fatal(f) => assert_eq!((f.exit, f.code.as_str()), (Exit::Auth, "ACCOUNT_DELETED")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            End::from_goodbye(Some((ErrorCode::BadFrame, "m".into()))),
            End::Fatal(Failure {
                exit: Exit::Unavailable,
                ..
            })
        ));
    }

    #[test]
    fn disconnects_and_retryable_failures() {
        let gone = anyhow::Error::new(ClientError::Disconnected(None)).context("sending");
        assert!(is_disconnect(&gone) && worth_retrying(&gone));
        let timed_out = anyhow::Error::new(Failure::unavailable("no answer"));
        assert!(is_disconnect(&timed_out));
        let server = |code| {
            anyhow::Error::new(ClientError::Server {
                code,
                message: "m".into(),
                retry_after_ms: 1500,
            })
        };
        assert!(!is_disconnect(&server(ErrorCode::Busy)) && worth_retrying(&server(ErrorCode::Busy)));
        assert_eq!(
            retry_after(&server(ErrorCode::RateLimited)),
            Duration::from_millis(1500)
        );
        assert!(!worth_retrying(&server(ErrorCode::AuthFailed)));
        let refused = anyhow::Error::new(Failure::new(Exit::Auth, "AUTH_FAILED", "login failed"));
        assert!(!worth_retrying(&refused));
        assert!(!worth_retrying(&anyhow::Error::new(ClientError::Protocol("v2".into()))));
    }
}
