//! Alignment: the crop each face model was trained on, made from a detected face as a
//! differentiable warp of the full picture.
//!
//! Every alignment is an affine map from output pixels to input pixels, applied with
//! `affine_grid` + bilinear `grid_sample`. Because it is a tensor op, a cloak can be optimised
//! on the full-resolution picture *through* the alignment (LowKey's trick), and the same code
//! crops faces for embedding. Pixel coordinates put pixel centres at integers (as OpenCV, dlib
//! and MTCNN's landmarks do).
//!
//! | name           | used by                         | how                                                         |
//! |----------------|---------------------------------|-------------------------------------------------------------|
//! | `arcface`      | MobileFaceNets (112x112)        | similarity transform of the 5 landmarks onto ArcFace's template |
//! | `dlib_chip`    | dlib ResNet (150x150)           | similarity onto dlib's mean face, padding 0.25 (get_face_chip_details) |
//! | `facenet_crop` | FaceNet (160x160)               | MTCNN box plus a 32 px margin, clipped to the picture, resized (not rotated) |
//! | `loose_box`    | HSE MobileNet (224x224)         | MTCNN box plus 10 px on each side, resized (not rotated)      |
//!
//! Downscaling a large photo with a bilinear sampler aliases, so when the warp shrinks by 2x or
//! more the picture is first average-pooled by the integer factor (also differentiable).

use anyhow::{Result, anyhow, bail};
use image::RgbImage;
use tch::{Device, Kind, Tensor};

use crate::models::ModelCard;
use crate::models::card::AlignmentName;

/// An affine map `[a b c; d e f]`: (x, y) -> (a x + b y + c, d x + e y + f).
pub type Affine = [[f64; 3]; 2];

/// ArcFace's 5-point template for 112x112 crops (insightface `arcface_dst`).
pub const ARCFACE_112: [[f64; 2]; 5] = [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]];

/// dlib's mean face at the 5 MTCNN points (eye centres, nose, mouth corners), in the unit
/// square of `get_face_chip_details` (derived from dlib's 68-point mean face shape).
pub const DLIB_MEAN_FACE: [[f64; 2]; 5] = [[0.224152, 0.2119465], [0.75610125, 0.2119465], [0.490127, 0.628106], [0.254149, 0.780233], [0.726104, 0.780233]];

/// A detected face: box [x1, y1, x2, y2] and 5 landmarks, in pixels of the picture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceGeometry {
    pub bbox: [f64; 4],
    pub landmarks: [[f64; 2]; 5],
}

/// How a model wants its face cropped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Alignment {
    Arcface {
        size: i64,
    },
    DlibChip {
        size: i64,
        padding: f64,
    },
    /// The box grown by `margin` pixels on each side, clipped to the picture, resized.
    BoxCrop {
        height: i64,
        width: i64,
        margin: f64,
    },
    /// The square around the box's centre with side max(w, h) + 2 margin, resized (Fawkes'
    /// face crop; outside the picture is zero where Fawkes pads with the mean colour).
    SquareBox {
        size: i64,
        margin: f64,
    },
}

impl Alignment {
    /// The alignment a model card names, at the card's input size.
    pub fn from_card(card: &ModelCard) -> Result<Alignment> {
        card.check().map_err(|e| anyhow!(e))?;
        Alignment::new(card.alignment, card.input_size)
    }

    /// Alignment `name` making crops of `input_size` ([height, width]): how a trainer that
    /// crops faces its own way feeds a model.
    pub fn new(name: AlignmentName, input_size: [i64; 2]) -> Result<Alignment> {
        let [height, width] = input_size;
        if name.square() && height != width {
            bail!("alignment {name} makes square crops, and the input is {height}x{width}");
        }
        Ok(match name {
            AlignmentName::Arcface => Alignment::Arcface { size: height },
            AlignmentName::DlibChip => Alignment::DlibChip { size: height, padding: 0.25 },
            AlignmentName::FacenetCrop => Alignment::BoxCrop { height, width, margin: 16.0 },
            AlignmentName::LooseBox => Alignment::BoxCrop { height, width, margin: 10.0 },
        })
    }

    pub fn output_size(&self) -> [i64; 2] {
        match *self {
            Alignment::Arcface { size } | Alignment::DlibChip { size, .. } | Alignment::SquareBox { size, .. } => [size, size],
            Alignment::BoxCrop { height, width, .. } => [height, width],
        }
    }

