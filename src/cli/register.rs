//! `register` and `build`: disk images, or a template, in; a bundle out.

use super::args::{AuditPolicyArgs, CheckArgs, ImageArgs, parse_var};
use super::common::{
    CANCEL, EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_MISMATCH, creation_epoch, errln, fail, outln,
    usage,
};
use super::open::OpenArgs;
use mkomi::bundle::{self, register};
use mkomi::manifest::DiskFormat;
use mkomi::progress::Progress;
use std::path::PathBuf;
use std::process::ExitCode;

/// `register`'s arguments.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  mkomi register debian.qcow2 -o debian-omi --arch x86_64 --boot-mode uefi
  mkomi register root.raw -o web --arch x86_64 --name 'web (v2)' \\
      --bdm /dev/sdb=data.qcow2,size=100,type=gp2

SOURCE and each --bdm PATH are raw images, block devices or qcow2 images (v2/v3, compressed
clusters, backing chains); the format is read from the content of a regular file (--input-format
says it instead; a block device is raw unless --input-format qcow2). A backing file is followed
only onto a regular file inside --allow-backing DIR. SOURCE_DATE_EPOCH, when set, is the
manifest's CreationDate, so the same inputs give byte-identical bundles.")]
pub struct RegisterArgs {
    /// The root volume's disk image (becomes /dev/sda1).
    source: PathBuf,
    /// The bundle directory to create.
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
    /// Replace DIR if it exists.
    #[arg(long)]
    force: bool,
    /// Disk file format.
    #[arg(long, value_enum, default_value = "qcow2")]
    format: DiskFormat,
    /// qcow2 cluster size in bytes (64 KiB to 2 MiB, a power of two); suffixes K and M allowed.
    #[arg(long, default_value = "64K", value_parser = parse_cluster_size)]
    cluster_size: u32,
    #[command(flatten)]
    image: ImageArgs,
    /// Skip fsync before the final rename (faster; not crash-safe).
    #[arg(long)]
    no_sync: bool,
}

/// `build`'s arguments: the template gives the image's fields, so of [`ImageArgs`] only the
/// checks and the audit apply.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  mkomi build templates/debian-outscale.toml --set tree=rootfs.tar.zst -o debian-omi
  mkomi build templates/debian-outscale.toml --set tree=rootfs/ -o debian-omi
  mkomi build templates/debian-outscale.toml --set tree=oci-layout/ -o debian-omi
  mkomi build templates/hybrid.toml --set rootfs=root.ext4 -o debian-omi

The template (TOML) declares the image fields, the disk size, GPT (or MBR) partitions and their
content (an EFI system partition made in-process; an ext4 file system written in-process from a
tree: a directory, a tar archive (plain, gzip, zstd, xz) or a container image (OCI layout or
archive, docker save); a file system image; or nothing), the boot loaders with the kernel and
initrd taken from the root file system (systemd-boot for UEFI, GRUB i386-pc for legacy BIOS, or
both on one disk: templates/ has one per boot mode, for x86_64 and i386; hybrid.toml is the
recommended one), and extra volumes. Trees are cleaned of what must not ship
([sanitize]: machine-id, SSH host keys, cloud-init state, leases, seeds, histories, logs,
root's authorized_keys) and take extra files from [[file]]. ${NAME} in a value comes from
--set NAME=VALUE. No root, loop devices or mounts are needed. SOURCE_DATE_EPOCH fixes every
timestamp (later ones in a tree are clamped to it), so the same inputs give byte-identical
bundles, whatever kind of source holds the tree.")]
#[command(mut_args(|a| CheckArgs::reword(
    a,
    "Build even when the template's architecture contradicts the binaries on the disk",
    "Build even when the disk does not boot in exactly the template's boot modes, or when the \
     template declares none and the disk holds no boot loader",
)))]
pub struct BuildArgs {
    /// The template file.
    template: PathBuf,
    /// The bundle directory to create.
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
    /// A template variable: NAME=VALUE fills ${NAME}.
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_var)]
    vars: Vec<(String, String)>,
    #[command(flatten)]
    checks: CheckArgs,
    #[command(flatten)]
    audit: AuditPolicyArgs,
    /// Replace DIR if it exists.
    #[arg(long)]
    force: bool,
    /// qcow2 cluster size in bytes (64 KiB to 2 MiB, a power of two); suffixes K and M allowed.
    #[arg(long, default_value = "64K", value_parser = parse_cluster_size)]
    cluster_size: u32,
    #[command(flatten)]
    open: OpenArgs,
    /// Skip fsync before the final rename (faster; not crash-safe).
    #[arg(long)]
    no_sync: bool,
}

