//! `export`: a bundle out as an Outscale export package — one gzip object per disk, Outscale's
//! export manifest, mkomi's own manifest and `SHA256SUMS` — in a directory or a bucket.
//!
//! Each disk is read once: its bytes are hashed (and checked against the bundle's manifest, so a
//! damaged bundle is never exported), compressed on all cores and hashed again as they leave,
//! straight into the object: no intermediate uncompressed file. A directory package appears
//! atomically (temporary directory, then rename), like a bundle.
//!
//! In a bucket, each multipart upload is recorded from its start in a state file under the
//! user's cache directory, so that an export killed at any point leaves a record: the next
//! export to the same prefix aborts what such exports left open (and what the server lists
//! there), except the upload a `--resume` run goes on with. Ctrl-C (see [`Request::cancel`])
//! aborts the upload, or keeps it and its record with `--resume`.

use super::gzip::GzWriter;
use super::manifest::{ExportImage, ExportManifest, MAX_EXPIRY_SECS, Snapshot};
use super::s3;
use super::{Error, Result};
use crate::bundle::{SUMS_FILE, sums};
use crate::format::{self, Disk, OpenOptions};
use crate::manifest::{self, DiskFormat, Manifest};
use crate::staging;
use crate::util::{IO_CHUNK, hex};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Name of Outscale's export manifest in a package: the object whose pre-signed URL is
/// CreateImage's `FileLocation`.
pub const EXPORT_MANIFEST: &str = "manifest.json";
/// Name of the bundle's own manifest in a package, kept so that an import loses nothing
/// (ContentDigests, inspection, audit).
pub const MKOMI_MANIFEST: &str = "mkomi-manifest.json";

/// Where the package goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A directory to create.
    Dir(PathBuf),
    /// A bucket and key prefix.
    S3 {
        /// `s3://BUCKET/PREFIX`.
        location: s3::Location,
        /// Endpoint, region, credentials.
        config: s3::Config,
    },
}

/// What to export.
#[derive(Debug, Clone)]
pub struct Request {
    /// The bundle directory.
    pub bundle: PathBuf,
    /// Where to.
    pub target: Target,
    /// Disk format of the objects; the bundle's when absent.
    pub format: Option<DiskFormat>,
    /// Validity of the pre-signed URLs.
    pub expires: Duration,
    /// Compression threads.
    pub threads: usize,
    /// gzip level (1–9).
    pub level: u32,
    /// Replace a directory target that exists.
    pub force: bool,
    /// Keep the state of interrupted uploads to resume them (bucket targets).
    pub resume: bool,
    /// Multipart part size (bucket targets).
    pub part_size: usize,
    /// With `resume`: still abort the open uploads and remove the objects written when this
    /// export fails or is interrupted (`resume` then only continues uploads an earlier, killed
    /// export left); `publish` sets it unless `--keep-failed`.
    pub abort_on_error: bool,
    /// Where the state of bucket uploads is kept (and the lock of a bucket location); `None`:
    /// `$XDG_CACHE_HOME/mkomi/uploads`, else `~/.cache/mkomi/uploads`.
    pub state_dir: Option<PathBuf>,
    /// When set (by a Ctrl-C handler), the export stops soon with an interruption error,
    /// leaving nothing behind: its temporary directory removed, its uploads aborted (or kept to
    /// be resumed, with `resume`).
    pub cancel: Option<&'static AtomicBool>,
}

/// One object written.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Object {
    /// Its name in the package.
    pub name: String,
    /// Bytes before compression.
    pub bytes: u64,
    /// Bytes written.
    pub compressed: u64,
    /// SHA-256 of the object as written.
    pub sha256: String,
    /// Parts of its multipart upload (bucket targets; 1 for a single PUT).
    pub parts: Option<usize>,
    /// Parts this run sent (fewer than `parts` when an upload was resumed).
    pub parts_sent: Option<usize>,
}

/// A multipart upload that `export` found open and aborted.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AbortedUpload {
    /// `s3://BUCKET/KEY`.
    pub object: String,
    /// Its upload ID.
    pub upload_id: String,
}

/// What `export` did.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Report {
    /// The disk objects.
    pub objects: Vec<Object>,
    /// The pre-signed URL of the export manifest (bucket targets): CreateImage's `FileLocation`.
    pub manifest_url: Option<String>,
    /// Where the package went.
    pub location: String,
    /// Multipart uploads of this package left open by earlier exports (killed, or interrupted
    /// with `--resume`) that this one aborted.
    pub aborted_uploads: Vec<AbortedUpload>,
    /// Wall time.
    #[serde(skip)]
    pub elapsed: Duration,
}

