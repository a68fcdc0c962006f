package dev.kcld.interop;

import java.net.URI;
import java.time.Duration;
import java.time.Instant;
import java.util.Date;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import software.amazon.awssdk.arns.Arn;
import software.amazon.awssdk.auth.credentials.AwsBasicCredentials;
import software.amazon.awssdk.auth.credentials.AwsCredentialsProvider;
import software.amazon.awssdk.auth.credentials.StaticCredentialsProvider;
import software.amazon.awssdk.http.Protocol;
import software.amazon.awssdk.http.nio.netty.NettyNioAsyncHttpClient;
import software.amazon.awssdk.regions.Region;
import software.amazon.awssdk.services.cloudwatch.CloudWatchAsyncClient;
import software.amazon.awssdk.services.dynamodb.DynamoDbAsyncClient;
import software.amazon.awssdk.services.dynamodb.DynamoDbAsyncClientBuilder;
import software.amazon.awssdk.services.kinesis.KinesisAsyncClient;
import software.amazon.awssdk.services.kinesis.KinesisAsyncClientBuilder;
import software.amazon.kinesis.common.ConfigsBuilder;
import software.amazon.kinesis.common.InitialPositionInStream;
import software.amazon.kinesis.common.InitialPositionInStreamExtended;
import software.amazon.kinesis.common.StreamIdentifier;
import software.amazon.kinesis.coordinator.CoordinatorConfig;
import software.amazon.kinesis.coordinator.Scheduler;
import software.amazon.kinesis.leases.LeaseManagementConfig;
import software.amazon.kinesis.metrics.MetricsLevel;
import software.amazon.kinesis.metrics.NullMetricsFactory;
import software.amazon.kinesis.processor.SingleStreamTracker;
import software.amazon.kinesis.retrieval.RetrievalConfig;
import software.amazon.kinesis.retrieval.polling.PollingConfig;

/**
 * A Java KCL consumer for lease-table interop tests: reads one stream by ARN with polling, writes each user record
 * to OUTPUT and each lifecycle callback to EVENTS, checkpoints at records. See interop/README.md for the
 * environment it reads.
 */
public final class Consumer {
    private static final Logger log = LoggerFactory.getLogger(Consumer.class);

    /** Exit codes. */
    static final int EXIT_OK = 0;
    static final int EXIT_USAGE = 64;
    static final int EXIT_SHUTDOWN_INCOMPLETE = 2;
    static final int EXIT_SCHEDULER_DIED = 3;

    private final Scheduler scheduler;
    private final long shutdownTimeoutMillis;
    private final LineFile output;
    private final LineFile events;
    private final CountDownLatch stopRequested = new CountDownLatch(1);
    private final Object stopLock = new Object();
    private Boolean stopResult;
    private volatile boolean exiting;
    private App app;

