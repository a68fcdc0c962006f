//! Lease arithmetic, as the KCL's `DynamoDBLeaseTaker` does it: expiry by a
//! counter that stopped moving, a target of ceil(leases / workers) per
//! worker, unowned and expired leases first, then a bounded steal from the
//! most loaded worker. Pure functions over what a table scan showed, so
//! every rule is unit-tested without a table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;

use crate::record::LeaseRecord;

/// When each lease's counter (or owner) was last seen to change. No clock
/// is compared across machines: only this worker's own observations.
#[derive(Debug, Default)]
pub struct Observations {
    seen: HashMap<String, Seen>,
}

/// One lease as the scans saw it.
#[derive(Clone, Debug)]
struct Seen {
    counter: i64,
    owner: Option<String>,
    /// When the counter (or owner) was last seen changing.
    since: Instant,
    /// When the lease was last scanned.
    at: Instant,
}

impl Observations {
    /// Records one scan. A lease seen for the first time counts as changed
    /// now: its owner gets the full failover time before it is judged gone.
    pub fn observe<'a>(&mut self, leases: impl IntoIterator<Item = &'a LeaseRecord>, now: Instant) {
        self.observe_vouched(leases, now, |_| None);
    }

    /// [`Observations::observe`], where `vouched(owner)` may name when an
    /// owner last renewed its leases (all in one pass): a lease of it whose
    /// counter moved since the previous scan is dated then, if that falls
    /// after the previous scan, rather than now (the scans in between were
    /// skipped, not the renewals).
    pub fn observe_vouched<'a>(
        &mut self,
        leases: impl IntoIterator<Item = &'a LeaseRecord>,
        now: Instant,
        vouched: impl Fn(&str) -> Option<Instant>,
    ) {
        let mut present = HashSet::new();
        for lease in leases {
            let key = lease.key.render();
            match self.seen.get_mut(&key) {
                Some(seen) if seen.counter == lease.counter && seen.owner == lease.owner => {
                    seen.at = now;
                }
                Some(seen) => {
                    let dated = match lease
                        .owner
                        .as_deref()
                        .filter(|o| seen.owner.as_deref() == Some(*o))
                    {
                        Some(owner) => vouched(owner)
                            .filter(|v| *v > seen.at && *v < now)
                            .unwrap_or(now),
                        None => now,
                    };
                    *seen = Seen {
                        counter: lease.counter,
                        owner: lease.owner.clone(),
                        since: dated,
                        at: now,
                    };
                }
                None => {
                    self.seen.insert(
                        key.clone(),
                        Seen {
                            counter: lease.counter,
                            owner: lease.owner.clone(),
                            since: now,
                            at: now,
                        },
                    );
                }
            }
            present.insert(key);
        }
        self.seen.retain(|k, _| present.contains(k));
    }

    /// True when the lease's counter has not moved for `failover`.
    pub fn is_expired(&self, lease: &LeaseRecord, now: Instant, failover: Duration) -> bool {
        match self.seen.get(&lease.key.render()) {
            Some(seen) => now.saturating_duration_since(seen.since) > failover,
            None => false,
        }
    }

    /// The first moment one of the leases owned by a worker other than
    /// `me` can be judged expired, if it is still to come.
    pub fn next_expiry(&self, me: &str, now: Instant, failover: Duration) -> Option<Instant> {
        self.seen
            .values()
            .filter(|s| s.owner.as_deref().is_some_and(|o| o != me))
            .map(|s| s.since + failover)
            .filter(|t| *t > now)
            .min()
    }
}

/// Limits on taking.
#[derive(Clone, Copy, Debug)]
pub struct TakeLimits {
    /// Never hold more than this many leases.
    pub max_leases: usize,
    /// Steal at most this many leases in one round.
    pub max_steal: usize,
}

/// What one taking round decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Unowned or expired leases to take (lease keys).
    pub take: Vec<String>,
    /// Leases to steal from a live, over-loaded worker.
    pub steal: Vec<String>,
    /// The target this worker aimed for, and the live workers counted.
    pub target: usize,
    /// The live workers counted, this one included.
    pub workers: usize,
}

