//! `bench`: a benchmark's figures, one per row, beside the reference measured with them.

use std::sync::Arc;

use anyhow::Result;
use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};

use super::{column, rows, strings};

pub const BENCH: &str = "bench";

/// One figure of a benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub bench: String,
    pub device: String,
    pub subject: String,
    pub batch_size: Option<i64>,
    pub metric: String,
    pub value: f64,
    pub unit: String,
    pub reference: Option<f64>,
}

impl Figure {
    /// value / reference, in the metric's own unit.
    pub fn ratio(&self) -> Option<f64> {
        self.reference.map(|r| self.value / r)
    }
}

pub fn batch(rows: &[Figure]) -> Result<RecordBatch> {
    let floats = |f: &dyn Fn(&Figure) -> Option<f64>| -> ArrayRef { Arc::new(rows.iter().map(f).collect::<Float64Array>()) };
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| &r.bench)),
        strings(rows.iter().map(|r| &r.device)),
        strings(rows.iter().map(|r| &r.subject)),
        Arc::new(rows.iter().map(|r| r.batch_size).collect::<Int64Array>()),
        strings(rows.iter().map(|r| &r.metric)),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.value))),
        strings(rows.iter().map(|r| &r.unit)),
        floats(&|r| r.reference),
        floats(&|r| r.ratio()),
    ];
    super::batch(BENCH, None, columns)
}

pub fn read(batches: &[RecordBatch]) -> Result<Vec<Figure>> {
    let float = |b: &RecordBatch, name: &str, i: usize| -> Result<Option<f64>> {
        let a = column::<Float64Array>(b, name)?;
        Ok(a.is_valid(i).then(|| a.value(i)))
    };
    rows(batches)
        .map(|(b, i)| {
            let batch_size = column::<Int64Array>(b, "batch_size")?;
            Ok(Figure {
                bench: column::<StringArray>(b, "bench")?.value(i).to_owned(),
                device: column::<StringArray>(b, "device")?.value(i).to_owned(),
                subject: column::<StringArray>(b, "subject")?.value(i).to_owned(),
                batch_size: batch_size.is_valid(i).then(|| batch_size.value(i)),
                metric: column::<StringArray>(b, "metric")?.value(i).to_owned(),
                value: column::<Float64Array>(b, "value")?.value(i),
                unit: column::<StringArray>(b, "unit")?.value(i).to_owned(),
                reference: float(b, "reference", i)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_back_with_their_ratio() {
        let figures = vec![
            Figure {
                bench: "cloak".into(),
                device: "cpu".into(),
                subject: "fawkes high".into(),
                batch_size: Some(4),
                metric: "s_per_picture_step".into(),
                value: 0.5,
                unit: "s".into(),
                reference: Some(0.25),
            },
            Figure {
                bench: "zoo".into(),
                device: "cpu".into(),
                subject: "dlib".into(),
                batch_size: None,
                metric: "lfw_auc".into(),
                value: 0.99,
                unit: "fraction".into(),
                reference: None,
            },
        ];
        let b = batch(&figures).unwrap();
        assert_eq!(read(std::slice::from_ref(&b)).unwrap(), figures);
        let ratio = b.column_by_name("ratio").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!((ratio.value(0), ratio.is_null(1)), (2.0, true));
    }
}
