//! The `detect_cloaks` stage: can a trainer tell cloaked pictures from clean ones and drop them?
//! Detectors are trained on the public identities' pictures, each cloaked copy beside its clean
//! original, and tested on the evaluated identities' pictures (identities the detector never
//! saw): the protected users' cloaked pictures and every clean picture. Two detectors:
//! - `residual_probe`: a linear probe on statistics of the face crop's high-frequency residual
//!   (what is left after a small blur, and its Laplacian: energy, spread, tails, and how the
//!   three channels' residuals correlate), cheap, no network;
//! - `finetuned`: a zoo model fine-tuned as a two-class classifier on the model's own face
//!   crop (the paper's detector is a fine-tuned network: 99.8% precision and recall).
//!
//! A stage trains on the cloaks of its own cell (`cloaked_images`) and tests on each table of
//! `test_cloaked` (by default the same one): wire `test_cloaked = "cloaked_images[*]"` to test
//! every method on a detector trained on another.

use std::collections::HashMap;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::face::align::{Alignment, FaceGeometry};
use crate::io::image::DecodeLimits;
use crate::io::pictures::PictureLoader;
use crate::learn::crops::crop_faces;
use crate::learn::finetune::{ScheduleSetting, check_model, fine_tune};
use crate::learn::linear::{Labelled, Probe, ProbeConfig};
use crate::learn::roc::{auc, precision_recall};
use crate::models::{self, DeviceChoice};
use crate::pipeline::{Context, Kind as StageKind, Labels, Scope, Slot, StageConfig, check, plan_from};
use crate::tables::detections::{self, DETECTION_METRICS, DETECTIONS, Detection, DetectionMetric};
use crate::tables::faces::{self, FACES};
use crate::tables::images::{self, CLOAKED, ImageRow, Picture, Status};
use crate::tables::splits::{self, SPLITS, Splits};

pub const KIND: StageKind = StageKind {
    name: "detect_cloaks",
    source: file!(),
    summary: "cloak detectors trained on the public identities, tested on the evaluated ones: ROC AUC, precision, recall",
    inputs: &[Slot::new("images", images::ANY), Slot::new("cloaked_images", &[CLOAKED]), Slot::new("faces", &[FACES]), Slot::new("splits", &[SPLITS])],
    optional_inputs: &[Slot::new("test_cloaked", &[CLOAKED])],
    outputs: &[Slot::new("detections", &[DETECTIONS]), Slot::new("detection_metrics", &[DETECTION_METRICS])],
    labels: &[],
    scope: Scope::Dataset,
    plan: plan_from::<DetectCloaks>,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    ResidualProbe,
    Finetuned,
}

/// Configuration of the `detect_cloaks` stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectCloaks {
    #[serde(default = "default_detectors")]
    pub detectors: Vec<Detector>,
    /// The zoo model the `finetuned` detector starts from.
    #[serde(default = "default_model")]
    pub model: String,
    /// The `finetuned` detector's schedule: `"cpu"`, `"facecure"` or a table.
    #[serde(default)]
    pub schedule: ScheduleSetting,
    /// The residual probe's training settings.
    #[serde(default)]
    pub probe: ProbeConfig,
    /// Scores at and above this flag a picture as cloaked.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    #[serde(default)]
    pub device: DeviceChoice,
    #[serde(default)]
    pub limits: DecodeLimits,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

fn default_detectors() -> Vec<Detector> {
    vec![Detector::ResidualProbe, Detector::Finetuned]
}
fn default_model() -> String {
    "dlib_resnet29_150".into()
}
fn default_threshold() -> f64 {
    0.5
}
fn default_concurrency() -> usize {
    16
}

/// The crop the residual statistics are taken on: Fawkes' 112x112 square around the face.
const RESIDUAL_CROP: Alignment = Alignment::SquareBox { size: 112, margin: 30.0 };

/// A set of labelled pictures to score: cloaked (label 1) and clean (label 0).
struct Set {
    name: String,
    pictures: Vec<(Picture, usize)>,
}

impl StageConfig for DetectCloaks {
    fn validate(&self) -> Result<(), String> {
        check(!self.detectors.is_empty(), "detectors", &self.detectors, "at least one of residual_probe, finetuned")?;
        if self.detectors.contains(&Detector::Finetuned) {
            check_model(&self.model)?;
            self.schedule.resolve()?;
        }
        self.probe.check()?;
        check(self.threshold > 0.0 && self.threshold < 1.0, "threshold", self.threshold, "a probability between 0 and 1")?;
        check(self.concurrency >= 1, "concurrency", self.concurrency, "at least 1")?;
        self.limits.check()?;
        self.device.check()
    }

