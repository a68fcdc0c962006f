//! A scanner specialised to the JSON that GetRecords and SubscribeToShard
//! send: one object with `Records` (objects of five known string or number
//! fields), an iterator or continuation, `MillisBehindLatest` and, at a
//! shard's end, `ChildShards`.
//!
//! It finds each field's bytes in one pass and skips what a generic JSON
//! parser spends most of its time on here: checking the base64 text of
//! every record's `Data` as UTF-8 and as a JSON string character by
//! character (a record's data is found with one SIMD search for its closing
//! quote; the base64 decoder checks its alphabet anyway).
//!
//! It handles the shape the service writes and nothing else: a string with
//! an escape, a duplicate key, a null where a value is required, a number
//! where a string is expected, anything unexpected returns `None`, and the
//! caller decodes the body with serde instead, which either decodes it or
//! says what is wrong. So this is a fast path, never a second opinion.

use super::Fields;

/// The fields of a response or event, as slices of its body.
#[derive(Default)]
pub(super) struct Scanned<'a> {
    pub records: Vec<Fields<'a>>,
    pub next_shard_iterator: Option<&'a str>,
    pub continuation_sequence_number: Option<&'a str>,
    pub millis_behind_latest: Option<i64>,
    /// The raw JSON of `ChildShards`, when present and not null.
    pub child_shards: Option<&'a [u8]>,
}

/// Scans a GetRecords body or a SubscribeToShardEvent payload; `None` for
/// anything outside the common shape.
pub(super) fn scan(body: &[u8]) -> Option<Scanned<'_>> {
    let mut c = Cursor { b: body, i: 0 };
    let mut out = Scanned::default();
    let mut records = None;
    let mut seen = 0u8;
    c.eat(b'{')?;
    if c.peek()? == b'}' {
        c.i += 1;
    } else {
        loop {
            let key = c.string()?;
            c.eat(b':')?;
            let bit = match key {
                b"Records" => 1,
                b"NextShardIterator" => 2,
                b"ContinuationSequenceNumber" => 4,
                b"MillisBehindLatest" => 8,
                b"ChildShards" => 16,
                _ => 0,
            };
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            match key {
                b"Records" => records = Some(c.records(body.len())?),
                b"NextShardIterator" => out.next_shard_iterator = c.optional_text()?,
                b"ContinuationSequenceNumber" => {
                    out.continuation_sequence_number = c.optional_text()?
                }
                b"MillisBehindLatest" => out.millis_behind_latest = c.optional_integer()?,
                b"ChildShards" => {
                    let raw = c.value()?;
                    out.child_shards = (raw != b"null").then_some(raw);
                }
                _ => {
                    is_text(key)?;
                    c.value()?;
                }
            }
            if !c.next_member(b'}')? {
                break;
            }
        }
    }
    c.ws();
    if c.i != body.len() {
        return None;
    }
    out.records = records?;
    Some(out)
}

/// Where the `Records` array of a payload starts (the index of its `[`),
/// when the members before it are complete and of the common shape;
/// `None` when more bytes are needed or the shape is another (the caller
/// then decodes the payload whole).
pub(super) fn records_start(head: &[u8]) -> Option<usize> {
    let mut c = Cursor { b: head, i: 0 };
    c.eat(b'{')?;
    loop {
        let key = c.string()?;
        c.eat(b':')?;
        if key == b"Records" {
            c.peek()?;
            return (head[c.i] == b'[').then_some(c.i);
        }
        c.value()?;
        if !c.next_member(b'}')? {
            return None;
        }
    }
}

/// The record object starting at `at` (its `{`) and the index after it;
/// `None` when it is incomplete or outside the common shape.
pub(super) fn record_at(body: &[u8], at: usize) -> Option<(Fields<'_>, usize)> {
    let mut c = Cursor { b: body, i: at };
    let record = c.record()?;
    Some((record, c.i))
}

