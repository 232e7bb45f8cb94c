//! The `filter` stage: pictures re-saved through a chain of filters. Two parties do this to
//! cloaked pictures: a social network re-encodes every upload (`pictures = "all"`, a JPEG
//! filter, maybe shrinking), and a purifying trainer cleans the training pictures it scraped
//! before training (`pictures = "train"`, the default: test pictures stay clean; blur, median,
//! bit-depth reduction, down- and up-scaling, JPEG, several at once).
//!
//! A third use frames a dataset before anything else reads it: `pictures = "all"` with a
//! centred crop and a resize, wired between `ingest` and the stages that read `images`
//! (`pipelines/adaptive_lowkey112_lfw.toml` cuts lfw158 to the face at 112 x 112, as FaceCure
//! ran LowKey).
//!
//! ```toml
//! filters = [{ kind = "median", radius = 1 }, { kind = "jpeg", quality = 75 }]
//! ```
//!
//! Copies are written under `<run>/filtered/<stage>/`: as JPEG when the last filter is `jpeg`
//! (its bytes, as a network serves them), else as PNG. `filtered_images` points at the copies
//! (same image ids).

use anyhow::Result;
use bytes::Bytes;
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::attack::cloaker::{OutputFormat, encode};
use crate::io::image::{DecodeLimits, decode, resize};
use crate::io::pictures::PictureLoader;
use crate::io::{Location, sha256_hex};
use crate::pipeline::{Chunks, Context, Kind, Scope, Slot, StageConfig, check, plan_from};
use crate::tables::images::{self, FILTERED, ImageRow, Picture, Replacement, Status};
use crate::tables::splits::{self, SPLITS, Side};

pub const KIND: Kind = Kind {
    name: "filter",
    source: file!(),
    summary: "re-save pictures through filters (JPEG, blur, median, bit depth, rescaling): a social network's re-encoding or a trainer's purification",
    inputs: &[Slot::new("images", images::ANY)],
    optional_inputs: &[Slot::new("splits", &[SPLITS])],
    outputs: &[Slot::new("filtered_images", &[FILTERED])],
    labels: &["purifier"],
    scope: Scope::Picture,
    plan: plan_from::<Filter>,
};

/// Which pictures go through the filters.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Which {
    /// The training pictures (needs the splits table): what a purifying trainer filters.
    #[default]
    Train,
    /// Every decodable picture: what a social network does to uploads.
    All,
}

/// One filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PictureFilter {
    /// Re-encode as JPEG at `quality` (1..100) and decode again.
    Jpeg { quality: u8 },
    /// Median of each (2 radius + 1)² window, per channel.
    Median { radius: u32 },
    /// Gaussian blur.
    Gaussian { sigma: f32 },
    /// Keep `bits` bits per channel (1..7).
    Bits { bits: u8 },
    /// Shrink by `factor` (0..1) and enlarge back to the picture's size.
    Rescale { factor: f64 },
    /// Shrink so the longer side fits `max_side` (never enlarges).
    Shrink { max_side: u32 },
    /// Keep the centred `fraction` (0..1] of each side: a frame cut down to the face in its
    /// middle, as FaceScrub's pictures come cut to their face boxes.
    Crop { fraction: f64 },
    /// Resize to exactly `width` x `height`, shrinking or enlarging (FaceCure resized every
    /// picture to 112 x 112 before LowKey).
    Resize { width: u32, height: u32 },
}

/// Configuration of the `filter` stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Applied in order.
    #[serde(default)]
    pub filters: Vec<PictureFilter>,
    /// A named set of filters instead (what a grid fans out over): see [`preset`].
    #[serde(default)]
    pub purifier: Option<String>,
    #[serde(default)]
    pub pictures: Which,
    #[serde(default)]
    pub limits: DecodeLimits,
}

/// Pictures filtered per saved chunk.
const CHUNK: usize = 64;

