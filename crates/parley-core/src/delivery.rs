//! The delivery state machine of one session, with no I/O: which seqs may be
//! pushed next and which wait for an ack ([`PushWindow`]), and when pushed
//! messages that were never acknowledged are pushed again ([`AckTimer`]).
//!
//! Both are plain values changed by method calls. They never read a clock,
//! a store or a channel: the caller passes the time in, and does the
//! reading and writing the answers call for. [`crate::Session`] keeps a
//! window; each front door that pushes keeps a timer beside its session.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::ids::Seq;

/// What a notified message means for the window (see [`PushWindow::offer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Pushed already (or known to the client): drop it.
    Stale,
    /// Exactly the next seq: push it; the window counts it as pushed.
    Next,
    /// Past the next seq, so something in between was missed: drop it and
    /// read from storage instead.
    Gap,
}

/// Where pushes stand on one session: the last seq pushed, whether the next
/// ones must come from storage, and the seqs pushed and not yet
/// acknowledged.
#[derive(Clone, Debug, Default)]
pub struct PushWindow {
    /// Highest seq pushed (or skipped as already known) on this session.
    last_pushed: Seq,
    /// Whether pushes must next come from storage: after subscribing, after
    /// a gap in notifications, after the hub dropped some, or after a
    /// rewind for redelivery.
    catch_up: bool,
    /// Seqs pushed on this session and not yet acknowledged by it; bounded
    /// by the `max_unacked` its owner passes to [`PushWindow::can_push`],
    /// since pushing stops when it is full.
    unacked: BTreeSet<Seq>,
}

impl PushWindow {
    /// A window before any subscription: nothing pushed, nothing to read.
    pub fn new() -> PushWindow {
        PushWindow::default()
    }

    /// Live delivery starts after `after`: everything past it is read from
    /// storage first.
    pub fn subscribe(&mut self, after: Seq) {
        self.last_pushed = after;
        self.catch_up = true;
    }

    /// Notifications were dropped (a full queue, a lost bus frame): the next
    /// pushes come from storage.
    pub fn lagged(&mut self) {
        self.catch_up = true;
    }

    /// Whether the next pushes must be read from storage.
    pub fn needs_catch_up(&self) -> bool {
        self.catch_up
    }

    /// The highest seq pushed: a catch-up read starts after it.
    pub fn last_pushed(&self) -> Seq {
        self.last_pushed
    }

    /// A message with `seq` was notified. Only the next seq moves the
    /// window; a later one starts a catch-up instead.
    pub fn offer(&mut self, seq: Seq) -> Offer {
        if seq <= self.last_pushed {
            Offer::Stale
        } else if seq == self.last_pushed.next() {
            self.last_pushed = seq;
            Offer::Next
        } else {
            self.catch_up = true;
            Offer::Gap
        }
    }

    /// A catch-up read answered a page whose last message has seq `last`
    /// (none if it was empty) and which `more` messages follow: the window
    /// moves past the page, and catching up ends with the last page.
    pub fn page_read(&mut self, last: Option<Seq>, more: bool) {
        if !more {
            self.catch_up = false;
        }
        if let Some(last) = last {
            self.last_pushed = last;
        }
    }

    /// These seqs went out as pushes: they wait for an ack.
    pub fn pushed(&mut self, seqs: impl IntoIterator<Item = Seq>) {
        self.unacked.extend(seqs);
    }

    /// The client acknowledged every seq up to `up_to` (0 for none,
    /// `u64::MAX` for everything) and each of `seqs`.
    pub fn acked(&mut self, up_to: Seq, seqs: &[Seq]) {
        if up_to.0 > 0 {
            self.unacked = match up_to.0.checked_add(1) {
                Some(after) => self.unacked.split_off(&Seq(after)),
                None => BTreeSet::new(),
            };
        }
        for seq in seqs {
            self.unacked.remove(seq);
        }
    }

    /// Whether more pushes may go out: false while `max_unacked` pushed
    /// messages wait for their ack.
    pub fn can_push(&self, max_unacked: usize) -> bool {
        self.unacked.len() < max_unacked
    }

    /// Whether pushed messages wait for an ack.
    pub fn has_unacked(&self) -> bool {
        !self.unacked.is_empty()
    }

