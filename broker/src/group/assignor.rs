//! KIP-848 server-side partition assignors: uniform and range.
//!
//! Both are pure and deterministic: the same [`GroupSpec`] always gives the same answer, whatever
//! the order members were added in. Member ids and topic ids are iterated in sorted order.
//!
//! - **uniform** (Kafka's default): every partition of every subscribed topic goes to one of the
//!   members subscribed to its topic. Members keep the partitions they already had in the previous
//!   target assignment where that does not break balance (sticky); what is left goes to the least
//!   loaded subscriber; then partitions move from the most to the least loaded eligible member
//!   until no member has two more partitions than another member that could take one of them.
//!   With identical subscriptions that means partition counts differ by at most one.
//! - **range**: per topic, the subscribers sorted by member id get contiguous ranges, the first
//!   `partitions % subscribers` of them one partition more (Kafka's range assignor). Topics with
//!   the same partition count and subscribers are co-partitioned.
//!
//! Rack awareness is deliberately absent: a single-node broker has no replica racks to match.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

/// Partitions by topic id: a member's assignment.
pub(crate) type Assignment = BTreeMap<Uuid, BTreeSet<i32>>;

/// What an assignor needs to know about one member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MemberSpec {
    /// Topic ids the member subscribes to (only topics that exist).
    pub(crate) subscribed: BTreeSet<Uuid>,
    /// The member's previous target assignment, for stickiness.
    pub(crate) current: Assignment,
}

/// The input of an assignment: members by member id, topics by id with their partition count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct GroupSpec {
    pub(crate) members: BTreeMap<String, MemberSpec>,
    pub(crate) topics: BTreeMap<Uuid, i32>,
}

/// A server-side assignor, by its KIP-848 name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Assignor {
    Uniform,
    Range,
}

impl Assignor {
    /// Every assignor this broker supports, the default first (Kafka's
    /// `group.consumer.assignors` default order).
    pub(crate) const ALL: [Assignor; 2] = [Assignor::Uniform, Assignor::Range];

    pub(crate) fn from_name(name: &str) -> Option<Assignor> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Assignor::Uniform => "uniform",
            Assignor::Range => "range",
        }
    }

    /// The target assignment: one entry per member of `spec` (possibly empty).
    pub(crate) fn assign(self, spec: &GroupSpec) -> BTreeMap<String, Assignment> {
        match self {
            Assignor::Uniform => uniform(spec),
            Assignor::Range => range(spec),
        }
    }
}

type Tp = (Uuid, i32);

fn uniform(spec: &GroupSpec) -> BTreeMap<String, Assignment> {
    let ids: Vec<&String> = spec.members.keys().collect();
    let members: Vec<&MemberSpec> = spec.members.values().collect();
    // Subscribers of each existing topic, as member indexes in id order.
    let mut subscribers: BTreeMap<Uuid, Vec<usize>> = BTreeMap::new();
    for (i, m) in members.iter().enumerate() {
        for t in &m.subscribed {
            if spec.topics.contains_key(t) {
                subscribers.entry(*t).or_default().push(i);
            }
        }
    }
    let mut owned: Vec<BTreeSet<Tp>> = vec![BTreeSet::new(); members.len()];
    let mut owner: BTreeMap<Tp, usize> = BTreeMap::new();

    // 1. Sticky: keep what each member had, if it still subscribes to it and it still exists.
    for (i, m) in members.iter().enumerate() {
        for (t, parts) in &m.current {
            let Some(&count) = spec.topics.get(t) else { continue };
            if !m.subscribed.contains(t) {
                continue;
            }
            for &p in parts {
                if p >= 0 && p < count && !owner.contains_key(&(*t, p)) {
                    owner.insert((*t, p), i);
                    owned[i].insert((*t, p));
                }
            }
        }
    }

    // 2. Every unowned partition goes to its least loaded subscriber (ties: lowest member id).
    for (t, subs) in &subscribers {
        let count = spec.topics[t];
        for p in 0..count {
            if owner.contains_key(&(*t, p)) {
                continue;
            }
            let &i = subs
                .iter()
                .min_by_key(|&&i| (owned[i].len(), i))
                .expect("a topic in `subscribers` has at least one subscriber");
            owner.insert((*t, p), i);
            owned[i].insert((*t, p));
        }
    }

    // 3. Balance: move a partition from a member to an eligible member with at least two fewer.
    // Each move lowers the sum of squared counts, so this terminates.
    loop {
        let mut givers: Vec<usize> = (0..members.len()).collect();
        givers.sort_by_key(|&i| (std::cmp::Reverse(owned[i].len()), i));
        let mut moved = None;
        'search: for &g in &givers {
            let g_len = owned[g].len();
            // Highest partitions first, so that balancing takes from the tail of a member's set.
            for &(t, p) in owned[g].iter().rev() {
                let &r = subscribers[&t]
                    .iter()
                    .min_by_key(|&&i| (owned[i].len(), i))
                    .expect("an owned partition's topic has subscribers");
                if owned[r].len() + 2 <= g_len {
                    moved = Some((g, r, (t, p)));
                    break 'search;
                }
            }
        }
        let Some((g, r, tp)) = moved else { break };
        owned[g].remove(&tp);
        owned[r].insert(tp);
    }

    ids.into_iter().zip(owned).map(|(id, tps)| (id.clone(), to_assignment(tps))).collect()
}

