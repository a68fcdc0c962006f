//! Watching a fleet of kcld instances from outside: who holds how many
//! leases, and which records came out of which instance.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::{Delivered, Kcld, Stack};

/// Owner -> number of leases it holds (unowned leases under "").
pub async fn lease_loads(stack: &Stack, table: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for owner in stack
        .lease_owners(table)
        .await
        .unwrap_or_default()
        .into_values()
    {
        *counts.entry(owner.unwrap_or_default()).or_insert(0) += 1;
    }
    counts
}

/// Polls the table until `ok` holds; returns how long that took. Panics
/// with the last loads after `within`.
pub async fn wait_for_loads(
    stack: &Stack,
    table: &str,
    within: Duration,
    ok: impl Fn(&HashMap<String, usize>) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let l = lease_loads(stack, table).await;
        if ok(&l) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "table {table} did not reach the expected state in {within:?}: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads lines from every instance until `want` distinct records arrived.
/// Returns every delivery (with duplicates) as (instance index, record);
/// panics with the number missing after `within`.
pub async fn collect(
    instances: &mut [&mut Kcld],
    want: &HashSet<Vec<u8>>,
    within: Duration,
) -> Vec<(usize, Delivered)> {
    let deadline = Instant::now() + within;
    let mut all = Vec::new();
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    while !want.is_subset(&seen) && Instant::now() < deadline {
        for (i, k) in instances.iter_mut().enumerate() {
            for line in k.take_lines(usize::MAX, Duration::from_millis(50)).await {
                let d = Delivered::parse(&line).unwrap();
                seen.insert(d.data.clone());
                all.push((i, d));
            }
        }
    }
    let missing = want.difference(&seen).count();
    assert_eq!(missing, 0, "{missing} records never delivered");
    all
}
