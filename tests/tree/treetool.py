#!/usr/bin/env python3
"""Helpers of tests/tree_build.rs: make source trees, images and bad archives, and compare an
ext4 file system with the tree it was built from, reading the file system only through
e2fsprogs' debugfs (never through mkomi's own reader).

  treetool.py rich DIR              a small tree with every kind of entry and attribute
  treetool.py hard DIR              100,000 files (50,000 in one directory), a 5 GiB sparse
                                    file, 255-byte names, a 4,000-byte path, non-UTF-8 names,
                                    hard links across directories
  treetool.py layers DIR            DIR/lower, DIR/upper (with whiteouts), DIR/expected
  treetool.py oci OUT TAR...        an OCI image layout (one gzip layer per TAR, amd64)
      [--arch ARCH] [--bad-digest] [--archive]
  treetool.py docker OUT TAR...     a `docker save` archive
  treetool.py badtar KIND OUT       an archive GNU tar would not write (KIND: dotdot, absolute,
                                    through-symlink, truncated)
  treetool.py compare SRC FS WORK   compare the ext4 image FS with the tree SRC
      [--epoch N] [--owner U:G] [--no-dump NAME]... [--ignore PATH]... [--seconds]

`compare` prints one line per difference (at most 40) and exits 1 when there is any.
Paths are handled as bytes throughout: names need not be UTF-8.
"""

import gzip
import hashlib
import io
import json
import os
import re
import stat
import subprocess
import sys
import tarfile

EPOCH = 1700000000
BASE = 1600000000  # mtimes of the trees: before EPOCH, except where a test wants one after


def xattr_cap_net_raw():
    """security.capability for cap_net_raw+ep, as setcap writes it (VFS_CAP_REVISION_2,
    linux/capability.h: magic_etc, then permitted/inheritable low and high words)."""
    import struct

    VFS_CAP_REVISION_2 = 0x02000000
    VFS_CAP_FLAGS_EFFECTIVE = 0x000001
    CAP_NET_RAW = 13
    return struct.pack(
        "<5I", VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE, 1 << CAP_NET_RAW, 0, 0, 0
    )


