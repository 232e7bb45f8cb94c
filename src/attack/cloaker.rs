//! Cloaking pictures with a method and an ensemble: what the `cloak` stage and the
//! `cloakbench cloak` command share. Loads the attacker's models, prepares the goal of targeted
//! and cluster methods, runs the engine, and measures every cloaked face (quality, and how far
//! each zoo model's embedding moved).

use anyhow::{Result, bail};
use tch::{Device, Kind, Tensor};

use super::engine::{self, Cloaked, Convergence, Goal, Member, Target};
use super::methods::{self, Method};
use super::ssim::dssim;
use crate::face::align::{Alignment, FaceGeometry};
use crate::models::lpips::LpipsAlex;
use crate::models::{self, FaceModel, l2_normalise};

/// A loaded method + ensemble.
pub struct Cloaker {
    pub method: Method,
    pub mode: String,
    pub seed: i64,
    /// Overrides the method's step count.
    steps: Option<usize>,
    /// Stop each picture at convergence instead of running the whole schedule.
    stop: Option<Convergence>,
    /// Bound on the pixels optimised at once (see the engine).
    max_batch_pixels: i64,
    /// Pictures optimised at once (see the engine); None: every picture of a call.
    in_flight: Option<usize>,
    ensemble: Vec<(Box<dyn FaceModel>, Alignment)>,
    /// The perceptual metric of methods with a perceptual budget, when its weights are installed.
    lpips: Option<LpipsAlex>,
    device: Device,
}

/// The attacker's default ensemble for a method and mode: Fawkes low uses one extractor and
/// mid/high two (as Fawkes v1.0 does); LowKey and the others use the two strongest zoo models.
pub fn default_ensemble(method: Method, mode: &str) -> Vec<String> {
    let one = vec!["dlib_resnet29_150".to_owned()];
    let two = vec!["dlib_resnet29_150".to_owned(), "facenet_casia_irv1_160".to_owned()];
    match (method, mode) {
        (Method::Fawkes, "low") => one,
        _ => two,
    }
}

/// Loads `ids` with the alignment each card names.
pub fn load_with_alignment(ids: &[String], device: Device) -> Result<Vec<(Box<dyn FaceModel>, Alignment)>> {
    ids.iter()
        .map(|id| {
            let model = models::load(id, device)?;
            let alignment = Alignment::from_card(model.card())?;
            Ok((model, alignment))
        })
        .collect()
}

impl Cloaker {
    pub fn new(method: Method, mode: &str, ensemble: &[String], device: Device, seed: i64) -> Result<Cloaker> {
        let config = methods::config(method, mode, seed)?; // validates the mode
        if ensemble.is_empty() {
            bail!("the ensemble names no model");
        }
        let lpips = if config.budget.perceptual.is_some() { LpipsAlex::installed(device)? } else { None };
        let max_batch_pixels = engine::DEFAULT_MAX_BATCH_PIXELS;
        Ok(Cloaker {
            method,
            mode: mode.to_owned(),
            seed,
            steps: None,
            stop: None,
            max_batch_pixels,
            in_flight: None,
            ensemble: load_with_alignment(ensemble, device)?,
            lpips,
            device,
        })
    }

