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
use crate::layout::ext4::{Ext4Image, Ext4Size};
use crate::layout::fat::SharedStorage;
use crate::layout::fat::{self, FatImage, FileSource};
use crate::layout::gpt::{self, PartitionRequest, Table};
use crate::layout::template::{Content, FileRef, PartSize, Template};
use crate::manifest::{AddedFile, BuildRecord, SanitizedPath, TreeRecord};
use crate::manifest::{Architecture, rules};
use crate::ondisk::gpt::PartitionType;
use crate::progress::Progress;
use crate::sink::OutputFormat;
use crate::staging::Target;
use crate::tree::{self, Tree, add, resolve, sanitize};
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

/// A partition's content, opened or read.
enum Input {
    /// An image streamed in.
    Image(Arc<dyn Disk>),
    /// A tree to lay out.
    Tree(Box<Tree>),
    /// Made by the build (the ESP) or empty.
    Made,
}

/// Builds the bundle described by the template.
pub fn build(
    req: &BuildRequest,
    progress: &Progress,
    cancel: Option<&AtomicBool>,
) -> Result<register::Report> {
    let tpl = Template::load(&req.template, &req.vars)?;
    let text = std::fs::read(&req.template).map_err(io_err(&req.template, "cannot read"))?;

    // The work directory: files the ESP takes from an image, trees' spools; removed at the end.
    let work = Target::new(&req.output)?.scratch("work")?;

    // Open every image and read every tree first: errors before any work, and what they hold
    // feeds the seed.
    let files_to = files_partition(&tpl);
    let mut record = BuildRecord::default();
    let mut warnings = Vec::new();
    let mut inputs: Vec<Input> = Vec::new();
    for (i, p) in tpl.partitions.iter().enumerate() {
        inputs.push(match &p.content {
            Content::Image(path) => Input::Image(format::open_path(path, &req.open)?),
            Content::Tree(src) => {
                let spool = work.path().join(format!("spool-{}", i + 1));
                let mut tree = read_tree(&src.source, &tpl, &spool)?;
                let invalid_tree = |e: &dyn std::fmt::Display| invalid(&src.source, e.to_string());
                if let Some((uid, gid)) = src.owner {
                    for (_, e) in tree.iter_mut() {
                        e.meta.uid = uid;
                        e.meta.gid = gid;
                    }
                }
                tree.clamp_times(req.epoch);
                // Sanitize first: a file the template adds on purpose (an authorized_keys, a
                // log) is not then removed.
                for c in sanitize::sanitize(&mut tree, &tpl.sanitize) {
                    if c.item == "authorized-keys" {
                        warnings.push(format!(
                            "{}: removed {} from the tree (sanitize.authorized-keys = false keeps it)",
                            src.source.display(),
                            c.path
                        ));
                    }
                    record.sanitized.push(SanitizedPath {
                        item: c.item.to_owned(),
                        path: c.path,
                        action: match c.action {
                            sanitize::Action::Removed => "removed",
                            sanitize::Action::Emptied => "emptied",
                        }
                        .to_owned(),
                        bytes: c.bytes,
                    });
                }
                if files_to == Some(i) {
                    let added = add::add_files(&mut tree, &tpl.files, req.epoch)
                        .map_err(|e| invalid(&req.template, format!("[[file]]: {e}")))?;
                    record.files.extend(added.into_iter().map(|a| AddedFile {
                        path: a.path,
                        replaced: a.replaced,
                        bytes: a.bytes,
                    }));
                }
                tree.check_links().map_err(|e| invalid_tree(&e))?;
                stop_if_cancelled(cancel)?;
                Input::Tree(Box::new(tree))
            }
            Content::Esp | Content::Empty => Input::Made,
        });
    }
    stop_if_cancelled(cancel)?;
    let seed = seed(req, &tpl, &text, &inputs);

    // Trees sized to their content are laid out first: the partition table needs their sizes.
    let mut volumes: Vec<Option<Arc<dyn Disk>>> = (0..inputs.len()).map(|_| None).collect();
    for (i, (p, input)) in tpl.partitions.iter().zip(&inputs).enumerate() {
        if let (PartSize::Auto(margin), Input::Tree(tree)) = (p.size, input) {
            volumes[i] = Some(layout_tree(
                tree,
                Ext4Size::Auto { extra: margin },
                p,
                i,
                &seed,
                req,
            )?);
        }
    }
    let sizes: Vec<Option<u64>> = tpl
        .partitions
        .iter()
        .zip(&volumes)
        .map(|(p, v)| match (p.size, v) {
            (PartSize::Fixed(n), _) => Some(n),
            (PartSize::Auto(_), Some(v)) => Some(v.size()),
            _ => None,
        })
        .collect();
    let disk_size = match tpl.disk_size {
        Some(n) => n,
        None => {
            let known: Option<Vec<u64>> = sizes.iter().copied().collect();
            known
                .as_deref()
                .and_then(gpt::fit_disk_size)
                .ok_or_else(|| {
                    invalid(
                        &req.template,
                        "no disk.size, and the partitions do not add up to one".into(),
                    )
                })?
        }
    };
    let requests: Vec<PartitionRequest> = tpl
        .partitions
        .iter()
        .zip(&sizes)
        .map(|(p, &size)| PartitionRequest {
            kind: p.kind,
            label: p.label.clone(),
            size,
            attributes: 0,
        })
        .collect();
    let table = gpt::plan(disk_size, &requests, &seed)
        .map_err(|e| invalid(&req.template, e.to_string()))?;
    for (i, ((p, part), input)) in tpl
        .partitions
        .iter()
        .zip(&table.partitions)
        .zip(&inputs)
        .enumerate()
    {
        match input {
            Input::Image(img) if img.size() > part.len() => {
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
            Input::Tree(tree) => {
                if volumes[i].is_none() {
                    volumes[i] = Some(layout_tree(
                        tree,
                        Ext4Size::Fixed(part.len()),
                        p,
                        i,
                        &seed,
                        req,
                    )?);
                }
                let size = volumes[i].as_ref().map_or(0, |v| v.size());
                record.trees.push(TreeRecord {
                    partition: p.label.clone(),
                    file_system: "ext4".into(),
                    size,
                    entries: tree.len() as u64,
                    content_bytes: tree
                        .iter()
                        .map(|(_, e)| match &e.kind {
                            tree::Kind::File(d) => d.len(),
                            _ => 0,
                        })
                        .fold(0, u64::saturating_add),
                });
            }
            _ => {}
        }
    }

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
    let mut root = RootFs::new(&tpl, &inputs, req);
    for ((p, part), (input, volume)) in tpl
        .partitions
        .iter()
        .zip(&table.partitions)
        .zip(inputs.iter().zip(volumes))
    {
        let content = match (&p.content, input) {
            (Content::Image(_), Input::Image(img)) => Some(img.clone()),
            (Content::Tree(_), _) => volume,
            (Content::Esp, _) => Some(build_esp(
                &table,
                part.offset(),
                part.len(),
                work.path(),
                req,
                &seed,
                &mut root,
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
    let disk = Composite::new(&req.template, disk_size, regions)?;
    stop_if_cancelled(cancel)?;

    let mut root_volume = Volume::new(rules::ROOT_DEVICE, &req.template);
    root_volume.volume_size = None;
    let has_trees = !record.trees.is_empty();
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
        root: root_volume,
        extra: tpl.volumes.clone(),
        open: req.open.clone(),
        creation_epoch: req.epoch,
        sync: req.sync,
        build: has_trees.then_some(record),
    };
    let mut report =
        register::register_with_root(&request, Some(Arc::new(disk)), progress, cancel)?;
    report.warnings.extend(warnings);
    Ok(report)
}

/// Ctrl-C between the steps before the copy (reading a tree of gigabytes, laying it out): the
/// work directory goes with the error, as when the copy is interrupted.
fn stop_if_cancelled(cancel: Option<&AtomicBool>) -> Result<()> {
    if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
        return Err(crate::copy::Error::Interrupted.into());
    }
    Ok(())
}

/// The partition `[[file]]` adds to: the first tree of a root type, else the first tree.
fn files_partition(tpl: &Template) -> Option<usize> {
    let is_tree = |p: &&crate::layout::template::Partition| matches!(p.content, Content::Tree(_));
    let trees: Vec<usize> = tpl
        .partitions
        .iter()
        .enumerate()
        .filter(|(_, p)| is_tree(p))
        .map(|(i, _)| i)
        .collect();
    trees
        .iter()
        .copied()
        .find(|&i| {
            matches!(
                tpl.partitions[i].kind,
                PartitionType::RootX86_64 | PartitionType::RootX86
            )
        })
        .or(trees.first().copied())
}

/// The seed every identifier derives from: the template, `SOURCE_DATE_EPOCH`, the variables,
/// and what the inputs hold. A variable that names a tree's source stands for that tree, whose
/// fingerprint (every path, type, owner, mode, time, xattr and size, in order) the seed takes
/// instead: the same tree as a directory, a tarball or an OCI image gives the same disk.
fn seed(req: &BuildRequest, tpl: &Template, text: &[u8], inputs: &[Input]) -> [u8; 32] {
    let tree_sources: Vec<&Path> = tpl
        .partitions
        .iter()
        .filter_map(|p| match &p.content {
            Content::Tree(t) => Some(t.source.as_path()),
            _ => None,
        })
        .collect();
    let mut seed = Sha256::new();
    seed.update(b"mkomi build v1\0");
    seed.update(text);
    for (k, v) in &req.vars {
        if tree_sources.contains(&Path::new(v)) {
            continue;
        }
        seed.update(format!("\0{k}={v}").as_bytes());
    }
    seed.update(req.epoch.to_le_bytes());
    for input in inputs {
        match input {
            Input::Image(img) => seed.update(img.size().to_le_bytes()),
            Input::Tree(tree) => seed.update(tree.fingerprint()),
            Input::Made => {}
        }
    }
    seed.finalize().into()
}

/// Reads a tree source of any kind. Tar data is spooled into `spool`, inside the build's work
/// directory.
fn read_tree(source: &Path, tpl: &Template, spool: &Path) -> Result<Tree> {
    let kind = tree::source::detect(source)?;
    std::fs::create_dir_all(spool).map_err(io_err(spool, "cannot create"))?;
    let platform = tree::source::Platform::linux(match tpl.architecture {
        Architecture::X86_64 => "amd64",
        Architecture::I386 => "386",
    });
    let opts = tree::source::ReadOptions {
        platform,
        spool_dir: spool.to_owned(),
    };
    Ok(tree::source::read_tree(source, kind, &opts)?)
}

/// Lays out a tree as the ext4 file system of partition `p` (the `index`-th, counted from 0).
/// Its UUID and directory hash seed derive from the build's seed and the partition's place.
fn layout_tree(
    tree: &Tree,
    size: Ext4Size,
    p: &crate::layout::template::Partition,
    index: usize,
    seed: &[u8; 32],
    req: &BuildRequest,
) -> Result<Arc<dyn Disk>> {
    let derive = |what: &str| -> [u8; 16] {
        let d =
            Sha256::digest([&seed[..], what.as_bytes(), &(index as u64).to_le_bytes()].concat());
        let mut id = [0u8; 16];
        id.copy_from_slice(&d[..16]);
        // A version 4 (random) UUID, RFC 4122 §4.4: what mke2fs makes.
        id[6] = (id[6] & 0x0F) | 0x40;
        id[8] = (id[8] & 0x3F) | 0x80;
        id
    };
    // s_volume_name holds 16 bytes; longer GPT labels are cut at a character boundary.
    let mut label = p.label.clone();
    while label.len() > 16 {
        label.pop();
    }
    let name = req.template.with_extension(format!("{}.ext4", p.label));
    let volume = Ext4Image {
        tree,
        size,
        label,
        uuid: derive("ext4 uuid"),
        hash_seed: derive("ext4 hash seed"),
        epoch: req.epoch,
    }
    .layout(&name)
    .map_err(|e| invalid(&req.template, format!("partition '{}': {e}", p.label)))?;
    Ok(Arc::new(volume))
}

/// Where `root:` paths are looked up: the root partition's tree, or its image, opened once.
struct RootFs<'a> {
    tpl: &'a Template,
    inputs: &'a [Input],
    req: &'a BuildRequest,
    opened: Option<Ext4>,
}

impl<'a> RootFs<'a> {
    fn new(tpl: &'a Template, inputs: &'a [Input], req: &'a BuildRequest) -> Self {
        RootFs {
            tpl,
            inputs,
            req,
            opened: None,
        }
    }

    /// The root partition: the first of a root type with an image or a tree.
    fn partition(&self) -> Result<usize> {
        self.tpl
            .partitions
            .iter()
            .position(|p| {
                matches!(p.kind, PartitionType::RootX86_64 | PartitionType::RootX86)
                    && matches!(p.content, Content::Image(_) | Content::Tree(_))
            })
            .ok_or_else(|| {
                invalid(
                    &self.req.template,
                    "root: paths need a root-x86-64 or root-x86 partition with content = \"image\" \
                     or \"tree\""
                        .into(),
                )
            })
    }

    /// Fetches a file for the ESP: from the tree, or copied out of the root image into the
    /// work directory; a host file is only named.
    fn fetch(&mut self, r: &FileRef, work: &Path, n: usize) -> Result<FileSource> {
        let pattern = match r {
            FileRef::Host(p) => return Ok(FileSource::Host(p.clone())),
            FileRef::Root(pattern) => pattern,
        };
        let i = self.partition()?;
        let (input, content) = match (self.inputs.get(i), self.tpl.partitions.get(i)) {
            (Some(input), Some(p)) => (input, &p.content),
            _ => return Err(invalid(&self.req.template, "no root partition".into())),
        };
        if let (Input::Tree(tree), Content::Tree(src)) = (input, content) {
            let data =
                resolve::resolve(tree, pattern).map_err(|e| invalid(&src.source, e.to_string()))?;
            return Ok(match data {
                tree::Data::Bytes(b) => FileSource::Bytes(b.to_vec()),
                tree::Data::Storage(s) => FileSource::Storage(SharedStorage(s)),
            });
        }
        let (Input::Image(src), Content::Image(path)) = (input, content) else {
            return Err(invalid(&self.req.template, "no root image".into()));
        };
        if self.opened.is_none() {
            let size = src.size();
            self.opened = Some(
                Ext4::open(src.clone(), 0, size, path).map_err(|e| invalid(path, e.to_string()))?,
            );
        }
        let Some(fs) = self.opened.as_ref() else {
            return Err(invalid(&self.req.template, "no root file system".into()));
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

/// Lays out the EFI system partition's FAT32 volume, at byte `offset` of the disk and `size`
/// bytes long: the bootloader, its configuration, the kernel and initrd, and the template's
/// extra files. The volume is a disk whose files are read when it is copied.
fn build_esp(
    table: &Table,
    offset: u64,
    size: u64,
    work: &Path,
    req: &BuildRequest,
    seed: &[u8; 32],
    root: &mut RootFs,
) -> Result<Arc<dyn Disk>> {
    let tpl = root.tpl;
    let mut files: Vec<(String, FileSource)> = Vec::new();
    if let Some(b) = &tpl.bootloader {
        // Removable-media paths (UEFI 2.10, 3.5.1.1): firmware boots them without NVRAM entries.
        let loader_path = match tpl.architecture {
            Architecture::X86_64 => "EFI/BOOT/BOOTX64.EFI",
            Architecture::I386 => "EFI/BOOT/BOOTIA32.EFI",
        };
        files.push((loader_path.into(), root.fetch(&b.efi, work, 0)?));
        files.push(("vmlinuz".into(), root.fetch(&b.kernel, work, 1)?));
        let mut entry = format!("title {}\nlinux /vmlinuz\n", b.title);
        if let Some(i) = &b.initrd {
            files.push(("initrd.img".into(), root.fetch(i, work, 2)?));
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
        files.push((target.clone(), root.fetch(src, work, 10 + n)?));
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
