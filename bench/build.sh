#!/usr/bin/env bash
# Side-by-side benchmark of `mkomi build` against doing the same by hand: extract the bootloader,
# kernel and initrd from the root ext4 with debugfs, make the ESP with mkfs.vfat and mtools, the
# GPT with sgdisk, place both partitions with dd, convert with qemu-img and hash with sha256sum.
# Both are timed in ONE run on the same machine and reported as medians and a ratio, because
# absolute times on shared machines mean little. See bench/README.md ("mkomi build").
#
# Environment (the same conventions as bench/run.sh):
#   MKOMI=path     use this binary instead of building with `cargo build --release --locked`
#   BENCH_DIR=dir  inputs, scratch and results (default /var/tmp/mkomi-bench; inputs are reused)
#   BENCH_TREE=dir directory copied into the root file system as /usr/share (default /usr/share)
#   RUNS=n         timed runs per command (default 5); WARMUP=n warm-up runs (default 1)
#   NO_HYPERFINE=1 use the built-in timing loop even if hyperfine is installed
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# The epoch is exported as SOURCE_DATE_EPOCH, so every mkomi build of the same inputs has the
# same GUIDs and timestamps, and the by-hand disk can reuse them.
export SOURCE_DATE_EPOCH=$FS_EPOCH

KVER=6.1.0-bench
KERNEL_MIB=8
INITRD_MIB=30
EFI_HOST=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
EFI_FAKE_KIB=100

# The disk: the shipped template's 2G cannot hold the 3 GiB root file system, so the benchmark
# uses a copy with a 4 GiB disk. Layout (mkomi's, see src/layout/gpt.rs): ESP 128 MiB at LBA 2048,
# root from there to LastUsableLBA rounded down to a 1 MiB boundary.
DISK_GIB=4
SECTOR=512
DISK_SECTORS=$((DISK_GIB * 1024 * 1024 * 1024 / SECTOR))
ESP_FIRST=2048
ESP_MIB=128
ROOT_FIRST=$((ESP_FIRST + ESP_MIB * 2048))
ROOT_LAST=$(((DISK_SECTORS - 34) / 2048 * 2048 - 1))
ESP_OFF=$((ESP_FIRST * SECTOR))
ROOT_OFF=$((ROOT_FIRST * SECTOR))
ESP_TYPE=c12a7328-f81f-11d2-ba4b-00a0c93ec93b
ROOT_TYPE=4f68bce3-e8cd-4db1-96e7-fbcaf984b709

