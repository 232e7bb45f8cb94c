//! Property tests: random and mutated bytes into the decoder, random pipeline files and `--set`
//! values into the planner, random faces and picture sizes into the alignment and crop plan.
//! Never a panic: an error instead. A few hundred cases each in `make test`; set
//! `PROPTEST_CASES=10000` for more.

use cloakbench::face::align::{Alignment, CropPlan, FaceGeometry};
use cloakbench::io::image::{DecodeLimits, decode};
use proptest::prelude::*;
use tch::{Device, Kind, Tensor};

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Small valid pictures of every decoded format, to mutate.
fn seeds() -> Vec<Vec<u8>> {
    let mut picture = image::RgbImage::new(24, 16);
    for (x, y, p) in picture.enumerate_pixels_mut() {
        *p = image::Rgb([(x * 10) as u8, (y * 15) as u8, 128]);
    }
    [image::ImageFormat::Jpeg, image::ImageFormat::Png, image::ImageFormat::Gif, image::ImageFormat::Tiff, image::ImageFormat::Bmp, image::ImageFormat::WebP]
        .into_iter()
        .map(|format| {
            let mut out = std::io::Cursor::new(Vec::new());
            picture.write_to(&mut out, format).unwrap();
            out.into_inner()
        })
        .collect()
}

/// Tight limits, so that a mutated header claiming a large picture is refused quickly.
fn limits() -> DecodeLimits {
    DecodeLimits { max_bytes: 1 << 20, max_pixels: 1 << 20, max_side: 4096 }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, xor: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Overwrite { at: usize, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..64)).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), prop::collection::vec(prop_oneof![Just(0xFFu8), Just(0xD9), Just(0x00), any::<u8>()], 1..16))
            .prop_map(|(at, bytes)| Mutation::Overwrite { at, bytes }),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = bytes.len().max(1);
        match m {
            Mutation::Flip { at, xor } => {
                if let Some(b) = bytes.get_mut(at % n) {
                    *b ^= xor;
                }
            }
            Mutation::Truncate { at } => bytes.truncate(at % n),
            Mutation::Insert { at, bytes: new } => {
                let at = (at % n).min(bytes.len());
                bytes.splice(at..at, new.iter().copied());
            }
            Mutation::Overwrite { at, bytes: new } => {
                for (i, b) in new.iter().enumerate() {
                    if let Some(old) = bytes.get_mut((at % n) + i) {
                        *old = *b;
                    }
                }
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(cases(300))]

    #[test]
    fn mutated_pictures_decode_or_give_an_error(seed in 0..6usize, mutations in prop::collection::vec(mutation(), 1..6)) {
        let bytes = mutate(seeds()[seed].clone(), &mutations);
        match decode(&bytes, &limits()) {
            Ok(d) => prop_assert!(d.rgb.width() >= 1 && d.rgb.height() >= 1 && (d.rgb.width() as u64 * d.rgb.height() as u64) <= 1 << 20),
            Err(e) => prop_assert!(!e.0.is_empty()),
        }
    }

    #[test]
    fn random_bytes_give_an_error_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096), magic in 0..8usize) {
        // Random data behind each format's magic number, and bare.
        let magics: [&[u8]; 8] = [b"", b"\xFF\xD8\xFF", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"II*\x00", b"BM", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"\x00\x00\x00\x18ftypheic"];
        let mut data = magics[magic].to_vec();
        data.extend_from_slice(&bytes);
        let _ = decode(&data, &limits());
    }
}

