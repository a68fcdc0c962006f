//! Where records land in the bucket (pure): a batch cut into objects, one
//! per partition and buffer's worth, and each object's key.
//!
//! A key is the prefix (the configured template resolved for the object's
//! first record, or Firehose's `YYYY/MM/DD/HH/`), then
//! `<stream>-<shard>-<first sequence number>-<sub-sequence number>` and the
//! compression's extension. The same records make the same key, so an
//! object written again after a crash replaces itself.
//!
//! With `!{partitionKey}` or `!{data:...}` in the template (dynamic
//! partitioning) records are grouped by their resolved prefix, in the order
//! partitions first appear; each group is cut at the buffer size, and at
//! most `max_open_partitions` groups are held before all are cut. A record
//! whose partition cannot be read goes under `error_prefix`, as Firehose's
//! error output.

use std::collections::HashMap;

use kcld_config::{KeyPart, KeyTemplate, S3Compression, S3SinkSettings};

use crate::record::Record;
use crate::sink::utc::civil;

/// One object to write: its key and the indices of its records in the
/// batch, in shard order.
#[derive(Debug, PartialEq, Eq)]
pub struct Planned {
    /// The object's key.
    pub key: String,
    /// Which records of the batch it holds.
    pub records: Vec<usize>,
}

/// Cuts `records` (one shard's batch) into objects.
pub fn plan(
    settings: &S3SinkSettings,
    stream: &str,
    shard: &str,
    records: &[Record],
) -> Vec<Planned> {
    let names = Names {
        stream,
        shard,
        ext: extension(settings.compression),
    };
    let partitioned = settings.prefix.as_ref().filter(|t| t.partitions_records());
    let mut out = Vec::new();
    let Some(template) = partitioned else {
        let mut start = 0;
        while start < records.len() {
            let mut end = start;
            let mut size = 0u64;
            while end < records.len()
                && (end == start || size + records[end].data.len() as u64 <= settings.buffer_size)
            {
                size += records[end].data.len() as u64 + 1;
                end += 1;
            }
            let first = &records[start];
            let prefix = match &settings.prefix {
                Some(t) => {
                    let mut prefix = String::new();
                    resolve(t, &names, first, &mut prefix);
                    prefix
                }
                None => hour_prefix(first.approximate_arrival_ms),
            };
            out.push(Planned {
                key: names.key(&prefix, first),
                records: (start..end).collect(),
            });
            start = end;
        }
        return out;
    };
    // Open partitions in order of first appearance: (prefix, records,
    // bytes), and where each prefix is in that list.
    let mut open: Vec<(String, Vec<usize>, u64)> = Vec::new();
    let mut slots: HashMap<String, usize> = HashMap::new();
    let mut prefix = String::new();
    for (i, record) in records.iter().enumerate() {
        prefix.clear();
        if !resolve(template, &names, record, &mut prefix) {
            prefix.clear();
            resolve(&settings.error_prefix, &names, record, &mut prefix);
        }
        let size = record.data.len() as u64 + 1;
        let slot = match slots.get(prefix.as_str()) {
            Some(&slot) => slot,
            None => {
                if open.len() == settings.max_open_partitions {
                    slots.clear();
                    for (prefix, held, _) in open.drain(..) {
                        out.push(names.planned(&prefix, held, records));
                    }
                }
                open.push((prefix.clone(), Vec::new(), 0));
                slots.insert(prefix.clone(), open.len() - 1);
                open.len() - 1
            }
        };
        let (prefix, held, bytes) = &mut open[slot];
        if !held.is_empty() && *bytes + size > settings.buffer_size {
            out.push(names.planned(prefix, std::mem::take(held), records));
            *bytes = 0;
        }
        held.push(i);
        *bytes += size;
    }
    for (prefix, held, _) in open {
        out.push(names.planned(&prefix, held, records));
    }
    out
}

/// The parts of a key that do not depend on the record.
struct Names<'a> {
    stream: &'a str,
    shard: &'a str,
    ext: &'static str,
}