/// A string's bytes that are text: UTF-8 without control characters
/// (which JSON does not allow raw). Unknown keys and skipped values are
/// checked too, so that the scanner refuses whatever serde refuses.
fn is_text(bytes: &[u8]) -> Option<&str> {
    if bytes.iter().any(|b| *b < 0x20) {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.i += 1)
    }

    /// After a member or element: `true` after a comma (another follows),
    /// `false` after `close`.
    fn next_member(&mut self, close: u8) -> Option<bool> {
        match self.peek()? {
            b',' => {
                self.i += 1;
                Some(true)
            }
            b if b == close => {
                self.i += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// A string's bytes between its quotes; `None` if it has an escape or
    /// is not closed.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let rest = &self.b[self.i..];
        let end = memchr::memchr2(b'"', b'\\', rest)?;
        if rest[end] != b'"' {
            return None;
        }
        self.i += end + 1;
        Some(&rest[..end])
    }

    /// A string that is text: UTF-8 without control characters (which
    /// JSON does not allow raw).
    fn text(&mut self) -> Option<&'a str> {
        is_text(self.string()?)
    }

    fn null(&mut self) -> Option<bool> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(true);
        }
        Some(false)
    }

    fn optional_text(&mut self) -> Option<Option<&'a str>> {
        if self.null()? {
            return Some(None);
        }
        self.text().map(Some)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.i..]
            .starts_with(word)
            .then(|| self.i += word.len())
    }

    /// A JSON number's text, checked against JSON's grammar.
    fn number(&mut self) -> Option<&'a [u8]> {
        self.ws();
        let start = self.i;
        let b = self.b;
        let digits = |i: &mut usize| {
            let from = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i > from
        };
        let mut i = self.i;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                digits(&mut i);
            }
            _ => return None,
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            if !digits(&mut i) {
                return None;
            }
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            if !digits(&mut i) {
                return None;
            }
        }
        self.i = i;
        Some(&b[start..i])
    }

    /// An integer (no fraction or exponent) that fits an `i64`, or null.
    fn optional_integer(&mut self) -> Option<Option<i64>> {
        if self.null()? {
            return Some(None);
        }
        let text = self.number()?;
        if text.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
            return None;
        }
        std::str::from_utf8(text).ok()?.parse().ok().map(Some)
    }

    /// Any JSON value, skipped; its bytes. Containers are checked by serde
    /// (they appear only in fields kcld does not read, and in ChildShards,
    /// which serde decodes anyway).
    fn value(&mut self) -> Option<&'a [u8]> {
        let start = {
            self.ws();
            self.i
        };
        match self.peek()? {
            b'"' => {
                self.text()?;
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match *self.b.get(self.i)? {
                        b'{' | b'[' => {
                            depth += 1;
                            self.i += 1;
                        }
                        b'}' | b']' => {
                            depth -= 1;
                            self.i += 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        b'"' => {
                            self.string()?;
                        }
                        _ => self.i += 1,
                    }
                }
                let raw = &self.b[start..self.i];
                serde_json::from_slice::<serde::de::IgnoredAny>(raw).ok()?;
            }
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            _ => {
                self.number()?;
            }
        }
        Some(&self.b[start..self.i])
    }

    /// `Records`: an array of record objects.
    fn records(&mut self, body_len: usize) -> Option<Vec<Fields<'a>>> {
        self.eat(b'[')?;
        // About 1.4 KB of JSON per 1 KiB record: one allocation for most.
        let mut records = Vec::with_capacity(body_len / 1024 + 1);
        if self.peek()? == b']' {
            self.i += 1;
            return Some(records);
        }
        loop {
            records.push(self.record()?);
            if !self.next_member(b']')? {
                return Some(records);
            }
        }
    }

    fn record(&mut self) -> Option<Fields<'a>> {
        self.eat(b'{')?;
        let mut sequence_number = None;
        let mut arrival = None;
        let mut data = None;
        let mut partition_key = None;
        let mut encryption_type = None;
        let mut seen = 0u8;
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            let bit = match key {
                b"SequenceNumber" => 1,
                b"ApproximateArrivalTimestamp" => 2,
                b"Data" => 4,
                b"PartitionKey" => 8,
                b"EncryptionType" => 16,
                _ => 0,
            };
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            match key {
                b"SequenceNumber" => sequence_number = Some(self.string()?),
                b"ApproximateArrivalTimestamp" => {
                    if !self.null()? {
                        // ASCII by the grammar just checked.
                        arrival = Some(std::str::from_utf8(self.number()?).ok()?);
                    }
                }
                b"Data" => data = Some(self.string()?),
                b"PartitionKey" => partition_key = self.optional_text()?,
                b"EncryptionType" => encryption_type = self.optional_text()?,
                _ => {
                    is_text(key)?;
                    self.value()?;
                }
            }
            if !self.next_member(b'}')? {
                break;
            }
        }
        Some(Fields {
            sequence_number: sequence_number?,
            arrival,
            data: data?,
            partition_key,
            encryption_type,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_shape_is_scanned() {
        let body = br#"{"Records":[{"SequenceNumber":"1","ApproximateArrivalTimestamp":1.7091009116E9,"Data":"aGk=","PartitionKey":"k","EncryptionType":"NONE"}, {"Data":"","SequenceNumber":"2","PartitionKey":null}],"NextShardIterator":"AAA/B=","MillisBehindLatest":0}"#;
        let s = scan(body).expect("scanned");
        assert_eq!(s.records.len(), 2);
        assert_eq!(s.records[0].sequence_number, b"1");
        assert_eq!(s.records[0].arrival, Some("1.7091009116E9"));
        assert_eq!(s.records[0].data, b"aGk=");
        assert_eq!(s.records[0].partition_key, Some("k"));
        assert_eq!(s.records[1].partition_key, None);
        assert_eq!(s.next_shard_iterator, Some("AAA/B="));
        assert_eq!(s.millis_behind_latest, Some(0));
        let end = br#" { "Records" : [ ] , "MillisBehindLatest" : 5 , "ChildShards" : [ {"ShardId":"s","ParentShards":[],"HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"1"}} ] } "#;
        let s = scan(end).expect("scanned");
        assert!(s.records.is_empty() && s.next_shard_iterator.is_none());
        assert!(s.child_shards.unwrap().starts_with(b"[ {"));
    }

    #[test]
    fn anything_else_is_left_to_serde() {
        for body in [
            &br#"{"Records":[{"SequenceNumber":"1","Data":"","PartitionKey":"a\"b"}]}"#[..],
            br#"{"Records":[{"SequenceNumber":"1","Data":"","Data":""}]}"#,
            br#"{"Records":[],"Records":[]}"#,
            br#"{"Records":[{"SequenceNumber":null,"Data":""}]}"#,
            br#"{"Records":[{"SequenceNumber":"1"}]}"#,
            br#"{"Records":[],"MillisBehindLatest":1.5}"#,
            br#"{"Records":[],"MillisBehindLatest":01}"#,
            br#"{"Records":[{"SequenceNumber":"1","Data":"","ApproximateArrivalTimestamp":"1"}]}"#,
            br#"{"Records":[{"SequenceNumber":"1","Data":"","Other":{"a":]}}]}"#,
            br#"{"Records":[]} x"#,
            br#"{"NextShardIterator":"a"}"#,
            b"{\"Records\":[{\"SequenceNumber\":\"1\",\"Data\":\"\",\"PartitionKey\":\"a\x01\"}]}",
            b"",
            b"[]",
        ] {
            assert!(scan(body).is_none(), "{}", String::from_utf8_lossy(body));
        }
    }

    proptest::proptest! {
        /// Any corruption of a body: no panic, and where both paths decode
        /// it they decode the same records.
        #[test]
        fn corrupted_bodies_never_panic_and_paths_agree(
            at in 0usize..400,
            byte in proptest::prelude::any::<u8>(),
            how in 0u8..3,
        ) {
            let good = br#"{"Records":[{"SequenceNumber":"49590338271490256608559692538361571095921575989136588898","ApproximateArrivalTimestamp":1.709100911667E9,"Data":"aGVsbG8gd29ybGQ=","PartitionKey":"key-1","EncryptionType":"NONE"},{"SequenceNumber":"49590338271490256608559692538361571095921575989136588899","Data":"","PartitionKey":"k2"}],"NextShardIterator":"AAAA","MillisBehindLatest":12,"ChildShards":[{"ShardId":"shardId-000000000002","ParentShards":["shardId-000000000000"],"HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"9"}}]}"#;
            let mut body = good.to_vec();
            let at = at % body.len();
            match how {
                0 => body[at] = byte,
                1 => body.insert(at, byte),
                _ => { body.remove(at); }
            }
            let fast = scan(&body).is_some();
            let decoded = super::super::decode(bytes::Bytes::from(body.clone()));
            let slow: Result<super::super::RawResponse<'_>, _> = serde_json::from_slice(&body);
            if fast {
                if let (Ok(d), Ok(raw)) = (&decoded, &slow) {
                    proptest::prop_assert_eq!(d.records.len(), raw.records.len());
                    let slow_records = super::super::decode_records(&super::super::fields(&raw.records));
                    if let Ok(slow_records) = slow_records {
                        proptest::prop_assert_eq!(&d.records, &slow_records);
                    }
                }
            }
        }
    }
}
