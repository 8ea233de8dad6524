//! Checks of a built disk with the real tools: the partition table as util-linux (`partx`,
//! `blkid`) and GPT fdisk (`sgdisk`) read it, the file systems with `fsck.fat` and `e2fsck`.
//! Every check reads a raw image (`qemu-img convert` first): the tools read no qcow2.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Sector size of every disk mkomi writes.
pub const SECTOR: u64 = 512;

/// One partition as `partx` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// Partition number, from 1.
    pub nr: u32,
    /// First sector.
    pub start: u64,
    /// Length in sectors.
    pub sectors: u64,
    /// The type: a GUID on GPT (lowercase), `0x83`-style on MBR.
    pub kind: String,
    /// GPT attributes or the MBR boot indicator (`0x80`), as partx prints them.
    pub flags: String,
    /// `gpt` or `dos`.
    pub scheme: String,
    /// The GPT partition name (empty on MBR).
    pub name: String,
    /// The partition UUID: GPT's unique GUID, or Linux's `SSSSSSSS-NN` on MBR.
    pub uuid: String,
}

impl Part {
    /// Byte offset.
    pub fn offset(&self) -> u64 {
        self.start * SECTOR
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.sectors * SECTOR
    }

    /// Never empty: partx lists no empty slot.
    pub fn is_empty(&self) -> bool {
        self.sectors == 0
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Runs a tool; returns (exit code, stdout + stderr).
fn run(program: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("{program} could not run: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

/// Converts `image` (any format qemu-img reads) to a sparse raw file `raw`.
pub fn to_raw(image: &Path, raw: &Path) {
    let (code, text) = run("qemu-img", &["convert", "-O", "raw", s(image), s(raw)]);
    assert_eq!(
        code,
        Some(0),
        "qemu-img convert {}: {text}",
        image.display()
    );
}

/// The partition table type libblkid finds (`gpt`, `dos`), probing the raw bytes (`-p`: no
/// cache).
pub fn pttype(raw: &Path) -> String {
    let (code, text) = run("blkid", &["-p", "-o", "value", "-s", "PTTYPE", s(raw)]);
    assert_eq!(code, Some(0), "blkid -p {}: {text}", raw.display());
    text.trim().to_owned()
}

/// Parses one line of `partx --pairs`: `KEY="value" KEY="value" ...`.
fn pairs(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = line.trim();
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim().to_owned();
        let after = &rest[eq + 2..];
        let end = after.find('"').unwrap_or(after.len());
        out.push((key, after[..end].to_owned()));
        rest = after.get(end + 1..).unwrap_or("");
    }
    out
}

/// The partitions util-linux's `partx` reads from the raw disk, in table order.
pub fn partitions(raw: &Path) -> Vec<Part> {
    let (code, text) = run(
        "partx",
        &[
            "--pairs",
            "--output",
            "NR,START,SECTORS,TYPE,FLAGS,SCHEME,NAME,UUID",
            s(raw),
        ],
    );
    assert_eq!(code, Some(0), "partx {}: {text}", raw.display());
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let kv = pairs(line);
            let get = |k: &str| {
                kv.iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| panic!("partx printed no {k} in {line:?}"))
            };
            let num = |k: &str| {
                get(k)
                    .parse::<u64>()
                    .unwrap_or_else(|e| panic!("partx {k} in {line:?}: {e}"))
            };
            Part {
                nr: u32::try_from(num("NR")).expect("partition number"),
                start: num("START"),
                sectors: num("SECTORS"),
                kind: get("TYPE").to_lowercase(),
                flags: get("FLAGS"),
                scheme: get("SCHEME"),
                name: get("NAME"),
                uuid: get("UUID").to_lowercase(),
            }
        })
        .collect()
}

/// Words in GPT fdisk's output that report something wrong: `Problem:`, `Warning!`,
/// `Caution:` and "Identified N problems!" (gpt.cc, `GPTData::Verify` and the loader), and what
/// the loader says of damaged or invalid headers.
const SGDISK_ALARMS: [&str; 7] = [
    "problem", "warning", "caution", "invalid", "mismatch", "corrupt", "damaged",
];

fn alarms(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| {
            let l = l.to_lowercase();
            SGDISK_ALARMS.iter().any(|w| l.contains(w))
        })
        .map(str::to_owned)
        .collect()
}

