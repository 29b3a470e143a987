"""Transactions with confluent-kafka (librdkafka) against a running Creek broker, for tests/tests/transactions.rs.

Modes:
  basic         three transactions on one topic: committed, aborted, committed. read_committed sees
                the two committed ones (in order), read_uncommitted all three. Self-checking.
  hang          begins a transaction, produces HANG_RECORDS records, flushes, prints `HUNG`, then
                sleeps forever: the test SIGKILLs it, leaving the transaction open.
  after-hang    commits AFTER_RECORDS records in a new transaction, then reads the topic with
                read_committed until it sees them: they are visible only once the broker aborted the
                hung transaction (its timeout), which stops holding back the last stable offset. The
                hung records must never be visible to read_committed. Prints how long it waited.
  produce-input produces --records records "in-<i>" to partition i % --partitions, not transactionally.
  pipeline      consume-transform-produce: a read_committed consumer in --group, a transactional
                producer with --txn-id; per batch of up to --batch records: begin, produce
                "out:"+value (key "<partition>:<offset>" of the input record) to the same partition
                of --output, send_offsets_to_transaction(position), commit. Exits 0 when the group's
                committed offsets reach the end of --input. Abortable errors: abort and seek back to
                the committed offsets. Fenced: prints `FENCED` and exits 3. Other fatal errors, or a
                transaction stuck for TXN_STUCK_S: exit 4 (the test starts a new process). --hold-after K: in transaction K+1, after producing
                and flushing, prints `HOLDING` and sleeps --hold-s before committing (so the test can
                SIGSTOP or SIGKILL it inside an open transaction).
                --hold-offsets-after K: in transaction K+1, after send_offsets_to_transaction, prints
                `HOLDING_OFFSETS txn=<K+1> offsets=<partition>:<offset>,...` (the offsets sent) and sleeps --hold-s
                before committing (the sent offsets must not be visible yet).
  verify        reads --output with --isolation (read_committed by default) from the beginning and
                prints `RESULT {json}`: records_in, records_out, duplicates, missing, unexpected,
                and the partitions whose end was never reached.

Prints `OK <client> ...` on success, `FAIL <client>: ...` on a failed check (exit 1).
Usage: txn_pipeline.py MODE --bootstrap HOST:PORT [--topic T | --input I --output O ...]
"""

import argparse
import faulthandler
import json
import os
import signal
import sys
import threading
import time

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

CLIENT = "confluent-kafka-txn"
EXIT_CHECK = 1
EXIT_FENCED = 3
EXIT_FATAL = 4
TXN_RECORDS = 10
HANG_RECORDS = 10
AFTER_RECORDS = 10
# librdkafka >= 2.10 re-bootstraps when every known broker is down (KIP-899), as during a broker
# SIGKILL + restart on one node. In librdkafka 2.16 that can leave send_offsets_to_transaction
# stuck past its own timeout, spinning on a decommissioned broker handle ("Handle is terminating
# in state TRY_CONNECT") without ever sending TxnOffsetCommit: a client bug, so it is turned off.
NO_REBOOTSTRAP = {"metadata.recovery.strategy": "none"}
# A transaction that takes longer than this is reported as stuck and the process exits FATAL.
TXN_STUCK_S = 90
FENCED_CODES = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


def log(msg: str) -> None:
    print(f"[{time.monotonic():.3f}] {msg}", file=sys.stderr, flush=True)


def say(msg: str) -> None:
    """A line on stdout the test may wait for."""
    print(msg, flush=True)


def fail(msg: str) -> None:
    print(f"FAIL {CLIENT}: {msg}", file=sys.stderr, flush=True)
    sys.exit(EXIT_CHECK)


def check(cond: bool, msg: str) -> None:
    if not cond:
        fail(msg)


def txn_producer(args, txn_id: str, **extra) -> Producer:
    conf = {
        "bootstrap.servers": args.bootstrap,
        "transactional.id": txn_id,
        "transaction.timeout.ms": args.txn_timeout_ms,
        "linger.ms": 5,
        "allow.auto.create.topics": False,
        **NO_REBOOTSTRAP,
    }
    if args.debug:
        conf["debug"] = args.debug
    conf.update(extra)
    producer = Producer(conf)
    retrying("init_transactions", lambda: producer.init_transactions(30))
    return producer


