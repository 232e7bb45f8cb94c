//! `results`: the study's figures, one row per protected user and experiment cell (the
//! `results` stage).

use std::sync::Arc;

use anyhow::Result;
use arrow_array::{Array, ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};

use super::{column, opt_strings, rows, strings};

pub const RESULTS: &str = "results";

/// One protected user in one cell.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    pub dataset: Option<String>,
    pub protocol: String,
    pub method: String,
    pub mode: String,
    pub cloak_fraction: f64,
    pub defender: String,
    pub defender_model: String,
    pub trainer_alignment: Option<String>,
    pub purifier: Option<String>,
    pub classifier: String,
    pub top_k: i32,
    pub user: String,
    pub protection_rate: f64,
    pub unprotected_error: Option<f64>,
    pub clean_accuracy: f64,
    pub n_test: i64,
    pub labels: String,
}

pub fn batch(rows: &[ResultRow]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        opt_strings(rows.iter().map(|r| r.dataset.as_deref())),
        strings(rows.iter().map(|r| &r.protocol)),
        strings(rows.iter().map(|r| &r.method)),
        strings(rows.iter().map(|r| &r.mode)),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.cloak_fraction))),
        strings(rows.iter().map(|r| &r.defender)),
        strings(rows.iter().map(|r| &r.defender_model)),
        opt_strings(rows.iter().map(|r| r.trainer_alignment.as_deref())),
        opt_strings(rows.iter().map(|r| r.purifier.as_deref())),
        strings(rows.iter().map(|r| &r.classifier)),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.top_k))),
        strings(rows.iter().map(|r| &r.user)),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.protection_rate))),
        Arc::new(rows.iter().map(|r| r.unprotected_error).collect::<Float64Array>()),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.clean_accuracy))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.n_test))),
        strings(rows.iter().map(|r| &r.labels)),
    ];
    super::batch(RESULTS, None, columns)
}

pub fn read(batches: &[RecordBatch]) -> Result<Vec<ResultRow>> {
    rows(batches)
        .map(|(b, i)| {
            let s = |name| column::<StringArray>(b, name).map(|c| c.value(i).to_owned());
            let o = |name| column::<StringArray>(b, name).map(|c| c.is_valid(i).then(|| c.value(i).to_owned()));
            let f = |name| column::<Float64Array>(b, name).map(|c| c.value(i));
            let unprotected = column::<Float64Array>(b, "unprotected_error")?;
            Ok(ResultRow {
                dataset: o("dataset")?,
                protocol: s("protocol")?,
                method: s("method")?,
                mode: s("mode")?,
                cloak_fraction: f("cloak_fraction")?,
                defender: s("defender")?,
                defender_model: s("defender_model")?,
                trainer_alignment: o("trainer_alignment")?,
                purifier: o("purifier")?,
                classifier: s("classifier")?,
                top_k: column::<Int32Array>(b, "top_k")?.value(i),
                user: s("user")?,
                protection_rate: f("protection_rate")?,
                unprotected_error: unprotected.is_valid(i).then(|| unprotected.value(i)),
                clean_accuracy: f("clean_accuracy")?,
                n_test: column::<Int64Array>(b, "n_test")?.value(i),
                labels: s("labels")?,
            })
        })
        .collect()
}
