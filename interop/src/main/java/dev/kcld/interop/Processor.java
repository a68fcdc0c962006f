package dev.kcld.interop;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import software.amazon.kinesis.exceptions.InvalidStateException;
import software.amazon.kinesis.exceptions.KinesisClientLibDependencyException;
import software.amazon.kinesis.exceptions.ShutdownException;
import software.amazon.kinesis.exceptions.ThrottlingException;
import software.amazon.kinesis.lifecycle.events.InitializationInput;
import software.amazon.kinesis.lifecycle.events.LeaseLostInput;
import software.amazon.kinesis.lifecycle.events.ProcessRecordsInput;
import software.amazon.kinesis.lifecycle.events.ShardEndedInput;
import software.amazon.kinesis.lifecycle.events.ShutdownRequestedInput;
import software.amazon.kinesis.processor.RecordProcessorCheckpointer;
import software.amazon.kinesis.processor.ShardRecordProcessor;
import software.amazon.kinesis.retrieval.KinesisClientRecord;
import software.amazon.kinesis.retrieval.kpl.ExtendedSequenceNumber;

/**
 * One shard's record processor. A record goes to OUTPUT only when this processor will checkpoint at or past it
 * before the application exits (every CHECKPOINT_EVERY records, at STOP_AFTER, and at shutdownRequested).
 */
final class Processor implements ShardRecordProcessor {
    private static final Logger log = LoggerFactory.getLogger(Processor.class);
    private static final int CHECKPOINT_ATTEMPTS = 10;

    private final App app;
    private String shardId = "?";
    /** Last user record written to OUTPUT: sequence number and sub-sequence number. */
    private volatile String lastSeq;
    private volatile long lastSub;
    /** Last checkpoint this processor wrote. */
    private volatile String ckptSeq;
    private volatile long ckptSub;
    /** The lease went to another worker: what it re-reads is no longer this processor's to checkpoint. */
    private volatile boolean lost;
    private int sinceCheckpoint;
    /** Records of this shard were delivered but not written (shutdown under way): never checkpoint SHARD_END then. */
    private boolean skipped;
    /** leaseLost or shutdownRequested seen, or a checkpoint failed for good: write nothing more. */
    private boolean done;

    Processor(App app) {
        this.app = app;
        app.register(this);
    }

    /** True when every record this processor wrote is covered by its checkpoint (or its lease was lost). */
    boolean settled() {
        String last = lastSeq;
        return last == null || lost || (last.equals(ckptSeq) && lastSub == ckptSub) || "SHARD_END".equals(ckptSeq);
    }

    @Override
    public void initialize(InitializationInput input) {
        shardId = input.shardId();
        ExtendedSequenceNumber esn = input.extendedSequenceNumber();
        Json ev = Json.obj()
                .put("event", "initialize")
                .put("shardId", shardId)
                .put("worker", app.workerId)
                .put("extendedSequenceNumber", String.valueOf(esn));
        if (esn != null) {
            ev.put("sequenceNumber", esn.sequenceNumber()).put("subSequenceNumber", esn.subSequenceNumber());
        }
        if (input.pendingCheckpointSequenceNumber() != null) {
            ev.put("pendingCheckpointSequenceNumber", String.valueOf(input.pendingCheckpointSequenceNumber()));
        }
        app.event(ev);
        log.info("initialize {} at {}", shardId, esn);
    }

    @Override
    public void processRecords(ProcessRecordsInput input) {
        List<KinesisClientRecord> records = input.records();
        if (done) {
            if (!records.isEmpty()) {
                skipped = true;
            }
            return;
        }
        RecordProcessorCheckpointer checkpointer = input.checkpointer();
        List<String> lines = new ArrayList<>(records.size());
        for (int i = 0; i < records.size(); i++) {
            KinesisClientRecord r = records.get(i);
            if (app.stopping()) {
                skipped = true;
                break;
            }
            long slot = app.claimRecord();
            if (slot < 0) {
                skipped = true;
                break;
            }
            lines.add(recordLine(r));
            lastSeq = r.sequenceNumber();
            lastSub = r.subSequenceNumber();
            sinceCheckpoint++;
            boolean stopHere = app.isLastRecord(slot);
            if (stopHere || (app.checkpointEvery > 0 && sinceCheckpoint >= app.checkpointEvery)) {
                // The record must be in OUTPUT before the checkpoint covers it.
                app.output.append(lines);
                lines.clear();
                checkpoint(checkpointer, lastSeq, lastSub);
            }
            if (stopHere) {
                if (i + 1 < records.size()) {
                    skipped = true;
                }
                log.info("STOP_AFTER reached at {} {}/{}", shardId, lastSeq, lastSub);
                app.requestStop("STOP_AFTER reached");
                break;
            }
            if (done) {
                // the checkpoint failed for good: the lease is gone
                if (i + 1 < records.size()) {
                    skipped = true;
                }
                break;
            }
        }
        app.output.append(lines);
        app.firstRecordSeen();
    }

