//! `inspect` and `audit`: what a disk or bundle holds, and what must not ship in it.

use super::common::{EXIT_INCOMPLETE, EXIT_MISMATCH, errln, fail, out, outln};
use super::open::OpenArgs;
use mkomi::audit::Severity;
use std::path::PathBuf;
use std::process::ExitCode;

/// `inspect`'s arguments.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  mkomi inspect debian.qcow2
  mkomi inspect debian-omi --json | jq .summary.architecture

SOURCE is a raw or qcow2 disk (whole disk or bare file system image) or a bundle directory,
whose disks are inspected root first. Nothing is mounted: GPT and MBR tables, FAT and ext2/3/4
contents are read by mkomi itself; NTFS, XFS, Btrfs, swap, ISO 9660 and LUKS are recognised by
their signatures. The architecture comes from the ELF header of /sbin/init, /bin/sh or
/usr/lib/systemd/systemd (else the PE header of the ESP's loaders); each conclusion names its
evidence. Damage (bad CRCs, corrupt file systems) is reported with the rest of the report; the
exit code is 1 only when SOURCE cannot be opened at all.")]
pub struct InspectArgs {
    /// A disk image or a bundle directory.
    source: PathBuf,
    #[command(flatten)]
    open: OpenArgs,
}

/// `audit`'s arguments.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  mkomi audit snapshot.qcow2
  mkomi audit debian-omi --deny high --json

Reads every ext2/3/4 and FAT file system of SOURCE (a disk image or every disk of a bundle)
without mounting it. Each finding has a severity, the file and a fix; secrets are never shown
(keys by their SHA256 fingerprint as ssh-keygen -l prints it, password hashes by their scheme,
histories by their size). What holds data but cannot be read (a file system mkomi does not read
or that does not open, a partition or disk with data in no file system it recognises, a disk cut
short) is listed as a problem: the audit is then incomplete, never clean. Exit code 3 when a
finding is at least --deny's severity; with --deny, exit code 4 when the audit is incomplete,
unless --allow-incomplete.")]
pub struct AuditArgs {
    /// A disk image or a bundle directory.
    source: PathBuf,
    /// Exit with code 3 when a finding is at least this severe (info, low, medium, high),
    /// and with code 4 when the audit is incomplete.
    #[arg(long, value_name = "SEVERITY")]
    deny: Option<Severity>,
    /// With --deny, accept an incomplete audit (exit 0 rather than 4).
    #[arg(long)]
    allow_incomplete: bool,
    #[command(flatten)]
    open: OpenArgs,
}

/// `mkomi inspect`: the report, as text or JSON.
pub fn inspect(a: InspectArgs, json: bool) -> ExitCode {
    match mkomi::inspect::inspect_path(&a.source, &a.open.options()) {
        Ok(report) if json => match serde_json::to_string_pretty(&report) {
            Ok(text) => {
                outln!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Ok(report) => {
            out!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `mkomi audit`: the report, then the verdict of `--deny` as the exit code.
pub fn audit(a: AuditArgs, json: bool) -> ExitCode {
    let report = match mkomi::audit::image::audit_path(&a.source, &a.open.options()) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => outln!("{text}"),
            Err(e) => return fail(&e),
        }
    } else {
        out!("{report}");
    }
    match (a.deny, report.incomplete()) {
        (Some(at), _) if report.at_least(at).next().is_some() => ExitCode::from(EXIT_MISMATCH),
        // Fail closed: what could not be read may hold what --deny refuses.
        (Some(at), Some(why)) if !a.allow_incomplete => {
            errln!(
                "mkomi: {}: audit: {} (--deny {at} refuses an incomplete audit; \
                 --allow-incomplete accepts it)",
                a.source.display(),
                why.replace('\n', " ")
            );
            ExitCode::from(EXIT_INCOMPLETE)
        }
        _ => ExitCode::SUCCESS,
    }
}
