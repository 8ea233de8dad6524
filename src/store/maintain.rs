//! `store check` and `store gc`: what a crash or damage left, found and, where safe, cleared.

use super::{BLOBS, Result, Store, WORK, io};
use crate::bundle::verify::{check_content, check_file};
use crate::manifest::Disk;
use crate::progress::Progress;
use serde::Serialize;
use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;

/// What `store check` found and did.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckReport {
    /// Damage, one line each; empty when the store is whole.
    pub problems: Vec<String>,
    /// What was cleared (a crashed operation's leftovers), one line each.
    pub fixed: Vec<String>,
    /// Blobs re-verified.
    pub blobs: usize,
    /// Bytes of blob files read.
    pub bytes: u64,
    /// Snapshots in the catalog.
    pub snapshots: usize,
    /// Images in the catalog.
    pub images: usize,
}

/// Whether the work directory `token` belongs to a process that still runs (it holds the lock).
fn alive(root: &Path, token: &str) -> bool {
    let lock = root.join(WORK).join(format!("{token}.lock"));
    // Read-only is enough for flock, and works on another user's lock file of a shared store.
    // Anything but "no such file" or a lock won is taken for a live owner: wrongly failing a
    // running operation is worse than leaving a dead one for later.
    match File::open(&lock) {
        Ok(f) => !matches!(f.try_lock(), Ok(())),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// Removes work directories whose process is gone; returns what was removed.
fn clear_work(root: &Path) -> Result<Vec<String>> {
    let dir = root.join(WORK);
    let mut out = Vec::new();
    let entries = std::fs::read_dir(&dir).map_err(io(&dir, "cannot read"))?;
    let mut tokens = BTreeSet::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".new") {
            // A lock file being made: stale only when nobody holds it and it is not brand new
            // (its maker may not have locked it yet).
            let path = dir.join(&name);
            let young = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < std::time::Duration::from_secs(60));
            let free = !young && File::open(&path).is_ok_and(|f| f.try_lock().is_ok());
            if free {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        tokens.insert(name.trim_end_matches(".lock").to_owned());
    }
    for token in tokens {
        if alive(root, &token) {
            continue;
        }
        let path = dir.join(&token);
        if path.is_dir() {
            std::fs::remove_dir_all(&path).map_err(io(&path, "cannot remove"))?;
            out.push(format!(
                "{}: removed the work of a process that is gone",
                path.display()
            ));
        }
        let lock = dir.join(format!("{token}.lock"));
        match std::fs::remove_file(&lock) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&lock, "cannot remove")(e)),
        }
    }
    Ok(out)
}

/// Turns the pending images whose maker is gone into `failed`.
fn fail_abandoned(store: &mut Store) -> Result<Vec<String>> {
    let root = store.root().to_owned();
    store.write(|tx| {
        let pending: Vec<(String, Option<String>)> = {
            let mut stmt = tx.prepare("SELECT id, work FROM images WHERE state = 'pending'")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?
        };
        let mut out = Vec::new();
        for (id, work) in pending {
            if work.as_deref().is_some_and(|w| alive(&root, w)) {
                continue;
            }
            tx.execute(
                "UPDATE images SET state = 'failed', work = NULL WHERE id = ?1",
                [&id],
            )?;
            out.push(format!(
                "{id}: was pending, but the process making it is gone: now failed"
            ));
        }
        Ok(out)
    })
}

