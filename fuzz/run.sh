#!/usr/bin/env bash
# Runs mkomi's fuzz targets, each for a bounded time, and fails if any of them crashes.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# SECONDS per target, 30 by default (CI); every target unless some are named. Builds all the
# targets once (cargo-fuzz, libFuzzer), installing cargo-fuzz from crates.io if it is missing,
# then runs them one after the other. Each target starts from its committed seeds
# (fuzz/seeds/TARGET) and from fuzz/corpus/TARGET, where it keeps what it finds between runs
# (not committed). A crashing, hanging (over 10 s on one input) or memory-hungry (over 2 GiB)
# input is written to fuzz/artifacts/TARGET/ and the script exits 1 after the other targets ran,
# unless the failure is a known open finding of fuzz/regressions/OPEN: that one is reported and
# the target fuzzes on for the rest of its time.
#
# Environment:
#   FUZZ_SANITIZER        address (default) or none (about twice as many runs a second)
#   MKOMI_FUZZ_TARGET_DIR cargo's target directory (default fuzz/target); CI keeps one in /var/tmp
#   FUZZ_ARGS             more libFuzzer options for every target (-jobs=2 -workers=2, -dict=…)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
seconds=${1:-30}
shift || true
all=(qcow2 table fat ext4 ntfs inspect binary os_release regf export_manifest template store tar)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
sanitizer=${FUZZ_SANITIZER:-address}
target_dir=${MKOMI_FUZZ_TARGET_DIR:-$here/target}
case $seconds in '' | *[!0-9]*) echo "fuzz/run.sh: SECONDS must be a number, not $seconds" >&2; exit 2 ;; esac

# libFuzzer's instrumentation needs nightly flags: the nightly toolchain when there is one, else
# the stable one with RUSTC_BOOTSTRAP (the same flags; no toolchain is downloaded).
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  cargo=(cargo +nightly)
else
  echo "fuzz/run.sh: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1" >&2
  export RUSTC_BOOTSTRAP=1
  cargo=(cargo)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

start=$(date +%s)
"${cargo[@]}" fuzz build --sanitizer "$sanitizer" --codegen-units 16 --target-dir "$target_dir"
built=$(date +%s)
echo "fuzz: built ${#all[@]} targets in $((built - start)) s (sanitizer $sanitizer)"

bin_dir=$target_dir/x86_64-unknown-linux-gnu/release
# The qcow2 target writes each input to a file; a private TMPDIR keeps those out of /tmp.
export TMPDIR=$(mktemp -d)
trap 'rm -rf "$TMPDIR"' EXIT
logs=$here/artifacts/logs
mkdir -p "$logs"
failed=()
for t in "${targets[@]}"; do
  if [ ! -x "$bin_dir/$t" ]; then
    echo "fuzz/run.sh: no fuzz target $t (targets: ${all[*]})" >&2
    exit 2
  fi
  mkdir -p "corpus/$t" "artifacts/$t"
  log=$logs/$t.log
  : >"$log"
  # A failure listed in regressions/OPEN (found before, not fixed yet) is reported, not counted,
  # and the target goes on for the rest of its time; any other failure ends it.
  t0=$(date +%s)
  left=$seconds
  # libFuzzer's inputs are as long as the longest seed unless told; os-release files are read up
  # to 64 KiB (inspect::osrelease::MAX_LEN).
  case $t in os_release) max_len=-max_len=65536 ;; *) max_len= ;; esac
  status=ok
  runs=0
  known=()
  while :; do
    one=$logs/$t.last.log
    # shellcheck disable=SC2086 # FUZZ_ARGS and max_len are lists of options
    # A target may have no committed seeds yet (tar: tests/fuzz_corpus.rs must learn it first).
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    if "$bin_dir/$t" "corpus/$t" "${seeds[@]}" -max_total_time="$left" -timeout=10 \
      -rss_limit_mb=2048 -artifact_prefix="artifacts/$t/" -print_final_stats=1 $max_len ${FUZZ_ARGS:-} \
      >"$one" 2>&1; then
      ok=1
    else
      ok=0
    fi
    cat "$one" >>"$log"
    n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$one" | tail -n 1)
    runs=$((runs + ${n:-0}))
    [ $ok = 1 ] && break
    match=$(awk -v t="$t" '$1 == t && !/^#/ { print $2, $3 }' regressions/OPEN 2>/dev/null \
      | while read -r file frame; do
        if grep -qE -- "$frame" "$one"; then echo "$file ($frame)"; break; fi
      done)
    if [ -z "$match" ]; then
      status=failed
      break
    fi
    known+=("$match")
    left=$((seconds - ($(date +%s) - t0)))
    [ "$left" -gt 0 ] && [ ${#known[@]} -lt 20 ] || break
  done
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 || true)
  if [ $status = ok ]; then
    echo "fuzz: $t: ok, $runs runs in $((($(date +%s) - t0))) s, ${cov:-cov: ?}"
    for k in "${known[@]}"; do
      echo "fuzz: $t:   known open finding (fuzz/regressions/OPEN): $k"
    done
  else
    failed+=("$t")
    echo "fuzz: $t: FAILED; the input is in fuzz/artifacts/$t/, the log in $log:"
    grep -E '^(==[0-9]+==|thread |SUMMARY|panicked|Test unit written|artifact_prefix)|^ +#[0-9]+ .* in (mkomi|ext4_view|imago)' "$one" \
      | head -n 30 || tail -n 30 "$one"
  fi
done
echo "fuzz: ${#targets[@]} targets, ${#failed[@]} failed, $(($(date +%s) - start)) s in all"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]}; reproduce with: $bin_dir/TARGET fuzz/artifacts/TARGET/crash-…" >&2
  exit 1
fi
