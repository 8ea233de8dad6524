//! `import`: an export package (Outscale's or mkomi's) in, a new bundle out.
//!
//! The manifest is read from a local path, an `s3://` object or an http(s) URL (pre-signed or
//! not) and checked as hostile before anything is fetched (see
//! [`ExportManifest::parse`](super::manifest::ExportManifest::parse)); expired pre-signed URLs are
//! reported with their expiry. Each object is streamed — download, SHA-256 of the compressed
//! bytes, gunzip, a bound on the decompressed size (a gzip bomb, or an object larger than its
//! declared `Size`, stops there). A raw object must decompress to exactly its disk's size: a
//! gzip file cut at a member boundary is still valid gzip, and only its length shows the cut.
//! Before anything is written the import is refused if it cannot fit in the free space of the
//! output's file system. A raw object goes straight into the copy engine as it arrives
//! (see [`incoming`]): download to bundle in one pass, the disks inspected and audited from the
//! bundle's files afterwards. A qcow2 object, whose tables may follow its data (mkomi's own do),
//! cannot be read in one pass: it lands in a sparse work file, which the copy engine then reads
//! into the bundle. It is never taken as it is: a qcow2 file can hold more than its disk
//! (internal snapshots, bitmaps, unreferenced clusters), and a bundle's disk holds its disk only. `SHA256SUMS` and mkomi's manifest, when the package has them, are checked:
//! every object's digest, every disk's size and ContentDigest.
//! The bundle is made in a work directory and renamed into place only when every check passed.

use super::incoming::{self, Expect, RawStream};
use super::manifest::{ExportManifest, ObjectFormat, Snapshot, presigned_expiry};
use super::package::{EXPORT_MANIFEST, MKOMI_MANIFEST};
use super::{Error, Result, s3};
use crate::audit::image::Policy;
use crate::bundle::checks::Checks;
use crate::bundle::register::{self, Volume};
use crate::bundle::{SUMS_FILE, sums};
use crate::copy;
use crate::format::{self, Disk, OpenOptions};
use crate::manifest::{Architecture, DiskFormat, Manifest, VolumeType, rules};
use crate::progress::Progress;
use crate::sink::OutputFormat;
use crate::staging::{Target, TempDir};
use crate::storage::{ReadAt, file::LocalFile};
use crate::util::{hex, utc_timestamp};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

/// Largest `SHA256SUMS` or mkomi manifest fetched beside an export manifest.
const MAX_SIDE_FILE: u64 = 1 << 20;

/// Where the manifest (and the objects it names by `Filename`) come from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A local manifest file.
    Local(PathBuf),
    /// An object: `s3://BUCKET/KEY`.
    S3 {
        /// The manifest object.
        location: s3::Location,
        /// Endpoint, region, credentials.
        config: s3::Config,
    },
    /// An http(s) URL.
    Http(String),
}

/// What to import.
#[derive(Debug, Clone)]
pub struct Request {
    /// The export manifest.
    pub origin: Origin,
    /// The bundle directory to create.
    pub output: PathBuf,
    /// Replace `output` if it exists.
    pub force: bool,
    /// Disk format of the new bundle.
    pub format: DiskFormat,
    /// `CreationDate` of the new bundle.
    pub creation_epoch: i64,
    /// Now, in seconds since the epoch, to judge pre-signed URLs' expiry.
    pub now: i64,
    /// fsync the bundle.
    pub sync: bool,
    /// The checks of the disks against the image's fields: the importer's own, never the
    /// package's (its `ChecksSkipped` records what its maker chose, and a package is untrusted).
    pub checks: Checks,
}

/// What `import` did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The new bundle.
    pub bundle: register::Report,
    /// Whether `SHA256SUMS` was there and every object matched it.
    pub sums_checked: bool,
    /// Whether mkomi's manifest was there and every ContentDigest matched it.
    pub digests_checked: bool,
    /// SHA-256 of each object as received, by file name (recorded when nothing was there to
    /// check them against).
    pub received: Vec<(String, String)>,
    /// Wall time.
    pub elapsed: Duration,
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { path, what, source }
}

fn bad(what: &str, reason: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{what}: {reason}"))
}

impl Origin {
    /// How the origin is named in messages.
    pub fn describe(&self) -> String {
        match self {
            Origin::Local(p) => p.display().to_string(),
            Origin::S3 { location, .. } => location.to_string(),
            Origin::Http(url) => redact(url),
        }
    }