/// `sgdisk -v` on a GPT disk: "No problems found" and no warning or caution. sgdisk exits 0
/// even when it identifies problems, so its output is what is checked.
pub fn assert_sgdisk_clean(raw: &Path) {
    let (code, text) = run("sgdisk", &["-v", s(raw)]);
    assert_eq!(code, Some(0), "sgdisk -v {}: {text}", raw.display());
    assert!(
        text.contains("No problems found."),
        "sgdisk -v {}:\n{text}",
        raw.display()
    );
    let rest = text.replace("No problems found.", "");
    let bad = alarms(&rest);
    assert!(
        bad.is_empty(),
        "sgdisk -v {}: {bad:?}\n{text}",
        raw.display()
    );
}

/// `sgdisk -v` on an MBR disk, which GPT fdisk converts to GPT in memory: the only problem it
/// may report is the one that conversion makes when the last partition runs to the disk's end,
/// where a GPT would keep its 33-sector backup table (`GPTData::CheckGPTSize`); an overlap,
/// a partition past the end or anything else fails.
pub fn assert_sgdisk_mbr_view_clean(raw: &Path, parts: &[Part]) {
    let disk_sectors = std::fs::metadata(raw).expect("raw disk").len() / SECTOR;
    let (code, text) = run("sgdisk", &["-v", s(raw)]);
    assert_eq!(code, Some(0), "sgdisk -v {}: {text}", raw.display());
    assert!(
        text.contains("Found invalid GPT and valid MBR; converting MBR to GPT format"),
        "sgdisk does not read {} as an MBR disk:\n{text}",
        raw.display()
    );
    // 1 header sector + 32 sectors of 128 entries of 128 bytes (UEFI 2.10 §5.3).
    const BACKUP_SECTORS: u64 = 33;
    let last_end = parts.iter().map(|p| p.start + p.sectors).max().unwrap_or(0);
    let overlap = (last_end + BACKUP_SECTORS).saturating_sub(disk_sectors);
    let mut rest = text.replace(
        "Found invalid GPT and valid MBR; converting MBR to GPT format",
        "",
    );
    if overlap > 0 {
        let warning = format!(
            "Warning! Secondary partition table overlaps the last partition by\n{overlap} blocks!\n\
             You will need to delete this partition or resize it in another utility."
        );
        assert!(
            rest.contains(&warning),
            "sgdisk -v {}: expected only the backup-table overlap of {overlap} blocks:\n{text}",
            raw.display()
        );
        rest = rest.replace(&warning, "");
        assert!(
            rest.contains("Identified 1 problems!"),
            "sgdisk -v {}: more than the overlap:\n{text}",
            raw.display()
        );
        rest = rest.replace("Identified 1 problems!", "");
    } else {
        assert!(
            rest.contains("No problems found."),
            "sgdisk -v {}:\n{text}",
            raw.display()
        );
        rest = rest.replace("No problems found.", "");
    }
    let bad = alarms(&rest);
    assert!(
        bad.is_empty(),
        "sgdisk -v {}: {bad:?}\n{text}",
        raw.display()
    );
}

/// Checks of an MBR disk's own structure, read from sector 0 and compared with partx: the boot
/// signature 0x55 0xAA at byte 510, no GPT header at LBA 1, a non-zero disk signature at byte
/// 440 that partx's PARTUUIDs are made of (Linux's `SSSSSSSS-NN`, block/partitions/msdos.c),
/// partitions on 1 MiB boundaries from sector 2048 (the gap GRUB's core goes in), in order,
/// not overlapping, inside the disk, and exactly one active: partition `active` (1-based).
pub fn assert_mbr_sane(raw: &Path, parts: &[Part], active: u32) {
    let f = File::open(raw).expect("raw disk");
    let disk_sectors = f.metadata().expect("raw disk").len() / SECTOR;
    let mut head = [0u8; 1024];
    f.read_exact_at(&mut head, 0).expect("read sectors 0-1");
    assert_eq!(head[510..512], [0x55, 0xaa], "no MBR boot signature");
    assert_ne!(
        &head[512..520],
        b"EFI PART",
        "an MBR disk with a GPT header"
    );
    let sig = u32::from_le_bytes([head[440], head[441], head[442], head[443]]);
    assert_ne!(sig, 0, "no MBR disk signature");
    let mut next = 2048;
    for p in parts {
        assert_eq!(p.scheme, "dos", "{p:?}");
        assert_eq!(p.uuid, format!("{sig:08x}-{:02x}", p.nr), "{p:?}");
        assert_eq!(p.start % 2048, 0, "partition {} not on 1 MiB: {p:?}", p.nr);
        assert!(p.start >= next, "partition {} overlaps: {parts:?}", p.nr);
        assert!(p.sectors > 0, "{p:?}");
        next = p.start + p.sectors;
        assert!(
            next <= disk_sectors,
            "partition {} past the disk's end",
            p.nr
        );
        let is_active = p.flags == "0x80";
        assert!(
            is_active == (p.nr == active),
            "partition {} boot indicator {} (partition {active} should be the one active)",
            p.nr,
            p.flags
        );
        // The record's own boot indicator byte (446 + 16·(n-1)): partx agrees with the bytes.
        let rec = 446 + 16 * (p.nr as usize - 1);
        assert_eq!(head[rec] == 0x80, is_active, "record {} boot byte", p.nr);
    }
}

