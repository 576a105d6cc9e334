//! Throughput of offloaded scoring on this machine: `serve` with the
//! committed model and a `RemoteScorer` in one process, over loopback,
//! fed ~60-byte chat lines as fast as the queue takes them, so batches
//! fill to `max_batch` (256). Prints texts per second and the batch sizes.
//!
//! `cargo bench -p parley-filter --features serve,remote --bench remote`
//! (a plain `main`, not criterion: one long run says more here than many
//! short iterations).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parley_filter::Model;
use parley_filter::remote::{RemoteConfig, RemoteScorer};
use parley_filter::serve::{ServeLimits, serve};
use tokio::sync::Notify;

/// Texts per run; two runs, the first to warm up.
const TEXTS: usize = 400_000;

fn main() {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return eprintln!("no runtime: {e}"),
    };
    runtime.block_on(run());
}

async fn run() {
    let Ok(model) = Model::builtin() else {
        return eprintln!("the committed model does not load");
    };
    let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
        return eprintln!("cannot bind");
    };
    let Ok(addr) = listener.local_addr() else { return };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        Arc::new(model.clone()),
        ServeLimits::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let config = RemoteConfig {
        timeout: Duration::from_secs(5),
        ..RemoteConfig::new(format!("http://{addr}"))
    };
    let scorer = match RemoteScorer::start(config) {
        Ok(scorer) => scorer,
        Err(e) => return eprintln!("{e}"),
    };
    let lines: Arc<Vec<String>> = Arc::new(
        (0..4096)
            .map(|i| format!("message {i:06}: are we still on for lunch tomorrow at noon?"))
            .collect(),
    );
    for round in ["warm-up", "measured"] {
        let answered = Arc::new(AtomicUsize::new(0));
        let all_answered = Arc::new(Notify::new());
        let before = scorer.stats();
        let started = Instant::now();
        for i in 0..TEXTS {
            let answered = Arc::clone(&answered);
            let all_answered = Arc::clone(&all_answered);
            let mut done: parley_filter::remote::Done = Box::new(move |_| {
                if answered.fetch_add(1, Ordering::Relaxed) + 1 == TEXTS {
                    all_answered.notify_one();
                }
            });
            let text = &lines[i % lines.len()];
            loop {
                match scorer.submit(text.clone(), done) {
                    Ok(()) => break,
                    Err(back) => {
                        done = back;
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
        all_answered.notified().await;
        let elapsed = started.elapsed();
        let stats = scorer.stats();
        let batches = stats.batches_sent - before.batches_sent;
        let scored = stats.texts_scored - before.texts_scored;
        println!(
            "{round}: {TEXTS} texts in {:.2} s = {:.0} texts/s; {batches} batches, mean {:.1} texts, p50 latency <= {} us, unscored {}",
            elapsed.as_secs_f64(),
            TEXTS as f64 / elapsed.as_secs_f64(),
            scored as f64 / batches.max(1) as f64,
            stats.latency_us.quantile(0.5),
            stats.unscored - before.unscored,
        );
    }
    scorer.close().await;
    let _ = stop.send(());
    let _ = server.await;
}
