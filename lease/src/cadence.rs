//! When the taker reads the lease table: a full scan only when something
//! may have changed, and a cheap check of the other workers in between.
//!
//! Why: a scan reads every lease, so scanning every second costs each
//! instance about 30 times the reads of a KCL worker (which scans every
//! twice the failover time). Yet most scans find nothing new: on a settled
//! fleet each worker holds its share and renews it. What a scan must not
//! miss is a worker that stopped (its leases expire), a worker that let its
//! leases go (a clean shutdown) and a worker that joined (it steals, and the
//! victim learns it at its next renewal, not from a scan).
//!
//! So, while settled, the table is scanned every `take_interval` (the
//! KCL's cadence), and every `probe_interval` one lease of another worker
//! is read ([`Cadence::sample`], an eventually consistent GetItem, half a
//! read unit), the other workers in turn: a worker's reads stay the same
//! however large the fleet (with N others, each is looked at every N
//! probe intervals). Workers renew all their leases every renewal period,
//! so a sample that moves shows its owner alive; a sample whose owner
//! changed, that vanished, or that did not move for a renewal period and a
//! round of probes brings the next scan forward. While leases change hands
//! (this worker took or stole some, a steal is pending, a handoff is
//! under way anywhere, an owner is suspect, a scan failed) the table is scanned every `probe_interval` (or
//! half a renewal period, if shorter).
//!
//! A stopped worker's leases are therefore seen late only by the
//! probe's lag, and [`Cadence::last_renewals`] gives the taker's expiry
//! clock the moment that worker last renewed them, so the takeover is not
//! delayed by the scans it skipped.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::record::LeaseRecord;

/// The intervals the cadence follows.
#[derive(Clone, Copy, Debug)]
pub struct CadenceSettings {
    /// Full scans while settled.
    pub take_interval: Duration,
    /// Probes while settled, and full scans while unsettled.
    pub probe_interval: Duration,
    /// How often an owner renews each of its leases (the fleet's renewal
    /// period).
    pub renew_interval: Duration,
    /// The most the probes may cost, in percent of what this worker's
    /// renewals cost: probes are spaced further than `probe_interval`
    /// when it holds few leases. 0: no probes.
    pub probe_budget_percent: u32,
}

/// What a write unit costs in read units (DynamoDB's prices, on demand
/// and provisioned alike).
const WRITE_PRICE_IN_READS: f64 = 5.0;
/// What a probe costs in read units: an eventually consistent GetItem.
const PROBE_PRICE_IN_READS: f64 = 0.5;

impl CadenceSettings {
    /// How often to probe when workers hold `share` leases each on
    /// average and `others` other workers are followed: `probe_interval`,
    /// or longer, the spacing at which the probes cost the budget's share
    /// of the renewals (one write per lease per renewal period). Probing
    /// faster than a sample moves (once a renewal period) still pays: a
    /// worker that stops cleanly releases its leases at any moment, and the
    /// next probe of it sees that.
    ///
    /// `None`: no probes (no budget, no one to follow, or not more often
    /// than the scans).
    ///
    /// Why a budget: a probe costs a worker the same however many leases
    /// it holds, while the KCL's bill grows with them; at 1,000 shards on
    /// 10 workers a probe each second adds 0.3%, at 8 leases per worker 4%.
    /// The fleet's average share, not this worker's, sets it: every worker
    /// probes as often, so a worker holding nothing (a standby) watches as
    /// closely as the others.
    fn probe_every(&self, share: f64, others: usize) -> Option<Duration> {
        if self.probe_budget_percent == 0 || share <= 0.0 || others == 0 {
            return None;
        }
        let renew = self.renew_interval.as_secs_f64().max(0.001);
        let budget =
            share / renew * WRITE_PRICE_IN_READS * f64::from(self.probe_budget_percent) / 100.0;
        let spaced = (PROBE_PRICE_IN_READS / budget).min(86_400.0);
        Some(self.probe_interval.max(Duration::from_secs_f64(spaced)))
            .filter(|every| *every < self.take_interval)
    }
}

/// One other worker, as the probes follow it.
#[derive(Clone, Debug)]
struct Watched {
    /// The lease read to see the worker alive.
    sample: String,
    /// Its counter when last read.
    counter: i64,
    /// When its counter was last seen moving (or first seen).
    alive_at: Instant,
}

/// What a probe of one worker's sample found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The sample moved, or has not been still for long: nothing to do.
    Alive,
    /// Scan now: the sample changed hands, vanished, or its owner stopped
    /// renewing it.
    Scan,
}

