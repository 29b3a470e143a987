#!/usr/bin/env node
// kafkajs against a running Creek broker: create a topic, produce with every codec, read it back byte-exact.
//
// Usage: node kafkajs_client.js --bootstrap HOST:PORT --topic NAME [--records N] [--codecs none,gzip,...]
//
// kafkajs ships gzip only; snappy, lz4 and zstd are registered below from npm packages that install
// without a native build (snappyjs is pure JS; lz4-napi and @mongodb-js/zstd@1.2.2 ship prebuilt
// N-API binaries as optional dependencies).
//
// kafkajs's Consumer always joins a consumer group and has no manual-assignment mode. Creek has no
// consumer groups yet, so this client reads through kafkajs's own protocol layer instead: it builds a
// kafkajs Cluster and sends Fetch requests with Broker.fetch(), which uses kafkajs's real Fetch
// encoder and RecordBatch decoder (including decompression). Once Creek serves groups, add a
// consumer.run() pass here as well.
'use strict'

const { Kafka, CompressionTypes, CompressionCodecs, ConfigResourceTypes, logLevel } = require('kafkajs')
const SnappyCodec = require('kafkajs-snappy')
const lz4 = require('lz4-napi')
const zstd = require('@mongodb-js/zstd')

CompressionCodecs[CompressionTypes.Snappy] = SnappyCodec
// Kafka's lz4 is the LZ4 frame format (KIP-57), which is what compressFrame/decompressFrame speak.
CompressionCodecs[CompressionTypes.LZ4] = () => ({
  compress: async encoder => lz4.compressFrame(encoder.buffer),
  decompress: async buffer => lz4.decompressFrame(buffer),
})
CompressionCodecs[CompressionTypes.ZSTD] = () => ({
  compress: async encoder => zstd.compress(encoder.buffer, 3),
  decompress: async buffer => zstd.decompress(buffer),
})

const CODECS = {
  none: CompressionTypes.None,
  gzip: CompressionTypes.GZIP,
  snappy: CompressionTypes.Snappy,
  lz4: CompressionTypes.LZ4,
  zstd: CompressionTypes.ZSTD,
}
const RETENTION_MS = '86400000'

function parseArgs(argv) {
  const args = { records: 20, codecs: Object.keys(CODECS) }
  for (let i = 2; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]]
    if (value === undefined) throw new Error(`missing value for ${flag}`)
    if (flag === '--bootstrap') args.bootstrap = value
    else if (flag === '--topic') args.topic = value
    else if (flag === '--records') args.records = parseInt(value, 10)
    else if (flag === '--codecs') args.codecs = value.split(',')
    else throw new Error(`unknown flag ${flag}`)
  }
  if (!args.bootstrap || !args.topic) throw new Error('--bootstrap and --topic are required')
  for (const c of args.codecs) if (!(c in CODECS)) throw new Error(`unknown codec ${c}`)
  return args
}

