//! The `ingest` stage: find every picture of a dataset and check that it decodes.
//!
//! A dataset is a URL (local folder or `s3://bucket/prefix`) laid out folder-per-identity
//! (`<identity>/<file>`), or described by a manifest: a CSV or Parquet file with `path` and
//! `identity` columns, paths relative to the dataset. Files are fetched concurrently and decoded
//! in parallel (rayon), with EXIF orientation applied and size limits enforced. Every file
//! becomes one row of the `images` table, `ok` or `error` with the reason, and so does every
//! entry that cannot be read as a file (a name that is not UTF-8, a dangling symlink, a symlink
//! loop, a directory cycle, a FIFO): nothing stops the run and nothing is dropped silently.
//! Files outside identity folders (a README at the dataset root) and hidden files are not
//! pictures of anyone: they are counted as skipped.
//!
//! The stage's fingerprint includes the dataset's listing with every file's content digest
//! (ETag on S3), so a picture edited in place is ingested again and a dataset copied or
//! restored with new modification times is not.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow, bail};
use arrow_array::{Array, StringArray};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::io::digests::{self, DigestCache};
use crate::io::image::{DecodeLimits, decode};
use crate::io::pictures::fetch_many;
use crate::io::{Listed, Location, hex, sha256_hex, split_url};
use crate::pipeline::{Chunks, Context, Kind, Scope, Slot, StageConfig, Tally, check, plan_from};
use crate::tables::images::{self, IMAGES, ImageRow, Status};

pub const KIND: Kind = Kind {
    name: "ingest",
    source: file!(),
    summary: "list a dataset (folder-per-identity or manifest, local or S3) and decode every picture",
    inputs: &[],
    optional_inputs: &[],
    outputs: &[Slot::new("images", &[IMAGES])],
    labels: &[],
    scope: Scope::Picture,
    plan: plan_from::<Ingest>,
};

/// Configuration of the `ingest` stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Files decoded per batch, each batch saved as it is done (bounds memory and resumes).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

impl Ingest {
    /// One entry of the fingerprinted listing. A local file is named by its content's SHA-256,
    /// read as ingest reads it ([`Location::get_within`]: the size limit, symlinks kept inside,
    /// no FIFO opened) unless `digests` knows it unchanged; one that ingest refuses unread (over
    /// the limit, unreadable) by its size and version, so fingerprinting never reads more than
    /// ingest would. On S3 the listing's ETag stands for the content.
    fn listing_line(&self, dataset: &Location, digests: Option<&DigestCache>, entry: Listed) -> String {
        let e = match entry {
            Listed::Odd { key, reason } => return format!("{key}\todd\t{reason}\n"),
            Listed::File(e) => e,
        };
        // A file over the limit is never read, so a digest cached under a larger limit is not used.
        let readable = e.size <= self.limits.max_bytes;
        let content = digests.filter(|_| readable).and_then(|d| d.digest(&e, || dataset.get_within(&e.key, self.limits.max_bytes)));
        match content {
            Some(sha256) => format!("{}\t{}\tsha256 {sha256}\n", e.key, e.size),
            None => format!("{}\t{}\t{}\n", e.key, e.size, e.version),
        }
    }
}

fn default_concurrency() -> usize {
    32
}
fn default_batch() -> usize {
    256
}

/// One entry of the dataset to account for.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub rel_path: String,
    pub identity: String,
    /// Why the entry cannot be read as a file (it becomes an error row unread).
    pub problem: Option<String>,
}

impl StageConfig for Ingest {
    fn validate(&self) -> Result<(), String> {
        check(!self.dataset.is_empty(), "dataset", &self.dataset, "a local folder or s3://bucket/prefix")?;
        if !Location::is_s3_url(&self.dataset) {
            Location::open(&self.dataset).map_err(|e| format!("dataset = {:?}: {}", self.dataset, e.root_cause()))?;
        }
        if let Some(m) = &self.manifest
            && !Location::is_s3_url(m)
            && !Location::is_s3_url(&self.dataset)
        {
            let path = std::path::Path::new(m);
            let exists = path.is_file() || std::path::Path::new(&self.dataset).join(m).is_file();
            check(exists, "manifest", m, "a CSV or Parquet file (a path, or a key inside the dataset); no such file")?;
        }
        check(self.concurrency >= 1, "concurrency", self.concurrency, "at least 1")?;
        check(self.batch_size >= 1, "batch_size", self.batch_size, "at least 1")?;
        self.limits.check()
    }

