//! What the lifecycle keeps of a batch once it was delivered: nothing.

use super::*;

/// Counts the batch buffers dropped.
struct Tracked {
    bytes: Vec<u8>,
    dropped: Arc<std::sync::atomic::AtomicUsize>,
}

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.dropped
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A batch whose records' data and sequence numbers are slices of one
/// buffer, as the decoder makes them.
fn tracked_batch(seqs: &[u64], dropped: &Arc<std::sync::atomic::AtomicUsize>) -> Fetched {
    let mut bytes = Vec::new();
    let mut spans = Vec::new();
    for s in seqs {
        let (data, digits) = (bytes.len(), format!("r{s}").len());
        bytes.extend_from_slice(format!("r{s}").as_bytes());
        let at = bytes.len();
        bytes.extend_from_slice(s.to_string().as_bytes());
        spans.push((data..data + digits, at..bytes.len()));
    }
    let buffer = bytes::Bytes::from_owner(Tracked {
        bytes,
        dropped: dropped.clone(),
    });
    let records = spans
        .into_iter()
        .map(|(data, seq)| Record {
            sequence_number: kcld_checkpoint::SequenceNumber::from_bytes(buffer.slice(seq))
                .unwrap(),
            data: buffer.slice(data),
            ..record(1)
        })
        .collect();
    Fetched::Records(Batch {
        shard_id: Arc::from("s"),
        records,
        millis_behind_latest: None,
        filtered_to: None,
    })
}

/// Positions outlive their batch (the first and last record given, the
/// sink's confirmed position, the checkpoint written); if they were slices
/// of it, every shard would keep a batch or two of about a megabyte
/// outside the read-ahead budget (8 shards peaked 20 MiB higher that way).
#[tokio::test(start_paused = true)]
async fn no_batch_buffer_is_kept_once_its_batch_was_delivered_and_checkpointed() {
    let (g, lease) = grant(Checkpoint::TrimHorizon);
    let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let batches: VecDeque<Fetched> = [[1, 2], [3, 4], [5, 6], [7, 8]]
        .iter()
        .map(|seqs| tracked_batch(seqs, &dropped))
        .collect();
    let script = Mutex::new(Some(batches));
    let processors = Arc::new(SinkProcessors {
        sink: Arc::new(Prefix { take: usize::MAX }),
        policy: CheckpointPolicy {
            interval: Duration::from_secs(3600),
            max_records: 1,
        }
        .into(),
        stream_label: None,
    });
    let stop = g.stop.clone();
    let task = tokio::spawn(run(
        g,
        labels(),
        move |_: &Resume| -> Box<dyn RecordSource> {
            Box::new(Script(script.lock().unwrap().take().unwrap_or_default()))
        },
        processors,
        budget(),
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(lease.writes.lock().unwrap().last(), Some(&at(8)));
    assert_eq!(
        dropped.load(std::sync::atomic::Ordering::SeqCst),
        4,
        "every batch's buffer was freed while the shard is still held"
    );
    stop.cancel();
    task.await.unwrap().unwrap();
}
