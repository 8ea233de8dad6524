//! The local image store: Outscale's OMI lifecycle offline.
//!
//! A store is a directory:
//!
//! | path | what |
//! |---|---|
//! | `catalog.sqlite` | snapshots, images, mappings, permissions, tags (see [`schema`]) |
//! | `blobs/` | one qcow2 file per distinct ContentDigest, never modified once committed |
//! | `work/` | a directory per running operation, beside the lock file its process holds |
//!
//! Snapshot data is stored once per ContentDigest: snapshots of the same content, and the
//! snapshots of an image's copies, share one blob. A blob is written to a work directory,
//! fsynced, renamed into `blobs/` and referenced by a committed transaction, the rename itself
//! inside that transaction, so that a concurrent `gc` (which takes the same write lock) never
//! sees it unreferenced. Every write transaction is `BEGIN IMMEDIATE`, in WAL mode, with a busy
//! timeout: any number of processes can share a store.
//!
//! A crash leaves at worst a work directory whose lock nobody holds, a blob file no row names,
//! or an image still `pending`: [`maintain::check`] turns those images `failed` and removes what
//! they left, and [`maintain::gc`] removes unreferenced blobs.

pub mod image;
pub mod maintain;
pub mod schema;
pub mod snapshot;

use crate::sink::OutputFormat;
use crate::util::{hex, sync_dir};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The catalog's file name.
pub const CATALOG: &str = "catalog.sqlite";
/// Where blobs live.
pub const BLOBS: &str = "blobs";
/// Where operations work.
pub const WORK: &str = "work";
/// The format of every blob: qcow2 at 64 KiB clusters, so that blobs of the same content are the
/// same file (`image bundle` hands them out as they are).
pub const BLOB_FORMAT: OutputFormat = OutputFormat::DEFAULT;
/// How long a process waits for another's write transaction before giving up. Writers hold the
/// lock for milliseconds (data is copied outside transactions), so this is only reached when
/// something is wrong.
const BUSY_TIMEOUT: Duration = Duration::from_secs(120);

