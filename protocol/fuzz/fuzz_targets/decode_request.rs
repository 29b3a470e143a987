//! Fuzzes everything that reads client bytes: frame length, request header, every request body
//! the broker serves (under the allocation budget), batch headers and record walks.
#![no_main]

use bytes::Bytes;
use creek_protocol::batch::BatchView;
use creek_protocol::budget::BudgetAllocator;
use creek_protocol::codec::{decode_body, decode_produce};
use creek_protocol::{frame, header, records};
use kafka_protocol::messages::*;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: BudgetAllocator = BudgetAllocator;

fuzz_target!(|data: &[u8]| {
    let _ = frame::peek_frame_len(data, 1 << 20);
    if data.len() < 2 {
        return;
    }
    // First two bytes pick the API and version; the rest is a frame body after the length prefix.
    let (sel, rest) = data.split_at(2);
    let version = i16::from(sel[1] % 20);
    let body = Bytes::copy_from_slice(rest);
    let _ = header::parse_request_header(&mut body.clone(), i16::from(sel[0] % 3));
    match sel[0] % 17 {
        0 => drop(decode_produce(body, version)),
        1 => drop(decode_body::<FetchRequest>(body, version)),
        2 => drop(decode_body::<ListOffsetsRequest>(body, version)),
        3 => drop(decode_body::<MetadataRequest>(body, version)),
        4 => drop(decode_body::<ApiVersionsRequest>(body, version)),
        5 => drop(decode_body::<CreateTopicsRequest>(body, version)),
        6 => drop(decode_body::<DeleteTopicsRequest>(body, version)),
        7 => drop(decode_body::<DeleteRecordsRequest>(body, version)),
        8 => drop(decode_body::<OffsetForLeaderEpochRequest>(body, version)),
        9 => drop(decode_body::<DescribeConfigsRequest>(body, version)),
        10 => drop(decode_body::<AlterConfigsRequest>(body, version)),
        11 => drop(decode_body::<DescribeLogDirsRequest>(body, version)),
        12 => drop(decode_body::<CreatePartitionsRequest>(body, version)),
        13 => drop(decode_body::<IncrementalAlterConfigsRequest>(body, version)),
        14 => drop(decode_body::<DescribeClusterRequest>(body, version)),
        _ => {
            if let Ok(view) = BatchView::new(rest) {
                let _ = view.validate_for_produce();
                let _ = records::record_timestamps(&view, 1 << 20);
            }
        }
    }
});
