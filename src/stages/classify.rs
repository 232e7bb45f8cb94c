//! The `classify` stage: the trainer fits classifiers on the embeddings of the training split
//! and predicts every test picture.
//!
//! - `nearest_neighbour`: 1-NN by Euclidean distance on the raw embeddings.
//! - `linear_probe`: standardise with the training mean and deviation, then softmax regression
//!   (multinomial logistic regression) trained full-batch with Adam and weight decay, in tch.
//!   The FaceCure evaluation uses standardise + logistic regression; this is that model.

use std::collections::HashMap;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::learn::linear::{Labelled, ProbeConfig, linear_probe, nearest_neighbour};
use crate::models::DeviceChoice;
use crate::pipeline::{Context, Kind, Scope, Slot, StageConfig, check, plan_from};
use crate::tables::embeddings::{self, EMBEDDINGS};
use crate::tables::predictions::{self, PREDICTIONS, Prediction};
use crate::tables::splits::{self, SPLITS, Side};

pub const KIND: Kind = Kind {
    name: "classify",
    source: file!(),
    summary: "fit 1-NN and a linear probe on training embeddings; predict the test split",
    inputs: &[Slot::new("splits", &[SPLITS]), Slot::new("embeddings", &[EMBEDDINGS])],
    optional_inputs: &[],
    outputs: &[Slot::new("predictions", &[PREDICTIONS])],
    labels: &[],
    scope: Scope::Dataset,
    plan: plan_from::<Classify>,
};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Classifier {
    NearestNeighbour,
    LinearProbe,
}

impl Classifier {
    pub fn name(self) -> &'static str {
        match self {
            Classifier::NearestNeighbour => "nearest_neighbour",
            Classifier::LinearProbe => "linear_probe",
        }
    }
}

/// Configuration of the `classify` stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Classify {
    #[serde(default = "default_classifiers")]
    pub classifiers: Vec<Classifier>,
    #[serde(default)]
    pub probe: ProbeConfig,
    #[serde(default)]
    pub device: DeviceChoice,
}

fn default_classifiers() -> Vec<Classifier> {
    vec![Classifier::NearestNeighbour, Classifier::LinearProbe]
}

impl StageConfig for Classify {
    fn validate(&self) -> Result<(), String> {
        check(!self.classifiers.is_empty(), "classifiers", &self.classifiers, "at least one of nearest_neighbour, linear_probe")?;
        self.probe.check()?;
        self.device.check()
    }

    fn run(&self, ctx: &mut Context) -> Result<()> {
        let device = self.device.resolve()?;
        let splits = splits::read(&ctx.read("splits")?)?;
        // Public identities are the trainer's learning material, never the task.
        let identities = splits.evaluated();
        let index: HashMap<&str, usize> = identities.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
        let mut rows = Vec::new();
        for m in embeddings::read(&ctx.read("embeddings")?)? {
            let (train, test) = partition(&m.ids, &m.features, &splits.by_image, &index)?;
            for &classifier in &self.classifiers {
                let guesses = match classifier {
                    Classifier::NearestNeighbour => nearest_neighbour(&train, &test, identities.len(), device),
                    Classifier::LinearProbe => linear_probe(&train, &test, identities.len(), &self.probe, device)?,
                };
                rows.extend(test.ids.iter().zip(&test.labels).zip(guesses).map(|((id, &truth), g)| Prediction {
                    image_id: id.clone(),
                    classifier: classifier.name().to_owned(),
                    model: m.model.clone(),
                    identity: identities[truth].clone(),
                    predicted: identities[g.class].clone(),
                    rank: g.rank as i32,
                }));
            }
        }
        let batch = predictions::batch(&rows)?;
        ctx.write("predictions", batch.schema(), &[batch])?;
        Ok(())
    }
}

/// Splits one model's embeddings into labelled train and test sets (pictures not in the split
/// table are ignored: they were not part of this experiment).
fn partition(ids: &[String], features: &Tensor, splits: &HashMap<String, (String, Side)>, index: &HashMap<&str, usize>) -> Result<(Labelled, Labelled)> {
    let mut sets = [(vec![], vec![], vec![]), (vec![], vec![], vec![])];
    for (row, id) in ids.iter().enumerate() {
        if let Some((who, side)) = splits.get(id)
            && let Some(&label) = index.get(who.as_str())
        {
            let set = &mut sets[if *side == Side::Train { 0 } else { 1 }];
            set.0.push(id.clone());
            set.1.push(row as i64);
            set.2.push(label);
        }
    }
    let [train, test] = sets.map(|(ids, rows, labels)| Labelled { ids, features: features.index_select(0, &Tensor::from_slice(&rows)), labels });
    if train.ids.is_empty() || test.ids.is_empty() {
        bail!("need both train and test embeddings (got {} train, {} test)", train.ids.len(), test.ids.len());
    }
    Ok((train, test))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_classifier_list_cannot_be_empty() {
        let err = plan_from::<Classify>(toml::from_str("classifiers = []").unwrap()).err().unwrap();
        assert!(err.starts_with("classifiers = []"), "{err}");
    }
}
