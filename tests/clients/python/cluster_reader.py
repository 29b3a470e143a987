"""Reads a whole topic from the beginning up to each partition's high watermark, for tests/tests/cluster.rs.

Uses manual assignment of every partition (no consumer group: groups are not reliable in cluster
mode yet) and librdkafka's default isolation level. Prints `rec <partition> <offset> <value>` per
record and then `end <count>`; on failure `FAIL <what>` on stderr and exit 1.

Usage: cluster_reader.py --bootstrap HOST:PORT[,...] --topic NAME [--timeout-s S]
"""

import argparse
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition


def fail(what: str) -> None:
    print(f"FAIL {what}", file=sys.stderr, flush=True)
    sys.exit(1)


def main() -> None:
    p = argparse.ArgumentParser(description="read a topic to its high watermarks")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--timeout-s", type=float, default=120.0)
    args = p.parse_args()
    deadline = time.monotonic() + args.timeout_s

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            # Required by the client even without group use; nothing is committed.
            "group.id": "creek-cluster-reader",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    md = consumer.list_topics(args.topic, timeout=30)
    topic = md.topics.get(args.topic)
    if topic is None or topic.error is not None or not topic.partitions:
        fail(f"topic {args.topic} not found: {topic.error if topic else 'missing'}")
    partitions = sorted(topic.partitions)

    high: dict[int, int] = {}
    for part in partitions:
        while True:
            try:
                _low, hw = consumer.get_watermark_offsets(TopicPartition(args.topic, part), timeout=5)
                high[part] = hw
                break
            except Exception as e:  # noqa: BLE001 - retried until the deadline (leader moving)
                if time.monotonic() > deadline:
                    fail(f"watermarks of partition {part}: {e}")
                time.sleep(0.2)

    consumer.assign([TopicPartition(args.topic, part, OFFSET_BEGINNING) for part in partitions])
    position = {part: 0 for part in partitions}
    count = 0
    pending = {part for part in partitions if high[part] > 0}
    while pending:
        if time.monotonic() > deadline:
            fail(f"not at the high watermarks within {args.timeout_s} s: at {position}, high {high}")
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error() is not None:
            if msg.error().code() == KafkaError._PARTITION_EOF:
                position[msg.partition()] = max(position[msg.partition()], msg.offset())
            else:
                print(f"[{time.monotonic():.3f}] consumer error: {msg.error()}", file=sys.stderr, flush=True)
        else:
            part, offset = msg.partition(), msg.offset()
            value = msg.value().decode() if msg.value() is not None else ""
            print(f"rec {part} {offset} {value}")
            count += 1
            position[part] = max(position[part], offset + 1)
        pending = {part for part in pending if position[part] < high[part]}
    consumer.close()
    print(f"end {count}", flush=True)


if __name__ == "__main__":
    main()
