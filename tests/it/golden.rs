//! Golden tests: every Rust network against embeddings computed by the model's original
//! runtime (`../shared/golden/<model>/`), plus the properties the cloaks rely on: batching does
//! not change outputs, and gradients reach the input.
//!
//! Add a model with one line: `model_tests!(module_name, "model_id");`.

use cloakbench::io::image::{DecodeLimits, decode, to_chw_f32};
use cloakbench::models::{self, FaceModel};
use tch::{Device, Tensor};

use crate::shared;

/// The golden inputs of `model_id` as one [12, 3, H, W] tensor (0..255 RGB), with the golden
/// outputs under `key` of embeddings.json, in the same order.
pub fn golden_batch(model_id: &str, key: &str) -> (Tensor, Vec<Vec<f64>>) {
    let dir = shared(&format!("golden/{model_id}"));
    let golden: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("embeddings.json")).unwrap()).unwrap();
    // `key` may be a path into nested objects: "a/b".
    let entries = key.split('/').fold(&golden, |v, k| &v[k]).as_object().unwrap_or_else(|| panic!("{model_id}: no {key} in embeddings.json"));
    let (mut pixels, mut outputs, mut size) = (Vec::new(), Vec::new(), (0, 0));
    for (file, expected) in entries {
        let rgb = decode(&std::fs::read(dir.join("inputs").join(file)).unwrap(), &DecodeLimits::default()).unwrap().rgb;
        size = (rgb.height() as i64, rgb.width() as i64);
        pixels.extend(to_chw_f32(&rgb));
        outputs.push(expected.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect());
    }
    let n = outputs.len() as i64;
    (Tensor::from_slice(&pixels).view([n, 3, size.0, size.1]), outputs)
}

/// (max abs diff / max |golden|, min cosine) of `model` on the golden inputs, one picture at a time.
pub fn compare(model: &dyn FaceModel, inputs: &Tensor, golden: &[Vec<f64>]) -> (f64, f64) {
    let (mut max_diff, mut max_ref, mut min_cos) = (0f64, 0f64, 1f64);
    for (i, want) in golden.iter().enumerate() {
        let got: Vec<f32> = Vec::try_from(tch::no_grad(|| model.embed(&inputs.narrow(0, i as i64, 1))).unwrap().flatten(0, -1)).unwrap();
        assert_eq!(got.len(), want.len(), "output dimension");
        let (mut dot, mut ng, mut nw) = (0f64, 0f64, 0f64);
        for (g, w) in got.iter().map(|&g| g as f64).zip(want) {
            max_diff = max_diff.max((g - w).abs());
            max_ref = max_ref.max(w.abs());
            dot += g * w;
            ng += g * g;
            nw += w * w;
        }
        min_cos = min_cos.min(dot / (ng.sqrt() * nw.sqrt()));
    }
    (max_diff / max_ref, min_cos)
}

pub fn assert_matches_golden(model_id: &str, key: &str, model: &dyn FaceModel) {
    let (inputs, golden) = golden_batch(model_id, key);
    assert!(golden.len() >= 3, "{model_id}: only {} golden inputs under {key}", golden.len());
    let (rel, cos) = compare(model, &inputs, &golden);
    eprintln!("{model_id} ({key}): max abs diff / max |value| = {rel:.3e}, min cosine = {cos:.8}");
    // The README's claim: every golden input within 5e-6 x max|value|, cosine 1 to 7 places.
    assert!(rel <= 5e-6, "{model_id}: max abs diff ratio {rel:e} > 5e-6");
    assert!(cos >= 0.9999999, "{model_id}: min cosine {cos}");
}

/// Batch of 12 equals 12 batches of 1.
pub fn assert_batch_invariant(model_id: &str, model: &dyn FaceModel) {
    let (inputs, _) = golden_batch(model_id, "embeddings");
    let all = tch::no_grad(|| model.embed(&inputs)).unwrap();
    for i in 0..inputs.size()[0] {
        let one = tch::no_grad(|| model.embed(&inputs.narrow(0, i, 1))).unwrap();
        let scale = one.abs().max().double_value(&[]);
        let diff = (one - all.narrow(0, i, 1)).abs().max().double_value(&[]);
        assert!(diff <= 1e-5 * scale.max(1.0), "{model_id} picture {i}: batch 1 vs batch 12 differ by {diff}");
    }
}

/// d(embedding)/d(pixels) exists, is finite and is not all zero.
pub fn assert_gradients_reach_input(model: &dyn FaceModel) {
    let [h, w] = model.card().input_size;
    tch::manual_seed(0);
    let x = (Tensor::rand([2, 3, h, w], (tch::Kind::Float, Device::Cpu)) * 255.0).set_requires_grad(true);
    model.embed(&x).unwrap().square().sum(tch::Kind::Float).backward();
    let g = x.grad();
    assert_eq!(g.isfinite().all().int64_value(&[]), 1, "{}: non-finite gradient", model.card().id);
    assert!(g.abs().sum(tch::Kind::Float).double_value(&[]) > 0.0, "{}: zero gradient", model.card().id);
}

macro_rules! model_tests {
    ($name:ident, $id:literal) => {
        model_tests!($name, $id, $id, "embeddings");
    };
    // A model id whose golden file lives under another id and key (a second preprocessing).
    ($name:ident, $id:literal, $golden_id:literal, $key:literal) => {
        mod $name {
            use super::*;

            fn model() -> Box<dyn FaceModel> {
                models::load($id, Device::Cpu).unwrap()
            }

            #[test]
            fn matches_golden() {
                assert_matches_golden($golden_id, $key, model().as_ref());
            }

            #[test]
            fn batch_of_one_equals_batch_of_twelve() {
                assert_batch_invariant($golden_id, model().as_ref());
            }

            #[test]
            fn gradients_reach_the_input() {
                assert_gradients_reach_input(model().as_ref());
            }
        }
    };
}

model_tests!(dlib_resnet29_150, "dlib_resnet29_150");
model_tests!(facenet_casia_irv1_160, "facenet_casia_irv1_160");
model_tests!(faceplugin_mbf512_112, "faceplugin_mbf512_112");
model_tests!(mobilefacenet_sirius_tflite_112, "mobilefacenet_sirius_tflite_112");
model_tests!(hse_faceres_mobilenet_224, "hse_faceres_mobilenet_224", "hse_faceres_mobilenet_224", "embeddings_hse_original_preprocessing/embeddings");
model_tests!(hse_faceres_mobilenet_224_rgb255, "hse_faceres_mobilenet_224_rgb255", "hse_faceres_mobilenet_224", "embeddings");
model_tests!(mobileface_becauseofai_112, "mobileface_becauseofai_112");