/// Counts and hashes what passes through to the inner writer.
struct HashWriter<W: Write> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The read end of the compression pipe: its end is an error unless the writer finished, so a
/// failed compression aborts the upload instead of completing a truncated object.
struct Guarded<'a, R: Read> {
    inner: R,
    complete: &'a AtomicBool,
}

impl<R: Read> Read for Guarded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() && !self.complete.load(Ordering::Acquire) {
            return Err(std::io::Error::other(
                "the compressed stream ended early (reading or compressing the disk failed)",
            ));
        }
        Ok(n)
    }
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { path, what, source }
}

fn check_cancel(cancel: Option<&AtomicBool>) -> Result<()> {
    match cancel {
        Some(c) if c.load(Ordering::Relaxed) => Err(Error::Interrupted),
        _ => Ok(()),
    }
}

/// The object name of a disk: `sda1.qcow2.gz`.
fn object_name(device: &str, format: DiskFormat) -> String {
    format!("{}.gz", format.file_name(device))
}

/// The size in bytes of the volume that the disk `d` of `m` becomes (`VolumeSize` GiB): the
/// export manifest's `Size`, and the length of a raw object.
fn volume_bytes(m: &Manifest, d: &manifest::Disk) -> u64 {
    m.image
        .block_device_mappings
        .iter()
        .find(|b| b.device_name == d.device_name)
        .map_or(d.virtual_size, |b| {
            (b.bsu.volume_size << 30).max(d.virtual_size)
        })
}

/// Writes the disk `d` of the bundle at `dir` into `out`, compressed, in `format`; returns the
/// uncompressed byte count. The file's SHA-256 must match the manifest's, or nothing counts.
///
/// A raw object is the whole volume of `volume` bytes, the disk followed by zeros, as
/// Outscale's own raw exports are: its `Size` is the volume's, and an importer that has only
/// the export manifest (a pre-signed URL) can tell a cut object only by its length. The zeros
/// cost little: deflate codes a 1 MiB member of zeros in about 1 KiB.
fn write_disk(
    dir: &Path,
    d: &manifest::Disk,
    format: DiskFormat,
    volume: u64,
    out: &mut dyn Write,
    cancel: Option<&AtomicBool>,
) -> Result<u64> {
    let disk = write_disk_data(dir, d, format, out, cancel)?;
    if format != DiskFormat::Raw || disk >= volume {
        return Ok(disk);
    }
    let zeros = vec![0u8; IO_CHUNK];
    let mut pos = disk;
    while pos < volume {
        check_cancel(cancel)?;
        let n = (volume - pos).min(IO_CHUNK as u64) as usize;
        out.write_all(&zeros[..n]).map_err(Error::Write)?;
        pos += n as u64;
    }
    Ok(volume)
}

/// The disk's own bytes for [`write_disk`].
fn write_disk_data(
    dir: &Path,
    d: &manifest::Disk,
    format: DiskFormat,
    out: &mut dyn Write,
    cancel: Option<&AtomicBool>,
) -> Result<u64> {
    let path = dir.join(&d.path);
    if format == d.format {
        // The object is exactly the bundle's file: stream it, checking its digest on the way.
        let mut f = File::open(&path).map_err(io(&path, "cannot open"))?;
        let mut buf = vec![0u8; IO_CHUNK];
        let mut hash = Sha256::new();
        let mut total = 0u64;
        loop {
            check_cancel(cancel)?;
            let n = f.read(&mut buf).map_err(io(&path, "cannot read"))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(Error::Write)?;
            total += n as u64;
        }
        if total != d.file_size || hex(&hash.finalize()) != d.sha256 {
            return Err(Error::Bundle {
                path,
                reason: "differs from the bundle's manifest (run `mkomi verify`)".into(),
            });
        }
        return Ok(total);
    }
    match format {
        DiskFormat::Raw => {
            // The virtual disk, holes as zeros, read through its format.
            let src = format::open_path(&path, &OpenOptions::default())?;
            stream_source(src.as_ref(), out, cancel)
        }
        DiskFormat::Qcow2 => Err(Error::Bundle {
            path,
            reason:
                "a raw bundle exports as raw; register it with --format qcow2 for qcow2 objects"
                    .into(),
        }),
    }
}

