//! MTCNN face detection (Zhang et al. 2016, "Joint Face Detection and Alignment using
//! Multi-task Cascaded Convolutional Networks"), ported from facenet-pytorch 2.6.0
//! (`models/mtcnn.py`, `models/utils/detect_face.py`) with its weights
//! (PyPI `facenet-pytorch==2.6.0`, converted by `scripts/convert_mtcnn.py`).
//!
//! The three networks run in tch; the box bookkeeping between them is plain Rust in float32,
//! reproducing facenet-pytorch's arithmetic so detections match its golden output:
//! - pyramid scales `m f^i` with `m = 12 / min_face`, levels of `(int(H s + 1), int(W s + 1))`;
//! - every resampling is `interpolate(mode = "area")`, which is adaptive average pooling;
//! - P-Net boxes `floor((2 i + 1) / s)`, `floor((2 i + 12) / s)`; NMS IoU 0.5 per scale, then
//!   0.7 (torchvision semantics: area without +1, suppress IoU > t);
//! - R-Net and O-Net crops are taken 1-based through `pad` (truncated to ints, clipped);
//!   regression uses `w = x2 - x1 + 1`; the last NMS uses the "Min" overlap with +1 areas;
//! - faces come out largest first.

use anyhow::{Context, Result};
use image::RgbImage;
use tch::{Device, Kind, Tensor, nn, nn::Module};

use crate::io::image::{resize, to_chw_f32};

/// A detected face: probability, box [x1, y1, x2, y2] and five landmarks (image-left eye,
/// image-right eye, nose, image-left and image-right mouth corners), in picture pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Face {
    pub score: f32,
    pub bbox: [f32; 4],
    pub landmarks: [[f32; 2]; 5],
}

/// Detection settings (facenet-pytorch's defaults).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub thresholds: [f32; 3],
    pub min_face_size: f64,
    pub scale_factor: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { thresholds: [0.6, 0.7, 0.7], min_face_size: 20.0, scale_factor: 0.709 }
    }
}

impl Settings {
    /// Settings the pyramid can work with: it shrinks by `scale_factor` per level until faces
    /// of `min_face_size` are 12 px, so a factor of 1 or more, or a size of 0, never ends.
    pub fn check(&self) -> Result<(), String> {
        if !(self.scale_factor > 0.0 && self.scale_factor < 1.0) {
            return Err(format!("scale_factor = {}: must be between 0 and 1 (exclusive): each pyramid level shrinks the picture by it", self.scale_factor));
        }
        if !(self.min_face_size.is_finite() && self.min_face_size >= 1.0) {
            return Err(format!("min_face_size = {}: must be at least 1 (pixels)", self.min_face_size));
        }
        if let Some(t) = self.thresholds.iter().find(|t| !(0.0..=1.0).contains(*t)) {
            return Err(format!("thresholds = {:?}: each must be a probability, within 0..1 (got {t})", self.thresholds));
        }
        Ok(())
    }
}

fn prelu(p: nn::Path, channels: i64) -> impl Fn(&Tensor) -> Tensor + Send + use<> {
    let weight = p.var("weight", &[channels], nn::Init::Const(0.25));
    move |x: &Tensor| x.prelu(&weight)
}

fn conv(p: nn::Path, c_in: i64, c_out: i64, k: i64) -> nn::Conv2D {
    nn::conv2d(p, c_in, c_out, k, Default::default())
}

fn max_pool(x: &Tensor, k: i64, s: i64) -> Tensor {
    x.max_pool2d([k, k], [s, s], [0, 0], [1, 1], true)
}

/// Flattens [N, C, H, W] in facenet-pytorch's order (it permutes to N, W, H, C first).
fn flatten_whc(x: &Tensor) -> Tensor {
    x.permute([0, 3, 2, 1]).contiguous().flatten(1, -1)
}

/// A network with box-regression and probability outputs (P-Net, R-Net).
type TwoHeads = Box<dyn Fn(&Tensor) -> (Tensor, Tensor) + Send>;
/// O-Net: box regression, landmarks and probabilities.
type ThreeHeads = Box<dyn Fn(&Tensor) -> (Tensor, Tensor, Tensor) + Send>;

/// The three networks.
pub struct Mtcnn {
    pnet: TwoHeads,
    rnet: TwoHeads,
    onet: ThreeHeads,
    device: Device,
    _vs: nn::VarStore,
}

