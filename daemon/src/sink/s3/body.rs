//! An object's bytes: each record's data (or its Lambda record shape) and
//! a newline, compressed as configured.

use std::io::Write;

use bytes::Bytes;
use kcld_config::S3Compression;

use super::super::event::{write_record, EventContext};
use crate::record::Record;

/// The object holding `records` of `shard_id`: `lambda` writes each as the
/// Lambda record shape (one JSON line), else its own bytes; then compressed.
pub fn encode<'a>(
    context: &EventContext,
    shard_id: &str,
    records: impl Iterator<Item = &'a Record> + Clone,
    lambda: bool,
    compression: S3Compression,
) -> std::io::Result<Bytes> {
    let size: usize = records.clone().map(|r| r.data.len() + 1).sum();
    let mut lines = Vec::with_capacity(if lambda { size * 4 / 3 + 512 } else { size });
    for record in records {
        if lambda {
            write_record(&mut lines, context, shard_id, record);
        } else {
            lines.extend_from_slice(&record.data);
        }
        lines.push(b'\n');
    }
    match compression {
        S3Compression::None => Ok(Bytes::from(lines)),
        S3Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(
                Vec::with_capacity(lines.len() / 3),
                flate2::Compression::default(),
            );
            gz.write_all(&lines)?;
            gz.finish().map(Bytes::from)
        }
        // Level 3, zstd's default: about gzip's ratio at several times its
        // speed.
        S3Compression::Zstd => zstd::bulk::compress(&lines, 3).map(Bytes::from),
    }
}
