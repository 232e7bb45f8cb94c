//! Decoding pictures safely: format sniffing, EXIF orientation, and bounds against
//! decompression bombs.
//!
//! Every failure is a [`DecodeError`] whose message says what is wrong with the bytes
//! ("empty file", "claims 30000 x 30000 pixels, over the limit of ..."); callers add the file's
//! URL and turn it into an error row, so one bad file never stops a run.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
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
        if let Some(advice) = unsupported_format(bytes) {
            return fail(advice);
        }
        return fail(format!("not an image: unrecognised content (first bytes {})", hex_prefix(bytes)));
    };
    if !matches!(format, ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Bmp | ImageFormat::Gif | ImageFormat::Tiff) {
        return fail(format!("{format:?} pictures are not supported ({SUPPORTED}): convert it to JPEG or PNG first"));
    }
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
    if format == ImageFormat::Jpeg {
        // zune-jpeg fills a truncated scan with grey and reports success; a half-grey face
        // would silently poison embeddings, so a JPEG that ends before its end marker is an error.
        jpeg_structure(bytes).map_err(|e| DecodeError(format!("truncated jpeg: {e}")))?;
    }
    picture.apply_orientation(orientation);
    Ok(Decoded { rgb: picture.into_rgb8(), format: format_name, exif_orientation: orientation.to_exif() })
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

/// The formats decoded, for messages.
pub const SUPPORTED: &str = "JPEG, PNG, WebP, BMP, GIF (first frame) and TIFF";

/// Advice for the formats people have that we do not decode: HEIC (phone cameras' default) and
/// AVIF, recognised by their ISO-BMFF `ftyp` brand.
fn unsupported_format(bytes: &[u8]) -> Option<String> {
    if bytes.len() < 12 || &bytes[4..8] != b"ftyp" {
        return None;
    }
    let brand = &bytes[8..12];
    let (name, convert) = match brand {
        b"heic" | b"heix" | b"hevc" | b"hevx" | b"heim" | b"heis" | b"mif1" | b"msf1" => {
            ("HEIC/HEIF (a phone camera's default)", "`heif-convert photo.heic photo.jpg` (Debian package libheif-examples)")
        }
        b"avif" | b"avis" => ("AVIF", "`heif-convert photo.avif photo.jpg` (libheif-examples) or `avifdec photo.avif photo.png`"),
        _ => return None,
    };
    Some(format!("{name} pictures are not supported ({SUPPORTED}): convert it first, e.g. with {convert}, or export as JPEG"))
}

