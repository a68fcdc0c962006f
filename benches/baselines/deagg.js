// Deaggregation speed of the published Node aws-kinesis-agg package on one KPL
// aggregate file, with checksums computed. Its API takes the Lambda record
// shape (data in base64), so that decoding is part of what it does.
// Usage: node deagg.js FILE [SECONDS]
const fs = require('fs');
const agg = require('aws-kinesis-agg');

const path = process.argv[2];
const seconds = Number(process.argv[3] || 3);
const data = fs.readFileSync(path);
const record = {
  kinesisSchemaVersion: '1.0',
  partitionKey: 'k',
  sequenceNumber: '49590338271490256608559692538361571095921575989136588898',
  data: data.toString('base64'),
  approximateArrivalTimestamp: 0,
};
function once() {
  let users = 0;
  agg.deaggregateSync(record, true, (err, records) => {
    if (err) throw err;
    users = records.length;
  });
  return users;
}
const users = once();
if (users < 2) throw new Error('not an aggregate');
let n = 0;
const start = process.hrtime.bigint();
let elapsed = 0;
while (elapsed < seconds) {
  once();
  n += 1;
  elapsed = Number(process.hrtime.bigint() - start) / 1e9;
}
console.log(`node aws-kinesis-agg: ${(n * data.length / elapsed / 1e6).toFixed(0)} MB/s (${users} user records per aggregate, ${n} runs)`);
