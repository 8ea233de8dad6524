//! `publish`: a bundle made into an OMI of an Outscale account (issue #15; plan in
//! `notes/issue15-research.md`, "Recommended plan" item 4), and [`plan`], its `--dry-run`,
//! whose request bodies come from the same functions.
//!
//! The phases, each of which looks before it creates, so that a re-run after a crash, a
//! time-out or a lost answer resumes without creating anything twice. One run per bundle and
//! location at a time (a lock held for the whole run):
//! 0. **published?**: `ReadImages{ImageNames, Tags: [TAG_BUNDLE=…]}`: this bundle published
//!    under this name before; then only the wait, tags, permissions and objects are finished;
//! 1. **lookup** (`--via snapshots`): every disk's snapshot is looked up by its `ClientToken`
//!    ([`snapshot_token`], derived from the disk's ContentDigest and the target). When every
//!    disk has a live one, nothing is uploaded again;
//! 2. **upload**: otherwise the bundle is exported into `PREFIX/mkomi-HASH/` (HASH from the
//!    manifest's SHA-256, so that two bundles never share a key) as an export package
//!    ([`crate::export::package::export`]: one `.qcow2.gz` object per disk, multipart and
//!    resumable; a package complete in its place is used as it is), and each disk object is
//!    pre-signed;
//! 3. **snapshots**: `CreateSnapshot{FileLocation, SnapshotSize, ClientToken}` for each disk
//!    without a live snapshot (sent as [`Retry::Safe`]: the token makes a resent request return
//!    the first one's snapshot), then `ReadSnapshots` polled with backoff until every one is
//!    `completed` (`error` fails the publish);
//! 4. **image**: `ReadImages{BlockDeviceMappingSnapshotIds: [root snapshot]}` first, since those
//!    snapshots exist only for this bundle and target (a failed image found there is deleted);
//!    else `CreateImage`, sent once ([`Retry::Never`]: it has no `ClientToken` in OAPI 1.40.1).
//!    When its answer is lost ([`ClientError::outcome_unknown`]) the image is looked up again
//!    before anything else, and never created blindly a second time; then `ReadImages` polled
//!    until `available`. `--via manifest` instead uploads the package and sends
//!    `CreateImage{FileLocation}` with its manifest's URL, tagging the image at once;
//! 5. **tags and permissions**: `CreateTags` on the snapshots ([`TAG_DIGEST`],
//!    [`TAG_VIRTUAL_SIZE`], [`TAG_VERSION`], the user's), `UpdateImage` for shares and global
//!    permission, then `CreateTags` on the image (with [`TAG_BUNDLE`], which marks it done);
//! 6. **objects**: the package's objects deleted unless `keep_objects`.
//!
//! A failure or Ctrl-C deletes what this run created, unless `keep_failed`: its image first
//! (the API refuses to delete a snapshot an image maps), then its snapshots (not the ones
//! reused from an earlier run), the package's objects and its open uploads. One exception:
//! when `CreateImage`'s outcome is unknown and no image is found, the snapshots and objects are
//! kept, since an image that appears later would map them; the next run finds them and resumes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::client::{Client, Endpoint, Error as ClientError, Retry, Totals};
use super::oapi::{
    BlockDeviceMappingImage, BsuToCreate, CreateImageRequest, CreateImageResponse,
    CreateSnapshotRequest, CreateSnapshotResponse, CreateTagsRequest, CreateTagsResponse,
    DeleteImageRequest, DeleteImageResponse, DeleteSnapshotRequest, DeleteSnapshotResponse,
    FiltersImage, FiltersSnapshot, Image, PermissionsOnResource, PermissionsOnResourceCreation,
    ReadImagesRequest, ReadImagesResponse, ReadSnapshotsRequest, ReadSnapshotsResponse,
    ResourceTag, Snapshot, UpdateImageRequest, UpdateImageResponse,
};
use crate::bundle::SUMS_FILE;
use crate::export::package::{self, EXPORT_MANIFEST, MKOMI_MANIFEST};
use crate::export::s3;
use crate::manifest::rules::{GIB, min_volume_gib};
use crate::manifest::{self, DiskFormat, Manifest};
use crate::progress::Progress;
use crate::util::hex;

/// The number of token slots per disk: a snapshot that ended in `error` keeps its token, so
/// the next try takes the next slot (`n` in [`snapshot_token`]); after this many failed
/// imports of one disk the publish gives up rather than loop.
pub const TOKEN_SLOTS: u32 = 4;

/// The tag carrying a disk's ContentDigest (the root disk's on the image).
pub const TAG_DIGEST: &str = "mkomi:digest";
/// The tag carrying mkomi's version.
pub const TAG_VERSION: &str = "mkomi:version";
/// A snapshot's tag carrying its disk's virtual size in bytes (the API's sizes are whole GiB).
pub const TAG_VIRTUAL_SIZE: &str = "mkomi:virtual-size";
/// The image's tag carrying the SHA-256 of the bundle's `manifest.json`: with the image name,
/// how a bundle published before is found (`CreateImage` has no `ClientToken`).
pub const TAG_BUNDLE: &str = "mkomi:bundle";

/// An error of `publish`: one line, naming the phase and, for the API, the operation, its
/// error code and request ID (never a secret: see [`super::client`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bundle's manifest cannot be read or used.
    #[error(transparent)]
    Manifest(#[from] manifest::Error),
    /// The upload (the export of the bundle into the bucket) failed.
    #[error("upload: {0}")]
    Export(#[from] crate::export::Error),
    /// Object storage refused a pre-signature or a deletion.
    #[error("object storage: {0}")]
    S3(#[from] s3::Error),
    /// The API refused or failed (boxed: the client's error is large, and most results here
    /// are not errors).
    #[error(transparent)]
    Api(Box<ClientError>),
    /// A snapshot import ended in `error`.
    #[error(
        "snapshot {snapshot} of {device} ended in state {state:?}{}",
        detail(reason)
    )]
    SnapshotFailed {
        /// The device whose disk it imported.
        device: String,
        /// The snapshot ID.
        snapshot: String,
        /// Its last state.
        state: String,
        /// What the API said, if anything.
        reason: Option<String>,
    },
    /// Every token slot of a disk is held by a snapshot that failed.
    #[error("{device}: {TOKEN_SLOTS} imports of this disk ended in error; not trying again")]
    TooManyFailures {
        /// The device.
        device: String,
    },
    /// The image ended in a state other than `available`.
    #[error("image {image} ended in state {state:?}{}", detail(reason))]
    ImageFailed {
        /// The image ID.
        image: String,
        /// Its last state.
        state: String,
        /// The API's comment, if any.
        reason: Option<String>,
    },
    /// `CreateImage`'s answer was lost and no image was found afterwards: it may still appear,
    /// so it is not sent again blindly.
    #[error(
        "CreateImage: outcome unknown ({0}) and no image found yet; run publish again to resume"
    )]
    ImageOutcomeUnknown(Box<ClientError>),
    /// An answer without a field it must carry.
    #[error("{op}: the answer has no {field}")]
    Missing {
        /// The operation.
        op: &'static str,
        /// The field.
        field: &'static str,
    },
    /// Waiting took longer than the request's time-out.
    #[error("timed out after {} s waiting for {what}", secs.as_secs())]
    Timeout {
        /// What was awaited.
        what: String,
        /// The time-out.
        secs: Duration,
    },
    /// A request that cannot be carried out.
    #[error("{0}")]
    Invalid(String),
    /// Stopped by Ctrl-C.
    #[error("interrupted")]
    Interrupted,
}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Self {
        Error::Api(Box::new(e))
    }
}

