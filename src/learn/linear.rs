//! Classifiers a trainer fits on frozen embeddings, as FaceCure evaluates them:
//! 1-nearest-neighbour by Euclidean distance, and the linear probe (standardise with the
//! training mean and deviation, then softmax regression trained full-batch with Adam and weight
//! decay). Each guess carries the rank of the true identity among all identities (1 = the
//! guess), for LowKey's rank-k accuracy.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn, nn::OptimizerConfig};

/// Labelled embeddings of one split.
pub struct Labelled {
    pub ids: Vec<String>,
    /// [N, D]
    pub features: Tensor,
    pub labels: Vec<usize>,
}

/// A classifier's answer for one test row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guess {
    pub class: usize,
    /// Where the true class stands among all classes by the classifier's score (1 = best).
    pub rank: usize,
}

/// 1-NN by Euclidean distance; a class's score is minus its nearest training row's distance.
pub fn nearest_neighbour(train: &Labelled, test: &Labelled, n_classes: usize, device: Device) -> Vec<Guess> {
    let distances = Tensor::cdist(&test.features.to_device(device), &train.features.to_device(device), 2.0, None).to_device(Device::Cpu);
    let nearest = Vec::<i64>::try_from(distances.argmin(1, false)).expect("int64 indices");
    // [T, C]: the distance to each class's nearest training row (infinite for a class with none).
    let per_class = Tensor::full([test.labels.len() as i64, n_classes as i64], f64::INFINITY, (Kind::Float, Device::Cpu));
    for c in 0..n_classes {
        let columns: Vec<i64> = train.labels.iter().enumerate().filter(|(_, l)| **l == c).map(|(i, _)| i as i64).collect();
        if !columns.is_empty() {
            let d = distances.index_select(1, &Tensor::from_slice(&columns)).amin([1i64].as_slice(), false);
            per_class.narrow(1, c as i64, 1).copy_(&d.unsqueeze(1));
        }
    }
    let ranks = ranks(&-per_class, &test.labels);
    nearest.into_iter().zip(ranks).map(|(j, rank)| Guess { class: train.labels[j as usize], rank }).collect()
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

impl ProbeConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.epochs < 1 || self.learning_rate <= 0.0 || self.weight_decay < 0.0 {
            return Err(format!("probe = {self:?}: epochs must be at least 1, learning_rate positive, weight_decay 0 or more"));
        }
        Ok(())
    }
}

/// A fitted probe: standardisation and a softmax layer.
pub struct Probe {
    mean: Tensor,
    std: Tensor,
    layer: nn::Linear,
    _vs: nn::VarStore,
    device: Device,
}

impl Probe {
    /// Fits standardise + softmax regression on `train`.
    pub fn fit(train: &Labelled, n_classes: usize, cfg: &ProbeConfig, device: Device) -> Result<Probe> {
        tch::manual_seed(cfg.seed);
        let x = train.features.to_device(device);
        let mean = x.mean_dim(0, true, Kind::Float);
        let std = x.std_dim(0, false, true) + 1e-6;
        let xs = (&x - &mean) / &std;
        let y = Tensor::from_slice(&train.labels.iter().map(|&l| l as i64).collect::<Vec<_>>()).to_device(device);
        let vs = nn::VarStore::new(device);
        let layer = nn::linear(vs.root(), xs.size()[1], n_classes as i64, Default::default());
        let mut opt = nn::Adam { wd: cfg.weight_decay, ..Default::default() }.build(&vs, cfg.learning_rate)?;
        for _ in 0..cfg.epochs {
            let loss = xs.apply(&layer).cross_entropy_for_logits(&y);
            opt.backward_step(&loss);
        }
        Ok(Probe { mean, std, layer, _vs: vs, device })
    }

    /// The probe as one linear layer on raw features: (weight [C, D], bias [C]) with the
    /// standardisation folded in, so that `x W^T + b` equals [`Probe::logits`].
    pub fn folded(&self) -> (Tensor, Tensor) {
        tch::no_grad(|| {
            let std = self.std.to_device(Device::Cpu);
            let mean = self.mean.to_device(Device::Cpu);
            let weight = self.layer.ws.to_device(Device::Cpu) / &std;
            let bias = self.layer.bs.as_ref().expect("the probe's layer has a bias").to_device(Device::Cpu) - mean.matmul(&weight.tr()).squeeze_dim(0);
            (weight, bias)
        })
    }

