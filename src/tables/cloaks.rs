//! `cloaks`: one row per cloaked face, how it was cloaked and what it cost in image quality
//! (the `cloak` stage).

use std::sync::Arc;

use anyhow::Result;
use arrow_array::{Array, ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};

use super::{column, opt_strings, rows, strings};

pub const CLOAKS: &str = "cloaks";

/// One cloaked face.
#[derive(Debug, Clone, PartialEq)]
pub struct CloakRow {
    pub image_id: String,
    pub face_index: i32,
    pub method: String,
    pub mode: String,
    /// The attacker's models, comma-separated.
    pub ensemble: String,
    pub steps: i32,
    pub seed: i64,
    pub dssim: f64,
    pub psnr: f64,
    pub linf: f64,
    pub l2: f64,
    pub within_budget: bool,
    pub seconds: f64,
    pub target: Option<String>,
    pub notes: String,
}

pub fn batch(rows: &[CloakRow]) -> Result<RecordBatch> {
    let f64s = |f: fn(&CloakRow) -> f64| Arc::new(Float64Array::from_iter_values(rows.iter().map(f))) as ArrayRef;
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| &r.image_id)),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.face_index))),
        strings(rows.iter().map(|r| &r.method)),
        strings(rows.iter().map(|r| &r.mode)),
        strings(rows.iter().map(|r| &r.ensemble)),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.steps))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.seed))),
        f64s(|r| r.dssim),
        f64s(|r| r.psnr),
        f64s(|r| r.linf),
        f64s(|r| r.l2),
        Arc::new(rows.iter().map(|r| Some(r.within_budget)).collect::<BooleanArray>()),
        f64s(|r| r.seconds),
        opt_strings(rows.iter().map(|r| r.target.as_deref())),
        strings(rows.iter().map(|r| &r.notes)),
    ];
    super::batch(CLOAKS, None, columns)
}

/// Every cloaked face.
pub fn read(batches: &[RecordBatch]) -> Result<Vec<CloakRow>> {
    rows(batches)
        .map(|(b, i)| {
            let s = |name| column::<StringArray>(b, name).map(|c| c.value(i).to_owned());
            let f = |name| column::<Float64Array>(b, name).map(|c| c.value(i));
            let target = column::<StringArray>(b, "target")?;
            Ok(CloakRow {
                image_id: s("image_id")?,
                face_index: column::<Int32Array>(b, "face_index")?.value(i),
                method: s("method")?,
                mode: s("mode")?,
                ensemble: s("ensemble")?,
                steps: column::<Int32Array>(b, "steps")?.value(i),
                seed: column::<Int64Array>(b, "seed")?.value(i),
                dssim: f("dssim")?,
                psnr: f("psnr")?,
                linf: f("linf")?,
                l2: f("l2")?,
                within_budget: column::<BooleanArray>(b, "within_budget")?.value(i),
                seconds: f("seconds")?,
                target: target.is_valid(i).then(|| target.value(i).to_owned()),
                notes: s("notes")?,
            })
        })
        .collect()
}

/// The image ids of the cloaked faces, and each row's (dssim, psnr, linf, seconds), in order.
pub fn read_figures(batches: &[RecordBatch]) -> Result<Vec<(String, [f64; 4])>> {
    rows(batches)
        .map(|(b, i)| {
            let f = |name| column::<Float64Array>(b, name).map(|c| c.value(i));
            Ok((column::<StringArray>(b, "image_id")?.value(i).to_owned(), [f("dssim")?, f("psnr")?, f("linf")?, f("seconds")?]))
        })
        .collect()
}
