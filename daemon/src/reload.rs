//! Configuration reloads on SIGHUP (`kcld run`).
//!
//! The file and the environment are read again. What can change while the
//! leases are held changes at once: `log.level`; the checkpoint policy
//! (`checkpoint.interval_ms`, `checkpoint.max_records`), which every shard's
//! processor reads at each decision; and the HTTP sink's tunables
//! (`batch_size`, `max_retry_attempts`, `max_record_age_seconds`,
//! `bisect_on_error`, `timeout_ms`), read at each request and retry, so a
//! retry limit set now lets a stuck batch go to the failure file. Streams
//! listed after the running `[[streams]]` are added: each is opened (its
//! role, its region, its fan-out consumer), its shards leased and balanced
//! with the others' (one that cannot be opened is named, and the next
//! SIGHUP tries it again). Everything
//! else (a stream removed or changed, the lease table and its timing, the readers, the sink's
//! URL, failure file, type and parallelism, the endpoints) would need the
//! shards stopped and read again: a change there is refused with one warning
//! naming the keys, the running values stay, and a restart applies them (a
//! restart hands the leases over). A file that no longer loads is refused as
//! a whole, with the same one-line error a start would print.

use std::path::PathBuf;

use kcld_config::{HttpSinkSettings, Settings};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::lifecycle::sink::{CheckpointPolicy, LivePolicy};
use crate::worker::AddStream;

/// What running shards follow as reloads change it.
pub struct Live {
    /// The checkpoint policy.
    pub policy: LivePolicy,
    /// The HTTP sink's settings, when the sink is HTTP.
    pub http: Option<watch::Receiver<HttpSinkSettings>>,
    /// Streams to add.
    pub added: Option<mpsc::UnboundedReceiver<AddStream>>,
}

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Keys (or sections) whose new values apply now.
    pub applied: Vec<&'static str>,
    /// Sections whose changes need a restart; their running values stay.
    pub refused: Vec<&'static str>,
    /// How many streams the loaded `[[streams]]` lists after the running
    /// ones (which it lists unchanged, in order): to be added.
    pub added_streams: usize,
}

/// The settings that differ between `running` and `loaded`: which apply
/// live and which need a restart. Pure.
pub fn compare(running: &Settings, loaded: &Settings) -> Outcome {
    let mut out = Outcome::default();
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    // Streams added at the end of `[[streams]]`; any other change of the
    // list (one removed, reordered or changed) needs a restart.
    let (now, then) = (&running.streams, &loaded.streams);
    if running.multi_stream
        && loaded.multi_stream
        && then.len() > now.len()
        && !differs(&&now[..], &&then[..now.len()])
    {
        out.added_streams = then.len() - now.len();
    }
    if running.log.level != loaded.log.level {
        out.applied.push("log.level");
    }
    if running.checkpoint.interval != loaded.checkpoint.interval {
        out.applied.push("checkpoint.interval_ms");
    }
    if running.checkpoint.max_records != loaded.checkpoint.max_records {
        out.applied.push("checkpoint.max_records");
    }
    if sink_live(running, loaded) {
        if let (Some(a), Some(b)) = (&running.sink.http, &loaded.sink.http) {
            for (key, changed) in [
                ("sink.batch_size", a.batch_size != b.batch_size),
                (
                    "sink.max_retry_attempts",
                    a.max_retry_attempts != b.max_retry_attempts,
                ),
                (
                    "sink.max_record_age_seconds",
                    a.max_record_age != b.max_record_age,
                ),
                (
                    "sink.bisect_on_error",
                    a.bisect_on_error != b.bisect_on_error,
                ),
                ("sink.timeout_ms", a.timeout != b.timeout),
            ] {
                if changed {
                    out.applied.push(key);
                }
            }
        }
    }
    // A worker id left to its default is a new random one at every load:
    // only an id that is set counts.
    let worker_id_changed = (running.origins.contains_key("worker_id")
        || loaded.origins.contains_key("worker_id"))
        && running.worker_id != loaded.worker_id;
    for (name, changed) in [
        (
            "application_name",
            running.application_name != loaded.application_name,
        ),
        (
            "stream_arn / [[streams]]",
            out.added_streams == 0 && differs(&running.streams, &loaded.streams),
        ),
        ("lease_table", running.lease_table != loaded.lease_table),
        ("worker_id", worker_id_changed),
        (
            "initial_position",
            differs(&running.initial_position, &loaded.initial_position),
        ),
        (
            "shutdown_timeout_ms",
            running.shutdown_timeout != loaded.shutdown_timeout,
        ),
        (
            "consumer_arn / fan_out",
            differs(&running.fan_out, &loaded.fan_out),
        ),
        ("aws", differs(&running.aws, &loaded.aws)),
        ("lease", differs(&running.lease, &loaded.lease)),
        ("polling", differs(&running.polling, &loaded.polling)),
        (
            "sink",
            !sink_live(running, loaded) && differs(&running.sink, &loaded.sink),
        ),
        (
            "log.format",
            differs(&running.log.format, &loaded.log.format),
        ),
        ("ops", differs(&running.ops, &loaded.ops)),
    ] {
        if changed {
            out.refused.push(name);
        }
    }
    out
}