/// An error of the store; each message is one line naming the store file, snapshot or image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the store could not be made, read or removed.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// The catalog is unreadable, damaged, or refused a change.
    #[error("{}: {reason}", path.display())]
    Catalog {
        /// The catalog file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A blob does not hold what the catalog says.
    #[error("{}: {reason}", path.display())]
    Damaged {
        /// The blob.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No snapshot or image has this ID.
    #[error("{0}: no such {1} in the store")]
    NotFound(String, &'static str),
    /// The operation would break the store's rules (a snapshot in use, …).
    #[error("{id}: {reason}")]
    Refused {
        /// The snapshot or image.
        id: String,
        /// Why.
        reason: String,
    },
    /// A request that cannot be carried out.
    #[error("{0}")]
    Invalid(String),
    /// Registering (inspection, audit, Outscale's rules) refused the image.
    #[error(transparent)]
    Bundle(#[from] crate::bundle::Error),
    /// A bundle could not be staged or committed.
    #[error(transparent)]
    Staging(#[from] crate::staging::Error),
    /// A disk could not be read or stored.
    #[error(transparent)]
    Copy(#[from] crate::copy::Error),
    /// A source could not be opened.
    #[error(transparent)]
    Source(#[from] crate::format::Error),
    /// Exporting or importing failed.
    #[error(transparent)]
    Export(#[from] crate::export::Error),
    /// A field breaks Outscale's rules.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::Error),
}

impl Error {
    /// Whether the operation stopped on Ctrl-C.
    pub fn is_interrupted(&self) -> bool {
        match self {
            Error::Copy(crate::copy::Error::Interrupted) => true,
            Error::Bundle(b) => b.is_interrupted(),
            Error::Export(e) => e.is_interrupted(),
            _ => false,
        }
    }

    /// Whether a blob was found damaged or missing: a failed check (exit code 3), not an error
    /// of the request.
    pub fn is_damaged(&self) -> bool {
        matches!(self, Error::Damaged { .. })
    }
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_owned();
    move |source| Error::Io { path, what, source }
}

/// An open store.
pub struct Store {
    root: PathBuf,
    catalog: PathBuf,
    conn: Connection,
    /// fsync blobs and directories (off only for benchmarks and tests that measure without it).
    sync: bool,
    /// A shared lock on the store's directory, held while the store is open, so that a store
    /// this process made is removed again only when no other process has it open (see
    /// [`Store::discard_if_new`]).
    dir_lock: File,
    /// What opening the store made.
    made: Made,
}

/// What [`Store::open`] made: nothing, the store's files in an existing directory (the
/// catalog, and those of `blobs/` and `work/` it made), or the directory itself.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Made {
    Nothing,
    Files(Vec<PathBuf>),
    Directory,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

/// The default store: `$MKOMI_STORE`, else `$XDG_DATA_HOME/mkomi/store`, else
/// `~/.local/share/mkomi/store`.
pub fn default_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("MKOMI_STORE").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(data.join("mkomi").join("store"))
}

impl Store {
    /// Opens the store at `root`, creating it (and migrating its catalog) as needed.
    pub fn open(root: &Path) -> Result<Store> {
        Store::open_with(root, true)
    }

    /// Opens the store at `root`, which must exist: for commands that only read or change what
    /// is there, so that a mistyped `--store` is an error, not a new empty store.
    pub fn open_existing(root: &Path) -> Result<Store> {
        Store::open_with(root, false)
    }

    fn open_with(root: &Path, create: bool) -> Result<Store> {
        let no_store = || Error::Catalog {
            path: root.join(CATALOG),
            reason: "no store here (`snapshot create`, `image create` or `image import` make one)"
                .into(),
        };
        if !create && !root.join(CATALOG).exists() {
            return Err(no_store());
        }
        let (dir_lock, made_dir) = lock_dir(root, create).map_err(|e| match e {
            Some(e) => e,
            None => no_store(),
        })?;
        let new_catalog = !root.join(CATALOG).exists();
        if !create && new_catalog {
            return Err(no_store());
        }
        let mut made_dirs = Vec::new();
        for dir in [root.join(BLOBS), root.join(WORK)] {
            match std::fs::create_dir(&dir) {
                Ok(()) => made_dirs.push(dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(&dir, "cannot create")(e)),
            }
        }
        let made = if made_dir {
            Made::Directory
        } else if new_catalog {
            Made::Files(made_dirs)
        } else {
            Made::Nothing
        };
        let catalog = root.join(CATALOG);
        let fail = |e: rusqlite::Error| Error::Catalog {
            path: catalog.clone(),
            reason: describe(&e),
        };
        // A lost catalog must not be made anew over existing data: `gc` would then see every
        // blob as unreferenced.
        let empty = std::fs::metadata(&catalog).map_or(true, |m| m.len() == 0);
        if empty {
            let blobs = std::fs::read_dir(root.join(BLOBS))
                .map(|d| d.count())
                .unwrap_or(0);
            if blobs > 0 {
                return Err(Error::Catalog {
                    path: catalog.clone(),
                    reason: format!(
                        "missing or empty, but blobs/ holds {blobs} file(s): the catalog was \
                         lost; restore it, or move blobs/ aside to start a new store"
                    ),
                });
            }
        }
        let conn = Connection::open(&catalog).map_err(fail)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
        // WAL lets readers go on while one process writes; FULL makes each commit durable.
        // Switching a new catalog to WAL answers "busy" at once, without the busy timeout, while
        // another process does the same: it is tried again until the timeout.
        let started = std::time::Instant::now();
        let mode: String = loop {
            match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)) {
                Ok(m) => break m,
                Err(e)
                    if matches!(
                        e.sqlite_error_code(),
                        Some(
                            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                        )
                    ) && started.elapsed() < BUSY_TIMEOUT =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(fail(e)),
            }
        };
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Catalog {
                path: catalog.clone(),
                reason: format!("cannot use write-ahead logging (journal mode {mode})"),
            });
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(fail)?;
        let mut store = Store {
            root: root.to_owned(),
            catalog: catalog.clone(),
            conn,
            sync: true,
            dir_lock,
            made,
        };
        store.migrate()?;
        Ok(store)
    }

    /// Removes what opening the store made (the directory, or the store's files in a directory
    /// that existed), when nothing was stored since and no other process has the store open:
    /// for a `create` or `import` refused before it stored anything, which must leave nothing.
    /// Returns whether it did.
    pub fn discard_if_new(self) -> bool {
        if self.made == Made::Nothing {
            return false;
        }
        // Exclusive only when no other process holds the store open: each holds a shared lock.
        if self.dir_lock.try_lock().is_err() {
            return false;
        }
        let rows: rusqlite::Result<i64> = self.conn.query_row(
            "SELECT (SELECT count(*) FROM blobs) + (SELECT count(*) FROM snapshots)
                  + (SELECT count(*) FROM images)",
            [],
            |r| r.get(0),
        );
        let empty_dir =
            |d: &Path| std::fs::read_dir(d).is_ok_and(|mut entries| entries.next().is_none());
        if rows != Ok(0) || !empty_dir(&self.root.join(BLOBS)) || !empty_dir(&self.root.join(WORK))
        {
            return false;
        }
        let Store {
            root,
            conn,
            dir_lock,
            made,
            ..
        } = self;
        if conn.close().is_err() {
            return false;
        }
        // Only the files a store has, and directories only when empty (`remove_dir`, never
        // `remove_dir_all`): whatever else appeared in the meantime is not ours to remove.
        for f in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(root.join(format!("{CATALOG}{f}")));
        }
        let done = match made {
            Made::Directory => [root.join(BLOBS), root.join(WORK), root]
                .iter()
                .all(|d| std::fs::remove_dir(d).is_ok()),
            // Only the directories it made: one that was there is not the store's to remove.
            Made::Files(dirs) => dirs.iter().all(|d| std::fs::remove_dir(d).is_ok()),
            Made::Nothing => false,
        };
        drop(dir_lock);
        done
    }

    /// Skips fsync (for measurements; a crash may then lose committed data).
    pub fn set_sync(&mut self, sync: bool) {
        self.sync = sync;
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The catalog file.
    pub fn catalog(&self) -> &Path {
        &self.catalog
    }

    /// Brings the catalog to the latest schema.
    fn migrate(&mut self) -> Result<()> {
        let catalog = self.catalog.clone();
        // Up to date, as almost always: no write lock is taken.
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.db())?;
        if version == schema::MIGRATIONS.len() as i64 {
            return Ok(());
        }
        self.write(|tx| {
            let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            let known = schema::MIGRATIONS.len() as i64;
            if version > known {
                return Err(Error::Catalog {
                    path: catalog.clone(),
                    reason: format!(
                        "schema version {version}: made by a newer mkomi (this one knows {known})"
                    ),
                });
            }
            if version < 0 {
                return Err(Error::Catalog {
                    path: catalog.clone(),
                    reason: format!("schema version {version}: not a mkomi catalog"),
                });
            }
            if version == 0 {
                // A catalog of another program must not be taken over.
                let tables: i64 = tx.query_row(
                    "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
                    [],
                    |r| r.get(0),
                )?;
                if tables > 0 {
                    return Err(Error::Catalog {
                        path: catalog.clone(),
                        reason: "not a mkomi catalog (it has tables but no schema version)".into(),
                    });
                }
            }
            for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(version as usize) {
                tx.execute_batch(sql)?;
                tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
            }
            Ok(())
        })
    }

    /// Runs `f` in a write transaction (`BEGIN IMMEDIATE`: the write lock is taken first, so two
    /// writers never deadlock) and commits it.
    pub(crate) fn write<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let catalog = self.catalog.clone();
        let fail = |e: rusqlite::Error| Error::Catalog {
            path: catalog.clone(),
            reason: describe(&e),
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        // Errors raised with `?` inside `f` name the catalog by its bare file name.
        let out = f(&tx).map_err(|e| match e {
            Error::Catalog { path, reason } if path == Path::new(CATALOG) => Error::Catalog {
                path: catalog.clone(),
                reason,
            },
            e => e,
        })?;
        tx.commit().map_err(fail)?;
        Ok(out)
    }

    /// The connection, for reads.
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Maps a catalog error to one naming the catalog.
    pub(crate) fn db(&self) -> impl Fn(rusqlite::Error) -> Error + use<> {
        let path = self.catalog.clone();
        move |e| Error::Catalog {
            path: path.clone(),
            reason: describe(&e),
        }
    }

    /// The path of a blob file.
    pub(crate) fn blob_path(&self, file: &str) -> PathBuf {
        self.root.join(BLOBS).join(file)
    }

    /// Starts an operation: a work directory, locked for as long as the returned value lives.
    pub(crate) fn work(&self) -> Result<Work> {
        let dir = self.root.join(WORK);
        loop {
            let token = format!("{}-{}", std::process::id(), hex(&random_bytes::<6>()?));
            let lock_path = dir.join(format!("{token}.lock"));
            // The lock file appears already locked (made and locked under another name, then
            // renamed): `check` never sees it unlocked and takes its owner for dead.
            let fresh = dir.join(format!(".{token}.new"));
            let lock = match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&fresh)
            {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io(&fresh, "cannot create")(e)),
            };
            lock.lock().map_err(io(&fresh, "cannot lock"))?;
            match std::fs::rename(&fresh, &lock_path) {
                Ok(()) => {}
                // Taken for stale by a `check` (it was not yet locked): start again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    let _ = std::fs::remove_file(&fresh);
                    return Err(io(&lock_path, "cannot create")(e));
                }
            }
            let path = dir.join(&token);
            std::fs::create_dir(&path).map_err(io(&path, "cannot create"))?;
            return Ok(Work {
                token,
                path,
                lock_path,
                _lock: lock,
            });
        }
    }

    /// Looks a snapshot up: its blob.
    pub(crate) fn snapshot_blob(&self, id: &str) -> Result<Blob> {
        check_snapshot_id(id)?;
        self.conn
            .query_row(
                "SELECT b.digest, b.file, b.virtual_size, b.file_size, b.allocated_bytes, b.sha256
                 FROM snapshots s JOIN blobs b ON b.digest = s.digest WHERE s.id = ?1",
                [id],
                Blob::from_row,
            )
            .optional()
            .map_err(self.db())?
            .ok_or_else(|| Error::NotFound(id.to_owned(), "snapshot"))
    }
}

