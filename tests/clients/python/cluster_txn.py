"""Transactions across a Creek cluster with confluent-kafka, for tests/tests/cluster_transactions.rs.

Modes:
  spread    on --topic with --partitions partitions (led by different nodes): TXNS transactions,
            each writing RECORDS records to every partition; every third one is aborted. Then
            read_committed must see exactly the committed transactions' records (in order per
            partition) and read_uncommitted all of them. Self-checking.
  failover  like spread, --txns transactions, aborting none on purpose. Transaction --hold (0-based)
            is held after its records are flushed: prints `HOLDING txn=<k>` and waits until the
            --go file exists, then commits (so the test can kill its coordinator with the
            transaction open). With --kill-on-commit it prints `COMMITTING txn=<k>` and commits at
            once instead (so the test kills the coordinator while EndTxn is under way). A
            transaction that fails with an abortable error is aborted and reported; a fatal error
            (e.g. fenced) makes the producer start again with the same transactional.id (that
            transaction counts as aborted). Prints `COMMITTED txn=<k> ms=<commit call ms>` per
            commit, `ABORTED txn=<k>` per abort, and finally
            `OK cluster-txn failover committed=<k,...> aborted=<k,...> max_commit_ms=<ms>`.
  check     reads --topic with read_committed: exactly the records of the --committed
            transactions (comma-separated), each once, in order per partition, and nothing
            starting with --forbidden-prefix. Prints `OK cluster-txn check records=<n>`.

Prints `FAIL cluster-txn: ...` and exits 1 on a failed check.
"""

import argparse
import os
import sys
import time

from confluent_kafka import KafkaException

from txn_pipeline import log, produce_all, read_all, retrying, say, txn_producer

CLIENT = "cluster-txn"
TXNS = 6
RECORDS = 5


def fail(msg: str) -> None:
    print(f"FAIL {CLIENT}: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def values(k: int, p: int) -> list[bytes]:
    return [f"t{k}-p{p}-{i}".encode() for i in range(RECORDS)]


def write_txn(producer, args, k: int) -> None:
    for p in range(args.partitions):
        produce_all(producer, args.topic, values(k, p), partition=p)


def read_by_partition(args, isolation: str) -> dict[int, list[str]]:
    records, behind = read_all(args, args.topic, isolation, args.partitions, limit_s=90.0)
    if behind:
        fail(f"{isolation}: partitions {behind} never reported their end (last stable offset stuck?)")
    out: dict[int, list[str]] = {p: [] for p in range(args.partitions)}
    for partition, _, _, value in sorted(records, key=lambda r: (r[0], r[1])):
        out[partition].append(value.decode())
    return out


def expected(args, txns: list[int]) -> dict[int, list[str]]:
    return {p: [v.decode() for k in txns for v in values(k, p)] for p in range(args.partitions)}


def mode_spread(args) -> None:
    producer = txn_producer(args, args.txn_id)
    committed, aborted = [], []
    for k in range(TXNS):
        producer.begin_transaction()
        write_txn(producer, args, k)
        if k % 3 == 1:
            producer.flush(30)  # the aborted records really reach the logs first
            retrying("abort_transaction", lambda: producer.abort_transaction(30))
            aborted.append(k)
        else:
            retrying("commit_transaction", lambda: producer.commit_transaction(30))
            committed.append(k)
        log(f"transaction {k}: {'aborted' if k in aborted else 'committed'}")
    got = read_by_partition(args, "read_committed")
    if got != expected(args, committed):
        fail(f"read_committed saw {got}, want transactions {committed}")
    everything = read_by_partition(args, "read_uncommitted")
    if everything != expected(args, list(range(TXNS))):
        fail(f"read_uncommitted saw {everything}, want every transaction")
    n_committed = sum(len(v) for v in got.values())
    n_all = sum(len(v) for v in everything.values())
    print(f"OK {CLIENT} spread read_committed={n_committed} read_uncommitted={n_all}", flush=True)


def mode_failover(args) -> None:
    producer = txn_producer(args, args.txn_id)
    committed, aborted = [], []
    max_commit_ms = 0
    for k in range(args.txns):
        try:
            producer.begin_transaction()
            write_txn(producer, args, k)
            if k == args.hold:
                left = producer.flush(30)
                if left:
                    raise RuntimeError(f"{left} records of transaction {k} not delivered")
                if args.kill_on_commit:
                    say(f"COMMITTING txn={k}")
                else:
                    say(f"HOLDING txn={k}")
                    while not os.path.exists(args.go):
                        time.sleep(0.05)
                    log("go: committing")
            start = time.monotonic()
            retrying("commit_transaction", lambda: producer.commit_transaction(60), attempts=30)
            ms = int((time.monotonic() - start) * 1000)
            max_commit_ms = max(max_commit_ms, ms)
            committed.append(k)
            say(f"COMMITTED txn={k} ms={ms}")
        except KafkaException as e:
            err = e.args[0]
            log(f"transaction {k} failed: {err} (fatal={err.fatal()}, abortable={err.txn_requires_abort()})")
            aborted.append(k)
            if err.fatal():
                # A fenced or otherwise dead producer: a new one with the same id takes over
                # (its InitProducerId aborts whatever is open).
                producer = txn_producer(args, args.txn_id)
            else:
                retrying("abort_transaction", lambda: producer.abort_transaction(60), attempts=30)
            say(f"ABORTED txn={k}")
    print(
        f"OK {CLIENT} failover committed={','.join(map(str, committed))} aborted={','.join(map(str, aborted))} "
        f"max_commit_ms={max_commit_ms}",
        flush=True,
    )


def mode_check(args) -> None:
    committed = [int(k) for k in args.committed.split(",") if k]
    got = read_by_partition(args, "read_committed")
    want = expected(args, committed)
    seen = [v for vs in got.values() for v in vs]
    forbidden = [v for v in seen if args.forbidden_prefix and v.startswith(args.forbidden_prefix)]
    if forbidden:
        fail(f"read_committed shows records of an aborted transaction: {forbidden[:5]}")
    if got != want:
        dups = len(seen) - len(set(seen))
        missing = sorted(set(v for vs in want.values() for v in vs) - set(seen))
        extra = sorted(set(seen) - set(v for vs in want.values() for v in vs))
        fail(f"read_committed: {dups} duplicates, missing {missing[:10]}, unexpected {extra[:10]}; committed {committed}")
    print(f"OK {CLIENT} check records={len(seen)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["spread", "failover", "check"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--txn-id", default="")
    ap.add_argument("--txn-timeout-ms", type=int, default=60000)
    ap.add_argument("--txns", type=int, default=TXNS)
    ap.add_argument("--hold", type=int, default=-1)
    ap.add_argument("--go", default="")
    ap.add_argument("--kill-on-commit", action="store_true")
    ap.add_argument("--forbidden-prefix", default="")
    ap.add_argument("--committed", default="")
    ap.add_argument("--debug", default="")
    args = ap.parse_args()
    {"spread": mode_spread, "failover": mode_failover, "check": mode_check}[args.mode](args)


if __name__ == "__main__":
    main()
