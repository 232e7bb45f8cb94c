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
use crate::attack::engine::{Convergence, Target};
use crate::attack::methods::Method;
use crate::face::align::FaceGeometry;
use crate::face::mtcnn::{Mtcnn, Settings};
use crate::io::image::{DecodeLimits, decode, to_chw_f32};
use crate::progress::{Progress, info};

/// Decoded pictures, and the phone formats we do not decode (listed so that each gets its
/// "convert it first" message instead of being passed over in silence).
const EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "heic", "heif", "avif"];

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
    /// Pictures optimised at once (None: the whole batch).
    pub in_flight: Option<usize>,
    pub max_batch_pixels: i64,
    pub seed: i64,
    /// Stop each picture at convergence ([`Convergence::DEFAULT`]) rather than after the
    /// schedule, for the cloaks where that keeps protection ([`Method::converges_safely`]).
    pub early_stop: bool,
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
    let stops_early = req.early_stop && req.method.converges_safely(&mode);
    let cloaker = Cloaker::new(req.method, &mode, &ensemble, device, req.seed)?
        .with_max_batch_pixels(req.max_batch_pixels)
        .with_in_flight(req.in_flight)
        .with_stop(stops_early.then_some(Convergence::DEFAULT));
    let detector = Mtcnn::load(device)?;
    // Fawkes' detection settings: confident faces of at least 30 pixels.
    let settings = Settings { min_face_size: 30.0, ..Settings::default() };
    info(req.quiet, &format!("cloak: {} pictures, {} {mode}, ensemble {ensemble:?}", pictures.len(), req.method.name()));
    if req.early_stop && !stops_early {
        info(req.quiet, &format!("cloak: {} {mode} runs its whole schedule (stopping at convergence was not shown to keep its protection)", req.method.name()));
    }
    let mut progress = Progress::new("cloak", pictures.len() as u64, "pictures", req.quiet);
    let (mut with_faces, mut failures) = (0, 0);
    let mut cloaked_files = Vec::new();
    for chunk in pictures.chunks(req.batch_size.max(1)) {
        let mut targets = Vec::new();
        let mut paths = Vec::new();
        for (path, out) in chunk {
            match load(path, &detector, &settings) {
                Ok(Some(target)) => {
                    targets.push(target);
                    paths.push((path, out));
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
            for (((path, out), target), c) in paths.into_iter().zip(&targets).zip(cloaked) {
                let rgb = cloaker::to_rgb8(&c.pixels);
                let written = Tensor::from_slice(&to_chw_f32(&rgb)).view(target.pixels.size().as_slice());
                let dssim = target.faces.iter().map(|f| cloaker::face_dssim(&target.pixels, &written, f)).fold(0.0, f64::max);
                let q = cloaker::quality(&target.pixels, &written);
                write_atomically(out, &cloaker::encode(&rgb, req.format, req.jpeg_quality)?)?;
                with_faces += 1;
                cloaked_files.push((path.clone(), out.clone(), dssim));
                info(
                    req.quiet,
                    &format!(
                        "cloak: {} -> {} ({} faces, DSSIM {dssim:.4}, PSNR {:.1} dB, {} steps)",
                        path.display(),
                        out.display(),
                        target.faces.len(),
                        q.psnr,
                        c.steps
                    ),
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

/// Faces are looked for on a copy of at most this many pixels a side: a 6000 x 4000 photo
/// detected at full size took minutes and 16 GB. Fawkes' smallest face (30 pixels) at this size
/// is a face of 90 pixels in a 6000-pixel photo.
const DETECT_MAX_SIDE: u32 = 2000;

/// Decodes a picture and finds its faces; None when it has none.
fn load(path: &Path, detector: &Mtcnn, settings: &Settings) -> Result<Option<Target>> {
    let limits = DecodeLimits::default();
    // Refused before it is read whole: a 1 GiB file must not cost 1 GiB to turn down.
    let size = std::fs::metadata(path).context("cannot read")?.len();
    anyhow::ensure!(size <= limits.max_bytes, "{size} bytes, over the limit of {} bytes for one picture", limits.max_bytes);
    let bytes = std::fs::read(path).context("cannot read")?;
    let rgb = decode(&bytes, &limits)?.rgb;
    let faces: Vec<FaceGeometry> = detector
        .detect_within(&rgb, settings, Some(DETECT_MAX_SIDE))?
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

/// Pictures named on the command line or found in the folders given, each with the file its
/// cloaked copy goes to, minus those already cloaked.
fn find_pictures(req: &Request) -> Result<Vec<(PathBuf, PathBuf)>> {
    // (picture, the folder argument it was found under)
    let mut found: Vec<(PathBuf, Option<PathBuf>)> = Vec::new();
    for path in &req.paths {
        if path.is_dir() {
            let mut inside = Vec::new();
            collect(path, req.recursive, &mut inside, &mut Vec::new())?;
            found.extend(inside.into_iter().map(|p| (p, Some(path.clone()))));
        } else if path.is_file() {
            found.push((path.clone(), None));
        } else {
            anyhow::bail!("{}: no such file or folder", path.display());
        }
    }
    found.retain(|(p, _)| is_picture(p));
    found.sort();
    found.dedup_by(|a, b| a.0 == b.0);
    let outputs = output_paths(&found, req.out.as_deref(), req.format);
    Ok(found.into_iter().map(|(p, _)| p).zip(outputs).filter(|(_, out)| !out.exists()).collect())
}

/// Lists pictures below `dir`; `seen` holds the folders on the way down (canonical), so a
/// symlink back up the tree is not walked again.
fn collect(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>, seen: &mut Vec<PathBuf>) -> Result<()> {
    let canonical = dir.canonicalize().with_context(|| format!("{}: cannot resolve", dir.display()))?;
    if seen.contains(&canonical) {
        return Ok(());
    }
    seen.push(canonical);
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            // A report written by `--report` shows pictures; they are not the person's photos.
            if recursive && path.file_name().is_none_or(|n| n != "cloakbench-report") {
                collect(&path, true, out, seen)?;
            }
        } else if path.is_file() {
            out.push(path);
        } else if is_picture(&path) {
            // Never opened: a FIFO would block the read forever.
            eprintln!("cloakbench cloak: {}: not a regular file (a FIFO, socket or dangling link): skipped", path.display());
        }
    }
    seen.pop();
    Ok(())
}

fn is_picture(path: &Path) -> bool {
    let stem = path.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default();
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    EXTENSIONS.contains(&ext.as_str()) && !stem.ends_with("_cloaked")
}

/// Where each picture's cloaked copy goes: `<stem>_cloaked.<ext>` beside it, or under `out`
/// in the same sub-folders as below the folder it was found in. No two pictures ever share
/// an output: pictures that would (`face.bmp` and `face.webp`; `IMG_1.jpg` from two folders
/// given as files; names that are not UTF-8) keep their own extension in the name
/// (`face_bmp_cloaked.png`) and then, if still needed, a number, given in sorted order so a
/// rerun finds the same names.
pub fn output_paths(pictures: &[(PathBuf, Option<PathBuf>)], out: Option<&Path>, format: OutputFormat) -> Vec<PathBuf> {
    let folder = |(picture, root): &(PathBuf, Option<PathBuf>)| -> PathBuf {
        let beside = picture.parent().map(Path::to_path_buf).unwrap_or_default();
        match out {
            None => beside,
            Some(out) => match root.as_ref().and_then(|r| beside.strip_prefix(r).ok()) {
                Some(rel) => out.join(rel),
                None => out.to_path_buf(),
            },
        }
    };
    let stem = |p: &Path| p.file_stem().map(|s| s.to_string_lossy().replace(char::REPLACEMENT_CHARACTER, "_")).unwrap_or_else(|| "picture".into());
    let ext = |p: &Path| p.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    let plain: Vec<PathBuf> = pictures.iter().map(|p| folder(p).join(format!("{}_cloaked.{}", stem(&p.0), format.extension()))).collect();
    let clashes = |names: &[PathBuf], i: usize| names.iter().filter(|n| **n == names[i]).count() > 1;
    let with_ext: Vec<PathBuf> = (0..pictures.len())
        .map(|i| {
            if clashes(&plain, i) {
                folder(&pictures[i]).join(format!("{}_{}_cloaked.{}", stem(&pictures[i].0), ext(&pictures[i].0), format.extension()))
            } else {
                plain[i].clone()
            }
        })
        .collect();
    let mut taken = std::collections::HashSet::new();
    with_ext
        .iter()
        .map(|name| {
            let base = name.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let (mut candidate, mut n) = (name.clone(), 2);
            while !taken.insert(candidate.clone()) {
                candidate = name.with_file_name(format!("{base}-{n}.{}", format.extension()));
                n += 1;
            }
            candidate
        })
        .collect()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    let tmp = path.with_extension(format!("part-{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(pictures: &[(&str, Option<&str>)], out: Option<&str>) -> Vec<String> {
        let pictures: Vec<(PathBuf, Option<PathBuf>)> = pictures.iter().map(|(p, r)| (PathBuf::from(p), r.map(PathBuf::from))).collect();
        output_paths(&pictures, out.map(Path::new), OutputFormat::Png).into_iter().map(|p| p.display().to_string()).collect()
    }

    #[test]
    fn no_two_pictures_share_an_output() {
        // Same stem, two formats, beside each other.
        assert_eq!(names(&[("d/face.bmp", Some("d")), ("d/face.webp", Some("d"))], None), ["d/face_bmp_cloaked.png", "d/face_webp_cloaked.png"]);
        // Two people's IMG_0001.jpg under --out keep their folders.
        assert_eq!(
            names(&[("in/ann/IMG_0001.jpg", Some("in")), ("in/bob/IMG_0001.jpg", Some("in"))], Some("o")),
            ["o/ann/IMG_0001_cloaked.png", "o/bob/IMG_0001_cloaked.png"]
        );
        // Two files named on the command line, one --out: numbered, in order.
        assert_eq!(names(&[("a/x.jpg", None), ("b/x.jpg", None)], Some("o")), ["o/x_jpg_cloaked.png", "o/x_jpg_cloaked-2.png"]);
        // A picture alone keeps the plain name.
        assert_eq!(names(&[("me.jpg", None)], None), ["me_cloaked.png"]);
    }

    #[test]
    fn a_directory_cycle_is_walked_once_and_a_fifo_is_never_opened() {
        let dir = std::env::temp_dir().join(format!("cloakbench-cloak-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a")).unwrap();
        std::fs::write(dir.join("a/x.jpg"), b"not read here").unwrap();
        std::os::unix::fs::symlink(&dir, dir.join("a/loop")).unwrap();
        let fifo = std::ffi::CString::new(dir.join("f.jpg").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let (mut found, mut seen) = (Vec::new(), Vec::new());
        collect(&dir, true, &mut found, &mut seen).unwrap();
        assert_eq!(found, vec![dir.join("a/x.jpg")], "once, and not the FIFO");
        std::fs::remove_dir_all(&dir).ok();
    }
}
