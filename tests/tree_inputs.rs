//! Tree inputs (src/tree/{dir,tar,oci,source}.rs) against the real GNU tar: a host directory
//! read directly and the same directory archived by `tar` must give the same tree; images are
//! written here (JSON and blobs) from layers `tar` made. Bad inputs must fail with one line
//! naming the file and member, leaving the spool directory empty.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;

use mkomi::storage::ExtentKind;
use mkomi::tree::source::{Platform, ReadOptions, SourceKind, detect, read_tree};
use mkomi::tree::{Data, Kind, Tree, TreePath};
use sha2::{Digest, Sha256};

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// GNU tar's options to keep every xattr (POSIX formats only).
const XATTRS: [&str; 2] = ["--xattrs", "--xattrs-include=*"];

/// Asserts two snapshots are equal, showing the first difference only (they can be 100,000
/// lines long).
#[track_caller]
fn same(got: &[String], want: &[String], what: &str) {
    if let Some((g, w)) = got.iter().zip(want).find(|(g, w)| g != w) {
        panic!("{what}: first difference:\n got: {g}\nwant: {w}");
    }
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
}

/// GNU tar over `dir`'s content (`.` first, names sorted), with `extra` options.
fn tar_dir(dir: &Path, out: &Path, extra: &[&str]) {
    run(Command::new("tar")
        .args(["--numeric-owner", "--sort=name"])
        .args(extra)
        .arg("-cf")
        .arg(out)
        .arg("-C")
        .arg(dir)
        .arg("."));
}

fn opts(spool: &Path) -> ReadOptions {
    ReadOptions {
        platform: Platform::linux("amd64"),
        spool_dir: spool.to_owned(),
    }
}

fn read(path: &Path, spool: &Path) -> Tree {
    let kind = detect(path).unwrap();
    read_tree(path, kind, &opts(spool)).unwrap()
}

/// Every byte of a file's data.
fn bytes(d: &Data) -> Vec<u8> {
    match d {
        Data::Bytes(b) => b.to_vec(),
        Data::Storage(s) => {
            let mut v = vec![0u8; s.len() as usize];
            s.read_at(0, &mut v).unwrap();
            v
        }
    }
}

/// What a tree holds, comparable: per path its kind (files by content digest, hard links
/// resolved to their group's first path, so that which name an archiver stored the data under
/// does not matter), metadata and xattrs. Files over `max_hash` bytes show their size only.
fn snapshot(t: &Tree, max_hash: u64) -> Vec<String> {
    let mut group: BTreeMap<TreePath, TreePath> = BTreeMap::new();
    for (p, e) in t.iter() {
        if let Kind::HardLink(target) = &e.kind {
            let g = group.entry(target.clone()).or_insert(target.clone());
            if p < g {
                *g = p.clone();
            }
        }
    }
    t.iter()
        .map(|(p, e)| {
            let (kind, meta, xattrs) = match &e.kind {
                Kind::HardLink(target) => {
                    let file = t.get(target).unwrap();
                    (
                        file_desc(file, max_hash, &group[target]),
                        file.meta,
                        &file.xattrs,
                    )
                }
                Kind::File(_) => {
                    let g = group.get(p).unwrap_or(p);
                    (file_desc(e, max_hash, g), e.meta, &e.xattrs)
                }
                other => (format!("{other:?}"), e.meta, &e.xattrs),
            };
            format!("{p} {kind} {meta:?} {xattrs:?}")
        })
        .collect()
}

fn file_desc(e: &mkomi::tree::Entry, max_hash: u64, group: &TreePath) -> String {
    let Kind::File(d) = &e.kind else {
        panic!("not a file")
    };
    let content = if d.len() > max_hash {
        format!("{} bytes", d.len())
    } else {
        hex::encode(Sha256::digest(bytes(d)))
    };
    format!("file {content} inode {group}")
}

fn spool_is_empty(spool: &Path) -> bool {
    std::fs::read_dir(spool).unwrap().next().is_none()
}

/// `security.capability` granting CAP_NET_RAW (13), effective: `struct vfs_cap_data` revision
/// 2 (linux/capability.h), as `setcap cap_net_raw+ep` writes it.
fn net_raw_capability() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes());
    v.extend_from_slice(&(1u32 << 13).to_le_bytes());
    v.extend_from_slice(&[0u8; 12]);
    v
}

