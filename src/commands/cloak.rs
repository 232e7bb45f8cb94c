//! `cloakbench cloak PATH...`: cloak a folder of one's own photos, Fawkes-style.
//!
//! Files or folders in, `<stem>_cloaked.<ext>` out (beside each picture, or in `--out`); files
//! already cloaked (named `*_cloaked.*`, or whose cloaked copy exists) are skipped; every face
//! of every picture is protected; originals are never touched. Exit codes follow Fawkes:
//! 3 = no picture found, 2 = no face found in any picture, 1 = another error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use tch::Tensor;

use crate::attack::cloaker::{self, Cloaker, OutputFormat};
use crate::attack::engine::Target;
use crate::attack::methods::Method;
use crate::face::align::FaceGeometry;
use crate::face::mtcnn::{Mtcnn, Settings};
use crate::io::image::{DecodeLimits, decode, to_chw_f32};
use crate::progress::{Progress, info};

const EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp"];

/// What the command was asked to do.
pub struct Request {
    pub paths: Vec<PathBuf>,
    pub method: Method,
    pub mode: Option<String>,
    pub ensemble: Option<Vec<String>>,
    pub format: OutputFormat,
    pub jpeg_quality: u8,
    pub out: Option<PathBuf>,
    pub recursive: bool,
    pub batch_size: usize,
    pub seed: i64,
    pub device: String,
    pub quiet: bool,
    /// Also write a before/after page of the pictures cloaked (`cloakbench-report/index.html`).
    pub report: bool,
}

