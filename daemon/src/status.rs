//! `kcld status`: the lease table as a person reads it, or as JSON. With
//! several streams, the leases come grouped by stream.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use kcld_config::arn::StreamArn;
use kcld_config::Settings;
use kcld_lease::key::{LeaseKey, StreamScope};
use kcld_lease::record::LeaseRecord;
use kcld_lease::table::LeaseTable;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::stream::{StartAt, Stream};
use futures::StreamExt;
use kcld_checkpoint::Checkpoint;

/// One lease as `status` shows it.
#[derive(Debug, Serialize)]
pub struct LeaseStatus {
    /// The stream the shard is of.
    pub stream_arn: String,
    /// The shard the lease is for.
    pub shard_id: String,
    /// The lease's `leaseKey` as stored.
    pub lease_key: String,
    /// The worker holding the lease (`leaseOwner`); `None` = nobody.
    pub owner: Option<String>,
    /// The `checkpoint` string: a sequence number or a sentinel such as
    /// `SHARD_END`.
    pub checkpoint: String,
    /// The `checkpointSubSequenceNumber` beside it.
    pub checkpoint_sub_sequence_number: u64,
    /// The `leaseCounter`, which the owner increments at every renewal.
    pub lease_counter: i64,
    /// The counter moved while `status` watched (within the failover time):
    /// the owner is alive.
    pub renewing: bool,
    /// Milliseconds since `status` first saw the counter at its present
    /// value (the renewal happened at most one refresh before that); `None`
    /// when it has not seen it move.
    pub last_renewal_ms: Option<u64>,
    /// The shards this one was split or merged from.
    pub parents: Vec<String>,
    /// The shards that continue this one.
    pub children: Vec<String>,
    /// A KCL 3 handoff (or a kcld graceful steal) in progress.
    pub checkpoint_owner: Option<String>,
    /// How far the checkpoint is behind the tip of the shard, in
    /// milliseconds of arrival time (the service's MillisBehindLatest for a
    /// read just after the checkpoint); 0 when nothing is left to read;
    /// `None` when unknown (a LATEST or AT_TIMESTAMP lease not read yet, a
    /// finished shard, or the read failed).
    pub lag_ms: Option<i64>,
}

/// Reads the table twice, `sample` apart, to see which leases are renewed.
pub async fn collect(settings: &Settings, sample: Duration) -> Result<Vec<LeaseStatus>> {
    let mut watch = Watch::new(settings).await?;
    watch.read().await?;
    tokio::time::sleep(sample).await;
    watch.read().await
}

/// The lease table read again and again (`status --watch`), remembering
/// when each lease's counter last moved, which is how its owner's renewals
/// show from outside.
pub struct Watch {
    table: LeaseTable,
    streams: Vec<Watched>,
    failover: Duration,
    /// lease key -> its counter at the last read, and when a read first
    /// saw that counter differ from the read before.
    seen: HashMap<String, (i64, Option<Instant>)>,
}

/// One stream whose leases `status` shows.
struct Watched {
    arn: String,
    /// Read as `run` reads it (its region, its role), for the lags.
    stream: Stream,
    scope: StreamScope,
}

impl Watch {
    /// Connects as `run` would, without touching the table.
    pub async fn new(settings: &Settings) -> Result<Self> {
        let mut cache = crate::aws::ClientsCache::default();
        let mut streams = Vec::with_capacity(settings.streams.len());
        let mut table = None;
        for i in 0..settings.streams.len() {
            let one = settings.for_stream(i);
            let clients = cache.get(&one, &None).await?;
            table.get_or_insert_with(|| {
                LeaseTable::new(clients.dynamodb.clone(), &settings.lease_table)
            });
            streams.push(Watched {
                arn: one.stream_arn.to_string(),
                stream: Stream::open(&clients, one.stream_arn.clone()),
                scope: StreamScope {
                    account: one.stream_arn.account.clone(),
                    stream_name: one.stream_arn.lease_stream_name(),
                    // Without describing the stream: the status of every
                    // lease of this stream name, the former streams'
                    // included.
                    creation_epoch: None,
                },
            });
        }
        let Some(table) = table else {
            return Err(Error::Usage("no stream to show"));
        };
        Ok(Watch {
            table,
            streams,
            failover: settings.lease.failover_time,
            seen: HashMap::new(),
        })
    }

    /// The stream (its place in the configuration) a lease is of: with
    /// several streams only multi-stream keys name one.
    fn stream_of(&self, key: &LeaseKey) -> Option<usize> {
        if self.streams.len() > 1 && matches!(key, LeaseKey::Single { .. }) {
            return None;
        }
        self.streams.iter().position(|s| s.scope.owns(key))
    }

    /// One read of the table and of each shard's lag. A lease is renewing
    /// when its counter moved since the previous read, or within the
    /// failover time before this one.
    pub async fn read(&mut self) -> Result<Vec<LeaseStatus>> {
        let records = self
            .table
            .scan()
            .await
            .map_err(|e| Error::lease_table(self.table.name(), e))?;
        let now = Instant::now();
        let mut out: Vec<(usize, LeaseStatus)> = Vec::new();
        for lease in &records {
            let Some(stream) = self.stream_of(&lease.key) else {
                continue;
            };
            let key = lease.key.render();
            let previous = self.seen.get(&key).copied();
            let moved = previous.is_some_and(|(counter, _)| counter != lease.counter);
            let changed = if moved {
                Some(now)
            } else {
                previous.and_then(|(_, at)| at)
            };
            self.seen.insert(key, (lease.counter, changed));
            let mut status = status_of(&self.streams[stream].arn, lease);
            status.renewing = changed.is_some_and(|at| now - at <= self.failover);
            status.last_renewal_ms = changed.map(|at| (now - at).as_millis() as u64);
            out.push((stream, status));
        }
        out.sort_by(|(a_stream, a), (b_stream, b)| {
            (a_stream, &a.shard_id).cmp(&(b_stream, &b.shard_id))
        });
        let lags: Vec<Option<i64>> = futures::stream::iter(out.iter())
            .map(|(stream, l)| lag(&self.streams[*stream].stream, l))
            .buffered(8)
            .collect()
            .await;
        Ok(out
            .into_iter()
            .zip(lags)
            .map(|((_, mut status), lag)| {
                status.lag_ms = lag;
                status
            })
            .collect())
    }

