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
use tch::{Device, Kind as DType, Tensor, nn, nn::OptimizerConfig};

use crate::models::DeviceChoice;
use crate::pipeline::{Context, Kind, Slot, StageConfig, check, plan_from};
use crate::tables::embeddings::{self, EMBEDDINGS};
use crate::tables::predictions::{self, PREDICTIONS, Prediction};
use crate::tables::splits::{self, SPLITS, Side};

pub const KIND: Kind = Kind {
    name: "classify",
    summary: "fit 1-NN and a linear probe on training embeddings; predict the test split",
    inputs: &[Slot::new("splits", &[SPLITS]), Slot::new("embeddings", &[EMBEDDINGS])],
    optional_inputs: &[],
    outputs: &[Slot::new("predictions", &[PREDICTIONS])],
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

/// Training settings of the linear probe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    pub epochs: i64,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub seed: i64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig { epochs: 300, learning_rate: 0.01, weight_decay: 1e-3, seed: 0 }
    }
}

fn default_classifiers() -> Vec<Classifier> {
    vec![Classifier::NearestNeighbour, Classifier::LinearProbe]
}

/// Labelled embeddings of one split.
pub struct Labelled {
    pub ids: Vec<String>,
    pub features: Tensor,
    pub labels: Vec<usize>,
}

impl StageConfig for Classify {
    fn validate(&self) -> Result<(), String> {
        check(!self.classifiers.is_empty(), "classifiers", &self.classifiers, "at least one of nearest_neighbour, linear_probe")?;
        check(self.probe.epochs >= 1, "probe.epochs", self.probe.epochs, "at least 1")?;
        check(self.probe.learning_rate > 0.0, "probe.learning_rate", self.probe.learning_rate, "positive")?;
        check(self.probe.weight_decay >= 0.0, "probe.weight_decay", self.probe.weight_decay, "0 or more")?;
        self.device.check()
    }

    fn run(&self, ctx: &mut Context) -> Result<()> {
        let device = self.device.resolve()?;
        let splits = splits::read(&ctx.read("splits")?)?;
        let identities = splits.identities();
        let index: HashMap<&str, usize> = identities.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
        let mut rows = Vec::new();
        for m in embeddings::read(&ctx.read("embeddings")?)? {
            let (train, test) = partition(&m.ids, &m.features, &splits.by_image, &index)?;
            for &classifier in &self.classifiers {
                let predicted = match classifier {
                    Classifier::NearestNeighbour => nearest_neighbour(&train, &test, device),
                    Classifier::LinearProbe => linear_probe(&train, &test, identities.len(), &self.probe, device)?,
                };
                rows.extend(test.ids.iter().zip(&test.labels).zip(predicted).map(|((id, &truth), p)| Prediction {
                    image_id: id.clone(),
                    classifier: classifier.name().to_owned(),
                    model: m.model.clone(),
                    identity: identities[truth].clone(),
                    predicted: identities[p].clone(),
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
        if let Some((who, side)) = splits.get(id) {
            let set = &mut sets[if *side == Side::Train { 0 } else { 1 }];
            set.0.push(id.clone());
            set.1.push(row as i64);
            set.2.push(index[who.as_str()]);
        }
    }
    let [train, test] = sets.map(|(ids, rows, labels)| Labelled { ids, features: features.index_select(0, &Tensor::from_slice(&rows)), labels });
    if train.ids.is_empty() || test.ids.is_empty() {
        bail!("need both train and test embeddings (got {} train, {} test)", train.ids.len(), test.ids.len());
    }
    Ok((train, test))
}

/// 1-NN by Euclidean distance.
pub fn nearest_neighbour(train: &Labelled, test: &Labelled, device: Device) -> Vec<usize> {
    let distances = Tensor::cdist(&test.features.to_device(device), &train.features.to_device(device), 2.0, None);
    let nearest = Vec::<i64>::try_from(distances.argmin(1, false).to_device(Device::Cpu)).expect("int64 indices");
    nearest.into_iter().map(|j| train.labels[j as usize]).collect()
}

/// Standardise + softmax regression; returns the predicted class of every test row.
pub fn linear_probe(train: &Labelled, test: &Labelled, n_classes: usize, cfg: &ProbeConfig, device: Device) -> Result<Vec<usize>> {
    tch::manual_seed(cfg.seed);
    let x = train.features.to_device(device);
    let mean = x.mean_dim(0, true, DType::Float);
    let std = x.std_dim(0, false, true) + 1e-6;
    let standardise = |t: &Tensor| (t.to_device(device) - &mean) / &std;
    let (xs, xt) = (standardise(&x), standardise(&test.features));
    let y = Tensor::from_slice(&train.labels.iter().map(|&l| l as i64).collect::<Vec<_>>()).to_device(device);
    let vs = nn::VarStore::new(device);
    let layer = nn::linear(vs.root(), xs.size()[1], n_classes as i64, Default::default());
    let mut opt = nn::Adam { wd: cfg.weight_decay, ..Default::default() }.build(&vs, cfg.learning_rate)?;
    for _ in 0..cfg.epochs {
        let loss = xs.apply(&layer).cross_entropy_for_logits(&y);
        opt.backward_step(&loss);
    }
    let predicted = tch::no_grad(|| xt.apply(&layer).argmax(1, false)).to_device(Device::Cpu);
    Ok(Vec::<i64>::try_from(predicted)?.into_iter().map(|p| p as usize).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two well-separated Gaussian blobs: both classifiers must get them right.
    fn blobs(n: usize, seed: i64) -> Labelled {
        tch::manual_seed(seed);
        let labels: Vec<usize> = (0..n).map(|i| i % 2).collect();
        let centres = Tensor::from_slice(&labels.iter().map(|&l| if l == 0 { -3f32 } else { 3f32 }).collect::<Vec<_>>()).view([n as i64, 1]);
        let features = Tensor::randn([n as i64, 8], (DType::Float, Device::Cpu)) + centres;
        Labelled { ids: (0..n).map(|i| i.to_string()).collect(), features, labels }
    }

    #[test]
    fn classifiers_separate_separable_data() {
        let (train, test) = (blobs(40, 1), blobs(20, 2));
        assert_eq!(nearest_neighbour(&train, &test, Device::Cpu), test.labels);
        let probe = linear_probe(&train, &test, 2, &ProbeConfig::default(), Device::Cpu).unwrap();
        assert_eq!(probe, test.labels);
    }

    #[test]
    fn nearest_neighbour_is_not_fooled_by_label_order() {
        let train = Labelled { ids: vec!["a".into(), "b".into()], features: Tensor::from_slice(&[0f32, 10.]).view([2, 1]), labels: vec![1, 0] };
        let test = Labelled { ids: vec!["t".into()], features: Tensor::from_slice(&[9f32]).view([1, 1]), labels: vec![0] };
        assert_eq!(nearest_neighbour(&train, &test, Device::Cpu), vec![0]);
    }
}
