//! `metrics`: accuracy per classifier, model and identity (a null identity is the overall row),
//! and the protection rate of protected users (the `evaluate` stage).

use std::sync::Arc;

use anyhow::Result;
use arrow_array::{Array, ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};

use super::{column, opt_strings, rows, strings};

pub const METRICS: &str = "metrics";

/// One row of `metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub classifier: String,
    pub model: String,
    /// None: the overall row.
    pub identity: Option<String>,
    pub protected: Option<bool>,
    /// Accuracy counts a test picture right when its identity ranks within the top k (1: the
    /// prediction is right).
    pub top_k: i32,
    pub n_test: i64,
    pub accuracy: f64,
}

impl Metric {
    /// FaceCure's protection rate: 1 - accuracy on a protected user's clean test pictures.
    pub fn protection_rate(&self) -> Option<f64> {
        (self.protected == Some(true)).then_some(1.0 - self.accuracy)
    }
}

pub fn batch(rows: &[Metric]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| &r.classifier)),
        strings(rows.iter().map(|r| &r.model)),
        opt_strings(rows.iter().map(|r| r.identity.as_deref())),
        Arc::new(rows.iter().map(|r| r.protected).collect::<BooleanArray>()),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.top_k))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.n_test))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.accuracy))),
        Arc::new(rows.iter().map(|r| r.protection_rate()).collect::<Float64Array>()),
    ];
    super::batch(METRICS, None, columns)
}

pub fn read(batches: &[RecordBatch]) -> Result<Vec<Metric>> {
    rows(batches)
        .map(|(b, i)| {
            let (who, protected) = (column::<StringArray>(b, "identity")?, column::<BooleanArray>(b, "protected")?);
            Ok(Metric {
                classifier: column::<StringArray>(b, "classifier")?.value(i).to_owned(),
                model: column::<StringArray>(b, "model")?.value(i).to_owned(),
                identity: who.is_valid(i).then(|| who.value(i).to_owned()),
                protected: protected.is_valid(i).then(|| protected.value(i)),
                top_k: column::<Int32Array>(b, "top_k")?.value(i),
                n_test: column::<Int64Array>(b, "n_test")?.value(i),
                accuracy: column::<Float64Array>(b, "accuracy")?.value(i),
            })
        })
        .collect()
}
