//! One decode of a 10,000 x 1 KiB body, for instruction counting:
//!     valgrind --tool=callgrind target/release/examples/decode_once kcld|lower_bound|sdk
use kcld_benches::{lower_bound, SdkDecoder, SyntheticResponse};

fn main() {
    let which = std::env::args().nth(1).unwrap_or_default();
    let body = SyntheticResponse::generate(10_000, 1024, 42).body();
    let sdk = (which == "sdk").then(SdkDecoder::new);
    for _ in 0..2 {
        match which.as_str() {
            "kcld" => drop(std::hint::black_box(kcld_records::getrecords::decode(
                body.clone(),
            ))),
            "sdk" => drop(std::hint::black_box(
                sdk.as_ref().map(|s| s.decode(body.clone())),
            )),
            _ => drop(std::hint::black_box(lower_bound(&body))),
        }
    }
}