/// A host directory with one of everything: files, directories, symlinks, a FIFO, devices,
/// hard links across directories, owners, xattrs (a capability), a non-UTF-8 name, a 255-byte
/// name, and whole-second and sub-second times.
fn rich_dir(root: &Path) {
    let w = |p: &str, data: &[u8]| {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    w("bin/ping", b"\x7fELF pretend");
    w("etc/passwd", b"root:x:0:0::/root:/bin/sh\n");
    w("etc/empty", b"");
    w(
        "usr/share/big",
        &(0..200_000u32)
            .flat_map(|i| i.to_le_bytes())
            .collect::<Vec<_>>(),
    );
    w("a/linked", b"one inode, two names");
    std::fs::hard_link(root.join("a/linked"), root.join("etc/zz-link")).unwrap();
    std::os::unix::fs::symlink("../etc/passwd", root.join("bin/passwd-link")).unwrap();
    std::os::unix::fs::symlink("/nowhere", root.join("dangling")).unwrap();
    run(Command::new("mkfifo").arg(root.join("fifo")));
    run(Command::new("mknod")
        .arg(root.join("null"))
        .args(["c", "1", "3"]));
    run(Command::new("mknod")
        .arg(root.join("loop9"))
        .args(["b", "7", "9"]));
    let odd = root.join(OsStr::from_bytes(b"caf\xe9-latin1"));
    std::fs::write(&odd, b"not utf-8").unwrap();
    std::fs::write(root.join("n".repeat(255)), b"long name").unwrap();
    std::os::unix::fs::lchown(root.join("etc/passwd"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(root.join("bin/passwd-link"), Some(7), Some(8)).unwrap();
    std::fs::set_permissions(
        root.join("bin/ping"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        root.join("bin/ping"),
        "security.capability",
        &net_raw_capability(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        root.join("etc"),
        "user.note",
        b"\x00binary\xff",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    run(Command::new("touch")
        .args(["-h", "-d", "@1600000000.5"])
        .arg(root.join("etc/passwd")));
    run(Command::new("touch")
        .args(["-h", "-d", "@1000000000"])
        .arg(root.join("bin/passwd-link")));
}

#[test]
fn a_directory_and_its_tar_give_the_same_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    rich_dir(&root);
    let spool = tmp.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    assert_eq!(detect(&root).unwrap(), SourceKind::Dir);
    let from_dir = read(&root, &spool);
    let ping = from_dir
        .get(&TreePath::parse(b"bin/ping").unwrap())
        .unwrap();
    assert_eq!(
        ping.xattrs[&b"security.capability"[..]],
        net_raw_capability()
    );
    assert_eq!(ping.meta.mode, 0o4755);
    let pw = from_dir
        .get(&TreePath::parse(b"etc/passwd").unwrap())
        .unwrap();
    assert_eq!((pw.meta.uid, pw.meta.gid), (1234, 5678));
    assert_eq!(
        (pw.meta.mtime, pw.meta.mtime_nsec),
        (1_600_000_000, 500_000_000)
    );
    // The data lives under the first name in tree order; the other is a link to it.
    match &from_dir
        .get(&TreePath::parse(b"etc/zz-link").unwrap())
        .unwrap()
        .kind
    {
        Kind::HardLink(t) => assert_eq!(t, &TreePath::parse(b"a/linked").unwrap()),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        from_dir
            .get(&TreePath::parse(b"null").unwrap())
            .unwrap()
            .kind,
        Kind::CharDevice { major: 1, minor: 3 }
    ));
    assert!(
        from_dir
            .get(&TreePath::parse(b"caf\xe9-latin1").unwrap())
            .is_some()
    );
    let want = snapshot(&from_dir, u64::MAX);

    for (format, name) in [("--format=pax", "pax.tar"), ("--format=gnu", "gnu.tar")] {
        let archive = tmp.path().join(name);
        let mut extra = vec![format];
        if format == "--format=pax" {
            extra.extend(XATTRS);
        }
        tar_dir(&root, &archive, &extra);
        assert_eq!(detect(&archive).unwrap(), SourceKind::Tar);
        let from_tar = read(&archive, &spool);
        let mut got = snapshot(&from_tar, u64::MAX);
        let mut want = want.clone();
        if format == "--format=gnu" {
            // The GNU format keeps neither xattrs nor sub-second times: compare without both.
            let strip = |v: &mut Vec<String>| {
                for s in v.iter_mut() {
                    *s = s
                        .replace("mtime_nsec: 500000000", "mtime_nsec: 0")
                        .split(" {")
                        .next()
                        .unwrap()
                        .to_owned();
                }
            };
            strip(&mut got);
            strip(&mut want);
        }
        same(&got, &want, name);
    }
}

#[test]
fn compression_is_told_by_content_not_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    rich_dir(&root);
    let spool = tmp.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let plain = tmp.path().join("plain");
    tar_dir(&root, &plain, &["--format=pax", XATTRS[0], XATTRS[1]]);
    let want = snapshot(&read(&plain, &spool), u64::MAX);
    for tool in ["gzip", "zstd", "xz"] {
        let out = tmp.path().join(format!("as-{tool}"));
        let data = Command::new(tool).arg("-c").arg(&plain).output().unwrap();
        assert!(data.status.success());
        std::fs::write(&out, &data.stdout).unwrap();
        assert_eq!(detect(&out).unwrap(), SourceKind::Tar, "{tool}");
        same(&snapshot(&read(&out, &spool), u64::MAX), &want, tool);
    }
}

#[test]
fn reading_twice_gives_equal_trees() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    rich_dir(&root);
    let spool = tmp.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let archive = tmp.path().join("a.tar");
    tar_dir(&root, &archive, &["--format=pax", XATTRS[0], XATTRS[1]]);
    let a = read(&archive, &spool);
    let b = read(&archive, &spool);
    assert_eq!(snapshot(&a, u64::MAX), snapshot(&b, u64::MAX));
    assert_eq!(
        snapshot(&read(&root, &spool), u64::MAX),
        snapshot(&read(&root, &spool), u64::MAX)
    );
}

/// A 5 GiB file with 1 MiB of data in three places.
fn sparse_file(path: &Path) -> Vec<(u64, Vec<u8>)> {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(5 << 30).unwrap();
    let parts: Vec<(u64, Vec<u8>)> = [0u64, 3 << 30, (5 << 30) - 4096]
        .iter()
        .enumerate()
        .map(|(i, &at)| (at, vec![0xa0 + i as u8; 4096]))
        .collect();
    for (at, data) in &parts {
        std::os::unix::fs::FileExt::write_all_at(&f, data, *at).unwrap();
    }
    parts
}

#[test]
fn a_5_gib_sparse_file_stays_sparse_through_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let parts = sparse_file(&root.join("sparse"));
    let path = TreePath::parse(b"sparse").unwrap();
    for (format, name) in [
        ("--format=gnu", "gnu.tar"),
        ("--format=pax", "pax.tar"),
        ("--sparse-version=0.0", "pax00.tar"),
        ("--sparse-version=0.1", "pax01.tar"),
    ] {
        let spool = tmp.path().join(format!("spool-{name}"));
        std::fs::create_dir(&spool).unwrap();
        let archive = tmp.path().join(name);
        let mut extra = vec!["-S", format];
        if format.starts_with("--sparse") {
            extra.push("--format=pax");
        }
        tar_dir(&root, &archive, &extra);
        assert!(
            std::fs::metadata(&archive).unwrap().len() < 1 << 20,
            "{name}"
        );
        let tree = read(&archive, &spool);
        let Kind::File(Data::Storage(s)) = &tree.get(&path).unwrap().kind else {
            panic!("not a spooled file")
        };
        assert_eq!(s.len(), 5 << 30, "{name}");
        for (at, data) in &parts {
            let mut got = vec![0u8; data.len()];
            s.read_at(*at, &mut got).unwrap();
            assert_eq!(&got, data, "{name} at {at}");
        }
        let mut mid = vec![1u8; 4096];
        s.read_at(2 << 30, &mut mid).unwrap();
        assert!(mid.iter().all(|&b| b == 0));
        // The hole is a hole in the spool: the extent there is zero, and the spool holds
        // about what was written.
        let e = s.extent(1 << 30, 1 << 30).unwrap();
        assert_eq!(e.kind, ExtentKind::Zero, "{name}");
        let used: u64 = std::fs::read_dir(&spool)
            .unwrap()
            .map(|f| f.unwrap().metadata().unwrap().blocks() * 512)
            .sum();
        assert!(used < 1 << 20, "{name}: the spool uses {used} bytes");
    }
}

#[test]
fn zero_blocks_of_a_non_sparse_member_are_not_written() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let mut data = vec![0u8; 64 << 20];
    data[(32 << 20) + 5] = 1;
    std::fs::write(root.join("zeros"), &data).unwrap();
    let archive = tmp.path().join("a.tar");
    tar_dir(&root, &archive, &[]);
    let spool = tmp.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let tree = read(&archive, &spool);
    let Kind::File(d) = &tree.get(&TreePath::parse(b"zeros").unwrap()).unwrap().kind else {
        panic!()
    };
    assert_eq!(bytes(d), data);
    let used: u64 = std::fs::read_dir(&spool)
        .unwrap()
        .map(|f| f.unwrap().metadata().unwrap().blocks() * 512)
        .sum();
    assert!(used <= 64 << 10, "the spool uses {used} bytes");
}