def retrying(what: str, op, attempts: int = 10):
    """Runs op, retrying errors librdkafka marks retriable (e.g. while a coordinator loads)."""
    for attempt in range(attempts):
        try:
            return op()
        except KafkaException as e:
            err = e.args[0]
            if not err.retriable() or attempt == attempts - 1:
                raise
            log(f"{what}: retriable error {err}, attempt {attempt + 1}")
            time.sleep(0.5)


def produce_all(producer: Producer, topic: str, values: list[bytes], partition: int = 0) -> None:
    for v in values:
        while True:
            try:
                producer.produce(topic, value=v, partition=partition)
                break
            except BufferError:
                producer.poll(0.05)


def read_all(args, topic: str, isolation: str, partitions: int, idle_s: float = 5.0, limit_s: float = 60.0):
    """Every record of `topic` (all partitions, from the beginning) visible under `isolation`,
    reading until every partition reported its end (PARTITION_EOF: the high watermark, or the last
    stable offset under read_committed) or nothing arrived for `idle_s`. Returns (records as
    (partition, offset, key, value), partitions that never reported their end). Whether the last
    stable offset caught up with the high watermark is checked by the Rust test over the wire."""
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"{CLIENT}-reader-unused",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "isolation.level": isolation,
            "allow.auto.create.topics": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    out = []
    at_end: set[int] = set()
    start = last = time.monotonic()
    while time.monotonic() - start < limit_s and time.monotonic() - last < idle_s:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        if msg.error() is None:
            out.append((msg.partition(), msg.offset(), msg.key(), msg.value()))
            at_end.discard(msg.partition())
            last = time.monotonic()
        elif msg.error().code() == KafkaError._PARTITION_EOF:
            at_end.add(msg.partition())
            if len(at_end) == partitions:
                break
        else:
            log(f"read {topic}: {msg.error()}")
    consumer.close()
    return out, sorted(set(range(partitions)) - at_end)


# ---- basic / hang / after-hang -----------------------------------------------------------------


def mode_basic(args) -> None:
    producer = txn_producer(args, f"{args.topic}-basic")
    batches = [("c1", True), ("ab", False), ("c2", True)]
    for name, commit in batches:
        producer.begin_transaction()
        produce_all(producer, args.topic, [f"{name}-{i}".encode() for i in range(TXN_RECORDS)])
        if commit:
            producer.commit_transaction(30)
        else:
            producer.flush(30)  # the aborted records really reach the log first
            producer.abort_transaction(30)
        log(f"transaction {name}: {'committed' if commit else 'aborted'}")

    def values(isolation):
        records, behind = read_all(args, args.topic, isolation, 1)
        check(not behind, f"{isolation}: the partition's end was never reached (LSO stuck?)")
        return [v.decode() for _, _, _, v in records]

    want_committed = [f"c1-{i}" for i in range(TXN_RECORDS)] + [f"c2-{i}" for i in range(TXN_RECORDS)]
    got = values("read_committed")
    check(got == want_committed, f"read_committed saw {len(got)} records {got[:5]}..., want c1-* then c2-*")
    want_all = [f"{n}-{i}" for n, _ in batches for i in range(TXN_RECORDS)]
    got_all = values("read_uncommitted")
    check(got_all == want_all, f"read_uncommitted saw {len(got_all)} records {got_all[:5]}..., want c1, ab, c2")
    print(f"OK {CLIENT} basic read_committed={len(got)} read_uncommitted={len(got_all)} aborted_hidden={TXN_RECORDS}")


def mode_hang(args) -> None:
    producer = txn_producer(args, args.txn_id)
    producer.begin_transaction()
    produce_all(producer, args.topic, [f"hung-{i}".encode() for i in range(HANG_RECORDS)])
    left = producer.flush(30)
    check(left == 0, f"{left} hung records not delivered")
    say("HUNG")
    while True:
        time.sleep(1)