impl StageConfig for Filter {
    fn validate(&self) -> Result<(), String> {
        check(
            self.filters.is_empty() != self.purifier.is_none(),
            "filters",
            &self.filters,
            "a list of filters, as [{ kind = \"jpeg\", quality = 75 }], or else a purifier preset",
        )?;
        if let Some(name) = &self.purifier {
            preset(name)?;
        }
        for f in &self.filters {
            match *f {
                PictureFilter::Jpeg { quality } => check((1..=100).contains(&quality), "filters: jpeg quality", quality, "within 1..100")?,
                PictureFilter::Median { radius } => check((1..=5).contains(&radius), "filters: median radius", radius, "within 1..5")?,
                PictureFilter::Gaussian { sigma } => check(sigma > 0.0 && sigma <= 20.0, "filters: gaussian sigma", sigma, "within (0, 20]")?,
                PictureFilter::Bits { bits } => check((1..=7).contains(&bits), "filters: bits", bits, "within 1..7")?,
                PictureFilter::Rescale { factor } => check(factor > 0.0 && factor < 1.0, "filters: rescale factor", factor, "between 0 and 1")?,
                PictureFilter::Shrink { max_side } => check(max_side >= 1, "filters: shrink max_side", max_side, "at least 1")?,
                PictureFilter::Crop { fraction } => check(fraction > 0.0 && fraction <= 1.0, "filters: crop fraction", fraction, "within (0, 1]")?,
                PictureFilter::Resize { width, height } => {
                    check((1..=8192).contains(&width), "filters: resize width", width, "within 1..8192")?;
                    check((1..=8192).contains(&height), "filters: resize height", height, "within 1..8192")?
                }
            }
        }
        self.limits.check()
    }

    fn validate_wiring(&self, wired: &[&str]) -> Result<(), String> {
        match (self.pictures, wired.contains(&"splits")) {
            (Which::Train, false) => Err("pictures = \"train\" needs the splits table: add inputs = { images = \"...\", splits = \"splits\" }".into()),
            _ => Ok(()),
        }
    }

    fn run(&self, ctx: &mut Context) -> Result<()> {
        let filters = self.chain().map_err(anyhow::Error::msg)?;
        let rows: Vec<ImageRow> = images::read(&ctx.read("images")?)?.into_iter().filter(|r| ctx.owns(&r.image_id)).collect();
        let splits = if self.pictures == Which::Train { Some(splits::read(&ctx.read("splits")?)?) } else { None };
        let chosen =
            |r: &ImageRow| r.status == Status::Ok && splits.as_ref().is_none_or(|s| s.by_image.get(&r.image_id).is_some_and(|(_, side)| *side == Side::Train));
        let out_dir = ctx.files_dir("filtered");
        let mut loader = PictureLoader::new(self.limits.clone(), 16);
        let outputs = [("filtered_images", images::batch(FILTERED, &[])?.schema())];
        ctx.resumable(&rows, &Chunks::even(rows.len(), CHUNK), "pictures", &outputs, |chunk, tally| {
            let pictures: Vec<Picture> = chunk.iter().filter(|r| chosen(r)).map(ImageRow::picture).collect::<Result<_>>()?;
            let decoded = loader.decode(&pictures);
            let copies: Vec<(String, Result<Replacement, String>)> = pictures
                .par_iter()
                .zip(decoded)
                .map(|(p, d)| (p.image_id.clone(), d.and_then(|rgb| copy(&filters, &out_dir, p, rgb).map_err(|e| format!("{e:#}")))))
                .collect();
            let mut out: Vec<ImageRow> = chunk.to_vec();
            for (id, copy) in copies {
                let row = out.iter_mut().find(|r| r.image_id == id).expect("every picture has its row");
                match copy {
                    Ok(c) => *row = row.replaced_by(&c),
                    Err(reason) => {
                        tally.failed.add(reason.clone());
                        *row = ImageRow { status: Status::Error, error: Some(format!("cannot filter: {reason}")), ..row.clone() };
                    }
                }
            }
            Ok(vec![vec![images::batch(FILTERED, &out)?]])
        })?;
        // Counted from the table, so pictures filtered by an interrupted run count too.
        let written = images::read(&ctx.read_output("filtered_images")?)?;
        let filtered = written.iter().zip(&rows).filter(|(w, r)| w.uri != r.uri).count();
        let names: Vec<String> = filters.iter().map(describe).collect();
        let which = if self.pictures == Which::All { "" } else { " training" };
        ctx.report.push(format!("filter: {filtered}{which} pictures through {}", names.join(", ")));
        Ok(())
    }
}

impl Filter {
    /// The filters to apply: the list, or the purifier preset's.
    fn chain(&self) -> Result<Vec<PictureFilter>, String> {
        match &self.purifier {
            Some(name) => preset(name),
            None => Ok(self.filters.clone()),
        }
    }
}

/// A purifying trainer's named filter sets: `jpeg75`, `median3` (3x3 median), `gaussian1`
/// (sigma 1), `bits5` (5 bits per channel), `rescale50` (half size and back), and `combined`
/// (median3, bits5, then jpeg75).
pub fn preset(name: &str) -> Result<Vec<PictureFilter>, String> {
    use PictureFilter::*;
    Ok(match name {
        "jpeg75" => vec![Jpeg { quality: 75 }],
        "median3" => vec![Median { radius: 1 }],
        "gaussian1" => vec![Gaussian { sigma: 1.0 }],
        "bits5" => vec![Bits { bits: 5 }],
        "rescale50" => vec![Rescale { factor: 0.5 }],
        "combined" => vec![Median { radius: 1 }, Bits { bits: 5 }, Jpeg { quality: 75 }],
        other => return Err(format!("purifier = {other:?}: presets are jpeg75, median3, gaussian1, bits5, rescale50, combined")),
    })
}

