//! `parleyd`: the Parley server binary.
//!
//! `parleyd` (no subcommand) starts the master, which binds the listeners
//! and runs the worker: this same binary, started with the sockets as
//! inherited descriptors (see `supervisor.rs` and `worker.rs`).
//! `parleyd ctl …` talks to a running master through its control socket;
//! `parleyd gen-cert` writes a development certificate; `parleyd perf
//! summary` reads the perf logs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use parley_server::config::SettingArgs;
use parley_server::ctl::{self, Request};
use parley_server::gen_cert::GenCertArgs;
use parley_server::{supervisor, worker};

/// mimalloc: fewer instructions per allocation than glibc's malloc on the
/// per-message path, and it returns freed pages without the trim-and-refault
/// cycles glibc showed under load (see docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Parley instant-messaging server.
///
/// With no arguments it serves the native protocol on 127.0.0.1:7878, the
/// HTTP API, WebSocket and web UI on http://127.0.0.1:7880/, with a SQLite
/// database in ./parley-data, and a control socket for `parleyd ctl` in it.
/// Every setting can come from a TOML file (--config), from a PARLEY_*
/// environment variable, or from a flag; flags win over the environment,
/// which wins over the file. SIGHUP re-reads the file and replaces the
/// worker process without dropping the listeners; SIGTERM and SIGINT stop
/// gracefully.
#[derive(Parser, Debug)]
#[command(name = "parleyd", version, about, long_about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    settings: SettingArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Control a running parleyd through its control socket.
    Ctl(CtlArgs),
    /// Write a self-signed certificate (cert.pem) and key (key.pem) for
    /// development, and print the fingerprint and the settings to use
    GenCert(GenCertArgs),
    /// Read perf logs (see the perf_log setting).
    Perf(parley_server::perf::PerfArgs),
    /// Serve the spam model over HTTP/JSON for servers with filter_url
    /// (an inference server; it prints its address, then serves until
    /// SIGTERM or SIGINT).
    FilterServe(parley_server::filter::ServeArgs),
}

/// The flags of `parleyd ctl`, accepted before or after the action
/// (`parleyd ctl status --json` and `parleyd ctl --json status` alike).
#[derive(Args, Debug)]
struct CtlArgs {
    /// The control socket [default: DATA_DIR/parleyd.ctl, or ctl_socket from the config file]
    #[arg(long, global = true, env = "PARLEY_CTL_SOCKET", value_name = "PATH")]
    ctl_socket: Option<String>,
    /// The server's configuration file, to find its control socket.
    #[arg(long, global = true, env = "PARLEY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The server's data directory, to find its control socket.
    #[arg(long, global = true, env = "PARLEY_DATA_DIR", value_name = "DIR")]
    data_dir: Option<String>,
    /// Print the reply as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: CtlAction,
}

