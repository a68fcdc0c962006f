#!/usr/bin/env python3
"""The MultiLang record processor of the anchor benchmark (amazon-kclpy v3
API): appends one short line per record to $COUNT_FILE ("<shard> <sequence>
<sub-sequence>", written per batch), checkpoints after every batch, at the
shard's end and when shutdown is requested: the same work as the KCL
application's counting (interop/, CHECKPOINT_EVERY=1000) under the Java
MultiLangDaemon or `kcld multilang`."""

import os

from amazon_kclpy import kcl
from amazon_kclpy.v3 import processor

COUNT_FILE = os.environ["COUNT_FILE"]


class CountingProcessor(processor.RecordProcessorBase):
    def initialize(self, initialize_input):
        self.shard = initialize_input.shard_id
        self.out = open(COUNT_FILE, "a")

    def process_records(self, process_records_input):
        records = process_records_input.records
        if not records:
            return
        self.out.write("".join(
            "%s %s %d\n" % (self.shard, r.sequence_number, r.sub_sequence_number) for r in records))
        self.out.flush()
        process_records_input.checkpointer.checkpoint()

    def lease_lost(self, lease_lost_input):
        pass

    def shard_ended(self, shard_ended_input):
        shard_ended_input.checkpointer.checkpoint()

    def shutdown_requested(self, shutdown_requested_input):
        shutdown_requested_input.checkpointer.checkpoint()


if __name__ == "__main__":
    kcl.KCLProcess(CountingProcessor()).run()
