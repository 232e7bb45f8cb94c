//! Before and after: each cloaked picture beside its original and the difference between them,
//! amplified until it is visible, with the figures that say how much the cloak changed. Shared
//! by the run report and `cloakbench cloak --report`.

use std::fmt::Write;
use std::io::Cursor;

use anyhow::Result;
use bytes::Bytes;
use image::RgbImage;
use tch::Tensor;

use super::html::escape;
use crate::attack::ssim::dssim;
use crate::io::Location;
use crate::io::image::{resize, to_chw_f32};

/// Pictures are shown at most this wide or high (CSS pixels), large enough to judge a face.
const SHOWN: u32 = 360;

/// One cloaked picture and its original.
pub struct Pair {
    /// What the reader knows the picture by (its dataset path).
    pub label: String,
    pub original: RgbImage,
    pub cloaked: RgbImage,
    /// The cloak's own DSSIM when the run measured it (on the face crop it optimised);
    /// else the report measures it on the whole picture.
    pub face_dssim: Option<f64>,
}

/// How far a cloaked picture is from its original, on the whole picture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Change {
    pub dssim: f64,
    pub psnr: f64,
    /// Largest change of any channel of any pixel, on the 0..255 scale.
    pub linf: u8,
}

pub fn change(original: &RgbImage, cloaked: &RgbImage) -> Change {
    let (mut sum, mut linf) = (0f64, 0u8);
    for (a, b) in original.as_raw().iter().zip(cloaked.as_raw()) {
        let d = a.abs_diff(*b);
        linf = linf.max(d);
        sum += f64::from(d) * f64::from(d);
    }
    let mse = sum / original.as_raw().len().max(1) as f64;
    let psnr = if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0f64 * 255.0 / mse).log10() };
    let tensor = |rgb: &RgbImage| Tensor::from_slice(&to_chw_f32(rgb)).view([1, 3, rgb.height() as i64, rgb.width() as i64]);
    let dssim = if original.width() >= 11 && original.height() >= 11 { dssim(&tensor(original), &tensor(cloaked), 255.0).double_value(&[0]) } else { 0.0 };
    Change { dssim, psnr, linf }
}

/// |cloaked - original| per channel, scaled so that the largest change is white; the factor.
fn amplified_difference(original: &RgbImage, cloaked: &RgbImage, linf: u8) -> (RgbImage, f64) {
    let gain = 255.0 / f64::from(linf.max(1));
    let mut out = RgbImage::new(original.width(), original.height());
    for ((o, a), b) in out.as_mut().iter_mut().zip(original.as_raw()).zip(cloaked.as_raw()) {
        *o = (f64::from(a.abs_diff(*b)) * gain).round().min(255.0) as u8;
    }
    (out, gain)
}

fn shown(rgb: &RgbImage) -> RgbImage {
    let (w, h) = (rgb.width(), rgb.height());
    let scale = (f64::from(SHOWN) / f64::from(w.max(h))).min(1.0);
    resize(rgb, ((f64::from(w) * scale).round() as u32).max(1), ((f64::from(h) * scale).round() as u32).max(1))
}

fn png(rgb: &RgbImage) -> Result<Bytes> {
    let mut out = Cursor::new(Vec::new());
    rgb.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(Bytes::from(out.into_inner()))
}

/// Writes each pair's three pictures under `dir/<prefix>-<n>-*.png` and returns the grid's HTML
/// (its image paths relative to `dir`'s parent, where the page is).
pub fn grid(pairs: &[Pair], out: &Location, folder: &str, prefix: &str) -> Result<String> {
    let mut html = String::from(
        "<div class=\"pictures\"><div class=\"head\">original</div><div class=\"head\">cloaked</div><div class=\"head\">difference, amplified</div>",
    );
    for (n, pair) in pairs.iter().enumerate() {
        let cloaked = if pair.cloaked.dimensions() == pair.original.dimensions() {
            pair.cloaked.clone()
        } else {
            resize(&pair.cloaked, pair.original.width(), pair.original.height())
        };
        let c = change(&pair.original, &cloaked);
        let (difference, gain) = amplified_difference(&pair.original, &cloaked, c.linf);
        let names = ["original", "cloaked", "difference"].map(|kind| format!("{folder}/{prefix}-{n}-{kind}.png"));
        for (name, rgb) in names.iter().zip([&pair.original, &cloaked, &difference]) {
            out.put(name, png(&shown(rgb))?)?;
        }
        let alts = ["original", "cloaked", &format!("difference x{gain:.0}")].map(|a| format!("{} {a}", pair.label));
        for (name, alt) in names.iter().zip(alts) {
            let _ = write!(html, "<figure><img src=\"{}\" alt=\"{}\"></figure>", escape(name), escape(&alt));
        }
        let face = pair.face_dssim.map(|d| format!("DSSIM {:.4} on the face crop the cloak optimised, ", d.max(0.0))).unwrap_or_default();
        let shown_gain = if c.linf == 0 { "no pixel changed".to_string() } else { format!("difference x{gain:.0}") };
        let _ = write!(
            html,
            "<div class=\"figures\"><b>{}</b>: {face}DSSIM {:.4}, PSNR {:.1} dB, L-inf {}/255 on the whole picture ({}x{} px); {shown_gain}</div>",
            escape(&pair.label),
            c.dssim.max(0.0),
            c.psnr,
            c.linf,
            pair.original.width(),
            pair.original.height()
        );
    }
    html.push_str("</div>");
    Ok(html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_change_is_measured_and_the_difference_made_visible() {
        let original = RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, 128]));
        let mut cloaked = original.clone();
        cloaked.get_pixel_mut(3, 4).0[1] += 5;
        let c = change(&original, &cloaked);
        assert_eq!(c.linf, 5);
        assert!((c.psnr - 10.0 * (255.0f64 * 255.0 / (25.0 / 3600.0)).log10()).abs() < 1e-9);
        assert!(c.dssim > 0.0 && c.dssim < 0.01);
        let (d, gain) = amplified_difference(&original, &cloaked, c.linf);
        assert_eq!(gain, 51.0);
        assert_eq!(d.get_pixel(3, 4).0, [0, 255, 0]);
        assert_eq!(change(&original, &original).psnr, f64::INFINITY);
    }
}
