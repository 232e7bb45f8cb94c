//! A cache of local files' content digests, so that a dataset fingerprinted by content is read
//! again only where its files changed, not on every run and not by every shard of a run.
//!
//! An entry holds a file's key, size and listed version (modification and status-change times
//! in nanoseconds, inode and device: [`Entry::version`]) with the SHA-256 of its content. A file
//! written in any way gets a new status-change time, which no user call can set back, so an edit
//! that restores the old modification time still misses the cache; a dataset restored from a
//! backup or copied misses it too and is read once more, and its unchanged content gives the
//! digests it had. As git does for its index, an entry whose status changed less than
//! [`SETTLE_NS`] before it was read is not kept: a write within the same clock tick could
//! otherwise leave the same stamp on other content.
//!
//! Caches live in `$CLOAKBENCH_DIGESTS`, else `<cache home>/digests/`, one file per dataset
//! folder (named by a digest of its canonical path), written atomically; a cache that cannot be
//! read is taken as empty.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::{Entry, sha256_hex};

/// How long before its reading a file's status must have last changed for its digest to be kept.
pub const SETTLE_NS: i128 = 2_000_000_000;

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Hash)]
struct Stamp {
    key: String,
    size: u64,
    version: String,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    stamp: Stamp,
    sha256: String,
}

/// The folder of the digest caches: `$CLOAKBENCH_DIGESTS`, else `<cache home>/digests`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("CLOAKBENCH_DIGESTS").map(PathBuf::from).unwrap_or_else(|| super::cache_home().join("digests"))
}

/// The digests known for one dataset folder, and those found in this run.
pub struct DigestCache {
    file: PathBuf,
    known: HashMap<Stamp, String>,
    seen: Mutex<Vec<Saved>>,
    /// Files asked for, and those read (not found in the cache), for the log.
    asked: AtomicU64,
    read: AtomicU64,
}

impl DigestCache {
    /// The cache of the dataset folder `root`, kept under `cache_dir`.
    pub fn open(cache_dir: &Path, root: &Path) -> DigestCache {
        let canonical = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        let file = cache_dir.join(format!("{}.json", &sha256_hex(canonical.as_os_str().as_encoded_bytes())[..32]));
        let saved: Vec<Saved> = std::fs::read(&file).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default();
        let known = saved.into_iter().map(|s| (s.stamp, s.sha256)).collect();
        DigestCache { file, known, seen: Mutex::new(Vec::new()), asked: AtomicU64::new(0), read: AtomicU64::new(0) }
    }

    /// The SHA-256 of `entry`'s content: the cached one when its stamp is unchanged, else
    /// `read`'s bytes digested (and kept if the file had settled). `None` when `read` fails.
    pub fn digest(&self, entry: &Entry, read: impl FnOnce() -> Result<bytes::Bytes>) -> Option<String> {
        let stamp = Stamp { key: entry.key.clone(), size: entry.size, version: entry.version.clone() };
        self.asked.fetch_add(1, Ordering::Relaxed);
        if let Some(sha256) = self.known.get(&stamp) {
            self.remember(stamp, sha256.clone());
            return Some(sha256.clone());
        }
        let reading_at = now_ns();
        let sha256 = sha256_hex(&read().ok()?);
        self.read.fetch_add(1, Ordering::Relaxed);
        if entry.changed_ns.is_some_and(|changed| changed + SETTLE_NS <= reading_at) {
            self.remember(stamp, sha256.clone());
        }
        Some(sha256)
    }

    fn remember(&self, stamp: Stamp, sha256: String) {
        self.seen.lock().expect("digest cache").push(Saved { stamp, sha256 });
    }

    /// Files whose content was read (not found in the cache) so far.
    pub fn files_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Files whose digest was asked for so far.
    pub fn files_asked(&self) -> u64 {
        self.asked.load(Ordering::Relaxed)
    }

