//! `register`: disk images in, a bundle out.
//!
//! Every field is checked against Outscale's rules and every source opened before any byte is
//! written. The bundle is built in a hidden temporary directory beside the destination and
//! renamed into place when complete ([`crate::staging`]), so the destination either holds a whole
//! bundle or nothing.
//!
//! Registering is a pipeline of public steps, which `build`, `import` and the store compose:
//! [`check_fields`] → [`validate`] → [`examine`] (or, for sources read once,
//! [`examine_written`] after the copy) → [`write_disks`] → [`manifest()`] and
//! [`write_manifest`] → [`Target::commit`].

use super::checks::{self, Checks};
use super::{Error, Result, SUMS_FILE, sums};
use crate::audit::image::{self as audit, Policy};
use crate::copy::{self, Options};
use crate::format;
use crate::manifest::{
    self, Architecture, BlockDeviceMapping, BootMode, Bsu, Disk, Image, Manifest, rules,
};
use crate::progress::Progress;
use crate::sink::OutputFormat;
use crate::staging::{self, Renamed, Target, TempDir};
use crate::util::{hex, utc_timestamp};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

pub use crate::manifest::volume::Volume;

/// What to register.
#[derive(Clone, Debug)]
pub struct Request {
    /// The bundle directory to create.
    pub output: PathBuf,
    /// Replace `output` if it exists.
    pub force: bool,
    /// Disk file format, with its parameters.
    pub format: OutputFormat,
    /// `ImageName`; from the root source's file name when absent.
    pub name: Option<String>,
    /// `Description`.
    pub description: Option<String>,
    /// `Architecture`; detected from the root disk when absent.
    pub architecture: Option<Architecture>,
    /// `BootModes`; the ones detected on the root disk when empty.
    pub boot_modes: Vec<BootMode>,
    /// Checks of the declared fields against the root disk.
    pub checks: Checks,
    /// The security audit of every disk.
    pub audit: Policy,
    /// The root volume; its device is the `RootDeviceName`.
    pub root: Volume,
    /// Further volumes.
    pub extra: Vec<Volume>,
    /// How sources are opened (backing-file policy).
    pub open: format::OpenOptions,
    /// `CreationDate`, seconds since the epoch.
    pub creation_epoch: i64,
    /// fsync every file and the directory before the rename.
    pub sync: bool,
    /// What `build` did to its trees, for the manifest.
    pub build: Option<crate::manifest::BuildRecord>,
}

/// What `register` did.
#[derive(Clone, Debug)]
pub struct Report {
    /// The bundle directory.
    pub output: PathBuf,
    /// The manifest written.
    pub manifest: Manifest,
    /// Bytes of data read from the sources.
    pub data_bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Things the user should know (a Windows image needs sysprep, …), one line each.
    pub warnings: Vec<String>,
}

/// Step 0, before anything is opened: the request's own fields against Outscale's rules.
pub fn check_fields(req: &Request) -> Result<()> {
    if let Some(name) = &req.name {
        rules::image_name(name)?;
    }
    rules::root_device(&req.root.device)?;
    for v in &req.extra {
        rules::extra_device(&v.device)?;
    }
    rules::mappings(
        std::iter::once(req.root.device.as_str())
            .chain(req.extra.iter().map(|v| v.device.as_str())),
    )?;
    Ok(())
}

/// Registers the image: see the module documentation.
pub fn register(req: &Request, progress: &Progress, cancel: Option<&AtomicBool>) -> Result<Report> {
    register_with_root(req, None, progress, cancel)
}

