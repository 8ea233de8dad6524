//! `verify`: a bundle's files against its manifest and SHA256SUMS.

use super::common::{EXIT_MISMATCH, errln, fail, outln};
use mkomi::bundle::verify;
use mkomi::progress::Progress;
use std::path::PathBuf;
use std::process::ExitCode;

/// `verify`'s arguments.
#[derive(clap::Args)]
#[command(after_help = "Example:
  mkomi verify debian-omi

Re-reads every disk: file size and SHA-256, virtual size and ContentDigest through its format;
checks SHA256SUMS against the manifest. Prints one line per difference; exit code 3 when any.")]
pub struct VerifyArgs {
    /// The bundle directory.
    dir: PathBuf,
}

/// `mkomi verify`: the differences on stdout, the verdict on stderr unless `quiet`.
pub fn verify(a: VerifyArgs, progress: &Progress, json: bool, quiet: bool) -> ExitCode {
    let dir = a.dir;
    let report = match verify::verify(&dir, progress) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let secs = report.elapsed.as_secs_f64();
    if json {
        let summary = serde_json::json!({
            "Bundle": dir,
            "Ok": report.ok(),
            "Failures": report.failures,
            "Disks": report.disks,
            "Bytes": report.bytes,
            "Seconds": secs,
        });
        outln!("{summary}");
    } else {
        for f in &report.failures {
            outln!("{}: {f}", dir.display());
        }
        if !quiet {
            errln!(
                "{}: {} ({} disk(s), {} MiB read in {:.2} s)",
                dir.display(),
                if report.ok() { "OK" } else { "FAILED" },
                report.disks,
                report.bytes >> 20,
                secs
            );
        }
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_MISMATCH)
    }
}