def mode_after_hang(args) -> None:
    start = time.monotonic()
    producer = txn_producer(args, f"{args.topic}-after")
    producer.begin_transaction()
    produce_all(producer, args.topic, [f"after-{i}".encode() for i in range(AFTER_RECORDS)])
    producer.commit_transaction(30)
    log("after-hang transaction committed")
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"{CLIENT}-reader-unused",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([TopicPartition(args.topic, 0, OFFSET_BEGINNING)])
    seen = []
    while len([v for v in seen if v.startswith("after-")]) < AFTER_RECORDS:
        check(
            time.monotonic() - start < args.wait_s,
            f"read_committed saw {seen} within {args.wait_s} s: the hung transaction still holds back the LSO",
        )
        msg = consumer.poll(0.2)
        if msg is None or msg.error() is not None:
            continue
        seen.append(msg.value().decode())
    consumer.close()
    waited_ms = int((time.monotonic() - start) * 1000)
    hung = [v for v in seen if v.startswith("hung-")]
    check(not hung, f"read_committed saw records of the hung (aborted) transaction: {hung}")
    check(seen == [f"after-{i}" for i in range(AFTER_RECORDS)], f"read_committed saw {seen}")
    everything, _ = read_all(args, args.topic, "read_uncommitted", 1)
    hung_stored = len([1 for *_, v in everything if v.decode().startswith("hung-")])
    print(f"OK {CLIENT} after-hang visible_after_ms={waited_ms} committed_seen={len(seen)} hung_in_log={hung_stored}")


# ---- consume-transform-produce -----------------------------------------------------------------


def mode_produce_input(args) -> None:
    producer = Producer({"bootstrap.servers": args.bootstrap, "acks": "all", "linger.ms": 5, "enable.idempotence": False})
    errors = []
    for i in range(args.records):
        while True:
            try:
                producer.produce(
                    args.input,
                    value=f"in-{i}".encode(),
                    partition=i % args.partitions,
                    on_delivery=lambda err, msg: err and errors.append(str(err)),
                )
                break
            except BufferError:
                producer.poll(0.05)
    check(producer.flush(60) == 0, "input records not delivered in 60 s")
    check(not errors, f"input delivery errors: {errors[:3]}")
    print(f"OK {CLIENT} produce-input records={args.records}")


def is_fenced(err: KafkaError) -> bool:
    # librdkafka reports fencing as _FENCED; a fatal error may also carry the broker's code.
    return err.code() in FENCED_CODES or "fenced" in err.str().lower()


def rewind(consumer: Consumer) -> None:
    """Seeks every assigned partition back to the group's committed offset."""
    assignment = consumer.assignment()
    if not assignment:
        return
    for tp in consumer.committed(assignment, timeout=30):
        tp.offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
        consumer.seek(tp)
        log(f"rewound {tp.topic}/{tp.partition} to {tp.offset}")


def group_done(consumer: Consumer, args, end: dict[int, int]) -> bool:
    try:
        committed = consumer.committed([TopicPartition(args.input, p) for p in end], timeout=10)
    except KafkaException as e:
        log(f"committed(): {e}")
        return False
    return all(tp.offset >= end[tp.partition] for tp in committed)


def stuck(txn: int) -> None:
    say(f"FATAL transaction {txn} stuck for {TXN_STUCK_S} s")
    faulthandler.dump_traceback(all_threads=False)
    os._exit(EXIT_FATAL)


