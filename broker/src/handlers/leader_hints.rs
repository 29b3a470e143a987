//! KIP-951's new-leader hints: in a cluster, a partition that Produce or Fetch refuses because
//! this node does not lead it names its current leader and epoch, and the response carries that
//! leader's Kafka address, so the client moves there without a Metadata round trip.
//!
//! Only Produce v10+ and Fetch v12+ (per partition `current_leader`), and Produce v10+ and
//! Fetch v16+ (top-level `node_endpoints`) have the fields; older versions get no hints. A
//! single node never hints (it leads every partition).

use std::collections::BTreeSet;

use super::code;
use crate::cluster::Cluster;
use crate::state::Partition;

/// A partition leader as the wire names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Leader {
    pub(crate) id: i32,
    pub(crate) epoch: i32,
}

impl Leader {
    /// What KIP-951 answers while no leader is known (an election is under way).
    pub(crate) const UNKNOWN: Leader = Leader { id: -1, epoch: -1 };
}

/// Where clients should go, as this node sees it: the seam that lets tests hint without a
/// running cluster.
pub(crate) trait LeaderView {
    /// The leader clients should see for `partition`, or [`Leader::UNKNOWN`].
    fn leader_of(&self, partition: &Partition) -> Leader;
    /// A broker's announced Kafka address, if it is registered.
    fn address(&self, id: i32) -> Option<(String, u16)>;
}

impl LeaderView for Cluster {
    fn leader_of(&self, partition: &Partition) -> Leader {
        // Hosted elsewhere: the leader its replicas report (none while its replica is starting).
        let Some(replica) = partition.replica.get() else {
            return match self.remote_leader(&partition.topic, partition.index) {
                Some((id, term)) => Leader { id: id as i32, epoch: term as i32 },
                None => Leader::UNKNOWN,
            };
        };
        // A leader known to this replica was elected in its current term: a vote in a newer
        // term clears the leader until one is elected, so the term is that leader's epoch.
        match self.visible_leader(&replica).and_then(|l| i32::try_from(l).ok()) {
            Some(id) => Leader { id, epoch: replica.epoch() },
            None => Leader::UNKNOWN,
        }
    }

    fn address(&self, id: i32) -> Option<(String, u16)> {
        self.broker_address(u64::try_from(id).ok()?)
    }
}

/// Whether a partition's error code carries a hint: NOT_LEADER_OR_FOLLOWER, and (Fetch only)
/// FENCED_LEADER_EPOCH, whose client holds an older epoch than the leader's.
pub(crate) fn hinted(error_code: i16, fenced_too: bool) -> bool {
    error_code == code::NOT_LEADER_OR_FOLLOWER || (fenced_too && error_code == code::FENCED_LEADER_EPOCH)
}

/// The addresses of the leaders named, in id order, as (id, host, port); one whose address is
/// not known is left out (the client then falls back to Metadata).
pub(crate) fn endpoints(view: &impl LeaderView, named: &BTreeSet<i32>) -> Vec<(i32, String, u16)> {
    named.iter().filter_map(|&id| view.address(id).map(|(host, port)| (id, host, port))).collect()
}

#[cfg(test)]
pub(crate) mod fake {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use kafka_protocol::messages::{ApiKey, ResponseHeader};
    use kafka_protocol::protocol::{Decodable, Encodable};

    use super::{Leader, LeaderView};
    use crate::state::Partition;

    /// Encodes `resp` as the broker would answer at `version` and decodes it as a client would.
    pub(crate) fn round_trip<R: Encodable + Decodable + 'static>(key: ApiKey, version: i16, resp: &R) -> R {
        let chunks = creek_protocol::codec::encode_response(key, version, 7, resp)
            .unwrap_or_else(|e| panic!("{key:?} v{version}: {e}"));
        let mut b = Bytes::from(chunks.concat());
        let _ = b.split_to(4);
        ResponseHeader::decode(&mut b, key.response_header_version(version)).unwrap();
        R::decode(&mut b, version).unwrap_or_else(|e| panic!("{key:?} v{version}: {e}"))
    }

    /// A cluster view where partition `i` is led by `leaders[i]` and brokers live at `addresses`.
    pub(crate) struct FakeView {
        pub(crate) leaders: BTreeMap<i32, Leader>,
        pub(crate) addresses: BTreeMap<i32, (String, u16)>,
    }

    impl LeaderView for FakeView {
        fn leader_of(&self, partition: &Partition) -> Leader {
            self.leaders.get(&partition.index).copied().unwrap_or(Leader::UNKNOWN)
        }

        fn address(&self, id: i32) -> Option<(String, u16)> {
            self.addresses.get(&id).cloned()
        }
    }
}
