//! `sluice serve`: every role in one process, wired from a [`Config`].
//!
//! Shutdown has one path: [`Node::shutdown`] (the binary calls it on SIGTERM/SIGINT)
//! → ingest answers 503 (for `shutdown_drain_delay`) and stops accepting, in-flight
//! requests finish (their events
//! are durable once acked) → the processor delivers the backlog, commits it and
//! checkpoints → the queue is closed (final sync) → the admin listener stops. All of
//! it under `shutdown_grace`; past it sluice warns and returns, and whatever was not
//! committed is replayed on the next start.

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_core::{Queue, Sink};
use sluice_pipeline::sinks::BlackholeSink;
use sluice_pipeline::{Processor, ProcessorOptions};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::front::IngestState;
use crate::http::admin::{self, AdminState};
use crate::http::{serve, Listener};
use crate::metrics::Metrics;
use crate::tls::{TlsError, TlsReloader};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The write-ahead log could not be opened.
    #[error("opening the write-ahead log in {dir}")]
    Wal {
        dir: std::path::PathBuf,
        #[source]
        source: sluice_wal::OpenError,
    },
    /// The gateway's upstreams are misconfigured.
    #[error("{0}")]
    Gateway(String),
    /// The TLS certificate, key or client CA could not be loaded.
    #[error("loading TLS certificates")]
    Tls(#[source] TlsError),
    /// The configuration does not fit the role (e.g. ingest open to the network
    /// without API keys).
    #[error("invalid configuration")]
    Config(#[source] crate::config::ConfigError),
    /// `sluice ingest` / `sluice process` without a broker queue.
    #[error("{0}")]
    Role(String),
    /// The NATS queue or sink could not be reached or set up.
    #[cfg(feature = "nats")]
    #[error(transparent)]
    Nats(#[from] sluice_brokers::nats::Error),
    /// The Kafka queue or sink could not be reached or set up.
    #[cfg(feature = "kafka")]
    #[error(transparent)]
    Kafka(#[from] sluice_brokers::kafka::Error),
    /// A sink refused one of its options.
    #[error("sink: {0}")]
    Sink(#[source] sluice_core::OptionError),
    /// A listener could not bind.
    #[error("binding {key} = {addr}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Wraps the queue built from the config (tests stall or observe it).
pub type QueueWrapper = Box<dyn FnOnce(Arc<dyn Queue>) -> Arc<dyn Queue> + Send>;

/// What `start` can take besides the config (tests wrap the real sink or queue, e.g.
/// to stall it).
#[derive(Default)]
pub struct NodeOptions {
    /// Replaces the sink built from the config.
    pub sink: Option<Arc<dyn Sink>>,
    /// Wraps the queue built from the config.
    pub wrap_queue: Option<QueueWrapper>,
    /// Which roles run.
    pub role: Role,
}

/// What a node does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    /// `sluice serve`: ingest, the queue, the processor and the sink in one process.
    #[default]
    Serve,
    /// `sluice gateway`: the front door only, forwarding to `gateway.upstreams`.
    Gateway,
    /// `sluice ingest`: HTTP and gRPC into a shared broker queue; no processor.
    Ingest,
    /// `sluice process`: the processor on a shared broker queue, and the admin
    /// listener; no ingest listener.
    Process,
}

impl Role {
    /// The subcommand that runs this role.
    pub fn command(self) -> &'static str {
        match self {
            Role::Serve => "serve",
            Role::Gateway => "gateway",
            Role::Ingest => "ingest",
            Role::Process => "process",
        }
    }
}

/// A running `sluice serve`.
pub struct Node {
    /// The bound ingest address (useful with port 0); for `sluice process`, which has
    /// no ingest listener, the admin address.
    pub http_addr: SocketAddr,
    /// The bound admin address.
    pub admin_addr: SocketAddr,
    shutdown: CancellationToken,
    done: JoinHandle<bool>,
}

impl Node {
    /// Opens the queue, binds the listeners and starts every role.
    pub async fn start(config: Config, opts: NodeOptions) -> Result<Node, StartError> {
        let metrics = Arc::new(Metrics::new());
        if opts.role != Role::Process {
            config.check_open_listener().map_err(StartError::Config)?;
        }
        if matches!(opts.role, Role::Ingest | Role::Process) && !config.queue.is_broker() {
            return Err(StartError::Role(format!(
                "`sluice {}` runs apart from its {}, which needs a shared broker queue \
                 (--queue nats://HOST:PORT or kafka://HOST:PORT), not queue.kind = {:?}",
                opts.role.command(),
                if opts.role == Role::Ingest {
                    "processors"
                } else {
                    "ingest nodes"
                },
                config.queue.kind()
            )));
        }
        let queue: Arc<dyn Queue> = match opts.role {
            Role::Gateway => crate::gateway::Upstreams::start(
                config.gateway.clone(),
                config.http.max_events_per_request,
                metrics.clone(),
            )
            .map_err(StartError::Gateway)?,
            _ => crate::build::open_queue(&config, &metrics).await?,
        };
        let queue = match opts.wrap_queue {
            Some(wrap) => wrap(queue),
            None => queue,
        };
        let processes = matches!(opts.role, Role::Serve | Role::Process);
        let (sink, sink_name): (Arc<dyn Sink>, &'static str) = match opts.sink {
            Some(s) => {
                let name = s.name();
                (s, name)
            }
            None if !processes => (Arc::new(BlackholeSink::default()), "none"),
            None => {
                let s = crate::build::build_sink(&config.sink, &config.default_sink_dir()).await?;
                let name = s.name();
                (s, name)
            }
        };
        let dead_letter = match processes {
            true => {
                let dir = config.default_dead_letter_dir();
                Some(crate::build::build_sink(&config.dead_letter, &dir).await?)
            }
            false => None,
        };

        let bind = |key: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { key, addr, source })
        };
        // `sluice process` takes no ingest traffic: it binds only the admin listener.
        let http_listener = match opts.role {
            Role::Process => None,
            _ => Some(bind("listen", config.listen).await?),
        };
        let admin_listener = bind("admin_listen", config.admin_listen).await?;
        let http_addr = http_listener
            .as_ref()
            .map(|l| l.local_addr().expect("bound socket has an address"));
        let admin_addr = admin_listener
            .local_addr()
            .expect("bound socket has an address");

        let processor = processes.then(|| {
            let p = Processor::new(
                queue.clone(),
                sink,
                ProcessorOptions {
                    workers: config.workers(),
                    batch_max_events: config.processor.batch_max_events,
                    batch_max_wait: config.processor.batch_max_wait.0,
                    retry_initial: config.processor.retry_initial.0,
                    retry_max: config.processor.retry_max.0,
                    consumer: config.processor.group.clone(),
                    // Deliver the backlog before exiting (within the grace): a node taken
                    // out of service must not strand accepted events in its local log. A
                    // broker queue is shared, so its backlog is left to the other
                    // processors.
                    drain_on_shutdown: !config.queue.is_broker(),
                    max_attempts: config.processor.max_attempts,
                    max_deliveries: config.processor.max_deliveries,
                },
            );
            match dead_letter {
                Some(d) => p.with_dead_letter(d),
                None => p,
            }
        });
        let processor_stats = processor
            .as_ref()
            .map_or_else(Default::default, Processor::stats);

        let shutdown = CancellationToken::new();
        let tls = match config.tls.enabled() {
            false => None,
            true => Some(Arc::new(
                TlsReloader::new(config.tls.clone()).map_err(StartError::Tls)?,
            )),
        };
        let ingest_listener = Listener {
            name: "ingest",
            header_read_timeout: config.http.header_read_timeout.0,
            idle_timeout: config.http.idle_timeout.0,
            drain_timeout: config.http.drain_timeout.0,
            max_concurrent_streams: config.http.max_concurrent_streams,
            max_connections: config.http.max_connections,
            tls: tls.clone(),
            metrics: metrics.clone(),
        };
        let admin_listener_settings = Listener {
            name: "admin",
            tls: tls.clone().filter(|_| config.tls.on_admin()),
            ..ingest_listener.clone()
        };
        let ingest_state = Arc::new(IngestState::new(
            &config,
            queue.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
        let admin_state = Arc::new(AdminState {
            queue: queue.clone(),
            metrics: metrics.clone(),
            processor: processor_stats,
            sink: sink_name,
            shutting_down: shutdown.clone(),
            headroom: config.http.max_body_bytes.0,
            debug: crate::http::debug::DebugAccess::new(
                config.admin_token.as_ref().map(|t| t.expose()),
                config.admin_listen.ip().is_loopback(),
            ),
        });

        let ingest_stop = CancellationToken::new();
        let grpc = crate::grpc::service(ingest_state.clone(), config.grpc.window);
        let ingest_task = http_listener.map(|l| {
            tokio::spawn(serve(l, ingest_listener, ingest_stop.clone(), move |req| {
                crate::http::route(ingest_state.clone(), grpc.clone(), req)
            }))
        });
        let admin_stop = CancellationToken::new();
        let admin_task = tokio::spawn(serve(
            admin_listener,
            admin_listener_settings,
            admin_stop.clone(),
            move |req| admin::handle(admin_state.clone(), req),
        ));
        if let Some(tls) = tls {
            let every = config
                .tls
                .watch_interval
                .map_or(std::time::Duration::from_secs(10), |d| d.0);
            // Registered before start returns, so a SIGHUP from now on is a reload.
            let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            tokio::spawn(watch_tls(
                tls,
                every,
                hup,
                metrics.clone(),
                shutdown.clone(),
            ));
        }
        let processor_stop = CancellationToken::new();
        let processor_task = processor.map(|p| spawn_processor(p, processor_stop.clone()));

        tracing::info!(
            role = ?opts.role,
            listen = ?http_addr,
            admin = %admin_addr,
            queue = config.queue.kind(),
            sink = sink_name,
            "sluice is serving"
        );

        let grace = config.shutdown_grace.0;
        let drain_delay = config.shutdown_drain_delay.0;
        let s = shutdown.clone();
        let done = tokio::spawn(async move {
            s.cancelled().await;
            tracing::info!(grace = ?grace, ?drain_delay, "shutting down: answering 503, then draining in-flight requests");
            let sequence = async {
                // Requests meanwhile get 503 + Retry-After (the handler sees `shutdown`).
                tokio::time::sleep(drain_delay).await;
                ingest_stop.cancel();
                if let Some(task) = ingest_task {
                    let _ = task.await;
                }
                processor_stop.cancel();
                if let Some(task) = processor_task {
                    tracing::info!("ingest drained; stopping the processor");
                    match task.await {
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "processor stopped with an error")
                        }
                        Err(_) => tracing::error!("processor thread died"),
                        Ok(Ok(())) => {}
                    }
                }
                if let Err(e) = queue.close().await {
                    tracing::error!(error = %e, "closing the queue failed");
                }
            };
            let clean = tokio::time::timeout(grace, sequence).await.is_ok();
            if !clean {
                tracing::warn!(grace = ?grace, "shutdown grace period expired; uncommitted events will be replayed on restart");
            }
            admin_stop.cancel();
            let _ = admin_task.await;
            clean
        });
        Ok(Node {
            http_addr: http_addr.unwrap_or(admin_addr),
            admin_addr,
            shutdown,
            done,
        })
    }

    /// Starts the shutdown sequence (idempotent).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the node has stopped; true when shutdown finished within the grace.
    pub async fn wait(self) -> bool {
        self.done.await.unwrap_or(false)
    }
}

/// Reloads the TLS files on SIGHUP and when they change, until shutdown.
async fn watch_tls(
    tls: Arc<TlsReloader>,
    every: std::time::Duration,
    mut hup: Option<tokio::signal::unix::Signal>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    loop {
        let why = tokio::select! {
            _ = stop.cancelled() => return,
            _ = async {
                match hup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending().await,
                }
            } => "SIGHUP",
            _ = tokio::time::sleep(every) => {
                if !tls.files_changed() {
                    continue;
                }
                "files changed"
            }
        };
        match tls.reload() {
            Ok(()) => {
                metrics.tls_reloads.get_or_create(&[("result", "ok")]).inc();
                tracing::info!(trigger = why, "tls certificates reloaded");
            }
            Err(e) => {
                metrics
                    .tls_reloads
                    .get_or_create(&[("result", "error")])
                    .inc();
                tracing::error!(trigger = why, error = %error_chain(&e), "tls reload failed; keeping the previous certificates");
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Runs the processor on a thread and runtime of its own. Ingest and delivery then
/// compete as OS threads, which the kernel shares fairly, instead of as tasks on one
/// runtime, where thousands of connection tasks can starve the few workers and an
/// overloaded front door stops delivery (measured: with one core, accepted NDJSON
/// events outran delivered ones 3 to 1 until the log was full).
fn spawn_processor(
    processor: Processor,
    stop: CancellationToken,
) -> tokio::sync::oneshot::Receiver<Result<(), sluice_core::ConsumeError>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("sluice-processor".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building the processor runtime");
            let _ = tx.send(rt.block_on(processor.run(stop)));
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the processor thread");
    }
    rx
}
