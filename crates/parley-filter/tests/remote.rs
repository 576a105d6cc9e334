//! The batching client against the real server and against fake ones that
//! stall, fail or answer wrongly: callbacks exactly once and in submission
//! order, batches formed without delay, one timeout then a pause, fast
//! failure on a dead port, a bounded queue, and close and server shutdown
//! answering everything.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parley_filter::remote::{Done, RemoteConfig, RemoteScorer, Unscored};
use parley_filter::serve::ServeLimits;
use support::{Scripted, Seen, Server, Silent, TEST_BOUND, answer_each, builtin, chat_line, texts_in};
use tokio::sync::{Notify, mpsc};
use tokio::time::timeout;

type Outcome = Result<f32, Unscored>;

/// Runs a test body under the bound every test has.
async fn bounded(body: impl Future<Output = ()>) {
    if timeout(TEST_BOUND, body).await.is_err() {
        panic!("test did not finish within {TEST_BOUND:?}");
    }
}

fn start(config: RemoteConfig) -> Arc<RemoteScorer> {
    match RemoteScorer::start(config) {
        Ok(scorer) => scorer,
        Err(e) => panic!("scorer does not start: {e}"),
    }
}

/// Makes `done` callbacks that report `(tag, outcome)` on one channel, in
/// the order they are called.
struct Recorder<T> {
    calls: mpsc::UnboundedSender<(T, Outcome)>,
}

impl<T: Send + 'static> Recorder<T> {
    fn new() -> (Recorder<T>, mpsc::UnboundedReceiver<(T, Outcome)>) {
        let (calls, seen) = mpsc::unbounded_channel();
        (Recorder { calls }, seen)
    }

    fn done(&self, tag: T) -> Done {
        let calls = self.calls.clone();
        Box::new(move |outcome| {
            let _ = calls.send((tag, outcome));
        })
    }
}

/// The next `n` calls.
async fn next_calls<T>(seen: &mut mpsc::UnboundedReceiver<(T, Outcome)>, n: usize) -> Vec<(T, Outcome)> {
    let mut calls = Vec::with_capacity(n);
    while calls.len() < n {
        match seen.recv().await {
            Some(call) => calls.push(call),
            None => panic!("callbacks ended after {} of {n}", calls.len()),
        }
    }
    calls
}

/// Every call left, once every `done` is gone (called or dropped).
async fn remaining_calls<T>(mut seen: mpsc::UnboundedReceiver<(T, Outcome)>) -> Vec<(T, Outcome)> {
    let mut calls = Vec::new();
    while let Some(call) = seen.recv().await {
        calls.push(call);
    }
    calls
}