    /// The map from output pixels to picture pixels for `face` in a `picture_size` ([h, w]) picture.
    pub fn output_to_input(&self, face: &FaceGeometry, picture_size: [i64; 2]) -> Affine {
        match *self {
            Alignment::Arcface { size } => {
                let scale = size as f64 / 112.0;
                let template = ARCFACE_112.map(|[x, y]| [x * scale, y * scale]);
                similarity(&template, &face.landmarks)
            }
            Alignment::DlibChip { size, padding } => {
                let s = size as f64;
                let template = DLIB_MEAN_FACE.map(|[x, y]| [(padding + x) / (2.0 * padding + 1.0) * s, (padding + y) / (2.0 * padding + 1.0) * s]);
                similarity(&template, &face.landmarks)
            }
            Alignment::SquareBox { size, margin } => {
                let [x1, y1, x2, y2] = face.bbox;
                let side = (x2 - x1).max(y2 - y1) + 2.0 * margin;
                let (cx, cy) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
                let s = side / size as f64;
                [[s, 0.0, cx - side / 2.0 + 0.5 * s - 0.5], [0.0, s, cy - side / 2.0 + 0.5 * s - 0.5]]
            }
            Alignment::BoxCrop { height, width, margin } => {
                let [x1, y1, x2, y2] = face.bbox;
                let (ph, pw) = (picture_size[0] as f64, picture_size[1] as f64);
                let (x1, y1) = ((x1 - margin).max(0.0), (y1 - margin).max(0.0));
                let (x2, y2) = ((x2 + margin).min(pw), (y2 + margin).min(ph));
                // Resizing [x1, x2) onto `width` pixels with half-pixel centres.
                let (sx, sy) = ((x2 - x1) / width as f64, (y2 - y1) / height as f64);
                [[sx, 0.0, x1 + 0.5 * sx - 0.5], [0.0, sy, y1 + 0.5 * sy - 0.5]]
            }
        }
    }

    /// Crops `face` from `picture` ([N, C, H, W], any float values), differentiably.
    pub fn crop(&self, picture: &Tensor, face: &FaceGeometry) -> Tensor {
        let size = picture.size();
        let m = self.output_to_input(face, [size[2], size[3]]);
        warp(picture, m, self.output_size())
    }

    /// Crops `face` from a decoded picture: [1, 3, h, w] float pixels 0..255, what [`crop`]
    /// gives on the whole picture (the same pooled cells to the bit, the sampling positions to
    /// float rounding: a test checks it), computed in plain Rust from the pixels the crop
    /// reads. Embedding crops faces on every core at once, where each of [`crop`]'s tensor
    /// ops would start libtorch's own threads, and converting and pooling a whole photo for
    /// one face cost more than the crop.
    ///
    /// [`crop`]: Alignment::crop
    pub fn crop_picture(&self, rgb: &RgbImage, face: &FaceGeometry) -> Tensor {
        let size = [rgb.height() as i64, rgb.width() as i64];
        let (m, [oh, ow]) = (self.output_to_input(face, size), self.output_size());
        let k = Sampling::new(m, size, [oh, ow]).factor;
        let cells = Cells::pool(rgb, k, cells_read(m, size, [oh, ow], k));
        let plane = (oh * ow) as usize;
        let mut out = vec![0f32; 3 * plane];
        for i in 0..oh {
            for j in 0..ow {
                // Output pixel centres land at (x, y) in the picture, (u, v) in its cells.
                let [x, y] = apply(&m, [j as f64, i as f64]);
                let px = cells.bilinear((x + 0.5) / k as f64 - 0.5, (y + 0.5) / k as f64 - 0.5);
                for (c, v) in px.into_iter().enumerate() {
                    out[c * plane + (i * ow + j) as usize] = v;
                }
            }
        }
        Tensor::from_slice(&out).view([1, 3, oh, ow])
    }
}

