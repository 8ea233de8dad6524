//! The bundle manifest (`manifest.json`) and Outscale's rules for image fields.
//!
//! `Image` uses the field names and shapes of Outscale's CreateImage request, so it can be sent
//! as one without renaming; the tests validate it against the API's own JSON schema. `Disks`
//! describes the files of the bundle and their checksums.

pub mod rules;
pub mod volume;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The version of the manifest layout, in the top-level `schema` field.
pub const SCHEMA_VERSION: u32 = 1;

/// The manifest's file name in a bundle.
pub const FILE_NAME: &str = "manifest.json";

/// Manifests larger than this are refused before parsing: a real one is a few KiB.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Errors about image fields and manifest files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field's value breaks one of Outscale's rules.
    #[error("{field} {value:?}: {rule}")]
    Field {
        /// The Outscale field name (`ImageName`, `VolumeSize`, …).
        field: String,
        /// The offending value.
        value: String,
        /// What is allowed.
        rule: String,
    },
    /// The manifest file could not be read.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// The manifest file is not a manifest this version understands.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// A whole `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest layout version ([`SCHEMA_VERSION`]).
    pub schema: u32,
    /// The tool that wrote the bundle.
    #[serde(rename = "Builder")]
    pub builder: Builder,
    /// When the bundle was made: `SOURCE_DATE_EPOCH` when set, else the clock (ISO 8601 UTC).
    #[serde(rename = "CreationDate")]
    pub creation_date: String,
    /// The image, as a CreateImage request.
    #[serde(rename = "Image")]
    pub image: Image,
    /// One entry per disk file, root first.
    #[serde(rename = "Disks")]
    pub disks: Vec<Disk>,
    /// What mkomi found inside the root disk, and the evidence for the image's fields.
    #[serde(
        rename = "Inspection",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub inspection: Option<Inspection>,
    /// What an instance launched from the image needs (Windows images only).
    #[serde(
        rename = "LaunchRequirements",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub launch_requirements: Option<LaunchRequirements>,
    /// The security audit of the image's file systems.
    #[serde(rename = "Audit", default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditSummary>,
    /// How `build` made the disks' file systems from trees: what went in, what was removed.
    #[serde(rename = "Build", default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildRecord>,
}

/// What `build` did to the trees it laid out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BuildRecord {
    /// One entry per partition built from a tree, in partition order.
    #[serde(default)]
    pub trees: Vec<TreeRecord>,
    /// Every path the sanitize step removed or emptied.
    #[serde(default)]
    pub sanitized: Vec<SanitizedPath>,
    /// Every file `[[file]]` added or replaced.
    #[serde(default)]
    pub files: Vec<AddedFile>,
}

/// A partition's file system built from a tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TreeRecord {
    /// The partition's label. (Not the kind of source: the same tree as a directory, a tarball
    /// or an image gives the same bundle, manifest included.)
    pub partition: String,
    /// The file system written (`ext4`).
    pub file_system: String,
    /// Its size in bytes.
    pub size: u64,
    /// Entries in the tree, the root directory included.
    pub entries: u64,
    /// Bytes of regular-file content.
    pub content_bytes: u64,
}

/// A path the sanitize step changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SanitizedPath {
    /// The `[sanitize]` item (`ssh-host-keys`).
    pub item: String,
    /// The path, non-UTF-8 bytes escaped.
    pub path: String,
    /// `removed` or `emptied`.
    pub action: String,
    /// Bytes of content that went.
    pub bytes: u64,
}

/// A file `[[file]]` put in a tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddedFile {
    /// The path.
    pub path: String,
    /// Whether it replaced something.
    pub replaced: bool,
    /// Size of its content.
    pub bytes: u64,
}

