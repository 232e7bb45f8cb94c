//! `predictions`: what each classifier predicted for every test picture (the `classify` stage).

use std::sync::Arc;

use anyhow::Result;
use arrow_array::{ArrayRef, BooleanArray, Int32Array, RecordBatch, StringArray};

use super::{column, rows, strings};

pub const PREDICTIONS: &str = "predictions";

/// One prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub image_id: String,
    pub classifier: String,
    pub model: String,
    pub identity: String,
    pub predicted: String,
    /// Where the true identity stood among all identities by the classifier's score (1 = best).
    pub rank: i32,
}

impl Prediction {
    pub fn correct(&self) -> bool {
        self.identity == self.predicted
    }
}

pub fn batch(rows: &[Prediction]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| &r.image_id)),
        strings(rows.iter().map(|r| &r.classifier)),
        strings(rows.iter().map(|r| &r.model)),
        strings(rows.iter().map(|r| &r.identity)),
        strings(rows.iter().map(|r| &r.predicted)),
        Arc::new(rows.iter().map(|r| Some(r.correct())).collect::<BooleanArray>()),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.rank))),
    ];
    super::batch(PREDICTIONS, None, columns)
}

pub fn read(batches: &[RecordBatch]) -> Result<Vec<Prediction>> {
    rows(batches)
        .map(|(b, i)| {
            let s = |name| column::<StringArray>(b, name).map(|c| c.value(i).to_owned());
            Ok(Prediction {
                image_id: s("image_id")?,
                classifier: s("classifier")?,
                model: s("model")?,
                identity: s("identity")?,
                predicted: s("predicted")?,
                rank: column::<Int32Array>(b, "rank")?.value(i),
            })
        })
        .collect()
}