/// The cells [cx0, cy0, cx1, cy1) of a picture of `size` ([h, w]) pooled by `k` that sampling
/// `out` pixels through `m` reads, with a cell to spare on each side, within the picture.
fn cells_read(m: Affine, [h, w]: [i64; 2], [oh, ow]: [i64; 2], k: i64) -> [i64; 4] {
    let (mut u0, mut v0, mut u1, mut v1) = (f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY);
    for corner in [[0.0, 0.0], [(ow - 1) as f64, 0.0], [0.0, (oh - 1) as f64], [(ow - 1) as f64, (oh - 1) as f64]] {
        let [u, v] = apply(&m, corner).map(|p| (p + 0.5) / k as f64 - 0.5);
        (u0, v0, u1, v1) = (u0.min(u), v0.min(v), u1.max(u), v1.max(v));
    }
    // Bilinear sampling at u reads cells floor(u) and floor(u) + 1.
    let span = |lo: f64, hi: f64, n: i64| {
        let first = (lo.floor() as i64 - 1).clamp(0, n);
        (first, (hi.floor() as i64 + 3).clamp(first, n))
    };
    let ((cx0, cx1), (cy0, cy1)) = (span(u0, u1, w / k), span(v0, v1, h / k));
    [cx0, cy0, cx1, cy1]
}

/// Some cells of a picture average-pooled by `k` (`avg_pool2d` with a k x k window and stride;
/// the rows and columns past the last whole cell are dropped): RGB, row by row.
struct Cells {
    window: [i64; 4],
    values: Vec<[f32; 3]>,
}

impl Cells {
    /// The cells `window` ([cx0, cy0, cx1, cy1), within the picture) of `rgb` pooled by `k`.
    /// Sums of whole bytes are exact in f32, so each cell is `avg_pool2d`'s to the bit.
    fn pool(rgb: &RgbImage, k: i64, window: [i64; 4]) -> Cells {
        let [cx0, cy0, cx1, cy1] = window.map(|v| v as usize);
        let (k, width) = (k as usize, cx1 - cx0);
        let row_len = 3 * rgb.width() as usize;
        let mut values = Vec::with_capacity(width * (cy1 - cy0));
        let mut sums = vec![0u32; 3 * width * k];
        for cy in cy0..cy1 {
            sums.iter_mut().for_each(|s| *s = 0);
            for row in rgb.as_raw().chunks_exact(row_len).skip(cy * k).take(k) {
                for (s, &b) in sums.iter_mut().zip(&row[3 * cx0 * k..3 * cx1 * k]) {
                    *s += b as u32;
                }
            }
            let area = (k * k) as f32;
            values.extend(sums.chunks_exact(3 * k).map(|cell| {
                let mut total = [0u32; 3];
                for px in cell.chunks_exact(3) {
                    (0..3).for_each(|c| total[c] += px[c]);
                }
                total.map(|t| t as f32 / area)
            }));
        }
        Cells { window, values }
    }

    /// `grid_sample`'s bilinear value at cell coordinates (u, v) of the pooled picture: zero
    /// past its edges (every cell inside them that the crop reads is in the window).
    fn bilinear(&self, u: f64, v: f64) -> [f32; 3] {
        let [cx0, cy0, cx1, cy1] = self.window;
        let cell = |x: i64, y: i64| {
            let inside = (cx0..cx1).contains(&x) && (cy0..cy1).contains(&y);
            if inside { self.values[((y - cy0) * (cx1 - cx0) + x - cx0) as usize] } else { [0.0; 3] }
        };
        let (x, y) = (u.floor(), v.floor());
        let (fx, fy) = (u - x, v - y);
        let (x, y) = (x as i64, y as i64);
        let mut out = [0f32; 3];
        for (dx, dy, weight) in [(0, 0, (1.0 - fx) * (1.0 - fy)), (1, 0, fx * (1.0 - fy)), (0, 1, (1.0 - fx) * fy), (1, 1, fx * fy)] {
            let value = cell(x + dx, y + dy);
            (0..3).for_each(|c| out[c] += (weight * value[c] as f64) as f32);
        }
        out
    }
}

/// Least-squares similarity transform (rotation, uniform scale, translation) taking `from`
/// points onto `to` points: Umeyama's estimate, which in 2-D has this closed form.
pub fn similarity(from: &[[f64; 2]], to: &[[f64; 2]]) -> Affine {
    let n = from.len() as f64;
    let mean = |p: &[[f64; 2]]| p.iter().fold([0.0, 0.0], |a, q| [a[0] + q[0] / n, a[1] + q[1] / n]);
    let (mf, mt) = (mean(from), mean(to));
    let (mut dot, mut cross, mut norm) = (0.0, 0.0, 0.0);
    for (p, q) in from.iter().zip(to) {
        let (px, py, qx, qy) = (p[0] - mf[0], p[1] - mf[1], q[0] - mt[0], q[1] - mt[1]);
        dot += px * qx + py * qy;
        cross += px * qy - py * qx;
        norm += px * px + py * py;
    }
    let (a, b) = (dot / norm, cross / norm);
    [[a, -b, mt[0] - a * mf[0] + b * mf[1]], [b, a, mt[1] - b * mf[0] - a * mf[1]]]
}

