//! SIGKILL `creek` while producers write with acks=-1: after restart every acknowledged batch is
//! present, byte-exact, at its acknowledged offset. Set `CREEK_TEST_SEED` to replay a run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use creek_protocol::batch::{BatchView, batch_ranges, build_batch};
use creek_tests::CreekProcess;
use creek_tests::wire::{self, Wire};

const TOPIC: &str = "crash";
const PARTITIONS: i32 = 3;
const PRODUCERS: usize = 4;
const ROUNDS: usize = 3;

/// An acknowledged batch: where it landed and what was sent.
#[derive(Clone)]
struct Acked {
    partition: i32,
    offset: i64,
    sent: Vec<u8>,
}

fn seed() -> u64 {
    std::env::var("CREEK_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    })
}

fn next(state: &mut u64) -> u64 {
    // xorshift64*: deterministic per seed.
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

fn produce_until_dead(addr: String, id: usize, round: usize, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<Acked>>>) {
    let mut w = Wire::connect(&addr);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let partition = ((id as u64 + i) % PARTITIONS as u64) as i32;
        let payload = format!("r{round}-p{id}-n{i}-").repeat(1 + (i % 7) as usize);
        let key = format!("key-{id}-{i}");
        let batch =
            build_batch(0, 1_700_000_000_000 + i as i64, &[(Some(key.as_bytes()), Some(payload.as_bytes())); 3]);
        match wire::try_produce(&mut w, TOPIC, partition, batch.clone(), -1) {
            Some((0, offset)) => acked.lock().unwrap().push(Acked { partition, offset, sent: batch }),
            Some((code, _)) => panic!("produce failed with error {code}"),
            None => return, // the broker died: this batch was never acknowledged
        }
        i += 1;
    }
}

/// Reads a whole partition and returns its batches by base offset.
fn read_partition(broker: &CreekProcess, partition: i32) -> std::collections::BTreeMap<i64, Vec<u8>> {
    let mut w = Wire::connect(broker.bootstrap());
    let mut out = std::collections::BTreeMap::new();
    let mut offset = 0;
    loop {
        let (err, hw, records) = wire::fetch(&mut w, TOPIC, partition, offset, 0);
        assert_eq!(err, 0, "fetch at {offset}");
        if records.is_empty() {
            assert_eq!(offset, hw, "fetch returned nothing below the high watermark");
            return out;
        }
        for r in batch_ranges(&records).expect("whole batches") {
            let view = BatchView::new(&records[r.clone()]).unwrap();
            view.verify_crc().expect("stored batches keep valid CRCs");
            out.insert(view.base_offset(), records[r].to_vec());
            offset = view.last_offset() + 1;
        }
    }
}

#[test]
fn sigkill_during_acks_all_produce_loses_no_acknowledged_batch() {
    let seed = seed();
    println!("crash test seed: {seed} (replay with CREEK_TEST_SEED={seed})");
    let mut rng = seed | 1;
    let mut broker = CreekProcess::start(&[]);
    assert_eq!(wire::create_topic(&mut Wire::connect(broker.bootstrap()), TOPIC, PARTITIONS, &[]), 0);
    let acked = Arc::new(Mutex::new(Vec::new()));
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|id| {
                let (addr, stop, acked) = (broker.bootstrap().to_string(), stop.clone(), acked.clone());
                std::thread::spawn(move || produce_until_dead(addr, id, round, stop, acked))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300 + next(&mut rng) % 1200));
        broker.kill();
        stop.store(true, Ordering::Relaxed);
        for p in producers {
            p.join().expect("producer thread");
        }
        broker.restart();
        let acked = acked.lock().unwrap().clone();
        assert!(!acked.is_empty(), "round {round}: no batch was acknowledged before the kill");
        for partition in 0..PARTITIONS {
            let stored = read_partition(&broker, partition);
            for a in acked.iter().filter(|a| a.partition == partition) {
                let got = stored.get(&a.offset).unwrap_or_else(|| {
                    panic!("round {round} seed {seed}: acknowledged batch at {partition}/{} is missing", a.offset)
                });
                // Everything after baseOffset/batchLength/partitionLeaderEpoch is what was sent.
                assert_eq!(&got[8..12], &a.sent[8..12], "batch length at {partition}/{}", a.offset);
                assert_eq!(
                    &got[16..],
                    &a.sent[16..],
                    "round {round} seed {seed}: bytes differ at {partition}/{}",
                    a.offset
                );
            }
        }
        println!("round {round}: {} acknowledged batches verified after SIGKILL", acked.len());
    }
}
