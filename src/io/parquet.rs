//! Parquet files in a [`Location`]: a table `t` lives at `<dir>/t.parquet`, or as parts
//! `<dir>/t/part-*.parquet`; [`read`] accepts both. Writes are streamed and atomic.

use anyhow::{Context, Result, bail};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::{ArrowWriter, AsyncArrowWriter, arrow_reader::ParquetRecordBatchReaderBuilder};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::location::{Sink, StagedFile};
use super::{Location, block_on};

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
        let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
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

/// Whether table `name` exists in `dir` (as one file or as parts).
pub fn exists(dir: &Location, name: &str) -> Result<bool> {
    Ok(dir.exists(&format!("{name}.parquet"))? || !parts(dir, name)?.is_empty())
}

fn parts(dir: &Location, name: &str) -> Result<Vec<String>> {
    let folder = dir.child(name);
    if Location::is_s3_url(dir.url()) || std::path::Path::new(folder.url()).is_dir() {
        return Ok(folder.files()?.into_iter().filter(|e| e.key.ends_with(".parquet") && !e.key.contains('/')).map(|e| format!("{name}/{}", e.key)).collect());
    }
    Ok(vec![])
}

/// Reads table `name` from `dir`: `<name>.parquet`, or all of `<name>/*.parquet` in key order.
pub fn read(dir: &Location, name: &str) -> Result<Vec<RecordBatch>> {
    let single = format!("{name}.parquet");
    let keys = if dir.exists(&single)? { vec![single] } else { parts(dir, name)? };
    if keys.is_empty() {
        bail!("{}: no table {name} (neither {name}.parquet nor {name}/part-*.parquet)", dir.url());
    }
    let mut batches = Vec::new();
    for key in keys {
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
