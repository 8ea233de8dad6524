//! Auditing whole disks and bundles: every file system mkomi can read, on every disk, each
//! scanned by [`super::scan`], with the findings located (`/dev/sdb partition 2`).
//!
//! Volumes whose contents mkomi cannot read (NTFS, XFS, Btrfs, LUKS, a corrupt file system, a
//! partition or disk that holds data in no file system mkomi recognises, a swap area that holds
//! paged-out memory) are listed in `problems`, and the report is not
//! [`complete`](Report::complete): the audit says so instead of calling them clean. Only a
//! volume that reads as zeros holds nothing to audit.

use super::{Finding, Severity};
use crate::format::{self, Disk, ExtentKind, OpenOptions};
use crate::inspect::{self, VolumeInfo, location, signature, signature::FsKind};
use crate::manifest::{AuditFinding, AuditSummary};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// The `schema` of the JSON report `mkomi audit --json` prints.
pub const SCHEMA: &str = "mkomi-audit/1";

/// A finding and where it is.
#[derive(Debug, Clone, Serialize)]
pub struct Located {
    /// The block device mapping of the disk, when auditing a bundle.
    pub device: Option<String>,
    /// The disk file.
    pub file: String,
    /// `partition N` or `whole disk`.
    pub location: String,
    /// The finding.
    #[serde(flatten)]
    pub finding: Finding,
}

/// The audit of an image: every disk, every readable file system.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: &'static str,
    /// Findings, disk by disk, volume by volume.
    pub findings: Vec<Located>,
    /// Parts not audited, one line each.
    pub problems: Vec<String>,
    /// Whether everything that holds data was audited: false when there are `problems`. An
    /// incomplete audit is never clean, and `--deny` refuses it.
    pub complete: bool,
    /// File systems audited (`/dev/sda1 partition 2 (ext4)`).
    pub audited: Vec<String>,
    /// Findings per severity, every severity present.
    pub counts: BTreeMap<String, u64>,
    /// The most serious severity found.
    pub highest: Option<Severity>,
}

impl Default for Report {
    fn default() -> Self {
        Report {
            schema: SCHEMA,
            findings: Vec::new(),
            problems: Vec::new(),
            complete: true,
            audited: Vec::new(),
            counts: Severity::ALL
                .iter()
                .map(|s| (s.as_str().to_owned(), 0))
                .collect(),
            highest: None,
        }
    }
}

impl Report {
    /// The findings at or above `at`.
    pub fn at_least(&self, at: Severity) -> impl Iterator<Item = &Located> {
        self.findings
            .iter()
            .filter(move |f| f.finding.severity >= at)
    }

    /// The summary a manifest records under `policy` (`report`, `deny=high`).
    pub fn to_manifest(&self, policy: &str) -> AuditSummary {
        AuditSummary {
            policy: policy.to_owned(),
            counts: self.counts.clone(),
            findings: self
                .findings
                .iter()
                .map(|f| AuditFinding {
                    severity: f.finding.severity.as_str().to_owned(),
                    code: f.finding.code.to_owned(),
                    location: where_(f.device.as_deref(), &f.location),
                    path: f.finding.path.clone(),
                    message: f.finding.message.clone(),
                })
                .collect(),
            problems: self.problems.clone(),
            complete: self.complete,
        }
    }

    /// Why the audit is incomplete, in one line (the first problems): `None` when complete.
    pub fn incomplete(&self) -> Option<String> {
        if self.complete {
            return None;
        }
        let first: Vec<&str> = self.problems.iter().take(3).map(String::as_str).collect();
        let more = if self.problems.len() > first.len() {
            "; …"
        } else {
            ""
        };
        Some(format!(
            "incomplete: {} part(s) not audited: {}{more}",
            self.problems.len(),
            first.join("; ")
        ))
    }

    fn finish(&mut self) {
        self.complete = self.problems.is_empty();
        for f in &self.findings {
            *self
                .counts
                .entry(f.finding.severity.as_str().to_owned())
                .or_default() += 1;
        }
        self.highest = self.findings.iter().map(|f| f.finding.severity).max();
    }
}

fn where_(device: Option<&str>, location: &str) -> String {
    match device {
        Some(d) => format!("{d} {location}"),
        None => location.to_owned(),
    }
}

/// Audits one disk into `report`.
pub fn audit_disk(disk: &Arc<dyn Disk>, device: Option<&str>, report: &mut Report) {
    let mut audit = DiskAudit::new(disk.as_ref(), device, report);
    inspect::walk(disk, &mut |info, fs| audit.visit(info, fs));
    audit.finish(disk.as_ref());
}

