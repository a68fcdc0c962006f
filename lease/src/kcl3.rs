//! A live KCL 3.x fleet on the lease table, told from the coordinator items
//! KCL 3.x keeps beside the leases.
//!
//! KCL 3.x (in its `CLIENT_VERSION_3X` modes) does not let workers take
//! leases: one elected leader assigns them by throughput and CPU, and moves
//! them between workers with graceful handoffs. kcld takes leases the KCL
//! 2.x way (expired or unowned first, then one steal from the busiest
//! worker), so beside such a fleet the two would take leases back and forth.
//! kcld therefore never shares a table with a live KCL 3.x fleet in those
//! modes: it refuses to start, and stops (releasing its leases) if such a
//! fleet appears while it runs. A KCL 3.x fleet in a mode compatible with
//! 2.x (`CLIENT_VERSION_2X`, `CLIENT_VERSION_UPGRADE_FROM_2X`) takes leases
//! as KCL 2.x does, and kcld works beside it; a stopped KCL 3.x fleet's
//! table is taken over like any other (its leases expire).
//!
//! What is read (KCL 3.5 keeps these items in the lease table itself,
//! tagged by `entityType`; KCL 3.0 to 3.4 keep them in `<table>-CoordinatorState`
//! and `<table>-WorkerMetricStats`):
//! - `Migration3.0` (`CLIENT_VERSION_MIGRATION`): `cv`, the client version mode;
//! - `Leader` (`LEADER`): the leader's lock, `ownerName`; deleted when the
//!   leader stops cleanly;
//! - one worker metrics item per worker (`WORKER_METRIC_STATS`): `lut`, its
//!   last report in epoch seconds, every 30 s while it runs.

use std::collections::BTreeMap;

use crate::record::Item;

/// The client version modes in which a KCL 3.x leader assigns leases.
const ASSIGNING_MODES: [&str; 2] = ["CLIENT_VERSION_3X", "CLIENT_VERSION_3X_WITH_ROLLBACK"];

/// A worker whose last metrics report is older than this is not counted as
/// running: three missed 30-second reports (and some clock skew).
pub const WORKER_REPORT_WINDOW_SECS: i64 = 90;

/// Now in epoch seconds, the unit of KCL 3.x's worker metrics (`lut`).
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What the coordinator items of one table say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coordination {
    /// `cv` of the `Migration3.0` item.
    pub mode: Option<String>,
    /// `ownerName` of the `Leader` lock item.
    pub leader: Option<String>,
    /// Worker id -> its last metrics report (epoch seconds).
    pub workers: BTreeMap<String, i64>,
}

impl Coordination {
    /// Takes note of one item of the lease table that is not a lease.
    pub fn observe(&mut self, item: &Item) {
        let s = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
        let kind = s("entityType");
        let key = s("leaseKey").or_else(|| s("key"));
        match (kind.as_deref(), key.as_deref()) {
            (Some("CLIENT_VERSION_MIGRATION"), _) | (None, Some("Migration3.0")) => {
                self.mode = s("cv").or(self.mode.take());
            }
            (Some("LEADER"), _) | (None, Some("Leader")) => {
                self.leader = s("ownerName").or_else(|| Some(String::new()));
            }
            (Some("WORKER_METRIC_STATS"), Some(id)) => self.worker(id, item),
            _ => {}
        }
    }

    /// Takes note of one item of a KCL 3.0 to 3.4 `<table>-WorkerMetricStats`
    /// table (keyed by `wid`).
    pub fn observe_worker_metrics(&mut self, item: &Item) {
        if let Some(id) = item.get("wid").and_then(|v| v.as_s().ok()) {
            let id = id.clone();
            self.worker(&id, item);
        }
    }

    fn worker(&mut self, id: &str, item: &Item) {
        let lut = item
            .get("lut")
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or(0);
        let last = self.workers.entry(id.to_owned()).or_insert(lut);
        *last = (*last).max(lut);
    }

    /// The fleet kcld must not share the table with, if one runs: a mode in
    /// which the leader assigns leases, a leader, and a worker that reported
    /// within [`WORKER_REPORT_WINDOW_SECS`] of `now` (epoch seconds).
    pub fn live_assigning_fleet(&self, table: &str, now: i64) -> Option<Kcl3Fleet> {
        let mode = self.mode.as_deref()?;
        if !ASSIGNING_MODES.contains(&mode) {
            return None;
        }
        let leader = self.leader.clone()?;
        let running: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, lut)| now - **lut <= WORKER_REPORT_WINDOW_SECS)
            .map(|(id, _)| id.clone())
            .collect();
        if running.is_empty() {
            return None;
        }
        Some(Kcl3Fleet {
            table: table.to_owned(),
            mode: mode.to_owned(),
            leader,
            workers: running,
        })
    }
}

