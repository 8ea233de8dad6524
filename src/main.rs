//! The `mkomi` command: a thin layer over the library that parses arguments, shows progress and
//! turns errors into one-line messages and exit codes.
//!
//! All output goes through [`outln!`], [`out!`] and [`errln!`] (clippy refuses `println!` and
//! its kin here): a reader that goes away (`mkomi image list | head -1`) ends the output
//! quietly, where `println!` would panic.

// The output macros are the only way out: see `write_stdout`.
#![deny(clippy::disallowed_macros)]

/// `println!` that survives a closed pipe: see [`write_stdout`].
macro_rules! outln {
    () => {
        $crate::write_stdout("\n")
    };
    ($($arg:tt)*) => {
        $crate::write_stdout(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that survives a closed pipe: see [`write_stdout`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_stdout(&format!($($arg)*))
    };
}

/// `eprintln!` that never panics: see [`write_stderr`].
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::write_stderr(&format!("{}\n", format_args!($($arg)*)))
    };
}

use clap::{CommandFactory, Parser, Subcommand};
use mkomi::audit::{Severity, image::Policy};
use mkomi::bundle::checks::Checks;
use mkomi::bundle::{self, register, verify};
use mkomi::export::package::{self, Target};
use mkomi::export::{import, s3};
use mkomi::format::{BackingPolicy, InputFormat, OpenOptions};
use mkomi::manifest::{Architecture, BootMode, DiskFormat, VolumeType, rules};
use mkomi::progress::{Mode, Progress};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

mod store_cmd;

/// Exit code for a verification that found differences.
const EXIT_MISMATCH: u8 = 3;
/// Exit code when `--deny` or `--audit deny=` meets an incomplete audit.
const EXIT_INCOMPLETE: u8 = 4;
/// Exit code after Ctrl-C, as shells report SIGINT.
const EXIT_INTERRUPTED: u8 = 130;

static CANCEL: AtomicBool = AtomicBool::new(false);

/// Set once stdout's reader has gone: the rest of the output is dropped.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
/// The first failure to write stdout other than a reader gone (a full disk, say).
static STDOUT_FAILED: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Writes `text` to stdout. When the reader has gone (EPIPE: `mkomi image list | head -1`),
/// the rest of the output is dropped and the command ends as it would have, with its own exit
/// code, quietly, as coreutils do; `println!` would panic instead (exit 101).
///
/// SIGPIPE stays ignored (Rust's default) rather than reset to end the process, as coreutils
/// let it: a command's output is its last step, but stderr is written while it works (progress,
/// warnings), and a SIGPIPE death there (`mkomi register … 2>&1 | head -1`) would end it between
/// two steps of an atomic write, leaving its temporary directory, or a store's work, behind. An
/// ignored SIGPIPE turns every such write into an error the code handles, and lets every
/// cleanup run.
fn write_stdout(text: &str) {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        STDOUT_GONE.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe
            && let Ok(mut failed) = STDOUT_FAILED.lock()
        {
            failed.get_or_insert_with(|| e.to_string());
        }
    }
}