fn pnet(p: nn::Path) -> impl Fn(&Tensor) -> (Tensor, Tensor) + Send + use<> {
    let (c1, a1) = (conv(&p / "conv1", 3, 10, 3), prelu(&p / "prelu1", 10));
    let (c2, a2) = (conv(&p / "conv2", 10, 16, 3), prelu(&p / "prelu2", 16));
    let (c3, a3) = (conv(&p / "conv3", 16, 32, 3), prelu(&p / "prelu3", 32));
    let (prob, reg) = (conv(&p / "conv4_1", 32, 2, 1), conv(&p / "conv4_2", 32, 4, 1));
    move |x: &Tensor| {
        let x = max_pool(&a1(&c1.forward(x)), 2, 2);
        let x = a3(&c3.forward(&a2(&c2.forward(&x))));
        (reg.forward(&x), prob.forward(&x).softmax(1, Kind::Float))
    }
}

fn rnet(p: nn::Path) -> impl Fn(&Tensor) -> (Tensor, Tensor) + Send + use<> {
    let (c1, a1) = (conv(&p / "conv1", 3, 28, 3), prelu(&p / "prelu1", 28));
    let (c2, a2) = (conv(&p / "conv2", 28, 48, 3), prelu(&p / "prelu2", 48));
    let (c3, a3) = (conv(&p / "conv3", 48, 64, 2), prelu(&p / "prelu3", 64));
    let (d4, a4) = (nn::linear(&p / "dense4", 576, 128, Default::default()), prelu(&p / "prelu4", 128));
    let (prob, reg) = (nn::linear(&p / "dense5_1", 128, 2, Default::default()), nn::linear(&p / "dense5_2", 128, 4, Default::default()));
    move |x: &Tensor| {
        let x = max_pool(&a1(&c1.forward(x)), 3, 2);
        let x = max_pool(&a2(&c2.forward(&x)), 3, 2);
        let x = a4(&d4.forward(&flatten_whc(&a3(&c3.forward(&x)))));
        (reg.forward(&x), prob.forward(&x).softmax(1, Kind::Float))
    }
}

fn onet(p: nn::Path) -> impl Fn(&Tensor) -> (Tensor, Tensor, Tensor) + Send + use<> {
    let (c1, a1) = (conv(&p / "conv1", 3, 32, 3), prelu(&p / "prelu1", 32));
    let (c2, a2) = (conv(&p / "conv2", 32, 64, 3), prelu(&p / "prelu2", 64));
    let (c3, a3) = (conv(&p / "conv3", 64, 64, 3), prelu(&p / "prelu3", 64));
    let (c4, a4) = (conv(&p / "conv4", 64, 128, 2), prelu(&p / "prelu4", 128));
    let (d5, a5) = (nn::linear(&p / "dense5", 1152, 256, Default::default()), prelu(&p / "prelu5", 256));
    let prob = nn::linear(&p / "dense6_1", 256, 2, Default::default());
    let reg = nn::linear(&p / "dense6_2", 256, 4, Default::default());
    let points = nn::linear(&p / "dense6_3", 256, 10, Default::default());
    move |x: &Tensor| {
        let x = max_pool(&a1(&c1.forward(x)), 3, 2);
        let x = max_pool(&a2(&c2.forward(&x)), 3, 2);
        let x = max_pool(&a3(&c3.forward(&x)), 2, 2);
        let x = a5(&d5.forward(&flatten_whc(&a4(&c4.forward(&x)))));
        (reg.forward(&x), points.forward(&x), prob.forward(&x).softmax(1, Kind::Float))
    }
}

/// Detectors that search several pictures side by side on the CPU: one worker thread per
/// intra-op thread the process has, each with its own detector and a single intra-op thread.
/// MTCNN's networks are small (10-128 channels, batches of a few hundred 24x24 crops), so one
/// picture cannot keep two cores busy; two pictures at once can. On CUDA there is one worker.
pub struct Detectors {
    workers: Vec<Mtcnn>,
}

impl Detectors {
    pub fn load(device: Device) -> Result<Detectors> {
        let workers = if device == Device::Cpu { tch::get_num_threads().max(1) as usize } else { 1 };
        Ok(Detectors { workers: (0..workers).map(|_| Mtcnn::load(device)).collect::<Result<_>>()? })
    }

