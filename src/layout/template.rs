//! Image templates: declarative TOML files that describe a bootable disk (partitions and their
//! content, the bootloader) and the image's fields, validated before anything is built.
//!
//! Values may refer to variables, `${name}`, given on the command line (`--set name=value`), so
//! one template serves many builds. `${partuuid:LABEL}` is filled in by the build with the
//! unique GUID of the partition labelled LABEL. Errors name the key and the line.
//!
//! ```toml
//! [image]
//! name = "linux-uefi"
//! architecture = "x86_64"
//! boot-modes = ["uefi"]
//!
//! [disk]
//! size = "2G"
//!
//! [[partition]]
//! type = "esp"
//! label = "ESP"
//! size = "128M"
//! content = "esp"
//!
//! [[partition]]
//! type = "root-x86-64"
//! label = "root"
//! content = "image"
//! image = "${rootfs}"
//!
//! [bootloader]
//! type = "systemd-boot"
//! efi = "root:/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
//! kernel = "root:/boot/vmlinuz-*"
//! initrd = "root:/boot/initrd.img-*"
//! options = "root=PARTUUID=${partuuid:root} console=ttyS0"
//! ```

use crate::layout::ext4::Extra;
use crate::manifest::volume::{Key, Volume};
use crate::manifest::{Architecture, BootMode, DiskFormat, VolumeType};
use crate::ondisk::gpt::PartitionType;
use crate::sink::OutputFormat;
use crate::tree::TreePath;
use crate::tree::add::{AddContent, AddFile};
use crate::tree::sanitize::Sanitize;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// A template error: the file, the line, the key and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The template.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// Not valid TOML, or not a template's shape.
    #[error("{}: {message}", path.display())]
    Syntax {
        /// The template.
        path: PathBuf,
        /// What the parser said, with the line.
        message: String,
    },
    /// A value breaks a rule.
    #[error("{}:{line}: {key} = {value:?}: {rule}", path.display())]
    Value {
        /// The template.
        path: PathBuf,
        /// 1-based line of the value.
        line: usize,
        /// The key, as written in the template (`partition[2].size`).
        key: String,
        /// The value.
        value: String,
        /// What is allowed.
        rule: String,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTemplate {
    image: RawImage,
    #[serde(default)]
    disk: RawDisk,
    #[serde(default)]
    partition: Vec<RawPartition>,
    bootloader: Option<RawBootloader>,
    #[serde(default)]
    esp_file: Vec<RawEspFile>,
    #[serde(default)]
    volume: Vec<RawVolume>,
    sanitize: Option<BTreeMap<String, Spanned<bool>>>,
    #[serde(default)]
    file: Vec<RawFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFile {
    path: Spanned<String>,
    content: Option<Spanned<String>>,
    source: Option<Spanned<String>>,
    symlink: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    owner: Option<Spanned<String>>,
    if_exists: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawImage {
    name: Spanned<String>,
    description: Option<Spanned<String>>,
    architecture: Spanned<String>,
    #[serde(default)]
    boot_modes: Vec<Spanned<String>>,
    format: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDisk {
    size: Option<Spanned<String>>,
    table: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPartition {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    label: Spanned<String>,
    size: Option<Spanned<String>>,
    content: Spanned<String>,
    image: Option<Spanned<String>>,
    source: Option<Spanned<String>>,
    owner: Option<Spanned<String>>,
    extra: Option<Spanned<String>>,
    active: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawBootloader {
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    efi: Option<Spanned<String>>,
    grub: Option<Spanned<String>>,
    kernel: Spanned<String>,
    initrd: Option<Spanned<String>>,
    options: Spanned<String>,
    title: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawEspFile {
    source: Spanned<String>,
    target: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawVolume {
    device: Spanned<String>,
    image: Spanned<String>,
    size: Option<Spanned<u64>>,
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    iops: Option<Spanned<u32>>,
    delete_on_vm_deletion: Option<bool>,
}

/// Where a file comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileRef {
    /// A path on the build host.
    Host(PathBuf),
    /// A path inside the root partition's file system; the last component may be a glob.
    Root(String),
}

/// What a partition holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// An EFI system partition made by the build (FAT32).
    Esp,
    /// A file system image (raw or qcow2) streamed in.
    Image(PathBuf),
    /// An ext4 file system written from a file tree: a directory, a tar archive or a container
    /// image.
    Tree(TreeSource),
    /// Nothing: zeros.
    Empty,
}

/// A tree to lay out as a partition's file system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeSource {
    /// The directory, archive or image.
    pub source: PathBuf,
    /// Every entry's owner replaced by this `(uid, gid)` (a tree a user unpacked without root).
    pub owner: Option<(u32, u32)>,
}

/// How big a partition is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartSize {
    /// This many bytes.
    Fixed(u64),
    /// What is left of the disk (the last partition only).
    Rest,
    /// What its content needs plus a margin (`content = "tree"` only).
    Auto(Extra),
}

/// The partition table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    /// GPT (the default): UEFI, legacy BIOS with a BIOS boot partition, or both.
    Gpt,
    /// MBR: at most four partitions and 2 TiB, for legacy-only disks.
    Mbr,
}

/// One partition, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Its type.
    pub kind: PartitionType,
    /// Its GPT name.
    pub label: String,
    /// Its size.
    pub size: PartSize,
    /// Its content.
    pub content: Content,
    /// The MBR boot indicator (MBR disks only; by default the root partition's).
    pub active: bool,
}

/// The boot loaders to install: systemd-boot on the ESP for UEFI, GRUB for legacy BIOS, or
/// both, booting the same kernel with the same command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bootloader {
    /// systemd-boot's EFI binary (`systemd-bootx64.efi` or `systemd-bootia32.efi`): UEFI boot.
    pub efi: Option<FileRef>,
    /// GRUB's i386-pc module directory (`/usr/lib/grub/i386-pc`, package grub-pc-bin): legacy
    /// BIOS boot.
    pub grub: Option<FileRef>,
    /// The kernel.
    pub kernel: FileRef,
    /// The initrd, if any.
    pub initrd: Option<FileRef>,
    /// The kernel command line; may hold `${partuuid:LABEL}`.
    pub options: String,
    /// The boot entry's title.
    pub title: String,
}

/// A validated template, variables expanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// `ImageName`.
    pub name: String,
    /// `Description`.
    pub description: Option<String>,
    /// `Architecture`.
    pub architecture: Architecture,
    /// `BootModes`.
    pub boot_modes: Vec<BootMode>,
    /// Disk file format.
    pub format: DiskFormat,
    /// Disk size in bytes; `None`: the partitions' sizes plus the partition tables'.
    pub disk_size: Option<u64>,
    /// The partition table.
    pub table: TableKind,
    /// Partitions, in order.
    pub partitions: Vec<Partition>,
    /// The bootloader, if any.
    pub bootloader: Option<Bootloader>,
    /// Extra files for the ESP: (source, path on the ESP).
    pub esp_files: Vec<(FileRef, String)>,
    /// Extra volumes, their images' paths resolved as host paths are.
    pub volumes: Vec<Volume>,
    /// What is removed from trees before they are laid out (`[sanitize]`; all on by default).
    pub sanitize: Sanitize,
    /// Files added to the root partition's tree (`[[file]]`), in order.
    pub files: Vec<AddFile>,
}

