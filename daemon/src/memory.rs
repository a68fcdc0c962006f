//! How the process's allocator holds and gives back memory.
//!
//! A batch of 1,000 records of 1 KiB is a few buffers of about a megabyte
//! (the response body, the decoded data), allocated on one thread and often
//! freed on another. glibc's malloc gives each thread an arena of its own
//! (up to eight per core), keeps what is freed in the arena it came from, and
//! lets its mmap threshold drift up with the sizes freed. So an instance
//! reading 8 shards kept about 12 MiB above what it held live, spread over
//! arenas that other threads could not reuse. Handing that back with
//! `malloc_trim` after every large batch bounded the peak, but every page
//! given back was faulted in again by the next batch: with a trim four times
//! a second, 40,000 records cost 18,000 page faults and about a fifth of
//! the process's CPU (BENCHMARKS.md, "One arena instead of a trim per
//! batch").
//!
//! Instead the `kcld` binary sets the allocator up once, before any thread
//! starts ([`configure_allocator`]):
//! - one arena, so a buffer freed by any thread is reused by the next batch
//!   of any shard. An idle instance spends a little more CPU with it (256
//!   idle shards: about 165 CPU-s an hour against 124 to 155 with more
//!   arenas; the profiles show no lock waits), far less than the
//!   re-faulting cost under load; `MALLOC_ARENA_MAX=2` is the operator's
//!   choice for mostly idle instances;
//! - a fixed mmap threshold of 4 MiB, so batch buffers come from the heap
//!   and are reused, while a rare response of many megabytes is mapped and
//!   unmapped at once instead of raising the threshold for good;
//! - a trim threshold of 4 MiB: free memory at the top of the heap beyond
//!   that goes back to the system as it is freed.
//!
//! An operator who tunes malloc through the environment (`MALLOC_ARENA_MAX`,
//! `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, `GLIBC_TUNABLES`)
//! keeps their settings: kcld then changes nothing. kcld embedded in another
//! program as a library never touches the allocator's settings; that is the
//! program's choice.
//!
//! What stays free inside the heap (the connections and tasks of hundreds of
//! shards starting at once, leases moving) is handed back by a trim once a
//! minute ([`spawn_periodic_trim`]): 256 idle shards kept about 4 MiB of
//! their start-up that way.

/// Batch buffers below this size are served from the heap and reused.
const MMAP_THRESHOLD: i32 = 4 << 20;

/// Free memory at the heap's top beyond this is given back as it is freed.
const TRIM_THRESHOLD: i32 = 4 << 20;

/// One trim per this many milliseconds.
const TRIM_EVERY_MS: u64 = 60_000;

/// Environment variables through which glibc's malloc is tuned; when one is
/// set the operator decides and kcld leaves the allocator as it is.
const OPERATOR_SETTINGS: [&str; 3] = [
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
];

/// Whether an environment (read through `var`) tunes malloc itself: one of
/// [`OPERATOR_SETTINGS`], or a `glibc.malloc.*` tunable (`GLIBC_TUNABLES`
/// also carries settings of other parts of glibc).
fn operator_tunes_malloc(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    OPERATOR_SETTINGS.iter().any(|name| var(name).is_some())
        || var("GLIBC_TUNABLES").is_some_and(|t| t.to_string_lossy().contains("glibc.malloc."))
}

/// Sets the allocator up for kcld's batches (module docs), unless the
/// environment already tunes it. Call it first thing in `main`, before the
/// runtime starts threads: a thread that already has an arena keeps it.
pub fn configure_allocator() {
    if operator_tunes_malloc(|name| std::env::var_os(name)) {
        return;
    }
    set_allocator();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_allocator() {
    for (param, value) in [
        (libc::M_ARENA_MAX, 1),
        (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    ] {
        // SAFETY: mallopt takes two integers and only changes glibc's
        // allocator parameters under its own lock; the values are in the
        // ranges glibc accepts (it returns 0 and changes nothing otherwise,
        // which leaves the defaults: nothing to handle).
        unsafe {
            libc::mallopt(param, value);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_allocator() {}

/// Trims once a minute until `stop`.
pub fn spawn_periodic_trim(stop: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let every = std::time::Duration::from_millis(TRIM_EVERY_MS);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => trim(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn an_operator_setting_leaves_the_allocator_alone() {
        assert!(!operator_tunes_malloc(|_| None));
        for name in OPERATOR_SETTINGS {
            assert!(
                operator_tunes_malloc(|n| (n == name).then(|| OsString::from("2"))),
                "{name} not respected"
            );
        }
        let tunables = |value: &'static str| {
            move |n: &str| (n == "GLIBC_TUNABLES").then(|| OsString::from(value))
        };
        assert!(operator_tunes_malloc(tunables("glibc.malloc.arena_max=2")));
        assert!(!operator_tunes_malloc(tunables("glibc.cpu.hwcaps=-AVX2")));
        assert!(!operator_tunes_malloc(
            |n| (n == "MALLOC_CHECK_").then(|| OsString::from("3"))
        ));
    }
}