#[derive(Subcommand, Debug)]
enum CtlAction {
    /// The master, its worker, listeners and counters.
    Status,
    /// Who is online, with their session counts.
    Sessions,
    /// End every session of USER (they get KICKED and do not reconnect by themselves).
    Kick { user: String },
    /// Store a system message for every online user (pushed at once, kept until acked).
    Broadcast {
        #[arg(required = true, num_args = 1.., trailing_var_arg = true)]
        text: Vec<String>,
    },
    /// Make a one-time invite code for `registration = invite`; it is printed once.
    Invite {
        /// Hours the code works (1 to 8760).
        #[arg(long, default_value_t = ctl::DEFAULT_INVITE_EXPIRES_HOURS)]
        expires_hours: u64,
    },
    /// Print the spam / not-spam judgements recipients made, one JSON
    /// object per line (id, spam, score, marked_ms, text): the labelled
    /// data `parley-train --labels FILE` adds to its corpus
    Labels {
        /// Only labels numbered above this (to fetch only new ones)
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Re-read the configuration and replace the worker without dropping connections' data.
    Reload,
    /// Stop gracefully.
    Stop,
}

/// `parleyd ctl labels`: every page from `after` on, as JSON lines.
fn print_labels(path: &std::path::Path, mut after: u64) -> ExitCode {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    loop {
        let page = match ctl::call(path, &Request::Labels { after }) {
            Ok(result) => match serde_json::from_value::<Vec<ctl::Label>>(result) {
                Ok(page) => page,
                Err(e) => {
                    eprintln!("parleyd ctl: the server's labels after {after} are not readable: {e}");
                    return ExitCode::FAILURE;
                }
            },
            Err(e) => {
                eprintln!("parleyd ctl: {e}");
                return match e {
                    ctl::ClientError::Unreachable { .. } => ExitCode::from(3),
                    _ => ExitCode::FAILURE,
                };
            }
        };
        let Some(last) = page.last().map(|l| l.id) else {
            return ExitCode::SUCCESS;
        };
        for label in &page {
            if let Ok(line) = serde_json::to_string(label)
                && writeln!(out, "{line}").is_err()
            {
                return ExitCode::FAILURE;
            }
        }
        after = last;
    }
}

/// `parleyd filter-serve`, on a runtime of its own.
fn filter_serve(args: parley_server::filter::ServeArgs) -> ExitCode {
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("parleyd filter-serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(parley_server::filter::serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("parleyd filter-serve: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    refuse_transparent_huge_pages();
    if worker::is_worker() {
        // SAFETY: called first, before any descriptor is opened or closed,
        // as `init_inherited_fds` requires; it only records which
        // descriptors this process inherited.
        #[allow(unsafe_code)]
        if let Err(e) = unsafe { command_fds::inherited::init_inherited_fds() } {
            eprintln!("parleyd worker: {e}");
            return ExitCode::FAILURE;
        }
    }
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Kept with the values, so that a configuration error can say which
    // flag or environment variable set the bad one.
    cli.settings.note_origins(&matches);
    match cli.command {
        None => {}
        Some(Command::Ctl(args)) => return control(args),
        Some(Command::Perf(args)) => return parley_server::perf::run_command(args),
        Some(Command::FilterServe(args)) => return filter_serve(args),
        Some(Command::GenCert(args)) => {
            return match parley_server::gen_cert::run(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("parleyd gen-cert: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
    }
    // The server (master and worker alike) creates its files private to
    // its user whatever umask it was started with: the database holds every
    // message and every SCRAM key (see `private_files`). The subcommands
    // above keep the caller's umask: gen-cert's certificate is meant to be
    // shared.
    parley_server::private_files::restrict_umask();
    let settings = match cli.settings.resolve() {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("parleyd: {errors}");
            return ExitCode::from(2);
        }
    };
    // Kept to the end of `main`: dropping it flushes the log files. The
    // master and its worker write the same files (appending).
    let _logging = match parley_server::logging::init(&settings) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("parleyd: {e:#}");
            return ExitCode::FAILURE;
        }
    };

    if worker::is_worker() {
        return worker::run(settings);
    }
    // The master only supervises: one thread is plenty.
    let launch = supervisor::Launch {
        args: std::env::args_os().skip(1).collect(),
        setting_args: cli.settings,
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(supervisor::run(launch, settings)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("parleyd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Turns transparent huge pages off for this process, before it allocates
/// more than the runtime's first few blocks; the worker inherits the flag
/// through fork and exec, and sets it again itself.
///
/// mimalloc asks for huge pages on its arenas (`MADV_HUGEPAGE`), so every
/// fault on a fresh part of the heap made the kernel zero 2 MiB at once. The
/// memory store grows by every message, and at half of relay's maximum rate
/// zeroing pages (`clear_page_erms`) took a third of parleyd's CPU: the server
/// went from 78-94% of a core to 58-70% without it, and relay's p99 at that
/// rate from 3.0-9.6x NATS's to 1.4-1.8x (docs/BENCHMARKS.md). An operator who
/// wants huge pages back sets mimalloc's own switch, `MIMALLOC_ALLOW_THP=1`;
/// `MIMALLOC_ALLOW_THP=0` has mimalloc do the same as this.
fn refuse_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none()
        && let Err(errno) = nix::sys::prctl::set_thp_disable(true)
    {
        // Not fatal: huge pages only cost time. Logging is not set up yet.
        eprintln!("parleyd: cannot turn transparent huge pages off: {errno}");
    }
}

/// `parleyd ctl`: one request, its reply on stdout. Exit 0 on success, 1
/// when the server refused, 3 when it cannot be reached.
fn control(args: CtlArgs) -> ExitCode {
    let where_ = SettingArgs {
        config: args.config,
        data_dir: args.data_dir,
        ctl_socket: args.ctl_socket,
        ..Default::default()
    };
    let Some(path) = where_.ctl_socket_path() else {
        eprintln!("parleyd ctl: the control socket is off (ctl_socket = \"off\")");
        return ExitCode::from(2);
    };
    let request = match args.action {
        CtlAction::Status => Request::Status,
        CtlAction::Sessions => Request::Sessions,
        CtlAction::Kick { user } => Request::Kick { user },
        CtlAction::Broadcast { text } => Request::Broadcast { text: text.join(" ") },
        CtlAction::Invite { expires_hours } => Request::Invite { expires_hours },
        CtlAction::Labels { after } => return print_labels(&path, after),
        CtlAction::Reload => Request::Reload,
        CtlAction::Stop => Request::Stop,
    };
    match ctl::call(&path, &request) {
        Ok(result) => {
            if args.json {
                println!("{result}");
            } else {
                print!("{}", ctl::render(&request, &result));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("parleyd ctl: {e}");
            match e {
                ctl::ClientError::Unreachable { .. } => ExitCode::from(3),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
