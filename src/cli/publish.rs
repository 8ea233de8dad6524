//! `publish` and `pull`: a bundle made into an OMI of an Outscale account, and an OMI or a
//! snapshot of the account brought back as a verified bundle.

use super::common::{CANCEL, EXIT_INTERRUPTED, errln, fail, outln, usage};
use super::export::parse_duration;
use mkomi::export::s3;
use mkomi::progress::Progress;
use mkomi::publish::client::{Client, Endpoint};
use mkomi::publish::credentials::{self, Credentials, Overrides};
use mkomi::publish::run::{self, PublishRequest, Via};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Where the account is and how to reach it (publish and pull).
#[derive(clap::Args, Clone)]
pub struct AccountArgs {
    /// A profile of ~/.osc/config.json (else OSC_PROFILE, else "default", if the file exists).
    #[arg(long)]
    profile: Option<String>,
    /// The region (eu-west-2, …); else OSC_REGION, else the profile's.
    #[arg(long)]
    region: Option<String>,
    /// The API's base URL; default: https://api.REGION.outscale.com/api/v1 (or OSC_ENDPOINT_API,
    /// or the profile's endpoints.api).
    #[arg(long, value_name = "URL")]
    api_endpoint: Option<String>,
    /// Object storage's URL; default: https://oos.REGION.outscale.com.
    #[arg(long, value_name = "URL")]
    oos_endpoint: Option<String>,
    /// The bucket the disks go through.
    #[arg(long)]
    bucket: String,
    /// A key prefix in the bucket; default: mkomi/ and the image name (publish) or the ID (pull).
    #[arg(long)]
    prefix: Option<String>,
    /// The longest the whole run may take, upload and waits together: seconds, or a number
    /// with s, m, h or d.
    #[arg(long, default_value = "2h", value_parser = parse_duration)]
    timeout: Duration,
    /// The first wait between two polls of the API (it doubles, up to 30 s).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    poll: Duration,
}

/// `publish`'s arguments.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  OSC_ACCESS_KEY=… OSC_SECRET_KEY=… mkomi publish debian-omi --region eu-west-2 --bucket my-images
  mkomi publish debian-omi --profile prod --bucket my-images --share 123456789012 --json
  mkomi publish debian-omi --region eu-west-2 --bucket my-images --dry-run > calls.json

What is created (--via snapshots, the default): the bundle's disks are uploaded to the bucket as
DEVICE.qcow2.gz (Outscale's export format; multipart, resumed after a crash), each pre-signed for
the import; one CreateSnapshot per disk (ClientToken derived from its ContentDigest and the
target), polled until completed; CreateImage with the manifest's fields (architecture, boot
modes, mappings, volume types); tags mkomi:digest, mkomi:bundle, mkomi:version and --tag on the
image and its snapshots; --share/--global permissions; then the objects are deleted. The ami- ID
is printed on stdout.

Running it again resumes: the image is found by name and bundle digest, snapshots by token,
finished uploads are not sent again, and no image is created twice (CreateImage has no
ClientToken: a lost answer is followed by a lookup, never a blind retry). On failure or Ctrl-C,
what this run created (snapshots, objects) is removed unless --keep-failed.

Credentials: OSC_ACCESS_KEY/OSC_SECRET_KEY, else the profile (--profile, OSC_PROFILE) of
~/.osc/config.json (OSC_CONFIG_FILE). The bucket uses the same keys unless AWS_ACCESS_KEY_ID/
AWS_SECRET_ACCESS_KEY are set. Requests are signed with SigV4 (service oapi); no secret is ever
printed. --dry-run prints every request a first run would make as JSON, with no network call.")]
pub struct PublishArgs {
    /// The bundle directory (made by register, build or import).
    bundle: PathBuf,
    #[command(flatten)]
    account: AccountArgs,
    /// The image name; default: the manifest's ImageName.
    #[arg(long)]
    name: Option<String>,
    /// The image description; default: the manifest's.
    #[arg(long)]
    description: Option<String>,
    /// A tag KEY=VALUE on the image and its snapshots (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// Share the image with this account ID (repeatable).
    #[arg(long, value_name = "ACCOUNT")]
    share: Vec<String>,
    /// Make the image public.
    #[arg(long)]
    global: bool,
    /// Keep the uploaded objects after success.
    #[arg(long)]
    keep_objects: bool,
    /// Keep what a failed or interrupted run created (snapshots, objects), to look at.
    #[arg(long)]
    keep_failed: bool,
    /// How the image is registered: from snapshots (every manifest field), or from the export
    /// manifest (CreateImage{FileLocation}; boot modes cannot be set).
    #[arg(long, value_enum, default_value = "snapshots")]
    via: Via,
    /// Print the API requests a first run would make, as JSON, and stop: no network call.
    #[arg(long)]
    dry_run: bool,
    /// Compression level of the upload, 1 to 12.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=12))]
    level: u32,
    /// Compression threads; default: one per core.
    #[arg(long)]
    threads: Option<usize>,
    /// Multipart upload part size in MiB (5 to 128).
    #[arg(long, default_value_t = 32, value_name = "MiB", value_parser = clap::value_parser!(u32).range(5..=128))]
    part_size: u32,
}

