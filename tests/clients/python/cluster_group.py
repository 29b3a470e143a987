"""A confluent-kafka consumer group on a Creek cluster whose coordinator is killed mid-stream.

Produces RECORDS records to TOPIC, then one member of GROUP consumes half of them, committing
synchronously every COMMIT_EVERY records, prints `COMMITTED {json}` (partition -> next offset) and
`KILL_NOW`, pauses (still polling, so it stays in the group) until the file --go exists, then:
  - asks the group's new coordinator for its committed offsets (OffsetFetch through a consumer
    of the group that does not join it, retried until answered) and checks they are the ones
    committed before the kill (`SURVIVED ms=...`);
  - resumes, consumes the rest, commits (retrying a failed commit), and prints `FIRST_COMMIT
    ms=... after_resume_ms=...` for the first commit that succeeds after --go;
  - checks every record was delivered, closes, and a fresh consumer of the same group receives
    nothing (the committed offsets are at the end; not with --skip-fresh), then prints `DONE`.

CLUSTER_GROUP_DEBUG=1 turns on librdkafka's group log (debug=cgrp) for the last consumer.

With --expect JSON it only checks that the group's committed offsets are JSON (`OFFSETS {json}`).

Usage: cluster_group.py --bootstrap H:P,... --topic T --group G (--go PATH | --expect JSON)
"""

import argparse
import json
import os
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

RECORDS = 300
COMMIT_EVERY = 10
PARTITIONS = 3


def fail(msg: str) -> None:
    print(f"FAIL cluster_group: {msg}", flush=True)
    sys.exit(1)


def log(msg: str) -> None:
    print(f"[{time.monotonic():.3f}] {msg}", file=sys.stderr, flush=True)


def produce(bootstrap: str, topic: str) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(RECORDS):
        p.produce(topic, key=str(i).encode(), value=f"v{i}".encode(), partition=i % PARTITIONS)
    if p.flush(60) != 0:
        fail("records not acknowledged")


def commit(consumer: Consumer, offsets: list, limit_s: float) -> float:
    """Commits `offsets`, retrying until it succeeds; returns when it did (monotonic)."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
            return time.monotonic()
        except KafkaException as e:
            if time.monotonic() > deadline:
                fail(f"commit did not succeed within {limit_s}s: {e}")
            log(f"commit failed, retrying: {e}")
            time.sleep(0.2)


def group_offsets(conf: dict, topic: str, limit_s: float) -> dict:
    """The group's committed offsets (OffsetFetch to its coordinator) as a consumer of the group
    that does not join it sees them, retried until the coordinator answers."""
    deadline = time.monotonic() + limit_s
    checker = Consumer(conf)
    try:
        while True:
            try:
                res = checker.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=5)
                return {tp.partition: tp.offset for tp in res if tp.error is None and tp.offset >= 0}
            except KafkaException as e:
                if time.monotonic() > deadline:
                    fail(f"committed offsets not readable within {limit_s}s: {e}")
                log(f"committed() failed, retrying: {e}")
                time.sleep(0.2)
    finally:
        checker.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--go")
    ap.add_argument("--expect", help="only check the group's committed offsets are this JSON")
    ap.add_argument("--skip-fresh", action="store_true", help="no fresh member at the end")
    a = ap.parse_args()
    if a.expect is not None:
        conf = {"bootstrap.servers": a.bootstrap, "group.id": a.group, "enable.auto.commit": False}
        want = {int(p): o for p, o in json.loads(a.expect).items()}
        got = group_offsets(conf, a.topic, 60)
        if got != want:
            fail(f"committed offsets {got} != {want}")
        print(f"OFFSETS {json.dumps(got, sort_keys=True)}", flush=True)
        return
    if a.go is None:
        fail("--go is required")

    produce(a.bootstrap, a.topic)
    conf = {
        "bootstrap.servers": a.bootstrap,
        "group.id": a.group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 1000,
    }
    consumer = Consumer(conf)
    consumer.subscribe([a.topic])
    seen: set = set()
    next_offset: dict = {}
    since_commit = 0
    committed: dict = {}
    first_commit_after_go = None
    go_at = None
    resumed_at = None
    deadline = time.monotonic() + 120
    while len(seen) < RECORDS:
        if time.monotonic() > deadline:
            fail(f"only {len(seen)} of {RECORDS} records consumed")
        m = consumer.poll(0.5)
        if m is None or m.error():
            continue
        seen.add(int(m.key()))
        next_offset[m.partition()] = m.offset() + 1
        since_commit += 1
        if since_commit < COMMIT_EVERY and len(seen) < RECORDS:
            continue
        since_commit = 0
        offsets = [TopicPartition(a.topic, p, o) for p, o in next_offset.items()]
        done = commit(consumer, offsets, 60)
        committed = dict(next_offset)
        if go_at is not None and first_commit_after_go is None:
            first_commit_after_go = done
            print(f"FIRST_COMMIT ms={int((done - go_at) * 1000)} after_resume_ms={int((done - resumed_at) * 1000)}", flush=True)
        if go_at is None and len(seen) >= RECORDS // 2:
            print(f"COMMITTED {json.dumps(committed, sort_keys=True)}", flush=True)
            print("KILL_NOW", flush=True)
            assignment = consumer.assignment()
            consumer.pause(assignment)
            while not os.path.exists(a.go):
                consumer.poll(0.1)
            go_at = time.monotonic()
            survived = group_offsets(conf, a.topic, 60)
            want = {int(p): o for p, o in committed.items()}
            if survived != want:
                fail(f"offsets after the kill {survived} != committed before it {want}")
            print(f"SURVIVED ms={int((time.monotonic() - go_at) * 1000)} offsets={json.dumps(survived)}", flush=True)
            consumer.resume(assignment)
            resumed_at = time.monotonic()
            deadline = time.monotonic() + 120
    if sorted(seen) != list(range(RECORDS)):
        fail(f"records missing: {sorted(set(range(RECORDS)) - seen)[:20]}")
    consumer.close()

    final = group_offsets(conf, a.topic, 30)
    if final != committed:
        fail(f"final offsets {final} != last committed {committed}")
    if a.skip_fresh:
        print(f"DONE records={len(seen)} offsets={json.dumps(final, sort_keys=True)}", flush=True)
        return
    fresh = Consumer(dict(conf, debug="cgrp") if os.environ.get("CLUSTER_GROUP_DEBUG") else conf)
    fresh.subscribe([a.topic])
    got = 0
    until = time.monotonic() + 60
    assigned_at = None
    while time.monotonic() < until and (assigned_at is None or time.monotonic() < assigned_at + 3):
        m = fresh.poll(0.5)
        if m is not None and not m.error():
            got += 1
        if assigned_at is None and fresh.assignment():
            assigned_at = time.monotonic()
    if assigned_at is None:
        fail(f"a fresh member of {a.group} got no assignment within 60s")
    fresh.close()
    if got:
        fail(f"a fresh member of {a.group} received {got} records: committed offsets were lost")
    print(f"DONE records={len(seen)} offsets={json.dumps(final, sort_keys=True)}", flush=True)


if __name__ == "__main__":
    main()
