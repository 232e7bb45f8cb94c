//! The `reencode` stage: what a social network does to an uploaded picture. Every decodable
//! picture of an images table is re-saved as JPEG at a chosen quality, optionally shrunk so its
//! longer side fits `max_side`, under `<run>/reencoded/<stage>/`; `reencoded_images` points at
//! the copies (same image ids), so a pipeline can measure protection after re-encoding.

use anyhow::Result;
use bytes::Bytes;
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::attack::cloaker::{OutputFormat, encode};
use crate::io::image::{DecodeLimits, resize};
use crate::io::pictures::PictureLoader;
use crate::io::sha256_hex;
use crate::pipeline::{Chunks, Context, Kind, Slot, StageConfig, check, plan_from};
use crate::tables::images::{self, ImageRow, Picture, REENCODED, Replacement, Status};

pub const KIND: Kind = Kind {
    name: "reencode",
    summary: "re-save pictures as JPEG at a quality (and size), as a social network would",
    inputs: &[Slot::new("images", images::ANY)],
    optional_inputs: &[],
    outputs: &[Slot::new("reencoded_images", &[REENCODED])],
    plan: plan_from::<Reencode>,
};

/// Configuration of the `reencode` stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reencode {
    /// JPEG quality, 1..100.
    pub quality: u8,
    /// Shrink pictures whose longer side exceeds this (never enlarges).
    #[serde(default)]
    pub max_side: Option<u32>,
    #[serde(default)]
    pub limits: DecodeLimits,
}

/// Pictures re-encoded per saved chunk.
const CHUNK: usize = 64;

impl StageConfig for Reencode {
    fn validate(&self) -> Result<(), String> {
        check((1..=100).contains(&self.quality), "quality", self.quality, "a JPEG quality within 1..100")?;
        check(self.max_side.is_none_or(|m| m >= 1), "max_side", self.max_side, "at least 1")?;
        self.limits.check()
    }

    fn run(&self, ctx: &mut Context) -> Result<()> {
        let rows = images::read(&ctx.read("images")?)?;
        let out_dir = ctx.files_dir("reencoded");
        let mut loader = PictureLoader::new(self.limits.clone(), 16);
        let outputs = [("reencoded_images", images::batch(REENCODED, &[])?.schema())];
        ctx.resumable(&rows, &Chunks::even(rows.len(), CHUNK), "pictures", &outputs, |chunk, tally| {
            let pictures: Vec<Picture> = chunk.iter().filter(|r| r.status == Status::Ok).map(ImageRow::picture).collect::<Result<_>>()?;
            let decoded = loader.decode(&pictures);
            let copies: Vec<(String, Result<Replacement, String>)> = pictures
                .par_iter()
                .zip(decoded)
                .map(|(p, d)| (p.image_id.clone(), d.and_then(|rgb| self.copy(&out_dir, p, rgb).map_err(|e| format!("{e:#}")))))
                .collect();
            let mut out: Vec<ImageRow> = chunk.to_vec();
            for (id, copy) in copies {
                let row = out.iter_mut().find(|r| r.image_id == id).expect("every picture has its row");
                match copy {
                    Ok(c) => *row = row.replaced_by(&c),
                    Err(reason) => {
                        tally.failed.add(reason.clone());
                        *row = ImageRow { status: Status::Error, error: Some(format!("cannot re-encode: {reason}")), ..row.clone() };
                    }
                }
            }
            Ok(vec![vec![images::batch(REENCODED, &out)?]])
        })?;
        ctx.report.push(format!(
            "reencode: {} pictures as JPEG q{}{}",
            rows.iter().filter(|r| r.status == Status::Ok).count() as u64 - ctx.tally.failed.n,
            self.quality,
            self.max_side.map_or(String::new(), |m| format!(", longer side <= {m}"))
        ));
        Ok(())
    }
}

impl Reencode {
    /// Writes `rgb` (shrunk, re-encoded) as `p`'s copy and describes it.
    fn copy(&self, out_dir: &crate::io::Location, p: &Picture, rgb: RgbImage) -> Result<Replacement> {
        let rgb = self.shrink(rgb);
        let bytes = encode(&rgb, OutputFormat::Jpg, self.quality)?;
        let rel_path = match p.rel_path.rsplit_once('.') {
            Some((stem, _)) => format!("{stem}.jpg"),
            None => format!("{}.jpg", p.rel_path),
        };
        let copy = Replacement {
            uri: out_dir.url_of(&rel_path),
            rel_path: rel_path.clone(),
            format: "jpg".into(),
            width: rgb.width(),
            height: rgb.height(),
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        };
        out_dir.put(&rel_path, Bytes::from(bytes))?;
        Ok(copy)
    }

    fn shrink(&self, rgb: RgbImage) -> RgbImage {
        match self.max_side {
            Some(m) if rgb.width().max(rgb.height()) > m => {
                let s = m as f64 / rgb.width().max(rgb.height()) as f64;
                resize(&rgb, ((rgb.width() as f64 * s).round() as u32).max(1), ((rgb.height() as f64 * s).round() as u32).max(1))
            }
            _ => rgb,
        }
    }
}
