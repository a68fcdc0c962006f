//! The whole GetRecords call, in CPU time of the calling thread.
//!
//! A local HTTP server (its own thread, not measured) answers every request
//! with one canned GetRecords response of 0, 1, 10, 100 or 1,000 records of
//! 1 KiB. Three clients call it in turn on a current-thread runtime on the
//! bench thread, so the thread's CPU time is exactly what a client spends
//! on a call (request building, SigV4 signing, the HTTP exchange, reading
//! and decoding the body):
//!
//! - `kcld`: kcld's real client stack, built by `kcld::aws::connect` from
//!   settings as the daemon builds it (retries, timeouts, interceptors, the
//!   body capture), `Stream::get_records` (kcld's decoder) and the shard's
//!   `Unpacker` (deaggregation and the checkpoint filter), records dropped
//!   (a null processor), with the daemon's Prometheus recorder installed;
//! - `aws_sdk`: a plain aws-sdk-kinesis client's `get_records`, records
//!   counted;
//! - `floor`: a bare hyper client that signs the same request with SigV4
//!   and reads the body, decoding nothing.
//!
//! Reported per call (the time) and per record (Criterion's throughput).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http_body_util::{BodyExt, Full};
use kcld::retrieval::{Resume, Unpacker};
use kcld_benches::SyntheticResponse;
use kcld_checkpoint::Checkpoint;

const STREAM_ARN: &str = "arn:aws:kinesis:us-east-1:111111111111:stream/bench";
const ACCESS_KEY: &str = "AKIDBENCHBENCHBENCH1";
const SECRET_KEY: &str = "benchbenchbenchbenchbenchbenchbenchbench";

/// CPU time of the calling thread (user + system), in nanoseconds.
struct ThreadCpu;

fn thread_cpu_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call;
    // CLOCK_THREAD_CPUTIME_ID is supported by every Linux kernel since
    // 2.6.12, and the call only writes into `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_nanos()
    }
    fn end(&self, started: u64) -> u64 {
        thread_cpu_nanos().saturating_sub(started)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, value: &u64) -> f64 {
        *value as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

/// CPU nanoseconds shown as microseconds; throughput as records per CPU
/// second.
struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, _typical: f64, values: &mut [f64]) -> &'static str {
        for v in values {
            *v /= 1_000.0;
        }
        "µs (CPU)"
    }
    fn scale_throughputs(
        &self,
        _typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let per_call = match throughput {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) => {
                *n as f64
            }
        };
        for v in values {
            *v = per_call * 1e9 / *v;
        }
        "records/CPU-s"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns (CPU)"
    }
}

/// Serves `body` to every request on a loopback port, on a thread of its
/// own (its CPU time is not the bench thread's).
fn serve(body: Bytes) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("local address");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let body = body.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let body = body.clone();
                            async move {
                                // Read the request as a server would.
                                let _ = req.into_body().collect().await;
                                Ok::<_, Infallible>(
                                    hyper::Response::builder()
                                        .header("content-type", "application/x-amz-json-1.1")
                                        .header("x-amzn-requestid", "bench")
                                        .body(Full::new(body))
                                        .expect("response"),
                                )
                            }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(tcp);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
    });
    addr
}

/// kcld's stream, built as the daemon builds it.
async fn kcld_stream(addr: SocketAddr) -> kcld::stream::Stream {
    let env = [
        ("KCLD_STREAM_ARN", STREAM_ARN.to_owned()),
        ("KCLD_APPLICATION_NAME", "bench".to_owned()),
        ("KCLD_AWS__KINESIS_ENDPOINT", format!("http://{addr}")),
        ("KCLD_AWS__DYNAMODB_ENDPOINT", format!("http://{addr}")),
        ("KCLD_AWS__DYNAMODB_REGION", "us-east-1".to_owned()),
    ]
    .map(|(k, v)| (k.to_owned(), v));
    let settings = kcld_config::load(None, env).expect("bench settings");
    let clients = kcld::aws::connect(&settings).await.expect("clients");
    kcld::stream::Stream::new(clients.kinesis, settings.stream_arn)
}

