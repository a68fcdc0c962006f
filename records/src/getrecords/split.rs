//! A SubscribeToShardEvent payload decoded while it arrives.
//!
//! At catch-up the service (and the local emulator) sends events of many
//! megabytes. Decoded only once whole, an event is held twice over (its
//! JSON text, then its records) on every catching-up shard at once;
//! polling's reads never hold more than one response. [`EventSplitter`]
//! takes the payload as it comes and hands on its records in runs of about
//! `run_bytes` of JSON, found by the GetRecords scanner (each record is
//! scanned once); it keeps only what it has not handed on, and the members
//! around `Records`, which it decodes at the end for the continuation, the
//! lag and the children.
//!
//! Until the first run is handed on, the payload is copied and kept whole
//! (it may turn out not to be of the common shape, and then it is decoded
//! whole). After it, records are scanned and decoded where they lie in the
//! bytes pushed, with no copy: only a record cut by the end of a push is
//! copied, and its end found by tracking strings and nesting as its bytes
//! come. Copying every byte cost as much as scanning them
//! (BENCHMARKS.md, "Enhanced fan-out events").
//!
//! A record outside the scanner's shape (an escape in its partition key)
//! is found whole by tracking strings and nesting, and decoded alone by
//! serde. A payload whose `Records` array is not found among members of the
//! common shape, or whose elements are not objects, is kept whole and
//! decoded at the end, exactly as [`super::decode_subscribe_event`] decodes
//! it, as long as no run was handed on; after one, it is an error.

use super::{decode_records, decode_records_into, decode_subscribe_event, fields, scan};
use super::{DecodeError, Fields, RawRecord};
use super::{Record, SubscribeEvent};

/// Members before `Records` longer than this are not the common shape (a
/// few hundred bytes at most: the continuation and the lag): the payload
/// is kept whole.
const HEAD_LIMIT: usize = 64 * 1024;

/// See the module documentation. Push the payload's bytes in order; take
/// runs after each push until there is none; finish once the payload has
/// been pushed whole.
pub struct EventSplitter {
    /// Bytes pushed and not yet handed on (from `pos`), and before the
    /// first run the whole payload so far.
    buf: Vec<u8>,
    state: State,
    /// The payload with `Records` emptied: `{..."Records":[]...}`.
    skeleton: Vec<u8>,
    run_bytes: usize,
    /// Where the next element (or separator) of `Records` starts in `buf`:
    /// everything before it was handed on.
    pos: usize,
    /// What `Records` allows at `pos`.
    next: Next,
    /// Look again once `buf` holds this many bytes: a record larger than a
    /// run is not scanned again on every push while it arrives.
    wait_for: usize,
    handed_on: bool,
    /// Once a run was handed on: records decoded straight from the bytes
    /// pushed (no copy), waiting to make a run, and the JSON they came in.
    ready: Vec<Record>,
    ready_bytes: usize,
    /// Once a run was handed on: a record cut by the end of a push, its
    /// bytes so far in `buf`, and where it stands to find its end.
    cut: Option<Extent>,
    /// An error found while pushing, returned by the next `take_run`.
    failed: Option<DecodeError>,
}

/// Where an element of `Records` stands, strings and nesting tracked, to
/// find its end in one buffer or across pushes.
#[derive(Clone, Copy, Debug, Default)]
struct Extent {
    depth: u32,
    in_string: bool,
    escaped: bool,
}

impl Extent {
    /// Follows `bytes`; the index after the element's closing brace when it
    /// is in them.
    fn end_in(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                    i += 1;
                    continue;
                }
                // Most of a record is its Data string: skip to its end.
                match memchr::memchr2(b'"', b'\\', &bytes[i..]) {
                    None => return None,
                    Some(k) => {
                        i += k;
                        if bytes[i] == b'"' {
                            self.in_string = false;
                        } else {
                            self.escaped = true;
                        }
                    }
                }
                i += 1;
                continue;
            }
            match bytes[i] {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
            i += 1;
        }
        None
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// Before `Records`: the members so far, until its `[`.
    Head,
    /// Inside `Records`.
    Records,
    /// `Records` closed and every record handed on; later bytes are the
    /// skeleton's.
    Closed,
    /// Not the common shape: every byte kept, decoded at the end.
    Whole,
}

/// What may come next inside `Records`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Next {
    /// After `[`: an element or `]`.
    First,
    /// After a comma: an element.
    Element,
    /// After an element: a comma or `]`.
    Separator,
}

/// How a scan of `Records` stopped.
enum Stop {
    /// Out of bytes, or a run's worth found.
    More,
    /// An element not arrived whole, from its `{` at the index returned,
    /// and where its bytes so far leave it.
    Cut(Extent),
    /// At `]`, this index.
    Closed(usize),
    /// Not the shape at this index.
    Bad,
}

