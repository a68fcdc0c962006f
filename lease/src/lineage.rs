//! Shard lineage: which shards need a lease, which are finished, and which
//! follow a shard. Pure functions over what ListShards says and what the
//! lease table holds, shared by the DynamoDB and in-memory lease sources.
//!
//! The rule that keeps records from being read twice (the KCL's
//! hierarchical shard sync): **a closed shard that is an ancestor, at any
//! depth, of a shard with a lease is finished.** A shard only gets a lease
//! after its parents ended, and a parent's lease is deleted only once every
//! child moved past its start, so an ancestor without a lease was read to
//! its end and cleaned up. It never gets a lease again, although ListShards
//! lists it for the whole retention period.
//!
//! Links come from ListShards' parent ids and, for shards no longer listed,
//! from the leases' `parentShardId`s.

use std::collections::{HashMap, HashSet};

use kcld_checkpoint::Checkpoint;

use crate::ShardSpec;

/// A lease as lineage sees it: its shard and that shard's parents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leased {
    /// The shard the lease is for.
    pub shard_id: String,
    /// The shard's parents, from the lease's `parentShardId`s.
    pub parents: Vec<String>,
}

/// What is known of a stream's shards and leases at one moment.
#[derive(Clone, Debug, Default)]
pub struct Lineage {
    /// Shards as ListShards returned them, by id.
    listed: HashMap<String, ShardSpec>,
    /// Shards that have a lease.
    leased: HashSet<String>,
    /// Parent links: ListShards' where listed, else the lease's.
    parents: HashMap<String, Vec<String>>,
    /// Listing order, for stable plans.
    order: Vec<String>,
}

impl Lineage {
    /// Joins a ListShards result with the table's leases; where both name a
    /// shard's parents, ListShards wins.
    pub fn new(listed: &[ShardSpec], leased: &[Leased]) -> Self {
        let mut parents: HashMap<String, Vec<String>> = leased
            .iter()
            .map(|l| (l.shard_id.clone(), l.parents.clone()))
            .collect();
        for s in listed {
            parents.insert(s.shard_id.clone(), s.parents.clone());
        }
        Lineage {
            listed: listed
                .iter()
                .map(|s| (s.shard_id.clone(), s.clone()))
                .collect(),
            leased: leased.iter().map(|l| l.shard_id.clone()).collect(),
            parents,
            order: listed.iter().map(|s| s.shard_id.clone()).collect(),
        }
    }

