//! `pull`: an OMI (`ami-…`) or a snapshot (`snap-…`) of an Outscale account brought back as a
//! local bundle (issue #15, "mkomi pull"; plan in `notes/issue15-research.md`, "Recommended
//! plan" item 5).
//!
//! The steps, each of which looks before it creates, so that a re-run resumes:
//! 1. **lookup**: `ReadImageExportTasks{Filters{ImageIds}}` (or `ReadSnapshotExportTasks
//!    {Filters{SnapshotIds}}`). A task into the same bucket and prefix that is neither
//!    `failed` nor `cancelled` is reused: a running one is awaited, a `completed` one is taken
//!    if its objects are still there (a pull that succeeded deleted them, and then a new export
//!    is needed);
//! 2. **export**: otherwise `CreateImageExportTask{OsuExport{DiskImageFormat: qcow2, OsuBucket,
//!    OsuPrefix}}`, sent once ([`Retry::Never`]: export tasks have no `ClientToken` in OAPI
//!    1.40.1, so a resent request would start a second export). When its answer is lost
//!    ([`ClientError::outcome_unknown`]) the task is looked up again before anything else, and
//!    never created blindly a second time. No `OsuApiKey` is sent: the spec does not require
//!    it (only `DiskImageFormat` and `OsuBucket` are), and it would carry the object-storage
//!    secret in a request body that the API may log; the fake then writes with the account's
//!    own keys (research note, open question 8: a real account will tell whether the key is
//!    needed);
//! 3. **wait**: the task is polled with backoff and the request's time-out until `completed`
//!    (`failed` or `cancelled` is an error carrying the task's `Comment`);
//! 4. **import**: the existing import ([`crate::export::import`]) from the export's manifest,
//!    `PREFIX/ami-…/manifest.json` read with the S3 configuration when it is there, else the
//!    task's `OsuManifestUrl`. A snapshot export writes one disk object and no manifest
//!    (`PREFIX/snap-….qcow2.gz` in the fake, as the research note assumes of the real API), so
//!    `pull` writes a one-disk export manifest for it in a work directory beside the output,
//!    naming the object by a pre-signed URL, and imports that: nothing of the import is
//!    duplicated. The import makes the bundle in a work directory and renames it into place
//!    only when every check passed, so the output exists whole or not at all;
//! 5. **objects**: the export's objects deleted unless `keep_objects`.
//!
//! **Sizes.** An export holds each disk as the API holds it: the whole volume (`VolumeSize`
//! GiB). A snapshot made from a disk of 6 MiB is a 1 GiB volume whose tail is zeros, and the
//! API itself records nothing of the disk's own size. `publish` does: it tags each snapshot
//! with `mkomi:virtual-size` (the disk's bytes) and `mkomi:digest` (its ContentDigest)
//! ([`TAG_VIRTUAL_SIZE`], [`TAG_DIGEST`]). `pull` reads those tags (`ReadImages` for the
//! snapshots an image maps, then `ReadSnapshots`) before it exports anything, and for each disk
//! whose snapshot carries both ([`Sizing`]):
//! - an exported disk longer than `V = mkomi:virtual-size` is cut back to `V` bytes, but only
//!   when everything past `V` is zeros. That is checked through the disk's extents: zero
//!   extents (the tail of a sparse export) cost nothing, and data extents are read 1 MiB at a
//!   time, so memory stays bounded. A byte past `V` that is not zero means the tag does not
//!   describe this disk: the disk is kept whole, and [`Pulled::warnings`] says so; data is
//!   never dropped on a tag's word;
//! - a disk of exactly `V` bytes (cut back, or exported so) must then have the ContentDigest
//!   `mkomi:digest` records: a mismatch is [`Error::DigestMismatch`], and no output is made;
//! - a disk shorter than `V` is kept as exported, with a warning.
//!
//! A disk without both tags (a snapshot `publish` did not make) is kept at the exported size,
//! the whole volume, as before: guessing the size from the last non-zero byte would be wrong
//! for disks that end in zeros. When any disk is tagged, the export is imported into a work
//! directory beside the output, and, if a disk is cut back, registered again from there
//! through a window of each cut disk ([`crate::bundle::register::register_streamed`]: the
//! image's fields and mappings are the import's); the bundle is renamed into place only after
//! every ContentDigest was checked. That costs a second copy of the disks' data (and the room
//! for it beside the output while it runs), not of their zeros.
//!
//! **Failure.** The output is never left half made (see step 4). When this run created the
//! export task and the run fails after the task finished (the import failed, or the task
//! failed after writing part of its objects), the objects under the task's prefix are deleted
//! unless `keep_objects`. A task still running (a time-out, Ctrl-C during the wait) keeps
//! writing whatever `pull` does, and OAPI 1.40.1 has no operation to cancel it, so its objects
//! are kept, and a re-run finds the task, waits for it, imports and deletes them. A task that
//! ended `failed` has its objects deleted whichever run created it (no run can use them); the
//! objects of a completed task reused from an earlier run are kept when the import fails, for
//! the next run to reuse.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::path::Path;
use std::sync::Arc;

use super::client::{Client, Error as ClientError, Retry};
use super::oapi::{
    CreateImageExportTaskRequest, CreateImageExportTaskResponse, CreateSnapshotExportTaskRequest,
    CreateSnapshotExportTaskResponse, FiltersImage, FiltersReadImageExportTask, FiltersSnapshot,
    FiltersSnapshotExportTask, OsuExportToCreate, ReadImageExportTasksRequest,
    ReadImageExportTasksResponse, ReadImagesRequest, ReadImagesResponse,
    ReadSnapshotExportTasksRequest, ReadSnapshotExportTasksResponse, ReadSnapshotsRequest,
    ReadSnapshotsResponse, Snapshot as ApiSnapshot,
};
use super::run::{TAG_DIGEST, TAG_VIRTUAL_SIZE};
use crate::audit::image::Policy;
use crate::bundle::checks::Checks;
use crate::bundle::register::{self, Volume};
use crate::export::import::{self, Origin};
use crate::export::manifest::{ExportImage, ExportManifest, Snapshot as ExportSnapshot};
use crate::export::s3;
use crate::format::{self, Disk, Extent, ExtentKind, OpenOptions};
use crate::manifest::DiskFormat;
use crate::manifest::rules::GIB;
use crate::progress::Progress;
use crate::sink::OutputFormat;
use crate::staging::{Target, TempDir};

/// The disk format the export tasks are asked for: `qcow2`, the format Outscale's own exports
/// use and the smallest object for a mostly empty volume.
pub const EXPORT_FORMAT: &str = "qcow2";