    /// Class logits [N, C] of `features`.
    pub fn logits(&self, features: &Tensor) -> Tensor {
        tch::no_grad(|| ((features.to_device(self.device) - &self.mean) / &self.std).apply(&self.layer)).to_device(Device::Cpu)
    }
}

/// Standardise + softmax regression; the guess for every test row.
pub fn linear_probe(train: &Labelled, test: &Labelled, n_classes: usize, cfg: &ProbeConfig, device: Device) -> Result<Vec<Guess>> {
    let logits = Probe::fit(train, n_classes, cfg, device)?.logits(&test.features);
    Ok(guesses(&logits, &test.labels))
}

/// The best class of each row of `scores` [N, C] (higher is better) and the true class's rank.
pub fn guesses(scores: &Tensor, truth: &[usize]) -> Vec<Guess> {
    let best = Vec::<i64>::try_from(scores.argmax(1, false)).expect("int64 indices");
    best.into_iter().zip(ranks(scores, truth)).map(|(c, rank)| Guess { class: c as usize, rank }).collect()
}

/// 1 + the number of classes scoring strictly higher than the true one, per row.
pub fn ranks(scores: &Tensor, truth: &[usize]) -> Vec<usize> {
    let scores = scores.to_kind(Kind::Float).to_device(Device::Cpu);
    let own = scores.gather(1, &Tensor::from_slice(&truth.iter().map(|&t| t as i64).collect::<Vec<_>>()).unsqueeze(1), false);
    let higher = scores.gt_tensor(&own).sum_dim_intlist([1i64].as_slice(), false, Kind::Int64);
    Vec::<i64>::try_from(higher).expect("int64 counts").into_iter().map(|h| h as usize + 1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two well-separated Gaussian blobs: both classifiers must get them right.
    fn blobs(n: usize, seed: i64) -> Labelled {
        tch::manual_seed(seed);
        let labels: Vec<usize> = (0..n).map(|i| i % 2).collect();
        let centres = Tensor::from_slice(&labels.iter().map(|&l| if l == 0 { -3f32 } else { 3f32 }).collect::<Vec<_>>()).view([n as i64, 1]);
        let features = Tensor::randn([n as i64, 8], (Kind::Float, Device::Cpu)) + centres;
        Labelled { ids: (0..n).map(|i| i.to_string()).collect(), features, labels }
    }

    #[test]
    fn classifiers_separate_separable_data() {
        let (train, test) = (blobs(40, 1), blobs(20, 2));
        let nn = nearest_neighbour(&train, &test, 2, Device::Cpu);
        assert!(nn.iter().zip(&test.labels).all(|(g, &t)| g.class == t && g.rank == 1));
        let probe = linear_probe(&train, &test, 2, &ProbeConfig::default(), Device::Cpu).unwrap();
        assert!(probe.iter().zip(&test.labels).all(|(g, &t)| g.class == t && g.rank == 1));
    }

    #[test]
    fn the_folded_probe_gives_the_same_logits() {
        let train = blobs(40, 3);
        let probe = Probe::fit(&train, 2, &ProbeConfig::default(), Device::Cpu).unwrap();
        let (weight, bias) = probe.folded();
        let folded = train.features.matmul(&weight.tr()) + bias;
        let diff = (folded - probe.logits(&train.features)).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{diff}");
    }

    #[test]
    fn nearest_neighbour_is_not_fooled_by_label_order() {
        let train = Labelled { ids: vec!["a".into(), "b".into()], features: Tensor::from_slice(&[0f32, 10.]).view([2, 1]), labels: vec![1, 0] };
        let test = Labelled { ids: vec!["t".into()], features: Tensor::from_slice(&[9f32]).view([1, 1]), labels: vec![1] };
        assert_eq!(nearest_neighbour(&train, &test, 2, Device::Cpu), vec![Guess { class: 0, rank: 2 }]);
    }

    #[test]
    fn ranks_count_the_classes_ahead_of_the_truth() {
        let scores = Tensor::from_slice(&[0.1f32, 0.7, 0.2, 0.5, 0.4, 0.3]).view([2, 3]);
        assert_eq!(ranks(&scores, &[1, 2]), vec![1, 3]);
        assert_eq!(ranks(&scores, &[2, 0]), vec![2, 1]);
    }
}