    /// Writes the digests seen in this run (files no longer listed drop out), atomically;
    /// nothing when they are the cache as it was read (no file read, none gone), so a rerun or a
    /// shard of an unchanged dataset does not rewrite it.
    pub fn save(&self) -> Result<()> {
        static UNIQUE: AtomicU64 = AtomicU64::new(0);
        let mut seen = self.seen.lock().expect("digest cache");
        // With no file read every entry seen came from `known` (each once), so equal counts
        // mean the same entries.
        if self.files_read() == 0 && seen.len() == self.known.len() {
            return Ok(());
        }
        seen.sort_by(|a, b| a.stamp.key.cmp(&b.stamp.key));
        let dir = self.file.parent().expect("a cache file has a folder");
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        let staging = self.file.with_extension(format!("{}.{}.tmp", std::process::id(), UNIQUE.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&staging, serde_json::to_vec(&*seen)?).with_context(|| format!("{}: cannot write", staging.display()))?;
        std::fs::rename(&staging, &self.file).with_context(|| format!("{}: cannot write", self.file.display()))
    }
}

fn now_ns() -> i128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, version: &str, changed_ns: Option<i128>) -> Entry {
        Entry { key: key.into(), size: 3, version: version.into(), changed_ns }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cloakbench-digests-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn long_ago() -> Option<i128> {
        Some(now_ns() - 10 * SETTLE_NS)
    }

    #[test]
    fn a_settled_file_is_read_once_and_a_changed_stamp_reads_it_again() {
        let dir = scratch("settled");
        let bytes = || Ok(bytes::Bytes::from_static(b"abc"));
        let first = DigestCache::open(&dir, Path::new("/data/faces"));
        let digest = first.digest(&entry("a/1.jpg", "v1", long_ago()), bytes).unwrap();
        assert_eq!(digest, sha256_hex(b"abc"));
        first.save().unwrap();

        let second = DigestCache::open(&dir, Path::new("/data/faces"));
        let cached = second.digest(&entry("a/1.jpg", "v1", long_ago()), || panic!("a cached digest must not read the file"));
        assert_eq!(cached, Some(digest));
        assert_eq!(second.files_read(), 0);
        // A new status-change time (any write, or a restore) reads the file again.
        let after_edit = second.digest(&entry("a/1.jpg", "v2", long_ago()), || Ok(bytes::Bytes::from_static(b"xyz")));
        assert_eq!(after_edit, Some(sha256_hex(b"xyz")));
        assert_eq!(second.files_read(), 1);
        // Another dataset folder has a cache of its own.
        let other = DigestCache::open(&dir, Path::new("/data/other"));
        assert_eq!(other.digest(&entry("a/1.jpg", "v1", long_ago()), || Ok(bytes::Bytes::from_static(b"def"))), Some(sha256_hex(b"def")));
    }

    #[test]
    fn a_file_changed_just_before_its_reading_or_gone_from_the_listing_is_not_kept() {
        let dir = scratch("fresh");
        let first = DigestCache::open(&dir, Path::new("/data/faces"));
        first.digest(&entry("fresh.jpg", "v1", Some(now_ns())), || Ok(bytes::Bytes::from_static(b"abc")));
        first.digest(&entry("old.jpg", "v1", long_ago()), || Ok(bytes::Bytes::from_static(b"abc")));
        first.save().unwrap();
        let second = DigestCache::open(&dir, Path::new("/data/faces"));
        second.digest(&entry("fresh.jpg", "v1", Some(now_ns())), || Ok(bytes::Bytes::from_static(b"abc")));
        assert_eq!(second.files_read(), 1, "a file that changed within the settling time is read again");
        second.save().unwrap(); // old.jpg was not listed this time
        let third = DigestCache::open(&dir, Path::new("/data/faces"));
        third.digest(&entry("old.jpg", "v1", long_ago()), || Ok(bytes::Bytes::from_static(b"abc")));
        assert_eq!(third.files_read(), 1, "an entry no longer listed is dropped at the next save");
    }

    #[test]
    fn an_unchanged_listing_leaves_the_cache_file_as_it_was() {
        let dir = scratch("unchanged");
        let first = DigestCache::open(&dir, Path::new("/data/faces"));
        first.digest(&entry("a.jpg", "v1", long_ago()), || Ok(bytes::Bytes::from_static(b"abc")));
        first.save().unwrap();
        let written = std::fs::metadata(&first.file).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let second = DigestCache::open(&dir, Path::new("/data/faces"));
        second.digest(&entry("a.jpg", "v1", long_ago()), || panic!("cached"));
        second.save().unwrap();
        assert_eq!(std::fs::metadata(&second.file).unwrap().modified().unwrap(), written, "an unchanged cache was rewritten");
        // One more file listed: written again, with both.
        second.digest(&entry("b.jpg", "v1", long_ago()), || Ok(bytes::Bytes::from_static(b"def")));
        second.save().unwrap();
        let third = DigestCache::open(&dir, Path::new("/data/faces"));
        assert_eq!(third.known.len(), 2);
    }

    #[test]
    fn an_unreadable_cache_is_taken_as_empty_and_a_failed_read_gives_no_digest() {
        let dir = scratch("unreadable");
        let cache = DigestCache::open(&dir, Path::new("/data/faces"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&cache.file, b"{ not json").unwrap();
        let cache = DigestCache::open(&dir, Path::new("/data/faces"));
        assert_eq!(cache.digest(&entry("a.jpg", "v1", long_ago()), || anyhow::bail!("gone")), None);
        assert_eq!(cache.digest(&entry("a.jpg", "v1", long_ago()), || Ok(bytes::Bytes::from_static(b"abc"))), Some(sha256_hex(b"abc")));
    }
}