/// The name of the manifest an image export writes under its prefix (the fake's, and the
/// research note's reading of the real API: open question 8).
pub const EXPORT_MANIFEST: &str = "manifest.json";

/// An error of `pull`: one line, naming the step and, for the API, the operation, its error
/// code and request ID (never a secret: see [`super::client`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request that cannot be carried out (a malformed ID, an unusable location).
    #[error("pull: {0}")]
    Invalid(String),
    /// The output exists (without `force`) or cannot be made.
    #[error("pull: {0}")]
    Output(#[from] crate::staging::Error),
    /// The API refused or failed (boxed: the client's error is large).
    #[error(transparent)]
    Api(Box<ClientError>),
    /// `Create*ExportTask`'s answer was lost and no task was found afterwards: it may still
    /// appear, so it is not sent again blindly.
    #[error(
        "{op}: outcome unknown ({error}) and no export task found yet; run pull again to resume"
    )]
    OutcomeUnknown {
        /// The operation.
        op: &'static str,
        /// The client's error.
        error: Box<ClientError>,
    },
    /// The export task ended `failed` or `cancelled`.
    #[error("export task {task} of {source_id} ended in state {state:?}: {comment}")]
    TaskFailed {
        /// The task's ID.
        task: String,
        /// The exported image or snapshot.
        source_id: String,
        /// Its last state.
        state: String,
        /// The task's `Comment`.
        comment: String,
    },
    /// An answer without a field it must carry.
    #[error("{op}: the answer has no {field}")]
    Missing {
        /// The operation.
        op: &'static str,
        /// The field.
        field: &'static str,
    },
    /// The completed export has no object `pull` can import.
    #[error("export task {task}: nothing to import under s3://{bucket}/{prefix}")]
    NoObjects {
        /// The task's ID.
        task: String,
        /// The bucket.
        bucket: String,
        /// The prefix looked under.
        prefix: String,
    },
    /// Waiting took longer than the request's time-out.
    #[error("timed out after {} s waiting for export task {task}; run pull again to resume", secs.as_secs())]
    Timeout {
        /// The task's ID.
        task: String,
        /// The time-out.
        secs: Duration,
    },
    /// The import of the export failed.
    #[error("import: {0}")]
    Import(#[from] crate::export::Error),
    /// Object storage refused a listing, a pre-signature or a deletion.
    #[error("object storage: {0}")]
    S3(#[from] s3::Error),
    /// A disk cut back to the size `publish` tagged does not have the ContentDigest it tagged:
    /// the pulled disk is not the published one.
    #[error(
        "{device}: the pulled disk's ContentDigest {got} differs from {expected}, the {TAG_DIGEST} \
         of snapshot {snapshot}"
    )]
    DigestMismatch {
        /// The device.
        device: String,
        /// Its snapshot.
        snapshot: String,
        /// The ContentDigest of the pulled disk.
        got: String,
        /// The snapshot's `mkomi:digest`.
        expected: String,
    },
    /// A pulled disk could not be read back (to check its tail, or to cut it).
    #[error("pulled disk: {0}")]
    Disk(#[from] crate::format::Error),
    /// The bundle of the cut disks could not be made.
    #[error("pull: {0}")]
    Bundle(#[from] crate::bundle::Error),
    /// Stopped by Ctrl-C.
    #[error("interrupted")]
    Interrupted,
}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Self {
        Error::Api(Box::new(e))
    }
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// What to pull: an OMI or a snapshot, by ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An OMI, `ami-…`: every disk it maps, with its image fields.
    Image(String),
    /// A snapshot, `snap-…`: one disk, registered as the root of a new bundle.
    Snapshot(String),
}

impl Source {
    /// Parses `ami-…` or `snap-…`: the prefix, then 8 to 32 lower-case hexadecimal digits
    /// (Outscale's IDs have 8; the bound leaves room without taking anything).
    pub fn parse(id: &str) -> Result<Source> {
        let hex_ok = |rest: &str| {
            (8..=32).contains(&rest.len())
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        match (id.strip_prefix("ami-"), id.strip_prefix("snap-")) {
            (Some(rest), _) if hex_ok(rest) => Ok(Source::Image(id.to_string())),
            (_, Some(rest)) if hex_ok(rest) => Ok(Source::Snapshot(id.to_string())),
            _ => Err(Error::Invalid(format!(
                "{id:?} is neither an OMI ID (ami-…) nor a snapshot ID (snap-…)"
            ))),
        }
    }

    /// The ID.
    pub fn id(&self) -> &str {
        match self {
            Source::Image(id) | Source::Snapshot(id) => id,
        }
    }
}

/// What to pull, and where to.
#[derive(Debug, Clone)]
pub struct PullRequest {
    /// The OMI or snapshot.
    pub source: Source,
    /// The bundle directory to create.
    pub output: PathBuf,
    /// Replace `output` if it exists.
    pub force: bool,
    /// The bucket and key prefix the export task writes to.
    pub location: s3::Location,
    /// Object storage: endpoint, region, credentials (to read and delete the export).
    pub s3: s3::Config,
    /// Keep the export's objects.
    pub keep_objects: bool,
    /// The longest wait for the export task.
    pub timeout: Duration,
    /// The first wait between two polls; it doubles up to [`PullRequest::poll_max`].
    pub poll_first: Duration,
    /// The longest wait between two polls.
    pub poll_max: Duration,
    /// Disk format of the new bundle.
    pub format: DiskFormat,
    /// The checks of the disks against the image's fields (see [`import::Request::checks`]).
    pub checks: Checks,
    /// `CreationDate` of the new bundle, in seconds since the epoch.
    pub creation_epoch: i64,
    /// Now, in seconds since the epoch, to judge pre-signed URLs' expiry.
    pub now: i64,
    /// fsync the bundle.
    pub sync: bool,
}

impl PullRequest {
    /// A request with the defaults: no `force`, objects deleted, 1 hour time-out, polls from
    /// 2 s to 30 s, a qcow2 bundle (a disk not published by mkomi is pulled as its whole
    /// volume, mostly zeros: see the module documentation, "Sizes"), the default checks,
    /// created now, synced.
    pub fn new(
        source: Source,
        output: PathBuf,
        location: s3::Location,
        s3: s3::Config,
    ) -> PullRequest {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        PullRequest {
            source,
            output,
            force: false,
            location,
            s3,
            keep_objects: false,
            timeout: Duration::from_secs(3600),
            poll_first: Duration::from_secs(2),
            poll_max: Duration::from_secs(30),
            format: DiskFormat::Qcow2,
            checks: Checks::default(),
            creation_epoch: now,
            now,
            sync: true,
        }
    }
}

/// What `pull` did.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The export task's ID.
    pub task_id: String,
    /// Whether this run created the task (else it was found from an earlier run).
    pub task_created: bool,
    /// Where the export manifest was read from (a pre-signed URL without its signature).
    pub manifest: String,
    /// The import: the new bundle and what was checked.
    pub import: import::Report,
    /// The objects deleted at the end.
    pub objects_deleted: Vec<String>,
    /// Each disk of the bundle, in its order: its snapshot and what was done to its size.
    pub disks: Vec<PulledDisk>,
    /// Things the user should know, one line each: a disk kept at the exported size although
    /// its snapshot is tagged (see [`Sizing::Kept`]).
    pub warnings: Vec<String>,
}