#[test]
fn long_names_deep_paths_and_non_utf8_in_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let mut deep = root.clone();
    // 19 directories of 200 bytes and a 199-byte file: a 4,000-byte path.
    for i in 0..19u8 {
        let mut name = vec![b'a' + i; 199];
        name.push(b'/');
        deep.push(OsStr::from_bytes(&name[..199]));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("f".repeat(200)), b"deep").unwrap();
    std::fs::write(root.join("x".repeat(255)), b"255").unwrap();
    std::fs::create_dir(root.join(OsStr::from_bytes(b"\xff\xfe dir"))).unwrap();
    std::fs::write(
        root.join(OsStr::from_bytes(b"\xff\xfe dir/\x80.bin")),
        b"odd",
    )
    .unwrap();
    let spool = tmp.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let from_dir = read(&root, &spool);
    let longest = from_dir
        .iter()
        .map(|(p, _)| p.to_bytes().len() - 1)
        .max()
        .unwrap();
    assert_eq!(longest, 4000);
    let want = snapshot(&from_dir, u64::MAX);
    for format in ["--format=gnu", "--format=pax", "--format=posix"] {
        let archive = tmp.path().join("long.tar");
        tar_dir(&root, &archive, &[format]);
        let mut got = snapshot(&read(&archive, &spool), u64::MAX);
        let mut want = want.clone();
        if format == "--format=gnu" {
            // No sub-second times in the GNU format.
            for s in got.iter_mut().chain(want.iter_mut()) {
                *s = s.split(" mtime_nsec").next().unwrap().to_owned();
            }
        }
        same(&got, &want, format);
    }
}

#[test]
fn a_hundred_thousand_files_fifty_thousand_in_one_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("big")).unwrap();
    for i in 0..50_000 {
        std::fs::write(root.join(format!("big/f{i:05}")), i.to_string()).unwrap();
    }
    for d in 0..50 {
        let dir = root.join(format!("d{d:02}"));
        std::fs::create_dir(&dir).unwrap();
        for i in 0..1000 {
            std::fs::write(dir.join(format!("{i}")), format!("{d}/{i}")).unwrap();
        }
    }
    let spool = tmp.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let from_dir = read(&root, &spool);
    assert_eq!(from_dir.len(), 1 + 1 + 50_000 + 50 + 50_000);
    let big = TreePath::parse(b"big").unwrap();
    assert_eq!(from_dir.children(&big).count(), 50_000);
    let archive = tmp.path().join("many.tar.gz");
    run(Command::new("tar")
        .args(["--numeric-owner", "--sort=name", "--format=pax", "-czf"])
        .arg(&archive)
        .arg("-C")
        .arg(&root)
        .arg("."));
    let from_tar = read(&archive, &spool);
    same(
        &snapshot(&from_tar, u64::MAX),
        &snapshot(&from_dir, u64::MAX),
        "100,000 files",
    );
}

