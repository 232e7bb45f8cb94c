//! The `reencode` stage: what a social network does to an uploaded picture. Every decodable
//! picture of an images table is re-saved as JPEG at a chosen quality, optionally shrunk so
//! its longer side fits `max_side`, and a new images table points at the copies (same image
//! ids), so a pipeline can measure protection after re-encoding.

use std::collections::HashMap;

use anyhow::Result;
use bytes::Bytes;
use rayon::prelude::*;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::attack::cloaker::{OutputFormat, encode};
use super::cloak::{Replacement, swap_images};
use crate::stages::embed::{PictureLoader, ok_pictures};
use crate::io::image::{DecodeLimits, resize};
use crate::tables as table;
use crate::io::hex;
use crate::pipeline::stage::{Context, Kind, Stage, build_from};

pub const KIND: Kind = Kind {
    name: "reencode",
    summary: "re-save pictures as JPEG at a quality (and size), as a social network would",
    inputs: &["images"],
    optional_inputs: &[],
    outputs: &["reencoded_images"],
    build: build_from::<Reencode>,
};

/// Configuration of the `reencode` stage.
#[derive(Debug, Clone, Deserialize)]
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

impl Stage for Reencode {
    fn run(&self, ctx: &mut Context) -> Result<()> {
        let images = ctx.read("images")?;
        let pictures = ok_pictures(&images)?;
        let out_dir = ctx.run_dir.child(&format!("reencoded/{}", ctx.stage));
        let mut loader = PictureLoader::new(self.limits.clone(), 16);
        let mut replaced: HashMap<String, Replacement> = HashMap::new();
        let mut progress = ctx.progress(pictures.len() as u64, "pictures");
        for chunk in pictures.chunks(64) {
            let decoded = loader.decode(chunk)?;
            let encoded: Vec<_> = chunk
                .par_iter()
                .zip(decoded)
                .filter_map(|(p, d)| d.ok().map(|rgb| (p, self.shrink(rgb))))
                .map(|(p, rgb)| encode(&rgb, OutputFormat::Jpg, self.quality).map(|b| (p, rgb.dimensions(), b)))
                .collect::<Result<_>>()?;
            for (p, (w, h), bytes) in encoded {
                let rel = match p.rel_path.rsplit_once('.') {
                    Some((stem, _)) => format!("{stem}.jpg"),
                    None => format!("{}.jpg", p.rel_path),
                };
                out_dir.put(&rel, Bytes::from(bytes.clone()))?;
                replaced.insert(p.image_id.clone(), (out_dir.url_of(&rel), rel, bytes.len() as u64, hex(&Sha256::digest(&bytes)), "jpg", (w, h)));
            }
            progress.add(chunk.len() as u64);
        }
        progress.finish();
        ctx.write("reencoded_images", table::schema("images").arrow(None), &swap_images(&images, &replaced)?)?;
        ctx.report.push(format!("reencode: {} pictures as JPEG q{}{}", replaced.len(), self.quality, self.max_side.map_or(String::new(), |m| format!(", longer side <= {m}"))));
        Ok(())
    }
}

impl Reencode {
    fn shrink(&self, rgb: image::RgbImage) -> image::RgbImage {
        match self.max_side {
            Some(m) if rgb.width().max(rgb.height()) > m => {
                let s = m as f64 / rgb.width().max(rgb.height()) as f64;
                resize(&rgb, ((rgb.width() as f64 * s).round() as u32).max(1), ((rgb.height() as f64 * s).round() as u32).max(1))
            }
            _ => rgb,
        }
    }
}
