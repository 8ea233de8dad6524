//! Images: registered from snapshots (or from volumes, snapshotted first), shared with accounts,
//! copied, written out as bundles, exported and imported, deregistered and deleted.

use super::snapshot::{self, Stage};
use super::{BLOB_FORMAT, Blob, Error, Result, Staged, Store, Work, io, new_id, now};
use crate::audit::image::Policy;
use crate::bundle::checks::Checks;
use crate::bundle::register::{self, Volume};
use crate::export::{import as import_pkg, package};
use crate::format::{self, OpenOptions};
use crate::manifest::{
    self, Architecture, AuditSummary, BlockDeviceMapping, BootMode, Bsu, Disk, Image, Inspection,
    LaunchRequirements, Manifest, VolumeType, rules,
};
use crate::progress::Progress;
use crate::staging::{Renamed, Target};
use crate::util::hex;
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Where a volume's content comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// A snapshot of the store.
    Snapshot(String),
    /// A disk image, snapshotted first.
    Path(PathBuf),
}

impl Content {
    /// `snap-…` is a snapshot; anything else a path.
    pub fn parse(s: &str) -> Content {
        if super::is_snapshot_id(s) {
            Content::Snapshot(s.to_owned())
        } else {
            Content::Path(PathBuf::from(s))
        }
    }

    /// The content a volume names.
    pub fn of(v: &Volume) -> Content {
        Content::parse(&v.source.to_string_lossy())
    }
}

/// What `image create` registers.
#[derive(Clone, Debug)]
pub struct CreateRequest {
    /// `ImageName`; from the root's file name when absent.
    pub name: Option<String>,
    /// `Description`.
    pub description: Option<String>,
    /// `Architecture`; detected when absent.
    pub architecture: Option<Architecture>,
    /// `BootModes`; detected when empty.
    pub boot_modes: Vec<BootMode>,
    /// Checks of the declared fields against the root disk.
    pub checks: Checks,
    /// The security audit.
    pub audit: Policy,
    /// The root volume; its `source` is a disk image, or names a snapshot (`snap-…`).
    pub root: Volume,
    /// Further volumes, likewise.
    pub extra: Vec<Volume>,
    /// How sources are opened.
    pub open: OpenOptions,
}

/// `PermissionsToLaunch`, as Outscale's Image has it.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Permissions {
    /// Everyone may launch it.
    pub global_permission: bool,
    /// The accounts that may launch it.
    pub account_ids: Vec<String>,
}

/// A tag.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
}

/// A mapping as the store shows it: Outscale's `BlockDeviceMappingImage`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Mapping {
    /// `DeviceName`.
    pub device_name: String,
    /// `Bsu`.
    pub bsu: MappingBsu,
}

/// `BsuToCreate` with its snapshot.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MappingBsu {
    /// `SnapshotId`.
    pub snapshot_id: String,
    /// `VolumeSize` in GiB.
    pub volume_size: u64,
    /// `VolumeType`.
    pub volume_type: VolumeType,
    /// `Iops`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops: Option<u32>,
    /// `DeleteOnVmDeletion`.
    pub delete_on_vm_deletion: bool,
}

/// What the store keeps of an image beyond Outscale's fields: the evidence and the audit.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Extra {
    /// What was found inside the root disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inspection: Option<Inspection>,
    /// What an instance needs (Windows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_requirements: Option<LaunchRequirements>,
    /// The security audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditSummary>,
    /// What `build` did to its trees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<crate::manifest::BuildRecord>,
}

/// An image as `image list` and `image show` report it: Outscale's `Image` fields, plus what
/// mkomi recorded.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageInfo {
    /// `ami-…`.
    pub image_id: String,
    /// `ImageName`.
    pub image_name: String,
    /// `Description`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `Architecture` (absent only while pending).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<Architecture>,
    /// `State`: `pending`, `available` or `failed`.
    pub state: String,
    /// `BootModes`.
    pub boot_modes: Vec<BootMode>,
    /// `RootDeviceName`.
    pub root_device_name: String,
    /// `BlockDeviceMappings`, root first.
    pub block_device_mappings: Vec<Mapping>,
    /// `PermissionsToLaunch`.
    pub permissions_to_launch: Permissions,
    /// `Tags`.
    pub tags: Vec<Tag>,
    /// `CreationDate`.
    pub creation_date: String,
    /// `RootDeviceType`: always `bsu`.
    pub root_device_type: &'static str,
    /// `ImageType`: always `machine`.
    pub image_type: &'static str,
    /// The image this one is a copy of (mkomi's; shown by [`Shown`]).
    #[serde(skip)]
    pub copied_from: Option<String>,
    /// Evidence and audit (mkomi's; shown by [`Shown`]).
    #[serde(skip)]
    pub extra: Extra,
}

/// An image as `image show`, `create`, `update`, `copy` and `import` print it: `Image` as
/// Outscale's CreateImage and UpdateImage answer (it validates against Outscale's schema),
/// beside `Mkomi`, what mkomi keeps of it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Shown {
    /// Outscale's fields.
    pub image: ImageInfo,
    /// mkomi's.
    pub mkomi: Mkomi,
}

