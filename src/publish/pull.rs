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
//! GiB). A snapshot made from a disk of 6 MiB is a 1 GiB volume whose tail is zeros, and
//! nothing in the API records the disk's original size, so `pull` keeps the volume's size: the
//! pulled bundle is exactly what the account holds, and its `ContentDigest` is that of the
//! original disk zero-extended to the volume. A round trip is compared that way (the pull
//! tests do), or, against the fake started with `--export-size virtual`, directly. Trimming the
//! tail back would need the original size, which `publish` does not tag; guessing it from the
//! last non-zero byte would be wrong for disks that end in zeros.
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

use super::client::{Client, Error as ClientError, Retry};
use super::oapi::{
    CreateImageExportTaskRequest, CreateImageExportTaskResponse, CreateSnapshotExportTaskRequest,
    CreateSnapshotExportTaskResponse, FiltersReadImageExportTask, FiltersSnapshot,
    FiltersSnapshotExportTask, OsuExportToCreate, ReadImageExportTasksRequest,
    ReadImageExportTasksResponse, ReadSnapshotExportTasksRequest, ReadSnapshotExportTasksResponse,
    ReadSnapshotsRequest, ReadSnapshotsResponse,
};
use crate::bundle::checks::Checks;
use crate::export::import::{self, Origin};
use crate::export::manifest::{ExportImage, ExportManifest, Snapshot as ExportSnapshot};
use crate::export::s3;
use crate::manifest::DiskFormat;
use crate::manifest::rules::GIB;
use crate::progress::Progress;
use crate::staging::Target;

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
    /// 2 s to 30 s, a qcow2 bundle (a pulled disk is a whole volume, mostly zeros: see the
    /// module documentation), the default checks, created now, synced.
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
    let run = (|| -> Result<(String, import::Report)> {
        // 3. Wait.
        wait_task(req, api, progress, cancel, &mut last)?;
        // 4. Import.
        check_cancel(cancel)?;
        import_export(req, api, &s3c, progress, cancel, &last)
    })();
    let (manifest, report) = match run {
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
        manifest,
        import: report,
        objects_deleted,
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

/// Imports the completed export into the output; returns where the manifest was read from and
/// the import's report.
fn import_export(
    req: &PullRequest,
    api: &Client,
    s3c: &s3::Client,
    progress: &Progress,
    cancel: Option<&'static AtomicBool>,
    t: &Task,
) -> Result<(String, import::Report)> {
    let request = |origin: Origin| import::Request {
        origin,
        output: req.output.clone(),
        force: req.force,
        format: req.format,
        creation_epoch: req.creation_epoch,
        now: req.now,
        sync: req.sync,
        checks: req.checks,
    };
    match &req.source {
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
            let report = import::import(&request(origin), progress, cancel)?;
            Ok((what, report))
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
                        device: "/dev/sda1".to_string(),
                        filename,
                        iops: None,
                        pre_signed_url: Some(url),
                        size: volume,
                        volume_type: "standard".to_string(),
                    }],
                },
            };
            // The manifest lives in a work directory beside the output, gone when dropped.
            let work = Target::new(&req.output)?.scratch("pull")?;
            let path = work.path().join(EXPORT_MANIFEST);
            crate::staging::write_file(&path, &manifest.to_bytes(), false)?;
            let what = format!("s3://{}/{key}", req.location.bucket);
            let report = import::import(&request(Origin::Local(path)), progress, cancel)?;
            drop(work);
            Ok((what, report))
        }
    }
}

/// The snapshot's volume in bytes (`VolumeSize` GiB): the most its export's disk may hold.
fn snapshot_volume_bytes(api: &Client, id: &str) -> Result<u64> {
    let r = ReadSnapshotsRequest {
        filters: Some(FiltersSnapshot {
            snapshot_ids: Some(vec![id.to_string()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (resp, _): (ReadSnapshotsResponse, _) = api.call("ReadSnapshots", &r, Retry::Safe)?;
    let gib = resp
        .snapshots
        .unwrap_or_default()
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
}