    /// `work(detector, item)` for every item, in the items' order; the workers take the next
    /// item as they finish one, since pictures differ in size by 100x in area.
    pub fn map<T: Sync, R: Send>(&mut self, items: &[T], work: impl Fn(&Mtcnn, &T) -> R + Sync) -> Vec<R> {
        if self.workers.len() == 1 || items.len() <= 1 {
            return items.iter().map(|item| work(&self.workers[0], item)).collect();
        }
        let intra_op_threads = tch::get_num_threads();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .workers
                .iter_mut()
                .map(|detector| {
                    let (next, work) = (&next, &work);
                    scope.spawn(move || {
                        // This thread's own libtorch thread count (OpenMP's is per thread).
                        tch::set_num_threads(1);
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(item) = items.get(i) else { return done };
                            done.push((i, work(detector, item)));
                        }
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
        });
        // libtorch also keeps the last count set as the default of threads started later.
        tch::set_num_threads(intra_op_threads);
        done.sort_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, r)| r).collect()
    }
}

/// A candidate box: x1, y1, x2, y2, score, and four regression offsets.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    b: [f32; 4],
    score: f32,
    reg: [f32; 4],
}

impl Mtcnn {
    /// Where `make setup` installs the weights.
    pub fn weights_path() -> std::path::PathBuf {
        crate::models::models_dir().join("mtcnn.safetensors")
    }

    /// Loads the weights from the models folder (installed by `make setup`).
    pub fn load(device: Device) -> Result<Mtcnn> {
        let path = Self::weights_path();
        if !path.is_file() {
            anyhow::bail!("{}: MTCNN weights not installed; run `make setup`", path.display());
        }
        let mut vs = nn::VarStore::new(device);
        let root = vs.root();
        let (p, r, o) = (pnet(&root / "pnet"), rnet(&root / "rnet"), onet(&root / "onet"));
        vs.load(&path).with_context(|| format!("{}: cannot load MTCNN weights", path.display()))?;
        vs.freeze();
        if device == Device::Cpu {
            crate::models::channels_last(&vs);
        }
        Ok(Mtcnn { pnet: Box::new(p), rnet: Box::new(r), onet: Box::new(o), device, _vs: vs })
    }

    /// All faces of a picture, largest first.
    pub fn detect(&self, rgb: &RgbImage, settings: &Settings) -> Result<Vec<Face>> {
        settings.check().map_err(|e| anyhow::anyhow!(e))?;
        Ok(tch::no_grad(|| self.detect_inner(rgb, settings)))
    }

    /// [`Mtcnn::detect`] on the picture shrunk to `max_side` (if larger), in the original
    /// picture's pixel coordinates: bounds the time and memory a huge photo costs.
    pub fn detect_within(&self, rgb: &RgbImage, settings: &Settings, max_side: Option<u32>) -> Result<Vec<Face>> {
        let longer = rgb.width().max(rgb.height());
        let Some(limit) = max_side.filter(|&limit| longer > limit) else { return self.detect(rgb, settings) };
        let s = limit as f32 / longer as f32;
        let (w, h) = (((rgb.width() as f32 * s).round() as u32).max(1), ((rgb.height() as f32 * s).round() as u32).max(1));
        let small = resize(rgb, w, h);
        let (sx, sy) = (rgb.width() as f32 / w as f32, rgb.height() as f32 / h as f32);
        let scale_back = |f: Face| Face {
            score: f.score,
            bbox: [f.bbox[0] * sx, f.bbox[1] * sy, f.bbox[2] * sx, f.bbox[3] * sy],
            landmarks: f.landmarks.map(|[x, y]| [x * sx, y * sy]),
        };
        Ok(self.detect(&small, settings)?.into_iter().map(scale_back).collect())
    }

