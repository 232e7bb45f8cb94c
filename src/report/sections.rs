//! The report's sections, one function each; a section appears when the run has its tables.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;

use anyhow::{Context, Result};
use bytes::Bytes;
use serde_json::Value;

use super::html::{Cell, Section, escape, figure, table};
use super::pictures::{self, Pair};
use super::plots::{Chart, HeatMap, Series, Xy, range, render};
use super::{Run, Table};
use crate::io::Location;
use crate::io::image::{DecodeLimits, decode};
use crate::learn::roc::{auc, curve as roc_curve};
use crate::tables::cloaks::CloakRow;
use crate::tables::results::ResultRow;
use crate::tables::{clusters, detections, images, metrics, results, splits};

/// Cloaked pictures shown per cloak, and projections drawn at most.
const PICTURES_PER_CLOAK: usize = 4;
const MAX_PROJECTIONS: usize = 12;

pub fn all(run: &Run, out: &Location) -> Result<Vec<Section>> {
    let mut plots = Plots { out, n: 0 };
    let mut sections = vec![run_section(run)];
    let results = read_results(run).context("report: the results tables")?;
    if !results.is_empty() {
        sections.push(results_section(&results, &mut plots).context("report: the results section")?);
        if let Some(s) = timeline_section(&results, &mut plots).context("report: the timeline section")? {
            sections.push(s);
        }
    } else if let Some(s) = metrics_section(run).context("report: the metrics section")? {
        sections.push(s);
    }
    if let Some(s) = quality_section(run, &results, &mut plots).context("report: the quality section")? {
        sections.push(s);
    }
    if let Some(s) = detection_section(run, &mut plots).context("report: the detection section")? {
        sections.push(s);
    }
    if let Some(s) = clustering_section(run, &mut plots).context("report: the clustering section")? {
        sections.push(s);
    }
    if let Some(s) = pictures_section(run, out).context("report: the pictures section")? {
        sections.push(s);
    }
    Ok(sections)
}

/// Renders charts: the SVG goes into the page, the PNG into `plots/`.
struct Plots<'a> {
    out: &'a Location,
    n: usize,
}

impl Plots<'_> {
    fn figure<C: Chart>(&mut self, chart: &C, name: &str, caption: &str) -> Result<String> {
        let rendered = render(chart)?;
        self.n += 1;
        let file = format!("plots/{:02}-{}.png", self.n, slug(name));
        self.out.put(&file, Bytes::from(rendered.png))?;
        Ok(figure(&rendered.svg, Some(&file), caption))
    }
}

fn slug(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// The first part of a model id, enough to tell the zoo's models apart in a plot.
fn short(model: &str) -> &str {
    model.split('_').next().unwrap_or(model)
}

fn mean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.into_iter().fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

// ---- the run ----

fn run_section(run: &Run) -> Section {
    let m = &run.manifest;
    let stages = run.stages();
    let total: f64 = stages.iter().filter_map(|s| s["seconds"].as_f64()).sum();
    let failed: u64 = stages.iter().filter_map(|s| s["tally"]["failed"]["n"].as_u64()).sum();
    let mut body = String::from("<dl class=\"facts\">");
    let mut fact = |k: &str, v: String| {
        let _ = write!(body, "<dt>{}</dt><dd>{}</dd>", escape(k), escape(&v));
    };
    fact("pipeline", m["pipeline"].as_str().unwrap_or("?").into());
    fact("run folder", run.dir.url().into());
    fact("dataset", configs(stages, "dataset").join(", "));
    fact("code", format!("{} (cloakbench {})", m["code"].as_str().unwrap_or("?"), m["version"].as_str().unwrap_or("?")));
    fact(
        "stages",
        format!(
            "{} ({} ran in this run, {} reused), {:.0} s of work",
            stages.len(),
            stages.iter().filter(|s| s["ran"] == true).count(),
            stages.iter().filter(|s| s["ran"] == false).count(),
            total
        ),
    );
    fact("seeds", configs(stages, "seed").join(", "));
    fact("devices", configs(stages, "device").join(", "));
    fact("CPU reproducibility", format!("MKL {}", m["mkl_cbwr"].as_str().unwrap_or("not recorded")));
    fact("failed items", failed.to_string());
    body.push_str("</dl>");
    if failed > 0 {
        body.push_str("<h3>Counted failures</h3><ul>");
        for s in stages.iter().filter(|s| s["tally"]["failed"]["n"].as_u64().unwrap_or(0) > 0) {
            let examples: Vec<String> =
                s["tally"]["failed"]["examples"].as_array().into_iter().flatten().filter_map(|e| e.as_str().map(str::to_owned)).collect();
            let _ = write!(
                body,
                "<li><b>{}</b>: {} failed; {}</li>",
                escape(s["name"].as_str().unwrap_or("")),
                s["tally"]["failed"]["n"],
                escape(&examples.join("; "))
            );
        }
        body.push_str("</ul>");
    }
    body.push_str(&models_table(stages));
    body.push_str("<h3>Stages</h3>");
    let rows: Vec<Vec<Cell>> = stages.iter().map(stage_row).collect();
    body.push_str(&table(&["stage", "kind", "cell", "this run", "seconds", "failed", "skipped", "fingerprint", "configuration"], &rows));
    Section { id: "run", title: "The run".into(), body }
}

fn stage_row(s: &Value) -> Vec<Cell> {
    let labels: Vec<String> = s["labels"].as_array().into_iter().flatten().filter_map(|p| Some(format!("{}={}", p[0].as_str()?, p[1].as_str()?))).collect();
    let config = if s["config"].is_null() { "not recorded (run before cloakbench recorded it)".to_string() } else { compact(&s["config"]) };
    vec![
        Cell::text(s["name"].as_str().unwrap_or("")),
        Cell::text(s["kind"].as_str().unwrap_or("")),
        Cell::text(labels.join(" ")),
        Cell::text(if s["ran"] == true { "ran" } else { "reused" }),
        Cell::Number(s["seconds"].as_f64(), 1),
        Cell::count(s["tally"]["failed"]["n"].as_i64().unwrap_or(0)),
        Cell::count(s["tally"]["skipped"]["n"].as_i64().unwrap_or(0)),
        Cell::text(s["fingerprint"].as_str().map(|f| &f[..f.len().min(12)]).unwrap_or("")),
        Cell::text(config),
    ]
}

/// `k = v` pairs of a configuration, nested tables flattened with dots.
fn compact(config: &Value) -> String {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => map.iter().for_each(|(k, v)| walk(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out)),
            Value::Null => {}
            other => out.push(format!("{prefix} = {other}")),
        }
    }
    let mut out = Vec::new();
    walk("", config, &mut out);
    out.join(", ")
}