    /// How many pushed messages wait for an ack.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// Go back to the oldest unacknowledged push, so that everything from it
    /// on is read from storage and pushed again (go-back-N; what another
    /// session acknowledged meanwhile is not read again). Returns how many
    /// pushes waited for an ack; 0 changes nothing.
    pub fn rewind(&mut self) -> usize {
        let Some(&oldest) = self.unacked.first() else { return 0 };
        let count = self.unacked.len();
        self.unacked.clear();
        self.last_pushed = Seq(oldest.0.saturating_sub(1));
        self.catch_up = true;
        count
    }
}

/// What [`AckTimer::fire`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckFired {
    /// The deadline has not come (or the timer is not armed): nothing.
    NotDue,
    /// Output is still waiting to be written, so the client has not read
    /// what it was given: a copy would queue behind the original. The timer
    /// waits another round at the same backoff.
    Postponed,
    /// The pushes were rewound for redelivery; this many were waiting (0
    /// when nothing was, in which case the backoff stays). The timer is
    /// disarmed until the next push arms it.
    Redelivered(usize),
}

/// When pushes that were never acknowledged are pushed again: first after
/// `ack_timeout`, then after doubling waits up to `max_backoff`; any ack
/// brings the wait back to `ack_timeout`.
#[derive(Clone, Debug)]
pub struct AckTimer {
    /// The first wait for an ack, and the wait after any progress.
    ack_timeout: Duration,
    /// The longest wait between re-pushes.
    max_backoff: Duration,
    /// The current wait; doubles with each re-push.
    backoff: Duration,
    /// When the oldest unacknowledged push is pushed again, if armed.
    deadline: Option<Instant>,
}

impl AckTimer {
    /// A disarmed timer whose first wait is `ack_timeout`.
    pub fn new(ack_timeout: Duration, max_backoff: Duration) -> AckTimer {
        AckTimer {
            ack_timeout,
            max_backoff,
            backoff: ack_timeout,
            deadline: None,
        }
    }

    /// When the timer fires, if armed.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The current wait.
    pub fn backoff(&self) -> Duration {
        self.backoff
    }

    /// The deadline `now` plus the current wait. A wait past what an
    /// `Instant` can hold never comes: the timer stays disarmed rather than
    /// failing.
    fn after_backoff(&self, now: Instant) -> Option<Instant> {
        now.checked_add(self.backoff)
    }

    /// Pushes went out at `now`: start waiting for their ack, unless the
    /// timer already runs for earlier ones.
    pub fn pushed(&mut self, now: Instant) {
        if self.deadline.is_none() {
            self.deadline = self.after_backoff(now);
        }
    }

    /// An ack came at `now`: progress brings the wait back to `ack_timeout`,
    /// counted from now while pushes still wait (`unacked`); with none
    /// waiting the timer stops.
    pub fn acked(&mut self, now: Instant, unacked: bool) {
        self.backoff = self.ack_timeout;
        self.deadline = if unacked { self.after_backoff(now) } else { None };
    }

    /// The timer's moment may have come at `now`. If it has: with output
    /// still unwritten (`output_waiting`), wait another round; otherwise
    /// call `rewind` (which rewinds the pushes and returns how many waited)
    /// and, if any did, double the wait up to `max_backoff`.
    pub fn fire(&mut self, now: Instant, output_waiting: bool, rewind: impl FnOnce() -> usize) -> AckFired {
        if self.deadline.is_none_or(|at| at > now) {
            return AckFired::NotDue;
        }
        if output_waiting {
            self.deadline = self.after_backoff(now);
            return AckFired::Postponed;
        }
        self.deadline = None;
        let count = rewind();
        if count > 0 {
            self.backoff = self.backoff.saturating_mul(2).min(self.max_backoff);
        }
        AckFired::Redelivered(count)
    }

    /// A new login: nothing pushed yet, the first wait again.
    pub fn reset(&mut self) {
        self.deadline = None;
        self.backoff = self.ack_timeout;
    }