/// Whether the HTTP sink's change can apply live: the same sink type, URL,
/// failure file, parallelism and batching window (what the sink and the
/// lifecycle set up at start), only its tunables differ.
fn sink_live(running: &Settings, loaded: &Settings) -> bool {
    match (&running.sink.http, &loaded.sink.http) {
        (Some(a), Some(b)) => {
            running.sink.kind == loaded.sink.kind
                && running.sink.invoke_identity_arn == loaded.sink.invoke_identity_arn
                && a.url == b.url
                && a.on_failure_file == b.on_failure_file
                && a.parallelization_factor == b.parallelization_factor
                && a.batching_window == b.batching_window
        }
        _ => false,
    }
}

/// Reloads on every `requests` message until `stop`; returns what the
/// shards follow.
pub fn spawn(
    config: Option<PathBuf>,
    running: Settings,
    mut requests: tokio::sync::mpsc::Receiver<()>,
    stop: CancellationToken,
) -> Live {
    let (policy, follows) = watch::channel(CheckpointPolicy::from(&running.checkpoint));
    let (http, http_follows) = match &running.sink.http {
        Some(h) => {
            let (tx, rx) = watch::channel(h.clone());
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let (add, added) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut running = running;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                request = requests.recv() => if request.is_none() { return },
            }
            let to = Follow {
                policy: &policy,
                http: http.as_ref(),
                add: &add,
            };
            running = reload(config.as_deref(), running, to).await;
        }
    });
    Live {
        policy: LivePolicy::following(follows),
        http: http_follows,
        added: Some(added),
    }
}

/// Where a reload's changes go.
struct Follow<'a> {
    policy: &'a watch::Sender<CheckpointPolicy>,
    http: Option<&'a watch::Sender<HttpSinkSettings>>,
    add: &'a mpsc::UnboundedSender<AddStream>,
}

