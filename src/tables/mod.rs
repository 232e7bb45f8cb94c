//! Typed tables: the schemas in `schemas/*.toml`, and Parquet reading and writing.
//!
//! The TOML files in `schemas/` are the single source of truth for every table the pipeline
//! writes: they are compiled into the binary, turned into Arrow schemas here, and every batch
//! a stage writes is checked against them (`RecordBatch::try_new` rejects a wrong type or a
//! null in a non-null column). Tests read the written files back with Polars and Pandas.
//!
//! A table `t` lives at `<dir>/t.parquet`, or as parts `<dir>/t/part-*.parquet` when runs are
//! sharded; [`read`] accepts both.

use std::{collections::HashMap, sync::Arc, sync::OnceLock};

use anyhow::{Context, Result, anyhow, bail};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::{
    arrow::{AsyncArrowWriter, arrow_reader::ParquetRecordBatchReaderBuilder},
    basic::Compression,
    file::properties::WriterProperties,
};
use serde::Deserialize;

use crate::io::{Location, block_on};

/// Metadata key naming the table a Parquet file holds.
pub const TABLE_KEY: &str = "cloakbench.table";

/// The documentation of one table, as written in `schemas/<name>.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSchema {
    pub table: String,
    pub description: String,
    pub columns: Vec<Column>,
}

/// One documented column.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: String,
    /// `utf8`, `bool`, `uint8`, `int32`, `uint32`, `int64`, `uint64`, `float32`, `float64`,
    /// `fixed_size_list<float32, N>` (N values per row), or `fixed_size_list<float32>` whose
    /// length is set per file (an embedding's dimension).
    #[serde(rename = "type")]
    pub type_name: String,
    pub nullable: bool,
    pub description: String,
}

const SCHEMA_FILES: &[(&str, &str)] = &[
    ("images", include_str!("../../schemas/images.toml")),
    ("splits", include_str!("../../schemas/splits.toml")),
    ("embeddings", include_str!("../../schemas/embeddings.toml")),
    ("predictions", include_str!("../../schemas/predictions.toml")),
    ("metrics", include_str!("../../schemas/metrics.toml")),
    ("faces", include_str!("../../schemas/faces.toml")),
    ("verification", include_str!("../../schemas/verification.toml")),
    ("cloaks", include_str!("../../schemas/cloaks.toml")),
    ("cloak_shifts", include_str!("../../schemas/cloak_shifts.toml")),
];

/// The documented schema called `name` (the `table` key of its TOML file).
pub fn schema(name: &str) -> &'static TableSchema {
    static ALL: OnceLock<HashMap<String, TableSchema>> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        SCHEMA_FILES
            .iter()
            .map(|(file, text)| {
                let s: TableSchema = toml::from_str(text).unwrap_or_else(|e| panic!("schemas/{file}.toml: {e}"));
                assert_eq!(s.table, *file, "schemas/{file}.toml names table {}", s.table);
                (s.table.clone(), s)
            })
            .collect()
    });
    all.get(name).unwrap_or_else(|| panic!("no schema named {name} in schemas/"))
}

/// Every documented schema.
pub fn all_schemas() -> Vec<&'static TableSchema> {
    SCHEMA_FILES.iter().map(|(name, _)| schema(name)).collect()
}

impl TableSchema {
    /// The Arrow schema; `list_len` is the length of its fixed-size-list column, if any.
    pub fn arrow(&self, list_len: Option<i32>) -> SchemaRef {
        let fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| Field::new(&c.name, arrow_type(&c.type_name, list_len), c.nullable))
            .collect();
        let metadata = HashMap::from([(TABLE_KEY.to_owned(), self.table.clone())]);
        Arc::new(Schema::new_with_metadata(fields, metadata))
    }

    /// Checks that `schema` has exactly the documented columns, types and nullability.
    pub fn check(&self, schema: &Schema) -> Result<()> {
        let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let expected: Vec<_> = self.columns.iter().map(|c| c.name.as_str()).collect();
        if names != expected {
            bail!("table {}: columns {names:?}, documented {expected:?}", self.table);
        }
        for (field, column) in schema.fields().iter().zip(&self.columns) {
            let list_len = match field.data_type() {
                DataType::FixedSizeList(_, n) if column.type_name == "fixed_size_list<float32>" => Some(*n),
                _ => None,
            };
            let want = arrow_type(&column.type_name, list_len);
            if field.data_type() != &want || field.is_nullable() != column.nullable {
                bail!(
                    "table {} column {}: {:?} (nullable {}), documented {want:?} (nullable {})",
                    self.table, column.name, field.data_type(), field.is_nullable(), column.nullable
                );
            }
        }
        Ok(())
    }
}