    /// The session ended (logout, account deleted): nothing waits any more.
    pub fn disarm(&mut self) {
        self.deadline = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(list: &[u64]) -> Vec<Seq> {
        list.iter().copied().map(Seq).collect()
    }

    /// A window subscribed after `after` that has read one page up to
    /// `last` and pushed it.
    fn pushed_up_to(after: u64, last: u64) -> PushWindow {
        let mut window = PushWindow::new();
        window.subscribe(Seq(after));
        window.page_read(Some(Seq(last)), false);
        window.pushed((after + 1..=last).map(Seq));
        window
    }

    #[test]
    fn a_new_window_pushes_nothing_until_subscribed_and_waits_for_no_ack() {
        let window = PushWindow::new();
        assert!(!window.needs_catch_up());
        assert_eq!(window.last_pushed(), Seq(0));
        assert!(!window.has_unacked());
        assert!(window.can_push(1));
    }

    #[test]
    fn subscribing_reads_from_storage_after_the_given_seq() {
        let mut window = PushWindow::new();
        window.subscribe(Seq(7));
        assert!(window.needs_catch_up());
        assert_eq!(window.last_pushed(), Seq(7));
    }

    #[test]
    fn catching_up_moves_past_each_page_and_ends_with_the_last() {
        let mut window = PushWindow::new();
        window.subscribe(Seq(0));
        window.page_read(Some(Seq(256)), true);
        assert!(window.needs_catch_up());
        assert_eq!(window.last_pushed(), Seq(256));
        window.page_read(Some(Seq(300)), false);
        assert!(!window.needs_catch_up());
        assert_eq!(window.last_pushed(), Seq(300));
    }

    #[test]
    fn an_empty_page_ends_catching_up_where_it_was() {
        let mut window = PushWindow::new();
        window.subscribe(Seq(5));
        window.page_read(None, false);
        assert!(!window.needs_catch_up());
        assert_eq!(window.last_pushed(), Seq(5));
    }

    #[test]
    fn notifications_in_order_are_pushed_one_after_another() {
        let mut window = pushed_up_to(0, 0);
        for seq in 1..=3 {
            assert_eq!(window.offer(Seq(seq)), Offer::Next);
            assert_eq!(window.last_pushed(), Seq(seq));
        }
        assert!(!window.needs_catch_up());
    }

    #[test]
    fn duplicates_and_older_notifications_are_dropped() {
        let mut window = pushed_up_to(0, 4);
        assert_eq!(window.offer(Seq(4)), Offer::Stale);
        assert_eq!(window.offer(Seq(1)), Offer::Stale);
        assert_eq!(window.offer(Seq(0)), Offer::Stale);
        assert_eq!(window.last_pushed(), Seq(4));
        assert!(!window.needs_catch_up());
        assert_eq!(window.offer(Seq(5)), Offer::Next);
        assert_eq!(window.offer(Seq(5)), Offer::Stale);
    }

    #[test]
    fn a_gap_starts_a_catch_up_from_the_last_seq_pushed() {
        let mut window = pushed_up_to(0, 2);
        assert_eq!(window.offer(Seq(4)), Offer::Gap);
        assert!(window.needs_catch_up());
        assert_eq!(window.last_pushed(), Seq(2), "the read starts after what was pushed");
        window.page_read(Some(Seq(4)), false);
        assert_eq!(window.offer(Seq(4)), Offer::Stale, "read already");
        assert_eq!(window.offer(Seq(5)), Offer::Next);
    }

    #[test]
    fn lag_starts_a_catch_up_without_moving_the_window() {
        let mut window = pushed_up_to(0, 3);
        window.lagged();
        assert!(window.needs_catch_up());
        assert_eq!(window.last_pushed(), Seq(3));
    }

    #[test]
    fn the_highest_seq_is_stale_and_never_overflows() {
        let mut window = PushWindow::new();
        window.subscribe(Seq(u64::MAX));
        window.page_read(None, false);
        assert_eq!(window.offer(Seq(u64::MAX)), Offer::Stale);
        assert_eq!(window.last_pushed(), Seq(u64::MAX));
    }

    #[test]
    fn pushes_wait_for_acks_by_range() {
        let mut window = pushed_up_to(0, 5);
        assert_eq!(window.unacked(), 5);
        window.acked(Seq(3), &[]);
        assert_eq!(window.unacked(), 2);
        window.acked(Seq(2), &[]);
        assert_eq!(window.unacked(), 2, "acking again changes nothing");
        window.acked(Seq(5), &[]);
        assert!(!window.has_unacked());
    }

    #[test]
    fn pushes_wait_for_acks_by_list_and_by_both() {
        let mut window = pushed_up_to(0, 6);
        window.acked(Seq(0), &seqs(&[2, 4, 9]));
        assert_eq!(window.unacked(), 4, "0 acknowledges no range; 9 was never pushed");
        window.acked(Seq(1), &seqs(&[6]));
        assert_eq!(window.unacked(), 2);
        window.acked(Seq(0), &seqs(&[3, 5]));
        assert!(!window.has_unacked());
    }

    #[test]
    fn an_ack_up_to_the_highest_seq_acknowledges_everything() {
        let mut window = pushed_up_to(0, 3);
        window.pushed([Seq(u64::MAX)]);
        window.acked(Seq(u64::MAX), &[]);
        assert!(!window.has_unacked());
    }

    #[test]
    fn pushing_stops_at_max_unacked_and_resumes_with_an_ack() {
        let mut window = pushed_up_to(0, 0);
        for seq in 1..=3 {
            assert!(window.can_push(3));
            assert_eq!(window.offer(Seq(seq)), Offer::Next);
            window.pushed([Seq(seq)]);
        }
        assert!(!window.can_push(3));
        assert!(window.can_push(4));
        window.acked(Seq(0), &[Seq(2)]);
        assert!(window.can_push(3));
    }

    #[test]
    fn pushing_a_seq_twice_counts_it_once() {
        let mut window = pushed_up_to(0, 2);
        window.pushed(seqs(&[1, 2]));
        assert_eq!(window.unacked(), 2);
    }

    #[test]
    fn a_rewind_goes_back_to_the_oldest_unacknowledged_push() {
        let mut window = pushed_up_to(10, 15);
        window.acked(Seq(11), &[Seq(13)]);
        assert_eq!(window.rewind(), 3, "12, 14 and 15 waited");
        assert!(window.needs_catch_up());
        assert_eq!(window.last_pushed(), Seq(11), "read again from 12");
        assert!(!window.has_unacked());
        assert_eq!(window.offer(Seq(16)), Offer::Gap);
    }

    #[test]
    fn a_rewind_with_nothing_unacknowledged_changes_nothing() {
        let mut window = pushed_up_to(0, 4);
        window.acked(Seq(4), &[]);
        assert_eq!(window.rewind(), 0);
        assert!(!window.needs_catch_up());
        assert_eq!(window.last_pushed(), Seq(4));
    }

    #[test]
    fn a_rewind_from_seq_one_reads_from_the_start() {
        let mut window = pushed_up_to(0, 2);
        assert_eq!(window.rewind(), 2);
        assert_eq!(window.last_pushed(), Seq(0));
    }

    #[test]
    fn subscribing_again_keeps_what_waits_for_an_ack() {
        let mut window = pushed_up_to(0, 3);
        window.subscribe(Seq(1));
        assert_eq!(window.unacked(), 3);
        assert_eq!(window.last_pushed(), Seq(1));
        assert!(window.needs_catch_up());
    }

    // The ack timer, under tokio's paused clock: `advance` moves it, and
    // "now" is read from it as the connection reads it.

    const ACK_TIMEOUT: Duration = Duration::from_secs(10);
    const MAX_BACKOFF: Duration = Duration::from_secs(60);

    fn now() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn timer() -> AckTimer {
        AckTimer::new(ACK_TIMEOUT, MAX_BACKOFF)
    }

    async fn advance(by: Duration) {
        tokio::time::advance(by).await;
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_ack_the_timer_fires_after_the_ack_timeout() {
        let mut timer = timer();
        assert_eq!(timer.deadline(), None);
        assert_eq!(timer.fire(now(), false, || unreachable!()), AckFired::NotDue);
        timer.pushed(now());
        let armed = timer.deadline();
        assert_eq!(armed, Some(now() + ACK_TIMEOUT));
        advance(ACK_TIMEOUT / 2).await;
        timer.pushed(now());
        assert_eq!(timer.deadline(), armed, "a later push keeps the running timer");
        advance(ACK_TIMEOUT / 2 - Duration::from_millis(1)).await;
        assert_eq!(timer.fire(now(), false, || unreachable!()), AckFired::NotDue);
        advance(Duration::from_millis(1)).await;
        let mut rewound = false;
        let fired = timer.fire(now(), false, || {
            rewound = true;
            2
        });
        assert_eq!(fired, AckFired::Redelivered(2));
        assert!(rewound);
        assert_eq!(timer.deadline(), None, "the re-push arms it again");
        assert_eq!(timer.backoff(), ACK_TIMEOUT * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_doubles_with_each_re_push_up_to_the_maximum() {
        let mut timer = timer();
        let mut waits = Vec::new();
        for _ in 0..5 {
            timer.pushed(now());
            let Some(deadline) = timer.deadline() else {
                panic!("armed by the push")
            };
            waits.push(deadline - now());
            advance(deadline - now()).await;
            assert_eq!(timer.fire(now(), false, || 1), AckFired::Redelivered(1));
        }
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [10, 20, 40, 60, 60]);
        assert_eq!(timer.backoff(), MAX_BACKOFF);
    }

    #[tokio::test(start_paused = true)]
    async fn firing_with_nothing_to_re_push_keeps_the_wait() {
        let mut timer = timer();
        timer.pushed(now());
        advance(ACK_TIMEOUT).await;
        assert_eq!(timer.fire(now(), false, || 0), AckFired::Redelivered(0));
        assert_eq!(timer.backoff(), ACK_TIMEOUT);
        assert_eq!(timer.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ack_resets_the_wait_and_rearms_while_pushes_wait() {
        let mut timer = timer();
        for _ in 0..2 {
            timer.pushed(now());
            advance(timer.backoff()).await;
            timer.fire(now(), false, || 1);
        }
        assert_eq!(timer.backoff(), ACK_TIMEOUT * 4);
        timer.pushed(now());
        advance(Duration::from_secs(3)).await;
        timer.acked(now(), true);
        assert_eq!(timer.backoff(), ACK_TIMEOUT);
        assert_eq!(timer.deadline(), Some(now() + ACK_TIMEOUT), "counted from the ack");
        advance(Duration::from_secs(3)).await;
        timer.acked(now(), false);
        assert_eq!(timer.deadline(), None, "nothing waits: stopped");
        assert_eq!(timer.backoff(), ACK_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn unwritten_output_postpones_the_re_push_by_a_round() {
        let mut timer = timer();
        timer.pushed(now());
        advance(ACK_TIMEOUT).await;
        let fired = timer.fire(now(), true, || unreachable!("no re-push behind unwritten output"));
        assert_eq!(fired, AckFired::Postponed);
        assert_eq!(timer.deadline(), Some(now() + ACK_TIMEOUT));
        assert_eq!(timer.backoff(), ACK_TIMEOUT, "postponing does not double the wait");
        advance(ACK_TIMEOUT).await;
        assert_eq!(timer.fire(now(), false, || 3), AckFired::Redelivered(3));
        assert_eq!(timer.backoff(), ACK_TIMEOUT * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn logout_disarms_and_a_new_login_starts_from_the_first_wait() {
        let mut timer = timer();
        timer.pushed(now());
        advance(ACK_TIMEOUT).await;
        timer.fire(now(), false, || 1);
        timer.pushed(now());
        timer.disarm();
        assert_eq!(timer.deadline(), None);
        advance(MAX_BACKOFF * 2).await;
        assert_eq!(timer.fire(now(), false, || unreachable!()), AckFired::NotDue);
        assert_eq!(timer.backoff(), ACK_TIMEOUT * 2, "disarming keeps the wait");
        timer.reset();
        assert_eq!(timer.deadline(), None);
        assert_eq!(timer.backoff(), ACK_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_what_an_instant_holds_never_fires() {
        let mut timer = AckTimer::new(Duration::MAX, Duration::MAX);
        timer.pushed(now());
        assert_eq!(timer.deadline(), None);
    }
}
