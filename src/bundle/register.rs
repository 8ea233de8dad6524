//! `register`: disk images in, a bundle out.
//!
//! Every field is checked against Outscale's rules and every source opened before any byte is
//! written. The bundle is built in a hidden temporary directory beside the destination and
//! renamed into place when complete, so the destination either holds a whole bundle or nothing.

use super::checks::{self, Checks};
use super::{Error, Result, SUMS_FILE, io_err, sums};
use crate::audit::image::{self as audit, Policy};
use crate::copy::{self, Options};
use crate::format;
use crate::manifest::{
    self, Architecture, BlockDeviceMapping, BootMode, Bsu, Disk, DiskFormat, Image, Manifest,
    VolumeType, rules,
};
use crate::progress::Progress;
use crate::sink::{Sink, qcow2::Qcow2Sink, raw::RawSink};
use crate::util::{hex, sync_dir, utc_timestamp};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// One volume of the image.
#[derive(Clone, Debug)]
pub struct Volume {
    /// `DeviceName`.
    pub device: String,
    /// The disk image to read.
    pub source: PathBuf,
    /// `VolumeSize` in GiB; the disk's size rounded up when absent.
    pub volume_size: Option<u64>,
    /// `VolumeType`.
    pub volume_type: VolumeType,
    /// `Iops` (io1 only).
    pub iops: Option<u32>,
    /// `DeleteOnVmDeletion`.
    pub delete_on_vm_deletion: bool,
}

impl Volume {
    /// A volume with Outscale's defaults: standard, deleted with the VM, sized to the disk.
    pub fn new(device: &str, source: &Path) -> Self {
        Self {
            device: device.to_owned(),
            source: source.to_owned(),
            volume_size: None,
            volume_type: VolumeType::Standard,
            iops: None,
            delete_on_vm_deletion: true,
        }
    }
}

/// What to register.
#[derive(Clone, Debug)]
pub struct Request {
    /// The bundle directory to create.
    pub output: PathBuf,
    /// Replace `output` if it exists.
    pub force: bool,
    /// Disk file format.
    pub format: DiskFormat,
    /// qcow2 cluster size, log2.
    pub cluster_bits: u32,
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

/// Removes a temporary directory unless it was committed.
pub(crate) struct TempDir {
    pub(crate) path: PathBuf,
    pub(crate) committed: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Checks the request's fields before anything is opened.
pub(crate) fn check_fields(req: &Request) -> Result<()> {
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

/// Splits `output` into its parent directory and final name.
pub(crate) fn split_output(output: &Path) -> Result<(PathBuf, String)> {
    let name = output
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| *n != "." && *n != "..")
        .ok_or_else(|| Error::Invalid {
            path: output.to_owned(),
            reason: "the output must name a directory to create".into(),
        })?;
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(Error::Invalid {
            path: parent,
            reason: "the output's parent directory does not exist".into(),
        });
    }
    Ok((parent, name.to_owned()))
}

/// Registers the image: see the module documentation.
pub fn register(req: &Request, progress: &Progress, cancel: Option<&AtomicBool>) -> Result<Report> {
    register_with_root(req, None, progress, cancel)
}

/// Like [`register`], with the root volume's content given as a source (a disk laid out by
/// `build`) instead of opened from `req.root.source`, which then only names it.
pub fn register_with_root(
    req: &Request,
    mut root: Option<Arc<dyn format::Disk>>,
    progress: &Progress,
    cancel: Option<&AtomicBool>,
) -> Result<Report> {
    check_fields(req)?;
    let volumes: Vec<&Volume> = std::iter::once(&req.root).chain(&req.extra).collect();
    let mut sources: Vec<Arc<dyn format::Disk>> = Vec::with_capacity(volumes.len());
    for v in &volumes {
        sources.push(match root.take() {
            Some(src) => src,
            None => format::open_path(&v.source, &req.open)?,
        });
    }
    run(req, sources, Examine::Before, progress, cancel)
}

/// Like [`register`], with every volume's content given as a source that can only be read once,
/// in order (a download being decompressed): the disks are inspected and audited once copied,
/// from the bundle's own files, and the bundle is removed if they are refused.
pub(crate) fn register_streamed(
    req: &Request,
    sources: Vec<Arc<dyn format::Disk>>,
    progress: &Progress,
    cancel: Option<&AtomicBool>,
) -> Result<Report> {
    check_fields(req)?;
    run(req, sources, Examine::After, progress, cancel)
}

/// When the disks are inspected and audited: before anything is written (sources that can be
/// read at random), or from the bundle's files once copied (sources read once).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Examine {
    Before,
    After,
}

