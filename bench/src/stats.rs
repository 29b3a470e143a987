//! What a run measured: latency histograms, throughput, and the broker's CPU time and memory read
//! from `/proc/<pid>`, with the human table and JSON report.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latency in microseconds, 1 µs to 1 hour, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Latency {
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            samples: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// CPU time and resident memory of a process, sampled from `/proc`.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub cpu_s: f64,
    pub rss_bytes: u64,
}

fn clock_ticks_per_s() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Reads utime+stime and VmRSS of `pid`; `None` if the process is gone.
pub fn sample(pid: u32, ticks_per_s: f64) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(ProcSample { cpu_s: (utime + stime) / ticks_per_s, rss_bytes: rss_kb * 1024 })
}

/// Samples a broker process in the background: CPU at start and end, peak RSS in between.
pub struct BrokerWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<(Option<ProcSample>, Option<ProcSample>, u64)>,
}

impl BrokerWatch {
    pub fn start(pid: u32) -> BrokerWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let ticks = clock_ticks_per_s();
            let first = sample(pid, ticks);
            let mut peak = first.map(|s| s.rss_bytes).unwrap_or(0);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if let Some(s) = sample(pid, ticks) {
                    peak = peak.max(s.rss_bytes);
                }
            }
            (first, sample(pid, ticks), peak)
        });
        BrokerWatch { stop, handle }
    }

    /// Stops sampling: (CPU seconds used during the watch, peak RSS bytes).
    pub fn finish(self) -> Option<(f64, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (first, last, peak) = self.handle.join().ok()?;
        Some((last?.cpu_s - first?.cpu_s, peak))
    }
}

/// One run's results.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Report {
    pub name: String,
    /// Which broker this was ("creek", "sink", ...), for side-by-side tables.
    pub label: String,
    pub bootstrap: String,
    pub phase: String,
    pub messages: u64,
    pub bytes: u64,
    pub errors: u64,
    pub seconds: f64,
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    pub ack_latency: Option<Latency>,
    pub e2e_latency: Option<Latency>,
    pub broker_cpu_s: Option<f64>,
    pub broker_cpu_s_per_gb: Option<f64>,
    pub broker_peak_rss_mb: Option<f64>,
}

impl Report {
    pub fn finish(&mut self, elapsed: Duration, broker: Option<(f64, u64)>) {
        self.seconds = elapsed.as_secs_f64();
        self.msgs_per_s = self.messages as f64 / self.seconds.max(1e-9);
        self.mb_per_s = self.bytes as f64 / 1e6 / self.seconds.max(1e-9);
        if let Some((cpu, rss)) = broker {
            self.broker_cpu_s = Some(cpu);
            self.broker_cpu_s_per_gb = Some(cpu / (self.bytes as f64 / 1e9).max(1e-12));
            self.broker_peak_rss_mb = Some(rss as f64 / 1e6);
        }
    }

    /// One human-readable block.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} [{}] {}: {} msgs, {:.1} MB in {:.2} s = {:.0} msgs/s, {:.1} MB/s, {} errors\n",
            self.name,
            self.phase,
            self.bootstrap,
            self.messages,
            self.bytes as f64 / 1e6,
            self.seconds,
            self.msgs_per_s,
            self.mb_per_s,
            self.errors
        );
        for (what, l) in [("ack latency", &self.ack_latency), ("end-to-end latency", &self.e2e_latency)] {
            if let Some(l) = l {
                out += &format!(
                    "  {what}: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} samples)\n",
                    l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, l.samples
                );
            }
        }
        if let (Some(cpu), Some(per_gb), Some(rss)) =
            (self.broker_cpu_s, self.broker_cpu_s_per_gb, self.broker_peak_rss_mb)
        {
            out += &format!("  broker: {cpu:.2} CPU-s, {per_gb:.2} CPU-s/GB, peak RSS {rss:.0} MB\n");
        }
        out
    }
}

/// Prints a progress line at most once a second.
pub struct Progress {
    start: Instant,
    last: Instant,
}

impl Progress {
    pub fn new() -> Progress {
        let now = Instant::now();
        Progress { start: now, last: now }
    }

    pub fn tick(&mut self, what: &str, messages: u64, bytes: u64) {
        if self.last.elapsed() >= Duration::from_secs(1) {
            self.last = Instant::now();
            let s = self.start.elapsed().as_secs_f64();
            eprint!("\r{what}: {messages} msgs, {:.1} MB/s over {s:.0} s   ", bytes as f64 / 1e6 / s.max(1e-9));
        }
    }