    /// Reads a small file beside the manifest; `None` when it is not there (or cannot be
    /// reached beside a pre-signed URL).
    fn side_file(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Origin::Local(p) => {
                let path = p.parent().unwrap_or(Path::new(".")).join(name);
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.is_file() && m.len() <= MAX_SIDE_FILE => std::fs::read(&path)
                        .map(Some)
                        .map_err(io(&path, "cannot read")),
                    Ok(m) if m.is_file() => Err(bad(
                        &path.display().to_string(),
                        format!("{} bytes: too large", m.len()),
                    )),
                    Ok(_) => Err(bad(&path.display().to_string(), "not a regular file")),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io(&path, "cannot read")(e)),
                }
            }
            Origin::S3 { location, config } => {
                let client = s3::Client::new(config, &location.bucket)?;
                get_small(&client, &sibling(&location.key, name), MAX_SIDE_FILE)
            }
            // Pre-signed URLs sign one object: siblings cannot be reached.
            Origin::Http(_) => Ok(None),
        }
    }

    /// Reads the manifest itself.
    fn manifest(&self) -> Result<Vec<u8>> {
        let max = super::manifest::MAX_BYTES;
        match self {
            Origin::Local(p) => {
                let meta = std::fs::metadata(p).map_err(io(p, "cannot read"))?;
                if meta.len() > max {
                    return Err(bad(&p.display().to_string(), "too large for a manifest"));
                }
                std::fs::read(p).map_err(io(p, "cannot read"))
            }
            Origin::S3 { location, config } => {
                let client = s3::Client::new(config, &location.bucket)?;
                get_small(&client, &location.key, max)?
                    .ok_or_else(|| bad(&location.to_string(), "no such object"))
            }
            Origin::Http(url) => {
                let mut body = Vec::new();
                s3::get_url(url)?
                    .take(max + 1)
                    .read_to_end(&mut body)
                    .map_err(|e| bad(&redact(url), e))?;
                if body.len() as u64 > max {
                    return Err(bad(&redact(url), "too large for a manifest"));
                }
                Ok(body)
            }
        }
    }

    /// Opens the object of a snapshot: its pre-signed URL when it has one, else its `Filename`
    /// beside the manifest. Returns it with its (compressed) size.
    fn object(&self, snap: &Snapshot) -> Result<(Box<dyn Read + Send>, u64)> {
        fn sized<R: Read + Send + 'static>(r: R, size: u64) -> (Box<dyn Read + Send>, u64) {
            (Box::new(r), size)
        }
        if let Some(url) = &snap.pre_signed_url {
            if let Some(rest) = url.strip_prefix("s3://") {
                let config = match self {
                    Origin::S3 { config, .. } => config.clone(),
                    _ => s3::Config::from_env(None, None)?,
                };
                let location = s3::Location::parse(&format!("s3://{rest}"))?;
                let client = s3::Client::new(&config, &location.bucket)?;
                let r = client.get_stream(&location.key)?;
                let size = r.size();
                return Ok(sized(r, size));
            }
            let r = s3::get_url(url)?;
            let size = r.size();
            return Ok(sized(r, size));
        }
        match self {
            Origin::Local(p) => {
                let path = p.parent().unwrap_or(Path::new(".")).join(&snap.filename);
                let meta = std::fs::symlink_metadata(&path).map_err(io(&path, "cannot open"))?;
                if !meta.is_file() {
                    return Err(bad(&path.display().to_string(), "not a regular file"));
                }
                let f = File::open(&path).map_err(io(&path, "cannot open"))?;
                Ok(sized(f, meta.len()))
            }
            Origin::S3 { location, config } => {
                let client = s3::Client::new(config, &location.bucket)?;
                let r = client.get_stream(&sibling(&location.key, &snap.filename))?;
                let size = r.size();
                Ok(sized(r, size))
            }
            Origin::Http(url) => {
                let base = url.split('?').next().unwrap_or(url);
                let dir = base.rsplit_once('/').map_or(base, |(d, _)| d);
                let r = s3::get_url(&format!("{dir}/{}", snap.filename))?;
                let size = r.size();
                Ok(sized(r, size))
            }
        }
    }
}

/// The key of `name` beside the object `key`.
fn sibling(key: &str, name: &str) -> String {
    match key.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{name}"),
        None => name.to_owned(),
    }
}

