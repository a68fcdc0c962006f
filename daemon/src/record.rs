//! Records as kcld hands them on; defined in `kcld-records`, where the
//! decoder and the deaggregator build them.

pub use kcld_records::{Batch, ByteStr, Encryption, Record};
