#!/usr/bin/env bash
# Side-by-side benchmark of `mkomi build` of a tree (`content = "tree"`: a tarball written as
# ext4 in-process) against doing the same by hand: `tar -x` as root, `mke2fs -t ext4 -d`, then
# `mkomi build` of the image. Also the ext4 step alone against `mke2fs -d`, and the peak RSS of a
# build of 100,000 small files. Everything is timed in ONE run on the same machine, in
# interleaved rounds, and reported as medians and ratios, because absolute times on shared
# machines mean little. See bench/README.md ("Trees").
#
# Environment (the same conventions as bench/run.sh and bench/build.sh):
#   MKOMI=path     use this binary instead of building with `cargo build --release --locked`
#   BENCH_DIR=dir  inputs, scratch and results (default /var/tmp/mkomi-bench; inputs are reused)
#   BENCH_TREE=dir the tree packed as /usr/share into tree.tar (default /usr/share)
#   RUNS=n         timed rounds (default 5); WARMUP=n warm-up rounds (default 1)
#   SMALL_FILES=n  files in the small-file tarball of the RSS row (default 100000)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ $(id -u) == 0 ]] || die "run as root: the by-hand side extracts the tarball with its owners (tar -x as root)"

# Every mkomi build of the same inputs is byte-identical (README, "Trees"); times in the trees
# later than this are clamped to it.
export SOURCE_DATE_EPOCH=$FS_EPOCH

# The boot files, as bench/build.sh puts them in its root file system, so the template's
# [bootloader] finds them in the tree.
KVER=6.1.0-bench
KERNEL_MIB=8
INITRD_MIB=30
EFI_HOST=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
EFI_FAKE_KIB=100

SMALL_FILES=${SMALL_FILES:-100000}
[[ $SMALL_FILES =~ ^[1-9][0-9]*$ ]] || die "SMALL_FILES must be a positive integer"
SMALL_PER_DIR=1000
# The issue's bounds: build ≤ 0.5× by hand, the ext4 step ≤ 1.0× mke2fs -d, peak RSS of a build
# of 100,000 files under 256 MiB.
MAX_BUILD=0.5
MAX_EXT4=1.0
RSS_MAX_KIB=$((256 * 1024))

# ---------------------------------------------------------------------------------------------
# Tools
for tool in tar qemu-img mke2fs e2fsck debugfs dumpe2fs sgdisk sha256sum truncate dd cmp cp \
    diff find sort sync awk; do
    command -v "$tool" >/dev/null ||
        die "$tool not found (Debian: tar, qemu-utils, e2fsprogs, gdisk, coreutils, diffutils, findutils)"
done
command -v openssl >/dev/null || command -v python3 >/dev/null || die "need openssl or python3"

# ---------------------------------------------------------------------------------------------
# Inputs (kept between runs; delete them to rebuild, e.g. after changing BENCH_TREE). Scratch
# lives in tree-work, so this script can share BENCH_DIR with run.sh and build.sh.
mkdir -p "$BENCH_DIR"
BENCH_DIR=$(realpath "$BENCH_DIR")
TREE_TAR=$BENCH_DIR/tree.tar
SMALL_TAR=$BENCH_DIR/tree-small.tar
STAGE=$BENCH_DIR/tree-stage.tmp
T_BOOT=$BENCH_DIR/tree-bench.toml # ESP + tree root, size auto: the template under test
T_EXT4=$BENCH_DIR/tree-ext4.toml  # the tree partition alone, raw: the ext4 step
T_HAND=$BENCH_DIR/tree-hand.toml  # templates/uefi.toml sized to mkomi's disk: the by-hand build
WORK=$BENCH_DIR/tree-work