def write(path, data, mode=0o644, uid=0, gid=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def noise(n, seed):
    """n bytes that do not compress, the same for the same seed."""
    out = bytearray()
    h = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        h = hashlib.sha256(h).digest()
        out += h
    return bytes(out[:n])


def set_times(root, future=()):
    """Gives every entry an explicit mtime (with nanoseconds), deepest first so that creating
    entries does not move a directory's time afterwards. Paths in `future` get a time after
    EPOCH (to be clamped)."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            entries.append(os.path.join(dirpath, n))
    entries.sort(key=lambda p: -p.count(b"/"))
    for i, p in enumerate(entries):
        rel = os.path.relpath(p, root)
        if rel in future:
            ns = (EPOCH + 86400 * 365 * 10) * 10**9 + 5
        else:
            ns = (BASE + i * 7) * 10**9 + (i * 1000003) % 10**9
        os.utime(p, ns=(ns, ns), follow_symlinks=False)
    os.utime(root, ns=(BASE * 10**9, BASE * 10**9))


def make_rich(root):
    """Every kind of entry, owners other than root, setuid/setgid/sticky, symlinks, hard links
    across directories, a FIFO, devices, xattrs (security.capability included), a sparse file."""
    root = os.fsencode(root)
    os.makedirs(root, exist_ok=True)
    os.chmod(root, 0o755)
    j = lambda *p: os.path.join(root, *[os.fsencode(x) for x in p])
    write(j("etc/hostname"), b"rich\n")
    write(j("etc/secret.conf"), b"key = value\n", 0o640, 0, 42)
    write(j("usr/bin/tool"), noise(200_000, 1), 0o755)
    write(j("usr/bin/su"), noise(5000, 2), 0o4755)
    write(j("usr/bin/wall"), noise(3000, 3), 0o2755, 0, 5)
    write(j("usr/bin/ping"), noise(7000, 4), 0o755)
    os.setxattr(j("usr/bin/ping"), b"security.capability", xattr_cap_net_raw())
    write(j("usr/share/doc/empty"), b"")
    write(j("usr/share/doc/one"), b"1")
    write(j("usr/share/doc/block"), noise(4096, 5))
    write(j("usr/share/doc/long-xattr"), b"x")
    os.setxattr(j("usr/share/doc/long-xattr"), b"user.long", noise(300, 6))
    os.setxattr(j("usr/share/doc/long-xattr"), b"user.short", b"short value")
    os.setxattr(j("usr/share/doc"), b"user.dir", b"on a directory")
    # Hard links across directories: three names for one inode.
    os.makedirs(j("usr/sbin"), exist_ok=True)
    os.makedirs(j("opt/x"), exist_ok=True)
    os.link(j("usr/bin/tool"), j("usr/sbin/tool-hard"))
    os.link(j("usr/bin/tool"), j("opt/x/tool"))
    os.symlink(b"usr/bin", j("bin"))
    os.symlink(b"/usr/bin/tool", j("etc/alternative"))
    os.symlink(b"/nowhere/" + b"d" * 100, j("etc/dangling"))
    os.symlink(b"x" * 200, j("etc/slow-link"))  # over 60 bytes: stored in a block
    os.makedirs(j("tmp"))
    os.chmod(j("tmp"), 0o1777)
    os.makedirs(j("home/alice/.config"))
    write(j("home/alice/notes"), b"alice's\n", 0o600, 1000, 1000)
    write(j("home/alice/.config/app"), b"cfg\n", 0o644, 1000, 1000)
    os.chown(j("home/alice/.config"), 1000, 1000)
    os.chown(j("home/alice"), 1000, 1000)
    os.chmod(j("home/alice"), 0o700)
    os.lchown(j("etc/dangling"), 1000, 1001)
    os.makedirs(j("run"))
    os.mkfifo(j("run/fifo"), 0o620)
    os.makedirs(j("dev"))
    os.mknod(j("dev/null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(j("dev/sda"), 0o660 | stat.S_IFBLK, os.makedev(8, 0))
    os.mknod(j("dev/big"), 0o600 | stat.S_IFCHR, os.makedev(300, 70000))
    os.chown(j("dev/sda"), 0, 6)
    # A sparse file: 64 MiB with data at the start, in the middle and at the end.
    os.makedirs(j("var"), exist_ok=True)
    with open(j("var/sparse.img"), "wb") as f:
        f.truncate(64 << 20)
        for off, seed in ((0, 7), (10 << 20, 8), ((64 << 20) - 5000, 9)):
            f.seek(off)
            f.write(noise(5000, seed))
    write(j("var/future"), b"from the future\n")
    set_times(root, future={b"var/future"})


def make_hard(root):
    """The issue's hard cases in one tree."""
    root = os.fsencode(root)
    os.makedirs(root, exist_ok=True)
    os.chmod(root, 0o755)
    j = lambda *p: os.path.join(root, *p)
    # 50,000 entries in one directory, and 50,000 more spread over 500 directories.
    big = j(b"big")
    os.makedirs(big)
    for i in range(50_000):
        with open(os.path.join(big, b"f%05d" % i), "wb") as f:
            f.write(b"%d\n" % i)
    for d in range(500):
        sub = j(b"many", b"d%03d" % d)
        os.makedirs(sub)
        for i in range(100):
            with open(os.path.join(sub, b"g%03d" % i), "wb") as f:
                f.write(b"%d/%d\n" % (d, i))
    # A 5 GiB sparse file with a few runs of data.
    os.makedirs(j(b"sparse"))
    with open(j(b"sparse", b"5g.img"), "wb") as f:
        f.truncate(5 << 30)
        for off, n, seed in ((0, 4096, 1), (1 << 30, 1 << 20, 2), ((5 << 30) - 12345, 12345, 3)):
            f.seek(off)
            f.write(noise(n, seed))
    # Names of 255 bytes, a 4,000-byte path.
    names = j(b"names")
    os.makedirs(names)
    write(os.path.join(names, b"n" * 255), b"255\n")
    os.makedirs(os.path.join(names, b"d" * 255))
    write(os.path.join(names, b"d" * 255, b"\xc3\xa9" * 127 + b"e"), b"utf-8 255\n")
    os.symlink(b"t" * 255, os.path.join(names, b"l" * 255))
    deep = os.path.join(names, b"deep")
    comps = [b"%c" % (65 + k) * 249 for k in range(15)]  # 15 x 250 = 3,750 bytes
    d = os.path.join(deep, *comps)
    os.makedirs(d)
    rel = os.path.relpath(os.path.join(d, b"x"), root)
    last = b"z" * (4001 - len(rel))
    write(os.path.join(d, last), b"deep\n")
    assert len(os.path.relpath(os.path.join(d, last), root)) == 4000
    # Names that are not UTF-8.
    odd = j(b"odd")
    os.makedirs(odd)
    for n in (b"\xff\xfe", b"latin1-\xe9t\xe9", b"back\\slash", b"sp ace", b"\x01ctl"):
        write(os.path.join(odd, n), n)
    os.makedirs(os.path.join(odd, b"dir-\x80"))
    write(os.path.join(odd, b"dir-\x80", b"in"), b"in\n", 0o600, 7, 8)
    # Hard links across directories, one group in the big directory.
    os.link(os.path.join(big, b"f00000"), os.path.join(odd, b"link-to-f00000"))
    os.link(os.path.join(odd, b"\xff\xfe"), j(b"many", b"d000", b"link-\xff"))
    os.link(os.path.join(odd, b"\xff\xfe"), j(b"link-top"))
    set_times(root)


def make_layers(base):
    """Two layers and what applying them must give: DIR/lower, DIR/upper (whiteouts
    `.wh.gone`, `a/.wh.keep2` and the opaque marker `opq/.wh..wh..opq`; OCI image-spec,
    layer.md "Whiteouts"), and DIR/expected, written by hand. Every path's mtime is a function
    of the path, so a directory in two layers has one time."""
    base = os.fsencode(base)
    trees = {
        b"lower": {
            b"a/keep": b"keep\n",
            b"a/keep2": b"keep2\n",
            b"gone/x": b"x\n",
            b"gone/sub/y": b"y\n",
            b"opq/old1": b"old1\n",
            b"opq/sub/old2": b"old2\n",
            b"etc/f": b"lower f\n",
            b"replaced": b"lower\n",
        },
        b"upper": {
            b".wh.gone": b"",
            b"a/.wh.keep2": b"",
            b"a/added": b"added\n",
            b"opq/.wh..wh..opq": b"",
            b"opq/new": b"new\n",
            b"replaced": b"upper\n",
        },
        b"expected": {
            b"a/keep": b"keep\n",
            b"a/added": b"added\n",
            b"opq/new": b"new\n",
            b"etc/f": b"lower f\n",
            b"replaced": b"upper\n",
        },
    }
    for name, files in trees.items():
        root = os.path.join(base, name)
        os.makedirs(root)
        os.chmod(root, 0o755)
        for rel, data in files.items():
            write(os.path.join(root, rel), data)
        entries = [root]
        for dirpath, dirnames, filenames in os.walk(root):
            entries += [os.path.join(dirpath, n) for n in dirnames + filenames]
        entries.sort(key=lambda p: -p.count(b"/"))
        for p in entries:
            rel = os.path.relpath(p, root)
            h = int.from_bytes(hashlib.sha256(rel).digest()[:4], "little")
            ns = (BASE + h % 10**6) * 10**9 + h % 10**9
            os.utime(p, ns=(ns, ns), follow_symlinks=False)


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_oci(out, tars, arch="amd64", bad_digest=False, archive=False, os_name="linux"):
    """An OCI image layout (image-spec v1.1: oci-layout, index.json, blobs/sha256/) with one
    gzip layer per tar, written by hand: no daemon, no umoci. `bad_digest` alters one byte of
    the last layer after its digest is taken (a valid gzip stream of another tar). `archive`
    packs the layout into a tar (what `skopeo copy oci-archive:` writes)."""
    out = os.fsencode(out)
    layout = out + b".d" if archive else out
    blobs = os.path.join(layout, b"blobs", b"sha256")
    os.makedirs(blobs)

    def blob(data):
        d = sha256(data)
        with open(os.path.join(blobs, d[7:].encode()), "wb") as f:
            f.write(data)
        return {"digest": d, "size": len(data)}

    layers, diff_ids = [], []
    for t in tars:
        with open(t, "rb") as f:
            raw = f.read()
        diff_ids.append(sha256(raw))
        gz = gzip.compress(raw, mtime=0)
        d = blob(gz)
        d["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
        layers.append(d)
    if bad_digest:
        last = layers[-1]
        path = os.path.join(blobs, last["digest"][7:].encode())
        with open(path, "rb") as f:
            raw = bytearray(gzip.decompress(f.read()))
        # A valid tar of the same size with other content: one byte of the first non-empty
        # regular file's data changes, so only the digest can tell.
        with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as t:
            m = next(m for m in t.getmembers() if m.isfile() and m.size > 0)
        raw[m.offset_data] ^= 1
        raw = bytes(raw)
        gz = gzip.compress(raw, mtime=0)
        with open(path, "wb") as f:
            f.write(gz)
        last["size"] = len(gz)
    config = json.dumps(
        {
            "architecture": arch,
            "os": os_name,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {},
        }
    ).encode()
    c = blob(config)
    c["mediaType"] = "application/vnd.oci.image.config.v1+json"
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": c,
            "layers": layers,
        }
    ).encode()
    m = blob(manifest)
    m["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
    m["platform"] = {"architecture": arch, "os": os_name}
    with open(os.path.join(layout, b"index.json"), "wb") as f:
        f.write(
            json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": [m],
                }
            ).encode()
        )
    with open(os.path.join(layout, b"oci-layout"), "wb") as f:
        f.write(b'{"imageLayoutVersion":"1.0.0"}')
    if archive:
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
            for name in sorted(os.listdir(os.fsdecode(layout))):
                t.add(os.path.join(os.fsdecode(layout), name), arcname=name)


