//! Argument groups more than one command takes, flattened into each (`#[command(flatten)]`):
//! the checks, the audit, and the image's fields.

use super::open::OpenArgs;
use mkomi::audit::image::Policy;
use mkomi::bundle::checks::Checks;
use mkomi::manifest::volume::Volume;
use mkomi::manifest::{Architecture, BootMode, VolumeType, rules};
use std::path::Path;

/// The checks of the disk against the image's fields (`register`, `build`, `image create`,
/// `import`; the last two reword the help).
#[derive(clap::Args)]
pub struct CheckArgs {
    /// Register even when --arch contradicts the binaries found on the disk.
    #[arg(long)]
    no_arch_check: bool,
    /// Register even when a --boot-mode is not one the disk supports, or when no --boot-mode is
    /// given and the disk holds no boot loader.
    #[arg(long)]
    no_boot_check: bool,
    /// Accept a Windows image that sysprep has not generalized (refused otherwise; a state that
    /// cannot be read is a warning).
    #[arg(long)]
    no_sysprep_check: bool,
}

impl CheckArgs {
    /// The checks to make.
    pub fn checks(&self) -> Checks {
        Checks {
            arch: !self.no_arch_check,
            boot: !self.no_boot_check,
            loader: !self.no_boot_check,
            exact_modes: false,
            template: false,
            sysprep: !self.no_sysprep_check,
        }
    }

    /// `arg`, with the help of `--no-arch-check` and `--no-boot-check` worded for a command
    /// whose image fields come from elsewhere (`build`, `import`); for `Command::mut_args`,
    /// which keeps the arguments' order (and so the completion scripts').
    pub fn reword(arg: clap::Arg, arch: &'static str, boot: &'static str) -> clap::Arg {
        match arg.get_id().as_str() {
            "no_arch_check" => arg.help(arch),
            "no_boot_check" => arg.help(boot),
            _ => arg,
        }
    }

    /// The options given, as named on the command line.
    fn given(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.no_arch_check {
            out.push("--no-arch-check");
        }
        if self.no_boot_check {
            out.push("--no-boot-check");
        }
        if self.no_sysprep_check {
            out.push("--no-sysprep-check");
        }
        out
    }
}

/// `--audit`'s default: audit, and record the findings.
const DEFAULT_AUDIT: Policy = Policy::Report;

/// The security audit of the disks an image is made of (`register`, `build`, `image create`).
#[derive(clap::Args)]
pub struct AuditPolicyArgs {
    /// The security audit (see `mkomi audit`): off, report (record findings in the manifest), or
    /// deny=SEVERITY (also refuse the image on a finding at least that severe: info, low, medium,
    /// high; and, exit code 4, when the audit is incomplete).
    #[arg(long, value_name = "POLICY", default_value_t = DEFAULT_AUDIT,
          value_parser = clap::value_parser!(Policy))]
    audit: Policy,
    /// With --audit deny=SEVERITY, accept an incomplete audit.
    #[arg(long)]
    allow_incomplete: bool,
}

impl AuditPolicyArgs {
    /// The audit policy, `--allow-incomplete` applied.
    pub fn policy(&self) -> Policy {
        self.audit.allowing_incomplete(self.allow_incomplete)
    }

    /// The options given, as named on the command line.
    fn given(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.audit != DEFAULT_AUDIT {
            out.push("--audit");
        }
        if self.allow_incomplete {
            out.push("--allow-incomplete");
        }
        out
    }
}

/// The image's fields and checks, shared by `register` and `image create`.
#[derive(clap::Args)]
pub struct ImageArgs {
    /// Architecture; default: the one the root disk's binaries are built for (see `inspect`).
    #[arg(long, value_enum)]
    pub arch: Option<Architecture>,
    #[command(flatten)]
    pub checks: CheckArgs,
    #[command(flatten)]
    pub audit: AuditPolicyArgs,
    /// ImageName (3-128 characters); default: from the root's file name.
    #[arg(long)]
    pub name: Option<String>,
    /// Description.
    #[arg(long)]
    pub description: Option<String>,
    /// A boot mode the image supports; repeat for both. Default: the ones found on the disk (uefi:
    /// an ESP with EFI/BOOT/BOOTX64.EFI or BOOTIA32.EFI for the architecture; legacy: boot code
    /// in the MBR, and for GRUB a whole core.img in a BIOS boot partition or the gap after the
    /// MBR).
    #[arg(long = "boot-mode", value_enum)]
    pub boot_modes: Vec<BootMode>,
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
    #[arg(long, value_name = "MAPPING", value_parser = clap::value_parser!(Volume))]
    pub bdm: Vec<Volume>,
    #[command(flatten)]
    pub open: OpenArgs,
}

impl ImageArgs {
    /// The root volume, whose content is `source`.
    pub fn root(&self, source: &Path) -> Volume {
        let mut root = Volume::new(&self.root_device, source);
        root.volume_size = self.volume_size;
        root.volume_type = self.volume_type;
        root.iops = self.iops;
        root.delete_on_vm_deletion = self.delete_on_vm_deletion;
        root
    }

    /// The options given (not at their defaults), as named on the command line.
    pub fn given(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.arch.is_some() {
            out.push("--arch");
        }
        out.extend(self.checks.given());
        out.extend(self.audit.given());
        let mut given = |set: bool, name| {
            if set {
                out.push(name);
            }
        };
        given(self.name.is_some(), "--name");
        given(self.description.is_some(), "--description");
        given(!self.boot_modes.is_empty(), "--boot-mode");
        given(self.root_device != rules::ROOT_DEVICE, "--root-device");
        given(self.volume_size.is_some(), "--volume-size");
        given(self.volume_type != VolumeType::Standard, "--volume-type");
        given(self.iops.is_some(), "--iops");
        given(!self.delete_on_vm_deletion, "--delete-on-vm-deletion");
        given(!self.bdm.is_empty(), "--bdm");
        out.extend(self.open.given());
        out
    }
}

/// `NAME=VALUE` (`build --set`, `image update --tag`).
pub fn parse_var(s: &str) -> Result<(String, String), String> {
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