/// The audit of one disk as [`inspect::walk`] visits its volumes: a visitor that can share a
/// walk with others (inspect), so that each file system is opened once for all of them.
pub struct DiskAudit<'r> {
    device: Option<String>,
    file: String,
    report: &'r mut Report,
    /// Volumes without a file system mkomi reads: looked at for data once the walk is done.
    unread: Vec<VolumeInfo>,
}

impl<'r> DiskAudit<'r> {
    /// An audit of `disk`, which `device` maps in a bundle, into `report`.
    pub fn new(disk: &dyn Disk, device: Option<&str>, report: &'r mut Report) -> Self {
        DiskAudit {
            device: device.map(str::to_owned),
            file: disk.path().display().to_string(),
            report,
            unread: Vec::new(),
        }
    }

    /// Audits one volume as [`inspect::walk`] passes it.
    pub fn visit(&mut self, info: VolumeInfo, fs: Option<inspect::Opened<'_>>) {
        let device = self.device.as_deref();
        let report = &mut *self.report;
        let at = where_(device, &location(info.partition));
        let short = info.short();
        match fs {
            Some(Ok(fs)) => {
                if let Some(line) = &short {
                    report.problems.push(format!(
                        "{at}: {line}; what lies past the end was not audited"
                    ));
                }
                let audit = super::scan(fs);
                let kind = info.filesystem.map_or(fs.kind(), FsKind::name);
                report.audited.push(format!("{at} ({kind})"));
                report
                    .problems
                    .extend(audit.problems.into_iter().map(|p| format!("{at}: {p}")));
                report
                    .findings
                    .extend(audit.findings.into_iter().map(|finding| Located {
                        device: device.map(str::to_owned),
                        file: self.file.clone(),
                        location: location(info.partition),
                        finding,
                    }));
            }
            // A short disk is why such a file system does not open: that is what to fix, not
            // a damaged file system.
            Some(Err(e)) => match short {
                Some(line) => report.problems.push(format!("{at}: not audited: {line}")),
                None => report.problems.push(format!("{at}: not audited: {e}")),
            },
            None => match info.filesystem {
                None | Some(FsKind::Swap) => self.unread.push(info),
                Some(kind) => report.problems.push(format!(
                    "{at}: {}: not audited (mkomi reads ext2/3/4, FAT and NTFS contents)",
                    kind.name()
                )),
            },
        }
    }

    /// Looks at the volumes without a file system once the walk of `disk` is done.
    pub fn finish(self, disk: &dyn Disk) {
        for info in self.unread {
            let at = where_(self.device.as_deref(), &location(info.partition));
            if let Some(line) = unread_volume(disk, &info) {
                self.report.problems.push(format!("{at}: {line}"));
            }
        }
    }
}

/// Bytes at the start of a swap area that are its header (the signature page), not paged-out
/// memory.
const SWAP_HEADER: u64 = 4096;

/// The problem with a volume that has no file system mkomi reads, if it holds data: such data
/// was not audited. `None` when it reads as zeros (nothing there), for a fresh swap area (only
/// its header), and for a BIOS boot partition (GRUB's core image, no files).
fn unread_volume(src: &dyn Disk, info: &VolumeInfo) -> Option<String> {
    if info.partition_type.as_deref() == Some("bios-boot") {
        return None;
    }
    let swap = info.filesystem == Some(FsKind::Swap);
    let skip = if swap { SWAP_HEADER } else { 0 };
    if info.size <= skip {
        return None;
    }
    match first_data(src, info.offset + skip, info.size - skip) {
        Ok(None) => None,
        Ok(Some(at)) if swap => Some(format!(
            "swap: holds data past its header (at byte {}): memory paged out by the machine \
             the image was made from may hold secrets; not audited (recreate it with mkswap)",
            at - info.offset
        )),
        Ok(Some(at)) => {
            let at = at - info.offset;
            Some(
                match signature::ext_backup_superblock(src, info.offset, info.size) {
                    Some((byte, block)) => format!(
                        "holds data (from byte {at}) but no file system mkomi recognises; an \
                         ext2/3/4 backup superblock lies at byte {byte}: the primary superblock \
                         is damaged but the files are still there (`e2fsck -b {block}` repairs \
                         it); not audited"
                    ),
                    None => format!(
                        "holds data (from byte {at}) but no file system mkomi recognises; not \
                         audited"
                    ),
                },
            )
        }
        Err(e) => Some(format!("not audited: cannot read it: {e}")),
    }
}

