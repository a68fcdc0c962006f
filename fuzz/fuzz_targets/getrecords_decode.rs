//! Any bytes as a GetRecords response body: the decoder returns records or
//! an error, never panics; decoded data never exceeds what the body holds.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(response) = kcld_records::getrecords::decode(Bytes::copy_from_slice(data)) {
        let total: usize = response.records.iter().map(|r| r.data.len()).sum();
        assert!(total <= data.len());
    }
});