    fn detect_inner(&self, rgb: &RgbImage, s: &Settings) -> Vec<Face> {
        let (h, w) = (rgb.height() as i64, rgb.width() as i64);
        let chw = to_chw_f32(rgb);
        let img = Tensor::from_slice(&chw).view([1, 3, h, w]).to_device(self.device);
        let normalise = |t: Tensor| (t - 127.5) * 0.0078125;

        // Stage 1: P-Net over the pyramid.
        let mut boxes = Vec::new();
        for scale in pyramid(h, w, s) {
            let size = [(h as f64 * scale + 1.0) as i64, (w as f64 * scale + 1.0) as i64];
            let (reg, prob) = (self.pnet)(&normalise(img.adaptive_avg_pool2d(size)));
            let found = generate_boxes(&reg, &prob, scale as f32, s.thresholds[0]);
            boxes.extend(nms(&found, 0.5, Overlap::Union));
        }
        let boxes: Vec<Candidate> = nms(&boxes, 0.7, Overlap::Union)
            .into_iter()
            .map(|c| {
                let (rw, rh) = (c.b[2] - c.b[0], c.b[3] - c.b[1]);
                let b = [c.b[0] + c.reg[0] * rw, c.b[1] + c.reg[1] * rh, c.b[2] + c.reg[2] * rw, c.b[3] + c.reg[3] * rh];
                Candidate { b: square(b), score: c.score, reg: [0.0; 4] }
            })
            .collect();
        if boxes.is_empty() {
            return vec![];
        }

        // Stage 2: R-Net on 24x24 crops.
        let (boxes, crops) = self.crops(&chw, &boxes, 24, w, h);
        let (reg, prob) = (self.rnet)(&normalise(crops));
        let (reg, prob) = (rows(&reg), rows(&prob));
        let passed: Vec<Candidate> = boxes
            .iter()
            .zip(reg.iter().zip(&prob))
            .filter(|(_, (_, p))| p[1] > s.thresholds[1])
            .map(|(c, (r, p))| Candidate { b: c.b, score: p[1], reg: [r[0], r[1], r[2], r[3]] })
            .collect();
        let boxes: Vec<Candidate> =
            nms(&passed, 0.7, Overlap::Union).into_iter().map(|c| Candidate { b: square(regress(c.b, c.reg)), score: c.score, reg: [0.0; 4] }).collect();
        if boxes.is_empty() {
            return vec![];
        }

        // Stage 3: O-Net on 48x48 crops, with landmarks.
        let (boxes, crops) = self.crops(&chw, &boxes, 48, w, h);
        let (reg, points, prob) = (self.onet)(&normalise(crops));
        let (reg, points, prob) = (rows(&reg), rows(&points), rows(&prob));
        let mut faces: Vec<(Candidate, [[f32; 2]; 5])> = Vec::new();
        for (i, c) in boxes.iter().enumerate() {
            if prob[i][1] <= s.thresholds[2] {
                continue;
            }
            let (bw, bh) = (c.b[2] - c.b[0] + 1.0, c.b[3] - c.b[1] + 1.0);
            let landmarks = std::array::from_fn(|k| [bw * points[i][k] + c.b[0] - 1.0, bh * points[i][k + 5] + c.b[1] - 1.0]);
            let b = regress(c.b, [reg[i][0], reg[i][1], reg[i][2], reg[i][3]]);
            faces.push((Candidate { b, score: prob[i][1], reg: [0.0; 4] }, landmarks));
        }
        let kept = nms_indices(&faces.iter().map(|f| f.0).collect::<Vec<_>>(), 0.7, Overlap::Min);
        let mut out: Vec<Face> = kept.into_iter().map(|i| Face { score: faces[i].0.score, bbox: faces[i].0.b, landmarks: faces[i].1 }).collect();
        // Largest first (numpy argsort of the areas, reversed).
        let area = |f: &Face| (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]);
        out.sort_by(|a, b| area(b).total_cmp(&area(a)));
        out
    }

    /// Crops each box (1-based, truncated and clipped, as `pad`) of the CHW picture `chw` and
    /// resizes it to `size`. Boxes whose crop would be empty are dropped, as facenet-pytorch's
    /// loop skips them. Plain Rust, not a libtorch call per box: a large picture has hundreds
    /// of candidate boxes, and four small tensor operations each cost more than the pixels.
    fn crops(&self, chw: &[f32], boxes: &[Candidate], size: i64, w: i64, h: i64) -> (Vec<Candidate>, Tensor) {
        let size = size as usize;
        let mut kept = Vec::new();
        let mut out = Vec::new();
        for c in boxes {
            let [x, y, ex, ey] = c.b.map(|v| v.trunc() as i64);
            let (x, y, ex, ey) = (x.max(1), y.max(1), ex.min(w), ey.min(h));
            if ey > y - 1 && ex > x - 1 {
                let window = Window { x: (x - 1) as usize, y: (y - 1) as usize, w: (ex - x + 1) as usize, h: (ey - y + 1) as usize };
                area_resize(chw, [h as usize, w as usize], window, size, &mut out);
                kept.push(*c);
            }
        }
        let batch = Tensor::from_slice(&out).view([kept.len() as i64, 3, size as i64, size as i64]).to_device(self.device);
        (kept, batch)
    }
}