    fn parents_of(&self, shard_id: &str) -> &[String] {
        self.parents.get(shard_id).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every shard that is an ancestor (at any depth) of a leased shard and
    /// has no lease itself: read to its end and cleaned up.
    pub fn finished(&self) -> HashSet<String> {
        let mut finished = HashSet::new();
        let mut stack: Vec<&str> = self.leased.iter().map(String::as_str).collect();
        let mut seen: HashSet<&str> = stack.iter().copied().collect();
        while let Some(shard) = stack.pop() {
            for parent in self.parents_of(shard) {
                if seen.insert(parent.as_str()) {
                    if !self.leased.contains(parent) {
                        finished.insert(parent.clone());
                    }
                    stack.push(parent.as_str());
                }
            }
        }
        finished
    }

    /// Whether `shard_id` was finished: it has no lease and is an ancestor
    /// of a shard that has one.
    pub fn is_finished(&self, shard_id: &str) -> bool {
        !self.leased.contains(shard_id) && self.finished().contains(shard_id)
    }

    /// The shards that name `shard_id` as a parent, as listed.
    pub fn children_of(&self, shard_id: &str) -> Vec<ShardSpec> {
        self.order
            .iter()
            .filter_map(|id| self.listed.get(id))
            .filter(|s| s.parents.iter().any(|p| p == shard_id))
            .cloned()
            .collect()
    }

    /// Whether some ancestor (at any depth) of `shard_id` has a lease.
    fn descends_from_lease(&self, shard_id: &str, memo: &mut HashMap<String, bool>) -> bool {
        if let Some(known) = memo.get(shard_id) {
            return *known;
        }
        // Guard against a cycle in bad data: assume no while visiting.
        memo.insert(shard_id.to_owned(), false);
        let parents = self.parents_of(shard_id).to_vec();
        let result = parents
            .iter()
            .any(|p| self.leased.contains(p) || self.descends_from_lease(p, memo));
        memo.insert(shard_id.to_owned(), result);
        result
    }

    /// Generations above `shard_id` that are known: 0 for a shard without
    /// known parents. Orders new leases parents first.
    fn depth(&self, shard_id: &str, memo: &mut HashMap<String, usize>) -> usize {
        if let Some(d) = memo.get(shard_id) {
            return *d;
        }
        memo.insert(shard_id.to_owned(), 0);
        let parents = self.parents_of(shard_id).to_vec();
        let d = parents
            .iter()
            .filter(|p| self.parents.contains_key(p.as_str()))
            .map(|p| self.depth(p, memo) + 1)
            .max()
            .unwrap_or(0);
        memo.insert(shard_id.to_owned(), d);
        d
    }

    /// The leases to create, parents before children, each with its
    /// starting position:
    /// - a listed shard that has a lease, or is finished, gets none;
    /// - a shard descending from a leased shard starts at TRIM_HORIZON
    ///   (AT_TIMESTAMP when that is the initial position), so nothing
    ///   written to it is skipped;
    /// - a shard of a lineage the table does not know (every shard at an
    ///   application's first start) starts at `initial`: with LATEST only
    ///   open shards get leases, as the KCL starts at the open leaves;
    ///   with TRIM_HORIZON or AT_TIMESTAMP every shard does, and children
    ///   wait for their parents.
    ///
    /// Create them in the order given and stop at the first failure: a
    /// child created before its parent would make the parent look finished.
    pub fn plan(&self, initial: &Checkpoint) -> Vec<(ShardSpec, Checkpoint)> {
        let finished = self.finished();
        let mut memo = HashMap::new();
        let mut plan = Vec::new();
        for id in &self.order {
            let Some(shard) = self.listed.get(id) else {
                continue;
            };
            if self.leased.contains(id) || finished.contains(id) {
                continue;
            }
            let start = if self.descends_from_lease(id, &mut memo) {
                match initial {
                    Checkpoint::AtTimestamp => Checkpoint::AtTimestamp,
                    _ => Checkpoint::TrimHorizon,
                }
            } else {
                match initial {
                    Checkpoint::Latest if shard.closed => continue,
                    Checkpoint::Latest => Checkpoint::Latest,
                    Checkpoint::AtTimestamp => Checkpoint::AtTimestamp,
                    _ => Checkpoint::TrimHorizon,
                }
            };
            plan.push((shard.clone(), start));
        }
        let mut depths = HashMap::new();
        plan.sort_by_cached_key(|(s, _)| {
            (self.depth(&s.shard_id, &mut depths), s.shard_id.clone())
        });
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parents: &[&str], closed: bool) -> ShardSpec {
        ShardSpec {
            shard_id: id.into(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            starting_hash_key: "0".into(),
            ending_hash_key: "1".into(),
            closed,
        }
    }

    fn leased(id: &str, parents: &[&str]) -> Leased {
        Leased {
            shard_id: id.into(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn ids(plan: &[(ShardSpec, Checkpoint)]) -> Vec<(String, Checkpoint)> {
        plan.iter()
            .map(|(s, c)| (s.shard_id.clone(), c.clone()))
            .collect()
    }

    /// 0 split into 1 and 2; 1 split into 3 and 4, 2 into 5 and 6.
    fn two_splits() -> Vec<ShardSpec> {
        vec![
            shard("s0", &[], true),
            shard("s1", &["s0"], true),
            shard("s2", &["s0"], true),
            shard("s3", &["s1"], false),
            shard("s4", &["s1"], false),
            shard("s5", &["s2"], false),
            shard("s6", &["s2"], false),
        ]
    }

    fn th(id: &str) -> (String, Checkpoint) {
        (id.into(), Checkpoint::TrimHorizon)
    }

    #[test]
    fn first_start_at_trim_horizon_leases_every_shard_parents_first() {
        let l = Lineage::new(&two_splits(), &[]);
        assert_eq!(
            ids(&l.plan(&Checkpoint::TrimHorizon)),
            [
                th("s0"),
                th("s1"),
                th("s2"),
                th("s3"),
                th("s4"),
                th("s5"),
                th("s6")
            ]
        );
    }

    #[test]
    fn first_start_at_latest_leases_only_the_open_leaves() {
        let l = Lineage::new(&two_splits(), &[]);
        let plan = ids(&l.plan(&Checkpoint::Latest));
        let want: Vec<(String, Checkpoint)> = ["s3", "s4", "s5", "s6"]
            .iter()
            .map(|s| (s.to_string(), Checkpoint::Latest))
            .collect();
        assert_eq!(plan, want);
    }

    #[test]
    fn after_clean_up_the_grandparent_is_never_leased_again() {
        // The grandchildren have leases; the parents and grandparent were
        // cleaned up but are still listed.
        let leases = [
            leased("s3", &["s1"]),
            leased("s4", &["s1"]),
            leased("s5", &["s2"]),
            leased("s6", &["s2"]),
        ];
        let l = Lineage::new(&two_splits(), &leases);
        for initial in [
            Checkpoint::TrimHorizon,
            Checkpoint::Latest,
            Checkpoint::AtTimestamp,
        ] {
            assert!(l.plan(&initial).is_empty(), "{initial}");
        }
        let finished = l.finished();
        assert_eq!(
            finished,
            HashSet::from(["s0".into(), "s1".into(), "s2".into()])
        );
        assert!(l.is_finished("s0"));
        assert!(!l.is_finished("s3"));
    }

    #[test]
    fn only_one_branch_cleaned_up_still_finishes_the_common_ancestor() {
        // s1's children are leased and s1 is gone; s2 is still leased
        // (reading), and its children have no lease yet.
        let leases = [
            leased("s2", &["s0"]),
            leased("s3", &["s1"]),
            leased("s4", &["s1"]),
        ];
        let l = Lineage::new(&two_splits(), &leases);
        // s5 and s6 follow s2, which still has a lease: they start at
        // TRIM_HORIZON and wait for it.
        assert_eq!(ids(&l.plan(&Checkpoint::Latest)), [th("s5"), th("s6")]);
    }

    #[test]
    fn descendants_of_a_leased_shard_start_at_trim_horizon_whatever_the_initial_position() {
        // Resharded twice while no worker ran: s0 still has its lease.
        let l = Lineage::new(&two_splits(), &[leased("s0", &[])]);
        let plan = ids(&l.plan(&Checkpoint::Latest));
        assert_eq!(
            plan,
            [th("s1"), th("s2"), th("s3"), th("s4"), th("s5"), th("s6")]
        );
        let at = l.plan(&Checkpoint::AtTimestamp);
        assert!(at.iter().all(|(_, c)| *c == Checkpoint::AtTimestamp));
    }

    #[test]
    fn a_merge_child_descends_from_either_parent() {
        let shards = vec![
            shard("a", &[], true),
            shard("b", &[], true),
            shard("c", &["a", "b"], false),
        ];
        // Only a has a lease (b was cleaned up after... or never leased).
        let l = Lineage::new(&shards, &[leased("a", &[])]);
        assert_eq!(ids(&l.plan(&Checkpoint::Latest)), [th("c")]);
        // Once c has a lease, both parents are finished.
        let l = Lineage::new(&shards, &[leased("c", &["a", "b"])]);
        assert!(l.plan(&Checkpoint::TrimHorizon).is_empty());
        assert!(l.is_finished("a") && l.is_finished("b"));
    }

    #[test]
    fn four_generations_chain_with_the_middle_missing_from_list_shards() {
        // g0 -> g1 -> g2 -> g3. g0 and g1 expired and are no longer listed;
        // g3's lease names g2 as its parent. Nothing is created, and g2 is
        // finished although only the lease links g3 to it.
        let listed = vec![shard("g2", &["g1"], true), shard("g3", &["g2"], false)];
        let l = Lineage::new(&listed, &[leased("g3", &["g2"])]);
        assert!(l.plan(&Checkpoint::TrimHorizon).is_empty());
        assert!(l.is_finished("g2"));
        assert!(l.is_finished("g1"), "through ListShards' link of g2");
        assert!(!l.is_finished("g0"), "no link to g0 is known");

        // Links through leases that are no longer listed: g1 still has a
        // lease (reading), g2 and g3 are new to the table.
        let listed = vec![shard("g2", &["g1"], true), shard("g3", &["g2"], false)];
        let l = Lineage::new(&listed, &[leased("g1", &["g0"])]);
        assert_eq!(ids(&l.plan(&Checkpoint::Latest)), [th("g2"), th("g3")]);
    }

    #[test]
    fn new_leases_come_parents_first_whatever_the_listing_order() {
        let mut shards = two_splits();
        shards.reverse();
        let l = Lineage::new(&shards, &[leased("s0", &[])]);
        let order: Vec<String> = l
            .plan(&Checkpoint::TrimHorizon)
            .into_iter()
            .map(|(s, _)| s.shard_id)
            .collect();
        assert_eq!(order, ["s1", "s2", "s3", "s4", "s5", "s6"]);
    }

    #[test]
    fn children_are_found_from_the_listing() {
        let l = Lineage::new(&two_splits(), &[]);
        let c: Vec<String> = l
            .children_of("s1")
            .into_iter()
            .map(|s| s.shard_id)
            .collect();
        assert_eq!(c, ["s3", "s4"]);
        assert!(l.children_of("s6").is_empty());
    }

    #[test]
    fn a_cycle_in_bad_data_does_not_hang() {
        let shards = vec![shard("x", &["y"], true), shard("y", &["x"], true)];
        let l = Lineage::new(&shards, &[]);
        assert_eq!(l.plan(&Checkpoint::TrimHorizon).len(), 2);
    }
}
