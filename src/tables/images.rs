//! `images` (one row per file of the dataset, written by `ingest`) and the two tables with the
//! same rows after some pictures were replaced by copies: `cloaked_images` (the `cloak` and `mix`
//! stages) and `filtered_images` (the `filter` stage). Later stages read any of the three wherever
//! they read pictures.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Result, bail};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, UInt8Array, UInt32Array, UInt64Array};
use sha2::{Digest, Sha256};

use super::{column, opt_strings, rows, strings};
use crate::io::hex;
use crate::io::pictures::Source;

/// The schema written by `ingest`.
pub const IMAGES: &str = "images";
/// The schema written by `cloak`.
pub const CLOAKED: &str = "cloaked_images";
/// The schema written by `filter`.
pub const FILTERED: &str = "filtered_images";
/// Every schema a stage that reads pictures accepts.
pub const ANY: &[&str] = &[IMAGES, CLOAKED, FILTERED];

/// Whether a file decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
        }
    }

    fn parse(s: &str) -> Result<Status> {
        match s {
            "ok" => Ok(Status::Ok),
            "error" => Ok(Status::Error),
            other => bail!("unknown image status {other:?}"),
        }
    }
}

/// One row of any of the three tables.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRow {
    pub image_id: String,
    pub identity: String,
    pub uri: String,
    pub rel_path: String,
    pub status: Status,
    pub error: Option<String>,
    pub format: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub exif_orientation: Option<u8>,
    pub bytes: u64,
    pub sha256: Option<String>,
    /// The dataset file the row's picture was made from (its own `uri` in `images`).
    pub original_uri: String,
}

/// The stable id of a picture: 16 hex digits of SHA-256 of its dataset-relative path.
pub fn image_id(rel_path: &str) -> String {
    hex(&Sha256::digest(rel_path.as_bytes())[..8])
}

/// A copy that replaces a picture: where it is and what it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Replacement {
    pub uri: String,
    pub rel_path: String,
    pub format: String,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
    pub sha256: String,
}

impl ImageRow {
    /// This row with its picture replaced by a copy (its original stays the same).
    pub fn replaced_by(&self, copy: &Replacement) -> ImageRow {
        ImageRow {
            uri: copy.uri.clone(),
            rel_path: copy.rel_path.clone(),
            format: Some(copy.format.clone()),
            width: Some(copy.width),
            height: Some(copy.height),
            bytes: copy.bytes,
            sha256: Some(copy.sha256.clone()),
            ..self.clone()
        }
    }
}

/// `rows` with the replaced pictures swapped for their copies (keyed by image id).
pub fn with_replacements(rows: &[ImageRow], copies: &HashMap<String, Replacement>) -> Vec<ImageRow> {
    rows.iter().map(|r| copies.get(&r.image_id).map_or_else(|| r.clone(), |c| r.replaced_by(c))).collect()
}

/// A batch of table schema `schema` (one of [`ANY`]).
pub fn batch(schema: &str, rows: &[ImageRow]) -> Result<RecordBatch> {
    let mut columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| &r.image_id)),
        strings(rows.iter().map(|r| &r.identity)),
        strings(rows.iter().map(|r| &r.uri)),
        strings(rows.iter().map(|r| &r.rel_path)),
        strings(rows.iter().map(|r| r.status.as_str())),
        opt_strings(rows.iter().map(|r| r.error.as_deref())),
        opt_strings(rows.iter().map(|r| r.format.as_deref())),
        Arc::new(rows.iter().map(|r| r.width).collect::<UInt32Array>()),
        Arc::new(rows.iter().map(|r| r.height).collect::<UInt32Array>()),
        Arc::new(rows.iter().map(|r| r.exif_orientation).collect::<UInt8Array>()),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.bytes))),
        opt_strings(rows.iter().map(|r| r.sha256.as_deref())),
    ];
    if schema != IMAGES {
        columns.push(strings(rows.iter().map(|r| &r.original_uri)));
    }
    super::batch(schema, None, columns)
}

/// Every row of batches of any of the three tables.
pub fn read(batches: &[RecordBatch]) -> Result<Vec<ImageRow>> {
    let mut out = Vec::new();
    for b in batches {
        let s = |name| column::<StringArray>(b, name);
        let (ids, who, uris, rels, status, error, format, sha) =
            (s("image_id")?, s("identity")?, s("uri")?, s("rel_path")?, s("status")?, s("error")?, s("format")?, s("sha256")?);
        let (w, h) = (column::<UInt32Array>(b, "width")?, column::<UInt32Array>(b, "height")?);
        let (orientation, bytes) = (column::<UInt8Array>(b, "exif_orientation")?, column::<UInt64Array>(b, "bytes")?);
        let original = b.column_by_name("original_uri").and_then(|c| c.as_any().downcast_ref::<StringArray>());
        let opt = |a: &StringArray, i: usize| a.is_valid(i).then(|| a.value(i).to_owned());
        for i in 0..b.num_rows() {
            out.push(ImageRow {
                image_id: ids.value(i).to_owned(),
                identity: who.value(i).to_owned(),
                uri: uris.value(i).to_owned(),
                rel_path: rels.value(i).to_owned(),
                status: Status::parse(status.value(i))?,
                error: opt(error, i),
                format: opt(format, i),
                width: w.is_valid(i).then(|| w.value(i)),
                height: h.is_valid(i).then(|| h.value(i)),
                exif_orientation: orientation.is_valid(i).then(|| orientation.value(i)),
                bytes: bytes.value(i),
                sha256: opt(sha, i),
                original_uri: original.map_or_else(|| uris.value(i), |o| o.value(i)).to_owned(),
            });
        }
    }
    Ok(out)
}