/// The distinct values of a configuration key over the stages (from configs or labels).
fn configs(stages: &[Value], key: &str) -> Vec<String> {
    let mut seen = BTreeSet::new();
    for s in stages {
        match &s["config"][key] {
            Value::String(v) => {
                seen.insert(v.clone());
            }
            Value::Number(n) => {
                seen.insert(n.to_string());
            }
            _ => {}
        }
        for pair in s["labels"].as_array().into_iter().flatten() {
            if pair[0] == key
                && let Some(v) = pair[1].as_str()
            {
                seen.insert(v.to_owned());
            }
        }
    }
    if seen.is_empty() { vec!["not recorded".into()] } else { seen.into_iter().collect() }
}

/// Every face model the run's stages name, with the facts of its card.
fn models_table(stages: &[Value]) -> String {
    let mut ids = BTreeSet::new();
    for s in stages {
        for key in ["model", "ensemble", "attacker_models", "models"] {
            match &s["config"][key] {
                Value::String(v) => {
                    ids.insert(v.clone());
                }
                Value::Array(vs) => ids.extend(vs.iter().filter_map(|v| v.as_str().map(str::to_owned))),
                _ => {}
            }
        }
        for pair in s["labels"].as_array().into_iter().flatten() {
            if pair[0] == "model"
                && let Some(v) = pair[1].as_str()
            {
                ids.insert(v.to_owned());
            }
        }
    }
    if ids.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<Cell>> = ids
        .iter()
        .map(|id| match crate::models::card(id) {
            Ok(c) => vec![
                Cell::text(id.as_str()),
                Cell::text(c.architecture.as_str()),
                Cell::text(format!("{}x{}", c.input_size[1], c.input_size[0])),
                Cell::count(c.output_dim),
                Cell::text(c.year.map(|y| y.to_string()).unwrap_or_default()),
                Cell::text(c.training_set.as_str()),
                Cell::text(c.licence.as_str()),
            ],
            Err(_) => vec![
                Cell::text(id.as_str()),
                Cell::text("no card installed here"),
                Cell::text(""),
                Cell::Number(None, 0),
                Cell::text(""),
                Cell::text(""),
                Cell::text(""),
            ],
        })
        .collect();
    format!("<h3>Face models</h3>{}", table(&["model", "network", "input (w x h)", "dimension", "year", "training set", "licence"], &rows))
}

// ---- results ----

fn read_results(run: &Run) -> Result<Vec<ResultRow>> {
    let mut rows = Vec::new();
    for t in run.of_schema("results") {
        rows.extend(results::read(&t.batches)?);
    }
    Ok(rows)
}

fn cloak_name(r: &ResultRow) -> String {
    if r.method == "none" { "no cloak".into() } else { format!("{} {}", r.method, r.mode) }
}

/// The trainer of a cell, as a heat map column: defender, model and how it differed.
fn trainer(r: &ResultRow) -> String {
    let how = r.trainer_alignment.as_deref().or(r.purifier.as_deref()).map(|h| format!(" {h}")).unwrap_or_default();
    format!("{}\n{}{how}", r.defender, short(&r.defender_model))
}

fn trainer_order(name: &str) -> (usize, String) {
    let rank = ["baseline", "oblivious", "oblivious_crop", "adaptive", "purified"].iter().position(|d| name.starts_with(&format!("{d}\n"))).unwrap_or(9);
    (rank, name.to_owned())
}