/// What the taker does next, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// A full scan at this instant.
    Scan(Instant),
    /// Probes at this instant (a scan is due later).
    Probe(Instant),
}

/// The taker's schedule; pure, so that tests drive it with their own clock.
#[derive(Debug)]
pub struct Cadence {
    settings: CadenceSettings,
    watched: BTreeMap<String, Watched>,
    last_scan: Option<Instant>,
    last_probe: Option<Instant>,
    /// The owner probed last (the next probe reads the one after it).
    turn: Option<String>,
    unsettled: bool,
    /// The first moment a lease of another worker can expire, while
    /// unsettled: the scan is timed to it rather than left to the next tick.
    expiry: Option<Instant>,
    /// Owned leases per worker at the last scan (the probe budget).
    share: f64,
}

impl Cadence {
    /// A cadence that scans at once.
    pub fn new(settings: CadenceSettings) -> Self {
        Cadence {
            settings,
            watched: BTreeMap::new(),
            last_scan: None,
            last_probe: None,
            turn: None,
            unsettled: true,
            expiry: None,
            share: 0.0,
        }
    }

    /// After a scan that answered. `unsettled` when leases are changing
    /// hands here (takes, steals, handoffs); `leases` are this stream's;
    /// `expiry` is the first moment one of another worker's leases can be
    /// judged expired. Each other owner is followed through one of its
    /// leases, the one the previous scan followed when it still has it
    /// (keeping its clock).
    pub fn scanned(
        &mut self,
        me: &str,
        leases: &[&LeaseRecord],
        unsettled: bool,
        expiry: Option<Instant>,
        now: Instant,
    ) {
        let mut next: BTreeMap<String, Watched> = BTreeMap::new();
        let mut by_owner: HashMap<&str, Vec<&LeaseRecord>> = HashMap::new();
        let mut owned = 0usize;
        let mut owners: std::collections::HashSet<&str> = std::collections::HashSet::from([me]);
        for lease in leases {
            let Some(owner) = lease.owner.as_deref() else {
                continue;
            };
            owned += 1;
            owners.insert(owner);
            if owner != me && lease.checkpoint_owner.is_none() {
                by_owner.entry(owner).or_default().push(lease)
            }
        }
        self.share = owned as f64 / owners.len() as f64;
        for (owner, owned) in by_owner {
            let kept = self.watched.get(owner).and_then(|w| {
                owned
                    .iter()
                    .find(|l| l.key.render() == w.sample)
                    .map(|l| (w, l.counter))
            });
            let watched = match kept {
                Some((w, counter)) if counter == w.counter => w.clone(),
                Some((w, counter)) => Watched {
                    sample: w.sample.clone(),
                    counter,
                    alive_at: now,
                },
                None => {
                    // Any lease will do; the smallest key keeps the choice
                    // stable from scan to scan.
                    let Some(first) = owned.iter().min_by_key(|l| l.key.render()) else {
                        continue;
                    };
                    Watched {
                        sample: first.key.render(),
                        counter: first.counter,
                        alive_at: now,
                    }
                }
            };
            next.insert(owner.to_owned(), watched);
        }
        self.watched = next;
        // A handoff in progress anywhere (`checkpointOwner` set) is leases
        // changing hands: its new owner is not followed until it ends, so
        // the table is watched by scans meanwhile.
        let handing_over = leases.iter().any(|l| l.checkpoint_owner.is_some());
        self.unsettled = unsettled || handing_over || self.any_suspect(now);
        self.expiry = expiry;
        self.last_scan = Some(now);
        self.last_probe = Some(now);
    }

    /// Something here changed the table (a shard ended, leases were
    /// created): scan every probe interval until a scan finds it settled.
    pub fn unsettle(&mut self) {
        self.unsettled = true;
    }

    /// After a scan that failed: retry soon.
    pub fn scan_failed(&mut self, now: Instant) {
        self.unsettled = true;
        self.last_scan = Some(now);
    }

    /// The lease to probe now, `(owner, lease key)`: the other workers in
    /// turn.
    pub fn sample(&mut self) -> Option<(String, String)> {
        let next = match &self.turn {
            Some(last) => self
                .watched
                .range::<String, _>((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded))
                .next()
                .or_else(|| self.watched.iter().next()),
            None => self.watched.iter().next(),
        };
        let (owner, w) = next?;
        let pick = (owner.clone(), w.sample.clone());
        self.turn = Some(owner.clone());
        Some(pick)
    }