/// Opens and share-locks the store's directory, making it when `create` (its parents too).
/// Returns the lock and whether this call made the directory; `Err(None)` when there is no
/// store directory and `create` is false.
fn lock_dir(root: &Path, create: bool) -> std::result::Result<(File, bool), Option<Error>> {
    loop {
        let mut made = false;
        if create {
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Some(io(parent, "cannot create")(e)))?;
            }
            match std::fs::create_dir(root) {
                Ok(()) => made = true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Some(io(root, "cannot create")(e))),
            }
        }
        let dir = match File::open(root) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if create {
                    continue;
                }
                return Err(None);
            }
            Err(e) => return Err(Some(io(root, "cannot open")(e))),
        };
        dir.lock_shared()
            .map_err(|e| Some(io(root, "cannot lock")(e)))?;
        // A process whose command was refused removes the store it had just made, under an
        // exclusive lock: locked after that, this is a directory that is gone. Start again.
        use std::os::unix::fs::MetadataExt;
        let same = match (dir.metadata(), std::fs::metadata(root)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if same {
            return Ok((dir, made));
        }
        if !create {
            return Err(None);
        }
    }
}

/// A blob as the catalog records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    /// `ContentDigest`.
    pub digest: String,
    /// File name under `blobs/`.
    pub file: String,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// File size in bytes.
    pub file_size: u64,
    /// Bytes stored as data.
    pub allocated_bytes: u64,
    /// Hex SHA-256 of the file.
    pub sha256: String,
}

