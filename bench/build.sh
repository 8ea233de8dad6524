#!/usr/bin/env bash
# Side-by-side benchmark of `mkomi build` against doing the same by hand, for two templates:
#   uefi    extract the bootloader, kernel and initrd from the root ext4 with debugfs, make the
#           ESP with mkfs.vfat and mtools, the GPT with sgdisk, place both partitions with dd,
#           convert with qemu-img and hash with sha256sum;
#   hybrid  the same, plus a BIOS boot partition holding GRUB's core.img (grub-mkimage, its
#           block list patched with printf | dd) and GRUB's boot.img in the MBR (dd, patched
#           likewise): what grub-install would do, without a loop device or root.
# All are timed in ONE run on the same machine and reported as medians and ratios, because
# absolute times on shared machines mean little. See bench/README.md ("mkomi build").
#
# Environment (the same conventions as bench/run.sh):
#   MKOMI=path     use this binary instead of building with `cargo build --release --locked`
#   BENCH_DIR=dir  inputs, scratch and results (default /var/tmp/mkomi-bench; inputs are reused)
#   BENCH_TREE=dir directory copied into the root file system as /usr/share (default /usr/share)
#   RUNS=n         timed runs per command (default 5); WARMUP=n warm-up runs (default 1)
#   NO_HYPERFINE=1 use the built-in timing loop even if hyperfine is installed
#   BUILD_ROWS=".." the rows to run, among "uefi hybrid" (default both)
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

