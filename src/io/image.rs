//! Decoding pictures safely: format sniffing, EXIF orientation, and bounds against
//! decompression bombs.
//!
//! Every failure is a [`DecodeError`] whose message says what is wrong with the bytes
//! ("empty file", "claims 30000 x 30000 pixels, over the limit of ..."); callers add the file's
//! URL and turn it into an error row, so one bad file never stops a run.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage, imageops::FilterType};
use serde::{Deserialize, Serialize};

/// Bounds on what we agree to decode. The defaults admit any real photo (a 100-megapixel
/// camera frame) and refuse crafted headers that would allocate gigabytes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeLimits {
    /// Largest encoded file accepted, in bytes.
    pub max_bytes: u64,
    /// Largest decoded picture accepted, in pixels (width x height).
    pub max_pixels: u64,
    /// Largest width or height accepted.
    pub max_side: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_bytes: 64 << 20, max_pixels: 100_000_000, max_side: 20_000 }
    }
}

impl DecodeLimits {
    /// Limits that admit some picture: every bound at least 1.
    pub fn check(&self) -> Result<(), String> {
        if self.max_bytes == 0 || self.max_pixels == 0 || self.max_side == 0 {
            return Err(format!("limits = {self:?}: max_bytes, max_pixels and max_side must each be at least 1"));
        }
        Ok(())
    }
}

/// Why a file could not be turned into pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

/// A decoded picture, upright (EXIF orientation applied), as 8-bit RGB.
#[derive(Debug)]
pub struct Decoded {
    pub rgb: RgbImage,
    /// Lower-case format name, e.g. `jpeg`.
    pub format: &'static str,
    /// The EXIF orientation tag that was applied (1 = already upright).
    pub exif_orientation: u8,
}

/// Decodes `bytes` within `limits`.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<Decoded, DecodeError> {
    let fail = |msg: String| Err(DecodeError(msg));
    if bytes.is_empty() {
        return fail("empty file (0 bytes)".into());
    }
    if bytes.len() as u64 > limits.max_bytes {
        return fail(format!("file is {} bytes, over the limit of {} bytes", bytes.len(), limits.max_bytes));
    }
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| DecodeError(format!("cannot read: {e}")))?;
    let Some(format) = reader.format() else {
        return fail(format!("not an image: unrecognised content (first bytes {})", hex_prefix(bytes)));
    };
    let format_name = format.extensions_str().first().copied().unwrap_or("unknown");
    let mut decoder = reader.into_decoder().map_err(|e| DecodeError(format!("invalid {format_name} header: {e}")))?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, limits)?;
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(limits.max_side);
    decoder_limits.max_image_height = Some(limits.max_side);
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8));
    decoder.set_limits(decoder_limits).map_err(|e| DecodeError(format!("refused: {e}")))?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut picture = DynamicImage::from_decoder(decoder).map_err(|e| DecodeError(format!("corrupt {format_name} data: {e}")))?;
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // zune-jpeg fills a truncated scan with grey and reports success; a half-grey face
        // would silently poison embeddings, so a JPEG without its end marker is an error.
        return fail("truncated jpeg: the end-of-image marker is missing".into());
    }
    picture.apply_orientation(orientation);
    Ok(Decoded { rgb: picture.to_rgb8(), format: format_name, exif_orientation: orientation.to_exif() })
}

fn check_dimensions(width: u32, height: u32, limits: &DecodeLimits) -> Result<(), DecodeError> {
    let pixels = width as u64 * height as u64;
    if width == 0 || height == 0 {
        return Err(DecodeError(format!("header claims an empty picture ({width} x {height})")));
    }
    if width > limits.max_side || height > limits.max_side || pixels > limits.max_pixels {
        return Err(DecodeError(format!(
            "header claims {width} x {height} pixels, over the limits ({} pixels, {} per side): \
             refused as a possible decompression bomb",
            limits.max_pixels, limits.max_side
        )));
    }
    Ok(())
}