/// A rectangle of a picture, in pixels.
#[derive(Debug, Clone, Copy)]
struct Window {
    x: usize,
    y: usize,
    w: usize,
    h: usize,
}

/// Appends `window` of the CHW picture `chw` (`[height, width]`), resized to `size` x `size`,
/// to `out`: libtorch's `adaptive_avg_pool2d` (interpolate's "area" mode) to the bit: output
/// cell `i` averages input rows `floor(i n / size)` to `ceil((i + 1) n / size)`, summed in
/// float32 row by row and divided by the rows, then the columns, as its CPU kernel does.
fn area_resize(chw: &[f32], [height, width]: [usize; 2], window: Window, size: usize, out: &mut Vec<f32>) {
    let bins = |n: usize| -> Vec<(usize, usize)> { (0..size).map(|i| (i * n / size, ((i + 1) * n).div_ceil(size))).collect() };
    let (rows, cols) = (bins(window.h), bins(window.w));
    for channel in chw.chunks_exact(height * width).take(3) {
        for &(r0, r1) in &rows {
            for &(c0, c1) in &cols {
                let mut sum = 0f32;
                for r in r0..r1 {
                    let row = &channel[(window.y + r) * width + window.x..][..window.w];
                    for v in &row[c0..c1] {
                        sum += v;
                    }
                }
                out.push(sum / (r1 - r0) as f32 / (c1 - c0) as f32);
            }
        }
    }
}

/// Pyramid scales: m f^i while the shorter side, scaled, is at least 12.
fn pyramid(h: i64, w: i64, s: &Settings) -> Vec<f64> {
    let m = 12.0 / s.min_face_size;
    let mut minl = h.min(w) as f64 * m;
    let (mut scale, mut scales) = (m, Vec::new());
    while minl >= 12.0 {
        scales.push(scale);
        scale *= s.scale_factor;
        minl *= s.scale_factor;
    }
    scales
}

/// P-Net cells whose face probability reaches the threshold, as boxes in picture pixels.
fn generate_boxes(reg: &Tensor, prob: &Tensor, scale: f32, threshold: f32) -> Vec<Candidate> {
    let (hh, ww) = (prob.size()[2], prob.size()[3]);
    let p: Vec<f32> = Vec::try_from(prob.get(0).get(1).to_device(Device::Cpu).flatten(0, -1)).expect("f32");
    let r: Vec<f32> = Vec::try_from(reg.get(0).to_device(Device::Cpu).flatten(0, -1)).expect("f32");
    let plane = (hh * ww) as usize;
    let mut out = Vec::new();
    for y in 0..hh as usize {
        for x in 0..ww as usize {
            let i = y * ww as usize + x;
            if p[i] >= threshold {
                let (fx, fy) = (x as f32, y as f32);
                out.push(Candidate {
                    b: [
                        ((2.0 * fx + 1.0) / scale).floor(),
                        ((2.0 * fy + 1.0) / scale).floor(),
                        ((2.0 * fx + 12.0) / scale).floor(),
                        ((2.0 * fy + 12.0) / scale).floor(),
                    ],
                    score: p[i],
                    reg: [r[i], r[plane + i], r[2 * plane + i], r[3 * plane + i]],
                });
            }
        }
    }
    out
}

/// bbreg: shifts a box by regression offsets scaled by its (+1) width and height.
fn regress(b: [f32; 4], reg: [f32; 4]) -> [f32; 4] {
    let (w, h) = (b[2] - b[0] + 1.0, b[3] - b[1] + 1.0);
    [b[0] + reg[0] * w, b[1] + reg[1] * h, b[2] + reg[2] * w, b[3] + reg[3] * h]
}

/// rerec: the square of side max(w, h) around the box's centre.
fn square(b: [f32; 4]) -> [f32; 4] {
    let (h, w) = (b[3] - b[1], b[2] - b[0]);
    let l = w.max(h);
    let (x1, y1) = (b[0] + w * 0.5 - l * 0.5, b[1] + h * 0.5 - l * 0.5);
    [x1, y1, x1 + l, y1 + l]
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float);
    (0..t.size()[0]).map(|i| Vec::try_from(t.get(i)).expect("f32 row")).collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Overlap {
    /// torchvision `nms`: intersection over union, areas without +1.
    Union,
    /// facenet-pytorch's numpy "Min": intersection over the smaller area, areas with +1.
    Min,
}

