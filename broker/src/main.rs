//! `creek`: a Kafka-compatible broker. This file is the composition root: CLI and config,
//! logging, the listener, background tasks and clean shutdown.

mod cluster;
mod config;
mod flusher;
mod group;
mod handlers;
mod raft;
mod rpc;
mod server;
mod state;
mod txn;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use creek_protocol::budget::BudgetAllocator;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Bounds the memory any request body can take while decoding (see `creek_protocol::budget`).
#[global_allocator]
static ALLOC: BudgetAllocator = BudgetAllocator;

#[derive(Parser)]
#[command(name = "creek", version, about = "Creek: a Kafka-compatible broker")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (the default).
    Serve(ServeArgs),
}

#[derive(clap::Args, Clone, Default)]
struct ServeArgs {
    /// TOML config file with Kafka-style names (`log.retention.ms = 1000`).
    #[arg(long, env = "CREEK_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka listener address [config: listeners, default 127.0.0.1:9092].
    #[arg(long)]
    listen: Option<String>,
    /// Address clients are told to connect to [config: advertised.listeners].
    #[arg(long)]
    advertised_listener: Option<String>,
    /// Data directory [config: log.dirs, default ./creek-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// This broker's id [config: node.id, default 1].
    #[arg(long)]
    node_id: Option<i32>,
    /// Any broker config as key=value; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(a)) => a,
        None => cli.serve,
    };
    init_logging(&args.log_format);
    let settings = collect_settings(&args)?;
    let config = config::BrokerConfig::from_settings(&settings)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("creek")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(config))
}