fn arrow_type(name: &str, list_len: Option<i32>) -> DataType {
    match name {
        "utf8" => DataType::Utf8,
        "bool" => DataType::Boolean,
        "uint8" => DataType::UInt8,
        "int32" => DataType::Int32,
        "uint32" => DataType::UInt32,
        "int64" => DataType::Int64,
        "uint64" => DataType::UInt64,
        "float32" => DataType::Float32,
        "float64" => DataType::Float64,
        "fixed_size_list<float32>" => float_list(list_len.expect("a fixed_size_list column needs its length")),
        other => match other.strip_prefix("fixed_size_list<float32, ").and_then(|n| n.strip_suffix('>')) {
            Some(n) => float_list(n.parse().unwrap_or_else(|_| panic!("schemas/: bad list length in {other}"))),
            None => panic!("schemas/: unknown column type {other}"),
        },
    }
}

fn float_list(len: i32) -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new_list_field(DataType::Float32, false)), len)
}

/// A batch of the documented table `name`, checked against its schema.
pub fn batch(name: &str, list_len: Option<i32>, columns: Vec<Arc<dyn Array>>) -> Result<RecordBatch> {
    RecordBatch::try_new(schema(name).arrow(list_len), columns)
        .with_context(|| format!("building a batch of table {name}"))
}

/// Streams batches into `<dir>/<name>.parquet`; the file appears only when [`finish`] succeeds.
///
/// [`finish`]: TableWriter::finish
pub struct TableWriter {
    inner: AsyncArrowWriter<object_store::buffered::BufWriter>,
    url: String,
    rows: usize,
}

impl TableWriter {
    pub fn create(dir: &Location, name: &str, schema: SchemaRef) -> Result<TableWriter> {
        let key = format!("{name}.parquet");
        let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
        let inner = AsyncArrowWriter::try_new(dir.writer(&key), schema, Some(props))?;
        Ok(TableWriter { inner, url: dir.url_of(&key), rows: 0 })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows();
        block_on(self.inner.write(batch)).with_context(|| format!("{}: cannot write", self.url))
    }

    /// Completes the file and returns its row count.
    pub fn finish(self) -> Result<usize> {
        block_on(self.inner.close()).with_context(|| format!("{}: cannot finish", self.url))?;
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
    if dir.url().starts_with('/') && !std::path::Path::new(&dir.url_of(name)).is_dir() {
        return Ok(vec![]);
    }
    Ok(dir
        .child(name)
        .list()?
        .into_iter()
        .filter(|e| e.key.ends_with(".parquet") && !e.key.contains('/'))
        .map(|e| format!("{name}/{}", e.key))
        .collect())
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
        let bytes = dir.get(&key)?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.with_batch_size(8192).build())
            .with_context(|| format!("{}: not a readable Parquet file", dir.url_of(&key)))?;
        for batch in reader {
            batches.push(batch.with_context(|| format!("{}: corrupt Parquet data", dir.url_of(&key)))?);
        }
    }
    Ok(batches)
}

/// Typed access to a column, with an error naming the column when it is missing or mistyped.
pub fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .ok_or_else(|| anyhow!("missing column {name}"))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| anyhow!("column {name} has an unexpected type"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_file_parses_and_builds() {
        for s in all_schemas() {
            let arrow = s.arrow(Some(4));
            s.check(&arrow).unwrap();
            assert!(s.columns.iter().all(|c| !c.description.is_empty()), "{}", s.table);
        }
    }

    #[test]
    fn check_rejects_a_wrong_type() {
        let s = schema("metrics");
        let fields: Vec<Field> = s.arrow(None).fields().iter().map(|f| f.as_ref().clone().with_data_type(DataType::Utf8)).collect();
        assert!(s.check(&Schema::new(fields)).is_err());
    }

    #[test]
    fn write_then_read_round_trips() {
        let dir = std::env::temp_dir().join(format!("cloakbench-table-{}", std::process::id()));
        let loc = Location::create(dir.to_str().unwrap()).unwrap();
        let cols: Vec<Arc<dyn Array>> = vec![
            Arc::new(arrow_array::StringArray::from(vec!["a"])),
            Arc::new(arrow_array::StringArray::from(vec!["alice"])),
            Arc::new(arrow_array::StringArray::from(vec!["train"])),
            Arc::new(arrow_array::BooleanArray::from(vec![true])),
        ];
        let b = batch("splits", None, cols).unwrap();
        write(&loc, "splits", b.schema(), std::slice::from_ref(&b)).unwrap();
        let back = read(&loc, "splits").unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].columns(), b.columns());
        schema("splits").check(&back[0].schema()).unwrap();
        std::fs::remove_dir_all(dir).ok();
    }
}