# ---------------------------------------------------------------------------------------------
# Tools
missing=()
command -v mkfs.vfat >/dev/null && command -v fsck.vfat >/dev/null || missing+=(dosfstools)
for t in mcopy mmd mtype; do command -v "$t" >/dev/null || { missing+=(mtools); break; }; done
command -v sgdisk >/dev/null || missing+=(gdisk)
((${#missing[@]} == 0)) || apt_install "${missing[@]}"
for tool in qemu-img mkfs.ext4 e2fsck debugfs mkfs.vfat fsck.vfat mmd mcopy mtype sgdisk \
    sha256sum truncate dd cmp cp od sync awk; do
    command -v "$tool" >/dev/null ||
        die "$tool not found (Debian: qemu-utils, e2fsprogs, dosfstools, mtools, gdisk, coreutils, diffutils)"
done
command -v openssl >/dev/null || command -v python3 >/dev/null || die "need openssl or python3"
# ---------------------------------------------------------------------------------------------
# Inputs (kept between runs). Everything else lives in build-work, not run.sh's work directory,
# so the two scripts can share BENCH_DIR.
mkdir -p "$BENCH_DIR"
BENCH_DIR=$(realpath "$BENCH_DIR")
ROOTFS=$BENCH_DIR/rootfs.ext4
TREE=$BENCH_DIR/rootfs-tree.tmp
TEMPLATE=$BENCH_DIR/bench.toml
WORK=$BENCH_DIR/build-work
JSON_DIR=$BENCH_DIR/hyperfine

cleanup() {
    rm -rf "$WORK" "$TREE"
    rm -f "$ROOTFS.tmp" "$TEMPLATE.tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

avail_kib=$(df -Pk "$BENCH_DIR" | awk 'NR == 2 { print $4 }')
if ((avail_kib < 5 * 1024 * 1024)); then
    log "warning: only $((avail_kib / 1024)) MiB free in $BENCH_DIR; the run needs about 5 GiB"
fi

# seeded_bytes NAME BYTES: BYTES of reproducible noise (AES-128-CTR keystream of a fixed
# password, or Python's Mersenne Twister when openssl is missing).
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

if [[ ! -f $ROOTFS ]]; then
    log "creating $ROOTFS (3 GiB ext4 with $BENCH_TREE, a kernel, an initrd and systemd-boot)"
    rm -rf "$TREE" "$ROOTFS.tmp"
    mkdir -p "$TREE/usr" "$TREE/boot" "$TREE/usr/lib/systemd/boot/efi"
    # Hard links when BENCH_TREE is on the same file system (no data copied), else a copy.
    if [[ $(stat -c %d "$BENCH_TREE") == $(stat -c %d "$BENCH_DIR") ]] &&
        cp -al "$BENCH_TREE" "$TREE/usr/share" 2>/dev/null; then
        :
    else
        rm -rf "$TREE/usr/share"
        cp -a "$BENCH_TREE" "$TREE/usr/share"
    fi
    seeded_bytes vmlinuz $((KERNEL_MIB << 20)) >"$TREE/boot/vmlinuz-$KVER"
    seeded_bytes initrd $((INITRD_MIB << 20)) >"$TREE/boot/initrd.img-$KVER"
    [[ $(stat -c %s "$TREE/boot/vmlinuz-$KVER") == $((KERNEL_MIB << 20)) ]] || die "short kernel"
    [[ $(stat -c %s "$TREE/boot/initrd.img-$KVER") == $((INITRD_MIB << 20)) ]] || die "short initrd"
    if [[ -f $EFI_HOST ]]; then
        cp "$EFI_HOST" "$TREE$EFI_HOST"
    else
        log "no $EFI_HOST on this machine (Debian: systemd-boot-efi); using $EFI_FAKE_KIB KiB of noise"
        seeded_bytes efi $((EFI_FAKE_KIB << 10)) >"$TREE$EFI_HOST"
    fi
    truncate -s 3G "$ROOTFS.tmp"
    E2FSPROGS_FAKE_TIME=$FS_EPOCH \
        mkfs.ext4 -q -F -U "$FS_UUID" -E "root_owner=0:0,hash_seed=$FS_HASH_SEED" \
        -d "$TREE" "$ROOTFS.tmp"
    rm -rf "$TREE"
    e2fsck -fn "$ROOTFS.tmp" >/dev/null 2>&1 || die "e2fsck -fn failed on the new $ROOTFS.tmp"
    mv "$ROOTFS.tmp" "$ROOTFS"
fi
ROOTFS_SIZE=$(stat -c %s "$ROOTFS")
((ROOT_OFF + ROOTFS_SIZE <= (ROOT_LAST + 1) * SECTOR)) || die "$ROOTFS does not fit the root partition"
# Read the whole input once, before anything else, so both tools start from the same warm cache.
cat "$ROOTFS" >/dev/null

# The template: templates/uefi.toml with a 4 GiB disk.
sed 's/^size = "2G"$/size = "'"$DISK_GIB"'G"/' "$ROOT/templates/uefi.toml" >"$TEMPLATE.tmp"
grep -qx "size = \"${DISK_GIB}G\"" "$TEMPLATE.tmp" || die "no 'size = \"2G\"' line in templates/uefi.toml"
mv "$TEMPLATE.tmp" "$TEMPLATE"

rm -rf "$WORK"
mkdir -p "$WORK" "$JSON_DIR"

cmdline() {
    local out='' a
    for a in "$@"; do out+="${out:+ }$(q "$a")"; done
    printf '%s' "$out"
}

OMI=$WORK/omi         # mkomi's bundle
HAND=$WORK/hand       # the by-hand output directory: out.qcow2 and SHA256SUMS
HAND_SH=$WORK/by-hand.sh
BUILD=("$MKOMI" build "$TEMPLATE" --set "rootfs=$ROOTFS" -o "$OMI" --no-sync -q)

# ---------------------------------------------------------------------------------------------
# Sanity: both outputs must be correct and hold the same disk (this also warms the page cache).
log "sanity checks"
"$MKOMI" --version >&2
"${BUILD[@]}" >&2
for f in manifest.json SHA256SUMS; do
    [[ -f $OMI/$f ]] || die "mkomi build did not write $OMI/$f"
done
shopt -s nullglob
odisks=("$OMI"/*.qcow2)
shopt -u nullglob
((${#odisks[@]} == 1)) || die "expected one .qcow2 in $OMI, found: $(ls "$OMI")"
OQCOW=${odisks[0]}
"$MKOMI" verify "$OMI" -q >&2 || die "mkomi verify failed on a fresh bundle"
SUMS_FIRST=$(cat "$OMI/SHA256SUMS")
(cd "$OMI" && sha256sum -c --quiet SHA256SUMS) || die "sha256sum -c failed on a fresh bundle"
qemu-img check -q "$OQCOW" || die "qemu-img check failed on $OQCOW"
MRAW=$WORK/mkomi.raw
qemu-img convert -O raw "$OQCOW" "$MRAW"
[[ $(stat -c %s "$MRAW") == $((DISK_SECTORS * SECTOR)) ]] || die "mkomi's disk is not $DISK_GIB GiB"
sgdisk -v "$MRAW" >"$WORK/sgdisk-v" 2>&1 || { cat "$WORK/sgdisk-v" >&2; die "sgdisk -v failed on mkomi's disk"; }
grep -q '^No problems found' "$WORK/sgdisk-v" || { cat "$WORK/sgdisk-v" >&2; die "sgdisk -v complains about mkomi's disk"; }

# The by-hand disk reuses mkomi's identifiers (disk and partition GUIDs, FAT volume id), so the
# two disks differ only in how the FAT file system is laid out.
part_guid() { sgdisk -i "$2" "$1" | awk -F': ' '/^Partition unique GUID/ { print tolower($2) }'; }
DISK_GUID=$(sgdisk -p "$MRAW" | awk '/^Disk identifier \(GUID\)/ { print tolower($NF) }')
ESP_GUID=$(part_guid "$MRAW" 1)
ROOT_GUID=$(part_guid "$MRAW" 2)
VOLID=$(od -An -tx4 -j $((ESP_OFF + 67)) -N4 "$MRAW" | tr -d ' ')
for v in DISK_GUID ESP_GUID ROOT_GUID; do
    [[ ${!v} =~ ^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$ ]] || die "cannot read $v from mkomi's disk"
done
[[ $VOLID =~ ^[0-9a-f]{8}$ ]] || die "cannot read the FAT volume id from mkomi's ESP"

# What a user would type. debugfs and mkfs.vfat chat on stderr even when all is well.
cat >"$HAND_SH" <<EOF
set -euo pipefail
mkdir $(q "$HAND")
cd $(q "$HAND")
debugfs -R 'dump $EFI_HOST bootx64.efi' $(q "$ROOTFS") 2>/dev/null
debugfs -R 'dump /boot/vmlinuz-$KVER vmlinuz' $(q "$ROOTFS") 2>/dev/null
debugfs -R 'dump /boot/initrd.img-$KVER initrd.img' $(q "$ROOTFS") 2>/dev/null
printf 'default mkomi.conf\ntimeout 0\n' >loader.conf
printf 'title linux-uefi\nlinux /vmlinuz\ninitrd /initrd.img\noptions root=PARTUUID=%s console=ttyS0\n' $ROOT_GUID >mkomi.conf
truncate -s ${ESP_MIB}M esp.img
mkfs.vfat -F 32 -n ESP -i $VOLID esp.img >/dev/null
mmd -i esp.img ::EFI ::EFI/BOOT ::loader ::loader/entries
mcopy -i esp.img bootx64.efi ::EFI/BOOT/BOOTX64.EFI
mcopy -i esp.img vmlinuz initrd.img ::
mcopy -i esp.img loader.conf ::loader/
mcopy -i esp.img mkomi.conf ::loader/entries/
truncate -s ${DISK_GIB}G disk.raw
sgdisk -U $DISK_GUID \\
    -n 1:$ESP_FIRST:+${ESP_MIB}M -t 1:$ESP_TYPE -c 1:ESP -u 1:$ESP_GUID \\
    -n 2:$ROOT_FIRST:$ROOT_LAST -t 2:$ROOT_TYPE -c 2:root -u 2:$ROOT_GUID \\
    disk.raw >/dev/null
dd if=esp.img of=disk.raw bs=1M seek=$((ESP_OFF >> 20)) conv=notrunc,sparse status=none
dd if=$(q "$ROOTFS") of=disk.raw bs=1M seek=$((ROOT_OFF >> 20)) conv=notrunc,sparse status=none
qemu-img convert -O qcow2 disk.raw out.qcow2
sha256sum out.qcow2 >SHA256SUMS
rm -f disk.raw esp.img bootx64.efi vmlinuz initrd.img loader.conf mkomi.conf
EOF
HAND_CMD="bash $(q "$HAND_SH")"

bash "$HAND_SH" || die "the by-hand script failed"
HQCOW=$HAND/out.qcow2
(cd "$HAND" && sha256sum -c --quiet SHA256SUMS) || die "sha256sum -c failed on the by-hand output"
qemu-img check -q "$HQCOW" || die "qemu-img check failed on $HQCOW"
HRAW=$WORK/hand.raw
qemu-img convert -O raw "$HQCOW" "$HRAW"
sgdisk -v "$HRAW" >"$WORK/sgdisk-v" 2>&1 || { cat "$WORK/sgdisk-v" >&2; die "sgdisk -v failed on the by-hand disk"; }
grep -q '^No problems found' "$WORK/sgdisk-v" || { cat "$WORK/sgdisk-v" >&2; die "sgdisk -v complains about the by-hand disk"; }

# Same partition table (sgdisk -p without the line naming the file, and every entry's details).
table() { sgdisk -p "$1" | tail -n +2; sgdisk -i 1 "$1"; sgdisk -i 2 "$1"; }
diff <(table "$MRAW") <(table "$HRAW") >&2 || die "the two partition tables differ"
# Same files in the ESP, and both ESPs pass fsck.
for f in EFI/BOOT/BOOTX64.EFI vmlinuz initrd.img loader/loader.conf loader/entries/mkomi.conf; do
    a=$(mtype -i "$MRAW@@$ESP_OFF" "::$f" | sha256sum)
    b=$(mtype -i "$HRAW@@$ESP_OFF" "::$f" | sha256sum)
    [[ $a == "$b" ]] || die "the two ESPs hold different $f"
done
a=$(mtype -i "$MRAW@@$ESP_OFF" ::vmlinuz | wc -c)
[[ $a == $((KERNEL_MIB << 20)) ]] || die "the ESP's vmlinuz is $a bytes, not $((KERNEL_MIB << 20))"
for raw in "$MRAW" "$HRAW"; do
    dd if="$raw" of="$WORK/esp.img" bs=1M skip=$((ESP_OFF >> 20)) count=$ESP_MIB status=none
    fsck.vfat -n "$WORK/esp.img" >"$WORK/fsck" 2>&1 || { cat "$WORK/fsck" >&2; die "fsck.vfat -n failed on the ESP of $raw"; }
done
rm -f "$WORK/esp.img"
# The root partition holds rootfs.ext4 byte for byte in both.
cmp -s -n "$ROOTFS_SIZE" -i "$ROOT_OFF:0" "$MRAW" "$ROOTFS" || die "mkomi's root partition is not $ROOTFS"
cmp -s -n "$ROOTFS_SIZE" -i "$ROOT_OFF:0" "$HRAW" "$ROOTFS" || die "the by-hand root partition is not $ROOTFS"
rm -f "$MRAW" "$HRAW"

# ---------------------------------------------------------------------------------------------
# Timing: both commands in one go. Before every run, untimed: remove both outputs (mkomi refuses
# an existing directory, and so does `mkdir` in the by-hand script) and flush their dirty pages.
PREP="rm -rf $(q "$OMI") $(q "$HAND") && sync"
MK_CMD=$(cmdline "${BUILD[@]}")
declare -A MED

median() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(date +%s)
log "timing mkomi: $MK_CMD"
log "timing by hand: $HAND_CMD"
if [[ $TIMER == hyperfine ]]; then
    json=$JSON_DIR/build.json
    hyperfine --shell=bash --style=basic --runs "$RUNS" --warmup "$WARMUP" --prepare "$PREP" \
        --export-json "$json" -n mkomi "$MK_CMD" -n by-hand "$HAND_CMD" >&2
    mapfile -t meds < <(sed -n 's/.*"median": *\([-0-9.eE+]*\).*/\1/p' "$json")
    ((${#meds[@]} == 2)) || die "expected two medians in $json"
    MED[mkomi]=${meds[0]} MED[hand]=${meds[1]}
else
    # Interleaved, so that a burst of load hits both alike.
    declare -A TIMES
    for ((i = 0; i < WARMUP + RUNS; i++)); do
        for key in mkomi hand; do
            if [[ $key == mkomi ]]; then cmd=$MK_CMD; else cmd=$HAND_CMD; fi
            bash -c "$PREP"
            t0=$(date +%s%N)
            bash -c "$cmd" >/dev/null
            t1=$(date +%s%N)
            ((i < WARMUP)) || TIMES[$key]+="$(((t1 - t0) / 1000)) "
        done
    done
    for key in mkomi hand; do
        MED[$key]=$(printf '%s\n' ${TIMES[$key]} | median | awk '{ printf "%.6f", $1 / 1e6 }')
    done
fi
for key in mkomi hand; do
    [[ -n ${MED[$key]} ]] || die "no median for $key"
    log "  median $key ${MED[$key]} s"
done

# Peak RSS, one warm run each. For the by-hand script, GNU time reports the largest process.
log "measuring peak RSS"
bash -c "$PREP"
/usr/bin/time -f %M -o "$WORK/rss" "${BUILD[@]}" >/dev/null
RSS_MK=$(tail -n 1 "$WORK/rss")
# SOURCE_DATE_EPOCH is fixed, so the last build must be byte-identical to the first.
if [[ $(cat "$OMI/SHA256SUMS") == "$SUMS_FIRST" ]]; then
    REPRO="byte-identical to the sanity build (same SHA256SUMS)"
else
    REPRO="**differs** from the sanity build (SHA256SUMS changed)"
    log "warning: the last mkomi bundle differs from the first"
fi
MSIZE=$(stat -c %s "$OQCOW")
/usr/bin/time -f %M -o "$WORK/rss" bash "$HAND_SH" >/dev/null
RSS_HAND=$(tail -n 1 "$WORK/rss")
HSIZE=$(stat -c %s "$HQCOW")

T_END=$(date +%s)
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# Report
fmt_s() { awk -v t="$1" 'BEGIN { printf "%.3f s", t }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

report_context bench/build.sh 'date +%s%N, interleaved'
if [[ -f $EFI_HOST ]]; then efi="this machine's \`systemd-bootx64.efi\`"; else efi="$EFI_FAKE_KIB KiB stand-in for \`systemd-bootx64.efi\`"; fi

{
    echo "## mkomi build benchmark"
    echo
    echo "Input: \`rootfs.ext4\` = 3 GiB ext4 holding \`$BENCH_TREE\` (at /usr/share), an ${KERNEL_MIB} MiB kernel,"
    echo "a ${INITRD_MIB} MiB initrd and $efi ($(mib "$(($(stat -c %b "$ROOTFS") * $(stat -c %B "$ROOTFS")))") allocated)."
    echo "Disk: \`templates/uefi.toml\` with \`size = \"${DISK_GIB}G\"\`. Page cache warm. Ratio = mkomi / by hand (lower is better)."
    echo
    echo "| mkomi | median | by hand | median | ratio |"
    echo "|---|---|---|---|---|"
    printf '| `build --no-sync` | %s | debugfs, mkfs.vfat, mtools, sgdisk, dd, `qemu-img convert -O qcow2`, `sha256sum` | %s | %s |\n' \
        "$(fmt_s "${MED[mkomi]}")" "$(fmt_s "${MED[hand]}")" "$(ratio "${MED[mkomi]}" "${MED[hand]}")"
    echo
    echo "| peak RSS | mkomi | by hand (largest process) |"
    echo "|---|---|---|"
    echo "| | $(mib $((RSS_MK * 1024))) | $(mib $((RSS_HAND * 1024))) |"
    echo
    echo "Output sizes: mkomi $(basename "$OQCOW") $(mib "$MSIZE"), by hand out.qcow2 $(mib "$HSIZE"). The last mkomi bundle is $REPRO."
    echo
    echo "- machine: $(nproc) CPUs ($cpu), $(uname -sr), load average $LOAD_BEFORE before, $LOAD_AFTER after"
    echo "- $(qemu-img --version | head -n 1); $(mkfs.vfat --help 2>&1 | grep -m1 -o 'mkfs.fat [0-9.]*'); $(mtools --version | head -n 1); $(sgdisk --version | head -n 1)"
    echo "- $("$MKOMI" --version) at $rev ($MKOMI)"
    echo "- timing: $timer; timed part took $((T_END - T_START)) s"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "- reproduce: \`$repro\`"
} | tee "$BENCH_DIR/build-results.md"

log "results written to $BENCH_DIR/build-results.md"