// --- Hostile and broken archives -----------------------------------------------------------

/// One ustar header block for `name` (type `t`, `size` bytes of data, link `link`).
fn ustar(name: &[u8], t: u8, size: usize, link: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = t;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..265].copy_from_slice(b"ustar\x0000");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A member to write: `(name, type, data, link)`.
type RawMember<'a> = (&'a [u8], u8, &'a [u8], &'a [u8]);

/// An archive of these members, with its end blocks.
fn archive(members: &[RawMember]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, t, data, link) in members {
        out.extend(ustar(name, *t, data.len(), link));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend([0u8; 1024]);
    out
}

/// Reads `bytes` as a tar: the error's text, which must be one line, and the spool must be
/// left empty.
fn tar_error(bytes: &[u8]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.tar");
    std::fs::write(&path, bytes).unwrap();
    let spool = tmp.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let e = read_tree(&path, SourceKind::Tar, &opts(&spool))
        .unwrap_err()
        .to_string();
    assert!(!e.contains('\n'), "{e}");
    assert!(e.contains("bad.tar"), "{e}");
    assert!(spool_is_empty(&spool), "{e}: the spool was left behind");
    e
}

#[test]
fn names_that_leave_the_tree_are_refused() {
    let e = tar_error(&archive(&[
        (b"ok", b'0', b"x", b""),
        (b"a/../../etc/x", b'0', b"evil", b""),
    ]));
    assert!(
        e.contains("member a/../../etc/x") && e.contains("`..`"),
        "{e}"
    );
    let e = tar_error(&archive(&[(b"/etc/shadow", b'0', b"evil", b"")]));
    assert!(
        e.contains("member /etc/shadow") && e.contains("absolute"),
        "{e}"
    );
    let e = tar_error(&archive(&[(b"h", b'1', b"", b"/etc/passwd")]));
    assert!(e.contains("member h") && e.contains("absolute"), "{e}");
}

#[test]
fn a_hard_link_to_nothing_is_refused() {
    let e = tar_error(&archive(&[(b"h", b'1', b"", b"missing")]));
    assert!(
        e.contains("member h") && e.contains("hard link to /missing"),
        "{e}"
    );
    let e = tar_error(&archive(&[(b"d", b'5', b"", b""), (b"h", b'1', b"", b"d")]));
    assert!(
        e.contains("hard link to /d, which is not a regular file"),
        "{e}"
    );
}

#[test]
fn the_fuzz_harness_reads_real_archives() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    rich_dir(&root);
    for format in ["--format=pax", "--format=gnu", "--format=oldgnu"] {
        let archive = tmp.path().join("h.tar");
        tar_dir(&root, &archive, &[format]);
        harness::tar(&std::fs::read(&archive).unwrap());
    }
    harness::tar(&archive(&[(b"../x", b'0', b"x", b"")]));
    harness::tar(b"");
}

#[test]
fn a_file_through_a_symlink_is_refused() {
    let e = tar_error(&archive(&[
        (b"etc", b'2', b"", b"/etc"),
        (b"etc/cron.d/evil", b'0', b"* * * * * root sh", b""),
    ]));
    assert!(
        e.contains("member etc/cron.d/evil") && e.contains("/etc is not a directory"),
        "{e}"
    );
}

#[test]
fn truncated_archives_are_refused() {
    let whole = archive(&[(b"a", b'0', &[7u8; 5000], b""), (b"b", b'0', b"bbb", b"")]);
    // Inside a member's data, inside a header, and at a header boundary without end blocks.
    for cut in [512 + 2000, 512 * 11 + 100, 512 * 12] {
        let e = tar_error(&whole[..cut]);
        assert!(e.contains("truncated"), "cut at {cut}: {e}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("p.tar");
    std::fs::write(&plain, &whole).unwrap();
    let gz = Command::new("gzip")
        .arg("-c")
        .arg(&plain)
        .output()
        .unwrap()
        .stdout;
    let e = tar_error(&gz[..gz.len() / 2]);
    assert!(e.contains("truncated") || e.contains("end of file"), "{e}");
    // Not a tar at all.
    let e = tar_error(&[b'x'; 2048]);
    assert!(e.contains("not a tar header"), "{e}");
}

// --- Images -------------------------------------------------------------------------------

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A layer made by GNU tar from `dir`, compressed with `tool` (or none).
fn layer(dir: &Path, work: &Path, tool: Option<&str>) -> Vec<u8> {
    let t = work.join("layer.tar");
    tar_dir(dir, &t, &["--format=pax"]);
    match tool {
        None => std::fs::read(&t).unwrap(),
        Some(tool) => {
            let o = Command::new(tool).arg("-c").arg(&t).output().unwrap();
            assert!(o.status.success());
            o.stdout
        }
    }
}

/// The digest of a layer's uncompressed tar, as a config's `rootfs.diff_ids` lists it.
fn diff_id(layer: &[u8]) -> String {
    use std::io::Read;
    let (mut r, _) = mkomi::tree::tar::decompress(layer).unwrap();
    let mut plain = Vec::new();
    r.read_to_end(&mut plain).unwrap();
    format!("sha256:{}", sha(&plain))
}

struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn new(dir: PathBuf) -> Self {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout { dir }
    }

    fn blob(&self, data: &[u8]) -> (String, usize) {
        let h = sha(data);
        std::fs::write(self.dir.join("blobs/sha256").join(&h), data).unwrap();
        (format!("sha256:{h}"), data.len())
    }

    /// A manifest of these layers (with their media types) for `arch`: its descriptor.
    fn image(&self, arch: &str, layers: &[(&[u8], &str)]) -> serde_json::Value {
        let diff_ids = layers.iter().map(|(data, _)| diff_id(data)).collect();
        self.image_with(arch, layers, diff_ids)
    }

    /// [`Layout::image`] with the config's `rootfs.diff_ids` given.
    fn image_with(
        &self,
        arch: &str,
        layers: &[(&[u8], &str)],
        diff_ids: Vec<String>,
    ) -> serde_json::Value {
        let config = serde_json::json!({"architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids}});
        let (cd, cs) = self.blob(config.to_string().as_bytes());
        let ls: Vec<_> = layers
            .iter()
            .map(|(data, mt)| {
                let (d, s) = self.blob(data);
                serde_json::json!({"mediaType": mt, "digest": d, "size": s})
            })
            .collect();
        let m = serde_json::json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": cd, "size": cs},
            "layers": ls});
        let (md, ms) = self.blob(m.to_string().as_bytes());
        serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": ms,
            "platform": {"architecture": arch, "os": "linux"}})
    }

    fn index(&self, manifests: &[serde_json::Value]) {
        let i = serde_json::json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
        std::fs::write(self.dir.join("index.json"), i.to_string()).unwrap();
    }
}