    /// The listing with every file's content digest (its ETag on S3) and the manifest's content
    /// decide whether an earlier ingest is still valid. Content, not modification times: a
    /// dataset restored from a backup or copied without its times is the same dataset, and
    /// taking it for a new one would redo hours of cloaking downstream.
    /// Digests of files unchanged since an earlier run come from a cache ([`DigestCache`]), so a
    /// rerun, or each task of a sharded run, reads only what changed.
    fn fingerprint_material(&self, log: &dyn Fn(&str)) -> Result<serde_json::Value> {
        let dataset = Location::open(&self.dataset)?;
        let digests = dataset.local_root().map(|root| DigestCache::open(&digests::cache_dir(), root));
        let lines: Vec<String> = dataset.walk()?.into_par_iter().map(|entry| self.listing_line(&dataset, digests.as_ref(), entry)).collect();
        if let Some(digests) = &digests {
            let (read, asked) = (digests.files_read(), digests.files_asked());
            log(&format!("fingerprint read {read} of {asked} files (the others unchanged since their digests were kept)"));
            if let Err(e) = digests.save() {
                // Only speed is lost: the next run reads the files again.
                log(&format!("digest cache not saved ({e:#}); the next run reads the dataset again"));
            }
        }
        let mut h = Sha256::new();
        for line in lines {
            h.update(line);
        }
        let manifest = match &self.manifest {
            Some(m) => {
                let (dir, key) = manifest_location(&dataset, m)?;
                Some(sha256_hex(&dir.get(&key)?))
            }
            None => None,
        };
        Ok(serde_json::json!({ "listing": hex(&h.finalize()), "manifest": manifest }))
    }

    /// Every entry that becomes a row: a sharded run divides them among its shards.
    fn source_keys(&self) -> Result<Option<Vec<String>>> {
        Ok(Some(self.items(&Location::open(&self.dataset)?)?.0.into_iter().map(|i| i.rel_path).collect()))
    }

    fn item_id(&self, key: &str) -> String {
        images::image_id(key)
    }

    fn run(&self, ctx: &mut Context) -> Result<()> {
        let dataset = Location::open(&self.dataset)?;
        let (items, skipped) = self.items(&dataset)?;
        if items.is_empty() {
            bail!("{}: no files found (expected <identity>/<picture> or a manifest)", dataset.url());
        }
        if ctx.accounts_for_unowned() {
            skipped.into_iter().for_each(|s| ctx.skip(s));
        }
        let items: Vec<Item> = items.into_iter().filter(|i| ctx.owns(&images::image_id(&i.rel_path))).collect();
        let outputs = [("images", images::batch(IMAGES, &[])?.schema())];
        ctx.resumable(&items, &Chunks::even(items.len(), self.batch_size), "images", &outputs, |chunk, tally| {
            let rows = self.ingest_chunk(&dataset, chunk, tally);
            Ok(vec![vec![images::batch(IMAGES, &rows)?]])
        })?;
        let errors = ctx.tally.failed.n;
        ctx.report.push(format!("ingest: {} files from {}: {} ok, {errors} errors", items.len(), dataset.url(), items.len() as u64 - errors));
        Ok(())
    }
}

impl Ingest {
    /// The dataset's entries (from its manifest, or its identity folders) and, named with why,
    /// those that are no one's pictures.
    fn items(&self, dataset: &Location) -> Result<(Vec<Item>, Vec<String>)> {
        match &self.manifest {
            Some(m) => {
                let (dir, key) = manifest_location(dataset, m)?;
                Ok((read_manifest(&dir.get(&key)?, &dir.url_of(&key))?, Vec::new()))
            }
            None => list_identity_folders(dataset),
        }
    }

    fn ingest_chunk(&self, dataset: &Location, chunk: &[Item], tally: &mut Tally) -> Vec<ImageRow> {
        let readable: Vec<&str> = chunk.iter().filter(|i| i.problem.is_none()).map(|i| i.rel_path.as_str()).collect();
        let mut fetched = fetch_many(dataset, &readable, self.concurrency, self.limits.max_bytes).into_iter();
        let inputs: Vec<(&Item, Option<Result<bytes::Bytes>>)> =
            chunk.iter().map(|i| (i, i.problem.is_none().then(|| fetched.next().expect("one fetch per readable item")))).collect();
        let rows: Vec<ImageRow> = inputs.into_par_iter().map(|(item, bytes)| row(dataset, item, bytes, &self.limits)).collect();
        for r in rows.iter().filter(|r| r.status == Status::Error) {
            tally.failed.add(format!("{}: {}", r.uri, r.error.as_deref().unwrap_or_default()));
        }
        rows
    }
}

