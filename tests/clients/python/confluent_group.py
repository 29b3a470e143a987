"""confluent-kafka (librdkafka, classic group protocol) consumer groups against a running Creek broker.

Modes:
  stream          a 3-member group on a 6-partition topic consumes a stream while members join and
                  leave, committing after processing and on revocation; checks that no record is
                  lost, a record is delivered again only where its commit failed, and assignments
                  never overlap. Prints rebalance times on join and on leave.
  commit          commits offsets with metadata for a group (simple commit) and a group member.
  verify          checks the offsets of `commit` are there (after a broker restart or crash).
  static          a static member (group.instance.id) restarts within the session timeout without a
                  rebalance of the other member; then it stops and is removed after the session timeout.

Usage: confluent_group.py MODE --bootstrap HOST:PORT --topic NAME --group NAME [--assignor range|cooperative-sticky]
"""

import argparse
import sys
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

CLIENT = "confluent-kafka-group"
PARTITIONS = 6


def fail(msg: str) -> None:
    print(f"FAIL {CLIENT}: {msg}", flush=True)
    sys.exit(1)


def check(cond: bool, msg: str) -> None:
    if not cond:
        fail(msg)


def log(msg: str) -> None:
    print(f"[{time.monotonic():.3f}] {msg}", file=sys.stderr, flush=True)


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(30)


def consumer_conf(bootstrap: str, group: str, **extra) -> dict:
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        "allow.auto.create.topics": False,
    }
    conf.update(extra)
    if conf.get("group.protocol") == "consumer":
        # KIP-848: the broker owns timeouts and assignment; librdkafka refuses these settings.
        for key in ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy"):
            conf.pop(key, None)
    return conf


