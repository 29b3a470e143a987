"""confluent-kafka (librdkafka) against a running Creek broker: the scenario in scenario.py, plus acks=0 and acks=1.

Usage: confluent_client.py --bootstrap HOST:PORT --topic NAME [--records N] [--codecs none,gzip,...]
"""

import time

from confluent_kafka import (
    TIMESTAMP_CREATE_TIME,
    Consumer,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, OffsetSpec

import scenario
from scenario import Record, check

CLIENT = "confluent-kafka"
ACKS0_RECORDS = 3


def produce(bootstrap: str, topic: str, codec: str, acks: str, records: list[Record]) -> list[int]:
    """Produces `records` in one go and returns the acknowledged offsets in send order."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": codec,
            "enable.idempotence": False,
            "acks": acks,
            "linger.ms": 50,
            "allow.auto.create.topics": False,
        }
    )
    reports: list[tuple[int, int]] = []
    errors: list[str] = []

    def on_delivery(err, msg, seq):
        if err is not None:
            errors.append(f"record {seq}: {err}")
        else:
            reports.append((seq, msg.offset()))

    for seq, r in enumerate(records):
        producer.produce(
            topic,
            value=r.value,
            key=r.key,
            partition=0,
            headers=r.headers,
            timestamp=r.timestamp_ms,
            on_delivery=lambda err, msg, seq=seq: on_delivery(err, msg, seq),
        )
    left = producer.flush(30)
    check(left == 0, f"{codec}: {left} records not delivered in 30 s")
    check(not errors, f"{codec}: delivery errors {errors}")
    return [offset for _, offset in sorted(reports)]


def consume(consumer: Consumer, topic: str, start: int, count: int) -> list[Record]:
    consumer.assign([TopicPartition(topic, 0, start)])
    out: list[Record] = []
    deadline = time.monotonic() + 30
    while len(out) < count:
        check(time.monotonic() < deadline, f"consume from {start}: got {len(out)} of {count} records in 30 s")
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error() is not None:
            raise KafkaException(msg.error())
        ts_type, ts = msg.timestamp()
        check(ts_type == TIMESTAMP_CREATE_TIME, f"offset {msg.offset()}: timestamp type {ts_type}")
        out.append(Record(msg.key(), msg.value(), list(msg.headers() or []), ts, msg.offset()))
    consumer.unassign()
    return out


def body() -> None:
    args = scenario.parse_args(CLIENT)
    topic = args.topic
    admin = AdminClient({"bootstrap.servers": args.bootstrap})

    scenario.progress("create topic")

    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=1, replication_factor=1, config={"retention.ms": scenario.RETENTION_MS})],
        operation_timeout=30,
    )
    futures[topic].result(30)
    md = admin.list_topics(topic, timeout=30)
    check(md.topics[topic].error is None, f"metadata error {md.topics[topic].error}")
    check(len(md.topics[topic].partitions) == 1, f"metadata: {len(md.topics[topic].partitions)} partitions")

    base_ts = scenario.base_timestamp_ms()
    runs: list[scenario.Run] = []
    for c, codec in enumerate(args.codecs):
        run = scenario.make_run(codec, c, args.records, base_ts)
        # Alternate acks=all and acks=1; both must acknowledge real offsets.
        acks = "1" if c % 2 == 1 else "all"
        scenario.assign_offsets(runs, run, produce(args.bootstrap, topic, codec, acks, run.records))
        runs.append(run)
    total = len(runs) * args.records

    # confluent-kafka insists on a group.id even for assign(); nothing here uses the group: there
    # is no subscribe() and no offset commit, so the partition is read from explicit offsets only.
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": "creek-tests-unused",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error",
            "allow.auto.create.topics": False,
        }
    )
    consumed = 0
    for label, start, expected in scenario.consume_plan(runs):
        got = consume(consumer, topic, start, len(expected))
        scenario.compare(expected, got, label)
        consumed += len(got)

    # acks=0: no offsets come back, but the records must land at the end of the log, in order.
    acks0 = [
        Record(f"acks0-{i}".encode(), b"\x00acks0\xff", [], base_ts + 100_000 + i) for i in range(ACKS0_RECORDS)
    ]
    produce(args.bootstrap, topic, "none", "0", acks0)
    for i, r in enumerate(acks0):
        r.offset = total + i
    got = consume(consumer, topic, total, ACKS0_RECORDS)
    scenario.compare(acks0, got, "acks=0")
    consumed += len(got)
    total += ACKS0_RECORDS

    scenario.progress("list offsets")

    tp = TopicPartition(topic, 0)
    low, high = consumer.get_watermark_offsets(tp, timeout=30, cached=False)
    check((low, high) == (0, total), f"watermarks ({low}, {high}), want (0, {total})")
    probe = scenario.timestamp_probe(runs)
    found = consumer.offsets_for_times([TopicPartition(topic, 0, probe.timestamp_ms)], timeout=30)
    check(found[0].offset == probe.offset, f"offsets_for_times({probe.timestamp_ms}) = {found[0].offset}, want {probe.offset}")
    found = consumer.offsets_for_times([TopicPartition(topic, 0, base_ts - 60_000)], timeout=30)
    check(found[0].offset == 0, f"offsets_for_times(before all) = {found[0].offset}, want 0")
    consumer.close()

    # ListOffsets through the admin API: -2 (earliest), -1 (latest), -3 (max timestamp), a timestamp.
    specs = {
        "earliest": (OffsetSpec.earliest(), 0),
        "latest": (OffsetSpec.latest(), total),
        "max_timestamp": (OffsetSpec.max_timestamp(), total - 1),
        "timestamp": (OffsetSpec.for_timestamp(probe.timestamp_ms), probe.offset),
    }
    for name, (spec, want) in specs.items():
        result = admin.list_offsets({tp: spec}, request_timeout=30)[tp].result(30)
        check(result.offset == want, f"list_offsets {name} = {result.offset}, want {want}")

    scenario.progress("describe configs")

    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource], request_timeout=30)[resource].result(30)
    values = {name: entry.value for name, entry in configs.items()}
    check(values.get("retention.ms") == scenario.RETENTION_MS, f"retention.ms = {values.get('retention.ms')}")
    check(values.get("cleanup.policy") == "delete", f"cleanup.policy = {values.get('cleanup.policy')}")

    print(f"OK {CLIENT} produced={total} consumed={consumed} codecs={','.join(args.codecs)}")


if __name__ == "__main__":
    scenario.main_wrapper(CLIENT, body)