    fn fingerprint_material(&self, _log: &dyn Fn(&str)) -> Result<serde_json::Value> {
        match self.detectors.contains(&Detector::Finetuned) {
            true => models::digest(&self.model),
            false => Ok(serde_json::Value::Null),
        }
    }

    fn run(&self, ctx: &mut Context) -> Result<()> {
        let splits = splits::read(&ctx.read("splits")?)?;
        if splits.public.is_empty() {
            bail!("detectors learn from the public identities, and the split names none (set split.public or split.public_count)");
        }
        let clean = images::read(&ctx.read("images")?)?;
        let (train_labels, train_rows) = ctx.read_labelled("cloaked_images")?.into_iter().next().expect("one table in a non-gathered slot");
        let trained_on = cells(&train_labels);
        let train = training_set(&clean, &images::read(&train_rows)?, &splits)?;
        let train_identities: Vec<String> =
            train.pictures.iter().map(|(p, _)| p.identity.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        if let Some(who) = train_identities.iter().find(|who| !splits.public.contains(*who)) {
            bail!("{who}: an evaluated identity's picture would train the detector");
        }
        let tests: Vec<(Labels, Vec<ImageRow>)> = match ctx.has_input("test_cloaked") {
            true => ctx.read_labelled("test_cloaked")?.into_iter().map(|(l, b)| Ok((l, images::read(&b)?))).collect::<Result<_>>()?,
            false => vec![(train_labels.clone(), images::read(&train_rows)?)],
        };
        let clean_test = Set { name: "clean".into(), pictures: evaluated_clean(&clean, &splits)? };
        let cloaked_tests: Vec<Set> =
            tests.iter().map(|(l, rows)| Ok(Set { name: cells(l), pictures: evaluated_cloaked(&clean, rows, &splits)? })).collect::<Result<_>>()?;
        ctx.log(&format!(
            "training on {} public pictures ({trained_on}), testing on {} clean and {:?} cloaked pictures",
            train.pictures.len(),
            clean_test.pictures.len(),
            cloaked_tests.iter().map(|s| (s.name.as_str(), s.pictures.len())).collect::<Vec<_>>()
        ));
        let faces = faces::read(&ctx.read("faces")?)?;
        let mut loader = PictureLoader::new(self.limits.clone(), self.concurrency);
        let (mut rows, mut metrics) = (Vec::new(), Vec::new());
        for &detector in &self.detectors {
            let (name, scorer) = self.train(ctx, detector, &mut loader, &train, &faces)?;
            let clean_scores = scorer.scores(&mut loader, &clean_test, &faces, ctx)?;
            for set in &cloaked_tests {
                let cloaked_scores = scorer.scores(&mut loader, set, &faces, ctx)?;
                let (pos, neg): (Vec<f64>, Vec<f64>) = (cloaked_scores.iter().map(|s| s.1).collect(), clean_scores.iter().map(|s| s.1).collect());
                let (precision, recall) = precision_recall(&pos, &neg, self.threshold);
                metrics.push(DetectionMetric {
                    detector: name.clone(),
                    trained_on: trained_on.clone(),
                    tested_on: set.name.clone(),
                    train_pictures: scorer.trained_on as i64,
                    train_identities: train_identities.join(","),
                    n_cloaked: pos.len() as i64,
                    n_clean: neg.len() as i64,
                    auc: if pos.is_empty() || neg.is_empty() { f64::NAN } else { auc(&pos, &neg) },
                    threshold: self.threshold,
                    precision: precision.is_finite().then_some(precision),
                    recall,
                });
                for ((p, cloaked), score) in set
                    .pictures
                    .iter()
                    .map(|(p, l)| (p, *l == 1))
                    .chain(clean_test.pictures.iter().map(|(p, _)| (p, false)))
                    .zip(cloaked_scores.iter().chain(&clean_scores))
                {
                    debug_assert_eq!(p.image_id, score.0);
                    rows.push(Detection {
                        image_id: p.image_id.clone(),
                        identity: p.identity.clone(),
                        detector: name.clone(),
                        trained_on: trained_on.clone(),
                        tested_on: set.name.clone(),
                        cloaked,
                        score: score.1,
                        flagged: score.1 >= self.threshold,
                    });
                }
            }
        }
        for m in &metrics {
            ctx.report.push(format!(
                "detect_cloaks: {} trained on {}, tested on {}: AUC {:.3}, precision {}, recall {:.3} at {} ({} cloaked, {} clean)",
                m.detector,
                m.trained_on,
                m.tested_on,
                m.auc,
                m.precision.map_or("-".into(), |p| format!("{p:.3}")),
                m.recall,
                m.threshold,
                m.n_cloaked,
                m.n_clean
            ));
        }
        let (d, m) = (detections::batch(&rows)?, detections::metrics_batch(&metrics)?);
        ctx.write("detections", d.schema(), &[d])?;
        ctx.write("detection_metrics", m.schema(), &[m])?;
        Ok(())
    }
}

/// A cell's fan-out values (method, mode) as one name, as `fawkes-high`.
fn cells(labels: &Labels) -> String {
    let keys = ["method", "mode"];
    let values: Vec<&str> = keys.iter().filter_map(|k| labels.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())).collect();
    if values.is_empty() { "cloaks".into() } else { values.join("-") }
}

