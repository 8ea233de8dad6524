#!/usr/bin/env bash
# Side-by-side benchmark of the local image store against `mkomi register`, in ONE run on the
# same machine, reported as medians and ratios (see bench/README.md):
#   mkomi image create --root DISK (a fresh store)   vs  mkomi register DISK -o BUNDLE
#   a second image of the same, unchanged file       vs  the same register
#   a second image of a copy of the file (same content, another inode, touched before each run so
#   that it is read again: the data is stored once)
#   a second image of the first image's snapshot (--root snap-…)
# Every command fsyncs what it writes (the default). The input is the realistic disk of
# bench/run.sh (disk.ext4: 3 GiB ext4 of /usr/share), made by bench/run.sh if missing.
#
# Environment: MKOMI, BENCH_DIR, RUNS, WARMUP as in bench/run.sh.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
command -v hyperfine >/dev/null || die "hyperfine not found (Debian: hyperfine)"

DISK=$BENCH_DIR/disk.ext4
[[ -f $DISK ]] || { log "making the inputs with bench/run.sh"; RUNS=1 WARMUP=0 "$ROOT/bench/run.sh" >/dev/null; }
W=$BENCH_DIR/store-work
rm -rf "$W"
mkdir -p "$W"
export SOURCE_DATE_EPOCH=1700000000
cp --reflink=auto "$DISK" "$W/copy.ext4"

# A store holding one image of DISK, for the second-image rows.
"$MKOMI" --store "$W/warm" image create --root "$DISK" --arch x86_64 --no-boot-check --name first -q >&2
SNAP=$("$MKOMI" --store "$W/warm" snapshot list | head -1 | cut -d' ' -f1)

results=$W/results.json
hyperfine --runs "$RUNS" --warmup "$WARMUP" --export-json "$results" \
    -n register -p "rm -rf $(q "$W/bundle")" \
    "$(q "$MKOMI") register $(q "$DISK") -o $(q "$W/bundle") --arch x86_64 --no-boot-check -q" \
    -n store-first -p "rm -rf $(q "$W/fresh")" \
    "$(q "$MKOMI") --store $(q "$W/fresh") image create --root $(q "$DISK") --arch x86_64 --no-boot-check -q" \
    -n store-second-same-file -p true \
    "$(q "$MKOMI") --store $(q "$W/warm") image create --root $(q "$DISK") --arch x86_64 --no-boot-check -q" \
    -n store-second-copy-of-file -p "touch $(q "$W/copy.ext4")" \
    "$(q "$MKOMI") --store $(q "$W/warm") image create --root $(q "$W/copy.ext4") --arch x86_64 --no-boot-check --name copy -q" \
    -n store-second-from-snapshot -p true \
    "$(q "$MKOMI") --store $(q "$W/warm") image create --root $SNAP --arch x86_64 --no-boot-check --name again -q" >&2

python3 - "$results" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
med = lambda n: r[n]["median"]
base = med("register")
print("| work | median (s) | ratio to register |")
print("|---|---|---|")
for what, n in (
    ("`register DISK -o BUNDLE`", "register"),
    ("`image create --root DISK`, fresh store", "store-first"),
    ("second image, same unchanged file", "store-second-same-file"),
    ("second image, a copy of the file", "store-second-copy-of-file"),
    ("second image, `--root snap-…`", "store-second-from-snapshot"),
):
    print(f"| {what} | {med(n):.3f} | {med(n) / base:.3f} |")
PY
blobs=$(ls "$W/warm/blobs" | wc -l)
log "the warm store holds $blobs blob(s) after $(("$RUNS" * 3 + "$WARMUP" * 3 + 1)) images"
du -sh "$W/warm/blobs" >&2