def mode_pipeline(args) -> None:
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "max.poll.interval.ms": 60000,
            "allow.auto.create.topics": False,
            **NO_REBOOTSTRAP,
        }
    )
    try:
        producer = txn_producer(args, args.txn_id)
    except KafkaException as e:
        say(f"{'FENCED' if is_fenced(e.args[0]) else 'FATAL'} init_transactions: {e.args[0]}")
        sys.exit(EXIT_FENCED if is_fenced(e.args[0]) else EXIT_FATAL)
    md = consumer.list_topics(args.input, timeout=30)
    end = {}
    for p in md.topics[args.input].partitions:
        _, end[p] = consumer.get_watermark_offsets(TopicPartition(args.input, p), timeout=30, cached=False)
    log(f"input end offsets {end}")
    consumer.subscribe([args.input])
    txns = aborted = total = 0
    while True:
        msgs = consumer.consume(args.batch, 1.0)
        for m in msgs:
            if m.error() is not None:
                log(f"consume: {m.error()}")
        msgs = [m for m in msgs if m.error() is None]
        if not msgs:
            if group_done(consumer, args, end):
                break
            continue
        # A watchdog, so that a call stuck past its own timeout ends as FATAL (the test starts a new
        # process) rather than as a test timeout; the line says which transaction stuck.
        watchdog = threading.Timer(TXN_STUCK_S, stuck, args=(txns + 1,))
        watchdog.start()
        try:
            producer.begin_transaction()
            for m in msgs:
                key = f"{m.partition()}:{m.offset()}".encode()
                while True:
                    try:
                        producer.produce(args.output, key=key, value=b"out:" + m.value(), partition=m.partition())
                        break
                    except BufferError:
                        producer.poll(0.05)
            if args.hold_after is not None and txns == args.hold_after:
                producer.flush(30)
                say(f"HOLDING txn={txns + 1} records={len(msgs)}")
                time.sleep(args.hold_s)
                log("hold over: committing")
            positions = consumer.position(consumer.assignment())
            producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
            if args.hold_offsets_after is not None and txns == args.hold_offsets_after:
                sent = ",".join(f"{tp.partition}:{tp.offset}" for tp in positions)
                say(f"HOLDING_OFFSETS txn={txns + 1} offsets={sent}")
                time.sleep(args.hold_s)
            retrying("commit_transaction", lambda: producer.commit_transaction(30))
            watchdog.cancel()
            txns += 1
            total += len(msgs)
            say(f"COMMITTED txn={txns} records={len(msgs)} total={total}")
            if args.slow_ms:
                time.sleep(args.slow_ms / 1000)
        except KafkaException as e:
            watchdog.cancel()
            err = e.args[0]
            if is_fenced(err):
                say(f"FENCED {err}")
                sys.exit(EXIT_FENCED)
            if err.fatal() or not err.txn_requires_abort() and not err.retriable():
                say(f"FATAL {err}")
                sys.exit(EXIT_FATAL)
            log(f"transaction failed ({err}): aborting and rewinding")
            try:
                retrying("abort_transaction", lambda: producer.abort_transaction(30))
                rewind(consumer)
            except KafkaException as e2:
                err2 = e2.args[0]
                say(f"{'FENCED' if is_fenced(err2) else 'FATAL'} while aborting: {err2}")
                sys.exit(EXIT_FENCED if is_fenced(err2) else EXIT_FATAL)
            aborted += 1
    consumer.close()
    print(f"OK {CLIENT} pipeline transactions={txns} aborted={aborted} records={total}", flush=True)


def mode_verify(args) -> None:
    records, behind = read_all(args, args.output, args.isolation, args.partitions, idle_s=5.0, limit_s=120.0)
    want = {f"out:in-{i}" for i in range(args.records)}
    counts: dict[str, int] = {}
    bad_keys = 0
    for partition, _, key, value in records:
        v = value.decode()
        counts[v] = counts.get(v, 0) + 1
        # The key names the input record: "<partition>:<offset>" on the same partition.
        if key is None or not key.decode().startswith(f"{partition}:"):
            bad_keys += 1
    result = {
        "records_in": args.records,
        "records_out": len(records),
        "distinct": len(counts),
        "duplicates": sum(n - 1 for n in counts.values()),
        "missing": len(want - counts.keys()),
        "unexpected": len(counts.keys() - want),
        "bad_keys": bad_keys,
        "partitions_not_at_end": behind,
    }
    say(f"RESULT {json.dumps(result)}")
    print(f"OK {CLIENT} verify", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description="confluent-kafka transactions against Creek")
    p.add_argument("mode", choices=["basic", "hang", "after-hang", "produce-input", "pipeline", "verify"])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic")
    p.add_argument("--input")
    p.add_argument("--output")
    p.add_argument("--group")
    p.add_argument("--txn-id")
    p.add_argument("--txn-timeout-ms", type=int, default=60000)
    p.add_argument("--records", type=int, default=5000)
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--hold-after", type=int)
    p.add_argument("--hold-s", type=float, default=3.0)
    p.add_argument("--hold-offsets-after", type=int, help="like --hold-after, holding after the offsets were sent")
    p.add_argument("--slow-ms", type=int, default=0)
    p.add_argument("--wait-s", type=float, default=60.0)
    p.add_argument("--debug", help="librdkafka debug contexts for the transactional producer (e.g. eos,protocol)")
    p.add_argument("--isolation", default="read_committed", choices=["read_committed", "read_uncommitted"])
    args = p.parse_args()
    {
        "basic": mode_basic,
        "hang": mode_hang,
        "after-hang": mode_after_hang,
        "produce-input": mode_produce_input,
        "pipeline": mode_pipeline,
        "verify": mode_verify,
    }[args.mode](args)


if __name__ == "__main__":
    # `kill -USR1 <pid>` prints where a stuck run is.
    faulthandler.register(signal.SIGUSR1)
    try:
        main()
    except KafkaException as e:
        err = e.args[0]
        print(f"FAIL {CLIENT}: {err} (fatal={err.fatal()}, code={err.code()})", file=sys.stderr, flush=True)
        sys.exit(EXIT_FATAL if err.fatal() else EXIT_CHECK)
