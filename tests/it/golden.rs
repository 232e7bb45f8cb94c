//! Golden tests: our Rust networks against embeddings computed by each model's original
//! runtime (`../shared/golden/<model>/`).

use cloakbench::io::image::{DecodeLimits, decode, to_chw_f32};
use cloakbench::models;
use tch::{Device, Tensor};

use crate::shared;

/// Embeds every golden input and returns (max abs diff / max |golden|, min cosine).
fn compare_with_golden(model_id: &str) -> Option<(f64, f64)> {
    let dir = shared(&format!("golden/{model_id}"))?;
    let golden: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("embeddings.json")).unwrap()).unwrap();
    let model = models::load(model_id, Device::Cpu).unwrap();
    let (mut max_diff, mut max_ref, mut min_cos) = (0f64, 0f64, 1f64);
    let entries = golden["embeddings"].as_object().unwrap();
    assert_eq!(entries.len(), 12);
    for (file, expected) in entries {
        let bytes = std::fs::read(dir.join("inputs").join(file)).unwrap();
        let rgb = decode(&bytes, &DecodeLimits::default()).unwrap().rgb;
        let [h, w] = model.card().input_size;
        let x = Tensor::from_slice(&to_chw_f32(&rgb)).view([1, 3, h, w]);
        let got: Vec<f32> = Vec::try_from(tch::no_grad(|| model.embed(&x)).flatten(0, -1)).unwrap();
        let want: Vec<f64> = expected.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(got.len(), want.len());
        let (mut dot, mut ng, mut nw) = (0f64, 0f64, 0f64);
        for (g, w) in got.iter().map(|&g| g as f64).zip(&want) {
            max_diff = max_diff.max((g - w).abs());
            max_ref = max_ref.max(w.abs());
            dot += g * w;
            ng += g * g;
            nw += w * w;
        }
        min_cos = min_cos.min(dot / (ng.sqrt() * nw.sqrt()));
    }
    Some((max_diff / max_ref, min_cos))
}

#[test]
fn dlib_resnet29_matches_dlib() {
    let Some((rel, cos)) = compare_with_golden("dlib_resnet29_150") else { return };
    eprintln!("dlib_resnet29_150: max abs diff / max |value| = {rel:.3e}, min cosine = {cos:.8}");
    assert!(rel <= 1e-4, "max abs diff ratio {rel:e} > 1e-4");
    assert!(cos >= 0.99999, "min cosine {cos}");
}

#[test]
fn batch_of_one_equals_batch_of_many() {
    let model = models::load("dlib_resnet29_150", Device::Cpu).unwrap();
    tch::manual_seed(0);
    let x = Tensor::rand([5, 3, 150, 150], (tch::Kind::Float, Device::Cpu)) * 255.0;
    let all = tch::no_grad(|| model.embed(&x));
    for i in 0..5 {
        let one = tch::no_grad(|| model.embed(&x.narrow(0, i, 1)));
        let diff = (one - all.narrow(0, i, 1)).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "picture {i}: batch 1 vs batch 5 differ by {diff}");
    }
}

#[test]
fn gradients_reach_the_input() {
    let model = models::load("dlib_resnet29_150", Device::Cpu).unwrap();
    let x = (Tensor::rand([2, 3, 150, 150], (tch::Kind::Float, Device::Cpu)) * 255.0).set_requires_grad(true);
    model.embed(&x).square().sum(tch::Kind::Float).backward();
    let g = x.grad();
    assert!(g.isfinite().all().int64_value(&[]) == 1, "non-finite gradient");
    assert!(g.abs().sum(tch::Kind::Float).double_value(&[]) > 0.0, "zero gradient");
}
