//! Any bytes as a SubscribeToShardEvent payload, pushed into the splitter
//! in pieces and runs of sizes taken from the first two bytes: never a
//! panic, and it decodes what the whole decoder decodes (the same records
//! and members) and refuses what it refuses.
#![no_main]

use kcld_records::getrecords::{decode_subscribe_event, EventSplitter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [chunk, run, payload @ ..] = data else {
        return;
    };
    let whole = decode_subscribe_event(payload);
    let mut splitter = EventSplitter::new(usize::from(*run) * 16 + 1);
    let mut records = Vec::new();
    let mut failed = false;
    'push: for piece in payload.chunks(usize::from(*chunk) + 1) {
        splitter.push(piece);
        loop {
            match splitter.take_run() {
                Ok(Some(run)) => records.extend(run),
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break 'push;
                }
            }
        }
    }
    let split = if failed {
        None
    } else {
        splitter.finish().ok().map(|mut event| {
            records.append(&mut event.records);
            event.records = records;
            event
        })
    };
    match (whole, split) {
        (Ok(w), Some(s)) => assert_eq!(w, s),
        (Err(_), None) => {}
        (w, s) => panic!("whole decoded: {}, split decoded: {}", w.is_ok(), s.is_some()),
    }
});