fn init_logging(format: &str) {
    // openraft warns about every heartbeat a down peer misses, which is normal in a cluster.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Defaults < config file < `CREEK_*` environment < flags.
fn collect_settings(args: &ServeArgs) -> anyhow::Result<Vec<(String, String)>> {
    let mut settings = Vec::new();
    if let Some(path) = &args.config {
        settings.extend(config::read_toml(path)?);
    }
    settings.extend(config::from_env());
    if let Some(v) = &args.listen {
        settings.push(("listeners".into(), v.clone()));
    }
    if let Some(v) = &args.advertised_listener {
        settings.push(("advertised.listeners".into(), v.clone()));
    }
    if let Some(v) = &args.data_dir {
        settings.push(("log.dirs".into(), v.display().to_string()));
    }
    if let Some(v) = args.node_id {
        settings.push(("node.id".into(), v.to_string()));
    }
    for kv in &args.set {
        let (k, v) = kv.split_once('=').with_context(|| format!("--set `{kv}` is not KEY=VALUE"))?;
        settings.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(settings)
}

async fn run(mut config: config::BrokerConfig) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the Kafka listener on {}", config.listen))?;
    config.bound(listener.local_addr()?);
    let (node, addr) = (config.node_id, config.listen);
    let advertised = format!("{}:{}", config.advertised_host, config.advertised_port);
    let data_dir = config.data_dir.clone();
    let internal = internal_rpc_config(&config)?;
    let advertised_addr = (config.advertised_host.clone(), config.advertised_port);
    // With other nodes configured this node is part of a replicated cluster, whose id every node
    // derives from the peer list; a single node is unchanged.
    let cluster_id = internal.as_ref().map(|i| cluster::cluster_id(&i.peers));
    let broker = tokio::task::spawn_blocking(move || state::Broker::open(config, cluster_id)).await??;
    let (stop_tx, stop_rx) = watch::channel(false);
    let cluster = match internal {
        Some(mut internal) => {
            internal.cluster_id = broker.cluster_id.clone();
            Some(cluster::Cluster::start(broker.clone(), internal, advertised_addr, stop_rx.clone()).await?)
        }
        None => None,
    };
    let flusher = flusher::Flusher::start();
    let groups = group::coordinator::GroupCoordinator::new(broker.clone(), flusher.clone());
    let txns = txn::coordinator::TxnCoordinator::new(broker.clone(), flusher.clone(), groups.clone());
    let ctx = handlers::Ctx { broker: broker.clone(), flusher, groups: groups.clone(), txns: txns.clone(), peer: None };
    let bg = tokio::spawn(flusher::background(broker.clone(), stop_rx.clone()));
    // Group requests get COORDINATOR_LOAD_IN_PROGRESS until __consumer_offsets is replayed (in a
    // cluster `open` returns at once; partitions load as this node comes to lead them).
    let (loading, loading_txns, loading_stop) = (groups.clone(), txns.clone(), stop_rx.clone());
    let loader = tokio::spawn(async move {
        if let Err(e) = loading.open(loading_stop.clone()).await {
            tracing::error!(error = %e, "loading __consumer_offsets failed");
        }
        // After the groups: markers it rewrites may complete transactional offset commits.
        if let Err(e) = loading_txns.open(loading_stop).await {
            tracing::error!(error = %e, "loading __transaction_state failed");
        }
    });
    let ticker = tokio::spawn(groups.run(stop_rx.clone()));
    let txn_ticker = tokio::spawn(txns.run(stop_rx.clone()));
    let server = tokio::spawn(server::serve(listener, ctx, stop_rx));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    // A cluster node is ready once a metadata quorum has registered it (its peers are up).
    let ready = async {
        if let Some(cluster) = &cluster {
            cluster.wait_registered().await;
        }
    };
    let stopped_early = tokio::select! {
        _ = ready => false,
        _ = &mut shutdown => true,
    };
    if !stopped_early {
        tracing::info!(node, %addr, %advertised, data = %data_dir.display(), cluster = %broker.cluster_id, "creek ready");
        println!("creek ready kafka={addr}");
        shutdown.await;
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = server.await;
    if let Some(cluster) = &cluster {
        let started = std::time::Instant::now();
        cluster.shutdown().await;
        tracing::info!(ms = started.elapsed().as_millis() as u64, "stopped the Raft groups");
    }
    let _ = bg.await;
    let _ = ticker.await;
    let _ = txn_ticker.await;
    // Loading creates the internal topics; it must not write topic metadata after the close.
    let _ = loader.await;
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || broker.close()).await?;
    tracing::info!(ms = started.elapsed().as_millis() as u64, "closed the logs");
    tracing::info!("stopped cleanly");
    Ok(())
}

/// The internal RPC's settings from `internal.listener` and `internal.peers`, or `None` when no
/// other node is configured. The cluster id is filled in once the data directory is open.
fn internal_rpc_config(config: &config::BrokerConfig) -> anyhow::Result<Option<rpc::RpcConfig>> {
    let peers = rpc::parse_peers(config.get("internal.peers")).map_err(anyhow::Error::msg).context("internal.peers")?;
    let node_id = rpc::NodeId::try_from(config.node_id).context("node.id must not be negative with internal.peers")?;
    if peers.iter().all(|(id, _)| *id == node_id) {
        return Ok(None);
    }
    let lanes = cluster::PRODUCER_ID_LANES as rpc::NodeId;
    if let Some(id) = std::iter::once(node_id).chain(peers.iter().map(|(id, _)| *id)).find(|&id| id >= lanes) {
        anyhow::bail!("node ids in a cluster must be below {lanes}; {id} is not");
    }
    let listen = match config.get("internal.listener") {
        "" => match peers.iter().find(|(id, _)| *id == node_id) {
            Some((_, addr)) => addr.clone(),
            None => anyhow::bail!("internal.peers has no entry for node {node_id} and internal.listener is not set"),
        },
        addr => addr.to_string(),
    };
    let listen = std::net::ToSocketAddrs::to_socket_addrs(listen.as_str())
        .with_context(|| format!("internal.listener `{listen}`"))?
        .next()
        .with_context(|| format!("internal.listener `{listen}` resolves to no address"))?;
    Ok(Some(rpc::RpcConfig { node_id, cluster_id: String::new(), listen, peers, limits: rpc::Limits::default() }))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
