#!/usr/bin/env python3
"""Regenerate the committed seed corpora of mkomi's fuzz targets (fuzz/seeds/TARGET/).

Usage: fuzz/make-seeds.py [E2FS_CORPUS_DIR]

Needs qemu-img and qemu-io, sgdisk, mkfs.fat and mtools, mkfs.ext4, mkntfs (the tools the test
suite uses; ntfs-3g and root for the populated NTFS seed), and fixtures/make-hostile.py. With E2FS_CORPUS_DIR (made by
fixtures/make-e2fs-corpus.sh), a few small damaged ext4 images from e2fsprogs' test suite are
added to the ext4 seeds.

Disks for the table, fat, ext4 and inspect targets are written in the harness's sparse form
(fuzz/src/lib.rs, MemSource::parse): "MKFZ", the virtual size, then the non-zero pieces, so
that a FAT32 or ext4 volume of many MiB is a seed of a few KiB. UUIDs, volume IDs and most times
are fixed, but some timestamps of the FAT and ext4 volumes still change from one run to the next.
"""

import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SEEDS = os.path.join(HERE, "seeds")
ENV = dict(os.environ, E2FSPROGS_FAKE_TIME="1700000000", SOURCE_DATE_EPOCH="1700000000",
           MTOOLS_SKIP_CHECK="1")


def run(*args, cwd=None):
    p = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"make-seeds: {' '.join(args)} failed: {p.stderr.strip()}")