/// Writes `text` to stderr; a failure is ignored, as there is nowhere left to report it.
fn write_stderr(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// The command's exit code, unless its output could not be written (other than to a reader
/// that had gone, which is no error): then one line on stderr and exit code 1.
fn output_written(code: ExitCode) -> ExitCode {
    match STDOUT_FAILED.lock().ok().and_then(|mut f| f.take()) {
        Some(e) => {
            errln!("mkomi: cannot write to standard output: {e}");
            if code == ExitCode::SUCCESS {
                ExitCode::FAILURE
            } else {
                code
            }
        }
        None => code,
    }
}

#[derive(Parser)]
#[command(
    name = "mkomi",
    version,
    about = "Build Outscale machine images (OMIs) offline",
    long_about = "Build Outscale machine images (OMIs) offline: stream disk images into a bundle \
(manifest.json with Outscale's CreateImage fields, one disk file per block device mapping, \
SHA256SUMS); verify them; look inside disks (inspect) and audit them for embedded secrets; export \
bundles as Outscale export packages to a directory or a bucket, and import them back; keep \
snapshots and images in a local store with Outscale's lifecycle (IDs, sharing, copies, deletion).",
    after_help = "Exit codes: 0 success, 1 error, 2 usage error, 3 a check failed (verify found differences, or the audit found what --deny or --audit deny= refuses), 4 the audit under --deny or --audit deny= was incomplete (something holding data could not be read) and --allow-incomplete was not given, 130 interrupted."
)]
struct Cli {
    /// No progress output.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Print the final summary as JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// The image store (snapshot, image and store commands); default: MKOMI_STORE, else
    /// $XDG_DATA_HOME/mkomi/store, else ~/.local/share/mkomi/store.
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream a disk image (and extra volumes) into an OMI bundle.
    #[command(after_help = "Examples:
  mkomi register debian.qcow2 -o debian-omi --arch x86_64 --boot-mode uefi
  mkomi register root.raw -o web --arch x86_64 --name 'web (v2)' \\
      --bdm /dev/sdb=data.qcow2,size=100,type=gp2

SOURCE and each --bdm PATH are raw images, block devices or qcow2 images (v2/v3, compressed
clusters, backing chains); the format is read from the content of a regular file (--input-format
says it instead; a block device is raw unless --input-format qcow2). A backing file is followed
only onto a regular file inside --allow-backing DIR. SOURCE_DATE_EPOCH, when set, is the
manifest's CreationDate, so the same inputs give byte-identical bundles.")]
    Register(Box<RegisterArgs>),
    /// Lay out a bootable disk from a template and register it as a bundle.
    #[command(after_help = "Example:
  mkomi build templates/uefi.toml --set rootfs=root.ext4 -o debian-omi

The template (TOML) declares the image fields, the disk size, GPT partitions and their content
(an EFI system partition made in-process, a file system image, or nothing), systemd-boot with
its kernel and initrd taken from the root file system, and extra volumes. ${NAME} in a value
comes from --set NAME=VALUE. No root, loop devices or mounts are needed. SOURCE_DATE_EPOCH
fixes every timestamp, so the same inputs give byte-identical bundles.")]
    Build(Box<BuildArgs>),
    /// Check a bundle's files against its manifest and SHA256SUMS.
    #[command(after_help = "Example:
  mkomi verify debian-omi

Re-reads every disk: file size and SHA-256, virtual size and ContentDigest through its format;
checks SHA256SUMS against the manifest. Prints one line per difference; exit code 3 when any.")]
    Verify {
        /// The bundle directory.
        dir: PathBuf,
    },
    /// Show what a disk or bundle holds: partitions, file systems, OS, kernels, bootloaders,
    /// architecture and boot modes.
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
    Inspect {
        /// A disk image or a bundle directory.
        source: PathBuf,
        #[command(flatten)]
        open: OpenArgs,
    },
    /// Look for what must not ship in an image: SSH keys, passwords, host keys, machine ids,
    /// histories, cloud-init state.
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
    Audit {
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
    },
    /// Package a bundle for Outscale object storage: gzip disk objects, the export manifest,
    /// mkomi's manifest and SHA256SUMS, in a directory or a bucket.
    #[command(after_help = "Examples:
  mkomi export debian-omi --to /srv/packages/debian
  OSC_ACCESS_KEY=… OSC_SECRET_KEY=… mkomi export debian-omi \\
      --to s3://images/debian-12 --endpoint https://oos.eu-west-2.outscale.com --region eu-west-2

Each disk becomes DEVICE.FORMAT.gz (gzip, compressed on all cores, deterministic), listed in
manifest.json in Outscale's export format (Version 1, Image, Snapshots with Size and, in a
bucket, PreSignedUrl), beside mkomi-manifest.json (the bundle's manifest) and SHA256SUMS of every
object. In a bucket, the manifest's pre-signed URL is printed: it is CreateImage's FileLocation.
Credentials come from OSC_ACCESS_KEY/OSC_SECRET_KEY or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
(and AWS_SESSION_TOKEN); they are never printed.")]
    Export(Box<ExportArgs>),
    /// Make a bundle from an export package (Outscale's or mkomi's).
    #[command(after_help = "Examples:
  mkomi import /srv/packages/debian/manifest.json -o debian-omi
  mkomi import 'https://oos.eu-west-2.outscale.com/images/debian-12/manifest.json?X-Amz-…' -o debian-omi
  mkomi import s3://images/debian-12/manifest.json -o debian-omi --endpoint https://…

MANIFEST is a local file, an s3:// object or an http(s) URL. Every field is checked before
anything is fetched (file names, devices, sizes, URL schemes, expired pre-signed URLs). Each
object is downloaded, hashed and gunzipped as it arrives, bounded by its declared Size, then
registered; SHA256SUMS and mkomi-manifest.json, when beside the manifest, are checked (every
object's SHA-256, every disk's ContentDigest). The bundle appears only when all checks pass.")]
    Import(Box<ImportArgs>),
    /// Snapshots in the local store: create, list, show, delete.
    #[command(subcommand)]
    Snapshot(store_cmd::SnapshotCmd),
    /// Images in the local store: create, list, show, update (launch permissions, tags), copy,
    /// delete, bundle, export, import.
    #[command(subcommand)]
    Image(store_cmd::ImageCmd),
    /// The local store itself: check, gc.
    #[command(subcommand)]
    Store(store_cmd::StoreCmd),
    /// Print shell completions.
    #[command(after_help = "Example:\n  mkomi completions bash > /etc/bash_completion.d/mkomi")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(clap::Args)]
struct RegisterArgs {
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

/// The image's fields and checks, shared by `register` and `image create`.
#[derive(clap::Args)]
struct ImageArgs {
    /// Architecture; default: the one the root disk's binaries are built for (see `inspect`).
    #[arg(long, value_enum)]
    arch: Option<Architecture>,
    /// Register even when --arch contradicts the binaries found on the disk.
    #[arg(long)]
    no_arch_check: bool,
    /// Register even when a --boot-mode is not one the disk supports, or when no --boot-mode is
    /// given and the disk holds no boot loader.
    #[arg(long)]
    no_boot_check: bool,
    /// The security audit (see `mkomi audit`): off, report (record findings in the manifest), or
    /// deny=SEVERITY (also refuse the image on a finding at least that severe: info, low, medium,
    /// high; and, exit code 4, when the audit is incomplete).
    #[arg(long, value_name = "POLICY", default_value = "report")]
    audit: Policy,
    /// With --audit deny=SEVERITY, accept an incomplete audit.
    #[arg(long)]
    allow_incomplete: bool,
    /// ImageName (3-128 characters); default: from the root's file name.
    #[arg(long)]
    name: Option<String>,
    /// Description.
    #[arg(long)]
    description: Option<String>,
    /// A boot mode the image supports; repeat for both. Default: the ones found on the disk (uefi:
    /// an ESP with EFI/BOOT/BOOTX64.EFI or BOOTIA32.EFI for the architecture; legacy: MBR boot
    /// code or a BIOS boot partition).
    #[arg(long = "boot-mode", value_enum)]
    boot_modes: Vec<BootMode>,
    /// The root device name (Outscale requires /dev/sda1).
    #[arg(long, default_value = rules::ROOT_DEVICE)]
    root_device: String,
    /// Root VolumeSize in GiB; default: the disk's size rounded up.
    #[arg(long, value_name = "GiB")]
    volume_size: Option<u64>,
    /// Root VolumeType.
    #[arg(long, value_enum, default_value = "standard")]
    volume_type: VolumeType,
    /// Root Iops (io1 only).
    #[arg(long)]
    iops: Option<u32>,
    /// Root DeleteOnVmDeletion.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    delete_on_vm_deletion: bool,
    /// An extra volume: DEVICE=PATH[,size=GiB][,type=TYPE][,iops=N][,delete-on-vm-deletion=BOOL]
    /// (`image create` also takes snap-… for PATH).
    #[arg(long, value_name = "MAPPING", value_parser = parse_bdm)]
    bdm: Vec<register::Volume>,
    #[command(flatten)]
    open: OpenArgs,
}

/// How disk images are opened: backing files and format (every command that reads one).
#[derive(clap::Args)]
pub(crate) struct OpenArgs {
    /// Follow a qcow2 backing file found inside DIR (repeatable); without it, an image that
    /// names a backing file is refused.
    #[arg(long, value_name = "DIR")]
    allow_backing: Vec<PathBuf>,
    /// The format of the disk images: auto (the content of a regular file tells; a block
    /// device is raw), raw, or qcow2.
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "auto")]
    input_format: InputFormat,
}