/// Two layers: the first with files, a directory to delete and one to make opaque; the second
/// deleting (`.wh.gone`), emptying (`opq/.wh..wh..opq`) and adding.
fn two_layers(tmp: &Path) -> (Vec<u8>, Vec<u8>) {
    let l1 = tmp.join("l1");
    for p in [
        "etc/os-release",
        "gone/deep/x",
        "opq/a",
        "opq/sub/b",
        "keep/k",
    ] {
        std::fs::create_dir_all(l1.join(p).parent().unwrap()).unwrap();
        std::fs::write(l1.join(p), p).unwrap();
    }
    std::fs::hard_link(l1.join("gone/deep/x"), l1.join("keep/x-link")).unwrap();
    let l2 = tmp.join("l2");
    for p in ["opq/.wh..wh..opq", "opq/c", ".wh.gone", "etc/os-release"] {
        std::fs::create_dir_all(l2.join(p).parent().unwrap()).unwrap();
        std::fs::write(l2.join(p), if p.contains(".wh.") { "" } else { "new" }).unwrap();
    }
    (layer(&l1, tmp, Some("gzip")), layer(&l2, tmp, Some("zstd")))
}

fn paths(t: &Tree) -> Vec<String> {
    t.iter().map(|(p, _)| p.to_string()).collect()
}

#[test]
fn oci_layers_apply_with_whiteouts_for_the_chosen_platform() {
    let tmp = tempfile::tempdir().unwrap();
    let (l1, l2) = two_layers(tmp.path());
    let lay = Layout::new(tmp.path().join("oci"));
    let gz = "application/vnd.oci.image.layer.v1.tar+gzip";
    let zst = "application/vnd.oci.image.layer.v1.tar+zstd";
    let amd64 = lay.image("amd64", &[(&l1, gz), (&l2, zst)]);
    let i386 = lay.image("386", &[(&l1, gz)]);
    let arm = lay.image("arm64", &[(&l2, zst)]);
    lay.index(&[arm, i386, amd64]);
    let spool = tmp.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    assert_eq!(detect(&lay.dir).unwrap(), SourceKind::Oci);
    let t = read(&lay.dir, &spool);
    assert_eq!(
        paths(&t),
        [
            "/",
            "/etc",
            "/etc/os-release",
            "/keep",
            "/keep/k",
            "/keep/x-link",
            "/opq",
            "/opq/c"
        ]
    );
    // The link's target went with `gone`: the remaining name holds the data now.
    let Kind::File(d) = &t
        .get(&TreePath::parse(b"keep/x-link").unwrap())
        .unwrap()
        .kind
    else {
        panic!()
    };
    assert_eq!(bytes(d), b"gone/deep/x");
    let Kind::File(d) = &t
        .get(&TreePath::parse(b"etc/os-release").unwrap())
        .unwrap()
        .kind
    else {
        panic!()
    };
    assert_eq!(bytes(d), b"new");

    let mut o = opts(&spool);
    o.platform = Platform::linux("386");
    let t386 = read_tree(&lay.dir, SourceKind::Oci, &o).unwrap();
    assert!(
        t386.get(&TreePath::parse(b"gone/deep/x").unwrap())
            .is_some()
    );
    assert!(t386.get(&TreePath::parse(b"opq/sub/b").unwrap()).is_some());

    // The same layout in a tar (what `skopeo copy … oci-archive:` writes) reads the same.
    let archive = tmp.path().join("oci-archive.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&lay.dir)
        .arg("."));
    assert_eq!(detect(&archive).unwrap(), SourceKind::Oci);
    same(
        &snapshot(&read(&archive, &spool), u64::MAX),
        &snapshot(&t, u64::MAX),
        "oci-archive",
    );
}