cleanup() {
    rm -rf "$WORK" "$STAGE"
    rm -f "$TREE_TAR.tmp" "$SMALL_TAR.tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

avail_kib=$(df -Pk "$BENCH_DIR" | awk 'NR == 2 { print $4 }')
if ((avail_kib < 8 * 1024 * 1024)); then
    log "warning: only $((avail_kib / 1024)) MiB free in $BENCH_DIR; the run needs about 8 GiB"
fi

# seeded_bytes NAME BYTES: BYTES of reproducible noise (AES-128-CTR keystream of a fixed
# password, or Python's Mersenne Twister when openssl is missing), as in bench/build.sh.
seeded_bytes() {
    if command -v openssl >/dev/null; then
        # head closes the pipe, so openssl dies of SIGPIPE: ignore its status.
        { openssl enc -aes-128-ctr -pass "pass:mkomi-$1" -nosalt </dev/zero 2>/dev/null || true; } |
            head -c "$2"
    else
        python3 -c 'import random, sys
sys.stdout.buffer.write(random.Random("mkomi-" + sys.argv[1]).randbytes(int(sys.argv[2])))' "$1" "$2"
    fi
}

# boot_files DIR: the kernel, the initrd and systemd-boot where the template looks for them.
boot_files() {
    mkdir -p "$1/boot" "$1$(dirname "$EFI_HOST")"
    seeded_bytes vmlinuz $((KERNEL_MIB << 20)) >"$1/boot/vmlinuz-$KVER"
    seeded_bytes initrd $((INITRD_MIB << 20)) >"$1/boot/initrd.img-$KVER"
    [[ $(stat -c %s "$1/boot/vmlinuz-$KVER") == $((KERNEL_MIB << 20)) ]] || die "short kernel"
    [[ $(stat -c %s "$1/boot/initrd.img-$KVER") == $((INITRD_MIB << 20)) ]] || die "short initrd"
    if [[ -f $EFI_HOST ]]; then
        cp "$EFI_HOST" "$1$EFI_HOST"
    else
        log "no $EFI_HOST on this machine (Debian: systemd-boot-efi); using $EFI_FAKE_KIB KiB of noise"
        seeded_bytes efi $((EFI_FAKE_KIB << 10)) >"$1$EFI_HOST"
    fi
}

# pack DIR TAR: a plain tarball of DIR's content, in name order, owners as numbers.
pack() {
    tar -C "$1" --sort=name --numeric-owner -cf "$2.tmp" .
    mv "$2.tmp" "$2"
}

if [[ ! -f $TREE_TAR ]]; then
    log "creating $TREE_TAR ($BENCH_TREE as /usr/share, a kernel, an initrd and systemd-boot)"
    rm -rf "$STAGE"
    mkdir -p "$STAGE/usr"
    # Hard links when BENCH_TREE is on the same file system (no data copied), else a copy.
    if [[ $(stat -c %d "$BENCH_TREE") == $(stat -c %d "$BENCH_DIR") ]] &&
        cp -al "$BENCH_TREE" "$STAGE/usr/share" 2>/dev/null; then
        :
    else
        rm -rf "$STAGE/usr/share"
        cp -a "$BENCH_TREE" "$STAGE/usr/share"
    fi
    boot_files "$STAGE"
    pack "$STAGE" "$TREE_TAR"
    rm -rf "$STAGE"
fi

if [[ ! -f $SMALL_TAR ]]; then
    log "creating $SMALL_TAR ($SMALL_FILES small files, and the same boot files)"
    rm -rf "$STAGE"
    mkdir -p "$STAGE/srv/small"
    dirs=$(((SMALL_FILES + SMALL_PER_DIR - 1) / SMALL_PER_DIR))
    for ((d = 0; d < dirs; d++)); do mkdir "$STAGE/srv/small/$(printf 'd%03d' "$d")"; done
    # File i: its own name on the first line, then 0 to 2046 bytes cut from a fixed text, the
    # length and the starting point set by i: 1 KiB on average, every file different.
    awk -v root="$STAGE/srv/small" -v n="$SMALL_FILES" -v per="$SMALL_PER_DIR" 'BEGIN {
        s = ""
        for (k = 0; length(s) < 4200; k++) s = s sprintf("%d mkomi small-file benchmark\n", k)
        for (i = 0; i < n; i++) {
            name = sprintf("d%03d/f%06d", int(i / per), i)
            f = root "/" name
            printf "%s\n%s", name, substr(s, 1 + (i * 31) % 2048, (i * 7919) % 2047) > f
            close(f)
        }
    }'
    boot_files "$STAGE"
    # Fixed times and owners: the tarball is the same wherever it is made.
    find "$STAGE" -exec touch -h -d "@$FS_EPOCH" {} +
    chown -R 0:0 "$STAGE"
    pack "$STAGE" "$SMALL_TAR"
    rm -rf "$STAGE"
fi