/// Writes `rgb` through the filters as `p`'s copy and describes it.
fn copy(filters: &[PictureFilter], out_dir: &Location, p: &Picture, rgb: RgbImage) -> Result<Replacement> {
    let (rgb, bytes, format) = apply(rgb, filters)?;
    let stem = p.rel_path.rsplit_once('.').map_or(p.rel_path.as_str(), |(stem, _)| stem);
    let rel_path = format!("{stem}.{}", format.extension());
    let copy = Replacement {
        uri: out_dir.url_of(&rel_path),
        rel_path: rel_path.clone(),
        format: format.extension().into(),
        width: rgb.width(),
        height: rgb.height(),
        bytes: bytes.len() as u64,
        sha256: sha256_hex(&bytes),
    };
    out_dir.put(&rel_path, Bytes::from(bytes))?;
    Ok(copy)
}

/// Runs `filters` on a picture: the result, its encoded bytes and their format (the JPEG bytes
/// themselves when the last filter is `jpeg`, else PNG).
pub fn apply(mut rgb: RgbImage, filters: &[PictureFilter]) -> Result<(RgbImage, Vec<u8>, OutputFormat)> {
    let mut last_jpeg = None;
    for (i, f) in filters.iter().enumerate() {
        rgb = match *f {
            PictureFilter::Jpeg { quality } => {
                let bytes = encode(&rgb, OutputFormat::Jpg, quality)?;
                let back = decode(&bytes, &DecodeLimits::default()).map_err(anyhow::Error::msg)?.rgb;
                if i + 1 == filters.len() {
                    last_jpeg = Some(bytes);
                }
                back
            }
            PictureFilter::Median { radius } => median(&rgb, radius),
            PictureFilter::Gaussian { sigma } => image::imageops::blur(&rgb, sigma),
            PictureFilter::Bits { bits } => quantise(rgb, bits),
            PictureFilter::Rescale { factor } => {
                let (w, h) = rgb.dimensions();
                let small = resize(&rgb, ((w as f64 * factor).round() as u32).max(1), ((h as f64 * factor).round() as u32).max(1));
                resize(&small, w, h)
            }
            PictureFilter::Shrink { max_side } => shrink(rgb, max_side),
            PictureFilter::Crop { fraction } => centre_crop(&rgb, fraction),
            PictureFilter::Resize { width, height } => resize(&rgb, width, height),
        };
    }
    match last_jpeg {
        Some(bytes) => Ok((rgb, bytes, OutputFormat::Jpg)),
        None => {
            let bytes = encode(&rgb, OutputFormat::Png, 0)?;
            Ok((rgb, bytes, OutputFormat::Png))
        }
    }
}

fn describe(f: &PictureFilter) -> String {
    match *f {
        PictureFilter::Jpeg { quality } => format!("JPEG q{quality}"),
        PictureFilter::Median { radius } => format!("median {0}x{0}", 2 * radius + 1),
        PictureFilter::Gaussian { sigma } => format!("Gaussian blur sigma {sigma}"),
        PictureFilter::Bits { bits } => format!("{bits} bits per channel"),
        PictureFilter::Rescale { factor } => format!("rescaled by {factor} and back"),
        PictureFilter::Shrink { max_side } => format!("longer side <= {max_side}"),
        PictureFilter::Crop { fraction } => format!("centred crop to {fraction} of each side"),
        PictureFilter::Resize { width, height } => format!("resized to {width}x{height}"),
    }
}

/// Shrinks so the longer side fits `max_side` (never enlarges).
fn shrink(rgb: RgbImage, max_side: u32) -> RgbImage {
    let longer = rgb.width().max(rgb.height());
    if longer <= max_side {
        return rgb;
    }
    let s = max_side as f64 / longer as f64;
    resize(&rgb, ((rgb.width() as f64 * s).round() as u32).max(1), ((rgb.height() as f64 * s).round() as u32).max(1))
}

/// The centred `fraction` of each side (at least one pixel).
fn centre_crop(rgb: &RgbImage, fraction: f64) -> RgbImage {
    let (w, h) = rgb.dimensions();
    let (cw, ch) = (((w as f64 * fraction).round() as u32).clamp(1, w), ((h as f64 * fraction).round() as u32).clamp(1, h));
    image::imageops::crop_imm(rgb, (w - cw) / 2, (h - ch) / 2, cw, ch).to_image()
}

