//! The fuzz harnesses of mkomi: one function per target, each feeding one input to a parser of
//! untrusted input and exercising what it returns, within fixed bounds.
//!
//! The targets in `fuzz_targets/` call these functions; the main crate's `tests/fuzz_corpus.rs`
//! includes this file and runs every committed seed and regression input through them with the
//! stable toolchain, so a crash found once stays covered by `cargo test`.
//!
//! A harness returns normally whatever the input: errors are the expected answer to bad input.
//! A panic, an abort, a hang (libFuzzer's `-timeout`) or an allocation beyond `-rss_limit_mb` is
//! a finding.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mkomi::format::{Disk, Extent, ExtentKind};
use mkomi::fs::{FileSystem, Kind};

/// Bytes of disk data a harness reads in all, whatever sizes the input claims.
const READ_BUDGET: u64 = 1 << 20;
/// Bytes read by one call.
const READ_CHUNK: usize = 64 << 10;
/// Directories a file system walk lists.
const MAX_DIRS: usize = 64;
/// Entries one directory listing may return.
const MAX_ENTRIES: usize = 1024;
/// Paths a file system walk looks at.
const MAX_PATHS: usize = 512;
/// Directory depth of a file system walk.
const MAX_DEPTH: usize = 8;

/// The largest disk a sparse input may describe: enough for a FAT32 volume (at least 65,525
/// clusters) and any ext4 layout the fuzzer finds, small enough that no bound is exceeded by
/// the disk's size alone.
pub const MAX_SPARSE_SIZE: u64 = 256 << 20;
/// The magic that starts a sparse input (see [`MemSource::parse`]).
pub const SPARSE_MAGIC: &[u8; 4] = b"MKFZ";
/// Pieces a sparse input may hold.
const MAX_PIECES: usize = 256;

/// A disk held in memory, built from a fuzz input.
///
/// An input that starts with [`SPARSE_MAGIC`] is sparse: a `u64` virtual size (little-endian,
/// at most [`MAX_SPARSE_SIZE`]), then pieces, each a `u64` byte offset, a `u32` length and
/// that many bytes (cut short at the end of the input or of the disk); the rest of the disk
/// reads as zeros. This lets a few KiB stand for a FAT32 or ext4 volume of many MiB, which a
/// raw input could not. Any other input is the disk's bytes themselves.
pub struct MemSource {
    size: u64,
    /// Sorted by offset, each non-empty and inside the disk; later pieces win where they overlap.
    pieces: Vec<(u64, Vec<u8>)>,
    path: PathBuf,
}

impl MemSource {
    /// The disk that `data` describes, named `path` in messages.
    pub fn parse(data: &[u8], path: &str) -> Self {
        let path = PathBuf::from(path);
        let Some(mut rest) = data.strip_prefix(SPARSE_MAGIC.as_slice()) else {
            return MemSource {
                size: data.len() as u64,
                pieces: vec![(0, data.to_vec())],
                path,
            };
        };
        let size = take_u64(&mut rest).unwrap_or(0).min(MAX_SPARSE_SIZE);
        let mut pieces = Vec::new();
        while pieces.len() < MAX_PIECES {
            let (Some(offset), Some(len)) = (take_u64(&mut rest), take_u32(&mut rest)) else {
                break;
            };
            let len = (len as usize).min(rest.len());
            let (bytes, after) = rest.split_at(len);
            rest = after;
            let room = size.saturating_sub(offset);
            let bytes = &bytes[..(room.min(len as u64) as usize)];
            if !bytes.is_empty() {
                pieces.push((offset, bytes.to_vec()));
            }
        }
        pieces.sort_by_key(|p| p.0);
        MemSource { size, pieces, path }
    }

    fn invalid(&self, reason: String) -> mkomi::format::Error {
        mkomi::format::Error::Invalid {
            path: self.path.clone(),
            reason: format!("{reason}: out of the {}-byte disk", self.size),
        }
    }
}

fn take_u64(rest: &mut &[u8]) -> Option<u64> {
    let (head, tail) = rest.split_first_chunk::<8>()?;
    *rest = tail;
    Some(u64::from_le_bytes(*head))
}

fn take_u32(rest: &mut &[u8]) -> Option<u32> {
    let (head, tail) = rest.split_first_chunk::<4>()?;
    *rest = tail;
    Some(u32::from_le_bytes(*head))
}