    pub fn done(&self) {
        eprintln!();
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

/// A markdown table pairing each preset's phase on `base` (the ceiling) with every other label.
pub fn side_by_side(reports: &[Report], base: &str) -> String {
    let mut out = String::from(
        "| preset | phase | broker | msgs/s | MB/s | ratio to sink | p99 ack ms | p99 e2e ms | CPU-s/GB | CPU ratio | peak RSS MB |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    for r in reports {
        let ceiling = reports.iter().find(|c| c.label == base && c.name == r.name && c.phase == r.phase);
        let ratio = ceiling.filter(|c| c.mb_per_s > 0.0).map(|c| r.mb_per_s / c.mb_per_s);
        let cpu_ratio = ceiling.and_then(|c| Some(r.broker_cpu_s_per_gb? / c.broker_cpu_s_per_gb?));
        out += &format!(
            "| {} | {} | {} | {:.0} | {:.1} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.phase,
            r.label,
            r.msgs_per_s,
            r.mb_per_s,
            fmt(ratio),
            fmt(r.ack_latency.as_ref().map(|l| l.p99_ms)),
            fmt(r.e2e_latency.as_ref().map(|l| l.p99_ms)),
            fmt(r.broker_cpu_s_per_gb),
            fmt(cpu_ratio),
            fmt(r.broker_peak_rss_mb),
        );
    }
    out
}

/// Repeated rounds of two presets per broker, as a markdown table: each round's produce MB/s of
/// preset `of` and preset `to` (the i-th run of each, in file order), their ratio, and the
/// median of the ratios. Single runs on a shared machine vary too much to compare alone.
pub fn rounds(reports: &[Report], of: &str, to: &str) -> String {
    let mut labels: Vec<&str> = Vec::new();
    for r in reports {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
    }
    let mut out = format!("| broker | round | {to} MB/s | {of} MB/s | {of} / {to} |\n|---|---|---|---|---|\n");
    for label in labels {
        let runs = |name: &str| -> Vec<f64> {
            reports
                .iter()
                .filter(|r| r.label == label && r.name == name && r.phase == "produce")
                .map(|r| r.mb_per_s)
                .collect()
        };
        let (a, b) = (runs(of), runs(to));
        let mut ratios = Vec::new();
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            let ratio = a / b.max(1e-9);
            ratios.push(ratio);
            out += &format!("| {label} | {} | {b:.1} | {a:.1} | {:.0}% |\n", i + 1, ratio * 100.0);
        }
        if let Some(m) = median(&mut ratios) {
            let (ma, mb) = (median(&mut a.clone()).unwrap_or(0.0), median(&mut b.clone()).unwrap_or(0.0));
            out += &format!("| {label} | median | {mb:.1} | {ma:.1} | {:.0}% |\n", m * 100.0);
        }
    }
    out
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

#[cfg(test)]
mod rounds_tests {
    use super::*;

    fn run(label: &str, name: &str, mb_per_s: f64) -> Report {
        Report { label: label.into(), name: name.into(), phase: "produce".into(), mb_per_s, ..Report::default() }
    }

    #[test]
    fn rounds_pair_runs_in_order_per_broker_and_take_the_median_ratio() {
        let reports = [
            run("creek", "16p", 500.0),
            run("creek", "p1000", 400.0),
            run("sink", "16p", 400.0),
            run("sink", "p1000", 200.0),
            run("creek", "16p", 400.0),
            run("creek", "p1000", 200.0),
            run("creek", "16p", 600.0),
            run("creek", "p1000", 420.0),
        ];
        let table = rounds(&reports, "p1000", "16p");
        assert!(table.contains("| creek | 1 | 500.0 | 400.0 | 80% |"), "{table}");
        assert!(table.contains("| creek | 2 | 400.0 | 200.0 | 50% |"), "{table}");
        assert!(table.contains("| creek | 3 | 600.0 | 420.0 | 70% |"), "{table}");
        assert!(table.contains("| creek | median | 500.0 | 400.0 | 70% |"), "{table}");
        assert!(table.contains("| sink | median | 400.0 | 200.0 | 50% |"), "{table}");
        assert_eq!(median(&mut [3.0, 1.0, 2.0, 10.0]), Some(2.5));
    }
}