/// `KEY=VALUE`, with the spec's bounds (ResourceTag: Key 1-255, Value 0-255 characters).
fn parse_tag(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: KEY=VALUE"))?;
    if k.is_empty() || k.chars().count() > 255 || v.chars().count() > 255 {
        return Err(format!(
            "{s:?}: a key of 1-255 and a value of 0-255 characters"
        ));
    }
    if k.starts_with("mkomi:") {
        return Err(format!("{s:?}: mkomi: tags are mkomi's own"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// The API's endpoint and credentials; under `--dry-run` credentials may be missing (nothing
/// is sent), and the endpoint then comes from the options alone.
fn account(a: &AccountArgs, dry_run: bool) -> Result<(Endpoint, Credentials), ExitCode> {
    let overrides = Overrides {
        profile: a.profile.as_deref(),
        region: a.region.as_deref(),
        api_endpoint: a.api_endpoint.as_deref(),
    };
    match credentials::from_env(&overrides) {
        Ok(v) => Ok(v),
        Err(e) if dry_run => {
            let region = a
                .region
                .clone()
                .or_else(|| std::env::var("OSC_REGION").ok().filter(|r| !r.is_empty()))
                .ok_or_else(|| fail(&e))?;
            let url = a
                .api_endpoint
                .clone()
                .unwrap_or_else(|| format!("https://api.{region}.outscale.com/api/v1"));
            let endpoint = Endpoint::new(&url, &region).map_err(|e| fail(&e))?;
            Ok((endpoint, Credentials::new("dry-run", "dry-run")))
        }
        Err(e) => Err(fail(&e)),
    }
}

/// The bucket location: `--prefix`, else `mkomi/NAME` with the name made key-safe.
fn location(a: &AccountArgs, name: &str) -> Result<s3::Location, ExitCode> {
    let prefix = match &a.prefix {
        Some(p) => p.trim_matches('/').to_string(),
        None => {
            let safe: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            format!("mkomi/{safe}")
        }
    };
    s3::Location::parse(&format!("s3://{}/{prefix}", a.bucket)).map_err(|e| usage(&e.to_string()))
}

/// The bucket location ([`location`]) and how to reach it
/// ([`credentials::s3_config`]: the API's keys unless S3 variables are set).
fn bucket(
    a: &AccountArgs,
    name: &str,
    endpoint: &Endpoint,
    keys: &Credentials,
) -> Result<(s3::Location, s3::Config), ExitCode> {
    let loc = location(a, name)?;
    let config = credentials::s3_config(
        |n| std::env::var(n).ok(),
        keys,
        &endpoint.region,
        a.oos_endpoint.as_deref(),
        None,
    )
    .map_err(|e| fail(&e))?;
    Ok((loc, config))
}

/// `mkomi publish`.
pub fn publish(a: PublishArgs, progress: &Progress, json: bool) -> ExitCode {
    let (endpoint, keys) = match account(&a.account, a.dry_run) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let manifest = match mkomi::manifest::Manifest::read(&a.bundle.join(mkomi::manifest::FILE_NAME))
    {
        Ok(m) => m,
        Err(e) => return fail(&e),
    };
    let name = a.name.clone().unwrap_or(manifest.image.image_name.clone());
    let (loc, s3c) = match bucket(&a.account, &name, &endpoint, &keys) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let mut req = PublishRequest::new(a.bundle, loc, s3c);
    req.name = a.name;
    req.description = a.description;
    req.tags = a.tags;
    req.share = a.share;
    req.global = a.global;
    req.keep_objects = a.keep_objects;
    req.keep_failed = a.keep_failed;
    req.timeout = a.account.timeout;
    req.poll_first = a.account.poll;
    req.poll_max = a.account.poll.max(Duration::from_secs(30));
    req.level = a.level;
    req.via = a.via;
    req.part_size = (a.part_size as usize) << 20;
    if let Some(t) = a.threads {
        req.threads = t.max(1);
    }
    if a.dry_run {
        return match run::plan(&req, &endpoint) {
            Ok(calls) => match serde_json::to_string_pretty(&calls) {
                Ok(text) => {
                    outln!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            },
            Err(e) => fail(&e),
        };
    }
    if a.via == Via::Manifest && !manifest.image.boot_modes.is_empty() {
        errln!(
            "mkomi: warning: --via manifest cannot set BootModes; the image gets the API's default, not {}",
            manifest
                .image
                .boot_modes
                .iter()
                .map(|b| format!("{b:?}").to_lowercase())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let api = match Client::new(endpoint, keys) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    match run::publish(&req, &api, progress, Some(&CANCEL)) {
        Ok(p) => {
            if json {
                match serde_json::to_string_pretty(&p) {
                    Ok(text) => outln!("{text}"),
                    Err(e) => return fail(&e),
                }
            } else {
                let created = p.snapshots.iter().filter(|s| s.created).count();
                errln!(
                    "mkomi: {} {} ({} snapshot(s), {created} created here{}); API: {} calls, {} retries, {} throttled",
                    if p.image_created { "created" } else { "found" },
                    p.image_id,
                    p.snapshots.len(),
                    if p.uploaded { ", disks uploaded" } else { "" },
                    p.api.calls,
                    p.api.retries,
                    p.api.throttled,
                );
                outln!("{}", p.image_id);
            }
            ExitCode::SUCCESS
        }
        Err(run::Error::Interrupted) => {
            errln!(
                "mkomi: interrupted; {}",
                if req.keep_failed {
                    "what this run created is kept (--keep-failed)"
                } else {
                    "what this run created was removed"
                }
            );
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Err(e) => fail(&e),
    }
}

/// `pull`'s arguments.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  mkomi pull ami-12345678 -o debian-back --region eu-west-2 --bucket my-images
  mkomi pull snap-12345678 -o data-disk --profile prod --bucket my-images --json

An OMI is exported with CreateImageExportTask (a snapshot with CreateSnapshotExportTask) into
s3://B/PREFIX (default prefix mkomi/ID), polled until done, then imported as `mkomi import` does:
every object hashed and checked, the bundle made in a work directory and renamed into place
only when complete. The export's objects are then deleted unless --keep-objects. A re-run finds
the export task it started (export tasks have no ClientToken: a lost answer is followed by a
lookup, never a second task). Disks published by mkomi come back at their own size, checked
against the digest publish tagged them with; other disks come back as the whole volume.")]
#[command(mut_args(|a| super::args::CheckArgs::reword(
    a,
    "Pull even when the image's Architecture contradicts the binaries on the root disk",
    "Pull even when a boot mode of the image is not one the disk supports",
)))]
pub struct PullArgs {
    /// The OMI (ami-…) or snapshot (snap-…).
    id: String,
    /// The bundle directory to create.
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
    #[command(flatten)]
    account: AccountArgs,
    /// Disk file format of the new bundle.
    #[arg(long, value_enum, default_value = "qcow2")]
    format: mkomi::manifest::DiskFormat,
    /// Replace DIR if it exists.
    #[arg(long)]
    force: bool,
    /// Keep the export's objects in the bucket.
    #[arg(long)]
    keep_objects: bool,
    /// Skip fsync before the final rename.
    #[arg(long)]
    no_sync: bool,
    #[command(flatten)]
    checks: super::args::CheckArgs,
}

/// `mkomi pull`.
pub fn pull(a: PullArgs, progress: &Progress, json: bool) -> ExitCode {
    use mkomi::publish::pull::{self, PullRequest, Source};
    let source = match Source::parse(&a.id) {
        Ok(s) => s,
        Err(e) => return usage(&e.to_string()),
    };
    let epoch = match super::common::creation_epoch() {
        Ok(e) => e,
        Err(m) => return usage(&m),
    };
    let (endpoint, keys) = match account(&a.account, false) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let (loc, s3c) = match bucket(&a.account, &a.id, &endpoint, &keys) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let mut req = PullRequest::new(source, a.output, loc, s3c);
    req.force = a.force;
    req.keep_objects = a.keep_objects;
    req.timeout = a.account.timeout;
    req.poll_first = a.account.poll;
    req.poll_max = a.account.poll.max(Duration::from_secs(30));
    req.format = a.format;
    req.creation_epoch = epoch;
    req.now = super::common::now_epoch();
    req.sync = !a.no_sync;
    req.checks = mkomi::bundle::checks::Checks {
        // As import: the disk is an image that exists already.
        loader: false,
        ..a.checks.checks()
    };
    let api = match Client::new(endpoint, keys) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    match pull::pull(&req, &api, progress, Some(&CANCEL)) {
        Ok(p) => {
            for w in &p.warnings {
                errln!("mkomi: warning: {w}");
            }
            if !json {
                errln!(
                    "mkomi: export task {} ({}), {} object(s) deleted",
                    p.task_id,
                    if p.task_created { "created" } else { "found" },
                    p.objects_deleted.len()
                );
            }
            super::register::report(Ok(p.import.bundle), json)
        }
        Err(pull::Error::Interrupted) => {
            errln!(
                "mkomi: interrupted; nothing was written (a running export task is found again by the next pull)"
            );
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Err(e) => fail(&e),
    }
}
