"""The scenario every Python client runs: which records to write, and how to check what comes back.

Each client program (confluent_client.py, kafka_python_client.py, aiokafka_client.py) creates a topic
with one partition and retention.ms=RETENTION_MS, produces `records` records per codec with explicit
timestamps, reads each codec's run back by manual assignment from its first and from its middle
offset, lists offsets and describes the topic's configs. Records carry non-UTF-8 bytes in keys,
values and headers, a duplicate header key, and one tombstone (null value).
"""

import argparse
import sys
import time
from dataclasses import dataclass, field

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
RETENTION_MS = "86400000"
TOMBSTONE_INDEX = 3


@dataclass
class Record:
    key: bytes
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp_ms: int
    offset: int = -1


@dataclass
class Run:
    codec: str
    records: list[Record] = field(default_factory=list)

    @property
    def base(self) -> int:
        return self.records[0].offset


def parse_args(client: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=f"{client} end-to-end scenario against a Creek broker")
    p.add_argument("--bootstrap", required=True, help="HOST:PORT of the broker")
    p.add_argument("--topic", required=True)
    p.add_argument("--records", type=int, default=20, help="records per codec")
    p.add_argument("--codecs", default=",".join(CODECS))
    args = p.parse_args()
    args.codecs = args.codecs.split(",")
    for c in args.codecs:
        if c not in CODECS:
            p.error(f"unknown codec {c}")
    return args


def base_timestamp_ms() -> int:
    """Ten minutes ago: inside retention, and before anything the broker stamps itself."""
    return int(time.time() * 1000) - 600_000


def make_run(codec: str, codec_index: int, n: int, base_ts: int) -> Run:
    run = Run(codec)
    for i in range(n):
        key = f"key-{codec}-{i}-".encode() + b"\x00\xff\xfe\x80"
        value = None
        if i != TOMBSTONE_INDEX:
            value = f"value-{codec}-{i}-".encode() + b"\xc3\x28\x00\xff" + b"a" * (i * 37)
        headers = [("h", f"first-{i}".encode()), ("h", bytes([0xFF, 0x00, i & 0xFF]))]
        run.records.append(Record(key, value, headers, base_ts + codec_index * 1000 + i))
    return run


def progress(what: str) -> None:
    """One line on stderr per step, so a failure shows how far the scenario got."""
    print(f"step: {what}", file=sys.stderr, flush=True)


class CheckFailed(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


def assign_offsets(runs: list[Run], run: Run, offsets: list[int]) -> None:
    """Stores the acknowledged offsets and checks they continue the topic without a gap."""
    expected_base = 0 if len(runs) == 0 else runs[-1].records[-1].offset + 1
    want = list(range(expected_base, expected_base + len(run.records)))
    check(offsets == want, f"{run.codec}: acknowledged offsets {offsets}, want {want}")
    for r, o in zip(run.records, offsets):
        r.offset = o
    progress(f"produced {run.codec}: offsets {offsets[0]}..{offsets[-1]}")


def compare(expected: list[Record], got: list[Record], where: str) -> None:
    progress(f"consumed {where}: {len(got)} records")
    check(len(got) == len(expected), f"{where}: got {len(got)} records, want {len(expected)}")
    for i, (e, g) in enumerate(zip(expected, got)):
        at = f"{where} #{i}"
        check(g.offset == e.offset, f"{at}: offset {g.offset} != {e.offset}")
        check(g.key == e.key, f"{at}: key {g.key!r} != {e.key!r}")
        check(g.value == e.value, f"{at}: value {g.value!r} != {e.value!r}")
        check(g.timestamp_ms == e.timestamp_ms, f"{at}: timestamp {g.timestamp_ms} != {e.timestamp_ms}")
        check(list(g.headers) == list(e.headers), f"{at}: headers {g.headers!r} != {e.headers!r}")


def consume_plan(runs: list[Run]) -> list[tuple[str, int, list[Record]]]:
    """(label, start offset, expected records): each run from its start, and from its middle."""
    plan = []
    for run in runs:
        plan.append((f"{run.codec} from {run.base}", run.base, run.records))
        mid = len(run.records) // 2
        plan.append((f"{run.codec} from {run.base + mid}", run.base + mid, run.records[mid:]))
    return plan


def timestamp_probe(runs: list[Run]) -> Record:
    """A record in the middle of the topic, for ListOffsets by timestamp."""
    run = runs[1] if len(runs) > 1 else runs[0]
    return run.records[min(7, len(run.records) - 1)]


def main_wrapper(client: str, body) -> None:
    try:
        body()
    except CheckFailed as e:
        print(f"FAIL {client}: {e}", file=sys.stderr)
        sys.exit(1)