fn results_section(rows: &[ResultRow], plots: &mut Plots) -> Result<Section> {
    let mut body = String::from(
        "<p class=\"note\">Protection rate: the share of a protected user's clean test pictures the trainer's classifier does <i>not</i> \
         recognise (1 = fully protected, 0 = recognised every time). Control: the same user's error rate in the same cell with nothing \
         cloaked. Clean accuracy: the other evaluated users' accuracy in the same cell (what the trainer still gets right).</p>",
    );
    let main: Vec<&ResultRow> = rows.iter().filter(|r| r.top_k == 1 && r.method != "none").collect();
    let classifiers: BTreeSet<&str> = main.iter().map(|r| r.classifier.as_str()).collect();
    for classifier in &classifiers {
        let of: Vec<&ResultRow> = main.iter().copied().filter(|r| r.classifier == *classifier).collect();
        let top = of.iter().map(|r| r.cloak_fraction).fold(0.0, f64::max);
        let at_top: Vec<&ResultRow> = of.iter().copied().filter(|r| r.cloak_fraction == top).collect();
        let map = heat_map(&at_top, &format!("Mean protection, {classifier}, cloak fraction {top}"));
        let caption = format!(
            "Mean protection rate over the protected users, by cloak (rows) and trainer (columns: defender, model, and its crop or filter), \
             classifier {classifier}, {top:.0}% of each user's training pictures cloaked. Grey: the run has no such cell.",
            top = top * 100.0
        );
        body.push_str(&plots.figure(&map, &format!("protection-{classifier}"), &caption)?);
    }
    body.push_str(&fraction_plots(&main, plots)?);
    body.push_str("<h3>Every cell</h3>");
    body.push_str(&cells_table(rows));
    body.push_str("<h3>Every protected user</h3>");
    let per_user: Vec<Vec<Cell>> = rows
        .iter()
        .map(|r| {
            vec![
                Cell::text(cloak_name(r)),
                Cell::Number(Some(r.cloak_fraction), 2),
                Cell::text(r.defender.as_str()),
                Cell::text(r.defender_model.as_str()),
                Cell::text(r.trainer_alignment.as_deref().or(r.purifier.as_deref()).unwrap_or("")),
                Cell::text(r.classifier.as_str()),
                Cell::count(i64::from(r.top_k)),
                Cell::text(r.user.as_str()),
                Cell::rate(Some(r.protection_rate)),
                Cell::rate(r.unprotected_error),
                Cell::rate(Some(r.clean_accuracy)),
                Cell::count(r.n_test),
                Cell::text(r.protocol.as_str()),
            ]
        })
        .collect();
    body.push_str(&table(
        &[
            "cloak",
            "fraction",
            "defender",
            "model",
            "crop / filter",
            "classifier",
            "top k",
            "user",
            "protection",
            "control (error, nothing cloaked)",
            "clean accuracy",
            "test pictures",
            "protocol",
        ],
        &per_user,
    ));
    Ok(Section { id: "results", title: "Protection".into(), body })
}

fn heat_map(rows: &[&ResultRow], title: &str) -> HeatMap {
    let cloaks: BTreeSet<String> = rows.iter().map(|r| cloak_name(r)).collect();
    let mut trainers: Vec<String> = rows.iter().map(|r| trainer(r)).collect::<BTreeSet<_>>().into_iter().collect();
    trainers.sort_by_key(|t| trainer_order(t));
    let values = cloaks
        .iter()
        .map(|c| trainers.iter().map(|t| mean(rows.iter().filter(|r| &cloak_name(r) == c && &trainer(r) == t).map(|r| r.protection_rate))).collect())
        .collect();
    HeatMap {
        title: title.into(),
        rows: cloaks.into_iter().collect(),
        columns: trainers,
        values,
        legend: "mean protection rate (0: recognised, 1: protected)".into(),
    }
}

/// Protection against the share of training pictures cloaked, one plot per cloak and classifier.
fn fraction_plots(rows: &[&ResultRow], plots: &mut Plots) -> Result<String> {
    let mut out = String::new();
    let mut groups: BTreeMap<(String, String), Vec<&ResultRow>> = BTreeMap::new();
    for r in rows {
        groups.entry((cloak_name(r), r.classifier.clone())).or_default().push(r);
    }
    for ((cloak, classifier), of) in groups {
        let fractions: BTreeSet<u64> = of.iter().map(|r| r.cloak_fraction.to_bits()).collect();
        if fractions.len() < 2 {
            continue;
        }
        let mut by_trainer: BTreeMap<(usize, String), BTreeMap<u64, Vec<f64>>> = BTreeMap::new();
        for r in &of {
            by_trainer.entry(trainer_order(&trainer(r))).or_default().entry(r.cloak_fraction.to_bits()).or_default().push(r.protection_rate);
        }
        let series = by_trainer
            .into_iter()
            .filter(|(_, points)| points.len() > 1)
            .map(|((_, name), points)| {
                Series::new(name.replace('\n', " "), points.into_iter().map(|(f, v)| (f64::from_bits(f), mean(v).unwrap_or(0.0))).collect())
            })
            .collect::<Vec<_>>();
        if series.is_empty() {
            continue;
        }
        if out.is_empty() {
            out.push_str("<h3>Protection as clean pictures leak</h3>");
        }
        let chart = Xy {
            title: format!("{cloak}, {classifier}"),
            x_label: "cloak fraction (share of the user's training pictures cloaked)".into(),
            y_label: "mean protection rate".into(),
            x_range: (0.0, 1.0),
            y_range: (0.0, 1.05),
            series,
            lines: true,
            diagonal: false,
            whole_x: false,
        };
        let caption = format!(
            "Mean protection rate of the protected users against each trainer as the cloak fraction grows ({cloak}, {classifier}); the rest of their training pictures leaked clean."
        );
        out.push_str(&plots.figure(&chart, &format!("fraction-{cloak}-{classifier}"), &caption)?);
    }
    Ok(out)
}