/// Writes every byte of `src` in order, zeros for its holes.
fn stream_source(src: &dyn Disk, out: &mut dyn Write, cancel: Option<&AtomicBool>) -> Result<u64> {
    let zeros = vec![0u8; IO_CHUNK];
    let mut buf = vec![0u8; IO_CHUNK];
    let mut extents = Vec::new();
    crate::copy::walk_extents(src, |e| {
        extents.push(*e);
        Ok(())
    })?;
    for e in extents {
        let mut pos = e.offset;
        let end = e.offset + e.len;
        while pos < end {
            check_cancel(cancel)?;
            let n = (end - pos).min(IO_CHUNK as u64) as usize;
            match e.kind {
                format::ExtentKind::Zero => out.write_all(&zeros[..n]),
                format::ExtentKind::Data => {
                    src.read_at(pos, &mut buf[..n])?;
                    out.write_all(&buf[..n])
                }
            }
            .map_err(Error::Write)?;
            pos += n as u64;
        }
    }
    Ok(src.size())
}

/// The export manifest of a bundle's manifest.
fn export_manifest(m: &Manifest, names: &[String], urls: &[Option<String>]) -> ExportManifest {
    let snapshots = m
        .image
        .block_device_mappings
        .iter()
        .zip(names.iter().zip(urls))
        .map(|(bdm, (name, url))| Snapshot {
            delete_on_termination: bdm.bsu.delete_on_vm_deletion,
            device: bdm.device_name.clone(),
            filename: name.clone(),
            iops: bdm.bsu.iops,
            pre_signed_url: url.clone(),
            // The volume's size, as CreateImage makes it; the disk object may be smaller.
            size: bdm.bsu.volume_size << 30,
            volume_type: bdm.bsu.volume_type.name().to_owned(),
        })
        .collect();
    ExportManifest {
        version: super::manifest::VERSION,
        image: ExportImage {
            name: m.image.image_name.clone(),
            description: m.image.description.clone(),
            architecture: match m.image.architecture {
                manifest::Architecture::X86_64 => "x86_64",
                manifest::Architecture::I386 => "i386",
            }
            .to_owned(),
            kind: "machine".to_owned(),
            product_types: vec!["0001".to_owned()],
            public: false,
            snapshots,
        },
    }
}

/// The files beside the disk objects, in the order they are written: the export manifest,
/// mkomi's manifest and `SHA256SUMS` of everything.
fn side_files(
    m: &Manifest,
    names: &[String],
    urls: &[Option<String>],
    objects: &[Object],
    mkomi_bytes: &[u8],
) -> Vec<(String, Vec<u8>)> {
    let em_bytes = export_manifest(m, names, urls).to_bytes();
    let mut sums_entries: Vec<(String, String)> = objects
        .iter()
        .map(|o| (o.name.clone(), o.sha256.clone()))
        .collect();
    let mut files = Vec::new();
    for (name, bytes) in [
        (EXPORT_MANIFEST, em_bytes),
        (MKOMI_MANIFEST, mkomi_bytes.to_vec()),
    ] {
        sums_entries.push((name.to_owned(), hex(&Sha256::digest(&bytes))));
        files.push((name.to_owned(), bytes));
    }
    files.push((
        SUMS_FILE.to_owned(),
        sums::render(&sums_entries).into_bytes(),
    ));
    files
}

/// Exports the bundle: see the module documentation.
pub fn export(req: &Request) -> Result<Report> {
    let started = Instant::now();
    if req.expires.as_secs() == 0 || req.expires.as_secs() > MAX_EXPIRY_SECS {
        return Err(Error::Invalid(format!(
            "--expires {} s: pre-signed URLs last 1 s to 7 days",
            req.expires.as_secs()
        )));
    }
    let manifest_path = req.bundle.join(manifest::FILE_NAME);
    let m = Manifest::read(&manifest_path)?;
    let mkomi_bytes = std::fs::read(&manifest_path).map_err(io(&manifest_path, "cannot read"))?;
    // The disk files, checked to be plain names inside the bundle.
    crate::inspect::disk_files(&req.bundle)?;
    let formats: Vec<DiskFormat> = m
        .disks
        .iter()
        .map(|d| req.format.unwrap_or(d.format))
        .collect();
    let names: Vec<String> = m
        .disks
        .iter()
        .zip(&formats)
        .map(|(d, f)| object_name(&d.device_name, *f))
        .collect();

    match &req.target {
        Target::Dir(out) => export_dir(req, &m, &mkomi_bytes, &formats, &names, out, started),
        Target::S3 { location, config } => export_s3(
            req,
            &m,
            &mkomi_bytes,
            &formats,
            &names,
            location,
            config,
            started,
        ),
    }
}

