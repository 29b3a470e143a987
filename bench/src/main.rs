//! `creek-bench`: run a workload against any Kafka bootstrap address, or run the null sink.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use creek_bench::load::{Keys, Workload};
use creek_bench::{load, presets, sink};
use creek_protocol::budget::BudgetAllocator;

/// The sink decodes untrusted request bodies, which requires the budget allocator.
#[global_allocator]
static ALLOC: BudgetAllocator = BudgetAllocator;

#[derive(Parser)]
#[command(name = "creek-bench", about = "Load generator and null sink for Kafka-compatible brokers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a workload (a preset, adjusted by any flag) and report.
    Run(RunArgs),
    /// Run the null sink (the ceiling to compare a broker with).
    Sink {
        #[arg(long, default_value = "127.0.0.1:9192")]
        listen: String,
        #[arg(long, default_value = "/tmp/creek-bench-sink")]
        data: PathBuf,
        #[arg(long, default_value_t = 16)]
        partitions: i32,
    },
    /// List the presets.
    Presets,
    /// Idle cost: create a topic, wait until every partition has a leader, let it settle, then
    /// report each broker's CPU (cores) and RSS while nothing is produced.
    Idle {
        #[arg(long, default_value = "127.0.0.1:9092")]
        bootstrap: String,
        #[arg(long, default_value = "idle")]
        topic: String,
        #[arg(long, default_value_t = 1000)]
        partitions: i32,
        /// Broker process ids to watch, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        pids: Vec<u32>,
        #[arg(long, default_value_t = 15)]
        settle_s: u64,
        #[arg(long, default_value_t = 60)]
        measure_s: u64,
    },
    /// Print a markdown table from JSON-lines reports, with ratios to the runs labelled `--base`.
    Table {
        /// File of JSON lines written by `run --json`.
        results: PathBuf,
        #[arg(long, default_value = "sink")]
        base: String,
    },
    /// Print each broker's per-round ratio of two presets' produce MB/s and the median, from
    /// JSON-lines reports of repeated rounds (`bench/run-rounds.sh`).
    Rounds {
        /// File of JSON lines written by `run --json`.
        results: PathBuf,
        #[arg(long, default_value = "p1000-keyed")]
        of: String,
        #[arg(long, default_value = "acks1-16p")]
        to: String,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, default_value = "acks1-16p")]
    preset: String,
    /// Name of the broker under test in reports (default: the bootstrap address).
    #[arg(long)]
    label: Option<String>,
    #[arg(long)]
    topic: Option<String>,
    #[arg(long)]
    partitions: Option<i32>,
    #[arg(long)]
    message_bytes: Option<usize>,
    #[arg(long)]
    messages: Option<u64>,
    /// Produce for this many seconds instead of a message count.
    #[arg(long)]
    duration_s: Option<u64>,
    /// 0, 1 or all.
    #[arg(long)]
    acks: Option<String>,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long)]
    compression: Option<String>,
    #[arg(long)]
    producers: Option<usize>,
    #[arg(long)]
    consumers: Option<usize>,
    /// none, random or round-robin:N.
    #[arg(long)]
    keys: Option<Keys>,
    /// Total messages per second (0 = unlimited).
    #[arg(long)]
    rate: Option<u64>,
    #[arg(long)]
    linger_ms: Option<u64>,
    #[arg(long)]
    batch_bytes: Option<u64>,
    /// true or false: idempotent producers.
    #[arg(long)]
    idempotence: Option<bool>,
    /// Commit a transaction every N messages per producer (0 = none).
    #[arg(long)]
    transaction_messages: Option<u64>,
    /// The broker's process id, for CPU-seconds per GB and peak RSS.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// A librdkafka property for every client, KEY=VALUE (repeatable; applied last).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print JSON lines instead of the table.
    #[arg(long)]
    json: bool,
}

fn workload(a: &RunArgs) -> anyhow::Result<Workload> {
    let mut w = presets::preset(&a.preset, &a.bootstrap)
        .with_context(|| format!("unknown preset {} (see `creek-bench presets`)", a.preset))?;
    macro_rules! apply {
        ($($field:ident),*) => { $( if let Some(v) = a.$field.clone() { w.$field = v; } )* };
    }
    apply!(
        label,
        topic,
        partitions,
        message_bytes,
        messages,
        acks,
        compression,
        producers,
        consumers,
        keys,
        rate,
        linger_ms,
        batch_bytes,
        idempotence,
        transaction_messages
    );
    w.duration = a.duration_s.map(Duration::from_secs);
    w.broker_pid = a.broker_pid;
    for kv in &a.set {
        let (k, v) = kv.split_once('=').with_context(|| format!("--set {kv}: expected KEY=VALUE"))?;
        w.client_properties.push((k.trim().to_string(), v.trim().to_string()));
    }
    anyhow::ensure!(w.producers > 0, "--producers must be at least 1");
    anyhow::ensure!(w.message_bytes >= 8, "--message-bytes must be at least 8 (the send timestamp)");
    Ok(w)
}

fn read_reports(path: &std::path::Path) -> anyhow::Result<Vec<creek_bench::stats::Report>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str).collect::<Result<_, _>>()?)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Presets => {
            for (name, what) in presets::PRESETS {
                println!("{name:14} {what}");
            }
            Ok(())
        }
        Command::Table { results, base } => {
            print!("{}", creek_bench::stats::side_by_side(&read_reports(&results)?, &base));
            Ok(())
        }
        Command::Rounds { results, of, to } => {
            print!("{}", creek_bench::stats::rounds(&read_reports(&results)?, &of, &to));
            Ok(())
        }
        Command::Sink { listen, data, partitions } => runtime.block_on(sink::run(&listen, &data, partitions)),
        Command::Idle { bootstrap, topic, partitions, pids, settle_s, measure_s } => {
            runtime.block_on(creek_bench::load::idle(
                &bootstrap,
                &topic,
                partitions,
                &pids,
                Duration::from_secs(settle_s),
                Duration::from_secs(measure_s),
            ))
        }
        Command::Run(args) => {
            let w = workload(&args)?;
            let reports = runtime.block_on(load::run(&w, !args.json))?;
            for r in reports {
                if args.json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    print!("{}", r.table());
                }
            }
            Ok(())
        }
    }
}