fn cells_table(rows: &[ResultRow]) -> String {
    type Key = (String, u64, String, String, String, String, i32, String);
    let mut cells: BTreeMap<Key, Vec<&ResultRow>> = BTreeMap::new();
    for r in rows {
        let how = r.trainer_alignment.clone().or(r.purifier.clone()).unwrap_or_default();
        let key =
            (cloak_name(r), r.cloak_fraction.to_bits(), r.defender.clone(), r.defender_model.clone(), how, r.classifier.clone(), r.top_k, r.protocol.clone());
        cells.entry(key).or_default().push(r);
    }
    let table_rows: Vec<Vec<Cell>> = cells
        .into_iter()
        .map(|((cloak, fraction, defender, model, how, classifier, k, protocol), of)| {
            vec![
                Cell::text(cloak),
                Cell::Number(Some(f64::from_bits(fraction)), 2),
                Cell::text(defender),
                Cell::text(model),
                Cell::text(how),
                Cell::text(classifier),
                Cell::count(i64::from(k)),
                Cell::rate(mean(of.iter().map(|r| r.protection_rate))),
                Cell::rate(mean(of.iter().filter_map(|r| r.unprotected_error))),
                Cell::rate(mean(of.iter().map(|r| r.clean_accuracy))),
                Cell::count(of.len() as i64),
                Cell::text(protocol),
            ]
        })
        .collect();
    table(
        &[
            "cloak",
            "fraction",
            "defender",
            "model",
            "crop / filter",
            "classifier",
            "top k",
            "mean protection",
            "mean control",
            "clean accuracy",
            "users",
            "protocol",
        ],
        &table_rows,
    )
}