fn export_dir(
    req: &Request,
    m: &Manifest,
    mkomi_bytes: &[u8],
    formats: &[DiskFormat],
    names: &[String],
    out: &Path,
    started: Instant,
) -> Result<Report> {
    let target = staging::Target::new(out)?;
    target.refuse_existing(req.force)?;
    let tmp = target.stage()?;
    let mut objects = Vec::new();
    for ((d, format), name) in m.disks.iter().zip(formats).zip(names) {
        let path = tmp.path().join(name);
        let file = File::create(&path).map_err(io(&path, "cannot create"))?;
        let mut hw = HashWriter {
            inner: std::io::BufWriter::with_capacity(IO_CHUNK, file),
            hash: Sha256::new(),
            len: 0,
        };
        let mut gz = GzWriter::new(&mut hw, req.threads, req.level).map_err(Error::Write)?;
        let bytes = write_disk(
            &req.bundle,
            d,
            *format,
            volume_bytes(m, d),
            &mut gz,
            req.cancel,
        )?;
        gz.finish().map_err(Error::Write)?;
        hw.inner.flush().map_err(io(&path, "cannot write"))?;
        hw.inner
            .get_ref()
            .sync_all()
            .map_err(io(&path, "cannot sync"))?;
        objects.push(Object {
            name: name.clone(),
            bytes,
            compressed: hw.len,
            sha256: hex(&hw.hash.finalize()),
            parts: None,
            parts_sent: None,
        });
    }
    check_cancel(req.cancel)?;
    for (name, bytes) in side_files(m, names, &vec![None; names.len()], &objects, mkomi_bytes) {
        staging::write_file(&tmp.path().join(&name), &bytes, true)?;
    }
    staging::sync(tmp.path())?;
    target.commit(tmp, true)?;
    Ok(Report {
        objects,
        manifest_url: None,
        location: out.display().to_string(),
        aborted_uploads: Vec::new(),
        elapsed: started.elapsed(),
    })
}

/// Where the state files of uploads are kept: `given`, else `$XDG_CACHE_HOME/mkomi/uploads`
/// (else `~/.cache/mkomi/uploads`), created; `None` when none is given and neither variable is
/// set.
pub fn state_dir(given: Option<&Path>) -> Result<Option<PathBuf>> {
    if let Some(dir) = given {
        std::fs::create_dir_all(dir).map_err(io(dir, "cannot create"))?;
        return Ok(Some(dir.to_path_buf()));
    }
    let Some(cache) = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
    else {
        return Ok(None);
    };
    let dir = cache.join("mkomi").join("uploads");
    std::fs::create_dir_all(&dir).map_err(io(&dir, "cannot create"))?;
    Ok(Some(dir))
}

/// Takes the exclusive lock of uploads to `location` in the state directory `dir`, held until
/// the returned file is dropped (or the process ends: the kernel releases a `flock` of a dead
/// process, so a killed upload never blocks the next one).
pub fn lock_location(dir: &Path, location: &s3::Location) -> Result<File> {
    let mut h = Sha256::new();
    h.update(location.bucket.as_bytes());
    h.update(b"\0");
    h.update(location.key.as_bytes());
    let path = dir.join(format!("{}.lock", &hex(&h.finalize())[..32]));
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path, "cannot open"))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Invalid(format!(
            "another mkomi process is uploading to s3://{}/{} (lock {})",
            location.bucket,
            location.key,
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(io(&path, "cannot lock")(e)),
    }
}

/// The state file of the upload of `key` in `dir`, named by a digest of the target and the
/// bundle's manifest, so that only the same bundle to the same object resumes it.
fn state_file(dir: &Path, location: &s3::Location, key: &str, mkomi_bytes: &[u8]) -> PathBuf {
    let mut h = Sha256::new();
    h.update(location.bucket.as_bytes());
    h.update(b"\0");
    h.update(key.as_bytes());
    h.update(b"\0");
    h.update(mkomi_bytes);
    dir.join(format!("{}.json", &hex(&h.finalize())[..32]))
}