impl Blob {
    /// A blob from a row of `digest, file, virtual_size, file_size, allocated_bytes, sha256`.
    /// The file's name is never taken from the catalog as it is: it must be the one its
    /// digest gives, so that no row can name a path outside `blobs/`.
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Blob> {
        let digest: String = r.get(0)?;
        let file: String = r.get(1)?;
        if !is_digest(&digest) || file != Blob::file_name(&digest) {
            return Err(rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Text,
                format!("a blob row names {file:?} for {digest:?}, not the file its digest gives")
                    .into(),
            ));
        }
        Ok(Blob {
            digest,
            file,
            virtual_size: r.get(2)?,
            file_size: r.get(3)?,
            allocated_bytes: r.get(4)?,
            sha256: r.get(5)?,
        })
    }

    /// The blob file's name for a ContentDigest.
    pub fn file_name(digest: &str) -> String {
        format!("{}.qcow2", digest.replace(':', "-"))
    }
}

/// Whether `d` has the shape of a ContentDigest: `sha256-4m:` and 64 lowercase hex digits.
pub(crate) fn is_digest(d: &str) -> bool {
    d.len() == 74
        && d.starts_with("sha256-4m:")
        && d[10..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A running operation's work directory; removed, and its lock released, when dropped.
pub(crate) struct Work {
    pub(crate) token: String,
    pub(crate) path: PathBuf,
    lock_path: PathBuf,
    _lock: File,
}

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// A blob written to a work directory, not yet in the catalog.
#[derive(Debug)]
pub(crate) struct Staged {
    pub(crate) path: PathBuf,
    pub(crate) blob: Blob,
}

/// Puts a staged blob in place inside the write transaction `tx`: renamed into `blobs/` and
/// recorded, unless the store already has that content (the staged file is then dropped).
pub(crate) fn commit_blob(
    tx: &rusqlite::Transaction<'_>,
    root: &Path,
    staged: &Staged,
    sync: bool,
) -> Result<()> {
    if !is_digest(&staged.blob.digest) {
        return Err(Error::Invalid(format!(
            "{:?}: not a ContentDigest",
            staged.blob.digest
        )));
    }
    let known: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM blobs WHERE digest = ?1)",
        [&staged.blob.digest],
        |r| r.get(0),
    )?;
    let dest = root.join(BLOBS).join(Blob::file_name(&staged.blob.digest));
    if known && dest.is_file() {
        return Ok(());
    }
    // New content, or a row whose file a crash or damage took: the staged file (the same
    // content) goes into place.
    std::fs::rename(&staged.path, &dest).map_err(io(&dest, "cannot move a blob to"))?;
    if known {
        return Ok(());
    }
    if sync {
        let blobs = root.join(BLOBS);
        sync_dir(&blobs).map_err(io(&blobs, "cannot sync"))?;
    }
    let b = &staged.blob;
    tx.execute(
        "INSERT INTO blobs (digest, file, virtual_size, file_size, allocated_bytes, sha256)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        rusqlite::params![
            b.digest,
            b.file,
            b.virtual_size,
            b.file_size,
            b.allocated_bytes,
            b.sha256
        ],
    )?;
    Ok(())
}

