#!/usr/bin/env bash
# Side-by-side benchmark of mkomi against what a user would otherwise run (qemu-img convert,
# sha256sum, sync). Everything is measured in ONE run on the same machine and reported as
# medians and ratios, because absolute times on shared machines mean little.
# See bench/README.md for what each row means and the targets.
#
# Environment:
#   MKOMI=path     use this binary instead of building with `cargo build --release --locked`
#   MKOMI_BASE=path also time this binary's register (durable and --no-sync) in the same run,
#                  e.g. a build of the commit before a change: rows marked "base"
#   BENCH_DIR=dir  inputs, scratch and results (default /var/tmp/mkomi-bench; inputs are reused)
#   BENCH_TREE=dir directory copied into the ext4 input (default /usr/share)
#   RUNS=n         timed runs per command (default 5); WARMUP=n warm-up runs (default 1)
#   BENCH_NICE=n   run at CPU priority n in a session of its own (see common.sh), e.g. -19 as root
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Peak RSS: register must stay within 16 MiB (issue #12); verify within 128 MiB.
RSS_TARGET_KIB=$((128 * 1024))
RSS_REGISTER_KIB=$((16 * 1024))

# ---------------------------------------------------------------------------------------------
# Tools
for tool in qemu-img mkfs.ext4 sha256sum openssl truncate cp sync awk; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian: qemu-utils, e2fsprogs, coreutils, openssl)"
done
if [[ -n ${MKOMI_BASE:-} ]]; then
    [[ -x $MKOMI_BASE ]] || die "MKOMI_BASE=$MKOMI_BASE is not an executable"
    MKOMI_BASE=$(realpath "$MKOMI_BASE")
fi
# ---------------------------------------------------------------------------------------------
# Inputs (kept between runs)
mkdir -p "$BENCH_DIR"
BENCH_DIR=$(realpath "$BENCH_DIR")
DISK=$BENCH_DIR/disk.ext4
SPARSE=$BENCH_DIR/sparse64.raw
WORK=$BENCH_DIR/work
JSON_DIR=$BENCH_DIR/hyperfine