/// Whether `key` is an object of the package at `location`: a disk object (`*.gz`) or a side
/// file directly under its prefix.
fn package_key(location: &s3::Location, key: &str) -> bool {
    let name = if location.key.is_empty() {
        Some(key)
    } else {
        key.strip_prefix(&location.key)
            .and_then(|k| k.strip_prefix('/'))
    };
    name.is_some_and(|n| {
        !n.contains('/')
            && (n.ends_with(".gz") || [EXPORT_MANIFEST, MKOMI_MANIFEST, SUMS_FILE].contains(&n))
    })
}

/// Aborts the multipart uploads of the package at `location` that earlier exports left open
/// (killed, or interrupted with `--resume`), except those recorded in `keep` (the ones this
/// export resumes). They are found in the state files of `dir` and, where the server implements
/// it, in its list of uploads under the prefix.
fn abort_stale_uploads(
    client: &s3::Client,
    location: &s3::Location,
    dir: Option<&Path>,
    keep: &[PathBuf],
) -> Result<Vec<AbortedUpload>> {
    let mut kept = Vec::new();
    for file in keep {
        if let Some((_, upload)) = s3::recorded_upload(file)? {
            kept.push(upload.upload_id);
        }
    }
    let mut aborted = Vec::new();
    let mut seen = Vec::new();
    let mut abort = |upload: s3::OpenUpload| -> Result<()> {
        if client.abort_upload(&upload.key, &upload.upload_id)? {
            aborted.push(AbortedUpload {
                object: format!("s3://{}/{}", location.bucket, upload.key),
                upload_id: upload.upload_id,
            });
        }
        Ok(())
    };
    if let Some(dir) = dir {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir, "cannot read"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json") && !keep.contains(p))
            .collect();
        files.sort();
        for file in files {
            // A file that is not a state file is not ours to judge.
            let Ok(Some((bucket, upload))) = s3::recorded_upload(&file) else {
                continue;
            };
            if bucket != location.bucket || !package_key(location, &upload.key) {
                continue;
            }
            seen.push(upload.upload_id.clone());
            abort(upload)?;
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io(&file, "cannot remove")(e));
                }
                _ => {}
            }
        }
    }
    let prefix = if location.key.is_empty() {
        String::new()
    } else {
        format!("{}/", location.key)
    };
    for upload in client.list_uploads(&prefix)?.unwrap_or_default() {
        if package_key(location, &upload.key)
            && !kept.contains(&upload.upload_id)
            && !seen.contains(&upload.upload_id)
        {
            abort(upload)?;
        }
    }
    Ok(aborted)
}

#[allow(clippy::too_many_arguments)]
fn export_s3(
    req: &Request,
    m: &Manifest,
    mkomi_bytes: &[u8],
    formats: &[DiskFormat],
    names: &[String],
    location: &s3::Location,
    config: &s3::Config,
    started: Instant,
) -> Result<Report> {
    let mut client = s3::Client::new(config, &location.bucket)?;
    if let Some(cancel) = req.cancel {
        client.set_cancel(cancel);
    }
    // Every multipart upload is recorded in a state file from its start, so that one left open
    // by a killed export is found and aborted (or, with --resume, continued) by the next.
    let dir = state_dir(req.state_dir.as_deref())?;
    // One upload to a location at a time: a second one would abort the first one's open
    // multipart uploads as stale, and the two would write over each other's resume state.
    let _lock = match &dir {
        Some(d) => Some(lock_location(d, location)?),
        None => None,
    };
    if req.resume && dir.is_none() {
        return Err(Error::Invalid(
            "--resume needs XDG_CACHE_HOME or HOME".into(),
        ));
    }
    let states: Vec<Option<PathBuf>> = names
        .iter()
        .map(|name| {
            dir.as_deref()
                .map(|d| state_file(d, location, &location.join(name), mkomi_bytes))
        })
        .collect();
    let keep: Vec<PathBuf> = if req.resume {
        states.iter().flatten().cloned().collect()
    } else {
        Vec::new()
    };
    let aborted_uploads = abort_stale_uploads(&client, location, dir.as_deref(), &keep)?;
    // The keys this run has written. A run that fails or is interrupted without --resume
    // removes them again, so that no part of a package is left behind: a package is its
    // objects, its manifests and SHA256SUMS together, or nothing.
    let mut written = Vec::new();
    let run = upload_package(
        req,
        m,
        mkomi_bytes,
        formats,
        names,
        location,
        &client,
        &states,
        &mut written,
    );
    let (objects, manifest_url) = match run {
        Ok(done) => done,
        Err(e) => {
            if !req.resume || req.abort_on_error {
                for key in &written {
                    // Best effort: the error that stopped the export is the one to report.
                    let _ = client.delete(key);
                }
            }
            return Err(e);
        }
    };
    Ok(Report {
        objects,
        manifest_url: Some(manifest_url),
        location: location.to_string(),
        aborted_uploads,
        elapsed: started.elapsed(),
    })
}