    /// The lease table's name, for a heading.
    pub fn table_name(&self) -> &str {
        self.table.name()
    }
}

/// One cheap read just after the lease's checkpoint: the service says how
/// far behind the tip that is. Two calls per shard (an iterator and one
/// record); `None` when it cannot tell.
async fn lag(stream: &Stream, lease: &LeaseStatus) -> Option<i64> {
    let at = match lease.checkpoint.as_str() {
        Checkpoint::TRIM_HORIZON => StartAt::TrimHorizon,
        Checkpoint::SHARD_END | Checkpoint::LATEST | Checkpoint::AT_TIMESTAMP => return None,
        seq => StartAt::AfterSequence(seq.to_owned()),
    };
    let iterator = stream.shard_iterator(&lease.shard_id, &at).await.ok()?;
    let response = stream.get_records(&iterator, 1).await.ok()?;
    if response.records.is_empty() {
        // Nothing after the checkpoint: caught up (or read to the end).
        return Some(0);
    }
    response.millis_behind_latest
}

fn status_of(stream_arn: &str, lease: &LeaseRecord) -> LeaseStatus {
    LeaseStatus {
        stream_arn: stream_arn.to_owned(),
        shard_id: lease.shard_id().to_owned(),
        lease_key: lease.key.render(),
        owner: lease.owner.clone(),
        checkpoint: lease.checkpoint.as_str().to_owned(),
        checkpoint_sub_sequence_number: lease.checkpoint.sub_sequence(),
        lease_counter: lease.counter,
        renewing: false,
        last_renewal_ms: None,
        parents: lease.parents.clone(),
        children: lease.children.clone(),
        checkpoint_owner: lease.checkpoint_owner.clone(),
        lag_ms: None,
    }
}

/// A lag for people: `-` unknown, `0s`, `1.5s`, `3m20s`, `2h05m`.
fn render_lag(lag_ms: Option<i64>) -> String {
    match lag_ms {
        None => "-".into(),
        Some(ms) if ms < 60_000 => {
            let tenths = (ms + 50) / 100;
            if tenths % 10 == 0 {
                format!("{}s", tenths / 10)
            } else {
                format!("{}.{}s", tenths / 10, tenths % 10)
            }
        }
        Some(ms) if ms < 3_600_000 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        Some(ms) => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// Plain text: one table, or with several streams a table per stream under
/// a heading naming its account and region.
pub fn render(leases: &[LeaseStatus]) -> String {
    let mut groups: Vec<(&str, Vec<&LeaseStatus>)> = Vec::new();
    for lease in leases {
        match groups.last_mut() {
            Some((arn, group)) if *arn == lease.stream_arn => group.push(lease),
            _ => groups.push((&lease.stream_arn, vec![lease])),
        }
    }
    if let [(_, only)] = groups.as_slice() {
        return render_table(only);
    }
    let mut out = String::new();
    for (i, (arn, group)) in groups.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let (account, region) = match arn.parse::<StreamArn>() {
            Ok(parsed) => (parsed.account, parsed.region),
            Err(_) => ("?".into(), "?".into()),
        };
        out.push_str(&format!(
            "{arn} (account {account}, {region}): {} leases\n",
            group.len()
        ));
        out.push_str(&render_table(group));
    }
    out
}

/// One table of leases.
fn render_table(leases: &[&LeaseStatus]) -> String {
    let headers = [
        "SHARD",
        "OWNER",
        "RENEWING",
        "RENEWED",
        "CHECKPOINT",
        "LAG",
        "PARENTS",
        "CHILDREN",
    ];
    let rows: Vec<[String; 8]> = leases
        .iter()
        .map(|l| {
            let checkpoint = match l.checkpoint_sub_sequence_number {
                0 => l.checkpoint.clone(),
                sub => format!("{}/{sub}", l.checkpoint),
            };
            let owner = match (&l.owner, &l.checkpoint_owner) {
                (Some(o), Some(from)) => format!("{o} (handoff from {from})"),
                (Some(o), None) => o.clone(),
                (None, _) => "-".into(),
            };
            [
                l.shard_id.clone(),
                owner,
                if l.renewing { "yes" } else { "no" }.into(),
                match l.last_renewal_ms {
                    Some(ms) => format!("{} ago", render_lag(Some(ms as i64))),
                    None => "-".into(),
                },
                checkpoint,
                render_lag(l.lag_ms),
                join(&l.parents),
                join(&l.children),
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[&str]| -> String {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(&headers);
    for row in &rows {
        out.push_str(&line(&row.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    out
}

fn join(ids: &[String]) -> String {
    if ids.is_empty() {
        "-".into()
    } else {
        ids.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::render_lag;

    #[test]
    fn lags_read_as_a_person_says_them() {
        let got: Vec<String> = [
            None,
            Some(0),
            Some(40),
            Some(1_500),
            Some(59_990),
            Some(200_000),
            Some(7_500_000),
        ]
        .into_iter()
        .map(render_lag)
        .collect();
        assert_eq!(got, ["-", "0s", "0s", "1.5s", "60s", "3m20s", "2h05m"]);
    }
}
