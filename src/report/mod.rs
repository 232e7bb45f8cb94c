//! `cloakbench report RUN`: one HTML page made only from a run's Parquet tables, its manifest
//! and its pictures, that opens from disk with no network. A section appears for each kind of
//! table the run has, so the same command serves a baseline run, a protect run and a full grid.
//! Plots are inline SVG, each also written as a PNG under `plots/`; pictures under `pictures/`.
//!
//! Tables are recognised by the schema name every file carries (`cloakbench.table`), not by
//! their file names, which fan-out and `outputs` renamings change.

pub mod html;
pub mod pictures;
pub mod plots;
mod sections;

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail};
use arrow_array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use crate::io::Location;
use crate::io::parquet::read_bytes;
use crate::tables::TABLE_KEY;

/// The schemas the report reads; others (embeddings, predictions, ...) are not even decoded.
const SHOWN: &[&str] =
    &["results", "metrics", "cloaks", "cloaked_images", "detections", "detection_metrics", "clusters", "cluster_metrics", "splits", "verification"];

/// One table of the run.
pub struct Table {
    pub name: String,
    pub schema: String,
    pub batches: Vec<RecordBatch>,
}

/// A run folder as the report sees it.
pub struct Run {
    pub dir: Location,
    /// `_run.json` (null when the folder has none).
    pub manifest: Value,
    pub tables: Vec<Table>,
}

impl Run {
    pub fn open(url: &str) -> Result<Run> {
        let dir = Location::open(url)?;
        let manifest = if dir.exists("_run.json")? {
            serde_json::from_slice(&dir.get("_run.json")?).with_context(|| format!("{}: _run.json is not JSON", dir.url_of("_run.json")))?
        } else {
            Value::Null
        };
        let mut tables = Vec::new();
        for name in table_names(&dir)? {
            if let Some(t) = load(&dir, &name)? {
                tables.push(t);
            }
        }
        if tables.is_empty() && manifest.is_null() {
            bail!("{url}: not a run folder (no _run.json and no tables)");
        }
        Ok(Run { dir, manifest, tables })
    }

    pub fn of_schema<'a>(&'a self, schema: &'a str) -> impl Iterator<Item = &'a Table> + 'a {
        self.tables.iter().filter(move |t| t.schema == schema)
    }

    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// The stages of the manifest, in run order.
    pub fn stages(&self) -> &[Value] {
        self.manifest["stages"].as_array().map(Vec::as_slice).unwrap_or(&[])
    }

    /// The stage that wrote `table`, if the manifest says.
    pub fn writer(&self, table: &str) -> Option<&Value> {
        let aliased = self.manifest["aliases"][table].as_str().unwrap_or(table);
        self.stages().iter().find(|s| s["outputs"].as_array().is_some_and(|o| o.iter().any(|t| t == aliased || t == table)))
    }
}

/// The tables of a run folder: `<name>.parquet` and `<name>/_manifest.json` at its top level.
fn table_names(dir: &Location) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for entry in dir.files()? {
        if let Some(stem) = entry.key.strip_suffix(".parquet")
            && !stem.contains('/')
        {
            names.insert(stem.to_owned());
        } else if let Some(folder) = entry.key.strip_suffix("/_manifest.json")
            && !folder.contains('/')
            && !folder.starts_with('_')
        {
            names.insert(folder.to_owned());
        }
    }
    Ok(names)
}

/// Reads a table if its schema is one the report shows.
fn load(dir: &Location, name: &str) -> Result<Option<Table>> {
    let keys = crate::io::parquet::table_keys(dir, name)?;
    let Some(first) = keys.first() else { return Ok(None) };
    let bytes = dir.get(first)?;
    let url = dir.url_of(first);
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes.clone()).with_context(|| format!("{url}: not a readable Parquet file"))?;
    let Some(schema) = builder.schema().metadata().get(TABLE_KEY).cloned() else { return Ok(None) };
    if !SHOWN.contains(&schema.as_str()) {
        return Ok(None);
    }
    let mut batches = read_bytes(bytes, &url)?;
    for key in &keys[1..] {
        batches.extend(read_bytes(dir.get(key)?, &dir.url_of(key))?);
    }
    Ok(Some(Table { name: name.to_owned(), schema, batches }))
}

/// Writes the report of the run at `run_url` into `out_url` (default: `<run>/report/`) and
/// returns the page's location.
pub fn write(run_url: &str, out_url: Option<&str>, quiet: bool) -> Result<String> {
    let started = std::time::Instant::now();
    let run = Run::open(run_url)?;
    let out = match out_url {
        Some(url) => Location::create(url)?,
        None => Location::create(&run.dir.url_of("report"))?,
    };
    let sections = sections::all(&run, &out)?;
    let title = run.manifest["pipeline"].as_str().map(|p| format!("cloakbench report: {p}")).unwrap_or_else(|| "cloakbench report".into());
    let subtitle = run.manifest["description"].as_str().unwrap_or(run_url).to_owned();
    let page = html::page(&title, &subtitle, &sections);
    out.put("index.html", bytes::Bytes::from(page))?;
    let index = out.url_of("index.html");
    crate::progress::info(quiet, &format!("report: {} sections in {:.1} s: {index}", sections.len(), started.elapsed().as_secs_f64()));
    Ok(index)
}

/// `cloakbench cloak --report`: the before/after grid of the pictures just cloaked, read back
/// from the files written (what the person would post), as `dir/index.html`.
pub fn write_cloaked(cloaked: &[(std::path::PathBuf, std::path::PathBuf, f64)], dir: &std::path::Path) -> Result<String> {
    let out = Location::create(dir.to_str().with_context(|| format!("{}: the path is not UTF-8", dir.display()))?)?;
    let mut pairs = Vec::new();
    let read = |p: &std::path::Path| -> Result<image::RgbImage> {
        let bytes = std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()))?;
        crate::io::image::decode(&bytes, &Default::default()).map(|d| d.rgb).map_err(|e| anyhow::anyhow!("{}: {}", p.display(), e.0))
    };
    for (original, copy, dssim) in cloaked {
        pairs.push(pictures::Pair { label: original.display().to_string(), original: read(original)?, cloaked: read(copy)?, face_dssim: Some(*dssim) });
    }
    let body = format!(
        "<p class=\"note\">Each cloaked picture beside its original, as written. The difference is |cloaked - original| per colour \
         channel, multiplied by the stated factor so that the largest change is white: the cloak is meant to be hard to see in the \
         middle column, and the right column shows where it is.</p>{}",
        pictures::grid(&pairs, &out, "pictures", "cloaked")?
    );
    let section = html::Section { id: "pictures", title: "Before and after".into(), body };
    out.put("index.html", bytes::Bytes::from(html::page("cloakbench: your cloaked pictures", &format!("{} pictures", pairs.len()), &[section])))?;
    Ok(out.url_of("index.html"))
}
