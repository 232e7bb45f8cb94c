//! Parquet files in a [`Location`]: a table `t` lives at `<dir>/t.parquet`, or as parts listed
//! by its manifest `<dir>/t/_manifest.json` (a sharded run's committed table: see
//! `crate::pipeline::shards`); [`read`] accepts both, and reads parts only through the manifest,
//! never by listing, so a table is seen whole or not at all. Writes are streamed and atomic.

use anyhow::{Context, Result, bail};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::{ArrowWriter, AsyncArrowWriter, arrow_reader::ParquetRecordBatchReaderBuilder};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use serde::{Deserialize, Serialize};

use super::location::{Sink, StagedFile};
use super::{Location, block_on, sha256_hex};

/// The most a row group holds before it is flushed (its estimated encoded size).
const ROW_GROUP_BYTES: usize = 64 << 20;

/// Streams batches into `<dir>/<name>.parquet`; the file appears only when [`finish`] succeeds.
///
/// [`finish`]: TableWriter::finish
pub struct TableWriter {
    inner: Inner,
    url: String,
    rows: usize,
}

enum Inner {
    File(ArrowWriter<std::fs::File>, StagedFile),
    Object(AsyncArrowWriter<object_store::buffered::BufWriter>),
}

impl TableWriter {
    pub fn create(dir: &Location, name: &str, schema: SchemaRef) -> Result<TableWriter> {
        let key = format!("{name}.parquet");
        let url = dir.url_of(&key);
        // Row groups of at most 64 MiB: a large table is flushed as it is written, not held in
        // memory until it is finished.
        let props = WriterProperties::builder().set_compression(Compression::SNAPPY).set_max_row_group_bytes(Some(ROW_GROUP_BYTES)).build();
        let inner = match dir.sink(&key)? {
            Sink::File(staged) => {
                let file = staged.file.try_clone().with_context(|| format!("{url}: cannot write"))?;
                Inner::File(ArrowWriter::try_new(file, schema, Some(props))?, staged)
            }
            Sink::Object(upload) => Inner::Object(AsyncArrowWriter::try_new(upload, schema, Some(props))?),
        };
        Ok(TableWriter { inner, url, rows: 0 })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows();
        let written = match &mut self.inner {
            Inner::File(w, _) => w.write(batch),
            Inner::Object(w) => block_on(w.write(batch)),
        };
        written.with_context(|| format!("{}: cannot write", self.url))
    }

    /// Completes the file, publishes it, and returns its row count.
    pub fn finish(self) -> Result<usize> {
        let url = self.url;
        match self.inner {
            Inner::File(w, staged) => {
                w.close().with_context(|| format!("{url}: cannot finish"))?;
                staged.publish()?;
            }
            Inner::Object(w) => {
                block_on(w.close()).with_context(|| format!("{url}: cannot finish"))?;
            }
        }
        Ok(self.rows)
    }
}

/// Writes a whole table at once (atomically).
pub fn write(dir: &Location, name: &str, schema: SchemaRef, batches: &[RecordBatch]) -> Result<usize> {
    let mut writer = TableWriter::create(dir, name, schema)?;
    for b in batches {
        writer.write(b)?;
    }
    writer.finish()
}

/// A table stored as parts: written (last, after every part) by a sharded run's commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableManifest {
    pub table: String,
    pub rows: u64,
    /// In the order their rows are read.
    pub parts: Vec<Part>,
}

/// One file of a table, keyed relative to the folder that holds the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    pub key: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// Where table `name`'s manifest lives in its folder.
pub fn manifest_key(name: &str) -> String {
    format!("{name}/_manifest.json")
}

/// Describes the Parquet file at `key` (its row count from the footer, its digest).
pub fn describe_part(dir: &Location, key: &str) -> Result<Part> {
    let bytes = dir.get(key)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes.clone()).with_context(|| format!("{}: not a readable Parquet file", dir.url_of(key)))?;
    let rows = builder.metadata().file_metadata().num_rows() as u64;
    Ok(Part { key: key.to_owned(), rows, bytes: bytes.len() as u64, sha256: sha256_hex(&bytes) })
}

/// Whether table `name` exists in `dir` (as one file or through its manifest).
pub fn exists(dir: &Location, name: &str) -> Result<bool> {
    Ok(dir.exists(&format!("{name}.parquet"))? || dir.exists(&manifest_key(name))?)
}

/// The files that hold table `name`, in order: `<name>.parquet`, or the parts its manifest lists.
pub fn table_keys(dir: &Location, name: &str) -> Result<Vec<String>> {
    let single = format!("{name}.parquet");
    if dir.exists(&single)? {
        return Ok(vec![single]);
    }
    let key = manifest_key(name);
    if !dir.exists(&key)? {
        bail!("{}: no table {name} (neither {single} nor {key})", dir.url());
    }
    let manifest: TableManifest = serde_json::from_slice(&dir.get(&key)?).with_context(|| format!("{}: not a table manifest", dir.url_of(&key)))?;
    Ok(manifest.parts.into_iter().map(|p| p.key).collect())
}

/// Reads table `name` from `dir`: `<name>.parquet`, or the parts its manifest lists.
pub fn read(dir: &Location, name: &str) -> Result<Vec<RecordBatch>> {
    let mut batches = Vec::new();
    for key in table_keys(dir, name)? {
        batches.extend(read_bytes(dir.get(&key)?, &dir.url_of(&key))?);
    }
    Ok(batches)
}

/// Decodes a whole Parquet file held in memory; `url` names it in errors.
pub fn read_bytes(bytes: bytes::Bytes, url: &str) -> Result<Vec<RecordBatch>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.with_batch_size(8192).build())
        .with_context(|| format!("{url}: not a readable Parquet file"))?;
    reader.map(|batch| batch.with_context(|| format!("{url}: corrupt Parquet data"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int32Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn write_then_read_round_trips() {
        let dir = std::env::temp_dir().join(format!("cloakbench-parquet-{}", std::process::id()));
        let loc = Location::create(dir.to_str().unwrap()).unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Utf8, false), Field::new("b", DataType::Int32, true)]));
        let b =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(vec!["x", "y"])), Arc::new(Int32Array::from(vec![Some(1), None]))]).unwrap();
        assert_eq!(write(&loc, "t", schema, std::slice::from_ref(&b)).unwrap(), 2);
        let back = read(&loc, "t").unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].columns(), b.columns());
        assert!(exists(&loc, "t").unwrap() && !exists(&loc, "u").unwrap());
        std::fs::remove_dir_all(dir).ok();
    }
}