/// A plain SDK client, configured as the SDK's documentation shows.
fn sdk_client(addr: SocketAddr) -> aws_sdk_kinesis::Client {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version_latest()
        .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
        .endpoint_url(format!("http://{addr}"))
        .credentials_provider(aws_credential_types::Credentials::new(
            ACCESS_KEY, SECRET_KEY, None, None, "bench",
        ))
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build();
    aws_sdk_kinesis::Client::from_conf(config)
}

/// The floor: sign with SigV4, send with hyper, read the body.
struct Floor {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    uri: String,
    identity: aws_smithy_runtime_api::client::identity::Identity,
    body: Bytes,
}

impl Floor {
    fn new(addr: SocketAddr, iterator: &str) -> Self {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let credentials =
            aws_credential_types::Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "bench");
        let body = serde_json::to_vec(&serde_json::json!({
            "ShardIterator": iterator,
            "Limit": 10_000,
            "StreamARN": STREAM_ARN,
        }))
        .expect("request body");
        Floor {
            client,
            uri: format!("http://{addr}/"),
            identity: credentials.into(),
            body: body.into(),
        }
    }

    async fn call(&self) -> usize {
        use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
        let mut req = http::Request::builder()
            .method("POST")
            .uri(&self.uri)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", "Kinesis_20131202.GetRecords")
            .body(Full::new(self.body.clone()))
            .expect("request");
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&self.identity)
            .region("us-east-1")
            .name("kinesis")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .expect("signing parameters")
            .into();
        let headers: Vec<(&str, &str)> = req
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
            .collect();
        let signable = SignableRequest::new(
            "POST",
            &self.uri,
            headers.into_iter(),
            SignableBody::Bytes(&self.body),
        )
        .expect("signable request");
        let (instructions, _) = sign(signable, &params).expect("signature").into_parts();
        instructions.apply_to_request_http1x(&mut req);
        let response = self.client.request(req).await.expect("floor call");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("floor body")
            .to_bytes();
        body.len()
    }
}

fn getrecords_loop(c: &mut Criterion<ThreadCpu>) {
    // The daemon's credential chain reads these; no profile or instance
    // metadata lookups.
    std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The daemon records metrics on this path; so does the bench.
    kcld::ops::install_metrics(Some(STREAM_ARN)).expect("metrics recorder");
    for count in [0usize, 1, 10, 100, 1_000] {
        let response = SyntheticResponse::generate(count, 1024, 7);
        let iterator = response.next_shard_iterator.clone().unwrap_or_default();
        let addr = serve(response.body());
        let stream = rt.block_on(kcld_stream(addr));
        let sdk = sdk_client(addr);
        let floor = Floor::new(addr, &iterator);
        let mut unpacker = Unpacker::new(
            "shardId-000000000000",
            None,
            &Resume::After(Checkpoint::TrimHorizon),
            None,
        );
        // Every path answers in full once before timing.
        let got = rt.block_on(async {
            let kcld = stream
                .get_records(&iterator, 10_000)
                .await
                .expect("kcld call")
                .records
                .len();
            let sdk = sdk
                .get_records()
                .shard_iterator(&iterator)
                .limit(10_000)
                .send()
                .await
                .expect("sdk call")
                .records
                .len();
            (kcld, sdk, floor.call().await > 0)
        });
        assert_eq!(got, (count, count, true), "every path reads the response");

        let mut group = c.benchmark_group(format!("getrecords_loop/{count}x1KiB"));
        group.throughput(Throughput::Elements(count.max(1) as u64));
        group.measurement_time(Duration::from_secs(4));
        group.bench_function(BenchmarkId::from_parameter("kcld"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let response = stream
                        .get_records(&iterator, 10_000)
                        .await
                        .expect("kcld call");
                    let records = unpacker.unpack(response.records.into_iter());
                    std::hint::black_box(records.len())
                })
            })
        });
        group.bench_function(BenchmarkId::from_parameter("aws_sdk"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let out = sdk
                        .get_records()
                        .shard_iterator(&iterator)
                        .limit(10_000)
                        .send()
                        .await
                        .expect("sdk call");
                    std::hint::black_box(out.records.len())
                })
            })
        });
        group.bench_function(BenchmarkId::from_parameter("floor"), |b| {
            b.iter(|| rt.block_on(async { std::hint::black_box(floor.call().await) }))
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = getrecords_loop
}
criterion_main!(benches);
