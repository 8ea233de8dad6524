# Shared by bench/run.sh and bench/build.sh: settings, messages, tool checks, the timer and the
# mkomi binary. Sourced, not run.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/mkomi-bench}
BENCH_TREE=${BENCH_TREE:-/usr/share}
RUNS=${RUNS:-5}
WARMUP=${WARMUP:-1}
NO_HYPERFINE=${NO_HYPERFINE:-}

# Fixed identifiers so that the same BENCH_TREE gives the same ext4 images.
FS_UUID=6f0d3c2a-6b5e-4d3e-9a1f-0b1c2d3e4f50
FS_HASH_SEED=6f0d3c2a-6b5e-4d3e-9a1f-0b1c2d3e4f51
FS_EPOCH=1700000000

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be a non-negative integer"

# BENCH_NICE=n (root, or n >= 0): rerun the whole script at CPU priority n in a session of its
# own. Linux shares CPU time between sessions first (autogroup, sched(7)), so a plain `nice`
# only ranks processes within one session and does not outrank other sessions' compilers; the
# session's autogroup nice does.
if [[ -n ${BENCH_NICE:-} && -z ${BENCH_NICE_APPLIED:-} ]]; then
    [[ $BENCH_NICE =~ ^-?[0-9]+$ ]] || die "BENCH_NICE must be an integer"
    export BENCH_NICE_APPLIED=1
    if [[ -w /proc/self/autogroup ]]; then
        exec setsid -w bash -c 'echo "$BENCH_NICE" >"/proc/$$/autogroup" && exec nice -n "$BENCH_NICE" "$@"' \
            bench "$0" "$@"
    fi
    log "warning: no /proc/self/autogroup; BENCH_NICE applies to this session only"
    renice -n "$BENCH_NICE" $$ >/dev/null
fi

apt_install() { # apt_install PACKAGE...: only as root, only when apt-get exists
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        log "trying apt-get install -y $*"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2 || log "apt-get failed"
    fi
}

[[ -x /usr/bin/time ]] || apt_install time
[[ -x /usr/bin/time ]] || die "/usr/bin/time not found (Debian: apt-get install time)"
/usr/bin/time -f %M true 2>/dev/null || die "/usr/bin/time is not GNU time"

# hyperfine when it can be had, else the scripts' own loop.
TIMER=builtin
if [[ -z $NO_HYPERFINE ]]; then
    command -v hyperfine >/dev/null || apt_install hyperfine
    command -v hyperfine >/dev/null && TIMER=hyperfine
fi

# The binary: MKOMI, or a release build of this tree.
if [[ -n ${MKOMI:-} ]]; then
    [[ -x $MKOMI ]] || die "MKOMI=$MKOMI is not an executable"
else
    log "building mkomi (cargo build --release --locked)"
    (cd "$ROOT" && cargo build --release --locked >&2)
    target_dir=${CARGO_TARGET_DIR:-target}
    [[ $target_dir == /* ]] || target_dir=$ROOT/$target_dir
    MKOMI=$target_dir/release/mkomi
fi
MKOMI=$(realpath "$MKOMI")

q() { printf '%q' "$1"; }

# report_context SCRIPT LOOP: sets repro (the command that reproduces the run, with the variables
# the caller set), cpu, rev (the commit, "(dirty)" with local changes) and timer, for the
# report's footer. LOOP describes the built-in timing loop.
report_context() {
    repro=$1
    local v
    for v in MKOMI MKOMI_BASE BENCH_DIR BENCH_TREE BENCH_NICE RUNS WARMUP NO_HYPERFINE; do
        if printenv "$v" >/dev/null; then repro="$v=$(q "$(printenv "$v")") $repro"; fi
    done
    cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ $rev != unknown ]] && [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
        rev+=" (dirty)"
    fi
    if [[ $TIMER == interleaved ]]; then
        timer="interleaved rounds ($2), $RUNS timed + $WARMUP warm-up, each command once a round, median"
    elif [[ $TIMER == hyperfine ]]; then
        timer="$(hyperfine --version), $RUNS runs + $WARMUP warm-up, median"
    else
        timer="built-in loop ($2), $RUNS runs + $WARMUP warm-up, median"
    fi
}
