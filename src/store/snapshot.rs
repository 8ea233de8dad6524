//! Snapshots: a volume's content at one moment, with its own ID, stored as a blob.

use super::{BLOB_FORMAT, Blob, Error, Result, Staged, Store, Work, commit_blob, io, new_id, now};
use crate::copy::{self, Options};
use crate::format::{self, OpenOptions};
use crate::manifest::rules;
use crate::progress::Progress;
use crate::util::hex;
use rusqlite::OptionalExtension;
use serde::Serialize;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// A snapshot as the store reports it: Outscale's `Snapshot` fields (which validate against
/// Outscale's schema), and in [`Snapshot::mkomi`] what the store keeps beyond them.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Snapshot {
    /// `snap-…`.
    pub snapshot_id: String,
    /// Size of the volume in GiB.
    pub volume_size: u64,
    /// Always `completed`: a snapshot enters the catalog only once its data is stored.
    pub state: &'static str,
    /// Always 100, as Outscale reports a completed snapshot.
    pub progress: u8,
    /// Description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// When it was made (ISO 8601 UTC).
    pub creation_date: String,
    /// mkomi's data (printed beside Outscale's object: see [`Shown`] and [`Listed`]).
    #[serde(skip)]
    pub mkomi: Mkomi,
}

/// What the store keeps of a snapshot beyond Outscale's fields.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Mkomi {
    /// Where the data came from.
    pub origin: String,
    /// The content's digest: snapshots with the same one share their data.
    pub content_digest: String,
    /// The disk's size in bytes.
    pub virtual_size: u64,
    /// The images that use it.
    pub images: Vec<String>,
    /// Bytes of data read to make it (`snapshot create` only): 0 when the store knew the
    /// unchanged file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_read: Option<u64>,
}

/// A snapshot as `snapshot show` and `snapshot create` print it: `Snapshot` as Outscale's
/// CreateSnapshot answers, beside `Mkomi`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Shown {
    /// Outscale's fields.
    pub snapshot: Snapshot,
    /// mkomi's.
    pub mkomi: Mkomi,
}

impl From<Snapshot> for Shown {
    fn from(snapshot: Snapshot) -> Shown {
        let mkomi = snapshot.mkomi.clone();
        Shown { snapshot, mkomi }
    }
}

/// Snapshots as `snapshot list` prints them: `Snapshots` as Outscale's ReadSnapshots answers,
/// beside `Mkomi`, mkomi's data by snapshot ID.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Listed {
    /// Outscale's fields.
    pub snapshots: Vec<Snapshot>,
    /// mkomi's, by snapshot ID.
    pub mkomi: std::collections::BTreeMap<String, Mkomi>,
}

impl From<Vec<Snapshot>> for Listed {
    fn from(snapshots: Vec<Snapshot>) -> Listed {
        let mkomi = snapshots
            .iter()
            .map(|s| (s.snapshot_id.clone(), s.mkomi.clone()))
            .collect();
        Listed { snapshots, mkomi }
    }
}

/// What `snapshot create` makes.
#[derive(Clone, Debug)]
pub struct CreateRequest {
    /// The disk image (raw or qcow2).
    pub source: PathBuf,
    /// Description.
    pub description: Option<String>,
    /// How the source is opened (backing-file policy).
    pub open: OpenOptions,
}

/// A source's data, staged or already in the store.
pub(crate) enum Stage {
    /// The store has the content (the source file is unchanged since it was stored).
    Known(Blob),
    /// New data, written to a work directory.
    New {
        staged: Staged,
        /// The source's identity, for the cache, when it did not change while read.
        identity: Option<String>,
        /// Bytes of data read.
        read: u64,
    },
}

impl Stage {
    pub(crate) fn blob(&self) -> &Blob {
        match self {
            Stage::Known(b) => b,
            Stage::New { staged, .. } => &staged.blob,
        }
    }

    /// The file holding the data now.
    pub(crate) fn path(&self, store: &Store) -> PathBuf {
        match self {
            Stage::Known(b) => store.blob_path(&b.file),
            Stage::New { staged, .. } => staged.path.clone(),
        }
    }

