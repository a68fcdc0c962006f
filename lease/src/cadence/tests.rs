//! The cadence driven by a test clock.
use super::*;
use crate::key::LeaseKey;
use kcld_checkpoint::Checkpoint;

fn settings() -> CadenceSettings {
    CadenceSettings {
        take_interval: Duration::from_secs(20),
        probe_interval: Duration::from_secs(1),
        renew_interval: Duration::from_millis(3308),
        // Probes every `probe_interval` from one lease per worker up.
        probe_budget_percent: 100,
    }
}

fn lease(shard: &str, owner: Option<&str>, counter: i64) -> LeaseRecord {
    let mut l = LeaseRecord::new(
        LeaseKey::parse(shard),
        Checkpoint::TrimHorizon,
        vec![],
        None,
    );
    l.owner = owner.map(str::to_owned);
    l.counter = counter;
    l
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[test]
fn a_settled_fleet_is_scanned_at_the_take_interval_and_probed_between() {
    let t0 = Instant::now();
    let mut c = Cadence::new(settings());
    let a = lease("shardId-1", Some("me"), 5);
    let b = lease("shardId-2", Some("other"), 7);
    let b2 = lease("shardId-3", Some("other"), 9);
    c.scanned("me", &[&a, &b, &b2], false, None, t0);
    // One sample per other worker, the smallest key.
    assert_eq!(c.sample(), Some(("other".into(), "shardId-2".into())));
    assert_eq!(c.sample(), Some(("other".into(), "shardId-2".into())));
    assert_eq!(c.next(), Next::Probe(t0 + secs(1.0)));
    let mut moved = b.clone();
    moved.counter += 1;
    assert_eq!(
        c.probed("other", Some(&moved), t0 + secs(1.0)),
        Probe::Alive
    );
    assert_eq!(c.next(), Next::Probe(t0 + secs(2.0)));
    // Unmoved for less than a renewal period and a probe: still alive.
    assert_eq!(
        c.probed("other", Some(&moved), t0 + secs(5.0)),
        Probe::Alive
    );
    // Probes stop where the scan is due.
    c.probed("other", Some(&moved), t0 + secs(19.5));
    assert_eq!(c.next(), Next::Scan(t0 + secs(20.0)));
}

#[test]
fn other_workers_are_probed_in_turn_and_given_a_round_to_move() {
    let t0 = Instant::now();
    let mut c = Cadence::new(settings());
    let leases = [
        lease("shardId-1", Some("b"), 1),
        lease("shardId-2", Some("c"), 1),
        lease("shardId-3", Some("d"), 1),
        lease("shardId-4", Some("me"), 1),
    ];
    c.scanned("me", &leases.iter().collect::<Vec<_>>(), false, None, t0);
    let owners: Vec<String> = (0..4).filter_map(|_| c.sample()).map(|(o, _)| o).collect();
    assert_eq!(owners, ["b", "c", "d", "b"]);
    // Each is read every third probe: silent for a renewal period and
    // three probe intervals before it is suspected.
    assert_eq!(c.next(), Next::Probe(t0 + secs(1.0)));
    assert_eq!(
        c.probed("c", Some(&leases[1]), t0 + secs(6.2)),
        Probe::Alive
    );
    assert_eq!(c.probed("c", Some(&leases[1]), t0 + secs(6.4)), Probe::Scan);
}

#[test]
fn a_handoff_between_other_workers_keeps_the_table_scanned_until_it_ends() {
    let t0 = Instant::now();
    let mut c = Cadence::new(settings());
    // "other" stole both its leases from this worker, which has not
    // handed them over yet: nothing of "other" can be followed.
    let mut stolen = lease("shardId-2", Some("other"), 7);
    stolen.checkpoint_owner = Some("me".into());
    let mine = lease("shardId-1", Some("me"), 3);
    c.scanned("me", &[&mine, &stolen], false, None, t0);
    assert!(c.is_unsettled());
    assert_eq!(c.sample(), None);
    assert_eq!(c.next(), Next::Scan(t0 + secs(1.0)));
    // Handed over: "other" is followed, and the fleet settles.
    stolen.checkpoint_owner = None;
    stolen.counter += 1;
    c.scanned("me", &[&mine, &stolen], false, None, t0 + secs(1.0));
    assert!(!c.is_unsettled());
    assert_eq!(c.sample(), Some(("other".into(), "shardId-2".into())));
    assert_eq!(c.next(), Next::Probe(t0 + secs(2.0)));
}

#[test]
fn a_lone_worker_only_scans() {
    let t0 = Instant::now();
    let mut c = Cadence::new(settings());
    let a = lease("shardId-1", Some("me"), 5);
    let free = lease("shardId-2", None, 1);
    c.scanned("me", &[&a, &free], false, None, t0);
    assert_eq!(c.sample(), None);
    assert_eq!(c.next(), Next::Scan(t0 + secs(20.0)));
}

#[test]
fn changes_a_probe_sees_bring_the_scan_forward() {
    let t0 = Instant::now();
    let b = lease("shardId-2", Some("other"), 7);
    let scanned = || {
        let mut c = Cadence::new(settings());
        c.scanned("me", &[&b], false, None, t0);
        c
    };
    // Released at a clean shutdown.
    let mut released = b.clone();
    released.owner = None;
    released.counter += 1;
    assert_eq!(
        scanned().probed("other", Some(&released), t0 + secs(1.0)),
        Probe::Scan
    );
    // Taken by a third worker, or asked for in a steal.
    let mut taken = b.clone();
    taken.owner = Some("third".into());
    assert_eq!(
        scanned().probed("other", Some(&taken), t0 + secs(1.0)),
        Probe::Scan
    );
    let mut asked = b.clone();
    asked.checkpoint_owner = Some("other".into());
    asked.owner = Some("third".into());
    assert_eq!(
        scanned().probed("other", Some(&asked), t0 + secs(1.0)),
        Probe::Scan
    );
    // Deleted.
    assert_eq!(scanned().probed("other", None, t0 + secs(1.0)), Probe::Scan);
}

#[test]
fn a_silent_owner_is_suspected_and_its_leases_dated_by_the_samples_last_move() {
    let t0 = Instant::now();
    let mut c = Cadence::new(settings());
    let b = lease("shardId-2", Some("other"), 7);
    c.scanned("me", &[&b], false, None, t0);
    let mut moved = b.clone();
    moved.counter = 8;
    // Last seen moving at t0 + 3.
    assert_eq!(
        c.probed("other", Some(&moved), t0 + secs(3.0)),
        Probe::Alive
    );
    // Still at t0 + 9.7 (silence 6.7 s > a renewal period and a probe
    // interval, 4.308 s): scan, and from then on the owner's leases
    // count as last renewed when the sample last moved.
    assert_eq!(c.probed("other", Some(&moved), t0 + secs(9.7)), Probe::Scan);
    assert_eq!(
        c.last_renewals(&[&moved]).get("other").copied(),
        Some(t0 + secs(3.0))
    );
    // The scan keeps the clock of the sample and scans every probe
    // interval while the owner stays suspect.
    c.scanned("me", &[&moved], false, None, t0 + secs(9.8));
    assert!(c.is_unsettled());
    assert_eq!(c.next(), Next::Scan(t0 + secs(10.8)));
    // It renews again: settled.
    let mut again = moved.clone();
    again.counter = 9;
    c.scanned("me", &[&again], false, None, t0 + secs(10.8));
    assert!(!c.is_unsettled());
    assert_eq!(
        c.last_renewals(&[&again]).get("other").copied(),
        Some(t0 + secs(10.8))
    );
    // A sample that moved since it was last looked at vouches for
    // nothing: the owner renewed at some unknown moment since.
    let mut later = again.clone();
    later.counter = 10;
    assert_eq!(c.last_renewals(&[&later]).get("other").copied(), None);
    assert_eq!(c.next(), Next::Probe(t0 + secs(11.8)));
}

#[test]
fn leases_changing_hands_or_a_failed_scan_mean_scanning_every_probe_interval() {
    let t0 = Instant::now();
    let mut c = Cadence::new(settings());
    let b = lease("shardId-2", Some("other"), 7);
    c.scanned("me", &[&b], true, None, t0);
    assert_eq!(c.next(), Next::Scan(t0 + secs(1.0)));
    c.scanned("me", &[&b], false, None, t0 + secs(1.0));
    assert_eq!(c.next(), Next::Probe(t0 + secs(2.0)));
    c.scan_failed(t0 + secs(2.0));
    assert_eq!(c.next(), Next::Scan(t0 + secs(3.0)));
    // While unsettled, a lease that expires before the next tick is
    // scanned for just after it expires.
    c.scanned("me", &[&b], true, Some(t0 + secs(3.4)), t0 + secs(3.0));
    assert_eq!(c.next(), Next::Scan(t0 + secs(3.401)));
    // Settled, the expiry of live leases does not bring scans forward.
    c.scanned("me", &[&b], false, Some(t0 + secs(13.0)), t0 + secs(4.0));
    assert_eq!(c.next(), Next::Probe(t0 + secs(5.0)));
}

#[test]
fn with_a_short_renewal_period_an_unsettled_table_is_scanned_every_half_period() {
    // Failover 3 s: renewals every 975 ms, shorter than the probes.
    let t0 = Instant::now();
    let mut c = Cadence::new(CadenceSettings {
        take_interval: Duration::from_secs(6),
        probe_interval: Duration::from_secs(1),
        renew_interval: Duration::from_millis(975),
        probe_budget_percent: 100,
    });
    let b = lease("shardId-2", Some("other"), 7);
    c.scanned("me", &[&b], false, None, t0);
    assert_eq!(c.probed("other", Some(&b), t0 + secs(2.0)), Probe::Scan);
    c.scanned("me", &[&b], false, None, t0 + secs(2.0));
    assert_eq!(c.next(), Next::Scan(t0 + secs(2.4875)));
}

#[test]
fn without_probing_the_take_interval_is_the_only_cadence() {
    let t0 = Instant::now();
    let mut c = Cadence::new(CadenceSettings {
        take_interval: Duration::from_secs(1),
        probe_interval: Duration::from_secs(1),
        renew_interval: Duration::from_millis(3308),
        probe_budget_percent: 100,
    });
    let b = lease("shardId-2", Some("other"), 7);
    c.scanned("me", &[&b], false, None, t0);
    assert_eq!(c.next(), Next::Scan(t0 + secs(1.0)));
}

#[test]
fn probes_are_spaced_to_cost_at_most_their_budget_of_the_renewals() {
    let t0 = Instant::now();
    let budget = |percent| CadenceSettings {
        probe_budget_percent: percent,
        ..settings()
    };
    let fleet = |mine: usize, others: &[(&str, usize)]| -> Vec<LeaseRecord> {
        let mut leases: Vec<LeaseRecord> = (0..mine)
            .map(|i| lease(&format!("shardId-m{i}"), Some("me"), 1))
            .collect();
        for (owner, n) in others {
            leases.extend((0..*n).map(|i| lease(&format!("shardId-{owner}{i}"), Some(owner), 1)));
        }
        leases
    };
    let next_with = |percent, leases: &[LeaseRecord]| {
        let mut c = Cadence::new(budget(percent));
        c.scanned("me", &leases.iter().collect::<Vec<_>>(), false, None, t0);
        c.next()
    };
    // 8 leases per worker renewed every 3.308 s cost 12.1 read units a
    // second; 1% of that pays a probe (half a unit) every 4.135 s.
    let eight_each = fleet(8, &[("other", 8)]);
    match next_with(1, &eight_each) {
        Next::Probe(at) => {
            let every = at - t0;
            assert!(every > secs(4.13) && every < secs(4.14), "{every:?}");
        }
        other => panic!("{other:?}"),
    }
    // 100 leases per worker: the budget allows more than one a second,
    // and `probe_interval` is the floor.
    let hundred_each = fleet(100, &[("b", 100), ("c", 100)]);
    assert_eq!(next_with(1, &hundred_each), Next::Probe(t0 + secs(1.0)));
    // A standby holding nothing probes as the fleet's share allows.
    let standby = fleet(0, &[("b", 100), ("c", 100)]);
    assert!(matches!(next_with(1, &standby), Next::Probe(_)));
    // One lease per worker: the budget pays a probe every 33 s, less
    // often than the scans; scans at the take interval only.
    let one_each = fleet(1, &[("other", 1)]);
    assert_eq!(next_with(1, &one_each), Next::Scan(t0 + secs(20.0)));
    // No budget: no probes.
    assert_eq!(next_with(0, &hundred_each), Next::Scan(t0 + secs(20.0)));
}