    /// How this run departs from the anchor tool (the `notes` column).
    pub fn notes(&self) -> &'static str {
        self.method.notes(self.lpips.is_some())
    }

    /// Runs `steps` optimisation steps instead of the method's own number.
    pub fn with_steps(mut self, steps: usize) -> Cloaker {
        self.steps = Some(steps);
        self
    }

    /// Stops each picture once it has converged (the schedule's steps stay the most it gets).
    pub fn with_stop(mut self, stop: Option<Convergence>) -> Cloaker {
        self.stop = stop;
        self
    }

    /// Optimises at most `pixels` pixels at once (pictures x padded height x width).
    pub fn with_max_batch_pixels(mut self, pixels: i64) -> Cloaker {
        self.max_batch_pixels = pixels.max(1);
        self
    }

    /// Optimises at most `pictures` pictures at once: a call's other pictures wait, and each
    /// picture that finishes makes room for the next (None: all of a call's pictures at once).
    pub fn with_in_flight(mut self, pictures: Option<usize>) -> Cloaker {
        self.in_flight = pictures.map(|p| p.max(1));
        self
    }

    pub fn ensemble_ids(&self) -> Vec<String> {
        self.ensemble.iter().map(|(m, _)| m.card().id.clone()).collect()
    }

    pub fn steps(&self) -> usize {
        self.steps.unwrap_or_else(|| methods::config(self.method, &self.mode, self.seed).map_or(0, |c| c.steps))
    }

    /// L2-normalised clean embeddings of faces, one [faces, D] tensor per ensemble model.
    pub fn embed_faces(&self, faces: &[(&Tensor, FaceGeometry)]) -> Result<Vec<Tensor>> {
        if faces.is_empty() {
            bail!("no face to embed");
        }
        tch::no_grad(|| {
            self.ensemble
                .iter()
                .map(|(model, alignment)| {
                    let crops: Vec<Tensor> = faces.iter().map(|(px, f)| alignment.crop(&px.unsqueeze(0).to_device(self.device), f)).collect();
                    Ok(l2_normalise(&model.embed(&Tensor::cat(&crops, 0))?))
                })
                .collect()
        })
    }

    /// Cloaks `targets` (pictures without a face come back unchanged). `user` holds the clean
    /// embeddings of the protected user's faces (per model) and `target_identity` those of the
    /// chosen target identity; the methods that need them (anticluster, fawkes_v03) fail
    /// without them.
    pub fn cloak(&self, targets: &[Target], user: Option<&[Tensor]>, target_identity: Option<&[Tensor]>) -> Result<Vec<Cloaked>> {
        let mut config = methods::config(self.method, &self.mode, self.seed)?;
        config.steps = self.steps();
        config.stop = self.stop;
        config.max_batch_pixels = self.max_batch_pixels;
        config.in_flight = self.in_flight;
        let faceless = targets.iter().all(|t| t.faces.is_empty());
        config.objective.goal = match self.method {
            _ if faceless => Goal::Away,
            Method::Fawkes | Method::Lowkey => Goal::Away,
            Method::Anticluster => {
                let Some(user) = user else { bail!("anticluster needs the user's clean embeddings") };
                Goal::AwayFromCentroid(user.iter().map(|e| e.mean_dim(0, false, Kind::Float)).collect())
            }
            Method::FawkesV03 => {
                let (Some(user), Some(target)) = (user, target_identity) else { bail!("fawkes_v03 needs a target identity") };
                let faces: Vec<(&Tensor, FaceGeometry)> = targets.iter().flat_map(|t| t.faces.iter().map(move |f| (&t.pixels, *f))).collect();
                let own = self.embed_faces(&faces)?;
                // T = f(x) + 2 (mean f(target) - mean f(user)), per face and model.
                let points = own
                    .iter()
                    .zip(user.iter().zip(target))
                    .map(|(e, (u, t))| e + (t.mean_dim(0, true, Kind::Float) - u.mean_dim(0, true, Kind::Float)) * 2.0)
                    .collect();
                Goal::Toward(points)
            }
        };
        let members: Vec<Member> = self.ensemble.iter().map(|(m, a)| Member { model: m.as_ref(), alignment: *a }).collect();
        engine::run(&config, &members, self.lpips.as_ref(), targets, self.device)
    }
}

/// Image-quality figures of a cloaked picture against its original ([3, H, W], 0..255).
#[derive(Debug, Clone, Copy)]
pub struct Quality {
    pub psnr: f64,
    pub linf: f64,
    pub l2: f64,
}

pub fn quality(original: &Tensor, cloaked: &Tensor) -> Quality {
    let diff = (cloaked.to_kind(Kind::Double) - original.to_kind(Kind::Double)).to_device(Device::Cpu);
    let mse = diff.square().mean(Kind::Double).double_value(&[]);
    Quality {
        psnr: if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0f64 * 255.0 / mse).log10() },
        linf: diff.abs().max().double_value(&[]),
        l2: diff.square().sum(Kind::Double).sqrt().double_value(&[]),
    }
}

/// DSSIM of a face's 112x112 budget crop, cloaked vs original.
pub fn face_dssim(original: &Tensor, cloaked: &Tensor, face: &FaceGeometry) -> f64 {
    let crop = Alignment::SquareBox { size: 112, margin: 30.0 };
    let a = crop.crop(&original.to_kind(Kind::Float).unsqueeze(0), face);
    let b = crop.crop(&cloaked.to_kind(Kind::Float).unsqueeze(0), face);
    dssim(&b, &a, 255.0).double_value(&[0])
}

/// 1 - cosine similarity of a face's embedding before and after cloaking, for one model.
pub fn shift(model: &dyn FaceModel, alignment: Alignment, original: &Tensor, cloaked: &Tensor, face: &FaceGeometry) -> Result<f64> {
    tch::no_grad(|| {
        let device = model.device();
        let crops = Tensor::cat(
            &[
                alignment.crop(&original.to_kind(Kind::Float).unsqueeze(0).to_device(device), face),
                alignment.crop(&cloaked.to_kind(Kind::Float).unsqueeze(0).to_device(device), face),
            ],
            0,
        );
        let e = l2_normalise(&model.embed(&crops)?);
        Ok(1.0 - (e.get(0) * e.get(1)).sum(Kind::Double).double_value(&[]))
    })
}

/// 8-bit pixels of a cloaked tensor: rounded, clamped to 0..255.
pub fn to_rgb8(pixels: &Tensor) -> image::RgbImage {
    let (h, w) = (pixels.size()[1] as u32, pixels.size()[2] as u32);
    let hwc = pixels.to_device(Device::Cpu).round().clamp(0.0, 255.0).to_kind(Kind::Uint8).permute([1, 2, 0]).contiguous();
    let data: Vec<u8> = Vec::try_from(hwc.flatten(0, -1)).expect("u8 pixels");
    image::RgbImage::from_raw(w, h, data).expect("sized buffer")
}

/// Encodes a picture as PNG or JPEG (quality 1..100).
pub fn encode(rgb: &image::RgbImage, format: OutputFormat, jpeg_quality: u8) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match format {
        OutputFormat::Png => rgb.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)?,
        OutputFormat::Jpg => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, jpeg_quality).encode_image(rgb)?,
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    Png,
    Jpg,
}

impl OutputFormat {
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpg => "jpg",
        }
    }
}
