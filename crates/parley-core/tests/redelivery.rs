//! A real [`Session`] and the connection's [`AckTimer`] together, under
//! tokio's paused clock: pushes that are never acknowledged come again
//! after the ack timeout, the same messages in the same order.
//!
//! The store is the smallest one that lets a session log in (by resume
//! token) and read and acknowledge one mailbox; every other operation
//! answers `Closed`, which the scenario never reaches.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parley_core::delivery::{AckFired, AckTimer};
use parley_core::presence::{BlockOutcome, Contact, PresenceChange, PresenceRequested};
use parley_core::scram::{Mechanism, StoredCredentials};
use parley_core::service::{AuthSettings, ResumeSettings, ServiceConfig};
use parley_core::store::{
    Account, AccountSummary, AckRange, Appended, FetchPage, MailboxState, NewAccount, NewInvite, NewMessage,
    NewResumeToken, StoredMessage,
};
use parley_core::throttle::ThrottleSettings;
use parley_core::{
    Limits, MessageId, NamePattern, PushEvent, Seq, Service, Session, Store, StoreError, StoreReply, UserId,
};

const ANN: UserId = UserId(1);
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_ACK_BACKOFF: Duration = Duration::from_secs(60);

/// One account, "ann", whose mailbox holds what the test put there.
struct OneMailbox {
    /// Ann's messages, in seq order.
    messages: Mutex<Vec<StoredMessage>>,
}

impl OneMailbox {
    fn with_messages(count: u64) -> OneMailbox {
        let messages = (1..=count)
            .map(|seq| StoredMessage {
                id: MessageId(100 + seq),
                recipient: ANN,
                seq: Seq(seq),
                sender: UserId(2),
                sender_name: "bob".into(),
                client_msg_id: format!("c{seq}"),
                body: format!("message {seq}"),
                timestamp_ms: 1_000 + seq,
                acked: false,
            })
            .collect();
        OneMailbox {
            messages: Mutex::new(messages),
        }
    }

    fn state(messages: &[StoredMessage]) -> MailboxState {
        MailboxState {
            last_seq: messages.last().map_or(Seq(0), |m| m.seq),
            unread: messages.iter().filter(|m| !m.acked).count() as u64,
        }
    }
}

fn closed<T>() -> StoreReply<T> {
    StoreReply::ready(Err(StoreError::Closed))
}