# Read both tarballs once, before anything else, so every command starts from a warm cache.
cat "$TREE_TAR" "$SMALL_TAR" >/dev/null

# The template under test, like templates/debian-outscale.toml: an ESP with systemd-boot and
# the tree as an ext4 root sized to its content plus 20%; [sanitize] all on (the default).
cat >"$T_BOOT" <<'EOF'
# Written by bench/tree.sh: templates/debian-outscale.toml's disk, without its [[file]].
[image]
name = "tree-bench"
description = "bench/tree.sh: a tree made bootable with systemd-boot"
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
size = "auto"
extra = "20%"

[bootloader]
type = "systemd-boot"
efi = "root:/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
kernel = "root:/boot/vmlinuz-*"
initrd = "root:/boot/initrd.img-*"
options = "root=PARTUUID=${partuuid:root} console=ttyS0"
EOF

# The ext4 step: mkomi has no "ext4 only" command, so this is a build of the tree partition
# alone into a raw disk (a GPT around the ext4), without the audit; the bundle still gets its
# SHA-256, ContentDigest and manifest.
cat >"$T_EXT4" <<'EOF'
# Written by bench/tree.sh: the tree partition alone, raw.
[image]
name = "tree-ext4"
architecture = "x86_64"
format = "raw"

[disk]

[[partition]]
type = "root-x86-64"
label = "root"
content = "tree"
source = "${tree}"
size = "auto"
extra = "20%"
EOF

rm -rf "$WORK"
mkdir -p "$WORK"

cmdline() {
    local out='' a
    for a in "$@"; do out+="${out:+ }$(q "$a")"; done
    printf '%s' "$out"
}

OMI=$WORK/omi                 # row 1: mkomi's bundle
HAND=$WORK/hand               # row 1: the by-hand directory (tree/, root.ext4, omi/)
HAND_SH=$WORK/by-hand.sh
XTREE=$WORK/extracted         # row 2's input: the tarball extracted once, by tar -x as root
EXT4_DIR=$WORK/ext4-dir       # row 2: mkomi's raw bundle of XTREE
EXT4_TAR=$WORK/ext4-tar       # row 2t: mkomi's raw bundle of tree.tar
MKE2FS_IMG=$WORK/mke2fs.ext4  # row 2: mke2fs -d's image of XTREE
TARX=$WORK/tar-x              # tar -x alone
SMALL_OMI=$WORK/small         # row 3: the bundle of the small-file tarball
BUILD_TREE=("$MKOMI" build "$T_BOOT" --set "tree=$TREE_TAR" -o "$OMI" --no-sync -q)
EXT4_ARGS=(--no-sync -q --audit off --no-boot-check)
BUILD_EXT4_DIR=("$MKOMI" build "$T_EXT4" --set "tree=$XTREE" -o "$EXT4_DIR" "${EXT4_ARGS[@]}")
BUILD_EXT4_TAR=("$MKOMI" build "$T_EXT4" --set "tree=$TREE_TAR" -o "$EXT4_TAR" "${EXT4_ARGS[@]}")
BUILD_SMALL=("$MKOMI" build "$T_BOOT" --set "tree=$SMALL_TAR" -o "$SMALL_OMI" --no-sync -q)
TAR_X=(tar -x --numeric-owner -f "$TREE_TAR")

