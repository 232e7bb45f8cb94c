//! `verification`: ROC AUC and equal error rate of each model over all picture pairs (the
//! `verify` stage).

use std::sync::Arc;

use anyhow::Result;
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};

use super::{column, rows, strings};

pub const VERIFICATION: &str = "verification";

/// Verification quality of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    pub model: String,
    pub n_same: i64,
    pub n_different: i64,
    pub auc: f64,
    pub eer: f64,
}

pub fn batch(rows: &[Verification]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| &r.model)),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.n_same))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.n_different))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.auc))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.eer))),
    ];
    super::batch(VERIFICATION, None, columns)
}

pub fn read(batches: &[RecordBatch]) -> Result<Vec<Verification>> {
    rows(batches)
        .map(|(b, i)| {
            Ok(Verification {
                model: column::<StringArray>(b, "model")?.value(i).to_owned(),
                n_same: column::<Int64Array>(b, "n_same")?.value(i),
                n_different: column::<Int64Array>(b, "n_different")?.value(i),
                auc: column::<Float64Array>(b, "auc")?.value(i),
                eer: column::<Float64Array>(b, "eer")?.value(i),
            })
        })
        .collect()
}
