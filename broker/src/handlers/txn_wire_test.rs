//! Every transaction API, at every version the broker advertises, answers through the real frame
//! path (`server::handle_frame`) with a response a client can decode and Kafka's outcome: one
//! transaction per version from InitProducerId to EndTxn, with its state visible in
//! DescribeProducers, DescribeTransactions and ListTransactions on the way.

use std::collections::BTreeMap;

use creek_protocol::batch::{build_batch, set_producer};
use kafka_protocol::messages::*;

use super::describe_configs::fixture;
use super::group_wire_test::{call, s, versions};
use super::{code, supported};
use crate::txn::state::{INVALID_PRODUCER_EPOCH, INVALID_TRANSACTION_TIMEOUT, PRODUCER_FENCED};

async fn init(ctx: &super::Ctx, version: i16, txn_id: Option<&str>, timeout_ms: i32) -> InitProducerIdResponse {
    let mut req = InitProducerIdRequest::default();
    req.transactional_id = txn_id.map(|t| TransactionalId(s(t)));
    req.transaction_timeout_ms = timeout_ms;
    req.producer_id = ProducerId(-1);
    req.producer_epoch = -1;
    call(ctx, ApiKey::InitProducerId, version, &req).await
}

#[tokio::test]
async fn transaction_apis_answer_and_encode_at_every_advertised_version() {
    let (ctx, _dir) = fixture::broker(&[]);
    ctx.groups.start().unwrap();
    ctx.txns.start().unwrap();
    ctx.broker.create_topic("t", 2, BTreeMap::new()).unwrap();
    let partition = ctx.broker.topic("t").unwrap().partition(0).unwrap();

    for v in versions(ApiKey::InitProducerId) {
        let r = init(&ctx, v, None, 0).await;
        assert_eq!((r.error_code, r.producer_epoch), (0, 0), "idempotent init v{v}");
        assert!(r.producer_id.0 >= 0);
        let r = init(&ctx, v, Some("too-long"), 900_001).await;
        assert_eq!(r.error_code, INVALID_TRANSACTION_TIMEOUT, "v{v}");
    }

    let max_init = supported(ApiKey::InitProducerId).unwrap().1;
    for v in versions(ApiKey::EndTxn) {
        let txn_id = format!("tx-{v}");
        let r = init(&ctx, max_init, Some(&txn_id), 60_000).await;
        assert_eq!(r.error_code, 0, "init {txn_id}");
        let (pid, epoch) = (r.producer_id, r.producer_epoch);

        // AddPartitionsToTxn: the v0-3 single form, or the v4 batched form.
        let mut topic = add_partitions_to_txn_request::AddPartitionsToTxnTopic::default();
        topic.name = TopicName(s("t"));
        topic.partitions = vec![0];
        let mut add = AddPartitionsToTxnRequest::default();
        if v <= 3 {
            add.v3_and_below_transactional_id = TransactionalId(s(&txn_id));
            add.v3_and_below_producer_id = pid;
            add.v3_and_below_producer_epoch = epoch;
            add.v3_and_below_topics = vec![topic];
        } else {
            let mut t = add_partitions_to_txn_request::AddPartitionsToTxnTransaction::default();
            t.transactional_id = TransactionalId(s(&txn_id));
            t.producer_id = pid;
            t.producer_epoch = epoch;
            t.topics = vec![topic];
            add.transactions = vec![t];
        }
        let r: AddPartitionsToTxnResponse = call(&ctx, ApiKey::AddPartitionsToTxn, v, &add).await;
        let results =
            if v <= 3 { r.results_by_topic_v3_and_below } else { r.results_by_transaction[0].topic_results.clone() };
        assert_eq!(results[0].results_by_partition[0].partition_error_code, 0, "AddPartitionsToTxn v{v}");

        // The producer writes one transactional batch.
        let mut batch = build_batch(0, 1_000, &[(None, Some(b"in a transaction"))]);
        set_producer(&mut batch, pid.0, epoch, 0, true);
        let first = partition.log.lock().append(&mut batch, 0, 1_000).unwrap().base_offset;
        assert_eq!(partition.log.lock().first_unstable_offset(), Some(first));

        let mut req = DescribeProducersRequest::default();
        let mut tr = describe_producers_request::TopicRequest::default();
        tr.name = TopicName(s("t"));
        tr.partition_indexes = vec![0];
        req.topics = vec![tr];
        let r: DescribeProducersResponse = call(&ctx, ApiKey::DescribeProducers, 0, &req).await;
        let p = r.topics[0].partitions[0].active_producers.iter().find(|p| p.producer_id == pid).unwrap();
        assert_eq!((p.last_sequence, p.current_txn_start_offset), (0, first as i64));

        let mut req = DescribeTransactionsRequest::default();
        req.transactional_ids = vec![TransactionalId(s(&txn_id)), TransactionalId(s("unknown"))];
        let r: DescribeTransactionsResponse = call(&ctx, ApiKey::DescribeTransactions, 0, &req).await;
        assert_eq!(r.transaction_states[0].transaction_state.as_str(), "Ongoing");
        assert_eq!(r.transaction_states[0].topics[0].partitions, vec![0]);
        assert_eq!(r.transaction_states[1].error_code, crate::txn::state::TRANSACTIONAL_ID_NOT_FOUND);

        for lv in versions(ApiKey::ListTransactions) {
            let mut req = ListTransactionsRequest::default();
            req.state_filters = vec![s("Ongoing"), s("NoSuchState")];
            req.duration_filter = -1;
            let r: ListTransactionsResponse = call(&ctx, ApiKey::ListTransactions, lv, &req).await;
            let ids: Vec<&str> = r.transaction_states.iter().map(|t| t.transactional_id.0.as_str()).collect();
            assert_eq!(ids, vec![txn_id.as_str()], "ListTransactions v{lv}");
            assert_eq!(r.unknown_state_filters, vec![s("NoSuchState")]);
        }

        // Offsets in the transaction.
        let group = format!("g-{v}");
        let mut req = AddOffsetsToTxnRequest::default();
        req.transactional_id = TransactionalId(s(&txn_id));
        req.producer_id = pid;
        req.producer_epoch = epoch;
        req.group_id = GroupId(s(&group));
        let r: AddOffsetsToTxnResponse = call(&ctx, ApiKey::AddOffsetsToTxn, v, &req).await;
        assert_eq!(r.error_code, 0, "AddOffsetsToTxn v{v}");
        let mut req = TxnOffsetCommitRequest::default();
        req.transactional_id = TransactionalId(s(&txn_id));
        req.group_id = GroupId(s(&group));
        req.producer_id = pid;
        req.producer_epoch = epoch;
        req.generation_id = -1;
        let mut tp = txn_offset_commit_request::TxnOffsetCommitRequestPartition::default();
        tp.partition_index = 1;
        tp.committed_offset = 7;
        let mut tt = txn_offset_commit_request::TxnOffsetCommitRequestTopic::default();
        tt.name = TopicName(s("t"));
        tt.partitions = vec![tp];
        req.topics = vec![tt];
        let r: TxnOffsetCommitResponse = call(&ctx, ApiKey::TxnOffsetCommit, v, &req).await;
        assert_eq!(r.topics[0].partitions[0].error_code, 0, "TxnOffsetCommit v{v}");
        assert!(ctx.groups.has_pending_txn_offset(&group, "t", 1));

        // A fenced epoch cannot end it; the right one commits (even versions) or aborts (odd).
        let commit = v % 2 == 0;
        let mut end = EndTxnRequest::default();
        end.transactional_id = TransactionalId(s(&txn_id));
        end.producer_id = pid;
        end.producer_epoch = epoch - 1;
        end.committed = commit;
        let r: EndTxnResponse = call(&ctx, ApiKey::EndTxn, v, &end).await;
        assert_eq!(r.error_code, if v >= 2 { PRODUCER_FENCED } else { INVALID_PRODUCER_EPOCH }, "EndTxn v{v}");
        end.producer_epoch = epoch;
        let r: EndTxnResponse = call(&ctx, ApiKey::EndTxn, v, &end).await;
        assert_eq!(r.error_code, code::NONE, "EndTxn v{v}");

        let log = partition.log.lock();
        assert_eq!(log.first_unstable_offset(), None, "the marker closed the transaction");
        let aborted = log.aborted_transactions(first, log.log_end_offset());
        assert_eq!(aborted.iter().any(|a| a.producer_id == pid.0 && a.first_offset == first), !commit);
        drop(log);
        assert!(!ctx.groups.has_pending_txn_offset(&group, "t", 1));
        let committed = ctx.groups.fetch(&group, Some(vec![("t".to_string(), vec![1])]));
        assert_eq!(committed[0].1[0].1.as_ref().map(|c| c.offset), commit.then_some(7), "offsets follow the outcome");
        let mut req = DescribeTransactionsRequest::default();
        req.transactional_ids = vec![TransactionalId(s(&txn_id))];
        let r: DescribeTransactionsResponse = call(&ctx, ApiKey::DescribeTransactions, 0, &req).await;
        let want = if commit { "CompleteCommit" } else { "CompleteAbort" };
        assert_eq!(r.transaction_states[0].transaction_state.as_str(), want);
    }
}