/// What mkomi keeps of an image beyond Outscale's fields.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Mkomi {
    /// The image this one is a copy of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copied_from: Option<String>,
    /// Evidence and audit.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Images as `image list` prints them: `Images` as Outscale's ReadImages answers.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Listed {
    /// Outscale's fields.
    pub images: Vec<ImageInfo>,
}

impl From<ImageInfo> for Shown {
    fn from(image: ImageInfo) -> Shown {
        let mkomi = Mkomi {
            copied_from: image.copied_from.clone(),
            extra: image.extra.clone(),
        };
        Shown { image, mkomi }
    }
}

fn enum_str<T: Serialize>(v: T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn parse_enum<T: for<'de> Deserialize<'de>>(s: &str) -> rusqlite::Result<T> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Inserts a pending image: listed as `pending` while it is made, the work directory's lock
/// telling whether its maker still runs.
fn begin(store: &mut Store, work: &Work, name: &str, root_device: &str) -> Result<String> {
    let token = work.token.clone();
    store.write(|tx| {
        let id = new_id(tx, "ami", "images")?;
        tx.execute(
            "INSERT INTO images (id, name, root_device_name, state, creation_date, work)
             VALUES (?1, ?2, ?3, 'pending', ?4, ?5)",
            rusqlite::params![id, name, root_device, now(), token],
        )?;
        Ok(id)
    })
}

/// Ends the making of image `id`: shown once made, removed (with its work) when it failed.
fn settle(store: &mut Store, work: Work, id: &str, made: Result<()>) -> Result<ImageInfo> {
    match made {
        Ok(()) => {
            drop(work);
            show(store, id)
        }
        Err(e) => {
            // Removed while its work is still locked: no `check` takes it for a crash meanwhile.
            abandon(store, id);
            drop(work);
            Err(e)
        }
    }
}

/// Removes a pending image whose making failed.
fn abandon(store: &mut Store, id: &str) {
    let _ = store.write(|tx| {
        tx.execute(
            "DELETE FROM images WHERE id = ?1 AND state = 'pending'",
            [id],
        )?;
        Ok(())
    });
}

/// One volume on its way into an image.
struct Planned {
    spec: Volume,
    stage: Stage,
    /// The snapshot it already is, or `None` for new data.
    snapshot: Option<String>,
    origin: String,
}

/// Records the image: blobs, new snapshots, mappings, fields; `available` at the commit.
fn finish(
    tx: &rusqlite::Transaction<'_>,
    root: &Path,
    sync: bool,
    id: &str,
    image: &Image,
    volumes: &[Planned],
    extra: &Extra,
) -> Result<()> {
    for (position, (v, mapping)) in volumes.iter().zip(&image.block_device_mappings).enumerate() {
        // A snapshot deleted meanwhile is named as such (before its blob is looked for).
        if let Some(s) = &v.snapshot {
            let there: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM snapshots WHERE id = ?1)",
                [s],
                |r| r.get(0),
            )?;
            if !there {
                return Err(Error::NotFound(s.clone(), "snapshot"));
            }
        }
        v.stage.commit(tx, root, sync)?;
        let snap = match &v.snapshot {
            Some(s) => s.clone(),
            None => snapshot::insert(
                tx,
                v.stage.blob(),
                Some(&format!("{} of {id}", v.spec.device)),
                &v.origin,
            )?,
        };
        insert_mapping(tx, id, position, mapping, &snap)?;
    }
    for m in &image.boot_modes {
        tx.execute(
            "INSERT INTO boot_modes (image_id, mode) VALUES (?1, ?2)",
            [id, &enum_str(m)],
        )?;
    }
    let extra = serde_json::to_string(extra).unwrap_or_default();
    let changed = tx.execute(
        "UPDATE images SET name = ?2, description = ?3, architecture = ?4, extra = ?5,
                state = 'available', work = NULL
         WHERE id = ?1 AND state = 'pending'",
        rusqlite::params![
            id,
            image.image_name,
            image.description,
            enum_str(image.architecture),
            extra
        ],
    )?;
    if changed != 1 {
        return Err(Error::Refused {
            id: id.to_owned(),
            reason: "no longer pending: `mkomi store check` marked it failed meanwhile".into(),
        });
    }
    Ok(())
}

fn insert_mapping(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    position: usize,
    m: &BlockDeviceMapping,
    snapshot: &str,
) -> Result<()> {
    tx.execute(
        "INSERT INTO block_device_mappings (image_id, position, device_name, snapshot_id,
             volume_size, volume_type, iops, delete_on_vm_deletion)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        rusqlite::params![
            id,
            position as i64,
            m.device_name,
            snapshot,
            m.bsu.volume_size,
            enum_str(m.bsu.volume_type),
            m.bsu.iops,
            m.bsu.delete_on_vm_deletion
        ],
    )?;
    Ok(())
}