impl OpenArgs {
    pub(crate) fn options(&self) -> OpenOptions {
        OpenOptions::new(
            self.input_format,
            BackingPolicy::within(self.allow_backing.clone()),
        )
    }
}

impl ImageArgs {
    /// The root volume, whose content is `source`.
    fn root(&self, source: &std::path::Path) -> register::Volume {
        let mut root = register::Volume::new(&self.root_device, source);
        root.volume_size = self.volume_size;
        root.volume_type = self.volume_type;
        root.iops = self.iops;
        root.delete_on_vm_deletion = self.delete_on_vm_deletion;
        root
    }

    /// The options given (not at their defaults), as named on the command line.
    fn given(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut given = |set: bool, name| {
            if set {
                out.push(name);
            }
        };
        given(self.arch.is_some(), "--arch");
        given(self.no_arch_check, "--no-arch-check");
        given(self.no_boot_check, "--no-boot-check");
        given(self.audit.to_string() != "report", "--audit");
        given(self.allow_incomplete, "--allow-incomplete");
        given(self.name.is_some(), "--name");
        given(self.description.is_some(), "--description");
        given(!self.boot_modes.is_empty(), "--boot-mode");
        given(self.root_device != rules::ROOT_DEVICE, "--root-device");
        given(self.volume_size.is_some(), "--volume-size");
        given(self.volume_type != VolumeType::Standard, "--volume-type");
        given(self.iops.is_some(), "--iops");
        given(!self.delete_on_vm_deletion, "--delete-on-vm-deletion");
        given(!self.bdm.is_empty(), "--bdm");
        given(!self.open.allow_backing.is_empty(), "--allow-backing");
        given(
            self.open.input_format != InputFormat::Auto,
            "--input-format",
        );
        out
    }