/// `store check`: the catalog's integrity and rules, every blob against its digests, and the
/// leftovers of crashed operations (pending images become `failed`, their work is removed).
pub fn check(store: &mut Store, progress: &Progress) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let catalog = store.catalog().display().to_string();
    let db = store.db();
    let integrity: Vec<String> = {
        let mut stmt = store
            .conn()
            .prepare("PRAGMA integrity_check")
            .map_err(&db)?;
        stmt.query_map([], |r| r.get(0))
            .map_err(&db)?
            .collect::<rusqlite::Result<_>>()
            .map_err(&db)?
    };
    if integrity != ["ok"] {
        report
            .problems
            .extend(integrity.iter().map(|l| format!("{catalog}: {l}")));
    }
    let broken: Vec<(String, String)> = {
        let mut stmt = store
            .conn()
            .prepare("PRAGMA foreign_key_check")
            .map_err(&db)?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(2)?)))
            .map_err(&db)?
            .collect::<rusqlite::Result<_>>()
            .map_err(&db)?
    };
    for (table, parent) in broken {
        report.problems.push(format!(
            "{catalog}: a row of {table} references a missing row of {parent}"
        ));
    }
    let rootless: Vec<String> = {
        let mut stmt = store
            .conn()
            .prepare(
                "SELECT id FROM images i WHERE state = 'available' AND NOT EXISTS (
                     SELECT 1 FROM block_device_mappings m
                     WHERE m.image_id = i.id AND m.device_name = i.root_device_name)",
            )
            .map_err(&db)?;
        stmt.query_map([], |r| r.get(0))
            .map_err(&db)?
            .collect::<rusqlite::Result<_>>()
            .map_err(&db)?
    };
    for id in rootless {
        report
            .problems
            .push(format!("{id}: available without its root snapshot"));
    }

    report.fixed.extend(fail_abandoned(store)?);
    report.fixed.extend(clear_work(store.root())?);

    let blobs: Vec<super::Blob> = {
        let mut stmt = store
            .conn()
            .prepare(
                "SELECT digest, file, virtual_size, file_size, allocated_bytes, sha256
                 FROM blobs ORDER BY digest",
            )
            .map_err(&db)?;
        stmt.query_map([], super::Blob::from_row)
            .map_err(&db)?
            .collect::<rusqlite::Result<_>>()
            .map_err(&db)?
    };
    let dir = store.root().join(BLOBS);
    for b in &blobs {
        let disk = Disk {
            device_name: String::new(),
            path: b.file.clone(),
            format: super::BLOB_FORMAT.kind(),
            virtual_size: b.virtual_size,
            file_size: b.file_size,
            allocated_bytes: b.allocated_bytes,
            sha256: b.sha256.clone(),
            content_digest: b.digest.clone(),
        };
        if !dir.join(&b.file).exists() {
            if !blob_recorded(store, &b.digest)? {
                // Deleted by another process since the list was read.
                continue;
            }
            let users = snapshots_of(store, &b.digest)?;
            if users.is_empty() {
                // A blob removed just before a commit that then failed: nothing uses it.
                store.write(|tx| {
                    tx.execute(
                        "DELETE FROM blobs WHERE digest = ?1 AND NOT EXISTS (
                             SELECT 1 FROM snapshots WHERE digest = ?1)",
                        [&b.digest],
                    )?;
                    Ok(())
                })?;
                report.fixed.push(format!(
                    "{}: missing, and used by no snapshot: record removed",
                    dir.join(&b.file).display()
                ));
            } else {
                report.problems.push(format!(
                    "{}: missing; used by {}",
                    dir.join(&b.file).display(),
                    users.join(", ")
                ));
            }
            continue;
        }
        let ((r1, f1), (r2, f2)) = std::thread::scope(|s| {
            let content = s.spawn(|| check_content(&dir, &disk, progress));
            let file = check_file(&dir, &disk);
            let content = content
                .join()
                .unwrap_or_else(|_| (0, vec![format!("{}: the content check failed", disk.path)]));
            (file, content)
        });
        report.bytes += r1 + r2;
        report.blobs += 1;
        let found: Vec<String> = f1.into_iter().chain(f2).collect();
        if !found.is_empty() && !blob_recorded(store, &b.digest)? {
            continue;
        }
        for f in found {
            // verify's words are about a bundle's manifest; here the catalog says what to expect.
            let f = f.replace("manifest", "catalog");
            let users = snapshots_of(store, &b.digest)?;
            report.problems.push(format!(
                "{}: {f} (used by {})",
                dir.display(),
                if users.is_empty() {
                    "nothing".to_owned()
                } else {
                    users.join(", ")
                }
            ));
        }
    }
    // Files no row names, looked for under the write lock: no process is then between renaming
    // a blob into place and recording it.
    let root = store.root().to_owned();
    let orphans = store.write(|tx| super::remove_orphans(tx, &root))?;
    for (path, _) in orphans {
        report.fixed.push(format!(
            "{}: not in the catalog (left by a crash before its commit): removed",
            path.display()
        ));
    }
    report.snapshots = count(store, "snapshots")?;
    report.images = count(store, "images")?;
    Ok(report)
}

/// Whether the catalog still has blob `digest`.
fn blob_recorded(store: &Store, digest: &str) -> Result<bool> {
    store
        .conn()
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM blobs WHERE digest = ?1)",
            [digest],
            |r| r.get(0),
        )
        .map_err(store.db())
}

fn count(store: &Store, table: &str) -> Result<usize> {
    store
        .conn()
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|n| n as usize)
        .map_err(store.db())
}

/// The snapshots whose data is blob `digest`, with the images that use them.
fn snapshots_of(store: &Store, digest: &str) -> Result<Vec<String>> {
    let mut stmt = store
        .conn()
        .prepare(
            "SELECT s.id, group_concat(DISTINCT m.image_id) FROM snapshots s
             LEFT JOIN block_device_mappings m ON m.snapshot_id = s.id
             WHERE s.digest = ?1 GROUP BY s.id ORDER BY s.id",
        )
        .map_err(store.db())?;
    let rows = stmt
        .query_map([digest], |r| {
            let id: String = r.get(0)?;
            let images: Option<String> = r.get(1)?;
            Ok(match images {
                Some(i) => format!("{id} ({i})"),
                None => id,
            })
        })
        .map_err(store.db())?
        .collect::<rusqlite::Result<Vec<String>>>()
        .map_err(store.db())?;
    Ok(rows)
}

/// What `store gc` removed.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GcReport {
    /// Blob files removed: unreferenced ones and ones no row names.
    pub blobs_removed: Vec<String>,
    /// Bytes they held.
    pub bytes_freed: u64,
    /// Work directories of processes that are gone.
    pub work_removed: Vec<String>,
}

/// `store gc`: removes blobs no snapshot uses, blob files the catalog does not name, and the
/// work of processes that are gone. The blob part runs inside a write transaction: no other
/// process can be between renaming a blob into place and committing its row meanwhile.
pub fn gc(store: &mut Store) -> Result<GcReport> {
    let root = store.root().to_owned();
    // Rows first, committed; then, under the write lock again, the files no row names (those
    // rows' included). Removed before the commit, a failed commit would bring rows back without
    // their files.
    store.write(|tx| {
        tx.execute(
            "DELETE FROM blobs WHERE NOT EXISTS (
                 SELECT 1 FROM snapshots s WHERE s.digest = blobs.digest)",
            [],
        )?;
        Ok(())
    })?;
    let mut report = store.write(|tx| {
        let mut report = GcReport::default();
        for (path, len) in super::remove_orphans(tx, &root)? {
            report.bytes_freed += len;
            report.blobs_removed.push(path.display().to_string());
        }
        Ok(report)
    })?;
    report.work_removed = clear_work(&root)?;
    Ok(report)
}