/// The offset of the first byte that is not zero in the `len` bytes at `offset` of `src`, or
/// `None` when they all read as zeros. Holes and unallocated clusters are skipped unread.
fn first_data(src: &dyn Disk, offset: u64, len: u64) -> format::Result<Option<u64>> {
    const CHUNK: u64 = 1 << 20;
    let end = offset.saturating_add(len).min(src.size());
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = offset;
    while pos < end {
        let extent = src.extent(pos, end - pos)?;
        let run_end = pos.saturating_add(extent.len.max(1)).min(end);
        if extent.kind == ExtentKind::Data {
            let mut p = pos;
            while p < run_end {
                let n = (run_end - p).min(CHUNK);
                let chunk = &mut buf[..n as usize];
                src.read_at(p, chunk)?;
                if let Some(i) = chunk.iter().position(|&b| b != 0) {
                    return Ok(Some(p + i as u64));
                }
                p += n;
            }
        }
        pos = run_end;
    }
    Ok(None)
}

/// Audits a disk image or every disk of a bundle.
pub fn audit_path(path: &Path, open: &OpenOptions) -> Result<Report, inspect::Error> {
    let mut report = Report::default();
    for (device, file) in inspect::disk_files(path)? {
        let disk = format::open_path(&file, open)?;
        audit_disk(&disk, device.as_deref(), &mut report);
    }
    report.finish();
    Ok(report)
}

/// Finishes a report made of several [`audit_disk`] calls (counts and highest).
pub fn finish(report: &mut Report) {
    report.finish();
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in &self.findings {
            let file = match &l.device {
                Some(d) => d.clone(),
                None => l.file.clone(),
            };
            writeln!(
                f,
                "{:<6}  {file} {}: {}: {}",
                l.finding.severity.as_str(),
                l.location,
                escape(&l.finding.path),
                l.finding.message
            )?;
            writeln!(f, "        fix: {}", l.finding.fix)?;
        }
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        let counts: Vec<String> = Severity::ALL
            .iter()
            .rev()
            .map(|s| {
                format!(
                    "{} {}",
                    self.counts.get(s.as_str()).copied().unwrap_or(0),
                    s.as_str()
                )
            })
            .collect();
        let state = if !self.problems.is_empty() {
            format!("incomplete: {} part(s) not audited", self.problems.len())
        } else if self.findings.is_empty() {
            "clean".to_owned()
        } else {
            "findings".to_owned()
        };
        writeln!(
            f,
            "audit: {} ({}); {} file system(s) audited",
            state,
            counts.join(", "),
            self.audited.len()
        )
    }
}

/// A path from a hostile image, with control characters escaped so it cannot rewrite a terminal.
fn escape(path: &str) -> String {
    path.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// What `register` and `build` do with the audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// No audit.
    Off,
    /// Audit and record the result in the manifest.
    Report,
    /// Also refuse the image when a finding is at least severity `at`, and when the audit is
    /// incomplete unless `allow_incomplete`.
    Deny {
        /// The least severity refused.
        at: Severity,
        /// Accept an incomplete audit (`--allow-incomplete`).
        allow_incomplete: bool,
    },
}

impl Policy {
    /// The same policy, an incomplete audit accepted under `deny` when `allow` (the
    /// `--allow-incomplete` flag); other policies do not refuse anything.
    pub fn allowing_incomplete(self, allow: bool) -> Policy {
        match self {
            Policy::Deny { at, .. } => Policy::Deny {
                at,
                allow_incomplete: allow,
            },
            other => other,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Off => f.write_str("off"),
            Policy::Report => f.write_str("report"),
            Policy::Deny { at, .. } => write!(f, "deny={at}"),
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = String;

    /// `off`, `report`, or `deny=SEVERITY`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Policy::Off),
            "report" => Ok(Policy::Report),
            _ => match s.strip_prefix("deny=") {
                Some(sev) => sev
                    .parse()
                    .map(|at| Policy::Deny {
                        at,
                        allow_incomplete: false,
                    })
                    .map_err(|e: super::ParseSeverityError| e.to_string()),
                None => Err(format!(
                    "{s:?}: expected off, report or deny=SEVERITY (info, low, medium, high)"
                )),
            },
        }
    }
}
