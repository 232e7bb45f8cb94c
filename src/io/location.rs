//! A folder-like place: a local directory (read with `std::fs`) or an S3 bucket prefix (through
//! `object_store`), addressed by `/`-separated keys.
//!
//! Keys are used exactly as written: a picture called `hash#1.jpg`, `percent%41.jpg` or
//! `ünïcødé_名前.jpg` is read under that very name, locally and on S3. A key may not climb out
//! of its location (`..`), and locally a symlink below the location may not lead out of it
//! (listed as an odd entry, refused on read and write), so nothing is ever read or written
//! outside the folder or prefix. The location's own path may be a symlink: that is the user's choice.
//!
//! [`Location::walk`] accounts for every entry below a location: regular files are
//! [`Listed::File`], and everything that cannot be read as a file (a name that is not UTF-8, a
//! dangling symlink, a symlink loop, a directory cycle, a FIFO or socket, a folder that cannot
//! be listed) is a [`Listed::Odd`] with the reason, so one odd entry never costs the rest.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::block_on;

/// A local folder or an S3 prefix.
#[derive(Clone)]
pub struct Location {
    backend: Backend,
    url: String,
}

#[derive(Clone)]
enum Backend {
    Local(PathBuf),
    /// `prefix` has no leading or trailing `/` and may be empty (the bucket's root).
    S3 {
        store: Arc<AmazonS3>,
        prefix: String,
    },
}

/// A regular file found by [`Location::walk`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Key relative to the location.
    pub key: String,
    pub size: u64,
    /// What changes when the content does: the ETag on S3; locally the modification and
    /// status-change times, inode and device (a write changes the status-change time even when
    /// the modification time is put back).
    pub version: String,
    /// When a local file's status last changed, in nanoseconds since the epoch (None on S3).
    pub changed_ns: Option<i128>,
}

/// One entry below a location: a file, or something that cannot be read as one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listed {
    File(Entry),
    /// `key` is the entry's name with any bytes that are not UTF-8 written as `\xNN`.
    Odd {
        key: String,
        reason: String,
    },
}

impl Listed {
    pub fn key(&self) -> &str {
        match self {
            Listed::File(e) => &e.key,
            Listed::Odd { key, .. } => key,
        }
    }
}

/// Where a streamed write goes before it is published (see [`Location::sink`]).
pub enum Sink {
    /// A local staging file, renamed onto `dest` by [`StagedFile::publish`].
    File(StagedFile),
    /// An S3 multipart upload, published when it is shut down.
    Object(object_store::buffered::BufWriter),
}

/// A file written under a staging name next to its destination.
pub struct StagedFile {
    pub file: fs::File,
    staging: PathBuf,
    dest: PathBuf,
}

impl StagedFile {
    /// Makes the file appear under its name, whole.
    pub fn publish(self) -> Result<()> {
        self.file.sync_all().ok();
        fs::rename(&self.staging, &self.dest).with_context(|| format!("{}: cannot write", self.dest.display()))
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        // A staging file that was never published is removed (after a rename this is a no-op).
        let _ = fs::remove_file(&self.staging);
    }
}

impl Location {
    /// Opens an existing location for reading.
    pub fn open(url: &str) -> Result<Location> {
        Self::connect(url, false)
    }

    /// Opens a location for writing, creating the local folder if needed.
    pub fn create(url: &str) -> Result<Location> {
        Self::connect(url, true)
    }