/// One disk of a pulled bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledDisk {
    /// The device (`/dev/sda1`).
    pub device: String,
    /// The snapshot it was exported from, when the API named it.
    pub snapshot_id: Option<String>,
    /// What was done to its size.
    pub sizing: Sizing,
}

/// What `pull` did with a disk's size (module documentation, "Sizes").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sizing {
    /// Its snapshot lacks `mkomi:virtual-size` or `mkomi:digest` (`publish` did not make it):
    /// kept at the exported size, the whole volume.
    Untagged,
    /// Exported at the tagged size already; its ContentDigest equals the tagged one.
    Exact,
    /// Cut back from `from` bytes (the volume) to `to` (the tagged size), everything past `to`
    /// being zeros; its ContentDigest equals the tagged one.
    Trimmed {
        /// The exported size.
        from: u64,
        /// The size of the bundle's disk.
        to: u64,
    },
    /// Tagged, yet kept at the exported size: `reason` says why (data past the tagged size, an
    /// export shorter than it, a tag that is not a size). Its ContentDigest is not checked.
    Kept {
        /// The exported size, the disk's.
        exported: u64,
        /// Why, in one line.
        reason: String,
    },
}

/// What `publish` recorded of one disk: its snapshot's tags.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Recorded {
    device: String,
    snapshot: String,
    tags: Tags,
}

/// A snapshot's `mkomi:virtual-size` and `mkomi:digest`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tags {
    /// Not both.
    Absent,
    /// Both, well formed.
    Sized { virtual_size: u64, digest: String },
    /// Both, one of them unusable: why.
    Malformed(String),
}

/// One export task, whichever its kind.
#[derive(Debug, Clone)]
struct Task {
    id: String,
    state: String,
    comment: Option<String>,
    progress: i64,
    bucket: String,
    /// `OsuPrefix` as the task reports it, without a trailing `/`.
    prefix: String,
    manifest_url: Option<String>,
}

impl Task {
    fn is_dead(&self) -> bool {
        matches!(self.state.as_str(), "failed" | "cancelled")
    }
    fn is_finished(&self) -> bool {
        self.is_dead() || self.state == "completed"
    }
}

/// Pulls the OMI or snapshot into a new bundle through `api` and the bucket; see the module
/// documentation. `cancel`, set by a Ctrl-C handler, stops the run between two polls and the
/// import within its transfers.
pub fn pull(
    req: &PullRequest,
    api: &Client,
    progress: &Progress,
    cancel: Option<&'static AtomicBool>,
) -> Result<Pulled> {
    // The output is checked first: a pull that cannot write its result exports nothing.
    Target::new(&req.output)?.refuse_existing(req.force)?;
    let s3c = {
        let mut c = s3::Client::new(&req.s3, &req.location.bucket)?;
        if let Some(flag) = cancel {
            c.set_cancel(flag);
        }
        c
    };
    check_cancel(cancel)?;
    // What publish recorded of the disks' sizes, read before anything is exported: a pull that
    // cannot read them stops while it has cost nothing.
    let recorded = recorded(api, &req.source)?;
    check_cancel(cancel)?;

    // 1-2. A live task into our bucket and prefix, else a new one.
    let (task, created) = match find_task(req, api, &s3c)? {
        Some(t) => (t, false),
        None => {
            check_cancel(cancel)?;
            (create_task(req, api, &s3c)?, true)
        }
    };

    // What the API last said of the task: whether it finished decides the cleanup.
    let mut last = task;
    let run = (|| -> Result<Imported> {
        // 3. Wait.
        wait_task(req, api, progress, cancel, &mut last)?;
        // 4. Import.
        check_cancel(cancel)?;
        import_export(req, api, &s3c, progress, cancel, &last, &recorded)
    })();
    let imported = match run {
        Ok(r) => r,
        Err(e) => {
            // Only a finished task's objects are final; a running one keeps writing. A failed
            // task's objects are of no use to anyone; a completed task of an earlier run is
            // left for the next run.
            if !req.keep_objects && last.is_finished() && (created || last.is_dead()) {
                // Best effort: the error that stopped the run is the one to report.
                if let Ok(keys) = task_objects(req, &s3c, &last) {
                    for key in keys {
                        let _ = s3c.delete(&key);
                    }
                }
            }
            return Err(match e {
                _ if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) => Error::Interrupted,
                other => other,
            });
        }
    };

    // 5. The objects.
    let mut objects_deleted = Vec::new();
    if !req.keep_objects {
        for key in task_objects(req, &s3c, &last)? {
            s3c.delete(&key)?;
            objects_deleted.push(key);
        }
    }
    Ok(Pulled {
        task_id: last.id,
        task_created: created,
        manifest: imported.manifest,
        import: imported.report,
        objects_deleted,
        disks: imported.disks,
        warnings: imported.warnings,
    })
}

/// Stops when Ctrl-C was pressed.
fn check_cancel(cancel: Option<&AtomicBool>) -> Result<()> {
    match cancel {
        Some(c) if c.load(Ordering::Relaxed) => Err(Error::Interrupted),
        _ => Ok(()),
    }
}

/// The prefix the export is asked to write under: the location's key, `None` when empty.
fn our_prefix(req: &PullRequest) -> Option<String> {
    (!req.location.key.is_empty()).then(|| req.location.key.clone())
}

/// Whether a task's reported prefix is ours: the prefix sent, or (an image export) the prefix
/// sent extended with the image's ID, as the spec's example answer shows (`PREFIX/ami-…/`).
fn prefix_is_ours(req: &PullRequest, reported: &str) -> bool {
    let ours = req.location.key.as_str();
    let id = req.source.id();
    reported == ours
        || (matches!(req.source, Source::Image(_))
            && reported == req.location.join(id)
            && !ours.is_empty())
        || (ours.is_empty() && reported == id)
}