/// Like [`register`], with the root volume's content given as a source (a disk laid out by
/// `build`) instead of opened from `req.root.source`, which then only names it.
///
/// The steps: [`check_fields`], open, [`validate`], [`examine`] (sources read at random are
/// examined before anything is written: their fields may be refused), [`write_disks`],
/// [`manifest()`] and [`write_manifest`], commit.
pub fn register_with_root(
    req: &Request,
    mut root: Option<Arc<dyn format::Disk>>,
    progress: &Progress,
    cancel: Option<&AtomicBool>,
) -> Result<Report> {
    check_fields(req)?;
    let volumes = volumes(req);
    let mut sources: Vec<Arc<dyn format::Disk>> = Vec::with_capacity(volumes.len());
    for v in &volumes {
        sources.push(match root.take() {
            Some(src) => src,
            None => format::open_path(&v.source, &req.open)?,
        });
    }
    let started = Instant::now();
    let (target, validated) = begin(req, &sources)?;
    let examined = examine(req, &volumes, &sources)?;
    let tmp = target.stage()?;
    let written = write_disks(req, tmp.path(), &sources, progress, cancel)?;
    drop(sources);
    finish(
        req, target, tmp, validated, written, examined, started, cancel,
    )
}

/// Like [`register`], with every volume's content given as a source that can only be read once,
/// in order (a download being decompressed): the disks are examined once copied, from the
/// bundle's own files ([`examine_written`]), and the bundle is removed if they are refused.
pub fn register_streamed(
    req: &Request,
    sources: Vec<Arc<dyn format::Disk>>,
    progress: &Progress,
    cancel: Option<&AtomicBool>,
) -> Result<Report> {
    check_fields(req)?;
    let started = Instant::now();
    let (target, validated) = begin(req, &sources)?;
    let tmp = target.stage()?;
    let written = write_disks(req, tmp.path(), &sources, progress, cancel)?;
    let examined = examine_written(req, tmp.path(), &written.disks, &sources)?;
    drop(sources);
    finish(
        req, target, tmp, validated, written, examined, started, cancel,
    )
}

/// The root volume, then the others.
fn volumes(req: &Request) -> Vec<&Volume> {
    std::iter::once(&req.root).chain(&req.extra).collect()
}

/// The output checked to be free, and the request [`validate`]d against its opened sources.
fn begin(req: &Request, sources: &[Arc<dyn format::Disk>]) -> Result<(Target, Validated)> {
    let target = Target::new(&req.output)?;
    target.refuse_existing(req.force)?;
    let sizes: Vec<u64> = sources.iter().map(|s| s.size()).collect();
    Ok((target, validate(req, &sizes)?))
}

/// The last steps: the manifest written beside the disks, then the bundle committed, unless
/// Ctrl-C came first.
#[allow(clippy::too_many_arguments)]
fn finish(
    req: &Request,
    target: Target,
    tmp: TempDir,
    validated: Validated,
    written: WrittenDisks,
    examined: Examined,
    started: Instant,
    cancel: Option<&AtomicBool>,
) -> Result<Report> {
    let warnings = examined.decided.warnings.clone();
    let manifest = manifest(req, validated, written.disks, examined);
    write_manifest(tmp.path(), &manifest, req.sync)?;
    if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
        return Err(copy::Error::Interrupted.into());
    }
    target.commit(tmp, req.sync)?;
    Ok(Report {
        output: req.output.clone(),
        manifest,
        data_bytes: written.data_bytes,
        elapsed: started.elapsed(),
        warnings,
    })
}

/// What [`validate`] found: the image's fields that do not depend on the disks' content.
#[derive(Clone, Debug)]
pub struct Validated {
    /// `ImageName`.
    pub image_name: String,
    /// `BlockDeviceMappings`.
    pub mappings: Vec<BlockDeviceMapping>,
}

/// Step 1, once the sources are opened: the volumes against their disks' `sizes` (see
/// [`mappings_for`]) and the image's name.
pub fn validate(req: &Request, sizes: &[u64]) -> Result<Validated> {
    Ok(Validated {
        mappings: mappings_for(req, sizes)?,
        image_name: image_name(req)?,
    })
}

/// What [`write_disks`] wrote.
#[derive(Clone, Debug)]
pub struct WrittenDisks {
    /// The manifest's `Disks`.
    pub disks: Vec<Disk>,
    /// Bytes of data read from the sources.
    pub data_bytes: u64,
}

