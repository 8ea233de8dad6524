//! `build`: a template in, a bootable disk laid out and registered as a bundle.
//!
//! The disk is assembled as a [`Composite`] source — GPT, an EFI system partition laid out in
//! memory ([`FatImage::layout`]: no image file), file system images placed in their partitions —
//! and handed to the same `register` path as any image: same manifest, checksums and atomic
//! output. Nothing is mounted and nothing needs root. Every identifier (disk and partition GUIDs, the FAT serial) derives
//! from a seed over the template, the variables, the inputs' sizes and `SOURCE_DATE_EPOCH`, and
//! every timestamp from the latter, so the same inputs give the same bytes.

use super::register::{self, Request, Volume};
use super::{Error, Result, io_err};
use crate::format::{self, Disk};
use crate::fs::ext4::Ext4;
use crate::layout::composite::{Composite, Content as Region_, Region};
use crate::layout::fat::{self, FatImage, FileSource};
use crate::layout::gpt::{self, PartitionRequest, Table};
use crate::layout::template::{Content, FileRef, Template};
use crate::manifest::{Architecture, rules};
use crate::ondisk::gpt::PartitionType;
use crate::progress::Progress;
use crate::sink::OutputFormat;
use crate::staging::Target;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    /// The template file.
    pub template: PathBuf,
    /// `--set` variables.
    pub vars: BTreeMap<String, String>,
    /// The bundle directory to create.
    pub output: PathBuf,
    /// Replace `output` if it exists.
    pub force: bool,
    /// qcow2 cluster size, log2.
    pub cluster_bits: u32,
    /// How images are opened (backing-file policy).
    pub open: format::OpenOptions,
    /// `SOURCE_DATE_EPOCH`: the manifest's date and every timestamp on the ESP.
    pub epoch: i64,
    /// fsync before the final rename.
    pub sync: bool,
    /// Checks of the template's fields against the disk laid out.
    pub checks: super::checks::Checks,
    /// The security audit of every disk.
    pub audit: crate::audit::image::Policy,
}

fn invalid(path: &Path, reason: String) -> Error {
    Error::Invalid {
        path: path.to_owned(),
        reason,
    }
}

