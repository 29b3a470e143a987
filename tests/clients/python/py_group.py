"""kafka-python and aiokafka consumer groups (classic protocol) against a running Creek broker.

Three members of one group read a 6-partition topic of pre-produced records, slowly, committing
after each batch and on revocation; the first member leaves midway. Checks: every record is
delivered, a record is delivered again only where a commit covering it failed, and no partition
is owned by two members at once.

Usage: py_group.py {kafka-python,aiokafka} --bootstrap HOST:PORT --topic NAME --group NAME
"""

import argparse
import asyncio
import sys
import threading
import time

PARTITIONS = 6
PER_PARTITION = 300


def fail(client: str, msg: str) -> None:
    print(f"FAIL {client}: {msg}", flush=True)
    sys.exit(1)


class World:
    def __init__(self):
        self.lock = threading.Lock()
        self.owner: dict[int, str] = {}
        self.deliveries: dict[tuple[int, int], int] = {}
        self.at_risk: set[tuple[int, int]] = set()
        self.errors: list[str] = []

    def assigned(self, name: str, parts) -> None:
        with self.lock:
            for p in parts:
                other = self.owner.get(p)
                if other is not None and other != name:
                    self.errors.append(f"partition {p} assigned to {name} while owned by {other}")
                self.owner[p] = name

    def revoked(self, name: str, parts) -> None:
        with self.lock:
            for p in parts:
                if self.owner.get(p) == name:
                    del self.owner[p]

    def delivered(self, p: int, o: int) -> None:
        with self.lock:
            self.deliveries[(p, o)] = self.deliveries.get((p, o), 0) + 1

    def verdict(self, client: str) -> str:
        want = {(p, o) for p in range(PARTITIONS) for o in range(PER_PARTITION)}
        with self.lock:
            if self.errors:
                fail(client, f"errors: {self.errors[:5]}")
            missing = want - set(self.deliveries)
            if missing:
                fail(client, f"{len(missing)} records never delivered, e.g. {sorted(missing)[:5]}")
            dups = {k for k, n in self.deliveries.items() if n > 1}
            unexplained = dups - self.at_risk
            if unexplained:
                fail(client, f"{len(unexplained)} redelivered without a failed commit, e.g. {sorted(unexplained)[:5]}")
            return f"delivered={sum(self.deliveries.values())} redelivered={len(dups)}"

    def done(self) -> bool:
        with self.lock:
            return len(self.deliveries) >= PARTITIONS * PER_PARTITION


def run_kafka_python(args) -> None:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.consumer.subscription_state import ConsumerRebalanceListener
    from kafka.structs import OffsetAndMetadata

    client = "kafka-python"
    admin = KafkaAdminClient(bootstrap_servers=args.bootstrap)
    admin.create_topics([NewTopic(args.topic, PARTITIONS, 1)])
    admin.close()
    # Idempotent producers need InitProducerId, which Creek does not serve yet.
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=5, enable_idempotence=False)
    futures = [
        producer.send(args.topic, value=f"{p}-{i}".encode(), partition=p)
        for p in range(PARTITIONS)
        for i in range(PER_PARTITION)
    ]
    producer.flush(30)
    for f in futures:
        f.get(30)
    producer.close()
    world = World()

    class Member(threading.Thread):
        def __init__(self, name):
            super().__init__(name=name, daemon=True)
            self.stop = threading.Event()
            self.uncommitted: dict[int, list[int]] = {}

        def commit(self, consumer, parts) -> None:
            offsets = {
                TopicPartition(args.topic, p): OffsetAndMetadata(max(self.uncommitted[p]) + 1, "", -1)
                for p in parts
                if self.uncommitted.get(p)
            }
            if not offsets:
                return
            try:
                consumer.commit(offsets)
                ok = True
            except Exception as e:  # noqa: BLE001 - any commit failure puts the records at risk
                print(f"{self.name}: commit failed: {e!r}", file=sys.stderr, flush=True)
                ok = False
            with world.lock:
                for tp in offsets:
                    if not ok:
                        world.at_risk.update((tp.partition, o) for o in self.uncommitted[tp.partition])
                    self.uncommitted[tp.partition] = []

        def run(self) -> None:
            consumer = KafkaConsumer(
                bootstrap_servers=args.bootstrap,
                group_id=args.group,
                client_id=self.name,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=6000,
                heartbeat_interval_ms=1000,
                max_poll_records=10,
            )
            member = self

            class Listener(ConsumerRebalanceListener):
                def on_partitions_revoked(self, revoked):
                    member.commit(consumer, [tp.partition for tp in revoked])
                    world.revoked(member.name, [tp.partition for tp in revoked])

                def on_partitions_assigned(self, assigned):
                    world.assigned(member.name, [tp.partition for tp in assigned])

            consumer.subscribe([args.topic], listener=Listener())
            while not self.stop.is_set():
                batch = consumer.poll(timeout_ms=200)
                touched = []
                for tp, records in batch.items():
                    for r in records:
                        world.delivered(tp.partition, r.offset)
                        self.uncommitted.setdefault(tp.partition, []).append(r.offset)
                    touched.append(tp.partition)
                if touched:
                    self.commit(consumer, touched)
                    time.sleep(0.05)
            consumer.close()

    members = [Member(f"m{i}") for i in range(1, 4)]
    for m in members:
        m.start()
        time.sleep(1.5)
    members[0].stop.set()
    members[0].join(30)
    deadline = time.monotonic() + 60
    while not world.done() and time.monotonic() < deadline:
        time.sleep(0.2)
    for m in members[1:]:
        m.stop.set()
    for m in members[1:]:
        m.join(30)
    print(f"OK {client} {world.verdict(client)}", flush=True)