/// `ReadImageExportTasks` or `ReadSnapshotExportTasks` filtered by the source's ID, every page.
fn read_tasks(api: &Client, source: &Source) -> Result<Vec<Task>> {
    let mut out = Vec::new();
    // Bounded: a filter by ID matches a few tasks; 100 pages is far beyond.
    match source {
        Source::Image(id) => {
            let mut r = ReadImageExportTasksRequest {
                filters: Some(FiltersReadImageExportTask {
                    image_ids: Some(vec![id.clone()]),
                    ..Default::default()
                }),
                ..Default::default()
            };
            for _ in 0..100 {
                let (resp, _): (ReadImageExportTasksResponse, _) =
                    api.call("ReadImageExportTasks", &r, Retry::Safe)?;
                for t in resp.image_export_tasks.unwrap_or_default() {
                    // Another image's task is no concern of ours, whatever the filter did.
                    if t.image_id.as_deref().is_some_and(|i| i != id) {
                        continue;
                    }
                    let Some(task_id) = t.task_id else { continue };
                    let osu = t.osu_export.unwrap_or_default();
                    out.push(Task {
                        id: task_id,
                        state: t.state.unwrap_or_default(),
                        comment: t.comment,
                        progress: t.progress.unwrap_or(0),
                        bucket: osu.osu_bucket,
                        prefix: trim_slash(osu.osu_prefix.unwrap_or_default()),
                        manifest_url: osu.osu_manifest_url.filter(|u| !u.is_empty()),
                    });
                }
                match resp.next_page_token.filter(|t| !t.is_empty()) {
                    Some(t) => r.next_page_token = Some(t),
                    None => break,
                }
            }
        }
        Source::Snapshot(id) => {
            let mut r = ReadSnapshotExportTasksRequest {
                filters: Some(FiltersSnapshotExportTask {
                    snapshot_ids: Some(vec![id.clone()]),
                    ..Default::default()
                }),
                ..Default::default()
            };
            for _ in 0..100 {
                let (resp, _): (ReadSnapshotExportTasksResponse, _) =
                    api.call("ReadSnapshotExportTasks", &r, Retry::Safe)?;
                for t in resp.snapshot_export_tasks.unwrap_or_default() {
                    if t.snapshot_id.as_deref().is_some_and(|i| i != id) {
                        continue;
                    }
                    let Some(task_id) = t.task_id else { continue };
                    let osu = t.osu_export.unwrap_or_default();
                    out.push(Task {
                        id: task_id,
                        state: t.state.unwrap_or_default(),
                        comment: t.comment,
                        progress: t.progress.unwrap_or(0),
                        bucket: osu.osu_bucket,
                        prefix: trim_slash(osu.osu_prefix.unwrap_or_default()),
                        manifest_url: None,
                    });
                }
                match resp.next_page_token.filter(|t| !t.is_empty()) {
                    Some(t) => r.next_page_token = Some(t),
                    None => break,
                }
            }
        }
    }
    Ok(out)
}

fn trim_slash(mut s: String) -> String {
    while s.ends_with('/') {
        s.pop();
    }
    s
}

/// A task of this source into our bucket and prefix that can still give us the export: a
/// running one, or a completed one whose objects are there. Completed ones come first (no
/// wait), then the newest running one (the last listed).
fn find_task(req: &PullRequest, api: &Client, s3c: &s3::Client) -> Result<Option<Task>> {
    let tasks: Vec<Task> = read_tasks(api, &req.source)?
        .into_iter()
        .filter(|t| t.bucket == req.location.bucket && prefix_is_ours(req, &t.prefix))
        .filter(|t| !t.is_dead())
        .collect();
    for t in tasks.iter().filter(|t| t.state == "completed") {
        if export_present(req, s3c, t)? {
            return Ok(Some(t.clone()));
        }
    }
    Ok(tasks.into_iter().rev().find(|t| !t.is_finished()))
}

/// Whether a completed task's export is still in the bucket: its manifest (an image) or its
/// disk object (a snapshot).
fn export_present(req: &PullRequest, s3c: &s3::Client, t: &Task) -> Result<bool> {
    Ok(match req.source {
        Source::Image(_) => s3c.head(&join(&t.prefix, EXPORT_MANIFEST))?.is_some(),
        Source::Snapshot(_) => snapshot_object(req, s3c)?.is_some(),
    })
}

/// `prefix/name`, or `name` for an empty prefix.
fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

/// `Create*ExportTask`, sent once; after a lost answer, the task is looked up again.
fn create_task(req: &PullRequest, api: &Client, s3c: &s3::Client) -> Result<Task> {
    let osu = OsuExportToCreate {
        disk_image_format: EXPORT_FORMAT.to_string(),
        osu_bucket: req.location.bucket.clone(),
        osu_prefix: our_prefix(req),
        // No key: see the module documentation, step 2.
        osu_api_key: None,
        osu_manifest_url: None,
    };
    let (op, sent) = match &req.source {
        Source::Image(id) => {
            let body = CreateImageExportTaskRequest {
                image_id: id.clone(),
                osu_export: osu,
                ..Default::default()
            };
            (
                "CreateImageExportTask",
                api.call::<_, CreateImageExportTaskResponse>(
                    "CreateImageExportTask",
                    &body,
                    Retry::Never,
                )
                .map(|(r, _)| r.image_export_task.and_then(|t| t.task_id)),
            )
        }
        Source::Snapshot(id) => {
            let body = CreateSnapshotExportTaskRequest {
                snapshot_id: id.clone(),
                osu_export: osu,
                ..Default::default()
            };
            (
                "CreateSnapshotExportTask",
                api.call::<_, CreateSnapshotExportTaskResponse>(
                    "CreateSnapshotExportTask",
                    &body,
                    Retry::Never,
                )
                .map(|(r, _)| r.snapshot_export_task.and_then(|t| t.task_id)),
            )
        }
    };
    match sent {
        Ok(Some(id)) => {
            // The task as the API lists it (its prefix may be extended with the image's ID).
            let found = read_tasks(api, &req.source)?
                .into_iter()
                .find(|t| t.id == id);
            Ok(found.unwrap_or(Task {
                id,
                state: String::new(),
                comment: None,
                progress: 0,
                bucket: req.location.bucket.clone(),
                prefix: req.location.key.clone(),
                manifest_url: None,
            }))
        }
        Ok(None) => Err(Error::Missing {
            op,
            field: "TaskId",
        }),
        // A lost answer may hide a task created: look before anything else.
        Err(e) if e.outcome_unknown() => match find_task(req, api, s3c)? {
            Some(t) => Ok(t),
            None => Err(Error::OutcomeUnknown {
                op,
                error: Box::new(e),
            }),
        },
        Err(e) => Err(e.into()),
    }
}