/// One reload: the settings that now run.
async fn reload(
    config: Option<&std::path::Path>,
    mut running: Settings,
    to: Follow<'_>,
) -> Settings {
    let Follow { policy, http, add } = to;
    let mut loaded = match kcld_config::load(config, std::env::vars()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("SIGHUP: configuration not reloaded, the running one stays: {e}");
            return running;
        }
    };
    crate::aws::settle_consumer_region(&mut loaded).await;
    let outcome = compare(&running, &loaded);
    if outcome.applied.contains(&"log.level") {
        match crate::logging::set_level(&loaded.log.level) {
            Ok(()) => running.log.level = loaded.log.level.clone(),
            Err(e) => tracing::warn!("SIGHUP: log.level not changed: {e}"),
        }
    }
    running.checkpoint = loaded.checkpoint.clone();
    policy.send_replace(CheckpointPolicy::from(&running.checkpoint));
    if let (true, Some(tx), Some(new)) = (sink_live(&running, &loaded), http, &loaded.sink.http) {
        running.sink.http = Some(new.clone());
        tx.send_replace(new.clone());
    }
    // Added streams, one at a time and in order: the first that cannot be
    // added stops the rest, so the running list stays a prefix of the file.
    let mut added = Vec::new();
    for stream in loaded.streams.iter().skip(running.streams.len()).cloned() {
        let arn = stream.arn.to_string();
        let (done, result) = oneshot::channel();
        let outcome = match add.send(AddStream {
            stream: stream.clone(),
            done,
        }) {
            Ok(()) => result
                .await
                .unwrap_or_else(|_| Err("the worker is stopping".into())),
            Err(_) => Err("the worker is stopping".into()),
        };
        match outcome {
            Ok(()) => {
                running.streams.push(stream);
                added.push(arn);
            }
            Err(e) => {
                tracing::warn!(
                    "SIGHUP: stream {arn} not added ({e}); fix it and send SIGHUP again{}",
                    match loaded.streams.len() - running.streams.len() - 1 {
                        0 => String::new(),
                        n => format!(" (the {n} listed after it wait for it)"),
                    }
                );
                break;
            }
        }
    }
    if !added.is_empty() {
        tracing::info!("SIGHUP: streams added: {}", added.join(", "));
    }
    if !outcome.refused.is_empty() {
        tracing::warn!(
            "SIGHUP: not applied, needs a restart (the running values stay): {}",
            outcome.refused.join(", ")
        );
    }
    if outcome.applied.is_empty() && outcome.refused.is_empty() && outcome.added_streams == 0 {
        tracing::info!("SIGHUP: configuration reloaded, nothing changed");
    } else if !outcome.applied.is_empty() {
        tracing::info!(
            "SIGHUP: configuration reloaded, applied: {}",
            outcome.applied.join(", ")
        );
    }
    running
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Settings {
        let mut all = vec![
            ("KCLD_APPLICATION_NAME", "app"),
            (
                "KCLD_STREAM_ARN",
                "arn:aws:kinesis:us-east-1:111111111111:stream/orders",
            ),
            ("AWS_REGION", "us-east-1"),
        ];
        all.extend_from_slice(vars);
        kcld_config::load(
            None,
            all.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap()
    }

    #[test]
    fn live_keys_apply_and_the_rest_is_named() {
        let running = settings(&[]);
        // Loading the same configuration again changes nothing (the
        // default worker id is new at every load, and does not count).
        assert_eq!(compare(&running, &settings(&[])), Outcome::default());
        let loaded = settings(&[
            ("KCLD_LOG__LEVEL", "debug"),
            ("KCLD_CHECKPOINT__INTERVAL_MS", "200"),
            (
                "KCLD_STREAM_ARN",
                "arn:aws:kinesis:us-east-1:111111111111:stream/other",
            ),
            ("KCLD_POLLING__MAX_RECORDS", "100"),
        ]);
        let outcome = compare(&running, &loaded);
        assert_eq!(outcome.applied, ["log.level", "checkpoint.interval_ms"]);
        assert_eq!(outcome.refused, ["stream_arn / [[streams]]", "polling"]);
        // The HTTP sink: its tunables apply live; a new URL needs a restart.
        let http = [
            ("KCLD_SINK__TYPE", "http"),
            ("KCLD_SINK__URL", "http://127.0.0.1:9000/events"),
        ];
        let running = settings(&http);
        let mut more = http.to_vec();
        more.push(("KCLD_SINK__BATCH_SIZE", "10"));
        assert_eq!(
            compare(&running, &settings(&more)).applied,
            ["sink.batch_size"]
        );
        more[1] = ("KCLD_SINK__URL", "http://127.0.0.1:9001/events");
        let outcome = compare(&running, &settings(&more));
        assert!(outcome.applied.is_empty());
        assert_eq!(outcome.refused, ["sink"]);
        // A worker id that is set does count.
        let a = settings(&[("KCLD_WORKER_ID", "a")]);
        let b = settings(&[("KCLD_WORKER_ID", "b")]);
        assert_eq!(compare(&a, &b).refused, ["worker_id"]);
    }

    /// Settings from a file listing `arns` as `[[streams]]`.
    fn listing(arns: &[&str]) -> Settings {
        let mut text = String::from("application_name = \"app\"\n");
        for arn in arns {
            text.push_str(&format!("[[streams]]\narn = \"{arn}\"\n"));
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        kcld_config::load(
            Some(file.path()),
            [("AWS_REGION".to_owned(), "us-east-1".to_owned())],
        )
        .unwrap()
    }

    #[test]
    fn streams_listed_after_the_running_ones_are_added_and_other_changes_refused() {
        let a = "arn:aws:kinesis:us-east-1:111111111111:stream/a";
        let b = "arn:aws:kinesis:eu-west-1:444444444444:stream/b";
        let c = "arn:aws:kinesis:us-east-1:333333333333:stream/c";
        let running = listing(&[a]);
        let more = compare(&running, &listing(&[a, b, c]));
        assert_eq!(more.added_streams, 2);
        assert!(more.refused.is_empty(), "{more:?}");
        // Removed, reordered or replaced: a restart.
        for loaded in [listing(&[b]), listing(&[b, a]), listing(&[c, b])] {
            let outcome = compare(&listing(&[a, b]), &loaded);
            assert_eq!(outcome.added_streams, 0);
            assert_eq!(outcome.refused, ["stream_arn / [[streams]]"]);
        }
        // From stream_arn to [[streams]]: the lease keys would change.
        let single = settings(&[]);
        let outcome = compare(
            &single,
            &listing(&["arn:aws:kinesis:us-east-1:111111111111:stream/orders", b]),
        );
        assert_eq!(outcome.added_streams, 0);
        assert!(
            outcome.refused.contains(&"stream_arn / [[streams]]"),
            "{outcome:?}"
        );
    }
}