/// A picture that decoded at ingest: what the stages that look at pixels need of its row.
#[derive(Debug, Clone, PartialEq)]
pub struct Picture {
    pub image_id: String,
    pub identity: String,
    pub uri: String,
    pub rel_path: String,
    /// The dataset root: `uri` without `rel_path`.
    root: String,
}

impl ImageRow {
    /// The row's picture, for the stages that read pixels.
    pub fn picture(&self) -> Result<Picture> {
        let Some(root) = self.uri.strip_suffix(&self.rel_path) else {
            bail!("{}: uri does not end with rel_path {}", self.uri, self.rel_path);
        };
        Ok(Picture {
            image_id: self.image_id.clone(),
            identity: self.identity.clone(),
            uri: self.uri.clone(),
            rel_path: self.rel_path.clone(),
            root: root.trim_end_matches('/').to_owned(),
        })
    }
}

impl Source for Picture {
    fn root(&self) -> &str {
        &self.root
    }

    fn key(&self) -> &str {
        &self.rel_path
    }
}

/// The pictures whose status is ok, in table order.
pub fn ok_pictures(batches: &[RecordBatch]) -> Result<Vec<Picture>> {
    read(batches)?.iter().filter(|r| r.status == Status::Ok).map(ImageRow::picture).collect()
}

/// The ids of the rows of `after` whose picture is not the one `before` holds under the same id:
/// the pictures a stage replaced (a cloak, a filter), given the table that stage read. Not
/// `uri != original_uri`: once a stage in front of it (a framing filter) has replaced every
/// picture, that says "copied" of every row, cloaked or not.
pub fn replaced(before: &[ImageRow], after: &[ImageRow]) -> std::collections::HashSet<String> {
    let uris: HashMap<&str, &str> = before.iter().map(|r| (r.image_id.as_str(), r.uri.as_str())).collect();
    after.iter().filter(|r| uris.get(r.image_id.as_str()).is_some_and(|u| *u != r.uri)).map(|r| r.image_id.clone()).collect()
}

/// The ids of the rows whose picture is the dataset's own file (not a copy made by a stage).
pub fn unchanged(rows: &[ImageRow]) -> std::collections::HashSet<String> {
    rows.iter().filter(|r| r.uri == r.original_uri).map(|r| r.image_id.clone()).collect()
}

/// The image id -> identity map of batches of any of the three tables.
pub fn identities(batches: &[RecordBatch]) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for (b, i) in rows(batches) {
        out.insert(column::<StringArray>(b, "image_id")?.value(i).to_owned(), column::<StringArray>(b, "identity")?.value(i).to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> ImageRow {
        ImageRow {
            image_id: id.into(),
            identity: "ann".into(),
            uri: format!("/data/ann/{id}.jpg"),
            rel_path: format!("ann/{id}.jpg"),
            status: Status::Ok,
            error: None,
            format: Some("jpg".into()),
            width: Some(4),
            height: Some(3),
            exif_orientation: Some(1),
            bytes: 10,
            sha256: Some("00".into()),
            original_uri: format!("/data/ann/{id}.jpg"),
        }
    }

    #[test]
    fn rows_round_trip_through_every_schema() {
        let rows = vec![row("a"), ImageRow { status: Status::Error, error: Some("bad".into()), width: None, ..row("b") }];
        for schema in ANY {
            let b = batch(schema, &rows).unwrap();
            assert_eq!(read(&[b]).unwrap(), rows, "{schema}");
        }
    }

    #[test]
    fn a_replacement_keeps_the_id_and_the_original() {
        let copy = Replacement {
            uri: "/run/c/ann/a.png".into(),
            rel_path: "ann/a.png".into(),
            format: "png".into(),
            width: 4,
            height: 3,
            bytes: 99,
            sha256: "ff".into(),
        };
        let swapped = with_replacements(&[row("a"), row("b")], &HashMap::from([("a".to_owned(), copy)]));
        assert_eq!((swapped[0].image_id.as_str(), swapped[0].uri.as_str(), swapped[0].original_uri.as_str()), ("a", "/run/c/ann/a.png", "/data/ann/a.jpg"));
        assert_eq!(swapped[1], row("b"));
        let pictures = ok_pictures(&[batch(CLOAKED, &swapped).unwrap()]).unwrap();
        assert_eq!((pictures[0].root(), pictures[0].key()), ("/run/c", "ann/a.png"));
    }

    #[test]
    fn replaced_pictures_are_those_the_stage_changed_not_every_copy() {
        let framed = |id: &str| ImageRow { uri: format!("/run/filtered/ann/{id}.png"), ..row(id) };
        let before = vec![framed("a"), framed("b"), row("c")];
        let after = vec![ImageRow { uri: "/run/cloaked/ann/a.png".into(), ..framed("a") }, framed("b"), row("c")];
        assert!(after.iter().all(|r| r.image_id == "c" || r.uri != r.original_uri), "every framed row is a copy");
        assert_eq!(replaced(&before, &after), ["a".to_owned()].into());
    }
}