/// Applies `m` (output pixel -> input pixel) to sample an `out` ([h, w]) image from `picture`
/// ([N, C, H, W]). Bilinear; outside the picture is zero.
pub fn warp(picture: &Tensor, m: Affine, out: [i64; 2]) -> Tensor {
    let size = picture.size();
    let sampling = Sampling::new(m, [size[2], size[3]], out);
    let theta = sampling.theta(picture.device()).view([1, 2, 3]).expand([size[0], 2, 3], false);
    let grid = Tensor::affine_grid_generator(&theta, [size[0], size[1], out[0], out[1]], false);
    pool(picture, sampling.factor).grid_sampler(&grid, 0, 0, false)
}

/// How one output crop samples its picture: the average-pooling factor applied first and the
/// `affine_grid` matrix on the pooled picture.
struct Sampling {
    factor: i64,
    theta: [f64; 6],
}

impl Sampling {
    /// `m` maps output pixels into a picture held in a tensor of `picture_size` ([h, w]).
    fn new(m: Affine, picture_size: [i64; 2], out: [i64; 2]) -> Sampling {
        let shrink = (m[0][0] * m[1][1] - m[0][1] * m[1][0]).abs().sqrt();
        // A face far larger than its picture (a bad box) cannot pool beyond the picture itself.
        let factor = (shrink.floor() as i64).clamp(1, picture_size[0].min(picture_size[1]).max(1));
        let (m, h_in, w_in) = if factor >= 2 {
            // A pixel centre x of the picture lies at (x + 0.5) / k - 0.5 in the pooled one.
            let k = factor as f64;
            let rescale = |row: [f64; 3]| [row[0] / k, row[1] / k, (row[2] + 0.5) / k - 0.5];
            ([rescale(m[0]), rescale(m[1])], (picture_size[0] / factor) as f64, (picture_size[1] / factor) as f64)
        } else {
            (m, picture_size[0] as f64, picture_size[1] as f64)
        };
        let (h_out, w_out) = (out[0] as f64, out[1] as f64);
        // theta maps output coordinates in [-1, 1] (align_corners = false) to input ones:
        // un -> u = ((un + 1) w_out - 1) / 2 -> x = m(u) -> xn = (2 x + 1) / w_in - 1.
        let row = |r: [f64; 3], in_len: f64| {
            let a = r[0] * w_out / in_len;
            let b = r[1] * h_out / in_len;
            let c = (2.0 * (r[0] * (w_out - 1.0) / 2.0 + r[1] * (h_out - 1.0) / 2.0 + r[2]) + 1.0) / in_len - 1.0;
            [a, b, c]
        };
        let (rx, ry) = (row(m[0], w_in), row(m[1], h_in));
        Sampling { factor, theta: [rx[0], rx[1], rx[2], ry[0], ry[1], ry[2]] }
    }

    fn theta(&self, device: Device) -> Tensor {
        Tensor::from_slice(&self.theta).to_kind(Kind::Float).to_device(device)
    }
}

fn pool(picture: &Tensor, factor: i64) -> Tensor {
    if factor < 2 {
        return picture.shallow_clone();
    }
    picture.avg_pool2d([factor, factor], [factor, factor], [0, 0], false, true, None)
}

/// Many faces cropped from a batch of pictures in a few tensor ops. The sampling grids are built
/// once, so each [`CropPlan::apply`] is, per pooling factor, one pooling, one gather and one
/// `grid_sample` — a cloak calls it at every step for every model, and per-face warps there
/// cost a host-to-device copy and a handful of small kernels per face.
pub struct CropPlan {
    /// One group per pooling factor: the factor, each face's picture index, the grids.
    groups: Vec<(i64, Tensor, Tensor)>,
    /// Puts the groups' faces back in the order they were given.
    order: Tensor,
    channels: i64,
}