impl Names<'_> {
    fn key(&self, prefix: &str, first: &Record) -> String {
        format!(
            "{prefix}{}-{}-{}-{}{}",
            self.stream,
            self.shard,
            first.sequence_number.as_str(),
            first.sub_sequence_number,
            self.ext
        )
    }

    fn planned(&self, prefix: &str, held: Vec<usize>, records: &[Record]) -> Planned {
        Planned {
            key: self.key(prefix, &records[held[0]]),
            records: held,
        }
    }
}

/// The object name's extension for a compression.
pub fn extension(compression: S3Compression) -> &'static str {
    match compression {
        S3Compression::Gzip => ".gz",
        S3Compression::Zstd => ".zst",
        S3Compression::None => "",
    }
}

/// Appends `template` for `record` to `out`; false when a partition value
/// cannot be read (the field is missing or not a string, number or
/// boolean; the data is not JSON; the value is empty).
fn resolve(template: &KeyTemplate, names: &Names<'_>, record: &Record, out: &mut String) -> bool {
    for part in &template.parts {
        let readable = match part {
            KeyPart::Literal(text) => {
                out.push_str(text);
                true
            }
            KeyPart::Timestamp(pattern) => {
                out.push_str(&timestamp(pattern, record.approximate_arrival_ms));
                true
            }
            KeyPart::Stream => {
                out.push_str(names.stream);
                true
            }
            KeyPart::Shard => {
                out.push_str(names.shard);
                true
            }
            KeyPart::PartitionKey => push_value(out, record.partition_key.as_str()),
            KeyPart::Data(path) => match json_field(&record.data, path) {
                Some(Scalar::Text(text)) => push_value(out, &text),
                Some(Scalar::Raw(raw)) => push_value(out, raw),
                None => false,
            },
        };
        if !readable {
            return false;
        }
    }
    true
}

/// A field's value as a key part: a string's text, or a number's or
/// boolean's JSON as written.
enum Scalar<'a> {
    Text(std::borrow::Cow<'a, str>),
    Raw(&'a str),
}

/// The scalar at `path` in JSON `data`, read in one pass without building
/// the document: at each level only the wanted member is kept (a slice of
/// the data), the others skipped.
fn json_field<'a>(data: &'a [u8], path: &[String]) -> Option<Scalar<'a>> {
    use serde::de::DeserializeSeed;
    let (first, rest) = path.split_first()?;
    // The top level straight from the data: one pass checks the whole
    // document and keeps the wanted member.
    let mut de = serde_json::Deserializer::from_slice(data);
    let mut raw = Member(first).deserialize(&mut de).ok()??;
    de.end().ok()?;
    for field in rest {
        let mut de = serde_json::Deserializer::from_str(raw.get());
        raw = Member(field).deserialize(&mut de).ok()??;
    }
    let text = raw.get();
    match text.as_bytes().first()? {
        b'"' => serde_json::from_str::<std::borrow::Cow<'a, str>>(text)
            .ok()
            .map(Scalar::Text),
        b'-' | b'0'..=b'9' | b't' | b'f' => Some(Scalar::Raw(text)),
        _ => None,
    }
}

/// Finds one member of a JSON object, as a slice of the input.
struct Member<'p>(&'p str);