/// A running KCL 3.x fleet whose leader assigns the table's leases.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "lease table {table} belongs to a running KCL 3.x fleet ({mode}: leader {leader}, workers {workers:?} \
     reported within the last {WORKER_REPORT_WINDOW_SECS} s) whose leader assigns the leases; kcld takes \
     leases as KCL 2.x does and will not compete with that leader. To move the application to kcld, stop \
     the KCL 3.x workers (kcld takes their leases once they expire); to run both on one table, run the KCL \
     3.x workers with CoordinatorConfig.clientVersionConfig = CLIENT_VERSION_CONFIG_COMPATIBLE_WITH_2X; or \
     give kcld its own application_name"
)]
pub struct Kcl3Fleet {
    /// The lease table.
    pub table: String,
    /// The client version mode (`cv`).
    pub mode: String,
    /// The leader's worker id.
    pub leader: String,
    /// The workers that reported recently.
    pub workers: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::types::AttributeValue;

    fn item(fields: &[(&str, &str)]) -> Item {
        fields
            .iter()
            .map(|(k, v)| {
                let value = if *k == "lut" {
                    AttributeValue::N(v.to_string())
                } else {
                    AttributeValue::S(v.to_string())
                };
                (k.to_string(), value)
            })
            .collect()
    }

    fn fleet(mode: &str, leader: bool, lut: i64) -> Coordination {
        let mut c = Coordination::default();
        c.observe(&item(&[
            ("leaseKey", "Migration3.0"),
            ("entityType", "CLIENT_VERSION_MIGRATION"),
            ("cv", mode),
        ]));
        if leader {
            c.observe(&item(&[
                ("leaseKey", "Leader"),
                ("entityType", "LEADER"),
                ("ownerName", "w1"),
            ]));
        }
        c.observe(&item(&[
            ("leaseKey", "w1"),
            ("entityType", "WORKER_METRIC_STATS"),
            ("lut", &lut.to_string()),
        ]));
        c
    }

    #[test]
    fn a_leader_with_a_recent_worker_in_3x_mode_is_a_live_fleet() {
        let now = 1_796_584_200;
        let live = fleet("CLIENT_VERSION_3X", true, now - 30)
            .live_assigning_fleet("app", now)
            .expect("a live fleet");
        assert_eq!((live.leader.as_str(), live.workers.len()), ("w1", 1));
        let text = live.to_string();
        assert!(
            text.contains("CLIENT_VERSION_CONFIG_COMPATIBLE_WITH_2X"),
            "{text}"
        );
        assert!(fleet("CLIENT_VERSION_3X_WITH_ROLLBACK", true, now)
            .live_assigning_fleet("app", now)
            .is_some());
    }

    #[test]
    fn a_stopped_or_2x_compatible_fleet_is_no_obstacle() {
        let now = 1_796_584_200;
        // Stopped cleanly: the leader's lock is gone.
        assert_eq!(
            fleet("CLIENT_VERSION_3X", false, now).live_assigning_fleet("app", now),
            None
        );
        // Killed: the lock stays, but nobody reports any more.
        assert_eq!(
            fleet("CLIENT_VERSION_3X", true, now - 600).live_assigning_fleet("app", now),
            None
        );
        // Leases taken the KCL 2.x way.
        for mode in ["CLIENT_VERSION_2X", "CLIENT_VERSION_UPGRADE_FROM_2X"] {
            assert_eq!(
                fleet(mode, true, now).live_assigning_fleet("app", now),
                None
            );
        }
        // No KCL 3.x items at all.
        assert_eq!(
            Coordination::default().live_assigning_fleet("app", now),
            None
        );
    }

    #[test]
    fn separate_coordinator_tables_of_kcl_3_0_read_the_same() {
        let now = 1_796_584_200;
        let mut c = Coordination::default();
        c.observe(&item(&[
            ("key", "Migration3.0"),
            ("cv", "CLIENT_VERSION_3X"),
        ]));
        c.observe(&item(&[("key", "Leader"), ("ownerName", "w9")]));
        c.observe_worker_metrics(&item(&[("wid", "w9"), ("lut", &now.to_string())]));
        assert_eq!(
            c.live_assigning_fleet("app", now).map(|f| f.leader),
            Some("w9".to_owned())
        );
    }
}