class World:
    """What every member saw, shared between member threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.owner: dict[int, str] = {}
        self.deliveries: dict[tuple[int, int], int] = {}
        # Offsets processed by a member whose commit covering them never succeeded.
        self.at_risk: set[tuple[int, int]] = set()
        self.errors: list[str] = []
        self.events: list[tuple[float, str, str]] = []


class Member(threading.Thread):
    def __init__(self, name: str, world: World, conf: dict, topic: str):
        super().__init__(name=name, daemon=True)
        self.world, self.conf, self.topic = world, conf, topic
        self.stop = threading.Event()
        self.uncommitted: dict[int, list[int]] = {}
        self.started_at = 0.0
        self.first_assign_at: float | None = None

    def commit(self, consumer: Consumer, partitions: list[int]) -> None:
        offsets = [TopicPartition(self.topic, p, max(self.uncommitted[p]) + 1) for p in partitions if self.uncommitted.get(p)]
        if not offsets:
            return
        try:
            result = consumer.commit(offsets=offsets, asynchronous=False)
            failed = {tp.partition for tp in result if tp.error is not None}
        except KafkaException as e:
            log(f"{self.name}: commit failed: {e}")
            failed = {tp.partition for tp in offsets}
        with self.world.lock:
            for tp in offsets:
                if tp.partition in failed:
                    self.world.at_risk.update((tp.partition, o) for o in self.uncommitted[tp.partition])
                self.uncommitted[tp.partition] = []

    def run(self) -> None:
        world = self.world
        consumer = Consumer(self.conf)

        def on_assign(c, parts):
            now = time.monotonic()
            if self.first_assign_at is None:
                self.first_assign_at = now
            with world.lock:
                world.events.append((now, self.name, "assign"))
                for tp in parts:
                    other = world.owner.get(tp.partition)
                    if other is not None and other != self.name:
                        world.errors.append(f"partition {tp.partition} assigned to {self.name} while owned by {other}")
                    world.owner[tp.partition] = self.name
            log(f"{self.name}: assigned {[tp.partition for tp in parts]}")

        def on_revoke(c, parts):
            self.commit(c, [tp.partition for tp in parts])
            with world.lock:
                world.events.append((time.monotonic(), self.name, "revoke"))
                for tp in parts:
                    if world.owner.get(tp.partition) == self.name:
                        del world.owner[tp.partition]
            log(f"{self.name}: revoked {[tp.partition for tp in parts]}")

        self.started_at = time.monotonic()
        consumer.subscribe([self.topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)
        while not self.stop.is_set():
            msgs = consumer.consume(num_messages=200, timeout=0.2)
            touched = set()
            for m in msgs:
                if m.error() is not None:
                    with world.lock:
                        world.errors.append(f"{self.name}: {m.error()}")
                    continue
                key = (m.partition(), m.offset())
                with world.lock:
                    world.deliveries[key] = world.deliveries.get(key, 0) + 1
                self.uncommitted.setdefault(m.partition(), []).append(m.offset())
                touched.add(m.partition())
            if touched:
                self.commit(consumer, sorted(touched))
        consumer.close()
        log(f"{self.name}: closed")


def produce(bootstrap: str, topic: str, total: int, seconds: float, produced: list) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": False})
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            produced.append((msg.partition(), msg.offset()))

    for i in range(total):
        producer.produce(topic, key=f"k{i}".encode(), value=str(i).encode(), partition=i % PARTITIONS, on_delivery=on_delivery)
        producer.poll(0)
        time.sleep(seconds / total)
    check(producer.flush(30) == 0, "producer did not deliver everything")
    check(not errors, f"delivery errors {errors[:5]}")


def mode_stream(args) -> None:
    create_topic(args.bootstrap, args.topic, PARTITIONS)
    world = World()
    produced: list = []
    total = 3000
    producer = threading.Thread(target=produce, args=(args.bootstrap, args.topic, total, 12.0, produced), daemon=True)
    producer.start()

    def member(name: str) -> Member:
        extra = {"client.id": name, "partition.assignment.strategy": args.assignor}
        if args.protocol == "consumer":
            extra["group.protocol"] = "consumer"
        m = Member(name, world, consumer_conf(args.bootstrap, args.group, **extra), args.topic)
        m.start()
        return m

    c1 = member("c1")
    time.sleep(3)
    c2 = member("c2")
    time.sleep(3)
    c3 = member("c3")
    time.sleep(3)
    # c1 leaves: measure until the others are assigned again.
    leave_at = time.monotonic()
    c1.stop.set()
    c1.join(30)
    check(not c1.is_alive(), "c1 did not close")
    time.sleep(2)
    c4 = member("c4")
    producer.join(60)
    check(not producer.is_alive(), "producer did not finish")
    deadline = time.monotonic() + 40
    want = set(produced)
    while time.monotonic() < deadline:
        with world.lock:
            if want <= set(world.deliveries):
                break
        time.sleep(0.2)
    for m in (c2, c3, c4):
        m.stop.set()
    for m in (c2, c3, c4):
        m.join(30)
    with world.lock:
        check(not world.errors, f"errors: {world.errors[:5]}")
        missing = want - set(world.deliveries)
        check(not missing, f"{len(missing)} records never delivered, e.g. {sorted(missing)[:5]}")
        dups = {k for k, n in world.deliveries.items() if n > 1}
        unexplained = dups - world.at_risk
        check(not unexplained, f"{len(unexplained)} records delivered again without a failed commit, e.g. {sorted(unexplained)[:5]}")
        joins = [c2.first_assign_at - c2.started_at, c3.first_assign_at - c3.started_at]
        after_leave = [t - leave_at for (t, n, e) in world.events if e == "assign" and t > leave_at and n in ("c2", "c3")]
        leave_s = min(after_leave) if after_leave else -1
    print(
        f"OK {CLIENT} mode=stream protocol={args.protocol} assignor={args.assignor} produced={len(want)} delivered={sum(world.deliveries.values())} "
        f"redelivered={len(dups)} join_rebalance_s={max(joins):.2f} leave_rebalance_s={leave_s:.2f}",
        flush=True,
    )


COMMITS = {0: (10, "meta-0"), 1: (20, "meta-1 \u00e9"), 2: (0, "")}


def mode_commit(args) -> None:
    create_topic(args.bootstrap, args.topic, 3)
    # A standalone consumer: assign() and commit with generation -1.
    c = Consumer(consumer_conf(args.bootstrap, args.group))
    offsets = [TopicPartition(args.topic, p, o, metadata=m) for p, (o, m) in COMMITS.items()]
    for tp in c.commit(offsets=offsets, asynchronous=False):
        check(tp.error is None, f"commit {tp}: {tp.error}")
    c.close()
    # A group member: subscribe, get an assignment, commit through the group's generation.
    member_group = args.group + "-member"
    m = Consumer(consumer_conf(args.bootstrap, member_group))
    assigned = threading.Event()
    m.subscribe([args.topic], on_assign=lambda c, p: assigned.set())
    deadline = time.monotonic() + 30
    while not assigned.is_set():
        check(time.monotonic() < deadline, "member got no assignment in 30 s")
        m.poll(0.2)
    res = m.commit(offsets=[TopicPartition(args.topic, 1, 7, metadata="member")], asynchronous=False)
    check(all(tp.error is None for tp in res), f"member commit: {res}")
    m.close()
    print(f"OK {CLIENT} mode=commit", flush=True)


def mode_verify(args) -> None:
    c = Consumer(consumer_conf(args.bootstrap, args.group))
    got = c.committed([TopicPartition(args.topic, p) for p in COMMITS], timeout=30)
    for tp in got:
        want_offset, want_meta = COMMITS[tp.partition]
        check(tp.error is None, f"committed {tp}: {tp.error}")
        check((tp.offset, tp.metadata) == (want_offset, want_meta), f"partition {tp.partition}: {tp.offset} {tp.metadata!r}")
    c.close()
    m = Consumer(consumer_conf(args.bootstrap, args.group + "-member"))
    got = m.committed([TopicPartition(args.topic, 1)], timeout=30)
    check((got[0].offset, got[0].metadata) == (7, "member"), f"member offset {got[0].offset} {got[0].metadata!r}")
    m.close()
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    groups = {g.group_id for g in admin.list_consumer_groups().result(30).valid}
    check({args.group, args.group + "-member"} <= groups, f"list groups: {groups}")
    print(f"OK {CLIENT} mode=verify", flush=True)


def mode_static(args) -> None:
    create_topic(args.bootstrap, args.topic, 4)
    world = World()

    def member(name: str, instance: str | None) -> Member:
        extra = {"client.id": name}
        if instance:
            extra["group.instance.id"] = instance
        m = Member(name, world, consumer_conf(args.bootstrap, args.group, **extra), args.topic)
        m.start()
        return m

    dyn = member("dynamic", None)
    s1 = member("static-a", "instance-1")
    deadline = time.monotonic() + 30
    while True:
        with world.lock:
            if len(world.owner) == 4 and len(set(world.owner.values())) == 2:
                before = dict(world.owner)
                break
        check(time.monotonic() < deadline, f"no stable 2-member assignment: {world.owner}")
        time.sleep(0.1)
    time.sleep(2)
    with world.lock:
        events_before = len([e for e in world.events if e[1] == "dynamic"])
    # The static member stops (no LeaveGroup for static members) and comes back quickly.
    s1.stop.set()
    s1.join(30)
    with world.lock:
        # Its revocation callback ran on close; ownership is re-established by the new instance.
        pass
    s2 = member("static-b", "instance-1")
    deadline = time.monotonic() + 20
    while s2.first_assign_at is None:
        check(time.monotonic() < deadline, "restarted static member got no assignment")
        time.sleep(0.1)
    time.sleep(3)
    with world.lock:
        dyn_events = [e for e in world.events if e[1] == "dynamic"]
        check(len(dyn_events) == events_before, f"the other member rebalanced on a static restart: {dyn_events}")
        mine = sorted(p for p, o in before.items() if o == "static-a")
        now_mine = sorted(p for p, o in world.owner.items() if o == "static-b")
        check(mine == now_mine, f"static member got {now_mine}, had {mine}")
    # Now the static member goes away for good: removed after session.timeout.ms (6 s).
    gone_at = time.monotonic()
    s2.stop.set()
    s2.join(30)
    deadline = time.monotonic() + 30
    while True:
        with world.lock:
            if sum(1 for o in world.owner.values() if o == "dynamic") == 4:
                break
        check(time.monotonic() < deadline, f"the silent member was not removed: {world.owner}")
        time.sleep(0.1)
    removed_s = time.monotonic() - gone_at
    check(removed_s >= 4.0, f"removed after {removed_s:.1f} s, before the session timeout")
    dyn.stop.set()
    dyn.join(30)
    with world.lock:
        check(not world.errors, f"errors: {world.errors[:5]}")
    print(f"OK {CLIENT} mode=static removed_after_s={removed_s:.2f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["stream", "commit", "verify", "static"])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--assignor", default="range", help="partition.assignment.strategy (stream mode)")
    p.add_argument("--protocol", default="classic", choices=["classic", "consumer"], help="group.protocol (stream mode)")
    args = p.parse_args()
    try:
        {"stream": mode_stream, "commit": mode_commit, "verify": mode_verify, "static": mode_static}[args.mode](args)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - report any failure in the agreed format
        fail(f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
