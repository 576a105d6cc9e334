//! `parley-bench`: the load generator that measures a running `parleyd`.
//!
//! It owns the scenarios (relay, idle, login, offline, overload, failover,
//! file), the accounts it creates for them (a random prefix per run), and
//! the ways of showing results: a table, one JSON object, an SVG picture.
//! It talks to parleyd through `parley-client`, except where a scenario
//! needs sockets the library cannot give it (see `wire`), and to NATS core
//! and JetStream through `async-nats`, so that all are measured by the
//! same generator.
//!
//! It must never touch parleyd's data directory or configuration, never
//! send traffic anywhere but the addresses it is given (and, in `file`,
//! between its own two endpoints on loopback), and every run ends by
//! itself: phases are bounded in time and every wait has a limit.
#![forbid(unsafe_code)]

mod cli;
mod common;
mod failover;
mod file;
mod idle;
mod jetstream;
mod lean;
mod login;
mod offline;
mod overload;
mod plot;
mod procmon;
mod progress;
mod relay;
mod report;
mod stats;
mod wire;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use serde_json::json;

use cli::{Cli, Scenario};
use report::{Metrics, RunReport, ScenarioReport, TargetReport};

/// mimalloc, as parleyd uses: glibc's malloc and free were 7% of the
/// generator's CPU under an overload flood, on cores it shares with the
/// server it measures.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("parley-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = if cli.worker {
        runtime.block_on(idle::worker_main())
    } else {
        runtime.block_on(run(cli))
    };
    // Tasks still holding connections (idle holders, library readers) are
    // not waited for: everything was measured and reported.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("parley-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where a relay runs.
