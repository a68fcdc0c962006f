//! Inputs and baselines shared by the benches and the agreement test:
//! realistic GetRecords bodies, the AWS SDK's own decoding of a body (no
//! network: a canned HTTP client), and the lower bound of decoding.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rand::{Rng, SeedableRng};

/// One record of a synthetic GetRecords response.
#[derive(Clone, Debug)]
pub struct SyntheticRecord {
    pub sequence_number: String,
    pub arrival_ms: i64,
    pub partition_key: String,
    pub data: Vec<u8>,
    pub encryption: Option<&'static str>,
}

/// A child shard: id, parents, starting and ending hash key.
pub type SyntheticChild = (String, Vec<String>, String, String);

/// A synthetic response: records plus the other fields GetRecords returns.
#[derive(Clone, Debug)]
pub struct SyntheticResponse {
    pub records: Vec<SyntheticRecord>,
    pub next_shard_iterator: Option<String>,
    pub millis_behind_latest: Option<i64>,
    pub child_shards: Option<Vec<SyntheticChild>>,
}

impl SyntheticResponse {
    /// `count` records of `size` bytes each, shaped like a real response
    /// (56-digit sequence numbers, a 150-character iterator).
    pub fn generate(count: usize, size: usize, seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let base = "4959033827149025660855969253836157109592157598913658".to_owned();
        let records = (0..count)
            .map(|i| SyntheticRecord {
                sequence_number: format!("{base}{:04}", i % 10_000),
                arrival_ms: 1_709_100_911_000 + i as i64,
                partition_key: format!("partition-key-{}", rng.random_range(0..10_000)),
                data: (0..size).map(|_| rng.random()).collect(),
                encryption: Some("NONE"),
            })
            .collect();
        SyntheticResponse {
            records,
            next_shard_iterator: Some("AAAAAAAAAAH".repeat(14)),
            millis_behind_latest: Some(0),
            child_shards: None,
        }
    }

    /// The JSON body, as the service writes it.
    pub fn body(&self) -> Bytes {
        let engine = base64_simd::STANDARD;
        let records: Vec<serde_json::Value> = self
            .records
            .iter()
            .map(|r| {
                let mut v = serde_json::json!({
                    "SequenceNumber": r.sequence_number,
                    "ApproximateArrivalTimestamp": r.arrival_ms as f64 / 1000.0,
                    "Data": engine.encode_to_string(&r.data),
                    "PartitionKey": r.partition_key,
                });
                if let Some(e) = r.encryption {
                    v["EncryptionType"] = e.into();
                }
                v
            })
            .collect();
        let mut body = serde_json::json!({ "Records": records });
        if let Some(it) = &self.next_shard_iterator {
            body["NextShardIterator"] = it.clone().into();
        }
        if let Some(m) = self.millis_behind_latest {
            body["MillisBehindLatest"] = m.into();
        }
        if let Some(children) = &self.child_shards {
            body["ChildShards"] = children
                .iter()
                .map(|(id, parents, start, end)| {
                    serde_json::json!({
                        "ShardId": id,
                        "ParentShards": parents,
                        "HashKeyRange": {"StartingHashKey": start, "EndingHashKey": end},
                    })
                })
                .collect::<Vec<_>>()
                .into();
        }
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }
}

/// The AWS SDK's GetRecords path, fed a canned body instead of the network:
/// request building, signing and the SDK's deserializer all run.
pub struct SdkDecoder {
    runtime: tokio::runtime::Runtime,
    client: aws_sdk_kinesis::Client,
    body: Arc<Mutex<Bytes>>,
}

/// An HTTP client that answers every request with the body last put in the
/// returned slot, as `content_type`: an SDK client over it runs its whole
/// call path on a canned response.
pub fn canned_http(
    content_type: &'static str,
) -> (
    aws_smithy_runtime_api::client::http::SharedHttpClient,
    Arc<Mutex<Bytes>>,
) {
    let body = Arc::new(Mutex::new(Bytes::new()));
    let canned = body.clone();
    let http = aws_smithy_http_client::test_util::infallible_client_fn(move |_req| {
        let b = canned.lock().map(|b| b.clone()).unwrap_or_default();
        let mut response = http::Response::new(aws_smithy_types::body::SdkBody::from(b));
        response
            .headers_mut()
            .insert("content-type", http::HeaderValue::from_static(content_type));
        response
    });
    (http, body)
}