function progress(what) {
  console.error(`step: ${what}`)
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`)
}

function eqBuf(a, b) {
  if (a === null || b === null) return a === b
  return Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0
}

function show(b) {
  return b === null || b === undefined ? String(b) : Buffer.from(b).toString('hex')
}

// The record a given codec run writes at index i. Keys and values carry bytes that are not UTF-8;
// index 3 is a tombstone (null value); values grow so compression has something to do.
function makeRecord(codec, i, timestamp) {
  const key = Buffer.concat([Buffer.from(`key-${codec}-${i}-`), Buffer.from([0x00, 0xff, 0xfe, 0x80])])
  const value =
    i === 3
      ? null
      : Buffer.concat([
          Buffer.from(`value-${codec}-${i}-`),
          Buffer.from([0xc3, 0x28, 0x00, 0xff]),
          Buffer.alloc(i * 37, 'a'),
        ])
  // Two headers with the same key: kafkajs sends one header per array element.
  const headers = [
    ['h', Buffer.from(`first-${i}`)],
    ['h', Buffer.from([0xff, 0x00, i & 0xff])],
  ]
  return { key, value, headers, timestamp }
}

function headersToKafkajs(headers) {
  const obj = {}
  for (const [k, v] of headers) (obj[k] = obj[k] || []).push(v)
  return obj
}

// kafkajs decodes duplicate header keys into an array, single ones into a Buffer.
function headersFromKafkajs(obj) {
  const out = []
  for (const [k, v] of Object.entries(obj || {})) {
    for (const item of Array.isArray(v) ? v : [v]) out.push([k, item])
  }
  return out
}

function compareRecord(expected, got, where) {
  check(got.offset === expected.offset, `${where}: offset ${got.offset} != ${expected.offset}`)
  check(eqBuf(got.key, expected.key), `${where}: key ${show(got.key)} != ${show(expected.key)}`)
  check(eqBuf(got.value, expected.value), `${where}: value ${show(got.value)} != ${show(expected.value)}`)
  check(got.timestamp === expected.timestamp, `${where}: timestamp ${got.timestamp} != ${expected.timestamp}`)
  const gh = got.headers
  check(gh.length === expected.headers.length, `${where}: ${gh.length} headers, want ${expected.headers.length}`)
  expected.headers.forEach(([k, v], j) => {
    check(gh[j][0] === k && eqBuf(gh[j][1], v), `${where}: header ${j} ${gh[j][0]}=${show(gh[j][1])} != ${k}=${show(v)}`)
  })
}

// Reads `count` records of partition 0 starting at `offset`, with the kafkajs Fetch request.
async function fetchRecords(cluster, topic, offset, count) {
  const out = []
  let next = offset
  const deadline = Date.now() + 30000
  while (out.length < count) {
    check(Date.now() < deadline, `fetch from ${offset}: got ${out.length} of ${count} records in 30 s`)
    await cluster.refreshMetadataIfNecessary()
    const leader = cluster.findTopicPartitionMetadata(topic).find(p => p.partitionId === 0).leader
    const broker = await cluster.findBroker({ nodeId: leader })
    const response = await broker.fetch({
      replicaId: -1,
      isolationLevel: 1,
      maxWaitTime: 500,
      minBytes: 1,
      maxBytes: 1 << 20,
      topics: [{ topic, partitions: [{ partition: 0, fetchOffset: String(next), maxBytes: 1 << 20 }] }],
    })
    const partition = response.responses[0].partitions[0]
    check(partition.errorCode === 0, `fetch from ${next}: error code ${partition.errorCode}`)
    for (const m of partition.messages) {
      const off = Number(m.offset)
      // A fetch may start at the base offset of the batch that holds `next`; skip what lies before.
      if (off < next || m.isControlRecord) continue
      if (out.length >= count) break
      out.push({
        offset: off,
        key: m.key,
        value: m.value,
        timestamp: Number(m.timestamp),
        headers: headersFromKafkajs(m.headers),
      })
      next = off + 1
    }
  }
  return out
}

async function main() {
  const args = parseArgs(process.argv)
  const { topic } = args
  const kafka = new Kafka({ clientId: 'creek-kafkajs', brokers: [args.bootstrap], logLevel: logLevel.WARN })

  const admin = kafka.admin()
  await admin.connect()
  progress('create topic')
  const created = await admin.createTopics({
    waitForLeaders: true,
    topics: [{ topic, numPartitions: 1, replicationFactor: 1, configEntries: [{ name: 'retention.ms', value: RETENTION_MS }] }],
  })
  check(created === true, `createTopics returned ${created}`)
  const meta = await admin.fetchTopicMetadata({ topics: [topic] })
  check(meta.topics.length === 1 && meta.topics[0].partitions.length === 1, `metadata: ${JSON.stringify(meta)}`)

  const producer = kafka.producer({ idempotent: false, allowAutoTopicCreation: false })
  await producer.connect()

  // Timestamps are explicit, distinct and increasing across the whole topic, within retention.
  const baseTs = Date.now() - 600000
  const runs = []
  for (const [c, codec] of args.codecs.entries()) {
    const records = []
    for (let i = 0; i < args.records; i++) records.push(makeRecord(codec, i, baseTs + c * 1000 + i))
    const result = await producer.send({
      topic,
      acks: -1,
      compression: CODECS[codec],
      messages: records.map(r => ({
        partition: 0,
        key: r.key,
        value: r.value,
        headers: headersToKafkajs(r.headers),
        timestamp: String(r.timestamp),
      })),
    })
    check(result.length === 1 && result[0].errorCode === 0, `${codec}: produce result ${JSON.stringify(result)}`)
    // kafkajs reports the base offset of the batch; records are numbered from it.
    const base = Number(result[0].baseOffset)
    const expectedBase = runs.length === 0 ? 0 : runs[runs.length - 1].base + args.records
    check(base === expectedBase, `${codec}: base offset ${base}, want ${expectedBase}`)
    records.forEach((r, i) => (r.offset = base + i))
    runs.push({ codec, base, records })
    progress(`produced ${codec}: offsets ${base}..${base + args.records - 1}`)
  }
  await producer.disconnect()

  const createCluster = kafka[Object.getOwnPropertySymbols(kafka).find(s => s.description === 'private:Kafka:createCluster')]
  const cluster = createCluster({ allowAutoTopicCreation: false, isolationLevel: 1 })
  await cluster.connect()
  await cluster.addTargetTopic(topic)
  let consumed = 0
  for (const run of runs) {
    progress(`consume ${run.codec} from ${run.base} and ${run.base + Math.floor(args.records / 2)}`)
    const all = await fetchRecords(cluster, topic, run.base, args.records)
    all.forEach((r, i) => compareRecord(run.records[i], r, `${run.codec} from ${run.base} #${i}`))
    const mid = Math.floor(args.records / 2)
    const tail = await fetchRecords(cluster, topic, run.base + mid, args.records - mid)
    tail.forEach((r, i) => compareRecord(run.records[mid + i], r, `${run.codec} from ${run.base + mid} #${i}`))
    consumed += all.length + tail.length
  }
  await cluster.disconnect()

  const total = runs.length * args.records
  progress('list offsets')
  const offsets = await admin.fetchTopicOffsets(topic)
  const p0 = offsets.find(p => p.partition === 0)
  check(offsets.length === 1 && p0, `fetchTopicOffsets: ${JSON.stringify(offsets)}`)
  check(Number(p0.low) === 0, `earliest offset ${p0.low}, want 0`)
  check(Number(p0.high) === total, `latest offset ${p0.high}, want ${total}`)
  if (runs.length > 1) {
    const target = runs[1].records[7]
    const byTs = await admin.fetchTopicOffsetsByTimestamp(topic, target.timestamp)
    const at = byTs.find(p => p.partition === 0).offset
    check(Number(at) === target.offset, `offset for timestamp ${target.timestamp}: ${at}, want ${target.offset}`)
  }
  const first = await admin.fetchTopicOffsetsByTimestamp(topic, baseTs - 60000)
  const at0 = first.find(p => p.partition === 0).offset
  check(Number(at0) === 0, `offset for a timestamp before all records: ${at0}, want 0`)

  progress('describe configs')
  const described = await admin.describeConfigs({
    includeSynonyms: false,
    resources: [{ type: ConfigResourceTypes.TOPIC, name: topic }],
  })
  const entries = described.resources[0].configEntries
  const config = Object.fromEntries(entries.map(e => [e.configName, e.configValue]))
  check(described.resources[0].errorCode === 0, `describeConfigs error ${described.resources[0].errorCode}`)
  check(config['retention.ms'] === RETENTION_MS, `retention.ms = ${config['retention.ms']}, want ${RETENTION_MS}`)
  check(config['cleanup.policy'] === 'delete', `cleanup.policy = ${config['cleanup.policy']}, want delete`)
  await admin.disconnect()

  console.log(`OK kafkajs produced=${total} consumed=${consumed} codecs=${args.codecs.join(',')}`)
}

main().then(
  () => process.exit(0),
  err => {
    console.error(`FAIL kafkajs: ${err && err.stack ? err.stack : err}`)
    process.exit(1)
  }
)