    fn checks(&self) -> Checks {
        Checks {
            arch: !self.no_arch_check,
            boot: !self.no_boot_check,
            loader: !self.no_boot_check,
        }
    }

    /// The audit policy, `--allow-incomplete` applied.
    fn audit(&self) -> Policy {
        self.audit.allowing_incomplete(self.allow_incomplete)
    }

    fn open(&self) -> OpenOptions {
        self.open.options()
    }
}

/// Object storage options shared by export and import.
#[derive(clap::Args, Clone)]
struct StorageArgs {
    /// S3 endpoint URL (Outscale OOS: https://oos.REGION.outscale.com); default: AWS.
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Region; default: OSC_REGION, AWS_REGION or AWS_DEFAULT_REGION, else us-east-1.
    #[arg(long)]
    region: Option<String>,
}

#[derive(clap::Args)]
struct ExportArgs {
    /// The bundle directory.
    bundle: PathBuf,
    #[command(flatten)]
    package: PackageArgs,
}

/// Where and how a package is written (export, image export).
#[derive(clap::Args)]
struct PackageArgs {
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

#[derive(clap::Args)]
struct ImportArgs {
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
    /// Import even when the manifest's Architecture contradicts the binaries on the root disk
    /// (the package's own ChecksSkipped never turns a check off).
    #[arg(long)]
    no_arch_check: bool,
    /// Import even when a boot mode of the package is not one the disk supports.
    #[arg(long)]
    no_boot_check: bool,
    #[command(flatten)]
    storage: StorageArgs,
}

#[derive(clap::Args)]
struct BuildArgs {
    /// The template file.
    template: PathBuf,
    /// The bundle directory to create.
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
    /// A template variable: NAME=VALUE fills ${NAME}.
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_var)]
    vars: Vec<(String, String)>,
    /// Build even when the template's architecture contradicts the binaries on the disk.
    #[arg(long)]
    no_arch_check: bool,
    /// Build even when a template boot mode is not one the disk supports, or when the template
    /// declares none and the disk holds no boot loader.
    #[arg(long)]
    no_boot_check: bool,
    /// The security audit (see `mkomi audit`): off, report (record findings in the manifest), or
    /// deny=SEVERITY (also refuse the image on a finding at least that severe: info, low, medium,
    /// high; and, exit code 4, when the audit is incomplete).
    #[arg(long, value_name = "POLICY", default_value = "report")]
    audit: Policy,
    /// With --audit deny=SEVERITY, accept an incomplete audit.
    #[arg(long)]
    allow_incomplete: bool,
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

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: a number with s, m, h or d"))?;
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

