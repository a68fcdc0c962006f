//! Giving freed batch memory back to the system.
//!
//! A batch of 1,000 records of 1 KiB is a few buffers of about a megabyte
//! (the response body, the decoded data, the sink's lines). glibc's malloc
//! serves them from per-thread arenas once its dynamic mmap threshold has
//! risen past their size, and keeps what they free: an instance reading 8
//! shards peaked about 12 MiB above what it held live. Forcing such
//! buffers to mmap gives the memory back at once but costs a page fault per
//! 4 KiB on every batch (measured: 1.7x the CPU per record). Instead, after
//! a large batch was dropped, the free pages of every arena are handed back
//! with `malloc_trim`, at most a few times a second for the whole process.
//! Memory freed while no large batch is read (the connections and tasks of
//! hundreds of shards starting at once, leases moving) is handed back by a
//! trim once a minute at most, when no batch trimmed meanwhile: 256 idle
//! shards kept about 4 MiB of their start-up that way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Batches smaller than this leave the allocator alone.
const LARGE_BATCH: usize = 256 * 1024;

/// At most one trim per this many milliseconds, process-wide.
const EVERY_MS: u64 = 250;

/// While quiet, at most one trim per this many milliseconds.
const QUIET_EVERY_MS: u64 = 60_000;

static LAST_TRIM_MS: AtomicU64 = AtomicU64::new(0);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Called once a batch of `bytes` of record data was dropped.
pub fn batch_dropped(bytes: usize) {
    if bytes < LARGE_BATCH {
        return;
    }
    let now = now_ms();
    let last = LAST_TRIM_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) < EVERY_MS
        || LAST_TRIM_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    trim();
}

/// Trims once a minute unless a batch did meanwhile, until `stop`.
pub fn spawn_quiet_trim(stop: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let every = std::time::Duration::from_millis(QUIET_EVERY_MS);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let now = now_ms();
            let last = LAST_TRIM_MS.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= QUIET_EVERY_MS {
                LAST_TRIM_MS.store(now, Ordering::Relaxed);
                trim();
            }
        }
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes no pointers and only asks glibc's allocator
    // to return free pages (it locks each arena itself); it is safe to call
    // from any thread at any time, and its result (whether memory was
    // released) needs no handling.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
