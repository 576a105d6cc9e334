//! The filter pipeline's server side: building it from the settings (the
//! classifier in the worker, or the client of an inference server), and
//! `parleyd filter-serve`, the inference server itself.

use std::net::SocketAddr;
use std::sync::Arc;

use parley_core::filter::{FilterSettings, RemoteReport, RemoteScoring, ScoreDone, Scorer, SpamFilter};
use parley_filter::remote::{RemoteConfig, RemoteScorer};

use crate::config::{FilterConfig, FilterModel, load_model};

/// The model's recommendation, when the inference server has not said
/// what its model recommends: the built-in model's.
fn recommended() -> (f32, f32) {
    match parley_filter::Model::builtin() {
        Ok(model) => (model.quarantine_threshold(), model.reject_threshold()),
        // Never: the built-in model is checked by its crate's tests.
        Err(_) => (0.7, 0.95),
    }
}

/// The pipeline `config` asks for. Offloaded scoring starts its client on
/// the current runtime.
pub fn pipeline(config: &FilterConfig) -> Result<FilterSettings, String> {
    let spam = match (&config.url, load_model(&config.model)?) {
        (Some(url), _) => {
            let scorer = RemoteScorer::start(RemoteConfig {
                timeout: config.timeout,
                max_batch: config.batch,
                queue_capacity: config.queue,
                ..RemoteConfig::new(url.clone())
            })?;
            let (hold, reject) = recommended();
            Some(SpamFilter {
                scorer: Scorer::Remote(Arc::new(Remote(scorer))),
                hold_at: config.hold_at.unwrap_or(hold),
                reject_at: config.reject_at.unwrap_or(reject),
                fail: config.fail,
            })
        }
        (None, Some(model)) => Some(SpamFilter {
            hold_at: config.hold_at.unwrap_or(model.quarantine_threshold()),
            reject_at: config.reject_at.unwrap_or(model.reject_threshold()),
            scorer: Scorer::Local(Arc::new(model)),
            fail: config.fail,
        }),
        (None, None) => None,
    };
    Ok(FilterSettings {
        blocked_words: config.blocked_words.clone(),
        spam,
        max_held: config.spam_folder_max,
    })
}

/// The inference-server client, as the core's pipeline sees it.
struct Remote(Arc<RemoteScorer>);

impl RemoteScoring for Remote {
    fn submit(&self, text: String, done: ScoreDone) -> Result<(), ScoreDone> {
        self.0.submit(text, done)
    }

    fn version(&self) -> Option<String> {
        self.0.model_version()
    }

    fn report(&self) -> RemoteReport {
        let stats = self.0.stats();
        RemoteReport {
            batches: stats.batches_sent,
            texts: stats.texts_sent,
            timeouts: stats.timeouts,
            failures: stats.unreachable + stats.bad_answers,
        }
    }
}

/// `parleyd filter-serve`: the inference server for `filter_url`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (loopback by default: put it on another
    /// address only on a network you trust; it has no authentication).
    #[arg(long, default_value = "127.0.0.1:7890", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// "builtin" or the path of a model file from parley-train.
    #[arg(long, default_value = "builtin", value_name = "MODEL")]
    pub model: String,
}

/// Runs the inference server until SIGTERM or SIGINT.
pub async fn serve(args: ServeArgs) -> Result<(), String> {
    let model = load_model(&FilterModel::parse(&args.model))?.ok_or("--model off: filter-serve needs a model")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(listen = %local, model = model.version(), "filter-serve: serving");
    // The address on stdout, for scripts and tests that asked for port 0.
    println!("filter-serve listening on {local} model {}", model.version());
    let shutdown = async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return std::future::pending::<()>().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    parley_filter::serve::serve(listener, Arc::new(model), Default::default(), shutdown)
        .await
        .map_err(|e| e.to_string())
}
