//! The KIP-848 consumer group state machine (ConsumerGroupHeartbeat, ConsumerGroupDescribe).