/// Pipeline text built from the real stage kinds and keys, with values of every TOML type.
fn pipeline_text() -> impl Strategy<Value = String> {
    let kind = prop::sample::select(vec![
        "ingest", "detect", "split", "cloak", "embed", "classify", "evaluate", "mix", "filter", "adapt", "finetune", "verify", "nosuch",
    ]);
    let key = prop::sample::select(vec![
        "dataset",
        "manifest",
        "seed",
        "batch_size",
        "model",
        "method",
        "mode",
        "steps",
        "fraction",
        "max_side",
        "protected",
        "protected_count",
        "train_fraction",
        "inputs",
        "outputs",
        "fan_out",
        "enabled",
        "tags",
        "limits",
        "device",
        "max_batch_pixels",
        "ensemble",
        "kind",
    ]);
    let value = prop::sample::select(vec![
        "0",
        "-1",
        "1",
        "1e309",
        "0.5",
        "-0.0",
        "nan",
        "inf",
        "9223372036854775807",
        "true",
        "\"\"",
        "\"fawkes\"",
        "\"high\"",
        "\"../x\"",
        "\"/nonexistent\"",
        "[]",
        "[\"a\", \"b\"]",
        "{}",
        "{ images = \"images\" }",
        "{ model = [] }",
        "{ model = [\"dlib_resnet29_150\", \"x\"] }",
        "\"images[*]\"",
        "\"\\u0000\"",
    ]);
    let stage = (kind, prop::collection::vec((key, value), 0..5));
    (prop::collection::vec(stage, 0..6), any::<bool>()).prop_map(|(stages, header)| {
        let mut text = if header { "[pipeline]\nname = \"p\"\n".to_owned() } else { String::new() };
        for (i, (kind, entries)) in stages.iter().enumerate() {
            text.push_str(&format!("\n[stages.s{i}]\nkind = \"{kind}\"\n"));
            let mut seen = std::collections::HashSet::new();
            for (k, v) in entries {
                if seen.insert(*k) && *k != "kind" {
                    text.push_str(&format!("{k} = {v}\n"));
                }
            }
        }
        text
    })
}

proptest! {
    #![proptest_config(cases(300))]

    #[test]
    fn random_pipelines_and_overrides_plan_or_give_an_error(
        text in prop_oneof![pipeline_text(), "\\PC{0,200}"],
        sets in prop::collection::vec("[a-z0-9_.\\-\\[\\]*=]{0,12}=[a-z0-9\"\\[\\]{}., =]{0,12}", 0..4),
    ) {
        if let Err(e) = cloakbench::pipeline::plan::parse(&text, &sets, cloakbench::stages::KINDS) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}

fn face_geometry() -> impl Strategy<Value = FaceGeometry> {
    let coordinate = prop_oneof![8 => -200.0..2200.0f64, 1 => Just(0.0), 1 => Just(f64::NAN), 1 => Just(1e12), 1 => Just(-1e12)];
    (prop::array::uniform4(coordinate.clone()), prop::array::uniform5(prop::array::uniform2(coordinate)))
        .prop_map(|(bbox, landmarks)| FaceGeometry { bbox, landmarks })
}

fn alignment() -> impl Strategy<Value = Alignment> {
    prop_oneof![
        (8..160i64).prop_map(|size| Alignment::Arcface { size }),
        (8..160i64).prop_map(|size| Alignment::DlibChip { size, padding: 0.25 }),
        (8..160i64, 8..160i64, 0.0..40.0f64).prop_map(|(height, width, margin)| Alignment::BoxCrop { height, width, margin }),
        (8..160i64, 0.0..40.0f64).prop_map(|(size, margin)| Alignment::SquareBox { size, margin }),
    ]
}

proptest! {
    #![proptest_config(cases(200))]

    #[test]
    fn random_faces_and_picture_sizes_crop_to_the_model_input(
        alignment in alignment(),
        faces in prop::collection::vec((face_geometry(), 1..600i64, 1..600i64), 1..4),
    ) {
        let (hmax, wmax) = (faces.iter().map(|f| f.1).max().unwrap(), faces.iter().map(|f| f.2).max().unwrap());
        let batch = Tensor::rand([faces.len() as i64, 3, hmax, wmax], (Kind::Float, Device::Cpu)) * 255.0;
        let planned: Vec<(i64, FaceGeometry, [i64; 2])> = faces.iter().enumerate().map(|(b, (f, h, w))| (b as i64, *f, [*h, *w])).collect();
        let plan = CropPlan::new(alignment, &planned, &batch.size(), Device::Cpu);
        let crops = plan.apply(&batch);
        let [oh, ow] = alignment.output_size();
        prop_assert_eq!(crops.size(), vec![faces.len() as i64, 3, oh, ow]);
        // A face that lies inside its picture gives finite pixels.
        for (i, (f, h, w)) in faces.iter().enumerate() {
            let inside = f.bbox.iter().chain(f.landmarks.iter().flatten()).all(|v| v.is_finite() && (0.0..(*h.min(w) as f64)).contains(v));
            if inside {
                prop_assert!(crops.get(i as i64).isfinite().all().int64_value(&[]) == 1, "face {} of {:?}", i, f);
            }
        }
        let one = alignment.crop(&batch.get(0).unsqueeze(0), &faces[0].0);
        prop_assert_eq!(one.size(), vec![1, 3, oh, ow]);
    }
}
