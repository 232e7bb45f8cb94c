//! The `ingest` stage: find every picture of a dataset and check that it decodes.
//!
//! A dataset is a URL (local folder or `s3://bucket/prefix`) laid out folder-per-identity
//! (`<identity>/<file>`), or described by a manifest: a CSV or Parquet file with `path` and
//! `identity` columns, paths relative to the dataset. Files are fetched concurrently and decoded
//! in parallel (rayon), with EXIF orientation applied and size limits enforced. Every file
//! becomes one row of the `images` table, `ok` or `error` with the reason: a corrupt file never
//! stops the run and nothing is dropped silently. Files outside identity folders (a README at
//! the dataset root) and hidden files are not pictures of anyone: they are counted in the log.

use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow, bail};
use arrow_array::{Array, RecordBatch, StringArray, UInt8Array, UInt32Array, UInt64Array};
use rayon::prelude::*;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::io::image::{DecodeLimits, decode};
use crate::io::{Location, fetch_many, split_url};
use crate::tables as table;
use crate::io::hex;
use crate::pipeline::stage::{Context, Kind, Stage, build_from};
use crate::progress::info;

pub const KIND: Kind = Kind {
    name: "ingest",
    summary: "list a dataset (folder-per-identity or manifest, local or S3) and decode every picture",
    inputs: &[],
    optional_inputs: &[],
    outputs: &["images"],
    build: build_from::<Ingest>,
};

/// Configuration of the `ingest` stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ingest {
    /// Dataset root: a local folder or `s3://bucket/prefix`.
    pub dataset: String,
    /// Optional manifest file (CSV or Parquet, columns `path` and `identity`); a URL, or a key
    /// relative to the dataset.
    #[serde(default)]
    pub manifest: Option<String>,
    /// Decoding limits (bytes, pixels, side length).
    #[serde(default)]
    pub limits: DecodeLimits,
    /// Files fetched at once (S3 latency hides behind concurrency).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Files decoded per batch (bounds memory: only one batch of bytes is held at a time).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

fn default_concurrency() -> usize {
    32
}
fn default_batch() -> usize {
    256
}

/// One file to ingest: where it is and whose picture it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub rel_path: String,
    pub identity: String,
}

/// The stable id of a picture: 16 hex digits of SHA-256 of its dataset-relative path.
pub fn image_id(rel_path: &str) -> String {
    hex(&Sha256::digest(rel_path.as_bytes())[..8])
}

impl Stage for Ingest {
    fn fingerprint_extra(&self) -> Result<String> {
        // The listing (names and sizes) decides whether an earlier ingest is still valid.
        let dataset = Location::open(&self.dataset)?;
        let mut h = Sha256::new();
        for e in dataset.list()? {
            h.update(format!("{}\t{}\n", e.key, e.size));
        }
        if let Some(m) = &self.manifest {
            let (dir, key) = manifest_location(&dataset, m)?;
            h.update(dir.get(&key)?);
        }
        Ok(hex(&h.finalize()))
    }

    fn run(&self, ctx: &mut Context) -> Result<()> {
        let dataset = Location::open(&self.dataset)?;
        let items = match &self.manifest {
            Some(m) => {
                let (dir, key) = manifest_location(&dataset, m)?;
                read_manifest(&dir.get(&key)?, &dir.url_of(&key))?
            }
            None => list_identity_folders(&dataset, ctx.options.quiet)?,
        };
        if items.is_empty() {
            bail!("{}: no files found (expected <identity>/<picture> or a manifest)", dataset.url());
        }
        let schema = table::schema("images").arrow(None);
        let mut writer = ctx.writer("images", schema)?;
        let mut progress = ctx.progress(items.len() as u64, "images");
        let (mut ok, mut errors) = (0, 0);
        for chunk in items.chunks(self.batch_size.max(1)) {
            let rows = self.ingest_chunk(&dataset, chunk);
            for r in &rows {
                if r.error.is_none() { ok += 1 } else { errors += 1 }
            }
            writer.write(&rows_to_batch(&rows)?)?;
            progress.add(chunk.len() as u64);
        }
        progress.finish();
        writer.finish()?;
        info(ctx.options.quiet, &format!("ingest: {ok} pictures ok, {errors} refused (see the error column of images)"));
        ctx.report.push(format!("ingest: {} files from {}: {ok} ok, {errors} errors", items.len(), dataset.url()));
        Ok(())
    }
}