#[test]
fn a_docker_save_archive_reads_like_its_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let (l1, l2) = two_layers(tmp.path());
    // docker save keeps layers uncompressed, checked against the config's diff_ids.
    let plain = |z: &[u8], tool: &str| {
        let p = tmp.path().join("z");
        std::fs::write(&p, z).unwrap();
        Command::new(tool)
            .args(["-dc"])
            .arg(&p)
            .output()
            .unwrap()
            .stdout
    };
    let (l1, l2) = (plain(&l1, "gzip"), plain(&l2, "zstd"));
    let d = tmp.path().join("save");
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha(&l1)),
                                                   format!("sha256:{}", sha(&l2))]}});
    let cfg = config.to_string();
    let cfg_name = format!("{}.json", sha(cfg.as_bytes()));
    for (l, data) in [(sha(&l1), &l1), (sha(&l2), &l2)] {
        std::fs::create_dir_all(d.join(&l)).unwrap();
        std::fs::write(d.join(&l).join("layer.tar"), data).unwrap();
    }
    std::fs::write(d.join(&cfg_name), &cfg).unwrap();
    let manifest = serde_json::json!([{"Config": cfg_name, "RepoTags": ["x:latest"],
        "Layers": [format!("{}/layer.tar", sha(&l1)), format!("{}/layer.tar", sha(&l2))]}]);
    std::fs::write(d.join("manifest.json"), manifest.to_string()).unwrap();
    let archive = tmp.path().join("saved.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&d)
        .arg("."));
    let spool = tmp.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    assert_eq!(detect(&archive).unwrap(), SourceKind::Oci);
    let t = read(&archive, &spool);
    assert_eq!(
        paths(&t),
        [
            "/",
            "/etc",
            "/etc/os-release",
            "/keep",
            "/keep/k",
            "/keep/x-link",
            "/opq",
            "/opq/c"
        ]
    );

    // A layer whose content does not match its diff_id.
    let mut bad = l2.clone();
    let at = bad.len() - 1;
    bad[at] ^= 1;
    std::fs::write(d.join(sha(&l2)).join("layer.tar"), &bad).unwrap();
    run(Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&d)
        .arg("."));
    // The good read's spool is the caller's to delete; a failed one leaves nothing.
    let spool = tmp.path().join("spool-bad");
    std::fs::create_dir(&spool).unwrap();
    let e = read_tree(&archive, SourceKind::Oci, &opts(&spool))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("sha256:{}", sha(&l2))) && e.contains("diff_id"),
        "{e}"
    );
    assert!(spool_is_empty(&spool), "{e}");
}

#[test]
fn a_layer_whose_digest_does_not_match_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (l1, _) = two_layers(tmp.path());
    let l2dir = tmp.path().join("l2-plain");
    std::fs::create_dir(&l2dir).unwrap();
    std::fs::write(l2dir.join("motd"), "welcome").unwrap();
    let l2 = layer(&l2dir, tmp.path(), None);
    let lay = Layout::new(tmp.path().join("oci"));
    let gz = "application/vnd.oci.image.layer.v1.tar+gzip";
    let m = lay.image(
        "amd64",
        &[(&l1, gz), (&l2, "application/vnd.oci.image.layer.v1.tar")],
    );
    lay.index(&[m]);
    // Same length, one byte of the file's content changed: still a good tar, but not the blob
    // the manifest names.
    let p = lay.dir.join("blobs/sha256").join(sha(&l2));
    let mut data = std::fs::read(&p).unwrap();
    let at = data.windows(7).position(|w| w == b"welcome").unwrap();
    data[at] = b'W';
    std::fs::write(&p, &data).unwrap();
    let spool = tmp.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let e = read_tree(&lay.dir, SourceKind::Oci, &opts(&spool))
        .unwrap_err()
        .to_string();
    assert!(!e.contains('\n'));
    assert!(
        e.contains(&format!(
            "blob sha256:{}: its content has digest sha256:{}",
            sha(&l2),
            sha(&data)
        )),
        "{e}"
    );
    assert!(spool_is_empty(&spool), "{e}");

    // A corrupt compressed layer fails in the decompressor, naming the layer.
    let p = lay.dir.join("blobs/sha256").join(sha(&l1));
    let mut z = std::fs::read(&p).unwrap();
    let n = z.len();
    z[n - 5] ^= 0x40;
    std::fs::write(&p, &z).unwrap();
    let e = read_tree(&lay.dir, SourceKind::Oci, &opts(&spool))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("layer sha256:{}", sha(&l1))), "{e}");
    assert!(spool_is_empty(&spool), "{e}");
}

#[test]
fn an_index_without_the_platform_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (l1, _) = two_layers(tmp.path());
    let lay = Layout::new(tmp.path().join("oci"));
    let m = lay.image(
        "arm64",
        &[(&l1, "application/vnd.oci.image.layer.v1.tar+gzip")],
    );
    lay.index(&[m]);
    let spool = tmp.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let e = read_tree(&lay.dir, SourceKind::Oci, &opts(&spool))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no image for linux/amd64 (it has: linux/arm64)"),
        "{e}"
    );
    assert!(e.contains("oci"), "{e}");
    assert!(spool_is_empty(&spool), "{e}");

    // A digest that would name a path outside blobs/ is refused before anything is opened.
    let bad = serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:../../../../etc/passwd", "size": 10,
        "platform": {"architecture": "amd64", "os": "linux"}});
    lay.index(&[bad]);
    let e = read_tree(&lay.dir, SourceKind::Oci, &opts(&spool))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a sha256:<64 hex> digest"), "{e}");
}

/// Peak memory of reading a big tarball: `MKOMI_RSS_TAR=x.tar /usr/bin/time -v
/// target/release/deps/tree_inputs-* --ignored rss_probe`.
#[test]
#[ignore]
fn rss_probe() {
    let Some(path) = std::env::var_os("MKOMI_RSS_TAR") else {
        return;
    };
    let spool = tempfile::tempdir().unwrap();
    let t = read(Path::new(&path), spool.path());
    println!("{} entries", t.len());
}

