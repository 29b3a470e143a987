//! Creek benchmarks: the load generator, the Kafka-protocol null sink and micro-benchmarks land
//! here with the benchmark issue. Nothing is measured yet.