/// `: REASON`, or nothing.
fn detail(reason: &Option<String>) -> String {
    reason
        .as_ref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default()
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// What to publish, and where.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The bucket and key prefix the disk objects are uploaded to.
    pub location: s3::Location,
    /// Object storage: endpoint, region, credentials.
    pub s3: s3::Config,
    /// The image name; the manifest's when absent.
    pub name: Option<String>,
    /// The image description; the manifest's when absent.
    pub description: Option<String>,
    /// The user's tags, on the image and its snapshots.
    pub tags: Vec<(String, String)>,
    /// Accounts the image is shared with.
    pub share: Vec<String>,
    /// Make the image public.
    pub global: bool,
    /// Keep the uploaded objects.
    pub keep_objects: bool,
    /// Keep the snapshots this run created when it fails.
    pub keep_failed: bool,
    /// The longest a run may take, upload and waits together; the waits stop at it.
    pub timeout: Duration,
    /// The first wait between two polls; it doubles up to [`PublishRequest::poll_max`].
    pub poll_first: Duration,
    /// The longest wait between two polls.
    pub poll_max: Duration,
    /// Compression threads of the upload.
    pub threads: usize,
    /// gzip level of the upload (1-9).
    pub level: u32,
    /// Multipart part size of the upload.
    pub part_size: usize,
    /// How the image is registered.
    pub via: Via,
    /// Where the upload's resume state and lock are kept; `None`: the user's cache directory
    /// (see [`package::state_dir`]).
    pub state_dir: Option<PathBuf>,
}

impl PublishRequest {
    /// A request with the defaults: no overrides, no shares, objects deleted, 1 hour time-out,
    /// polls from 2 s to 30 s, gzip level 6 on every core, 64 MiB parts.
    pub fn new(bundle: PathBuf, location: s3::Location, s3: s3::Config) -> PublishRequest {
        PublishRequest {
            bundle,
            location,
            s3,
            name: None,
            description: None,
            tags: Vec::new(),
            share: Vec::new(),
            global: false,
            keep_objects: false,
            keep_failed: false,
            timeout: Duration::from_secs(3600),
            poll_first: Duration::from_secs(2),
            poll_max: Duration::from_secs(30),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            level: 6,
            part_size: 64 << 20,
            state_dir: None,
            via: Via::Snapshots,
        }
    }
}

/// One disk's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PublishedSnapshot {
    /// The device it is mapped to.
    pub device_name: String,
    /// Its ID.
    pub snapshot_id: String,
    /// Its `ClientToken`.
    pub client_token: String,
    /// Whether this run created it (else it was found from an earlier run).
    pub created: bool,
}

/// What `publish` did.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Published {
    /// The OMI's ID (`ami-…`).
    pub image_id: String,
    /// Whether this run created the image (else it was found).
    pub image_created: bool,
    /// The snapshots, in the manifest's disk order.
    pub snapshots: Vec<PublishedSnapshot>,
    /// Whether this run uploaded the disks (not when every snapshot already existed).
    pub uploaded: bool,
    /// The objects deleted at the end.
    pub objects_deleted: Vec<String>,
    /// API calls, retries and throttling answers.
    #[serde(skip)]
    pub api: Totals,
}

/// The `ClientToken` of slot `n` of one disk's snapshot:
/// `"mkomi-" + hex(sha256(ContentDigest‖device‖region‖api endpoint‖bucket/key‖SnapshotSize‖n))[..40]`,
/// fields separated by NUL (none contains one). The pre-signed URL is left out: it changes on
/// every run, and the token must not (research note, "Recommended plan" item 4). 46 characters
/// of `[a-z0-9-]`: within the 64 that EC2-style tokens allow (the OAPI spec states no limit,
/// research note, open question 4).
pub fn snapshot_token(
    content_digest: &str,
    device: &str,
    region: &str,
    api_url: &str,
    object: &str,
    snapshot_size: u64,
    n: u32,
) -> String {
    let mut h = Sha256::new();
    for field in [
        content_digest,
        device,
        region,
        api_url,
        object,
        &snapshot_size.to_string(),
        &n.to_string(),
    ] {
        h.update(field.as_bytes());
        h.update([0u8]);
    }
    let digest = hex(&h.finalize());
    format!("mkomi-{}", digest.get(..40).unwrap_or(&digest))
}

/// `SnapshotSize` for a disk of `virtual_size` bytes: rounded up to a whole GiB (at least 1).
///
/// The spec (1.40.1, `CreateSnapshotRequest.SnapshotSize`) asks for bytes, "greater than or
/// equal to the size of the original file", and states no rounding; but a snapshot's
/// `VolumeSize` and `BsuToCreate.VolumeSize` (which "must be at least equal to the snapshot
/// size") are whole GiB. A byte count that is not a whole GiB would leave the snapshot's GiB
/// size to the API; a whole GiB holds the disk, and is at most the manifest's `VolumeSize`,
/// which [`min_volume_gib`] bounds from below (issue #15 research note, "SnapshotSize").
/// The **virtual** size is used, not the `.qcow2.gz` object's: the import expands the disk.
/// Whether the real API wants exactly this is open question 2 of the research note.
pub fn snapshot_size(virtual_size: u64) -> u64 {
    min_volume_gib(virtual_size).saturating_mul(GIB)
}

/// How the image is registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Via {
    /// One `CreateSnapshot` per disk, then `CreateImage` from the snapshots: every field of the
    /// manifest's `Image` is set (boot modes, volume types, IOPS, delete-on-VM-deletion).
    #[default]
    Snapshots,
    /// `CreateImage{FileLocation}` with the export manifest's pre-signed URL: the API imports
    /// the disks itself; boot modes cannot be set this way.
    Manifest,
}

/// One disk's target: what its token is made of.
struct Target {
    device: String,
    digest: String,
    object: String,
    /// `SnapshotSize`: the virtual size rounded up to a whole GiB.
    size: u64,
    /// The disk's virtual size in bytes.
    virtual_size: u64,
}