fn run(
    req: &Request,
    sources: Vec<Arc<dyn format::Disk>>,
    when: Examine,
    progress: &Progress,
    cancel: Option<&AtomicBool>,
) -> Result<Report> {
    let started = Instant::now();
    let (parent, out_name) = split_output(&req.output)?;
    if req.output.symlink_metadata().is_ok() && !req.force {
        return Err(Error::Exists(req.output.clone()));
    }
    let volumes: Vec<&Volume> = std::iter::once(&req.root).chain(&req.extra).collect();
    let sizes: Vec<u64> = sources.iter().map(|s| s.size()).collect();
    let mappings = mappings_for(req, &sizes)?;
    let image_name = image_name(req)?;
    // Sources read at random are examined before anything is written: their fields may be
    // refused.
    let examined = match when {
        Examine::Before => Some(examine(req, &volumes, &sources)?),
        Examine::After => None,
    };

    let tmp = TempDir {
        path: parent.join(format!(".{out_name}.mkomi-{}.tmp", std::process::id())),
        committed: false,
    };
    std::fs::create_dir(&tmp.path).map_err(io_err(&tmp.path, "cannot create"))?;

    let mut disks = Vec::with_capacity(volumes.len());
    let mut data_bytes = 0;
    for (v, src) in volumes.iter().zip(&sources) {
        let file_name = rules::disk_file_name(&v.device, req.format.name());
        let path = tmp.path.join(&file_name);
        let size = src.size();
        let mut sink: Box<dyn Sink> = match req.format {
            DiskFormat::Qcow2 => Box::new(
                Qcow2Sink::create(&path, size, req.cluster_bits, req.sync)
                    .map_err(copy::Error::from)?,
            ),
            DiskFormat::Raw => {
                Box::new(RawSink::create(&path, size, req.sync).map_err(copy::Error::from)?)
            }
        };
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
            format: req.format,
            virtual_size: report.virtual_size,
            file_size: report.written.file_size,
            allocated_bytes: report.written.allocated_bytes,
            sha256: hex(&report.written.sha256),
            content_digest: report.content_digest,
        });
    }
    let examined = match examined {
        Some(e) => e,
        None => {
            // The bundle's disks, named in messages as the sources they were copied from.
            let mut written: Vec<Arc<dyn format::Disk>> = Vec::with_capacity(disks.len());
            for (d, src) in disks.iter().zip(&sources) {
                let file =
                    format::open_path(&tmp.path.join(&d.path), &format::OpenOptions::default())?;
                written.push(Arc::new(Renamed {
                    inner: file,
                    path: src.path().to_owned(),
                }));
            }
            examine(req, &volumes, &written)?
        }
    };
    drop(sources);
    let Examined {
        decided,
        audit: audit_manifest,
    } = examined;

    let manifest = Manifest {
        schema: manifest::SCHEMA_VERSION,
        builder: manifest::Builder::this(),
        creation_date: utc_timestamp(req.creation_epoch),
        image: Image {
            image_name,
            description: req.description.clone(),
            architecture: decided.architecture,
            boot_modes: decided.boot_modes.clone(),
            root_device_name: req.root.device.clone(),
            block_device_mappings: mappings,
        },
        disks,
        inspection: Some(decided.inspection),
        launch_requirements: decided.launch_requirements,
        audit: audit_manifest,
    };
    write_manifest(&tmp.path, &manifest, req.sync)?;
    if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
        return Err(copy::Error::Interrupted.into());
    }
    commit(tmp, &req.output, &parent, &out_name, req.sync)?;
    Ok(Report {
        output: req.output.clone(),
        manifest,
        data_bytes,
        elapsed: started.elapsed(),
        warnings: decided.warnings,
    })
}