    private Consumer(Env env, long startNanos) throws Exception {
        String streamArnText = env.required("STREAM_ARN");
        String applicationName = env.required("APPLICATION_NAME");
        String workerId = env.required("WORKER_ID");
        String outputPath = env.required("OUTPUT");
        String eventsPath = env.get("EVENTS", null);
        int checkpointEvery = (int) env.positiveLong("CHECKPOINT_EVERY", 1);
        long stopAfter = env.positiveLong("STOP_AFTER", 0);
        long failoverMillis = env.positiveLong("FAILOVER_MS", 10_000);
        long shardSyncMillis = env.positiveLong("SHARD_SYNC_MS", 2_000);
        long idleMillis = env.positiveLong("IDLE_BETWEEN_READS_MS", 250);
        int maxRecords = (int) env.positiveLong("MAX_RECORDS", 1000);
        long parentPollMillis = env.positiveLong("PARENT_POLL_MS", 10_000);
        this.shutdownTimeoutMillis = env.positiveLong("SHUTDOWN_TIMEOUT_MS", 90_000);
        InitialPositionInStreamExtended initialPosition = initialPosition(env);

        Arn streamArn;
        try {
            streamArn = Arn.fromString(streamArnText);
        } catch (IllegalArgumentException e) {
            throw new Env.UsageException("STREAM_ARN is not an ARN: " + streamArnText);
        }
        // The KCL wants the client's region to be the stream ARN's region.
        Region region = Region.of(env.get("AWS_REGION",
                env.get("AWS_DEFAULT_REGION", streamArn.region().orElse("us-east-1"))));

        AwsCredentialsProvider credentials = env.has("AWS_ACCESS_KEY_ID")
                ? StaticCredentialsProvider.create(AwsBasicCredentials.create(
                        env.required("AWS_ACCESS_KEY_ID"), env.required("AWS_SECRET_ACCESS_KEY")))
                : null;

        // Kinesis: plain-HTTP emulator, so HTTP/1.1 (the KCL's own helper would ask for HTTP/2, which needs TLS).
        KinesisAsyncClientBuilder kinesisBuilder = KinesisAsyncClient.builder()
                .region(region)
                .httpClientBuilder(NettyNioAsyncHttpClient.builder()
                        .protocol(Protocol.HTTP1_1)
                        .maxConcurrency(Integer.MAX_VALUE));
        if (env.flag("KINESIS_LIST_SHARDS_FIX", true)) {
            kinesisBuilder.overrideConfiguration(c -> c.addExecutionInterceptor(new ListShardsFix()));
        }
        DynamoDbAsyncClientBuilder dynamoBuilder = DynamoDbAsyncClient.builder().region(region);
        if (credentials != null) {
            kinesisBuilder.credentialsProvider(credentials);
            dynamoBuilder.credentialsProvider(credentials);
        }
        if (env.has("AWS_ENDPOINT_URL_KINESIS")) {
            kinesisBuilder.endpointOverride(URI.create(env.required("AWS_ENDPOINT_URL_KINESIS")));
        }
        if (env.has("AWS_ENDPOINT_URL_DYNAMODB")) {
            dynamoBuilder.endpointOverride(URI.create(env.required("AWS_ENDPOINT_URL_DYNAMODB")));
        }
        KclSpecific.customizeDynamo(env, dynamoBuilder, applicationName);
        KinesisAsyncClient kinesis = kinesisBuilder.build();
        DynamoDbAsyncClient dynamo = dynamoBuilder.build();
        // Metrics are off; the client points at a closed port so nothing real could ever be called.
        CloudWatchAsyncClient cloudWatch = CloudWatchAsyncClient.builder()
                .region(region)
                .credentialsProvider(credentials != null
                        ? credentials
                        : StaticCredentialsProvider.create(AwsBasicCredentials.create("unused", "unused")))
                .endpointOverride(URI.create(env.get("AWS_ENDPOINT_URL_CLOUDWATCH", "http://127.0.0.1:9")))
                .build();

        this.output = new LineFile(outputPath);
        this.events = eventsPath == null || eventsPath.isEmpty() ? null : new LineFile(eventsPath);
        this.app = new App(workerId, checkpointEvery, stopAfter, output, events, startNanos, stopRequested::countDown);
        final App shared = app;

        // Single-stream mode by ARN: the same as ConfigsBuilder(Arn, ...) plus the initial position.
        SingleStreamTracker tracker =
                new SingleStreamTracker(StreamIdentifier.singleStreamInstance(streamArn), initialPosition);
        ConfigsBuilder configs = new ConfigsBuilder(
                tracker, applicationName, kinesis, dynamo, cloudWatch, workerId, () -> new Processor(shared));

        LeaseManagementConfig leaseManagement = configs.leaseManagementConfig()
                .failoverTimeMillis(failoverMillis)
                .shardSyncIntervalMillis(shardSyncMillis);
        if (env.has("MAX_LEASES_FOR_WORKER")) {
            leaseManagement.maxLeasesForWorker((int) env.positiveLong("MAX_LEASES_FOR_WORKER", Integer.MAX_VALUE));
        }
        CoordinatorConfig coordinator = configs.coordinatorConfig().parentShardPollIntervalMillis(parentPollMillis);
        RetrievalConfig retrieval = configs.retrievalConfig()
                .retrievalSpecificConfig(new PollingConfig(kinesis)
                        .maxRecords(maxRecords)
                        .idleTimeBetweenReadsInMillis(idleMillis));
        String specific = KclSpecific.configure(env, leaseManagement, coordinator);
        KclSpecific.preflight(env, dynamo, applicationName);

        this.scheduler = new Scheduler(
                configs.checkpointConfig(),
                coordinator,
                leaseManagement,
                configs.lifecycleConfig(),
                configs.metricsConfig().metricsLevel(MetricsLevel.NONE).metricsFactory(new NullMetricsFactory()),
                configs.processorConfig(),
                retrieval);

        log.info(
                "kcl-interop: KCL {} worker {} stream {}",
                RetrievalConfig.KINESIS_CLIENT_LIB_USER_AGENT_VERSION,
                workerId,
                streamArnText);
        log.info(
                "kcl-interop: application {} initial position {} failover {} ms shard sync {} ms idle {} ms"
                        + " maxRecords {} checkpointEvery {} stopAfter {} {}",
                applicationName,
                initialPosition.getInitialPositionInStream(),
                failoverMillis,
                shardSyncMillis,
                idleMillis,
                maxRecords,
                checkpointEvery,
                stopAfter == 0 ? "-" : stopAfter,
                specific);
    }

    private static InitialPositionInStreamExtended initialPosition(Env env) {
        String position = env.get("INITIAL_POSITION", "TRIM_HORIZON").trim().toUpperCase();
        switch (position) {
            case "TRIM_HORIZON":
                return InitialPositionInStreamExtended.newInitialPosition(InitialPositionInStream.TRIM_HORIZON);
            case "LATEST":
                return InitialPositionInStreamExtended.newInitialPosition(InitialPositionInStream.LATEST);
            case "AT_TIMESTAMP":
                long millis = env.positiveLong("INITIAL_TIMESTAMP_MS", -1);
                if (millis < 0) {
                    throw new Env.UsageException("INITIAL_POSITION=AT_TIMESTAMP needs INITIAL_TIMESTAMP_MS");
                }
                return InitialPositionInStreamExtended.newInitialPositionAtTimestamp(
                        Date.from(Instant.ofEpochMilli(millis)));
            default:
                throw new Env.UsageException(
                        "INITIAL_POSITION must be TRIM_HORIZON, LATEST or AT_TIMESTAMP, not " + position);
        }
    }