/// An object of at most `max` bytes; `None` when there is none.
fn get_small(client: &s3::Client, key: &str, max: u64) -> Result<Option<Vec<u8>>> {
    match client.head(key)? {
        None => Ok(None),
        Some(size) if size > max => Err(bad(
            &format!("s3://{}/{key}", client.bucket()),
            format!("{size} bytes: too large"),
        )),
        Some(_) => {
            let mut body = Vec::new();
            client
                .get_stream(key)?
                .take(max + 1)
                .read_to_end(&mut body)
                .map_err(|e| bad(&format!("s3://{}/{key}", client.bucket()), e))?;
            Ok(Some(body))
        }
    }
}

/// A URL without its query (which holds a pre-signed URL's signature), for messages.
pub fn redact(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => url.to_owned(),
    }
}

/// A manifest's `VolumeType`, checked by `ExportManifest::parse`.
fn volume_type(s: &str) -> VolumeType {
    s.parse().unwrap_or(VolumeType::Standard)
}

/// Imports the package: see the module documentation.
///
/// Once `cancel` is set (Ctrl-C), the import stops at the next chunk of data, or at once while it
/// waits for a server, with [`copy::Error::Interrupted`], and the work directory is removed with
/// all it holds (the decompressed disks).
pub fn import(
    req: &Request,
    progress: &Progress,
    cancel: Option<&'static AtomicBool>,
) -> Result<Report> {
    let result = run(req, progress, cancel);
    // By now the work directory is gone, whatever stopped the import: an error seen after
    // Ctrl-C (a download cut short, a closed channel) is the interruption.
    match result {
        Err(_) if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) => {
            Err(copy::Error::Interrupted.into())
        }
        other => other,
    }
}