/// Walks a JPEG's segments to its end-of-image marker: every segment's length must fit in the
/// file, and the entropy-coded data after each start-of-scan must end in a marker. Looking for
/// the bytes FF D9 anywhere is not enough: a comment or an EXIF thumbnail can hold them while
/// the scan itself was cut short. Bytes after the marker (camera trailers) are allowed.
fn jpeg_structure(bytes: &[u8]) -> Result<(), String> {
    let n = bytes.len();
    let ended = || Err("the file ends before the end-of-image marker".to_owned());
    let mut i = 2; // after SOI (the format sniffer checked it)
    loop {
        // Fill bytes (and any stray byte between segments, which decoders skip too).
        while i < n && bytes[i] != 0xFF {
            i += 1;
        }
        while i < n && bytes[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else { return ended() };
        i += 1;
        match marker {
            0xD9 => return Ok(()),
            0x01 | 0xD0..=0xD8 => continue, // standalone markers
            _ => {}
        }
        let Some(len) = bytes.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize) else { return ended() };
        if len < 2 {
            return Err(format!("segment {marker:#04X} at byte {} has an invalid length {len}", i - 2));
        }
        if i + len > n {
            return Err(format!("segment {marker:#04X} at byte {} is cut short", i - 2));
        }
        i += len;
        if marker == 0xDA {
            // Entropy-coded data: FF is followed by 00 (a stuffed byte) or a restart marker
            // inside it; any other marker ends it.
            loop {
                match bytes.get(i..i + 2) {
                    None => return Err("the scan data is cut short".to_owned()),
                    Some([0xFF, next]) if *next == 0x00 || (0xD0..=0xD7).contains(next) => i += 2,
                    Some([0xFF, 0xFF]) => i += 1,
                    Some([0xFF, _]) => break,
                    Some(_) => i += 1,
                }
            }
        }
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

/// Resizes to exactly `width` x `height` with a triangle (bilinear) filter, widened by the scale
/// when shrinking so that every input pixel counts.
///
/// The arithmetic is `image::imageops::resize(.., FilterType::Triangle)`'s, operation for
/// operation (same weights, same order of additions, same rounding: a test checks the bytes),
/// but rows are walked in memory order over three channels: that function sums each output
/// column down the whole picture through four channels, a cache miss per tap, and resizing a
/// photo to a model's input cost more than decoding it.
pub fn resize(rgb: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w_in, h_in) = (rgb.width() as usize, rgb.height() as usize);
    if (w_in, h_in) == (width as usize, height as usize) || w_in == 0 || h_in == 0 || width == 0 || height == 0 {
        return if (w_in, h_in) == (width as usize, height as usize) { rgb.clone() } else { RgbImage::new(width, height) };
    }
    let (w_out, h_out) = (width as usize, height as usize);
    // Down the columns first, into floats (as `image` does): one output row at a time, each a
    // weighted sum of whole input rows.
    let src = rgb.as_raw();
    let row_len = 3 * w_in;
    let mut columns = vec![0f32; h_out * row_len];
    for (out_row, taps) in columns.chunks_exact_mut(row_len).zip(triangle_taps(h_in, h_out)) {
        for (i, &weight) in taps.weights.iter().enumerate() {
            let row = &src[(taps.first + i) * row_len..][..row_len];
            for (acc, &v) in out_row.iter_mut().zip(row) {
                *acc += v as f32 * weight;
            }
        }
    }
    // Then along the rows, rounded to bytes.
    let across = triangle_taps(w_in, w_out);
    let mut out = Vec::with_capacity(3 * w_out * h_out);
    for row in columns.chunks_exact(row_len) {
        for taps in &across {
            let mut sum = [0f32; 3];
            for (i, &weight) in taps.weights.iter().enumerate() {
                let px = &row[3 * (taps.first + i)..][..3];
                for c in 0..3 {
                    sum[c] += px[c] * weight;
                }
            }
            out.extend(sum.map(|v| round_to_byte(v.clamp(0.0, 255.0))));
        }
    }
    RgbImage::from_raw(width, height, out).expect("3 bytes per pixel")
}

/// `v.round() as u8` for `v` in 0..=255 (halves away from zero), without a call to libm's
/// `roundf`, which the compiler does not inline and which took a third of the resize.
fn round_to_byte(v: f32) -> u8 {
    let whole = v as u8; // truncates
    if v - whole as f32 >= 0.5 { whole + 1 } else { whole }
}

/// One output pixel's share of the input along an axis: weights for inputs `first..`.
struct Taps {
    first: usize,
    weights: Vec<f32>,
}

/// The triangle filter's taps for resizing `n_in` pixels to `n_out`, computed in `f32` exactly
/// as `image`'s `horizontal_sample` and `vertical_sample` compute them.
fn triangle_taps(n_in: usize, n_out: usize) -> Vec<Taps> {
    let ratio = n_in as f32 / n_out as f32;
    let sratio = if ratio < 1.0 { 1.0 } else { ratio };
    let support = sratio; // the triangle's support is 1, scaled
    (0..n_out)
        .map(|o| {
            let centre = (o as f32 + 0.5) * ratio;
            let left = ((centre - support).floor() as i64).clamp(0, n_in as i64 - 1);
            let right = ((centre + support).ceil() as i64).clamp(left + 1, n_in as i64);
            let centre = centre - 0.5;
            let mut weights: Vec<f32> = (left..right)
                .map(|i| {
                    let x = ((i as f32 - centre) / sratio).abs();
                    if x < 1.0 { 1.0 - x } else { 0.0 }
                })
                .collect();
            let sum = weights.iter().fold(0.0f32, |s, w| s + w);
            weights.iter_mut().for_each(|w| *w /= sum);
            Taps { first: left as usize, weights }
        })
        .collect()
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

    /// A JPEG whose comment holds the end-of-image bytes, cut short in its scan: the decoder
    /// fills the rest grey, and only the segment walk sees that the scan ends early.
    #[test]
    fn a_truncated_jpeg_is_refused_even_with_an_end_marker_in_a_comment() {
        let plain = jpeg_with_orientation(64, 64, 1);
        let mut with_comment = plain[..2].to_vec();
        with_comment.extend_from_slice(&[0xFF, 0xFE, 0x00, 0x06, b'x', b'x', 0xFF, 0xD9]);
        with_comment.extend_from_slice(&plain[2..]);
        assert!(decode(&with_comment, &DecodeLimits::default()).is_ok(), "the whole file decodes");
        let err = decode(&with_comment[..with_comment.len() - 40], &DecodeLimits::default()).unwrap_err();
        assert!(err.0.contains("truncated jpeg") && err.0.contains("scan"), "{err}");
        // A trailer after the end marker (some cameras add one) is fine.
        let mut trailer = with_comment.clone();
        trailer.extend_from_slice(b"camera trailer");
        assert!(decode(&trailer, &DecodeLimits::default()).is_ok());
    }

    #[test]
    fn gif_and_tiff_decode_and_heic_says_how_to_convert() {
        for format in [ImageFormat::Gif, ImageFormat::Tiff] {
            let mut out = Vec::new();
            RgbImage::new(9, 4).write_to(&mut Cursor::new(&mut out), format).unwrap();
            let d = decode(&out, &DecodeLimits::default()).unwrap();
            assert_eq!((d.rgb.width(), d.rgb.height()), (9, 4), "{format:?}");
        }
        let heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic";
        let err = decode(heic, &DecodeLimits::default()).unwrap_err();
        assert!(err.0.contains("HEIC") && err.0.contains("heif-convert"), "{err}");
    }

    #[test]
    fn resize_gives_image_crates_triangle_resize_byte_for_byte() {
        let mut rng = crate::rng::Rng::new(7);
        // Shrinking by whole and fractional factors (a photo to a model's input), enlarging,
        // one axis unchanged, and single-pixel edges.
        for ((w, h), (nw, nh)) in [
            ((1758, 1203), (150, 150)),
            ((401, 253), (112, 112)),
            ((105, 97), (160, 160)),
            ((64, 48), (64, 20)),
            ((33, 1), (7, 3)),
            ((1, 1), (5, 4)),
            ((250, 250), (224, 224)),
        ] {
            let bytes: Vec<u8> = (0..3 * w * h).map(|_| (rng.next_u64() >> 56) as u8).collect();
            let picture = RgbImage::from_raw(w, h, bytes).unwrap();
            let theirs = image::imageops::resize(&picture, nw, nh, image::imageops::FilterType::Triangle);
            assert!(resize(&picture, nw, nh) == theirs, "{w}x{h} -> {nw}x{nh}");
        }
    }

    #[test]
    fn rounding_to_a_byte_is_rounding() {
        for v in (0..=255 * 64).map(|i| i as f32 / 64.0).chain([0.49999997, 254.49998, 254.5, 255.0, 1e-9]) {
            assert_eq!(round_to_byte(v), v.round() as u8, "{v}");
        }
    }

    #[test]
    fn planar_layout_puts_channels_first() {
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(1, 0, image::Rgb([1, 2, 3]));
        assert_eq!(to_chw_f32(&img), vec![0., 1., 0., 2., 0., 3.]);
    }
}