impl Store for OneMailbox {
    fn create_account(&self, _: NewAccount) -> StoreReply<Account> {
        closed()
    }
    fn create_invite(&self, _: NewInvite) -> StoreReply<()> {
        closed()
    }
    fn hold(&self, _: parley_core::store::NewHeld) -> StoreReply<parley_core::store::Held> {
        closed()
    }
    fn held(&self, _: UserId, _: u64, _: u32) -> StoreReply<Vec<parley_core::store::HeldMessage>> {
        closed()
    }
    fn drop_held(&self, _: UserId, _: Vec<u64>) -> StoreReply<Vec<u64>> {
        closed()
    }
    fn add_label(&self, _: parley_core::store::FilterLabel) -> StoreReply<u64> {
        closed()
    }
    fn labels(&self, _: u64, _: u32) -> StoreReply<Vec<parley_core::store::FilterLabel>> {
        closed()
    }
    fn find_account(&self, _: &str) -> StoreReply<Option<Account>> {
        closed()
    }
    fn delete_account(&self, _: UserId) -> StoreReply<()> {
        closed()
    }
    fn list_accounts(&self, _: &NamePattern, _: &str, _: u32) -> StoreReply<Vec<AccountSummary>> {
        closed()
    }
    fn append(&self, _: NewMessage) -> StoreReply<Appended> {
        closed()
    }
    // Appends are refused: there is nothing to tell.
    fn on_stored(&self, _: parley_core::store::OnStored) {}
    fn fetch(&self, _: UserId, _: Seq, _: u32, _: bool) -> StoreReply<Vec<StoredMessage>> {
        closed()
    }
    fn fetch_page(&self, user: UserId, after: Seq, limit: u32, include_acked: bool, _: usize) -> StoreReply<FetchPage> {
        let messages = self.messages.lock().expect("not poisoned");
        let mut matching = messages
            .iter()
            .filter(|m| m.recipient == user && m.seq > after && (include_acked || !m.acked));
        let page: Vec<StoredMessage> = matching.by_ref().take(limit as usize).cloned().collect();
        let more = matching.next().is_some();
        StoreReply::ready(Ok(FetchPage { messages: page, more }))
    }
    fn ack(&self, _: UserId, range: AckRange) -> StoreReply<(u64, MailboxState)> {
        let mut messages = self.messages.lock().expect("not poisoned");
        let mut acked = 0;
        for m in messages.iter_mut() {
            if !m.acked && (m.seq <= range.up_to || range.seqs.contains(&m.seq)) {
                m.acked = true;
                acked += 1;
            }
        }
        StoreReply::ready(Ok((acked, OneMailbox::state(&messages))))
    }
    fn delete_messages(&self, _: UserId, _: Vec<MessageId>) -> StoreReply<Vec<MessageId>> {
        closed()
    }
    fn mailbox_state(&self, _: UserId) -> StoreReply<MailboxState> {
        let messages = self.messages.lock().expect("not poisoned");
        StoreReply::ready(Ok(OneMailbox::state(&messages)))
    }
    fn add_contact(&self, _: UserId, _: &str, _: u32) -> StoreReply<AccountSummary> {
        closed()
    }
    fn remove_contact(&self, _: UserId, _: &str) -> StoreReply<bool> {
        closed()
    }
    fn list_contacts(&self, _: UserId) -> StoreReply<Vec<AccountSummary>> {
        closed()
    }
    fn create_resume_token(&self, _: NewResumeToken) -> StoreReply<()> {
        StoreReply::ready(Ok(()))
    }
    fn resume(&self, _: [u8; 32], _: u64) -> StoreReply<Option<Account>> {
        StoreReply::ready(Ok(Some(Account {
            id: ANN,
            name: "ann".into(),
            credentials: StoredCredentials::derive(Mechanism::Sha256, "pw", &[1; 16], 4096),
        })))
    }
    fn revoke_resume_token(&self, _: [u8; 32]) -> StoreReply<()> {
        StoreReply::ready(Ok(()))
    }
    fn revoke_all_resume_tokens(&self, _: UserId) -> StoreReply<u64> {
        closed()
    }
    fn set_credentials(&self, _: UserId, _: StoredCredentials) -> StoreReply<()> {
        closed()
    }
    fn request_presence(&self, _: UserId, _: &str, _: u32) -> StoreReply<PresenceRequested> {
        closed()
    }
    fn answer_presence(&self, _: UserId, _: &str, _: bool) -> StoreReply<PresenceChange> {
        closed()
    }
    fn cancel_presence(&self, _: UserId, _: &str) -> StoreReply<PresenceChange> {
        closed()
    }
    fn presence_requests(&self, _: UserId, _: u32) -> StoreReply<Vec<AccountSummary>> {
        closed()
    }
    fn contacts_with_presence(&self, _: UserId) -> StoreReply<Vec<Contact>> {
        StoreReply::ready(Ok(Vec::new()))
    }
    fn block(&self, _: UserId, _: &str, _: u32) -> StoreReply<BlockOutcome> {
        closed()
    }
    fn unblock(&self, _: UserId, _: &str) -> StoreReply<bool> {
        closed()
    }
    fn list_blocked(&self, _: UserId) -> StoreReply<Vec<AccountSummary>> {
        closed()
    }
    fn refuse_sender(&self, _: UserId, _: UserId, _: Option<bool>) -> StoreReply<bool> {
        closed()
    }
    fn close(&self) -> StoreReply<()> {
        StoreReply::ready(Ok(()))
    }
}

/// Ann's session on a service over [`OneMailbox`], subscribed from the
/// start of her mailbox.
async fn ann_subscribed(messages: u64) -> (Arc<Service>, Session) {
    let service = Service::new(
        Arc::new(OneMailbox::with_messages(messages)),
        ServiceConfig {
            limits: Limits::default(),
            auth: AuthSettings {
                mechanisms: vec![Mechanism::Sha256],
                iterations: 4096,
                secret: [7; 32],
            },
            resume: ResumeSettings::default(),
            throttle: ThrottleSettings::default(),
            registration: Default::default(),
            filters: Default::default(),
        },
    );
    let (mut session, _) = service.resume(&[9; 32], None).await.expect("resumed");
    session.subscribe(Seq(0)).await.expect("subscribed");
    (service, session)
}