fn run(req: &Request, progress: &Progress, cancel: Option<&'static AtomicBool>) -> Result<Report> {
    let started = Instant::now();
    let what = req.origin.describe();
    let origin = req.origin.clone();
    let em_bytes = interruptible(cancel, move || origin.manifest())?;
    let em = ExportManifest::parse(&em_bytes).map_err(|e| bad(&what, e))?;
    for s in &em.image.snapshots {
        if let Some(expiry) = s.pre_signed_url.as_deref().and_then(presigned_expiry)
            && expiry <= req.now
        {
            return Err(bad(
                &what,
                format!(
                    "the PreSignedUrl of {} expired at {}",
                    s.device,
                    utc_timestamp(expiry)
                ),
            ));
        }
    }
    let origin = req.origin.clone();
    let sums = match interruptible(cancel, move || origin.side_file(SUMS_FILE))? {
        Some(bytes) => {
            Some(sums::parse(&bytes).map_err(|e| bad(&format!("{what}: {SUMS_FILE}"), e))?)
        }
        None => None,
    };
    // A SHA256SUMS beside the manifest vouches for the manifest too (an export lists it).
    if let Some(sums) = &sums {
        let sha = hex(&Sha256::digest(&em_bytes));
        if let Some((_, listed)) = sums.iter().find(|(n, _)| n == EXPORT_MANIFEST)
            && *listed != sha
        {
            return Err(bad(
                &what,
                format!("SHA-256 {sha} differs from {SUMS_FILE}'s {listed}"),
            ));
        }
    }
    let origin = req.origin.clone();
    let mkomi = match interruptible(cancel, move || origin.side_file(MKOMI_MANIFEST))? {
        Some(bytes) => {
            let m = Manifest::parse(&bytes)
                .map_err(|e| bad(&format!("{what}: {MKOMI_MANIFEST}"), e))?;
            if let Some(sums) = &sums {
                let sha = hex(&Sha256::digest(&bytes));
                if !sums.iter().any(|(n, h)| n == MKOMI_MANIFEST && *h == sha) {
                    return Err(bad(
                        &what,
                        format!("{MKOMI_MANIFEST} does not match {SUMS_FILE}"),
                    ));
                }
            }
            Some(m)
        }
        None => None,
    };
    if let Some(m) = &mkomi {
        let same = m.disks.len() == em.image.snapshots.len()
            && m.disks
                .iter()
                .zip(&em.image.snapshots)
                .all(|(d, s)| d.device_name == s.device && d.virtual_size <= s.size);
        if !same {
            return Err(bad(
                &what,
                format!("{MKOMI_MANIFEST} lists other disks than the export manifest"),
            ));
        }
    }

    let target = Target::new(&req.output).map_err(|e| Error::Invalid(e.to_string()))?;
    target.refuse_existing(req.force)?;

    // Each object is opened (its size learnt) before anything is written, so that an import
    // that cannot fit is refused first.
    let mut objects = Vec::with_capacity(em.image.snapshots.len());
    for s in &em.image.snapshots {
        let (origin, snap) = (req.origin.clone(), s.clone());
        objects.push(interruptible(cancel, move || origin.object(&snap))?);
    }
    let need = space_needed(req.format, &em, mkomi.as_ref(), &objects);
    let free = free_space(target.parent())?;
    if need > free {
        return Err(Error::Invalid(format!(
            "{}: the import needs {need} bytes, but its file system has {free} bytes free",
            req.output.display()
        )));
    }

    let work = target.scratch("import")?;

    let mut received = Vec::new();
    let mut volumes = Vec::new();
    let mut sources: Vec<Arc<dyn Disk>> = Vec::new();
    for (i, (s, (object, _))) in em.image.snapshots.iter().zip(objects).enumerate() {
        let format = s.format().unwrap_or(ObjectFormat::Raw);
        let open: incoming::Opener = Box::new(move || Ok(object));
        let disk = mkomi
            .as_ref()
            .and_then(|m| m.disks.iter().find(|d| d.device_name == s.device));
        let listed = match &sums {
            Some(sums) => match sums.iter().find(|(n, _)| *n == s.filename) {
                Some((_, h)) => Some(h.clone()),
                None => return Err(bad(&s.filename, format!("not listed in {SUMS_FILE}"))),
            },
            None => None,
        };
        let got = std::sync::Arc::new(std::sync::Mutex::new(None));
        let source: Arc<dyn Disk> = match format {
            ObjectFormat::Raw => {
                // A raw object holds the whole disk: the size mkomi's manifest gives, else the
                // volume's (`Size`), as Outscale's own raw exports do.
                // mkomi's packages hold the volume (`Size`): the disk, then zeros.
                let (size, size_from, tail) = match disk {
                    Some(d) => (
                        d.virtual_size,
                        MKOMI_MANIFEST.to_owned(),
                        s.size.saturating_sub(d.virtual_size),
                    ),
                    None => (s.size, format!("the Size in {EXPORT_MANIFEST}"), 0),
                };
                if size == 0 {
                    return Err(bad(&s.filename, "an empty disk"));
                }
                let expect = Expect {
                    size_from,
                    sha256: listed,
                };
                Arc::new(
                    RawStream::new(&s.filename, size, expect, open, got.clone(), cancel)
                        .with_zero_tail(tail),
                )
            }
            ObjectFormat::Qcow2 => {
                // Each object gets its own directory: a backing file it names finds nothing
                // there but itself.
                let max = qcow2_object_max(s.size);
                let dir = work.path().join(i.to_string());
                std::fs::create_dir(&dir).map_err(io(&dir, "cannot create"))?;
                let path = dir.join(s.filename.trim_end_matches(".gz"));
                let task = progress.task(&s.filename);
                let (_, sha) = incoming::spool(open, &s.filename, &path, max, cancel)
                    .map_err(|e| in_object(e, &s.filename))?;
                task.finish();
                if let Some(h) = listed
                    && h != sha
                {
                    return Err(bad(
                        &s.filename,
                        format!("SHA-256 {sha} differs from {SUMS_FILE}'s {h}"),
                    ));
                }
                *got.lock().map_err(|_| bad(&s.filename, "poisoned"))? = Some(sha);
                // The spool is opened once, as a storage: its header is checked and its
                // format read through that one descriptor.
                let spooled: Arc<dyn ReadAt> =
                    Arc::new(LocalFile::open(&path).map_err(format::Error::from)?);
                // A package's disks stand alone. Bytes 8..20 of a qcow2 header hold the backing
                // file's offset and length (qcow2.txt).
                let mut hdr = [0u8; 20];
                // (Shorter than a header, it is no qcow2: opening it says so below.)
                let named = match spooled.read_at(0, &mut hdr) {
                    Ok(()) => hdr[8..20].iter().any(|&b| b != 0),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
                    Err(e) => return Err(io(&path, "cannot read")(e)),
                };
                if named {
                    return Err(bad(
                        &s.filename,
                        "names a backing file: a package's disks stand alone",
                    ));
                }
                let src = format::detect::open(spooled, &OpenOptions::default())?;
                let expected = disk.map_or(src.size(), |d| d.virtual_size);
                if src.size() != expected || src.size() > s.size {
                    return Err(bad(
                        &s.filename,
                        format!(
                            "a disk of {} bytes, but the manifests say {}",
                            src.size(),
                            expected.min(s.size)
                        ),
                    ));
                }
                src
            }
        };
        sources.push(source);
        received.push((s.filename.clone(), got));
        let mut v = Volume::new(&s.device, Path::new(&s.filename));
        // mkomi's manifest keeps the mapping as registered (a volume may be larger than its
        // disk); Outscale's has the volume's size in bytes.
        let registered = mkomi.as_ref().and_then(|m| {
            m.image
                .block_device_mappings
                .iter()
                .find(|b| b.device_name == s.device)
        });
        match registered {
            Some(b) => {
                v.volume_size = Some(b.bsu.volume_size);
                v.volume_type = b.bsu.volume_type;
                v.iops = b.bsu.iops;
                v.delete_on_vm_deletion = b.bsu.delete_on_vm_deletion;
            }
            None => {
                v.volume_size = Some(rules::min_volume_gib(s.size));
                v.volume_type = volume_type(&s.volume_type);
                v.iops = s.iops;
                v.delete_on_vm_deletion = s.delete_on_termination;
            }
        }
        volumes.push(v);
    }

    let architecture = match em.image.architecture.as_str() {
        "i386" => Architecture::I386,
        _ => Architecture::X86_64,
    };
    let staged = work.path().join("bundle");
    let mut volumes = volumes.into_iter();
    let root = volumes.next().ok_or_else(|| bad(&what, "no snapshots"))?;
    let request = register::Request {
        output: staged.clone(),
        force: false,
        format: OutputFormat::of(req.format),
        name: Some(em.image.name.clone()),
        description: em.image.description.clone(),
        architecture: Some(architecture),
        boot_modes: mkomi
            .as_ref()
            .map(|m| m.image.boot_modes.clone())
            .unwrap_or_default(),
        // The importer's checks: a package's `ChecksSkipped` is its maker's word, and the
        // package is untrusted. A boot loader is not required: the package is an image that
        // exists already (an Outscale export lists no BootModes), and import records the boot
        // modes it finds.
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
    };
    let mut report = register::register_streamed(&request, sources, progress, cancel)?;
    if let Some(m) = &mkomi {
        for (new, old) in report.manifest.disks.iter().zip(&m.disks) {
            if new.content_digest != old.content_digest {
                return Err(bad(
                    &what,
                    format!(
                        "{}: ContentDigest {} differs from {MKOMI_MANIFEST}'s {}",
                        new.device_name, new.content_digest, old.content_digest
                    ),
                ));
            }
        }
    }
    // Into place as register puts a bundle: an existing one (--force) moved aside first.
    target.commit(TempDir::adopt(staged), req.sync)?;
    report.output = req.output.clone();
    Ok(Report {
        bundle: report,
        sums_checked: sums.is_some(),
        digests_checked: mkomi.is_some(),
        received: received
            .into_iter()
            .map(|(name, got)| {
                let sha = got.lock().ok().and_then(|g| g.clone()).unwrap_or_default();
                (name, sha)
            })
            .collect(),
        elapsed: started.elapsed(),
    })
}

