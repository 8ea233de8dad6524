//! Reliability of the local image store (`mkomi --store`), through the real binary only: many
//! processes at once on one store, SIGKILL at any point of `snapshot create` and `image create`,
//! and damaged catalog or blob files. Every child runs under a time limit.
//!
//! Expected ContentDigests are computed here from the bytes written (SHA-256 of each 4 MiB block,
//! then SHA-256 of those), independently of mkomi's own code.

mod common;

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The limit of any one mkomi run (and of a batch of concurrent ones).
const LIMIT: Duration = Duration::from_secs(60);
/// The ContentDigest's block.
const BLOCK: usize = 4 << 20;

// ---------------------------------------------------------------------------------------------
// Data and digests
// ---------------------------------------------------------------------------------------------

/// xorshift64*: fast noise, so that each source has content of its own.
struct Noise(u64);

impl Noise {
    fn new(seed: u64) -> Self {
        Noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

fn block_hash(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

fn digest_of_blocks(blocks: &[[u8; 32]]) -> String {
    let mut h = Sha256::new();
    for b in blocks {
        h.update(b);
    }
    format!("sha256-4m:{}", hex::encode(h.finalize()))
}

/// The ContentDigest of a disk holding `data`: mkomi rounds it up to a whole 512-byte sector.
fn content_digest(data: &[u8]) -> String {
    let mut disk = data.to_vec();
    disk.resize(data.len().next_multiple_of(512), 0);
    let blocks: Vec<[u8; 32]> = disk.chunks(BLOCK).map(block_hash).collect();
    digest_of_blocks(&blocks)
}

/// The blob file the store keeps for a ContentDigest.
fn blob_name(digest: &str) -> String {
    format!("{}.qcow2", digest.replace(':', "-"))
}

/// Writes `len` bytes of noise seeded with `seed` to `path`; returns their ContentDigest.
fn noise_file(path: &Path, len: usize, seed: u64) -> String {
    let data = Noise::new(seed).bytes(len);
    std::fs::write(path, &data).unwrap();
    content_digest(&data)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Running mkomi on a store
// ---------------------------------------------------------------------------------------------

/// `mkomi -q --store STORE ARGS…`.
fn cmd(store: &Path, args: &[&str]) -> Command {
    let mut c = mkomi();
    c.arg("-q").arg("--store").arg(store).args(args);
    c
}

fn st(store: &Path, args: &[&str]) -> Output {
    run_with_timeout(cmd(store, args), LIMIT)
}

/// Runs and requires exit 0; returns stdout, trimmed.
fn st_ok(store: &Path, args: &[&str]) -> String {
    let out = st(store, args);
    assert!(
        out.status.success(),
        "mkomi --store {} {args:?} failed ({:?}): {}",
        store.display(),
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_owned()
}

fn json_ok(store: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = st_ok(store, &a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// `snapshot list --json`, by ID: each of Outscale's `Snapshots` with mkomi's fields for it
/// (`Mkomi`, by ID) added.
fn snapshots(store: &Path) -> BTreeMap<String, Value> {
    let listed = json_ok(store, &["snapshot", "list"]);
    listed["Snapshots"]
        .as_array()
        .expect("snapshot list --json: Snapshots, an array")
        .iter()
        .map(|v| {
            let id = v["SnapshotId"].as_str().unwrap().to_owned();
            let mut merged = v.clone();
            if let (Some(m), Some(extra)) =
                (merged.as_object_mut(), listed["Mkomi"][&id].as_object())
            {
                m.extend(extra.clone());
            }
            (id, merged)
        })
        .collect()
}

/// `image list --json`, by ID.
fn images(store: &Path) -> BTreeMap<String, Value> {
    json_ok(store, &["image", "list"])["Images"]
        .as_array()
        .expect("image list --json: an array")
        .iter()
        .map(|v| (v["ImageId"].as_str().unwrap().to_owned(), v.clone()))
        .collect()
}

/// `image show --json`: Outscale's `Image` object, with mkomi's `CopiedFrom` added.
fn image_show(store: &Path, id: &str) -> Value {
    let shown = json_ok(store, &["image", "show", id]);
    let mut image = shown["Image"].clone();
    image["CopiedFrom"] = shown["Mkomi"]["CopiedFrom"].clone();
    image
}

/// The snapshot IDs of an image's mappings, in order.
fn mapping_snaps(image: &Value) -> Vec<String> {
    image["BlockDeviceMappings"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| m["Bsu"]["SnapshotId"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The ContentDigest of a snapshot, as `snapshot show` prints it or [`snapshots`] lists it.
fn digest_of(snapshot: &Value) -> String {
    snapshot["Mkomi"]["ContentDigest"]
        .as_str()
        .or(snapshot["ContentDigest"].as_str())
        .unwrap_or("")
        .to_owned()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `store check --json`: exit code and report.
fn check(store: &Path) -> (Option<i32>, Value) {
    let out = st(store, &["--json", "store", "check"]);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "store check --json printed no JSON ({e}; exit {:?}): {}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    (out.status.code(), report)
}

fn blob_files(store: &Path) -> BTreeSet<String> {
    entries(&store.join("blobs")).into_iter().collect()
}

/// The blob files the snapshots reference: one per distinct ContentDigest.
fn referenced_blobs(snaps: &BTreeMap<String, Value>) -> BTreeSet<String> {
    snaps.values().map(|v| blob_name(&digest_of(v))).collect()
}

/// A child whose output goes to files (a pipe could fill and stall it).
struct Running {
    label: String,
    started: Instant,
    child: Child,
    /// Readable once the child has ended: waited on with `poll`, never by spinning, so that the
    /// watcher takes no core from the children it watches.
    pidfd: OwnedFd,
    out: PathBuf,
    err: PathBuf,
}

/// A file descriptor that becomes readable when `child` ends (pidfd_open(2)). The child is not
/// reaped before [`Child::wait`], so its PID cannot have been reused.
fn pidfd(child: &Child) -> OwnedFd {
    // SAFETY: a plain system call; the descriptor it returns is owned here alone.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new descriptor nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// Blocks until one of `fds` is readable or `timeout` passes; returns which are readable.
fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Duration) -> Vec<bool> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `polled` is a valid array of `polled.len()` pollfd structures.
    let n = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "poll: {e}");
        return vec![false; fds.len()];
    }
    polled.iter().map(|p| p.revents != 0).collect()
}

/// CPU time this thread has used: what a watcher costs the children it watches.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write to.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(r, 0);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// How a child ended.
struct Done {
    label: String,
    /// How long it ran.
    took: Duration,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Done {
    fn ok(&self) -> bool {
        self.status.success()
    }
}

fn spawn(store: &Path, args: &[String], logs: &Path, label: &str) -> Running {
    let out = logs.join(format!("{label}.out"));
    let err = logs.join(format!("{label}.err"));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = cmd(store, &a)
        .stdout(Stdio::from(File::create(&out).unwrap()))
        .stderr(Stdio::from(File::create(&err).unwrap()))
        .spawn()
        .expect("spawn mkomi");
    Running {
        label: label.to_owned(),
        started: Instant::now(),
        pidfd: pidfd(&child),
        child,
        out,
        err,
    }
}

fn collect(r: Running, status: ExitStatus) -> Done {
    Done {
        label: r.label,
        took: r.started.elapsed(),
        status,
        stdout: std::fs::read_to_string(&r.out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&r.err).unwrap_or_default(),
    }
}

/// Waits for all, within `limit` overall; kills the rest and fails the test after it. The wait
/// blocks in `poll` on the children's pidfds: it spins no core.
fn wait_all(mut running: Vec<Running>, limit: Duration) -> Vec<Done> {
    let deadline = Instant::now() + limit;
    let mut done: Vec<Option<Done>> = (0..running.len()).map(|_| None).collect();
    let mut slots: Vec<Option<Running>> = running.drain(..).map(Some).collect();
    loop {
        let mut pending = false;
        for (i, slot) in slots.iter_mut().enumerate() {
            let Some(r) = slot else { continue };
            match r.child.try_wait().expect("try_wait") {
                Some(status) => done[i] = Some(collect(slot.take().unwrap(), status)),
                None => pending = true,
            }
        }
        if !pending {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let mut hung = Vec::new();
            for r in slots.iter_mut().flatten() {
                let _ = r.child.kill();
                let _ = r.child.wait();
                hung.push(r.label.clone());
            }
            panic!("still running after {limit:?}, killed: {hung:?}");
        }
        let fds: Vec<BorrowedFd<'_>> = slots.iter().flatten().map(|r| r.pidfd.as_fd()).collect();
        poll_readable(&fds, left);
    }
    done.into_iter().map(Option::unwrap).collect()
}

/// Waits for one child within `limit` (killing it and failing the test after).
fn wait_one(r: Running, limit: Duration) -> Done {
    wait_all(vec![r], limit).pop().unwrap()
}

/// No process may report a busy or locked catalog, nor panic: what it said if it did.
fn contention(d: &Done) -> Option<String> {
    let e = d.stderr.to_lowercase();
    ["busy", "locked", "panicked", "database is"]
        .iter()
        .find(|w| e.contains(**w))
        .map(|w| {
            format!(
                "{}: stderr mentions {w:?} after {:?} (exit {:?}): {}",
                d.label,
                d.took,
                d.status.code(),
                d.stderr.trim()
            )
        })
}

fn is_snap_id(s: &str) -> bool {
    s.len() == 13
        && s.starts_with("snap-")
        && s[5..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_ami_id(s: &str) -> bool {
    s.len() == 12
        && s.starts_with("ami-")
        && s[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

// ---------------------------------------------------------------------------------------------
// 1. Concurrency
// ---------------------------------------------------------------------------------------------

/// What a concurrent process does, and what it must leave.
#[derive(Clone, Debug)]
enum Op {
    /// `snapshot create` of content whose digest is known.
    SnapCreate { digest: String },
    /// `image create --root PATH [--bdm /dev/sdb=PATH]`: the digests of root and extra disk.
    ImagePath { digests: Vec<String> },
    /// `image create --root snap-… [--bdm /dev/sdb=snap-…]`.
    ImageSnap { snaps: Vec<String> },
    /// `image copy`.
    Copy { src: String },
    /// `image delete [--with-snapshots]` of an image made in an earlier round.
    Delete { ami: String, with_snapshots: bool },
    /// `snapshot delete` of a snapshot an image uses: must be refused.
    RefusedDelete { snap: String },
    /// `snapshot list --json` while the others run.
    ListSnaps,
    /// `image list --json` while the others run.
    ListImages,
}

/// What the store must hold, from what the processes reported.
#[derive(Default)]
struct Model {
    /// Snapshot → ContentDigest.
    snaps: BTreeMap<String, String>,
    /// Image → its mappings' snapshots.
    images: BTreeMap<String, Vec<String>>,
    /// Images made from paths (their snapshots are theirs alone), oldest first.
    path_images: Vec<String>,
    /// Snapshots made by `snapshot create`, oldest first.
    plain_snaps: Vec<String>,
    deleted_images: BTreeSet<String>,
    deleted_snaps: BTreeSet<String>,
    refused: BTreeSet<String>,
    /// Refused deletes seen.
    refusals: usize,
}

#[test]
fn concurrent_processes_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let src = tmp.path().join("src");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&logs).unwrap();
    // One content that many sources share, across rounds: its blob must be stored once.
    let shared = Noise::new(1000).bytes(3 * (1 << 20) + 4096);
    let shared_digest = content_digest(&shared);
    let write_shared = |name: &str| {
        let p = src.join(name);
        std::fs::write(&p, &shared).unwrap();
        p
    };
    let mut model = Model::default();
    let mut seed = 1u64;
    let mut fresh = |name: &str, len: usize| {
        seed += 1;
        let p = src.join(name);
        let d = noise_file(&p, len, seed);
        (p, d)
    };
    let mut peak = 0;
    let mut bad: Vec<String> = Vec::new();
    const ROUNDS: usize = 4;
    for round in 0..ROUNDS {
        let mut jobs: Vec<(Op, Vec<String>)> = Vec::new();
        let arg = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<String>>();
        // Distinct contents, of sizes around the 4 MiB block.
        for k in 0..3 {
            let len = (1 << 20) + (round * 3 + k) * 700_001 + k * (2 << 20);
            let (p, d) = fresh(&format!("u{round}-{k}.raw"), len);
            jobs.push((
                Op::SnapCreate { digest: d },
                arg(&["snapshot", "create", s(&p), "--description", "distinct"]),
            ));
        }
        // Identical contents, from different files.
        for k in 0..3 {
            let p = write_shared(&format!("same{round}-{k}.raw"));
            jobs.push((
                Op::SnapCreate {
                    digest: shared_digest.clone(),
                },
                arg(&["snapshot", "create", s(&p)]),
            ));
        }
        // Images from paths; the first with an extra disk of the shared content.
        for k in 0..3 {
            let (p, d) = fresh(&format!("root{round}-{k}.raw"), (2 << 20) + k * 65_536);
            let name = format!("path-{round}-{k}");
            let mut a = arg(&[
                "image",
                "create",
                "--root",
                s(&p),
                "--arch",
                "x86_64",
                "--no-boot-check",
                "--name",
                &name,
            ]);
            let mut digests = vec![d];
            if k == 0 {
                let extra = write_shared(&format!("sdb{round}.raw"));
                a.extend(arg(&["--bdm", &format!("/dev/sdb={}", s(&extra))]));
                digests.push(shared_digest.clone());
            }
            jobs.push((Op::ImagePath { digests }, a));
        }
        if round > 0 && model.path_images.len() >= 3 && !model.plain_snaps.is_empty() {
            // Images of earlier rounds: two deleted, two copied, none both.
            let del = [model.path_images[0].clone(), model.path_images[1].clone()];
            let keep: Vec<String> = model
                .images
                .keys()
                .filter(|i| !del.contains(i))
                .cloned()
                .collect();
            let copies = [model.path_images[2].clone(), keep[keep.len() - 1].clone()];
            for (i, ami) in del.iter().enumerate() {
                let with = i == 1;
                let mut a = arg(&["--json", "image", "delete", ami]);
                if with {
                    a.push("--with-snapshots".into());
                }
                jobs.push((
                    Op::Delete {
                        ami: ami.clone(),
                        with_snapshots: with,
                    },
                    a,
                ));
            }
            for src_ami in &copies {
                let name = format!("copy-{round}");
                jobs.push((
                    Op::Copy {
                        src: src_ami.clone(),
                    },
                    arg(&["image", "copy", src_ami, "--name", &name]),
                ));
            }
            // Images from snapshots made earlier, one snapshot used by both.
            let n = model.plain_snaps.len();
            let x = model.plain_snaps[round % n].clone();
            let y = model.plain_snaps[(round * 7 + 1) % n].clone();
            let y = if y == x {
                model.plain_snaps[(round * 7 + 2) % n].clone()
            } else {
                y
            };
            let name = format!("snap-root-{round}");
            jobs.push((
                Op::ImageSnap {
                    snaps: vec![x.clone()],
                },
                arg(&[
                    "image",
                    "create",
                    "--root",
                    &x,
                    "--arch",
                    "x86_64",
                    "--no-boot-check",
                    "--name",
                    &name,
                ]),
            ));
            let name = format!("snap-both-{round}");
            jobs.push((
                Op::ImageSnap {
                    snaps: vec![y.clone(), x.clone()],
                },
                arg(&[
                    "image",
                    "create",
                    "--root",
                    &y,
                    "--bdm",
                    &format!("/dev/sdb={x}"),
                    "--arch",
                    "x86_64",
                    "--no-boot-check",
                    "--name",
                    &name,
                ]),
            ));
            // Deleting snapshots that committed images (not deleted this round) use.
            let in_use: Vec<String> = keep
                .iter()
                .flat_map(|i| model.images[i].iter().cloned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            for snap in [in_use[0].clone(), in_use[in_use.len() - 1].clone()] {
                jobs.push((
                    Op::RefusedDelete { snap: snap.clone() },
                    arg(&["snapshot", "delete", &snap]),
                ));
            }
        }
        jobs.push((Op::ListSnaps, arg(&["--json", "snapshot", "list"])));
        jobs.push((Op::ListImages, arg(&["--json", "image", "list"])));
        peak = peak.max(jobs.len());
        assert!(jobs.len() >= 8);

        // What was committed before this round, and is not being deleted in it.
        let deleting: BTreeSet<String> = jobs
            .iter()
            .filter_map(|(op, _)| match op {
                Op::Delete { ami, .. } => Some(ami.clone()),
                _ => None,
            })
            .collect();
        let stable_images: BTreeSet<String> = model
            .images
            .keys()
            .filter(|i| !deleting.contains(*i))
            .cloned()
            .collect();
        let stable_snaps: BTreeSet<String> = model
            .snaps
            .keys()
            .filter(|sn| {
                !deleting
                    .iter()
                    .any(|d| model.images[d].contains(sn) && model.path_images.contains(d))
            })
            .cloned()
            .collect();

        // All at once.
        let running: Vec<Running> = jobs
            .iter()
            .enumerate()
            .map(|(i, (_, a))| spawn(&store, a, &logs, &format!("r{round}-{i}")))
            .collect();
        let results = wait_all(running, LIMIT);

        for ((op, a), d) in jobs.iter().zip(&results) {
            let what = format!("round {round}, {a:?}");
            // A process that failed is recorded, and left out of the model: the checks go on.
            if let Some(c) = contention(d) {
                bad.push(format!("{what}: {c}"));
                continue;
            }
            match op {
                Op::RefusedDelete { snap } => {
                    assert_eq!(
                        d.status.code(),
                        Some(1),
                        "{what}: deleting a snapshot in use must be refused; stdout {:?} stderr {:?}",
                        d.stdout,
                        d.stderr
                    );
                    let lines: Vec<&str> = d.stderr.lines().collect();
                    assert_eq!(lines.len(), 1, "{what}: one line: {:?}", d.stderr);
                    assert!(
                        lines[0].contains(snap.as_str()) && lines[0].contains("used by ami-"),
                        "{what}: the refusal names the snapshot and its images: {:?}",
                        lines[0]
                    );
                    // Still there, as it was.
                    let v = json_ok(&store, &["snapshot", "show", snap]);
                    assert_eq!(digest_of(&v), model.snaps[snap], "{what}");
                    model.refused.insert(snap.clone());
                    model.refusals += 1;
                    continue;
                }
                _ if !d.ok() => {
                    bad.push(format!(
                        "{what} failed after {:?} ({:?}): {}",
                        d.took,
                        d.status,
                        d.stderr.trim()
                    ));
                    continue;
                }
                _ => {}
            }
            let out = d.stdout.trim();
            match op {
                Op::SnapCreate { digest } => {
                    assert!(is_snap_id(out), "{what}: printed {out:?}");
                    assert!(
                        model.snaps.insert(out.to_owned(), digest.clone()).is_none(),
                        "{what}: {out} was printed twice"
                    );
                    model.plain_snaps.push(out.to_owned());
                }
                Op::ImagePath { digests } => {
                    assert!(is_ami_id(out), "{what}: printed {out:?}");
                    let show = image_show(&store, out);
                    assert_eq!(show["State"], "available", "{what}: {show}");
                    let sn = mapping_snaps(&show);
                    assert_eq!(sn.len(), digests.len(), "{what}: mappings {show}");
                    for (snap, dg) in sn.iter().zip(digests) {
                        assert!(
                            model.snaps.insert(snap.clone(), dg.clone()).is_none(),
                            "{what}: {snap} reused"
                        );
                    }
                    model.images.insert(out.to_owned(), sn);
                    model.path_images.push(out.to_owned());
                }
                Op::ImageSnap { snaps } => {
                    assert!(is_ami_id(out), "{what}: printed {out:?}");
                    let show = image_show(&store, out);
                    assert_eq!(show["State"], "available", "{what}: {show}");
                    assert_eq!(&mapping_snaps(&show), snaps, "{what}: {show}");
                    model.images.insert(out.to_owned(), snaps.clone());
                }
                Op::Copy { src } => {
                    assert!(is_ami_id(out), "{what}: printed {out:?}");
                    let show = image_show(&store, out);
                    assert_eq!(show["State"], "available", "{what}: {show}");
                    assert_eq!(show["CopiedFrom"], src.as_str(), "{what}: {show}");
                    let sn = mapping_snaps(&show);
                    let orig = model.images[src].clone();
                    assert_eq!(sn.len(), orig.len(), "{what}: {show}");
                    for (new, old) in sn.iter().zip(&orig) {
                        let dg = model.snaps[old].clone();
                        assert!(
                            model.snaps.insert(new.clone(), dg).is_none(),
                            "{what}: the copy reuses snapshot {new}"
                        );
                    }
                    model.images.insert(out.to_owned(), sn);
                }
                Op::Delete {
                    ami,
                    with_snapshots,
                } => {
                    let rep: Value = serde_json::from_str(out)
                        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {out}"));
                    assert_eq!(rep["ImageId"], ami.as_str(), "{what}: {rep}");
                    let sn: BTreeSet<String> = model.images[ami].iter().cloned().collect();
                    let deleted: BTreeSet<String> =
                        strings(&rep["SnapshotsDeleted"]).into_iter().collect();
                    let kept: BTreeSet<String> =
                        strings(&rep["SnapshotsKept"]).into_iter().collect();
                    if *with_snapshots {
                        // Its snapshots are its alone (made from paths).
                        assert_eq!(deleted, sn, "{what}: {rep}");
                        assert!(kept.is_empty(), "{what}: {rep}");
                    } else {
                        assert!(deleted.is_empty(), "{what}: {rep}");
                        assert_eq!(kept, sn, "{what}: {rep}");
                    }
                    model.images.remove(ami);
                    model.path_images.retain(|i| i != ami);
                    model.deleted_images.insert(ami.clone());
                    for snap in deleted {
                        model.snaps.remove(&snap);
                        model.deleted_snaps.insert(snap);
                    }
                }
                Op::ListSnaps => {
                    let listed: BTreeSet<String> = serde_json::from_str::<Value>(out)
                        .unwrap_or_else(|e| panic!("{what}: not JSON ({e})"))["Snapshots"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v["SnapshotId"].as_str().unwrap().to_owned())
                        .collect();
                    let missing: Vec<&String> = stable_snaps.difference(&listed).collect();
                    assert!(
                        missing.is_empty(),
                        "{what}: a reader missed committed snapshots {missing:?}"
                    );
                }
                Op::ListImages => {
                    let listed: BTreeSet<String> = serde_json::from_str::<Value>(out)
                        .unwrap_or_else(|e| panic!("{what}: not JSON ({e})"))["Images"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v["ImageId"].as_str().unwrap().to_owned())
                        .collect();
                    let missing: Vec<&String> = stable_images.difference(&listed).collect();
                    assert!(
                        missing.is_empty(),
                        "{what}: a reader missed committed images {missing:?}"
                    );
                }
                Op::RefusedDelete { .. } => unreachable!(),
            }
        }
    }
    assert!(peak >= 8);

    // Everything reported is there, with the right content; nothing else is.
    let snaps = snapshots(&store);
    let have: BTreeSet<&String> = snaps.keys().collect();
    let want: BTreeSet<&String> = model.snaps.keys().collect();
    assert_eq!(
        have, want,
        "the store's snapshots are not those the processes reported"
    );
    for (id, dg) in &model.snaps {
        assert_eq!(&digest_of(&snaps[id]), dg, "{id}: ContentDigest");
        let users: BTreeSet<String> = model
            .images
            .iter()
            .filter(|(_, sn)| sn.contains(id))
            .map(|(i, _)| i.clone())
            .collect();
        let shown: BTreeSet<String> = strings(&snaps[id]["Images"]).into_iter().collect();
        assert_eq!(shown, users, "{id}: Images");
    }
    let imgs = images(&store);
    let have: BTreeSet<&String> = imgs.keys().collect();
    let want: BTreeSet<&String> = model.images.keys().collect();
    assert_eq!(
        have, want,
        "the store's images are not those the processes reported"
    );
    for (id, sn) in &model.images {
        assert_eq!(imgs[id]["State"], "available", "{id}");
        assert_eq!(&mapping_snaps(&imgs[id]), sn, "{id}: mappings");
    }
    for id in &model.deleted_images {
        let out = st(&store, &["image", "show", id]);
        assert_eq!(out.status.code(), Some(1), "{id} was deleted");
        assert!(text(&out.stderr).contains("no such image"), "{id}");
    }
    for id in &model.deleted_snaps {
        let out = st(&store, &["snapshot", "show", id]);
        assert_eq!(out.status.code(), Some(1), "{id} was deleted");
    }
    assert!(model.refusals >= 2, "{} refused deletes", model.refusals);
    // Refused then, and still there unless deleted with their image since.
    for id in model
        .refused
        .iter()
        .filter(|r| model.snaps.contains_key(*r))
    {
        st_ok(&store, &["snapshot", "show", id]);
    }
    // The shared content is one blob.
    let distinct: BTreeSet<&String> = model.snaps.values().collect();
    assert!(
        model
            .snaps
            .values()
            .filter(|d| **d == shared_digest)
            .count()
            > ROUNDS * 3,
        "many snapshots of one content"
    );
    assert_eq!(
        blob_files(&store),
        distinct
            .iter()
            .map(|d| blob_name(d))
            .collect::<BTreeSet<_>>(),
        "one blob file per distinct content, and no other"
    );
    assert!(
        entries(&store.join("work")).is_empty(),
        "work left: {:?}",
        entries(&store.join("work"))
    );
    let (code, report) = check(&store);
    assert_eq!(code, Some(0), "store check: {report}");
    assert_eq!(report["Problems"], serde_json::json!([]), "{report}");
    assert_eq!(
        report["Fixed"],
        serde_json::json!([]),
        "nothing crashed: {report}"
    );
    assert_eq!(report["Snapshots"], model.snaps.len());
    assert_eq!(report["Images"], model.images.len());
    assert_eq!(report["Blobs"], distinct.len());
    assert!(
        bad.is_empty(),
        "{} process(es) failed:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Crash safety
// ---------------------------------------------------------------------------------------------

/// The source the crashed runs read: 64 MiB of noise whose first 8 bytes change each run, so
/// that each run has new content (and the source cache does not know the file).
struct BigSource {
    path: PathBuf,
    first_block: Vec<u8>,
    blocks: Vec<[u8; 32]>,
    tag: u64,
}

impl BigSource {
    const LEN: usize = 64 << 20;

    fn new(path: PathBuf) -> Self {
        let data = Noise::new(4242).bytes(Self::LEN);
        std::fs::write(&path, &data).unwrap();
        let blocks = data.chunks(BLOCK).map(block_hash).collect();
        BigSource {
            path,
            first_block: data[..BLOCK].to_vec(),
            blocks,
            tag: 0,
        }
    }

    /// Changes the content; returns its new ContentDigest.
    fn retag(&mut self) -> String {
        self.tag += 1;
        let t = self.tag.to_le_bytes();
        self.first_block[..8].copy_from_slice(&t);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .unwrap();
        f.write_all_at(&t, 0).unwrap();
        self.blocks[0] = block_hash(&self.first_block);
        digest_of_blocks(&self.blocks)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Snapshot,
    Image,
}

/// The store, what was committed before any crash, and the source.
struct CrashRig {
    dir: PathBuf,
    store: PathBuf,
    big: BigSource,
    base_image: String,
    base_snap: String,
    base_digest: String,
    lone_snap: String,
    lone_digest: String,
    runs: usize,
}

impl CrashRig {
    fn new(dir: &Path) -> Self {
        let store = dir.join("store");
        let base = dir.join("base.raw");
        let base_digest = noise_file(&base, (6 << 20) + 12_345, 77);
        let base_image = st_ok(
            &store,
            &[
                "image",
                "create",
                "--root",
                s(&base),
                "--arch",
                "x86_64",
                "--no-boot-check",
                "--name",
                "committed-before",
            ],
        );
        let base_snap = mapping_snaps(&image_show(&store, &base_image))[0].clone();
        let lone = dir.join("lone.raw");
        let lone_digest = noise_file(&lone, 3 << 20, 78);
        let lone_snap = st_ok(&store, &["snapshot", "create", s(&lone)]);
        CrashRig {
            dir: dir.to_owned(),
            big: BigSource::new(dir.join("big.raw")),
            store,
            base_image,
            base_snap,
            base_digest,
            lone_snap,
            lone_digest,
            runs: 0,
        }
    }

    fn args(&self, kind: Kind) -> Vec<String> {
        let p = s(&self.big.path).to_owned();
        match kind {
            Kind::Snapshot => vec!["snapshot".into(), "create".into(), p],
            Kind::Image => [
                "image",
                "create",
                "--root",
                &p,
                "--arch",
                "x86_64",
                "--no-boot-check",
                "--name",
                &format!("crash-{}", self.runs),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        }
    }

    /// One unkilled run: its duration (and what it made is removed again).
    fn measure(&mut self, kind: Kind) -> Duration {
        let digest = self.big.retag();
        self.runs += 1;
        let a = self.args(kind);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let t = Instant::now();
        let id = st_ok(&self.store, &a);
        let took = t.elapsed();
        let snap = match kind {
            Kind::Snapshot => id.clone(),
            Kind::Image => mapping_snaps(&image_show(&self.store, &id))[0].clone(),
        };
        let shown = json_ok(&self.store, &["snapshot", "show", &snap]);
        assert_eq!(digest_of(&shown), digest, "{kind:?}: ContentDigest");
        match kind {
            Kind::Snapshot => st_ok(&self.store, &["snapshot", "delete", &id]),
            Kind::Image => st_ok(&self.store, &["image", "delete", &id, "--with-snapshots"]),
        };
        took
    }

    /// Runs `kind`, SIGKILLs it after `delay`, and checks the store; returns what is wrong.
    fn crash(&mut self, kind: Kind, delay: Duration) -> Vec<String> {
        let mut bad = Vec::new();
        let digest = self.big.retag();
        self.runs += 1;
        let snaps_before: BTreeSet<String> = snapshots(&self.store).into_keys().collect();
        let images_before: BTreeSet<String> = images(&self.store).into_keys().collect();
        let label = format!("crash-{}", self.runs);
        let mut r = spawn(&self.store, &self.args(kind), &self.dir, &label);
        std::thread::sleep(delay);
        let _ = r.child.kill();
        let d = wait_one(r, LIMIT);
        let at = format!("{kind:?} killed after {delay:?}");
        let completed = d.ok();
        if !completed && d.status.signal() != Some(SIGKILL) {
            bad.push(format!(
                "{at}: ended by itself with {:?}: {}",
                d.status, d.stderr
            ));
        }
        if d.stderr.contains("panicked") {
            bad.push(format!("{at}: {}", d.stderr));
        }
        let printed = d.stdout.trim().to_owned();

        let pending: Vec<String> = images(&self.store)
            .into_iter()
            .filter(|(_, v)| v["State"] == "pending")
            .map(|(k, _)| k)
            .collect();
        let (code, report) = check(&self.store);
        if code != Some(0) || report["Problems"] != serde_json::json!([]) {
            bad.push(format!(
                "{at}: store check exit {code:?}, problems {}",
                report["Problems"]
            ));
        }
        let fixed = strings(&report["Fixed"]);
        for p in &pending {
            if !fixed.iter().any(|f| f.starts_with(p.as_str())) {
                bad.push(format!(
                    "{at}: {p} was pending; check did not say: {fixed:?}"
                ));
            }
        }
        let mut work = entries(&self.store.join("work"));
        // A lock file killed while being made (`.PID-TOKEN.new`): check leaves it alone for a
        // minute, since its maker may not have locked it yet (store/maintain.rs, clear_work).
        // Aged past that, the next check must remove it.
        let making: Vec<String> = work
            .iter()
            .filter(|n| n.starts_with('.') && n.ends_with(".new"))
            .cloned()
            .collect();
        if !making.is_empty() {
            let old = std::time::SystemTime::now() - Duration::from_secs(120);
            for n in &making {
                let f = std::fs::File::options()
                    .write(true)
                    .open(self.store.join("work").join(n))
                    .unwrap();
                f.set_modified(old).unwrap();
            }
            let (code, _) = check(&self.store);
            if code != Some(0) {
                bad.push(format!("{at}: second store check exit {code:?}"));
            }
            work = entries(&self.store.join("work"));
        }
        if !work.is_empty() {
            bad.push(format!("{at}: work left after check: {work:?}"));
        }

        let snaps = snapshots(&self.store);
        let imgs = images(&self.store);
        for (id, v) in &imgs {
            match v["State"].as_str() {
                Some("available") => {
                    for sn in mapping_snaps(v) {
                        let out = st(&self.store, &["snapshot", "show", &sn]);
                        if !out.status.success() {
                            bad.push(format!(
                                "{at}: {id} is available but its snapshot {sn} does not show: {}",
                                text(&out.stderr).trim()
                            ));
                        }
                    }
                }
                Some("failed") if !images_before.contains(id) || pending.contains(id) => {}
                other => bad.push(format!("{at}: {id} is {other:?} after check")),
            }
        }
        let new_snaps: Vec<&String> = snaps
            .keys()
            .filter(|k| !snaps_before.contains(*k))
            .collect();
        let new_images: Vec<&String> = imgs
            .keys()
            .filter(|k| !images_before.contains(*k))
            .collect();
        if new_snaps.len() > 1 || new_images.len() > 1 {
            bad.push(format!("{at}: new {new_snaps:?} {new_images:?}"));
        }
        for sn in &new_snaps {
            if digest_of(&snaps[*sn]) != digest {
                bad.push(format!("{at}: {sn} holds {}", snaps[*sn]));
            }
        }
        for i in &new_images {
            let state = imgs[*i]["State"].as_str().unwrap_or("");
            let sn = mapping_snaps(&imgs[*i]);
            match state {
                "available" if sn.len() == 1 && new_snaps.contains(&&sn[0]) => {}
                "failed" if sn.is_empty() => {}
                _ => bad.push(format!("{at}: new image {}", imgs[*i])),
            }
        }
        if kind == Kind::Snapshot && !new_images.is_empty() {
            bad.push(format!("{at}: snapshot create made images {new_images:?}"));
        }
        if completed {
            let found = match kind {
                Kind::Snapshot => new_snaps.iter().any(|s| **s == printed),
                Kind::Image => imgs
                    .get(&printed)
                    .is_some_and(|v| v["State"] == "available"),
            };
            if !found {
                bad.push(format!(
                    "{at}: reported {printed:?}, which is not in the store"
                ));
            }
        }

        // What was committed before the crashes is intact.
        for (sn, dg) in [
            (&self.base_snap, &self.base_digest),
            (&self.lone_snap, &self.lone_digest),
        ] {
            match snaps.get(sn) {
                Some(v) if digest_of(v) == *dg => {}
                other => bad.push(format!("{at}: {sn} is now {other:?}")),
            }
        }
        match imgs.get(&self.base_image) {
            Some(v)
                if v["State"] == "available"
                    && mapping_snaps(v) == vec![self.base_snap.clone()] => {}
            other => bad.push(format!("{at}: {} is now {other:?}", self.base_image)),
        }
        let bundle = self.dir.join("bundle");
        let out = st(
            &self.store,
            &[
                "image",
                "bundle",
                &self.base_image,
                "-o",
                s(&bundle),
                "--force",
            ],
        );
        if !out.status.success() {
            bad.push(format!("{at}: image bundle: {}", text(&out.stderr).trim()));
        } else {
            let m = manifest(&bundle);
            if m["Disks"][0]["ContentDigest"] != self.base_digest.as_str() {
                bad.push(format!("{at}: bundle's disk is {}", m["Disks"][0]));
            }
            let v = run_with_timeout(
                {
                    let mut c = mkomi();
                    c.args(["-q", "verify", s(&bundle)]);
                    c
                },
                LIMIT,
            );
            if !v.status.success() {
                bad.push(format!(
                    "{at}: verify of the committed image: {}{}",
                    text(&v.stdout),
                    text(&v.stderr)
                ));
            }
        }

        // After gc, only referenced blobs.
        st_ok(&self.store, &["store", "gc"]);
        let referenced = referenced_blobs(&snapshots(&self.store));
        let files = blob_files(&self.store);
        if files != referenced {
            bad.push(format!(
                "{at}: after gc, blobs {files:?} but snapshots reference {referenced:?}"
            ));
        }

        // Back to the committed state, for the next run.
        for i in &new_images {
            st_ok(&self.store, &["image", "delete", i, "--with-snapshots"]);
        }
        let left: Vec<String> = snapshots(&self.store)
            .into_keys()
            .filter(|k| !snaps_before.contains(k))
            .collect();
        for sn in left {
            st_ok(&self.store, &["snapshot", "delete", &sn]);
        }
        st_ok(&self.store, &["store", "gc"]);
        bad
    }
}

/// The signal `Child::kill` sends.
const SIGKILL: i32 = 9;

/// Kill delays: some very early, the rest spread to 1.2 × an unkilled run.
fn delays(full: Duration) -> Vec<Duration> {
    let mut v: Vec<Duration> = [0, 1, 4, 12]
        .iter()
        .map(|ms| Duration::from_millis(*ms))
        .collect();
    let n = 13;
    for i in 1..=n {
        v.push(full.mul_f64(1.2 * i as f64 / n as f64));
    }
    v
}

#[test]
fn sigkill_at_any_point_loses_nothing_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rig = CrashRig::new(tmp.path());
    let mut bad = Vec::new();
    let mut kills = 0;
    for kind in [Kind::Snapshot, Kind::Image] {
        let full = rig.measure(kind);
        eprintln!("{kind:?}: an unkilled run takes {full:?}");
        for delay in delays(full) {
            bad.extend(rig.crash(kind, delay));
            kills += 1;
        }
    }
    assert!(kills >= 30);
    assert!(
        bad.is_empty(),
        "{} problem(s) after SIGKILL:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// The most delicate moment: a new blob is in `blobs/` and its row not yet committed. The run
/// is killed the moment the blob file appears.
#[test]
fn sigkill_as_the_blob_lands_leaves_no_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rig = CrashRig::new(tmp.path());
    let mut bad = Vec::new();
    // CPU time spent watching: blocked in poll, the watcher costs the child nothing.
    let mut watching = Duration::ZERO;
    for kind in [Kind::Snapshot, Kind::Image] {
        for _ in 0..2 {
            let digest = rig.big.retag();
            rig.runs += 1;
            let blob = rig.store.join("blobs").join(blob_name(&digest));
            let label = format!("land-{}", rig.runs);
            // Watched before the run starts, so that no arrival is missed.
            let watch = DirWatch::new(&rig.store.join("blobs"));
            let mut r = spawn(&rig.store, &rig.args(kind), &rig.dir, &label);
            let cpu = thread_cpu();
            let deadline = Instant::now() + LIMIT;
            let mut seen = false;
            loop {
                if blob.exists() {
                    seen = true;
                    let _ = r.child.kill();
                    break;
                }
                if r.child.try_wait().unwrap().is_some() {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                // Until a file arrives in blobs/ or the child ends.
                poll_readable(&[watch.fd.as_fd(), r.pidfd.as_fd()], left);
                watch.drain();
            }
            watching += thread_cpu() - cpu;
            let d = wait_one(r, LIMIT);
            seen |= blob.exists();
            assert!(seen, "{kind:?}: the blob never appeared: {}", d.stderr);
            let snaps = snapshots(&rig.store);
            let committed = snaps.values().any(|v| digest_of(v) == digest);
            let (code, report) = check(&rig.store);
            if code != Some(0) || report["Problems"] != serde_json::json!([]) {
                bad.push(format!(
                    "{kind:?} killed as {} appeared (row committed: {committed}): store check \
                     exit {code:?}, problems {}",
                    blob.display(),
                    report["Problems"]
                ));
            }
            st_ok(&rig.store, &["store", "gc"]);
            let files = blob_files(&rig.store);
            let referenced = referenced_blobs(&snapshots(&rig.store));
            assert_eq!(files, referenced, "after gc");
            let (code, report) = check(&rig.store);
            assert_eq!(code, Some(0), "after gc: {report}");
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    assert!(
        watching < Duration::from_millis(50),
        "watching 4 runs took {watching:?} of CPU: the watcher spins"
    );
}

/// A directory watched for files created or moved into it (inotify(7)).
struct DirWatch {
    fd: OwnedFd,
}

impl DirWatch {
    fn new(dir: &Path) -> Self {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: plain system calls; the descriptor is owned here alone.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        let wd = unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                path.as_ptr(),
                libc::IN_CREATE | libc::IN_MOVED_TO,
            )
        };
        assert!(
            wd >= 0,
            "inotify_add_watch {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        DirWatch { fd }
    }

    /// Discards the events that arrived (the caller looks at the directory itself).
    fn drain(&self) {
        let mut buf = [0u8; 4096];
        // SAFETY: `buf` is valid for `buf.len()` bytes; the descriptor is non-blocking.
        while unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast::<libc::c_void>(),
                buf.len(),
            )
        } > 0
        {}
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Damage: clear errors, never a panic
// ---------------------------------------------------------------------------------------------

/// A store with an image (and its snapshot) and a lone snapshot; returns (image, its snapshot,
/// lone snapshot, a source path).
fn small_store(dir: &Path) -> (PathBuf, String, String, String, PathBuf) {
    let store = dir.join("store");
    let a = dir.join("a.raw");
    noise_file(&a, (5 << 20) + 999, 11);
    let b = dir.join("b.raw");
    noise_file(&b, 2 << 20, 12);
    let ami = st_ok(
        &store,
        &[
            "image",
            "create",
            "--root",
            s(&a),
            "--arch",
            "x86_64",
            "--no-boot-check",
            "--name",
            "damaged",
        ],
    );
    let snap = mapping_snaps(&image_show(&store, &ami))[0].clone();
    let lone = st_ok(&store, &["snapshot", "create", s(&b)]);
    (store, ami, snap, lone, b)
}

/// Exit 1, one stderr line naming `what`, no panic.
fn assert_clear_error(out: &Output, what: &str, ctx: &str) {
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{ctx}: panicked: {err}");
    assert_eq!(out.status.code(), Some(1), "{ctx}: exit code; stderr {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{ctx}: one line: {err:?}"
    );
    assert!(err.contains(what), "{ctx}: names {what}: {err:?}");
}

#[test]
fn a_garbage_catalog_gives_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, ami, snap, lone, src) = small_store(tmp.path());
    let catalog = store.join("catalog.sqlite");
    let len = std::fs::metadata(&catalog).unwrap().len() as usize;
    let bundle = tmp.path().join("out");
    let garbage = Noise::new(5).bytes(len.max(8192));
    let mut with_header = b"SQLite format 3\0".to_vec();
    with_header.extend(Noise::new(6).bytes(len.max(8192)));
    for (variant, bytes) in [
        ("noise", garbage),
        ("noise after a SQLite header", with_header),
    ] {
        // No process has the store open.
        std::fs::write(&catalog, &bytes).unwrap();
        for side in ["catalog.sqlite-wal", "catalog.sqlite-shm"] {
            let _ = std::fs::remove_file(store.join(side));
        }
        let commands: Vec<Vec<&str>> = vec![
            vec!["snapshot", "list"],
            vec!["--json", "snapshot", "list"],
            vec!["snapshot", "show", &snap],
            vec!["snapshot", "create", s(&src)],
            vec!["snapshot", "delete", &lone],
            vec!["image", "list"],
            vec!["image", "show", &ami],
            vec![
                "image", "create", "--root", &lone, "--arch", "x86_64", "--name", "again",
            ],
            vec!["image", "copy", &ami],
            vec!["image", "delete", &ami],
            vec!["image", "bundle", &ami, "-o", s(&bundle)],
            vec!["store", "check"],
            vec!["--json", "store", "check"],
            vec!["store", "gc"],
        ];
        for c in &commands {
            let out = st(&store, c);
            assert_clear_error(&out, "catalog.sqlite", &format!("{variant}: {c:?}"));
        }
        assert_eq!(
            std::fs::read(&catalog).unwrap(),
            bytes,
            "{variant}: the damaged catalog is left as it was"
        );
        assert!(!bundle.exists());
    }
}

/// The blob file of snapshot `snap`.
fn blob_of(store: &Path, snap: &str) -> PathBuf {
    let v = json_ok(store, &["snapshot", "show", snap]);
    store.join("blobs").join(blob_name(&digest_of(&v)))
}

#[test]
fn a_damaged_blob_is_named_with_its_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, ami, snap, _, _) = small_store(tmp.path());
    let blob = blob_of(&store, &snap);
    let name = blob.file_name().unwrap().to_str().unwrap().to_owned();
    let f = open_rw(&blob);
    let len = f.metadata().unwrap().len();
    let mut buf = [0u8; 64];
    f.read_exact_at(&mut buf, len / 2).unwrap();
    for b in &mut buf {
        *b ^= 0xa5;
    }
    f.write_all_at(&buf, len / 2).unwrap();
    drop(f);
    let (code, report) = check(&store);
    assert_eq!(code, Some(3), "{report}");
    let problems = strings(&report["Problems"]);
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&name) && p.contains(&snap) && p.contains(&ami)),
        "a problem names {name}, {snap} and {ami}: {problems:#?}"
    );
    // The text output says the same, and nothing panics.
    let out = st(&store, &["store", "check"]);
    assert_eq!(out.status.code(), Some(3));
    let o = text(&out.stdout);
    assert!(o.contains(&name) && o.contains(&snap), "{o}");
    assert!(!text(&out.stderr).contains("panicked"));
}

#[test]
fn a_missing_blob_is_named_with_its_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, ami, snap, lone, _) = small_store(tmp.path());
    let blob = blob_of(&store, &snap);
    let name = blob.file_name().unwrap().to_str().unwrap().to_owned();
    std::fs::remove_file(&blob).unwrap();
    let (code, report) = check(&store);
    assert_eq!(code, Some(3), "{report}");
    let problems = strings(&report["Problems"]);
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&name) && p.contains("missing") && p.contains(&snap)),
        "a problem names {name} missing, used by {snap}: {problems:#?}"
    );
    assert!(
        !problems.iter().any(|p| p.contains(&lone)),
        "the other snapshot is whole: {problems:#?}"
    );
    // Using the image now fails as a failed check (exit 3), one line naming the file, its
    // snapshot and its image; nothing is written.
    let out = st(
        &store,
        &["image", "bundle", &ami, "-o", s(&tmp.path().join("out"))],
    );
    assert_refused_damage(&out, &[&name, "missing", &snap, &ami], "image bundle");
    assert_nothing_left(tmp.path(), "out");
}

/// Exit 3 (a check failed), one stderr line naming each of `what`, no panic.
fn assert_refused_damage(out: &Output, what: &[&str], ctx: &str) {
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{ctx}: panicked: {err}");
    assert_eq!(out.status.code(), Some(3), "{ctx}: exit code; stderr {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{ctx}: one line: {err:?}"
    );
    for w in what {
        assert!(err.contains(w), "{ctx}: names {w}: {err:?}");
    }
}

/// Neither `dir/name` nor a temporary file for it exists.
fn assert_nothing_left(dir: &Path, name: &str) {
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|e| e == name || e.starts_with(&format!(".{name}.")))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// One byte flipped in a blob: `store check` finds it, and no command publishes the damaged
/// data (`image bundle`, `image export` in the blob's format and converted to raw): each
/// refuses with exit 3, naming the blob, its snapshot and its image, and leaves nothing.
#[test]
fn a_damaged_blob_is_not_published() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, ami, snap, _, _) = small_store(tmp.path());
    let blob = blob_of(&store, &snap);
    let name = blob.file_name().unwrap().to_str().unwrap().to_owned();
    let f = open_rw(&blob);
    let len = f.metadata().unwrap().len();
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, len / 2).unwrap();
    f.write_all_at(&[byte[0] ^ 0x01], len / 2).unwrap();
    drop(f);
    let (code, _) = check(&store);
    assert_eq!(code, Some(3));
    let out = st(
        &store,
        &["image", "bundle", &ami, "-o", s(&tmp.path().join("out"))],
    );
    assert_refused_damage(&out, &[&name, "SHA-256", &snap, &ami], "image bundle");
    assert_nothing_left(tmp.path(), "out");
    for format in ["qcow2", "raw"] {
        let pkg = format!("pkg-{format}");
        let out = st(
            &store,
            &[
                "image",
                "export",
                &ami,
                "--to",
                s(&tmp.path().join(&pkg)),
                "--format",
                format,
            ],
        );
        let ctx = format!("image export --format {format}");
        assert_refused_damage(&out, &[&name, "SHA-256", &snap, &ami], &ctx);
        // The store's work directory, which the export used, is not named: it is gone.
        assert!(
            !text(&out.stderr).contains("/work/"),
            "{ctx}: {}",
            text(&out.stderr)
        );
        assert_nothing_left(tmp.path(), &pkg);
    }
    assert!(entries(&store.join("work")).is_empty());
}

#[test]
fn a_blob_file_without_a_row_is_reported_and_collected() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _, snap, lone, _) = small_store(tmp.path());
    let blob = blob_of(&store, &snap);
    let stray = store
        .join("blobs")
        .join(blob_name(&format!("sha256-4m:{}", "ab".repeat(32))));
    std::fs::copy(&blob, &stray).unwrap();
    let stray_name = stray.file_name().unwrap().to_str().unwrap().to_owned();
    let before = blob_files(&store);
    // `store check` clears what a crash before a commit leaves, and says so.
    let (code, report) = check(&store);
    assert_eq!(code, Some(0), "{report}");
    let fixed = strings(&report["Fixed"]);
    assert!(
        fixed
            .iter()
            .any(|p| p.contains(&stray_name) && p.contains("removed")),
        "check reports {stray_name}: {fixed:#?}"
    );
    assert_eq!(fixed.len(), 1, "{fixed:#?}");
    assert!(!stray.exists());
    // … and so does `store gc`.
    std::fs::copy(&blob, &stray).unwrap();
    let gc = st_ok(&store, &["store", "gc"]);
    assert!(gc.contains(&stray_name), "gc says what it removed: {gc}");
    assert!(!stray.exists());
    let after = blob_files(&store);
    assert_eq!(
        after,
        before
            .into_iter()
            .filter(|n| *n != stray_name)
            .collect::<BTreeSet<_>>()
    );
    let (code, report) = check(&store);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(strings(&report["Fixed"]), Vec::<String>::new());
    for id in [&snap, &lone] {
        st_ok(&store, &["snapshot", "show", id]);
    }
}

// ---------------------------------------------------------------------------------------------
// Further failure paths found while writing the above
// ---------------------------------------------------------------------------------------------

/// `image delete --with-snapshots` of an image that maps one snapshot twice: whether it
/// succeeds or fails, the store must stay whole (a failed delete must not remove data).
#[test]
fn a_failed_image_delete_keeps_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let a = tmp.path().join("a.raw");
    let digest = noise_file(&a, 3 << 20, 21);
    let snap = st_ok(&store, &["snapshot", "create", s(&a)]);
    let ami = st_ok(
        &store,
        &[
            "image",
            "create",
            "--root",
            &snap,
            "--bdm",
            &format!("/dev/sdb={snap}"),
            "--arch",
            "x86_64",
            "--no-boot-check",
            "--name",
            "twice",
        ],
    );
    let out = st(&store, &["image", "delete", &ami, "--with-snapshots"]);
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    let (code, report) = check(&store);
    let imgs = images(&store);
    let snaps = snapshots(&store);
    if out.status.success() {
        assert!(!imgs.contains_key(&ami) && !snaps.contains_key(&snap));
    } else {
        // Refused or failed: nothing changed.
        assert!(imgs.contains_key(&ami), "a failed delete keeps the image");
        assert_eq!(digest_of(&snaps[&snap]), digest);
        assert!(
            blob_files(&store).contains(&blob_name(&digest)),
            "`image delete {ami} --with-snapshots` failed ({}) yet removed the blob of {snap}, \
             which the catalog still has",
            err.trim()
        );
    }
    assert_eq!(
        code,
        Some(0),
        "store check after `image delete --with-snapshots` (exit {:?}, {}): {report}",
        out.status.code(),
        err.trim()
    );
}