/// Step 3: copies each volume's source into its disk file in `dir`, in the request's format.
pub fn write_disks(
    req: &Request,
    dir: &Path,
    sources: &[Arc<dyn format::Disk>],
    progress: &Progress,
    cancel: Option<&AtomicBool>,
) -> Result<WrittenDisks> {
    let volumes = volumes(req);
    let mut disks = Vec::with_capacity(volumes.len());
    let mut data_bytes = 0;
    for (v, src) in volumes.iter().zip(sources.iter()) {
        let file_name = req.format.kind().file_name(&v.device);
        let path = dir.join(&file_name);
        let mut sink = req
            .format
            .create(&path, src.size(), req.sync)
            .map_err(copy::Error::from)?;
        let task = progress.task(&file_name);
        let report = copy::copy(
            src.as_ref(),
            sink.as_mut(),
            Options {
                progress: Some(&task),
                cancel,
            },
        )?;
        task.finish();
        data_bytes += report.data_bytes;
        disks.push(Disk {
            device_name: v.device.clone(),
            path: file_name,
            format: req.format.kind(),
            virtual_size: report.virtual_size,
            file_size: report.written.file_size,
            allocated_bytes: report.written.allocated_bytes,
            sha256: hex(&report.written.sha256),
            content_digest: report.content_digest,
        });
    }
    Ok(WrittenDisks { disks, data_bytes })
}

/// Step 2 for sources read once: [`examine`] the `disks` written in `dir`, named in messages as
/// the `sources` they were copied from.
pub fn examine_written(
    req: &Request,
    dir: &Path,
    disks: &[Disk],
    sources: &[Arc<dyn format::Disk>],
) -> Result<Examined> {
    let mut written: Vec<Arc<dyn format::Disk>> = Vec::with_capacity(disks.len());
    for (d, src) in disks.iter().zip(sources) {
        let file = format::open_path(&dir.join(&d.path), &format::OpenOptions::default())?;
        written.push(Arc::new(Renamed {
            inner: file,
            path: src.path().to_owned(),
        }));
    }
    examine(req, &volumes(req), &written)
}

/// The image's `Image` fields: the request's, [`validate`]d, and what the disks' content
/// decided.
pub fn image(req: &Request, validated: Validated, decided: &checks::Decided) -> Image {
    Image {
        image_name: validated.image_name,
        description: req.description.clone(),
        architecture: decided.architecture,
        boot_modes: decided.boot_modes.clone(),
        root_device_name: req.root.device.clone(),
        block_device_mappings: validated.mappings,
    }
}

/// Step 4: the bundle's manifest.
pub fn manifest(
    req: &Request,
    validated: Validated,
    disks: Vec<Disk>,
    examined: Examined,
) -> Manifest {
    Manifest {
        schema: manifest::SCHEMA_VERSION,
        builder: manifest::Builder::this(),
        creation_date: utc_timestamp(req.creation_epoch),
        image: image(req, validated, &examined.decided),
        disks,
        inspection: Some(examined.decided.inspection),
        launch_requirements: examined.decided.launch_requirements,
        audit: examined.audit,
        build: req.build.clone(),
    }
}

/// The block device mappings of the request's volumes, whose disks have `sizes` bytes, checked
/// against Outscale's rules (`VolumeSize` holds the disk, `Iops` fits the volume).
pub fn mappings_for(req: &Request, sizes: &[u64]) -> Result<Vec<BlockDeviceMapping>> {
    let volumes = std::iter::once(&req.root).chain(&req.extra);
    let mut mappings = Vec::with_capacity(sizes.len());
    for (v, &size) in volumes.zip(sizes) {
        let gib = match v.volume_size {
            Some(g) => g,
            None => rules::min_volume_gib(size),
        };
        rules::volume_size(gib, size).map_err(|e| in_context(e, &v.device))?;
        rules::iops(v.volume_type, v.iops, gib).map_err(|e| in_context(e, &v.device))?;
        mappings.push(BlockDeviceMapping {
            device_name: v.device.clone(),
            bsu: Bsu {
                volume_size: gib,
                volume_type: v.volume_type,
                iops: v.iops,
                delete_on_vm_deletion: v.delete_on_vm_deletion,
            },
        });
    }
    Ok(mappings)
}

/// What [`examine`] found in the disks' content: the image's fields and the audit.
pub struct Examined {
    /// The fields the root disk decided.
    pub decided: checks::Decided,
    /// The audit, unless it is off.
    pub audit: Option<manifest::AuditSummary>,
}

