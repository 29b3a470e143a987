//! Creek's measuring stick: a load generator that works against any Kafka-compatible address
//! (`load`), a Kafka-protocol null sink that is the ceiling to compare with (`sink`), named
//! workloads (`presets`) and the report format (`stats`). Micro-benchmarks live in `benches/`.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let w = creek_bench::presets::preset("acks1-16p", "127.0.0.1:9092").unwrap();
//! for report in creek_bench::load::run(&w, true).await? {
//!     print!("{}", report.table());
//! }
//! # Ok(())
//! # }
//! ```

pub mod load;
pub mod presets;
pub mod sink;
pub mod stats;