/// Removes blob files whose rows a committed transaction deleted. This runs in a write
/// transaction of its own: a file is removed only while no row names it, and no other process
/// can be between renaming the same content into place and recording it meanwhile. A crash
/// before this leaves files no row names, which `check` and `gc` remove.
pub(crate) fn remove_blob_files(store: &mut Store, digests: Vec<String>) -> Result<()> {
    if digests.is_empty() {
        return Ok(());
    }
    let root = store.root.clone();
    store.write(|tx| {
        for digest in digests.iter().filter(|d| is_digest(d)) {
            let named: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM blobs WHERE digest = ?1)",
                [digest],
                |r| r.get(0),
            )?;
            if named {
                continue;
            }
            let path = root.join(BLOBS).join(Blob::file_name(digest));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path, "cannot remove")(e)),
            }
        }
        Ok(())
    })
}

/// Removes, inside the write transaction `tx`, the files of `blobs/` that no row names: left by
/// a crash between a rename and its commit, or before [`remove_blob_files`]. Returns each with
/// its size.
pub(crate) fn remove_orphans(
    tx: &rusqlite::Transaction<'_>,
    root: &Path,
) -> Result<Vec<(PathBuf, u64)>> {
    let known: std::collections::BTreeSet<String> = {
        let mut stmt = tx.prepare("SELECT digest FROM blobs")?;
        stmt.query_map([], |r| r.get::<_, String>(0))?
            .map(|d| d.map(|d| Blob::file_name(&d)))
            .collect::<rusqlite::Result<_>>()?
    };
    let dir = root.join(BLOBS);
    let mut removed = Vec::new();
    let entries = std::fs::read_dir(&dir).map_err(io(&dir, "cannot read"))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Only files: anything else in blobs/ is not ours to remove.
        if known.contains(&name) || !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = dir.join(&name);
        let len = e.metadata().map(|m| m.len()).unwrap_or(0);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push((path, len)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path, "cannot remove")(e)),
        }
    }
    Ok(removed)
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Catalog {
            path: PathBuf::from(CATALOG),
            reason: describe(&e),
        }
    }
}