/// What every phase needs, read from the bundle and the request before any call.
struct Context {
    manifest: Manifest,
    /// Where the package goes: `mkomi-` and 16 hex digits of [`Context::bundle_digest`]
    /// under the request's location.
    location: s3::Location,
    targets: Vec<Target>,
    /// The image name: the request's, else the manifest's.
    name: String,
    /// `sha256:` and the hex SHA-256 of the bundle's `manifest.json`: the image's
    /// [`TAG_BUNDLE`], by which a published bundle is found again.
    bundle_digest: String,
    /// The root disk's ContentDigest.
    root_digest: String,
    /// When the run gives up waiting: its start and the request's time-out, for every phase
    /// together.
    deadline: Instant,
}

impl Context {
    fn new(req: &PublishRequest) -> Result<Context> {
        let now = Instant::now();
        // A time-out past what an Instant holds (`--timeout` of centuries) is no time-out.
        let deadline = now
            .checked_add(req.timeout)
            .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
            .unwrap_or(now);
        let path = req.bundle.join(manifest::FILE_NAME);
        let m = Manifest::read(&path)?;
        if m.disks.is_empty() {
            return Err(Error::Invalid(format!(
                "{}: the bundle has no disk",
                path.display()
            )));
        }
        if let Some(d) = m.disks.iter().find(|d| d.format != DiskFormat::Qcow2) {
            // Outscale's own exports, and so its imports, are `.qcow2.gz`; a raw disk would
            // go up as the whole volume (research note, open question 2).
            return Err(Error::Invalid(format!(
                "{}: {} is raw; publish uploads qcow2 (Outscale's export format): register \
                 the bundle again with --format qcow2",
                req.bundle.display(),
                d.device_name
            )));
        }
        // The manifest was just read whole, so it is small; read again for its exact bytes.
        let bytes = std::fs::read(&path)
            .map_err(|e| Error::Invalid(format!("{}: cannot read: {e}", path.display())))?;
        let sha = hex(&Sha256::digest(&bytes));
        let bundle_digest = format!("sha256:{sha}");
        // The package goes one level under the user's prefix, named by the bundle: two bundles
        // published to one prefix (at once, or one while the other's objects are kept) never
        // write the same key, so an import never reads another bundle's disk through a URL
        // pre-signed for its own.
        let location = s3::Location {
            bucket: req.location.bucket.clone(),
            key: req
                .location
                .join(&format!("mkomi-{}", sha.get(..16).unwrap_or(&sha))),
        };
        let targets: Vec<Target> = m
            .disks
            .iter()
            .map(|d| Target {
                device: d.device_name.clone(),
                digest: d.content_digest.clone(),
                object: location.join(&format!(
                    "{}.gz",
                    DiskFormat::Qcow2.file_name(&d.device_name)
                )),
                size: snapshot_size(d.virtual_size),
                virtual_size: d.virtual_size,
            })
            .collect();
        let root_digest = targets
            .iter()
            .find(|t| t.device == m.image.root_device_name)
            .map(|t| t.digest.clone())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: no disk for the root device {}",
                    path.display(),
                    m.image.root_device_name
                ))
            })?;
        let name = req
            .name
            .clone()
            .unwrap_or_else(|| m.image.image_name.clone());
        Ok(Context {
            manifest: m,
            targets,
            name,
            bundle_digest,
            root_digest,
            deadline,
            location,
        })
    }

    /// The token of slot `n` of disk `t` at `endpoint`.
    fn token(&self, endpoint: &Endpoint, t: &Target, n: u32) -> String {
        snapshot_token(
            &t.digest,
            &t.device,
            &endpoint.region,
            &endpoint.api_url,
            &format!("{}/{}", self.location.bucket, t.object),
            t.size,
            n,
        )
    }

    /// `ReadImages` by name and [`TAG_BUNDLE`]: this bundle published before under this name.
    fn published_filter(&self) -> ReadImagesRequest {
        ReadImagesRequest {
            filters: Some(FiltersImage {
                image_names: Some(vec![self.name.clone()]),
                tags: Some(vec![format!("{TAG_BUNDLE}={}", self.bundle_digest)]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn snapshot_request(
        &self,
        t: &Target,
        token: String,
        url: String,
    ) -> Result<CreateSnapshotRequest> {
        Ok(CreateSnapshotRequest {
            client_token: Some(token),
            description: Some(format!(
                "mkomi {}: {} of {}",
                env!("CARGO_PKG_VERSION"),
                t.device,
                self.name
            )),
            file_location: Some(url),
            snapshot_size: Some(
                i64::try_from(t.size)
                    .map_err(|_| Error::Invalid(format!("{}: disk too large", t.device)))?,
            ),
            ..Default::default()
        })
    }

    /// `CreateTags` for `id`: the digest, the bundle's digest on the image, the version and the
    /// user's tags (idempotent: a tag set again keeps its value).
    fn tags_request(
        &self,
        req: &PublishRequest,
        id: &str,
        digest: &str,
        disk: Option<&Target>,
    ) -> CreateTagsRequest {
        let mut tags = vec![
            ResourceTag {
                key: TAG_DIGEST.to_string(),
                value: digest.to_string(),
            },
            ResourceTag {
                key: TAG_VERSION.to_string(),
                value: env!("CARGO_PKG_VERSION").to_string(),
            },
        ];
        match disk {
            // The disk's own size: the API keeps only whole GiB, and exports whole volumes,
            // so this is what lets `pull` give back the disk the digest was computed over.
            Some(t) => tags.push(ResourceTag {
                key: TAG_VIRTUAL_SIZE.to_string(),
                value: t.virtual_size.to_string(),
            }),
            None => tags.push(ResourceTag {
                key: TAG_BUNDLE.to_string(),
                value: self.bundle_digest.clone(),
            }),
        }
        tags.extend(req.tags.iter().map(|(k, v)| ResourceTag {
            key: k.clone(),
            value: v.clone(),
        }));
        CreateTagsRequest {
            resource_ids: vec![id.to_string()],
            tags,
            ..Default::default()
        }
    }
}

/// `UpdateImage` for the shares and global permission, when there are any.
fn permissions_request(req: &PublishRequest, image_id: &str) -> Option<UpdateImageRequest> {
    (req.global || !req.share.is_empty()).then(|| UpdateImageRequest {
        image_id: image_id.to_string(),
        permissions_to_launch: Some(PermissionsOnResourceCreation {
            additions: Some(PermissionsOnResource {
                account_ids: (!req.share.is_empty()).then(|| req.share.clone()),
                global_permission: req.global.then_some(true),
            }),
            removals: None,
        }),
        ..Default::default()
    })
}

/// One API call `--dry-run` prints: the operation and its JSON body (the shape
/// `tests/oapi/fake_api.py --validate` checks against the API description).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PlannedCall {
    /// The operation (`CreateSnapshot`).
    pub operation: String,
    /// The request body.
    pub body: serde_json::Value,
}

/// Every API call a first `publish` of the bundle would make, in order, with no network call:
/// the bodies are made by the same functions the run uses. Values only the API can give are
/// placeholders in angle brackets (`<SnapshotId of /dev/sda1>`), and so is each pre-signed
/// URL (`<pre-signed GET of s3://BUCKET/KEY>`): a dry run's output often ends in CI logs, and a
/// working URL there would hand out the disk. Polls appear once.
pub fn plan(req: &PublishRequest, endpoint: &Endpoint) -> Result<Vec<PlannedCall>> {
    let cx = Context::new(req)?;
    let mut calls = Vec::new();
    let mut push = |op: &str, body: &dyn erased::Body| -> Result<()> {
        calls.push(PlannedCall {
            operation: op.to_string(),
            body: body
                .json()
                .map_err(|e| Error::Invalid(format!("{op}: {e}")))?,
        });
        Ok(())
    };
    push("ReadImages", &cx.published_filter())?;
    let url = |t: &Target| {
        format!(
            "<pre-signed GET of s3://{}/{}>",
            req.location.bucket, t.object
        )
    };
    let image_id = "<ImageId>".to_string();
    match req.via {
        Via::Snapshots => {
            let mut snapshots = Vec::new();
            for t in &cx.targets {
                let all: Vec<String> = (0..TOKEN_SLOTS).map(|n| cx.token(endpoint, t, n)).collect();
                push("ReadSnapshots", &token_filter(all))?;
            }
            for t in &cx.targets {
                let token = cx.token(endpoint, t, 0);
                push(
                    "CreateSnapshot",
                    &cx.snapshot_request(t, token.clone(), url(t))?,
                )?;
                snapshots.push(PublishedSnapshot {
                    device_name: t.device.clone(),
                    snapshot_id: format!("<SnapshotId of {}>", t.device),
                    client_token: token,
                    created: true,
                });
            }
            push("ReadSnapshots", &ids_filter(&snapshots))?;
            let root = snapshots
                .iter()
                .find(|s| s.device_name == cx.manifest.image.root_device_name)
                .map(|s| s.snapshot_id.clone())
                .unwrap_or_default();
            push("ReadImages", &root_filter(&root))?;
            push(
                "CreateImage",
                &image_request(req, &cx.manifest, &snapshots)?,
            )?;
            push("ReadImages", &image_filter(&image_id))?;
            for (s, t) in snapshots.iter().zip(&cx.targets) {
                push(
                    "CreateTags",
                    &cx.tags_request(req, &s.snapshot_id, &t.digest, Some(t)),
                )?;
            }
        }
        Via::Manifest => {
            push("ReadImages", &name_filter(&cx.name))?;
            push(
                "CreateImage",
                &manifest_image_request(
                    req,
                    &cx,
                    format!(
                        "<pre-signed GET of s3://{}/{}>",
                        cx.location.bucket,
                        cx.location.join(EXPORT_MANIFEST)
                    ),
                ),
            )?;
            push(
                "CreateTags",
                &cx.tags_request(req, &image_id, &cx.root_digest, None),
            )?;
            push("ReadImages", &image_filter(&image_id))?;
            for t in &cx.targets {
                let id = format!("<SnapshotId of {}>", t.device);
                push("CreateTags", &cx.tags_request(req, &id, &t.digest, Some(t)))?;
            }
        }
    }
    // The order of `finish_image`: the snapshots' tags, the permissions, the image's tags.
    if let Some(update) = permissions_request(req, &image_id) {
        push("UpdateImage", &update)?;
    }
    push(
        "CreateTags",
        &cx.tags_request(req, &image_id, &cx.root_digest, None),
    )?;
    Ok(calls)
}

/// Request bodies as JSON values, whatever their type (for [`plan`]).
mod erased {
    /// A request body.
    pub trait Body {
        fn json(&self) -> serde_json::Result<serde_json::Value>;
    }
    impl<T: serde::Serialize> Body for T {
        fn json(&self) -> serde_json::Result<serde_json::Value> {
            serde_json::to_value(self)
        }
    }
}

fn token_filter(tokens: Vec<String>) -> ReadSnapshotsRequest {
    ReadSnapshotsRequest {
        filters: Some(FiltersSnapshot {
            client_tokens: Some(tokens),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ids_filter(snapshots: &[PublishedSnapshot]) -> ReadSnapshotsRequest {
    ReadSnapshotsRequest {
        filters: Some(FiltersSnapshot {
            snapshot_ids: Some(snapshots.iter().map(|s| s.snapshot_id.clone()).collect()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn root_filter(root_snapshot: &str) -> ReadImagesRequest {
    ReadImagesRequest {
        filters: Some(FiltersImage {
            block_device_mapping_snapshot_ids: Some(vec![root_snapshot.to_string()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn name_filter(name: &str) -> ReadImagesRequest {
    ReadImagesRequest {
        filters: Some(FiltersImage {
            image_names: Some(vec![name.to_string()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn image_filter(image_id: &str) -> ReadImagesRequest {
    ReadImagesRequest {
        filters: Some(FiltersImage {
            image_ids: Some(vec![image_id.to_string()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `CreateImage{FileLocation}` (`--via manifest`): the name and description; the rest comes
/// from the export manifest. `BootModes` is left out, as the manifest has none (outscale.md).
fn manifest_image_request(req: &PublishRequest, cx: &Context, url: String) -> CreateImageRequest {
    CreateImageRequest {
        image_name: Some(cx.name.clone()),
        description: req
            .description
            .clone()
            .or_else(|| cx.manifest.image.description.clone()),
        file_location: Some(url),
        ..Default::default()
    }
}

/// Publishes the bundle as an OMI through `api`; see the module documentation. `cancel`, set
/// by a Ctrl-C handler, stops the run between two steps (and the upload within one).
pub fn publish(
    req: &PublishRequest,
    api: &Client,
    progress: &Progress,
    cancel: Option<&'static AtomicBool>,
) -> Result<Published> {
    let cx = Context::new(req)?;
    // One publish of a bundle to a location at a time, for the whole run: two would each
    // create and clean up snapshots the other counts on. The lock is released by the kernel
    // when the process ends, however it ends. (Another name than the upload's own lock, which
    // the export takes inside this one.)
    let state_dir = package::state_dir(req.state_dir.as_deref())?;
    let _lock = match &state_dir {
        Some(dir) => Some(package::lock_location(
            dir,
            &s3::Location {
                bucket: cx.location.bucket.clone(),
                key: format!("{}#publish", cx.location.key),
            },
        )?),
        None => None,
    };
    let s3c = {
        let mut c = s3::Client::new(&req.s3, &req.location.bucket)?;
        if let Some(flag) = cancel {
            c.set_cancel(flag);
        }
        c
    };
    // 0. This bundle already published under this name: finish what may be missing (the
    // wait, tags and permissions are idempotent) and upload nothing.
    check_cancel(cancel)?;
    if let Some(image) = read_images(api, cx.published_filter())?
        .into_iter()
        .find(|i| !image_gone(i))
    {
        let image_id = image.image_id.clone().ok_or(Error::Missing {
            op: "ReadImages",
            field: "Image.ImageId",
        })?;
        let snapshots = image_snapshots(&image, false);
        finish_image(req, api, cancel, &cx, &image_id, &snapshots)?;
        return Ok(Published {
            image_id,
            image_created: false,
            snapshots,
            uploaded: false,
            objects_deleted: delete_package(req, &cx, &s3c)?,
            api: api.totals(),
        });
    }
    match req.via {
        Via::Snapshots => via_snapshots(req, api, progress, cancel, &cx, &s3c, state_dir),
        Via::Manifest => via_manifest(req, api, cancel, &cx, &s3c, state_dir),
    }
}

/// The export of the bundle into the bucket, for as long as the import may take.
///
/// An upload stopped half-way (Ctrl-C, a refusal) has its open uploads aborted and the objects
/// it finished removed, unless `keep_failed` (then a re-run resumes the upload from them).
fn upload(
    req: &PublishRequest,
    cx: &Context,
    state_dir: Option<PathBuf>,
    cancel: Option<&'static AtomicBool>,
) -> Result<package::Report> {
    let export = package::Request {
        bundle: req.bundle.clone(),
        target: package::Target::S3 {
            location: cx.location.clone(),
            config: req.s3.clone(),
        },
        format: Some(DiskFormat::Qcow2),
        expires: presign_lifetime(req),
        threads: req.threads.max(1),
        level: req.level,
        force: false,
        // A killed run's uploads are continued by the next; a failed or interrupted one's are
        // aborted and its objects removed by the export itself, unless `keep_failed`.
        resume: state_dir.is_some(),
        abort_on_error: !req.keep_failed,
        part_size: req.part_size,
        state_dir,
        cancel,
    };
    package::export(&export).map_err(|e| {
        if e.is_interrupted() {
            Error::Interrupted
        } else {
            e.into()
        }
    })
}

/// Pre-signed for as long as the import may take: the wait's time-out and an hour of margin,
/// within the 7 days SigV4 allows.
fn presign_lifetime(req: &PublishRequest) -> Duration {
    req.timeout
        .saturating_add(Duration::from_secs(3600))
        .min(s3::MAX_PRESIGN)
}

/// Deletes the package's objects, best effort (after a failure: the error that stopped the
/// run is the one to report).
fn remove_objects(cx: &Context, s3c: &s3::Client) {
    for key in package_keys(cx) {
        let _ = s3c.delete(&key);
    }
}

/// Waits for the image, then tags it and its snapshots, then sets its permissions.
fn finish_image(
    req: &PublishRequest,
    api: &Client,
    cancel: Option<&AtomicBool>,
    cx: &Context,
    image_id: &str,
    snapshots: &[PublishedSnapshot],
) -> Result<()> {
    wait_image(req, api, cancel, image_id, cx.deadline)?;
    let tag = |r: CreateTagsRequest| -> Result<()> {
        let _: (CreateTagsResponse, _) = api.call("CreateTags", &r, Retry::Safe)?;
        Ok(())
    };
    // The snapshots first: the image's bundle tag is what marks the whole as done.
    for s in snapshots {
        let target = cx.targets.iter().find(|t| t.device == s.device_name);
        let digest = target.map_or(String::new(), |t| t.digest.clone());
        tag(cx.tags_request(req, &s.snapshot_id, &digest, target))?;
    }
    if let Some(update) = permissions_request(req, image_id) {
        let _: (UpdateImageResponse, _) = api.call("UpdateImage", &update, Retry::Safe)?;
    }
    tag(cx.tags_request(req, image_id, &cx.root_digest, None))
}

/// The snapshots an image maps, as [`PublishedSnapshot`]s (no token: found, not created).
fn image_snapshots(image: &Image, created: bool) -> Vec<PublishedSnapshot> {
    image
        .block_device_mappings
        .iter()
        .flatten()
        .filter_map(|b| {
            Some(PublishedSnapshot {
                device_name: b.device_name.clone()?,
                snapshot_id: b.bsu.as_ref()?.snapshot_id.clone()?,
                client_token: String::new(),
                created,
            })
        })
        .collect()
}

/// `--via snapshots`; see the module documentation.
fn via_snapshots(
    req: &PublishRequest,
    api: &Client,
    progress: &Progress,
    cancel: Option<&'static AtomicBool>,
    cx: &Context,
    s3c: &s3::Client,
    state_dir: Option<PathBuf>,
) -> Result<Published> {
    let endpoint = api.endpoint().clone();
    let targets = &cx.targets;

    // 1. Lookup by token: live snapshots are reused; failed ones are deleted and their slot
    // skipped.
    let mut found: Vec<Option<Snapshot>> = Vec::with_capacity(targets.len());
    let mut slots: Vec<u32> = Vec::with_capacity(targets.len());
    for t in targets {
        check_cancel(cancel)?;
        let all: Vec<String> = (0..TOKEN_SLOTS)
            .map(|n| cx.token(&endpoint, t, n))
            .collect();
        let snaps = read_snapshots(api, token_filter(all.clone()))?;
        let mut live = None;
        let mut next = 0;
        for s in snaps {
            let slot = all
                .iter()
                .position(|tok| s.client_token.as_deref() == Some(tok.as_str()));
            let Some(slot) = slot else { continue };
            if is_failed(&s) {
                next = next.max(slot as u32 + 1);
                // One already being deleted needs nothing more.
                if let (Some(id), false) = (&s.snapshot_id, s.state.as_deref() == Some("deleting"))
                {
                    delete_snapshot(api, id)?;
                }
            } else if live.is_none() {
                live = Some(s);
            }
        }
        if live.is_none() && next >= TOKEN_SLOTS {
            return Err(Error::TooManyFailures {
                device: t.device.clone(),
            });
        }
        found.push(live);
        slots.push(next);
    }

    // 2. Upload and pre-sign, unless every disk already has its snapshot.
    let needed = found.iter().any(Option::is_none);
    let mut urls: Vec<Option<String>> = vec![None; targets.len()];
    let mut uploaded = false;
    if needed {
        // A package complete in its place (SHA256SUMS goes up last) is this bundle's: the
        // place is named by the SHA-256 of its manifest. Finished uploads are not sent again
        // (a run killed between the upload and its snapshots).
        let present: Vec<String> = s3c
            .list(&cx.location.key)?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        if !package_keys(cx).iter().all(|k| present.contains(k)) {
            upload(req, cx, state_dir.clone(), cancel)?;
            uploaded = true;
        }
        let expires = presign_lifetime(req);
        for (url, t) in urls.iter_mut().zip(targets) {
            match s3c.presign_get(&t.object, expires) {
                Ok(u) => *url = Some(u),
                Err(e) => {
                    if !req.keep_failed {
                        remove_objects(cx, s3c);
                    }
                    return Err(e.into());
                }
            }
        }
    }

    // 3. Snapshots: create the missing ones, then wait for all.
    let mut created: Vec<String> = Vec::new();
    // The image this run created, removed with its snapshots when the run then fails.
    let mut image_made: Option<String> = None;
    let run = (|| -> Result<Published> {
        let mut snapshots = Vec::with_capacity(targets.len());
        for (((t, live), slot), url) in targets.iter().zip(&found).zip(&slots).zip(&urls) {
            check_cancel(cancel)?;
            let token = match live {
                Some(s) => s
                    .client_token
                    .clone()
                    .unwrap_or_else(|| cx.token(&endpoint, t, *slot)),
                None => cx.token(&endpoint, t, *slot),
            };
            let (id, was_created) = match live.as_ref().and_then(|s| s.snapshot_id.clone()) {
                Some(id) => (id, false),
                None => {
                    let url = url.clone().ok_or_else(|| {
                        Error::Invalid(format!("{}: no pre-signed URL", t.device))
                    })?;
                    let create = cx.snapshot_request(t, token.clone(), url)?;
                    // Safe: the ClientToken makes a resent request return the same snapshot.
                    let (resp, _): (CreateSnapshotResponse, _) =
                        api.call("CreateSnapshot", &create, Retry::Safe)?;
                    let id = resp
                        .snapshot
                        .and_then(|s| s.snapshot_id)
                        .ok_or(Error::Missing {
                            op: "CreateSnapshot",
                            field: "Snapshot.SnapshotId",
                        })?;
                    created.push(id.clone());
                    (id, true)
                }
            };
            snapshots.push(PublishedSnapshot {
                device_name: t.device.clone(),
                snapshot_id: id,
                client_token: token,
                created: was_created,
            });
        }
        wait_snapshots(req, api, progress, cancel, &snapshots, cx.deadline)?;

        // 4. The image.
        let root = snapshots
            .iter()
            .find(|s| s.device_name == cx.manifest.image.root_device_name)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "no disk for the root device {}",
                    cx.manifest.image.root_device_name
                ))
            })?;
        // A failed image of an earlier run maps these snapshots and holds the name: it goes
        // (the snapshots exist for this bundle only, so it is ours).
        let (image_id, image_created) = match find_image(api, &root.snapshot_id, true)? {
            Some(id) => (id, false),
            None => {
                check_cancel(cancel)?;
                let create = image_request(req, &cx.manifest, &snapshots)?;
                match api.call::<_, CreateImageResponse>("CreateImage", &create, Retry::Never) {
                    Ok((resp, _)) => (
                        resp.image.and_then(|i| i.image_id).ok_or(Error::Missing {
                            op: "CreateImage",
                            field: "Image.ImageId",
                        })?,
                        true,
                    ),
                    // A lost answer may hide an image created: look before anything else.
                    Err(e) if e.outcome_unknown() => {
                        match find_image(api, &root.snapshot_id, false)? {
                            Some(id) => (id, true),
                            None => return Err(Error::ImageOutcomeUnknown(Box::new(e))),
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        if image_created {
            image_made = Some(image_id.clone());
        }

        // 5. Wait, tags and permissions.
        finish_image(req, api, cancel, cx, &image_id, &snapshots)?;
        Ok(Published {
            image_id,
            image_created,
            snapshots,
            uploaded,
            objects_deleted: Vec::new(),
            api: Totals::default(),
        })
    })();
    let mut published = match run {
        Ok(p) => p,
        Err(e) => {
            if !req.keep_failed {
                // Best effort: the error that stopped the run is the one to report. After an
                // unknown CreateImage outcome the snapshots are kept: an image that appears
                // later maps them, and the next run finds both.
                if !matches!(e, Error::ImageOutcomeUnknown(_)) {
                    // The image first: the API refuses to delete a snapshot an image maps.
                    if let Some(id) = &image_made {
                        let _ = delete_image(api, id);
                    }
                    for id in &created {
                        let _ = delete_snapshot(api, id);
                    }
                }
                if needed {
                    remove_objects(cx, s3c);
                }
            }
            return Err(e);
        }
    };

    // 6. The objects: the disks and the package's side files.
    published.objects_deleted = delete_package(req, cx, s3c)?;
    published.api = api.totals();
    Ok(published)
}

/// `--via manifest`: the package uploaded, then `CreateImage{FileLocation}` with its
/// manifest's pre-signed URL; the API imports the disks. `CreateImage` has no token, so the
/// image is looked up by name before (with the bundle's tag, in [`publish`]) and, after a lost
/// answer, by name alone before anything else.
fn via_manifest(
    req: &PublishRequest,
    api: &Client,
    cancel: Option<&'static AtomicBool>,
    cx: &Context,
    s3c: &s3::Client,
    state_dir: Option<PathBuf>,
) -> Result<Published> {
    // Any live image of this name, but this bundle's (found before, in `publish`).
    let by_name = || -> Result<Option<String>> {
        Ok(read_images(api, name_filter(&cx.name))?
            .into_iter()
            .filter(|i| !image_gone(i))
            .find_map(|i| i.image_id))
    };
    // Before the upload: an image that holds the name is not this bundle's (that one carries
    // the bundle's tag from the moment it is made, below, and `publish` found none), so it is
    // neither adopted nor raced; the API would refuse the name anyway.
    check_cancel(cancel)?;
    if let Some(other) = by_name()? {
        return Err(Error::Invalid(format!(
            "an image named {:?} exists ({other}) and is not this bundle's; choose another --name",
            cx.name
        )));
    }
    let report = upload(req, cx, state_dir.clone(), cancel)?;
    let mut made: Option<String> = None;
    let run = (|| -> Result<String> {
        let url = report.manifest_url.clone().ok_or(Error::Missing {
            op: "export",
            field: "the manifest's pre-signed URL",
        })?;
        check_cancel(cancel)?;
        let create = manifest_image_request(req, cx, url);
        let id = match api.call::<_, CreateImageResponse>("CreateImage", &create, Retry::Never) {
            Ok((resp, _)) => resp.image.and_then(|i| i.image_id).ok_or(Error::Missing {
                op: "CreateImage",
                field: "Image.ImageId",
            })?,
            // The name was free before: an image that holds it now is the one this call made.
            Err(e) if e.outcome_unknown() => match by_name()? {
                Some(id) => id,
                None => return Err(Error::ImageOutcomeUnknown(Box::new(e))),
            },
            Err(e) => return Err(e.into()),
        };
        made = Some(id.clone());
        // Tagged at once, not when done: a run killed from here on is found by the next one
        // (in `publish`, by name and tag), which waits for the image and finishes.
        let tags = cx.tags_request(req, &id, &cx.root_digest, None);
        let _: (CreateTagsResponse, _) = api.call("CreateTags", &tags, Retry::Safe)?;
        Ok(id)
    })();
    let (image_id, image_created) = match run {
        Ok(id) => (id, true),
        Err(e) => {
            if !req.keep_failed {
                if let Some(id) = &made {
                    let _ = delete_image(api, id);
                }
                // After an unknown outcome an import may be reading the objects: they stay,
                // for the image that may appear (and the next run, which cleans up).
                if !matches!(e, Error::ImageOutcomeUnknown(_)) {
                    remove_objects(cx, s3c);
                }
            }
            return Err(e);
        }
    };
    let finish = (|| -> Result<Vec<PublishedSnapshot>> {
        wait_image(req, api, cancel, &image_id, cx.deadline)?;
        let image = read_images(api, image_filter(&image_id))?
            .into_iter()
            .next()
            .ok_or(Error::Missing {
                op: "ReadImages",
                field: "the image",
            })?;
        let snapshots = image_snapshots(&image, true);
        finish_image(req, api, cancel, cx, &image_id, &snapshots)?;
        Ok(snapshots)
    })();
    let snapshots = match finish {
        Ok(s) => s,
        Err(e) => {
            if !req.keep_failed {
                // The image's import reads the objects: they go only when it has failed (or
                // this run was stopped), never under an import still running.
                if matches!(e, Error::ImageFailed { .. }) {
                    if image_created {
                        let _ = delete_image(api, &image_id);
                    }
                    remove_objects(cx, s3c);
                } else if matches!(e, Error::Interrupted) && image_created {
                    let _ = delete_image(api, &image_id);
                    remove_objects(cx, s3c);
                }
            }
            return Err(e);
        }
    };
    let objects_deleted = delete_package(req, cx, s3c)?;
    Ok(Published {
        image_id,
        image_created,
        snapshots,
        uploaded: true,
        objects_deleted,
        api: api.totals(),
    })
}

/// After a success, deletes the package's objects that are in the bucket (unless
/// `keep_objects`), whichever run uploaded them: a run killed after its snapshots were made
/// leaves them to the next, which finds the snapshots and uploads nothing. Returns the keys
/// deleted.
fn delete_package(req: &PublishRequest, cx: &Context, s3c: &s3::Client) -> Result<Vec<String>> {
    if req.keep_objects {
        return Ok(Vec::new());
    }
    let listed: Vec<String> = s3c
        .list(&cx.location.key)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut deleted = Vec::new();
    for key in package_keys(cx) {
        if listed.contains(&key) {
            s3c.delete(&key)?;
            deleted.push(key);
        }
    }
    Ok(deleted)
}

/// The keys of the package `export` writes: the disk objects and the side files.
fn package_keys(cx: &Context) -> Vec<String> {
    let mut keys: Vec<String> = cx.targets.iter().map(|t| t.object.clone()).collect();
    for side in [EXPORT_MANIFEST, MKOMI_MANIFEST, SUMS_FILE] {
        keys.push(cx.location.join(side));
    }
    keys
}

/// Whether a snapshot's import failed (the spec's `error`; the fake also says `failed`).
fn is_failed(s: &Snapshot) -> bool {
    matches!(s.state.as_deref(), Some("error" | "failed" | "deleting"))
}

/// Stops when Ctrl-C was pressed.
fn check_cancel(cancel: Option<&AtomicBool>) -> Result<()> {
    match cancel {
        Some(c) if c.load(Ordering::Relaxed) => Err(Error::Interrupted),
        _ => Ok(()),
    }
}

/// `ReadSnapshots` with `req`'s filters, every page.
fn read_snapshots(api: &Client, mut req: ReadSnapshotsRequest) -> Result<Vec<Snapshot>> {
    let mut out = Vec::new();
    // Bounded: a filter by token or ID matches a few snapshots; 100 pages is far beyond.
    for _ in 0..100 {
        let (resp, _): (ReadSnapshotsResponse, _) = api.call("ReadSnapshots", &req, Retry::Safe)?;
        out.extend(resp.snapshots.unwrap_or_default());
        match resp.next_page_token.filter(|t| !t.is_empty()) {
            Some(t) => req.next_page_token = Some(t),
            None => break,
        }
    }
    Ok(out)
}

/// `DeleteSnapshot`.
fn delete_snapshot(api: &Client, id: &str) -> Result<()> {
    let req = DeleteSnapshotRequest {
        snapshot_id: id.to_string(),
        ..Default::default()
    };
    let _: (DeleteSnapshotResponse, _) = api.call("DeleteSnapshot", &req, Retry::Safe)?;
    Ok(())
}

/// Polls `ReadSnapshots` until every snapshot is `completed`, with backoff and the request's
/// time-out; a progress bar per snapshot fed by the API's `Progress` (percent).
fn wait_snapshots(
    req: &PublishRequest,
    api: &Client,
    progress: &Progress,
    cancel: Option<&AtomicBool>,
    snapshots: &[PublishedSnapshot],
    deadline: Instant,
) -> Result<()> {
    let ids: Vec<String> = snapshots.iter().map(|s| s.snapshot_id.clone()).collect();
    let tasks: Vec<_> = snapshots
        .iter()
        .map(|s| {
            let t = progress.task(&s.device_name);
            t.set_length(100);
            t
        })
        .collect();
    let mut shown = vec![0u64; snapshots.len()];
    let mut delay = req.poll_first;
    loop {
        check_cancel(cancel)?;
        let snaps = read_snapshots(api, ids_filter(snapshots))?;
        let mut done = 0;
        for (i, want) in snapshots.iter().enumerate() {
            let Some(s) = snaps
                .iter()
                .find(|s| s.snapshot_id.as_deref() == Some(want.snapshot_id.as_str()))
            else {
                continue;
            };
            let pct = u64::try_from(s.progress.unwrap_or(0).clamp(0, 100)).unwrap_or(0);
            if let (Some(task), Some(old)) = (tasks.get(i), shown.get_mut(i))
                && pct > *old
            {
                task.advance(pct - *old);
                *old = pct;
            }
            if is_failed(s) {
                return Err(Error::SnapshotFailed {
                    device: want.device_name.clone(),
                    snapshot: want.snapshot_id.clone(),
                    state: s.state.clone().unwrap_or_default(),
                    reason: None,
                });
            }
            if s.state.as_deref() == Some("completed") {
                done += 1;
            }
        }
        if done == snapshots.len() {
            tasks.iter().for_each(|t| t.finish());
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("snapshots {}", ids.join(", ")),
                secs: req.timeout,
            });
        }
        std::thread::sleep(delay);
        delay = delay.saturating_mul(2).min(req.poll_max);
    }
}

/// The image of this bundle and target, if any: the first live image that maps
/// `root_snapshot` (its snapshots exist for nothing else). With `purge`, failed ones that map
/// it are deleted on the way (an earlier run's, holding the name); one `ReadImages` either way.
fn find_image(api: &Client, root_snapshot: &str, purge: bool) -> Result<Option<String>> {
    let mut live = None;
    for i in read_images(api, root_filter(root_snapshot))? {
        match (&i.image_id, i.state.as_deref()) {
            (Some(id), Some("failed")) if purge => delete_image(api, id)?,
            (Some(id), _) if !image_gone(&i) && live.is_none() => live = Some(id.clone()),
            _ => {}
        }
    }
    Ok(live)
}

/// Whether an image is failed or on its way out (so neither reused nor waited for).
fn image_gone(i: &Image) -> bool {
    matches!(
        i.state.as_deref(),
        Some("failed" | "deleted" | "deregistered")
    )
}

/// `ReadImages` with `req`'s filters, every page.
fn read_images(api: &Client, mut req: ReadImagesRequest) -> Result<Vec<Image>> {
    let mut out = Vec::new();
    // Bounded: a filter by name, tag, snapshot or ID matches a few images.
    for _ in 0..100 {
        let (resp, _): (ReadImagesResponse, _) = api.call("ReadImages", &req, Retry::Safe)?;
        out.extend(resp.images.unwrap_or_default());
        match resp.next_page_token.filter(|t| !t.is_empty()) {
            Some(t) => req.next_page_token = Some(t),
            None => break,
        }
    }
    Ok(out)
}

/// `DeleteImage`.
fn delete_image(api: &Client, id: &str) -> Result<()> {
    let req = DeleteImageRequest {
        image_id: id.to_string(),
        ..Default::default()
    };
    let _: (DeleteImageResponse, _) = api.call("DeleteImage", &req, Retry::Safe)?;
    Ok(())
}

/// `CreateImage` from the manifest's `Image`, with the overrides and the snapshots.
fn image_request(
    req: &PublishRequest,
    m: &Manifest,
    snapshots: &[PublishedSnapshot],
) -> Result<CreateImageRequest> {
    let mut mappings = Vec::with_capacity(m.image.block_device_mappings.len());
    for b in &m.image.block_device_mappings {
        let snap = snapshots
            .iter()
            .find(|s| s.device_name == b.device_name)
            .ok_or_else(|| Error::Invalid(format!("no disk for the mapping {}", b.device_name)))?;
        mappings.push(BlockDeviceMappingImage {
            device_name: Some(b.device_name.clone()),
            bsu: Some(BsuToCreate {
                snapshot_id: Some(snap.snapshot_id.clone()),
                volume_size: Some(i64::try_from(b.bsu.volume_size).map_err(|_| {
                    Error::Invalid(format!("{}: VolumeSize too large", b.device_name))
                })?),
                volume_type: Some(b.bsu.volume_type.name().to_string()),
                iops: b.bsu.iops.map(i64::from),
                delete_on_vm_deletion: Some(b.bsu.delete_on_vm_deletion),
            }),
            virtual_device_name: None,
        });
    }
    let architecture = serde_json::to_value(m.image.architecture)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string));
    let boot_modes = m
        .image
        .boot_modes
        .iter()
        .filter_map(|b| {
            serde_json::to_value(b)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
        })
        .collect::<Vec<_>>();
    Ok(CreateImageRequest {
        image_name: Some(
            req.name
                .clone()
                .unwrap_or_else(|| m.image.image_name.clone()),
        ),
        description: req
            .description
            .clone()
            .or_else(|| m.image.description.clone()),
        architecture,
        boot_modes: (!boot_modes.is_empty()).then_some(boot_modes),
        root_device_name: Some(m.image.root_device_name.clone()),
        block_device_mappings: Some(mappings),
        ..Default::default()
    })
}

/// Polls `ReadImages` until the image is `available`.
fn wait_image(
    req: &PublishRequest,
    api: &Client,
    cancel: Option<&AtomicBool>,
    image_id: &str,
    deadline: Instant,
) -> Result<()> {
    let read = ReadImagesRequest {
        filters: Some(FiltersImage {
            image_ids: Some(vec![image_id.to_string()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut delay = req.poll_first;
    loop {
        check_cancel(cancel)?;
        let (resp, _): (ReadImagesResponse, _) = api.call("ReadImages", &read, Retry::Safe)?;
        let image = resp.images.unwrap_or_default().into_iter().next();
        match image.as_ref().and_then(|i| i.state.as_deref()) {
            Some("available") => return Ok(()),
            Some(state @ ("failed" | "deleted" | "deregistered")) => {
                return Err(Error::ImageFailed {
                    image: image_id.to_string(),
                    state: state.to_string(),
                    reason: image
                        .as_ref()
                        .and_then(|i| i.state_comment.as_ref())
                        .and_then(|c| c.state_message.clone()),
                });
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("image {image_id}"),
                secs: req.timeout,
            });
        }
        std::thread::sleep(delay);
        delay = delay.saturating_mul(2).min(req.poll_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stable_distinct_and_short() {
        let a = snapshot_token("sha256-4m:ab", "/dev/sda1", "eu-west-2", "u", "b/k", GIB, 0);
        assert_eq!(
            a,
            snapshot_token("sha256-4m:ab", "/dev/sda1", "eu-west-2", "u", "b/k", GIB, 0)
        );
        assert_eq!(a.len(), 46);
        assert!(a.starts_with("mkomi-"));
        for other in [
            snapshot_token("sha256-4m:ac", "/dev/sda1", "eu-west-2", "u", "b/k", GIB, 0),
            snapshot_token("sha256-4m:ab", "/dev/sdb", "eu-west-2", "u", "b/k", GIB, 0),
            snapshot_token("sha256-4m:ab", "/dev/sda1", "eu-west-1", "u", "b/k", GIB, 0),
            snapshot_token(
                "sha256-4m:ab",
                "/dev/sda1",
                "eu-west-2",
                "u",
                "b/k",
                2 * GIB,
                0,
            ),
            snapshot_token("sha256-4m:ab", "/dev/sda1", "eu-west-2", "u", "b/k", GIB, 1),
        ] {
            assert_ne!(a, other);
        }
    }

    #[test]
    fn snapshot_size_is_whole_gib() {
        assert_eq!(snapshot_size(512), GIB);
        assert_eq!(snapshot_size(GIB), GIB);
        assert_eq!(snapshot_size(GIB + 512), 2 * GIB);
    }
}
