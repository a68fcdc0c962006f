//! The lease table in DynamoDB: scanning it and the conditional writes of
//! the lease protocol (creating it and the permission probes are in
//! `admin`). Every write is conditioned the way the KCL conditions it
//! (`DynamoDBLeaseRefresher`), so kcld and KCL workers can share a table
//! without ever overwriting each other.

use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::AttributeValue;
use kcld_checkpoint::Checkpoint;

mod admin;
mod error;

pub use error::{plain_error, TableError};

use crate::kcl3::{Coordination, Kcl3Fleet};
use crate::record::{attr, n, s, Item, LeaseRecord};

/// What [`LeaseTable::update_owned`] changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnedChange {
    /// Renewal: counter + 1, unless a handoff is pending (the KCL's
    /// `checkpointOwner` is set).
    Renew,
    /// Release: no owner, counter + 1, so that another worker takes the
    /// lease at its next scan instead of waiting for expiry.
    Release,
}

/// One scan of the table.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every lease item that could be read, of any stream in the table.
    pub leases: Vec<LeaseRecord>,
    /// Lease items that could not be read (a bad checkpoint, say).
    pub unreadable: Vec<Unreadable>,
    /// What the KCL 3.x coordinator items in the table say.
    pub coordination: Coordination,
}

/// A lease item kcld cannot read.
#[derive(Debug, Clone)]
pub struct Unreadable {
    /// Its `leaseKey` (empty if it has none).
    pub key: String,
    /// Why it could not be read.
    pub error: String,
}

/// One lease table.
#[derive(Clone, Debug)]
pub struct LeaseTable {
    client: aws_sdk_dynamodb::Client,
    name: String,
}