/// What `register` and `build` found inside the root disk (see [`crate::inspect`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Inspection {
    /// The OS's name, from `/etc/os-release`, or Windows' `ProductName` (`Windows` when
    /// unreadable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// The machine the binaries are built for, when they agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// The binaries that tell the architecture, one line each.
    #[serde(default)]
    pub architecture_evidence: Vec<String>,
    /// The boot modes found on the disk.
    #[serde(default)]
    pub boot_modes: Vec<BootMode>,
    /// Why each boot mode, one line each.
    #[serde(default)]
    pub boot_mode_evidence: Vec<String>,
    /// Checks the user turned off (`arch`, `boot-mode`, `sysprep`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks_skipped: Vec<String>,
    /// The Windows installation, for a Windows image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<WindowsInspection>,
}

/// What `register` and `build` found of a Windows installation (see
/// [`crate::inspect::windows`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WindowsInspection {
    /// `ProductName` (`Windows Server 2022 Datacenter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    /// `EditionID` (`ServerDatacenter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edition: Option<String>,
    /// `DisplayVersion` (`21H2`), else `ReleaseId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `CurrentBuild` (`20348`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    /// Whether sysprep generalized it.
    pub sysprep: SysprepState,
    /// The values that say so and where they were read, one line each.
    #[serde(default)]
    pub sysprep_evidence: Vec<String>,
}

/// Whether a Windows installation was generalized by sysprep, as read offline from its registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SysprepState {
    /// `ImageState` is a `GENERALIZE_RESEAL` state and nothing contradicts it.
    Generalized,
    /// `ImageState` is an installed, specialized or undeployable state.
    NotGeneralized,
    /// The hives could not be read, are dirty, or disagree.
    Unknown,
}

impl SysprepState {
    /// The name in reports and manifests: `generalized`, `not generalized`, `unknown`.
    pub fn name(self) -> &'static str {
        match self {
            SysprepState::Generalized => "generalized",
            SysprepState::NotGeneralized => "not generalized",
            SysprepState::Unknown => "unknown",
        }
    }
}

/// The smallest VM a Windows image runs on, from Outscale's OMI documentation: "Windows
/// instances require at least the v3 Intel processor generation, 2 vCores, and 4 GiB of memory".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LaunchRequirements {
    /// Why the requirements apply.
    pub reason: String,
    /// Fewest vCores.
    pub min_vcores: u32,
    /// Least memory in GiB.
    pub min_memory_gib: u32,
    /// Oldest Intel processor generation (`v3`).
    pub min_processor_generation: String,
}

impl LaunchRequirements {
    /// The requirements of a Windows image.
    pub fn windows() -> Self {
        LaunchRequirements {
            reason: "Windows".into(),
            min_vcores: 2,
            min_memory_gib: 4,
            min_processor_generation: "v3".into(),
        }
    }
}

/// The audit's result as recorded in a manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AuditSummary {
    /// The policy applied: `report`, or `deny=SEVERITY`.
    pub policy: String,
    /// Whether every disk, partition and file system that holds data was audited: false when
    /// there are `problems`. Absent from manifests of mkomi versions that did not check, which
    /// read as false: such an audit is not known to be complete.
    #[serde(default)]
    pub complete: bool,
    /// Findings per severity (`high`, `medium`, `low`, `info`).
    pub counts: std::collections::BTreeMap<String, u64>,
    /// Each finding.
    pub findings: Vec<AuditFinding>,
    /// Parts of the file systems that could not be read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// One audit finding in a manifest: never a secret (see [`crate::audit`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AuditFinding {
    /// `high`, `medium`, `low` or `info`.
    pub severity: String,
    /// A stable identifier of the kind of finding.
    pub code: String,
    /// The partition (`partition 2`, `whole disk`), prefixed by the device for extra volumes.
    pub location: String,
    /// The file.
    pub path: String,
    /// What was found.
    pub message: String,
}

/// The tool that wrote a bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Builder {
    /// Always `mkomi`.
    pub name: String,
    /// The crate version.
    pub version: String,
}