    fn connect(url: &str, create: bool) -> Result<Location> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("{url}: an S3 URL needs a bucket, as in s3://bucket/prefix");
            }
            let store = s3_store(bucket).with_context(|| format!("{url}: cannot configure S3"))?;
            let prefix = prefix.trim_matches('/').to_owned();
            let url = format!("s3://{bucket}/{prefix}");
            return Ok(Location { backend: Backend::S3 { store: Arc::new(store), prefix }, url });
        }
        if url.contains("://") {
            bail!("{url}: unsupported URL scheme (use a local path or s3://bucket/prefix)");
        }
        let path = PathBuf::from(url);
        if create {
            fs::create_dir_all(&path).with_context(|| format!("{url}: cannot create folder"))?;
        } else if !path.is_dir() {
            bail!("{url}: no such folder");
        }
        let root = path.canonicalize().with_context(|| format!("{url}: cannot resolve path"))?;
        let url = root.to_str().with_context(|| format!("{url}: the folder's path is not UTF-8"))?.to_owned();
        Ok(Location { backend: Backend::Local(root), url })
    }

    /// Whether `url` names an S3 location.
    pub fn is_s3_url(url: &str) -> bool {
        url.starts_with("s3://")
    }

    /// The location's URL (a canonical local path or `s3://bucket/prefix`), for messages and tables.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of `key` inside this location.
    pub fn url_of(&self, key: &str) -> String {
        format!("{}/{}", self.url.trim_end_matches('/'), key)
    }

    /// A location for the sub-folder `key` (created on first write).
    pub fn child(&self, key: &str) -> Location {
        let key = key.trim_matches('/');
        let backend = match &self.backend {
            Backend::Local(dir) => Backend::Local(dir.join(key)),
            Backend::S3 { store, prefix } => Backend::S3 { store: store.clone(), prefix: join_key(prefix, key) },
        };
        Location { backend, url: self.url_of(key) }
    }

    /// Every entry below this location, recursively, sorted by key; odd entries included.
    pub fn walk(&self) -> Result<Vec<Listed>> {
        let mut out = match &self.backend {
            Backend::Local(dir) => {
                let mut out = Vec::new();
                let root = fs::metadata(dir).with_context(|| format!("{}: cannot list", self.url))?;
                let real = dir.canonicalize().with_context(|| format!("{}: cannot list", self.url))?;
                walk_local(dir, "", &real, &mut vec![(root.dev(), root.ino())], &mut out);
                out
            }
            Backend::S3 { store, prefix } => {
                let listing =
                    (!prefix.is_empty()).then(|| ObjectPath::parse(prefix)).transpose().with_context(|| format!("{}: not a valid S3 prefix", self.url))?;
                let metas: Vec<_> = block_on(store.list(listing.as_ref()).try_collect::<Vec<_>>()).with_context(|| format!("{}: cannot list", self.url))?;
                let skip = if prefix.is_empty() { 0 } else { prefix.len() + 1 };
                metas
                    .into_iter()
                    .filter(|m| !m.location.as_ref().ends_with('/'))
                    .map(|m| {
                        let version = m.e_tag.clone().unwrap_or_else(|| m.last_modified.to_rfc3339());
                        Listed::File(Entry { key: m.location.as_ref()[skip..].to_owned(), size: m.size, version, changed_ns: None })
                    })
                    .collect()
            }
        };
        out.sort_by(|a, b| a.key().cmp(b.key()));
        Ok(out)
    }

    /// Every regular file below this location, recursively, sorted by key (odd entries left out).
    pub fn files(&self) -> Result<Vec<Entry>> {
        Ok(self
            .walk()?
            .into_iter()
            .filter_map(|l| match l {
                Listed::File(e) => Some(e),
                Listed::Odd { .. } => None,
            })
            .collect())
    }

    /// Reads a whole object.
    pub fn get(&self, key: &str) -> Result<Bytes> {
        self.get_within(key, u64::MAX)
    }

    /// Reads a whole object, refusing one larger than `max_bytes` before reading it.
    pub fn get_within(&self, key: &str, max_bytes: u64) -> Result<Bytes> {
        block_on(self.get_within_async(key, max_bytes))
    }

    /// [`Location::get_within`], async, for concurrent fetches.
    pub async fn get_within_async(&self, key: &str, max_bytes: u64) -> Result<Bytes> {
        let url = self.url_of(key);
        let too_large = |size: u64| anyhow!("{url}: file is {size} bytes, over the limit of {max_bytes} bytes");
        match &self.backend {
            Backend::Local(dir) => {
                let path = self.local_path(key)?;
                let meta = fs::metadata(&path).with_context(|| format!("{url}: cannot read"))?;
                // A key cannot climb out (`..`), and a symlink may not lead out either.
                let root = dir.canonicalize().with_context(|| format!("{url}: cannot read"))?;
                inside(&path, &root).map_err(|reason| anyhow!("{url}: {reason}"))?;
                if !meta.is_file() {
                    // Opening a FIFO would block until someone writes to it.
                    bail!("{url}: cannot read: not a regular file ({})", file_kind(&meta.file_type()));
                }
                if meta.len() > max_bytes {
                    return Err(too_large(meta.len()));
                }
                Ok(Bytes::from(fs::read(&path).with_context(|| format!("{url}: cannot read"))?))
            }
            Backend::S3 { store, .. } => {
                let path = self.object_path(key)?;
                let result = store.get(&path).await.with_context(|| format!("{url}: cannot read"))?;
                if result.meta.size > max_bytes {
                    return Err(too_large(result.meta.size));
                }
                result.bytes().await.with_context(|| format!("{url}: cannot read"))
            }
        }
    }

    /// Writes a whole object atomically (no reader ever sees it half-written).
    pub fn put(&self, key: &str, data: Bytes) -> Result<()> {
        match self.put_mode(key, data, false)? {
            true => Ok(()),
            false => unreachable!("an overwriting put always writes"),
        }
    }

    /// Writes a whole object atomically unless `key` already exists; returns whether it wrote.
    pub fn put_new(&self, key: &str, data: Bytes) -> Result<bool> {
        self.put_mode(key, data, true)
    }

    fn put_mode(&self, key: &str, data: Bytes, create_only: bool) -> Result<bool> {
        let url = self.url_of(key);
        match &self.backend {
            Backend::Local(_) => {
                let mut staged = self.staged_file(key)?;
                std::io::Write::write_all(&mut staged.file, &data).with_context(|| format!("{url}: cannot write"))?;
                if !create_only {
                    staged.publish()?;
                    return Ok(true);
                }
                // A hard link fails when the name exists: only one writer can create it.
                staged.file.sync_all().ok();
                match fs::hard_link(&staged.staging, &staged.dest) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(e).with_context(|| format!("{url}: cannot write")),
                }
            }
            Backend::S3 { store, .. } => {
                let path = self.object_path(key)?;
                let opts = PutOptions { mode: if create_only { PutMode::Create } else { PutMode::Overwrite }, ..Default::default() };
                match block_on(store.put_opts(&path, PutPayload::from(data), opts)) {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::AlreadyExists { .. }) if create_only => Ok(false),
                    Err(e) => Err(e).with_context(|| format!("{url}: cannot write")),
                }
            }
        }
    }

    /// Reads `key` with its version (S3's ETag), for a later [`Location::replace`]; `None` when
    /// absent. S3 only: local leases lock the file instead (see [`super::lease`]).
    pub fn get_versioned(&self, key: &str) -> Result<Option<(Bytes, UpdateVersion)>> {
        let url = self.url_of(key);
        let Backend::S3 { store, .. } = &self.backend else { bail!("{url}: versioned reads are for S3 locations") };
        let got = match block_on(store.get(&self.object_path(key)?)) {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("{url}: cannot read")),
        };
        let version = UpdateVersion { e_tag: got.meta.e_tag.clone(), version: got.meta.version.clone() };
        let data = block_on(got.bytes()).with_context(|| format!("{url}: cannot read"))?;
        Ok(Some((data, version)))
    }

    /// Writes `key` only if it still is at `expected` (S3's If-Match), or, with `None`, only if
    /// it does not exist; returns the new version, or `None` when another writer got there first.
    pub fn replace(&self, key: &str, data: Bytes, expected: Option<&UpdateVersion>) -> Result<Option<UpdateVersion>> {
        let url = self.url_of(key);
        let Backend::S3 { store, .. } = &self.backend else { bail!("{url}: conditional writes are for S3 locations") };
        let mode = match expected {
            Some(version) => PutMode::Update(version.clone()),
            None => PutMode::Create,
        };
        let opts = PutOptions { mode, ..Default::default() };
        match block_on(store.put_opts(&self.object_path(key)?, PutPayload::from(data), opts)) {
            Ok(put) => Ok(Some(UpdateVersion { e_tag: put.e_tag, version: put.version })),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("{url}: cannot write")),
        }
    }

    /// The local file of `key` (its folder created), or `None` on S3.
    pub fn local_file(&self, key: &str) -> Result<Option<PathBuf>> {
        let Backend::Local(_) = &self.backend else { return Ok(None) };
        let path = self.local_path(key)?;
        let dir = path.parent().expect("a key names a file inside the location");
        fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
        Ok(Some(path))
    }

    /// Removes the staging files that writes cut short by a kill left behind (hidden, never
    /// read); returns how many. Call it only while holding the location's lease, when no write
    /// of ours can be in flight. An S3 upload that never completed is invisible: nothing to do.
    pub fn remove_staging_leftovers(&self) -> Result<usize> {
        let Backend::Local(dir) = &self.backend else { return Ok(0) };
        let mut removed = 0;
        let mut folders = vec![dir.clone()];
        while let Some(folder) = folders.pop() {
            let Ok(entries) = fs::read_dir(&folder) else { continue };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else { continue };
                let name = entry.file_name();
                if kind.is_dir() {
                    folders.push(entry.path());
                } else if kind.is_file() && is_staging_name(&name.to_string_lossy()) {
                    fs::remove_file(entry.path()).with_context(|| format!("{}: cannot remove", entry.path().display()))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Whether `key` exists.
    pub fn exists(&self, key: &str) -> Result<bool> {
        match &self.backend {
            Backend::Local(_) => Ok(self.local_path(key)?.exists()),
            Backend::S3 { store, .. } => match block_on(store.head(&self.object_path(key)?)) {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(e).with_context(|| format!("{}: cannot check", self.url_of(key))),
            },
        }
    }

    /// Deletes `key` if present.
    pub fn delete(&self, key: &str) -> Result<()> {
        match &self.backend {
            Backend::Local(_) => match fs::remove_file(self.local_path(key)?) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e).with_context(|| format!("{}: cannot delete", self.url_of(key))),
            },
            Backend::S3 { store, .. } => match block_on(store.delete(&self.object_path(key)?)) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e).with_context(|| format!("{}: cannot delete", self.url_of(key))),
            },
        }
    }

    /// Deletes every object below this location (and, locally, the emptied folders); a local
    /// folder that is not there holds nothing to delete.
    pub fn delete_all(&self) -> Result<()> {
        if let Backend::Local(dir) = &self.backend
            && !dir.exists()
        {
            return Ok(());
        }
        for entry in self.files()? {
            self.delete(&entry.key)?;
        }
        if let Backend::Local(dir) = &self.backend {
            let _ = fs::remove_dir_all(dir);
        }
        Ok(())
    }

    /// Removes this location's local folder if it is empty (an S3 prefix holds no folders).
    pub fn remove_if_empty(&self) {
        if let Backend::Local(dir) = &self.backend {
            let _ = fs::remove_dir(dir);
        }
    }

    /// A streaming writer for `key` whose content appears only once it is published.
    pub fn sink(&self, key: &str) -> Result<Sink> {
        match &self.backend {
            Backend::Local(_) => Ok(Sink::File(self.staged_file(key)?)),
            Backend::S3 { store, .. } => {
                let store: Arc<dyn ObjectStore> = store.clone();
                Ok(Sink::Object(object_store::buffered::BufWriter::new(store, self.object_path(key)?)))
            }
        }
    }

    fn staged_file(&self, key: &str) -> Result<StagedFile> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dest = self.local_path(key)?;
        let dir = dest.parent().expect("a key names a file inside the location");
        fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
        // A folder below this location that is a symlink leading out would take the write out.
        let Backend::Local(base) = &self.backend else { unreachable!("staging files are local") };
        let base = base.canonicalize().with_context(|| format!("{}: cannot write", self.url))?;
        inside(dir, &base).map_err(|reason| anyhow!("{}: cannot write: {reason}", self.url_of(key)))?;
        let name = dest.file_name().expect("a key has a file name").to_string_lossy();
        let staging = dir.join(format!(".{name}.staging-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
        let file = fs::File::create(&staging).with_context(|| format!("{}: cannot write", staging.display()))?;
        Ok(StagedFile { file, staging, dest })
    }

    /// The folder of a local location (None on S3).
    pub fn local_root(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Local(dir) => Some(dir),
            Backend::S3 { .. } => None,
        }
    }

    /// The local file of `key`; refuses keys that would leave the folder.
    fn local_path(&self, key: &str) -> Result<PathBuf> {
        let Backend::Local(dir) = &self.backend else { unreachable!("local_path on an S3 location") };
        check_key(key).with_context(|| format!("{}: bad key {key:?}", self.url))?;
        Ok(dir.join(key))
    }

    /// The S3 object of `key`, with the key's characters kept exactly as they are (building it
    /// from parts would percent-encode `#`, `%`, `?` and `[`, and name another object).
    fn object_path(&self, key: &str) -> Result<ObjectPath> {
        let Backend::S3 { prefix, .. } = &self.backend else { unreachable!("object_path on a local location") };
        check_key(key).with_context(|| format!("{}: bad key {key:?}", self.url))?;
        ObjectPath::parse(join_key(prefix, key)).with_context(|| format!("{}: not a valid S3 key", self.url_of(key)))
    }
}