/// Polls the task until `completed`, with backoff and the request's time-out; a progress bar
/// fed by the task's `Progress`. `last` is kept up to date with what the API last said.
fn wait_task(
    req: &PullRequest,
    api: &Client,
    progress: &Progress,
    cancel: Option<&AtomicBool>,
    last: &mut Task,
) -> Result<()> {
    let id = last.id.clone();
    let bar = progress.task(&format!("export {}", req.source.id()));
    bar.set_length(100);
    let mut shown = 0u64;
    let start = Instant::now();
    let mut delay = req.poll_first;
    loop {
        check_cancel(cancel)?;
        if let Some(t) = read_tasks(api, &req.source)?
            .into_iter()
            .find(|t| t.id == id)
        {
            *last = t;
        }
        let pct = u64::try_from(last.progress.clamp(0, 100)).unwrap_or(0);
        if pct > shown {
            bar.advance(pct - shown);
            shown = pct;
        }
        if last.state == "completed" {
            bar.finish();
            return Ok(());
        }
        if last.is_dead() {
            return Err(Error::TaskFailed {
                task: id.clone(),
                source_id: req.source.id().to_string(),
                state: last.state.clone(),
                comment: last.comment.clone().unwrap_or_default(),
            });
        }
        if start.elapsed() >= req.timeout {
            return Err(Error::Timeout {
                task: id.clone(),
                secs: req.timeout,
            });
        }
        sleep(delay, cancel)?;
        delay = delay.saturating_mul(2).min(req.poll_max);
    }
}