def make_docker(out, tars, arch="amd64"):
    """A `docker save` archive: manifest.json, <config hex>.json, <layer hex>/layer.tar."""
    with tarfile.open(os.fsencode(out), "w", format=tarfile.PAX_FORMAT) as t:

        def add(name, data):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 0
            t.addfile(ti, io.BytesIO(data))

        layers, diff_ids = [], []
        for p in tars:
            with open(p, "rb") as f:
                raw = f.read()
            d = sha256(raw)
            diff_ids.append(d)
            layers.append(d[7:] + "/layer.tar")
            add(d[7:] + "/layer.tar", raw)
        config = json.dumps(
            {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
        ).encode()
        chex = hashlib.sha256(config).hexdigest()
        add(chex + ".json", config)
        add(
            "manifest.json",
            json.dumps([{"Config": chex + ".json", "RepoTags": ["t:latest"], "Layers": layers}]).encode(),
        )


def make_badtar(kind, out):
    """Archives GNU tar refuses to write, made with Python's tarfile."""
    buf = io.BytesIO()

    def member(t, name, data=b"x", type_=tarfile.REGTYPE, link=""):
        ti = tarfile.TarInfo(name)
        ti.type = type_
        ti.linkname = link
        ti.mtime = BASE
        if type_ == tarfile.DIRTYPE:
            ti.mode = 0o755
            t.addfile(ti)
        elif type_ == tarfile.SYMTYPE:
            t.addfile(ti)
        else:
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        member(t, "etc", type_=tarfile.DIRTYPE)
        member(t, "etc/ok", b"fine\n")
        if kind == "dotdot":
            member(t, "etc/../../escape", b"out\n")
        elif kind == "absolute":
            member(t, "/etc/passwd-abs", b"abs\n")
        elif kind == "through-symlink":
            member(t, "link", type_=tarfile.SYMTYPE, link="/tmp")
            member(t, "link/planted", b"through\n")
        elif kind == "truncated":
            member(t, "big", noise(100_000, 1))
        else:
            raise SystemExit(f"unknown bad tar {kind}")
    data = buf.getvalue()
    if kind == "truncated":
        data = data[: len(data) // 2]
    with open(out, "wb") as f:
        f.write(data)


# ---------------------------------------------------------------------------------------------
# compare


def debugfs(fs, commands, work, name):
    """Runs debugfs with `commands` (one per line) on fs; returns stdout as a list of
    (command, output bytes), split at the `debugfs: CMD` lines debugfs echoes for -f."""
    cmdfile = os.path.join(work, os.fsencode(name) + b".cmds")
    with open(cmdfile, "wb") as f:
        f.write(b"".join(c + b"\n" for c in commands))
    env = dict(os.environ, DEBUGFS_PAGER="__none__", PAGER="__none__")
    out = subprocess.run(
        ["debugfs", "-f", cmdfile, fs], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    if out.returncode != 0:
        raise SystemExit(f"debugfs failed: {out.stderr.decode(errors='replace')}")
    err = [l for l in out.stderr.splitlines() if l and not l.startswith(b"debugfs ")]
    if err:
        raise SystemExit("debugfs: " + b"\n".join(err[:10]).decode(errors="replace"))
    parts = []
    for chunk in out.stdout.split(b"debugfs: ")[1:]:
        cmd, _, body = chunk.partition(b"\n")
        parts.append((cmd, body))
    if len(parts) != len(commands):
        raise SystemExit(f"debugfs answered {len(parts)} of {len(commands)} commands")
    return parts


def fs_walk(fs, work):
    """Every path of the file system: {path bytes: (ino, mode, uid, gid, size or None)}, read
    with `ls -p <ino>` one directory level at a time."""
    entries = {b"": (2, 0o40000, None, None, None)}
    level = [(b"", 2)]
    n = 0
    while level:
        n += 1
        parts = debugfs(fs, [b"ls -p <%d>" % ino for _, ino in level], work, f"ls{n}")
        nxt = []
        for (path, _), (_, body) in zip(level, parts):
            for line in body.split(b"\n"):
                if not line:
                    continue
                f = line.split(b"/")
                if len(f) != 8 or f[0] != b"" or f[7] != b"":
                    raise SystemExit(f"unparsable ls -p line {line!r}")
                ino, mode, uid, gid, name = int(f[1]), int(f[2], 8), int(f[3]), int(f[4]), f[5]
                if ino == 0:
                    continue  # an empty slot (debugfs lists them)
                if name in (b".", b".."):
                    if name == b"." and path == b"":
                        entries[b""] = (ino, mode, uid, gid, None)
                    continue
                p = path + b"/" + name if path else name
                size = int(f[6]) if f[6] else None
                entries[p] = (ino, mode, uid, gid, size)
                if stat.S_ISDIR(mode):
                    nxt.append((p, ino))
        level = nxt
    return entries


STAT_TIME = re.compile(rb"^\s*mtime: 0x([0-9a-f]{8})(?::([0-9a-f]{8}))?", re.M)
STAT_DEV = re.compile(rb"Device major/minor number: (\d+):(\d+)")
STAT_LINKS = re.compile(rb"Links: (\d+)")
STAT_XATTR = re.compile(rb"^  (\S+) \((\d+)\)", re.M)


def parse_stat(body):
    m = STAT_TIME.search(body)
    if not m:
        raise SystemExit(f"no mtime in {body[:300]!r}")
    lo = int(m.group(1), 16)
    sec = lo - (1 << 32) if lo & 0x80000000 else lo
    nsec = 0
    if m.group(2):
        extra = int(m.group(2), 16)
        sec += (extra & 3) << 32
        nsec = extra >> 2
    dev = STAT_DEV.search(body)
    xattrs = {}
    if b"Extended attributes:" in body:
        section = body.split(b"Extended attributes:\n", 1)[1]
        for line in section.split(b"\n"):
            if not line.startswith(b"  "):
                break
            mm = STAT_XATTR.match(line)
            if mm:
                xattrs[mm.group(1)] = int(mm.group(2))
    return {
        "mtime": (sec, nsec),
        "dev": (int(dev.group(1)), int(dev.group(2))) if dev else None,
        "links": int(STAT_LINKS.search(body).group(1)),
        "xattrs": xattrs,
    }


def source_model(src, epoch, owner, ignore):
    """{path: record} of the source tree; hard-link groups by (st_dev, st_ino)."""
    model = {}
    for dirpath, dirnames, filenames in os.walk(src):
        for n in dirnames + filenames + ([b"."] if dirpath == src else []):
            full = os.path.join(dirpath, n) if n != b"." else src
            rel = os.path.relpath(full, src)
            rel = b"" if rel == b"." else rel
            if rel in ignore:
                continue
            st = os.lstat(full)
            ns = st.st_mtime_ns
            if ns > epoch * 10**9:
                ns = epoch * 10**9
            rec = {
                "type": stat.S_IFMT(st.st_mode),
                "perm": stat.S_IMODE(st.st_mode),
                "uid": owner[0] if owner else st.st_uid,
                "gid": owner[1] if owner else st.st_gid,
                "mtime": (ns // 10**9, ns % 10**9),
                "xattrs": {
                    k.encode(): os.getxattr(full, k, follow_symlinks=False)
                    for k in os.listxattr(full, follow_symlinks=False)
                },
                "inode": (st.st_dev, st.st_ino),
                "nlink": st.st_nlink,
                "full": full,
            }
            if stat.S_ISREG(st.st_mode):
                rec["size"] = st.st_size
                rec["sparse"] = st.st_blocks * 512 < st.st_size
            elif stat.S_ISLNK(st.st_mode):
                rec["target"] = os.readlink(full)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                rec["dev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            model[rel] = rec
    return model


def data_runs(path):
    """The data regions of a host file (SEEK_DATA/SEEK_HOLE)."""
    runs = []
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            runs.append((start, end))
            pos = end
    return runs


EXTENT_ROW = re.compile(
    rb"^\s*\d+/\s*\d+\s+\d+/\s*\d+\s+(\d+)\s+-\s+(\d+)\s+(\d+)\s+-\s+(\d+)\s+(\d+)\s*(Uninit)?\s*$"
)


def check_sparse(rel, rec, ino, fs, bs, work, diffs):
    """The file's extents (`dump_extents -l`) must map only blocks that hold data in the source,
    every source block that is not zeros must be mapped, and the mapped blocks, read straight
    from the image, must hold the source's bytes. The file is never read whole."""
    (_, body), = debugfs(fs, [b"dump_extents -l <%d>" % ino], work, "ex")
    mapped = []
    for line in body.split(b"\n"):
        m = EXTENT_ROW.match(line)
        if m and not m.group(6):
            l0, l1, p0 = int(m.group(1)), int(m.group(2)), int(m.group(3))
            mapped.append((l0, l1, p0))
    runs = data_runs(rec["full"])
    in_data = lambda blk: any(s <= blk * bs and (blk + 1) * bs <= e + bs - 1 for s, e in runs)
    total = 0
    with open(rec["full"], "rb") as src, open(fs, "rb") as img:
        for l0, l1, p0 in mapped:
            total += l1 - l0 + 1
            for k in range(l1 - l0 + 1):
                blk = l0 + k
                if not in_data(blk):
                    diffs.append(f"{show(rel)}: block {blk} is mapped but a hole in the source")
                    return
                src.seek(blk * bs)
                want = src.read(bs)
                img.seek((p0 + k) * bs)
                got = img.read(len(want))
                if got != want:
                    diffs.append(f"{show(rel)}: block {blk} differs from the source")
                    return
        covered = set()
        for l0, l1, _ in mapped:
            covered.update(range(l0, l1 + 1))
        for s, e in runs:
            for blk in range(s // bs, (e + bs - 1) // bs):
                if blk in covered:
                    continue
                src.seek(blk * bs)
                if src.read(bs).strip(b"\0"):
                    diffs.append(f"{show(rel)}: block {blk} holds data in the source, a hole in the image")
                    return
    data_blocks = sum((e - s + bs - 1) // bs + 1 for s, e in runs)
    if total > data_blocks:
        diffs.append(f"{show(rel)}: {total} blocks mapped for {data_blocks} blocks of data")
    return total


def show(p):
    return repr(p)[2:-1] if p else "/"


def compare(src, fs, work, epoch, owner, no_dump, ignore, seconds=False):
    src = os.fsencode(src)
    work = os.fsencode(work)
    os.makedirs(work, exist_ok=True)
    diffs = []
    want = source_model(src, epoch, owner, ignore)
    got = fs_walk(fs, work)
    out = subprocess.run(["dumpe2fs", "-h", fs], capture_output=True).stdout
    m = re.search(rb"^Block size:\s+(\d+)", out, re.M)
    bs = int(m.group(1))
    # lost+found is the file system's own, when the source has none.
    if b"lost+found" not in want and b"lost+found" in got:
        lf = got.pop(b"lost+found")
        if stat.S_IMODE(lf[1]) != 0o700 or not stat.S_ISDIR(lf[1]):
            diffs.append(f"lost+found: mode {lf[1]:o}")
    for p in ignore:
        got.pop(p, None)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    for p in missing[:10]:
        diffs.append(f"{show(p)}: in the source, not in the file system")
    for p in extra[:10]:
        diffs.append(f"{show(p)}: in the file system, not in the source")
    # Every inode's stat, once per inode.
    inos = sorted({v[0] for v in got.values()})
    stats = {}
    for (cmd, body) in debugfs(fs, [b"stat <%d>" % i for i in inos], work, "stat"):
        stats[int(cmd[len(b"stat <") : -1])] = parse_stat(body)
    # rdump everything but what must not be read whole.
    dump = os.path.join(work, b"dump")
    os.makedirs(dump)
    tops = sorted(p for p in got if p and b"/" not in p and p not in no_dump and p != b"lost+found")
    debugfs(fs, [b'rdump "/' + t + b'" ' + dump for t in tops], work, "rdump")
    # Content and link targets through the dump; everything else from ls -p and stat.
    checked = {"files": 0, "dirs": 0, "symlinks": 0, "devices": 0, "fifos": 0, "xattrs": 0, "sparse": 0}
    xattr_reads = []
    for p in sorted(set(want) & set(got)):
        w = want[p]
        ino, mode, uid, gid, size = got[p]
        st = stats[ino]
        what = show(p)
        if stat.S_IFMT(mode) != w["type"]:
            diffs.append(f"{what}: type {stat.S_IFMT(mode):o}, source {w['type']:o}")
            continue
        if stat.S_IMODE(mode) != w["perm"]:
            diffs.append(f"{what}: mode {stat.S_IMODE(mode):04o}, source {w['perm']:04o}")
        if (uid, gid) != (w["uid"], w["gid"]) and p != b"":
            diffs.append(f"{what}: owner {uid}:{gid}, source {w['uid']}:{w['gid']}")
        if (st["mtime"] != w["mtime"]) if not seconds else (st["mtime"][0] != w["mtime"][0]):
            diffs.append(f"{what}: mtime {st['mtime']}, source {w['mtime']}")
        if set(st["xattrs"]) != set(w["xattrs"]) or any(
            st["xattrs"][k] != len(v) for k, v in w["xattrs"].items()
        ):
            diffs.append(f"{what}: xattrs {st['xattrs']}, source { {k: len(v) for k, v in w['xattrs'].items()} }")
        elif w["xattrs"]:
            for k in w["xattrs"]:
                out = os.path.join(work, b"xattr-%d" % len(xattr_reads))
                xattr_reads.append((p, k, out))
        dumped = os.path.join(dump, p)
        t = w["type"]
        if t == stat.S_IFREG:
            checked["files"] += 1
            if size != w["size"]:
                diffs.append(f"{what}: size {size}, source {w['size']}")
            if st["links"] != w["nlink"]:
                diffs.append(f"{what}: {st['links']} links, source {w['nlink']}")
            if w["sparse"]:
                checked["sparse"] += 1
                check_sparse(p, w, ino, fs, bs, work, diffs)
            if p.split(b"/")[0] not in no_dump:
                with open(w["full"], "rb") as a, open(dumped, "rb") as b:
                    if hashlib.sha256(a.read()).digest() != hashlib.sha256(b.read()).digest():
                        diffs.append(f"{what}: content differs")
        elif t == stat.S_IFDIR:
            checked["dirs"] += 1
        elif t == stat.S_IFLNK:
            checked["symlinks"] += 1
            if os.readlink(dumped) != w["target"]:
                diffs.append(f"{what}: target {os.readlink(dumped)!r}, source {w['target']!r}")
            if size != len(w["target"]):
                diffs.append(f"{what}: size {size}, target {len(w['target'])} bytes")
        elif t in (stat.S_IFCHR, stat.S_IFBLK):
            checked["devices"] += 1
            if st["dev"] != w["dev"]:
                diffs.append(f"{what}: device {st['dev']}, source {w['dev']}")
        elif t == stat.S_IFIFO:
            checked["fifos"] += 1
        if len(diffs) > 40:
            break
    # xattr values, byte for byte.
    if xattr_reads:
        cmds = [b'ea_get -f ' + out + b' <%d> ' % got[p][0] + k for p, k, out in xattr_reads]
        debugfs(fs, cmds, work, "xattrs")
        for p, k, out in xattr_reads:
            checked["xattrs"] += 1
            with open(out, "rb") as f:
                if f.read() != want[p]["xattrs"][k]:
                    diffs.append(f"{show(p)}: xattr {k!r} differs")
    # Hard-link groups: the same sets of names share an inode.
    def groups(model_items):
        g = {}
        for p, key in model_items:
            g.setdefault(key, set()).add(p)
        return {frozenset(v) for v in g.values() if len(v) > 1}

    common = set(want) & set(got)
    gw = groups((p, want[p]["inode"]) for p in common if want[p]["type"] != stat.S_IFDIR)
    gg = groups((p, got[p][0]) for p in common if want[p]["type"] != stat.S_IFDIR)
    if gw != gg:
        diffs.append(f"hard links: file system {sorted(map(sorted, gg))[:5]}, source {sorted(map(sorted, gw))[:5]}")
    for d in diffs[:40]:
        print(d)
    summary = ", ".join(f"{v} {k}" for k, v in checked.items())
    print(f"compared {len(common)} paths ({summary}); {len(gw)} hard-link groups; {len(diffs)} differences")
    return 1 if diffs else 0


def main(argv):
    cmd = argv[1]
    if cmd == "rich":
        make_rich(argv[2])
    elif cmd == "hard":
        make_hard(argv[2])
    elif cmd == "layers":
        make_layers(argv[2])
    elif cmd in ("oci", "docker"):
        args = argv[2:]
        opts = {"arch": "amd64", "bad_digest": False, "archive": False}
        pos = []
        i = 0
        while i < len(args):
            if args[i] == "--arch":
                opts["arch"] = args[i + 1]
                i += 2
                continue
            if args[i] == "--bad-digest":
                opts["bad_digest"] = True
            elif args[i] == "--archive":
                opts["archive"] = True
            else:
                pos.append(args[i])
            i += 1
        if cmd == "oci":
            make_oci(pos[0], pos[1:], **opts)
        else:
            make_docker(pos[0], pos[1:], arch=opts["arch"])
    elif cmd == "badtar":
        make_badtar(argv[2], argv[3])
    elif cmd == "compare":
        args = argv[2:]
        epoch, owner, no_dump, ignore, pos = EPOCH, None, set(), set(), []
        # --seconds: mtimes compared to the second (for file systems made by mke2fs -d, which
        # drops nanoseconds: how this script itself is checked).
        seconds = "--seconds" in args
        args = [a for a in args if a != "--seconds"]
        i = 0
        while i < len(args):
            a = args[i]
            if a == "--epoch":
                epoch = int(args[i + 1])
            elif a == "--owner":
                u, g = args[i + 1].split(":")
                owner = (int(u), int(g))
            elif a == "--no-dump":
                no_dump.add(os.fsencode(args[i + 1]))
            elif a == "--ignore":
                ignore.add(os.fsencode(args[i + 1]))
            else:
                pos.append(a)
                i += 1
                continue
            i += 2
        sys.exit(compare(pos[0], pos[1], pos[2], epoch, owner, no_dump, ignore, seconds))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
