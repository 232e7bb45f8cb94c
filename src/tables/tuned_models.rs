//! `tuned_models`: networks a stage fine-tuned, and where their weights are (the `adapt` stage).

use std::sync::Arc;

use anyhow::{Result, bail};
use arrow_array::{Array, ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};

use super::{column, rows, strings};

pub const TUNED_MODELS: &str = "tuned_models";

/// One fine-tuned network.
#[derive(Debug, Clone, PartialEq)]
pub struct TunedModel {
    pub model: String,
    pub weights_uri: String,
    pub epochs: i32,
    pub steps: i64,
    pub pictures: i64,
    pub identities: i64,
    pub trained_identities: String,
    pub final_loss: f64,
    pub resumed_after_epoch: Option<i32>,
}

pub fn batch(rows: &[TunedModel]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| &r.model)),
        strings(rows.iter().map(|r| &r.weights_uri)),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.epochs))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.steps))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.pictures))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.identities))),
        strings(rows.iter().map(|r| &r.trained_identities)),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.final_loss))),
        Arc::new(rows.iter().map(|r| r.resumed_after_epoch).collect::<Int32Array>()),
    ];
    super::batch(TUNED_MODELS, None, columns)
}

pub fn read(batches: &[RecordBatch]) -> Result<Vec<TunedModel>> {
    rows(batches)
        .map(|(b, i)| {
            let resumed = column::<Int32Array>(b, "resumed_after_epoch")?;
            Ok(TunedModel {
                model: column::<StringArray>(b, "model")?.value(i).to_owned(),
                weights_uri: column::<StringArray>(b, "weights_uri")?.value(i).to_owned(),
                epochs: column::<Int32Array>(b, "epochs")?.value(i),
                steps: column::<Int64Array>(b, "steps")?.value(i),
                pictures: column::<Int64Array>(b, "pictures")?.value(i),
                identities: column::<Int64Array>(b, "identities")?.value(i),
                trained_identities: column::<StringArray>(b, "trained_identities")?.value(i).to_owned(),
                final_loss: column::<Float64Array>(b, "final_loss")?.value(i),
                resumed_after_epoch: resumed.is_valid(i).then(|| resumed.value(i)),
            })
        })
        .collect()
}

/// The one fine-tuned network of `model` in a `tuned_models` table.
pub fn weights_of(batches: &[RecordBatch], model: &str) -> Result<TunedModel> {
    let all = read(batches)?;
    match all.iter().find(|t| t.model == model) {
        Some(t) => Ok(t.clone()),
        None => bail!("the weights table holds no fine-tuned {model} (it holds: {:?})", all.iter().map(|t| &t.model).collect::<Vec<_>>()),
    }
}