/// Sleeps `delay` in slices of 50 ms, so that Ctrl-C stops a wait of up to `poll_max` at once.
fn sleep(delay: Duration, cancel: Option<&AtomicBool>) -> Result<()> {
    let end = Instant::now() + delay;
    loop {
        check_cancel(cancel)?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// The key of a snapshot export's disk object: the first object under our prefix whose name
/// starts with the snapshot's ID and ends in `.qcow2.gz` or `.raw.gz`.
fn snapshot_object(req: &PullRequest, s3c: &s3::Client) -> Result<Option<String>> {
    let id = req.source.id();
    let under = join(&req.location.key, id);
    Ok(s3c
        .list(&req.location.key)?
        .into_iter()
        .map(|(k, _)| k)
        .find(|k| named_after(k, &under) && (k.ends_with(".qcow2.gz") || k.ends_with(".raw.gz"))))
}

/// Whether `key` is `under` (`PREFIX/snap-…`) followed by `.`, `/` or `-`:
/// `snap-0000000b.qcow2.gz` (the fake's name) and `snap-0000000b-c7f1ef08.qcow2.gz` (the form
/// of the object names in Outscale's documented export manifest sample) are the snapshot's,
/// `snap-0000000bc.qcow2.gz` is not.
fn named_after(key: &str, under: &str) -> bool {
    key.strip_prefix(under)
        .is_some_and(|rest| rest.starts_with(['.', '/', '-']))
}

/// The objects a task wrote. An image export extends the prefix with the image's ID (the
/// spec's example answer, `PREFIX/ami-…/`): everything under it is the export's. Should the API
/// not extend it, only the manifest and the disk objects directly under our prefix are taken.
/// A snapshot export: the objects under our prefix named after the snapshot.
fn task_objects(req: &PullRequest, s3c: &s3::Client, t: &Task) -> Result<Vec<String>> {
    let listed = |prefix: &str| -> Result<Vec<String>> {
        Ok(s3c.list(prefix)?.into_iter().map(|(k, _)| k).collect())
    };
    match &req.source {
        Source::Image(_) if t.prefix != req.location.key => listed(&t.prefix),
        Source::Image(_) => Ok(listed(&req.location.key)?
            .into_iter()
            .filter(|k| {
                let name = k
                    .strip_prefix(&join(&req.location.key, ""))
                    .unwrap_or(k.as_str());
                !name.contains('/')
                    && (name == EXPORT_MANIFEST
                        || name.ends_with(".qcow2.gz")
                        || name.ends_with(".raw.gz"))
            })
            .collect()),
        Source::Snapshot(id) => {
            let under = join(&req.location.key, id);
            Ok(listed(&req.location.key)?
                .into_iter()
                .filter(|k| named_after(k, &under))
                .collect())
        }
    }
}

/// What [`import_export`] made.
struct Imported {
    /// Where the export manifest was read from.
    manifest: String,
    /// The import's report, its bundle the one in place.
    report: import::Report,
    /// Each disk and its sizing.
    disks: Vec<PulledDisk>,
    /// See [`Pulled::warnings`].
    warnings: Vec<String>,
}

/// Imports the completed export into the output, each disk cut back to its published size
/// where its snapshot's tags allow (see the module documentation, "Sizes").
fn import_export(
    req: &PullRequest,
    api: &Client,
    s3c: &s3::Client,
    progress: &Progress,
    cancel: Option<&'static AtomicBool>,
    t: &Task,
    recorded: &[Recorded],
) -> Result<Imported> {
    let target = Target::new(&req.output)?;
    // Beside the output, gone when dropped: a snapshot's export manifest, and, when a disk is
    // tagged, the import itself, so that nothing reaches the output before the sizes and
    // digests are checked.
    let work = target.scratch("pull")?;
    let tagged = recorded
        .iter()
        .any(|r| matches!(r.tags, Tags::Sized { .. }));
    let full = work.path().join("full");
    let request = |origin: Origin| import::Request {
        origin,
        output: if tagged {
            full.clone()
        } else {
            req.output.clone()
        },
        force: req.force && !tagged,
        format: req.format,
        creation_epoch: req.creation_epoch,
        now: req.now,
        sync: req.sync,
        checks: req.checks,
    };
    let (what, report) = match &req.source {
        Source::Image(_) => {
            let key = join(&t.prefix, EXPORT_MANIFEST);
            let origin = if s3c.head(&key)?.is_some() {
                Origin::S3 {
                    location: s3::Location {
                        bucket: t.bucket.clone(),
                        key,
                    },
                    config: req.s3.clone(),
                }
            } else if let Some(url) = &t.manifest_url {
                Origin::Http(url.clone())
            } else {
                return Err(Error::NoObjects {
                    task: t.id.clone(),
                    bucket: t.bucket.clone(),
                    prefix: t.prefix.clone(),
                });
            };
            let what = origin.describe();
            (what, import::import(&request(origin), progress, cancel)?)
        }
        Source::Snapshot(id) => {
            let key = snapshot_object(req, s3c)?.ok_or_else(|| Error::NoObjects {
                task: t.id.clone(),
                bucket: req.location.bucket.clone(),
                prefix: join(&req.location.key, id),
            })?;
            let volume = snapshot_volume_bytes(api, id)?;
            let filename = key.rsplit('/').next().unwrap_or(&key).to_string();
            // Long enough for the whole import, within SigV4's limit.
            let lifetime = (req.timeout + Duration::from_secs(3600)).min(s3::MAX_PRESIGN);
            let url = s3c.presign_get(&key, lifetime)?;
            let manifest = ExportManifest {
                version: crate::export::manifest::VERSION,
                image: ExportImage {
                    // A snapshot has no image fields: its ID names the bundle, and the
                    // architecture is the API's default (the import's checks say otherwise if
                    // the disk's binaries disagree).
                    name: id.clone(),
                    description: Some(format!("pulled from snapshot {id}")),
                    architecture: "x86_64".to_string(),
                    kind: "machine".to_string(),
                    product_types: vec!["0001".to_string()],
                    public: false,
                    snapshots: vec![ExportSnapshot {
                        delete_on_termination: true,
                        device: SNAPSHOT_DEVICE.to_string(),
                        filename,
                        iops: None,
                        pre_signed_url: Some(url),
                        size: volume,
                        volume_type: "standard".to_string(),
                    }],
                },
            };
            let path = work.path().join(EXPORT_MANIFEST);
            crate::staging::write_file(&path, &manifest.to_bytes(), false)?;
            let what = format!("s3://{}/{key}", req.location.bucket);
            (
                what,
                import::import(&request(Origin::Local(path)), progress, cancel)?,
            )
        }
    };
    let (report, disks, warnings) = if tagged {
        exact(req, &target, &work, report, recorded, progress, cancel)?
    } else {
        // Nothing to cut: the import put the bundle in place. A malformed tag still warns.
        let mut warnings = Vec::new();
        let disks = report
            .bundle
            .manifest
            .disks
            .iter()
            .map(|d| {
                let r = recorded.iter().find(|r| r.device == d.device_name);
                let sizing = match r.map(|r| &r.tags) {
                    Some(Tags::Malformed(why)) => {
                        warnings.push(format!("{}: kept whole: {why}", d.device_name));
                        Sizing::Kept {
                            exported: d.virtual_size,
                            reason: why.clone(),
                        }
                    }
                    _ => Sizing::Untagged,
                };
                PulledDisk {
                    device: d.device_name.clone(),
                    snapshot_id: r.map(|r| r.snapshot.clone()),
                    sizing,
                }
            })
            .collect();
        (report, disks, warnings)
    };
    drop(work);
    Ok(Imported {
        manifest: what,
        report,
        disks,
        warnings,
    })
}

/// The device a pulled snapshot is registered on.
const SNAPSHOT_DEVICE: &str = "/dev/sda1";

/// The import in `work/full` brought to the published sizes and checked against the published
/// digests, then put in place at the output: see the module documentation, "Sizes".
fn exact(
    req: &PullRequest,
    target: &Target,
    work: &TempDir,
    mut report: import::Report,
    recorded: &[Recorded],
    progress: &Progress,
    cancel: Option<&'static AtomicBool>,
) -> Result<(import::Report, Vec<PulledDisk>, Vec<String>)> {
    let full = work.path().join("full");
    let m = report.bundle.manifest.clone();
    let mut sources: Vec<Arc<dyn Disk>> = Vec::with_capacity(m.disks.len());
    let mut disks = Vec::with_capacity(m.disks.len());
    let mut warnings = Vec::new();
    // The disks whose ContentDigest must be the tagged one, by index, with it.
    let mut expect: Vec<(usize, String)> = Vec::new();
    for (i, d) in m.disks.iter().enumerate() {
        check_cancel(cancel)?;
        let disk = format::open_path(&full.join(&d.path), &OpenOptions::default())?;
        let exported = disk.size();
        let r = recorded.iter().find(|r| r.device == d.device_name);
        let kept = |reason: String| Sizing::Kept { exported, reason };
        let (source, sizing): (Arc<dyn Disk>, Sizing) = match r.map(|r| &r.tags) {
            None | Some(Tags::Absent) => (disk, Sizing::Untagged),
            Some(Tags::Malformed(why)) => (disk, kept(why.clone())),
            Some(Tags::Sized {
                virtual_size,
                digest,
            }) => {
                let v = *virtual_size;
                if exported == v {
                    expect.push((i, digest.clone()));
                    (disk, Sizing::Exact)
                } else if exported < v {
                    (
                        disk,
                        kept(format!(
                            "the export holds {exported} bytes, fewer than the {v} of \
                             {TAG_VIRTUAL_SIZE}"
                        )),
                    )
                } else if let Some(at) = first_nonzero(disk.as_ref(), v, cancel)? {
                    (
                        disk,
                        kept(format!(
                            "byte {at} is not zero, past the {v} bytes of {TAG_VIRTUAL_SIZE}: \
                             the disk is kept whole ({exported} bytes)"
                        )),
                    )
                } else {
                    expect.push((i, digest.clone()));
                    (
                        Arc::new(Head {
                            inner: disk,
                            len: v,
                        }),
                        Sizing::Trimmed {
                            from: exported,
                            to: v,
                        },
                    )
                }
            }
        };
        if let Sizing::Kept { reason, .. } = &sizing {
            warnings.push(format!("{}: kept whole: {reason}", d.device_name));
        }
        sources.push(source);
        disks.push(PulledDisk {
            device: d.device_name.clone(),
            snapshot_id: r.map(|r| r.snapshot.clone()),
            sizing,
        });
    }

    let cut = disks
        .iter()
        .any(|d| matches!(d.sizing, Sizing::Trimmed { .. }));
    let (dir, mut bundle) = if cut {
        let staged = work.path().join("bundle");
        let request = reregister(req, &m, &full, &staged)?;
        let bundle = register::register_streamed(&request, sources, progress, cancel)?;
        (staged, bundle)
    } else {
        drop(sources);
        (full, report.bundle.clone())
    };
    for (i, expected) in expect {
        let (Some(got), Some(d)) = (bundle.manifest.disks.get(i), disks.get(i)) else {
            return Err(Error::Invalid(format!(
                "the bundle of the pulled disks lacks disk {i}"
            )));
        };
        if got.content_digest != expected {
            return Err(Error::DigestMismatch {
                device: got.device_name.clone(),
                snapshot: d.snapshot_id.clone().unwrap_or_default(),
                got: got.content_digest.clone(),
                expected,
            });
        }
    }
    check_cancel(cancel)?;
    // The output was free when the pull began; it may have appeared since.
    target.refuse_existing(req.force)?;
    target.commit(TempDir::adopt(dir), req.sync)?;
    bundle.output = req.output.clone();
    report.bundle = bundle;
    Ok((report, disks, warnings))
}

/// The registration of the disks of the imported bundle `m` (in `full`) into `staged`, with
/// its fields: name, description, architecture, boot modes and each mapping as the import
/// made them, and the import's checks.
fn reregister(
    req: &PullRequest,
    m: &crate::manifest::Manifest,
    full: &Path,
    staged: &Path,
) -> Result<register::Request> {
    let mut volumes = Vec::with_capacity(m.disks.len());
    for d in &m.disks {
        let b = m
            .image
            .block_device_mappings
            .iter()
            .find(|b| b.device_name == d.device_name)
            .ok_or_else(|| {
                Error::Invalid(format!("the pulled bundle maps no {}", d.device_name))
            })?;
        let mut v = Volume::new(&d.device_name, &full.join(&d.path));
        v.volume_size = Some(b.bsu.volume_size);
        v.volume_type = b.bsu.volume_type;
        v.iops = b.bsu.iops;
        v.delete_on_vm_deletion = b.bsu.delete_on_vm_deletion;
        volumes.push(v);
    }
    let mut volumes = volumes.into_iter();
    let root = volumes
        .next()
        .filter(|v| v.device == m.image.root_device_name)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "the pulled bundle's first disk is not its root device {}",
                m.image.root_device_name
            ))
        })?;
    Ok(register::Request {
        output: staged.to_path_buf(),
        force: false,
        format: OutputFormat::of(req.format),
        name: Some(m.image.image_name.clone()),
        description: m.image.description.clone(),
        architecture: Some(m.image.architecture),
        boot_modes: m.image.boot_modes.clone(),
        // As the import checked: no boot loader required of an image that exists already.
        checks: Checks {
            loader: false,
            ..req.checks
        },
        audit: Policy::Report,
        root,
        extra: volumes.collect(),
        open: OpenOptions::default(),
        creation_epoch: req.creation_epoch,
        sync: req.sync,
        build: None,
    })
}