pub fn run(req: &Request) -> Result<ExitCode> {
    let pictures = find_pictures(req)?;
    if pictures.is_empty() {
        eprintln!(
            "cloakbench cloak: no picture left to cloak in {:?} (looked for {EXTENSIONS:?}; *_cloaked.* files and pictures whose cloaked copy exists are skipped)",
            req.paths
        );
        return Ok(ExitCode::from(3));
    }
    let device = crate::models::device(&req.device)?;
    let mode = req.mode.clone().unwrap_or_else(|| req.method.modes()[0].to_owned());
    let ensemble = req.ensemble.clone().unwrap_or_else(|| cloaker::default_ensemble(req.method, &mode));
    let cloaker = Cloaker::new(req.method, &mode, &ensemble, device, req.seed)?;
    let detector = Mtcnn::load(device)?;
    // Fawkes' detection settings: confident faces of at least 30 pixels.
    let settings = Settings { min_face_size: 30.0, ..Settings::default() };
    info(req.quiet, &format!("cloak: {} pictures, {} {mode}, ensemble {ensemble:?}", pictures.len(), req.method.name()));
    let mut progress = Progress::new("cloak", pictures.len() as u64, "pictures", req.quiet);
    let (mut with_faces, mut failures) = (0, 0);
    let mut cloaked_files = Vec::new();
    for chunk in pictures.chunks(req.batch_size.max(1)) {
        let mut targets = Vec::new();
        let mut paths = Vec::new();
        for path in chunk {
            match load(path, &detector, &settings) {
                Ok(Some(target)) => {
                    targets.push(target);
                    paths.push(path);
                }
                Ok(None) => info(req.quiet, &format!("cloak: {}: no face found, not cloaked", path.display())),
                Err(e) => {
                    failures += 1;
                    eprintln!("cloakbench cloak: {}: {e:#}", path.display());
                }
            }
        }
        if !targets.is_empty() {
            let user = if req.method == Method::Anticluster { Some(all_faces(&cloaker, &targets)?) } else { None };
            let cloaked = cloaker.cloak(&targets, user.as_deref(), None)?;
            for ((path, target), c) in paths.into_iter().zip(&targets).zip(cloaked) {
                let rgb = cloaker::to_rgb8(&c.pixels);
                let written = Tensor::from_slice(&to_chw_f32(&rgb)).view(target.pixels.size().as_slice());
                let dssim = target.faces.iter().map(|f| cloaker::face_dssim(&target.pixels, &written, f)).fold(0.0, f64::max);
                let q = cloaker::quality(&target.pixels, &written);
                let out = output_path(path, req.out.as_deref(), req.format);
                write_atomically(&out, &cloaker::encode(&rgb, req.format, req.jpeg_quality)?)?;
                with_faces += 1;
                cloaked_files.push((path.to_path_buf(), out.clone(), dssim));
                info(
                    req.quiet,
                    &format!("cloak: {} -> {} ({} faces, DSSIM {dssim:.4}, PSNR {:.1} dB)", path.display(), out.display(), target.faces.len(), q.psnr),
                );
            }
        }
        progress.add(chunk.len() as u64);
    }
    progress.finish();
    if with_faces == 0 && failures == 0 {
        eprintln!("cloakbench cloak: no face found in any of the {} pictures: nothing was cloaked", pictures.len());
        return Ok(ExitCode::from(2));
    }
    println!("cloaked {with_faces} of {} pictures ({failures} could not be read)", pictures.len());
    if req.report && !cloaked_files.is_empty() {
        let dir = report_dir(req, &cloaked_files[0].1);
        println!("report: {}", crate::report::write_cloaked(&cloaked_files, &dir)?);
    }
    Ok(if failures > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Where `--report` writes: beside the outputs (`--out`, else the first cloaked picture's folder).
fn report_dir(req: &Request, first_output: &Path) -> PathBuf {
    let base = req.out.clone().unwrap_or_else(|| first_output.parent().map(Path::to_path_buf).unwrap_or_default());
    base.join("cloakbench-report")
}

/// The clean embeddings of every face in the batch (the anti-clustering goal's cluster).
fn all_faces(cloaker: &Cloaker, targets: &[Target]) -> Result<Vec<Tensor>> {
    let faces: Vec<(&Tensor, FaceGeometry)> = targets.iter().flat_map(|t| t.faces.iter().map(move |f| (&t.pixels, *f))).collect();
    cloaker.embed_faces(&faces)
}

/// Decodes a picture and finds its faces; None when it has none.
fn load(path: &Path, detector: &Mtcnn, settings: &Settings) -> Result<Option<Target>> {
    let bytes = std::fs::read(path).context("cannot read")?;
    let rgb = decode(&bytes, &DecodeLimits::default())?.rgb;
    let faces: Vec<FaceGeometry> = detector
        .detect(&rgb, settings)?
        .into_iter()
        .filter(|f| f.score >= 0.9)
        .map(|f| FaceGeometry { bbox: f.bbox.map(f64::from), landmarks: f.landmarks.map(|[x, y]| [x as f64, y as f64]) })
        .collect();
    if faces.is_empty() {
        return Ok(None);
    }
    let pixels = Tensor::from_slice(&to_chw_f32(&rgb)).view([3, rgb.height() as i64, rgb.width() as i64]);
    Ok(Some(Target { pixels, faces }))
}

/// Pictures named on the command line or found in the folders given, minus those already cloaked.
fn find_pictures(req: &Request) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for path in &req.paths {
        if path.is_dir() {
            collect(path, req.recursive, &mut found)?;
        } else if path.is_file() {
            found.push(path.clone());
        } else {
            anyhow::bail!("{}: no such file or folder", path.display());
        }
    }
    found.retain(|p| is_picture(p) && !output_path(p, req.out.as_deref(), req.format).exists());
    found.sort();
    found.dedup();
    Ok(found)
}

fn collect(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            // A report written by `--report` shows pictures; they are not the person's photos.
            if recursive && path.file_name().is_none_or(|n| n != "cloakbench-report") {
                collect(&path, true, out)?;
            }
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn is_picture(path: &Path) -> bool {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    EXTENSIONS.contains(&ext.as_str()) && !stem.ends_with("_cloaked")
}

/// `<stem>_cloaked.<ext>` beside the picture, or in `out`.
pub fn output_path(picture: &Path, out: Option<&Path>, format: OutputFormat) -> PathBuf {
    let stem = picture.file_stem().and_then(|s| s.to_str()).unwrap_or("picture");
    let dir = out.map(Path::to_path_buf).unwrap_or_else(|| picture.parent().map(Path::to_path_buf).unwrap_or_default());
    dir.join(format!("{stem}_cloaked.{}", format.extension()))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    let tmp = path.with_extension(format!("part-{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))
}