impl Disk for MemSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn extent(&self, offset: u64, max_len: u64) -> mkomi::format::Result<Extent> {
        let left = self.size.saturating_sub(offset);
        if left == 0 || max_len == 0 {
            return Err(self.invalid(format!("extent at {offset} of {max_len} bytes")));
        }
        Ok(Extent {
            offset,
            len: left.min(max_len),
            kind: ExtentKind::Data,
        })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> mkomi::format::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&end| end <= self.size);
        let Some(end) = end else {
            return Err(self.invalid(format!("read of {} bytes at {offset}", buf.len())));
        };
        buf.fill(0);
        for (at, bytes) in &self.pieces {
            let piece_end = at + bytes.len() as u64;
            if *at >= end || piece_end <= offset {
                continue;
            }
            let from = offset.max(*at);
            let to = end.min(piece_end);
            let dst = (from - offset) as usize..(to - offset) as usize;
            let src = (from - at) as usize..(to - at) as usize;
            buf[dst].copy_from_slice(&bytes[src]);
        }
        Ok(())
    }

    fn format(&self) -> &'static str {
        "raw"
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

/// The directory where the `qcow2` target writes its inputs: one per process, under `$TMPDIR`.
fn qcow2_dir() -> &'static Mutex<Option<PathBuf>> {
    static DIR: Mutex<Option<PathBuf>> = Mutex::new(None);
    &DIR
}