impl EventSplitter {
    /// A splitter handing on runs of at least `run_bytes` of JSON, fewer at
    /// the end: the first run ends at the first record boundary past
    /// `run_bytes`, the next ones with the push that reaches it (so a run is
    /// at most `run_bytes` and a push).
    pub fn new(run_bytes: usize) -> Self {
        EventSplitter {
            // The first run is copied (see the module documentation): room
            // for it and the record that ends it, in one allocation.
            buf: Vec::with_capacity(run_bytes.min(1 << 20) + run_bytes.min(1 << 20) / 4),
            state: State::Head,
            skeleton: Vec::new(),
            run_bytes: run_bytes.max(1),
            pos: 0,
            next: Next::First,
            wait_for: 0,
            handed_on: false,
            ready: Vec::new(),
            ready_bytes: 0,
            cut: None,
            failed: None,
        }
    }

    /// The next bytes of the payload.
    pub fn push(&mut self, bytes: &[u8]) {
        match self.state {
            State::Closed => self.skeleton.extend_from_slice(bytes),
            State::Whole | State::Head => self.buf.extend_from_slice(bytes),
            State::Records if self.handed_on => {
                if self.failed.is_none() {
                    if let Err(e) = self.push_in_place(bytes) {
                        self.failed = Some(e);
                    }
                }
            }
            State::Records => {
                // What was handed on goes before the new bytes come: one
                // move of the unfinished remainder per push. Before the
                // first run the head stays, in case the payload turns out
                // not to be of the common shape.
                if self.handed_on && self.pos > 0 {
                    self.buf.drain(..self.pos);
                    self.wait_for = self.wait_for.saturating_sub(self.pos);
                    self.pos = 0;
                }
                self.buf.extend_from_slice(bytes);
            }
        }
    }

    /// Bytes held: what was pushed and not handed on, and the skeleton.
    pub fn held(&self) -> usize {
        let handed_on = if self.state == State::Records {
            self.pos
        } else {
            0
        };
        self.buf.len() - handed_on + self.skeleton.len() + self.ready_bytes
    }

    /// The next run of records, once `run_bytes` of them have been pushed;
    /// `None` until then (push more). An error found while pushing comes
    /// here.
    pub fn take_run(&mut self) -> Result<Option<Vec<Record>>, DecodeError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.handed_on {
            if self.ready_bytes < self.run_bytes || self.state != State::Records {
                return Ok(None);
            }
            self.ready_bytes = 0;
            return Ok(Some(std::mem::take(&mut self.ready)));
        }
        self.find_records();
        if self.state != State::Records
            || self.buf.len() - self.pos < self.run_bytes
            || self.buf.len() < self.wait_for
        {
            return Ok(None);
        }
        let records = self.run(false)?;
        if records.is_empty() && self.state == State::Records {
            // One record larger than a run, still arriving.
            self.wait_for = self.buf.len() + (self.buf.len() - self.pos);
            return Ok(None);
        }
        if self.handed_on && self.state == State::Records {
            // From now on records are scanned in the bytes pushed; what
            // was pushed and not scanned yet goes the same way.
            let rest = self.buf.split_off(self.pos);
            self.buf.clear();
            self.pos = 0;
            self.push_in_place(&rest)?;
        }
        Ok(Some(records))
    }

    /// The event, once its payload was pushed whole: the records not handed
    /// on in runs, and the members around `Records`.
    pub fn finish(mut self) -> Result<SubscribeEvent, DecodeError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.handed_on && self.state != State::Closed {
            return Err(not_the_shape("the payload ended inside Records"));
        }
        self.find_records();
        let records = match self.state {
            State::Records => self.run(true)?,
            _ => Vec::new(),
        };
        match self.state {
            State::Closed => {
                let mut event = decode_subscribe_event(&self.skeleton)?;
                event.records = if self.ready.is_empty() {
                    records
                } else {
                    self.ready.extend(records);
                    self.ready
                };
                Ok(event)
            }
            _ if !self.handed_on => decode_subscribe_event(&self.buf),
            _ => Err(not_the_shape("the payload ended inside Records")),
        }
    }

    /// Once a run was handed on (nothing before it is needed any more):
    /// finishes a record cut by the last push, decodes the records whole in
    /// `bytes` where they lie, and keeps only a record cut by their end.
    fn push_in_place(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        let mut from = 0;
        if let Some(mut extent) = self.cut.take() {
            let Some(end) = extent.end_in(bytes) else {
                self.buf.extend_from_slice(bytes);
                self.cut = Some(extent);
                return Ok(());
            };
            self.buf.extend_from_slice(&bytes[..end]);
            self.ready_bytes += self.buf.len();
            self.next = Next::Separator;
            from = end;
        }
        if self.ready.is_empty() {
            // About 1.4 KB of JSON per 1 KiB record: a run's records in
            // one allocation, most of the time.
            self.ready.reserve(self.run_bytes / 1024 + 1);
        }
        let (stop, at) = {
            // The completed record is decoded with the records scanned in
            // `bytes`, into the same buffer.
            let mut scanned: Vec<Fields<'_>> = Vec::with_capacity((bytes.len() - from) / 1024 + 2);
            if from > 0 {
                match scan::record_at(&self.buf, 0) {
                    Some((record, at)) if at == self.buf.len() => scanned.push(record),
                    _ => self.ready.extend(decode_alone(&self.buf)?),
                }
            }
            scan_elements(
                bytes,
                from,
                &mut self.next,
                usize::MAX,
                &mut scanned,
                &mut self.ready,
            )?
        };
        self.buf.clear();
        self.ready_bytes += at - from;
        match stop {
            Stop::Cut(extent) => {
                // A record still arriving: kept from its `{`.
                self.buf.extend_from_slice(&bytes[at..]);
                self.cut = Some(extent);
                self.next = Next::Separator;
            }
            Stop::More => {}
            Stop::Closed(close) => {
                self.skeleton.push(b']');
                self.skeleton.extend_from_slice(&bytes[close + 1..]);
                self.state = State::Closed;
            }
            Stop::Bad => return Err(not_the_shape("an element of Records is not an object")),
        }
        Ok(())
    }

    /// Before `Records`: looks for its `[` in the members so far.
    fn find_records(&mut self) {
        if self.state != State::Head {
            return;
        }
        match scan::records_start(&self.buf) {
            Some(at) => {
                self.skeleton.extend_from_slice(&self.buf[..=at]);
                self.pos = at + 1;
                self.state = State::Records;
            }
            None if self.buf.len() > HEAD_LIMIT => self.state = State::Whole,
            None => {}
        }
    }

    /// Scans the records from `pos`, a run's worth (or, at the end, all of
    /// them), and decodes them; at `]` the rest goes to the skeleton.
    fn run(&mut self, to_the_end: bool) -> Result<Vec<Record>, DecodeError> {
        let limit = if to_the_end {
            usize::MAX
        } else {
            self.run_bytes
        };
        let mut next = self.next;
        let mut records = Vec::new();
        // About 1.4 KB of JSON per 1 KiB record: one allocation for most.
        let mut scanned = Vec::with_capacity(limit.min(self.buf.len() - self.pos) / 1024 + 1);
        let (stop, at) = scan_elements(
            &self.buf,
            self.pos,
            &mut next,
            limit,
            &mut scanned,
            &mut records,
        )?;
        if let Stop::Bad = stop {
            if self.handed_on {
                return Err(not_the_shape("an element of Records is not an object"));
            }
            self.state = State::Whole;
            self.skeleton = Vec::new();
            return Ok(Vec::new());
        }
        self.pos = at;
        self.next = next;
        if let Stop::Closed(close) = stop {
            self.skeleton.push(b']');
            self.skeleton.extend_from_slice(&self.buf[close + 1..]);
            self.buf = Vec::new();
            self.pos = 0;
            self.state = State::Closed;
        }
        if !records.is_empty() {
            self.handed_on = true;
        }
        Ok(records)
    }
}