/// One PAX record, `"%d %s=%s\n"`, its length counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 2;
    let mut len = body + 1;
    while format!("{len} ").len() + body != len {
        len += 1;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// The PAX records of `kv`, concatenated (the data of an `x` or `g` header).
fn pax(kv: &[(&str, &[u8])]) -> Vec<u8> {
    kv.iter().flat_map(|(k, v)| pax_record(k, v)).collect()
}

#[test]
fn a_pax_size_near_2_64_is_refused() {
    // A size whose padding would overflow: the directory's "data" hides a whole member, which
    // a wrapped skip would read as the next header.
    let hidden = archive(&[(b"smuggled", b'0', b"evil", b"")]);
    let mut bytes = archive(&[(
        b"././@PaxHeader",
        b'x',
        &pax(&[("size", u64::MAX.to_string().as_bytes())]),
        b"",
    )]);
    bytes.truncate(bytes.len() - 1024);
    bytes.extend(ustar(b"d/", b'5', 0, b""));
    bytes.extend(hidden);
    let e = tar_error(&bytes);
    assert!(e.contains("PAX size"), "{e}");
}

/// Reads `bytes` as a tar that must be good.
fn tar_tree(bytes: &[u8]) -> Tree {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("good.tar");
    std::fs::write(&path, bytes).unwrap();
    let spool = tmp.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    read_tree(&path, SourceKind::Tar, &opts(&spool)).unwrap()
}

#[test]
fn global_headers_set_only_owner_and_time() {
    let g = pax(&[
        ("path", b"evil"),
        ("linkpath", b"/etc/shadow"),
        ("SCHILY.xattr.user.g", b"v"),
        ("uid", b"1234"),
        ("mtime", b"1700000000.5"),
    ]);
    let t = tar_tree(&archive(&[
        (b"pax_global_header", b'g', &g, b""),
        (b"a", b'0', b"aaa", b""),
        (b"b", b'2', b"", b"a"),
    ]));
    assert_eq!(paths(&t), ["/", "/a", "/b"]);
    let a = t.get(&TreePath::parse(b"a").unwrap()).unwrap();
    assert!(a.xattrs.is_empty(), "{:?}", a.xattrs);
    assert_eq!(
        (a.meta.uid, a.meta.mtime, a.meta.mtime_nsec),
        (1234, 1_700_000_000, 500_000_000)
    );
    let Kind::File(d) = &a.kind else { panic!() };
    assert_eq!(bytes(d), b"aaa");
    let b = t.get(&TreePath::parse(b"b").unwrap()).unwrap();
    assert!(
        matches!(&b.kind, Kind::Symlink(l) if l == b"a"),
        "{:?}",
        b.kind
    );
    assert_eq!(b.meta.uid, 1234);
}

#[test]
fn extended_headers_are_capped_in_total() {
    let big = pax(&[("comment", &vec![b'c'; 600 << 10])]);
    // Two local headers for one member: 1.2 MiB in all.
    let e = tar_error(&archive(&[
        (b"x1", b'x', &big, b""),
        (b"x2", b'x', &big, b""),
        (b"a", b'0', b"a", b""),
    ]));
    assert!(e.contains("extended headers of over"), "{e}");
    // Global headers, each for its own member.
    let e = tar_error(&archive(&[
        (b"g1", b'g', &big, b""),
        (b"a", b'0', b"a", b""),
        (b"g2", b'g', &big, b""),
        (b"b", b'0', b"b", b""),
    ]));
    assert!(e.contains("global headers of over"), "{e}");
    // One each is fine.
    let t = tar_tree(&archive(&[
        (b"x1", b'x', &big, b""),
        (b"a", b'0', b"a", b""),
        (b"x2", b'x', &big, b""),
        (b"b", b'0', b"b", b""),
    ]));
    assert_eq!(paths(&t), ["/", "/a", "/b"]);
}

#[test]
fn a_nul_in_a_pax_link_target_is_refused() {
    for t in [b'2', b'1'] {
        let e = tar_error(&archive(&[
            (b"f", b'0', b"", b""),
            (b"x", b'x', &pax(&[("linkpath", b"f\0/etc/shadow")]), b""),
            (b"s", t, b"", b"f"),
        ]));
        assert!(e.contains("member s") && e.contains("NUL"), "{e}");
    }
}

/// Sets a header's checksum again after an edit.
fn resum(h: &mut [u8]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

#[test]
fn empty_sparse_extension_blocks_are_capped() {
    // An old GNU sparse member whose extension blocks list nothing but say another follows:
    // 60,000 of them (30 MB), more than the segment cap allows blocks for.
    let mut h = ustar(b"s", b'S', 0, b"");
    h[483..495].copy_from_slice(b"00000000000\0");
    h[482] = 1;
    resum(&mut h);
    let mut bytes = h;
    let mut ext = vec![0u8; 512];
    ext[504] = 1;
    for _ in 0..60_000 {
        bytes.extend_from_slice(&ext);
    }
    bytes.extend([0u8; 1024]);
    let e = tar_error(&bytes);
    assert!(
        e.contains("member s: too many sparse extension blocks"),
        "{e}"
    );
}

/// A layout of one amd64 image of a plain layer holding `motd`: the layout and the layer.
fn small_layout(tmp: &Path) -> (Layout, Vec<u8>) {
    let dir = tmp.join("l-motd");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("motd"), "welcome").unwrap();
    let l = layer(&dir, tmp, None);
    let lay = Layout::new(tmp.join("oci"));
    let m = lay.image("amd64", &[(&l, "application/vnd.oci.image.layer.v1.tar")]);
    lay.index(&[m]);
    (lay, l)
}

/// Reads the image at `path`, which must fail: the error, one line, the spool left empty.
fn image_error(path: &Path, spool: &Path) -> String {
    std::fs::create_dir_all(spool).unwrap();
    let e = read_tree(path, SourceKind::Oci, &opts(spool))
        .unwrap_err()
        .to_string();
    assert!(!e.contains('\n'), "{e}");
    assert!(spool_is_empty(spool), "{e}");
    e
}

#[test]
fn symlinked_and_special_layout_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (lay, l) = small_layout(tmp.path());
    // The good read's spool is the caller's; the failed ones' go elsewhere.
    let good = tmp.path().join("spool-good");
    std::fs::create_dir(&good).unwrap();
    let spool = tmp.path().join("spool");
    assert!(
        read(&lay.dir, &good)
            .get(&TreePath::parse(b"motd").unwrap())
            .is_some()
    );
    let blob = lay.dir.join("blobs/sha256").join(sha(&l));
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::rename(&blob, &elsewhere).unwrap();
    // A layer symlinked to a file with the right bytes: still refused (it could as well be
    // /dev/zero).
    std::os::unix::fs::symlink(&elsewhere, &blob).unwrap();
    let e = image_error(&lay.dir, &spool);
    assert!(
        e.contains(&format!("blobs/sha256/{} is a symlink", sha(&l))),
        "{e}"
    );
    // A FIFO would block the read.
    std::fs::remove_file(&blob).unwrap();
    run(Command::new("mkfifo").arg(&blob));
    let e = image_error(&lay.dir, &spool);
    assert!(
        e.contains(&format!("blobs/sha256/{} is not a regular file", sha(&l))),
        "{e}"
    );
    std::fs::remove_file(&blob).unwrap();
    std::fs::rename(&elsewhere, &blob).unwrap();
    // index.json too.
    let index = lay.dir.join("index.json");
    std::fs::rename(&index, tmp.path().join("index.json")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("index.json"), &index).unwrap();
    let e = image_error(&lay.dir, &spool);
    assert!(e.contains("index.json is a symlink"), "{e}");
}

