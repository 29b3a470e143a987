#!/usr/bin/env node
// kafkajs idempotent producer writing numbered records, for tests/tests/idempotence.rs.
//
// The test puts a fault-injecting proxy between this program and the broker that drops some
// Produce responses and closes the connection, so kafkajs retries batches the broker already
// appended. This program only produces; the Rust test reads the topic directly from the broker.
//
// Record i has value "kafkajs-<i>", key "k<i % partitions>", and goes to partition i % partitions.
// kafkajs keeps one sequence per partition and advances it only when a send succeeds, so concurrent
// send() calls would reuse sequences: sends are awaited one at a time (chunks of CHUNK records)
// with maxInFlightRequests: 1, as kafkajs requires for its idempotent producer.
//
// Usage: node kafkajs_idempotent.js --bootstrap HOST:PORT --topic NAME [--records N] [--partitions P]
// Prints `OK kafkajs-idempotent sent=N delivered=N`, or `FAIL kafkajs-idempotent: ...` and exit 1.
'use strict'

const { Kafka, logLevel } = require('kafkajs')

const CLIENT = 'kafkajs-idempotent'
const CHUNK = 10

function parseArgs(argv) {
  const args = { records: 2000, partitions: 3, label: 'kafkajs' }
  for (let i = 2; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]]
    if (value === undefined) throw new Error(`missing value for ${flag}`)
    if (flag === '--bootstrap') args.bootstrap = value
    else if (flag === '--topic') args.topic = value
    else if (flag === '--records') args.records = parseInt(value, 10)
    else if (flag === '--partitions') args.partitions = parseInt(value, 10)
    else if (flag === '--label') args.label = value
    else throw new Error(`unknown flag ${flag}`)
  }
  if (!args.bootstrap || !args.topic) throw new Error('--bootstrap and --topic are required')
  return args
}

async function main() {
  const args = parseArgs(process.argv)
  const kafka = new Kafka({
    clientId: CLIENT,
    brokers: [args.bootstrap],
    logLevel: logLevel.WARN,
    connectionTimeout: 3000,
    requestTimeout: 30000,
    // kafkajs's default retry gives up after 5 attempts; the idempotent producer sets its own.
    retry: { initialRetryTime: 50, maxRetryTime: 1000, retries: 50 },
  })
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1, allowAutoTopicCreation: false })
  await producer.connect()
  const start = Date.now()
  let delivered = 0
  for (let base = 0; base < args.records; base += CHUNK) {
    const messages = []
    for (let i = base; i < Math.min(base + CHUNK, args.records); i++) {
      messages.push({ partition: i % args.partitions, key: `k${i % args.partitions}`, value: `${args.label}-${i}` })
    }
    const result = await producer.send({ topic: args.topic, acks: -1, messages })
    for (const r of result) {
      if (r.errorCode !== 0) throw new Error(`partition ${r.partition}: error code ${r.errorCode}`)
    }
    delivered += messages.length
  }
  await producer.disconnect()
  console.error(`${CLIENT}: ${delivered} of ${args.records} delivered in ${(Date.now() - start) / 1000} s`)
  if (delivered !== args.records) throw new Error(`delivered ${delivered} of ${args.records}`)
  console.log(`OK ${CLIENT} sent=${args.records} delivered=${delivered}`)
}

main().then(
  () => process.exit(0),
  err => {
    console.error(`FAIL ${CLIENT}: ${err && err.stack ? err.stack : err}`)
    process.exit(1)
  }
)