impl<'de> serde::de::DeserializeSeed<'de> for Member<'_> {
    type Value = Option<&'de serde_json::value::RawValue>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Member<'_> {
    type Value = Option<&'de serde_json::value::RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(wanted) = map.next_key_seed(KeyIs(self.0))? {
            if wanted && found.is_none() {
                found = Some(map.next_value::<&'de serde_json::value::RawValue>()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Whether an object's key is the wanted one (escaped keys included),
/// without keeping it.
struct KeyIs<'p>(&'p str);

impl<'de> serde::de::DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

/// A partition value in a key: characters S3 calls safe kept, every other
/// byte percent-encoded (a `/` in a value cannot open a new level).
fn push_value(out: &mut String, value: &str) -> bool {
    if value.is_empty() {
        return false;
    }
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"!-_.*'()=".contains(&b) {
            out.push(b as char);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
    true
}

/// Firehose's default prefix, `YYYY/MM/DD/HH/` in UTC.
pub fn hour_prefix(epoch_ms: i64) -> String {
    timestamp("yyyy/MM/dd/HH/", epoch_ms)
}

/// `pattern` with `yyyy`, `MM`, `dd`, `HH` and `mm` replaced by the UTC
/// time `epoch_ms`.
fn timestamp(pattern: &str, epoch_ms: i64) -> String {
    let (year, month, day, hour, minute) = civil(epoch_ms);
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut rest = pattern;
    while let Some(c) = rest.chars().next() {
        let (text, len) = if rest.starts_with("yyyy") {
            (format!("{year:04}"), 4)
        } else if rest.starts_with("MM") {
            (format!("{month:02}"), 2)
        } else if rest.starts_with("dd") {
            (format!("{day:02}"), 2)
        } else if rest.starts_with("HH") {
            (format!("{hour:02}"), 2)
        } else if rest.starts_with("mm") {
            (format!("{minute:02}"), 2)
        } else {
            (c.to_string(), c.len_utf8())
        };
        out.push_str(&text);
        rest = &rest[len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ByteStr;
    use bytes::Bytes;

    fn record(seq: u64, key: &str, data: &str) -> Record {
        Record {
            sequence_number: seq.to_string().parse().unwrap(),
            sub_sequence_number: 0,
            aggregated: false,
            partition_key: ByteStr::from(key),
            explicit_hash_key: None,
            data: Bytes::copy_from_slice(data.as_bytes()),
            // 2026-12-07T09:28:33Z.
            approximate_arrival_ms: 1_796_635_713_000,
            encryption: None,
        }
    }

    fn settings(prefix: Option<&str>, buffer: u64, open: usize) -> S3SinkSettings {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            format!(
                "application_name = \"app\"\n\
                 stream_arn = \"arn:aws:kinesis:us-east-1:111111111111:stream/s\"\n\
                 [sink]\ntype = \"s3\"\n[sink.s3]\nbucket_arn = \"arn:aws:s3:::b-1\"\n\
                 max_open_partitions = {open}\n{}",
                prefix.map_or(String::new(), |p| format!("prefix = {p:?}\n"))
            ),
        )
        .unwrap();
        let loaded = kcld_config::load(Some(file.path()), std::iter::empty());
        let mut s = loaded.unwrap().sink.s3.unwrap();
        s.buffer_size = buffer;
        s
    }

    fn keys(plan: &[Planned]) -> Vec<(&str, &[usize])> {
        plan.iter()
            .map(|p| (p.key.as_str(), &p.records[..]))
            .collect()
    }

    #[test]
    fn firehose_prefixes_are_the_utc_hour_of_arrival() {
        assert_eq!(hour_prefix(0), "1970/01/01/00/");
        // 2024-02-29T23:59:59.999Z, a leap day.
        assert_eq!(hour_prefix(1_709_251_199_999), "2024/02/29/23/");
        assert_eq!(hour_prefix(1_796_635_713_000), "2026/12/07/09/");
        assert_eq!(
            timestamp("y=yyyy/m=MM/mm", 1_796_635_713_000),
            "y=2026/m=12/28"
        );
    }

    #[test]
    fn json_fields_are_read_in_place_as_written() {
        let path = |p: &str| p.split('.').map(str::to_owned).collect::<Vec<_>>();
        let value = |data: &str, p: &str| {
            json_field(data.as_bytes(), &path(p)).map(|s| match s {
                Scalar::Text(t) => format!("text {t}"),
                Scalar::Raw(r) => format!("raw {r}"),
            })
        };
        let doc = r#"{"a":{"b\u0063":"x\/y","n":-1.5e3,"t":true,"z":null,"l":[1]},"a":{"n":2}, "s" : "plain"}"#;
        // An escaped key matches; a string is unescaped.
        assert_eq!(value(doc, "a.bc").as_deref(), Some("text x/y"));
        // The first of duplicate members counts.
        assert_eq!(value(doc, "a.n").as_deref(), Some("raw -1.5e3"));
        assert_eq!(value(doc, "a.t").as_deref(), Some("raw true"));
        assert_eq!(value(doc, "s").as_deref(), Some("text plain"));
        for missing in ["a.z", "a.l", "a", "a.q", "s.x", "q"] {
            assert_eq!(value(doc, missing), None, "{missing}");
        }
        assert_eq!(value("not json", "a"), None);
        assert_eq!(value("[1,2]", "a"), None);
    }

    #[test]
    fn without_partitions_a_batch_is_cut_at_the_buffer_size() {
        let records: Vec<Record> = (1..=5).map(|i| record(i, "k", "0123456789")).collect();
        // 11 bytes a record: two fit in 25.
        let plan = plan(&settings(None, 25, 500), "s", "shardId-1", &records);
        assert_eq!(
            keys(&plan),
            [
                ("2026/12/07/09/s-shardId-1-1-0.gz", &[0, 1][..]),
                ("2026/12/07/09/s-shardId-1-3-0.gz", &[2, 3][..]),
                ("2026/12/07/09/s-shardId-1-5-0.gz", &[4][..]),
            ]
        );
    }

    #[test]
    fn records_are_grouped_by_their_partition_in_order() {
        let records = vec![
            record(1, "a", r#"{"customer":{"id":"c/1"}}"#),
            record(2, "b", r#"{"customer":{"id":7}}"#),
            record(3, "c", r#"{"customer":{"id":"c/1"}}"#),
            record(4, "d", "not json"),
            record(5, "e", r#"{"customer":{}}"#),
            record(6, "f", r#"{"customer":{"id":7}}"#),
        ];
        let s = settings(
            Some("by/!{data:customer.id}/!{partitionKey}x/!{timestamp:yyyy}/"),
            1 << 20,
            500,
        );
        let plan = plan(&s, "s", "sh", &records);
        // The partition key is part of the prefix too: each record its own
        // partition, but the two whose data cannot be read share the error
        // prefix.
        assert_eq!(plan.len(), 5);
        let s = settings(
            Some("by/!{data:customer.id}/!{timestamp:yyyy}/"),
            1 << 20,
            500,
        );
        let plan = super::plan(&s, "s", "sh", &records);
        assert_eq!(
            keys(&plan),
            [
                ("by/c%2F1/2026/s-sh-1-0.gz", &[0, 2][..]),
                ("by/7/2026/s-sh-2-0.gz", &[1, 5][..]),
                ("processing-failed/2026/12/07/09/s-sh-4-0.gz", &[3, 4][..]),
            ]
        );
    }

    #[test]
    fn partitions_are_cut_at_the_buffer_size_and_the_open_partition_bound() {
        // Two partitions, 11 bytes a record, 25 bytes a buffer.
        let keys_of = ["a", "b", "a", "a", "b", "a"];
        let records: Vec<Record> = (1..=6)
            .map(|i| record(i, keys_of[i as usize - 1], "0123456789"))
            .collect();
        let plan = plan(
            &settings(Some("!{partitionKey}/"), 25, 2),
            "s",
            "sh",
            &records,
        );
        assert_eq!(
            keys(&plan),
            [
                ("a/s-sh-1-0.gz", &[0, 2][..]),
                ("a/s-sh-4-0.gz", &[3, 5][..]),
                ("b/s-sh-2-0.gz", &[1, 4][..]),
            ]
        );
        // Three partitions, two held at once: a third writes both first.
        let records: Vec<Record> = (1..=6)
            .map(|i| record(i, &format!("k{}", i % 3), "0123456789"))
            .collect();
        let plan = super::plan(
            &settings(Some("!{partitionKey}/"), 1 << 20, 2),
            "s",
            "sh",
            &records,
        );
        assert_eq!(
            keys(&plan),
            [
                ("k1/s-sh-1-0.gz", &[0][..]),
                ("k2/s-sh-2-0.gz", &[1][..]),
                ("k0/s-sh-3-0.gz", &[2][..]),
                ("k1/s-sh-4-0.gz", &[3][..]),
                ("k2/s-sh-5-0.gz", &[4][..]),
                ("k0/s-sh-6-0.gz", &[5][..]),
            ]
        );
        // Every record in exactly one object.
        let mut all: Vec<usize> = plan.iter().flat_map(|p| p.records.clone()).collect();
        all.sort();
        assert_eq!(all, (0..6).collect::<Vec<_>>());
    }
}
