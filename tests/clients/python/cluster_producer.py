"""An idempotent producer writing numbered records until SIGTERM, for tests/tests/cluster.rs.

The test kills cluster nodes while this runs; the client must fail over to the new leader on its
own (librdkafka refreshes metadata on NOT_LEADER_OR_FOLLOWER or a dead connection). Record <seq>
has value "<run>-<seq>" and no key; seq counts from 0 in send order.

Stdout, one line per delivery report, flushed as it happens:
  ack <seq> <partition> <offset> <monotonic_ms> <produced_ms>
  err <seq> <error>
and on SIGTERM, after flushing for at most --flush-timeout-s:
  done sent=<n> acked=<m>
monotonic_ms is time.monotonic() (CLOCK_MONOTONIC) in ms when the report arrived; produced_ms is
when the record was handed to the client, so a test can tell records sent before an event from
records sent after it.

Usage: cluster_producer.py --bootstrap HOST:PORT[,...] --topic NAME [--run LABEL] [--rate N]
                           [--request-timeout-ms MS]

--request-timeout-ms is librdkafka's request.timeout.ms, which is also the Produce timeout_ms: how
long a leader that lost its quorum may hold a request. An idempotent producer waits for its
in-flight requests to the old leader before it writes to the new one, so this bounds the stall
when a leader is cut off.
"""

import argparse
import signal
import sys
import time

from confluent_kafka import Producer


def now_ms() -> int:
    return int(time.monotonic() * 1000)


def main() -> None:
    p = argparse.ArgumentParser(description="idempotent producer for the Creek cluster tests")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--run", default="run", help="value prefix")
    p.add_argument("--rate", type=int, default=1000, help="records per second at most")
    p.add_argument("--flush-timeout-s", type=float, default=30.0)
    p.add_argument("--request-timeout-ms", type=int, default=30000)
    args = p.parse_args()

    stop = False

    def on_term(_signum, _frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)

    def on_error(err):
        # Dead nodes are expected; the test judges by the delivery reports.
        print(f"[{time.monotonic():.3f}] client error: {err}", file=sys.stderr, flush=True)

    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "request.timeout.ms": args.request_timeout_ms,
            "allow.auto.create.topics": False,
            "error_cb": on_error,
        }
    )
    sent = 0
    acked = 0
    produced_at: dict[int, int] = {}

    def report(seq: int):
        def on_delivery(err, msg):
            nonlocal acked
            produced = produced_at.pop(seq, -1)
            if err is not None:
                print(f"err {seq} {err}", flush=True)
            else:
                acked += 1
                print(f"ack {seq} {msg.partition()} {msg.offset()} {now_ms()} {produced}", flush=True)

        return on_delivery

    interval_s = 1.0 / max(args.rate, 1)
    next_send = time.monotonic()
    while not stop:
        now = time.monotonic()
        if now < next_send:
            producer.poll(min(next_send - now, 0.05))
            continue
        next_send = max(next_send + interval_s, now - 1.0)  # no burst after a long stall
        seq = sent
        try:
            produced_at[seq] = now_ms()
            producer.produce(args.topic, value=f"{args.run}-{seq}".encode(), on_delivery=report(seq))
            sent += 1
        except BufferError:
            produced_at.pop(seq, None)
            producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(args.flush_timeout_s)
    print(f"done sent={sent} acked={acked} unreported={left}", flush=True)


if __name__ == "__main__":
    main()