/// Uploads the package's objects, then its manifests and `SHA256SUMS`, adding each key to
/// `written` once it is there; returns the objects and the manifest's pre-signed URL.
#[allow(clippy::too_many_arguments)]
fn upload_package(
    req: &Request,
    m: &Manifest,
    mkomi_bytes: &[u8],
    formats: &[DiskFormat],
    names: &[String],
    location: &s3::Location,
    client: &s3::Client,
    states: &[Option<PathBuf>],
    written: &mut Vec<String>,
) -> Result<(Vec<Object>, String)> {
    let mut objects = Vec::new();
    let mut urls = Vec::new();
    for (((d, format), name), state) in m.disks.iter().zip(formats).zip(names).zip(states) {
        check_cancel(req.cancel)?;
        let key = location.join(name);
        // The disk is compressed on its own threads into a pipe that the upload reads: the
        // object never exists uncompressed, nor whole in memory.
        let (reader, writer) = std::io::pipe().map_err(Error::Write)?;
        let complete = AtomicBool::new(false);
        let (put, produced) = std::thread::scope(|scope| {
            let complete = &complete;
            let producer = scope.spawn(move || -> Result<(u64, u64, String)> {
                let mut hw = HashWriter {
                    inner: writer,
                    hash: Sha256::new(),
                    len: 0,
                };
                let mut gz =
                    GzWriter::new(&mut hw, req.threads, req.level).map_err(Error::Write)?;
                let bytes = write_disk(
                    &req.bundle,
                    d,
                    *format,
                    volume_bytes(m, d),
                    &mut gz,
                    req.cancel,
                )?;
                gz.finish().map_err(Error::Write)?;
                // Only now may the upload see the end of the stream as the end of the object.
                complete.store(true, Ordering::Release);
                let HashWriter { inner, hash, len } = hw;
                drop(inner);
                Ok((bytes, len, hex(&hash.finalize())))
            });
            let put = client.put_stream_with(
                &key,
                Guarded {
                    inner: reader,
                    complete,
                },
                &s3::PutOptions {
                    part_size: req.part_size,
                    parallel_parts: s3::DEFAULT_PARALLEL_PARTS,
                    state: state.as_deref(),
                    keep_on_error: req.resume && !req.abort_on_error,
                },
            );
            let produced = producer
                .join()
                .unwrap_or_else(|_| Err(Error::Invalid("the compression thread failed".into())));
            (put, produced)
        });
        // A finished object is recorded before anything else may stop the run, so that the
        // cleanup of an interrupted export removes it.
        if put.is_ok() && produced.is_ok() {
            written.push(key.clone());
        }
        check_cancel(req.cancel)?;
        // Each side's failure shows on the other as a broken stream: report the cause. The
        // upload ends the stream early only when the data stopped (s3::Error::Read); any other
        // upload error is the cause, and the compressor's broken pipe its consequence.
        let (put, (bytes, compressed, sha256)) = match (put, produced) {
            (Ok(put), Ok(produced)) => (put, produced),
            (Err(s3::Error::Read { .. }), Err(e)) | (Ok(_), Err(e)) => return Err(e),
            (Err(e), _) => return Err(e.into()),
        };
        urls.push(Some(client.presign_get(&key, req.expires)?));
        objects.push(Object {
            name: name.clone(),
            bytes,
            compressed,
            sha256,
            parts: Some(put.parts),
            parts_sent: Some(put.parts_sent),
        });
    }
    check_cancel(req.cancel)?;
    // The manifest goes up last among the objects it names; SHA256SUMS after it.
    for (name, bytes) in side_files(m, names, &urls, &objects, mkomi_bytes) {
        check_cancel(req.cancel)?;
        let key = location.join(&name);
        // Recorded first: a put that fails half-way may still have made the object.
        written.push(key.clone());
        client.put_bytes(&key, &bytes)?;
    }
    let manifest_url = client.presign_get(&location.join(EXPORT_MANIFEST), req.expires)?;
    Ok((objects, manifest_url))
}