/// `.<name>.staging-<pid>-<n>`, the name [`Location::sink`] and [`Location::put`] write under.
fn is_staging_name(name: &str) -> bool {
    name.starts_with('.')
        && name.rsplit_once(".staging-").is_some_and(|(_, tail)| tail.split('-').all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() { key.to_owned() } else { format!("{prefix}/{key}") }
}

/// A key is `/`-separated names, none empty, `.` or `..`.
fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.starts_with('/') {
        bail!("a key is a relative path");
    }
    if key.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        bail!("a key may not contain empty, `.` or `..` parts");
    }
    if key.contains('\0') {
        bail!("a key may not contain NUL");
    }
    Ok(())
}

/// Lists `dir` (whose key is `rel`) into `out`; `ancestors` are the (device, inode) pairs of the
/// folders on the way down, so a symlink back to one of them is a cycle, not an endless walk.
fn walk_local(dir: &Path, rel: &str, root: &Path, ancestors: &mut Vec<(u64, u64)>, out: &mut Vec<Listed>) {
    let odd = |key: String, reason: String| Listed::Odd { key, reason };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return out.push(odd(rel.to_owned(), format!("cannot list folder: {e}"))),
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                out.push(odd(rel.to_owned(), format!("cannot list folder: {e}")));
                continue;
            }
        };
        let name = entry.file_name();
        let shown = escape_name(name.as_bytes());
        let key = if rel.is_empty() { shown.clone() } else { format!("{rel}/{shown}") };
        if name.to_str().is_none() {
            out.push(odd(key, "the name is not valid UTF-8: rename the file (its key shows the bad bytes as \\xNN)".into()));
            continue;
        }
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_symlink())
            && let Err(reason) = inside(&path, root)
        {
            out.push(odd(key, reason));
            continue;
        }
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) => {
                let reason = match fs::read_link(&path) {
                    Ok(target) if e.raw_os_error() == Some(libc::ELOOP) => format!("symlink loop (points to {})", target.display()),
                    Ok(target) if e.kind() == std::io::ErrorKind::NotFound => {
                        format!("dangling symlink (points to {}, which does not exist)", target.display())
                    }
                    _ => format!("cannot read: {e}"),
                };
                out.push(odd(key, reason));
                continue;
            }
        };
        if meta.is_dir() {
            if ancestors.contains(&(meta.dev(), meta.ino())) {
                let target = fs::read_link(&path).map(|t| t.display().to_string()).unwrap_or_default();
                out.push(odd(key, format!("directory cycle: a symlink ({target}) back to a folder that contains it")));
                continue;
            }
            ancestors.push((meta.dev(), meta.ino()));
            walk_local(&path, &key, root, ancestors, out);
            ancestors.pop();
        } else if meta.is_file() {
            let mtime = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
            let ctime = meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128;
            let version = format!("mtime {mtime} ctime {ctime} inode {} dev {}", meta.ino(), meta.dev());
            out.push(Listed::File(Entry { key, size: meta.len(), version, changed_ns: Some(ctime) }));
        } else {
            out.push(odd(key, format!("not a regular file ({})", file_kind(&meta.file_type()))));
        }
    }
}