/// Two processes using a new store at the same moment, 150 times: neither may fail (the busy
/// timeout is there for that), least of all with "busy for more than 120 s" after milliseconds.
#[test]
fn a_new_store_opened_by_two_processes_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut bad = Vec::new();
    // Two at once hit the race more often than many do.
    let (trials, at_once) = (150, 2);
    // Commands that make the store when it is not there yet (the others refuse a missing one).
    let disk = tmp.path().join("tiny.raw");
    std::fs::write(&disk, vec![7u8; 64 << 10]).unwrap();
    let disk = disk.to_str().unwrap().to_owned();
    for t in 0..trials {
        let store = tmp.path().join(format!("store{t}"));
        let running: Vec<Running> = (0..at_once)
            .map(|i| {
                let a: Vec<String> = ["snapshot", "create", &disk, "-q"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                spawn(&store, &a, &logs, &format!("t{t}-{i}"))
            })
            .collect();
        for d in wait_all(running, LIMIT) {
            if !d.ok() {
                bad.push(format!(
                    "{} failed after {:?}: {}",
                    d.label,
                    d.took,
                    d.stderr.trim()
                ));
            }
        }
    }
    let (code, report) = check(&tmp.path().join("store0"));
    assert_eq!(code, Some(0), "{report}");
    assert!(
        bad.is_empty(),
        "{} of {} processes opening new stores failed:\n{}",
        bad.len(),
        trials * at_once,
        bad.join("\n")
    );
}