/// The offset of the first byte at or past `from` that is not zero, `None` when all are. Zero
/// extents are skipped unread; data extents are read 1 MiB at a time.
fn first_nonzero(disk: &dyn Disk, from: u64, cancel: Option<&AtomicBool>) -> Result<Option<u64>> {
    const CHUNK: u64 = 1 << 20;
    let size = disk.size();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut at = from;
    while at < size {
        check_cancel(cancel)?;
        let e = disk.extent(at, size - at)?;
        // At least one byte, so that the walk always moves on.
        let len = e.len.clamp(1, size - at);
        if e.kind == ExtentKind::Data {
            let end = at + len;
            let mut off = at;
            while off < end {
                check_cancel(cancel)?;
                let n = (end - off).min(CHUNK);
                let chunk = buf.get_mut(..n as usize).unwrap_or_default();
                disk.read_at(off, chunk)?;
                if let Some(i) = chunk.iter().position(|&b| b != 0) {
                    return Ok(Some(off + i as u64));
                }
                off += n;
            }
        }
        at += len;
    }
    Ok(None)
}

/// The first `len` bytes of a disk, as a disk: a pulled volume cut back to the published disk.
struct Head {
    inner: Arc<dyn Disk>,
    len: u64,
}

impl Disk for Head {
    fn size(&self) -> u64 {
        self.len
    }

    fn extent(&self, offset: u64, max_len: u64) -> format::Result<Extent> {
        let max_len = max_len.min(self.len.saturating_sub(offset)).max(1);
        let e = self.inner.extent(offset, max_len)?;
        Ok(Extent {
            offset,
            len: e.len.clamp(1, max_len),
            kind: e.kind,
        })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> format::Result<()> {
        let inside = offset
            .checked_add(buf.len() as u64)
            .is_some_and(|end| end <= self.len);
        if !inside {
            return Err(format::Error::Invalid {
                path: self.inner.path().to_path_buf(),
                reason: format!(
                    "a read of {} bytes at byte {offset} passes the end of the first {} bytes",
                    buf.len(),
                    self.len
                ),
            });
        }
        self.inner.read_at(offset, buf)
    }

    fn format(&self) -> &'static str {
        self.inner.format()
    }

    fn path(&self) -> &Path {
        self.inner.path()
    }
}

