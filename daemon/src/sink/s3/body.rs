//! An object's bytes: each record's data (or its Lambda record shape) and
//! a newline, compressed as configured.

use std::io::Write;

use bytes::Bytes;
use kcld_config::S3Compression;

use super::super::event::{write_record, EventContext};
use crate::record::Record;

/// The object holding `records` of `shard_id`: `lambda` writes each as the
/// Lambda record shape (one JSON line), else its own bytes; then compressed.
/// Lines go straight into the compressor: no joined copy of the buffer is
/// made (half the memory, and the compressor reads them while in cache).
pub fn encode<'a>(
    context: &EventContext,
    shard_id: &str,
    records: impl Iterator<Item = &'a Record> + Clone,
    lambda: bool,
    compression: S3Compression,
) -> std::io::Result<Bytes> {
    let size: usize = records.clone().map(|r| r.data.len() + 1).sum();
    let estimate = if lambda { size * 4 / 3 + 512 } else { size };
    match compression {
        S3Compression::None => {
            let mut out = Vec::with_capacity(estimate);
            write_lines(&mut out, context, shard_id, records, lambda)?;
            Ok(Bytes::from(out))
        }
        S3Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(
                Vec::with_capacity(estimate / 3),
                flate2::Compression::default(),
            );
            write_lines(&mut gz, context, shard_id, records, lambda)?;
            gz.finish().map(Bytes::from)
        }
        S3Compression::Zstd => {
            // Level 3, zstd's default: about gzip's ratio at several times
            // its speed. The size is known: it goes into the frame header.
            let mut z = zstd::stream::write::Encoder::new(Vec::with_capacity(estimate / 3), 3)?;
            if !lambda {
                z.set_pledged_src_size(Some(size as u64))?;
            }
            write_lines(&mut z, context, shard_id, records, lambda)?;
            z.finish().map(Bytes::from)
        }
    }
}

/// Each record's line into `out`, through a small buffer so that the
/// compressor sees writes of tens of KiB rather than one per record.
fn write_lines<'a, W: Write>(
    out: &mut W,
    context: &EventContext,
    shard_id: &str,
    records: impl Iterator<Item = &'a Record>,
    lambda: bool,
) -> std::io::Result<()> {
    const CHUNK: usize = 64 * 1024;
    let mut chunk = Vec::with_capacity(CHUNK + 4096);
    for record in records {
        if lambda {
            write_record(&mut chunk, context, shard_id, record);
        } else if record.data.len() >= CHUNK {
            out.write_all(&chunk)?;
            chunk.clear();
            out.write_all(&record.data)?;
        } else {
            chunk.extend_from_slice(&record.data);
        }
        chunk.push(b'\n');
        if chunk.len() >= CHUNK {
            out.write_all(&chunk)?;
            chunk.clear();
        }
    }
    out.write_all(&chunk)
}
