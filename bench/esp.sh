#!/usr/bin/env bash
# What the ESP costs a build: `mkomi build --no-sync` of bench/build.sh's template (4 GiB disk,
# 128 MiB ESP over its 3 GiB rootfs.ext4), and of the same template with the ESP left empty,
# for MKOMI and, if set, MKOMI_BASE (e.g. a build of an older commit), in interleaved rounds
# (every command once a round, after one warm-up round); prints median wall times and the
# ESP's share. Run bench/build.sh once first: it makes the inputs in BENCH_DIR.
#
#   MKOMI=target/release/mkomi MKOMI_BASE=/path/to/old/mkomi N=7 bench/esp.sh
set -euo pipefail
BENCH_DIR=${BENCH_DIR:-/var/tmp/mkomi-bench}
N=${N:-7}
MKOMI=$(realpath "${MKOMI:?set MKOMI to the binary to measure}")
[[ -z ${MKOMI_BASE:-} ]] || MKOMI_BASE=$(realpath "$MKOMI_BASE")
cd "$BENCH_DIR"
[[ -f rootfs.ext4 && -f bench.toml ]] || { echo "bench/esp.sh: run bench/build.sh first ($BENCH_DIR)" >&2; exit 1; }
export SOURCE_DATE_EPOCH=1700000000
# The template with the ESP empty and no bootloader section.
python3 - <<'P'
s = open("bench.toml").read().replace('content = "esp"', 'content = "empty"')
open("bench-empty.toml", "w").write(s[: s.index("[bootloader]")])
P
bins=("after=$MKOMI")
[[ -z ${MKOMI_BASE:-} ]] || bins=("before=$MKOMI_BASE" "${bins[@]}")
out=$(mktemp) work=$(mktemp -d)
trap 'rm -rf "$out" "$work"' EXIT
for ((i = 0; i <= N; i++)); do
  for b in "${bins[@]}"; do
    for t in bench bench-empty; do
      extra=()
      [[ $t == bench-empty ]] && extra=(--no-boot-check)
      rm -rf "$work/omi"
      sync
      /usr/bin/time -f "${b%%=*}/$t %e" -a -o "$out" "${b#*=}" build "$t.toml" --set rootfs=rootfs.ext4 \
        -o "$work/omi" --no-sync -q "${extra[@]}" >/dev/null
      ((i > 0)) || sed -i '$d' "$out"
    done
  done
done
python3 - "$out" <<'P'
import sys, statistics as st, collections
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    k, e = line.split()
    d[k].append(float(e))
m = {k: st.median(v) for k, v in d.items()}
for k in sorted(m):
    print(f"{k:20} median {m[k]:.3f} s (min {min(d[k]):.2f}, max {max(d[k]):.2f}, {len(d[k])} runs)")
for b in ("before", "after"):
    if b + "/bench" in m:
        esp = m[b + "/bench"] - m[b + "/bench-empty"]
        print(f"{b}: the ESP costs {esp:.3f} s, {100 * esp / m[b + '/bench']:.0f} % of the build")
if "before/bench" in m:
    print(f"after / before: {m['after/bench'] / m['before/bench']:.2f}")
P