/// `image create`: registers an image from snapshots, or from disk images snapshotted on the
/// way. The disks are inspected and audited as `register` does, from the stored data.
pub fn create(
    store: &mut Store,
    req: &CreateRequest,
    progress: &Progress,
    cancel: Option<&AtomicBool>,
) -> Result<ImageInfo> {
    let rreq = register::Request {
        output: store.root().join(super::WORK),
        force: false,
        format: BLOB_FORMAT,
        name: req.name.clone(),
        description: req.description.clone(),
        architecture: req.architecture,
        boot_modes: req.boot_modes.clone(),
        checks: req.checks,
        audit: req.audit,
        root: req.root.clone(),
        extra: req.extra.clone(),
        open: req.open.clone(),
        creation_epoch: 0,
        sync: store.sync,
        build: None,
    };
    register::check_fields(&rreq)?;
    let name = register::image_name(&rreq)?;
    let specs: Vec<&Volume> = std::iter::once(&req.root).chain(&req.extra).collect();
    // Snapshots named must exist before anything is made.
    for s in &specs {
        if let Content::Snapshot(id) = Content::of(s) {
            store.snapshot_blob(&id)?;
        }
    }
    let work = store.work()?;
    let id = begin(store, &work, &name, &req.root.device)?;
    let made = make(store, &work, &id, &rreq, &specs, progress, cancel);
    settle(store, work, &id, made)
}

fn make(
    store: &mut Store,
    work: &Work,
    id: &str,
    rreq: &register::Request,
    specs: &[&Volume],
    progress: &Progress,
    cancel: Option<&AtomicBool>,
) -> Result<()> {
    let mut planned = Vec::with_capacity(specs.len());
    for s in specs {
        let (stage, snapshot, origin) = match Content::of(s) {
            Content::Snapshot(sid) => (
                Stage::Known(store.snapshot_blob(&sid)?),
                Some(sid.clone()),
                sid,
            ),
            Content::Path(p) => (
                snapshot::stage(store, work, &p, &rreq.open, progress, cancel)?,
                None,
                p.display().to_string(),
            ),
        };
        planned.push(Planned {
            spec: (*s).clone(),
            stage,
            snapshot,
            origin,
        });
    }
    let sizes: Vec<u64> = planned
        .iter()
        .map(|p| p.stage.blob().virtual_size)
        .collect();
    let validated = register::validate(rreq, &sizes)?;
    let mut sources: Vec<Arc<dyn format::Disk>> = Vec::with_capacity(planned.len());
    for p in &planned {
        sources.push(Arc::new(Renamed {
            inner: format::open_path(&p.stage.path(store), &OpenOptions::default())?,
            path: p.spec.source.clone(),
        }));
    }
    let volumes: Vec<&Volume> = std::iter::once(&rreq.root).chain(&rreq.extra).collect();
    let examined = register::examine(rreq, &volumes, &sources)?;
    let image = register::image(rreq, validated, &examined.decided);
    let extra = Extra {
        inspection: Some(examined.decided.inspection),
        launch_requirements: examined.decided.launch_requirements,
        audit: examined.audit,
        build: None,
    };
    // Ctrl-C during the inspection or the audit: nothing is committed.
    if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
        return Err(crate::copy::Error::Interrupted.into());
    }
    let (root, sync) = (store.root().to_owned(), store.sync);
    store.write(|tx| finish(tx, &root, sync, id, &image, &planned, &extra))
}

/// `image create --from-bundle`: a bundle made by `register`, `build` or `import`, checked with
/// `verify` first. qcow2 disks are copied as they are; raw ones go through the copy engine.
pub fn create_from_bundle(
    store: &mut Store,
    dir: &Path,
    progress: &Progress,
    cancel: Option<&AtomicBool>,
) -> Result<ImageInfo> {
    let report = crate::bundle::verify::verify(dir, progress)?;
    if let Some(first) = report.failures.first() {
        return Err(Error::Invalid(format!(
            "{}: the bundle does not verify ({} difference(s)), first: {first}",
            dir.display(),
            report.failures.len()
        )));
    }
    ingest_bundle(store, dir, false, progress, cancel)
}

/// Takes the verified (or just made) bundle in `dir` into the store: its disks moved when
/// `take` (a bundle `import` just wrote), rewritten by the copy engine otherwise.
fn ingest_bundle(
    store: &mut Store,
    dir: &Path,
    take: bool,
    progress: &Progress,
    cancel: Option<&AtomicBool>,
) -> Result<ImageInfo> {
    let m = Manifest::read(&dir.join(manifest::FILE_NAME))?;
    let work = store.work()?;
    let id = begin(store, &work, &m.image.image_name, &m.image.root_device_name)?;
    let bundle = Bundle {
        dir,
        manifest: &m,
        take,
    };
    let made = ingest_disks(store, &work, &id, &bundle, progress, cancel);
    settle(store, work, &id, made)
}

/// A bundle on its way into the store.
struct Bundle<'a> {
    dir: &'a Path,
    manifest: &'a Manifest,
    take: bool,
}