/// The public identities' cloaked pictures (label 1), each with its clean original (label 0).
fn training_set(clean: &[ImageRow], cloaked: &[ImageRow], splits: &Splits) -> Result<Set> {
    let originals: HashMap<&str, &ImageRow> = clean.iter().map(|r| (r.image_id.as_str(), r)).collect();
    let mut pictures = Vec::new();
    let replaced = images::replaced(clean, cloaked);
    for r in cloaked.iter().filter(|r| r.status == Status::Ok && replaced.contains(&r.image_id) && splits.public.contains(&r.identity)) {
        pictures.push((r.picture()?, 1));
        if let Some(o) = originals.get(r.image_id.as_str()).filter(|o| o.status == Status::Ok) {
            pictures.push((o.picture()?, 0));
        }
    }
    if pictures.is_empty() {
        bail!("no cloaked picture of a public identity to train a detector on (set the cloak stage's public_pictures)");
    }
    Ok(Set { name: "train".into(), pictures })
}

/// Every clean picture of an evaluated (not public) identity.
fn evaluated_clean(clean: &[ImageRow], splits: &Splits) -> Result<Vec<(Picture, usize)>> {
    clean.iter().filter(|r| r.status == Status::Ok && !splits.public.contains(&r.identity)).map(|r| Ok((r.picture()?, 0))).collect()
}

/// The cloaked pictures of evaluated identities (those `rows` holds in place of `clean`'s).
fn evaluated_cloaked(clean: &[ImageRow], rows: &[ImageRow], splits: &Splits) -> Result<Vec<(Picture, usize)>> {
    let replaced = images::replaced(clean, rows);
    rows.iter()
        .filter(|r| r.status == Status::Ok && replaced.contains(&r.image_id) && !splits.public.contains(&r.identity))
        .map(|r| Ok((r.picture()?, 1)))
        .collect()
}

/// A trained detector.
struct Scorer {
    kind: Scoring,
    alignment: Alignment,
    trained_on: usize,
}

enum Scoring {
    Probe(Probe),
    Network(crate::learn::finetune::Tuned),
}

impl Scorer {
    /// (image id, probability cloaked) of each picture of `set` with a face; the others are
    /// counted as skipped.
    fn scores(&self, loader: &mut PictureLoader, set: &Set, faces: &HashMap<String, Vec<FaceGeometry>>, ctx: &mut Context) -> Result<Vec<(String, f64)>> {
        if set.pictures.is_empty() {
            return Ok(vec![]);
        }
        let (crops, left_out) = crop_faces(loader, &set.pictures, faces, self.alignment)?;
        for why in left_out {
            ctx.skip(format!("{why}: not scored"));
        }
        let mut out = Vec::new();
        for (start, batch) in (0..crops.len()).step_by(64).zip(crops.batches(64)) {
            let logits = match &self.kind {
                Scoring::Probe(p) => p.logits(&residual_features(&batch)),
                Scoring::Network(t) => t.logits(&batch)?,
            };
            let p: Vec<f64> = Vec::try_from(logits.softmax(1, Kind::Double).select(1, 1)).expect("f64 probabilities");
            out.extend(crops.ids[start..].iter().cloned().zip(p));
        }
        Ok(out)
    }
}