/// The most a qcow2 object of a `size`-byte volume may decompress to: the disk's data and the
/// qcow2's metadata (well under 1/64 of the volume at 64 KiB clusters).
fn qcow2_object_max(size: u64) -> u64 {
    size.saturating_add(size / 64).saturating_add(64 << 20)
}

/// The bytes an import will write at the least into the output's file system, from what the
/// manifests declare and the objects' compressed sizes (see the README, "import").
///
/// A raw output holds each disk at its declared size (mkomi's manifest's, else `Size`). A qcow2
/// output, and the work copy of a qcow2 object, hold only what is not zeros, which no manifest
/// declares; for them the bound is the least an object can hold that is not zeros, so that the
/// import is refused only when it cannot fit. Deflate codes a run of zeros in less than 1 byte
/// per 128 (a 258-byte match at distance 1 takes 13 bits even with the fixed codes), and never
/// grows other data by more than its block and member headers (well under 1/1024), so an
/// object of `c` compressed bytes that decompresses to at most `d` bytes holds at least
/// `c - c / 1024 - d / 128` bytes that are not zeros. (An encoder that stored zeros as literals
/// would make this bound too high; no gzip tool does.)
fn space_needed(
    format: DiskFormat,
    em: &ExportManifest,
    mkomi: Option<&Manifest>,
    objects: &[(Box<dyn Read + Send>, u64)],
) -> u64 {
    let mut need = 0u64;
    for (s, (_, compressed)) in em.image.snapshots.iter().zip(objects) {
        let disk = mkomi
            .and_then(|m| m.disks.iter().find(|d| d.device_name == s.device))
            .map_or(s.size, |d| d.virtual_size);
        let qcow2 = s.format() == Some(ObjectFormat::Qcow2);
        let out_max = if qcow2 {
            qcow2_object_max(s.size)
        } else {
            disk
        };
        let least = compressed
            .saturating_sub(compressed / 1024)
            .saturating_sub(out_max / 128);
        need = need.saturating_add(match format {
            DiskFormat::Raw => disk,
            DiskFormat::Qcow2 => least,
        });
        if qcow2 {
            need = need.saturating_add(least);
        }
    }
    need
}

