//! Pictures named by a dataset root and a key, fetched concurrently (S3 latency hides behind
//! concurrency) and decoded in parallel (rayon), one batch at a time: what every stage that
//! looks at pixels shares.

use std::collections::HashMap;

use anyhow::Result;
use bytes::Bytes;
use futures::StreamExt;
use image::RgbImage;
use rayon::prelude::*;

use super::image::{DecodeLimits, decode};
use super::{Location, block_on};

/// Something that names a picture: the URL of its dataset root and its key there.
pub trait Source: Sync {
    fn root(&self) -> &str;
    fn key(&self) -> &str;
}

/// Fetches and decodes pictures, keeping one open [`Location`] per dataset root.
pub struct PictureLoader {
    limits: DecodeLimits,
    concurrency: usize,
    roots: HashMap<String, Result<Location, String>>,
}

impl PictureLoader {
    pub fn new(limits: DecodeLimits, concurrency: usize) -> PictureLoader {
        PictureLoader { limits, concurrency: concurrency.max(1), roots: HashMap::new() }
    }

    /// The bytes of each picture (refused over the byte limit before they are read), or why not.
    pub fn fetch<S: Source>(&mut self, pictures: &[S]) -> Vec<Result<Bytes, String>> {
        let mut out: Vec<Option<Result<Bytes, String>>> = (0..pictures.len()).map(|_| None).collect();
        // Grouped by dataset root, so each root's store is opened once and fetched concurrently.
        let mut by_root: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, p) in pictures.iter().enumerate() {
            match by_root.iter_mut().find(|(r, _)| *r == p.root()) {
                Some((_, idx)) => idx.push(i),
                None => by_root.push((p.root(), vec![i])),
            }
        }
        for (root, idx) in by_root {
            let location = self.roots.entry(root.to_owned()).or_insert_with(|| Location::open(root).map_err(|e| format!("{e:#}")));
            match location {
                Ok(location) => {
                    let keys: Vec<&str> = idx.iter().map(|&i| pictures[i].key()).collect();
                    for (i, bytes) in idx.into_iter().zip(fetch_many(location, &keys, self.concurrency, self.limits.max_bytes)) {
                        out[i] = Some(bytes.map_err(|e| format!("{e:#}")));
                    }
                }
                Err(reason) => idx.into_iter().for_each(|i| out[i] = Some(Err(reason.clone()))),
            }
        }
        out.into_iter().map(|b| b.expect("every picture fetched")).collect()
    }

    /// Each picture as upright RGB, or why it could not be had (the reason names its URL).
    pub fn decode<S: Source>(&mut self, pictures: &[S]) -> Vec<Result<RgbImage, String>> {
        self.decode_into(pictures, |_, rgb| rgb)
    }

    /// Each picture decoded and handed to `make` (with its index in `pictures`) on the thread
    /// that decoded it, or why it could not be had. The full picture is dropped as soon as
    /// `make` is done with it, while it is still in the core's cache: a batch of face crops
    /// never holds the batch's photos.
    pub fn decode_into<S: Source, T: Send>(&mut self, pictures: &[S], make: impl Fn(usize, RgbImage) -> T + Sync) -> Vec<Result<T, String>> {
        let fetched = self.fetch(pictures);
        let limits = &self.limits;
        pictures
            .par_iter()
            .zip(fetched)
            .enumerate()
            .map(|(i, (p, bytes))| {
                let bytes = bytes?;
                let rgb = decode(&bytes, limits).map(|d| d.rgb).map_err(|e| format!("{}/{}: {e}", p.root().trim_end_matches('/'), p.key()))?;
                Ok(make(i, rgb))
            })
            .collect()
    }
}

/// Reads many objects of one location concurrently, keeping their order; each result is
/// separate, so one unreadable file does not stop the others.
pub fn fetch_many(location: &Location, keys: &[&str], concurrency: usize, max_bytes: u64) -> Vec<Result<Bytes>> {
    block_on(futures::stream::iter(keys.iter().map(|k| location.get_within_async(k, max_bytes))).buffered(concurrency.max(1)).collect::<Vec<_>>())
}