/// Refuses a path whose symlinks lead outside `root` (canonical): a dataset may not be used to
/// read other files of the machine. A path that does not resolve (dangling, a loop) passes:
/// reading it fails with its own reason.
fn inside(path: &Path, root: &Path) -> Result<(), String> {
    match path.canonicalize() {
        Ok(real) if !real.starts_with(root) => {
            Err(format!("symlink to {}, outside {}: refused (copy the file in, or name a folder that holds both)", real.display(), root.display()))
        }
        _ => Ok(()),
    }
}

fn file_kind(t: &fs::FileType) -> &'static str {
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else if t.is_dir() {
        "a folder"
    } else {
        "not a file"
    }
}

/// A file name as text: valid UTF-8 as it is, every other byte as `\xNN`.
fn escape_name(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

/// object_store's retry policy (10 retries with exponential backoff from 0.1 s to 15 s, within
/// 3 minutes), with the number of retries from `CLOAKBENCH_S3_RETRIES`.
fn retry_config() -> Result<object_store::RetryConfig> {
    let mut config = object_store::RetryConfig::default();
    if let Ok(value) = std::env::var("CLOAKBENCH_S3_RETRIES") {
        config.max_retries = value.parse().map_err(|_| anyhow!("CLOAKBENCH_S3_RETRIES={value:?}: expected a number of retries"))?;
    }
    Ok(config)
}

/// Fails at once, saying what to set, when no S3 credentials can be found. Without this the
/// client asks the EC2 instance-metadata address, retries for a minute and fails with an error
/// about a PUT to `169.254.169.254` that never mentions credentials. The metadata service is
/// still used where it answers (an EC2 instance with a role).
fn check_credentials_exist() -> Result<()> {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    let from_env = (set("AWS_ACCESS_KEY_ID") && set("AWS_SECRET_ACCESS_KEY"))
        || set("AWS_WEB_IDENTITY_TOKEN_FILE")
        || set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        || set("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        || std::env::var("AWS_SKIP_SIGNATURE").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    if from_env || instance_metadata_answers() {
        return Ok(());
    }
    bail!(
        "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (with AWS_SESSION_TOKEN for temporary \
         credentials), use a web-identity token (AWS_WEB_IDENTITY_TOKEN_FILE) or a container or instance role, or set \
         AWS_SKIP_SIGNATURE=true for a public bucket; profiles in ~/.aws are not read"
    )
}

/// Whether the EC2 instance-metadata service accepts a connection (one try, 1 s, remembered).
fn instance_metadata_answers() -> bool {
    static ANSWERS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWERS.get_or_init(|| {
        let endpoint = std::env::var("AWS_METADATA_ENDPOINT").unwrap_or_else(|_| "http://169.254.169.254".into());
        let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
        let addr = if host.contains(':') { host.to_owned() } else { format!("{host}:80") };
        use std::net::ToSocketAddrs;
        addr.to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(1)).is_ok())
    })
}