/// A catalog error in one line, a constraint named by what it protects.
fn describe(e: &rusqlite::Error) -> String {
    let text = e.to_string().replace('\n', " ");
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => format!("not a catalog, or damaged: {text}"),
        Some(rusqlite::ErrorCode::DatabaseCorrupt) => format!("damaged: {text}"),
        Some(rusqlite::ErrorCode::ConstraintViolation) => {
            format!("refused by the catalog's rules: {text}")
        }
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            format!("busy for more than {} s: {text}", BUSY_TIMEOUT.as_secs())
        }
        _ => text,
    }
}

/// `N` random bytes from the system.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    let path = Path::new("/dev/urandom");
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(io(path, "cannot read"))?;
    Ok(b)
}

/// A new ID of Outscale's shape (`snap-1a2b3c4d`), not yet in `table`.
pub(crate) fn new_id(tx: &rusqlite::Transaction<'_>, prefix: &str, table: &str) -> Result<String> {
    loop {
        let id = format!("{prefix}-{}", hex(&random_bytes::<4>()?));
        let taken: bool = tx.query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE id = ?1)"),
            [&id],
            |r| r.get(0),
        )?;
        if !taken {
            return Ok(id);
        }
    }
}

/// Now, as the catalog records dates: `SOURCE_DATE_EPOCH` when set, else the clock.
pub(crate) fn now() -> String {
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        });
    crate::util::utc_timestamp(epoch)
}