/// Builds the bundle described by the template.
pub fn build(
    req: &BuildRequest,
    progress: &Progress,
    cancel: Option<&AtomicBool>,
) -> Result<register::Report> {
    let tpl = Template::load(&req.template, &req.vars)?;
    let text = std::fs::read(&req.template).map_err(io_err(&req.template, "cannot read"))?;

    // Open every image first: errors before any work, and their sizes feed the seed.
    let mut images: Vec<Option<Arc<dyn Disk>>> = Vec::new();
    for p in &tpl.partitions {
        images.push(match &p.content {
            Content::Image(path) => Some(format::open_path(path, &req.open)?),
            _ => None,
        });
    }
    let mut seed = Sha256::new();
    seed.update(b"mkomi build v1\0");
    seed.update(&text);
    for (k, v) in &req.vars {
        seed.update(format!("\0{k}={v}").as_bytes());
    }
    seed.update(req.epoch.to_le_bytes());
    for img in images.iter().flatten() {
        seed.update(img.size().to_le_bytes());
    }
    let seed: [u8; 32] = seed.finalize().into();

    let requests: Vec<PartitionRequest> = tpl
        .partitions
        .iter()
        .map(|p| PartitionRequest {
            kind: p.kind,
            label: p.label.clone(),
            size: p.size,
            attributes: 0,
        })
        .collect();
    let table = gpt::plan(tpl.disk_size, &requests, &seed)
        .map_err(|e| invalid(&req.template, e.to_string()))?;
    for ((p, part), img) in tpl.partitions.iter().zip(&table.partitions).zip(&images) {
        if let Some(img) = img
            && img.size() > part.len()
        {
            return Err(invalid(
                img.path(),
                format!(
                    "{} bytes do not fit partition '{}' ({} bytes)",
                    img.size(),
                    p.label,
                    part.len()
                ),
            ));
        }
    }

    // The files the ESP takes from the root file system, removed at the end.
    let work = Target::new(&req.output)?.scratch("work")?;

    let mut regions = vec![Region {
        offset: 0,
        len: gpt::SECTOR_SIZE * table.first_usable_lba(),
        content: Region_::Bytes(table.primary()),
    }];
    let (backup_at, backup) = table.backup();
    regions.push(Region {
        offset: backup_at,
        len: table.disk_size - backup_at,
        content: Region_::Bytes(backup),
    });
    for ((p, part), img) in tpl.partitions.iter().zip(&table.partitions).zip(images) {
        let content = match (&p.content, img) {
            (Content::Image(_), Some(img)) => Some(img),
            (Content::Esp, _) => Some(build_esp(
                &tpl,
                &table,
                part.offset(),
                part.len(),
                work.path(),
                req,
                &seed,
            )?),
            _ => None,
        };
        if let Some(content) = content {
            regions.push(Region {
                offset: part.offset(),
                len: part.len(),
                content: Region_::Source(content),
            });
        }
    }
    let disk = Composite::new(&req.template, tpl.disk_size, regions)?;

    let mut root = Volume::new(rules::ROOT_DEVICE, &req.template);
    root.volume_size = None;
    let request = Request {
        output: req.output.clone(),
        force: req.force,
        format: OutputFormat::new(tpl.format, req.cluster_bits),
        name: Some(tpl.name.clone()),
        description: tpl.description.clone(),
        architecture: Some(tpl.architecture),
        boot_modes: tpl.boot_modes.clone(),
        checks: req.checks,
        audit: req.audit,
        root,
        extra: tpl.volumes.clone(),
        open: req.open.clone(),
        creation_epoch: req.epoch,
        sync: req.sync,
    };
    register::register_with_root(&request, Some(Arc::new(disk)), progress, cancel)
}

/// The partition whose file system `root:` paths refer to: the one of a root type with an
/// image.
fn root_fs(tpl: &Template, table: &Table, req: &BuildRequest) -> Result<Ext4> {
    let found = tpl.partitions.iter().zip(&table.partitions).find(|(p, _)| {
        matches!(p.kind, PartitionType::RootX86_64 | PartitionType::RootX86)
            && matches!(p.content, Content::Image(_))
    });
    let Some((p, _)) = found else {
        return Err(invalid(
            &req.template,
            "root: paths need a root-x86-64 or root-x86 partition with content = \"image\"".into(),
        ));
    };
    let Content::Image(path) = &p.content else {
        return Err(invalid(&req.template, "no root image".into()));
    };
    let src = format::open_path(path, &req.open)?;
    let size = src.size();
    Ext4::open(src, 0, size, path).map_err(|e| invalid(path, e.to_string()))
}

/// Fetches a file for the ESP: a `root:` file is copied out of the root file system into the
/// work directory, once; a host file is only named.
fn fetch(
    r: &FileRef,
    root: &mut Option<Ext4>,
    tpl: &Template,
    table: &Table,
    req: &BuildRequest,
    work: &Path,
    n: usize,
) -> Result<FileSource> {
    match r {
        FileRef::Host(p) => Ok(FileSource::Host(p.clone())),
        FileRef::Root(pattern) => {
            if root.is_none() {
                *root = Some(root_fs(tpl, table, req)?);
            }
            let Some(fs) = root.as_ref() else {
                return Err(invalid(&req.template, "no root file system".into()));
            };
            let found = fs
                .resolve(pattern)
                .map_err(|e| invalid(fs.name(), e.to_string()))?;
            let dest = work.join(format!("file-{n}"));
            let mut out = std::fs::File::create(&dest).map_err(io_err(&dest, "cannot create"))?;
            fs.copy_to(&found, &mut out)
                .map_err(|e| invalid(fs.name(), e.to_string()))?;
            Ok(FileSource::Host(dest))
        }
    }
}