fn nms(boxes: &[Candidate], threshold: f32, overlap: Overlap) -> Vec<Candidate> {
    nms_indices(boxes, threshold, overlap).into_iter().map(|i| boxes[i]).collect()
}

/// Indices kept by non-maximum suppression, highest score first.
fn nms_indices(boxes: &[Candidate], threshold: f32, overlap: Overlap) -> Vec<usize> {
    let plus = if overlap == Overlap::Min { 1.0 } else { 0.0 };
    let area = |b: &[f32; 4]| (b[2] - b[0] + plus) * (b[3] - b[1] + plus);
    // Highest score first. Equal scores are common (boxes past the picture's edge clip to the
    // same crop): torchvision's stable sort then prefers the earlier box, while the numpy NMS
    // of the last stage walks np.argsort from its end and so prefers the later one.
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| {
        let by_score = boxes[b].score.total_cmp(&boxes[a].score);
        if overlap == Overlap::Min { by_score.then(b.cmp(&a)) } else { by_score.then(a.cmp(&b)) }
    });
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let bi = &boxes[i].b;
        for &j in &order[k + 1..] {
            if suppressed[j] {
                continue;
            }
            let bj = &boxes[j].b;
            let iw = (bi[2].min(bj[2]) - bi[0].max(bj[0]) + plus).max(0.0);
            let ih = (bi[3].min(bj[3]) - bi[1].max(bj[1]) + plus).max(0.0);
            let inter = iw * ih;
            let o = match overlap {
                Overlap::Union => inter / (area(bi) + area(bj) - inter),
                Overlap::Min => inter / area(bi).min(area(bj)),
            };
            if o > threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(b: [f32; 4], score: f32) -> Candidate {
        Candidate { b, score, reg: [0.0; 4] }
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let boxes = [cand([0., 0., 10., 10.], 0.9), cand([1., 1., 11., 11.], 0.95), cand([50., 50., 60., 60.], 0.5)];
        assert_eq!(nms_indices(&boxes, 0.5, Overlap::Union), vec![1, 2]);
        // A small box inside a big one: IoU is low, but "Min" overlap is 1.
        let nested = [cand([0., 0., 100., 100.], 0.9), cand([10., 10., 20., 20.], 0.8)];
        assert_eq!(nms_indices(&nested, 0.7, Overlap::Union).len(), 2);
        assert_eq!(nms_indices(&nested, 0.7, Overlap::Min), vec![0]);
    }

    #[test]
    fn area_resize_is_libtorchs_adaptive_average_pool_to_the_bit() {
        let (h, w) = (37, 53);
        let picture = Tensor::rand([1, 3, h, w], (Kind::Float, Device::Cpu)) * 255.0;
        let chw: Vec<f32> = Vec::try_from(picture.flatten(0, -1)).unwrap();
        // Shrinking, enlarging, a sliver and a single pixel, at the picture's edges too.
        let windows = [(0, 0, 53, 37), (3, 5, 17, 29), (40, 20, 13, 17), (10, 5, 1, 30), (52, 36, 1, 1)];
        for (x, y, ww, wh) in windows {
            for size in [24, 48] {
                let mut ours = Vec::new();
                area_resize(&chw, [h as usize, w as usize], Window { x, y, w: ww, h: wh }, size, &mut ours);
                let crop = picture.narrow(2, y as i64, wh as i64).narrow(3, x as i64, ww as i64);
                let want: Vec<f32> = Vec::try_from(crop.adaptive_avg_pool2d([size as i64, size as i64]).flatten(0, -1)).unwrap();
                assert!(ours == want, "window {x},{y} {ww}x{wh} at {size}: not libtorch's values");
            }
        }
    }

    #[test]
    fn square_keeps_the_centre() {
        assert_eq!(square([10., 20., 30., 60.]), [0., 20., 40., 60.]);
    }

    #[test]
    fn pyramid_stops_at_twelve_pixels() {
        let scales = pyramid(250, 250, &Settings::default());
        assert_eq!(scales[0], 0.6);
        assert!(250.0 * scales.last().unwrap() >= 12.0 && 250.0 * scales.last().unwrap() * 0.709 < 12.0);
    }
}