fn parse_var(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected NAME=VALUE")?;
    if k.is_empty()
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        return Err(format!("{k:?} is not a variable name"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

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

fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}

fn parse_bdm(s: &str) -> Result<register::Volume, String> {
    let (device, rest) = s
        .split_once('=')
        .ok_or_else(|| "expected DEVICE=PATH[,key=value...]".to_string())?;
    let mut parts = rest.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or("missing PATH")?;
    let mut v = register::Volume::new(device, std::path::Path::new(path));
    for opt in parts {
        let (k, val) = opt
            .split_once('=')
            .ok_or_else(|| format!("{opt:?}: expected key=value"))?;
        match k {
            "size" => {
                v.volume_size = Some(
                    val.parse()
                        .map_err(|_| format!("size={val}: not a whole number of GiB"))?,
                )
            }
            "type" => {
                v.volume_type = <VolumeType as clap::ValueEnum>::from_str(val, false)
                    .map_err(|_| format!("type={val}: must be standard, gp2 or io1"))?
            }
            "iops" => {
                v.iops = Some(
                    val.parse()
                        .map_err(|_| format!("iops={val}: not a number"))?,
                )
            }
            "delete-on-vm-deletion" => v.delete_on_vm_deletion = parse_bool(val)?,
            _ => {
                return Err(format!(
                    "unknown key {k:?}: use size, type, iops or delete-on-vm-deletion"
                ));
            }
        }
    }
    Ok(v)
}

/// `SOURCE_DATE_EPOCH` (reproducible-builds.org) or the clock.
fn creation_epoch() -> Result<i64, String> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("SOURCE_DATE_EPOCH={v:?}: not a number of seconds")),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mode = if cli.quiet || cli.json && !std::io::stderr().is_terminal() {
        Mode::Quiet
    } else if std::io::stderr().is_terminal() {
        Mode::Bars
    } else {
        Mode::Lines
    };
    // Commands that poll the flag stop cleanly on Ctrl-C (their temporary files removed, exit
    // 130); the others are ended by SIGINT as by a crash, which their outputs survive.
    let polls = matches!(
        cli.command,
        Command::Register(_) | Command::Build(_) | Command::Import(_) | Command::Export(_)
    ) || store_cmd::polls_cancel(&cli.command);
    if polls {
        let _ = ctrlc::set_handler(|| CANCEL.store(true, Ordering::Relaxed));
    }
    let progress = Progress::new(mode);
    let code = match cli.command {
        Command::Completions { shell } => {
            // Made in memory: clap_complete panics when it cannot write.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "mkomi", &mut script);
            out!("{}", String::from_utf8_lossy(&script));
            ExitCode::SUCCESS
        }
        Command::Register(args) => run_register(*args, &progress, cli.json),
        Command::Build(args) => run_build(*args, &progress, cli.json),
        Command::Verify { dir } => run_verify(&dir, &progress, cli.json, cli.quiet),
        Command::Inspect { source, open } => run_inspect(&source, &open.options(), cli.json),
        Command::Export(args) => run_export(*args, cli.json),
        Command::Import(args) => run_import(*args, &progress, cli.json),
        Command::Snapshot(cmd) => store_cmd::snapshot(cmd, cli.store, &progress, cli.json),
        Command::Image(cmd) => store_cmd::image(cmd, cli.store, &progress, cli.json),
        Command::Store(cmd) => store_cmd::maintain(cmd, cli.store, &progress, cli.json),
        Command::Audit {
            source,
            deny,
            allow_incomplete,
            open,
        } => run_audit(&source, deny, allow_incomplete, &open.options(), cli.json),
    };
    output_written(code)
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    errln!("mkomi: {}", e.to_string().replace('\n', " "));
    ExitCode::FAILURE
}

