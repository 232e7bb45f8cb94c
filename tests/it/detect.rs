//! MTCNN against facenet-pytorch's own detections (`../shared/golden/mtcnn`): same number of
//! faces, boxes and landmarks within 1 px, probabilities within 1e-3.

use cloakbench::detect::mtcnn::{Mtcnn, Settings};
use cloakbench::io::image::{DecodeLimits, decode};
use tch::Device;

use crate::shared;

#[test]
fn mtcnn_matches_facenet_pytorch() {
    let Some(dir) = shared("golden/mtcnn") else { return };
    let golden: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("detections.json")).unwrap()).unwrap();
    let mtcnn = Mtcnn::load(Device::Cpu).unwrap();
    let (mut worst_px, mut worst_prob, mut faces) = (0f64, 0f64, 0);
    for (name, entry) in golden["images"].as_object().unwrap() {
        let png = entry["decoded_png"].as_str().unwrap();
        let rgb = decode(&std::fs::read(dir.join("inputs").join(png)).unwrap(), &DecodeLimits::default()).unwrap().rgb;
        let found = mtcnn.detect(&rgb, &Settings::default());
        let want = entry["faces"].as_array().unwrap();
        assert_eq!(found.len(), want.len(), "{name}: {} faces, golden {}", found.len(), want.len());
        for (f, w) in found.iter().zip(want) {
            let wb: Vec<f64> = w["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            for k in 0..4 {
                worst_px = worst_px.max((f.bbox[k] as f64 - wb[k]).abs());
            }
            for (p, wp) in f.landmarks.iter().zip(w["landmarks"].as_array().unwrap()) {
                for k in 0..2 {
                    worst_px = worst_px.max((p[k] as f64 - wp[k].as_f64().unwrap()).abs());
                }
            }
            worst_prob = worst_prob.max((f.score as f64 - w["prob"].as_f64().unwrap()).abs());
            faces += 1;
        }
    }
    eprintln!("mtcnn: {faces} faces; worst box/landmark error {worst_px:.4} px, worst probability error {worst_prob:.2e}");
    assert!(worst_px <= 1.0, "a box or landmark is {worst_px} px off");
    assert!(worst_prob <= 1e-3, "a probability is {worst_prob} off");
}