impl CropPlan {
    /// `faces` are (picture index in the batch, face, that picture's [h, w] before padding);
    /// `batch` is the [B, C, H, W] size of the zero-padded batch the plan will crop from.
    pub fn new(alignment: Alignment, faces: &[(i64, FaceGeometry, [i64; 2])], batch: &[i64], device: Device) -> CropPlan {
        let (channels, padded) = (batch[1], [batch[2], batch[3]]);
        let out = alignment.output_size();
        let mut by_factor: std::collections::BTreeMap<i64, Vec<(usize, i64, Sampling)>> = Default::default();
        for (i, (b, face, size)) in faces.iter().enumerate() {
            let sampling = Sampling::new(alignment.output_to_input(face, *size), padded, out);
            by_factor.entry(sampling.factor).or_default().push((i, *b, sampling));
        }
        let mut position = vec![0i64; faces.len()];
        let mut groups = Vec::new();
        let mut next = 0;
        for (factor, members) in by_factor {
            let n = members.len() as i64;
            let thetas: Vec<f64> = members.iter().flat_map(|(_, _, s)| s.theta).collect();
            let theta = Tensor::from_slice(&thetas).to_kind(Kind::Float).to_device(device).view([n, 2, 3]);
            let grid = Tensor::affine_grid_generator(&theta, [n, channels, out[0], out[1]], false);
            let pictures = Tensor::from_slice(&members.iter().map(|(_, b, _)| *b).collect::<Vec<_>>()).to_device(device);
            for (i, _, _) in &members {
                position[*i] = next;
                next += 1;
            }
            groups.push((factor, pictures, grid));
        }
        CropPlan { groups, order: Tensor::from_slice(&position).to_device(device), channels }
    }

    /// The crops of every face from `x` ([B, C, H, W], zero-padded pictures): [faces, C, h, w].
    pub fn apply(&self, x: &Tensor) -> Tensor {
        debug_assert_eq!(x.size()[1], self.channels);
        let crops: Vec<Tensor> =
            self.groups.iter().map(|(factor, pictures, grid)| pool(x, *factor).index_select(0, pictures).grid_sampler(grid, 0, 0, false)).collect();
        Tensor::cat(&crops, 0).index_select(0, &self.order)
    }
}

