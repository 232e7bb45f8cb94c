//! `detections` and `detection_metrics`: what the cloak detectors said about each test picture,
//! and how well they separate cloaked from clean (the `detect_cloaks` stage).

use std::sync::Arc;

use anyhow::Result;
use arrow_array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};

use super::{column, rows, strings};

pub const DETECTIONS: &str = "detections";
pub const DETECTION_METRICS: &str = "detection_metrics";

/// One test picture under one detector.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub image_id: String,
    pub identity: String,
    pub detector: String,
    pub trained_on: String,
    pub tested_on: String,
    pub cloaked: bool,
    pub score: f64,
    pub flagged: bool,
}

pub fn batch(rows: &[Detection]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| &r.image_id)),
        strings(rows.iter().map(|r| &r.identity)),
        strings(rows.iter().map(|r| &r.detector)),
        strings(rows.iter().map(|r| &r.trained_on)),
        strings(rows.iter().map(|r| &r.tested_on)),
        Arc::new(rows.iter().map(|r| Some(r.cloaked)).collect::<BooleanArray>()),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.score))),
        Arc::new(rows.iter().map(|r| Some(r.flagged)).collect::<BooleanArray>()),
    ];
    super::batch(DETECTIONS, None, columns)
}

/// Every picture's score.
pub fn read(batches: &[RecordBatch]) -> Result<Vec<Detection>> {
    rows(batches)
        .map(|(b, i)| {
            let s = |name| column::<StringArray>(b, name).map(|c| c.value(i).to_owned());
            let flag = |name| column::<BooleanArray>(b, name).map(|c| c.value(i));
            Ok(Detection {
                image_id: s("image_id")?,
                identity: s("identity")?,
                detector: s("detector")?,
                trained_on: s("trained_on")?,
                tested_on: s("tested_on")?,
                cloaked: flag("cloaked")?,
                score: column::<Float64Array>(b, "score")?.value(i),
                flagged: flag("flagged")?,
            })
        })
        .collect()
}

/// One detector on one pair of cloaks.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectionMetric {
    pub detector: String,
    pub trained_on: String,
    pub tested_on: String,
    pub train_pictures: i64,
    pub train_identities: String,
    pub n_cloaked: i64,
    pub n_clean: i64,
    pub auc: f64,
    pub threshold: f64,
    pub precision: Option<f64>,
    pub recall: f64,
}

pub fn metrics_batch(rows: &[DetectionMetric]) -> Result<RecordBatch> {
    let f = |v: fn(&DetectionMetric) -> f64| Arc::new(Float64Array::from_iter_values(rows.iter().map(v))) as ArrayRef;
    let i = |v: fn(&DetectionMetric) -> i64| Arc::new(Int64Array::from_iter_values(rows.iter().map(v))) as ArrayRef;
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| &r.detector)),
        strings(rows.iter().map(|r| &r.trained_on)),
        strings(rows.iter().map(|r| &r.tested_on)),
        i(|r| r.train_pictures),
        strings(rows.iter().map(|r| &r.train_identities)),
        i(|r| r.n_cloaked),
        i(|r| r.n_clean),
        f(|r| r.auc),
        f(|r| r.threshold),
        Arc::new(rows.iter().map(|r| r.precision).collect::<Float64Array>()),
        f(|r| r.recall),
    ];
    super::batch(DETECTION_METRICS, None, columns)
}

pub fn read_metrics(batches: &[RecordBatch]) -> Result<Vec<DetectionMetric>> {
    rows(batches)
        .map(|(b, i)| {
            let s = |name| column::<StringArray>(b, name).map(|c| c.value(i).to_owned());
            let f = |name| column::<Float64Array>(b, name).map(|c| c.value(i));
            let n = |name| column::<Int64Array>(b, name).map(|c| c.value(i));
            let precision = column::<Float64Array>(b, "precision")?;
            Ok(DetectionMetric {
                detector: s("detector")?,
                trained_on: s("trained_on")?,
                tested_on: s("tested_on")?,
                train_pictures: n("train_pictures")?,
                train_identities: s("train_identities")?,
                n_cloaked: n("n_cloaked")?,
                n_clean: n("n_clean")?,
                auc: f("auc")?,
                threshold: f("threshold")?,
                precision: precision.is_valid(i).then(|| precision.value(i)),
                recall: f("recall")?,
            })
        })
        .collect()
}
