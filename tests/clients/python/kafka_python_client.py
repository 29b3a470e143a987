"""kafka-python (pure Python protocol implementation) against a running Creek broker: the scenario in scenario.py.

Usage: kafka_python_client.py --bootstrap HOST:PORT --topic NAME [--records N] [--codecs none,gzip,...]
Codecs come from python-snappy, lz4 and zstandard (kafka.codec picks them up when installed).
"""

import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, KafkaAdminClient, OffsetSpec
from kafka import codec as kafka_codec

import scenario
from scenario import Record, check

CLIENT = "kafka-python"
CODEC_NAMES = {"none": None, "gzip": "gzip", "snappy": "snappy", "lz4": "lz4", "zstd": "zstd"}


def produce(bootstrap: str, topic: str, codec: str, records: list[Record]) -> list[int]:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        compression_type=CODEC_NAMES[codec],
        acks="all",
        linger_ms=50,
        enable_idempotence=False,
    )
    futures = [
        producer.send(topic, value=r.value, key=r.key, headers=r.headers, partition=0, timestamp_ms=r.timestamp_ms)
        for r in records
    ]
    producer.flush(30)
    offsets = [f.get(timeout=30).offset for f in futures]
    producer.close(10)
    return offsets


def consume(consumer: KafkaConsumer, tp: TopicPartition, start: int, count: int) -> list[Record]:
    consumer.seek(tp, start)
    out: list[Record] = []
    deadline = time.monotonic() + 30
    while len(out) < count:
        check(time.monotonic() < deadline, f"consume from {start}: got {len(out)} of {count} records in 30 s")
        for msgs in consumer.poll(timeout_ms=500, max_records=count - len(out)).values():
            for m in msgs:
                check(m.timestamp_type == 0, f"offset {m.offset}: timestamp type {m.timestamp_type}")
                out.append(Record(m.key, m.value, list(m.headers or []), m.timestamp, m.offset))
    return out


def body() -> None:
    args = scenario.parse_args(CLIENT)
    have = {"gzip": kafka_codec.has_gzip(), "snappy": kafka_codec.has_snappy(), "lz4": kafka_codec.has_lz4()}
    have["zstd"] = kafka_codec.has_zstd()
    missing = [c for c in args.codecs if not have.get(c, True)]
    check(not missing, f"codec libraries missing for {missing}: run tests/setup.sh")
    topic = args.topic
    tp = TopicPartition(topic, 0)
    admin = KafkaAdminClient(bootstrap_servers=args.bootstrap, client_id="creek-kafka-python")

    scenario.progress("create topic")

    admin.create_topics(
        {topic: {"num_partitions": 1, "replication_factor": 1, "configs": {"retention.ms": scenario.RETENTION_MS}}},
        timeout_ms=30_000,
        wait_for_metadata=True,
    )

    base_ts = scenario.base_timestamp_ms()
    runs: list[scenario.Run] = []
    for c, codec in enumerate(args.codecs):
        run = scenario.make_run(codec, c, args.records, base_ts)
        scenario.assign_offsets(runs, run, produce(args.bootstrap, topic, codec, run.records))
        runs.append(run)
    total = len(runs) * args.records

    consumer = KafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="none",
        client_id="creek-kafka-python",
    )
    consumer.assign([tp])
    consumed = 0
    for label, start, expected in scenario.consume_plan(runs):
        got = consume(consumer, tp, start, len(expected))
        scenario.compare(expected, got, label)
        consumed += len(got)

    scenario.progress("list offsets")

    check(consumer.beginning_offsets([tp], timeout_ms=30_000)[tp] == 0, "beginning_offsets != 0")
    end = consumer.end_offsets([tp], timeout_ms=30_000)[tp]
    check(end == total, f"end_offsets = {end}, want {total}")
    probe = scenario.timestamp_probe(runs)
    found = consumer.offsets_for_times({tp: probe.timestamp_ms}, timeout_ms=30_000)[tp]
    check(found is not None and found.offset == probe.offset, f"offsets_for_times({probe.timestamp_ms}) = {found}")
    check(found is not None and found.timestamp == probe.timestamp_ms, f"offsets_for_times timestamp: {found}")
    consumer.close()

    last = runs[-1].records[-1]
    specs = {
        "earliest": (OffsetSpec.EARLIEST, 0),
        "latest": (OffsetSpec.LATEST, total),
        "max_timestamp": (OffsetSpec.MAX_TIMESTAMP, last.offset),
        "timestamp": (probe.timestamp_ms, probe.offset),
    }
    for name, (spec, want) in specs.items():
        got = admin.list_partition_offsets({tp: spec}, timeout_ms=30_000)[tp]
        check(got.offset == want, f"list_partition_offsets {name} = {got.offset}, want {want}")

    scenario.progress("describe configs")

    configs = admin.describe_configs([ConfigResource("TOPIC", topic)], config_filter="all")["topic"][topic]
    retention = configs.get("retention.ms", {}).get("value")
    cleanup = configs.get("cleanup.policy", {}).get("value")
    check(retention == scenario.RETENTION_MS, f"retention.ms = {retention}")
    check(cleanup == "delete", f"cleanup.policy = {cleanup}")
    admin.close()

    print(f"OK {CLIENT} produced={total} consumed={consumed} codecs={','.join(args.codecs)}")


if __name__ == "__main__":
    scenario.main_wrapper(CLIENT, body)
