//! The tables stages read and write: one module per table, holding its row type, its typed
//! values (a status, a split side), its reader and its batch builder. Stages share tables,
//! never each other's code.
//!
//! The TOML files in `schemas/` are the single source of truth for every table's columns: they
//! are compiled into the binary, turned into Arrow schemas here, and every batch a stage writes
//! is checked against them (`RecordBatch::try_new` rejects a wrong type or a null in a non-null
//! column). A schema may be `based_on` another (its columns first, then its own). Tests read
//! every written file back with Polars and Pandas and check it against its schema, found by the
//! `cloakbench.table` key each file carries.

pub mod bench;
pub mod cloak_shifts;
pub mod cloaks;
pub mod clusters;
pub mod detections;
pub mod embeddings;
pub mod faces;
pub mod images;
pub mod metrics;
pub mod predictions;
pub mod results;
pub mod splits;
pub mod tuned_models;
pub mod verification;

use std::{collections::HashMap, sync::Arc, sync::OnceLock};

use anyhow::{Context, Result, anyhow, bail};
use arrow_array::{Array, ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::Deserialize;

/// Metadata key naming the schema a Parquet file follows.
pub const TABLE_KEY: &str = "cloakbench.table";

/// The documentation of one table, as written in `schemas/<name>.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSchema {
    pub table: String,
    /// Another schema whose columns come first.
    #[serde(default)]
    pub based_on: Option<String>,
    pub description: String,
    pub columns: Vec<Column>,
}

/// One documented column.
#[derive(Debug, Clone, Deserialize)]
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
    ("cloaked_images", include_str!("../../schemas/cloaked_images.toml")),
    ("filtered_images", include_str!("../../schemas/filtered_images.toml")),
    ("splits", include_str!("../../schemas/splits.toml")),
    ("faces", include_str!("../../schemas/faces.toml")),
    ("embeddings", include_str!("../../schemas/embeddings.toml")),
    ("predictions", include_str!("../../schemas/predictions.toml")),
    ("metrics", include_str!("../../schemas/metrics.toml")),
    ("verification", include_str!("../../schemas/verification.toml")),
    ("cloaks", include_str!("../../schemas/cloaks.toml")),
    ("cloak_shifts", include_str!("../../schemas/cloak_shifts.toml")),
    ("tuned_models", include_str!("../../schemas/tuned_models.toml")),
    ("detections", include_str!("../../schemas/detections.toml")),
    ("detection_metrics", include_str!("../../schemas/detection_metrics.toml")),
    ("clusters", include_str!("../../schemas/clusters.toml")),
    ("cluster_metrics", include_str!("../../schemas/cluster_metrics.toml")),
    ("results", include_str!("../../schemas/results.toml")),
    ("bench", include_str!("../../schemas/bench.toml")),
];

/// The documented schema called `name`, with the columns of the schema it is based on first.
pub fn schema(name: &str) -> &'static TableSchema {
    static ALL: OnceLock<HashMap<String, TableSchema>> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        let parsed: HashMap<String, TableSchema> = SCHEMA_FILES
            .iter()
            .map(|(file, text)| {
                let s: TableSchema = toml::from_str(text).unwrap_or_else(|e| panic!("schemas/{file}.toml: {e}"));
                assert_eq!(s.table, *file, "schemas/{file}.toml names table {}", s.table);
                (s.table.clone(), s)
            })
            .collect();
        let base_columns = |s: &TableSchema| -> Vec<Column> {
            s.based_on.as_ref().map_or(vec![], |b| parsed.get(b).unwrap_or_else(|| panic!("schemas/{}.toml: no schema {b}", s.table)).columns.clone())
        };
        let resolved: Vec<TableSchema> = parsed
            .values()
            .map(|s| TableSchema {
                table: s.table.clone(),
                based_on: s.based_on.clone(),
                description: s.description.clone(),
                columns: base_columns(s).into_iter().chain(s.columns.iter().cloned()).collect(),
            })
            .collect();
        resolved.into_iter().map(|s| (s.table.clone(), s)).collect()
    });
    all.get(name).unwrap_or_else(|| panic!("no schema named {name} in schemas/"))
}