/// What `publish` recorded of the source's disks: for an image, the tags of the snapshot each
/// of its mappings names (`ReadImages`, then `ReadSnapshots`); for a snapshot, its own, on
/// [`SNAPSHOT_DEVICE`]. Disks whose snapshot the API does not show have no entry.
fn recorded(api: &Client, source: &Source) -> Result<Vec<Recorded>> {
    let devices: Vec<(String, String)> = match source {
        Source::Image(id) => {
            let r = ReadImagesRequest {
                filters: Some(FiltersImage {
                    image_ids: Some(vec![id.clone()]),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let (resp, _): (ReadImagesResponse, _) = api.call("ReadImages", &r, Retry::Safe)?;
            resp.images
                .unwrap_or_default()
                .into_iter()
                .find(|i| i.image_id.as_deref() == Some(id))
                .and_then(|i| i.block_device_mappings)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|m| Some((m.device_name?, m.bsu?.snapshot_id?)))
                .collect()
        }
        Source::Snapshot(id) => vec![(SNAPSHOT_DEVICE.to_string(), id.clone())],
    };
    if devices.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = devices.iter().map(|(_, s)| s.clone()).collect();
    let snapshots = read_snapshots(api, ids)?;
    Ok(devices
        .into_iter()
        .filter_map(|(device, snapshot)| {
            let s = snapshots
                .iter()
                .find(|s| s.snapshot_id.as_deref() == Some(snapshot.as_str()))?;
            Some(Recorded {
                device,
                tags: tags_of(s),
                snapshot,
            })
        })
        .collect())
}

/// A snapshot's `mkomi:virtual-size` and `mkomi:digest`.
fn tags_of(s: &ApiSnapshot) -> Tags {
    let tag = |key: &str| {
        s.tags
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|t| t.key == key)
            .map(|t| t.value.clone())
    };
    let (Some(size), Some(digest)) = (tag(TAG_VIRTUAL_SIZE), tag(TAG_DIGEST)) else {
        return Tags::Absent;
    };
    match size.parse::<u64>() {
        Ok(v) if v > 0 && v <= format::MAX_VIRTUAL_SIZE && !digest.is_empty() => Tags::Sized {
            virtual_size: v,
            digest,
        },
        _ if digest.is_empty() => Tags::Malformed(format!("{TAG_DIGEST} is empty")),
        _ => Tags::Malformed(format!("{TAG_VIRTUAL_SIZE} {size:?} is not a size")),
    }
}

/// `ReadSnapshots` of these IDs, every page.
fn read_snapshots(api: &Client, ids: Vec<String>) -> Result<Vec<ApiSnapshot>> {
    let mut r = ReadSnapshotsRequest {
        filters: Some(FiltersSnapshot {
            snapshot_ids: Some(ids),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut out = Vec::new();
    // Bounded: a filter by at most 40 IDs; 100 pages is far beyond.
    for _ in 0..100 {
        let (resp, _): (ReadSnapshotsResponse, _) = api.call("ReadSnapshots", &r, Retry::Safe)?;
        out.extend(resp.snapshots.unwrap_or_default());
        match resp.next_page_token.filter(|t| !t.is_empty()) {
            Some(t) => r.next_page_token = Some(t),
            None => break,
        }
    }
    Ok(out)
}

/// The snapshot's volume in bytes (`VolumeSize` GiB): the most its export's disk may hold.
fn snapshot_volume_bytes(api: &Client, id: &str) -> Result<u64> {
    let gib = read_snapshots(api, vec![id.to_string()])?
        .into_iter()
        .find(|s| s.snapshot_id.as_deref() == Some(id))
        .and_then(|s| s.volume_size)
        .ok_or(Error::Missing {
            op: "ReadSnapshots",
            field: "Snapshots[].VolumeSize",
        })?;
    u64::try_from(gib)
        .ok()
        .filter(|&g| g > 0)
        .and_then(|g| g.checked_mul(GIB))
        .ok_or_else(|| Error::Invalid(format!("snapshot {id}: VolumeSize {gib} GiB")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert_eq!(
            Source::parse("ami-0123abcd").ok(),
            Some(Source::Image("ami-0123abcd".into()))
        );
        assert_eq!(
            Source::parse("snap-0000000b").ok(),
            Some(Source::Snapshot("snap-0000000b".into()))
        );
        for bad in [
            "ami-123",
            "ami-0123ABCD",
            "snap-",
            "vol-01234567",
            "ami-0123abcd/../x",
            "",
        ] {
            assert!(Source::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn objects_named_after_the_snapshot_only() {
        let under = "p/snap-0000000b";
        assert!(named_after("p/snap-0000000b.qcow2.gz", under));
        assert!(named_after("p/snap-0000000b/disk.qcow2.gz", under));
        assert!(named_after("p/snap-0000000b-c7f1ef08.qcow2.gz", under));
        assert!(!named_after("p/snap-0000000bc.qcow2.gz", under));
        assert!(!named_after("p/snap-0000000b", under));
        assert!(!named_after("q/snap-0000000b.qcow2.gz", under));
    }

    #[test]
    fn a_task_prefix_is_ours_as_sent_or_extended_with_the_image() {
        let req = |source: &str, key: &str| {
            PullRequest::new(
                Source::parse(source).expect("id"),
                PathBuf::from("out"),
                s3::Location {
                    bucket: "b".into(),
                    key: key.into(),
                },
                s3::Config {
                    endpoint: None,
                    region: "r".into(),
                    credentials: s3::Credentials::new("k", "s", None),
                    allow_http: false,
                    checksums: true,
                },
            )
        };
        let image = req("ami-0000000a", "p/q");
        assert!(prefix_is_ours(&image, "p/q"));
        assert!(prefix_is_ours(&image, "p/q/ami-0000000a"));
        assert!(!prefix_is_ours(&image, "p/q/ami-0000000c"));
        assert!(!prefix_is_ours(&image, "p"));
        let bare = req("ami-0000000a", "");
        assert!(prefix_is_ours(&bare, ""));
        assert!(prefix_is_ours(&bare, "ami-0000000a"));
        let snap = req("snap-0000000b", "p");
        assert!(prefix_is_ours(&snap, "p"));
        assert!(!prefix_is_ours(&snap, "p/snap-0000000b"));
    }
    #[test]
    fn the_tail_is_walked_by_extents_and_the_head_stays_inside() {
        const MIB: u64 = 1 << 20;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.raw");
        let f = std::fs::File::create(&path).expect("create");
        f.set_len(8 * MIB).expect("set_len");
        std::os::unix::fs::FileExt::write_at(&f, &[0, 9], 5 * MIB + 2).expect("write");
        drop(f);
        let disk = format::open_path(
            &path,
            &OpenOptions::new(format::InputFormat::Raw, format::BackingPolicy::Refuse),
        )
        .expect("open");
        assert_eq!(
            first_nonzero(disk.as_ref(), 0, None).expect("walk"),
            Some(5 * MIB + 3)
        );
        assert_eq!(
            first_nonzero(disk.as_ref(), 4 * MIB, None).expect("walk"),
            Some(5 * MIB + 3)
        );
        assert_eq!(
            first_nonzero(disk.as_ref(), 5 * MIB + 4, None).expect("walk"),
            None
        );
        assert_eq!(
            first_nonzero(disk.as_ref(), 8 * MIB, None).expect("walk"),
            None
        );

        let head = Head {
            inner: disk,
            len: 5 * MIB + 4,
        };
        assert_eq!(head.size(), 5 * MIB + 4);
        let e = head.extent(5 * MIB, 8 * MIB).expect("extent");
        assert_eq!(e.offset, 5 * MIB);
        assert!(e.len >= 1 && e.len <= 4, "{e:?}");
        let mut b = [0u8; 4];
        head.read_at(5 * MIB, &mut b).expect("read");
        assert_eq!(b, [0, 0, 0, 9]);
        assert!(head.read_at(5 * MIB + 1, &mut b).is_err());
    }

    #[test]
    fn tags_need_both_and_a_size() {
        let snap = |tags: &[(&str, &str)]| ApiSnapshot {
            tags: Some(
                tags.iter()
                    .map(|(k, v)| super::super::oapi::ResourceTag {
                        key: k.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
            ),
            ..Default::default()
        };
        assert_eq!(
            tags_of(&snap(&[(TAG_VIRTUAL_SIZE, "6291968"), (TAG_DIGEST, "ab")])),
            Tags::Sized {
                virtual_size: 6291968,
                digest: "ab".into()
            }
        );
        assert_eq!(tags_of(&snap(&[(TAG_DIGEST, "ab")])), Tags::Absent);
        assert_eq!(tags_of(&snap(&[(TAG_VIRTUAL_SIZE, "1")])), Tags::Absent);
        assert_eq!(tags_of(&ApiSnapshot::default()), Tags::Absent);
        for bad in ["0", "-1", "1e9", "", "72057594037927937"] {
            assert!(
                matches!(
                    tags_of(&snap(&[(TAG_VIRTUAL_SIZE, bad), (TAG_DIGEST, "ab")])),
                    Tags::Malformed(_)
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            tags_of(&snap(&[(TAG_VIRTUAL_SIZE, "512"), (TAG_DIGEST, "")])),
            Tags::Malformed(_)
        ));
    }
}
