//! Auditing whole disks and bundles: every file system mkomi can read, on every disk, each
//! scanned by [`super::scan`], with the findings located (`/dev/sdb partition 2`).
//!
//! Volumes whose contents mkomi cannot read (NTFS, XFS, Btrfs, LUKS, a corrupt file system) are
//! listed in `problems`: the audit says so instead of calling them clean.

use super::{Finding, Severity};
use crate::inspect::{self, location, signature::FsKind};
use crate::manifest::{AuditFinding, AuditSummary};
use crate::source::{self, OpenOptions, Source};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

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
        }
    }

    fn finish(&mut self) {
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

/// Audits one disk into `report`; returns the source for further use.
pub fn audit_source(
    src: Box<dyn Source>,
    device: Option<&str>,
    report: &mut Report,
) -> Box<dyn Source> {
    let file = src.path().display().to_string();
    let (_, src) = inspect::walk(src, &mut |info, fs| {
        let at = where_(device, &location(info.partition));
        match fs {
            Some(Ok(fs)) => {
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
                        file: file.clone(),
                        location: location(info.partition),
                        finding,
                    }));
            }
            Some(Err(e)) => report.problems.push(format!("{at}: not audited: {e}")),
            None => match info.filesystem {
                // Nothing a user put there: no files to audit.
                None | Some(FsKind::Swap) => {}
                Some(kind) => report.problems.push(format!(
                    "{at}: {}: not audited (mkomi reads ext2/3/4 and FAT contents)",
                    kind.name()
                )),
            },
        }
    });
    src
}

/// Audits a disk image or every disk of a bundle.
pub fn audit_path(path: &Path, open: &OpenOptions) -> Result<Report, inspect::Error> {
    let mut report = Report::default();
    for (device, file) in inspect::disk_files(path)? {
        let src = source::open(&file, open)?;
        audit_source(src, device.as_deref(), &mut report);
    }
    report.finish();
    Ok(report)
}

/// Finishes a report made of several [`audit_source`] calls (counts and highest).
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
    /// Also refuse the image when a finding is at least this severe.
    Deny(Severity),
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Off => f.write_str("off"),
            Policy::Report => f.write_str("report"),
            Policy::Deny(s) => write!(f, "deny={s}"),
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
                    .map(Policy::Deny)
                    .map_err(|e: super::ParseSeverityError| e.to_string()),
                None => Err(format!(
                    "{s:?}: expected off, report or deny=SEVERITY (info, low, medium, high)"
                )),
            },
        }
    }
}
