//! A compacted topic, through the real broker: 100,000 updates over 1,000 keys compact to the
//! latest value per key, tombstoned keys disappear after `delete.retention.ms`, a consumer
//! reading from offset 0 sees the correct table, and keyless records are refused.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use creek_protocol::batch::{BatchView, batch_ranges, build_batch};
use creek_protocol::records::DecodedBatch;
use creek_tests::CreekProcess;
use creek_tests::wire::{self, Wire};

const TOPIC: &str = "table";
const KEYS: usize = 1000;
const UPDATES: usize = 100_000;
const PER_BATCH: usize = 100;

/// Reads the whole partition from offset 0: (records seen, the table they build, tombstones seen).
fn read_table(w: &mut Wire) -> (usize, BTreeMap<Vec<u8>, Vec<u8>>, usize) {
    let mut table = BTreeMap::new();
    let (mut seen, mut tombstones, mut offset) = (0, 0, 0);
    loop {
        let (err, hw, records) = wire::fetch(w, TOPIC, 0, offset, 0);
        assert_eq!(err, 0, "fetch at {offset}");
        if records.is_empty() {
            assert!(offset >= hw, "nothing returned below the high watermark at {offset}");
            return (seen, table, tombstones);
        }
        for r in batch_ranges(&records).unwrap() {
            let view = BatchView::new(&records[r]).unwrap();
            view.verify_crc().expect("compacted batches keep valid CRCs");
            for rec in DecodedBatch::new(view, 64 << 20).unwrap().iter() {
                let rec = rec.unwrap();
                assert!(rec.offset >= offset, "offsets go backwards at {}", rec.offset);
                seen += 1;
                let key = rec.key.expect("every record has a key").to_vec();
                match rec.value {
                    Some(v) => {
                        table.insert(key, v.to_vec());
                    }
                    None => {
                        tombstones += 1;
                        table.remove(&key);
                    }
                }
            }
            offset = view.last_offset() + 1;
        }
    }
}

#[test]
fn compacted_topic_keeps_the_latest_value_per_key_and_drops_old_tombstones() {
    let broker = CreekProcess::start(&[("log.retention.check.interval.ms", "200")]);
    let mut w = Wire::connect(broker.bootstrap());
    let configs = [
        ("cleanup.policy", "compact"),
        ("segment.bytes", "65536"),
        ("min.cleanable.dirty.ratio", "0.01"),
        ("delete.retention.ms", "1000"),
    ];
    assert_eq!(wire::create_topic(&mut w, TOPIC, 1, &configs), 0);

    // A keyless record is refused on a compacted topic, and nothing is appended.
    let keyless = build_batch(0, 1, &[(None, Some(b"no key"))]);
    assert_eq!(wire::produce(&mut w, TOPIC, 0, keyless, -1).0, 87, "keyless record gives INVALID_RECORD");
    assert_eq!(wire::list_offset(&mut w, TOPIC, 0, -1), (0, 0));

    // 100,000 updates over 1,000 keys; keys 0..100 are deleted halfway through.
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut updates = 0;
    let mut deleted = false;
    while updates < UPDATES {
        if !deleted && updates >= UPDATES / 2 {
            let keys: Vec<Vec<u8>> = (0..100).map(|k| format!("key-{k:04}").into_bytes()).collect();
            let tombstones: Vec<(Option<&[u8]>, Option<&[u8]>)> = keys.iter().map(|k| (Some(&k[..]), None)).collect();
            assert_eq!(wire::produce(&mut w, TOPIC, 0, build_batch(0, 2, &tombstones), 1).0, 0);
            for k in &keys {
                model.remove(k);
            }
            deleted = true;
        }
        let rows: Vec<(Vec<u8>, Vec<u8>)> = (0..PER_BATCH)
            .map(|i| {
                let n = updates + i;
                // After the deletes, only keys 100.. are updated, so the tombstones stay final.
                let k = if deleted { 100 + n % (KEYS - 100) } else { n % KEYS };
                (format!("key-{k:04}").into_bytes(), format!("value-{n}").into_bytes())
            })
            .collect();
        let recs: Vec<(Option<&[u8]>, Option<&[u8]>)> =
            rows.iter().map(|(k, v)| (Some(&k[..]), Some(&v[..]))).collect();
        assert_eq!(wire::produce(&mut w, TOPIC, 0, build_batch(0, 3, &recs), 1).0, 0);
        for (k, v) in rows {
            model.insert(k, v);
        }
        updates += PER_BATCH;
    }

    // Compaction runs in the background; wait until the tombstones are gone too.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (seen, table, tombstones) = read_table(&mut w);
        assert_eq!(table, model, "a consumer reading from 0 must see the latest value per key");
        if seen < UPDATES / 10 && tombstones == 0 {
            println!("compacted: {seen} records remain of {UPDATES} updates + 100 tombstones");
            break;
        }
        assert!(Instant::now() < deadline, "not compacted within 60 s: {seen} records, {tombstones} tombstones");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Offsets never change: the log end is where the producer left it.
    assert_eq!(wire::list_offset(&mut w, TOPIC, 0, -1), (0, (UPDATES + 100) as i64));
}