/// The block device mappings of the request's volumes, whose disks have `sizes` bytes, checked
/// against Outscale's rules (`VolumeSize` holds the disk, `Iops` fits the volume).
pub(crate) fn mappings_for(req: &Request, sizes: &[u64]) -> Result<Vec<BlockDeviceMapping>> {
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

/// What the disks' content decided: the image's fields and the audit.
pub(crate) struct Examined {
    pub(crate) decided: checks::Decided,
    pub(crate) audit: Option<manifest::AuditSummary>,
}

/// Inspects the root disk and audits every disk, the root in the same walk as its inspection.
pub(crate) fn examine(
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
pub(crate) fn image_name(req: &Request) -> Result<String> {
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

/// A source named as another file in messages: a bundle's disk read back, named as what it was
/// copied from.
pub(crate) struct Renamed {
    pub(crate) inner: Arc<dyn format::Disk>,
    pub(crate) path: PathBuf,
}

impl format::Disk for Renamed {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn extent(&self, offset: u64, max_len: u64) -> format::Result<format::Extent> {
        self.inner.extent(offset, max_len)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> format::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn format(&self) -> &'static str {
        self.inner.format()
    }
    fn path(&self) -> &Path {
        &self.path
    }
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

/// Writes `manifest.json` and `SHA256SUMS` (of the disks and the manifest) into `dir`, and
/// syncs the directory when asked.
pub(crate) fn write_manifest(dir: &Path, manifest: &Manifest, sync: bool) -> Result<()> {
    let manifest_bytes = manifest.to_bytes();
    write_file(&dir.join(manifest::FILE_NAME), &manifest_bytes, sync)?;
    let manifest_sha = Sha256::digest(&manifest_bytes);
    let mut entries: Vec<(String, String)> = manifest
        .disks
        .iter()
        .map(|d| (d.path.clone(), d.sha256.clone()))
        .collect();
    entries.push((manifest::FILE_NAME.to_owned(), hex(&manifest_sha)));
    write_file(
        &dir.join(SUMS_FILE),
        sums::render(&entries).as_bytes(),
        sync,
    )?;
    if sync {
        sync_dir(dir).map_err(io_err(dir, "cannot sync"))?;
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let mut f = File::create(path).map_err(io_err(path, "cannot create"))?;
    std::io::Write::write_all(&mut f, bytes).map_err(io_err(path, "cannot write"))?;
    if sync {
        f.sync_all().map_err(io_err(path, "cannot sync"))?;
    }
    Ok(())
}

/// Moves the finished temporary directory to `output`. An existing `output` (with `--force`) is
/// first moved aside, then removed once the new bundle is in place.
pub(crate) fn commit(
    mut tmp: TempDir,
    output: &Path,
    parent: &Path,
    out_name: &str,
    sync: bool,
) -> Result<()> {
    let old = parent.join(format!(".{out_name}.mkomi-{}.old", std::process::id()));
    let replaced = output.symlink_metadata().is_ok();
    if replaced {
        std::fs::rename(output, &old).map_err(io_err(output, "cannot move aside"))?;
    }
    if let Err(e) = std::fs::rename(&tmp.path, output) {
        if replaced {
            let _ = std::fs::rename(&old, output);
        }
        return Err(io_err(output, "cannot rename the finished bundle to")(e));
    }
    tmp.committed = true;
    if sync {
        // Some filesystems refuse fsync on directories; the bundle is complete either way.
        let _ = sync_dir(parent);
    }
    if replaced {
        let removed = if old.is_dir() {
            std::fs::remove_dir_all(&old)
        } else {
            std::fs::remove_file(&old)
        };
        removed.map_err(io_err(&old, "cannot remove the replaced bundle"))?;
    }
    Ok(())
}