    /// A live owner moves its sample within this long: a renewal period,
    /// and a round of probes to see it.
    fn silence_limit(&self) -> Duration {
        let round = u32::try_from(self.watched.len().max(1)).unwrap_or(u32::MAX);
        let every = self
            .settings
            .probe_every(self.share, self.watched.len())
            .unwrap_or(self.settings.take_interval);
        self.settings.renew_interval + every.saturating_mul(round)
    }

    /// Notes what a probe of `owner`'s sample read (`None`: the item is
    /// gone); says whether to scan now.
    pub fn probed(&mut self, owner: &str, seen: Option<&LeaseRecord>, now: Instant) -> Probe {
        self.last_probe = Some(now);
        let limit = self.silence_limit();
        let Some(w) = self.watched.get_mut(owner) else {
            return Probe::Alive;
        };
        let Some(lease) = seen else {
            return Probe::Scan;
        };
        if lease.owner.as_deref() != Some(owner) || lease.checkpoint_owner.is_some() {
            return Probe::Scan;
        }
        if lease.counter != w.counter {
            w.counter = lease.counter;
            w.alive_at = now;
            return Probe::Alive;
        }
        if now.saturating_duration_since(w.alive_at) > limit {
            Probe::Scan
        } else {
            Probe::Alive
        }
    }

    /// A probe that could not be read: the next scan decides.
    pub fn probe_failed(&mut self, now: Instant) {
        self.last_probe = Some(now);
    }

    /// When an owner last renewed its leases, as far as the probes know,
    /// given what a scan just read (`scanned`): when its sample was last
    /// seen moving, provided the scan shows the sample still where it was
    /// then. `None` when the worker is not followed, or its sample moved
    /// since: it renewed at some moment after the last look, and nothing
    /// better than the scan's own time can be said.
    ///
    /// Why one lease tells for all: a worker renews all its leases in one
    /// pass (the KCL's renewer submits them together; kcld's renewals share
    /// one beat), so the pass that last moved the sample moved the others.
    /// A pass spreads over the time its calls take, far below the margin
    /// the owner's watchdog keeps (it stops reading a second before others
    /// may judge the lease expired). The taker dates a lease that moved
    /// between two scans by this, when it falls between them
    /// ([`crate::balance::Observations::observe_vouched`]), rather than by
    /// the second scan, which may come a whole `take_interval` later. The
    /// sample must not have moved since: probes may be far apart, and a
    /// sample last seen moving long ago says nothing of a pass since (its
    /// leases would look expired while their owner renews them).
    ///
    /// Every followed owner's, at once (one pass over the scan).
    pub fn last_renewals(&self, scanned: &[&LeaseRecord]) -> HashMap<String, Instant> {
        scanned
            .iter()
            .filter_map(|l| {
                let owner = l.owner.as_deref()?;
                let w = self.watched.get(owner)?;
                (l.counter == w.counter && l.key.render() == w.sample)
                    .then(|| (owner.to_owned(), w.alive_at))
            })
            .collect()
    }

    fn any_suspect(&self, now: Instant) -> bool {
        let limit = self.silence_limit();
        self.watched
            .values()
            .any(|w| now.saturating_duration_since(w.alive_at) > limit)
    }

    /// What to do next.
    pub fn next(&self) -> Next {
        let s = &self.settings;
        let Some(last_scan) = self.last_scan else {
            return Next::Scan(Instant::now());
        };
        let probe_every = s.probe_every(self.share, self.watched.len());
        if self.unsettled || probe_every.is_none() {
            let every = if self.unsettled {
                // Leases are dated back to their owner's last renewal: if
                // it renews them still, a scan must see them move again
                // well within the failover time (three renewal periods).
                s.probe_interval
                    .min(s.take_interval)
                    .min(s.renew_interval / 2)
            } else {
                s.take_interval
            };
            let tick = last_scan + every;
            // Just past the expiry: the judgement is "longer than failover".
            let at = match self.expiry {
                Some(expiry) if self.unsettled && expiry > last_scan => {
                    tick.min(expiry + Duration::from_millis(1))
                }
                _ => tick,
            };
            return Next::Scan(at);
        }
        let scan_at = last_scan + s.take_interval;
        if self.watched.is_empty() {
            return Next::Scan(scan_at);
        }
        let probe_at =
            self.last_probe.unwrap_or(last_scan) + probe_every.unwrap_or(s.take_interval);
        if probe_at < scan_at {
            Next::Probe(probe_at)
        } else {
            Next::Scan(scan_at)
        }
    }

    /// Whether the last scan left leases changing hands.
    pub fn is_unsettled(&self) -> bool {
        self.unsettled
    }
}

#[cfg(test)]
mod tests;