/// The next push's (seq, id) pairs.
async fn next_messages(session: &mut Session) -> Vec<(u64, u64)> {
    match session.next_push().await.expect("a push") {
        PushEvent::Messages(batch) => batch.iter().map(|m| (m.seq.0, m.id.0)).collect(),
        other => panic!("expected messages, got {other:?}"),
    }
}

/// Whether a push is ready without waiting.
fn push_ready(session: &mut Session) -> bool {
    let mut push = std::pin::pin!(session.next_push());
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    push.as_mut().poll(&mut context).is_ready()
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

#[tokio::test(start_paused = true)]
async fn pushes_never_acknowledged_are_pushed_again_when_the_ack_timer_fires() {
    let (service, mut session) = ann_subscribed(3).await;
    let mut timer = AckTimer::new(ACK_TIMEOUT, MAX_ACK_BACKOFF);

    let first = next_messages(&mut session).await;
    assert_eq!(first, [(1, 101), (2, 102), (3, 103)]);
    timer.pushed(now());
    assert!(session.has_unacked());
    assert!(!push_ready(&mut session), "nothing more to push");

    // No ack: nothing happens before the timeout.
    tokio::time::advance(ACK_TIMEOUT - Duration::from_millis(1)).await;
    assert_eq!(timer.fire(now(), false, || session.redeliver()), AckFired::NotDue);
    assert!(!push_ready(&mut session));

    // At the timeout the same messages are pushed again, read from storage.
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        timer.fire(now(), false, || session.redeliver()),
        AckFired::Redelivered(3)
    );
    assert_eq!(next_messages(&mut session).await, first);
    timer.pushed(now());
    assert_eq!(timer.deadline(), Some(now() + ACK_TIMEOUT * 2), "the wait doubled");
    assert_eq!(
        service
            .counters()
            .messages_resent
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );

    // An ack of the first two: the third alone comes again, after the
    // first wait.
    session
        .ack(AckRange {
            up_to: Seq(2),
            seqs: Vec::new(),
        })
        .expect("a valid ack")
        .await
        .expect("acked");
    timer.acked(now(), session.has_unacked());
    assert_eq!(timer.deadline(), Some(now() + ACK_TIMEOUT));
    tokio::time::advance(ACK_TIMEOUT).await;
    assert_eq!(
        timer.fire(now(), false, || session.redeliver()),
        AckFired::Redelivered(1)
    );
    assert_eq!(next_messages(&mut session).await, [(3, 103)]);
    timer.pushed(now());

    // Acknowledging everything stops the timer.
    session
        .ack(AckRange {
            up_to: Seq(u64::MAX),
            seqs: Vec::new(),
        })
        .expect("a valid ack")
        .await
        .expect("acked");
    timer.acked(now(), session.has_unacked());
    assert_eq!(timer.deadline(), None);
    tokio::time::advance(MAX_ACK_BACKOFF).await;
    assert!(!push_ready(&mut session));
}

#[tokio::test(start_paused = true)]
async fn unwritten_output_holds_the_re_push_back_a_round() {
    let (_service, mut session) = ann_subscribed(2).await;
    let mut timer = AckTimer::new(ACK_TIMEOUT, MAX_ACK_BACKOFF);
    let first = next_messages(&mut session).await;
    timer.pushed(now());

    tokio::time::advance(ACK_TIMEOUT).await;
    assert_eq!(timer.fire(now(), true, || session.redeliver()), AckFired::Postponed);
    assert!(!push_ready(&mut session), "no second copy behind the first");
    assert!(session.has_unacked());

    tokio::time::advance(ACK_TIMEOUT).await;
    assert_eq!(
        timer.fire(now(), false, || session.redeliver()),
        AckFired::Redelivered(2)
    );
    assert_eq!(next_messages(&mut session).await, first);
}
