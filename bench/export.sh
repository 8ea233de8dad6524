#!/usr/bin/env bash
# Side-by-side benchmark of `mkomi export` and `mkomi import` against doing the same by hand,
# in ONE run on the same machine, reported as medians and ratios (see bench/README.md):
#   export: mkomi export BUNDLE --to DIR   vs  qemu-img convert -O qcow2 && pigz && sha256sum
#           (and mkomi register && mkomi export from the raw disk, the same work as by hand)
#   import: mkomi import DIR/manifest.json  vs  gunzip && qemu-img convert -O qcow2 && sha256sum,
#           for a qcow2 package and a raw one (the raw disk is written sparse by hand too)
# The input is the realistic disk of bench/run.sh (disk.ext4: 3 GiB ext4 of /usr/share), made by
# bench/run.sh if missing. Both sides compress at the same gzip level (LEVEL, default 6, pigz's
# default) on all cores.
#
# Environment: MKOMI, BENCH_DIR, RUNS, WARMUP as in bench/run.sh; LEVEL=1..9.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
LEVEL=${LEVEL:-6}
[[ $LEVEL =~ ^[1-9]$ ]] || die "LEVEL must be 1 to 9"

command -v pigz >/dev/null || apt_install pigz
for tool in qemu-img pigz sha256sum hyperfine; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian: qemu-utils, pigz, coreutils, hyperfine)"
done

DISK=$BENCH_DIR/disk.ext4
[[ -f $DISK ]] || { log "making the inputs with bench/run.sh"; RUNS=1 WARMUP=0 "$ROOT/bench/run.sh" >/dev/null; }
W=$BENCH_DIR/export-work
rm -rf "$W"
mkdir -p "$W"
export SOURCE_DATE_EPOCH=1700000000

log "registering $DISK"
"$MKOMI" register "$DISK" -o "$W/bundle" --arch x86_64 --no-boot-check --no-sync -q --audit off >&2
"$MKOMI" export "$W/bundle" --to "$W/pkg" --level "$LEVEL" -q >&2
"$MKOMI" export "$W/bundle" --to "$W/pkg-raw" --format raw --level "$LEVEL" -q >&2

results=$W/results.json
hyperfine --runs "$RUNS" --warmup "$WARMUP" --export-json "$results" \
    -n mkomi-export -p "rm -rf $(q "$W/out")" \
    "$(q "$MKOMI") export $(q "$W/bundle") --to $(q "$W/out") --level $LEVEL -q" \
    -n mkomi-register-export -p "rm -rf $(q "$W/b2") $(q "$W/out2")" \
    "$(q "$MKOMI") register $(q "$DISK") -o $(q "$W/b2") --arch x86_64 --no-boot-check --no-sync -q && $(q "$MKOMI") export $(q "$W/b2") --to $(q "$W/out2") --level $LEVEL -q" \
    -n by-hand-export -p "rm -f $(q "$W/hand.qcow2") $(q "$W/hand.qcow2.gz")" \
    "qemu-img convert -O qcow2 $(q "$DISK") $(q "$W/hand.qcow2") && pigz -$LEVEL $(q "$W/hand.qcow2") && sha256sum $(q "$W/hand.qcow2.gz")" \
    -n mkomi-import -p "rm -rf $(q "$W/back")" \
    "$(q "$MKOMI") import $(q "$W/pkg/manifest.json") -o $(q "$W/back") --no-sync -q" \
    -n by-hand-import -p "rm -f $(q "$W/in.qcow2") $(q "$W/in2.qcow2")" \
    "pigz -dc $(q "$W/pkg/sda1.qcow2.gz") > $(q "$W/in.qcow2") && qemu-img convert -O qcow2 $(q "$W/in.qcow2") $(q "$W/in2.qcow2") && sha256sum $(q "$W/in2.qcow2")" \
    -n mkomi-import-raw -p "rm -rf $(q "$W/back-raw")" \
    "$(q "$MKOMI") import $(q "$W/pkg-raw/manifest.json") -o $(q "$W/back-raw") --no-sync -q" \
    -n by-hand-import-raw -p "rm -f $(q "$W/in.raw") $(q "$W/in3.qcow2")" \
    "pigz -dc $(q "$W/pkg-raw/sda1.raw.gz") | cp --sparse=always /dev/stdin $(q "$W/in.raw") && qemu-img convert -O qcow2 $(q "$W/in.raw") $(q "$W/in3.qcow2") && sha256sum $(q "$W/in3.qcow2")" >&2

python3 - "$results" "$LEVEL" <<'EOF'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
med = lambda n: r[n]["median"]
print(f"| work (gzip level {sys.argv[2]}) | mkomi (s) | by hand (s) | ratio |")
print("|---|---|---|---|")
for what, a, b in (
    ("export of the bundle", "mkomi-export", "by-hand-export"),
    ("register + export of the disk", "mkomi-register-export", "by-hand-export"),
    ("import of the qcow2 package", "mkomi-import", "by-hand-import"),
    ("import of the raw package", "mkomi-import-raw", "by-hand-import-raw"),
):
    print(f"| {what} | {med(a):.2f} | {med(b):.2f} | {med(a) / med(b):.2f} |")
EOF
ls -l "$W/pkg" >&2
