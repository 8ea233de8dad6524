//! `export` and `import`: bundles to Outscale export packages, in a directory or a bucket, and
//! back.

use super::args::CheckArgs;
use super::common::{
    CANCEL, EXIT_INTERRUPTED, creation_epoch, errln, fail, now_epoch, outln, usage,
};
use super::register::report;
use mkomi::bundle::checks::Checks;
use mkomi::export::package::{self, Target};
use mkomi::export::{import, s3};
use mkomi::manifest::DiskFormat;
use mkomi::progress::Progress;
use std::path::PathBuf;
use std::process::ExitCode;

/// Object storage options shared by export and import.
#[derive(clap::Args, Clone)]
pub struct StorageArgs {
    /// S3 endpoint URL (Outscale OOS: https://oos.REGION.outscale.com); default: AWS.
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Region; default: OSC_REGION, AWS_REGION or AWS_DEFAULT_REGION, else us-east-1.
    #[arg(long)]
    region: Option<String>,
}

/// `export`'s arguments.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  mkomi export debian-omi --to /srv/packages/debian
  OSC_ACCESS_KEY=… OSC_SECRET_KEY=… mkomi export debian-omi \\
      --to s3://images/debian-12 --endpoint https://oos.eu-west-2.outscale.com --region eu-west-2

Each disk becomes DEVICE.FORMAT.gz (gzip, compressed on all cores, deterministic), listed in
manifest.json in Outscale's export format (Version 1, Image, Snapshots with Size and, in a
bucket, PreSignedUrl), beside mkomi-manifest.json (the bundle's manifest) and SHA256SUMS of every
object. In a bucket, the manifest's pre-signed URL is printed: it is CreateImage's FileLocation.
Credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), else
OSC_ACCESS_KEY/OSC_SECRET_KEY; they are never printed. With OSC_* set and no --endpoint, the
bucket is on Outscale OOS of the region.")]
pub struct ExportArgs {
    /// The bundle directory.
    bundle: PathBuf,
    #[command(flatten)]
    package: PackageArgs,
}

/// Where and how a package is written (export, image export).
#[derive(clap::Args)]
pub struct PackageArgs {
    /// A directory to create, or s3://BUCKET/PREFIX.
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    to: String,
    /// Disk format of the objects; default: the bundle's (qcow2 bundles also export as raw).
    #[arg(long, value_enum)]
    format: Option<DiskFormat>,
    /// Validity of the pre-signed URLs: seconds, or a number with s, m, h or d (at most 7d).
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    expires: std::time::Duration,
    /// Compression level, 1 (fastest; the default: 3.0× on a real disk, better than gzip -6
    /// costs) to 12 (libdeflate's highest).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=12))]
    level: u32,
    /// Compression threads; default: one per core.
    #[arg(long)]
    threads: Option<usize>,
    /// Resume an interrupted upload to a bucket without re-sending finished parts (their state
    /// is kept under ~/.cache/mkomi/uploads; without --resume a failed upload is aborted).
    #[arg(long)]
    resume: bool,
    /// Multipart upload part size in MiB (5 to 128); parts go up 4 at a time, within 256 MiB of
    /// memory (fewer at once when parts are large).
    #[arg(long, default_value_t = 32, value_name = "MiB", value_parser = clap::value_parser!(u32).range(5..=128))]
    part_size: u32,
    /// Replace a directory target that exists.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    storage: StorageArgs,
}

/// `import`'s arguments.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  mkomi import /srv/packages/debian/manifest.json -o debian-omi
  mkomi import 'https://oos.eu-west-2.outscale.com/images/debian-12/manifest.json?X-Amz-…' -o debian-omi
  mkomi import s3://images/debian-12/manifest.json -o debian-omi --endpoint https://…

MANIFEST is a local file, an s3:// object or an http(s) URL. Every field is checked before
anything is fetched (file names, devices, sizes, URL schemes, expired pre-signed URLs). Each
object is downloaded, hashed and gunzipped as it arrives, bounded by its declared Size, then
registered; SHA256SUMS and mkomi-manifest.json, when beside the manifest, are checked (every
object's SHA-256, every disk's ContentDigest). The bundle appears only when all checks pass.")]
#[command(mut_args(|a| CheckArgs::reword(
    a,
    "Import even when the manifest's Architecture contradicts the binaries on the root disk \
     (the package's own ChecksSkipped never turns a check off)",
    "Import even when a boot mode of the package is not one the disk supports",
)))]
pub struct ImportArgs {
    /// The export manifest: a path, s3://BUCKET/KEY or an http(s) URL.
    manifest: String,
    /// The bundle directory to create.
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
    /// Disk file format of the new bundle.
    #[arg(long, value_enum, default_value = "qcow2")]
    format: DiskFormat,
    /// Replace DIR if it exists.
    #[arg(long)]
    force: bool,
    /// Skip fsync before the final rename.
    #[arg(long)]
    no_sync: bool,
    #[command(flatten)]
    checks: CheckArgs,
    #[command(flatten)]
    storage: StorageArgs,
}