async def run_aiokafka(args) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError

    client = "aiokafka"
    admin = AIOKafkaAdminClient(bootstrap_servers=args.bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(args.topic, PARTITIONS, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=5)
    await producer.start()
    for p in range(PARTITIONS):
        for i in range(PER_PARTITION):
            await producer.send(args.topic, value=f"{p}-{i}".encode(), partition=p)
    await producer.flush()
    await producer.stop()
    world = World()

    async def member(name: str, stop: asyncio.Event) -> None:
        uncommitted: dict[int, list[int]] = {}
        consumer = AIOKafkaConsumer(
            bootstrap_servers=args.bootstrap,
            group_id=args.group,
            client_id=name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            max_poll_records=10,
        )

        async def commit(parts) -> None:
            offsets = {TopicPartition(args.topic, p): max(uncommitted[p]) + 1 for p in parts if uncommitted.get(p)}
            if not offsets:
                return
            try:
                await consumer.commit(offsets)
                ok = True
            except KafkaError as e:
                print(f"{name}: commit failed: {e!r}", file=sys.stderr, flush=True)
                ok = False
            with world.lock:
                for tp in offsets:
                    if not ok:
                        world.at_risk.update((tp.partition, o) for o in uncommitted[tp.partition])
                    uncommitted[tp.partition] = []

        class Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked):
                await commit([tp.partition for tp in revoked])
                world.revoked(name, [tp.partition for tp in revoked])

            async def on_partitions_assigned(self, assigned):
                world.assigned(name, [tp.partition for tp in assigned])

        await consumer.start()
        consumer.subscribe([args.topic], listener=Listener())
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=10)
                touched = []
                for tp, records in batch.items():
                    for r in records:
                        world.delivered(tp.partition, r.offset)
                        uncommitted.setdefault(tp.partition, []).append(r.offset)
                    touched.append(tp.partition)
                if touched:
                    await commit(touched)
                    await asyncio.sleep(0.05)
        finally:
            # aiokafka does not call on_partitions_revoked on stop(): release and commit first.
            parts = [tp.partition for tp in consumer.assignment()]
            await commit(parts)
            world.revoked(name, parts)
            await consumer.stop()

    stops = [asyncio.Event() for _ in range(3)]
    tasks = []
    for i, stop in enumerate(stops):
        tasks.append(asyncio.create_task(member(f"m{i + 1}", stop)))
        await asyncio.sleep(1.5)
    stops[0].set()
    await asyncio.wait_for(tasks[0], 30)
    deadline = time.monotonic() + 60
    while not world.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    for stop in stops[1:]:
        stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks[1:]), 30)
    print(f"OK {client} {world.verdict(client)}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("client", choices=["kafka-python", "aiokafka"])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    args = p.parse_args()
    try:
        if args.client == "kafka-python":
            run_kafka_python(args)
        else:
            asyncio.run(run_aiokafka(args))
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - report any failure in the agreed format
        fail(args.client, f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
