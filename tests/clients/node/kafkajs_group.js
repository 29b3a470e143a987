#!/usr/bin/env node
// kafkajs consumer groups (classic protocol) against a running Creek broker: three members of one
// group read a 6-partition topic of pre-produced records, committing after each batch; the first
// member leaves midway. Checks every record is delivered, a record is delivered again only where a
// commit covering it failed, and the members' last assignments are disjoint and cover the topic.
//
// Usage: node kafkajs_group.js --bootstrap HOST:PORT --topic NAME --group NAME
'use strict'

const { Kafka, logLevel } = require('kafkajs')

const PARTITIONS = 6
const PER_PARTITION = 300
const CLIENT = 'kafkajs-group'

function parseArgs(argv) {
  const args = {}
  for (let i = 2; i < argv.length; i += 2) args[argv[i].replace(/^--/, '')] = argv[i + 1]
  if (!args.bootstrap || !args.topic || !args.group) throw new Error('--bootstrap, --topic and --group are required')
  return args
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

async function main() {
  const args = parseArgs(process.argv)
  const kafka = new Kafka({ clientId: CLIENT, brokers: [args.bootstrap], logLevel: logLevel.WARN })
  const admin = kafka.admin()
  await admin.connect()
  await admin.createTopics({ topics: [{ topic: args.topic, numPartitions: PARTITIONS }], waitForLeaders: true })
  await admin.disconnect()
  const producer = kafka.producer({ idempotent: false, allowAutoTopicCreation: false })
  await producer.connect()
  for (let p = 0; p < PARTITIONS; p++) {
    const messages = []
    for (let i = 0; i < PER_PARTITION; i++) messages.push({ value: `${p}-${i}`, partition: p })
    await producer.send({ topic: args.topic, acks: -1, messages })
  }
  await producer.disconnect()

  const deliveries = new Map()
  const atRisk = new Set()
  const lastAssignment = new Map()
  const left = new Set()

  async function member(name) {
    const consumer = kafka.consumer({
      groupId: args.group,
      sessionTimeout: 6000,
      heartbeatInterval: 1000,
      rebalanceTimeout: 10000,
      maxBytesPerPartition: 200,
      allowAutoTopicCreation: false,
    })
    consumer.on(consumer.events.GROUP_JOIN, e => {
      // A member finishing a join while it disconnects no longer counts.
      if (!left.has(name)) lastAssignment.set(name, (e.payload.memberAssignment[args.topic] || []).slice())
    })
    await consumer.connect()
    await consumer.subscribe({ topic: args.topic, fromBeginning: true })
    await consumer.run({
      autoCommit: false,
      eachBatch: async ({ batch }) => {
        const offsets = []
        for (const m of batch.messages) {
          const key = `${batch.partition}:${m.offset}`
          deliveries.set(key, (deliveries.get(key) || 0) + 1)
          offsets.push(m.offset)
        }
        if (offsets.length === 0) return
        const next = (BigInt(offsets[offsets.length - 1]) + 1n).toString()
        try {
          await consumer.commitOffsets([{ topic: args.topic, partition: batch.partition, offset: next }])
        } catch (e) {
          console.error(`${name}: commit failed: ${e.message}`)
          for (const o of offsets) atRisk.add(`${batch.partition}:${o}`)
        }
        await sleep(50)
      },
    })
    return consumer
  }

  const members = []
  for (let i = 1; i <= 3; i++) {
    members.push(await member(`m${i}`))
    await sleep(1500)
  }
  left.add('m1')
  lastAssignment.delete('m1')
  await members[0].disconnect()
  const deadline = Date.now() + 60000
  while (deliveries.size < PARTITIONS * PER_PARTITION && Date.now() < deadline) await sleep(200)
  // kafkajs heartbeats between fetches (every maxWaitTime when idle), so the rebalance after m1
  // left may still be running: wait for the remaining members' assignments to settle.
  const owned = () => [...lastAssignment.values()].flat().sort((a, b) => a - b).join(',')
  const settle = Date.now() + 20000
  while (owned() !== '0,1,2,3,4,5' && Date.now() < settle) await sleep(200)
  // Read before shutting down: each disconnect rebalances the members still running.
  const final = owned()
  for (const m of members.slice(1)) await m.disconnect()

  let missing = 0
  for (let p = 0; p < PARTITIONS; p++) for (let i = 0; i < PER_PARTITION; i++) if (!deliveries.has(`${p}:${i}`)) missing++
  if (missing) throw new Error(`${missing} records never delivered`)
  const unexplained = [...deliveries].filter(([k, n]) => n > 1 && !atRisk.has(k)).map(([k]) => k)
  if (unexplained.length) throw new Error(`${unexplained.length} redelivered without a failed commit, e.g. ${unexplained.slice(0, 5)}`)
  if (final !== '0,1,2,3,4,5') throw new Error(`last assignments overlap or miss partitions: ${final}`)
  const total = [...deliveries.values()].reduce((a, b) => a + b, 0)
  console.log(`OK ${CLIENT} delivered=${total} redelivered=${[...deliveries.values()].filter(n => n > 1).length}`)
}

main().catch(e => {
  console.log(`FAIL ${CLIENT}: ${e.stack || e}`)
  process.exit(1)
})