/// Every documented schema's name.
pub fn schema_names() -> impl Iterator<Item = &'static str> {
    SCHEMA_FILES.iter().map(|(name, _)| *name)
}

impl TableSchema {
    /// The Arrow schema; `list_len` is the length of its fixed-size-list column, if any.
    pub fn arrow(&self, list_len: Option<i32>) -> SchemaRef {
        let fields: Vec<Field> = self.columns.iter().map(|c| Field::new(&c.name, arrow_type(&c.type_name, list_len), c.nullable)).collect();
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
                    self.table,
                    column.name,
                    field.data_type(),
                    field.is_nullable(),
                    column.nullable
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
pub fn batch(name: &str, list_len: Option<i32>, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    RecordBatch::try_new(schema(name).arrow(list_len), columns).with_context(|| format!("building a batch of table {name}"))
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

/// A text column.
pub fn strings<S: AsRef<str>>(values: impl IntoIterator<Item = S>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

/// A nullable text column.
pub fn opt_strings<S: AsRef<str>>(values: impl IntoIterator<Item = Option<S>>) -> ArrayRef {
    Arc::new(values.into_iter().collect::<StringArray>())
}

/// A column of `len` float32 values per row; a `None` row is null.
pub fn float_lists(len: i32, rows: impl IntoIterator<Item = Option<Vec<f32>>>) -> Result<ArrayRef> {
    let (mut flat, mut valid) = (Vec::new(), Vec::new());
    for row in rows {
        valid.push(row.is_some());
        match row {
            Some(values) if values.len() == len as usize => flat.extend(values),
            Some(values) => bail!("a list of {} values in a column of {len}", values.len()),
            None => flat.extend(std::iter::repeat_n(0.0, len as usize)),
        }
    }
    let nulls = valid.iter().any(|v| !v).then(|| valid.into());
    Ok(Arc::new(FixedSizeListArray::try_new(Arc::new(Field::new_list_field(DataType::Float32, false)), len, Arc::new(Float32Array::from(flat)), nulls)?))
}

/// The float32 values of row `i` of a fixed-size-list column.
pub fn list_values(list: &FixedSizeListArray, i: usize) -> Result<Vec<f32>> {
    let values = list.values().as_any().downcast_ref::<Float32Array>().context("list values must be float32")?;
    let n = list.value_length() as usize;
    let start = list.value_offset_at(i);
    Ok(values.values()[start..start + n].to_vec())
}

/// The rows of all batches, as (batch, row index) pairs.
pub fn rows(batches: &[RecordBatch]) -> impl Iterator<Item = (&RecordBatch, usize)> {
    batches.iter().flat_map(|b| (0..b.num_rows()).map(move |i| (b, i)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_file_parses_and_builds() {
        for name in schema_names() {
            let s = schema(name);
            let arrow = s.arrow(Some(4));
            s.check(&arrow).unwrap();
            assert!(s.columns.iter().all(|c| !c.description.is_empty()), "{name}");
        }
        // A derived schema starts with its base's columns.
        let (images, cloaked) = (schema("images"), schema("cloaked_images"));
        assert_eq!(cloaked.columns.len(), images.columns.len() + 1);
        assert!(images.columns.iter().zip(&cloaked.columns).all(|(a, b)| a.name == b.name));
    }

    #[test]
    fn every_schema_file_is_registered() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");
        let mut files: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path().file_stem().unwrap().to_string_lossy().into_owned()).collect();
        files.sort();
        let mut names: Vec<String> = schema_names().map(str::to_owned).collect();
        names.sort();
        assert_eq!(files, names);
    }

    #[test]
    fn check_rejects_a_wrong_type() {
        let s = schema("metrics");
        let fields: Vec<Field> = s.arrow(None).fields().iter().map(|f| f.as_ref().clone().with_data_type(DataType::Utf8)).collect();
        assert!(s.check(&Schema::new(fields)).is_err());
    }
}