/// A qcow2 cluster size, as its log2: bytes, or a number with K or M.
fn parse_cluster_size(s: &str) -> Result<u32, String> {
    let (num, mult) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1u64 << 20),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let bytes = n.saturating_mul(mult);
    if !bytes.is_power_of_two() || !(64 << 10..=2 << 20).contains(&bytes) {
        return Err(format!("{s}: must be a power of two from 64K to 2M"));
    }
    Ok(bytes.trailing_zeros())
}

/// `mkomi register`.
pub fn register(a: RegisterArgs, progress: &Progress, json: bool) -> ExitCode {
    let epoch = match creation_epoch() {
        Ok(e) => e,
        Err(m) => return usage(&m),
    };
    let i = &a.image;
    let req = register::Request {
        output: a.output,
        force: a.force,
        format: mkomi::sink::OutputFormat::new(a.format, a.cluster_size),
        name: i.name.clone(),
        description: i.description.clone(),
        architecture: i.arch,
        boot_modes: i.boot_modes.clone(),
        checks: i.checks.checks(),
        audit: i.audit.policy(),
        root: i.root(&a.source),
        extra: i.bdm.clone(),
        open: i.open.options(),
        creation_epoch: epoch,
        sync: !a.no_sync,
        build: None,
    };
    report(register::register(&req, progress, Some(&CANCEL)), json)
}

/// `mkomi build`.
pub fn build(a: BuildArgs, progress: &Progress, json: bool) -> ExitCode {
    let epoch = match creation_epoch() {
        Ok(e) => e,
        Err(m) => return usage(&m),
    };
    let req = bundle::build::BuildRequest {
        template: a.template,
        vars: a.vars.into_iter().collect(),
        output: a.output,
        force: a.force,
        cluster_bits: a.cluster_size,
        open: a.open.options(),
        epoch,
        sync: !a.no_sync,
        checks: a.checks.checks(),
        audit: a.audit.policy(),
    };
    report(bundle::build::build(&req, progress, Some(&CANCEL)), json)
}

fn mib_per_s(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / (1 << 20) as f64 / secs
    } else {
        0.0
    }
}

/// Prints the summary of a register, build or import, or its error.
pub fn report(result: bundle::Result<register::Report>, json: bool) -> ExitCode {
    match result {
        Ok(r) => {
            for w in &r.warnings {
                errln!("mkomi: warning: {w}");
            }
            let secs = r.elapsed.as_secs_f64();
            if json {
                let summary = serde_json::json!({
                    "Output": r.output,
                    "Disks": r.manifest.disks,
                    "DataBytes": r.data_bytes,
                    "Seconds": secs,
                    "MiBPerSecond": mib_per_s(r.data_bytes, secs),
                    "Inspection": r.manifest.inspection,
                    "Warnings": r.warnings,
                });
                outln!("{summary}");
            } else {
                outln!(
                    "{}: {} disk(s), {} MiB of data in {:.2} s ({:.0} MiB/s)",
                    r.output.display(),
                    r.manifest.disks.len(),
                    r.data_bytes >> 20,
                    secs,
                    mib_per_s(r.data_bytes, secs)
                );
                for d in &r.manifest.disks {
                    outln!("  {}  {}  {}", d.device_name, d.path, d.content_digest);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) if e.is_interrupted() => {
            errln!("mkomi: interrupted; nothing was written");
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Err(e) if e.is_audit_denied() => {
            fail(&e);
            ExitCode::from(EXIT_MISMATCH)
        }
        Err(e) if e.is_audit_incomplete() => {
            fail(&e);
            ExitCode::from(EXIT_INCOMPLETE)
        }
        Err(e) => fail(&e),
    }
}