fn usage(msg: &str) -> ExitCode {
    let _ = Cli::command()
        .error(clap::error::ErrorKind::ValueValidation, msg)
        .print();
    ExitCode::from(2)
}

fn mib_per_s(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / (1 << 20) as f64 / secs
    } else {
        0.0
    }
}

fn run_build(a: BuildArgs, progress: &Progress, json: bool) -> ExitCode {
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
        checks: Checks {
            arch: !a.no_arch_check,
            boot: !a.no_boot_check,
            loader: !a.no_boot_check,
        },
        audit: a.audit.allowing_incomplete(a.allow_incomplete),
    };
    report(bundle::build::build(&req, progress, Some(&CANCEL)), json)
}

fn run_register(a: RegisterArgs, progress: &Progress, json: bool) -> ExitCode {
    let epoch = match creation_epoch() {
        Ok(e) => e,
        Err(m) => return usage(&m),
    };
    let i = &a.image;
    let req = register::Request {
        output: a.output,
        force: a.force,
        format: a.format,
        cluster_bits: a.cluster_size,
        name: i.name.clone(),
        description: i.description.clone(),
        architecture: i.arch,
        boot_modes: i.boot_modes.clone(),
        checks: i.checks(),
        audit: i.audit(),
        root: i.root(&a.source),
        extra: i.bdm.clone(),
        open: i.open(),
        creation_epoch: epoch,
        sync: !a.no_sync,
    };
    report(register::register(&req, progress, Some(&CANCEL)), json)
}

/// Prints the summary of a register or build, or its error.
fn report(result: bundle::Result<register::Report>, json: bool) -> ExitCode {
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

fn run_verify(dir: &std::path::Path, progress: &Progress, json: bool, quiet: bool) -> ExitCode {
    let report = match verify::verify(dir, progress) {
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

fn run_inspect(source: &std::path::Path, open: &OpenOptions, json: bool) -> ExitCode {
    match mkomi::inspect::inspect_path(source, open) {
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

fn run_audit(
    source: &std::path::Path,
    deny: Option<Severity>,
    allow_incomplete: bool,
    open: &OpenOptions,
    json: bool,
) -> ExitCode {
    let report = match mkomi::audit::image::audit_path(source, open) {
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
    match (deny, report.incomplete()) {
        (Some(at), _) if report.at_least(at).next().is_some() => ExitCode::from(EXIT_MISMATCH),
        // Fail closed: what could not be read may hold what --deny refuses.
        (Some(at), Some(why)) if !allow_incomplete => {
            errln!(
                "mkomi: {}: audit: {} (--deny {at} refuses an incomplete audit; \
                 --allow-incomplete accepts it)",
                source.display(),
                why.replace('\n', " ")
            );
            ExitCode::from(EXIT_INCOMPLETE)
        }
        _ => ExitCode::SUCCESS,
    }
}

fn s3_config(storage: &StorageArgs) -> Result<s3::Config, ExitCode> {
    s3::Config::from_env(storage.endpoint.as_deref(), storage.region.as_deref())
        .map_err(|e| fail(&e))
}

fn run_export(a: ExportArgs, json: bool) -> ExitCode {
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

fn package_request(a: &PackageArgs, bundle: PathBuf) -> Result<package::Request, ExitCode> {
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
        cancel: Some(&CANCEL),
    })
}

fn print_export(r: &package::Report, json: bool) -> ExitCode {
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

/// Now, in seconds since the epoch (to judge pre-signed URLs' expiry).
fn now_epoch() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn import_origin(manifest: &str, storage: &StorageArgs) -> Result<import::Origin, ExitCode> {
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

fn run_import(a: ImportArgs, progress: &Progress, json: bool) -> ExitCode {
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
            arch: !a.no_arch_check,
            boot: !a.no_boot_check,
            // Import sets its own: see import::run.
            loader: false,
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