/// Lays out the EFI system partition's FAT32 volume, at byte `offset` of the disk and `size`
/// bytes long: the bootloader, its configuration, the kernel and initrd, and the template's
/// extra files. The volume is a disk whose files are read when it is copied.
fn build_esp(
    tpl: &Template,
    table: &Table,
    offset: u64,
    size: u64,
    work: &Path,
    req: &BuildRequest,
    seed: &[u8; 32],
) -> Result<Arc<dyn Disk>> {
    let mut root: Option<Ext4> = None;
    let mut files: Vec<(String, FileSource)> = Vec::new();
    if let Some(b) = &tpl.bootloader {
        // Removable-media paths (UEFI 2.10, 3.5.1.1): firmware boots them without NVRAM entries.
        let loader_path = match tpl.architecture {
            Architecture::X86_64 => "EFI/BOOT/BOOTX64.EFI",
            Architecture::I386 => "EFI/BOOT/BOOTIA32.EFI",
        };
        files.push((
            loader_path.into(),
            fetch(&b.efi, &mut root, tpl, table, req, work, 0)?,
        ));
        files.push((
            "vmlinuz".into(),
            fetch(&b.kernel, &mut root, tpl, table, req, work, 1)?,
        ));
        let mut entry = format!("title {}\nlinux /vmlinuz\n", b.title);
        if let Some(i) = &b.initrd {
            files.push((
                "initrd.img".into(),
                fetch(i, &mut root, tpl, table, req, work, 2)?,
            ));
            entry.push_str("initrd /initrd.img\n");
        }
        entry.push_str(&format!(
            "options {}\n",
            partuuids(&b.options, tpl, table, &req.template)?
        ));
        files.push((
            "loader/loader.conf".into(),
            FileSource::Bytes(b"default mkomi.conf\ntimeout 0\n".to_vec()),
        ));
        files.push((
            "loader/entries/mkomi.conf".into(),
            FileSource::Bytes(entry.into_bytes()),
        ));
    }
    for (n, (src, target)) in tpl.esp_files.iter().enumerate() {
        files.push((
            target.clone(),
            fetch(src, &mut root, tpl, table, req, work, 10 + n)?,
        ));
    }
    let id = Sha256::digest([&seed[..], b"fat volume id"].concat());
    let volume_id = u32::from_le_bytes([id[0], id[1], id[2], id[3]]);
    let name = req.template.with_extension("esp");
    let hidden_sectors = u32::try_from(offset / gpt::SECTOR_SIZE).map_err(|_| {
        invalid(
            &req.template,
            format!("the ESP starts at byte {offset}, past what FAT32 can record"),
        )
    })?;
    let volume = FatImage {
        size,
        label: "ESP".into(),
        volume_id,
        hidden_sectors,
        epoch: req.epoch,
        files,
    }
    .layout(&name)
    .map_err(|e: fat::Error| invalid(&req.template, format!("the ESP: {e}")))?;
    Ok(Arc::new(volume))
}

/// Replaces `${partuuid:LABEL}` with the unique GUID of the partition labelled LABEL.
fn partuuids(options: &str, tpl: &Template, table: &Table, template: &Path) -> Result<String> {
    let mut out = String::new();
    let mut rest = options;
    while let Some(i) = rest.find("${partuuid:") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "${partuuid:".len()..];
        let Some(j) = after.find('}') else {
            return Err(invalid(
                template,
                format!("unclosed ${{partuuid: in {options:?}"),
            ));
        };
        let label = &after[..j];
        let part = tpl
            .partitions
            .iter()
            .zip(&table.partitions)
            .find(|(p, _)| p.label == label)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                invalid(
                    template,
                    format!("${{partuuid:{label}}}: no partition is labelled {label:?}"),
                )
            })?;
        out.push_str(&part.unique_guid.to_string());
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