BUILD_ROWS=${BUILD_ROWS:-uefi hybrid}
read -ra ROWS <<<"$BUILD_ROWS"
((${#ROWS[@]} > 0)) || die "BUILD_ROWS is empty"
for row in "${ROWS[@]}"; do
    [[ $row == uefi || $row == hybrid ]] || die "BUILD_ROWS: unknown row '$row' (uefi, hybrid)"
done
has_row() { [[ " ${ROWS[*]} " == *" $1 "* ]]; }

# The disk: the shipped templates' 2G cannot hold the 3 GiB root file system, so the benchmark
# uses copies with a 4 GiB disk. Layouts (mkomi's, see src/layout/gpt.rs): partitions one after
# the other from LBA 2048, the last one (root) up to LastUsableLBA rounded down to a 1 MiB
# boundary.
#   uefi:   1 ESP 128 MiB, 2 root
#   hybrid: 1 BIOS boot partition 1 MiB (GRUB's core.img), 2 ESP 128 MiB, 3 root
DISK_GIB=4
SECTOR=512
DISK_SECTORS=$((DISK_GIB * 1024 * 1024 * 1024 / SECTOR))
FIRST_LBA=2048
BIOS_MIB=1
ESP_MIB=128
ROOT_LAST=$(((DISK_SECTORS - 34) / 2048 * 2048 - 1))
BIOS_TYPE=21686148-6449-6e6f-744e-656564454649
ESP_TYPE=c12a7328-f81f-11d2-ba4b-00a0c93ec93b
ROOT_TYPE=4f68bce3-e8cd-4db1-96e7-fbcaf984b709
# GRUB for i386-pc (Debian: grub-pc-bin): the module directory, and the modules core.img is
# made of (src/layout/grub.rs, MODULES).
GRUB_DIR=/usr/lib/grub/i386-pc
GRUB_MODULES="biosdisk part_gpt part_msdos ext2 fat search linux boot serial terminal"

# row_layout ROW: sets the partition numbers, first LBAs and byte offsets of ROW's layout.
row_layout() {
    if [[ $1 == hybrid ]]; then
        BIOS_PART=1 ESP_PART=2 ROOT_PART=3 NPARTS=3
        BIOS_FIRST=$FIRST_LBA
        ESP_FIRST=$((BIOS_FIRST + BIOS_MIB * 2048))
    else
        BIOS_PART='' ESP_PART=1 ROOT_PART=2 NPARTS=2
        BIOS_FIRST=''
        ESP_FIRST=$FIRST_LBA
    fi
    ROOT_FIRST=$((ESP_FIRST + ESP_MIB * 2048))
    ESP_OFF=$((ESP_FIRST * SECTOR))
    ROOT_OFF=$((ROOT_FIRST * SECTOR))
}

# ---------------------------------------------------------------------------------------------
# Tools
missing=()
command -v mkfs.vfat >/dev/null && command -v fsck.vfat >/dev/null || missing+=(dosfstools)
for t in mcopy mmd mtype; do command -v "$t" >/dev/null || { missing+=(mtools); break; }; done
command -v sgdisk >/dev/null || missing+=(gdisk)
if has_row hybrid; then
    command -v grub-mkimage >/dev/null && [[ -f $GRUB_DIR/boot.img ]] || missing+=(grub-pc-bin)
fi
((${#missing[@]} == 0)) || apt_install "${missing[@]}"
for tool in qemu-img mkfs.ext4 e2fsck debugfs mkfs.vfat fsck.vfat mmd mcopy mtype sgdisk \
    sha256sum truncate dd cmp cp od sync awk; do
    command -v "$tool" >/dev/null ||
        die "$tool not found (Debian: qemu-utils, e2fsprogs, dosfstools, mtools, gdisk, coreutils, diffutils)"
done
command -v openssl >/dev/null || command -v python3 >/dev/null || die "need openssl or python3"
if has_row hybrid; then
    for tool in grub-mkimage dumpe2fs stat; do
        command -v "$tool" >/dev/null || die "$tool not found (Debian: grub-pc-bin, e2fsprogs, coreutils); or BUILD_ROWS=uefi"
    done
    for f in boot.img diskboot.img kernel.img lzma_decompress.img moddep.lst; do
        [[ -f $GRUB_DIR/$f ]] || die "$GRUB_DIR/$f not found (Debian: grub-pc-bin); or BUILD_ROWS=uefi"
    done
fi
# ---------------------------------------------------------------------------------------------
# Inputs (kept between runs). Everything else lives in build-work, not run.sh's work directory,
# so the two scripts can share BENCH_DIR.
mkdir -p "$BENCH_DIR"
BENCH_DIR=$(realpath "$BENCH_DIR")
ROOTFS=$BENCH_DIR/rootfs.ext4
TREE=$BENCH_DIR/rootfs-tree.tmp
# The templates, one per row: templates/ROW.toml with a 4 GiB disk (bench.toml for uefi, the
# name bench/esp.sh reads).
declare -A TEMPLATE=([uefi]=$BENCH_DIR/bench.toml [hybrid]=$BENCH_DIR/bench-hybrid.toml)
WORK=$BENCH_DIR/build-work
JSON_DIR=$BENCH_DIR/hyperfine

cleanup() {
    rm -rf "$WORK" "$TREE"
    rm -f "$ROOTFS.tmp" "${TEMPLATE[uefi]}.tmp" "${TEMPLATE[hybrid]}.tmp"
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
for row in "${ROWS[@]}"; do
    row_layout "$row"
    ((ROOT_OFF + ROOTFS_SIZE <= (ROOT_LAST + 1) * SECTOR)) || die "$ROOTFS does not fit the $row root partition"
done
# Read the whole input once, before anything else, so both tools start from the same warm cache.
cat "$ROOTFS" >/dev/null

# The templates: templates/ROW.toml with a 4 GiB disk.
for row in "${ROWS[@]}"; do
    t=${TEMPLATE[$row]}
    sed 's/^size = "2G"$/size = "'"$DISK_GIB"'G"/' "$ROOT/templates/$row.toml" >"$t.tmp"
    grep -qx "size = \"${DISK_GIB}G\"" "$t.tmp" || die "no 'size = \"2G\"' line in templates/$row.toml"
    mv "$t.tmp" "$t"
done

rm -rf "$WORK"
mkdir -p "$WORK" "$JSON_DIR"

cmdline() {
    local out='' a
    for a in "$@"; do out+="${out:+ }$(q "$a")"; done
    printf '%s' "$out"
}

# Per row: mkomi's bundle, the by-hand output directory (out.qcow2 and SHA256SUMS), the by-hand
# script, both commands as timed, both qcow2 files and the sanity build's SHA256SUMS.
declare -A OMI HAND HAND_SH MK_CMD HAND_CMD OQCOW HQCOW SUMS_FIRST
for row in "${ROWS[@]}"; do
    OMI[$row]=$WORK/omi-$row
    HAND[$row]=$WORK/hand-$row
    HAND_SH[$row]=$WORK/by-hand-$row.sh
done
# build_cmd ROW: sets BUILD, mkomi's command for ROW.
build_cmd() { BUILD=("$MKOMI" build "${TEMPLATE[$1]}" --set "rootfs=$ROOTFS" -o "${OMI[$1]}" --no-sync -q); }

part_guid() { sgdisk -i "$2" "$1" | awk -F': ' '/^Partition unique GUID/ { print tolower($2) }'; }
# The partition table as sgdisk shows it (without the line naming the file), and every entry's
# details.
table() {
    local i
    sgdisk -p "$1" | tail -n +2
    for ((i = 1; i <= NPARTS; i++)); do sgdisk -i "$i" "$1"; done
}
# check_gpt RAW WHAT: sgdisk -v must find no problem.
check_gpt() {
    sgdisk -v "$1" >"$WORK/sgdisk-v" 2>&1 || { cat "$WORK/sgdisk-v" >&2; die "sgdisk -v failed on $2"; }
    grep -q '^No problems found' "$WORK/sgdisk-v" || { cat "$WORK/sgdisk-v" >&2; die "sgdisk -v complains about $2"; }
}
# uint FILE OFFSET BYTES: the unsigned little-endian integer of BYTES (up to 8) at OFFSET.
uint() {
    local v=0 i b
    read -ra b < <(od -An -tu1 -j "$2" -N "$3" "$1")
    ((${#b[@]} == $3)) || die "cannot read $3 bytes at $2 of $1"
    for ((i = $3 - 1; i >= 0; i--)); do v=$((v * 256 + b[i])); done
    echo "$v"
}
# The early configuration mkomi embeds in core.img (src/layout/grub.rs, `config`), as the by-hand
# script writes it: the serial console, the root partition by GRUB's name and by file system UUID
# (`$uuid`, read from the root file system), the kernel with the UEFI entry's command line word by
# word, the initrd, boot. Set by hand_script (it needs ROOT_PART and ROOT_GUID).
EARLY_CFG=''

# hand_script ROW: writes HAND_SH[ROW], what a user would type, from the layout (row_layout) and
# the identifiers read from mkomi's disk. debugfs and mkfs.vfat chat on stderr even when all is
# well.
hand_script() {
    local row=$1 title
    title=$(awk -F'"' '/^name = / { print $2; exit }' "${TEMPLATE[$row]}")
    [[ -n $title ]] || die "no image name in ${TEMPLATE[$row]}"
    EARLY_CFG="printf '%s\\n' 'serial --unit=0 --speed=115200' 'terminal_input serial console' \\
    'terminal_output serial console' \"set root='hd0,gpt$ROOT_PART'\" \\
    \"search --no-floppy --fs-uuid --set=root '\$uuid'\" \\
    \"linux '/boot/vmlinuz-$KVER' 'root=PARTUUID=$ROOT_GUID' 'console=ttyS0'\" \\
    \"initrd '/boot/initrd.img-$KVER'\" boot"
    local parts
    if [[ $row == hybrid ]]; then
        parts="-n $BIOS_PART:$BIOS_FIRST:+${BIOS_MIB}M -t $BIOS_PART:$BIOS_TYPE -c $BIOS_PART:bios -u $BIOS_PART:$BIOS_GUID \\
    "
    else
        parts=''
    fi
    parts+="-n $ESP_PART:$ESP_FIRST:+${ESP_MIB}M -t $ESP_PART:$ESP_TYPE -c $ESP_PART:ESP -u $ESP_PART:$ESP_GUID \\
    -n $ROOT_PART:$ROOT_FIRST:$ROOT_LAST -t $ROOT_PART:$ROOT_TYPE -c $ROOT_PART:root -u $ROOT_PART:$ROOT_GUID"
    {
        cat <<EOF
set -euo pipefail
mkdir $(q "${HAND[$row]}")
cd $(q "${HAND[$row]}")
debugfs -R 'dump $EFI_HOST bootx64.efi' $(q "$ROOTFS") 2>/dev/null
debugfs -R 'dump /boot/vmlinuz-$KVER vmlinuz' $(q "$ROOTFS") 2>/dev/null
debugfs -R 'dump /boot/initrd.img-$KVER initrd.img' $(q "$ROOTFS") 2>/dev/null
printf 'default mkomi.conf\\ntimeout 0\\n' >loader.conf
printf 'title $title\\nlinux /vmlinuz\\ninitrd /initrd.img\\noptions root=PARTUUID=%s console=ttyS0\\n' $ROOT_GUID >mkomi.conf
EOF
        if [[ $row == hybrid ]]; then
            cat <<EOF
uuid=\$(dumpe2fs -h $(q "$ROOTFS") 2>/dev/null | sed -n 's/^Filesystem UUID: *//p')
$EARLY_CFG >early.cfg
grub-mkimage -O i386-pc -d $GRUB_DIR -c early.cfg -p /boot/grub -o core.img \\
    $GRUB_MODULES
EOF
        fi
        cat <<EOF
truncate -s ${ESP_MIB}M esp.img
mkfs.vfat -F 32 -n ESP -i $VOLID esp.img >/dev/null
mmd -i esp.img ::EFI ::EFI/BOOT ::loader ::loader/entries
mcopy -i esp.img bootx64.efi ::EFI/BOOT/BOOTX64.EFI
mcopy -i esp.img vmlinuz initrd.img ::
mcopy -i esp.img loader.conf ::loader/
mcopy -i esp.img mkomi.conf ::loader/entries/
truncate -s ${DISK_GIB}G disk.raw
sgdisk -U $DISK_GUID \\
    $parts \\
    disk.raw >/dev/null
dd if=esp.img of=disk.raw bs=1M seek=$((ESP_OFF >> 20)) conv=notrunc,sparse status=none
dd if=$(q "$ROOTFS") of=disk.raw bs=1M seek=$((ROOT_OFF >> 20)) conv=notrunc,sparse status=none
EOF
        if [[ $row == hybrid ]]; then
            # The offsets are GRUB's (include/grub/i386/pc/boot.h, util/setup.c), as in
            # src/layout/grub.rs.
            cat <<EOF
le() { local i; for ((i = 0; i < \$2; i++)); do printf "\\\\\$(printf %o \$((\$1 >> 8 * i & 255)))"; done; }
dd if=$GRUB_DIR/boot.img of=disk.raw bs=440 count=1 conv=notrunc status=none
le $BIOS_FIRST 8 | dd of=disk.raw bs=1 seek=\$((0x5c)) conv=notrunc status=none
printf '\\377' | dd of=disk.raw bs=1 seek=\$((0x64)) conv=notrunc status=none
printf '\\220\\220' | dd of=disk.raw bs=1 seek=\$((0x66)) conv=notrunc status=none
dd if=core.img of=disk.raw bs=512 seek=$BIOS_FIRST conv=notrunc status=none
sectors=\$(((\$(stat -c %s core.img) + 511) / 512))
{ le $((BIOS_FIRST + 1)) 8; le \$((sectors - 1)) 2; } |
    dd of=disk.raw bs=1 seek=$((BIOS_FIRST * SECTOR + 500)) conv=notrunc status=none
EOF
        fi
        cat <<EOF
qemu-img convert -O qcow2 disk.raw out.qcow2
sha256sum out.qcow2 >SHA256SUMS
rm -f disk.raw esp.img bootx64.efi vmlinuz initrd.img loader.conf mkomi.conf$([[ $row == hybrid ]] && echo ' early.cfg core.img')
EOF
    } >"${HAND_SH[$row]}"
}

# ---------------------------------------------------------------------------------------------
# Sanity: both outputs of every row must be correct and hold the same disk (this also warms the
# page cache).
"$MKOMI" --version >&2
for row in "${ROWS[@]}"; do
    log "sanity checks: $row"
    row_layout "$row"
    build_cmd "$row"
    OMI_DIR=${OMI[$row]}
    "${BUILD[@]}" >&2
    for f in manifest.json SHA256SUMS; do
        [[ -f $OMI_DIR/$f ]] || die "mkomi build did not write $OMI_DIR/$f"
    done
    shopt -s nullglob
    odisks=("$OMI_DIR"/*.qcow2)
    shopt -u nullglob
    ((${#odisks[@]} == 1)) || die "expected one .qcow2 in $OMI_DIR, found: $(ls "$OMI_DIR")"
    OQCOW[$row]=${odisks[0]}
    "$MKOMI" verify "$OMI_DIR" -q >&2 || die "mkomi verify failed on a fresh $row bundle"
    SUMS_FIRST[$row]=$(cat "$OMI_DIR/SHA256SUMS")
    (cd "$OMI_DIR" && sha256sum -c --quiet SHA256SUMS) || die "sha256sum -c failed on a fresh $row bundle"
    qemu-img check -q "${OQCOW[$row]}" || die "qemu-img check failed on ${OQCOW[$row]}"
    MRAW=$WORK/mkomi-$row.raw
    qemu-img convert -O raw "${OQCOW[$row]}" "$MRAW"
    [[ $(stat -c %s "$MRAW") == $((DISK_SECTORS * SECTOR)) ]] || die "mkomi's $row disk is not $DISK_GIB GiB"
    check_gpt "$MRAW" "mkomi's $row disk"

    # The by-hand disk reuses mkomi's identifiers (disk and partition GUIDs, FAT volume id), so
    # the two disks differ only in how the FAT file system is laid out.
    DISK_GUID=$(sgdisk -p "$MRAW" | awk '/^Disk identifier \(GUID\)/ { print tolower($NF) }')
    ESP_GUID=$(part_guid "$MRAW" "$ESP_PART")
    ROOT_GUID=$(part_guid "$MRAW" "$ROOT_PART")
    guids=(DISK_GUID ESP_GUID ROOT_GUID)
    if [[ $row == hybrid ]]; then
        BIOS_GUID=$(part_guid "$MRAW" "$BIOS_PART")
        guids+=(BIOS_GUID)
    fi
    VOLID=$(od -An -tx4 -j $((ESP_OFF + 67)) -N4 "$MRAW" | tr -d ' ')
    for v in "${guids[@]}"; do
        [[ ${!v} =~ ^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$ ]] || die "cannot read $v from mkomi's $row disk"
    done
    [[ $VOLID =~ ^[0-9a-f]{8}$ ]] || die "cannot read the FAT volume id from mkomi's $row ESP"

    hand_script "$row"
    HAND_CMD[$row]="bash $(q "${HAND_SH[$row]}")"
    bash "${HAND_SH[$row]}" || die "the $row by-hand script failed"
    HQCOW[$row]=${HAND[$row]}/out.qcow2
    (cd "${HAND[$row]}" && sha256sum -c --quiet SHA256SUMS) || die "sha256sum -c failed on the $row by-hand output"
    qemu-img check -q "${HQCOW[$row]}" || die "qemu-img check failed on ${HQCOW[$row]}"
    HRAW=$WORK/hand-$row.raw
    qemu-img convert -O raw "${HQCOW[$row]}" "$HRAW"
    check_gpt "$HRAW" "the $row by-hand disk"

    # Same partition table.
    diff <(table "$MRAW") <(table "$HRAW") >&2 || die "the two $row partition tables differ"
    # Same files in the ESP, and both ESPs pass fsck.
    for f in EFI/BOOT/BOOTX64.EFI vmlinuz initrd.img loader/loader.conf loader/entries/mkomi.conf; do
        a=$(mtype -i "$MRAW@@$ESP_OFF" "::$f" | sha256sum)
        b=$(mtype -i "$HRAW@@$ESP_OFF" "::$f" | sha256sum)
        [[ $a == "$b" ]] || die "the two $row ESPs hold different $f"
    done
    a=$(mtype -i "$MRAW@@$ESP_OFF" ::vmlinuz | wc -c)
    [[ $a == $((KERNEL_MIB << 20)) ]] || die "the $row ESP's vmlinuz is $a bytes, not $((KERNEL_MIB << 20))"
    for raw in "$MRAW" "$HRAW"; do
        dd if="$raw" of="$WORK/esp.img" bs=1M skip=$((ESP_OFF >> 20)) count=$ESP_MIB status=none
        fsck.vfat -n "$WORK/esp.img" >"$WORK/fsck" 2>&1 || { cat "$WORK/fsck" >&2; die "fsck.vfat -n failed on the ESP of $raw"; }
    done
    rm -f "$WORK/esp.img"
    # The root partition holds rootfs.ext4 byte for byte in both.
    cmp -s -n "$ROOTFS_SIZE" -i "$ROOT_OFF:0" "$MRAW" "$ROOTFS" || die "mkomi's $row root partition is not $ROOTFS"
    cmp -s -n "$ROOTFS_SIZE" -i "$ROOT_OFF:0" "$HRAW" "$ROOTFS" || die "the $row by-hand root partition is not $ROOTFS"

    if [[ $row == hybrid ]]; then
        # GRUB: the MBR's boot code and the whole BIOS boot partition (core.img and the zeros
        # after it) must be the same bytes in both disks.
        BIOS_OFF=$((BIOS_FIRST * SECTOR))
        cmp -n 440 "$MRAW" "$HRAW" >&2 || die "the MBR boot code (bytes 0..440) differs between the two hybrid disks"
        cmp -n $((BIOS_MIB << 20)) -i "$BIOS_OFF:$BIOS_OFF" "$MRAW" "$HRAW" >&2 ||
            die "the BIOS boot partitions (core.img) differ between the two hybrid disks"
        # And those bytes must be right, checked against GRUB's own files rather than against
        # each other: boot.img but for the four patches, a fresh grub-mkimage of the same
        # configuration but for the block list.
        uuid=$(dumpe2fs -h "$ROOTFS" 2>/dev/null | sed -n 's/^Filesystem UUID: *//p')
        [[ $uuid == "$FS_UUID" ]] || die "dumpe2fs reads the UUID of $ROOTFS as '$uuid', not $FS_UUID"
        eval "$EARLY_CFG" >"$WORK/early.cfg"
        # shellcheck disable=SC2086 # GRUB_MODULES is a list of words
        grub-mkimage -O i386-pc -d "$GRUB_DIR" -c "$WORK/early.cfg" -p /boot/grub -o "$WORK/core.img" \
            $GRUB_MODULES
        core_size=$(stat -c %s "$WORK/core.img")
        core_sectors=$(((core_size + SECTOR - 1) / SECTOR))
        ((core_sectors <= BIOS_MIB * 2048)) || die "core.img ($core_sectors sectors) does not fit the BIOS boot partition"
        [[ $(uint "$MRAW" $((0x5c)) 8) == "$BIOS_FIRST" ]] || die "boot.img in the MBR does not point at LBA $BIOS_FIRST"
        [[ $(uint "$MRAW" $((0x64)) 1) == 255 ]] || die "boot.img's boot drive (0x64) is not 0xff"
        [[ $(uint "$MRAW" $((0x66)) 2) == $((0x9090)) ]] || die "boot.img's drive check (0x66) is not two NOPs"
        diffs=$(cmp -l -n 440 "$GRUB_DIR/boot.img" "$MRAW" | awk '{ print $1 - 1 }' | tr '\n' ' ') || true
        for o in $diffs; do
            ((o >= 0x5c && o < 0x68 && o != 0x65)) || die "the MBR differs from boot.img at byte $o, which is not patched"
        done
        [[ $(uint "$MRAW" $((BIOS_OFF + 500)) 8) == $((BIOS_FIRST + 1)) ]] || die "core.img's block list does not start at LBA $((BIOS_FIRST + 1))"
        [[ $(uint "$MRAW" $((BIOS_OFF + 508)) 2) == $((core_sectors - 1)) ]] || die "core.img's block list is not $((core_sectors - 1)) sectors"
        diffs=$(cmp -l -n "$core_size" -i "0:$BIOS_OFF" "$WORK/core.img" "$MRAW" | awk '{ print $1 - 1 }' | tr '\n' ' ') || true
        for o in $diffs; do
            ((o >= 500 && o < 510)) || die "core.img in the BIOS boot partition differs from grub-mkimage's at byte $o"
        done
        # After core.img, the partition is zeros.
        [[ -z $(dd if="$MRAW" bs=512 skip=$((BIOS_FIRST + core_sectors)) count=$((BIOS_MIB * 2048 - core_sectors)) status=none | tr -d '\0' | head -c 1) ]] ||
            die "the BIOS boot partition holds more than core.img"
        CORE_SECTORS=$core_sectors
        # The rest of sector 0 (disk signature and protective MBR): reported, not required.
        if cmp -s -n 72 -i 440:440 "$MRAW" "$HRAW"; then MBR_TAIL=same; else MBR_TAIL=different; fi
        rm -f "$WORK/early.cfg" "$WORK/core.img"
    fi
    rm -f "$MRAW" "$HRAW"
    # Kept for reading (the copy in WORK is deleted on exit).
    cp "${HAND_SH[$row]}" "$BENCH_DIR/by-hand-$row.sh"
done

# ---------------------------------------------------------------------------------------------
# Timing: every command in one go. Before every run, untimed: remove every output (mkomi refuses
# an existing directory, and so does `mkdir` in the by-hand script) and flush their dirty pages.
PREP="rm -rf"
KEYS=()
for row in "${ROWS[@]}"; do
    PREP+=" $(q "${OMI[$row]}") $(q "${HAND[$row]}")"
    build_cmd "$row"
    MK_CMD[$row]=$(cmdline "${BUILD[@]}")
    KEYS+=("mkomi-$row" "hand-$row")
done
PREP+=" && sync"
declare -A MED CMD
for row in "${ROWS[@]}"; do
    CMD[mkomi-$row]=${MK_CMD[$row]}
    CMD[hand-$row]=${HAND_CMD[$row]}
done

median() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(date +%s)
for key in "${KEYS[@]}"; do log "timing $key: ${CMD[$key]}"; done
if [[ $TIMER == hyperfine ]]; then
    json=$JSON_DIR/build.json
    args=()
    for key in "${KEYS[@]}"; do args+=(-n "$key" "${CMD[$key]}"); done
    hyperfine --shell=bash --style=basic --runs "$RUNS" --warmup "$WARMUP" --prepare "$PREP" \
        --export-json "$json" "${args[@]}" >&2
    mapfile -t meds < <(sed -n 's/.*"median": *\([-0-9.eE+]*\).*/\1/p' "$json")
    ((${#meds[@]} == ${#KEYS[@]})) || die "expected ${#KEYS[@]} medians in $json"
    for i in "${!KEYS[@]}"; do MED[${KEYS[$i]}]=${meds[$i]}; done
else
    # Interleaved, so that a burst of load hits all alike.
    declare -A TIMES
    for ((i = 0; i < WARMUP + RUNS; i++)); do
        for key in "${KEYS[@]}"; do
            bash -c "$PREP"
            t0=$(date +%s%N)
            bash -c "${CMD[$key]}" >/dev/null
            t1=$(date +%s%N)
            ((i < WARMUP)) || TIMES[$key]+="$(((t1 - t0) / 1000)) "
        done
    done
    for key in "${KEYS[@]}"; do
        MED[$key]=$(printf '%s\n' ${TIMES[$key]} | median | awk '{ printf "%.6f", $1 / 1e6 }')
    done
fi
for key in "${KEYS[@]}"; do
    [[ -n ${MED[$key]} ]] || die "no median for $key"
    log "  median $key ${MED[$key]} s"
done

# Peak RSS, one warm run each. For the by-hand script, GNU time reports the largest process.
log "measuring peak RSS"
declare -A RSS_MK RSS_HAND REPRO MSIZE HSIZE
for row in "${ROWS[@]}"; do
    bash -c "$PREP"
    build_cmd "$row"
    /usr/bin/time -f %M -o "$WORK/rss" "${BUILD[@]}" >/dev/null
    RSS_MK[$row]=$(tail -n 1 "$WORK/rss")
    # SOURCE_DATE_EPOCH is fixed, so the last build must be byte-identical to the first.
    if [[ $(cat "${OMI[$row]}/SHA256SUMS") == "${SUMS_FIRST[$row]}" ]]; then
        REPRO[$row]="byte-identical to the sanity build (same SHA256SUMS)"
    else
        REPRO[$row]="**differs** from the sanity build (SHA256SUMS changed)"
        log "warning: the last mkomi $row bundle differs from the first"
    fi
    MSIZE[$row]=$(stat -c %s "${OQCOW[$row]}")
    /usr/bin/time -f %M -o "$WORK/rss" bash "${HAND_SH[$row]}" >/dev/null
    RSS_HAND[$row]=$(tail -n 1 "$WORK/rss")
    HSIZE[$row]=$(stat -c %s "${HQCOW[$row]}")
done

T_END=$(date +%s)
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# Report
fmt_s() { awk -v t="$1" 'BEGIN { printf "%.3f s", t }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

report_context bench/build.sh 'date +%s%N, interleaved'
if printenv BUILD_ROWS >/dev/null; then repro="BUILD_ROWS=$(q "$BUILD_ROWS") $repro"; fi
if [[ -f $EFI_HOST ]]; then efi="this machine's \`systemd-bootx64.efi\`"; else efi="$EFI_FAKE_KIB KiB stand-in for \`systemd-bootx64.efi\`"; fi
declare -A HAND_WHAT=(
    [uefi]='debugfs, mkfs.vfat, mtools, sgdisk, dd, `qemu-img convert -O qcow2`, `sha256sum`'
    [hybrid]='the same, plus `grub-mkimage`, `dd` of core.img and boot.img, their patches with `printf | dd`'
)

{
    echo "## mkomi build benchmark"
    echo
    echo "Input: \`rootfs.ext4\` = 3 GiB ext4 holding \`$BENCH_TREE\` (at /usr/share), an ${KERNEL_MIB} MiB kernel,"
    echo "a ${INITRD_MIB} MiB initrd and $efi ($(mib "$(($(stat -c %b "$ROOTFS") * $(stat -c %B "$ROOTFS")))") allocated)."
    echo "Disks: \`templates/ROW.toml\` with \`size = \"${DISK_GIB}G\"\`. Page cache warm. Ratio = mkomi / by hand (lower is better)."
    echo
    echo "| row | mkomi | median | by hand | median | ratio |"
    echo "|---|---|---|---|---|---|"
    for row in "${ROWS[@]}"; do
        printf '| %s | `build --no-sync` | %s | %s | %s | %s |\n' "$row" \
            "$(fmt_s "${MED[mkomi-$row]}")" "${HAND_WHAT[$row]}" "$(fmt_s "${MED[hand-$row]}")" \
            "$(ratio "${MED[mkomi-$row]}" "${MED[hand-$row]}")"
    done
    echo
    echo "| row | peak RSS mkomi | by hand (largest process) | qcow2 mkomi | qcow2 by hand |"
    echo "|---|---|---|---|---|"
    for row in "${ROWS[@]}"; do
        echo "| $row | $(mib $((RSS_MK[$row] * 1024))) | $(mib $((RSS_HAND[$row] * 1024))) | $(mib "${MSIZE[$row]}") | $(mib "${HSIZE[$row]}") |"
    done
    echo
    for row in "${ROWS[@]}"; do
        echo "- $row: the last mkomi bundle is ${REPRO[$row]}."
    done
    if has_row hybrid; then
        echo "- hybrid: MBR boot code (bytes 0..440) and the BIOS boot partition (core.img, $CORE_SECTORS sectors) identical in both disks; MBR bytes 440..512 $MBR_TAIL."
    fi
    echo
    echo "- machine: $(nproc) CPUs ($cpu), $(uname -sr), load average $LOAD_BEFORE before, $LOAD_AFTER after"
    echo "- $(qemu-img --version | head -n 1); $(mkfs.vfat --help 2>&1 | grep -m1 -o 'mkfs.fat [0-9.]*'); $(mtools --version | head -n 1); $(sgdisk --version | head -n 1)"
    if has_row hybrid; then echo "- $(grub-mkimage --version | head -n 1)"; fi
    echo "- $("$MKOMI" --version) at $rev ($MKOMI)"
    echo "- timing: $timer; timed part took $((T_END - T_START)) s"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "- reproduce: \`$repro\`"
} | tee "$BENCH_DIR/build-results.md"

log "results written to $BENCH_DIR/build-results.md"