fn ingest_disks(
    store: &mut Store,
    work: &Work,
    id: &str,
    bundle: &Bundle<'_>,
    progress: &Progress,
    cancel: Option<&AtomicBool>,
) -> Result<()> {
    let Bundle {
        dir,
        manifest: m,
        take,
    } = *bundle;
    let mut planned = Vec::with_capacity(m.disks.len());
    for (i, (d, mapping)) in m
        .disks
        .iter()
        .zip(&m.image.block_device_mappings)
        .enumerate()
    {
        if d.device_name != mapping.device_name || !crate::bundle::is_safe_member_name(&d.path) {
            return Err(Error::Invalid(format!(
                "{}: disk {} does not match its mapping",
                dir.display(),
                d.path
            )));
        }
        let file = dir.join(&d.path);
        let stage = if take {
            // A bundle `import` just wrote in the store's work directory: its disks come from
            // mkomi's own writer and hold their disk only, so they are moved as they are.
            let dest = work.path.join(format!("b{i}.{}", BLOB_FORMAT.name()));
            if d.format != BLOB_FORMAT.kind() {
                return Err(Error::Invalid(format!(
                    "{}: not a qcow2 disk",
                    file.display()
                )));
            }
            std::fs::rename(&file, &dest).map_err(io(&file, "cannot move"))?;
            Stage::New {
                staged: Staged {
                    path: dest,
                    blob: Blob {
                        file: Blob::file_name(&d.content_digest),
                        digest: d.content_digest.clone(),
                        virtual_size: d.virtual_size,
                        file_size: d.file_size,
                        allocated_bytes: d.allocated_bytes,
                        sha256: d.sha256.clone(),
                    },
                },
                identity: None,
                read: 0,
            }
        } else {
            // Someone else's bundle is rewritten by the copy engine: a qcow2 file can hold more
            // than its disk (internal snapshots, bitmaps, unreferenced clusters), and the blob
            // would be shared by every later snapshot of the same content. The digest computed
            // on the way must still be the manifest's: the bundle may have changed since
            // `verify` read it.
            let stage = snapshot::stage(
                store,
                work,
                &file,
                &OpenOptions::default(),
                progress,
                cancel,
            )?;
            if stage.blob().digest != d.content_digest {
                return Err(Error::Invalid(format!(
                    "{}: ContentDigest {} now, not the manifest's {}: the bundle changed while \
                     it was read",
                    file.display(),
                    stage.blob().digest,
                    d.content_digest
                )));
            }
            stage
        };
        planned.push(Planned {
            spec: Volume::new(&d.device_name, &file),
            stage,
            snapshot: None,
            origin: format!("bundle {} ({})", dir.display(), d.device_name),
        });
    }
    let extra = Extra {
        inspection: m.inspection.clone(),
        launch_requirements: m.launch_requirements.clone(),
        audit: m.audit.clone(),
        build: m.build.clone(),
    };
    let (root, sync) = (store.root().to_owned(), store.sync);
    store.write(|tx| finish(tx, &root, sync, id, &m.image, &planned, &extra))
}

/// Filters of `image list`.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// `name=…`: exact, or a glob with `*`.
    pub names: Vec<String>,
    /// `arch=…`.
    pub architectures: Vec<String>,
    /// `state=…`.
    pub states: Vec<String>,
    /// `tag:K=V`.
    pub tags: Vec<(String, String)>,
}

impl Filter {
    /// Parses `name=…,arch=…,state=…,tag:K=V` (each may repeat; the same key matches any of
    /// its values, different keys must all match).
    pub fn parse(s: &str) -> std::result::Result<Filter, String> {
        let mut f = Filter::default();
        f.add(s)?;
        Ok(f)
    }

    /// Adds the terms of `s`.
    pub fn add(&mut self, s: &str) -> std::result::Result<(), String> {
        for term in s.split(',').filter(|t| !t.is_empty()) {
            let (k, v) = term
                .split_once('=')
                .ok_or_else(|| format!("{term:?}: KEY=VALUE expected"))?;
            match k {
                "name" => self.names.push(v.to_owned()),
                // A value no image can have is a mistake, not an empty answer.
                "arch" | "architecture" if ["i386", "x86_64"].contains(&v) => {
                    self.architectures.push(v.to_owned())
                }
                "state" if ["pending", "available", "failed"].contains(&v) => {
                    self.states.push(v.to_owned())
                }
                "arch" | "architecture" | "state" => {
                    return Err(format!(
                        "{term:?}: arch is i386 or x86_64, state pending, available or failed"
                    ));
                }
                _ => match k.strip_prefix("tag:") {
                    Some(key) if !key.is_empty() => self.tags.push((key.to_owned(), v.to_owned())),
                    _ => {
                        return Err(format!(
                            "{k:?}: filters are name=, arch=, state= and tag:KEY="
                        ));
                    }
                },
            }
        }
        Ok(())
    }