/// Scans the elements of `Records` in `buf` from `from`, `next` saying
/// what may come first, and appends their records to `records` (after
/// those already in `scanned`, decoded with them into one buffer): up to a
/// run's worth (`limit` bytes), `]`, an element not arrived whole
/// (`Stop::Cut` at its `{`), or anything else (`Stop::Bad`). Returns how
/// it stopped and where.
fn scan_elements<'a>(
    buf: &'a [u8],
    from: usize,
    next: &mut Next,
    limit: usize,
    scanned: &mut Vec<Fields<'a>>,
    records: &mut Vec<Record>,
) -> Result<(Stop, usize), DecodeError> {
    let mut at = from;
    let stop = loop {
        while buf.get(at).is_some_and(u8::is_ascii_whitespace) {
            at += 1;
        }
        let Some(&byte) = buf.get(at) else {
            break Stop::More;
        };
        match (byte, *next) {
            (b'{', Next::First | Next::Element) => {
                if let Some((record, end)) = scan::record_at(buf, at) {
                    scanned.push(record);
                    at = end;
                } else {
                    let mut extent = Extent::default();
                    let Some(end) = extent.end_in(&buf[at..]) else {
                        break Stop::Cut(extent);
                    };
                    // Outside the scanner's shape: decoded alone by
                    // serde, after those scanned before it.
                    decode_records_into(scanned, records)?;
                    scanned.clear();
                    records.extend(decode_alone(&buf[at..at + end])?);
                    at += end;
                }
                *next = Next::Separator;
                if at - from >= limit {
                    break Stop::More;
                }
            }
            (b',', Next::Separator) => {
                at += 1;
                *next = Next::Element;
            }
            (b']', Next::First | Next::Separator) => break Stop::Closed(at),
            _ => break Stop::Bad,
        }
    };
    if !scanned.is_empty() {
        decode_records_into(scanned, records)?;
        scanned.clear();
    }
    Ok((stop, at))
}

/// One element of `Records` outside the scanner's shape, through serde.
fn decode_alone(element: &[u8]) -> Result<Vec<Record>, DecodeError> {
    let raw: RawRecord<'_> = serde_json::from_slice(element)?;
    decode_records(&fields(std::slice::from_ref(&raw)))
}

fn not_the_shape(why: &str) -> DecodeError {
    DecodeError::Json(serde::de::Error::custom(format!(
        "SubscribeToShardEvent: {why}"
    )))
}

#[cfg(test)]
mod tests;