/// Step 2: inspects the root disk and audits every disk, in one walk of the root disk.
pub fn examine(
    req: &Request,
    volumes: &[&Volume],
    sources: &[Arc<dyn format::Disk>],
) -> Result<Examined> {
    let Some(root) = sources.first() else {
        return Err(Error::Invalid {
            path: req.output.clone(),
            reason: "no volumes".into(),
        });
    };
    let mut report = audit::Report::default();
    let decided = checks::inspect_root(
        root,
        &req.root.device,
        req.architecture,
        &req.boot_modes,
        req.checks,
        (req.audit != Policy::Off).then_some(&mut report),
    )?;
    let audit = match req.audit {
        Policy::Off => None,
        policy => {
            for (src, v) in sources.iter().zip(volumes).skip(1) {
                audit::audit_disk(src, Some(&v.device), &mut report);
            }
            audit::finish(&mut report);
            if let Policy::Deny {
                at,
                allow_incomplete,
            } = policy
            {
                let denied: Vec<&audit::Located> = report.at_least(at).collect();
                if !denied.is_empty() {
                    let first: Vec<String> = denied
                        .iter()
                        .take(3)
                        .map(|l| {
                            format!(
                                "{} {} {}: {}",
                                l.finding.severity,
                                l.device.as_deref().unwrap_or_default(),
                                l.finding.path,
                                l.finding.message
                            )
                        })
                        .collect();
                    let more = if denied.len() > 3 { "; …" } else { "" };
                    return Err(Error::AuditDenied {
                        path: req.root.source.clone(),
                        reason: format!(
                            "{} finding(s) at or above {at} (--audit {policy}; `mkomi audit` lists them): {}{more}",
                            denied.len(),
                            first.join("; ")
                        ),
                    });
                }
                // Fail closed: what could not be read may hold what the policy refuses.
                if let (false, Some(why)) = (allow_incomplete, report.incomplete()) {
                    return Err(Error::AuditIncomplete {
                        path: req.root.source.clone(),
                        reason: format!(
                            "{why} (--audit {policy} refuses an incomplete audit; \
                             --allow-incomplete accepts it)"
                        ),
                    });
                }
            }
            Some(report.to_manifest(&policy.to_string()))
        }
    };
    Ok(Examined { decided, audit })
}

/// `ImageName`: given, or derived from the root source's file name.
pub fn image_name(req: &Request) -> Result<String> {
    if let Some(n) = &req.name {
        return Ok(n.clone());
    }
    let stem = req
        .root
        .source
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = rules::image_name_from(&stem);
    rules::image_name(&name).map_err(|_| manifest::Error::Field {
        field: "ImageName".into(),
        value: name.clone(),
        rule: "cannot be derived from the source's file name; give --name".into(),
    })?;
    Ok(name)
}

/// Prefixes a field error with the device it is about.
fn in_context(e: manifest::Error, device: &str) -> manifest::Error {
    match e {
        manifest::Error::Field { field, value, rule } => manifest::Error::Field {
            field: format!("{device}: {field}"),
            value,
            rule,
        },
        other => other,
    }
}

/// Step 5: writes `manifest.json` and `SHA256SUMS` (of the disks and the manifest) into the
/// staged directory `dir`, and syncs the directory when asked.
pub fn write_manifest(dir: &Path, manifest: &Manifest, sync: bool) -> Result<()> {
    let manifest_bytes = manifest.to_bytes();
    staging::write_file(&dir.join(manifest::FILE_NAME), &manifest_bytes, sync)?;
    let manifest_sha = Sha256::digest(&manifest_bytes);
    let mut entries: Vec<(String, String)> = manifest
        .disks
        .iter()
        .map(|d| (d.path.clone(), d.sha256.clone()))
        .collect();
    entries.push((manifest::FILE_NAME.to_owned(), hex(&manifest_sha)));
    staging::write_file(
        &dir.join(SUMS_FILE),
        sums::render(&entries).as_bytes(),
        sync,
    )?;
    if sync {
        staging::sync(dir)?;
    }
    Ok(())
}