/// The images row of one entry: its bytes decoded, or why there are none.
fn row(dataset: &Location, item: &Item, bytes: Option<Result<bytes::Bytes>>, limits: &DecodeLimits) -> ImageRow {
    let uri = dataset.url_of(&item.rel_path);
    let mut row = ImageRow {
        image_id: images::image_id(&item.rel_path),
        identity: item.identity.clone(),
        uri: uri.clone(),
        rel_path: item.rel_path.clone(),
        status: Status::Error,
        error: None,
        format: None,
        width: None,
        height: None,
        exif_orientation: None,
        bytes: 0,
        sha256: None,
        original_uri: uri.clone(),
    };
    let bytes = match bytes {
        None => {
            row.error = item.problem.clone();
            return row;
        }
        Some(Err(e)) => {
            // The message starts with the URL, which the row already holds.
            let text = format!("{e:#}");
            row.error = Some(text.strip_prefix(&format!("{uri}: ")).unwrap_or(&text).to_owned());
            return row;
        }
        Some(Ok(b)) => b,
    };
    row.bytes = bytes.len() as u64;
    row.sha256 = Some(sha256_hex(&bytes));
    match decode(&bytes, limits) {
        Ok(d) => {
            row.status = Status::Ok;
            row.format = Some(d.format.to_owned());
            row.width = Some(d.rgb.width());
            row.height = Some(d.rgb.height());
            row.exif_orientation = Some(d.exif_orientation);
        }
        Err(e) => row.error = Some(e.0),
    }
    row
}

/// Lists `<identity>/<file>` entries; hidden entries and files at the root are skipped (named in
/// the second list), odd entries become items that will be error rows.
fn list_identity_folders(dataset: &Location) -> Result<(Vec<Item>, Vec<String>)> {
    let (mut items, mut skipped) = (Vec::new(), Vec::new());
    for entry in dataset.walk()? {
        let key = entry.key().to_owned();
        if key.split('/').any(|part| part.starts_with('.')) {
            skipped.push(format!("{}: hidden", dataset.url_of(&key)));
            continue;
        }
        match (entry, key.split_once('/')) {
            (Listed::File(_), None) => skipped.push(format!("{}: not in an identity folder", dataset.url_of(&key))),
            (Listed::File(_), Some((identity, _))) => items.push(Item { identity: identity.to_owned(), rel_path: key.clone(), problem: None }),
            (Listed::Odd { reason, .. }, split) => {
                let identity = split.map_or(key.as_str(), |(identity, _)| identity).to_owned();
                items.push(Item { identity, rel_path: key.clone(), problem: Some(reason) });
            }
        }
    }
    Ok((items, skipped))
}

/// Where the manifest is: a URL of its own, or a key inside the dataset.
fn manifest_location(dataset: &Location, manifest: &str) -> Result<(Location, String)> {
    if manifest.contains("://") || manifest.starts_with('/') || std::path::Path::new(manifest).exists() {
        let (dir, key) = split_url(manifest);
        let dir = Location::open(dir).with_context(|| format!("manifest {manifest}"))?;
        Ok((dir, key.to_owned()))
    } else {
        Ok((dataset.clone(), manifest.to_owned()))
    }
}

/// Parses a manifest: Parquet (by its magic bytes) or CSV with a header row.
pub fn read_manifest(bytes: &[u8], url: &str) -> Result<Vec<Item>> {
    let pairs = if bytes.starts_with(b"PAR1") { manifest_parquet(bytes) } else { manifest_csv(bytes) }.with_context(|| format!("{url}: bad manifest"))?;
    Ok(manifest_items(pairs))
}