    /**
     * Starts the graceful shutdown once and waits for it; later callers get the first result. Bounded: the KCL's
     * Scheduler.shutdown() waits for its initialization (which holds the same lock) to end, which can take minutes.
     */
    private boolean stop(String why) {
        synchronized (stopLock) {
            if (stopResult != null) {
                return stopResult;
            }
            app.markStopping();
            log.info("kcl-interop: graceful shutdown ({}), {} records written", why, app.processed());
            final boolean[] graceful = {false};
            Thread worker = new Thread(() -> graceful[0] = gracefulShutdown(), "kcl-interop-stop");
            worker.setDaemon(true);
            worker.start();
            boolean ok;
            try {
                // Done when the KCL's shutdown finished, or when every record written is covered by a checkpoint
                // and has stayed so for a moment: a shard end met after the stop (whose records were not written,
                // so SHARD_END must not be checkpointed) keeps the KCL's shutdown from ever finishing.
                long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(shutdownTimeoutMillis + 10_000);
                long settledSince = -1;
                while (worker.isAlive() && System.nanoTime() < deadline) {
                    if (app.allSettled()) {
                        if (settledSince < 0) {
                            settledSince = System.nanoTime();
                        } else if (System.nanoTime() - settledSince > TimeUnit.SECONDS.toNanos(3)) {
                            break;
                        }
                    } else {
                        settledSince = -1;
                    }
                    worker.join(200);
                }
                if (worker.isAlive()) {
                    ok = app.allSettled();
                    log.warn("kcl-interop: the KCL's shutdown is still under way; every written record {}",
                            ok ? "is checkpointed" : "is NOT checkpointed");
                    // Stop the scheduler outright (bounded), so that a KCL 3.x leader gives up its lock as it
                    // does at a clean stop, instead of leaving it to expire.
                    Thread hard = new Thread(scheduler::shutdown, "kcl-interop-hard-stop");
                    hard.setDaemon(true);
                    hard.start();
                    hard.join(10_000);
                } else {
                    ok = graceful[0] || app.allSettled();
                }
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                ok = false;
            }
            app.event(Json.obj().put("event", "stopped").put("worker", app.workerId).put("clean", ok)
                    .put("records", app.processed()));
            output.close();
            if (events != null) {
                events.close();
            }
            log.info("kcl-interop: stopped ({}), {} records written",
                    ok ? "clean" : "KCL shutdown incomplete", app.processed());
            stopResult = ok;
            return ok;
        }
    }

    private boolean gracefulShutdown() {
        boolean ok;
        try {
            Future<Boolean> done = scheduler.startGracefulShutdown();
            ok = Boolean.TRUE.equals(done.get(shutdownTimeoutMillis, TimeUnit.MILLISECONDS));
            if (!ok) {
                log.warn("kcl-interop: graceful shutdown answered false");
            }
        } catch (TimeoutException e) {
            log.warn("kcl-interop: graceful shutdown took over {} ms: shutting down now", shutdownTimeoutMillis);
            ok = false;
        } catch (Exception e) {
            log.warn("kcl-interop: graceful shutdown failed", e);
            ok = false;
        }
        if (!ok) {
            scheduler.shutdown();
        }
        return ok;
    }

    private int run() throws InterruptedException {
        Thread schedulerThread = new Thread(scheduler, "kcl-scheduler");
        schedulerThread.setDaemon(true);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            if (exiting) {
                return;
            }
            boolean ok = stop("signal");
            Runtime.getRuntime().halt(ok ? EXIT_OK : EXIT_SHUTDOWN_INCOMPLETE);
        }, "kcl-interop-shutdown"));
        schedulerThread.start();
        while (!stopRequested.await(500, TimeUnit.MILLISECONDS)) {
            if (!schedulerThread.isAlive()) {
                log.error("kcl-interop: the scheduler stopped by itself");
                app.event(Json.obj().put("event", "schedulerDied").put("worker", app.workerId)
                        .put("records", app.processed()));
                return EXIT_SCHEDULER_DIED;
            }
        }
        boolean ok = stop("STOP_AFTER");
        schedulerThread.join(Duration.ofSeconds(2).toMillis());
        return ok ? EXIT_OK : EXIT_SHUTDOWN_INCOMPLETE;
    }

    public static void main(String[] args) {
        long startNanos = System.nanoTime();
        int code;
        Consumer consumer = null;
        try {
            Env env = new Env();
            if ("dump-leases".equals(env.get("MODE", "consume"))) {
                System.exit(DumpLeases.run(env));
            }
            consumer = new Consumer(env, startNanos);
            code = consumer.run();
        } catch (Env.UsageException e) {
            System.err.println("kcl-interop: " + e.getMessage());
            code = EXIT_USAGE;
        } catch (Throwable t) {
            log.error("kcl-interop: failed", t);
            code = 1;
        }
        if (consumer != null) {
            consumer.exiting = true;
        }
        System.exit(code);
    }
}
