//! `verify`: re-reads a bundle and reports every way it differs from its manifest.
//!
//! Each disk is checked twice over, independently: the file's size and SHA-256 (what
//! `sha256sum -c` would see) and, read through its format, its virtual size and
//! `ContentDigest`. Those jobs run on a pool of one thread per core, so disks are verified in
//! parallel in bounded memory.

use super::{Error, Result, SUMS_FILE, is_safe_member_name, sums};
use crate::copy::{self, Options};
use crate::format::{self, Format};
use crate::manifest::{self, Disk, Manifest};
use crate::progress::Progress;
use crate::sink::NullSink;
use crate::util::{hex, sha256_file};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The outcome of a verification.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// One line per difference, naming the file; empty when the bundle is intact.
    pub failures: Vec<String>,
    /// Disks checked.
    pub disks: usize,
    /// Bytes of disk files read.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl Report {
    /// True when nothing differs.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

enum Job<'a> {
    File(&'a Disk),
    Content(&'a Disk),
}

/// Verifies the bundle in `dir`. `Err` only when there is no readable manifest to check against.
pub fn verify(dir: &Path, progress: &Progress) -> Result<Report> {
    let started = Instant::now();
    if !dir.is_dir() {
        return Err(Error::Invalid {
            path: dir.to_owned(),
            reason: "not a bundle directory".into(),
        });
    }
    let manifest_path = dir.join(manifest::FILE_NAME);
    let manifest = Manifest::read(&manifest_path)?;
    let manifest_bytes =
        std::fs::read(&manifest_path).map_err(super::io_err(&manifest_path, "cannot read"))?;
    let mut failures = Vec::new();

    let mut names = BTreeSet::new();
    let mut disks = Vec::new();
    for d in &manifest.disks {
        if !is_safe_member_name(&d.path) {
            failures.push(format!(
                "{}: disk path {:?} is not a plain file name in the bundle",
                manifest::FILE_NAME,
                d.path
            ));
        } else if !names.insert(d.path.as_str())
            || d.path == manifest::FILE_NAME
            || d.path == SUMS_FILE
        {
            failures.push(format!(
                "{}: disk path {:?} used twice",
                manifest::FILE_NAME,
                d.path
            ));
        } else {
            disks.push(d);
        }
    }
    let mapped: Vec<&str> = manifest
        .image
        .block_device_mappings
        .iter()
        .map(|m| m.device_name.as_str())
        .collect();
    let with_disks: Vec<&str> = manifest
        .disks
        .iter()
        .map(|d| d.device_name.as_str())
        .collect();
    if mapped != with_disks {
        failures.push(format!(
            "{}: BlockDeviceMappings {mapped:?} do not match Disks {with_disks:?}",
            manifest::FILE_NAME
        ));
    }

    check_sums(dir, &manifest_bytes, &disks, &mut failures);
    check_members(dir, &names, &mut failures);

    let jobs: Vec<Job> = disks
        .iter()
        .flat_map(|d| [Job::File(d), Job::Content(d)])
        .collect();
    let results: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
    let next = Mutex::new(0usize);
    let bytes = Mutex::new(0u64);
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(jobs.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = {
                        let Ok(mut n) = next.lock() else { return };
                        let i = *n;
                        *n += 1;
                        i
                    };
                    let Some(job) = jobs.get(i) else { return };
                    let (read, found) = match job {
                        Job::File(d) => check_file(dir, d),
                        Job::Content(d) => check_content(dir, d, progress),
                    };
                    if let Ok(mut b) = bytes.lock() {
                        *b += read;
                    }
                    if let Ok(mut r) = results.lock() {
                        r.extend(found.into_iter().map(|f| (i, f)));
                    }
                }
            });
        }
    });
    let mut found = results.into_inner().unwrap_or_default();
    found.sort();
    failures.extend(found.into_iter().map(|(_, f)| f));
    Ok(Report {
        failures,
        disks: disks.len(),
        bytes: bytes.into_inner().unwrap_or_default(),
        elapsed: started.elapsed(),
    })
}

/// SHA256SUMS lists exactly the manifest and the disks, with the manifest's digests.
fn check_sums(dir: &Path, manifest_bytes: &[u8], disks: &[&Disk], failures: &mut Vec<String>) {
    let listed = match sums::read(&dir.join(SUMS_FILE)) {
        Ok(l) => l,
        Err(e) => {
            failures.push(one_line(&e.to_string(), dir));
            return;
        }
    };
    let manifest_sha = hex(&Sha256::digest(manifest_bytes));
    let expected = std::iter::once((manifest::FILE_NAME, manifest_sha.as_str()))
        .chain(disks.iter().map(|d| (d.path.as_str(), d.sha256.as_str())));
    for (name, sha) in expected {
        match listed.iter().find(|(n, _)| n == name) {
            None => failures.push(format!("{SUMS_FILE}: does not list {name}")),
            Some((_, listed_sha)) if listed_sha != sha => failures.push(if name == manifest::FILE_NAME {
                format!("{name}: SHA-256 {sha} differs from {SUMS_FILE} ({listed_sha}): the manifest was edited")
            } else {
                format!("{name}: manifest Sha256 {sha} differs from {SUMS_FILE} ({listed_sha})")
            }),
            Some(_) => {}
        }
    }
    for (name, _) in &listed {
        if name != manifest::FILE_NAME && !disks.iter().any(|d| &d.path == name) {
            failures.push(format!(
                "{SUMS_FILE}: lists {name}, which is not in the manifest"
            ));
        }
    }
}

