"""Deaggregation speed of the published Python aws-kinesis-agg package on one
KPL aggregate file, checksums verified (its only mode). Prints MB/s of
aggregate bytes. Usage: python deagg.py FILE [SECONDS]"""
import sys
import time

from aws_kinesis_agg.deaggregator import iter_deaggregate_records

path = sys.argv[1]
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
data = open(path, "rb").read()
record = {
    "SequenceNumber": "49590338271490256608559692538361571095921575989136588898",
    "PartitionKey": "k",
    "ApproximateArrivalTimestamp": 0,
    "Data": data,
}
users = sum(1 for _ in iter_deaggregate_records([record], data_format="Boto3"))
assert users > 1, "not an aggregate"
n = 0
start = time.perf_counter()
while time.perf_counter() - start < seconds:
    for _ in iter_deaggregate_records([record], data_format="Boto3"):
        pass
    n += 1
elapsed = time.perf_counter() - start
print("python aws-kinesis-agg: %.0f MB/s (%d user records per aggregate, %d runs)" % (n * len(data) / elapsed / 1e6, users, n))