/// An S3 client configured from the standard `AWS_*` variables. A plain-http endpoint (a local
/// S3-compatible server) is allowed only when the endpoint URL itself says `http://`.
fn s3_store(bucket: &str) -> Result<AmazonS3> {
    check_credentials_exist()?;
    super::retries::log_them();
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry_config()?);
    let endpoint = std::env::var("AWS_ENDPOINT_URL_S3").or_else(|_| std::env::var("AWS_ENDPOINT_URL"));
    if let Ok(endpoint) = endpoint {
        builder = builder.with_endpoint(&endpoint).with_allow_http(endpoint.starts_with("http://"));
    }
    if std::env::var("AWS_REGION").is_err()
        && let Ok(region) = std::env::var("AWS_DEFAULT_REGION")
    {
        builder = builder.with_region(region);
    }
    Ok(builder.build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cloakbench-location-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn names_with_special_characters_read_back_under_their_own_name() {
        let dir = scratch("names");
        let names = ["Renée_Zoë/hash#1.jpg", "Renée_Zoë/percent%41.jpg", "a/brackets[1].jpg", "a/question?.jpg", "a/ünïcødé_名前.jpg", "a/with space.jpg"];
        for (i, n) in names.iter().enumerate() {
            fs::create_dir_all(dir.join(n).parent().unwrap()).unwrap();
            fs::write(dir.join(n), vec![i as u8; i + 1]).unwrap();
        }
        let loc = Location::open(dir.to_str().unwrap()).unwrap();
        let files = loc.files().unwrap();
        assert_eq!(files.len(), names.len());
        for e in files {
            let i = names.iter().position(|n| *n == e.key).unwrap_or_else(|| panic!("listed {:?}", e.key));
            assert_eq!(loc.get(&e.key).unwrap().as_ref(), vec![i as u8; i + 1].as_slice(), "{}", e.key);
        }
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn odd_entries_are_listed_with_a_reason_and_the_rest_is_kept() {
        let dir = scratch("odd");
        fs::create_dir_all(dir.join("p")).unwrap();
        fs::write(dir.join("p/good.jpg"), b"x").unwrap();
        std::os::unix::fs::symlink("loop", dir.join("p/loop")).unwrap();
        std::os::unix::fs::symlink("nowhere.jpg", dir.join("p/dangling.jpg")).unwrap();
        std::os::unix::fs::symlink("..", dir.join("p/up")).unwrap();
        fs::write(dir.join(std::ffi::OsStr::from_bytes(b"p/bad\xff.jpg")), b"y").unwrap();
        let fifo = std::ffi::CString::new(dir.join("p/fifo.jpg").as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let listed = Location::open(dir.to_str().unwrap()).unwrap().walk().unwrap();
        let reason = |key: &str| match listed.iter().find(|l| l.key() == key) {
            Some(Listed::Odd { reason, .. }) => reason.clone(),
            other => panic!("{key}: {other:?} in {listed:?}"),
        };
        assert!(reason("p/loop").contains("symlink loop"));
        assert!(reason("p/dangling.jpg").contains("dangling"));
        assert!(reason("p/up").contains("directory cycle"));
        assert!(reason("p/bad\\xFF.jpg").contains("not valid UTF-8"));
        assert!(reason("p/fifo.jpg").contains("FIFO"));
        assert!(listed.iter().any(|l| matches!(l, Listed::File(e) if e.key == "p/good.jpg")));
        assert_eq!(listed.len(), 6, "{listed:?}");
        let loc = Location::open(dir.to_str().unwrap()).unwrap();
        assert!(format!("{:#}", loc.get("p/fifo.jpg").unwrap_err()).contains("not a regular file"), "a FIFO must not be opened");
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn symlinks_cannot_lead_out_of_the_location() {
        let dir = scratch("symlink-out");
        let (inner, outside) = (dir.join("data"), dir.join("secret.txt"));
        fs::create_dir_all(inner.join("ann")).unwrap();
        fs::write(&outside, b"not yours").unwrap();
        fs::write(inner.join("ann/own.jpg"), b"mine").unwrap();
        std::os::unix::fs::symlink(&outside, inner.join("ann/out.jpg")).unwrap();
        std::os::unix::fs::symlink("own.jpg", inner.join("ann/in.jpg")).unwrap();
        std::os::unix::fs::symlink(&dir, inner.join("up")).unwrap();
        let data = Location::open(inner.to_str().unwrap()).unwrap();
        let listed = data.walk().unwrap();
        let reason = |key: &str| listed.iter().find_map(|l| matches!(l, Listed::Odd { key: k, .. } if k == key).then(|| format!("{l:?}")));
        assert!(reason("ann/out.jpg").is_some_and(|r| r.contains("outside")), "{listed:?}");
        assert!(reason("up").is_some_and(|r| r.contains("outside")), "{listed:?}");
        assert!(listed.iter().any(|l| l.key() == "ann/in.jpg" && matches!(l, Listed::File(_))), "a link inside is a file");
        let err = format!("{:#}", data.get("ann/out.jpg").unwrap_err());
        assert!(err.contains("outside"), "{err}");
        assert_eq!(&data.get("ann/in.jpg").unwrap()[..], b"mine");
        let err = format!("{:#}", data.put("up/written.txt", Bytes::from_static(b"x")).unwrap_err());
        assert!(err.contains("cannot write") && !dir.join("written.txt").exists(), "{err}");
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn keys_cannot_leave_the_location() {
        let dir = scratch("escape");
        let loc = Location::open(dir.to_str().unwrap()).unwrap();
        for key in ["../x", "a/../../x", "/etc/passwd", "", "a//b"] {
            assert!(loc.get(key).is_err(), "{key:?} was accepted");
            assert!(loc.put(key, Bytes::from_static(b"x")).is_err(), "{key:?} was written");
        }
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_create_only_put_writes_once_and_a_staging_file_never_shows() {
        let dir = scratch("put-new");
        let loc = Location::open(dir.to_str().unwrap()).unwrap();
        assert!(loc.put_new("m/marker.json", Bytes::from_static(b"1")).unwrap());
        assert!(!loc.put_new("m/marker.json", Bytes::from_static(b"2")).unwrap());
        assert_eq!(loc.get("m/marker.json").unwrap().as_ref(), b"1");
        loc.put("m/marker.json", Bytes::from_static(b"3")).unwrap();
        assert_eq!(loc.get("m/marker.json").unwrap().as_ref(), b"3");
        let left: Vec<_> = fs::read_dir(dir.join("m")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 1, "staging files left: {left:?}");
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_file_over_the_byte_limit_is_refused_before_it_is_read() {
        let dir = scratch("limit");
        fs::write(dir.join("big.jpg"), vec![0u8; 100]).unwrap();
        let loc = Location::open(dir.to_str().unwrap()).unwrap();
        let err = format!("{:#}", loc.get_within("big.jpg", 10).unwrap_err());
        assert!(err.contains("100 bytes, over the limit of 10"), "{err}");
        fs::remove_dir_all(dir).ok();
    }
}