/// `--expires`, `--timeout`: seconds, or a number with ms, s, m, h or d.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: a number with s, m, h or d"))?;
    if unit == "ms" {
        return Ok(std::time::Duration::from_millis(n));
    }
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: a number with s, m, h or d")),
    };
    n.checked_mul(mult)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{s:?}: too long"))
}

fn s3_config(storage: &StorageArgs) -> Result<s3::Config, ExitCode> {
    s3::Config::from_env(storage.endpoint.as_deref(), storage.region.as_deref())
        .map_err(|e| fail(&e))
}

/// `mkomi export`.
pub fn export(a: ExportArgs, json: bool) -> ExitCode {
    let req = match package_request(&a.package, a.bundle) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let kept = req.resume && matches!(req.target, Target::S3 { .. });
    match package::export(&req) {
        Ok(r) => print_export(&r, json),
        Err(e) if e.is_interrupted() => {
            errln!(
                "mkomi: interrupted; {}",
                if kept {
                    "the upload is kept: run the same command with --resume to go on with it"
                } else {
                    "nothing was left behind"
                }
            );
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Err(e) => fail(&e),
    }
}

/// The library's request for a package of `bundle` (`export`, `image export`).
pub fn package_request(a: &PackageArgs, bundle: PathBuf) -> Result<package::Request, ExitCode> {
    let target = if a.to.starts_with("s3://") {
        let location =
            a.to.parse::<s3::Location>()
                .map_err(|e| usage(&e.to_string()))?;
        let config = s3_config(&a.storage)?;
        Target::S3 { location, config }
    } else {
        Target::Dir(PathBuf::from(&a.to))
    };
    let threads = a.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    Ok(package::Request {
        bundle,
        target,
        format: a.format,
        expires: a.expires,
        threads: threads.max(1),
        level: a.level,
        force: a.force,
        resume: a.resume,
        part_size: (a.part_size as usize) << 20,
        state_dir: None,
        abort_on_error: false,
        cancel: Some(&CANCEL),
    })
}

/// Prints what an export wrote (`export`, `image export`).
pub fn print_export(r: &package::Report, json: bool) -> ExitCode {
    for a in &r.aborted_uploads {
        errln!(
            "mkomi: aborted the multipart upload {} of {}, left open by an earlier export",
            a.upload_id,
            a.object
        );
    }
    if json {
        outln!("{}", serde_json::to_string(r).unwrap_or_default());
    } else {
        let secs = r.elapsed.as_secs_f64();
        for o in &r.objects {
            outln!(
                "{}  {} -> {} bytes  {}",
                o.name,
                o.bytes,
                o.compressed,
                o.sha256
            );
        }
        outln!(
            "{}: {} object(s) in {secs:.2} s",
            r.location,
            r.objects.len()
        );
        if let Some(url) = &r.manifest_url {
            outln!("FileLocation: {url}");
        }
    }
    ExitCode::SUCCESS
}

/// Where the export manifest `manifest` is (`import`, `image import`).
pub fn import_origin(manifest: &str, storage: &StorageArgs) -> Result<import::Origin, ExitCode> {
    Ok(if manifest.starts_with("s3://") {
        let location = manifest
            .parse::<s3::Location>()
            .map_err(|e| usage(&e.to_string()))?;
        import::Origin::S3 {
            location,
            config: s3_config(storage)?,
        }
    } else if manifest.starts_with("http://") || manifest.starts_with("https://") {
        import::Origin::Http(manifest.to_owned())
    } else if manifest.contains("://") {
        return Err(usage(&format!(
            "{}: a path, s3://BUCKET/KEY or an http(s) URL",
            import::redact(manifest)
        )));
    } else {
        import::Origin::Local(PathBuf::from(manifest))
    })
}

/// `mkomi import`.
pub fn import(a: ImportArgs, progress: &Progress, json: bool) -> ExitCode {
    let epoch = match creation_epoch() {
        Ok(e) => e,
        Err(m) => return usage(&m),
    };
    let origin = match import_origin(&a.manifest, &a.storage) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let now = now_epoch();
    let req = import::Request {
        origin,
        output: a.output,
        force: a.force,
        format: a.format,
        creation_epoch: epoch,
        now,
        sync: !a.no_sync,
        checks: Checks {
            // Import sets its own: see import::run.
            loader: false,
            ..a.checks.checks()
        },
    };
    match import::import(&req, progress, Some(&CANCEL)) {
        Ok(r) => {
            if !json {
                let checked = match (r.sums_checked, r.digests_checked) {
                    (true, true) => {
                        "objects checked against SHA256SUMS, disks against mkomi-manifest.json"
                    }
                    (true, false) => "objects checked against SHA256SUMS",
                    (false, true) => "disks checked against mkomi-manifest.json",
                    (false, false) => "nothing to check against: SHA-256s recorded on arrival",
                };
                errln!("mkomi: {checked}");
                for (name, sha) in &r.received {
                    errln!("  {sha}  {name}");
                }
            }
            report(Ok(r.bundle), json)
        }
        Err(e) if e.is_interrupted() => {
            errln!("mkomi: interrupted; nothing was written");
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Err(e) => fail(&e),
    }
}