def out(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def sparse(data, size=None, gap=0):
    """The sparse form of a disk: its non-zero 512-byte sectors, joined across short gaps."""
    size = len(data) if size is None else size
    pieces = []
    sector = 512
    i = 0
    n = len(data)
    while i < n:
        if not any(data[i:i + sector]):
            i += sector
            continue
        start = i
        end = i + sector
        while end < n:
            nxt = end
            while nxt < n and nxt - end < gap and not any(data[nxt:nxt + sector]):
                nxt += sector
            if nxt < n and nxt - end <= gap and any(data[nxt:nxt + sector]):
                end = nxt + sector
            else:
                break
        end = min(end, n)
        pieces.append((start, data[start:end].rstrip(b"\0") or data[start:end]))
        i = end
    b = bytearray(b"MKFZ" + struct.pack("<Q", size))
    for off, chunk in pieces:
        b += struct.pack("<QI", off, len(chunk)) + chunk
    return bytes(b)


def read(path):
    with open(path, "rb") as f:
        return f.read()


# --- small binaries ---------------------------------------------------------------------------

def elf(bits, big, machine, length=None):
    hdr = 52 if bits == 32 else 64
    b = bytearray(max(hdr, length or hdr))
    b[:4] = b"\x7fELF"
    b[4] = 1 if bits == 32 else 2
    b[5] = 2 if big else 1
    b[6] = 1
    e = ">" if big else "<"
    struct.pack_into(e + "HHI", b, 16, 2, machine, 1)
    struct.pack_into(e + "H", b, 40 if bits == 32 else 52, hdr)
    return bytes(b)


def pe(machine, magic, subsystem, lfanew=0x80, length=None):
    """An MZ stub and PE headers up to Subsystem: what identify reads of an EFI binary."""
    b = bytearray(max(lfanew + 24 + 96, length or 0))
    b[:2] = b"MZ"
    struct.pack_into("<I", b, 0x3C, lfanew)
    b[lfanew:lfanew + 4] = b"PE\0\0"
    opt_size = 240 if magic == 0x20B else 224
    struct.pack_into("<HHIIIHH", b, lfanew + 4, machine, 1, 0, 0, 0, opt_size, 0x22)
    struct.pack_into("<H", b, lfanew + 24, magic)
    struct.pack_into("<H", b, lfanew + 24 + 68, subsystem)
    return bytes(b)


def binaries():
    seeds = {
        "elf64-x86_64": elf(64, False, 62),
        "elf32-i386": elf(32, False, 3, 64),
        "elf64-aarch64": elf(64, False, 183),
        "elf64-s390x-be": elf(64, True, 22),
        "elf32-arm": elf(32, False, 40),
        "elf-truncated": elf(64, False, 62)[:30],
        "pe32plus-efi-x64": pe(0x8664, 0x20B, 10),
        "pe32-efi-ia32": pe(0x14C, 0x10B, 10),
        "pe32plus-aa64-driver": pe(0xAA64, 0x20B, 11),
        "pe-windows-gui": pe(0x8664, 0x20B, 2),
        "mz-only": b"MZ" + bytes(62),
        "script": b"#!/bin/sh\necho hello\n",
    }
    for name, data in seeds.items():
        out("binary", name, data)


# --- os-release, manifests, templates, store input -----------------------------------------------

def texts():
    osr = {
        "debian": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
                  'VERSION_ID="12"\nVERSION="12 (bookworm)"\nVERSION_CODENAME=bookworm\n'
                  'ID=debian\nHOME_URL="https://www.debian.org/"\n',
        "ubuntu": 'NAME="Ubuntu"\nVERSION="24.04 LTS (Noble Numbat)"\nID=ubuntu\nID_LIKE=debian\n'
                  "PRETTY_NAME='Ubuntu 24.04 LTS'\nVERSION_ID=\"24.04\"\nVARIANT_ID=server\n",
        "escapes": 'NAME="A \\"quoted\\" \\$name\\\\"\nID=x\n# comment\n  \nBAD LINE\n'
                   'VERSION_ID=\'1.0\'\nPRETTY_NAME="unclosed\nBUILD_ID=abc\\\n',
        "empty-values": "ID=\nNAME=\"\"\nIMAGE_ID=img\nIMAGE_VERSION=2\nSUPPORT_END=2030-01-01\n",
    }
    for name, data in osr.items():
        out("os_release", name, data.encode())

    snap = {"DeleteOnTermination": True, "Device": "/dev/sda1", "Filename": "sda1.qcow2.gz",
            "Iops": None,
            "PreSignedUrl": "https://oos.eu-west-2.outscale.com/b/sda1.qcow2.gz"
                            "?X-Amz-Date=20261127T070000Z&X-Amz-Expires=604800",
            "Size": 10737418240, "VolumeType": "standard"}
    data = {"DeleteOnTermination": False, "Device": "/dev/sdb", "Filename": "sdb.raw.gz",
            "Iops": 600, "PreSignedUrl": None, "Size": 1073741824, "VolumeType": "io1"}
    image = {"Name": "web", "Description": None, "Architecture": "x86_64", "Type": "machine",
             "ProductTypes": ["0001"], "Public": False, "Snapshots": [snap, data]}
    m = {"Version": 1, "Image": image}
    out("export_manifest", "two-snapshots.json", json.dumps(m, indent=2).encode())
    one = json.loads(json.dumps(m))
    one["Image"]["Snapshots"] = [dict(snap, PreSignedUrl="s3://bucket/sda1.qcow2.gz")]
    one["Image"]["Architecture"] = "i386"
    out("export_manifest", "one-s3.json", json.dumps(one).encode())
    bad = json.loads(json.dumps(m))
    bad["Image"]["Snapshots"][1]["Device"] = "/dev/sda1"
    bad["Image"]["Snapshots"][1]["Filename"] = "../x.raw.gz"
    out("export_manifest", "bad-device-name.json", json.dumps(bad).encode())

    for t in sorted(os.listdir(os.path.join(ROOT, "templates"))):
        if t.endswith(".toml"):
            shutil.copy(os.path.join(ROOT, "templates", t), os.path.join(SEEDS, "template", t))
    legacy = (
        '[image]\nname = "legacy-${version}"\narchitecture = "i386"\n'
        'boot-modes = ["legacy", "uefi"]\nformat = "raw"\n\n[disk]\nsize = "512M"\n'
        'table = "mbr"\n\n[[partition]]\ntype = "linux"\nlabel = "root"\ncontent = "image"\n'
        'image = "host:${rootfs}"\nsize = "100%"\n\n[bootloader]\ntype = "grub"\n'
        'kernel = "root:/boot/vmlinuz-?.*"\n'
    )
    out("template", "variables.toml", legacy.encode())

    store = (
        "ami-0123abcd\nsnap-0123abcd\n"
        "sha256-4m:" + "0123456789abcdef" * 4 + "\n"
        "123456789012\nname=web*,arch=x86_64,state=available,tag:env=prod\n"
        "/var/tmp/disk.qcow2\nweb-*-2026\n"
    )
    out("store", "ids-and-filters", store.encode())
    out("store", "glob", b"*a*b*\naxb\nab\nba\n\xc3\xa9*\n")
    out("store", "bad", b"ami-0123ABCD\nsnap-\ntag:=x\nstate=running,\n=,,\n")


# --- partition tables ---------------------------------------------------------------------------

def gpt(sector, entries, parts, disk_sectors, backup=True, protective=True):
    """A GPT disk (UEFI 2.10 5.3), raw bytes; parts: (type GUID bytes, first, last, name)."""
    esize = 128
    array_sectors = (entries * esize + sector - 1) // sector
    disk = bytearray(disk_sectors * sector)
    if protective:
        struct.pack_into("<B3sB3sII", disk, 446, 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1,
                         min(disk_sectors - 1, 0xFFFFFFFF))
    disk[510:512] = b"\x55\xaa"
    array = bytearray(entries * esize)
    for i, (tguid, first, last, name) in enumerate(parts):
        uniq = bytes([i + 1] * 16)
        struct.pack_into("<16s16sQQQ72s", array, i * esize, tguid, uniq, first, last, 0,
                         name.encode("utf-16-le"))
    acrc = zlib.crc32(array)
    last_lba = disk_sectors - 1

    def header(my, alt, array_lba):
        h = bytearray(92)
        struct.pack_into("<8sIIIIQQQQ16sQIII", h, 0, b"EFI PART", 0x10000, 92, 0, 0, my, alt,
                         2 + array_sectors, last_lba - 1 - array_sectors, b"mkomi-fuzz-disk!",
                         array_lba, entries, esize, acrc)
        struct.pack_into("<I", h, 16, zlib.crc32(h))
        return h

    disk[sector:sector + 92] = header(1, last_lba, 2)
    disk[2 * sector:2 * sector + len(array)] = array
    if backup:
        b_array = last_lba - array_sectors
        disk[b_array * sector:b_array * sector + len(array)] = array
        disk[last_lba * sector:last_lba * sector + 92] = header(last_lba, 1, b_array)
    return bytes(disk)


ESP = bytes.fromhex("28732ac11ff8d211ba4b00a0c93ec93b")
LINUX = bytes.fromhex("af3dc60f838472478e793d69d8477de4")
ROOT_X64 = bytes.fromhex("e3bc684fcde8b14d96e7fbcaf984b709")


def mbr(records, boot_code=False, size=64 << 10):
    disk = bytearray(size)
    if boot_code:
        disk[:4] = b"\xfa\x31\xc0\x8e"
    for i, (boot, kind, first, count) in enumerate(records):
        struct.pack_into("<B3sB3sII", disk, 446 + 16 * i, boot, b"\0\0\0", kind, b"\0\0\0", first,
                         count)
    disk[510:512] = b"\x55\xaa"
    return bytes(disk)


def tables(tmp):
    out("table", "gpt-4-entries", gpt(512, 4, [(ESP, 6, 9, "ESP"), (ROOT_X64, 10, 15, "root")],
                                      20))
    out("table", "gpt-4k-sectors",
        sparse(gpt(4096, 4, [(LINUX, 6, 7, "data")], 12)))
    out("table", "gpt-no-backup", gpt(512, 4, [(LINUX, 6, 8, "x")], 12, backup=False))
    out("table", "mbr-two", sparse(mbr([(0x80, 0x83, 1, 40), (0, 0x0C, 41, 60)], boot_code=True)))
    out("table", "mbr-extended", sparse(mbr([(0, 0x83, 1, 40), (0, 0x05, 41, 60), (0, 0xEF, 101, 20)])))
    # sgdisk's own: 128 entries, a hybrid MBR.
    disk = os.path.join(tmp, "sg.img")
    with open(disk, "wb") as f:
        f.truncate(4 << 20)
    run("sgdisk", "-U", "11111111-2222-3333-4444-555555555555", "-n", "1:2048:+1M", "-t", "1:ef00",
        "-c", "1:ESP", "-n", "2:0:0", "-t", "2:8304", "-u", "1:R", "-u", "2:R", disk)
    run("sgdisk", "-u", "1:11111111-0000-0000-0000-000000000001",
        "-u", "2:11111111-0000-0000-0000-000000000002", disk)
    out("table", "sgdisk-gpt", sparse(read(disk)))
    run("sgdisk", "-h", "1", disk)
    out("table", "sgdisk-hybrid", sparse(read(disk)))
    grub_seeds(tmp)


def grub_seeds(tmp):
    """GRUB's boot.img in the MBR pointing at the first sector of a real core.img (diskboot.img,
    its block list set as mkomi build sets it), in the gap of an MBR disk and in the BIOS boot
    partition of a GPT disk: the path of src/inspect/legacy.rs. Only core.img's first sector is
    kept (the reader checks its block list, not the sectors it lists), so the seeds stay small.
    Needs grub-pc-bin."""
    core = os.path.join(tmp, "core.img")
    run("grub-mkimage", "-O", "i386-pc", "-p", "/boot/grub", "-o", core, "biosdisk", "part_gpt",
        "part_msdos", "ext2")
    diskboot = bytearray(read(core)[:512])
    sectors = (len(read(core)) + 511) // 512
    boot = read("/usr/lib/grub/i386-pc/boot.img")

    def place(disk, lba):
        disk[:440] = boot[:440]
        struct.pack_into("<Q", disk, 0x5c, lba)
        disk[0x64] = 0xFF
        disk[0x66:0x68] = b"\x90\x90"
        first = bytearray(diskboot)
        struct.pack_into("<QH", first, 500, lba + 1, sectors - 1)
        disk[lba * 512:lba * 512 + 512] = first

    d = bytearray(mbr([(0x80, 0x83, 2048, 2048)], size=4096 * 512))
    place(d, 1)
    out("table", "grub-mbr-gap", sparse(bytes(d)))
    bios_boot = bytes.fromhex("4861682149646f6e744e656564454649")
    d = bytearray(gpt(512, 4, [(bios_boot, 34, 2047, "bios"), (ROOT_X64, 2048, 4095, "root")],
                      4200))
    place(d, 34)
    out("table", "grub-bios-boot", sparse(bytes(d)))


# --- file systems ---------------------------------------------------------------------------------

def tree(base):
    os.makedirs(os.path.join(base, "etc"))
    os.makedirs(os.path.join(base, "boot"))
    os.makedirs(os.path.join(base, "usr/lib"))
    os.makedirs(os.path.join(base, "sbin"))
    os.makedirs(os.path.join(base, "a/b/c/d"))
    with open(os.path.join(base, "usr/lib/os-release"), "w") as f:
        f.write('NAME="Debian GNU/Linux"\nID=debian\nVERSION_ID="12"\n')
    os.symlink("../usr/lib/os-release", os.path.join(base, "etc/os-release"))
    with open(os.path.join(base, "boot/vmlinuz-6.1.0-1-amd64"), "wb") as f:
        f.write(b"MZ" + bytes(510))
    with open(os.path.join(base, "boot/initrd.img-6.1.0-1-amd64"), "wb") as f:
        f.write(b"\x1f\x8b" + bytes(100))
    with open(os.path.join(base, "sbin/init"), "wb") as f:
        f.write(elf(64, False, 62, 3000))
    os.symlink("/sbin/init", os.path.join(base, "bin-sh-link"))
    os.symlink("x" * 200, os.path.join(base, "a/long-link"))
    with open(os.path.join(base, "a/b/c/d/file.txt"), "w") as f:
        f.write("deep\n" * 1000)
    for i in range(40):
        with open(os.path.join(base, f"a/b/name-{i:03}-with-a-longer-name"), "w") as f:
            f.write(str(i))
    # Fixed times, which mkfs.ext4 -d copies.
    for d, dirs, files in os.walk(base, topdown=False):
        for n in dirs + files:
            os.utime(os.path.join(d, n), (1700000000, 1700000000), follow_symlinks=False)
    os.utime(base, (1700000000, 1700000000))


# e2fsprogs images that are open findings, kept in fuzz/regressions/ext4/ instead.
OPEN_FINDINGS = {"f_badsymlinks.img"}


def ext4_images(tmp, e2fs):
    base = os.path.join(tmp, "tree")
    tree(base)
    variants = {
        "ext4-4k": (["-t", "ext4", "-b", "4096"], 4),
        "ext4-1k-no-journal": (["-t", "ext4", "-b", "1024", "-O", "^has_journal"], 2),
        "ext4-64bit-csum-journal": (["-t", "ext4", "-b", "1024", "-O", "64bit,metadata_csum",
                                     "-J", "size=1"], 8),
        "ext2": (["-t", "ext2", "-b", "1024"], 1),
        "ext3": (["-t", "ext3", "-b", "1024", "-J", "size=1"], 4),
    }
    made = {}
    for name, (opts, mib) in variants.items():
        img = os.path.join(tmp, name + ".img")
        with open(img, "wb") as f:
            f.truncate(mib << 20)
        run("mkfs.ext4", "-q", "-F", "-U", "6d6b6f6d-6900-4000-8000-000000000001",
            "-E", "hash_seed=6d6b6f6d-6900-4000-8000-000000000002,root_owner=0:0,"
                  "lazy_itable_init=0",
            "-N", "128", *opts, "-d", base, img)
        made[name] = img
        out("ext4", name, sparse(read(img)))
    if e2fs:
        picked = 0
        for name in sorted(os.listdir(e2fs)):
            path = os.path.join(e2fs, name)
            if not name.endswith(".img") or not os.path.isfile(path):
                continue
            # An open finding (fuzz/regressions/OPEN): as a seed it would stop every run.
            if name in OPEN_FINDINGS:
                continue
            if os.path.getsize(path) > 64 << 20:
                continue
            s = sparse(read(path))
            # Small ones only, of several kinds: bad extents, directories, journals, symlinks.
            if len(s) <= 24 << 10 and any(k in name for k in (
                    "extent", "dir", "journal", "symlink", "htree", "badsymlink", "j_")):
                out("ext4", "e2fsprogs-" + name[:-4], s)
                picked += 1
                if picked == 8:
                    break
    return made


def fat_images(tmp):
    made = {}
    efi = pe(0x8664, 0x20B, 10, length=1024)
    src = os.path.join(tmp, "fat-files")
    os.makedirs(src)
    with open(os.path.join(src, "BOOTX64.EFI"), "wb") as f:
        f.write(efi)
    with open(os.path.join(src, "grubx64.efi"), "wb") as f:
        f.write(efi)
    with open(os.path.join(src, "A Long File Name With Spaces.txt"), "w") as f:
        f.write("hello\n" * 300)
    for fat, mib, extra in (("12", 1, []), ("16", 8, ["-s", "1"]), ("32", 40, ["-s", "1"])):
        img = os.path.join(tmp, f"fat{fat}.img")
        run("mkfs.fat", "-C", "-F", fat, "-i", "6d6b6f6d", "-n", "MKOMI FAT", *extra, img,
            str(mib * 1024))
        i = f"-i{img}"
        run("mmd", i, "::EFI", "::EFI/BOOT", "::EFI/debian", "::EFI/Microsoft",
            "::EFI/Microsoft/Boot", "::loader", "::loader/entries")
        run("mcopy", "-m", i, os.path.join(src, "BOOTX64.EFI"), "::EFI/BOOT/BOOTX64.EFI")
        run("mcopy", "-m", i, os.path.join(src, "grubx64.efi"), "::EFI/debian/grubx64.efi")
        run("mcopy", "-m", i, os.path.join(src, "BOOTX64.EFI"), "::EFI/Microsoft/Boot/bootmgfw.efi")
        run("mcopy", "-m", i, os.path.join(src, "A Long File Name With Spaces.txt"),
            "::loader/entries/A Long File Name With Spaces.txt")
        made[fat] = img
        out("fat", f"fat{fat}", sparse(read(img)))
    return made


NTFS_FILES = r"""
set -euo pipefail
img=$1; mnt=$2
ntfs3g_mount "$img" "$mnt" -o compression,streams_interface=xattr
trap 'ntfs3g_unmount "$img" "$mnt"' EXIT
cd "$mnt"
mkdir -p Windows/System32/config many c
echo hello > Windows/System32/ntoskrnl.exe
for i in $(seq 1 40); do echo "$i" > "many/f$i.dll"; done
setfattr -n user.Zone.Identifier -v x many/f1.dll
setfattr -n system.ntfs_attrib_be -v 0x00000810 c
seq 1 3000 > c/z.txt
ln -s Windows/System32 link
truncate -s 100000 sparse.bin
echo end >> sparse.bin
cd /
trap - EXIT
ntfs3g_unmount "$img" "$mnt"
"""


def with_ntfs3g(script):
    """`script` with fixtures/ntfs-3g.sh sourced first (ntfs3g_mount; ntfs3g_unmount, which
    waits for ntfs-3g to have written the image)."""
    lib = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../fixtures/ntfs-3g.sh")
    return ". " + shlex.quote(os.path.normpath(lib)) + "\n" + script


def ntfs_images(tmp):
    """2 MiB NTFS volumes of 512-byte clusters: empty (mkntfs), and, as root with ntfs-3g, one
    with a 40-entry directory (an index record), an ADS, an LZNT1-compressed file, an Interix
    symlink and a sparse file. The $LogFile's pages of 0xFF, which no reader looks at, are
    zeroed so that the seeds stay small."""
    def seed(img):
        data = bytearray(read(img))
        for i in range(0, len(data), 512):
            if data[i:i + 512] == b"\xff" * 512:
                data[i:i + 512] = bytes(512)
        return sparse(bytes(data))
    img = os.path.join(tmp, "ntfs-empty.img")
    with open(img, "wb") as f:
        f.truncate(2 << 20)
    run("mkntfs", "-F", "-Q", "-q", "-c", "512", "-L", "MKOMI", img)
    out("ntfs", "mkntfs-empty", seed(img))
    if os.geteuid() != 0 or not shutil.which("ntfs-3g"):
        print("make-seeds: not root or no ntfs-3g: the populated NTFS seed is left out")
        return
    img = os.path.join(tmp, "ntfs-files.img")
    with open(img, "wb") as f:
        f.truncate(2 << 20)
    run("mkntfs", "-F", "-Q", "-q", "-c", "512", "-L", "MKOMI", img)
    run("bash", "-c", with_ntfs3g(NTFS_FILES), "ntfs-files", img, os.path.join(tmp, "ntfs-mnt"))
    out("ntfs", "ntfs-3g-files", seed(img))


def disks(tmp, ext4, fat):
    """Whole disks for `inspect`: a GPT disk with an ESP and an ext4 root, an MBR disk."""
    esp = read(fat["12"])
    root = read(ext4["ext4-1k-no-journal"])
    s = 512
    esp_first = 34
    esp_last = esp_first + len(esp) // s - 1
    root_first = esp_last + 1
    root_last = root_first + len(root) // s - 1
    total = root_last + 34
    d = bytearray(gpt(s, 128, [(ESP, esp_first, esp_last, "ESP"),
                                (ROOT_X64, root_first, root_last, "root")], total))
    d[esp_first * s:esp_first * s + len(esp)] = esp
    d[root_first * s:root_first * s + len(root)] = root
    out("inspect", "gpt-esp-root", sparse(bytes(d)))
    m = bytearray(mbr([(0x80, 0x83, 2048, len(root) // s)], boot_code=True, size=(1 << 20) +
                      len(root)))
    m[1 << 20:] = root
    out("inspect", "mbr-ext4", sparse(bytes(m)))
    out("inspect", "bare-ext3", sparse(read(ext4["ext3"])))


# --- qcow2 -------------------------------------------------------------------------------------

def qcow2(tmp):
    def path(n):
        return os.path.join(tmp, n)

    def make(name, size, *opts):
        run("qemu-img", "create", "-q", "-f", "qcow2", *opts, path(name), size)
        return path(name)

    v3 = make("v3.qcow2", "1M", "-o", "cluster_size=512,compat=1.1")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 1k", "-c", "write -P 0xcd 600k 2k",
        "-c", "write -z 4k 2k", v3)
    v2 = make("v2.qcow2", "1M", "-o", "cluster_size=512,compat=0.10")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1k", "-c", "write -P 0x22 900k 1k", v2)
    raw = path("src.raw")
    with open(raw, "wb") as f:
        f.write(b"compressible " * 400)
        f.truncate(64 << 10)
    run("qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096",
        raw, path("compressed.qcow2"))
    with open(path("base.raw"), "wb") as f:
        f.write(bytes([0xA5]) * (64 << 10))
    ov = make("overlay-raw.qcow2", "64K", "-o", "cluster_size=512", "-b", "base.raw", "-F", "raw")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x77 1k 1k", ov)
    make("self-loop.qcow2", "64K", "-u", "-o", "cluster_size=512", "-b", "top.qcow2", "-F",
         "qcow2")
    ext = make("extended-l2.qcow2", "256K", "-o", "cluster_size=16k,extended_l2=on")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x99 4k 4k", ext)
    for n in ("v3.qcow2", "v2.qcow2", "compressed.qcow2", "overlay-raw.qcow2",
              "self-loop.qcow2", "extended-l2.qcow2"):
        out("qcow2", n, read(path(n)))
    hostile = path("hostile")
    run(sys.executable, os.path.join(ROOT, "fixtures/make-hostile.py"), hostile)
    for n in sorted(os.listdir(hostile)):
        size = os.path.getsize(os.path.join(hostile, n))
        if n != "expected.tsv" and 0 < size <= 4096:
            out("qcow2", "hostile-" + n, read(os.path.join(hostile, n)))


def hives(tmp):
    """Registry hives for `regf`, made by hivex (Debian's python3 with python3-hivex)."""
    for state in ("generalized", "not-generalized"):
        d = os.path.join(tmp, "hives-" + state)
        os.makedirs(d)
        run("/usr/bin/python3", os.path.join(ROOT, "fixtures/make-hives.py"), d, state)
        out("regf", "system-" + state, read(os.path.join(d, "SYSTEM")))
        if state == "generalized":
            out("regf", "software-" + state, read(os.path.join(d, "SOFTWARE")))


def main():
    e2fs = sys.argv[1] if len(sys.argv) > 1 else None
    if os.path.isdir(SEEDS):
        shutil.rmtree(SEEDS)
    for t in ("qcow2", "table", "fat", "ext4", "ntfs", "inspect", "binary", "os_release",
              "regf", "export_manifest", "template", "store"):
        os.makedirs(os.path.join(SEEDS, t))
    with tempfile.TemporaryDirectory() as tmp:
        binaries()
        texts()
        tables(tmp)
        ext4 = ext4_images(tmp, e2fs)
        fat = fat_images(tmp)
        ntfs_images(tmp)
        disks(tmp, ext4, fat)
        qcow2(tmp)
        hives(tmp)
    for t in sorted(os.listdir(SEEDS)):
        files = os.listdir(os.path.join(SEEDS, t))
        size = sum(os.path.getsize(os.path.join(SEEDS, t, f)) for f in files)
        print(f"{t}: {len(files)} seeds, {size} bytes")


if __name__ == "__main__":
    main()