impl SdkDecoder {
    pub fn new() -> Self {
        let (http, body) = canned_http("application/x-amz-json-1.1");
        let config = aws_sdk_kinesis::Config::builder()
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
            .credentials_provider(aws_credential_types::Credentials::new(
                "AKID", "SECRET", None, None, "bench",
            ))
            .http_client(http)
            .build();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
        SdkDecoder {
            runtime,
            client: aws_sdk_kinesis::Client::from_conf(config),
            body,
        }
    }

    /// Decodes `body` the SDK's way, from async code.
    pub async fn decode_async(
        &self,
        body: Bytes,
    ) -> aws_sdk_kinesis::operation::get_records::GetRecordsOutput {
        if let Ok(mut slot) = self.body.lock() {
            *slot = body;
        }
        self.client
            .get_records()
            .shard_iterator("iterator")
            .send()
            .await
            .unwrap_or_else(|e| panic!("SDK GetRecords: {e:?}"))
    }

    /// Decodes `body` the SDK's way.
    pub fn decode(&self, body: Bytes) -> aws_sdk_kinesis::operation::get_records::GetRecordsOutput {
        if let Ok(mut slot) = self.body.lock() {
            *slot = body;
        }
        self.runtime
            .block_on(self.client.get_records().shard_iterator("iterator").send())
            .unwrap_or_else(|e| panic!("SDK GetRecords: {e:?}"))
    }
}

impl Default for SdkDecoder {
    fn default() -> Self {
        Self::new()
    }
}

/// The lower bound of decoding a body: serde_json with borrowed strings and
/// SIMD base64 into one buffer, building no records. Returns the decoded
/// bytes (so the work cannot be optimised away).
pub fn lower_bound(body: &[u8]) -> Bytes {
    #[derive(serde::Deserialize)]
    struct R<'a> {
        #[serde(rename = "Records", borrow)]
        records: Vec<Rec<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Rec<'a> {
        #[serde(rename = "Data", borrow)]
        data: &'a str,
        #[serde(rename = "SequenceNumber", borrow)]
        _seq: &'a str,
        #[serde(rename = "PartitionKey", borrow)]
        _pk: &'a str,
    }
    let r: R<'_> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(_) => return Bytes::new(),
    };
    let total: usize = r.records.iter().map(|x| x.data.len() / 4 * 3).sum();
    let mut out = vec![0u8; total];
    let mut at = 0;
    for rec in &r.records {
        let n = base64_simd::STANDARD
            .decode(
                rec.data.as_bytes(),
                base64_simd::Out::from_slice(&mut out[at..]),
            )
            .map(|d| d.len())
            .unwrap_or(0);
        at += n;
    }
    out.truncate(at);
    Bytes::from(out)
}

/// Allocation counting for the benches: wraps the system allocator.
pub mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicU64, Ordering};

    pub struct Counting;
    static ALLOCS: AtomicU64 = AtomicU64::new(0);

    // SAFETY: every call is forwarded unchanged to the system allocator;
    // the counter has no effect on the memory handed out.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: same contract as the caller's.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: same contract as the caller's.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: same contract as the caller's.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// Allocations made while `f` runs.
    pub fn count<T>(f: impl FnOnce() -> T) -> (T, u64) {
        let before = ALLOCS.load(Ordering::Relaxed);
        let out = f();
        (out, ALLOCS.load(Ordering::Relaxed) - before)
    }
}

/// Process CPU time (user + system) and peak resident memory, from
/// getrusage, for the end-to-end bench.
pub fn cpu_and_peak_rss() -> (std::time::Duration, u64) {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after
    // the last ')': utime is field 14, stime 15 (1-based).
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    let cpu = std::time::Duration::from_millis(ticks * 10);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak_kib = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu, peak_kib * 1024)
}