# one_disk BUNDLE EXT: the bundle's only disk file with that extension.
one_disk() {
    local d
    shopt -s nullglob
    d=("$1"/*."$2")
    shopt -u nullglob
    ((${#d[@]} == 1)) || die "expected one .$2 in $1, found: $(ls "$1")"
    printf '%s' "${d[0]}"
}
# check_bundle BUNDLE: mkomi verify and sha256sum -c.
check_bundle() {
    "$MKOMI" verify "$1" -q >&2 || die "mkomi verify failed on $1"
    (cd "$1" && sha256sum -c --quiet SHA256SUMS) || die "sha256sum -c failed on $1"
}
# part_field RAW N FIELD: "First sector" or "Last sector" of partition N, as a number.
part_field() { sgdisk -i "$2" "$1" | awk -F': ' -v f="$3" '$1 == f { print $2 + 0 }'; }
# extract_part RAW N OUT: partition N of a raw disk as a file (sparse), after sgdisk -v.
extract_part() {
    local first last
    sgdisk -v "$1" >"$WORK/sgdisk-v" 2>&1 || { cat "$WORK/sgdisk-v" >&2; die "sgdisk -v failed on $1"; }
    grep -q '^No problems found' "$WORK/sgdisk-v" || { cat "$WORK/sgdisk-v" >&2; die "sgdisk -v complains about $1"; }
    first=$(part_field "$1" "$2" 'First sector')
    last=$(part_field "$1" "$2" 'Last sector')
    [[ $first =~ ^[0-9]+$ && $last =~ ^[0-9]+$ ]] || die "cannot read partition $2 of $1"
    dd if="$1" of="$3" bs=1M skip=$((first * 512)) count=$(((last - first + 1) * 512)) \
        iflag=skip_bytes,count_bytes conv=sparse status=none
}
# fsck_ext4 IMG: e2fsck -fn must be clean; prints its summary line.
fsck_ext4() {
    e2fsck -fn "$1" >"$WORK/fsck" 2>&1 || { cat "$WORK/fsck" >&2; die "e2fsck -fn failed on $1"; }
    tail -n 1 "$WORK/fsck"
}
# listing DIR: every entry's path, type, mode, owner, and size (regular files) or target. The
# set-id bits of regular files are left out: debugfs's rdump sets the mode before the owner,
# and chown(2) clears them.
listing() {
    (cd "$1" && find . -mindepth 1 -printf '%y %m %U:%G ' \( -type f -printf '%s' -o -printf '%l' \) -printf ' %P\n') |
        awk '$1 == "f" && length($2) == 4 { d = substr($2, 1, 1) % 2; $2 = (d ? d : "") substr($2, 2) } { print }' | LC_ALL=C sort
}

# ---------------------------------------------------------------------------------------------
# Sanity: every output being timed must be correct (this also warms the page cache).
log "sanity checks"
"$MKOMI" --version >&2

log "  mkomi build of $TREE_TAR"
"${BUILD_TREE[@]}" >&2
OQCOW=$(one_disk "$OMI" qcow2)
check_bundle "$OMI"
SUMS_FIRST=$(cat "$OMI/SHA256SUMS")
qemu-img check -q "$OQCOW" || die "qemu-img check failed on $OQCOW"
MRAW=$WORK/mkomi.raw
qemu-img convert -O raw "$OQCOW" "$MRAW"
DISK_BYTES=$(stat -c %s "$MRAW")
extract_part "$MRAW" 2 "$WORK/mkomi-root.ext4"
ROOT_BYTES=$(stat -c %s "$WORK/mkomi-root.ext4")
FSCK_MK=$(fsck_ext4 "$WORK/mkomi-root.ext4")
log "  mkomi's root: $ROOT_BYTES bytes; e2fsck: $FSCK_MK"
# mkomi's root file system holds the tarball's tree: same entries, types, modes, owners, sizes,
# link targets (a listing) and file contents (diff -r), through debugfs's rdump.
log "  comparing mkomi's root file system with the tarball's tree"
mkdir "$XTREE" "$WORK/rdump"
"${TAR_X[@]}" -C "$XTREE"
debugfs -R "rdump /usr /boot $WORK/rdump" "$WORK/mkomi-root.ext4" >/dev/null 2>&1 ||
    die "debugfs rdump failed on mkomi's root file system"
diff <(listing "$XTREE") <(listing "$WORK/rdump") >"$WORK/listing.diff" ||
    { head -n 20 "$WORK/listing.diff" >&2; die "mkomi's root file system does not list as the tarball"; }
diff -r --no-dereference -q "$XTREE" "$WORK/rdump" >&2 ||
    die "mkomi's root file system does not hold the tarball's files"
rm -rf "$WORK/rdump" "$WORK/mkomi-root.ext4" "$MRAW"
TREE_ENTRIES=$(tar -tf "$TREE_TAR" | grep -cv '^\./$')

# The by-hand disk: templates/uefi.toml with mkomi's disk size, so its root partition (the rest
# of the disk) is mkomi's, and the image made to fill it.
sed 's/^size = "2G"$/size = "'"$DISK_BYTES"'"/' "$ROOT/templates/uefi.toml" >"$T_HAND"
grep -qx "size = \"$DISK_BYTES\"" "$T_HAND" || die "no 'size = \"2G\"' line in templates/uefi.toml"

# What a user would type. The intermediate files (tree/, root.ext4) are kept: removing them is
# not timed (a user would, later), as mkomi's own output is not.
cat >"$HAND_SH" <<EOF
set -euo pipefail
mkdir $(q "$HAND")
cd $(q "$HAND")
mkdir tree
$(cmdline "${TAR_X[@]}") -C tree
truncate -s $ROOT_BYTES root.ext4
mke2fs -q -F -t ext4 -d tree root.ext4
$(cmdline "$MKOMI" build "$T_HAND" --set rootfs=root.ext4 -o omi --no-sync -q)
EOF
HAND_CMD="bash $(q "$HAND_SH")"

log "  by hand"
bash "$HAND_SH" >&2 || die "the by-hand script failed"
HQCOW=$(one_disk "$HAND/omi" qcow2)
check_bundle "$HAND/omi"
qemu-img check -q "$HQCOW" || die "qemu-img check failed on $HQCOW"
FSCK_HAND=$(fsck_ext4 "$HAND/root.ext4")
log "  by hand's root: e2fsck: $FSCK_HAND"
HRAW=$WORK/hand.raw
qemu-img convert -O raw "$HQCOW" "$HRAW"
[[ $(stat -c %s "$HRAW") == "$DISK_BYTES" ]] || die "the by-hand disk is not $DISK_BYTES bytes"
extract_part "$HRAW" 2 "$WORK/hand-root.ext4"
cmp -s "$WORK/hand-root.ext4" "$HAND/root.ext4" || die "the by-hand root partition is not its root.ext4"
rm -f "$HRAW" "$WORK/hand-root.ext4"

log "  mkomi build of the tree partition alone (extracted tree, and tarball)"
"${BUILD_EXT4_DIR[@]}" >&2
"${BUILD_EXT4_TAR[@]}" >&2
declare -A FSCK_EXT4 BYTES_EXT4
for b in "$EXT4_TAR" "$EXT4_DIR"; do
    check_bundle "$b"
    extract_part "$(one_disk "$b" raw)" 1 "$WORK/part.ext4"
    BYTES_EXT4[$b]=$(stat -c %s "$WORK/part.ext4")
    FSCK_EXT4[$b]=$(fsck_ext4 "$WORK/part.ext4")
    log "  $(basename "$b"): ${BYTES_EXT4[$b]} bytes; e2fsck: ${FSCK_EXT4[$b]}"
done
# The last one, of the extracted tree, is row 2's: mke2fs gets its size.
EXT4_BYTES=${BYTES_EXT4[$EXT4_DIR]}
dumpe2fs -h "$WORK/part.ext4" >"$WORK/dumpe2fs-mkomi" 2>/dev/null
rm -f "$WORK/part.ext4"
# README "Trees": the same tree gives the same bytes, whatever kind of source holds it. Told, not
# required: the timings stand either way.
if cmp -s "$(one_disk "$EXT4_DIR" raw)" "$(one_disk "$EXT4_TAR" raw)"; then
    SAME_SOURCE="identical"
else
    SAME_SOURCE="**different** (file systems of ${BYTES_EXT4[$EXT4_DIR]} and ${BYTES_EXT4[$EXT4_TAR]} bytes; e2fsck: \`${FSCK_EXT4[$EXT4_DIR]}\` and \`${FSCK_EXT4[$EXT4_TAR]}\`)"
    log "warning: the ext4-only disks of the extracted tree and of the tarball differ"
fi

MKE2FS_CMD="truncate -s $EXT4_BYTES $(q "$MKE2FS_IMG") && mke2fs -q -F -t ext4 -d $(q "$XTREE") $(q "$MKE2FS_IMG")"
bash -c "$MKE2FS_CMD" >&2 || die "mke2fs -d failed"
log "  mke2fs -d: e2fsck: $(fsck_ext4 "$MKE2FS_IMG")"
dumpe2fs -h "$MKE2FS_IMG" >"$WORK/dumpe2fs-mke2fs" 2>/dev/null

log "  mkomi build of $SMALL_TAR"
"${BUILD_SMALL[@]}" >&2
SQCOW=$(one_disk "$SMALL_OMI" qcow2)
check_bundle "$SMALL_OMI"
qemu-img check -q "$SQCOW" || die "qemu-img check failed on $SQCOW"
qemu-img convert -O raw "$SQCOW" "$WORK/small.raw"
extract_part "$WORK/small.raw" 2 "$WORK/small-root.ext4"
rm -f "$WORK/small.raw"
FSCK_SMALL=$(fsck_ext4 "$WORK/small-root.ext4")
log "  small files' root: e2fsck: $FSCK_SMALL"
# Every small file is there: the last directory's entries, and the last file's content.
last=$((SMALL_FILES - 1))
last_dir=/srv/small/$(printf 'd%03d' $((last / SMALL_PER_DIR)))
n=$(debugfs -R "ls -p $last_dir" "$WORK/small-root.ext4" 2>/dev/null | grep -c '^/[0-9]*/100')
[[ $n == $((last % SMALL_PER_DIR + 1)) ]] || die "$last_dir holds $n files in mkomi's file system"
want=$(tar -xOf "$SMALL_TAR" "./srv/small/$(basename "$last_dir")/$(printf 'f%06d' "$last")" | sha256sum)
got=$(debugfs -R "cat $last_dir/$(printf 'f%06d' "$last")" "$WORK/small-root.ext4" 2>/dev/null | sha256sum)
[[ $want == "$got" ]] || die "the last small file differs in mkomi's file system"
SMALL_ROOT_BYTES=$(stat -c %s "$WORK/small-root.ext4")
rm -f "$WORK/small-root.ext4"
SMALL_ENTRIES=$(tar -tf "$SMALL_TAR" | grep -cv '^\./$')
rm -rf "$SMALL_OMI"

# ---------------------------------------------------------------------------------------------
# Timing: interleaved rounds, as in bench/run.sh. Before every run, untimed: remove the command's
# output (mkomi refuses an existing directory, and so does `mkdir` in the by-hand script) and
# flush dirty pages, so that the previous run's writeback does not land in this one.
declare -A MED CPU

median() { # median of the numbers on stdin
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

KEYS=() PREPS=() CMDS=()
bench() { # bench KEY PREPARE COMMAND
    KEYS+=("$1") PREPS+=("$2") CMDS+=("$3")
}

run_benches() {
    local round i key t0 t1 cpu
    declare -A times=()
    for ((round = 0; round < WARMUP + RUNS; round++)); do
        if ((round < WARMUP)); then
            log "round $((round + 1)) of $((WARMUP + RUNS)) (warm-up)"
        else
            log "round $((round + 1)) of $((WARMUP + RUNS))"
        fi
        for i in "${!KEYS[@]}"; do
            key=${KEYS[$i]}
            cpu=$WORK/cpu.$key
            ((round > 0)) || : >"$cpu"
            bash -c "${PREPS[$i]}"
            t0=$(date +%s%N)
            if ((round < WARMUP)); then
                bash -c "${CMDS[$i]}" >/dev/null || die "$key failed: ${CMDS[$i]}"
            else
                /usr/bin/time -f '%U %S' -a -o "$cpu" bash -c "${CMDS[$i]}" >/dev/null ||
                    die "$key failed: ${CMDS[$i]}"
            fi
            t1=$(date +%s%N)
            ((round < WARMUP)) || times[$key]+="$(((t1 - t0) / 1000)) "
        done
    done
    for key in "${KEYS[@]}"; do
        MED[$key]=$(printf '%s\n' ${times[$key]} | median | awk '{ printf "%.6f", $1 / 1e6 }')
        CPU[$key]=$(awk '{ u += $1; s += $2 } END { printf "%.3f %.3f", u / NR, s / NR }' "$WORK/cpu.$key")
        log "  $key: median ${MED[$key]} s"
    done
}

prep() { printf 'rm -rf %s && sync' "$(q "$1")"; }

bench mk_tree "$(prep "$OMI")" "$(cmdline "${BUILD_TREE[@]}")"
bench hand "$(prep "$HAND")" "$HAND_CMD"
bench mk_ext4 "$(prep "$EXT4_DIR")" "$(cmdline "${BUILD_EXT4_DIR[@]}")"
bench mke2fs "$(prep "$MKE2FS_IMG")" "$MKE2FS_CMD"
bench mk_ext4_tar "$(prep "$EXT4_TAR")" "$(cmdline "${BUILD_EXT4_TAR[@]}")"
bench tar_x "$(prep "$TARX")" "mkdir $(q "$TARX") && $(cmdline "${TAR_X[@]}") -C $(q "$TARX")"

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(date +%s)
for i in "${!KEYS[@]}"; do log "  ${KEYS[$i]}: ${CMDS[$i]}"; done
run_benches
T_END=$(date +%s)
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# Peak RSS, one warm run each. For the by-hand script, GNU time reports the largest process.
declare -A RSS
rss() { # rss KEY OUTPUT COMMAND...
    local key=$1 out=$2
    shift 2
    rm -rf "$out"
    sync
    /usr/bin/time -f %M -o "$WORK/rss" "$@" >/dev/null || die "$key failed"
    RSS[$key]=$(tail -n 1 "$WORK/rss")
}
log "measuring peak RSS"
rss mk_tree "$OMI" "${BUILD_TREE[@]}"
# SOURCE_DATE_EPOCH is fixed, so the last build must be byte-identical to the first.
if [[ $(cat "$OMI/SHA256SUMS") == "$SUMS_FIRST" ]]; then
    REPRO="byte-identical to the sanity build (same SHA256SUMS)"
else
    REPRO="**differs** from the sanity build (SHA256SUMS changed)"
    log "warning: the last mkomi bundle differs from the first"
fi
MSIZE=$(stat -c %s "$OQCOW")
rss hand "$HAND" bash "$HAND_SH"
HSIZE=$(stat -c %s "$HQCOW")
rss mk_ext4 "$EXT4_DIR" "${BUILD_EXT4_DIR[@]}"
rss mke2fs "$MKE2FS_IMG" bash -c "$MKE2FS_CMD"
rss mk_small "$SMALL_OMI" "${BUILD_SMALL[@]}"
check_bundle "$SMALL_OMI"

# ---------------------------------------------------------------------------------------------
# Report
FAILED=0
fmt_s() { awk -v t="$1" 'BEGIN { printf "%.3f s", t }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
human() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
row() { # row NUM MKOMI_LABEL MKOMI_KEY BASE_LABEL BASE_KEY MAX_RATIO|-
    local r target v
    r=$(ratio "${MED[$3]}" "${MED[$5]}")
    if [[ $6 == - ]]; then
        target='—' v=info
    elif awk -v r="$r" -v m="$6" 'BEGIN { exit !(r <= m) }'; then
        target="≤ $6" v=pass
    else
        target="≤ $6" v="**MISS**"
        FAILED=$((FAILED + 1))
    fi
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$2" "$(fmt_s "${MED[$3]}")" \
        "$4" "$(fmt_s "${MED[$5]}")" "$r" "$target" "$v"
}
rss_row() { # rss_row NUM LABEL KEY MAX_KIB|-
    local v=info target='—'
    if [[ $4 != - ]]; then
        target="< $(mib "$4")" v=pass
        if ((RSS[$3] >= $4)); then
            v="**MISS**"
            FAILED=$((FAILED + 1))
        fi
    fi
    printf '| %s | %s | %s | %s | %s |\n' "$1" "$2" "$(mib "${RSS[$3]}")" "$target" "$v"
}
cpu_row() { # cpu_row LABEL KEY
    local u s
    read -r u s <<<"${CPU[$2]}"
    printf '| %s | %s | %s | %s | %s |\n' "$1" "$(fmt_s "${MED[$2]}")" "$u" "$s" \
        "$(awk -v a="$u" -v b="$s" 'BEGIN { printf "%.3f", a + b }')"
}
feature() { awk -F': *' -v k="$2" '$1 == k { print $2 }' "$WORK/dumpe2fs-$1"; }

TIMER=interleaved
report_context bench/tree.sh 'date +%s%N'
if [[ -f $EFI_HOST ]]; then efi="this machine's \`systemd-bootx64.efi\`"; else efi="$EFI_FAKE_KIB KiB stand-in for \`systemd-bootx64.efi\`"; fi

{
    echo "## mkomi tree benchmark"
    echo
    echo "Inputs: \`tree.tar\` = plain tarball (\`tar --numeric-owner\`, $(human "$(stat -c %s "$TREE_TAR")"), $TREE_ENTRIES entries) holding \`$BENCH_TREE\`"
    echo "as /usr/share, an ${KERNEL_MIB} MiB kernel, a ${INITRD_MIB} MiB initrd and $efi; \`tree-small.tar\` = $SMALL_FILES files of"
    echo "0–2 KiB in $(((SMALL_FILES + SMALL_PER_DIR - 1) / SMALL_PER_DIR)) directories and the same boot files ($SMALL_ENTRIES entries, $(human "$(stat -c %s "$SMALL_TAR")"))."
    echo "Template: ESP 128M + tree root (\`size = \"auto\"\`, \`extra = \"20%\"\`), systemd-boot, as templates/debian-outscale.toml."
    echo "Root file system $(human "$ROOT_BYTES"), disk $(human "$DISK_BYTES"). Page cache warm. Ratio = mkomi / by hand (lower is better)."
    echo
    echo "| # | mkomi | median | by hand | median | ratio | target | |"
    echo "|---|---|---|---|---|---|---|---|"
    row 1 '`build --no-sync` of tree.tar (qcow2 bundle)' mk_tree \
        '`tar -x` + `mke2fs -t ext4 -d` + `mkomi build --no-sync` of the image (uefi.toml, qcow2 bundle)' hand "$MAX_BUILD"
    row 2 '`build --no-sync --audit off` of the extracted tree, tree partition alone, raw' mk_ext4 \
        '`mke2fs -t ext4 -d` of the extracted tree' mke2fs "$MAX_EXT4"
    row 2t 'the same, of tree.tar' mk_ext4_tar '`mke2fs -t ext4 -d` of the extracted tree' mke2fs -
    row 1x '`build --no-sync` of tree.tar' mk_tree '`tar -x` of tree.tar alone (part of by hand)' tar_x -
    echo
    echo "| # | peak RSS of | RSS | target | |"
    echo "|---|---|---|---|---|"
    rss_row 3 "\`build --no-sync\` of tree-small.tar ($SMALL_FILES files)" mk_small "$RSS_MAX_KIB"
    rss_row 3a '`build --no-sync` of tree.tar' mk_tree -
    rss_row 3b 'by hand (largest process)' hand -
    rss_row 3c '`build` of the extracted tree, tree partition alone' mk_ext4 -
    rss_row 3d '`mke2fs -t ext4 -d`' mke2fs -
    echo
    echo "| CPU seconds (mean) | median wall | user | system | total |"
    echo "|---|---|---|---|---|"
    cpu_row '`build` of tree.tar' mk_tree
    cpu_row 'by hand' hand
    cpu_row '`build`, tree partition alone, extracted tree' mk_ext4
    cpu_row '`build`, tree partition alone, tree.tar' mk_ext4_tar
    cpu_row '`mke2fs -t ext4 -d`' mke2fs
    cpu_row '`tar -x`' tar_x
    echo
    echo "Output sizes: mkomi $(basename "$OQCOW") $(human "$MSIZE"), by hand $(basename "$HQCOW") $(human "$HSIZE"). The last mkomi bundle is $REPRO."
    echo "The ext4-only disks of the extracted tree and of tree.tar are $SAME_SOURCE."
    echo "e2fsck -fn: mkomi's root \`$FSCK_MK\`; by hand's \`$FSCK_HAND\`; small files' \`$FSCK_SMALL\` ($(human "$SMALL_ROOT_BYTES"))."
    echo "ext4 features: mkomi \`$(feature mkomi 'Filesystem features')\`, $(feature mkomi 'Inode count') inodes;"
    echo "mke2fs \`$(feature mke2fs 'Filesystem features')\`, $(feature mke2fs 'Inode count') inodes."
    echo
    echo "- machine: $(nproc) CPUs ($cpu), $(uname -sr), load average $LOAD_BEFORE before, $LOAD_AFTER after"
    echo "- $(tar --version | head -n 1); $(mke2fs -V 2>&1 | head -n 1); $(qemu-img --version | head -n 1)"
    echo "- $("$MKOMI" --version) at $rev ($MKOMI)"
    echo "- CPU priority: $(cut -d' ' -f2- /proc/self/autogroup 2>/dev/null || echo '?') (session autogroup), nice $(nice)"
    echo "- timing: $timer; timed part took $((T_END - T_START)) s"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "- reproduce: \`$repro\`"
    if ((FAILED > 0)); then
        echo
        echo "$FAILED target(s) missed."
    fi
} | tee "$BENCH_DIR/tree-results.md"

log "results written to $BENCH_DIR/tree-results.md"