/// Whether `id` has the shape of a snapshot ID.
pub fn is_snapshot_id(id: &str) -> bool {
    id.len() == 13
        && id.starts_with("snap-")
        && id[5..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Whether `id` has the shape of an image ID.
pub fn is_image_id(id: &str) -> bool {
    id.len() == 12
        && id.starts_with("ami-")
        && id[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// An image ID as a command takes it: the error says what shape is expected, and when `id`
/// is a snapshot's ID, that it is one (a mistake that "no such image" would hide).
pub fn image_id(id: &str) -> std::result::Result<String, String> {
    if is_image_id(id) {
        Ok(id.to_owned())
    } else if is_snapshot_id(id) {
        Err(format!(
            "{id} is a snapshot ID: this command takes an image ID, ami- and 8 hex digits \
             (snapshots have `mkomi snapshot` commands)"
        ))
    } else {
        Err(format!(
            "{id:?} is not an image ID: ami- and 8 lowercase hex digits, as ami-1a2b3c4d"
        ))
    }
}

/// A snapshot ID as a command takes it; see [`image_id`].
pub fn snapshot_id(id: &str) -> std::result::Result<String, String> {
    if is_snapshot_id(id) {
        Ok(id.to_owned())
    } else if is_image_id(id) {
        Err(format!(
            "{id} is an image ID: this command takes a snapshot ID, snap- and 8 hex digits \
             (images have `mkomi image` commands)"
        ))
    } else {
        Err(format!(
            "{id:?} is not a snapshot ID: snap- and 8 lowercase hex digits, as snap-1a2b3c4d"
        ))
    }
}

/// [`image_id`] as a store error.
pub(crate) fn check_image_id(id: &str) -> Result<()> {
    image_id(id).map(|_| ()).map_err(Error::Invalid)
}

/// [`snapshot_id`] as a store error.
pub(crate) fn check_snapshot_id(id: &str) -> Result<()> {
    snapshot_id(id).map(|_| ()).map_err(Error::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(tx: &rusqlite::Transaction<'_>, digest_byte: char) -> String {
        let digest = format!("sha256-4m:{}", digest_byte.to_string().repeat(64));
        tx.execute(
            "INSERT INTO blobs (digest, file, virtual_size, file_size, allocated_bytes, sha256)
             VALUES (?1, ?2, 1048576, 327680, 65536, ?3)",
            rusqlite::params![digest, Blob::file_name(&digest), "0".repeat(64)],
        )
        .unwrap();
        digest
    }

    fn refused(store: &mut Store, sql: &str) -> String {
        let e = store
            .write(|tx| {
                tx.execute_batch(sql)?;
                Ok(())
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains(CATALOG), "{e}");
        e
    }

    #[test]
    fn the_schema_itself_enforces_the_rules() {
        let d = tempfile::tempdir().unwrap();
        let mut store = Store::open(d.path()).unwrap();
        store
            .write(|tx| {
                let digest = blob(tx, 'a');
                tx.execute(
                    "INSERT INTO snapshots (id, digest, volume_size, origin, creation_date)
                     VALUES ('snap-0000000a', ?1, 1, 'test', 'now')",
                    [&digest],
                )?;
                tx.execute_batch(
                    "INSERT INTO images (id, name, root_device_name, state, creation_date)
                     VALUES ('ami-0000000a', 'web', '/dev/sda1', 'pending', 'now');
                     INSERT INTO images (id, name, root_device_name, state, creation_date)
                     VALUES ('ami-0000000d', 'db-1', '/dev/sda1', 'pending', 'now');",
                )?;
                Ok(())
            })
            .unwrap();
        // No image becomes available without its root snapshot.
        let e = refused(
            &mut store,
            "UPDATE images SET state = 'available', architecture = 'x86_64'",
        );
        assert!(e.contains("without its root snapshot"), "{e}");
        store
            .write(|tx| {
                tx.execute_batch(
                    "INSERT INTO block_device_mappings VALUES
                         ('ami-0000000a', 0, '/dev/sda1', 'snap-0000000a', 1, 'standard', NULL, 1);
                     UPDATE images SET state = 'available', architecture = 'x86_64'
                     WHERE id = 'ami-0000000a';",
                )?;
                Ok(())
            })
            .unwrap();
        // A snapshot in use, and a blob in use, cannot be deleted.
        let e = refused(
            &mut store,
            "DELETE FROM snapshots WHERE id = 'snap-0000000a'",
        );
        assert!(e.contains("FOREIGN KEY"), "{e}");
        refused(&mut store, "DELETE FROM blobs");
        // An available image keeps its mappings and its root; images start pending.
        let e = refused(&mut store, "DELETE FROM block_device_mappings");
        assert!(e.contains("cannot be removed"), "{e}");
        let e = refused(
            &mut store,
            "UPDATE block_device_mappings SET image_id = 'ami-0000000b'",
        );
        assert!(e.contains("cannot change"), "{e}");
        let e = refused(
            &mut store,
            "UPDATE images SET root_device_name = '/dev/sdb'",
        );
        assert!(e.contains("cannot change"), "{e}");
        let e = refused(
            &mut store,
            "INSERT INTO images (id, name, architecture, root_device_name, state, creation_date)
             VALUES ('ami-0000000c', 'x86', 'x86_64', '/dev/sda1', 'available', 'now')",
        );
        assert!(e.contains("made pending"), "{e}");
        // Shapes and enumerations.
        for sql in [
            "UPDATE images SET id = 'ami-XYZ' WHERE id = 'ami-0000000a'",
            "UPDATE images SET state = 'gone'",
            "UPDATE images SET architecture = 'arm64'",
            "INSERT INTO block_device_mappings VALUES
                 ('ami-0000000d', 0, '/dev/sda1', 'snap-0000000a', 1, 'ssd', NULL, 1)",
            "INSERT INTO block_device_mappings VALUES
                 ('ami-0000000d', 0, '/dev/sda1', 'snap-0000000a', 14902, 'gp2', NULL, 1)",
            "INSERT INTO block_device_mappings VALUES
                 ('ami-0000000d', 0, '/dev/sda1', 'snap-0000000a', 1, 'io1', 13001, 1)",
            "INSERT INTO launch_permissions VALUES ('ami-0000000a', '12345')",
            "INSERT INTO boot_modes VALUES ('ami-0000000a', 'bios')",
            "UPDATE snapshots SET id = 'snap-1'",
            "UPDATE blobs SET file = '../x.qcow2'",
        ] {
            let e = refused(&mut store, sql);
            assert!(
                e.contains("CHECK") || e.contains("FOREIGN KEY"),
                "{sql}: {e}"
            );
        }
        // Deleting the image takes its mappings with it; then the snapshot may go.
        store
            .write(|tx| {
                tx.execute_batch("DELETE FROM images; DELETE FROM snapshots; DELETE FROM blobs;")?;
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn catalogs_of_another_version_or_program_are_refused() {
        let d = tempfile::tempdir().unwrap();
        drop(Store::open(d.path()).unwrap());
        let conn = Connection::open(d.path().join(CATALOG)).unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
        drop(conn);
        let e = Store::open(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("schema version 99: made by a newer mkomi"),
            "{e}"
        );

        let other = tempfile::tempdir().unwrap();
        let conn = Connection::open(other.path().join(CATALOG)).unwrap();
        conn.execute_batch("CREATE TABLE t (x)").unwrap();
        drop(conn);
        let e = Store::open(other.path()).unwrap_err().to_string();
        assert!(e.contains("not a mkomi catalog"), "{e}");

        let junk = tempfile::tempdir().unwrap();
        std::fs::write(junk.path().join(CATALOG), vec![0x5au8; 8192]).unwrap();
        let e = Store::open(junk.path()).unwrap_err().to_string();
        assert!(e.contains(CATALOG) && e.contains("not a catalog"), "{e}");
        assert_eq!(e.lines().count(), 1);
    }

    #[test]
    fn ids_have_outscales_shapes() {
        assert!(is_snapshot_id("snap-0a1b2c3d"));
        assert!(!is_snapshot_id("snap-0A1B2C3D"));
        assert!(!is_snapshot_id("snap-0a1b2c3"));
        assert!(is_image_id("ami-0a1b2c3d"));
        assert!(!is_image_id("ami-0a1b2c3g"));
        let d = tempfile::tempdir().unwrap();
        let mut store = Store::open(d.path()).unwrap();
        let ids: Vec<String> = store
            .write(|tx| (0..50).map(|_| new_id(tx, "snap", "snapshots")).collect())
            .unwrap();
        assert!(ids.iter().all(|i| is_snapshot_id(i)), "{ids:?}");
    }
}