/// Applies an affine map to a point.
pub fn apply(m: &Affine, p: [f64; 2]) -> [f64; 2] {
    [m[0][0] * p[0] + m[0][1] * p[1] + m[0][2], m[1][0] * p[0] + m[1][1] * p[1] + m[1][2]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn similarity_recovers_a_known_transform() {
        let truth: Affine = [[1.2, -0.5, 7.0], [0.5, 1.2, -3.0]];
        let from = ARCFACE_112;
        let to = from.map(|p| apply(&truth, p));
        let est = similarity(&from, &to);
        for r in 0..2 {
            for c in 0..3 {
                assert!(close(est[r][c], truth[r][c]), "{est:?}");
            }
        }
    }

    #[test]
    fn identity_warp_reproduces_the_picture() {
        let x = Tensor::rand([1, 3, 20, 30], (Kind::Float, Device::Cpu));
        let y = warp(&x, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [20, 30]);
        assert!((y - &x).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn a_translation_moves_pixels_by_whole_steps() {
        let x = Tensor::rand([1, 1, 10, 10], (Kind::Float, Device::Cpu));
        let y = warp(&x, [[1.0, 0.0, 2.0], [0.0, 1.0, 3.0]], [5, 5]);
        let want = x.narrow(2, 3, 5).narrow(3, 2, 5);
        assert!((y - want).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn arcface_alignment_sends_landmarks_to_the_template() {
        // A face whose landmarks are the template, rotated, scaled by 3 and shifted.
        let pose: Affine = [[3.0 * 0.8, -3.0 * 0.6, 40.0], [3.0 * 0.6, 3.0 * 0.8, 10.0]];
        let face = FaceGeometry { bbox: [0.0; 4], landmarks: ARCFACE_112.map(|p| apply(&pose, p)) };
        let m = Alignment::Arcface { size: 112 }.output_to_input(&face, [600, 600]);
        for (t, l) in ARCFACE_112.iter().zip(face.landmarks) {
            let p = apply(&m, *t);
            assert!(close(p[0], l[0]) && close(p[1], l[1]));
        }
    }

    #[test]
    fn box_crop_covers_the_grown_box() {
        let face = FaceGeometry { bbox: [20.0, 30.0, 60.0, 90.0], landmarks: [[0.0; 2]; 5] };
        let m = Alignment::BoxCrop { height: 160, width: 160, margin: 10.0 }.output_to_input(&face, [200, 200]);
        // The outer edges of the output (-0.5 and 159.5) land on the box edges (10 and 70 in x).
        assert!(close(apply(&m, [-0.5, -0.5])[0], 10.0 - 0.5) && close(apply(&m, [159.5, 0.0])[0], 70.0 - 0.5));
    }

    #[test]
    fn a_crop_plan_matches_cropping_each_face_alone() {
        // Two pictures of different sizes in one padded batch; faces small (no pooling) and
        // large (pooled by 2 and 3), in a shuffled order.
        let small = Tensor::rand([3, 300, 260], (Kind::Float, Device::Cpu));
        let large = Tensor::rand([3, 500, 640], (Kind::Float, Device::Cpu));
        let batch = Tensor::stack(&[small.constant_pad_nd([0, 380, 0, 200]), large.shallow_clone()], 0);
        let face = |scale: f64, dx: f64| FaceGeometry {
            bbox: [dx, 10.0, dx + 100.0 * scale, 10.0 + 120.0 * scale],
            landmarks: ARCFACE_112.map(|[a, b]| [a * scale + dx, b * scale + 10.0]),
        };
        let faces = [(1, face(2.5, 60.0), [500, 640]), (0, face(1.0, 20.0), [300, 260]), (1, face(3.5, 200.0), [500, 640]), (0, face(0.8, 150.0), [300, 260])];
        for alignment in [Alignment::Arcface { size: 112 }, Alignment::BoxCrop { height: 160, width: 160, margin: 16.0 }] {
            let plan = CropPlan::new(alignment, &faces, &batch.size(), Device::Cpu);
            let together = plan.apply(&batch);
            for (i, (b, f, _)) in faces.iter().enumerate() {
                let alone = alignment.crop(&[&small, &large][*b as usize].unsqueeze(0), f);
                let gap = (together.get(i as i64) - alone.squeeze_dim(0)).abs().max().double_value(&[]);
                assert!(gap < 1e-4, "{alignment:?} face {i}: {gap}");
            }
        }
    }

    #[test]
    fn a_picture_cropped_in_plain_rust_matches_the_tensor_crop() {
        let (w, h) = (900u32, 700u32);
        // A smooth picture with detail at several scales: the sampling positions' float
        // rounding, which differs between the two, moves a pixel by far less than a grey level.
        let rgb = RgbImage::from_fn(w, h, |x, y| {
            let (x, y) = (x as f32, y as f32);
            image::Rgb([(127.0 + 120.0 * (x / 37.0).sin() * (y / 53.0).cos()) as u8, ((x + y) / 7.0 % 255.0) as u8, (255.0 * (x * y / (w * h) as f32)) as u8])
        });
        let whole = Tensor::from_slice(&crate::io::image::to_chw_f32(&rgb)).view([1, 3, h as i64, w as i64]);
        let face = |scale: f64, dx: f64, dy: f64| FaceGeometry {
            bbox: [dx, dy, dx + 100.0 * scale, dy + 120.0 * scale],
            landmarks: ARCFACE_112.map(|[a, b]| [a * scale + dx, b * scale + dy]),
        };
        // Small and large faces (pooled by 1 to 5), at an edge, partly and wholly outside.
        let faces =
            [face(0.9, 300.0, 200.0), face(2.3, 111.0, 97.0), face(5.5, 0.0, 0.0), face(3.0, 700.0, 500.0), face(1.5, -80.0, 640.0), face(1.0, 2000.0, 50.0)];
        for alignment in
            [Alignment::Arcface { size: 112 }, Alignment::DlibChip { size: 150, padding: 0.25 }, Alignment::BoxCrop { height: 160, width: 160, margin: 16.0 }]
        {
            for (i, f) in faces.iter().enumerate() {
                let gap = (alignment.crop_picture(&rgb, f) - alignment.crop(&whole, f)).abs().max().double_value(&[]);
                // Measured: 1e-4 inside the picture, 0.017 where a crop crosses its edge (the
                // zero padding jumps by up to 255 within a pixel there).
                assert!(gap < 0.05, "{alignment:?} face {i}: {gap} grey levels apart");
            }
        }
    }

    #[test]
    fn gradients_flow_through_the_warp_and_the_pooling() {
        let x = Tensor::rand([1, 3, 400, 400], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let face = FaceGeometry { bbox: [0.0; 4], landmarks: ARCFACE_112.map(|[a, b]| [a * 3.0, b * 3.0]) };
        let crop = Alignment::Arcface { size: 112 }.crop(&x, &face);
        assert_eq!(crop.size(), [1, 3, 112, 112]);
        crop.sum(Kind::Float).backward();
        assert!(x.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
}