/// Decides which leases `me` takes. `leases` are the leases that can be
/// read now (not ended, parents done); `held` are the keys this worker
/// reads; `expired` says whether an owned lease's owner is gone.
pub fn plan(
    me: &str,
    leases: &[&LeaseRecord],
    held: &HashSet<String>,
    expired: impl Fn(&LeaseRecord) -> bool,
    limits: TakeLimits,
    rng: &mut impl rand::Rng,
) -> Plan {
    // Live workers and their loads. This worker counts with what it holds.
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    load.insert(me, 0);
    let mut available: Vec<&LeaseRecord> = Vec::new();
    for lease in leases {
        let key = lease.key.render();
        if held.contains(&key) {
            *load.entry(me).or_default() += 1;
            continue;
        }
        match &lease.owner {
            // Owned by this worker id but not read here (a restart with a
            // fixed worker id): nobody reads it, take it back at once.
            Some(owner) if owner == me => available.push(lease),
            Some(owner) if !expired(lease) => *load.entry(owner.as_str()).or_default() += 1,
            _ => available.push(lease),
        }
    }
    let workers = load.len();
    let total = leases.len();
    let target = if total == 0 {
        0
    } else if workers >= total {
        1
    } else {
        total.div_ceil(workers)
    }
    .min(limits.max_leases);
    let mine = load[me];
    let mut plan = Plan {
        target,
        workers,
        ..Plan::default()
    };
    let needed = target.saturating_sub(mine);
    if needed == 0 {
        return plan;
    }
    if !available.is_empty() {
        available.shuffle(rng);
        plan.take = available
            .iter()
            .take(needed)
            .map(|l| l.key.render())
            .collect();
        return plan;
    }
    // Nothing free: steal from the most loaded other worker, if it is above
    // the target, or at it while this worker needs more than one (so that
    // nobody waits forever one lease short).
    let Some((victim, &victim_load)) = load
        .iter()
        .filter(|(w, _)| **w != me)
        .max_by_key(|(_, n)| **n)
    else {
        return plan;
    };
    let over = victim_load.saturating_sub(target);
    let mut count = needed.min(over);
    if needed > 1 && over == 0 && victim_load >= target {
        count = 1;
    }
    count = count.min(limits.max_steal);
    if count == 0 {
        return plan;
    }
    let mut candidates: Vec<&&LeaseRecord> = leases
        .iter()
        .filter(|l| l.owner.as_deref() == Some(*victim) && !expired(l))
        .collect();
    candidates.shuffle(rng);
    plan.steal = candidates
        .iter()
        .take(count)
        .map(|l| l.key.render())
        .collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::LeaseKey;
    use kcld_checkpoint::Checkpoint;
    use rand::SeedableRng;

    fn lease(id: usize, owner: Option<&str>) -> LeaseRecord {
        let mut l = LeaseRecord::new(
            LeaseKey::parse(&format!("shardId-{id:012}")),
            Checkpoint::TrimHorizon,
            vec![],
            None,
        );
        l.owner = owner.map(str::to_owned);
        l
    }

    const LIMITS: TakeLimits = TakeLimits {
        max_leases: usize::MAX,
        max_steal: 1,
    };

    fn run(me: &str, leases: &[LeaseRecord], held: &[usize], expired: &[usize]) -> Plan {
        let refs: Vec<&LeaseRecord> = leases.iter().collect();
        let held: HashSet<String> = held.iter().map(|i| leases[*i].key.render()).collect();
        let expired: HashSet<String> = expired.iter().map(|i| leases[*i].key.render()).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        plan(
            me,
            &refs,
            &held,
            |l| expired.contains(&l.key.render()),
            LIMITS,
            &mut rng,
        )
    }

    #[test]
    fn a_lone_worker_takes_everything() {
        let leases: Vec<_> = (0..8).map(|i| lease(i, None)).collect();
        let p = run("a", &leases, &[], &[]);
        assert_eq!((p.target, p.workers, p.take.len()), (8, 1, 8));
    }

    #[test]
    fn target_is_the_ceiling_of_leases_over_workers() {
        // 8 leases, a and b hold 4 each, c just joined: c aims for
        // ceil(8 / 3) = 3, nothing is free, so it steals one at a time.
        let owners = ["a", "a", "a", "a", "b", "b", "b", "b"];
        let leases: Vec<_> = owners
            .iter()
            .enumerate()
            .map(|(i, o)| lease(i, Some(o)))
            .collect();
        let p = run("c", &leases, &[], &[]);
        assert_eq!((p.workers, p.target, p.steal.len()), (3, 3, 1), "{p:?}");
        assert!(p.take.is_empty());
    }

    #[test]
    fn three_three_two_is_settled() {
        let owners = ["a", "a", "a", "b", "b", "b", "c", "c"];
        let leases: Vec<_> = owners
            .iter()
            .enumerate()
            .map(|(i, o)| lease(i, Some(o)))
            .collect();
        for (me, held) in [
            ("a", vec![0, 1, 2]),
            ("b", vec![3, 4, 5]),
            ("c", vec![6, 7]),
        ] {
            let p = run(me, &leases, &held, &[]);
            assert_eq!(
                p,
                Plan {
                    target: 3,
                    workers: 3,
                    ..Plan::default()
                },
                "{me}"
            );
        }
    }

    #[test]
    fn more_workers_than_leases_means_one_each() {
        let leases = vec![lease(0, Some("a")), lease(1, Some("b"))];
        let p = run("c", &leases, &[], &[]);
        assert_eq!((p.workers, p.target), (3, 1));
        // Both others hold exactly the target: nothing to steal.
        assert!(p.steal.is_empty() && p.take.is_empty(), "{p:?}");
        let leases = vec![lease(0, Some("a")), lease(1, None)];
        let p = run("c", &leases, &[], &[]);
        assert_eq!(p.take, [leases[1].key.render()]);
    }

    #[test]
    fn expired_and_unowned_leases_come_before_stealing() {
        let leases = vec![
            lease(0, Some("a")),
            lease(1, Some("a")),
            lease(2, Some("dead")),
            lease(3, None),
        ];
        let p = run("b", &leases, &[], &[2]);
        // Live workers: a and b (dead's lease is expired) -> target 2.
        assert_eq!((p.workers, p.target), (2, 2));
        let mut took = p.take.clone();
        took.sort();
        assert_eq!(took, [leases[2].key.render(), leases[3].key.render()]);
        assert!(p.steal.is_empty());
    }

    #[test]
    fn steals_only_from_a_worker_above_target_or_when_far_behind() {
        // a: 3, b: 1 of 4 leases -> target 2: b steals 1 from a.
        let leases = vec![
            lease(0, Some("a")),
            lease(1, Some("a")),
            lease(2, Some("a")),
            lease(3, Some("b")),
        ];
        let p = run("b", &leases, &[3], &[]);
        assert_eq!(p.steal.len(), 1);
        assert!(leases[..3].iter().any(|l| l.key.render() == p.steal[0]));
        // a: 2, b: 2 -> balanced, nobody steals.
        let leases = vec![
            lease(0, Some("a")),
            lease(1, Some("a")),
            lease(2, Some("b")),
            lease(3, Some("b")),
        ];
        assert!(run("b", &leases, &[2, 3], &[]).steal.is_empty());
        // 6 leases, a: 3, b: 3 (both at target 2? no: 3 workers -> 2);
        // c needs 2 and a is over target by 1: steal 1 per round.
        let owners = ["a", "a", "a", "b", "b", "b"];
        let leases: Vec<_> = owners
            .iter()
            .enumerate()
            .map(|(i, o)| lease(i, Some(o)))
            .collect();
        let p = run("c", &leases, &[], &[]);
        assert_eq!((p.target, p.steal.len()), (2, 1));
    }

    #[test]
    fn a_lease_owned_by_my_id_but_not_read_here_is_taken_back() {
        let leases = vec![lease(0, Some("a")), lease(1, Some("b"))];
        let p = run("a", &leases, &[], &[]);
        assert_eq!(p.take, [leases[0].key.render()]);
    }

    #[test]
    fn max_leases_caps_the_target() {
        let leases: Vec<_> = (0..8).map(|i| lease(i, None)).collect();
        let refs: Vec<&LeaseRecord> = leases.iter().collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let limits = TakeLimits {
            max_leases: 3,
            max_steal: 1,
        };
        let p = plan("a", &refs, &HashSet::new(), |_| false, limits, &mut rng);
        assert_eq!(p.take.len(), 3);
    }

    #[test]
    fn expiry_is_judged_by_a_counter_that_stopped_moving() {
        let start = Instant::now();
        let failover = Duration::from_secs(10);
        let mut obs = Observations::default();
        let mut l = lease(0, Some("a"));
        obs.observe([&l], start);
        assert!(!obs.is_expired(&l, start + Duration::from_secs(9), failover));
        assert!(obs.is_expired(&l, start + Duration::from_secs(11), failover));
        // The counter moved at t=8: the clock starts again from then.
        l.counter += 1;
        obs.observe([&l], start + Duration::from_secs(8));
        assert!(!obs.is_expired(&l, start + Duration::from_secs(17), failover));
        assert!(obs.is_expired(&l, start + Duration::from_secs(19), failover));
        // An owner change counts as a change too.
        l.owner = Some("b".into());
        obs.observe([&l], start + Duration::from_secs(19));
        assert!(!obs.is_expired(&l, start + Duration::from_secs(20), failover));
        // Leases that vanished are forgotten.
        obs.observe([], start + Duration::from_secs(21));
        assert!(!obs.is_expired(&l, start + Duration::from_secs(100), failover));
    }

    #[test]
    fn a_lease_that_moved_between_scans_is_dated_by_its_owners_last_renewal() {
        let start = Instant::now();
        let failover = Duration::from_secs(10);
        let at = |s: u64| start + Duration::from_secs(s);
        let mut obs = Observations::default();
        let mut l = lease(0, Some("b"));
        obs.observe([&l], at(0));
        // Scanned again at t=20 (settled, scans skipped): the counter moved,
        // and "b" is vouched for until t=6 only. The lease dates from t=6,
        // not t=20: expired after t=16.
        l.counter = 5;
        let vouched = |owner: &str| (owner == "b").then(|| at(6));
        obs.observe_vouched([&l], at(20), vouched);
        assert!(obs.is_expired(&l, at(17), failover));
        assert_eq!(obs.next_expiry("me", at(15), failover), Some(at(16)));
        // A renewal seen after the vouched moment is dated when seen.
        l.counter = 6;
        obs.observe_vouched([&l], at(21), vouched);
        assert!(!obs.is_expired(&l, at(30), failover));
        assert!(obs.is_expired(&l, at(32), failover));
        // A new owner is never dated back.
        l.owner = Some("c".into());
        obs.observe_vouched([&l], at(40), |_| Some(at(35)));
        assert!(!obs.is_expired(&l, at(49), failover));
        // This worker's own leases have no expiry to wait for.
        l.owner = Some("me".into());
        obs.observe([&l], at(50));
        assert_eq!(obs.next_expiry("me", at(50), failover), None);
    }
}