#[test]
fn index_fan_out_is_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let (lay, _) = small_layout(tmp.path());
    let spool = tmp.path().join("spool");
    let it = "application/vnd.oci.image.index.v1+json";
    // Four levels, each listing the next 30 times: 810,000 index reads if each were followed.
    let mut next: Vec<serde_json::Value> = Vec::new();
    for _ in 0..4 {
        let i = serde_json::json!({"schemaVersion": 2, "mediaType": it, "manifests": next});
        let (d, s) = lay.blob(i.to_string().as_bytes());
        next = vec![serde_json::json!({"mediaType": it, "digest": d, "size": s}); 30];
    }
    lay.index(&next);
    let start = std::time::Instant::now();
    let e = image_error(&lay.dir, &spool);
    assert!(
        e.contains("no image for linux/amd64 (it has: no platform listed)"),
        "{e}"
    );
    assert!(start.elapsed().as_secs() < 5, "{:?}", start.elapsed());
    // Too many descriptors in all.
    let m = serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", "0".repeat(64)), "size": 1,
        "platform": {"architecture": "arm64", "os": "linux"}});
    lay.index(&vec![m; 2000]);
    let e = image_error(&lay.dir, &spool);
    assert!(e.contains("over 1024 descriptors"), "{e}");
}

#[test]
fn strings_from_the_image_are_escaped_and_cut_in_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let (lay, l) = small_layout(tmp.path());
    let spool = tmp.path().join("spool");
    let long = format!("linux\n{}", "x".repeat(5000));
    let m = serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", "0".repeat(64)), "size": 1,
        "platform": {"architecture": "arm64", "os": long}});
    let many: Vec<_> = (0..100)
        .map(|i| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", "0".repeat(64)), "size": 1,
            "platform": {"architecture": format!("a{i}"), "os": "linux"}})
        })
        .collect();
    let mut all = vec![m];
    all.extend(many);
    lay.index(&all);
    let e = image_error(&lay.dir, &spool);
    assert!(e.contains("linux\\nxxx"), "{e}");
    assert!(e.contains("and 69 more"), "{e}");
    assert!(e.len() < 1000, "{} bytes: {e}", e.len());
    // A layer media type.
    let mt = format!("application/x\n{}", "y".repeat(5000));
    let m = lay.image("amd64", &[(&l, &mt)]);
    lay.index(&[m]);
    let e = image_error(&lay.dir, &spool);
    assert!(
        e.contains("unsupported media type application/x\\nyyy"),
        "{e}"
    );
    assert!(e.len() < 1000, "{} bytes: {e}", e.len());
}

#[test]
fn oci_layers_are_checked_against_the_config_diff_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let (lay, l) = small_layout(tmp.path());
    let spool = tmp.path().join("spool");
    let wrong = format!("sha256:{}", "0".repeat(64));
    let m = lay.image_with(
        "amd64",
        &[(&l, "application/vnd.oci.image.layer.v1.tar")],
        vec![wrong.clone()],
    );
    lay.index(&[m]);
    let e = image_error(&lay.dir, &spool);
    assert!(
        e.contains(&format!(
            "blob {wrong}: layer sha256:{} has diff_id sha256:{}",
            sha(&l),
            sha(&l)
        )),
        "{e}"
    );
    // One per layer.
    let m = lay.image_with(
        "amd64",
        &[(&l, "application/vnd.oci.image.layer.v1.tar")],
        vec![],
    );
    lay.index(&[m]);
    let e = image_error(&lay.dir, &spool);
    assert!(
        e.contains("the config lists 0 diff_ids for 1 layers"),
        "{e}"
    );
}