    /// Records the staged blob and the cache entry inside `tx`.
    pub(crate) fn commit(
        &self,
        tx: &rusqlite::Transaction<'_>,
        store_root: &Path,
        sync: bool,
    ) -> Result<()> {
        if let Stage::Known(blob) = self {
            // Another process may have deleted the last snapshot of this data since it was
            // looked up.
            let there: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM blobs WHERE digest = ?1)",
                [&blob.digest],
                |r| r.get(0),
            )?;
            if !there {
                return Err(Error::Refused {
                    id: blob.digest.clone(),
                    reason: "this data was deleted by another process meanwhile: run the \
                             command again"
                        .into(),
                });
            }
        }
        if let Stage::New {
            staged, identity, ..
        } = self
        {
            commit_blob(tx, store_root, staged, sync)?;
            if let Some(identity) = identity {
                tx.execute(
                    "INSERT OR REPLACE INTO source_cache (identity, digest) VALUES (?1, ?2)",
                    [identity, &staged.blob.digest],
                )?;
            }
        }
        Ok(())
    }
}

/// A regular file's identity: device, inode, size, modification and change times. Any write
/// changes the change time (which only the kernel sets), so an equal identity means the same
/// content. `None` for what cannot be told that way: block devices, and qcow2 images with a
/// backing file (whose content also depends on other files).
fn identity(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    // The kernel stamps times from a coarse clock: a write in the same tick as the last one
    // may leave them unchanged. A file changed in the last seconds is not trusted (as git
    // does with its index).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if now - meta.ctime().max(meta.mtime()) < 3 {
        return None;
    }
    let mut head = [0u8; 16];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    if n >= 16 && head[..4] == *b"QFI\xfb" && head[8..16] != [0u8; 8] {
        return None;
    }
    Some(format!(
        "{}:{}:{}:{}.{}:{}.{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    ))
}

/// Stages the content of the disk image at `path`: read through the copy engine into a qcow2
/// file in `work` (one pass, hashed as it goes), unless the cache knows the unchanged file.
pub(crate) fn stage(
    store: &Store,
    work: &Work,
    path: &Path,
    open: &OpenOptions,
    progress: &Progress,
    cancel: Option<&AtomicBool>,
) -> Result<Stage> {
    let before = identity(path);
    if let Some(id) = &before {
        let known = store
            .conn()
            .query_row(
                "SELECT b.digest, b.file, b.virtual_size, b.file_size, b.allocated_bytes, b.sha256
                 FROM source_cache c JOIN blobs b ON b.digest = c.digest WHERE c.identity = ?1",
                [id],
                Blob::from_row,
            )
            .optional()
            .map_err(store.db())?;
        if let Some(blob) = known {
            return Ok(Stage::Known(blob));
        }
    }
    let src = format::open_path(path, open)?;
    let size = src.size();
    // What no volume can hold is refused before anything is read.
    if size == 0 {
        return Err(Error::Invalid(format!("{}: an empty disk", path.display())));
    }
    rules::volume_size(rules::min_volume_gib(size), size)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    let n = std::fs::read_dir(&work.path)
        .map_err(io(&work.path, "cannot read"))?
        .count();
    let file = work.path.join(format!("{n}.{}", BLOB_FORMAT.name()));
    let mut sink = BLOB_FORMAT
        .create(&file, size, store.sync)
        .map_err(copy::Error::from)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let task = progress.task(&name);
    let report = copy::copy(
        src.as_ref(),
        sink.as_mut(),
        Options {
            progress: Some(&task),
            cancel,
        },
    )?;
    task.finish();
    let after = identity(path);
    let blob = Blob {
        file: Blob::file_name(&report.content_digest),
        digest: report.content_digest,
        virtual_size: report.virtual_size,
        file_size: report.written.file_size,
        allocated_bytes: report.written.allocated_bytes,
        sha256: hex(&report.written.sha256),
    };
    Ok(Stage::New {
        staged: Staged { path: file, blob },
        identity: before.filter(|b| after.as_ref() == Some(b)),
        read: report.data_bytes,
    })
}

/// Inserts a snapshot row for `blob` and returns its new ID.
pub(crate) fn insert(
    tx: &rusqlite::Transaction<'_>,
    blob: &Blob,
    description: Option<&str>,
    origin: &str,
) -> Result<String> {
    let id = new_id(tx, "snap", "snapshots")?;
    tx.execute(
        "INSERT INTO snapshots (id, digest, volume_size, description, origin, creation_date)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        rusqlite::params![
            id,
            blob.digest,
            rules::min_volume_gib(blob.virtual_size),
            description,
            origin,
            now()
        ],
    )?;
    Ok(id)
}