/// Every file of the bundle is expected: a stray file is reported.
fn check_members(dir: &Path, disks: &BTreeSet<&str>, failures: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        failures.push(format!("{}: cannot list the bundle", dir.display()));
        return;
    };
    let mut stray: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != manifest::FILE_NAME && n != SUMS_FILE && !disks.contains(n.as_str()))
        .collect();
    stray.sort();
    for s in stray {
        failures.push(format!("{s}: not part of the bundle"));
    }
}

fn one_line(msg: &str, dir: &Path) -> String {
    let msg = msg.replace('\n', " ");
    match dir.to_str() {
        Some(d) => msg.replace(&format!("{d}/"), ""),
        None => msg,
    }
}

/// Opens a disk file of the bundle: a regular file, never a link out of it.
fn open_member(dir: &Path, d: &Disk) -> std::result::Result<(File, u64), String> {
    let path = dir.join(&d.path);
    let meta = match path.symlink_metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("{}: missing", d.path));
        }
        Err(e) => return Err(format!("{}: cannot read: {e}", d.path)),
    };
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", d.path));
    }
    let f = File::open(&path).map_err(|e| format!("{}: cannot open: {e}", d.path))?;
    Ok((f, meta.len()))
}

pub(crate) fn check_file(dir: &Path, d: &Disk) -> (u64, Vec<String>) {
    let (file, len) = match open_member(dir, d) {
        Ok(x) => x,
        Err(e) => return (0, vec![e]),
    };
    let mut found = Vec::new();
    if len != d.file_size {
        found.push(format!(
            "{}: size {len} bytes, manifest FileSize {}",
            d.path, d.file_size
        ));
    }
    match sha256_file(&file, len) {
        Ok(sha) if hex(&sha) != d.sha256 => found.push(format!(
            "{}: SHA-256 {} differs from the manifest's Sha256 {}",
            d.path,
            hex(&sha),
            d.sha256
        )),
        Ok(_) => {}
        Err(e) => found.push(format!("{}: cannot read: {e}", d.path)),
    }
    (len, found)
}

pub(crate) fn check_content(dir: &Path, d: &Disk, progress: &Progress) -> (u64, Vec<String>) {
    let path = dir.join(&d.path);
    let (file, _) = match open_member(dir, d) {
        Ok(x) => x,
        // check_file reports a missing or odd file.
        Err(_) => return (0, Vec::new()),
    };
    let detected = match format::detect::detect_path(&path) {
        Ok(f) => f,
        Err(e) => return (0, vec![one_line(&e.to_string(), dir)]),
    };
    let expected = d.format.reader();
    if detected != expected {
        return (
            0,
            vec![format!(
                "{}: content is {detected:?}, manifest Format {:?}",
                d.path, d.format
            )],
        );
    }
    if detected == Format::Qcow2 {
        // A bundle's disks stand alone: a backing file would make its content depend on a file
        // outside the checksums. Bytes 8..20 hold backing_file_offset and _size (qcow2.txt).
        let mut hdr = [0u8; 20];
        if file.read_exact_at(&mut hdr, 0).is_ok() && hdr[8..20].iter().any(|&b| b != 0) {
            return (0, vec![format!("{}: names a backing file", d.path)]);
        }
    }
    let src = match format::open_path(&path, &format::OpenOptions::default()) {
        Ok(s) => s,
        Err(e) => return (0, vec![one_line(&e.to_string(), dir)]),
    };
    let mut found = Vec::new();
    if let Some(line) = qemu_size_problem(d, src.size()) {
        return (0, vec![line]);
    }
    if src.size() != d.virtual_size {
        found.push(format!(
            "{}: virtual size {}, manifest VirtualSize {}",
            d.path,
            src.size(),
            d.virtual_size
        ));
        return (0, found);
    }
    let task = progress.task(&d.path);
    let result = copy::copy(
        src.as_ref(),
        &mut NullSink,
        Options {
            progress: Some(&task),
            cancel: None,
        },
    );
    task.finish();
    match result {
        Ok(r) if r.content_digest != d.content_digest => {
            found.push(format!(
                "{}: ContentDigest {} differs from the manifest's {}",
                d.path, r.content_digest, d.content_digest
            ));
            (r.data_bytes, found)
        }
        Ok(r) => (r.data_bytes, found),
        Err(e) => (0, vec![one_line(&e.to_string(), dir)]),
    }
}

/// Why qemu would not see the disk the manifest describes, if it would not. qemu counts disks
/// in whole 512-byte sectors: it drops a partial last sector of a qcow2 disk (earlier mkomi
/// versions wrote such headers, losing the source's tail) and reads a raw file's as zeros.
/// mkomi writes every disk as a whole number of sectors and `ContentDigest` covers that disk,
/// so a `VirtualSize` that is not one is refused too.
fn qemu_size_problem(d: &Disk, size: u64) -> Option<String> {
    let sector = crate::sink::SECTOR;
    let seen = size - size % sector;
    if d.format.drops_partial_sector() && seen < d.virtual_size {
        return Some(format!(
            "{}: qemu reads {seen} bytes (the qcow2 size {size} rounded down to whole 512-byte \
             sectors), less than the manifest's VirtualSize {}: the last {} bytes are lost",
            d.path,
            d.virtual_size,
            d.virtual_size - seen
        ));
    }
    if !d.virtual_size.is_multiple_of(sector) {
        return Some(format!(
            "{}: manifest VirtualSize {} is not a whole number of 512-byte sectors, as mkomi \
             writes every disk: register the source again",
            d.path, d.virtual_size
        ));
    }
    None
}