    private String recordLine(KinesisClientRecord r) {
        ByteBuffer data = r.data().duplicate();
        byte[] bytes = new byte[data.remaining()];
        data.get(bytes);
        return Json.obj()
                .put("shardId", shardId)
                .put("sequenceNumber", r.sequenceNumber())
                .put("subSequenceNumber", r.subSequenceNumber())
                .put("partitionKey", r.partitionKey())
                .put("data", Base64.getEncoder().encodeToString(bytes))
                .put("worker", app.workerId)
                .toString();
    }

    @Override
    public void leaseLost(LeaseLostInput input) {
        done = true;
        lost = true;
        app.event(Json.obj().put("event", "leaseLost").put("shardId", shardId).put("worker", app.workerId));
        log.info("leaseLost {}", shardId);
    }

    @Override
    public void shardEnded(ShardEndedInput input) {
        app.event(Json.obj().put("event", "shardEnded").put("shardId", shardId).put("worker", app.workerId));
        if (skipped) {
            // Records of this shard were not written: SHARD_END would skip them for good. Checkpoint at the
            // last written record instead; the KCL then retries the shard end until the process stops.
            log.warn("shardEnded {} after skipped records: not checkpointing SHARD_END", shardId);
            checkpointLastWritten(input.checkpointer());
            return;
        }
        checkpoint(input.checkpointer(), null, 0);
        done = true;
    }

    @Override
    public void shutdownRequested(ShutdownRequestedInput input) {
        app.event(Json.obj().put("event", "shutdownRequested").put("shardId", shardId).put("worker", app.workerId));
        log.info("shutdownRequested {}", shardId);
        checkpointLastWritten(input.checkpointer());
        // Whatever comes next (a graceful handoff or the worker's shutdown), nothing more goes to OUTPUT.
        done = true;
    }

    private void checkpointLastWritten(RecordProcessorCheckpointer checkpointer) {
        if (lastSeq != null && !(lastSeq.equals(ckptSeq) && lastSub == ckptSub)) {
            checkpoint(checkpointer, lastSeq, lastSub);
        }
    }

    /** Checkpoints at (seq, sub), or at SHARD_END when seq is null. */
    private void checkpoint(RecordProcessorCheckpointer checkpointer, String seq, long sub) {
        String shown = seq == null ? "SHARD_END" : seq;
        for (int attempt = 1; ; attempt++) {
            try {
                if (seq == null) {
                    checkpointer.checkpoint();
                } else {
                    checkpointer.checkpoint(seq, sub);
                }
                ckptSeq = seq == null ? "SHARD_END" : seq;
                ckptSub = sub;
                sinceCheckpoint = 0;
                app.event(Json.obj()
                        .put("event", "checkpoint")
                        .put("shardId", shardId)
                        .put("sequenceNumber", shown)
                        .put("subSequenceNumber", sub)
                        .put("worker", app.workerId));
                return;
            } catch (ThrottlingException | KinesisClientLibDependencyException e) {
                if (attempt >= CHECKPOINT_ATTEMPTS) {
                    failed(shown, sub, e);
                    return;
                }
                log.warn("checkpoint {} {}/{} attempt {}: {}", shardId, shown, sub, attempt, e.toString());
                try {
                    Thread.sleep(200L * attempt);
                } catch (InterruptedException ie) {
                    Thread.currentThread().interrupt();
                    failed(shown, sub, ie);
                    return;
                }
            } catch (ShutdownException | InvalidStateException | RuntimeException e) {
                failed(shown, sub, e);
                return;
            }
        }
    }

    private void failed(String seq, long sub, Exception e) {
        log.error("checkpoint {} {}/{} failed", shardId, seq, sub, e);
        done = true;
        app.event(Json.obj()
                .put("event", "checkpointFailed")
                .put("shardId", shardId)
                .put("sequenceNumber", seq)
                .put("subSequenceNumber", sub)
                .put("error", e.getClass().getName() + ": " + e.getMessage())
                .put("worker", app.workerId));
    }
}
