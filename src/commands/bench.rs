//! `cloakbench bench`: throughput of the baseline's data path, and how much of it is overhead.
//!
//! Runs the real `ingest` and `embed` stages on a dataset into a scratch run folder, then feeds
//! the same model random tensors of the same batch size for the same number of pictures. The
//! ratio embed / raw forward shows what fetching, decoding, resizing and writing cost on top of
//! the network itself. Peak resident memory comes from the kernel (VmHWM).

use std::process::ExitCode;
use std::time::Instant;

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use tch::{Kind, Tensor};

use crate::io::parquet;
use crate::pipeline::{self, RunOptions};
use crate::stages::KINDS;
use crate::tables::bench::{self, Figure};
use crate::tables::{metrics, verification};

pub fn baseline(dataset: &str, model: &str, batch_sizes: &[usize], device: &str, input: &str, out: &str) -> Result<ExitCode> {
    let scratch = std::env::temp_dir().join(format!("cloakbench-bench-{}", std::process::id()));
    let mut ingest = format!(
        "[pipeline]\nname = \"bench\"\nrun_root = {root:?}\n[stages.ingest]\nkind = \"ingest\"\ndataset = {dataset:?}\n",
        root = scratch.display().to_string(),
    );
    let only_ingest = pipeline::parse(&ingest, &[], KINDS)?;
    let t = Instant::now();
    pipeline::run(&only_ingest, &RunOptions { force: true, quiet: true })?;
    let ingest_s = t.elapsed().as_secs_f64();
    if input == "aligned" {
        // Faces found as a pipeline's detect stage finds them, untimed; later runs skip it.
        ingest.push_str("[stages.detect]\nkind = \"detect\"\nmax_side = 400\n");
        pipeline::run(&pipeline::parse(&ingest, &[], KINDS)?, &RunOptions { force: false, quiet: true })?;
    }
    let run_dir = crate::io::Location::open(&scratch.join("bench").display().to_string())?;
    let n_images: usize = parquet::read(&run_dir, "images")?.iter().map(|b| b.num_rows()).sum();

    let dev = crate::models::device(device)?;
    println!("cloakbench bench: {dataset}, model {model}, input {input}, device {dev:?}, {} threads", tch::get_num_threads());
    println!("  ingest          {n_images:>6} images  {ingest_s:>7.2} s  {:>8.1} images/s", n_images as f64 / ingest_s);
    let figure = |subject: &str, batch_size: Option<usize>, metric: &str, value: f64, unit: &str, reference: Option<f64>| Figure {
        bench: "baseline".into(),
        device: device_name(dev),
        subject: subject.into(),
        batch_size: batch_size.map(|b| b as i64),
        metric: metric.into(),
        value,
        unit: unit.into(),
        reference,
    };
    let mut figures = vec![figure("ingest", None, "images_per_s", n_images as f64 / ingest_s, "images/s", None)];
    // How embed's throughput, and the raw model's beside it, move with the batch size; each
    // batch size with the next batch decoded in turn and decoded ahead (during the forward).
    // Returns images/s and the pictures embedded.
    let time_embed = |batch_size: usize, decode_ahead: bool| -> Result<(f64, usize)> {
        let mut embed = format!(
            "{ingest}[stages.embed]\nkind = \"embed\"\nmodel = {model:?}\nbatch_size = {batch_size}\ndevice = {device:?}\ninput = {input:?}\ndecode_ahead = {decode_ahead}\n"
        );
        if input == "aligned" {
            embed.push_str("inputs = { images = \"images\", faces = \"faces\" }\n");
        }
        let plan = pipeline::parse(&embed, &[], KINDS)?;
        let t = Instant::now();
        // Not forced: ingest (and detect) are up to date and skipped, so only embed is timed.
        pipeline::run(&plan, &RunOptions { force: false, quiet: true })?;
        let embed_s = t.elapsed().as_secs_f64();
        let n_embedded: usize = parquet::read(&run_dir, "embeddings")?.iter().map(|b| b.num_rows()).sum();
        Ok((n_embedded as f64 / embed_s, n_embedded))
    };
    let aligned = if input == "aligned" { ", aligned" } else { "" };
    for &batch_size in batch_sizes {
        let (in_turn, n_embedded) = time_embed(batch_size, false)?;
        let (ahead, _) = time_embed(batch_size, true)?;
        let raw_rate = n_embedded as f64 / raw_forward_seconds(model, batch_size, n_embedded, device)?;
        for (embed_rate, how, subject) in
            [(in_turn, "decoding in turn", format!("embed {model}{aligned}")), (ahead, "decoding ahead", format!("embed {model}{aligned}, decoding ahead"))]
        {
            println!(
                "  batch {batch_size:>4}, {how:<16}: embed {embed_rate:>7.1} images/s, raw forward {raw_rate:>7.1} images/s (random tensors): embed / raw {:.2}",
                embed_rate / raw_rate
            );
            figures.push(figure(&subject, Some(batch_size), "images_per_s", embed_rate, "images/s", Some(raw_rate)));
        }
    }
    let peak_mib = peak_rss_mib();
    std::fs::remove_dir_all(&scratch).ok();
    println!("  (embed / raw forward: 1.00 = no pipeline overhead)\n  peak resident memory: {peak_mib:.0} MiB");
    figures.push(figure("process", None, "peak_rss", peak_mib, "MiB", None));
    write_figures(out, "baseline", &figures)?;
    Ok(ExitCode::SUCCESS)
}

