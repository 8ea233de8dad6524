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
use crate::layout::gpt::{self, PartitionRequest};
use crate::layout::template::{Content, FileRef, PartSize, TableKind, Template};
use crate::layout::{grub, mbr};
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
            let fit = match tpl.table {
                TableKind::Gpt => gpt::fit_disk_size,
                TableKind::Mbr => mbr::fit_disk_size,
            };
            known.as_deref().and_then(fit).ok_or_else(|| {
                invalid(
                    &req.template,
                    "no disk.size, and the partitions do not add up to one".into(),
                )
            })?
        }
    };
    let table =
        Planned::plan(&tpl, disk_size, &sizes, &seed).map_err(|e| invalid(&req.template, e))?;
    let spans = table.spans();
    for (i, ((p, &(_, part_len)), input)) in
        tpl.partitions.iter().zip(&spans).zip(&inputs).enumerate()
    {
        match input {
            Input::Image(img) if img.size() > part_len => {
                return Err(invalid(
                    img.path(),
                    format!(
                        "{} bytes do not fit partition '{}' ({} bytes)",
                        img.size(),
                        p.label,
                        part_len
                    ),
                ));
            }
            Input::Tree(tree) => {
                if volumes[i].is_none() {
                    volumes[i] = Some(layout_tree(
                        tree,
                        Ext4Size::Fixed(part_len),
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

    let mut root = RootFs::new(&tpl, &inputs, req);
    let bios = match tpl.bootloader.as_ref().and_then(|b| b.grub.as_ref()) {
        Some(dir) => {
            let made = build_grub(dir, &table, &volumes, work.path(), req, &mut root);
            // Ctrl-C reaches grub-mkimage too, which then fails: the interruption is the error.
            stop_if_cancelled(cancel)?;
            Some(made?)
        }
        None => None,
    };
    let mut regions = table.regions(bios.as_ref());
    for ((p, &(offset, len)), (input, volume)) in tpl
        .partitions
        .iter()
        .zip(&spans)
        .zip(inputs.iter().zip(volumes))
    {
        let content = match (&p.content, input) {
            (Content::Image(_), Input::Image(img)) => Some(img.clone()),
            (Content::Tree(_), _) => volume,
            (Content::Esp, _) => Some(build_esp(
                &table,
                offset,
                len,
                work.path(),
                req,
                &seed,
                &mut root,
            )?),
            _ => None,
        };
        if let Some(content) = content {
            regions.push(Region {
                offset,
                len,
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
        // What the disk boots in is what the template declares: no more, no fewer.
        checks: super::checks::Checks {
            exact_modes: true,
            template: true,
            ..req.checks
        },
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
    let derive = |what: &str| derive_id(seed, what, index);
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

    /// The path in the root file system of the one file `r` names (a `root:` pattern), for a
    /// boot loader that reads it from there; `key` names the template's key in messages.
    fn path_of(&mut self, r: &FileRef, key: &str) -> Result<String> {
        let FileRef::Root(pattern) = r else {
            return Err(invalid(
                &self.req.template,
                format!(
                    "{key}: legacy boot reads the kernel and initrd from the root file system: \
                     give a root: path"
                ),
            ));
        };
        let i = self.partition()?;
        match (
            self.inputs.get(i),
            self.tpl.partitions.get(i).map(|p| &p.content),
        ) {
            (Some(Input::Tree(tree)), Some(Content::Tree(src))) => resolve::find(tree, pattern)
                .map(|(path, _)| path)
                .map_err(|e| invalid(&src.source, e.to_string())),
            _ => {
                let fs = self.image_fs()?;
                fs.resolve(pattern)
                    .map_err(|e| invalid(fs.name(), e.to_string()))
            }
        }
    }

    /// The root image's file system, opened once.
    fn image_fs(&mut self) -> Result<&Ext4> {
        let i = self.partition()?;
        let (Some(Input::Image(src)), Some(Content::Image(path))) = (
            self.inputs.get(i),
            self.tpl.partitions.get(i).map(|p| &p.content),
        ) else {
            return Err(invalid(&self.req.template, "no root image".into()));
        };
        if self.opened.is_none() {
            let size = src.size();
            self.opened = Some(
                Ext4::open(src.clone(), 0, size, path).map_err(|e| invalid(path, e.to_string()))?,
            );
        }
        self.opened
            .as_ref()
            .ok_or_else(|| invalid(&self.req.template, "no root file system".into()))
    }

    /// Copies `name` from GRUB's directory `dir` (host or `root:`) into `into`; a missing file
    /// is an error saying what to install.
    fn fetch_grub_file(&mut self, dir: &FileRef, name: &str, into: &Path) -> Result<PathBuf> {
        // A second guard after grub::module_closure's: the name is one file in `into`.
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(invalid(
                &self.req.template,
                format!("bootloader.grub: {name:?} is not a file of GRUB's directory"),
            ));
        }
        let dest = into.join(name);
        let what = grub_ref_text(dir, name);
        let missing = |what: String| {
            invalid(
                &self.req.template,
                format!("bootloader.grub: legacy boot needs GRUB for i386-pc, and {what}"),
            )
        };
        // Sizes are checked before anything is copied: the files may come from a hostile root
        // file system (a boot.img of gigabytes, a sparse module of a terabyte).
        let too_large = |len: u64| -> Result<()> {
            if len > grub::MAX_FILE {
                return Err(Error::Invalid {
                    path: what.clone().into(),
                    reason: format!(
                        "{len} bytes, more than the {} a file of GRUB's i386-pc directory can be",
                        grub::MAX_FILE
                    ),
                });
            }
            Ok(())
        };
        match dir {
            FileRef::Host(d) => {
                let src = d.join(name);
                if !src.is_file() {
                    return Err(missing(format!(
                        "{} is not there (Debian: apt-get install grub-pc-bin)",
                        src.display()
                    )));
                }
                too_large(std::fs::metadata(&src).map_or(0, |m| m.len()))?;
                std::fs::copy(&src, &dest).map_err(io_err(&src, "cannot copy"))?;
            }
            FileRef::Root(d) => {
                let pattern = format!("{}/{name}", d.trim_end_matches('/'));
                let i = self.partition()?;
                let tree = match self.inputs.get(i) {
                    Some(Input::Tree(t)) => Some(t),
                    _ => None,
                };
                let not_in_root = || {
                    missing(format!(
                        "root:{pattern} is not in the root file system (install grub-pc-bin \
                         there, or give grub = \"host:/usr/lib/grub/i386-pc\")"
                    ))
                };
                if let Some(tree) = tree {
                    let data = match resolve::resolve(tree, &pattern) {
                        Ok(d) => d,
                        Err(resolve::Error::NoMatch { .. }) => return Err(not_in_root()),
                        Err(e) => return Err(invalid(&self.req.template, e.to_string())),
                    };
                    too_large(data.len())?;
                    let mut out =
                        std::fs::File::create(&dest).map_err(io_err(&dest, "cannot create"))?;
                    copy_data(&data, &mut out).map_err(io_err(&dest, "cannot write"))?;
                } else {
                    let fs = self.image_fs()?;
                    let Ok(len) = fs.len(&pattern) else {
                        return Err(not_in_root());
                    };
                    too_large(len)?;
                    let mut out =
                        std::fs::File::create(&dest).map_err(io_err(&dest, "cannot create"))?;
                    fs.copy_to(&pattern, &mut out)
                        .map_err(|e| invalid(fs.name(), e.to_string()))?;
                }
            }
        }
        Ok(dest)
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
        let fs = self.image_fs()?;
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
    table: &Planned,
    offset: u64,
    size: u64,
    work: &Path,
    req: &BuildRequest,
    seed: &[u8; 32],
    root: &mut RootFs,
) -> Result<Arc<dyn Disk>> {
    let tpl = root.tpl;
    let mut files: Vec<(String, FileSource)> = Vec::new();
    if let Some(b) = &tpl.bootloader
        && let Some(efi) = &b.efi
    {
        // Removable-media paths (UEFI 2.10, 3.5.1.1): firmware boots them without NVRAM entries.
        let loader_path = match tpl.architecture {
            Architecture::X86_64 => "EFI/BOOT/BOOTX64.EFI",
            Architecture::I386 => "EFI/BOOT/BOOTIA32.EFI",
        };
        files.push((loader_path.into(), root.fetch(efi, work, 0)?));
        files.push(("vmlinuz".into(), root.fetch(&b.kernel, work, 1)?));
        let mut entry = format!("title {}\nlinux /vmlinuz\n", b.title);
        if let Some(i) = &b.initrd {
            files.push(("initrd.img".into(), root.fetch(i, work, 2)?));
            entry.push_str("initrd /initrd.img\n");
        }
        // The text GRUB passes on a hybrid disk, so that both boot paths give the kernel the
        // same command line (grub::canonical_options).
        entry.push_str(&format!(
            "options {}\n",
            grub::canonical_options(&partuuids(&b.options, tpl, table, &req.template)?)
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

/// Replaces `${partuuid:LABEL}` with the unique GUID of the partition labelled LABEL (on an MBR
/// disk, the `SSSSSSSS-NN` Linux makes of the disk signature and the partition number).
fn partuuids(options: &str, tpl: &Template, table: &Planned, template: &Path) -> Result<String> {
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
        let index = tpl
            .partitions
            .iter()
            .position(|p| p.label == label)
            .ok_or_else(|| {
                invalid(
                    template,
                    format!("${{partuuid:{label}}}: no partition is labelled {label:?}"),
                )
            })?;
        out.push_str(&table.partuuid(index));
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The partition table laid out: GPT, or MBR for legacy-only disks.
enum Planned {
    Gpt(gpt::Table),
    Mbr(mbr::Table),
}

/// GRUB set up for legacy boot: the MBR's boot code and core.img with the sector it goes at.
struct Bios {
    boot_code: Vec<u8>,
    core: Vec<u8>,
    core_lba: u64,
}

impl Planned {
    /// Plans the template's table on a disk of `disk_size` bytes; `sizes` are the partitions'
    /// (`None`: the rest).
    fn plan(
        tpl: &Template,
        disk_size: u64,
        sizes: &[Option<u64>],
        seed: &[u8],
    ) -> std::result::Result<Planned, String> {
        match tpl.table {
            TableKind::Gpt => {
                let requests: Vec<PartitionRequest> = tpl
                    .partitions
                    .iter()
                    .zip(sizes)
                    .map(|(p, &size)| PartitionRequest {
                        kind: p.kind,
                        label: p.label.clone(),
                        size,
                        attributes: 0,
                    })
                    .collect();
                gpt::plan(disk_size, &requests, seed)
                    .map(Planned::Gpt)
                    .map_err(|e| e.to_string())
            }
            TableKind::Mbr => {
                let requests: Vec<mbr::PartitionRequest> = tpl
                    .partitions
                    .iter()
                    .zip(sizes)
                    .map(|(p, &size)| mbr::PartitionRequest {
                        kind: p.kind,
                        label: p.label.clone(),
                        size,
                        active: p.active,
                    })
                    .collect();
                mbr::plan(disk_size, &requests, seed)
                    .map(Planned::Mbr)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Each partition's byte offset and length.
    fn spans(&self) -> Vec<(u64, u64)> {
        match self {
            Planned::Gpt(t) => t.partitions.iter().map(|p| (p.offset(), p.len())).collect(),
            Planned::Mbr(t) => t.partitions.iter().map(|p| (p.offset(), p.len())).collect(),
        }
    }

    /// What `root=PARTUUID=` names partition `index` (0-based) by.
    fn partuuid(&self, index: usize) -> String {
        match self {
            Planned::Gpt(t) => t
                .partitions
                .get(index)
                .map(|p| p.unique_guid.to_string())
                .unwrap_or_default(),
            Planned::Mbr(t) => t.partuuid(index),
        }
    }

    /// GRUB's name of partition `index` (0-based) on the boot disk.
    fn grub_name(&self, index: usize) -> String {
        match self {
            Planned::Gpt(_) => format!("hd0,gpt{}", index + 1),
            Planned::Mbr(_) => format!("hd0,msdos{}", index + 1),
        }
    }

    /// The table's own sectors, with GRUB's boot code in the MBR and its core where it goes.
    fn regions(&self, bios: Option<&Bios>) -> Vec<Region> {
        let boot_code = bios.map(|b| b.boot_code.as_slice());
        let mut regions = match self {
            Planned::Gpt(t) => {
                let mut primary = t.primary();
                if let (Some(code), Some(mbr)) = (boot_code, primary.get_mut(..mbr::BOOT_CODE_LEN))
                    && code.len() == mbr.len()
                {
                    mbr.copy_from_slice(code);
                }
                let (backup_at, backup) = t.backup();
                vec![
                    Region {
                        offset: 0,
                        len: gpt::SECTOR_SIZE * t.first_usable_lba(),
                        content: Region_::Bytes(primary),
                    },
                    Region {
                        offset: backup_at,
                        len: t.disk_size - backup_at,
                        content: Region_::Bytes(backup),
                    },
                ]
            }
            Planned::Mbr(t) => vec![Region {
                offset: 0,
                len: mbr::SECTOR_SIZE,
                content: Region_::Bytes(t.sector0(boot_code)),
            }],
        };
        if let Some(b) = bios {
            regions.push(Region {
                offset: b.core_lba * grub::SECTOR_SIZE,
                len: b.core.len() as u64,
                content: Region_::Bytes(b.core.clone()),
            });
        }
        regions
    }
}

/// A 16-byte identifier of partition `index`'s file system, derived from the build's seed: a
/// version 4 (random) UUID, RFC 4122 §4.4, as mke2fs makes.
fn derive_id(seed: &[u8; 32], what: &str, index: usize) -> [u8; 16] {
    let d = Sha256::digest([&seed[..], what.as_bytes(), &(index as u64).to_le_bytes()].concat());
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    id[6] = (id[6] & 0x0F) | 0x40;
    id[8] = (id[8] & 0x3F) | 0x80;
    id
}

/// A UUID as GRUB and blkid print it: 8-4-4-4-12 lowercase hex digits.
fn uuid_text(id: &[u8; 16]) -> String {
    let hex = hex::encode(id);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The UUID in an ext4 superblock (`s_uuid` at byte 0x68 of the superblock at byte 1024),
/// checked by its magic 0xEF53 at 0x38.
fn ext4_uuid(disk: &dyn Disk) -> Option<[u8; 16]> {
    let mut sb = [0u8; 0x78];
    disk.read_at(1024, &mut sb).ok()?;
    if sb[0x38..0x3a] != [0x53, 0xef] {
        return None;
    }
    sb[0x68..0x78].try_into().ok()
}

/// Sets up GRUB i386-pc for legacy boot from the module directory `dir` (host or `root:`):
/// core.img made with grub-mkimage, booting the template's kernel and initrd from the root file
/// system with its command line; placed in the BIOS boot partition (GPT) or the gap after the
/// MBR, and boot.img pointed at it.
fn build_grub(
    dir: &FileRef,
    table: &Planned,
    volumes: &[Option<Arc<dyn Disk>>],
    work: &Path,
    req: &BuildRequest,
    root: &mut RootFs,
) -> Result<Bios> {
    let tpl = root.tpl;
    let Some(b) = &tpl.bootloader else {
        return Err(invalid(&req.template, "no [bootloader]".into()));
    };
    let root_index = root.partition()?;
    let kernel = root.path_of(&b.kernel, "bootloader.kernel")?;
    let initrd = match &b.initrd {
        Some(i) => Some(root.path_of(i, "bootloader.initrd")?),
        None => None,
    };
    // Read from the superblock the root partition will hold: the image's, or the one the
    // build laid out for a tree.
    let fs_uuid = match &root.inputs[root_index] {
        Input::Image(img) => ext4_uuid(img.as_ref()),
        _ => volumes
            .get(root_index)
            .and_then(|v| v.as_ref())
            .and_then(|v| ext4_uuid(v.as_ref())),
    }
    .ok_or_else(|| {
        invalid(
            &req.template,
            format!(
                "legacy boot: partition '{}' holds no ext4 file system for GRUB to read the kernel \
                 from",
                tpl.partitions[root_index].label
            ),
        )
    })?;
    let config = grub::config(&grub::BootConfig {
        fs_uuid: uuid_text(&fs_uuid),
        partition: table.grub_name(root_index),
        kernel,
        initrd,
        options: partuuids(&b.options, tpl, table, &req.template)?,
    })
    .map_err(|e| invalid(&req.template, e.to_string()))?;

    // GRUB's directory, copied into the work directory: boot.img, the images grub-mkimage
    // assembles, moddep.lst and the modules core.img needs.
    let grub_dir = work.join("grub-i386-pc");
    std::fs::create_dir_all(&grub_dir).map_err(io_err(&grub_dir, "cannot create"))?;
    let moddep = root.fetch_grub_file(dir, grub::MODDEP, &grub_dir)?;
    let moddep_text = String::from_utf8_lossy(&read_small(
        &moddep,
        grub::MAX_MODDEP,
        &grub_ref_text(dir, grub::MODDEP),
    )?)
    .into_owned();
    let modules = grub::module_closure(&moddep_text, &grub_ref_text(dir, grub::MODDEP))
        .map_err(|e| invalid(&req.template, e.to_string()))?;
    for name in grub::IMAGES {
        root.fetch_grub_file(dir, name, &grub_dir)?;
    }
    for m in &modules {
        root.fetch_grub_file(dir, &format!("{m}.mod"), &grub_dir)?;
    }
    let boot_path = grub_dir.join("boot.img");
    let boot_img = read_small(
        &boot_path,
        grub::SECTOR_SIZE,
        &grub_ref_text(dir, "boot.img"),
    )?;
    let grub_err = |e: grub::Error| invalid(&req.template, e.to_string());
    let mut core = grub::make_core(&grub_dir, &config, work).map_err(grub_err)?;
    let sectors = grub::core_sectors(&core);
    let core_lba = match table {
        Planned::Gpt(t) => {
            let found = tpl
                .partitions
                .iter()
                .zip(&t.partitions)
                .enumerate()
                .find(|(_, (p, _))| p.kind == PartitionType::BiosBoot);
            let Some((i, (p, part))) = found else {
                return Err(invalid(
                    &req.template,
                    "legacy boot on a GPT disk needs a bios-boot partition".into(),
                ));
            };
            // The size the template asked for, not the 1 MiB the planner rounds it up to: a
            // partition declared smaller than core.img is a mistake even when rounding hides it.
            let mut have = (part.last_lba - part.first_lba + 1) * gpt::SECTOR_SIZE;
            if let PartSize::Fixed(n) = p.size {
                have = have.min(n);
            }
            if sectors * gpt::SECTOR_SIZE > have {
                return Err(invalid(
                    &req.template,
                    format!(
                        "partition {} '{}' (bios-boot, {} bytes) is too small for GRUB's core.img \
                         ({} bytes): give it size = \"1M\"",
                        i + 1,
                        p.label,
                        have,
                        core.len()
                    ),
                ));
            }
            part.first_lba
        }
        Planned::Mbr(t) => {
            let gap = t.first_partition_lba().saturating_sub(1);
            if sectors > gap {
                return Err(invalid(
                    &req.template,
                    format!(
                        "GRUB's core.img ({} bytes) does not fit the {} sectors between the MBR and \
                         the first partition",
                        core.len(),
                        gap
                    ),
                ));
            }
            1
        }
    };
    grub::patch_core(&mut core, core_lba).map_err(grub_err)?;
    let boot_code =
        grub::boot_code(&boot_img, &grub_ref_text(dir, "boot.img"), core_lba).map_err(grub_err)?;
    Ok(Bios {
        boot_code,
        core,
        core_lba,
    })
}

/// Reads a file fetched into the work directory, refusing one of more than `max` bytes before
/// reading it (it came from a root file system, which may be hostile); `what` names it.
fn read_small(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .map_err(io_err(path, "cannot read"))?
        .len();
    if len > max {
        return Err(Error::Invalid {
            path: what.into(),
            reason: format!("{len} bytes, more than the {max} it can be"),
        });
    }
    std::fs::read(path).map_err(io_err(path, "cannot read"))
}

/// `dir/name` as the template would write it, for messages.
fn grub_ref_text(dir: &FileRef, name: &str) -> String {
    match dir {
        FileRef::Host(p) => format!("host:{}", p.join(name).display()),
        FileRef::Root(p) => format!("root:{}/{name}", p.trim_end_matches('/')),
    }
}

/// Writes a tree file's data to `out`, a megabyte at a time.
fn copy_data(data: &tree::Data, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    match data {
        tree::Data::Bytes(b) => out.write_all(b),
        tree::Data::Storage(s) => {
            let mut buf = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < s.len() {
                let n = (s.len() - at).min(buf.len() as u64) as usize;
                s.read_at(at, &mut buf[..n])?;
                out.write_all(&buf[..n])?;
                at += n as u64;
            }
            Ok(())
        }
    }
}