impl DetectCloaks {
    fn train(
        &self,
        ctx: &mut Context,
        detector: Detector,
        loader: &mut PictureLoader,
        train: &Set,
        faces: &HashMap<String, Vec<FaceGeometry>>,
    ) -> Result<(String, Scorer)> {
        match detector {
            Detector::ResidualProbe => {
                let (crops, _) = crop_faces(loader, &train.pictures, faces, RESIDUAL_CROP)?;
                let features = Tensor::cat(&crops.batches(64).map(|b| residual_features(&b)).collect::<Vec<_>>(), 0);
                let probe = Probe::fit(&Labelled { ids: crops.ids.clone(), features, labels: crops.labels.clone() }, 2, &self.probe, Device::Cpu)?;
                Ok(("residual_probe".into(), Scorer { kind: Scoring::Probe(probe), alignment: RESIDUAL_CROP, trained_on: crops.len() }))
            }
            Detector::Finetuned => {
                let schedule = self.schedule.resolve().map_err(anyhow::Error::msg)?;
                let alignment = Alignment::from_card(&models::card(&self.model)?)?;
                let (crops, _) = crop_faces(loader, &train.pictures, faces, alignment)?;
                let tuned =
                    fine_tune(&self.model, None, self.device.resolve()?, &crops, 2, &schedule, &ctx.checkpoints(), ctx.progress(schedule.steps(), "steps"))?;
                Ok((format!("finetuned_{}", self.model), Scorer { kind: Scoring::Network(tuned), alignment, trained_on: crops.len() }))
            }
        }
    }
}

/// 21 statistics of a batch of face crops [N, 3, H, W] (0..255) that a cloak's high-frequency
/// perturbation moves: per channel, of the residual after a 3x3 Gaussian blur and of the
/// Laplacian, the log mean magnitude, the log deviation and the kurtosis (tails); and the
/// correlation of the residual between each pair of channels.
pub fn residual_features(x: &Tensor) -> Tensor {
    let x = x.to_kind(Kind::Float) / 255.0;
    let depthwise = |k: &[f32]| Tensor::from_slice(k).view([1, 1, 3, 3]).expand([3, 1, 3, 3], false).to_device(x.device());
    let conv = |t: &Tensor, k: &Tensor| t.reflection_pad2d([1, 1, 1, 1]).conv2d(k, None::<Tensor>, [1, 1], [0, 0], [1, 1], 3);
    let blur = depthwise(&[1.0 / 16.0, 2.0 / 16.0, 1.0 / 16.0, 2.0 / 16.0, 4.0 / 16.0, 2.0 / 16.0, 1.0 / 16.0, 2.0 / 16.0, 1.0 / 16.0]);
    let laplace = depthwise(&[0.0, 1.0, 0.0, 1.0, -4.0, 1.0, 0.0, 1.0, 0.0]);
    let residual = &x - conv(&x, &blur);
    let lap = conv(&x, &laplace);
    let n = x.size()[0];
    let stats = |t: &Tensor| {
        let flat = t.view([n, 3, -1]);
        let mean_abs = flat.abs().mean_dim([2i64].as_slice(), false, Kind::Float);
        let centred = &flat - flat.mean_dim([2i64].as_slice(), true, Kind::Float);
        let var = centred.square().mean_dim([2i64].as_slice(), false, Kind::Float);
        let kurtosis = centred.pow_tensor_scalar(4).mean_dim([2i64].as_slice(), false, Kind::Float) / (var.square() + 1e-12);
        Tensor::cat(&[(mean_abs + 1e-6).log(), (var.sqrt() + 1e-6).log(), (kurtosis + 1.0).log()], 1)
    };
    let flat = residual.view([n, 3, -1]);
    let centred = &flat - flat.mean_dim([2i64].as_slice(), true, Kind::Float);
    let norm = centred.square().sum_dim_intlist([2i64].as_slice(), false, Kind::Float).sqrt() + 1e-9;
    let corr = |a: i64, b: i64| {
        (centred.select(1, a) * centred.select(1, b)).sum_dim_intlist([1i64].as_slice(), false, Kind::Float) / (norm.select(1, a) * norm.select(1, b))
    };
    Tensor::cat(&[stats(&residual), stats(&lap), Tensor::stack(&[corr(0, 1), corr(1, 2), corr(0, 2)], 1)], 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residual_features_see_high_frequency_noise() {
        tch::manual_seed(0);
        let smooth = Tensor::linspace(0.0, 255.0, 112, (Kind::Float, Device::Cpu)).view([1, 1, 1, 112]).expand([4, 3, 112, 112], false).contiguous();
        let noisy = (&smooth + Tensor::randn([4, 3, 112, 112], (Kind::Float, Device::Cpu)) * 4.0).clamp(0.0, 255.0);
        let (a, b) = (residual_features(&smooth), residual_features(&noisy));
        assert_eq!(a.size(), [4, 21]);
        assert!(
            b.select(1, 0).mean(Kind::Float).double_value(&[]) > a.select(1, 0).mean(Kind::Float).double_value(&[]) + 1.0,
            "noise raises the residual's energy"
        );
    }

    #[test]
    fn a_cell_is_named_by_its_method_and_mode() {
        let labels = vec![("dataset".into(), "x".into()), ("method".into(), "fawkes".into()), ("mode".into(), "high".into())];
        assert_eq!(cells(&labels), "fawkes-high");
    }
}