impl Ingest {
    fn ingest_chunk(&self, dataset: &Location, chunk: &[Item]) -> Vec<Row> {
        let keys: Vec<String> = chunk.iter().map(|i| i.rel_path.clone()).collect();
        let fetched = fetch_many(dataset, &keys, self.concurrency);
        chunk
            .par_iter()
            .zip(fetched.into_par_iter())
            .map(|(item, bytes)| Row::from_bytes(dataset, item, bytes, &self.limits))
            .collect()
    }
}

/// One row of the images table.
struct Row {
    item: Item,
    uri: String,
    error: Option<String>,
    format: Option<String>,
    size: Option<(u32, u32)>,
    orientation: Option<u8>,
    bytes: u64,
    sha256: Option<String>,
}

impl Row {
    fn from_bytes(dataset: &Location, item: &Item, bytes: Result<bytes::Bytes>, limits: &DecodeLimits) -> Row {
        let mut row = Row {
            item: item.clone(),
            uri: dataset.url_of(&item.rel_path),
            error: None,
            format: None,
            size: None,
            orientation: None,
            bytes: 0,
            sha256: None,
        };
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                row.error = Some(format!("cannot read: {}", e.root_cause()));
                return row;
            }
        };
        row.bytes = bytes.len() as u64;
        row.sha256 = Some(hex(&Sha256::digest(&bytes)));
        match decode(&bytes, limits) {
            Ok(d) => {
                row.format = Some(d.format.to_owned());
                row.size = Some((d.rgb.width(), d.rgb.height()));
                row.orientation = Some(d.exif_orientation);
            }
            Err(e) => row.error = Some(e.0),
        }
        row
    }
}

fn rows_to_batch(rows: &[Row]) -> Result<RecordBatch> {
    let s = |f: &dyn Fn(&Row) -> Option<String>| Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>())) as Arc<dyn Array>;
    let columns: Vec<Arc<dyn Array>> = vec![
        s(&|r| Some(image_id(&r.item.rel_path))),
        s(&|r| Some(r.item.identity.clone())),
        s(&|r| Some(r.uri.clone())),
        s(&|r| Some(r.item.rel_path.clone())),
        s(&|r| Some(if r.error.is_none() { "ok" } else { "error" }.to_owned())),
        s(&|r| r.error.clone()),
        s(&|r| r.format.clone()),
        Arc::new(UInt32Array::from(rows.iter().map(|r| r.size.map(|s| s.0)).collect::<Vec<_>>())),
        Arc::new(UInt32Array::from(rows.iter().map(|r| r.size.map(|s| s.1)).collect::<Vec<_>>())),
        Arc::new(UInt8Array::from(rows.iter().map(|r| r.orientation).collect::<Vec<_>>())),
        Arc::new(UInt64Array::from(rows.iter().map(|r| r.bytes).collect::<Vec<_>>())),
        s(&|r| r.sha256.clone()),
    ];
    table::batch("images", None, columns)
}

/// Lists `<identity>/<file>` entries; hidden files and files at the root are counted, not rows.
fn list_identity_folders(dataset: &Location, quiet: bool) -> Result<Vec<Item>> {
    let (mut items, mut at_root, mut hidden) = (Vec::new(), 0, 0);
    for entry in dataset.list()? {
        if entry.key.split('/').any(|part| part.starts_with('.')) {
            hidden += 1;
        } else if let Some((identity, _)) = entry.key.split_once('/') {
            items.push(Item { identity: identity.to_owned(), rel_path: entry.key });
        } else {
            at_root += 1;
        }
    }
    if at_root + hidden > 0 {
        info(quiet, &format!("ingest: ignored {at_root} files at the dataset root (not in an identity folder) and {hidden} hidden files"));
    }
    Ok(items)
}

