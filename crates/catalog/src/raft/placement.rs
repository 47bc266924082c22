//! Where flags live: an id hashes to one of P partitions, and each partition's voters are the
//! nodes ranked highest for it by rendezvous hashing, so adding partitions spreads groups (and
//! their leaders) over the catalog nodes without a central table.

use super::types::NodeId;
use mcloud_core::BatchId;

/// A stable 64-bit mix (splitmix64), identical on every node and every build.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The partition of a flag id.
pub fn partition_of(id: BatchId, partitions: u32) -> u32 {
    if partitions <= 1 {
        return 0;
    }
    let h = mix(id.0 as u64 ^ mix((id.0 >> 64) as u64));
    (h % partitions as u64) as u32
}

/// The `replicas` nodes that vote in `partition`, highest rendezvous weight first: the first
/// one creates the group and so usually leads it first.
pub fn voters_for(
    partition: u32,
    nodes: impl Iterator<Item = NodeId>,
    replicas: usize,
) -> Vec<NodeId> {
    let mut ranked: Vec<(u64, NodeId)> =
        nodes.map(|n| (mix(mix(partition as u64) ^ n), n)).collect();
    ranked.sort_by(|a, b| b.cmp(a));
    ranked
        .into_iter()
        .take(replicas.max(1))
        .map(|(_, n)| n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_cover_all_and_voters_are_distinct() {
        let mut seen = [0u32; 4];
        for i in 0..4000u128 {
            seen[partition_of(BatchId(i * 7919), 4) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
        let v = voters_for(2, [1, 2, 3, 4, 5].into_iter(), 3);
        assert_eq!(v.len(), 3);
        let mut d = v.clone();
        d.dedup();
        assert_eq!(d.len(), 3);
        // Removing a node that is not a voter does not move the partition.
        let gone = (1..=5).find(|n| !v.contains(n)).unwrap();
        let w = voters_for(2, (1..=5).filter(|n| *n != gone), 3);
        assert_eq!(v, w);
    }
}