impl Builder {
    /// This build of mkomi.
    pub fn this() -> Self {
        Self {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// An image's fields, named as in Outscale's CreateImage request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Image {
    /// `ImageName`: 3–128 characters (see [`rules::image_name`]).
    pub image_name: String,
    /// `Description`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `Architecture`.
    pub architecture: Architecture,
    /// `BootModes`; omitted when none is declared.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot_modes: Vec<BootMode>,
    /// `RootDeviceName`: `/dev/sda1`.
    pub root_device_name: String,
    /// `BlockDeviceMappings`, root first.
    pub block_device_mappings: Vec<BlockDeviceMapping>,
}

/// `Architecture` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Architecture {
    /// 32-bit x86.
    #[serde(rename = "i386")]
    #[value(name = "i386")]
    I386,
    /// 64-bit x86.
    #[serde(rename = "x86_64")]
    #[value(name = "x86_64")]
    X86_64,
}

/// `BootModes` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    /// UEFI firmware.
    Uefi,
    /// BIOS (legacy) boot.
    Legacy,
}

/// One `BlockDeviceMappings` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BlockDeviceMapping {
    /// `DeviceName`: `/dev/sda1` for the root, `/dev/sdb`… for the others.
    pub device_name: String,
    /// `Bsu`: the volume to create.
    pub bsu: Bsu,
}

/// `Bsu` of a block device mapping (BsuToCreate).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Bsu {
    /// `VolumeSize` in GiB.
    pub volume_size: u64,
    /// `VolumeType`.
    pub volume_type: VolumeType,
    /// `Iops`, io1 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<u32>,
    /// `DeleteOnVmDeletion`.
    pub delete_on_vm_deletion: bool,
}

/// `VolumeType` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum VolumeType {
    /// Magnetic.
    Standard,
    /// General purpose SSD.
    Gp2,
    /// Provisioned IOPS SSD.
    Io1,
}

impl VolumeType {
    /// What each form that names a volume type accepts, for its messages.
    pub const NAMES: &str = "standard, gp2 or io1";

    /// The name in Outscale's API, manifests, templates and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            VolumeType::Standard => "standard",
            VolumeType::Gp2 => "gp2",
            VolumeType::Io1 => "io1",
        }
    }
}

impl std::str::FromStr for VolumeType {
    type Err = String;

    /// `standard`, `gp2` or `io1`, exactly.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        [VolumeType::Standard, VolumeType::Gp2, VolumeType::Io1]
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("{s:?}: {}", VolumeType::NAMES))
    }
}

/// Disk file formats: listed in the output-format registry, [`crate::sink::format`].
pub use crate::sink::format::DiskFormat;

/// One disk file of a bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Disk {
    /// The mapping this disk is the volume of.
    pub device_name: String,
    /// File name inside the bundle (no directories).
    pub path: String,
    /// `qcow2` or `raw`.
    pub format: DiskFormat,
    /// Virtual size in bytes: the source's size rounded up to a whole 512-byte sector, the disk
    /// qemu sees (see [`crate::sink::virtual_size`]).
    pub virtual_size: u64,
    /// File size in bytes.
    pub file_size: u64,
    /// Bytes of the virtual disk stored as data.
    pub allocated_bytes: u64,
    /// Hex SHA-256 of the file.
    pub sha256: String,
    /// The disk's content digest (see [`crate::digest`]).
    pub content_digest: String,
}

impl Manifest {
    /// Serialises as written to disk: pretty JSON and a final newline, deterministic.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Reads and checks a manifest file.
    pub fn read(path: &Path) -> Result<Self> {
        let io = |what, source| Error::Io {
            path: path.to_owned(),
            what,
            source,
        };
        let meta = std::fs::metadata(path).map_err(|e| io("cannot read", e))?;
        if meta.len() > MAX_MANIFEST_BYTES {
            return Err(Error::Invalid {
                path: path.to_owned(),
                reason: format!("{} bytes: larger than any manifest", meta.len()),
            });
        }
        let bytes = std::fs::read(path).map_err(|e| io("cannot read", e))?;
        Self::parse(&bytes).map_err(|reason| Error::Invalid {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses manifest bytes; the error is one line.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        match value.get("schema").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(format!(
                    "manifest schema {v}; this mkomi reads schema {SCHEMA_VERSION}"
                ));
            }
            None => return Err("no \"schema\" field: not an mkomi manifest".into()),
        }
        serde_json::from_value(value).map_err(|e| format!("not a valid manifest: {e}"))
    }
}