/// A complete JPEG ends with the EOI marker (FF D9), possibly followed by padding or a
/// trailer some cameras append; we look for it near the end.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

/// Resizes to exactly `width` x `height` with a triangle (bilinear) filter.
pub fn resize(rgb: &RgbImage, width: u32, height: u32) -> RgbImage {
    if rgb.width() == width && rgb.height() == height {
        return rgb.clone();
    }
    image::imageops::resize(rgb, width, height, FilterType::Triangle)
}

/// Planar float32 copy (C x H x W, RGB, values 0..255), the layout our models take.
pub fn to_chw_f32(rgb: &RgbImage) -> Vec<f32> {
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let mut out = vec![0f32; 3 * w * h];
    for (i, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            out[c * w * h + i] = px.0[c] as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_bytes(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        RgbImage::new(w, h).write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
        out
    }

    #[test]
    fn decodes_a_small_png() {
        let d = decode(&png_bytes(7, 5), &DecodeLimits::default()).unwrap();
        assert_eq!((d.rgb.width(), d.rgb.height(), d.format, d.exif_orientation), (7, 5, "png", 1));
    }

    #[test]
    fn refuses_empty_and_text_files() {
        let limits = DecodeLimits::default();
        assert!(decode(b"", &limits).unwrap_err().0.contains("empty file"));
        assert!(decode(b"hello, I am text", &limits).unwrap_err().0.contains("not an image"));
    }

    #[test]
    fn refuses_oversized_headers_before_decoding() {
        let limits = DecodeLimits { max_pixels: 30, ..DecodeLimits::default() };
        let err = decode(&png_bytes(7, 5), &limits).unwrap_err();
        assert!(err.0.contains("7 x 5"), "{err}");
    }

    #[test]
    fn refuses_files_over_the_byte_limit() {
        let limits = DecodeLimits { max_bytes: 10, ..DecodeLimits::default() };
        assert!(decode(&png_bytes(7, 5), &limits).unwrap_err().0.contains("over the limit"));
    }

    /// A JPEG with an EXIF APP1 segment holding only the orientation tag.
    fn jpeg_with_orientation(w: u32, h: u32, orientation: u8) -> Vec<u8> {
        let mut plain = Vec::new();
        RgbImage::new(w, h).write_to(&mut Cursor::new(&mut plain), image::ImageFormat::Jpeg).unwrap();
        let mut tiff = b"II\x2a\x00\x08\x00\x00\x00\x01\x00".to_vec(); // header, IFD with 1 entry
        tiff.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0, orientation, 0, 0, 0, 0, 0, 0, 0]);
        let mut app1 = b"Exif\x00\x00".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = plain[..2].to_vec(); // SOI
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&plain[2..]);
        out
    }

    #[test]
    fn exif_orientation_is_applied() {
        let d = decode(&jpeg_with_orientation(8, 4, 6), &DecodeLimits::default()).unwrap();
        assert_eq!((d.rgb.width(), d.rgb.height(), d.exif_orientation), (4, 8, 6), "rotated 90 degrees");
        let d = decode(&jpeg_with_orientation(8, 4, 1), &DecodeLimits::default()).unwrap();
        assert_eq!((d.rgb.width(), d.rgb.height(), d.exif_orientation), (8, 4, 1));
    }

    #[test]
    fn truncated_jpegs_are_refused() {
        let full = jpeg_with_orientation(64, 64, 1);
        let err = decode(&full[..full.len() - 40], &DecodeLimits::default()).unwrap_err();
        assert!(err.0.contains("truncated") || err.0.contains("corrupt"), "{err}");
    }

    #[test]
    fn planar_layout_puts_channels_first() {
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(1, 0, image::Rgb([1, 2, 3]));
        assert_eq!(to_chw_f32(&img), vec![0., 1., 0., 2., 0., 3.]);
    }
}