/// `store check` while other processes store snapshots: what they commit meanwhile is not
/// damage.
#[test]
fn store_check_while_others_write_reports_no_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    // A large blob, so that verifying takes a while.
    let big = tmp.path().join("big.raw");
    noise_file(&big, 48 << 20, 31);
    st_ok(&store, &["snapshot", "create", s(&big)]);
    let stop = AtomicBool::new(false);
    let mut reports = Vec::new();
    let written = std::thread::scope(|sc| {
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let (stop, store, dir) = (&stop, &store, tmp.path());
                sc.spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) && n < 400 {
                        n += 1;
                        let p = dir.join(format!("w{w}-{n}.raw"));
                        noise_file(&p, 1 << 20, 1000 * w + n);
                        st_ok(store, &["snapshot", "create", s(&p)]);
                        let _ = std::fs::remove_file(&p);
                    }
                    n
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        for _ in 0..6 {
            reports.push(check(&store));
        }
        stop.store(true, Ordering::Relaxed);
        writers.into_iter().map(|w| w.join().unwrap()).sum::<u64>()
    });
    assert!(written > 6, "the writers ran ({written} snapshots)");
    let (code, report) = check(&store);
    assert_eq!(code, Some(0), "quiet store: {report}");
    let bad: Vec<String> = reports
        .iter()
        .filter(|(c, r)| *c != Some(0) || r["Problems"] != serde_json::json!([]))
        .map(|(c, r)| format!("exit {c:?}: {}", r["Problems"]))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} checks run beside `snapshot create` reported damage where there is none:\n{}",
        bad.len(),
        reports.len(),
        bad.join("\n")
    );
}