/// The device as the bench table names it.
fn device_name(device: tch::Device) -> String {
    match device {
        tch::Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        other => format!("{other:?}"),
    }
}

/// Writes `<out>/<bench>/bench.parquet` and says where.
fn write_figures(out: &str, bench: &str, figures: &[Figure]) -> Result<()> {
    let dir = crate::io::Location::create(out)?.child(bench);
    let table = bench::batch(figures)?;
    parquet::write(&dir, "bench", table.schema(), &[table])?;
    println!("figures: {}", dir.url_of("bench.parquet"));
    Ok(())
}

/// Seconds for the model alone to embed `n` random pictures in batches of `batch_size`.
fn raw_forward_seconds(model_id: &str, batch_size: usize, n: usize, device: &str) -> Result<f64> {
    let device = crate::models::device(device)?;
    let model = crate::models::load(model_id, device)?;
    let [h, w] = model.card().input_size;
    let batch = Tensor::rand([batch_size as i64, 3, h, w], (Kind::Float, device)) * 255.0;
    let _ = tch::no_grad(|| model.embed(&batch))?; // warm-up
    let t = Instant::now();
    let mut done = 0;
    while done < n {
        let take = batch_size.min(n - done) as i64;
        let out = tch::no_grad(|| model.embed(&batch.narrow(0, 0, take)))?;
        let _ = out.to_device(tch::Device::Cpu);
        done += take as usize;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Peak resident set size of this process, from /proc (0 where unavailable).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Runs the zoo pipelines and prints one line per model.
pub fn zoo(run_root: &str, force: bool, out: &str) -> Result<ExitCode> {
    let options = RunOptions { force, quiet: false };
    let mut rows: BTreeMap<String, ZooRow> = BTreeMap::new();
    for file in ["pipelines/zoo_facescrub12.toml", "pipelines/zoo_lfw.toml"] {
        let plan = pipeline::load(std::path::Path::new(file), &[format!("run_root={run_root}")], KINDS)?;
        pipeline::run(&plan, &options)?;
        let dir = crate::io::Location::open(run_root)?.child(&plan.name);
        collect_zoo_figures(&dir, &plan, &mut rows)?;
    }
    println!("{:<36} {:>8} {:>8} {:>8} {:>8} {:>10}", "model", "probe", "1-NN", "LFW AUC", "LFW EER", "images/s");
    let cell = |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    for (model, r) in &rows {
        println!("{model:<36} {:>8} {:>8} {:>8} {:>8} {:>10}", cell(r.probe, 3), cell(r.nearest, 3), cell(r.auc, 4), cell(r.eer, 4), cell(r.images_per_s, 1));
    }
    println!("probe and 1-NN: accuracy on the test split of facescrub12 (70/30 per identity, aligned faces);");
    println!(
        "images/s: the embed stage on facescrub12 (fetch, decode, align, forward), {} threads, device {:?}",
        tch::get_num_threads(),
        tch::Device::cuda_if_available()
    );
    let mut figures = Vec::new();
    for (model, r) in &rows {
        let values = [
            ("probe_accuracy", r.probe, "fraction"),
            ("nearest_accuracy", r.nearest, "fraction"),
            ("lfw_auc", r.auc, "fraction"),
            ("lfw_eer", r.eer, "fraction"),
        ];
        for (metric, value, unit) in values.into_iter().chain([("images_per_s", r.images_per_s, "images/s")]) {
            let Some(value) = value else { continue };
            let batch_size = (metric == "images_per_s").then_some(r.batch_size).flatten();
            let (bench, device) = ("zoo".into(), device_name(tch::Device::cuda_if_available()));
            figures.push(Figure { bench, device, subject: model.clone(), batch_size, metric: metric.into(), value, unit: unit.into(), reference: None });
        }
    }
    write_figures(out, "zoo", &figures)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Default)]
struct ZooRow {
    probe: Option<f64>,
    nearest: Option<f64>,
    auc: Option<f64>,
    eer: Option<f64>,
    images_per_s: Option<f64>,
    batch_size: Option<i64>,
}

/// Reads the overall metrics, verification figures and embed timings of a finished zoo run.
fn collect_zoo_figures(dir: &crate::io::Location, plan: &pipeline::Plan, rows: &mut BTreeMap<String, ZooRow>) -> Result<()> {
    if plan.writes("metrics") {
        for m in metrics::read(&parquet::read(dir, "metrics")?)?.into_iter().filter(|m| m.identity.is_none()) {
            let row = rows.entry(m.model.clone()).or_default();
            match m.classifier.as_str() {
                "linear_probe" => row.probe = Some(m.accuracy),
                _ => row.nearest = Some(m.accuracy),
            }
        }
        // Throughput of each embed stage, from its recorded run time and row count.
        for stage in plan.stages.iter().filter(|s| s.kind.name == "embed") {
            let state: serde_json::Value = serde_json::from_slice(&dir.get(&format!("_state/{}.json", stage.name))?)?;
            let seconds = state["seconds"].as_f64().unwrap_or(f64::NAN);
            let table_name = &stage.outputs["embeddings"];
            let n: usize = parquet::read(dir, table_name)?.iter().map(|b| b.num_rows()).sum();
            let model = stage.stage.describe()["model"].as_str().unwrap_or_default().to_owned();
            let row = rows.entry(model.to_owned()).or_default();
            row.images_per_s = Some(n as f64 / seconds);
            row.batch_size = stage.stage.describe()["batch_size"].as_i64();
        }
    }
    if plan.writes("verification") {
        for v in verification::read(&parquet::read(dir, "verification")?)? {
            let row = rows.entry(v.model).or_default();
            row.auc = Some(v.auc);
            row.eer = Some(v.eer);
        }
    }
    Ok(())
}

/// Pictures/s of decoding (EXIF orientation, limits) and resizing to dlib's 150 x 150 input,
/// on one thread and then on every core (rayon pools of each size over the same pictures,
/// read into memory first). The all-core figure's reference is the one-thread figure, so its
/// ratio is the speed-up.
pub fn decode(dataset: &str, out: &str) -> Result<ExitCode> {
    use rayon::prelude::*;
    let data = crate::io::Location::open(dataset)?;
    let files: Vec<bytes::Bytes> = data.files()?.iter().map(|e| data.get(&e.key)).collect::<Result<_>>()?;
    let limits = crate::io::image::DecodeLimits::default();
    let work = |bytes: &bytes::Bytes| -> usize {
        crate::io::image::decode(bytes, &limits).map_or(0, |d| crate::io::image::to_chw_f32(&crate::io::image::resize(&d.rgb, 150, 150)).len())
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut figures = Vec::new();
    let mut one_thread = None;
    println!("cloakbench bench decode: {} files of {dataset}, decode + resize to 150x150", files.len());
    for threads in if cores > 1 { vec![1, cores] } else { vec![1] } {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
        let t = Instant::now();
        let decoded: usize = pool.install(|| files.par_iter().map(work).filter(|&n| n > 0).count());
        let rate = decoded as f64 / t.elapsed().as_secs_f64();
        let speedup = one_thread.map(|r| rate / r);
        println!("  {threads:>2} threads  {rate:>8.1} pictures/s{}", speedup.map_or(String::new(), |s| format!("  ({s:.2}x one thread)")));
        figures.push(Figure {
            bench: "decode".into(),
            device: format!("cpu ({threads} threads)"),
            subject: "decode + resize".into(),
            batch_size: None,
            metric: "images_per_s".into(),
            value: rate,
            unit: "images/s".into(),
            reference: one_thread,
        });
        one_thread = one_thread.or(Some(rate));
    }
    figures.extend(model_inputs(&files, &limits)?);
    write_figures(out, "decode", &figures)?;
    Ok(ExitCode::SUCCESS)
}

/// The two ways a decoded picture becomes a model's input, each beside the way it was made
/// before, on one thread over the same pictures held in memory: resizing the whole picture to
/// 150 x 150 (ours against `image`'s own triangle resize, which gives the same bytes) and
/// cropping a face with dlib's alignment (only the part the crop reads made floats, against
/// the whole picture). The face is dlib's mean face on a square of 40% of the picture's shorter
/// side, centred: the crop's cost follows the face's size, not where its landmarks are.
fn model_inputs(files: &[bytes::Bytes], limits: &crate::io::image::DecodeLimits) -> Result<Vec<Figure>> {
    use crate::face::align::{Alignment, DLIB_MEAN_FACE, FaceGeometry};
    use crate::io::image::{resize, to_chw_f32};
    let pictures: Vec<image::RgbImage> = files.iter().filter_map(|b| crate::io::image::decode(b, limits).ok()).map(|d| d.rgb).collect();
    type Work<'a> = &'a dyn Fn(&image::RgbImage) -> usize;
    let rate = |work: Work| {
        let t = Instant::now();
        let sizes: usize = pictures.iter().map(work).sum();
        std::hint::black_box(sizes);
        pictures.len() as f64 / t.elapsed().as_secs_f64()
    };
    let dlib = Alignment::DlibChip { size: 150, padding: 0.25 };
    let centred_face = |rgb: &image::RgbImage| {
        let side = 0.4 * rgb.width().min(rgb.height()) as f64;
        let (x0, y0) = ((rgb.width() as f64 - side) / 2.0, (rgb.height() as f64 - side) / 2.0);
        FaceGeometry { bbox: [x0, y0, x0 + side, y0 + side], landmarks: DLIB_MEAN_FACE.map(|[x, y]| [x0 + x * side, y0 + y * side]) }
    };
    let whole_crop = |rgb: &image::RgbImage| {
        let whole = Tensor::from_slice(&to_chw_f32(rgb)).view([1, 3, rgb.height() as i64, rgb.width() as i64]);
        dlib.crop(&whole, &centred_face(rgb)).numel()
    };
    let cases: [(&str, Work, Work); 2] = [
        ("resize to 150x150", &|rgb| resize(rgb, 150, 150).len(), &|rgb| image::imageops::resize(rgb, 150, 150, image::imageops::FilterType::Triangle).len()),
        ("dlib crop of a face", &|rgb| dlib.crop_picture(rgb, &centred_face(rgb)).numel(), &whole_crop),
    ];
    println!("  decoded pictures to model inputs, one thread (before: image's resize; the crop of the whole picture):");
    let threads = tch::get_num_threads();
    tch::set_num_threads(1);
    let mut figures = Vec::new();
    for (subject, ours, before) in cases {
        let (before, ours) = (rate(before), rate(ours));
        println!("  {subject:<20} {ours:>8.1} pictures/s, before {before:>8.1}  ({:.2}x)", ours / before);
        figures.push(Figure {
            bench: "decode".into(),
            device: "cpu (1 thread)".into(),
            subject: subject.into(),
            batch_size: None,
            metric: "images_per_s".into(),
            value: ours,
            unit: "images/s".into(),
            reference: Some(before),
        });
    }
    tch::set_num_threads(threads);
    Ok(figures)
}

/// Seconds per picture of each cloak method at several batch sizes, beside the same Fawkes
/// attack written in plain PyTorch (scripts/reference/fawkes_attack.py) on the same weights.
///
/// Every method runs `steps` optimisation steps (a short run, to keep the benchmark minutes
/// long); the per-step time is projected onto each method's own schedule.
pub fn cloak(size: [u32; 2], pictures: usize, steps: usize, batch_sizes: &[usize], device: &str, out: &str) -> Result<ExitCode> {
    use crate::attack::{engine, methods};
    use crate::face::align::{Alignment, DLIB_MEAN_FACE, FaceGeometry};
    let device = crate::models::device(device)?;
    let golden = std::path::Path::new("../shared/golden/dlib_resnet29_150/inputs");
    let png = std::fs::read_dir(golden)
        .with_context(|| format!("{}: the benchmark picture comes from the golden inputs", golden.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .min()
        .context("no golden PNG")?;
    let rgb = crate::io::image::decode(&std::fs::read(&png)?, &Default::default())?.rgb;
    let [h, w] = size;
    let picture = crate::io::image::resize(&rgb, w, h);
    let pixels = Tensor::from_slice(&crate::io::image::to_chw_f32(&picture)).view([3, h as i64, w as i64]);
    // The face's dlib chip is the picture's central square of 0.8 x the shorter side (as in the script).
    let side = h.min(w) as f64 * 0.8;
    let (s, x0, y0) = (side / 150.0, (w as f64 - side) / 2.0, (h as f64 - side) / 2.0);
    let to_picture = |[x, y]: [f64; 2]| [x0 + (x + 0.5) * s - 0.5, y0 + (y + 0.5) * s - 0.5];
    let landmarks = DLIB_MEAN_FACE.map(|[x, y]| to_picture([(0.25 + x) / 1.5 * 150.0, (0.25 + y) / 1.5 * 150.0]));
    let face = FaceGeometry { bbox: [x0, y0, x0 + side, y0 + side], landmarks };
    let model = crate::models::load("dlib_resnet29_150", device)?;
    let ensemble = [engine::Member { model: model.as_ref(), alignment: Alignment::DlibChip { size: 150, padding: 0.25 } }];
    let lpips = crate::models::lpips::LpipsAlex::installed(device)?;

    println!(
        "cloakbench bench cloak: {w}x{h} pictures, {pictures} per measurement, {steps} steps, ensemble dlib_resnet29_150, device {device:?}, {} threads, LowKey's perceptual term {}",
        tch::get_num_threads(),
        if lpips.is_some() { "LPIPS-AlexNet" } else { "DSSIM (LPIPS not installed)" }
    );
    println!("{:<22} {:>6} {:>14} {:>16} {:>12}", "method", "batch", "s/pic/step", "s/pic (schedule)", "pictures/s");
    let mut fawkes_best = f64::INFINITY;
    let mut fawkes_batch1 = f64::NAN;
    // (method and mode, schedule, batch, seconds per picture-step)
    let mut measured: Vec<(String, usize, usize, f64)> = Vec::new();
    for (method, mode) in
        [(methods::Method::Fawkes, "low"), (methods::Method::Fawkes, "mid"), (methods::Method::Fawkes, "high"), (methods::Method::Lowkey, "default")]
    {
        let schedule = methods::config(method, mode, 0)?.steps;
        for &batch in batch_sizes {
            let mut cfg = methods::config(method, mode, 0)?;
            cfg.steps = steps;
            let targets: Vec<engine::Target> = (0..batch).map(|_| engine::Target { pixels: pixels.shallow_clone(), faces: vec![face] }).collect();
            engine::run(&cfg, &ensemble, lpips.as_ref(), &targets[..1], device)?; // warm-up
            let t = Instant::now();
            let mut done = 0;
            while done < pictures {
                let n = batch.min(pictures - done);
                engine::run(&cfg, &ensemble, lpips.as_ref(), &targets[..n], device)?;
                done += n;
            }
            let per_step = t.elapsed().as_secs_f64() / pictures as f64 / steps as f64;
            let per_picture = per_step * schedule as f64;
            if method == methods::Method::Fawkes {
                fawkes_best = fawkes_best.min(per_step);
                if batch == 1 {
                    fawkes_batch1 = per_step;
                }
            }
            println!("{:<22} {batch:>6} {per_step:>14.4} {per_picture:>16.2} {:>12.3}", format!("{} {mode} ({schedule})", method.name()), 1.0 / per_picture);
            measured.push((format!("{} {mode}", method.name()), schedule, batch, per_step));
        }
    }
    // The plain PyTorch reference, same picture, size, steps and threads.
    let weights = crate::models::weights_path(&crate::models::card("dlib_resnet29_150")?)?;
    let run_reference = |batch: usize, profile: bool| -> Result<serde_json::Value> {
        let mut args = vec!["--weights".to_owned(), weights.display().to_string(), "--picture".into(), png.display().to_string()];
        args.extend(["--size".into(), h.to_string(), w.to_string(), "--pictures".into(), pictures.to_string()]);
        args.extend(["--batch".into(), batch.to_string(), "--steps".into(), steps.to_string()]);
        args.extend(profile.then(|| "--profile".to_owned()));
        run_reference_script("scripts/reference/fawkes_attack.py", &args, device)
    };
    let mut reference = Vec::new();
    for &batch in batch_sizes {
        let v = run_reference(batch, false)?;
        let per_step = v["seconds"].as_f64().unwrap_or(f64::NAN) / pictures as f64 / steps as f64;
        reference.push((batch, per_step));
        println!("{:<22} {batch:>6} {per_step:>14.4} {:>16.2} {:>12.3}", "pytorch fawkes (ref)", per_step * 150.0, 1.0 / (per_step * 150.0));
    }
    let ref_best = reference.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
    let ref_batch1 = reference.iter().find(|r| r.0 == 1).map_or(f64::NAN, |r| r.1);
    println!(
        "fawkes time per picture-step, cloakbench / PyTorch: batch 1 {:.2}, best batch {:.2} (below 1 = faster)",
        fawkes_batch1 / ref_batch1,
        fawkes_best / ref_best
    );
    println!("(the engine also measures DSSIM on Fawkes' 112x112 square crop and keeps the best iterate; the script does neither)");
    // The reference is the Fawkes attack, so only Fawkes rows get its figures beside them.
    let reference_at = |batch: usize| reference.iter().find(|r| r.0 == batch).map(|r| r.1);
    let mut figures = Vec::new();
    for (subject, schedule, batch, per_step) in &measured {
        let reference = if subject.starts_with("fawkes ") { reference_at(*batch) } else { None };
        let figure = |metric: &str, value: f64, reference: Option<f64>| Figure {
            bench: "cloak".into(),
            device: device_name(device),
            subject: subject.clone(),
            batch_size: Some(*batch as i64),
            metric: metric.into(),
            value,
            unit: "s".into(),
            reference,
        };
        figures.push(figure("s_per_picture_step", *per_step, reference));
        figures.push(figure("s_per_picture", per_step * *schedule as f64, reference.map(|r| r * *schedule as f64)));
    }
    // Where a step's time goes, ours and the reference's side by side (Fawkes high; separate
    // runs, as the profile's clock waits for the device at every phase).
    println!("\nFawkes high, one step by phase, s/picture-step (cloakbench / PyTorch):");
    println!("{:<10} {}", "phase", batch_sizes.iter().map(|b| format!("{:>26}", format!("batch {b}"))).collect::<String>());
    let mut rows: Vec<(&str, Vec<(f64, f64)>)> = engine::PHASES.iter().map(|&p| (p, Vec::new())).collect();
    for &batch in batch_sizes {
        let mut cfg = methods::config(methods::Method::Fawkes, "high", 0)?;
        cfg.steps = steps;
        let targets: Vec<engine::Target> = (0..batch).map(|_| engine::Target { pixels: pixels.shallow_clone(), faces: vec![face] }).collect();
        let mut ours = engine::Profile::new();
        let mut done = 0;
        while done < pictures {
            let n = batch.min(pictures - done);
            ours.add(&engine::run_profiled(&cfg, &ensemble, None, &targets[..n], device)?.1);
            done += n;
        }
        let theirs = run_reference(batch, true)?;
        let picture_steps = (pictures * steps) as f64;
        for (phase, cells) in &mut rows {
            let mine = ours.seconds(phase) / ours.picture_steps.max(1) as f64;
            let reference = theirs["phases"][*phase].as_f64().unwrap_or(0.0) / picture_steps;
            cells.push((mine, reference));
            figures.push(Figure {
                bench: "cloak".into(),
                device: device_name(device),
                subject: format!("fawkes high: {phase}"),
                batch_size: Some(batch as i64),
                metric: "s_per_picture_step".into(),
                value: mine,
                unit: "s".into(),
                reference: (*phase != "best").then_some(reference),
            });
        }
    }
    for (phase, cells) in &rows {
        println!("{phase:<10} {}", cells.iter().map(|(a, b)| format!("{:>26}", format!("{a:.4} / {b:.4}"))).collect::<String>());
    }
    println!(
        "(crop: pixels from the variable, then the model's crop; objective: feature term, DSSIM, loss; best: keeping the best iterate, which the script does not)"
    );
    write_figures(out, "cloak", &figures)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs one of `scripts/reference/*.py` with `args`, this process's thread count and `device`,
/// and parses the JSON line it prints. The scripts run in the project's venv;
/// CLOAKBENCH_PYTHON names another interpreter with torch, safetensors and numpy (a GPU
/// machine's own PyTorch, say).
fn run_reference_script(script: &str, args: &[String], device: tch::Device) -> Result<serde_json::Value> {
    let python = std::env::var("CLOAKBENCH_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into());
    let device_arg = match device {
        tch::Device::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".into(),
    };
    let out = std::process::Command::new(&python)
        .arg(script)
        .args(["--threads", &tch::get_num_threads().to_string(), "--device", &device_arg])
        .args(args)
        .output()
        .with_context(|| format!("running the PyTorch reference {script} (make setup installs .venv)"))?;
    if !out.status.success() {
        anyhow::bail!("the PyTorch reference {script} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(out.stdout.trim_ascii())?)
}

/// Pictures/s of MTCNN detection on `pictures` files drawn evenly over `dataset`'s sorted files
/// (decoded first, so only detection is timed), one picture at a time and side by side, beside facenet-pytorch's MTCNN, the detector's original runtime,
/// on the same files, weights, settings and threads (scripts/reference/mtcnn_detect.py).
pub fn detect(dataset: &str, pictures: usize, device: &str, out: &str) -> Result<ExitCode> {
    use crate::face::mtcnn::{Mtcnn, Settings};
    anyhow::ensure!(!crate::io::Location::is_s3_url(dataset), "{dataset}: bench detect reads a local folder (the reference script opens the files)");
    let data = crate::io::Location::open(dataset)?;
    let limits = crate::io::image::DecodeLimits::default();
    let entries = data.files()?;
    // Every k-th file, so that the pictures come from every identity, not the first one's.
    let stride = (entries.len() / pictures.max(1)).max(1);
    let (mut files, mut decoded) = (Vec::new(), Vec::new());
    for entry in entries.iter().step_by(stride) {
        // Not a picture (a README, a manifest): not measured.
        let Ok(picture) = crate::io::image::decode(&data.get(&entry.key)?, &limits) else { continue };
        files.push(std::path::Path::new(dataset).join(&entry.key).display().to_string());
        decoded.push(picture.rgb);
        if decoded.len() == pictures {
            break;
        }
    }
    anyhow::ensure!(!decoded.is_empty(), "{dataset}: no decodable pictures");
    let dev = crate::models::device(device)?;
    let settings = Settings::default();
    // One detector on every intra-op thread, picture after picture (how the stage ran before
    // it searched pictures side by side), then the stage's way.
    let detector = Mtcnn::load(dev)?;
    detector.detect(&decoded[0], &settings)?; // warm-up
    let t = Instant::now();
    let one_at_a_time: Vec<usize> = decoded.iter().map(|rgb| Ok(detector.detect(rgb, &settings)?.len())).collect::<Result<_>>()?;
    let one_at_a_time_rate = decoded.len() as f64 / t.elapsed().as_secs_f64();
    let mut detectors = crate::face::mtcnn::Detectors::load(dev)?;
    let t = Instant::now();
    let side_by_side: Vec<usize> = detectors.map(&decoded, |d, rgb| Ok(d.detect(rgb, &settings)?.len())).into_iter().collect::<Result<_>>()?;
    let rate = decoded.len() as f64 / t.elapsed().as_secs_f64();
    anyhow::ensure!(one_at_a_time == side_by_side, "the detectors side by side found other faces than one detector alone");
    let faces: usize = side_by_side.iter().sum();
    let reference = run_reference_script("scripts/reference/mtcnn_detect.py", &files, dev)?;
    let ref_rate = reference["pictures"].as_f64().unwrap_or(f64::NAN) / reference["seconds"].as_f64().unwrap_or(f64::NAN);
    let ref_faces = reference["faces"].as_u64().unwrap_or(0);
    println!("cloakbench bench detect: {} pictures of {dataset}, device {dev:?}, {} threads", decoded.len(), tch::get_num_threads());
    println!("  cloakbench, side by side     {rate:>8.1} pictures/s  ({faces} faces)");
    println!("  cloakbench, one at a time    {one_at_a_time_rate:>8.1} pictures/s");
    println!("  facenet-pytorch (reference)  {ref_rate:>8.1} pictures/s  ({ref_faces} faces; it decodes with Pillow)");
    println!("  cloakbench / facenet-pytorch: {:.2} side by side, {:.2} one at a time (above 1 = faster)", rate / ref_rate, one_at_a_time_rate / ref_rate);
    let figure = |subject: &str, value: f64| Figure {
        bench: "detect".into(),
        device: device_name(dev),
        subject: subject.into(),
        batch_size: None,
        metric: "images_per_s".into(),
        value,
        unit: "images/s".into(),
        reference: Some(ref_rate),
    };
    let figures = [figure("mtcnn", rate), figure("mtcnn, one picture at a time", one_at_a_time_rate)];
    write_figures(out, "detect", &figures)?;
    Ok(ExitCode::SUCCESS)
}
