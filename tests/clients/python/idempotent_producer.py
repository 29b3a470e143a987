"""An idempotent producer writing numbered records, for tests/tests/idempotence.rs.

The test puts a fault-injecting proxy between this program and the broker; the proxy drops some
Produce responses and closes the connection, so the client retries batches the broker already
appended. This program only produces and reports delivery: the Rust test reads the topic directly
from the broker and checks every record is there exactly once, in send order per partition.

Record i has value "<label>-<i>", key "k<i % partitions>", and goes to partition i % partitions.

Clients:
  confluent-kafka        librdkafka, enable.idempotence=true, acks=all, up to 5 requests in flight
  aiokafka               enable_idempotence=True (acks=all, one batch in flight per partition)
  confluent-kafka-plain  the control: enable.idempotence=false, acks=all, retries, 1 in flight;
                         retried batches are appended twice, which the test expects to see

Usage: idempotent_producer.py CLIENT --bootstrap HOST:PORT --topic NAME [--records N] [--partitions P]
                              [--request-timeout-ms MS]
Prints `OK <client> sent=N delivered=N` on success, `FAIL <client>: <what>` and exit 1 otherwise.
"""

import argparse
import asyncio
import sys
import time

CLIENTS = ["confluent-kafka", "aiokafka", "confluent-kafka-plain"]
TIMEOUT_S = 120


def log(msg: str) -> None:
    print(f"[{time.monotonic():.3f}] {msg}", file=sys.stderr, flush=True)


def records(label: str, n: int, partitions: int) -> list[tuple[int, bytes, bytes]]:
    return [(i % partitions, f"k{i % partitions}".encode(), f"{label}-{i}".encode()) for i in range(n)]


def run_confluent(args: argparse.Namespace, idempotent: bool) -> tuple[int, list[str]]:
    from confluent_kafka import Producer

    conf = {
        "bootstrap.servers": args.bootstrap,
        "acks": "all",
        "enable.idempotence": idempotent,
        # Small batches and a short linger: many Produce requests, so many chances to drop one.
        "linger.ms": 2,
        "batch.num.messages": 5,
        "max.in.flight.requests.per.connection": 5 if idempotent else 1,
        "retries": 1_000_000,
        "retry.backoff.ms": 20,
        "reconnect.backoff.ms": 10,
        "reconnect.backoff.max.ms": 200,
        "message.timeout.ms": TIMEOUT_S * 1000,
        "allow.auto.create.topics": False,
        # How long a Produce may wait for its answer before librdkafka gives up on it and retries.
        "socket.timeout.ms": args.request_timeout_ms,
    }
    delivered = 0
    errors: list[str] = []

    def on_error(err):
        # Connection drops by the proxy are expected and logged; fatal errors fail the run.
        log(f"client error: {err}")
        if err.fatal():
            errors.append(f"fatal: {err}")

    conf["error_cb"] = on_error
    producer = Producer(conf)

    def on_delivery(err, value):
        nonlocal delivered
        if err is not None:
            errors.append(f"{value!r}: {err}")
        else:
            delivered += 1

    for partition, key, value in records(args.label, args.records, args.partitions):
        while True:
            try:
                producer.produce(
                    args.topic,
                    value=value,
                    key=key,
                    partition=partition,
                    on_delivery=lambda err, _msg, value=value: on_delivery(err, value),
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    deadline = time.monotonic() + TIMEOUT_S
    left = len(producer)
    while left and time.monotonic() < deadline and not any(e.startswith("fatal") for e in errors):
        producer.poll(0.1)
        left = len(producer)
    if left:
        errors.append(f"{left} records not delivered within {TIMEOUT_S} s")
    return delivered, errors


async def run_aiokafka(args: argparse.Namespace) -> tuple[int, list[str]]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        # Bytes: a handful of records per batch, so many Produce requests.
        max_batch_size=256,
        retry_backoff_ms=20,
        request_timeout_ms=args.request_timeout_ms,
    )
    try:
        await producer.start()
    except Exception:
        await producer.stop()
        raise
    errors: list[str] = []
    delivered = 0
    try:
        futures = []
        for partition, key, value in records(args.label, args.records, args.partitions):
            futures.append((value, await producer.send(args.topic, value=value, key=key, partition=partition)))
        for value, fut in futures:
            try:
                await asyncio.wait_for(fut, TIMEOUT_S)
                delivered += 1
            except Exception as e:  # noqa: BLE001 - every delivery failure is reported
                errors.append(f"{value!r}: {type(e).__name__}: {e}")
    finally:
        await producer.stop()
    return delivered, errors


def main() -> None:
    p = argparse.ArgumentParser(description="idempotent producer for the Creek idempotence test")
    p.add_argument("client", choices=CLIENTS)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--records", type=int, default=2000)
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--label", help="value prefix (default: the client name)")
    p.add_argument("--request-timeout-ms", type=int, default=30_000, help="how long to wait for an answer")
    args = p.parse_args()
    args.label = args.label or args.client
    start = time.monotonic()
    try:
        if args.client == "aiokafka":
            delivered, errors = asyncio.run(run_aiokafka(args))
        else:
            delivered, errors = run_confluent(args, idempotent=args.client == "confluent-kafka")
    except Exception as e:  # noqa: BLE001 - reported as the failure line the test shows
        print(f"FAIL {args.client}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    log(f"{args.client}: {delivered} of {args.records} delivered in {time.monotonic() - start:.1f} s")
    if errors:
        print(f"FAIL {args.client}: {len(errors)} delivery errors, first: {errors[:3]}", file=sys.stderr, flush=True)
        sys.exit(1)
    if delivered != args.records:
        print(f"FAIL {args.client}: delivered {delivered} of {args.records}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"OK {args.client} sent={args.records} delivered={delivered}", flush=True)


if __name__ == "__main__":
    main()