/// `snapshot create`: stores the source's content and returns the new snapshot.
pub fn create(
    store: &mut Store,
    req: &CreateRequest,
    progress: &Progress,
    cancel: Option<&AtomicBool>,
) -> Result<Snapshot> {
    let work = store.work()?;
    let stage = stage(store, &work, &req.source, &req.open, progress, cancel)?;
    let (root, sync) = (store.root().to_owned(), store.sync);
    let origin = req.source.display().to_string();
    let id = store.write(|tx| {
        stage.commit(tx, &root, sync)?;
        insert(tx, stage.blob(), req.description.as_deref(), &origin)
    })?;
    drop(work);
    let read = match &stage {
        Stage::Known(_) => 0,
        Stage::New { read, .. } => *read,
    };
    let mut snap = show(store, &id)?;
    snap.mkomi.bytes_read = Some(read);
    Ok(snap)
}

/// `snapshot list`: every snapshot, oldest first.
pub fn list(store: &Store) -> Result<Vec<Snapshot>> {
    let ids: Vec<String> = {
        let mut stmt = store
            .conn()
            .prepare("SELECT id FROM snapshots ORDER BY creation_date, rowid")
            .map_err(store.db())?;
        stmt.query_map([], |r| r.get(0))
            .map_err(store.db())?
            .collect::<rusqlite::Result<_>>()
            .map_err(store.db())?
    };
    let mut out = Vec::with_capacity(ids.len());
    for id in &ids {
        match show(store, id) {
            Ok(s) => out.push(s),
            // Deleted by another process since the list was read.
            Err(Error::NotFound(..)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// `snapshot show`.
pub fn show(store: &Store, id: &str) -> Result<Snapshot> {
    super::check_snapshot_id(id)?;
    let row = store
        .conn()
        .query_row(
            "SELECT s.volume_size, s.description, s.creation_date, s.origin, s.digest,
                    b.virtual_size
             FROM snapshots s JOIN blobs b ON b.digest = s.digest WHERE s.id = ?1",
            [id],
            |r| {
                Ok(Snapshot {
                    snapshot_id: id.to_owned(),
                    volume_size: r.get(0)?,
                    state: "completed",
                    progress: 100,
                    description: r.get(1)?,
                    creation_date: r.get(2)?,
                    mkomi: Mkomi {
                        origin: r.get(3)?,
                        content_digest: r.get(4)?,
                        virtual_size: r.get(5)?,
                        images: Vec::new(),
                        bytes_read: None,
                    },
                })
            },
        )
        .optional()
        .map_err(store.db())?;
    let mut snap = row.ok_or_else(|| Error::NotFound(id.to_owned(), "snapshot"))?;
    snap.mkomi.images = users(store.conn(), id).map_err(store.db())?;
    Ok(snap)
}

/// The images whose mappings use snapshot `id`.
fn users(conn: &rusqlite::Connection, id: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT DISTINCT image_id FROM block_device_mappings WHERE snapshot_id = ?1 ORDER BY 1",
    )?;
    stmt.query_map([id], |r| r.get(0))?.collect()
}

/// Deletes snapshot `id` inside `tx`, and its blob's row when no other snapshot shares it.
/// Refused while an image uses the snapshot. Returns the blob (its digest) to remove once the
/// transaction is committed (see [`super::remove_blob_files`]): removed before, a failed commit
/// would bring the rows back without their data.
pub(crate) fn delete_in(tx: &rusqlite::Transaction<'_>, id: &str) -> Result<Option<String>> {
    super::check_snapshot_id(id)?;
    let digest: Option<String> = tx
        .query_row("SELECT digest FROM snapshots WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    let digest = digest.ok_or_else(|| Error::NotFound(id.to_owned(), "snapshot"))?;
    let images = users(tx, id)?;
    if !images.is_empty() {
        return Err(Error::Refused {
            id: id.to_owned(),
            reason: format!(
                "used by {}: delete {} first (mkomi image delete)",
                images.join(", "),
                if images.len() == 1 {
                    "that image"
                } else {
                    "those images"
                }
            ),
        });
    }
    tx.execute("DELETE FROM snapshots WHERE id = ?1", [id])?;
    let shared: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM snapshots WHERE digest = ?1)",
        [&digest],
        |r| r.get(0),
    )?;
    if shared {
        return Ok(None);
    }
    tx.execute("DELETE FROM blobs WHERE digest = ?1", [&digest])?;
    Ok(Some(digest))
}

/// `snapshot delete`.
pub fn delete(store: &mut Store, id: &str) -> Result<()> {
    let files = store.write(|tx| delete_in(tx, id))?;
    super::remove_blob_files(store, files.into_iter().collect())
}