/// Where the manifest is: a URL of its own, or a key inside the dataset.
fn manifest_location(dataset: &Location, manifest: &str) -> Result<(Location, String)> {
    if manifest.contains("://") || manifest.starts_with('/') || std::path::Path::new(manifest).exists() {
        let (dir, key) = split_url(manifest);
        Ok((Location::open(dir)?, key.to_owned()))
    } else {
        Ok((dataset.clone(), manifest.to_owned()))
    }
}

/// Parses a manifest: Parquet (by its magic bytes) or CSV with a header row.
pub fn read_manifest(bytes: &[u8], url: &str) -> Result<Vec<Item>> {
    let pairs = if bytes.starts_with(b"PAR1") { manifest_parquet(bytes) } else { manifest_csv(bytes) }
        .with_context(|| format!("{url}: bad manifest"))?;
    pairs
        .into_iter()
        .enumerate()
        .map(|(i, (path, identity))| {
            let rel_path = path.trim_start_matches("./").to_owned();
            if rel_path.is_empty() || identity.is_empty() || rel_path.split('/').any(|p| p == "..") {
                bail!("{url}: row {}: needs a relative path inside the dataset and an identity", i + 1);
            }
            Ok(Item { rel_path, identity })
        })
        .collect()
}

fn manifest_csv(bytes: &[u8]) -> Result<Vec<(String, String)>> {
    let mut reader = csv::Reader::from_reader(bytes);
    let headers = reader.headers()?.clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name).ok_or_else(|| anyhow!("no {name:?} column (header: {headers:?})"));
    let (p, i) = (col("path")?, col("identity")?);
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record?;
        out.push((record.get(p).unwrap_or("").trim().to_owned(), record.get(i).unwrap_or("").trim().to_owned()));
    }
    Ok(out)
}

fn manifest_parquet(bytes: &[u8]) -> Result<Vec<(String, String)>> {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::copy_from_slice(bytes))?.build()?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch?;
        let as_strings = |name: &str| -> Result<Vec<String>> {
            let col = batch.column_by_name(name).ok_or_else(|| anyhow!("no {name:?} column"))?;
            let col = arrow_cast_to_strings(col.as_ref()).ok_or_else(|| anyhow!("column {name:?} must be text"))?;
            Ok(col)
        };
        out.extend(as_strings("path")?.into_iter().zip(as_strings("identity")?));
    }
    Ok(out)
}

fn arrow_cast_to_strings(array: &dyn Array) -> Option<Vec<String>> {
    use arrow_array::{LargeStringArray, StringViewArray};
    let any = array.as_any();
    if let Some(a) = any.downcast_ref::<StringArray>() {
        return Some(a.iter().map(|v| v.unwrap_or("").to_owned()).collect());
    }
    if let Some(a) = any.downcast_ref::<LargeStringArray>() {
        return Some(a.iter().map(|v| v.unwrap_or("").to_owned()).collect());
    }
    any.downcast_ref::<StringViewArray>().map(|a| a.iter().map(|v| v.unwrap_or("").to_owned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_ids_are_stable_and_distinct() {
        assert_eq!(image_id("a/b.jpg"), image_id("a/b.jpg"));
        assert_ne!(image_id("a/b.jpg"), image_id("a/c.jpg"));
        assert_eq!(image_id("a/b.jpg").len(), 16);
    }

    #[test]
    fn csv_manifest_needs_path_and_identity() {
        let items = read_manifest(b"identity,path\nann,ann/1.jpg\nbob,./bob/2.png\n", "m.csv").unwrap();
        assert_eq!(items[1], Item { rel_path: "bob/2.png".into(), identity: "bob".into() });
        assert!(read_manifest(b"file,who\nx,y\n", "m.csv").is_err());
        assert!(read_manifest(b"path,identity\n../etc/passwd,x\n", "m.csv").is_err());
    }
}