enum Target {
    /// parleyd: senders at the first address, receivers at the second.
    Parley(String, String),
    Nats(String),
    /// A `jetstream://` URL.
    JetStream(String),
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let scenario = cli
        .scenario
        .clone()
        .context("name a scenario: relay, idle, login, offline, overload, failover or file (see --help)")?;
    anyhow::ensure!(cli.runs >= 1, "--runs must be at least 1");
    let duration = common::secs(cli.duration, "--duration")?;
    let report = match &scenario {
        Scenario::Relay(args) => relay_scenario(&cli, args, duration).await?,
        Scenario::Idle(args) => {
            let params = json!({
                "connections": args.connections,
                "hold_secs": args.hold,
                "processes": args.processes,
                "source_addrs": args.source_addrs,
                "per_account": args.per_account,
                "concurrency": args.concurrency,
                "auth": args.auth,
            });
            let mut runs = Vec::new();
            for _ in 0..cli.runs {
                runs.push(idle::run(&cli.server, cli.server_pid, args).await?);
            }
            single("idle", &cli, params, runs)
        }
        Scenario::Login(args) => {
            let params = json!({ "clients": args.clients, "duration_secs": cli.duration });
            let mut runs = Vec::new();
            for _ in 0..cli.runs {
                runs.push(login::run(&cli.server, duration, cli.server_pid, args).await?);
            }
            single("login", &cli, params, runs)
        }
        Scenario::Offline(args) => {
            let params = json!({
                "users": args.users,
                "messages": args.messages,
                "size": args.size,
                "senders": args.senders,
                "window": args.window,
                "concurrency": args.concurrency,
            });
            let mut runs = Vec::new();
            for _ in 0..cli.runs {
                runs.push(offline::run(&cli.server, cli.server_pid, args).await?);
            }
            single("offline", &cli, params, runs)
        }
        Scenario::Overload(args) => {
            let params = json!({
                "multiple": args.multiple,
                "capacity": args.capacity,
                "pairs": args.pairs,
                "size": args.size,
                "duration_secs": cli.duration,
            });
            let mut runs = Vec::new();
            for _ in 0..cli.runs {
                runs.push(overload::run(&cli.server, duration, cli.server_pid, args).await?);
            }
            single("overload", &cli, params, runs)
        }
        Scenario::Failover(args) => {
            let params = json!({ "kills": args.kills, "settle_secs": args.settle });
            let mut runs = Vec::new();
            for _ in 0..cli.runs {
                runs.push(failover::run(&cli.server, args).await?);
            }
            single("failover", &cli, params, runs)
        }
        Scenario::File(args) => file::run(&cli.server, cli.server_pid, cli.runs, args).await?,
    };
    if let Some(path) = &cli.plot {
        write_plot(path, &report)?;
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

/// Runs `--before-run`'s command and waits for it; a failure stops the
/// bench, since the runs would not start from the state it makes.
async fn before_run(command: &str) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .status()
        .await
        .with_context(|| format!("running --before-run {command:?}"))?;
    anyhow::ensure!(status.success(), "--before-run {command:?} failed: {status}");
    Ok(())
}

fn single(scenario: &'static str, cli: &Cli, params: serde_json::Value, runs: Vec<RunReport>) -> ScenarioReport {
    ScenarioReport {
        scenario,
        params,
        targets: vec![TargetReport {
            target: "parley".into(),
            endpoint: cli.server.clone(),
            runs,
        }],
        comparison: Metrics::default(),
        notes: Vec::new(),
    }
}

async fn relay_scenario(
    cli: &Cli,
    args: &cli::RelayArgs,
    duration: std::time::Duration,
) -> anyhow::Result<ScenarioReport> {
    let params = relay::RelayParams {
        pairs: args.pairs,
        size: args.size,
        rate: args.rate,
        window: args.window,
        duration,
        drain: common::secs(args.drain, "--drain")?,
        client_ids: args.client_ids,
    };
    params.check()?;
    let receivers_on = args.receivers_on.clone().unwrap_or_else(|| cli.server.clone());
    let endpoint = |server: &str, receivers: &str| {
        if server == receivers {
            server.to_owned()
        } else {
            format!("{server} → {receivers}")
        }
    };
    let target = match args.target.as_deref() {
        None | Some("parley") => Target::Parley(cli.server.clone(), receivers_on.clone()),
        Some(url) if url.starts_with("nats://") => Target::Nats(url.to_owned()),
        Some(url) if url.starts_with(jetstream::SCHEME) => Target::JetStream(url.to_owned()),
        Some(other) => anyhow::bail!("--target must be `parley`, a nats:// or a jetstream:// URL, not {other:?}"),
    };
    anyhow::ensure!(
        !(args.compare_nats && matches!(target, Target::JetStream(_))),
        "--compare-nats compares with NATS core: give --target a nats:// URL or none"
    );
    anyhow::ensure!(
        !(args.compare_jetstream && matches!(target, Target::Nats(_))),
        "--compare-jetstream compares with JetStream: give --target a jetstream:// URL or none"
    );
    let mut targets: Vec<(Target, TargetReport)> = Vec::new();
    let nats_url = match &target {
        Target::Nats(url) => url.clone(),
        _ => cli::DEFAULT_NATS_URL.to_owned(),
    };
    let jetstream_url = match &target {
        Target::JetStream(url) => url.clone(),
        _ => cli::DEFAULT_JETSTREAM_URL.to_owned(),
    };
    if args.compare_nats || args.compare_jetstream || matches!(target, Target::Parley(..)) {
        targets.push((
            Target::Parley(cli.server.clone(), receivers_on.clone()),
            TargetReport {
                target: "parley".into(),
                endpoint: endpoint(&cli.server, &receivers_on),
                runs: Vec::new(),
            },
        ));
    }
    if let Some(peer) = &args.peer_server {
        let peer_receivers = args.peer_receivers_on.clone().unwrap_or_else(|| peer.clone());
        targets.push((
            Target::Parley(peer.clone(), peer_receivers.clone()),
            TargetReport {
                target: "peer".into(),
                endpoint: endpoint(peer, &peer_receivers),
                runs: Vec::new(),
            },
        ));
    }
    if args.compare_nats || matches!(target, Target::Nats(_)) {
        targets.push((
            Target::Nats(nats_url.clone()),
            TargetReport {
                target: "nats".into(),
                endpoint: nats_url,
                runs: Vec::new(),
            },
        ));
    }
    let with_jetstream = args.compare_jetstream || matches!(target, Target::JetStream(_));
    if with_jetstream {
        targets.push((
            Target::JetStream(jetstream_url.clone()),
            TargetReport {
                target: "jetstream".into(),
                endpoint: jetstream_url,
                runs: Vec::new(),
            },
        ));
    }
    // Targets alternate within each repetition, so slow drifts of the
    // machine (other load, thermal) affect both alike.
    for _ in 0..cli.runs {
        for (target, report) in &mut targets {
            if let Some(command) = &args.before_run {
                before_run(command).await?;
            }
            let run = match target {
                Target::Parley(server, receivers) => {
                    // The process id is --server's: no CPU figures for a peer.
                    let pid = cli.server_pid.filter(|_| *server == cli.server);
                    relay::run_parley(server, receivers, &params, pid).await?
                }
                Target::Nats(url) => relay::run_nats(url, &params, args.nats_pid).await?,
                Target::JetStream(url) => jetstream::run(url, &params, args.nats_pid, &args.jetstream_sync).await?,
            };
            report.runs.push(run);
        }
    }
    let targets: Vec<TargetReport> = targets.into_iter().map(|(_, report)| report).collect();
    // First among the notes, so that it stands right under the figures.
    let mut notes = if with_jetstream {
        vec![format!(
            "jetstream sync to disk: {} (from --jetstream-sync; the bench cannot see the server's configuration)",
            args.jetstream_sync
        )]
    } else {
        Vec::new()
    };
    if let Some(command) = &args.before_run {
        notes.push(format!("before every run: {command}"));
    }
    let mut comparison = Metrics::default();
    if let [first, second] = targets.as_slice() {
        let ratio = |key: &str| {
            let a = first.spread(key).map(|s| s.median).unwrap_or(0.0);
            let b = second.spread(key).map(|s| s.median).unwrap_or(0.0);
            if b > 0.0 { a / b } else { f64::NAN }
        };
        let (rate_label, p99_label) = match second.target.as_str() {
            "peer" => ("delivered msg/s, parley / peer", "latency p99, parley / peer"),
            "jetstream" => ("delivered msg/s, parley / jetstream", "latency p99, parley / jetstream"),
            _ => ("delivered msg/s, parley / nats", "latency p99, parley / nats"),
        };
        comparison.push("delivered_per_sec_ratio", rate_label, "×", ratio("delivered_per_sec"));
        comparison.push("latency_p99_ratio", p99_label, "×", ratio("latency_p99_ms"));
    }
    Ok(ScenarioReport {
        scenario: "relay",
        params: json!({
            "pairs": args.pairs,
            "size": args.size,
            "rate": args.rate,
            "window": args.window,
            "duration_secs": cli.duration,
            "drain_secs": args.drain,
            "jetstream_sync": with_jetstream.then_some(&args.jetstream_sync),
        }),
        targets,
        comparison,
        notes,
    })
}

fn write_plot(path: &std::path::Path, report: &ScenarioReport) -> anyhow::Result<()> {
    let series: Vec<plot::Series> = report
        .targets
        .iter()
        .filter_map(|t| {
            t.runs.last().map(|run| plot::Series {
                label: t.target.clone(),
                latency: run.latency_curve.clone(),
                per_second: run.per_second.clone(),
            })
        })
        .collect();
    let title = format!("parley-bench {} {}", report.scenario, compact_params(&report.params));
    std::fs::write(path, plot::render(&title, &series)).with_context(|| format!("writing {}", path.display()))
}

fn compact_params(params: &serde_json::Value) -> String {
    params
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}
