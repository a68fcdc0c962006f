//! The splitter against the whole decoder.

use super::*;
use proptest::prelude::*;

/// A payload as the service writes it, `Records` first or last.
fn payload(records: &[(usize, u8)], records_last: bool, children: bool, blank: &str) -> Vec<u8> {
    use base64::Engine as _;
    let items: Vec<String> = records
        .iter()
        .enumerate()
        .map(|(i, (len, byte))| {
            let data = base64::engine::general_purpose::STANDARD.encode(vec![*byte; *len]);
            format!(
                r#"{{"SequenceNumber":"4959033827149025660855969253836157109592157598913658{:04}","ApproximateArrivalTimestamp":1.709100911667E9,"Data":"{data}","PartitionKey":"k{i}\"q"}}"#,
                i
            )
        })
        .collect();
    let records = format!(
        r#""Records":[{blank}{}{blank}]"#,
        items.join(&format!(",{blank}"))
    );
    let mut rest = vec![
        r#""ContinuationSequenceNumber":"49590338271490256608559692538361571095921575989136588999""#.to_owned(),
        r#""MillisBehindLatest":1500"#.to_owned(),
    ];
    if children {
        rest.push(r#""ChildShards":[{"ShardId":"shardId-000000000002","ParentShards":["shardId-000000000000"],"HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"9"}}]"#.to_owned());
    }
    if records_last {
        rest.push(records);
    } else {
        rest.insert(0, records);
    }
    format!("{{{blank}{}{blank}}}", rest.join(&format!(",{blank}"))).into_bytes()
}

/// The payload pushed in `chunk`-byte pieces: every run handed on, then
/// the event from `finish` with all the records in order.
fn split(
    payload: &[u8],
    chunk: usize,
    run_bytes: usize,
) -> Result<(SubscribeEvent, usize), DecodeError> {
    let mut splitter = EventSplitter::new(run_bytes);
    let mut records = Vec::new();
    let mut runs = 0;
    for piece in payload.chunks(chunk.max(1)) {
        splitter.push(piece);
        while let Some(run) = splitter.take_run()? {
            records.extend(run);
            runs += 1;
        }
    }
    let mut event = splitter.finish()?;
    records.append(&mut event.records);
    event.records = records;
    Ok((event, runs))
}

#[test]
fn a_large_event_is_handed_on_in_runs_holding_little() {
    let records: Vec<(usize, u8)> = (0..2_000).map(|i| (1024, i as u8)).collect();
    let payload = payload(&records, true, false, "");
    let whole = decode_subscribe_event(&payload).unwrap();
    let run_bytes = 64 * 1024;
    let mut splitter = EventSplitter::new(run_bytes);
    let (mut got, mut max_held, mut runs) = (Vec::new(), 0, 0);
    for piece in payload.chunks(16 * 1024) {
        splitter.push(piece);
        max_held = max_held.max(splitter.held());
        while let Some(run) = splitter.take_run().unwrap() {
            runs += 1;
            got.extend(run);
        }
    }
    let mut end = splitter.finish().unwrap();
    got.append(&mut end.records);
    assert_eq!(got, whole.records);
    assert_eq!(
        end.continuation_sequence_number,
        whole.continuation_sequence_number
    );
    assert_eq!(end.millis_behind_latest, Some(1500));
    // 2.8 MB of JSON in runs of about 64 KiB, never more held than a
    // run, a piece and a record.
    assert!(payload.len() > 2_700_000);
    assert!(runs >= 40, "{runs} runs");
    assert!(
        max_held < run_bytes + 16 * 1024 + 2 * 1400,
        "held {max_held}"
    );
}

#[test]
fn other_shapes_are_decoded_whole() {
    for text in [
        // An escape in a key before Records: serde's path.
        &br#"{"Continuation\u0053equenceNumber":"5","Records":[{"SequenceNumber":"1","Data":"aGk="}]}"#[..],
        // Records null, records not objects, no Records.
        br#"{"Records":null}"#,
        br#"{"Records":[1]}"#,
        br#"{"Records":[{"SequenceNumber":"1","Data":""},]}"#,
        br#"{"Records":[,{"SequenceNumber":"1","Data":""}]}"#,
        br#"{"MillisBehindLatest":0}"#,
        br#"{"Records":[{"SequenceNumber":"1","Data":""}]"#,
        b"",
    ] {
        let whole = decode_subscribe_event(text);
        for chunk in [1, 3, text.len().max(1)] {
            let split = split(text, chunk, 1);
            match (&whole, &split) {
                (Ok(w), Ok((s, _))) => assert_eq!(w, s),
                (Err(_), Err(_)) => {}
                _ => panic!("{} in {chunk}: whole {whole:?}, split {split:?}", String::from_utf8_lossy(text)),
            }
        }
    }
}

proptest! {
    /// Any event, pushed in any pieces, cut into runs of any size:
    /// the same records and members as decoding it whole.
    #[test]
    fn runs_agree_with_the_whole_event(
        records in proptest::collection::vec((0usize..300, any::<u8>()), 0..12),
        records_last in any::<bool>(),
        children in any::<bool>(),
        blank in prop_oneof![Just(""), Just(" "), Just("\n  ")],
        chunk in 1usize..400,
        run_bytes in 1usize..1_000,
    ) {
        let payload = payload(&records, records_last, children, blank);
        let whole = decode_subscribe_event(&payload).unwrap();
        let (split, _) = split(&payload, chunk, run_bytes).unwrap();
        prop_assert_eq!(split, whole);
    }

    /// An element's end found across pieces is where it is found in one
    /// buffer.
    #[test]
    fn an_extent_followed_in_pieces_ends_where_the_element_ends(
        body in proptest::collection::vec(prop_oneof![
            Just(b'"'), Just(b'\\'), Just(b'{'), Just(b'}'), Just(b'['), Just(b']'), Just(b'a'), Just(b',')
        ], 0..60),
        cuts in proptest::collection::vec(0usize..61, 0..4),
    ) {
        let mut element = vec![b'{'];
        element.extend(body);
        let whole = Extent::default().end_in(&element);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(element.len())).collect();
        cuts.push(element.len());
        cuts.sort_unstable();
        let (mut extent, mut from, mut found) = (Extent::default(), 0, None);
        for cut in cuts {
            if let Some(end) = extent.end_in(&element[from..cut]) {
                found = Some(from + end);
                break;
            }
            from = cut;
        }
        prop_assert_eq!(found, whole);
    }

    /// A corrupted payload: split and whole agree on whether it
    /// decodes, and on what it decodes to.
    #[test]
    fn corrupted_payloads_split_as_they_decode_whole(
        at in 0usize..2_000,
        byte in prop_oneof![any::<u8>(), Just(b'"'), Just(b'\\'), Just(b','), Just(b']'), Just(b'}'), Just(b'{')],
        how in 0u8..3,
        chunk in 1usize..200,
        run_bytes in 1usize..400,
    ) {
        let mut payload = payload(&[(100, 1), (3, 2), (250, 3), (0, 4)], at % 2 == 0, true, "");
        let at = at % payload.len();
        match how {
            0 => payload[at] = byte,
            1 => payload.insert(at, byte),
            _ => { payload.remove(at); }
        }
        let whole = decode_subscribe_event(&payload);
        let split = split(&payload, chunk, run_bytes);
        match (whole, split) {
            (Ok(w), Ok((s, _))) => prop_assert_eq!(w, s),
            (Err(_), Err(_)) => {}
            (w, s) => prop_assert!(false, "{}: whole {:?}, split {:?}", String::from_utf8_lossy(&payload), w.is_ok(), s.is_ok()),
        }
    }
}