/// `qcow2`: the input as a file on disk, opened through [`mkomi::format::open_path`] (format
/// detection, qcow2 header, extension and table validation, backing chain), then every extent
/// walked as the copy engine walks them and the data extents read, [`READ_BUDGET`] bytes at
/// most. The file's directory also holds `base.raw`, a 64 KiB raw disk, and `top.qcow2` is the
/// input itself, so that backing names can resolve.
pub fn qcow2(data: &[u8]) {
    let mut guard = qcow2_dir().lock().unwrap_or_else(|p| p.into_inner());
    let dir = guard.get_or_insert_with(|| {
        let dir = std::env::temp_dir().join(format!("mkomi-fuzz-qcow2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cannot create the qcow2 target's directory");
        std::fs::write(dir.join("base.raw"), vec![0xa5u8; 64 << 10])
            .expect("cannot write base.raw");
        dir
    });
    qcow2_in(dir, data);
}

/// [`qcow2`] with the input written in `dir` (which gets `top.qcow2` and `base.raw`).
pub fn qcow2_in(dir: &Path, data: &[u8]) {
    let base = dir.join("base.raw");
    if !base.exists() {
        std::fs::write(&base, vec![0xa5u8; 64 << 10]).expect("cannot write base.raw");
    }
    let top = dir.join("top.qcow2");
    std::fs::write(&top, data).expect("cannot write the input");
    // Backing files are followed in the input's own directory, whatever mkomi's default, so
    // that the backing chain is fuzzed too.
    let options = mkomi::format::OpenOptions::new(
        mkomi::format::InputFormat::Auto,
        mkomi::format::BackingPolicy::within(vec![dir.to_owned()]),
    );
    let Ok(src) = mkomi::format::open_path(&top, &options) else {
        return;
    };
    read_disk(src.as_ref());
}

/// Walks the extents of `src` as the copy engine does and reads its data, within bounds.
fn read_disk(src: &dyn Disk) {
    // What the walk found before an error is read all the same, as a copy would have read it.
    let mut data = Vec::new();
    let _ = mkomi::copy::walk_extents(src, |e| {
        if e.kind == ExtentKind::Data {
            data.push((e.offset, e.len));
        }
        Ok(())
    });
    let size = src.size();
    let mut budget = READ_BUDGET;
    let mut buf = vec![0u8; READ_CHUNK];
    // The start of the disk, whatever the extents said (a zero extent reads as zeros).
    let head = size.min(READ_CHUNK as u64) as usize;
    if head > 0 {
        let _ = src.read_at(0, &mut buf[..head]);
        budget -= head as u64;
    }
    for (offset, len) in data {
        let mut at = offset;
        let end = offset.saturating_add(len).min(size);
        while at < end && budget > 0 {
            let n = (end - at).min(READ_CHUNK as u64).min(budget) as usize;
            if src.read_at(at, &mut buf[..n]).is_err() {
                break;
            }
            budget -= n as u64;
            at += n as u64;
        }
    }
    // The last bytes, where qcow2 data clusters of a truncated image would be.
    if size > 0 {
        let n = size.min(4096);
        let _ = src.read_at(size - n, &mut buf[..n as usize]);
    }
}

/// `table`: the input as a whole disk, its partition table read by
/// [`mkomi::inspect::table::read`], which never fails, and the result serialised.
pub fn table(data: &[u8]) {
    let src = MemSource::parse(data, "fuzz.img");
    let table = mkomi::inspect::table::read(&src);
    for p in &table.partitions {
        // What inspect does with a partition: its range, bounded by the disk.
        let _ = p.offset.checked_add(p.size);
    }
    let _ = serde_json::to_vec(&table);
}

/// `fat`: the input as a bare FAT file system, opened with [`mkomi::fs::fat::Fat::open`], its
/// label read and its tree walked through [`FileSystem`].
pub fn fat(data: &[u8]) {
    let src: Arc<dyn Disk> = Arc::new(MemSource::parse(data, "fuzz.fat"));
    let len = src.size();
    let Ok(fs) = mkomi::fs::fat::Fat::open(src, 0, len, Path::new("fuzz.fat")) else {
        return;
    };
    let _ = fs.label();
    walk_fs(&fs);
}

/// `ntfs`: the input as a bare NTFS volume, opened with [`mkomi::fs::ntfs::Ntfs::open`] (boot
/// sector checks, the vendored `ntfs` crate's `$MFT` and `$UpCase` reads), its label read and
/// its tree walked through [`FileSystem`] (B-tree listings, lookups through `$UpCase`, symlinks
/// and junctions, sparse and LZNT1-compressed reads).
pub fn ntfs(data: &[u8]) {
    let src: Arc<dyn Disk> = Arc::new(MemSource::parse(data, "fuzz.ntfs"));
    let len = src.size();
    let Ok(fs) = mkomi::fs::ntfs::Ntfs::open(src, 0, len, Path::new("fuzz.ntfs")) else {
        return;
    };
    let _ = fs.label();
    walk_fs(&fs);
}

/// `ext4`: the input as a bare ext2/3/4 file system, opened with
/// [`mkomi::fs::ext4::Ext4::open`] (superblock, group descriptors, journal replay), its tree
/// walked through [`FileSystem`], and a few glob patterns resolved.
pub fn ext4(data: &[u8]) {
    let src: Arc<dyn Disk> = Arc::new(MemSource::parse(data, "fuzz.ext4"));
    let len = src.size();
    let Ok(fs) = mkomi::fs::ext4::Ext4::open(src, 0, len, Path::new("fuzz.ext4")) else {
        return;
    };
    for pattern in ["/boot/vmlinuz-*", "/*", "/etc/os-release", "/a/b/?"] {
        if let Ok(path) = fs.resolve(pattern) {
            let _ = fs.len(&path);
            let _ = fs.copy_to(&path, &mut std::io::sink());
        }
    }
    walk_fs(&fs);
}

/// Lists a file system breadth first from `/`, within [`MAX_DIRS`], [`MAX_PATHS`] and
/// [`MAX_DEPTH`], asking every path what [`FileSystem`] answers: metadata with and without
/// symlinks followed, link targets, bounded whole reads and reads at offsets.
fn walk_fs(fs: &dyn FileSystem) {
    let _ = (fs.name(), fs.kind());
    let mut dirs = std::collections::VecDeque::from([("/".to_owned(), 0usize)]);
    let mut listed = 0;
    let mut paths = 0;
    let mut budget = READ_BUDGET;
    let mut buf = vec![0u8; 4096];
    while let Some((dir, depth)) = dirs.pop_front() {
        if listed == MAX_DIRS {
            break;
        }
        listed += 1;
        let Ok(entries) = fs.read_dir(&dir, MAX_ENTRIES) else {
            continue;
        };
        for e in entries {
            if paths == MAX_PATHS {
                return;
            }
            paths += 1;
            let path = if dir == "/" {
                format!("/{}", e.name)
            } else {
                format!("{dir}/{}", e.name)
            };
            let _ = fs.symlink_metadata(&path);
            let followed = fs.metadata(&path);
            match e.kind {
                Kind::Dir if depth < MAX_DEPTH => dirs.push_back((path, depth + 1)),
                Kind::Symlink => {
                    let _ = fs.read_link(&path);
                }
                Kind::File if budget > 0 => {
                    let max = budget.min(READ_CHUNK as u64);
                    if let Ok(bytes) = fs.read_to_vec(&path, max) {
                        budget -= bytes.len() as u64;
                    }
                    if let Ok(meta) = followed {
                        // A read that starts inside the file and one that straddles its end.
                        for at in [meta.len / 2, meta.len.saturating_sub(100)] {
                            if let Ok(n) = fs.read_at(&path, at, &mut buf) {
                                budget = budget.saturating_sub(n as u64);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    // Paths that are not in any listing.
    for path in [
        "/etc/os-release",
        "/no/such/file",
        "/EFI/BOOT/BOOTX64.EFI",
        "/.",
    ] {
        let _ = fs.metadata(path);
        let _ = fs.read_to_vec(path, 4096);
    }
}

/// `inspect`: the input as a whole disk, inspected as `mkomi inspect` does
/// ([`mkomi::inspect::inspect_disk`]: partition table, signatures, ext4 and FAT file systems,
/// os-release, kernels, ELF and PE headers, EFI loaders), then summarised and serialised.
pub fn inspect(data: &[u8]) {
    let src: Arc<dyn Disk> = Arc::new(MemSource::parse(data, "fuzz.img"));
    let report = mkomi::inspect::inspect_disk(&src, Some("/dev/sda1"));
    let summary = mkomi::inspect::summarize(&report);
    let _ = serde_json::to_vec(&report);
    let _ = serde_json::to_vec(&summary);
}

/// `binary`: the input as the head of a file, identified as ELF or PE
/// ([`mkomi::inspect::binary::identify_bytes`]), and each header parser on its own.
pub fn binary(data: &[u8]) {
    use mkomi::inspect::binary;
    if let Ok(b) = binary::identify_bytes(data) {
        let _ = b.is_efi();
        let _ = b.to_string();
        if let Some(s) = b.subsystem {
            let _ = binary::subsystem_name(s);
        }
    }
    let _ = binary::parse_elf(data);
    if let Ok(at) = binary::parse_pe_dos(data)
        && let Some(nt) = usize::try_from(at).ok().and_then(|at| data.get(at..))
    {
        let _ = binary::parse_pe_nt(nt);
    }
    let _ = binary::parse_pe_nt(data);
}

/// `regf`: the input as a registry hive ([`mkomi::ondisk::regf::Hive::parse`]), then the
/// lookups the Windows inspection and audit make. The base block's checksum and sequence numbers are
/// fixed first, so that mutations reach the cells rather than stopping at the base block.
pub fn regf(data: &[u8]) {
    use mkomi::ondisk::regf::Hive;
    let mut hive = data.to_vec();
    if hive.len() >= 512 {
        let seq = [hive[4], hive[5], hive[6], hive[7]];
        hive[8..12].copy_from_slice(&seq);
        let mut sum = (0..127).fold(0u32, |x, i| {
            x ^ u32::from_le_bytes([
                hive[i * 4],
                hive[i * 4 + 1],
                hive[i * 4 + 2],
                hive[i * 4 + 3],
            ])
        });
        sum = match sum {
            0 => 1,
            0xffff_ffff => 0xffff_fffe,
            s => s,
        };
        hive[508..512].copy_from_slice(&sum.to_le_bytes());
    }
    for bytes in [data, &hive[..]] {
        if let Ok(h) = Hive::parse(bytes) {
            let _ = h.value(&["Select"], "Current");
            let _ = h.value(&["Setup"], "SystemSetupInProgress");
            let _ = h.value(&["Setup", "Status", "SysprepStatus"], "GeneralizationState");
            let _ = h.value(
                &["ControlSet001", "Control", "Session Manager", "Environment"],
                "PROCESSOR_ARCHITECTURE",
            );
            let _ = h.value(
                &["Microsoft", "Windows NT", "CurrentVersion"],
                "ProductName",
            );
            let _ = h.value(
                &["Microsoft", "Windows", "CurrentVersion", "Setup", "State"],
                "ImageState",
            );
            let _ = h.subkeys(&[]);
            let _ = h.subkeys(&["Cloudbase Solutions", "Cloudbase-Init"]);
        }
    }
}

/// `os_release`: the input as an os-release file ([`mkomi::inspect::osrelease::parse`]).
pub fn os_release(data: &[u8]) {
    let os = mkomi::inspect::osrelease::parse(data);
    let _ = os.display_name();
}

/// `export_manifest`: the input as an export's `manifest.json`
/// ([`mkomi::export::manifest::ExportManifest::parse`]), written back and parsed again, and
/// every pre-signed URL's expiry read.
pub fn export_manifest(data: &[u8]) {
    use mkomi::export::manifest::{ExportManifest, presigned_expiry};
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = presigned_expiry(text);
    }
    let Ok(m) = ExportManifest::parse(data) else {
        return;
    };
    for s in &m.image.snapshots {
        let _ = s.format();
        if let Some(url) = &s.pre_signed_url {
            let _ = presigned_expiry(url);
        }
    }
    let again = ExportManifest::parse(&m.to_bytes());
    assert!(
        again.is_ok(),
        "a parsed manifest written back is refused: {again:?}"
    );
}

/// `template`: the input as a build template ([`mkomi::layout::template::Template::parse`]),
/// with the variables `rootfs` and `version` set.
pub fn template(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let vars = BTreeMap::from([
        ("rootfs".to_owned(), "root.ext4".to_owned()),
        ("version".to_owned(), "1.0".to_owned()),
    ]);
    let _ = mkomi::layout::template::Template::parse(
        Path::new("fuzz.toml"),
        text,
        &vars,
        Path::new("/nonexistent"),
    );
}

/// `store`: the input as what a user types to the store: each line an image or snapshot ID, a
/// content digest, an account ID, a volume's content, a `--filter`; the first line is also
/// matched as a glob against the others.
pub fn store(data: &[u8]) {
    use mkomi::store::image::{Content, Filter, account_id};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines: Vec<&str> = text.split('\n').take(64).collect();
    for line in &lines {
        let _ = mkomi::store::is_image_id(line);
        let _ = mkomi::store::is_snapshot_id(line);
        let _ = mkomi::fuzzing::is_digest(line);
        let _ = account_id(line);
        let _ = Content::parse(line);
        let _ = Filter::parse(line);
    }
    let mut filter = Filter::default();
    for line in &lines {
        if filter.add(line).is_err() {
            break;
        }
    }
    if let Some((pattern, rest)) = lines.split_first() {
        for s in rest {
            let _ = mkomi::fuzzing::glob(pattern, s);
        }
    }
}

/// The spool directory of the `tar` target: one per process, under `$TMPDIR`.
fn tar_dir() -> &'static Mutex<Option<PathBuf>> {
    static DIR: Mutex<Option<PathBuf>> = Mutex::new(None);
    &DIR
}

/// `tar`: the input as an uncompressed tar stream ([`mkomi::tree::tar::read_tar_stream`]:
/// headers, PAX and GNU extensions, sparse maps, path checks), read once as a plain archive and
/// once as an image layer (whiteouts); each tree's files are read, [`READ_BUDGET`] bytes in all,
/// and its spool deleted. The input bounds the decompressed size: no decompressor runs here.
pub fn tar(data: &[u8]) {
    use mkomi::tree::tar::{Mode, read_tar_stream};
    use mkomi::tree::{Data, Kind};
    let mut guard = tar_dir().lock().unwrap_or_else(|p| p.into_inner());
    let dir = guard.get_or_insert_with(|| {
        let dir = std::env::temp_dir().join(format!("mkomi-fuzz-tar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cannot create the tar target's directory");
        dir
    });
    for mode in [Mode::Plain, Mode::Layer] {
        let result = read_tar_stream(data, "fuzz.tar", dir, mode);
        if let Ok(tree) = &result {
            let mut budget = READ_BUDGET;
            for (_, e) in tree.iter() {
                let Kind::File(Data::Storage(s)) = &e.kind else {
                    continue;
                };
                let n = s.len().min(budget).min(READ_CHUNK as u64) as usize;
                let mut buf = vec![0u8; n];
                s.read_at(0, &mut buf)
                    .expect("a spooled file cannot be read back");
                if !s.is_empty() {
                    let _ = s.extent(0, s.len());
                }
                budget -= n as u64;
            }
            tree.check_links()
                .expect("a tree was returned with a dangling hard link");
        }
        let failed = result.is_err();
        drop(result);
        // A failed read deletes its spool itself; a good one leaves it to the caller.
        for f in std::fs::read_dir(&*dir).expect("cannot list the spool directory") {
            let path = f.expect("cannot list the spool directory").path();
            assert!(!failed, "a failed read left {} behind", path.display());
            let _ = std::fs::remove_file(path);
        }
    }
}