/// `snapshot list` while another process deletes snapshots: a snapshot deleted meanwhile is
/// simply not listed (as `image list` does for images).
#[test]
fn snapshot_list_while_others_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let src = tmp.path().join("one.raw");
    noise_file(&src, 1 << 20, 41);
    // Snapshots of one unchanged file: the cache makes each one cheap.
    let ids: Vec<String> = (0..150)
        .map(|_| st_ok(&store, &["snapshot", "create", s(&src)]))
        .collect();
    let done = AtomicBool::new(false);
    let failures = std::thread::scope(|sc| {
        let deleter = sc.spawn(|| {
            // Newest first: the ones a running list reaches last.
            for id in ids.iter().rev() {
                st_ok(&store, &["snapshot", "delete", id]);
            }
            done.store(true, Ordering::Relaxed);
        });
        let mut failures = Vec::new();
        let mut lists = 0;
        while !done.load(Ordering::Relaxed) {
            let out = st(&store, &["snapshot", "list"]);
            lists += 1;
            if !out.status.success() {
                failures.push(text(&out.stderr).trim().to_owned());
            }
        }
        deleter.join().unwrap();
        assert!(lists > 5);
        failures
    });
    assert!(snapshots(&store).is_empty());
    assert!(
        failures.is_empty(),
        "{} `snapshot list` run(s) failed while snapshots were deleted, e.g. {:?}",
        failures.len(),
        failures.first()
    );
}
