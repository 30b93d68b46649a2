//! The `sluice` binary: parses the command line, loads the configuration and runs
//! the chosen role. The only crate that uses `anyhow`.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sluice_server::config::{ConfigError, LogFormat, Sources};
use sluice_server::{Config, Node, NodeOptions, Role};

/// jemalloc (the default `jemalloc` feature), sampling the heap for
/// /debug/pprof/heap: measured against mimalloc, 0-4 % fewer single-event requests/s, NDJSON alike, ~40 % less
/// peak RSS (bench/RESULTS.md, 2026-12-02).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Without it, mimalloc rather than glibc malloc: the ingest path allocates and frees
/// many small buffers per request from several threads, where glibc's arenas spent
/// ~10% of a profiled NDJSON run in malloc/free/consolidation.
#[cfg(not(feature = "jemalloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Durable event ingestion: HTTP in, write-ahead log, worker pool, sinks out.
#[derive(Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every role in one process: HTTP ingest, the queue, the processor and the sink.
    Serve(Box<ServeArgs>),
    /// Run the edge gateway: TLS, auth, limits and the HTTP/gRPC API, forwarding every
    /// request to ingest nodes (`sluice serve`) over pooled gRPC connections.
    Gateway(Box<GatewayArgs>),
    /// Run the ingest role alone: HTTP and gRPC into a shared broker queue
    /// (`--queue nats://HOST:PORT` or `kafka://HOST:PORT`); processors run apart.
    Ingest(Box<ServeArgs>),
    /// Run the processor role alone: consume a shared broker queue as one member of
    /// `processor.group` and deliver to the sink. Serves only the admin listener.
    Process(Box<ServeArgs>),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Write-ahead log tools (read-only).
    #[command(subcommand)]
    Wal(WalCmd),
    /// API key tools.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Generate load: HTTP/1.1, HTTP/2 or gRPC, open (--rate) or closed model, with
    /// latency percentiles and JSON/HTML reports.
    Load(Box<sluice_tools::load::LoadArgs>),
    /// Send NDJSON from a file or stdin to a stream, in batches.
    Send(Box<sluice_tools::send::SendArgs>),
    /// Watch one or several nodes live in the terminal (their admin listeners).
    Top(Box<sluice_tools::top::TopArgs>),
    /// Probe a node's admin listener (plain HTTP) and exit 0 on a 200: a container
    /// health check that needs nothing but this binary.
    Health {
        /// The URL to GET.
        #[arg(long, default_value = "http://127.0.0.1:9090/readyz")]
        url: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Make a new random API key: the key is printed on stderr, the `[[auth.keys]]`
    /// entry with its SHA-256 on stdout (so `>> sluice.toml` stores only the hash).
    Generate {
        /// The key's name, for logs and error messages.
        #[arg(long, default_value = "producer")]
        name: String,
        /// Stream patterns it may write (`*` and `?` wildcards), comma-separated.
        #[arg(long, default_value = "*")]
        streams: String,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Ingest listener address [default: 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<String>,
    /// Admin listener address (/healthz, /readyz, /metrics) [default: 127.0.0.1:9090].
    #[arg(long)]
    admin_listen: Option<String>,
    /// Data directory for the WAL and the file sink [default: ./sluice-data].
    #[arg(long)]
    data_dir: Option<String>,
    /// Queue: wal (durable, default), memory (not durable), or a shared broker,
    /// nats://HOST:PORT (JetStream) or kafka://HOST:PORT[,HOST:PORT].
    #[arg(long)]
    queue: Option<String>,
    /// When a 202 is sent: fsync (default; survives power loss) or write (survives a crash of sluice).
    #[arg(long)]
    ack: Option<String>,
    /// Sink: file (default), stdout, blackhole, or a URL: nats://HOST:PORT,
    /// kafka://HOST:PORT, http(s)://HOST/PATH.
    #[arg(long)]
    sink: Option<String>,
    /// Log format: text (default) or json.
    #[arg(long)]
    log_format: Option<String>,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long)]
    tls_cert: Option<String>,
    /// The TLS private key (PEM).
    #[arg(long)]
    tls_key: Option<String>,
    /// Require client certificates signed by this CA bundle (PEM): mTLS.
    #[arg(long)]
    tls_client_ca: Option<String>,
    /// Serve a non-loopback address even with no API keys configured.
    #[arg(long)]
    allow_unauthenticated: bool,
    /// Log level filter, e.g. info, debug, sluice_wal=debug.
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[derive(Args)]
struct GatewayArgs {
    /// Ingest nodes to forward to, `http://HOST:PORT`, comma-separated (or
    /// `gateway.upstreams` in the config).
    #[arg(long)]
    upstream: Option<String>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a configuration file (with SLUICE_* overrides) and print the effective
    /// configuration as TOML, every default filled in and secrets redacted.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum WalCmd {
    /// Print segments, record counts, consumer offsets and any corruption.
    Inspect {
        /// The WAL directory, or a data directory holding `wal/`.
        dir: PathBuf,
    },
    /// Check every frame's checksum; exit 1 on corruption.
    Verify {
        /// The WAL directory, or a data directory holding `wal/`.
        dir: PathBuf,
    },
    /// Keep every valid record (at its position) and move unreadable bytes to
    /// `<segment>.quarantine-<offset>` files; run it while the node is stopped,
    /// when a start refuses a corrupt log. Idempotent.
    Repair {
        /// The WAL directory, or a data directory holding `wal/`.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            if err
                .chain()
                .any(|c| c.downcast_ref::<ConfigError>().is_some())
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Load(args) => {
            sluice_tools::load::main(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Send(args) => {
            sluice_tools::send::main(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Top(args) => {
            sluice_tools::top::main(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Health { url, timeout } => {
            let status = health(&url, std::time::Duration::from_secs(timeout.max(1)))?;
            println!("{url}: {status}");
            Ok(clean_code(status.starts_with("200")))
        }
        Cmd::Serve(args) => serve(*args, Vec::new(), Role::Serve),
        Cmd::Ingest(args) => serve(*args, Vec::new(), Role::Ingest),
        Cmd::Process(args) => serve(*args, Vec::new(), Role::Process),
        Cmd::Gateway(args) => {
            let extra = args
                .upstream
                .map(|u| vec![("gateway.upstreams".to_string(), u)])
                .unwrap_or_default();
            serve(args.serve, extra, Role::Gateway)
        }
        Cmd::Config(ConfigCmd::Check { file }) => {
            let config = Config::load(Sources {
                file: Some(&file),
                env: Config::process_env(),
                flags: Vec::new(),
            })?;
            // As `sluice serve` would check it (`sluice process` serves no `listen`).
            config.check_open_listener()?;
            // The effective configuration (defaults, environment), secrets redacted;
            // itself a valid config file.
            eprintln!("{} is valid; the effective configuration:", file.display());
            print!("{}", config.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Keys(KeysCmd::Generate { name, streams }) => {
            let (key, hash) = sluice_server::auth::generate_key();
            let streams: Vec<String> = streams
                .split(',')
                .map(|s| format!("{:?}", s.trim()))
                .collect();
            // The key goes to stderr, the config entry to stdout: `sluice keys generate
            // >> sluice.toml` shows the key once and stores only its hash.
            eprintln!("API key for {name:?} (give it to the producer; it is not stored anywhere):");
            eprintln!("{key}");
            println!("[[auth.keys]]");
            println!("name = {name:?}");
            println!("sha256 = \"{hash}\"");
            println!("streams = [{}]", streams.join(", "));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Wal(WalCmd::Inspect { dir })
        | Cmd::Wal(WalCmd::Verify { dir })
        | Cmd::Wal(WalCmd::Repair { dir })
            if !dir.exists() =>
        {
            anyhow::bail!("{} does not exist", dir.display())
        }
        Cmd::Wal(WalCmd::Inspect { dir }) => {
            let report = sluice_wal::inspect(&wal_dir(&dir))?;
            println!("{report}");
            Ok(clean_code(report.is_clean()))
        }
        Cmd::Wal(WalCmd::Verify { dir }) => {
            let report = sluice_wal::inspect(&wal_dir(&dir))?;
            if report.is_clean() {
                println!("{}: clean", dir.display());
            } else {
                println!("{report}");
            }
            Ok(clean_code(report.is_clean()))
        }
        Cmd::Wal(WalCmd::Repair { dir }) => {
            let report = sluice_wal::repair(&wal_dir(&dir))?;
            println!("{report}");
            let after = sluice_wal::inspect(&wal_dir(&dir))?;
            if !after.is_clean() {
                println!("{after}");
            }
            Ok(clean_code(after.is_clean()))
        }
    }
}

fn clean_code(clean: bool) -> ExitCode {
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// GETs `url` (`http://HOST:PORT/PATH`) with HTTP/1.0 and returns the status line's
/// code and reason, e.g. `200 OK`.
fn health(url: &str, timeout: std::time::Duration) -> anyhow::Result<String> {
    let (status, _) = sluice_tools::top::scrape::get(url, timeout, 4096)?;
    Ok(status)
}

/// Accepts the WAL directory itself or a data directory that holds `wal/`.
fn wal_dir(dir: &Path) -> PathBuf {
    let nested = dir.join("wal");
    if nested.is_dir() {
        nested
    } else {
        dir.to_path_buf()
    }
}

fn serve(
    args: ServeArgs,
    mut flags: Vec<(String, String)>,
    role: Role,
) -> anyhow::Result<ExitCode> {
    for (key, value) in [
        ("listen", args.listen),
        ("admin_listen", args.admin_listen),
        ("data_dir", args.data_dir),
        ("queue.ack", args.ack),
        ("log_format", args.log_format),
        ("tls.cert", args.tls_cert),
        ("tls.key", args.tls_key),
        ("tls.client_ca", args.tls_client_ca),
        (
            "auth.allow_unauthenticated",
            args.allow_unauthenticated.then(|| "true".to_string()),
        ),
    ] {
        if let Some(v) = value {
            flags.push((key.to_string(), v));
        }
    }
    for (section, value) in [("queue", args.queue), ("sink", args.sink)] {
        if let Some(v) = value {
            let (kind, url) = sluice_server::config::kind_and_url(&v);
            flags.push((format!("{section}.kind"), kind));
            flags.extend(url.map(|u| (format!("{section}.url"), u)));
        }
    }
    let config = Config::load(Sources {
        file: args.config.as_deref(),
        env: Config::process_env(),
        flags,
    })?;
    init_logging(config.log_format, &args.log_level)?;
    // A processor serves no ingest listener: only the roles that do need room for
    // http.max_connections (a processor warned about a limit it never uses).
    if role != Role::Process {
        raise_fd_limit(config.http.max_connections);
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    // tokio's own (adaptive) balance between a worker's queue and the shared one.
    // An earlier build looked at the shared queue first on every tick
    // (`global_queue_interval(1)`), because WAL acks, woken from the writer thread,
    // waited there behind new requests; with 1,000 connections that starved the
    // other queue instead (p99 0.4-1.5 s, 25-60x the mean, in some runs). Acks now
    // reach their requests through a runtime task (sluice-queue's `handoff`), so both
    // kinds of wake-up share a queue (bench/RESULTS.md, "Where the 1,000-connection
    // tail is").
    rt.enable_all();
    let runtime = rt.build().context("starting the async runtime")?;
    runtime.block_on(async move {
        let telemetry = sluice_telemetry::install(&config.telemetry, role.command())
            .context("starting tracing ([telemetry])")?;
        if let Some(t) = &telemetry {
            let r = t.resolved();
            tracing::info!(endpoint = %r.endpoint, protocol = ?r.protocol, service = %r.service_name, "exporting traces with OTLP");
        }
        let node = Node::start(
            config,
            NodeOptions {
                role,
                ..Default::default()
            },
        )
        .await?;
        wait_for_signal().await?;
        tracing::info!("signal received");
        node.shutdown();
        let clean = node.wait().await;
        if let Some(t) = telemetry {
            // The last spans, within a bound: a dead collector must not hold the exit.
            let flush = tokio::task::spawn_blocking(move || t.shutdown());
            if tokio::time::timeout(std::time::Duration::from_secs(5), flush)
                .await
                .is_err()
            {
                tracing::warn!("the last spans were not exported within 5 s");
            }
        }
        tracing::info!(clean, "stopped");
        Ok(if clean {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

/// Lifts the soft open-file limit to the hard one, so `http.max_connections` (per
/// listener) can actually be held; warns when even that is too low.
fn raise_fd_limit(max_connections: usize) {
    let want = 2 * max_connections as u64 + 1024;
    match rlimit::increase_nofile_limit(want) {
        Ok(got) if got < want => tracing::warn!(
            limit = got,
            wanted = want,
            "the open-file limit is below what http.max_connections needs"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn init_logging(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .with_context(|| format!("--log-level {level:?} is not a valid filter"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}
