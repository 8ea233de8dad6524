//! What `register` and `build` conclude from inspecting the root disk: the architecture and
//! boot modes when the user leaves them out, and errors when what the user declares contradicts
//! the disk (an image tagged with the wrong architecture, or `uefi` without a UEFI loader, never
//! boots) or when the disk holds no boot loader at all (an image with no `BootModes` never
//! boots either), or when a Windows image was not generalized by sysprep (Outscale: a
//! non-official Windows OMI works only if its creator ran sysprep first).

use super::{Error, Result};
use crate::audit::image as audit;
use crate::format::Disk;
use crate::inspect::{self, Summary};
use crate::manifest::{
    Architecture, BootMode, Inspection, LaunchRequirements, SysprepState, WindowsInspection,
};
use std::path::Path;
use std::sync::Arc;

/// Which checks against the disk's content are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checks {
    /// A declared architecture must agree with the binaries found (`--no-arch-check` turns it
    /// off).
    pub arch: bool,
    /// A declared boot mode must be one the disk supports (`--no-boot-check` turns it off).
    pub boot: bool,
    /// With no boot mode declared, the root disk must hold a boot loader (`--no-boot-check`
    /// turns it off with `boot`).
    pub loader: bool,
    /// The declared boot modes must be exactly those the disk supports, no fewer (`build`: a
    /// disk it made boots in the modes it declares and no other; off with `boot`).
    pub exact_modes: bool,
    /// The fields come from a template (`build`), not from `--arch`/`--boot-mode`: messages
    /// name the template's keys.
    pub template: bool,
    /// A Windows image must have been generalized by sysprep: one that is not is refused, one
    /// whose state is unknown is a warning (`--no-sysprep-check` turns the refusal off).
    pub sysprep: bool,
}

impl Default for Checks {
    fn default() -> Self {
        Checks {
            arch: true,
            boot: true,
            loader: true,
            exact_modes: false,
            template: false,
            sysprep: true,
        }
    }
}

/// The image's fields once the disk has been looked at.
#[derive(Clone, Debug)]
pub struct Decided {
    /// `Architecture`.
    pub architecture: Architecture,
    /// `BootModes`.
    pub boot_modes: Vec<BootMode>,
    /// What the manifest records of the inspection.
    pub inspection: Inspection,
    /// For Windows images.
    pub launch_requirements: Option<LaunchRequirements>,
    /// Lines for the user (Windows needs sysprep, …).
    pub warnings: Vec<String>,
}

fn arch_name(a: Architecture) -> &'static str {
    match a {
        Architecture::I386 => "i386",
        Architecture::X86_64 => "x86_64",
    }
}

/// The loader UEFI firmware boots from an ESP without boot entries, for `a`.
fn fallback(a: Architecture) -> &'static str {
    match a {
        Architecture::X86_64 => "BOOTX64.EFI",
        Architecture::I386 => "BOOTIA32.EFI",
    }
}

fn mode_name(m: BootMode) -> &'static str {
    match m {
        BootMode::Uefi => "uefi",
        BootMode::Legacy => "legacy",
    }
}