fn submit(scorer: &RemoteScorer, text: String, done: Done) {
    if scorer.submit(text, done).is_err() {
        panic!("submit refused");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callbacks_come_in_submission_order_from_concurrent_submitters() {
    bounded(async {
        const SUBMITTERS: usize = 4;
        const EACH: usize = 2500;
        let model = builtin();
        let server = Server::start(Arc::clone(&model), ServeLimits::default()).await;
        let scorer = start(RemoteConfig {
            max_batch: 64,
            max_in_flight: 4,
            queue_capacity: 1024,
            timeout: Duration::from_secs(20),
            ..RemoteConfig::new(server.url())
        });
        // (position in the queue, submitter, its own count, text index)
        let (recorder, mut seen) = Recorder::<(usize, usize, usize, usize)>::new();
        let recorder = Arc::new(recorder);
        // Held across each submit, so the positions are the queue's order.
        let position = Arc::new(Mutex::new(0usize));
        let mut submitters = Vec::new();
        for submitter in 0..SUBMITTERS {
            let scorer = Arc::clone(&scorer);
            let recorder = Arc::clone(&recorder);
            let position = Arc::clone(&position);
            submitters.push(tokio::spawn(async move {
                for own in 0..EACH {
                    let index = submitter * EACH + own;
                    loop {
                        let accepted = {
                            let mut next = position.lock().unwrap_or_else(|p| p.into_inner());
                            let done = recorder.done((*next, submitter, own, index));
                            let accepted = scorer.submit(chat_line(index), done).is_ok();
                            if accepted {
                                *next += 1;
                            }
                            accepted
                        };
                        if accepted {
                            break;
                        }
                        // The queue is full: let the dispatcher drain it.
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        let calls = next_calls(&mut seen, SUBMITTERS * EACH).await;
        let mut last_own = [None; SUBMITTERS];
        for (expected, ((position, submitter, own, index), outcome)) in calls.into_iter().enumerate() {
            assert_eq!(position, expected, "callbacks out of submission order");
            assert!(last_own[submitter] < Some(own), "submitter {submitter} out of order");
            last_own[submitter] = Some(own);
            assert_eq!(outcome, Ok(model.score(&chat_line(index))), "text {index}");
        }
        for submitter in submitters {
            assert!(submitter.await.is_ok());
        }
        let stats = scorer.stats();
        assert_eq!(stats.texts_scored, (SUBMITTERS * EACH) as u64);
        assert_eq!(stats.unscored, 0);
        assert!(stats.batch_size.max > 1, "no batching: {:?}", stats.batch_size);
        assert!(stats.batches_sent < stats.texts_sent);
        assert_eq!(scorer.model_version().as_deref(), Some(model.version()));
        scorer.close().await;
        assert_eq!(server.stopped().await.ok(), Some(()));
    })
    .await;
}

#[tokio::test]
async fn a_batch_answered_last_is_still_delivered_first() {
    bounded(async {
        // The first request waits until three later ones are answered.
        let answered_others = Arc::new(AtomicUsize::new(0));
        let others_done = Arc::new(Notify::new());
        let (arrived, mut arrivals) = mpsc::unbounded_channel::<usize>();
        let server = {
            let answered_others = Arc::clone(&answered_others);
            let others_done = Arc::clone(&others_done);
            Scripted::start(move |seen: Seen| {
                let answered_others = Arc::clone(&answered_others);
                let others_done = Arc::clone(&others_done);
                let _ = arrived.send(seen.index);
                Box::pin(async move {
                    let texts = texts_in(&seen.body);
                    if seen.index == 0 {
                        while answered_others.load(Ordering::SeqCst) < 3 {
                            others_done.notified().await;
                        }
                    } else {
                        answered_others.fetch_add(1, Ordering::SeqCst);
                        others_done.notify_one();
                    }
                    // Each text is the score to answer for it.
                    let scores: Vec<f64> = texts.iter().map(|t| t.parse().unwrap_or(-1.0)).collect();
                    (
                        200,
                        serde_json::json!({"model": "fake-2", "scores": scores}).to_string(),
                    )
                })
            })
            .await
        };
        let scorer = start(RemoteConfig {
            max_in_flight: 4,
            timeout: Duration::from_secs(20),
            ..RemoteConfig::new(server.url())
        });
        let (recorder, mut seen) = Recorder::<usize>::new();
        for (i, text) in ["0.125", "0.25", "0.375", "0.5"].into_iter().enumerate() {
            submit(&scorer, text.to_owned(), recorder.done(i));
            // Each text goes out alone before the next is submitted.
            assert_eq!(arrivals.recv().await, Some(i));
        }
        let calls = next_calls(&mut seen, 4).await;
        let expected = vec![(0, Ok(0.125)), (1, Ok(0.25)), (2, Ok(0.375)), (3, Ok(0.5))];
        assert_eq!(calls, expected);
        assert_eq!(scorer.model_version().as_deref(), Some("fake-2"));
        assert_eq!(scorer.stats().batches_sent, 4);
        scorer.close().await;
    })
    .await;
}

#[tokio::test]
async fn whatever_is_queued_goes_as_one_batch_and_a_lone_text_goes_at_once() {
    bounded(async {
        let model = builtin();
        let server = Server::start(Arc::clone(&model), ServeLimits::default()).await;
        let scorer = start(RemoteConfig {
            max_batch: 256,
            timeout: Duration::from_secs(20),
            ..RemoteConfig::new(server.url())
        });
        let (recorder, mut seen) = Recorder::<usize>::new();
        // On this single-threaded runtime the dispatcher cannot run until
        // the test awaits: it finds all 600 queued.
        for i in 0..600 {
            submit(&scorer, chat_line(i), recorder.done(i));
        }
        assert_eq!(scorer.stats().queue_len, 600);
        let calls = next_calls(&mut seen, 600).await;
        assert!(
            calls
                .iter()
                .enumerate()
                .all(|(i, (tag, outcome))| *tag == i && outcome.is_ok())
        );
        let stats = scorer.stats();
        assert_eq!(stats.batches_sent, 3, "256 + 256 + 88");
        assert_eq!(stats.batch_size.max, 256);
        assert_eq!(stats.queue_len, 0);
        submit(&scorer, chat_line(600), recorder.done(600));
        assert_eq!(next_calls(&mut seen, 1).await[0].0, 600);
        let stats = scorer.stats();
        assert_eq!(stats.batches_sent, 4);
        assert_eq!(stats.batch_size.counts[0], 1, "the lone text went alone");
        assert_eq!(stats.latency_us.count, 4);
        scorer.close().await;
        assert_eq!(server.stopped().await.ok(), Some(()));
    })
    .await;
}

#[tokio::test]
async fn a_server_that_never_answers_costs_one_timeout_then_texts_are_paused() {
    bounded(async {
        let server = Silent::start().await;
        let scorer = start(RemoteConfig {
            timeout: Duration::from_millis(150),
            pause_after_failure: Duration::from_secs(600),
            ..RemoteConfig::new(server.url())
        });
        let (recorder, mut seen) = Recorder::<usize>::new();
        let started = Instant::now();
        for i in 0..10 {
            submit(&scorer, chat_line(i), recorder.done(i));
        }
        let calls = next_calls(&mut seen, 10).await;
        assert!(started.elapsed() >= Duration::from_millis(150));
        let expected: Vec<(usize, Outcome)> = (0..10).map(|i| (i, Err(Unscored::Timeout))).collect();
        assert_eq!(calls, expected);
        for i in 10..110 {
            submit(&scorer, chat_line(i), recorder.done(i));
        }
        let calls = next_calls(&mut seen, 100).await;
        let expected: Vec<(usize, Outcome)> = (10..110).map(|i| (i, Err(Unscored::Paused))).collect();
        assert_eq!(calls, expected);
        let stats = scorer.stats();
        assert_eq!((stats.batches_sent, stats.timeouts), (1, 1));
        assert_eq!((stats.paused, stats.unscored), (100, 110));
        scorer.close().await;
    })
    .await;
}

#[tokio::test]
async fn after_the_pause_the_next_batch_asks_the_server_again() {
    bounded(async {
        let server = Scripted::start(|seen: Seen| {
            Box::pin(async move {
                if seen.index == 0 {
                    (500, r#"{"error":"boom"}"#.to_owned())
                } else {
                    (200, answer_each(texts_in(&seen.body).len(), 0.5))
                }
            })
        })
        .await;
        let pause = Duration::from_secs(1);
        let scorer = start(RemoteConfig {
            pause_after_failure: pause,
            ..RemoteConfig::new(server.url())
        });
        let (recorder, mut seen) = Recorder::<usize>::new();
        submit(&scorer, chat_line(0), recorder.done(0));
        let failed = next_calls(&mut seen, 1).await;
        let failed_at = Instant::now();
        match &failed[0].1 {
            Err(Unscored::BadAnswer(why)) => assert!(why.contains("500") && why.contains("boom"), "{why}"),
            other => panic!("expected a bad answer, got {other:?}"),
        }
        for i in 1..4 {
            submit(&scorer, chat_line(i), recorder.done(i));
        }
        let paused = next_calls(&mut seen, 3).await;
        assert!(paused.iter().all(|(_, outcome)| *outcome == Err(Unscored::Paused)));
        assert!(
            failed_at.elapsed() < pause,
            "the machine stalled through the whole pause"
        );
        assert_eq!(server.score_requests(), 1);
        // deliberate: the pause under test must run out, in real time (the
        // server is real, so tokio's paused clock cannot be used).
        tokio::time::sleep(pause + Duration::from_millis(100)).await;
        submit(&scorer, chat_line(4), recorder.done(4));
        assert_eq!(next_calls(&mut seen, 1).await, vec![(4, Ok(0.5))]);
        assert_eq!(server.score_requests(), 2);
        scorer.close().await;
    })
    .await;
}

#[tokio::test]
async fn wrong_answers_are_bad_answers() {
    bounded(async {
        let replies: Vec<(u16, &str)> = vec![
            (200, r#"{"model":"m","scores":[0.5]}"#),
            (200, r#"{"model":"m","scores":[0.5,0.5,0.5]}"#),
            (200, r#"{"model":"m","scores":[1.5,0.5]}"#),
            (200, r#"{"model":"m","scores":[-0.1,0.5]}"#),
            (200, r#"{"model":"m","scores":[NaN,0.5]}"#),
            (200, r#"{"model":"m","scores":["0.5",0.5]}"#),
            (200, r#"{"scores":[0.5,0.5]}"#),
            (200, "not json"),
            (200, ""),
            (503, r#"{"error":"overloaded"}"#),
            (404, "plain text"),
        ];
        let cases = replies.len();
        let script: Vec<(u16, String)> = replies.iter().map(|(s, b)| (*s, (*b).to_owned())).collect();
        let server = Scripted::start(move |seen: Seen| {
            let reply = script.get(seen.index).cloned().unwrap_or((500, String::new()));
            Box::pin(async move { reply })
        })
        .await;
        let scorer = start(RemoteConfig {
            pause_after_failure: Duration::ZERO,
            ..RemoteConfig::new(server.url())
        });
        let (recorder, mut seen) = Recorder::<usize>::new();
        for (case, reply) in replies.iter().enumerate() {
            // Two texts, one batch (nothing runs between the submits).
            submit(&scorer, "a".to_owned(), recorder.done(case));
            submit(&scorer, "b".to_owned(), recorder.done(case));
            for (tag, outcome) in next_calls(&mut seen, 2).await {
                assert_eq!(tag, case);
                assert!(
                    matches!(outcome, Err(Unscored::BadAnswer(_))),
                    "{reply:?} gave {outcome:?}"
                );
            }
        }
        let stats = scorer.stats();
        assert_eq!((stats.batches_sent, stats.bad_answers), (cases as u64, cases as u64));
        assert_eq!(scorer.model_version(), None);
        scorer.close().await;
    })
    .await;
}

#[tokio::test]
async fn a_dead_port_fails_fast_not_after_the_timeout() {
    bounded(async {
        let listener = support::bind().await;
        let addr = support::local_addr(&listener);
        drop(listener);
        let timeout = Duration::from_secs(30);
        let scorer = start(RemoteConfig {
            timeout,
            ..RemoteConfig::new(format!("http://{addr}"))
        });
        let (recorder, mut seen) = Recorder::<usize>::new();
        let started = Instant::now();
        submit(&scorer, chat_line(0), recorder.done(0));
        let calls = next_calls(&mut seen, 1).await;
        assert!(started.elapsed() < timeout / 3);
        match &calls[0].1 {
            Err(Unscored::Unreachable(why)) => assert!(why.to_lowercase().contains("refused"), "{why}"),
            other => panic!("expected unreachable, got {other:?}"),
        }
        submit(&scorer, chat_line(1), recorder.done(1));
        assert_eq!(next_calls(&mut seen, 1).await, vec![(1, Err(Unscored::Paused))]);
        assert_eq!(scorer.stats().unreachable, 1);
        scorer.close().await;
    })
    .await;
}

#[tokio::test]
async fn a_full_queue_gives_the_callback_back_and_close_answers_the_queue() {
    bounded(async {
        let server = Silent::start().await;
        let scorer = start(RemoteConfig {
            queue_capacity: 8,
            ..RemoteConfig::new(server.url())
        });
        let (recorder, seen) = Recorder::<usize>::new();
        // Single-threaded runtime: nothing is dispatched while this runs.
        for i in 0..8 {
            submit(&scorer, chat_line(i), recorder.done(i));
        }
        let given_back = scorer.submit(chat_line(8), recorder.done(8));
        let Err(given_back) = given_back else {
            panic!("a ninth text fit in a queue of 8");
        };
        let stats = scorer.stats();
        assert_eq!((stats.queue_len, stats.rejected), (8, 1));
        scorer.close().await;
        assert!(
            scorer.submit(chat_line(9), recorder.done(9)).is_err(),
            "accepted after close"
        );
        // The callback given back is the caller's to call.
        given_back(Err(Unscored::Closed));
        drop(recorder);
        let calls = remaining_calls(seen).await;
        let mut expected: Vec<(usize, Outcome)> = (0..8).map(|i| (i, Err(Unscored::Closed))).collect();
        expected.push((8, Err(Unscored::Closed)));
        assert_eq!(calls, expected);
        assert_eq!(scorer.stats().closed, 8);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_answers_every_text_exactly_once_in_order() {
    bounded(async {
        let server = Server::start(builtin(), ServeLimits::default()).await;
        let scorer = start(RemoteConfig {
            timeout: Duration::from_secs(20),
            ..RemoteConfig::new(server.url())
        });
        let (recorder, seen) = Recorder::<usize>::new();
        for i in 0..3000 {
            submit(&scorer, chat_line(i), recorder.done(i));
        }
        scorer.close().await;
        assert!(scorer.submit(chat_line(3000), recorder.done(3000)).is_err());
        drop(recorder);
        let calls = remaining_calls(seen).await;
        assert_eq!(calls.len(), 3000);
        assert!(calls.iter().enumerate().all(|(i, (tag, _))| *tag == i));
        // Scored texts first, then the ones closed before they were sent.
        let scored = calls.iter().take_while(|(_, outcome)| outcome.is_ok()).count();
        assert!(
            calls[scored..]
                .iter()
                .all(|(_, outcome)| *outcome == Err(Unscored::Closed))
        );
        let stats = scorer.stats();
        assert_eq!(
            (stats.texts_scored, stats.closed),
            (scored as u64, (3000 - scored) as u64)
        );
        assert_eq!(server.stopped().await.ok(), Some(()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopping_the_server_mid_run_answers_every_text() {
    bounded(async {
        const TEXTS: usize = 20_000;
        let mut server = Server::start(builtin(), ServeLimits::default()).await;
        let scorer = start(RemoteConfig {
            max_batch: 32,
            pause_after_failure: Duration::from_millis(50),
            ..RemoteConfig::new(server.url())
        });
        let (recorder, mut seen) = Recorder::<usize>::new();
        let recorder = Arc::new(recorder);
        let submitter = {
            let scorer = Arc::clone(&scorer);
            let recorder = Arc::clone(&recorder);
            tokio::spawn(async move {
                for i in 0..TEXTS {
                    while scorer.submit(chat_line(i), recorder.done(i)).is_err() {
                        tokio::task::yield_now().await;
                    }
                }
            })
        };
        let mut calls = next_calls(&mut seen, 2000).await;
        server.stop();
        assert_eq!(server.stopped().await.ok(), Some(()));
        calls.extend(next_calls(&mut seen, TEXTS - calls.len()).await);
        assert!(submitter.await.is_ok());
        // The server is gone: a text submitted now gets no score.
        submit(&scorer, chat_line(TEXTS), recorder.done(TEXTS));
        let last = next_calls(&mut seen, 1).await;
        assert!(last[0].1.is_err(), "scored after the server stopped: {last:?}");
        scorer.close().await;
        drop(recorder);
        calls.extend(last);
        calls.extend(remaining_calls(seen).await);
        assert_eq!(calls.len(), TEXTS + 1);
        assert!(calls.iter().enumerate().all(|(i, (tag, _))| *tag == i));
        let unscored = calls.iter().filter(|(_, outcome)| outcome.is_err()).count();
        let stats = scorer.stats();
        assert_eq!(stats.unscored, unscored as u64);
        assert_eq!(stats.texts_scored + stats.unscored, (TEXTS + 1) as u64);
    })
    .await;
}

#[tokio::test]
async fn a_panicking_callback_does_not_stop_the_others() {
    bounded(async {
        let server = Server::start(builtin(), ServeLimits::default()).await;
        let scorer = start(RemoteConfig::new(server.url()));
        let (recorder, mut seen) = Recorder::<usize>::new();
        submit(&scorer, chat_line(0), recorder.done(0));
        submit(
            &scorer,
            chat_line(1),
            Box::new(|_| panic!("deliberate panic in a callback")),
        );
        submit(&scorer, chat_line(2), recorder.done(2));
        let tags: Vec<usize> = next_calls(&mut seen, 2).await.into_iter().map(|(tag, _)| tag).collect();
        assert_eq!(tags, vec![0, 2]);
        assert_eq!(scorer.stats().done_panics, 1);
        scorer.close().await;
        assert_eq!(server.stopped().await.ok(), Some(()));
    })
    .await;
}

#[tokio::test]
async fn the_model_version_is_asked_for_at_start() {
    bounded(async {
        let model = builtin();
        let server = Server::start(Arc::clone(&model), ServeLimits::default()).await;
        let scorer = start(RemoteConfig::new(server.url()));
        while scorer.model_version().is_none() {
            // deliberate: polls for the start-up probe, which reports
            // nowhere else; the test's bound is the deadline.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(scorer.model_version().as_deref(), Some(model.version()));
        assert_eq!(scorer.stats().batches_sent, 0);
        scorer.close().await;
        assert_eq!(server.stopped().await.ok(), Some(()));
    })
    .await;
}

#[tokio::test]
async fn a_bad_config_is_refused_with_every_problem() {
    let config = RemoteConfig {
        timeout: Duration::ZERO,
        max_batch: 0,
        queue_capacity: 0,
        max_in_flight: 0,
        ..RemoteConfig::new("https://example.invalid")
    };
    let Err(problems) = RemoteScorer::start(config) else {
        panic!("a bad config started");
    };
    for word in ["https", "timeout", "max_batch", "queue_capacity", "max_in_flight"] {
        assert!(problems.contains(word), "{word} missing from: {problems}");
    }
    let Err(problem) = RemoteScorer::start(RemoteConfig::new("not a url")) else {
        panic!("a bad url started");
    };
    assert!(problem.contains("not a url"));
    let too_big = RemoteConfig {
        max_batch: 1025,
        ..RemoteConfig::new("http://127.0.0.1:1")
    };
    assert!(RemoteScorer::start(too_big).is_err());
}

#[test]
fn start_outside_a_runtime_is_an_error() {
    let result = RemoteScorer::start(RemoteConfig::new("http://127.0.0.1:1"));
    assert!(result.is_err_and(|e| e.contains("runtime")));
}