impl LeaseTable {
    /// The table `name`, reached through `client`.
    pub fn new(client: aws_sdk_dynamodb::Client, name: impl Into<String>) -> Self {
        LeaseTable {
            client,
            name: name.into(),
        }
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every lease in the table (strongly consistent, all pages). Items that
    /// are not leases are skipped; items that cannot be read are logged and
    /// skipped rather than stopping the worker.
    pub async fn scan(&self) -> Result<Vec<LeaseRecord>, TableError> {
        Ok(self.scan_all().await?.leases)
    }

    /// [`LeaseTable::scan`], also naming the lease items that could not be
    /// read, so that their shards are not taken as absent (a child whose
    /// parent is unreadable must wait, not start).
    pub async fn scan_all(&self) -> Result<Scan, TableError> {
        self.scan_with(true).await
    }

    /// [`LeaseTable::scan_all`], eventually consistent when `consistent` is
    /// false: half the read units, for a look that only decides whether a
    /// strongly consistent scan is needed (a stale page could show a child
    /// lease without its newer parent).
    pub async fn scan_with(&self, consistent: bool) -> Result<Scan, TableError> {
        let mut scan = Scan::default();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.name)
                .consistent_read(consistent)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| TableError::classify(e, &self.name, "dynamodb:Scan"))?;
            count_read("Scan", consistent);
            for item in out.items() {
                match LeaseRecord::from_item(item) {
                    Ok(Some(lease)) => scan.leases.push(lease),
                    Ok(None) => scan.coordination.observe(item),
                    Err(e) => {
                        let key = item
                            .get(attr::LEASE_KEY)
                            .and_then(|v| v.as_s().ok())
                            .cloned()
                            .unwrap_or_default();
                        scan.unreadable.push(Unreadable { key, error: e });
                    }
                }
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(scan),
            }
        }
    }

    /// The live KCL 3.x fleet whose leader assigns this table's leases, if
    /// one runs: `coordination` (from a scan of this table) completed with
    /// what KCL 3.0 to 3.4's own coordinator tables say.
    pub async fn live_kcl3_fleet(&self, mut coordination: Coordination) -> Option<Kcl3Fleet> {
        self.read_kcl3_coordinator_tables(&mut coordination).await;
        coordination.live_assigning_fleet(&self.name, crate::kcl3::now())
    }

    /// What the coordinator tables of KCL 3.0 to 3.4 (`<table>-CoordinatorState`,
    /// `<table>-WorkerMetricStats`) say, added to `into`. Tables that do not
    /// exist or cannot be read add nothing: they are only looked at to refuse
    /// sharing the table with a live KCL 3.x fleet.
    async fn read_kcl3_coordinator_tables(&self, into: &mut Coordination) {
        let state = format!("{}-CoordinatorState", self.name);
        for item in self.scan_other(&state).await {
            into.observe(&item);
        }
        let metrics = format!("{}-WorkerMetricStats", self.name);
        for item in self.scan_other(&metrics).await {
            into.observe_worker_metrics(&item);
        }
    }

    /// Every item of another table, or none when it cannot be read.
    async fn scan_other(&self, table: &str) -> Vec<Item> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = match self
                .client
                .scan()
                .table_name(table)
                .set_exclusive_start_key(start.take())
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    let e = TableError::classify(e, table, "dynamodb:Scan");
                    if !matches!(e, TableError::NotFound(_)) {
                        tracing::debug!("cannot read {table}: {e}");
                    }
                    return items;
                }
            };
            items.extend(out.items().iter().cloned());
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return items,
            }
        }
    }

    /// Writes a new lease unless one with its key exists. Returns whether it
    /// was written.
    pub async fn create_if_absent(&self, lease: &LeaseRecord) -> Result<bool, TableError> {
        count_write("PutItem");
        let result = self
            .client
            .put_item()
            .table_name(&self.name)
            .set_item(Some(lease.to_item()))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", attr::LEASE_KEY)
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) => match TableError::classify(e, &self.name, "dynamodb:PutItem") {
                TableError::ConditionFailed => Ok(false),
                other => Err(other),
            },
        }
    }

    fn key(lease_key: &str) -> Item {
        Item::from([(attr::LEASE_KEY.to_owned(), s(lease_key.to_owned()))])
    }

    /// An UpdateItem on one lease that moves its counter from `counter` to
    /// `counter + 1`, conditioned on it (`#c`, `:expected`, `:next`); with
    /// `owner`, `#o` and `:owner` are defined too. The caller adds the rest
    /// of the update and condition: every write of the protocol is one of
    /// these.
    fn counter_update(
        &self,
        lease_key: &str,
        counter: i64,
        owner: Option<&str>,
    ) -> UpdateItemFluentBuilder {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.name)
            .set_key(Some(Self::key(lease_key)))
            .expression_attribute_names("#c", attr::LEASE_COUNTER)
            .expression_attribute_values(":next", n(counter + 1))
            .expression_attribute_values(":expected", n(counter));
        if let Some(owner) = owner {
            req = req
                .expression_attribute_names("#o", attr::LEASE_OWNER)
                .expression_attribute_values(":owner", s(owner.to_owned()));
        }
        req
    }

    /// Adds the names and values of a checkpoint write (`#cp`, `#cps`,
    /// `#sw`, `#pc`, `#pcs`, `#pst`, `:cp`, `:cps`, `:zero`).
    fn with_checkpoint(
        req: UpdateItemFluentBuilder,
        checkpoint: &Checkpoint,
    ) -> UpdateItemFluentBuilder {
        req.expression_attribute_names("#cp", attr::CHECKPOINT)
            .expression_attribute_names("#cps", attr::CHECKPOINT_SUB)
            .expression_attribute_names("#sw", attr::OWNER_SWITCHES)
            .expression_attribute_names("#pc", attr::PENDING_CHECKPOINT)
            .expression_attribute_names("#pcs", attr::PENDING_CHECKPOINT_SUB)
            .expression_attribute_names("#pst", attr::PENDING_CHECKPOINT_STATE)
            .expression_attribute_values(":cp", s(checkpoint.as_str().to_owned()))
            .expression_attribute_values(":cps", n(checkpoint.sub_sequence() as i64))
            .expression_attribute_values(":zero", n(0))
    }

    async fn send(&self, req: UpdateItemFluentBuilder) -> Result<(), TableError> {
        count_write("UpdateItem");
        req.send()
            .await
            .map(|_| ())
            .map_err(|e| TableError::classify(e, &self.name, "dynamodb:UpdateItem"))
    }

    /// A counted update of a lease `owner` holds, if its counter is still
    /// `counter` and its owner still `owner`: a renewal or a release.
    pub async fn update_owned(
        &self,
        lease_key: &str,
        counter: i64,
        owner: &str,
        change: OwnedChange,
    ) -> Result<(), TableError> {
        let (update, condition) = match change {
            OwnedChange::Renew => (
                "SET #c = :next",
                "#c = :expected AND #o = :owner AND attribute_not_exists(#co)",
            ),
            OwnedChange::Release => (
                "SET #c = :next REMOVE #o, #co",
                "#c = :expected AND #o = :owner",
            ),
        };
        let req = self
            .counter_update(lease_key, counter, Some(owner))
            .update_expression(update)
            .condition_expression(condition)
            .expression_attribute_names("#co", attr::CHECKPOINT_OWNER);
        self.send(req).await
    }

    /// Taking: this worker becomes the owner, counter + 1, if the counter is
    /// still the one observed. Counts an owner switch when it had an owner.
    pub async fn take(&self, lease: &LeaseRecord, me: &str) -> Result<(), TableError> {
        let switched = lease.owner.as_deref().is_some_and(|o| o != me);
        let mut req = self
            .counter_update(&lease.key.render(), lease.counter, Some(me))
            .condition_expression("#c = :expected")
            .expression_attribute_names("#co", attr::CHECKPOINT_OWNER);
        req = if switched {
            req.update_expression("SET #o = :owner, #c = :next ADD #sw :one REMOVE #co")
                .expression_attribute_names("#sw", attr::OWNER_SWITCHES)
                .expression_attribute_values(":one", n(1))
        } else {
            req.update_expression("SET #o = :owner, #c = :next REMOVE #co")
        };
        self.send(req).await
    }

    /// A checkpoint as the KCL's `updateLease` writes it: counter + 1, the
    /// checkpoint and its sub-sequence number, owner switches reset, any
    /// pending checkpoint cleared; `children` set at shard end.
    pub async fn checkpoint(
        &self,
        lease_key: &str,
        counter: i64,
        owner: &str,
        checkpoint: &Checkpoint,
        children: &[String],
    ) -> Result<(), TableError> {
        let mut update = String::from("SET #c = :next, #cp = :cp, #cps = :cps, #sw = :zero");
        if !children.is_empty() {
            update.push_str(", #ch = :ch");
        }
        update.push_str(" REMOVE #pc, #pcs, #pst");
        let mut req = Self::with_checkpoint(
            self.counter_update(lease_key, counter, Some(owner)),
            checkpoint,
        )
        .update_expression(update)
        .condition_expression("#c = :expected AND #o = :owner");
        if !children.is_empty() {
            req = req
                .expression_attribute_names("#ch", attr::CHILD_SHARD_IDS)
                .expression_attribute_values(":ch", AttributeValue::Ss(children.to_vec()));
        }
        self.send(req).await
    }

    /// One lease, read strongly consistent; `None` when it is gone.
    pub async fn get(&self, lease_key: &str) -> Result<Option<LeaseRecord>, TableError> {
        self.read(lease_key, true).await
    }

    /// One lease, read eventually consistent (half a read unit): a look at
    /// whether its owner still renews it, never the ground for a write.
    pub async fn peek(&self, lease_key: &str) -> Result<Option<LeaseRecord>, TableError> {
        self.read(lease_key, false).await
    }

    async fn read(
        &self,
        lease_key: &str,
        consistent: bool,
    ) -> Result<Option<LeaseRecord>, TableError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.name)
            .set_key(Some(Self::key(lease_key)))
            .consistent_read(consistent)
            .send()
            .await
            .map_err(|e| TableError::classify(e, &self.name, "dynamodb:GetItem"))?;
        count_read("GetItem", consistent);
        match out.item {
            None => Ok(None),
            Some(item) => LeaseRecord::from_item(&item).map_err(TableError::Other),
        }
    }

    /// A graceful steal (the KCL 3 handoff): this worker becomes the owner
    /// while the current owner, named in `checkpointOwner`, finishes its
    /// batch, writes a last checkpoint and steps aside.
    pub async fn steal(&self, lease: &LeaseRecord, me: &str) -> Result<(), TableError> {
        let victim = lease.owner.clone().unwrap_or_default();
        let req = self
            .counter_update(&lease.key.render(), lease.counter, Some(me))
            .update_expression("SET #o = :owner, #co = :victim, #c = :next ADD #sw :one")
            .condition_expression("#c = :expected AND #o = :victim AND attribute_not_exists(#co)")
            .expression_attribute_names("#co", attr::CHECKPOINT_OWNER)
            .expression_attribute_names("#sw", attr::OWNER_SWITCHES)
            .expression_attribute_values(":victim", s(victim))
            .expression_attribute_values(":one", n(1));
        self.send(req).await
    }

    /// The old owner's side of a handoff: the last checkpoint (if any) and
    /// `checkpointOwner` removed in one write, so the new owner starts
    /// exactly after what was confirmed.
    ///
    /// At a shard's end the last checkpoint is SHARD_END with `children`:
    /// the new owner finds the shard finished and goes on to the children.
    pub async fn finish_handoff(
        &self,
        lease_key: &str,
        counter: i64,
        me: &str,
        checkpoint: Option<&Checkpoint>,
        children: &[String],
    ) -> Result<(), TableError> {
        let mut req = self
            .counter_update(lease_key, counter, None)
            .condition_expression("#c = :expected AND #co = :me")
            .expression_attribute_names("#co", attr::CHECKPOINT_OWNER)
            .expression_attribute_values(":me", s(me.to_owned()));
        req = match checkpoint {
            Some(cp) => {
                let mut update =
                    String::from("SET #c = :next, #cp = :cp, #cps = :cps, #sw = :zero");
                if !children.is_empty() {
                    update.push_str(", #ch = :ch");
                    req = req
                        .expression_attribute_names("#ch", attr::CHILD_SHARD_IDS)
                        .expression_attribute_values(":ch", AttributeValue::Ss(children.to_vec()));
                }
                update.push_str(" REMOVE #co, #pc, #pcs, #pst");
                Self::with_checkpoint(req, cp).update_expression(update)
            }
            None => req.update_expression("SET #c = :next REMOVE #co"),
        };
        self.send(req).await
    }

    /// Deletes a finished lease if nobody wrote it since it was read.
    pub async fn delete(&self, lease_key: &str, counter: i64) -> Result<(), TableError> {
        count_write("DeleteItem");
        self.client
            .delete_item()
            .table_name(&self.name)
            .set_key(Some(Self::key(lease_key)))
            .condition_expression("#c = :expected")
            .expression_attribute_names("#c", attr::LEASE_COUNTER)
            .expression_attribute_values(":expected", n(counter))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| TableError::classify(e, &self.name, "dynamodb:DeleteItem"))
    }
}

/// Counts a read of the lease table (a Scan page or a GetItem), so that an
/// operator can see what the table costs: an eventually consistent read is
/// half the price of a strongly consistent one.
fn count_read(call: &'static str, consistent: bool) {
    let consistency = if consistent { "strong" } else { "eventual" };
    metrics::counter!("kcld_lease_table_reads_total", "call" => call, "consistency" => consistency)
        .increment(1);
}

/// Counts a lease table write as it is sent (DynamoDB charges a refused
/// conditional write too).
fn count_write(call: &'static str) {
    metrics::counter!("kcld_lease_table_writes_total", "call" => call).increment(1);
}