/// Copies `len` bytes at `offset` of `raw` into a new sparse file `dest` (all-zero MiBs are
/// skipped, not written).
pub fn extract(raw: &Path, offset: u64, len: u64, dest: &Path) -> PathBuf {
    let src = File::open(raw).expect("raw disk");
    let out = File::create(dest).expect("extract target");
    out.set_len(len).expect("set_len");
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], offset + at)
            .expect("read the partition");
        if buf[..n].iter().any(|&b| b != 0) {
            out.write_all_at(&buf[..n], at).expect("write");
        }
        at += n as u64;
    }
    dest.to_owned()
}

/// `fsck.fat -n` (dosfstools: check, never repair) finds nothing: exit 0, and its output is
/// only its version line and the summary `NAME: N files, U/T clusters`.
pub fn assert_fat_clean(image: &Path) {
    let (code, text) = run("fsck.fat", &["-n", s(image)]);
    assert_eq!(code, Some(0), "fsck.fat -n {}:\n{text}", image.display());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.starts_with("fsck.fat ")
                || (line.contains(" files, ") && line.ends_with(" clusters")),
            "fsck.fat -n {} says {line:?}:\n{text}",
            image.display()
        );
    }
}

/// The ext4 superblock at byte `offset` of `raw`: (volume label, file system bytes), after its
/// magic 0xEF53 (superblock at +1024; `s_magic` at 0x38, `s_blocks_count_lo` 0x4,
/// `s_log_block_size` 0x18, `s_volume_name` 0x78, `s_blocks_count_hi` 0x150 when INCOMPAT_64BIT
/// 0x80 is set in `s_feature_incompat` 0x60: kernel Documentation/filesystems/ext4/super.rst).
pub fn ext4_superblock(raw: &Path, offset: u64) -> (String, u64) {
    let f = File::open(raw).expect("raw disk");
    let mut sb = [0u8; 1024];
    f.read_exact_at(&mut sb, offset + 1024)
        .expect("read the superblock");
    assert_eq!(
        sb[0x38..0x3a],
        [0x53, 0xef],
        "no ext4 superblock at byte {offset}"
    );
    let le32 = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
    let lo = u64::from(le32(0x4));
    let hi = if le32(0x60) & 0x80 != 0 {
        u64::from(le32(0x150))
    } else {
        0
    };
    let block = 1024u64 << le32(0x18);
    let label = String::from_utf8_lossy(&sb[0x78..0x88])
        .trim_end_matches('\0')
        .to_owned();
    (label, ((hi << 32) | lo) * block)
}

/// `e2fsck -fn` (forced full check, no changes) on the ext4 file system at byte `offset` of
/// `raw` finds nothing: exit 0. The file system is read in place through unix_io's `offset=`
/// option (`DEVICE?offset=N`, e2fsprogs lib/ext2fs/unix_io.c), not copied out.
pub fn assert_ext4_clean(raw: &Path, offset: u64) {
    let dev = format!("{}?offset={offset}", s(raw));
    let (code, text) = run("e2fsck", &["-fn", &dev]);
    assert_eq!(code, Some(0), "e2fsck -fn {dev}:\n{text}");
    assert!(
        text.contains("Pass 5"),
        "e2fsck -fn {dev} did not run:\n{text}"
    );
}
