package dev.kcld.interop;

import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/** State shared by the record processors of one worker. */
final class App {
    private static final Logger log = LoggerFactory.getLogger(App.class);

    final String workerId;
    final int checkpointEvery;
    final LineFile output;
    private final LineFile events;
    /** 0 = no limit. */
    private final long stopAfter;
    private final AtomicLong processed = new AtomicLong();
    private final AtomicBoolean stopping = new AtomicBoolean();
    private final AtomicBoolean firstRecord = new AtomicBoolean();
    private final long startNanos;
    private final Runnable onStop;
    private final Set<Processor> processors = ConcurrentHashMap.newKeySet();

    App(String workerId, int checkpointEvery, long stopAfter, LineFile output, LineFile events, long startNanos,
            Runnable onStop) {
        this.workerId = workerId;
        this.checkpointEvery = checkpointEvery;
        this.stopAfter = stopAfter;
        this.output = output;
        this.events = events;
        this.startNanos = startNanos;
        this.onStop = onStop;
    }

    void register(Processor p) {
        processors.add(p);
    }

    /** True when every record written to OUTPUT is covered by a checkpoint of its processor. */
    boolean allSettled() {
        return processors.stream().allMatch(Processor::settled);
    }

    boolean stopping() {
        return stopping.get();
    }

    /** Marks the worker as stopping: no processor writes another record. Returns true the first time. */
    boolean markStopping() {
        return stopping.compareAndSet(false, true);
    }

    /**
     * Claims the next record slot: its 1-based number, or -1 when STOP_AFTER records were already claimed.
     */
    long claimRecord() {
        long n = processed.incrementAndGet();
        if (stopAfter > 0 && n > stopAfter) {
            return -1;
        }
        return n;
    }

    boolean isLastRecord(long slot) {
        return stopAfter > 0 && slot == stopAfter;
    }

    long processed() {
        long n = processed.get();
        return stopAfter > 0 ? Math.min(n, stopAfter) : n;
    }

    void requestStop(String why) {
        if (markStopping()) {
            log.info("stopping: {}", why);
            onStop.run();
        }
    }

    void firstRecordSeen() {
        if (processed.get() > 0 && firstRecord.compareAndSet(false, true)) {
            log.info("kcl-interop: first record after {} ms", (System.nanoTime() - startNanos) / 1_000_000);
        }
    }

    void event(Json ev) {
        if (events != null) {
            events.append(ev.put("timeMillis", System.currentTimeMillis()).toString());
        }
    }
}