/// The in-process end-to-end pipeline of the `pipeline` bench.
pub mod pipeline {
    use std::sync::Arc;

    use bytes::Bytes;
    use kcld_checkpoint::Checkpoint;
    use kcld_records::kpl::{self, Stats};
    use kcld_records::{ByteStr, Encryption, Record};

    use super::{SdkDecoder, SyntheticResponse};

    /// Which decoding the pipeline uses.
    #[derive(Clone, Copy, Debug)]
    pub enum Path {
        Kcld,
        AwsSdk,
    }

    impl Path {
        pub fn name(&self) -> &'static str {
            match self {
                Path::Kcld => "kcld",
                Path::AwsSdk => "aws_sdk",
            }
        }
    }

    /// N shards, each served the same response until it delivered its share.
    pub struct Workload {
        pub shards: usize,
        body: Bytes,
        data_per_response: u64,
        responses_per_shard: u64,
        runtime: tokio::runtime::Runtime,
        sdk: Arc<SdkDecoder>,
    }

    impl Workload {
        /// `bytes_per_shard` of record data per shard and run, in responses
        /// of `records` records of `size` bytes.
        pub fn new(shards: usize, records: usize, size: usize, bytes_per_shard: u64) -> Self {
            let data_per_response = (records * size) as u64;
            Workload {
                shards,
                body: SyntheticResponse::generate(records, size, 7).body(),
                data_per_response,
                responses_per_shard: bytes_per_shard.div_ceil(data_per_response).max(1),
                runtime: tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("runtime: {e}")),
                sdk: Arc::new(SdkDecoder::new()),
            }
        }

        pub fn data_bytes_per_run(&self) -> u64 {
            self.data_per_response * self.responses_per_shard * self.shards as u64
        }
    }

    /// The sink that takes everything: counts what it was handed.
    fn null_sink(records: &[Record]) -> u64 {
        records.iter().map(|r| r.data.len() as u64).sum()
    }

    /// Runs every shard to the end; returns the record data delivered.
    pub fn run(work: &Workload, path: Path) -> u64 {
        work.runtime.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..work.shards {
                let body = work.body.clone();
                let sdk = work.sdk.clone();
                let n = work.responses_per_shard;
                tasks.spawn(async move {
                    let checkpoint = Checkpoint::TrimHorizon;
                    let mut delivered = 0;
                    let mut stats = Stats::default();
                    for _ in 0..n {
                        let records: Vec<Record> = match path {
                            Path::Kcld => match kcld_records::getrecords::decode(body.clone()) {
                                Ok(r) => r.records,
                                Err(_) => Vec::new(),
                            },
                            Path::AwsSdk => sdk
                                .decode_async(body.clone())
                                .await
                                .records
                                .into_iter()
                                .filter_map(|r| {
                                    Some(Record {
                                        sequence_number: r.sequence_number.parse().ok()?,
                                        sub_sequence_number: 0,
                                        aggregated: false,
                                        partition_key: ByteStr::from(
                                            r.partition_key.unwrap_or_default(),
                                        ),
                                        explicit_hash_key: None,
                                        data: Bytes::from(r.data.into_inner()),
                                        approximate_arrival_ms: r
                                            .approximate_arrival_timestamp
                                            .and_then(|t| t.to_millis().ok())
                                            .unwrap_or(0),
                                        encryption: r.encryption_type.map(|_| Encryption::None),
                                    })
                                })
                                .collect(),
                        };
                        let mut out = Vec::with_capacity(records.len());
                        for record in records {
                            kpl::deaggregate(record, None, &mut out, &mut stats);
                        }
                        out.retain(|r| !checkpoint.covers(&r.position()));
                        delivered += null_sink(&out);
                        tokio::task::yield_now().await;
                    }
                    delivered
                });
            }
            let mut total = 0;
            while let Some(done) = tasks.join_next().await {
                total += done.unwrap_or(0);
            }
            total
        })
    }
}

/// DynamoDB Streams GetRecords bodies and the AWS SDK's deserializer of
/// them (no network: a canned HTTP client).
pub mod dynamodb {
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use rand::{Rng, SeedableRng};

