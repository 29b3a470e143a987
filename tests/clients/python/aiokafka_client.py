"""aiokafka (asyncio) against a running Creek broker: the scenario in scenario.py.

Usage: aiokafka_client.py --bootstrap HOST:PORT --topic NAME [--records N] [--codecs none,gzip,...]
Codecs come from cramjam (aiokafka.codec), installed by tests/setup.sh.
"""

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import codec as aiokafka_codec
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

import scenario
from scenario import Record, check

CLIENT = "aiokafka"
CODEC_NAMES = {"none": None, "gzip": "gzip", "snappy": "snappy", "lz4": "lz4", "zstd": "zstd"}


async def produce(bootstrap: str, topic: str, codec: str, records: list[Record]) -> list[int]:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        compression_type=CODEC_NAMES[codec],
        acks="all",
        linger_ms=50,
        enable_idempotence=False,
    )
    await producer.start()
    try:
        # send() only queues; awaiting all the futures together lets them share one batch.
        futures = [
            await producer.send(
                topic, value=r.value, key=r.key, partition=0, timestamp_ms=r.timestamp_ms, headers=r.headers
            )
            for r in records
        ]
        metadata = await asyncio.wait_for(asyncio.gather(*futures), 30)
    finally:
        await producer.stop()
    return [m.offset for m in metadata]


async def consume(consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, count: int) -> list[Record]:
    consumer.seek(tp, start)
    out: list[Record] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while len(out) < count:
        check(loop.time() < deadline, f"consume from {start}: got {len(out)} of {count} records in 30 s")
        batches = await consumer.getmany(tp, timeout_ms=500, max_records=count - len(out))
        for m in batches.get(tp, []):
            check(m.timestamp_type == 0, f"offset {m.offset}: timestamp type {m.timestamp_type}")
            out.append(Record(m.key, m.value, list(m.headers or []), m.timestamp, m.offset))
    return out


async def run() -> None:
    args = scenario.parse_args(CLIENT)
    have = {"snappy": aiokafka_codec.has_snappy(), "lz4": aiokafka_codec.has_lz4(), "zstd": aiokafka_codec.has_zstd()}
    missing = [c for c in args.codecs if not have.get(c, True)]
    check(not missing, f"codec libraries missing for {missing}: run tests/setup.sh")
    topic = args.topic
    tp = TopicPartition(topic, 0)

    admin = AIOKafkaAdminClient(bootstrap_servers=args.bootstrap, client_id="creek-aiokafka")
    await admin.start()
    try:
        scenario.progress("create topic")
        resp = await admin.create_topics(
            [NewTopic(topic, 1, 1, topic_configs={"retention.ms": scenario.RETENTION_MS})], timeout_ms=30_000
        )
        errors = [t for t in resp.to_object()["topic_errors"] if t["error_code"] != 0]
        check(not errors, f"create_topics errors {errors}")

        base_ts = scenario.base_timestamp_ms()
        runs: list[scenario.Run] = []
        for c, codec in enumerate(args.codecs):
            r = scenario.make_run(codec, c, args.records, base_ts)
            scenario.assign_offsets(runs, r, await produce(args.bootstrap, topic, codec, r.records))
            runs.append(r)
        total = len(runs) * args.records

        consumer = AIOKafkaConsumer(
            bootstrap_servers=args.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="none",
            client_id="creek-aiokafka",
        )
        await consumer.start()
        consumed = 0
        try:
            consumer.assign([tp])
            for label, start, expected in scenario.consume_plan(runs):
                got = await consume(consumer, tp, start, len(expected))
                scenario.compare(expected, got, label)
                consumed += len(got)

            scenario.progress("list offsets")

            begin = (await consumer.beginning_offsets([tp]))[tp]
            end = (await consumer.end_offsets([tp]))[tp]
            check((begin, end) == (0, total), f"beginning/end offsets ({begin}, {end}), want (0, {total})")
            probe = scenario.timestamp_probe(runs)
            found = (await consumer.offsets_for_times({tp: probe.timestamp_ms}))[tp]
            check(found is not None and found.offset == probe.offset, f"offsets_for_times({probe.timestamp_ms}) = {found}")
            check(found is not None and found.timestamp == probe.timestamp_ms, f"offsets_for_times timestamp: {found}")
            before = (await consumer.offsets_for_times({tp: base_ts - 60_000}))[tp]
            check(before is not None and before.offset == 0, f"offsets_for_times(before all) = {before}")
        finally:
            await consumer.stop()

        scenario.progress("describe configs")

        described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        resources = [res for resp in described for res in resp.to_object()["resources"]]
        check(len(resources) == 1 and resources[0]["error_code"] == 0, f"describe_configs: {resources}")
        values = {e["config_names"]: e["config_value"] for e in resources[0]["config_entries"]}
        check(values.get("retention.ms") == scenario.RETENTION_MS, f"retention.ms = {values.get('retention.ms')}")
        check(values.get("cleanup.policy") == "delete", f"cleanup.policy = {values.get('cleanup.policy')}")
    finally:
        await admin.close()

    print(f"OK {CLIENT} produced={total} consumed={consumed} codecs={','.join(args.codecs)}")


if __name__ == "__main__":
    scenario.main_wrapper(CLIENT, lambda: asyncio.run(run()))