    fn matches(&self, i: &ImageInfo) -> bool {
        let glob = |pattern: &str, value: &str| {
            crate::glob::matches(crate::glob::Syntax::Star, pattern, value)
        };
        let any = |wanted: &[String], have: &str| {
            wanted.is_empty() || wanted.iter().any(|w| glob(w, have))
        };
        any(&self.names, &i.image_name)
            && any(
                &self.architectures,
                &i.architecture.map(enum_str).unwrap_or_default(),
            )
            && any(&self.states, &i.state)
            && self
                .tags
                .iter()
                .all(|(k, v)| i.tags.iter().any(|t| &t.key == k && glob(v, &t.value)))
    }
}

/// `image list`.
pub fn list(store: &Store, filter: &Filter) -> Result<Vec<ImageInfo>> {
    let ids: Vec<String> = {
        let mut stmt = store
            .conn()
            .prepare("SELECT id FROM images ORDER BY creation_date, rowid")
            .map_err(store.db())?;
        stmt.query_map([], |r| r.get(0))
            .map_err(store.db())?
            .collect::<rusqlite::Result<_>>()
            .map_err(store.db())?
    };
    let mut out = Vec::new();
    for id in ids {
        match show(store, &id) {
            Ok(i) if filter.matches(&i) => out.push(i),
            Ok(_) => {}
            // Deleted by another process since the list was read.
            Err(Error::NotFound(..)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// `image show`.
pub fn show(store: &Store, id: &str) -> Result<ImageInfo> {
    // One read transaction: the image and its mappings as one commit left them.
    let tx = store.conn().unchecked_transaction().map_err(store.db())?;
    read_named(store, &tx, id)
}

/// [`read`], its catalog errors naming the catalog.
fn read_named(store: &Store, conn: &rusqlite::Connection, id: &str) -> Result<ImageInfo> {
    read(conn, id).map_err(|e| match e {
        Error::Catalog { reason, .. } => Error::Catalog {
            path: store.catalog().to_owned(),
            reason,
        },
        e => e,
    })
}

fn read(conn: &rusqlite::Connection, id: &str) -> Result<ImageInfo> {
    super::check_image_id(id)?;
    let info = conn
        .query_row(
            "SELECT name, description, architecture, state, root_device_name, global_permission,
                    creation_date, copied_from, extra
             FROM images WHERE id = ?1",
            [id],
            |r| {
                let arch: Option<String> = r.get(2)?;
                let extra: Option<String> = r.get(8)?;
                Ok(ImageInfo {
                    image_id: id.to_owned(),
                    image_name: r.get(0)?,
                    description: r.get(1)?,
                    architecture: arch.as_deref().map(parse_enum).transpose()?,
                    state: r.get(3)?,
                    boot_modes: Vec::new(),
                    root_device_name: r.get(4)?,
                    block_device_mappings: Vec::new(),
                    permissions_to_launch: Permissions {
                        global_permission: r.get(5)?,
                        account_ids: Vec::new(),
                    },
                    tags: Vec::new(),
                    creation_date: r.get(6)?,
                    root_device_type: "bsu",
                    image_type: "machine",
                    copied_from: r.get(7)?,
                    extra: extra
                        .as_deref()
                        .and_then(|e| serde_json::from_str(e).ok())
                        .unwrap_or_default(),
                })
            },
        )
        .optional()?;
    let mut info = info.ok_or_else(|| Error::NotFound(id.to_owned(), "image"))?;
    let mut stmt =
        conn.prepare("SELECT mode FROM boot_modes WHERE image_id = ?1 ORDER BY mode DESC")?;
    info.boot_modes = stmt
        .query_map([id], |r| parse_enum::<BootMode>(&r.get::<_, String>(0)?))?
        .collect::<rusqlite::Result<_>>()?;
    let mut stmt = conn.prepare(
        "SELECT device_name, snapshot_id, volume_size, volume_type, iops, delete_on_vm_deletion
         FROM block_device_mappings WHERE image_id = ?1 ORDER BY position",
    )?;
    info.block_device_mappings = stmt
        .query_map([id], |r| {
            Ok(Mapping {
                device_name: r.get(0)?,
                bsu: MappingBsu {
                    snapshot_id: r.get(1)?,
                    volume_size: r.get(2)?,
                    volume_type: parse_enum(&r.get::<_, String>(3)?)?,
                    iops: r.get(4)?,
                    delete_on_vm_deletion: r.get(5)?,
                },
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut stmt = conn.prepare(
        "SELECT account_id FROM launch_permissions WHERE image_id = ?1 ORDER BY account_id",
    )?;
    info.permissions_to_launch.account_ids = stmt
        .query_map([id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut stmt =
        conn.prepare("SELECT key, value FROM image_tags WHERE image_id = ?1 ORDER BY key")?;
    info.tags = stmt
        .query_map([id], |r| {
            Ok(Tag {
                key: r.get(0)?,
                value: r.get(1)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(info)
}

/// What `image update` changes, as UpdateImage has it.
#[derive(Clone, Debug, Default)]
pub struct Update {
    /// Accounts to add to `PermissionsToLaunch`.
    pub add_accounts: Vec<String>,
    /// Accounts to remove.
    pub remove_accounts: Vec<String>,
    /// `GlobalPermission`.
    pub global: Option<bool>,
    /// `Description`.
    pub description: Option<String>,
    /// Tags to set.
    pub tags: Vec<(String, String)>,
    /// Tags to remove, by key.
    pub remove_tags: Vec<String>,
}

impl Update {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.add_accounts.is_empty()
            && self.remove_accounts.is_empty()
            && self.global.is_none()
            && self.description.is_none()
            && self.tags.is_empty()
            && self.remove_tags.is_empty()
    }
}

/// Checks an account ID: 12 digits, as Outscale's are.
pub fn account_id(s: &str) -> std::result::Result<String, String> {
    if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?}: an account ID is 12 digits"))
    }
}

/// `image update`.
pub fn update(store: &mut Store, id: &str, u: &Update) -> Result<ImageInfo> {
    super::check_image_id(id)?;
    for a in u.add_accounts.iter().chain(&u.remove_accounts) {
        account_id(a).map_err(Error::Invalid)?;
    }
    for (k, v) in &u.tags {
        if k.is_empty() || k.len() > 255 || v.len() > 255 {
            return Err(Error::Invalid(format!(
                "tag {k:?}: keys are 1 to 255 characters, values at most 255"
            )));
        }
    }
    store.write(|tx| {
        let state: Option<String> = tx
            .query_row("SELECT state FROM images WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        match state.as_deref() {
            None => return Err(Error::NotFound(id.to_owned(), "image")),
            Some("available") => {}
            Some(s) => {
                return Err(Error::Refused {
                    id: id.to_owned(),
                    reason: format!("the image is {s}, not available"),
                });
            }
        }
        for a in &u.add_accounts {
            tx.execute(
                "INSERT OR IGNORE INTO launch_permissions (image_id, account_id) VALUES (?1, ?2)",
                [id, a],
            )?;
        }
        for a in &u.remove_accounts {
            tx.execute(
                "DELETE FROM launch_permissions WHERE image_id = ?1 AND account_id = ?2",
                [id, a],
            )?;
        }
        if let Some(g) = u.global {
            tx.execute(
                "UPDATE images SET global_permission = ?2 WHERE id = ?1",
                rusqlite::params![id, g],
            )?;
        }
        if let Some(d) = &u.description {
            tx.execute("UPDATE images SET description = ?2 WHERE id = ?1", [id, d])?;
        }
        for k in &u.remove_tags {
            tx.execute(
                "DELETE FROM image_tags WHERE image_id = ?1 AND key = ?2",
                [id, k],
            )?;
        }
        for (k, v) in &u.tags {
            tx.execute(
                "INSERT OR REPLACE INTO image_tags (image_id, key, value) VALUES (?1, ?2, ?3)",
                [id, k, v],
            )?;
        }
        Ok(())
    })?;
    show(store, id)
}

/// `image copy`: a new image with its own ID and its own snapshots (sharing the data), private,
/// untagged, independent of the source from then on.
pub fn copy(store: &mut Store, id: &str, name: Option<&str>) -> Result<ImageInfo> {
    if let Some(n) = name {
        rules::image_name(n)?;
    }
    let new = store.write(|tx| {
        let src = read(tx, id)?;
        if src.state != "available" {
            return Err(Error::Refused {
                id: id.to_owned(),
                reason: format!("the image is {}, not available", src.state),
            });
        }
        let new = new_id(tx, "ami", "images")?;
        let extra: Option<String> =
            tx.query_row("SELECT extra FROM images WHERE id = ?1", [id], |r| r.get(0))?;
        tx.execute(
            "INSERT INTO images (id, name, description, architecture, root_device_name, state,
                                 creation_date, copied_from, extra)
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7, ?8)",
            rusqlite::params![
                new,
                name.unwrap_or(&src.image_name),
                src.description,
                src.architecture.map(enum_str),
                src.root_device_name,
                now(),
                id,
                extra
            ],
        )?;
        for (position, m) in src.block_device_mappings.iter().enumerate() {
            // The new snapshot shares the source's data (and keeps its description).
            let snap = new_id(tx, "snap", "snapshots")?;
            tx.execute(
                "INSERT INTO snapshots (id, digest, volume_size, description, origin, creation_date)
                 SELECT ?1, digest, volume_size, description, ?2, ?3 FROM snapshots WHERE id = ?4",
                rusqlite::params![
                    snap,
                    format!("copy of {}", m.bsu.snapshot_id),
                    now(),
                    m.bsu.snapshot_id
                ],
            )?;
            let mapping = BlockDeviceMapping {
                device_name: m.device_name.clone(),
                bsu: Bsu {
                    volume_size: m.bsu.volume_size,
                    volume_type: m.bsu.volume_type,
                    iops: m.bsu.iops,
                    delete_on_vm_deletion: m.bsu.delete_on_vm_deletion,
                },
            };
            insert_mapping(tx, &new, position, &mapping, &snap)?;
        }
        for mode in &src.boot_modes {
            tx.execute(
                "INSERT INTO boot_modes (image_id, mode) VALUES (?1, ?2)",
                [&new, &enum_str(mode)],
            )?;
        }
        tx.execute(
            "UPDATE images SET state = 'available' WHERE id = ?1",
            [&new],
        )?;
        Ok(new)
    })?;
    show(store, &new)
}

/// What `image delete` removed.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Deleted {
    /// The image.
    pub image_id: String,
    /// Its snapshots deleted with it (`--with-snapshots`).
    pub snapshots_deleted: Vec<String>,
    /// Its snapshots kept: without `--with-snapshots`, or used by another image.
    pub snapshots_kept: Vec<String>,
}

/// `image delete`: deregisters the image (its mappings go with it), then, when asked, deletes
/// its snapshots that no other image uses.
pub fn delete(store: &mut Store, id: &str, with_snapshots: bool) -> Result<Deleted> {
    let (deleted, files) = store.write(|tx| {
        let info = read(tx, id)?;
        if info.state == "pending" {
            return Err(Error::Refused {
                id: id.to_owned(),
                reason: "the image is still being made (`mkomi store check` marks it failed \
                         if its maker died)"
                    .into(),
            });
        }
        tx.execute("DELETE FROM images WHERE id = ?1", [id])?;
        let mut out = Deleted {
            image_id: id.to_owned(),
            ..Deleted::default()
        };
        let mut files = Vec::new();
        for m in &info.block_device_mappings {
            let snap = &m.bsu.snapshot_id;
            // An image may map one snapshot twice.
            if out.snapshots_deleted.contains(snap) || out.snapshots_kept.contains(snap) {
                continue;
            }
            let used: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM block_device_mappings WHERE snapshot_id = ?1)",
                [snap],
                |r| r.get(0),
            )?;
            if with_snapshots && !used {
                files.extend(snapshot::delete_in(tx, snap)?);
                out.snapshots_deleted.push(snap.clone());
            } else {
                out.snapshots_kept.push(snap.clone());
            }
        }
        Ok((out, files))
    })?;
    super::remove_blob_files(store, files)?;
    Ok(deleted)
}

/// A disk of an image and the blob that holds it.
struct DiskBlob {
    /// The disk's file name in a bundle (`sda1.qcow2`).
    name: String,
    /// `DeviceName`.
    device: String,
    /// The snapshot the disk is made from.
    snapshot: String,
    /// The blob, as the catalog records it.
    blob: Blob,
    /// The blob's file.
    path: PathBuf,
}

/// The image as a bundle's manifest and the blob behind each disk.
fn as_bundle(store: &Store, id: &str) -> Result<(Manifest, Vec<DiskBlob>)> {
    // The image and its blobs read in one transaction.
    let tx = store.conn().unchecked_transaction().map_err(store.db())?;
    let info = read_named(store, &tx, id)?;
    if info.state != "available" {
        return Err(Error::Refused {
            id: id.to_owned(),
            reason: format!("the image is {}, not available", info.state),
        });
    }
    let mut disks = Vec::new();
    let mut files = Vec::new();
    let mut mappings = Vec::new();
    for m in &info.block_device_mappings {
        let blob = store.snapshot_blob(&m.bsu.snapshot_id)?;
        let path = BLOB_FORMAT.kind().file_name(&m.device_name);
        files.push(DiskBlob {
            name: path.clone(),
            device: m.device_name.clone(),
            snapshot: m.bsu.snapshot_id.clone(),
            path: store.blob_path(&blob.file),
            blob: blob.clone(),
        });
        disks.push(Disk {
            device_name: m.device_name.clone(),
            path,
            format: BLOB_FORMAT.kind(),
            virtual_size: blob.virtual_size,
            file_size: blob.file_size,
            allocated_bytes: blob.allocated_bytes,
            sha256: blob.sha256,
            content_digest: blob.digest,
        });
        mappings.push(BlockDeviceMapping {
            device_name: m.device_name.clone(),
            bsu: Bsu {
                volume_size: m.bsu.volume_size,
                volume_type: m.bsu.volume_type,
                iops: m.bsu.iops,
                delete_on_vm_deletion: m.bsu.delete_on_vm_deletion,
            },
        });
    }
    let manifest = Manifest {
        schema: manifest::SCHEMA_VERSION,
        builder: manifest::Builder::this(),
        creation_date: info.creation_date,
        image: Image {
            image_name: info.image_name,
            description: info.description,
            architecture: info.architecture.unwrap_or(Architecture::X86_64),
            boot_modes: info.boot_modes,
            root_device_name: info.root_device_name,
            block_device_mappings: mappings,
        },
        disks,
        inspection: info.extra.inspection,
        launch_requirements: info.extra.launch_requirements,
        audit: info.extra.audit,
        build: info.extra.build,
    };
    Ok((manifest, files))
}

/// The error for a blob of image `image` that does not hold what the catalog says.
fn damaged(image: &str, d: &DiskBlob, what: String) -> Error {
    Error::Damaged {
        path: d.path.clone(),
        reason: format!(
            "{what}: the data of snapshot {} ({} of {image}) is damaged; nothing was written \
             (`mkomi store check` lists what else uses it)",
            d.snapshot, d.device
        ),
    }
}

/// Reads the blob of `d` whole, into `out` when given, and checks its size and SHA-256
/// against the catalog's: a blob is never modified once committed, so any difference is
/// damage, and what was written to `out` must not be used.
fn read_checked(image: &str, d: &DiskBlob, mut out: Option<(&Path, &mut File)>) -> Result<()> {
    let mut f = match File::open(&d.path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(damaged(image, d, "missing".into()));
        }
        Err(e) => return Err(io(&d.path, "cannot open")(e)),
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut hash = Sha256::new();
    let mut total = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(&d.path, "cannot read")(e)),
        };
        hash.update(&buf[..n]);
        if let Some((path, w)) = out.as_mut() {
            w.write_all(&buf[..n]).map_err(io(path, "cannot write"))?;
        }
        total += n as u64;
    }
    if total != d.blob.file_size {
        return Err(damaged(
            image,
            d,
            format!("{total} bytes, not the catalog's {}", d.blob.file_size),
        ));
    }
    let sha = hex(&hash.finalize());
    if sha != d.blob.sha256 {
        return Err(damaged(
            image,
            d,
            format!("SHA-256 {sha}, not the catalog's {}", d.blob.sha256),
        ));
    }
    Ok(())
}

/// Writes the bundle's files into `dir`: each blob linked (`link`, for a bundle that only lives
/// inside the store, whose reader checks it) or copied and checked on the way, then the
/// manifest and `SHA256SUMS`.
fn write_bundle(
    image: &str,
    manifest: &Manifest,
    files: &[DiskBlob],
    dir: &Path,
    link: bool,
    sync: bool,
) -> Result<()> {
    for d in files {
        let dest = dir.join(&d.name);
        let linked = link && std::fs::hard_link(&d.path, &dest).is_ok();
        if !linked {
            let mut f = File::create(&dest).map_err(io(&dest, "cannot create"))?;
            read_checked(image, d, Some((&dest, &mut f)))?;
            if sync {
                f.sync_all().map_err(io(&dest, "cannot sync"))?;
            }
        }
    }
    register::write_manifest(dir, manifest, sync)?;
    Ok(())
}

/// `image bundle`: writes the image out as a qcow2 bundle (then `verify` and `export` apply),
/// atomically as `register` does. Each blob's size and SHA-256 are checked against the
/// catalog's as it is copied: a damaged blob is refused ([`Error::Damaged`]) and nothing is
/// left.
pub fn bundle(store: &Store, id: &str, output: &Path, force: bool) -> Result<Manifest> {
    let (manifest, files) = as_bundle(store, id)?;
    let target = Target::new(output)?;
    target.refuse_existing(force)?;
    let tmp = target.stage()?;
    write_bundle(id, &manifest, &files, tmp.path(), false, store.sync)?;
    target.commit(tmp, store.sync)?;
    Ok(manifest)
}

/// `image export`: the image's package, made from the store's blobs (linked into a bundle that
/// lives in the store's work directory while the export runs). A damaged blob is refused
/// ([`Error::Damaged`]), named with its snapshot and image.
pub fn export(store: &Store, id: &str, req: &package::Request) -> Result<package::Report> {
    let (manifest, files) = as_bundle(store, id)?;
    // A disk exported in its own format is checked against its SHA-256 as it is read; one
    // converted (qcow2 to raw) is read through its format, which would not notice damage in
    // the data: its blob is checked first.
    if req.format.is_some_and(|f| f != BLOB_FORMAT.kind()) {
        for d in &files {
            read_checked(id, d, None)?;
        }
    }
    let work = store.work()?;
    let dir = work.path.join("bundle");
    std::fs::create_dir(&dir).map_err(io(&dir, "cannot create"))?;
    write_bundle(id, &manifest, &files, &dir, true, false)?;
    let mut req = req.clone();
    req.bundle = dir.clone();
    package::export(&req).map_err(|e| {
        // The export names the file it found different, a link in the work directory that is
        // gone by now: the blob behind it is checked again, and named with its snapshot.
        if let crate::export::Error::Bundle { path, .. } = &e
            && let Some(d) = files.iter().find(|d| dir.join(&d.name) == *path)
            && let Err(damage) = read_checked(id, d, None)
        {
            return damage;
        }
        e.into()
    })
}

/// `image import`: a package imported (see [`crate::export::import`]) into the store.
pub fn import(
    store: &mut Store,
    req: &import_pkg::Request,
    progress: &Progress,
    cancel: Option<&'static AtomicBool>,
) -> Result<(ImageInfo, import_pkg::Report)> {
    let work = store.work()?;
    let mut req = req.clone();
    req.output = work.path.join("bundle");
    req.format = BLOB_FORMAT.kind();
    req.force = false;
    req.sync = store.sync;
    let report = import_pkg::import(&req, progress, cancel)?;
    let info = ingest_bundle(store, &req.output, true, progress, cancel)?;
    drop(work);
    Ok((info, report))
}
