//! `parleyd`: the Parley server binary.

use std::process::ExitCode;

use clap::Parser;
use parley_server::config::SettingArgs;

/// mimalloc: fewer instructions per allocation than glibc's malloc on the
/// per-message path, and it returns freed pages without the trim-and-refault
/// cycles glibc showed under load (see docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Parley instant-messaging server.
///
/// With no arguments it serves the native protocol on 127.0.0.1:7878, the
/// HTTP API, WebSocket and web UI on http://127.0.0.1:7880/, with a SQLite
/// database in ./parley-data. Every setting can come from a TOML file
/// (--config), from a PARLEY_* environment variable, or from a flag; flags win
/// over the environment, which wins over the file.
#[derive(Parser, Debug)]
#[command(name = "parleyd", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: SettingArgs,
}

/// Commands besides serving (plain `parleyd` serves).
#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Read perf logs (see the perf_log setting).
    Perf(parley_server::perf::PerfArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Perf(args)) = cli.command {
        return parley_server::perf::run_command(args);
    }
    let settings = match cli.settings.resolve() {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("parleyd: {errors}");
            return ExitCode::from(2);
        }
    };
    // Kept to the end of `main`: dropping it flushes the log files.
    let _logging = match parley_server::logging::init(&settings) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("parleyd: {e:#}");
            return ExitCode::FAILURE;
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("parleyd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("parleyd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: parley_server::Settings) -> anyhow::Result<()> {
    use anyhow::Context;
    let (store, secret) = parley_server::open_store(&settings)?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let http = match settings.http_listen {
        Some(http_addr) => Some(
            tokio::net::TcpListener::bind(http_addr)
                .await
                .with_context(|| format!("binding the HTTP listener {http_addr}"))?,
        ),
        None => None,
    };
    let http_addr = match &http {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    tracing::info!(%addr, http = ?http_addr, store = ?settings.store, data_dir = %settings.data_dir.display(), "parleyd listening");
    // One machine-readable line on stdout: scripts and tests read the ports
    // from it when listening on port 0. `http=` is absent when it is off.
    match http_addr {
        Some(http_addr) => println!("parleyd listening native={addr} http={http_addr}"),
        None => println!("parleyd listening native={addr}"),
    }
    run_until_signal(settings, listener, http, store, secret).await
}

async fn run_until_signal(
    settings: parley_server::Settings,
    listener: tokio::net::TcpListener,
    http: Option<tokio::net::TcpListener>,
    store: std::sync::Arc<dyn parley_core::Store>,
    secret: [u8; 32],
) -> anyhow::Result<()> {
    let shutdown = async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("signal received");
    };
    parley_server::Server::new(settings, store, secret)
        .run_with_http(listener, http, shutdown)
        .await
}