/// The margin of `size = "auto"` without `extra`: a root file system with a fifth of its content
/// free takes package upgrades and logs, and `growpart` can still enlarge it at first boot.
pub const DEFAULT_MARGIN_PERCENT: u32 = 20;

/// Parses `extra`: a percentage (`20%`) or a size (`1G`).
pub fn parse_margin(s: &str) -> Option<Extra> {
    match s.trim().strip_suffix('%') {
        Some(pct) => pct
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|&p| p <= 10_000)
            .map(Extra::Percent),
        None => parse_size(s).map(Extra::Bytes),
    }
}

/// Parses `UID:GID`, both decimal.
pub fn parse_owner(s: &str) -> Option<(u32, u32)> {
    let (u, g) = s.trim().split_once(':')?;
    Some((u.parse().ok()?, g.parse().ok()?))
}

/// Parses a size: bytes, or a number with K, M, G or T (powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1u64 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1u64 << 30),
        Some((i, 'T' | 't')) => (&s[..i], 1u64 << 40),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    vars: &'a BTreeMap<String, String>,
    base: &'a Path,
}

impl Ctx<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text
            .get(..offset)
            .map_or(1, |t| t.matches('\n').count() + 1)
    }

    fn err<T: std::fmt::Debug>(&self, key: &str, v: &Spanned<T>, rule: impl Into<String>) -> Error {
        Error::Value {
            path: self.path.to_owned(),
            line: self.line(v.span().start),
            key: key.to_owned(),
            value: format!("{:?}", v.get_ref()).trim_matches('"').to_owned(),
            rule: rule.into(),
        }
    }

    /// Expands `${name}` from the variables; `${partuuid:...}` is left for the build.
    fn expand(&self, key: &str, v: &Spanned<String>) -> Result<String> {
        let s = v.get_ref();
        let mut out = String::new();
        let mut rest = s.as_str();
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let Some(j) = after.find('}') else {
                return Err(self.err(key, v, "unclosed ${"));
            };
            let name = &after[..j];
            if name.starts_with("partuuid:") {
                out.push_str(&rest[i..i + 2 + j + 1]);
            } else {
                match self.vars.get(name) {
                    Some(value) => out.push_str(value),
                    None => {
                        return Err(self.err(
                            key,
                            v,
                            format!("${{{name}}} is not set: give --set {name}=..."),
                        ));
                    }
                }
            }
            rest = &after[j + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// [`Ctx::expand`], refusing control characters: the value becomes one line of a
    /// systemd-boot entry, where a newline would add directives of its own.
    fn one_line(&self, key: &str, v: &Spanned<String>) -> Result<String> {
        let s = self.expand(key, v)?;
        if s.chars().any(char::is_control) {
            return Err(self.err(key, v, "one line: no newline or other control character"));
        }
        Ok(s)
    }

    /// A host path: as written in the template, relative to the template's directory; when it
    /// starts with a variable (`${rootfs}`), as given on the command line, relative to the
    /// current directory.
    fn host_path(&self, raw: &str, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() || raw.starts_with("${") {
            p.to_owned()
        } else {
            self.base.join(p)
        }
    }

    fn file_ref(&self, key: &str, v: &Spanned<String>) -> Result<FileRef> {
        let s = self.expand(key, v)?;
        if let Some(inner) = s.strip_prefix("root:") {
            if !inner.starts_with('/') {
                return Err(self.err(key, v, "a root: path is absolute (root:/boot/vmlinuz-*)"));
            }
            Ok(FileRef::Root(inner.to_owned()))
        } else if let Some(host) = s.strip_prefix("host:") {
            let raw = v.get_ref().strip_prefix("host:").unwrap_or_default();
            Ok(FileRef::Host(self.host_path(raw, host)))
        } else {
            Err(self.err(
                key,
                v,
                "must start with root: (inside the root file system) or host: (a host path)",
            ))
        }
    }
}

impl Template {
    /// Reads and validates the template at `path`, with variables `vars`. Relative host paths
    /// are taken from the template's directory.
    pub fn load(path: &Path, vars: &BTreeMap<String, String>) -> Result<Template> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(path, &text, vars, base)
    }

    /// Validates template `text` (named `path` in messages); host paths are relative to `base`.
    pub fn parse(
        path: &Path,
        text: &str,
        vars: &BTreeMap<String, String>,
        base: &Path,
    ) -> Result<Template> {
        let raw: RawTemplate = toml::from_str(text).map_err(|e| Error::Syntax {
            path: path.to_owned(),
            message: e
                .to_string()
                .replace('\n', " ")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })?;
        let cx = Ctx {
            path,
            text,
            vars,
            base,
        };

        let name = cx.expand("image.name", &raw.image.name)?;
        crate::manifest::rules::image_name(&name)
            .map_err(|e| cx.err("image.name", &raw.image.name, e.to_string()))?;
        let description = match &raw.image.description {
            Some(d) => Some(cx.expand("image.description", d)?),
            None => None,
        };
        let architecture = match raw.image.architecture.get_ref().as_str() {
            "x86_64" => Architecture::X86_64,
            "i386" => Architecture::I386,
            _ => {
                return Err(cx.err(
                    "image.architecture",
                    &raw.image.architecture,
                    "x86_64 or i386",
                ));
            }
        };
        let mut boot_modes = Vec::new();
        for m in &raw.image.boot_modes {
            let mode = match m.get_ref().as_str() {
                "uefi" => BootMode::Uefi,
                "legacy" => BootMode::Legacy,
                _ => return Err(cx.err("image.boot-modes", m, "uefi or legacy")),
            };
            if !boot_modes.contains(&mode) {
                boot_modes.push(mode);
            }
        }
        let format = match &raw.image.format {
            None => OutputFormat::DEFAULT.kind(),
            Some(f) => DiskFormat::from_name(f.get_ref()).ok_or_else(|| {
                let names = DiskFormat::ALL.map(DiskFormat::name);
                cx.err("image.format", f, names.join(" or "))
            })?,
        };
        let disk_size = match &raw.disk.size {
            None => None,
            Some(size) => {
                let n = parse_size(&cx.expand("disk.size", size)?)
                    .filter(|&n| n > 0)
                    .ok_or_else(|| {
                        cx.err("disk.size", size, "a size such as 2G, 512M or 1073741824")
                    })?;
                if n % 512 != 0 {
                    return Err(cx.err("disk.size", size, "must be a multiple of 512 bytes"));
                }
                Some(n)
            }
        };
        let table = match &raw.disk.table {
            None => TableKind::Gpt,
            Some(t) => match t.get_ref().as_str() {
                "gpt" => TableKind::Gpt,
                "mbr" => TableKind::Mbr,
                _ => return Err(cx.err("disk.table", t, "gpt or mbr")),
            },
        };
        if let (TableKind::Mbr, Some(size), Some(n)) = (table, &raw.disk.size, disk_size)
            && n > crate::layout::mbr::MAX_DISK_SIZE
        {
            return Err(cx.err(
                "disk.size",
                size,
                "an MBR disk holds at most 2 TiB (2199023255552 bytes): use table = \"gpt\"",
            ));
        }
        if table == TableKind::Mbr && raw.partition.len() > crate::layout::mbr::MAX_PARTITIONS {
            return Err(Error::Value {
                path: path.to_owned(),
                line: raw
                    .disk
                    .table
                    .as_ref()
                    .map_or(1, |t| cx.line(t.span().start)),
                key: "disk.table".into(),
                value: "mbr".into(),
                rule: format!(
                    "an MBR holds at most 4 partitions, and {} are listed",
                    raw.partition.len()
                ),
            });
        }

        let mut partitions = Vec::new();
        let mut labels: Vec<String> = Vec::new();
        for (i, p) in raw.partition.iter().enumerate() {
            let key = |k: &str| format!("partition[{}].{k}", i + 1);
            let kind = PartitionType::from_name(p.kind.get_ref()).ok_or_else(|| {
                cx.err(
                    &key("type"),
                    &p.kind,
                    "one of esp, xbootldr, root-x86-64, root-x86, usr-x86-64, usr-x86, linux-generic, swap, bios-boot",
                )
            })?;
            let label = cx.expand(&key("label"), &p.label)?;
            if labels.contains(&label) {
                return Err(cx.err(&key("label"), &p.label, "labels must be unique"));
            }
            labels.push(label.clone());
            let is_tree = p.content.get_ref() == "tree";
            let size = match &p.size {
                None => PartSize::Rest,
                Some(s) if s.get_ref() == "rest" => PartSize::Rest,
                Some(s) if s.get_ref() == "auto" => {
                    if !is_tree {
                        return Err(cx.err(
                            &key("size"),
                            s,
                            "only content = \"tree\" can be sized \"auto\"",
                        ));
                    }
                    let margin = match &p.extra {
                        None => Extra::Percent(DEFAULT_MARGIN_PERCENT),
                        Some(e) => {
                            parse_margin(&cx.expand(&key("extra"), e)?).ok_or_else(|| {
                                cx.err(&key("extra"), e, "a percentage (20%) or a size (1G)")
                            })?
                        }
                    };
                    PartSize::Auto(margin)
                }
                Some(s) => PartSize::Fixed(
                    parse_size(&cx.expand(&key("size"), s)?)
                        .filter(|&n| n > 0)
                        .ok_or_else(|| {
                            cx.err(&key("size"), s, "a size such as 512M, \"rest\" or \"auto\"")
                        })?,
                ),
            };
            if let Some(e) = &p.extra
                && !matches!(size, PartSize::Auto(_))
            {
                return Err(cx.err(&key("extra"), e, "extra goes with size = \"auto\""));
            }
            if size == PartSize::Rest && i + 1 != raw.partition.len() {
                return Err(cx.err(
                    &key("size"),
                    &p.label,
                    "only the last partition may take the rest of the disk",
                ));
            }
            if size == PartSize::Rest && disk_size.is_none() {
                return Err(cx.err(
                    &key("size"),
                    &p.label,
                    "the rest of the disk needs a disk size: set disk.size, or size this \
                     partition",
                ));
            }
            let only = |k: &str, v: &Option<Spanned<String>>, which: &str| match v {
                Some(v) => Err(cx.err(&key(k), v, format!("only content = \"{which}\" takes {k}"))),
                None => Ok(()),
            };
            let content = match p.content.get_ref().as_str() {
                "esp" | "empty" => {
                    only("image", &p.image, "image")?;
                    only("source", &p.source, "tree")?;
                    only("owner", &p.owner, "tree")?;
                    if p.content.get_ref() == "esp" {
                        Content::Esp
                    } else {
                        Content::Empty
                    }
                }
                "image" => {
                    only("source", &p.source, "tree")?;
                    only("owner", &p.owner, "tree")?;
                    let Some(img) = &p.image else {
                        return Err(cx.err(
                            &key("content"),
                            &p.content,
                            "content = \"image\" needs image = PATH",
                        ));
                    };
                    Content::Image(cx.host_path(img.get_ref(), &cx.expand(&key("image"), img)?))
                }
                "tree" => {
                    only("image", &p.image, "image")?;
                    let Some(src) = &p.source else {
                        return Err(cx.err(
                            &key("content"),
                            &p.content,
                            "content = \"tree\" needs source = PATH (a directory, a tar archive \
                             or an OCI image)",
                        ));
                    };
                    let owner = match &p.owner {
                        None => None,
                        Some(o) => {
                            Some(parse_owner(&cx.expand(&key("owner"), o)?).ok_or_else(|| {
                                cx.err(&key("owner"), o, "UID:GID, numbers (0:0)")
                            })?)
                        }
                    };
                    Content::Tree(TreeSource {
                        source: cx.host_path(src.get_ref(), &cx.expand(&key("source"), src)?),
                        owner,
                    })
                }
                _ => {
                    return Err(cx.err(&key("content"), &p.content, "esp, image, tree or empty"));
                }
            };
            if kind == PartitionType::BiosBoot && content != Content::Empty {
                return Err(cx.err(
                    &key("content"),
                    &p.content,
                    "a bios-boot partition holds GRUB's core image, which the build writes: \
                     content = \"empty\"",
                ));
            }
            if kind == PartitionType::BiosBoot && table == TableKind::Mbr {
                return Err(cx.err(
                    &key("type"),
                    &p.kind,
                    "an MBR disk keeps GRUB's core in the gap after the MBR: no bios-boot \
                     partition",
                ));
            }
            let root_kind = match architecture {
                Architecture::X86_64 => PartitionType::RootX86_64,
                Architecture::I386 => PartitionType::RootX86,
            };
            if matches!(kind, PartitionType::RootX86_64 | PartitionType::RootX86)
                && kind != root_kind
            {
                return Err(cx.err(
                    &key("type"),
                    &p.kind,
                    format!(
                        "an {} image's root partition is of type {}",
                        raw.image.architecture.get_ref(),
                        root_kind.name()
                    ),
                ));
            }
            let active = match &p.active {
                None => false,
                Some(a) if table == TableKind::Gpt => {
                    return Err(cx.err(
                        &key("active"),
                        a,
                        "the active flag is an MBR one: set disk.table = \"mbr\"",
                    ));
                }
                Some(a) => *a.get_ref(),
            };
            if content == Content::Esp && kind != PartitionType::Esp {
                return Err(cx.err(
                    &key("content"),
                    &p.content,
                    "content = \"esp\" needs type = \"esp\"",
                ));
            }
            partitions.push(Partition {
                kind,
                label,
                size,
                content,
                active,
            });
        }
        // An MBR disk's root partition is active unless the template chose another: some
        // BIOSes boot only disks with an active partition.
        if table == TableKind::Mbr
            && !partitions.iter().any(|p| p.active)
            && let Some(root) = partitions
                .iter_mut()
                .find(|p| matches!(p.kind, PartitionType::RootX86_64 | PartitionType::RootX86))
        {
            root.active = true;
        }
        let esp_count = partitions
            .iter()
            .filter(|p| p.content == Content::Esp)
            .count();

        let bios_boot = partitions
            .iter()
            .filter(|p| p.kind == PartitionType::BiosBoot)
            .count();
        let bootloader = match &raw.bootloader {
            None => None,
            Some(b) => {
                if let Some(k) = &b.kind {
                    if k.get_ref() != "systemd-boot" {
                        return Err(cx.err(
                            "bootloader.type",
                            k,
                            "systemd-boot, or no type: efi = ... installs systemd-boot, grub = \
                             ... installs GRUB",
                        ));
                    }
                    if b.efi.is_none() {
                        return Err(cx.err("bootloader.type", k, "systemd-boot needs efi = ..."));
                    }
                }
                let Some(first) = b.efi.as_ref().or(b.grub.as_ref()) else {
                    return Err(cx.err(
                        "bootloader.kernel",
                        &b.kernel,
                        "a bootloader needs efi = ... (systemd-boot, UEFI), grub = ... (GRUB \
                         i386-pc, legacy BIOS) or both",
                    ));
                };
                let mut from_keys = Vec::new();
                if b.grub.is_some() {
                    from_keys.push(BootMode::Legacy);
                }
                if b.efi.is_some() {
                    from_keys.push(BootMode::Uefi);
                }
                if boot_modes.is_empty() {
                    boot_modes = from_keys.clone();
                } else {
                    let mut declared = boot_modes.clone();
                    declared.sort_by_key(|m| *m == BootMode::Uefi);
                    if declared != from_keys {
                        let names = |v: &[BootMode]| {
                            v.iter()
                                .map(|m| match m {
                                    BootMode::Uefi => "uefi",
                                    BootMode::Legacy => "legacy",
                                })
                                .collect::<Vec<_>>()
                                .join(", ")
                        };
                        let at = raw.image.boot_modes.first().unwrap_or(first);
                        return Err(cx.err(
                            "image.boot-modes",
                            at,
                            format!(
                                "the bootloader installs [{}]: efi = ... gives uefi, grub = ... \
                                 gives legacy, and the declared [{}] must match",
                                names(&from_keys),
                                names(&declared)
                            ),
                        ));
                    }
                }
                if let Some(e) = &b.efi
                    && esp_count != 1
                {
                    return Err(cx.err(
                        "bootloader.efi",
                        e,
                        "UEFI boot needs exactly one partition with content = \"esp\"",
                    ));
                }
                if let Some(g) = &b.grub
                    && table == TableKind::Gpt
                    && bios_boot != 1
                {
                    return Err(cx.err(
                        "bootloader.grub",
                        g,
                        "legacy boot on a GPT disk needs exactly one partition of type = \
                         \"bios-boot\" (content = \"empty\", size = \"1M\") for GRUB's core",
                    ));
                }
                Some(Bootloader {
                    efi: match &b.efi {
                        Some(e) => Some(cx.file_ref("bootloader.efi", e)?),
                        None => None,
                    },
                    grub: match &b.grub {
                        Some(g) => Some(cx.file_ref("bootloader.grub", g)?),
                        None => None,
                    },
                    kernel: cx.file_ref("bootloader.kernel", &b.kernel)?,
                    initrd: match &b.initrd {
                        Some(i) => Some(cx.file_ref("bootloader.initrd", i)?),
                        None => None,
                    },
                    options: cx.one_line("bootloader.options", &b.options)?,
                    title: match &b.title {
                        Some(t) => cx.one_line("bootloader.title", t)?,
                        None => name.clone(),
                    },
                })
            }
        };
        if bios_boot > 0 && !boot_modes.contains(&BootMode::Legacy) {
            let at = raw
                .partition
                .iter()
                .find(|p| p.kind.get_ref() == "bios-boot")
                .map(|p| &p.kind);
            if let Some(at) = at {
                return Err(cx.err(
                    "partition.type",
                    at,
                    "a bios-boot partition is for legacy boot: add grub = ... to [bootloader] \
                     (and \"legacy\" to boot-modes), or remove the partition",
                ));
            }
        }
        let mut esp_files = Vec::new();
        for (i, f) in raw.esp_file.iter().enumerate() {
            let key = |k: &str| format!("esp-file[{}].{k}", i + 1);
            if esp_count != 1 {
                return Err(cx.err(
                    &key("target"),
                    &f.target,
                    "ESP files need exactly one esp partition",
                ));
            }
            esp_files.push((
                cx.file_ref(&key("source"), &f.source)?,
                cx.expand(&key("target"), &f.target)?,
            ));
        }
        let mut volumes = Vec::new();
        for (i, v) in raw.volume.iter().enumerate() {
            let key = |k: &str| format!("volume[{}].{k}", i + 1);
            let device = cx.expand(&key("device"), &v.device)?;
            crate::manifest::rules::extra_device(&device)
                .map_err(|e| cx.err(&key("device"), &v.device, e.to_string()))?;
            let mut volume = Volume::new(&device, Path::new(""));
            // TOML has typed the numbers and the boolean; the type is text, read as `--bdm`'s.
            if let Some(t) = &v.kind {
                volume
                    .set(Key::Type, t.get_ref())
                    .map_err(|_| cx.err(&key("type"), t, VolumeType::NAMES))?;
            }
            volume.source = cx.host_path(v.image.get_ref(), &cx.expand(&key("image"), &v.image)?);
            volume.volume_size = v.size.as_ref().map(|s| *s.get_ref());
            volume.iops = v.iops.as_ref().map(|s| *s.get_ref());
            if let Some(delete) = v.delete_on_vm_deletion {
                volume.delete_on_vm_deletion = delete;
            }
            volumes.push(volume);
        }
        let mut sanitize = Sanitize::ALL;
        if let Some(items) = &raw.sanitize {
            for (name, on) in items {
                let mut known = false;
                for (item, flag) in sanitize.items_mut() {
                    if item == name {
                        *flag = *on.get_ref();
                        known = true;
                    }
                }
                if !known {
                    let names = Sanitize::NAMES;
                    return Err(cx.err(
                        &format!("sanitize.{name}"),
                        on,
                        format!("not a sanitize item: {}", names.join(", ")),
                    ));
                }
            }
        }
        let trees = partitions
            .iter()
            .filter(|p| matches!(p.content, Content::Tree(_)))
            .count();
        let mut files = Vec::new();
        for (i, f) in raw.file.iter().enumerate() {
            let key = |k: &str| format!("file[{}].{k}", i + 1);
            if trees == 0 {
                return Err(cx.err(
                    &key("path"),
                    &f.path,
                    "[[file]] adds to a tree: no partition has content = \"tree\"",
                ));
            }
            let tree_path = |k: &str, v: &Spanned<String>| -> Result<TreePath> {
                let s = cx.expand(&key(k), v)?;
                if !s.starts_with('/') {
                    return Err(cx.err(&key(k), v, "an absolute path in the tree (/etc/...)"));
                }
                match TreePath::parse(s.as_bytes()) {
                    Ok(p) if !p.is_root() => Ok(p),
                    Ok(_) => Err(cx.err(&key(k), v, "not the root directory")),
                    Err(e) => Err(cx.err(&key(k), v, e.to_string())),
                }
            };
            let path = tree_path("path", &f.path)?;
            let content = match (&f.content, &f.source, &f.symlink) {
                (Some(c), None, None) => {
                    AddContent::Bytes(cx.expand(&key("content"), c)?.into_bytes())
                }
                (None, Some(s), None) => {
                    AddContent::Host(cx.host_path(s.get_ref(), &cx.expand(&key("source"), s)?))
                }
                (None, None, Some(l)) => {
                    AddContent::Symlink(cx.expand(&key("symlink"), l)?.into_bytes())
                }
                _ => {
                    return Err(cx.err(
                        &key("path"),
                        &f.path,
                        "give exactly one of content, source or symlink",
                    ));
                }
            };
            let mode = match &f.mode {
                None if matches!(content, AddContent::Symlink(_)) => 0o777,
                None => 0o644,
                Some(m) => {
                    if matches!(content, AddContent::Symlink(_)) {
                        return Err(cx.err(&key("mode"), m, "a symbolic link has no mode"));
                    }
                    u16::from_str_radix(m.get_ref(), 8)
                        .ok()
                        .filter(|&m| m <= 0o7777)
                        .ok_or_else(|| cx.err(&key("mode"), m, "octal permissions, 0644 or 4755"))?
                }
            };
            let (uid, gid) = match &f.owner {
                None => (0, 0),
                Some(o) => parse_owner(&cx.expand(&key("owner"), o)?)
                    .ok_or_else(|| cx.err(&key("owner"), o, "UID:GID, numbers (0:0)"))?,
            };
            let if_exists = match &f.if_exists {
                None => None,
                Some(c) => Some(tree_path("if-exists", c)?),
            };
            files.push(AddFile {
                path,
                content,
                mode,
                uid,
                gid,
                if_exists,
            });
        }
        Ok(Template {
            name,
            description,
            architecture,
            boot_modes,
            format,
            disk_size,
            table,
            partitions,
            bootloader,
            esp_files,
            volumes,
            sanitize,
            files,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[image]
name = "linux-uefi"
architecture = "x86_64"
boot-modes = ["uefi"]

[disk]
size = "2G"

[[partition]]
type = "esp"
label = "ESP"
size = "128M"
content = "esp"

[[partition]]
type = "root-x86-64"
label = "root"
content = "image"
image = "${rootfs}"

[bootloader]
type = "systemd-boot"
efi = "root:/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
kernel = "root:/boot/vmlinuz-*"
initrd = "root:/boot/initrd.img-*"
options = "root=PARTUUID=${partuuid:root} console=ttyS0"

[[volume]]
device = "/dev/sdb"
image = "data.img"
type = "gp2"
"#;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(text: &str, v: &[(&str, &str)]) -> Result<Template> {
        Template::parse(Path::new("t.toml"), text, &vars(v), Path::new("/tpl"))
    }

    #[test]
    fn a_good_template() {
        let t = parse(GOOD, &[("rootfs", "/img/root.ext4")]).unwrap();
        assert_eq!(t.disk_size, Some(2 << 30));
        assert_eq!(t.partitions.len(), 2);
        assert_eq!(t.partitions[0].size, PartSize::Fixed(128 << 20));
        assert_eq!(t.partitions[1].size, PartSize::Rest);
        assert_eq!(t.sanitize, Sanitize::ALL);
        assert_eq!(
            t.partitions[1].content,
            Content::Image("/img/root.ext4".into())
        );
        let t2 = parse(GOOD, &[("rootfs", "rel/root.ext4")]).unwrap();
        assert_eq!(
            t2.partitions[1].content,
            Content::Image("rel/root.ext4".into())
        );
        let b = t.bootloader.unwrap();
        assert_eq!(b.kernel, FileRef::Root("/boot/vmlinuz-*".into()));
        assert_eq!(b.options, "root=PARTUUID=${partuuid:root} console=ttyS0");
        assert_eq!(b.title, "linux-uefi");
        assert_eq!(t.volumes[0].source, PathBuf::from("/tpl/data.img"));
        assert_eq!(t.volumes[0].volume_type, VolumeType::Gp2);
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let e = parse(GOOD, &[]).unwrap_err().to_string();
        assert_eq!(
            e,
            "t.toml:20: partition[2].image = \"${rootfs}\": ${rootfs} is not set: give --set rootfs=..."
        );
        let bad = GOOD.replace("size = \"128M\"", "size = \"12Q\"");
        let e = parse(&bad, &[("rootfs", "r")]).unwrap_err().to_string();
        assert!(
            e.starts_with("t.toml:13: partition[1].size = \"12Q\""),
            "{e}"
        );
        let bad = GOOD.replace("type = \"esp\"", "type = \"efi\"");
        let e = parse(&bad, &[("rootfs", "r")]).unwrap_err().to_string();
        assert!(
            e.starts_with("t.toml:11: partition[1].type = \"efi\": one of esp"),
            "{e}"
        );
        let bad = GOOD.replace("boot-modes", "boot-mode");
        let e = parse(&bad, &[("rootfs", "r")]).unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains("boot-mode"), "{e}");
        let bad = GOOD.replace("kernel = \"root:", "kernel = \"");
        let e = parse(&bad, &[("rootfs", "r")]).unwrap_err().to_string();
        assert!(
            e.contains("bootloader.kernel") && e.contains("root: "),
            "{e}"
        );
        let bad = GOOD.replace("device = \"/dev/sdb\"", "device = \"/dev/sda\"");
        assert!(
            parse(&bad, &[("rootfs", "r")])
                .unwrap_err()
                .to_string()
                .contains("volume[1].device")
        );
        let bad = GOOD.replace("type = \"gp2\"", "type = \"ssd\"");
        assert_eq!(
            parse(&bad, &[("rootfs", "r")]).unwrap_err().to_string(),
            "t.toml:32: volume[1].type = \"ssd\": standard, gp2 or io1"
        );
    }

    const TREE: &str = r#"
[image]
name = "debian"
architecture = "x86_64"
boot-modes = ["uefi"]

[disk]

[[partition]]
type = "esp"
label = "ESP"
size = "128M"
content = "esp"

[[partition]]
type = "root-x86-64"
label = "root"
content = "tree"
source = "${tree}"
owner = "0:0"
size = "auto"
extra = "1G"

[sanitize]
logs = false

[[file]]
path = "/etc/cloud/cloud.cfg.d/90-outscale.cfg"
content = "datasource_list: [ Ec2 ]\n"
if-exists = "/usr/bin/cloud-init"

[[file]]
path = "/usr/local/bin/tool"
source = "files/tool"
mode = "4755"
owner = "1000:1000"

[[file]]
path = "/etc/systemd/system/multi-user.target.wants/x.service"
symlink = "/etc/systemd/system/x.service"
"#;

    #[test]
    fn a_tree_template() {
        let t = parse(TREE, &[("tree", "debian.tar.zst")]).unwrap();
        assert_eq!(t.disk_size, None);
        assert_eq!(t.partitions[1].size, PartSize::Auto(Extra::Bytes(1 << 30)));
        assert_eq!(
            t.partitions[1].content,
            Content::Tree(TreeSource {
                source: "debian.tar.zst".into(),
                owner: Some((0, 0)),
            })
        );
        let mut want = Sanitize::ALL;
        want.logs = false;
        assert_eq!(t.sanitize, want);
        assert_eq!(t.files.len(), 3);
        assert_eq!(
            t.files[0].if_exists,
            Some(TreePath::parse(b"/usr/bin/cloud-init").unwrap())
        );
        assert_eq!((t.files[0].mode, t.files[0].uid), (0o644, 0));
        assert_eq!(
            t.files[1].content,
            AddContent::Host("/tpl/files/tool".into())
        );
        assert_eq!(
            (t.files[1].mode, t.files[1].uid, t.files[1].gid),
            (0o4755, 1000, 1000)
        );
        assert_eq!(
            t.files[2].content,
            AddContent::Symlink(b"/etc/systemd/system/x.service".to_vec())
        );
        assert_eq!(t.files[2].mode, 0o777);
        let pct = TREE.replace("extra = \"1G\"", "extra = \"25%\"");
        let t = parse(&pct, &[("tree", "t")]).unwrap();
        assert_eq!(t.partitions[1].size, PartSize::Auto(Extra::Percent(25)));
        let none = TREE.replace("extra = \"1G\"\n", "");
        let t = parse(&none, &[("tree", "t")]).unwrap();
        assert_eq!(
            t.partitions[1].size,
            PartSize::Auto(Extra::Percent(DEFAULT_MARGIN_PERCENT))
        );
    }

    #[test]
    fn tree_template_errors() {
        let v = &[("tree", "t")];
        let cases = [
            (
                "size = \"auto\"\nextra = \"1G\"",
                "size = \"rest\"",
                "partition[2].size = \"root\": the rest of the disk needs a disk size",
            ),
            (
                "extra = \"1G\"",
                "extra = \"lots\"",
                "partition[2].extra = \"lots\": a percentage (20%) or a size (1G)",
            ),
            (
                "owner = \"0:0\"",
                "owner = \"root\"",
                "partition[2].owner = \"root\": UID:GID",
            ),
            (
                "logs = false",
                "log = false",
                "sanitize.log = \"false\": not a sanitize item: machine-id,",
            ),
            (
                "mode = \"4755\"",
                "mode = \"999\"",
                "file[2].mode = \"999\": octal permissions",
            ),
            (
                "path = \"/usr/local/bin/tool\"",
                "path = \"usr/local/bin/tool\"",
                "file[2].path = \"usr/local/bin/tool\": an absolute path",
            ),
            (
                "path = \"/usr/local/bin/tool\"",
                "path = \"/usr/../etc/shadow\"",
                "file[2].path = \"/usr/../etc/shadow\": /usr/../etc/shadow: `..` leads out of the tree",
            ),
            (
                "source = \"files/tool\"",
                "source = \"files/tool\"\ncontent = \"x\"",
                "file[2].path = \"/usr/local/bin/tool\": give exactly one of content, source or symlink",
            ),
            (
                "source = \"${tree}\"\n",
                "",
                "partition[2].content = \"tree\": content = \"tree\" needs source = PATH",
            ),
        ];
        for (from, to, want) in cases {
            let bad = TREE.replace(from, to);
            let e = parse(&bad, v).unwrap_err().to_string();
            assert!(e.contains(want), "{from} -> {to}: {e}");
        }
        let auto_image = GOOD.replace(
            "image = \"${rootfs}\"",
            "image = \"${rootfs}\"\nsize = \"auto\"",
        );
        let e = parse(&auto_image, &[("rootfs", "r")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("only content = \"tree\" can be sized \"auto\""),
            "{e}"
        );
        let file_no_tree = format!("{GOOD}\n[[file]]\npath = \"/x\"\ncontent = \"\"\n");
        let e = parse(&file_no_tree, &[("rootfs", "r")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no partition has content = \"tree\""), "{e}");
    }

    #[test]
    fn bootloader_lines_stay_one_line() {
        let bad = GOOD.replace("console=ttyS0\"", "console=ttyS0\\ninitrd /evil\"");
        let e = parse(&bad, &[("rootfs", "r")]).unwrap_err().to_string();
        assert!(
            e.contains("bootloader.options") && e.contains("one line"),
            "{e}"
        );
        let bad = GOOD.replace("[bootloader]\n", "[bootloader]\ntitle = \"${t}\"\n");
        let e = parse(&bad, &[("rootfs", "r"), ("t", "a\rb")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bootloader.title"), "{e}");
    }

    #[test]
    fn margins_and_owners() {
        assert_eq!(parse_margin("20%"), Some(Extra::Percent(20)));
        assert_eq!(parse_margin("512M"), Some(Extra::Bytes(512 << 20)));
        assert_eq!(parse_margin("%"), None);
        assert_eq!(parse_owner("0:0"), Some((0, 0)));
        assert_eq!(parse_owner("4294967295:1"), Some((u32::MAX, 1)));
        assert_eq!(parse_owner("-1:0"), None);
        assert_eq!(parse_owner("0"), None);
    }

    #[test]
    fn the_rest_only_last() {
        let bad = GOOD.replace("size = \"128M\"\n", "");
        let e = parse(&bad, &[("rootfs", "r")]).unwrap_err().to_string();
        assert!(e.contains("only the last partition"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("1T"), Some(1 << 40));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("99999999999999999999T"), None);
    }

    const HYBRID: &str = r#"
[image]
name = "hybrid"
architecture = "x86_64"
boot-modes = ["legacy", "uefi"]

[disk]
size = "2G"

[[partition]]
type = "bios-boot"
label = "bios"
size = "1M"
content = "empty"

[[partition]]
type = "esp"
label = "ESP"
size = "128M"
content = "esp"

[[partition]]
type = "root-x86-64"
label = "root"
content = "image"
image = "r.img"

[bootloader]
efi = "root:/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
grub = "host:/usr/lib/grub/i386-pc"
kernel = "root:/boot/vmlinuz-*"
options = "root=PARTUUID=${partuuid:root}"
"#;

    fn err(text: &str) -> String {
        parse(text, &[]).unwrap_err().to_string()
    }

    #[test]
    fn boot_loaders_give_the_boot_modes() {
        let t = parse(HYBRID, &[]).unwrap();
        assert_eq!(t.boot_modes, vec![BootMode::Legacy, BootMode::Uefi]);
        assert_eq!(t.table, TableKind::Gpt);
        let b = t.bootloader.unwrap();
        assert_eq!(b.grub, Some(FileRef::Host("/usr/lib/grub/i386-pc".into())));
        assert!(b.efi.is_some());
        // Left out, the boot modes come from the keys; uefi first is the same set.
        let t = parse(
            &HYBRID.replace("boot-modes = [\"legacy\", \"uefi\"]\n", ""),
            &[],
        )
        .unwrap();
        assert_eq!(t.boot_modes, vec![BootMode::Legacy, BootMode::Uefi]);
        let t = parse(
            &HYBRID.replace("[\"legacy\", \"uefi\"]", "[\"uefi\", \"legacy\"]"),
            &[],
        );
        assert!(t.is_ok());
    }

    #[test]
    fn boot_modes_that_contradict_the_disk_are_refused() {
        let e = err(&HYBRID.replace("[\"legacy\", \"uefi\"]", "[\"uefi\"]"));
        assert!(
            e.contains("image.boot-modes") && e.contains("grub = ... gives legacy"),
            "{e}"
        );
        // A BIOS boot partition with no GRUB to fill it.
        let no_grub = HYBRID
            .replace("grub = \"host:/usr/lib/grub/i386-pc\"\n", "")
            .replace("[\"legacy\", \"uefi\"]", "[\"uefi\"]");
        let e = err(&no_grub);
        assert!(
            e.contains("a bios-boot partition is for legacy boot"),
            "{e}"
        );
        // Legacy on GPT with no BIOS boot partition.
        let no_bios = HYBRID.replace(
            "type = \"bios-boot\"\nlabel = \"bios\"",
            "type = \"linux-generic\"\nlabel = \"bios\"",
        );
        let e = err(&no_bios);
        assert!(
            e.contains("bootloader.grub") && e.contains("bios-boot"),
            "{e}"
        );
        // The BIOS boot partition is the build's to fill.
        let e = err(&HYBRID.replace(
            "size = \"1M\"\ncontent = \"empty\"",
            "size = \"1M\"\ncontent = \"image\"\nimage = \"x\"",
        ));
        assert!(
            e.contains("content = \\\"empty\\\"") || e.contains("content = \"empty\""),
            "{e}"
        );
        // No loader key at all.
        let e = err(&HYBRID
            .replace("grub = \"host:/usr/lib/grub/i386-pc\"\n", "")
            .replace(
                "efi = \"root:/usr/lib/systemd/boot/efi/systemd-bootx64.efi\"\n",
                "",
            ));
        assert!(e.contains("a bootloader needs efi"), "{e}");
    }

    #[test]
    fn mbr_disks_are_checked() {
        let mbr = HYBRID
            .replace("size = \"2G\"", "size = \"2G\"\ntable = \"mbr\"")
            .replace(
                "[[partition]]\ntype = \"bios-boot\"\nlabel = \"bios\"\nsize = \"1M\"\ncontent = \"empty\"\n\n",
                "",
            );
        let t = parse(&mbr, &[]).unwrap();
        assert_eq!(t.table, TableKind::Mbr);
        // The root partition is active by default.
        assert_eq!(
            t.partitions.iter().map(|p| p.active).collect::<Vec<_>>(),
            vec![false, true]
        );
        let e = err(&mbr.replace("size = \"2G\"", "size = \"3T\""));
        assert!(e.contains("disk.size") && e.contains("2 TiB"), "{e}");
        let e = err(&HYBRID.replace("size = \"2G\"", "size = \"2G\"\ntable = \"mbr\""));
        assert!(e.contains("no bios-boot"), "{e}");
        let e = err(&mbr.replace("table = \"mbr\"", "table = \"dos\""));
        assert!(e.contains("gpt or mbr"), "{e}");
        let e = err(&HYBRID.replace("content = \"esp\"", "content = \"esp\"\nactive = true"));
        assert!(e.contains("active") && e.contains("MBR"), "{e}");
    }

    #[test]
    fn the_root_partition_type_follows_the_architecture() {
        let e = err(&HYBRID.replace("architecture = \"x86_64\"", "architecture = \"i386\""));
        assert!(e.ends_with("root partition is of type root-x86"), "{e}");
        assert!(e.contains("partition[3].type"), "{e}");
    }
}