/// Decides the architecture and boot modes of the image on `disk` (named in messages) from what
/// was declared and what `summary` found.
pub fn decide(
    disk: &Path,
    declared_arch: Option<Architecture>,
    declared_modes: &[BootMode],
    checks: Checks,
    summary: &Summary,
) -> Result<Decided> {
    let fail = |reason: String| Error::Check {
        path: disk.to_owned(),
        reason,
    };
    let evidence = summary.architecture_evidence.join("; ");
    let (declared, anyway) = if checks.template {
        ("the template's architecture", "builds")
    } else {
        ("--arch", "registers")
    };
    let architecture = match (declared_arch, summary.architecture, &summary.machine) {
        (Some(a), _, _) if !checks.arch => a,
        (Some(a), Some(found), _) if a == found => a,
        (Some(a), _, Some(m)) => {
            return Err(fail(format!(
                "{declared} {} contradicts the image, whose binaries are {m}: {evidence} \
                 (--no-arch-check {anyway} it anyway)",
                arch_name(a)
            )));
        }
        (Some(a), _, None) if !summary.problems.is_empty() => {
            return Err(fail(format!(
                "{declared} {}: {} (--no-arch-check {anyway} it anyway)",
                arch_name(a),
                summary.problems.join("; ")
            )));
        }
        (Some(a), _, None) => a,
        (None, Some(found), _) => found,
        (None, None, Some(m)) => {
            return Err(fail(format!(
                "the image's binaries are {m} ({evidence}); Outscale images are i386 or x86_64"
            )));
        }
        (None, None, None) => {
            let why = if summary.problems.is_empty() {
                "no ELF /sbin/init, /bin/sh or /usr/lib/systemd/systemd and no EFI loader found"
                    .to_owned()
            } else {
                summary.problems.join("; ")
            };
            return Err(fail(format!(
                "cannot tell the architecture: {why}; give --arch"
            )));
        }
    };

    let boot_modes = if declared_modes.is_empty() {
        if summary.boot_modes.is_empty() && checks.loader {
            return Err(fail(format!(
                "no boot loader found on the root disk: looked for EFI/BOOT/{} on an ESP and for \
                 boot code in the MBR; pass --no-boot-check to register it \
                 anyway",
                fallback(architecture)
            )));
        }
        summary.boot_modes.clone()
    } else {
        if checks.boot {
            for &m in declared_modes {
                if summary.boot_modes.contains(&m) {
                    continue;
                }
                let missing = match m {
                    BootMode::Uefi => format!(
                        "no EFI system partition holds a UEFI loader for {} (EFI/BOOT/{})",
                        arch_name(architecture),
                        fallback(architecture)
                    ),
                    BootMode::Legacy if summary.legacy_problems.is_empty() => {
                        "the MBR holds no boot code".to_owned()
                    }
                    BootMode::Legacy => format!(
                        "BIOS firmware cannot boot it: {}",
                        summary.legacy_problems.join("; ")
                    ),
                };
                return Err(fail(format!(
                    "boot mode {} declared, but {missing} (--no-boot-check {anyway} it anyway)",
                    mode_name(m)
                )));
            }
        }
        if checks.boot && checks.exact_modes {
            let extra: Vec<&str> = summary
                .boot_modes
                .iter()
                .filter(|m| !declared_modes.contains(m))
                .map(|&m| mode_name(m))
                .collect();
            if !extra.is_empty() {
                return Err(fail(format!(
                    "the disk also boots in {} ({}), which the template does not declare",
                    extra.join(", "),
                    summary.boot_evidence.join("; ")
                )));
            }
        }
        declared_modes.to_vec()
    };

    let mut skipped = Vec::new();
    if !checks.arch {
        skipped.push("arch".to_owned());
    }
    if !checks.boot {
        skipped.push("boot-mode".to_owned());
    }
    if !checks.sysprep {
        skipped.push("sysprep".to_owned());
    }
    let mut warnings = Vec::new();
    // An NTFS volume that could not be read may hold a Windows that sysprep has not
    // generalized: fail closed, as for a Windows whose state is known to be wrong.
    if !summary.windows_unknown.is_empty() {
        let why = summary.windows_unknown.join("; ");
        if checks.sysprep {
            let what = if summary.windows {
                "whether an NTFS volume beside the Windows one holds another Windows is not known"
            } else {
                "whether this is a Windows image is not known"
            };
            return Err(fail(format!(
                "{what} ({why}), so whether sysprep generalized it cannot be checked \
                 (--no-sysprep-check {anyway} it anyway)"
            )));
        }
        warnings.push(format!(
            "{}: whether this is a Windows image is not known ({why}); if it is, it needs \
             2 vCores, 4 GiB and Intel v3 processors, and sysprep",
            disk.display()
        ));
    }
    let launch_requirements = if summary.windows {
        warnings.push(format!(
            "{}: a Windows image: instances need at least 2 vCores, 4 GiB of memory and Intel v3 \
             processors",
            disk.display()
        ));
        let (state, evidence) = match &summary.sysprep {
            Some(p) => (p.state, p.evidence.join("; ")),
            None => (SysprepState::Unknown, String::new()),
        };
        match state {
            SysprepState::Generalized => {}
            SysprepState::NotGeneralized if checks.sysprep => {
                return Err(fail(format!(
                    "a Windows image that sysprep has not generalized ({evidence}): instances \
                     made from it do not work properly; run sysprep /generalize in it first \
                     (--no-sysprep-check {anyway} it anyway)"
                )));
            }
            SysprepState::NotGeneralized => warnings.push(format!(
                "{}: a Windows image that sysprep has not generalized ({evidence}); instances \
                 made from it do not work properly",
                disk.display()
            )),
            SysprepState::Unknown => warnings.push(format!(
                "{}: whether sysprep generalized this Windows image is unknown ({evidence}); \
                 instances made from an image that is not generalized do not work properly",
                disk.display()
            )),
        }
        Some(LaunchRequirements::windows())
    } else {
        None
    };
    let windows = match (summary.windows, &summary.windows_version, &summary.sysprep) {
        (true, version, sysprep) => {
            let v = version.clone().unwrap_or_default();
            Some(WindowsInspection {
                product_name: v.product_name,
                edition: v.edition,
                version: v.version,
                build: v.build,
                sysprep: sysprep.as_ref().map_or(SysprepState::Unknown, |p| p.state),
                sysprep_evidence: sysprep
                    .as_ref()
                    .map(|p| p.evidence.clone())
                    .unwrap_or_default(),
            })
        }
        (false, _, _) => None,
    };
    Ok(Decided {
        architecture,
        boot_modes,
        inspection: Inspection {
            os: summary.os.clone(),
            machine: summary.machine.clone(),
            architecture_evidence: summary.architecture_evidence.clone(),
            boot_modes: summary.boot_modes.clone(),
            boot_mode_evidence: summary.boot_evidence.clone(),
            checks_skipped: skipped,
            windows,
        },
        launch_requirements,
        warnings,
    })
}

/// Inspects the root disk and decides; see [`decide`]. With `audit`, the same walk of its
/// partitions audits it too: each file system is opened once for both.
pub(crate) fn inspect_root(
    disk: &Arc<dyn Disk>,
    device: &str,
    declared_arch: Option<Architecture>,
    declared_modes: &[BootMode],
    checks: Checks,
    audit: Option<&mut audit::Report>,
) -> Result<Decided> {
    let mut inspection = inspect::DiskInspection::new(disk.as_ref(), Some(device));
    let mut audit = audit.map(|report| audit::DiskAudit::new(disk.as_ref(), Some(device), report));
    let table = inspect::walk(disk, &mut |info, fs| {
        if let Some(audit) = &mut audit {
            audit.visit(info.clone(), fs);
        }
        inspection.visit(info, fs);
    });
    if let Some(audit) = audit {
        audit.finish(disk.as_ref());
    }
    let summary = inspect::summarize(&inspection.finish(table));
    decide(disk.path(), declared_arch, declared_modes, checks, &summary)
}