/// A manifest's rows as items. A row that cannot name a picture of the dataset (an empty,
/// absolute or `..` path, an empty identity) becomes an error row, unread, and so does a path
/// listed again (a picture must not be counted twice: the split would put it in train and test
/// at once); a path listed with two identities is an error in both rows. Rows are numbered
/// from 1, the header not counted.
fn manifest_items(pairs: Vec<(String, String)>) -> Vec<Item> {
    let mut items: Vec<Item> = Vec::with_capacity(pairs.len());
    let mut first: HashMap<String, usize> = HashMap::new();
    for (i, (path, identity)) in pairs.into_iter().enumerate() {
        let row = i + 1;
        let rel_path = path.trim_start_matches("./").to_owned();
        let problem = if rel_path.is_empty() || rel_path.starts_with('/') || rel_path.split('/').any(|p| p == "..") {
            Some(format!("manifest row {row}: path {path:?} is not a relative path inside the dataset"))
        } else if identity.trim().is_empty() {
            Some(format!("manifest row {row}: no identity for {path:?}"))
        } else {
            None
        };
        if problem.is_some() {
            items.push(Item { rel_path: format!("{rel_path}#manifest-row-{row}"), identity, problem });
            continue;
        }
        match first.get(&rel_path) {
            None => {
                first.insert(rel_path.clone(), items.len());
                items.push(Item { rel_path, identity, problem: None });
            }
            Some(&at) => {
                let earlier = items[at].identity.clone();
                let why = if earlier == identity {
                    format!("manifest row {row}: {rel_path} is listed again (first listed earlier); counted once")
                } else {
                    items[at].problem = Some(format!("{rel_path} is labelled {earlier} here and {identity} in manifest row {row}: which is it?"));
                    format!("manifest row {row}: {rel_path} is labelled {identity} here and {earlier} earlier: which is it?")
                };
                items.push(Item { rel_path: format!("{rel_path}#manifest-row-{row}"), identity, problem: Some(why) });
            }
        }
    }
    items
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
    let mut out = Vec::new();
    for batch in crate::io::parquet::read_bytes(bytes::Bytes::copy_from_slice(bytes), "manifest")? {
        let as_strings = |name: &str| -> Result<Vec<String>> {
            let col = batch.column_by_name(name).ok_or_else(|| anyhow!("no {name:?} column"))?;
            arrow_cast_to_strings(col).ok_or_else(|| anyhow!("column {name:?} must be text"))
        };
        out.extend(as_strings("path")?.into_iter().zip(as_strings("identity")?));
    }
    Ok(out)
}

fn arrow_cast_to_strings(array: &Arc<dyn Array>) -> Option<Vec<String>> {
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
        assert_eq!(images::image_id("a/b.jpg"), images::image_id("a/b.jpg"));
        assert_ne!(images::image_id("a/b.jpg"), images::image_id("a/c.jpg"));
        assert_eq!(images::image_id("a/b.jpg").len(), 16);
    }

    #[test]
    fn csv_manifest_needs_path_and_identity() {
        let items = read_manifest(b"identity,path\nann,ann/1.jpg\nbob,./bob/2.png\n", "m.csv").unwrap();
        assert_eq!(items[1], Item { rel_path: "bob/2.png".into(), identity: "bob".into(), problem: None });
        assert!(read_manifest(b"file,who\nx,y\n", "m.csv").is_err());
    }

    #[test]
    fn a_bad_manifest_row_is_an_error_row_and_a_repeat_is_not_a_second_picture() {
        let text = b"path,identity\na/x.jpg,ann\na/x.jpg,ann\na/y.jpg,bob\n/etc/passwd,eve\n../z.jpg,eve\na/w.jpg,\na/y.jpg,carl\nb/v.jpg,dan\n";
        let items = read_manifest(text, "m.csv").unwrap();
        let problems: Vec<Option<&str>> = items.iter().map(|i| i.problem.as_deref()).collect();
        assert_eq!(items.len(), 8, "every row accounted for");
        assert_eq!(problems[0], None, "the first listing of a/x.jpg is the picture");
        assert!(problems[1].unwrap().contains("row 2") && problems[1].unwrap().contains("listed again"));
        assert!(problems[2].unwrap().contains("carl"), "a/y.jpg has two identities: both rows are errors");
        assert!(problems[3].unwrap().contains("not a relative path") && problems[4].unwrap().contains("row 5"));
        assert!(problems[5].unwrap().contains("no identity"));
        assert!(problems[6].unwrap().contains("row 7"));
        assert_eq!(problems[7], None);
        let ids: std::collections::HashSet<String> = items.iter().map(|i| images::image_id(&i.rel_path)).collect();
        assert_eq!(ids.len(), items.len(), "every row has its own image id");
    }

    #[test]
    fn a_missing_dataset_or_manifest_is_a_plan_error() {
        let plan = |text: &str| plan_from::<Ingest>(toml::from_str(text).unwrap()).err().unwrap();
        assert!(plan("dataset = '/no/such/folder'").contains("no such folder"));
        let err = plan("dataset = '.'\nmanifest = '/nonexistent/m.csv'");
        assert!(err.contains("manifest") && err.contains("/nonexistent/m.csv"), "{err}");
        assert!(plan("dataset = '.'\nbatch_size = 0").contains("batch_size = 0"));
    }
}