/// Without a `results` table (a protect or baseline run): each `metrics` table's accuracy.
fn metrics_section(run: &Run) -> Result<Option<Section>> {
    let mut rows = Vec::new();
    for t in run.of_schema("metrics") {
        for m in metrics::read(&t.batches)? {
            rows.push(vec![
                Cell::text(t.name.as_str()),
                Cell::text(m.classifier.as_str()),
                Cell::text(m.model.as_str()),
                Cell::text(m.identity.clone().unwrap_or_else(|| "(all)".into())),
                Cell::text(if m.protected == Some(true) { "protected" } else { "" }),
                Cell::count(i64::from(m.top_k)),
                Cell::count(m.n_test),
                Cell::rate(Some(m.accuracy)),
                Cell::rate(m.protection_rate()),
            ]);
        }
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let body = format!(
        "<p class=\"note\">Accuracy of each classifier on each identity's clean test pictures (\"(all)\": every test picture); for a protected \
         user, protection = 1 - accuracy.</p>{}",
        table(&["table", "classifier", "model", "identity", "", "top k", "test pictures", "accuracy", "protection"], &rows)
    );
    Ok(Some(Section { id: "accuracy", title: "Accuracy and protection".into(), body }))
}

// ---- oblivious timeline ----

fn timeline_section(rows: &[ResultRow], plots: &mut Plots) -> Result<Option<Section>> {
    let year = |model: &str| crate::models::card(model).ok().and_then(|c| c.year);
    let eligible: Vec<&ResultRow> = rows
        .iter()
        .filter(|r| r.top_k == 1 && r.method != "none" && (r.defender == "baseline" || r.defender == "oblivious") && r.trainer_alignment.is_none())
        .collect();
    let top = eligible.iter().map(|r| r.cloak_fraction).fold(0.0, f64::max);
    let mut body = String::new();
    let classifiers: BTreeSet<&str> = eligible.iter().map(|r| r.classifier.as_str()).collect();
    for classifier in classifiers {
        let mut by_cloak: BTreeMap<String, BTreeMap<(u32, String), Vec<f64>>> = BTreeMap::new();
        for r in eligible.iter().filter(|r| r.classifier == classifier && r.cloak_fraction == top) {
            if let Some(y) = year(&r.defender_model) {
                by_cloak.entry(cloak_name(r)).or_default().entry((y, r.defender_model.clone())).or_default().push(r.protection_rate);
            }
        }
        if by_cloak.values().all(|m| m.len() < 2) {
            continue;
        }
        let years: Vec<f64> = by_cloak.values().flat_map(|m| m.keys().map(|(y, _)| f64::from(*y))).collect();
        let series = by_cloak
            .into_iter()
            .map(|(cloak, points)| {
                let (points, labels): (Vec<_>, Vec<_>) =
                    points.into_iter().map(|((y, model), v)| ((f64::from(y), mean(v).unwrap_or(0.0)), short(&model).to_owned())).unzip();
                Series { name: cloak, points, point_labels: labels, emphasis: false }
            })
            .collect();
        let (lo, hi) = range(years, 0.0);
        let chart = Xy {
            title: format!("Protection by the trainer's model year, {classifier}"),
            x_label: "year the trainer's model was published".into(),
            y_label: "mean protection rate".into(),
            x_range: (lo.floor() - 0.5, hi.ceil() + 0.5),
            y_range: (0.0, 1.1),
            series,
            lines: true,
            diagonal: false,
            whole_x: true,
        };
        let caption = format!(
            "Protection against the attacker's own model and every other model (oblivious trainers), ordered by the year each model was \
             published (its card), {classifier}, cloak fraction {top}: a trainer who waits for a newer model."
        );
        body.push_str(&plots.figure(&chart, &format!("timeline-{classifier}"), &caption)?);
    }
    Ok((!body.is_empty()).then(|| Section { id: "timeline", title: "Oblivious trainers over time".into(), body }))
}

// ---- quality ----

fn quality_section(run: &Run, results: &[ResultRow], plots: &mut Plots) -> Result<Option<Section>> {
    let mut by_cloak: BTreeMap<String, Vec<CloakRow>> = BTreeMap::new();
    for t in run.of_schema("cloaks") {
        for row in crate::tables::cloaks::read(&t.batches)? {
            by_cloak.entry(format!("{} {}", row.method, row.mode)).or_default().push(row);
        }
    }
    if by_cloak.is_empty() {
        return Ok(None);
    }
    let protection = protection_by_cloak(run, results)?;
    let mut rows = Vec::new();
    let mut points: Vec<(String, [f64; 3], Option<f64>)> = Vec::new();
    for (cloak, faces) in &by_cloak {
        // An untouched face has an infinite PSNR: means are over the finite values.
        let f = |g: fn(&CloakRow) -> f64| mean(faces.iter().map(g).filter(|v| v.is_finite())).unwrap_or(f64::NAN);
        let figures = [f(|r| r.dssim), f(|r| r.psnr), f(|r| r.linf)];
        let within = faces.iter().filter(|r| r.within_budget).count();
        let p = protection.get(cloak).copied();
        rows.push(vec![
            Cell::text(cloak.as_str()),
            Cell::count(faces.len() as i64),
            Cell::Number(Some(figures[0]), 4),
            Cell::Number(faces.iter().map(|r| r.dssim).reduce(f64::max), 4),
            Cell::Number(Some(figures[1]), 1),
            Cell::Number(Some(figures[2]), 0),
            Cell::text(format!("{within}/{}", faces.len())),
            Cell::Number(Some(f(|r| r.seconds)), 2),
            Cell::rate(p),
        ]);
        points.push((cloak.clone(), figures, p));
    }
    let mut body = String::from(
        "<p class=\"note\">What each cloak cost in image quality, per cloaked face: DSSIM on the face crop the cloak optimised (its budget), \
         PSNR in dB and L-inf in 0..255 levels on the picture; and the protection it bought against the attacker's own model (baseline, \
         highest cloak fraction, mean over users and classifiers).</p>",
    );
    body.push_str(&table(
        &["cloak", "faces", "DSSIM mean", "DSSIM max", "PSNR dB", "L-inf /255", "within budget", "s per face", "protection (baseline)"],
        &rows,
    ));
    let plotted: Vec<&(String, [f64; 3], Option<f64>)> = points.iter().filter(|p| p.2.is_some()).collect();
    if !plotted.is_empty() {
        let axes = [
            ("DSSIM (face crop; lower is closer to the original)", "dssim"),
            ("PSNR, dB (higher is closer)", "psnr"),
            ("L-inf, levels of 255 (largest change of a pixel)", "linf"),
        ];
        for (i, (label, name)) in axes.iter().enumerate() {
            let series = plotted
                .iter()
                .map(|(c, f, p)| Series { name: c.clone(), points: vec![(f[i], p.unwrap_or(0.0))], point_labels: vec![c.clone()], emphasis: false })
                .collect();
            let chart = Xy {
                title: format!("Protection against image quality ({name})"),
                x_label: (*label).into(),
                y_label: "protection rate (baseline)".into(),
                x_range: range(plotted.iter().map(|p| p.1[i]), 0.15),
                y_range: (0.0, 1.1),
                series,
                lines: false,
                diagonal: false,
                whole_x: false,
            };
            body.push_str(&plots.figure(
                &chart,
                &format!("quality-{name}"),
                &format!("Each cloak as a point: mean {name} of its faces against the protection it gave."),
            )?);
        }
    }
    Ok(Some(Section { id: "quality", title: "Image quality and protection".into(), body }))
}

/// Protection against the attacker's own model per cloak: from `results` (baseline, highest
/// fraction), else from the run's `metrics` tables (a protect run has one cloak).
fn protection_by_cloak(run: &Run, results: &[ResultRow]) -> Result<HashMap<String, f64>> {
    let mut out = HashMap::new();
    let baseline: Vec<&ResultRow> = results.iter().filter(|r| r.defender == "baseline" && r.top_k == 1 && r.method != "none").collect();
    if !baseline.is_empty() {
        let mut groups: BTreeMap<String, (f64, Vec<f64>)> = BTreeMap::new();
        for r in &baseline {
            let g = groups.entry(cloak_name(r)).or_insert((f64::MIN, Vec::new()));
            if r.cloak_fraction > g.0 {
                *g = (r.cloak_fraction, Vec::new());
            }
            if r.cloak_fraction == g.0 {
                g.1.push(r.protection_rate);
            }
        }
        out.extend(groups.into_iter().filter_map(|(c, (_, v))| Some((c, mean(v)?))));
        return Ok(out);
    }
    let cloaks: BTreeSet<String> =
        run.of_schema("cloaks").flat_map(|t| crate::tables::cloaks::read(&t.batches).unwrap_or_default()).map(|r| format!("{} {}", r.method, r.mode)).collect();
    if cloaks.len() == 1 {
        let mut rates = Vec::new();
        for t in run.of_schema("metrics") {
            rates.extend(metrics::read(&t.batches)?.iter().filter(|m| m.identity.is_some() && m.top_k == 1).filter_map(|m| m.protection_rate()));
        }
        if let (Some(c), Some(p)) = (cloaks.into_iter().next(), mean(rates)) {
            out.insert(c, p);
        }
    }
    Ok(out)
}

// ---- detection ----

fn detection_section(run: &Run, plots: &mut Plots) -> Result<Option<Section>> {
    let mut metric_rows = Vec::new();
    for t in run.of_schema("detection_metrics") {
        for m in detections::read_metrics(&t.batches)? {
            metric_rows.push(vec![
                Cell::text(m.detector.as_str()),
                Cell::text(m.trained_on.as_str()),
                Cell::text(m.tested_on.as_str()),
                Cell::count(m.train_pictures),
                Cell::count(m.n_cloaked),
                Cell::count(m.n_clean),
                Cell::rate(Some(m.auc)),
                Cell::Number(Some(m.threshold), 2),
                Cell::rate(m.precision),
                Cell::rate(Some(m.recall)),
            ]);
        }
    }
    if metric_rows.is_empty() {
        return Ok(None);
    }
    let mut body = String::from(
        "<p class=\"note\">Detectors trained on the public identities' pictures (clean and cloaked) and tested on the evaluated users' \
         pictures, identities the detector never saw. AUC: the chance a cloaked picture scores above a clean one. Precision and recall \
         of \"cloaked\" at the stated score threshold.</p>",
    );
    body.push_str(&table(
        &["detector", "trained on", "tested on", "training pictures", "cloaked tested", "clean tested", "ROC AUC", "threshold", "precision", "recall"],
        &metric_rows,
    ));
    /// The cloaked pictures' scores and the clean ones'.
    type Scores = (Vec<f64>, Vec<f64>);
    // detector -> training cloak → tested cloak -> scores
    let mut curves: BTreeMap<String, BTreeMap<String, Scores>> = BTreeMap::new();
    for t in run.of_schema("detections") {
        for d in detections::read(&t.batches)? {
            let scores = curves.entry(d.detector.clone()).or_default().entry(format!("{} → {}", d.trained_on, d.tested_on)).or_default();
            if d.cloaked { scores.0.push(d.score) } else { scores.1.push(d.score) }
        }
    }
    for (detector, pairs) in curves {
        let series = pairs
            .into_iter()
            .map(|(name, (cloaked, clean))| Series::new(format!("AUC {:.3}: {name}", auc(&cloaked, &clean)), roc_curve(&cloaked, &clean, 200)))
            .collect();
        let chart = Xy {
            title: format!("ROC, {detector}"),
            x_label: "false positive rate (clean pictures flagged)".into(),
            y_label: "true positive rate (cloaked pictures flagged)".into(),
            x_range: (0.0, 1.0),
            y_range: (0.0, 1.0),
            series,
            lines: true,
            diagonal: true,
            whole_x: false,
        };
        let caption = format!("ROC curves of the {detector} detector, one per training cloak → tested cloak; the grey diagonal is chance.");
        body.push_str(&plots.figure(&chart, &format!("roc-{detector}"), &caption)?);
    }
    Ok(Some(Section { id: "detection", title: "Detecting cloaked pictures".into(), body }))
}

// ---- clustering ----

fn clustering_section(run: &Run, plots: &mut Plots) -> Result<Option<Section>> {
    let mut rows = Vec::new();
    let mut protected: BTreeSet<String> = BTreeSet::new();
    for t in run.of_schema("cluster_metrics") {
        let metrics = clusters::read_metrics(&t.batches)?;
        protected.extend(metrics.iter().filter(|m| m.protected == Some(true)).filter_map(|m| m.identity.clone()));
        for overall in metrics.iter().filter(|m| m.identity.is_none()) {
            let own: Vec<String> = metrics
                .iter()
                .filter(|m| m.model == overall.model && m.algorithm == overall.algorithm && m.protected == Some(true))
                .map(|m| format!("{}: {}", m.identity.as_deref().unwrap_or(""), if m.own_cluster() == Some(true) { "own cluster" } else { "scattered" }))
                .collect();
            rows.push(vec![
                Cell::text(cell_of(run, &t.name)),
                Cell::text(overall.model.as_str()),
                Cell::text(overall.algorithm.as_str()),
                Cell::count(i64::from(overall.k)),
                Cell::count(overall.n),
                Cell::rate(overall.purity),
                Cell::rate(overall.nmi),
                Cell::text(own.join("; ")),
            ]);
        }
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let mut body = String::from(
        "<p class=\"note\">The evaluated users' embeddings clustered into as many clusters as users. Purity: the share of pictures in their \
         cluster's majority identity; NMI: normalised mutual information between clusters and identities (1: clusters are the \
         identities). A protected user keeps an own cluster when the cluster holding most of their pictures is at least half theirs \
         and holds at least half of them: the anti-clustering cloak aims to scatter them.</p>",
    );
    body.push_str(&table(&["cell", "model", "algorithm", "clusters", "pictures", "purity", "NMI", "protected users"], &rows));
    body.push_str(&projections(run, &protected, plots)?);
    Ok(Some(Section { id: "clustering", title: "Clustering".into(), body }))
}

fn projections(run: &Run, protected: &BTreeSet<String>, plots: &mut Plots) -> Result<String> {
    let mut out = String::new();
    let mut drawn = 0;
    let tables: Vec<&Table> = run.of_schema("clusters").collect();
    for t in &tables {
        let assignments = clusters::read(&t.batches)?;
        let Some(algorithm) = assignments.first().map(|a| a.algorithm.clone()) else { continue };
        let models: BTreeSet<&str> = assignments.iter().map(|a| a.model.as_str()).collect();
        for model in models {
            if drawn == MAX_PROJECTIONS {
                break;
            }
            let mut by_identity: BTreeMap<(bool, String), Vec<(f64, f64)>> = BTreeMap::new();
            for a in assignments.iter().filter(|a| a.model == model && a.algorithm == algorithm) {
                if let Some([x, y]) = a.position {
                    by_identity.entry((protected.contains(&a.identity), a.identity.clone())).or_default().push((f64::from(x), f64::from(y)));
                }
            }
            if by_identity.is_empty() {
                continue;
            }
            let all: Vec<(f64, f64)> = by_identity.values().flatten().copied().collect();
            // Protected users last, so they are drawn on top and listed at the end of the legend.
            let series = by_identity
                .into_iter()
                .map(|((p, who), points)| Series { name: if p { format!("{who} (protected)") } else { who }, points, point_labels: Vec::new(), emphasis: p })
                .collect();
            let chart = Xy {
                title: format!("{}: {}", cell_without(run, &t.name, &["model"]), short(model)),
                x_label: "first principal axis".into(),
                y_label: "second principal axis".into(),
                x_range: range(all.iter().map(|p| p.0), 0.05),
                y_range: range(all.iter().map(|p| p.1), 0.05),
                series,
                lines: false,
                diagonal: false,
                whole_x: false,
            };
            let caption = format!(
                "The {model} embeddings of table {} on their first two principal axes; each colour one user, the protected users large and ringed.",
                t.name
            );
            out.push_str(&plots.figure(&chart, &format!("projection-{}-{model}", t.name), &caption)?);
            drawn += 1;
        }
    }
    if drawn == 0 && !tables.is_empty() {
        out.push_str("<p class=\"note\">This run's clusters tables carry no 2-D positions (written before cloakbench recorded them): no projection.</p>");
    } else if drawn == MAX_PROJECTIONS {
        let _ = write!(out, "<p class=\"note\">The first {MAX_PROJECTIONS} projections are drawn; every table is in the run folder.</p>");
    }
    Ok(out)
}

// ---- pictures ----

fn pictures_section(run: &Run, out: &Location) -> Result<Option<Section>> {
    let splits = run.of_schema("splits").next().map(|t| splits::read(&t.batches)).transpose()?;
    let mut body = String::from(
        "<p class=\"note\">A sample of cloaked pictures of the protected users beside their originals. The difference is |cloaked - \
         original| per colour channel, multiplied by the stated factor so that the largest change is white.</p>",
    );
    let mut shown = 0;
    // The cloak stages' own tables (a mix or a filter writes the same schema: the same pictures).
    for t in run.of_schema("cloaked_images").filter(|t| run.writer(&t.name).is_none_or(|s| s["kind"] == "cloak")) {
        let faces = cloak_rows_beside(run, t)?;
        let rows = images::read(&t.batches)?;
        // The pictures the cloak read (framed ones, where a filter ran first), else the dataset's.
        let read = run.writer(&t.name).and_then(|s| s["inputs"]["images"][0].as_str()).and_then(|name| run.table(name));
        let before = match read {
            Some(table) => images::read(&table.batches)?,
            None => rows.iter().map(|r| images::ImageRow { uri: r.original_uri.clone(), ..r.clone() }).collect(),
        };
        let replaced = images::replaced(&before, &rows);
        let before_uri: HashMap<&str, &str> = before.iter().map(|r| (r.image_id.as_str(), r.uri.as_str())).collect();
        let mut cloaked: Vec<&images::ImageRow> = rows.iter().filter(|r| replaced.contains(&r.image_id) && faces.contains_key(&r.image_id)).collect();
        let is_protected = |r: &&images::ImageRow| splits.as_ref().is_some_and(|s| s.protected.contains(&r.identity));
        cloaked.sort_by_key(|r| (!is_protected(r), r.image_id.clone()));
        let mut pairs = Vec::new();
        for r in cloaked.into_iter().take(PICTURES_PER_CLOAK) {
            match (fetch(before_uri[r.image_id.as_str()]), fetch(&r.uri)) {
                (Ok(original), Ok(cloaked)) => pairs.push(Pair { label: r.rel_path.clone(), original, cloaked, face_dssim: faces.get(&r.image_id).copied() }),
                (Err(e), _) | (_, Err(e)) => {
                    let _ = write!(body, "<p class=\"note\">{}: {}</p>", escape(&r.rel_path), escape(&format!("{e:#}")));
                }
            }
        }
        if pairs.is_empty() {
            continue;
        }
        let cloak = faces_cloak_name(run, t);
        let _ = write!(body, "<h3>{}</h3>", escape(&cloak));
        body.push_str(&pictures::grid(&pairs, out, "pictures", &slug(&t.name))?);
        shown += pairs.len();
    }
    Ok((shown > 0).then(|| Section { id: "pictures", title: "Before and after".into(), body }))
}

/// The cloak's own DSSIM per image (first face), from the `cloaks` table its stage wrote.
fn cloak_rows_beside(run: &Run, cloaked: &Table) -> Result<HashMap<String, f64>> {
    let sibling = run
        .writer(&cloaked.name)
        .and_then(|s| s["outputs"].as_array())
        .and_then(|o| o.iter().filter_map(Value::as_str).find(|n| run.table(n).is_some_and(|t| t.schema == "cloaks")).map(str::to_owned));
    let name = sibling.unwrap_or_else(|| cloaked.name.replacen("cloaked_images", "cloaks", 1));
    let mut out = HashMap::new();
    if let Some(t) = run.table(&name).filter(|t| t.schema == "cloaks") {
        for row in crate::tables::cloaks::read(&t.batches)? {
            out.entry(row.image_id).or_insert(row.dssim);
        }
    }
    Ok(out)
}

fn faces_cloak_name(run: &Run, cloaked: &Table) -> String {
    let Some(stage) = run.writer(&cloaked.name) else { return cloaked.name.clone() };
    let method = stage["config"]["method"].as_str().map(str::to_owned).or_else(|| label(stage, "method"));
    let mode = stage["config"]["mode"].as_str().map(str::to_owned).or_else(|| label(stage, "mode"));
    match (method, mode) {
        (Some(m), Some(o)) => format!("{m} {o} ({})", cloaked.name),
        _ => cloaked.name.clone(),
    }
}

/// What tells a table's cell apart: its writer's labels (fan-out values and tags, the dataset
/// left out), else the table's name.
fn cell_of(run: &Run, table: &str) -> String {
    cell_without(run, table, &[])
}

/// The cell's labels without `dataset`, `defender = standard` and the keys in `drop`.
fn cell_without(run: &Run, table: &str, drop: &[&str]) -> String {
    let labels: Vec<String> = run
        .writer(table)
        .and_then(|s| s["labels"].as_array())
        .into_iter()
        .flatten()
        .filter(|p| p[0] != "dataset" && !(p[0] == "defender" && p[1] == "standard") && !drop.iter().any(|d| p[0] == *d))
        .filter_map(|p| Some(format!("{}={}", p[0].as_str()?, p[1].as_str()?)))
        .collect();
    if labels.is_empty() { table.to_owned() } else { labels.join(" ") }
}

fn label(stage: &Value, key: &str) -> Option<String> {
    stage["labels"].as_array()?.iter().find(|p| p[0] == key).and_then(|p| p[1].as_str().map(str::to_owned))
}

fn fetch(uri: &str) -> Result<image::RgbImage> {
    let (dir, key) = crate::io::split_url(uri);
    let bytes = Location::open(dir)?.get(key)?;
    decode(&bytes, &DecodeLimits::default()).map(|d| d.rgb).map_err(|e| anyhow::anyhow!("{uri}: {}", e.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_reads_as_key_value_pairs() {
        let v = serde_json::json!({"model": "dlib", "schedule": {"epochs": 3}, "device": null});
        assert_eq!(compact(&v), "model = \"dlib\", schedule.epochs = 3");
    }
}