fn range(spec: &GroupSpec) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = spec.members.keys().map(|id| (id.clone(), Assignment::new())).collect();
    for (t, &count) in &spec.topics {
        // `members` is a BTreeMap, so subscribers come out sorted by member id.
        let subs: Vec<&String> =
            spec.members.iter().filter(|(_, m)| m.subscribed.contains(t)).map(|(id, _)| id).collect();
        if subs.is_empty() || count <= 0 {
            continue;
        }
        let n = subs.len() as i32;
        let (quota, extra) = (count / n, count % n);
        let mut start = 0;
        for (i, id) in subs.into_iter().enumerate() {
            let len = quota + i32::from((i as i32) < extra);
            if len > 0 {
                out.get_mut(id).expect("member").insert(*t, (start..start + len).collect());
            }
            start += len;
        }
        assert_eq!(start, count, "range assignor must hand out every partition once");
    }
    out
}

fn to_assignment(tps: BTreeSet<Tp>) -> Assignment {
    let mut a = Assignment::new();
    for (t, p) in tps {
        a.entry(t).or_default().insert(p);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    fn spec(members: &[(&str, &[u8])], topics: &[(u8, i32)]) -> GroupSpec {
        GroupSpec {
            members: members
                .iter()
                .map(|(id, subs)| {
                    (
                        id.to_string(),
                        MemberSpec { subscribed: subs.iter().map(|&t| topic(t)).collect(), current: Assignment::new() },
                    )
                })
                .collect(),
            topics: topics.iter().map(|&(t, n)| (topic(t), n)).collect(),
        }
    }

    fn count(a: &Assignment) -> usize {
        a.values().map(BTreeSet::len).sum()
    }

    /// Checks that every partition of every subscribed topic is assigned exactly once, and only
    /// to a subscriber.
    fn assert_complete(spec: &GroupSpec, out: &BTreeMap<String, Assignment>) {
        let mut seen = BTreeSet::new();
        for (id, a) in out {
            for (t, parts) in a {
                assert!(spec.members[id].subscribed.contains(t), "{id} got unsubscribed topic {t}");
                for &p in parts {
                    assert!(p >= 0 && p < spec.topics[t], "partition {p} of {t} does not exist");
                    assert!(seen.insert((*t, p)), "{t}-{p} assigned twice");
                }
            }
        }
        for (t, &n) in &spec.topics {
            if spec.members.values().any(|m| m.subscribed.contains(t)) {
                for p in 0..n {
                    assert!(seen.contains(&(*t, p)), "{t}-{p} not assigned");
                }
            }
        }
    }

    #[test]
    fn names_round_trip_and_unknown_is_none() {
        // Goal: the wire names Kafka clients send map to our assignors, nothing else does.
        assert_eq!(Assignor::from_name("uniform"), Some(Assignor::Uniform));
        assert_eq!(Assignor::from_name("range"), Some(Assignor::Range));
        assert_eq!(Assignor::from_name("sticky"), None);
        assert_eq!(Assignor::ALL[0], Assignor::Uniform, "uniform is the default");
    }

    #[test]
    fn range_gives_contiguous_ranges_extra_to_first_members() {
        // Goal: range behaves like Kafka's: 7 partitions over 3 members is 0-2, 3-4, 5-6.
        let s = spec(&[("a", &[1]), ("b", &[1]), ("c", &[1])], &[(1, 7)]);
        let out = Assignor::Range.assign(&s);
        assert_eq!(out["a"][&topic(1)], BTreeSet::from([0, 1, 2]));
        assert_eq!(out["b"][&topic(1)], BTreeSet::from([3, 4]));
        assert_eq!(out["c"][&topic(1)], BTreeSet::from([5, 6]));
        assert_complete(&s, &out);
    }

    #[test]
    fn range_co_partitions_topics_and_skips_unsubscribed() {
        // Goal: two topics with equal partition counts land on the same members; members
        // without a subscription get nothing but still appear.
        let s = spec(&[("a", &[1, 2]), ("b", &[1, 2]), ("c", &[])], &[(1, 4), (2, 4)]);
        let out = Assignor::Range.assign(&s);
        assert_eq!(out["a"][&topic(1)], out["a"][&topic(2)]);
        assert_eq!(out["b"][&topic(1)], out["b"][&topic(2)]);
        assert!(out["c"].is_empty());
        assert_complete(&s, &out);
    }

    #[test]
    fn uniform_single_member_gets_everything() {
        // Goal: a lone member owns every partition of its topics.
        let s = spec(&[("a", &[1, 2])], &[(1, 3), (2, 2), (3, 5)]);
        let out = Assignor::Uniform.assign(&s);
        assert_eq!(count(&out["a"]), 5);
        assert_complete(&s, &out);
    }

    #[test]
    fn uniform_is_sticky_when_a_member_joins() {
        // Goal: when a third member joins a balanced 2-member group on 6 partitions, only the
        // partitions the newcomer needs move; the others stay where they were.
        let mut s = spec(&[("a", &[1]), ("b", &[1])], &[(1, 6)]);
        let first = Assignor::Uniform.assign(&s);
        for (id, a) in &first {
            s.members.get_mut(id).unwrap().current = a.clone();
        }
        s.members.insert("c".into(), MemberSpec { subscribed: BTreeSet::from([topic(1)]), current: Assignment::new() });
        let second = Assignor::Uniform.assign(&s);
        assert_complete(&s, &second);
        for id in ["a", "b", "c"] {
            assert_eq!(count(&second[id]), 2, "{id} has 2 of 6");
        }
        for id in ["a", "b"] {
            assert!(second[id][&topic(1)].is_subset(&first[id][&topic(1)]), "{id} kept its own partitions");
        }
    }

    #[test]
    fn uniform_heterogeneous_subscriptions_respect_subscribers() {
        // Goal: with different subscriptions no member gets a topic it does not subscribe to,
        // and the shared topic is used to balance.
        let s = spec(&[("a", &[1]), ("b", &[1, 2])], &[(1, 4), (2, 4)]);
        let out = Assignor::Uniform.assign(&s);
        assert_complete(&s, &out);
        assert_eq!(count(&out["a"]), 4);
        assert_eq!(count(&out["b"]), 4);
    }

    #[test]
    fn uniform_scales_to_a_large_group() {
        // Goal: 200 members over 20 topics x 100 partitions, then one more member, assign in
        // well under a second each (debug build) and stay balanced.
        let topics: Vec<(u8, i32)> = (1..=20).map(|t| (t, 100)).collect();
        let subs: Vec<u8> = (1..=20).collect();
        let names: Vec<String> = (0..200).map(|i| format!("m{i:03}")).collect();
        let members: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), subs.as_slice())).collect();
        let mut s = spec(&members, &topics);
        let start = std::time::Instant::now();
        let first = Assignor::Uniform.assign(&s);
        for (id, a) in &first {
            s.members.get_mut(id).unwrap().current = a.clone();
        }
        s.members.insert(
            "new".into(),
            MemberSpec { subscribed: subs.iter().map(|&t| topic(t)).collect(), current: Assignment::new() },
        );
        let second = Assignor::Uniform.assign(&s);
        let took = start.elapsed();
        println!("uniform, 2000 partitions x 200 then 201 members: {took:?}");
        assert_complete(&s, &second);
        let counts: Vec<usize> = second.values().map(count).collect();
        assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1);
        assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
    }

    /// splitmix64, for seeded randomized tests without extra dependencies.
    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    #[test]
    fn uniform_balance_stickiness_and_determinism_randomized() {
        // Goal: for random homogeneous groups evolving through joins and leaves, uniform is
        // complete, balanced (counts differ by at most one), deterministic, and moves no
        // partition away from a member that stays at or below its fair share.
        let seed: u64 = std::env::var("CREEK_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
        println!("seed {seed} (set CREEK_TEST_SEED to replay)");
        let mut rng = seed;
        for round in 0..200 {
            let topics = 1 + next(&mut rng) % 4;
            let mut s = GroupSpec::default();
            for t in 0..topics {
                s.topics.insert(topic(t as u8), 1 + (next(&mut rng) % 12) as i32);
            }
            let all: BTreeSet<Uuid> = s.topics.keys().copied().collect();
            let mut next_id = 0;
            for _step in 0..8 {
                // Join or leave.
                if s.members.is_empty() || !next(&mut rng).is_multiple_of(3) {
                    next_id += 1;
                    s.members.insert(
                        format!("m{next_id:03}"),
                        MemberSpec { subscribed: all.clone(), current: Assignment::new() },
                    );
                } else {
                    let k = (next(&mut rng) % s.members.len() as u64) as usize;
                    let id = s.members.keys().nth(k).unwrap().clone();
                    s.members.remove(&id);
                }
                if s.members.is_empty() {
                    continue;
                }
                let out = Assignor::Uniform.assign(&s);
                assert_eq!(out, Assignor::Uniform.assign(&s), "round {round}: deterministic");
                assert_complete(&s, &out);
                let counts: Vec<usize> = out.values().map(count).collect();
                let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
                assert!(max - min <= 1, "round {round}: unbalanced {counts:?}");
                let total: usize = counts.iter().sum();
                let fair_floor = total / s.members.len();
                for (id, m) in &s.members {
                    let before = count(&m.current);
                    if before <= fair_floor {
                        for (t, parts) in &m.current {
                            assert!(
                                parts.is_subset(out[id].get(t).unwrap_or(&BTreeSet::new())),
                                "round {round}: {id} lost partitions while under its share"
                            );
                        }
                    }
                }
                for (id, a) in out {
                    s.members.get_mut(&id).unwrap().current = a;
                }
            }
        }
    }
}