    /// A GetRecords body of `count` MODIFY records with NEW_AND_OLD_IMAGES,
    /// each image about `image_bytes` of DynamoDB JSON (strings, numbers, a
    /// map and a list), as the service writes it.
    pub fn body(count: usize, image_bytes: usize, seed: u64) -> Bytes {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut text = |n: usize| -> String {
            (0..n)
                .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
                .collect()
        };
        let records: Vec<serde_json::Value> = (0..count)
            .map(|i| {
                let image = |version: u32, text: &mut dyn FnMut(usize) -> String| {
                    serde_json::json!({
                        "id": {"S": format!("order-{i:06}")},
                        "version": {"N": version.to_string()},
                        "status": {"S": "shipped"},
                        "total": {"N": "1234.56"},
                        "note": {"S": text(image_bytes.saturating_sub(300) / 2)},
                        "address": {"M": {
                            "street": {"S": text(24)},
                            "city": {"S": text(12)},
                            "zip": {"S": "12345"}
                        }},
                        "tags": {"L": [{"S": "a"}, {"S": "b"}, {"N": "3"}]},
                        "lines": {"SS": [text(10), text(10)]},
                        "comment": {"S": text(image_bytes.saturating_sub(300) / 2)}
                    })
                };
                serde_json::json!({
                    "eventID": format!("{:032x}", i),
                    "eventName": "MODIFY",
                    "eventVersion": "1.1",
                    "eventSource": "aws:dynamodb",
                    "awsRegion": "us-east-1",
                    "dynamodb": {
                        "ApproximateCreationDateTime": 1_709_100_911 + i as i64,
                        "Keys": {"id": {"S": format!("order-{i:06}")}},
                        "NewImage": image(2, &mut text),
                        "OldImage": image(1, &mut text),
                        "SequenceNumber": format!("{}", 4_421_584_500_000_000_017_450_439_091u128 + i as u128),
                        "SizeBytes": 2 * image_bytes,
                        "StreamViewType": "NEW_AND_OLD_IMAGES"
                    }
                })
            })
            .collect();
        Bytes::from(
            serde_json::to_vec(&serde_json::json!({
                "Records": records,
                "NextShardIterator": "arn:aws:dynamodb:us-east-1:111111111111:table/orders/stream/2026-12-07T09:12:57.169|1|AAAAAAAAAA".repeat(2)
            }))
            .unwrap_or_default(),
        )
    }

    /// The SDK's DynamoDB Streams GetRecords: request building, signing and
    /// its deserializer (attribute-value trees for every image) all run.
    pub struct SdkDecoder {
        runtime: tokio::runtime::Runtime,
        client: aws_sdk_dynamodbstreams::Client,
        body: Arc<Mutex<Bytes>>,
    }

    impl SdkDecoder {
        pub fn new() -> Self {
            let (http, body) = super::canned_http("application/x-amz-json-1.0");
            let config = aws_sdk_dynamodbstreams::Config::builder()
                .behavior_version(aws_sdk_dynamodbstreams::config::BehaviorVersion::latest())
                .region(aws_sdk_dynamodbstreams::config::Region::new("us-east-1"))
                .credentials_provider(aws_credential_types::Credentials::new(
                    "AKID", "SECRET", None, None, "bench",
                ))
                .http_client(http)
                .build();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
            SdkDecoder {
                runtime,
                client: aws_sdk_dynamodbstreams::Client::from_conf(config),
                body,
            }
        }

        /// Decodes `body` the SDK's way; returns how many records.
        pub fn decode(&self, body: Bytes) -> usize {
            if let Ok(mut slot) = self.body.lock() {
                *slot = body;
            }
            self.runtime
                .block_on(self.client.get_records().shard_iterator("iterator").send())
                .unwrap_or_else(|e| panic!("SDK GetRecords: {e:?}"))
                .records
                .map_or(0, |r| r.len())
        }
    }

    impl Default for SdkDecoder {
        fn default() -> Self {
            Self::new()
        }
    }
}