cleanup() {
    rm -rf "$WORK"
    rm -f "$DISK.tmp" "$SPARSE.tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

avail_kib=$(df -Pk "$BENCH_DIR" | awk 'NR == 2 { print $4 }')
if ((avail_kib < 4 * 1024 * 1024)); then
    log "warning: only $((avail_kib / 1024)) MiB free in $BENCH_DIR; the run needs about 4 GiB"
fi

if [[ ! -f $DISK ]]; then
    log "creating $DISK (3 GiB ext4 with $BENCH_TREE; takes a minute or two)"
    rm -f "$DISK.tmp"
    truncate -s 3G "$DISK.tmp"
    SOURCE_DATE_EPOCH=$FS_EPOCH E2FSPROGS_FAKE_TIME=$FS_EPOCH \
        mkfs.ext4 -q -F -U "$FS_UUID" -E "root_owner=0:0,hash_seed=$FS_HASH_SEED" \
        -d "$BENCH_TREE" "$DISK.tmp"
    mv "$DISK.tmp" "$DISK"
fi
if [[ ! -f $SPARSE ]]; then
    log "creating $SPARSE (the same bytes at offset 0 of a 64 GiB sparse file)"
    rm -f "$SPARSE.tmp"
    cp --sparse=always "$DISK" "$SPARSE.tmp"
    truncate -s 64G "$SPARSE.tmp"
    mv "$SPARSE.tmp" "$SPARSE"
fi

rm -rf "$WORK"
mkdir -p "$WORK" "$JSON_DIR"

# Shell-quoted command line from an argument list.
cmdline() {
    local out='' a
    for a in "$@"; do out+="${out:+ }$(q "$a")"; done
    printf '%s' "$out"
}

BUNDLE=$WORK/bundle        # scratch bundle for the register timings
VBUNDLE=$WORK/verify       # bundle made once, for the verify timings
QOUT=$WORK/out.qcow2       # qemu-img's output

reg_args() { # reg_args SOURCE OUTDIR [extra...]; REG_BIN is the binary (default MKOMI)
    local src=$1 out=$2
    shift 2
    printf '%s\0' "${REG_BIN:-$MKOMI}" register "$src" -o "$out" --arch x86_64 --no-boot-check \
        --name mkomi-bench --format qcow2 -q "$@"
}
mapfile -d '' REG_NOSYNC < <(reg_args "$DISK" "$BUNDLE" --no-sync)
mapfile -d '' REG_SYNC < <(reg_args "$DISK" "$BUNDLE")
mapfile -d '' REG_SPARSE < <(reg_args "$SPARSE" "$BUNDLE" --no-sync)
mapfile -d '' REG_VBUNDLE < <(reg_args "$DISK" "$VBUNDLE")
if [[ -n ${MKOMI_BASE:-} ]]; then
    mapfile -d '' BASE_NOSYNC < <(REG_BIN=$MKOMI_BASE reg_args "$DISK" "$BUNDLE" --no-sync)
    mapfile -d '' BASE_SYNC < <(REG_BIN=$MKOMI_BASE reg_args "$DISK" "$BUNDLE")
fi
VERIFY=("$MKOMI" verify "$VBUNDLE" -q)

# ---------------------------------------------------------------------------------------------
# Sanity: the outputs being timed must be correct (this also warms the page cache).
log "sanity checks"
"$MKOMI" --version >&2
"${REG_VBUNDLE[@]}" >&2
for f in manifest.json SHA256SUMS; do
    [[ -f $VBUNDLE/$f ]] || die "mkomi register did not write $VBUNDLE/$f"
done
shopt -s nullglob
vdisks=("$VBUNDLE"/*.qcow2)
shopt -u nullglob
((${#vdisks[@]} == 1)) || die "expected one .qcow2 in $VBUNDLE, found: $(ls "$VBUNDLE")"
VDISK=${vdisks[0]}
"${VERIFY[@]}" >&2 || die "mkomi verify failed on a fresh bundle"
(cd "$VBUNDLE" && sha256sum -c --quiet SHA256SUMS) || die "sha256sum -c failed on a fresh bundle"
qemu-img compare -q -f raw -F qcow2 "$DISK" "$VDISK" || die "$VDISK differs from $DISK"
"${REG_SPARSE[@]}" >&2
qemu-img compare -q -f raw -F qcow2 "$SPARSE" "$BUNDLE/$(basename "$VDISK")" ||
    die "the bundle of $SPARSE differs from it"
if [[ -n ${MKOMI_BASE:-} ]]; then
    rm -rf "$BUNDLE"
    "${BASE_NOSYNC[@]}" >&2
    # The disks' lines only: the manifest holds its creation date.
    cmp -s <(grep -v ' manifest.json$' "$BUNDLE/SHA256SUMS") <(grep -v ' manifest.json$' "$VBUNDLE/SHA256SUMS") ||
        die "MKOMI_BASE wrote other disks than MKOMI"
fi
rm -rf "$BUNDLE"

# ---------------------------------------------------------------------------------------------
# Timing
declare -A MED CPU

median() { # median of the numbers on stdin
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# bench KEY PREPARE COMMAND: adds COMMAND (a bash command line) to the commands timed by
# run_benches; PREPARE runs before each of its runs, untimed.
KEYS=() PREPS=() CMDS=()
bench() {
    KEYS+=("$1") PREPS+=("$2") CMDS+=("$3")
}

# run_benches: WARMUP rounds, then RUNS timed rounds; each round runs every command once, in
# turn, so a slow spell of the machine (another job, page reclaim, balloon reporting) falls on
# all of them alike rather than on whichever ran back to back through it. Sets MED[KEY] (median
# wall seconds) and CPU[KEY] ("user system", mean CPU seconds, children included).
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

# Outputs are removed before every run (an existing bundle makes register fail), and dirty pages
# of the previous run are flushed so that they are not written back during the next one.
PREP_BUNDLE="rm -rf $(q "$BUNDLE") && sync"
PREP_QOUT="rm -f $(q "$QOUT") && sync"
QCONVERT="qemu-img convert -O qcow2 $(q "$DISK") $(q "$QOUT")"
QSUM="sha256sum $(q "$QOUT")"
QSYNC="sync $(q "$QOUT")"
# The floor for any tool that publishes a file's SHA-256: hashing that file once (OpenSSL uses
# the CPU's SHA instructions, coreutils' sha256sum does not).
OSSL="openssl dgst -sha256 $(q "$VDISK")"

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(date +%s)

bench mk_nosync "$PREP_BUNDLE" "$(cmdline "${REG_NOSYNC[@]}")"
[[ -z ${MKOMI_BASE:-} ]] || bench base_nosync "$PREP_BUNDLE" "$(cmdline "${BASE_NOSYNC[@]}")"
bench ossl ":" "$OSSL"
bench mk_sparse "$PREP_BUNDLE" "$(cmdline "${REG_SPARSE[@]}")"
bench qi_sum "$PREP_QOUT" "$QCONVERT && $QSUM"
bench qi "$PREP_QOUT" "$QCONVERT"
bench mk_sync "$PREP_BUNDLE" "$(cmdline "${REG_SYNC[@]}")"
[[ -z ${MKOMI_BASE:-} ]] || bench base_sync "$PREP_BUNDLE" "$(cmdline "${BASE_SYNC[@]}")"
bench qi_sum_sync "$PREP_QOUT" "$QCONVERT && $QSUM && $QSYNC"
bench qi_sync "$PREP_QOUT" "$QCONVERT && $QSYNC"
bench mk_verify ":" "$(cmdline "${VERIFY[@]}")"
bench sha_c ":" "cd $(q "$VBUNDLE") && sha256sum -c --quiet SHA256SUMS"
run_benches
# qemu-img convert's output, as the last round left it.
QSIZE=$(stat -c %s "$QOUT")

# Peak RSS, one warm run each.
declare -A RSS
rss() { # rss KEY COMMAND...
    local key=$1
    shift
    rm -rf "$BUNDLE"
    /usr/bin/time -f %M -o "$WORK/rss" "$@" >/dev/null
    RSS[$key]=$(tail -n 1 "$WORK/rss")
}
log "measuring peak RSS"
rss mk_nosync "${REG_NOSYNC[@]}"
rss mk_sync "${REG_SYNC[@]}"
MSIZE=$(stat -c %s "$BUNDLE/$(basename "$VDISK")")
rss mk_sparse "${REG_SPARSE[@]}"
MSIZE_SPARSE=$(stat -c %s "$BUNDLE/$(basename "$VDISK")")
rss mk_verify "${VERIFY[@]}"
if [[ -n ${MKOMI_BASE:-} ]]; then
    rss base_nosync "${BASE_NOSYNC[@]}"
    rss base_sync "${BASE_SYNC[@]}"
fi

T_END=$(date +%s)
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# Report
FAILED=0
fmt_s() { awk -v t="$1" 'BEGIN { printf "%.3f s", t }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
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
rss_row() { # rss_row NUM LABEL KEY MAX_KIB
    local kib=${RSS[$3]} v=pass
    if ((kib > $4)); then
        v="**MISS**"
        FAILED=$((FAILED + 1))
    fi
    printf '| %s | %s | %s MiB | ≤ %s MiB | %s |\n' "$1" "$2" "$(mib "$kib")" "$(mib "$4")" "$v"
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
human() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

TIMER=interleaved
report_context bench/run.sh 'date +%s%N'

{
    echo "## mkomi benchmark"
    echo
    echo "Inputs: \`disk.ext4\` = 3 GiB ext4 holding \`$BENCH_TREE\` ($(human "$(($(stat -c %b "$DISK") * $(stat -c %B "$DISK")))") allocated);"
    echo "\`sparse64.raw\` = the same bytes at the start of a 64 GiB sparse file. Page cache warm."
    echo "Ratio = mkomi / baseline (lower is better)."
    echo
    echo "| # | mkomi | median | baseline | median | ratio | target | |"
    echo "|---|---|---|---|---|---|---|---|"
    row 1 '`register --no-sync` disk.ext4' mk_nosync '`qemu-img convert -O qcow2` && `sha256sum`' qi_sum 0.5
    row 1s '`register` (fsync) disk.ext4' mk_sync '`qemu-img convert -O qcow2` && `sha256sum` && `sync FILE`' qi_sum_sync 0.35
    row 1n '`register --no-sync` disk.ext4' mk_nosync '`openssl dgst -sha256` of the output' ossl 1.3
    row 2 '`register --no-sync` disk.ext4' mk_nosync '`qemu-img convert -O qcow2`' qi 2.0
    row 2s '`register` (fsync) disk.ext4' mk_sync '`qemu-img convert -O qcow2` && `sync FILE`' qi_sync 2.0
    row 3 '`verify` bundle' mk_verify '`sha256sum -c SHA256SUMS`' sha_c -
    row 4 '`register --no-sync` sparse64.raw' mk_sparse '`register --no-sync` disk.ext4' mk_nosync 1.3
    if [[ -n ${MKOMI_BASE:-} ]]; then
        row '1s base' '`register` (fsync), MKOMI_BASE' base_sync '`qemu-img convert -O qcow2` && `sha256sum` && `sync FILE`' qi_sum_sync -
        row '1n base' '`register --no-sync`, MKOMI_BASE' base_nosync '`openssl dgst -sha256` of the output' ossl -
        row 'Δs' '`register` (fsync)' mk_sync '`register` (fsync), MKOMI_BASE' base_sync -
        row 'Δn' '`register --no-sync`' mk_nosync '`register --no-sync`, MKOMI_BASE' base_nosync -
    fi
    echo
    # Row 1n's floor: two SHA-256 passes (the file's and the content digest's) plus the copy
    # itself, spread over every core at best. What the CPU time allows is the ratio no
    # scheduling can beat on this machine.
    read -r mu ms <<<"${CPU[mk_nosync]}"
    read -r ou os <<<"${CPU[ossl]}"
    echo "| CPU seconds (mean user + system) | user | system | total |"
    echo "|---|---|---|---|"
    echo "| \`register --no-sync\` disk.ext4 | $mu | $ms | $(awk -v a="$mu" -v b="$ms" 'BEGIN { printf "%.3f", a + b }') |"
    echo "| \`openssl dgst -sha256\` of the output | $ou | $os | $(awk -v a="$ou" -v b="$os" 'BEGIN { printf "%.3f", a + b }') |"
    echo
    echo "Row 1n's floor on $(nproc) cores: \`register --no-sync\`'s CPU time spread evenly over them, over \`openssl\`'s median wall time: $(awk -v a="$mu" -v b="$ms" -v n="$(nproc)" -v o="${MED[ossl]}" 'BEGIN { printf "%.2f", (a + b) / n / o }')."
    echo
    echo "| # | peak RSS of | RSS | target | |"
    echo "|---|---|---|---|---|"
    rss_row 5a '`register --no-sync` disk.ext4' mk_nosync "$RSS_REGISTER_KIB"
    rss_row 5b '`register` (fsync) disk.ext4' mk_sync "$RSS_REGISTER_KIB"
    rss_row 5c '`register --no-sync` sparse64.raw' mk_sparse "$RSS_REGISTER_KIB"
    rss_row 5d '`verify`' mk_verify "$RSS_TARGET_KIB"
    if [[ -n ${MKOMI_BASE:-} ]]; then
        rss_row '5a base' '`register --no-sync`, MKOMI_BASE' base_nosync "$RSS_REGISTER_KIB"
        rss_row '5b base' '`register` (fsync), MKOMI_BASE' base_sync "$RSS_REGISTER_KIB"
    fi
    echo
    echo "Output sizes: mkomi $(basename "$VDISK") $(human "$MSIZE") (of sparse64.raw: $(human "$MSIZE_SPARSE")), qemu-img out.qcow2 $(human "$QSIZE")."
    echo
    echo "- machine: $(nproc) CPUs ($cpu), $(uname -sr), load average $LOAD_BEFORE before, $LOAD_AFTER after"
    echo "- $(qemu-img --version | head -n 1)"
    echo "- $("$MKOMI" --version) at $rev ($MKOMI)${MKOMI_BASE:+; MKOMI_BASE=$MKOMI_BASE}"
    echo "- CPU priority: $(cut -d' ' -f2- /proc/self/autogroup 2>/dev/null || echo '?') (session autogroup), nice $(nice)"
    echo "- timing: $timer; timed part took $((T_END - T_START)) s"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "- reproduce: \`$repro\`"
    if ((FAILED > 0)); then
        echo
        echo "$FAILED target(s) missed."
    fi
} | tee "$BENCH_DIR/results.md"

log "results written to $BENCH_DIR/results.md"