/// The bytes free for an unprivileged user on the file system of `dir`.
fn free_space(dir: &Path) -> Result<u64> {
    let f = File::open(dir).map_err(io(dir, "cannot open"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: fstatvfs on a descriptor we own writes only into `st`, which it fills on success.
    let r = unsafe { libc::fstatvfs(f.as_raw_fd(), st.as_mut_ptr()) };
    if r != 0 {
        return Err(io(dir, "cannot measure the free space")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fstatvfs succeeded, so `st` is filled.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Runs `f` (a request to a server) on its own thread, so that a set `cancel` stops the wait at
/// once, whatever the server does.
fn interruptible<T: Send + 'static>(
    cancel: Option<&'static AtomicBool>,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let Some(flag) = cancel else {
        return f();
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(r) => return r,
            Err(RecvTimeoutError::Timeout) if flag.load(Ordering::Relaxed) => {
                return Err(copy::Error::Interrupted.into());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Error::Invalid("a request stopped without an answer".into()));
            }
        }
    }
}

/// Names the object in an error about it.
fn in_object(e: Error, name: &str) -> Error {
    match e {
        Error::Invalid(m) if !m.contains(name) => Error::Invalid(format!("{name}: {m}")),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_needed_is_the_disks_for_raw_and_the_least_not_zeros_for_qcow2() {
        const MIB: u64 = 1 << 20;
        let em = ExportManifest::parse(
            serde_json::json!({
                "Version": 1,
                "Image": {
                    "Name": "web", "Architecture": "x86_64", "Type": "machine",
                    "ProductTypes": ["0001"], "Public": false,
                    "Snapshots": [
                        {"DeleteOnTermination": true, "Device": "/dev/sda1",
                         "Filename": "sda1.raw.gz", "Iops": null, "PreSignedUrl": null,
                         "Size": 1024 * MIB, "VolumeType": "standard"},
                        {"DeleteOnTermination": true, "Device": "/dev/sdb",
                         "Filename": "sdb.qcow2.gz", "Iops": null, "PreSignedUrl": null,
                         "Size": 2048 * MIB, "VolumeType": "standard"}
                    ]
                }
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let objects = || -> Vec<(Box<dyn Read + Send>, u64)> {
            vec![
                (Box::new(std::io::empty()), 100 * MIB),
                (Box::new(std::io::empty()), 300 * MIB),
            ]
        };
        // Raw: the root disk whole (1 GiB), plus the qcow2 object's work copy.
        let qcow2_least = 300 * MIB - 300 * MIB / 1024 - qcow2_object_max(2048 * MIB) / 128;
        assert_eq!(
            space_needed(DiskFormat::Raw, &em, None, &objects()),
            1024 * MIB + 2048 * MIB + qcow2_least
        );
        // qcow2: what the objects hold at least that is not zeros, the qcow2 one twice.
        let raw_least = 100 * MIB - 100 * MIB / 1024 - 1024 * MIB / 128;
        assert_eq!(
            space_needed(DiskFormat::Qcow2, &em, None, &objects()),
            raw_least + 2 * qcow2_least
        );
        // Objects that are mostly zeros need nothing from the bound.
        let tiny = || -> Vec<(Box<dyn Read + Send>, u64)> {
            vec![
                (Box::new(std::io::empty()), MIB),
                (Box::new(std::io::empty()), MIB),
            ]
        };
        assert_eq!(space_needed(DiskFormat::Qcow2, &em, None, &tiny()), 0);
    }
}