/// Median of each (2r+1)² window, per channel; the window is clipped at the edges.
fn median(rgb: &RgbImage, r: u32) -> RgbImage {
    let (w, h) = rgb.dimensions();
    let mut out = RgbImage::new(w, h);
    let mut window: Vec<u8> = Vec::with_capacity(((2 * r + 1) * (2 * r + 1)) as usize);
    for y in 0..h {
        for x in 0..w {
            let mut px = [0u8; 3];
            for (c, value) in px.iter_mut().enumerate() {
                window.clear();
                for yy in y.saturating_sub(r)..=(y + r).min(h - 1) {
                    for xx in x.saturating_sub(r)..=(x + r).min(w - 1) {
                        window.push(rgb.get_pixel(xx, yy).0[c]);
                    }
                }
                let mid = window.len() / 2;
                *value = *window.select_nth_unstable(mid).1;
            }
            out.put_pixel(x, y, image::Rgb(px));
        }
    }
    out
}

/// Keeps `bits` bits per channel: each value rounded to the nearest of 2^bits levels.
fn quantise(mut rgb: RgbImage, bits: u8) -> RgbImage {
    let levels = ((1u32 << bits) - 1) as f64;
    for v in rgb.iter_mut() {
        *v = ((*v as f64 / 255.0 * levels).round() / levels * 255.0).round() as u8;
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy() -> RgbImage {
        RgbImage::from_fn(20, 10, |x, y| image::Rgb([((x * 13 + y * 7) % 256) as u8, if (x + y) % 5 == 0 { 255 } else { 40 }, (x * y % 256) as u8]))
    }

    #[test]
    fn filters_keep_the_size_and_do_what_they_say() {
        let rgb = noisy();
        let (out, _, format) = apply(rgb.clone(), &[PictureFilter::Median { radius: 1 }]).unwrap();
        assert_eq!((out.dimensions(), format), (rgb.dimensions(), OutputFormat::Png));
        assert!(out.pixels().all(|p| p.0[1] == 40), "the median removes isolated bright pixels");
        let (out, _, _) = apply(rgb.clone(), &[PictureFilter::Bits { bits: 1 }]).unwrap();
        assert!(out.iter().all(|v| *v == 0 || *v == 255));
        let (out, bytes, format) = apply(rgb.clone(), &[PictureFilter::Rescale { factor: 0.5 }, PictureFilter::Jpeg { quality: 75 }]).unwrap();
        assert_eq!((out.dimensions(), format), (rgb.dimensions(), OutputFormat::Jpg));
        assert!(bytes.starts_with(&[0xFF, 0xD8]), "the last JPEG's own bytes are written");
        let (out, _, _) = apply(RgbImage::new(400, 100), &[PictureFilter::Shrink { max_side: 200 }]).unwrap();
        assert_eq!(out.dimensions(), (200, 50));
        let (out, _, _) = apply(rgb.clone(), &[PictureFilter::Crop { fraction: 0.5 }]).unwrap();
        assert_eq!(out.dimensions(), (10, 5));
        assert_eq!(out.get_pixel(0, 0), rgb.get_pixel(5, 2), "the crop is centred");
        assert_eq!(out.get_pixel(9, 4), rgb.get_pixel(14, 6));
        let (out, _, _) = apply(rgb.clone(), &[PictureFilter::Resize { width: 30, height: 30 }]).unwrap();
        assert_eq!(out.dimensions(), (30, 30), "resize enlarges too, and to any aspect");
    }

    #[test]
    fn bad_filters_are_plan_errors() {
        let plan = |text: &str| plan_from::<Filter>(toml::from_str(text).unwrap()).err();
        assert!(plan("filters = []").is_some());
        assert!(plan("purifier = 'median3'").is_none());
        assert!(plan("purifier = 'sharpen'").unwrap().contains("presets are"));
        assert!(plan("purifier = 'median3'\nfilters = [{ kind = 'jpeg', quality = 75 }]").is_some(), "one or the other");
        assert!(plan("filters = [{ kind = 'jpeg', quality = 0 }]").unwrap().contains("quality = 0"));
        assert!(plan("filters = [{ kind = 'sharpen' }]").unwrap().contains("unknown variant"));
        assert!(plan("filters = [{ kind = 'median', radius = 1 }]\npictures = 'all'").is_none());
        assert!(plan("filters = [{ kind = 'crop', fraction = 1.5 }]").unwrap().contains("fraction = 1.5"));
        assert!(plan("filters = [{ kind = 'resize', width = 0, height = 112 }]").unwrap().contains("width = 0"));
    }
}
