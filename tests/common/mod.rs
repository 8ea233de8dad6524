//! Helpers for the integration tests: run the real `mkomi` binary and the real qemu tools.
#![allow(dead_code)]

pub mod disk;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod oapi_server;
pub mod qemu;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// The mkomi binary under test.
pub fn mkomi() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mkomi"));
    c.env("SOURCE_DATE_EPOCH", "1700000000")
        .stdin(Stdio::null());
    c
}

/// Runs a command to completion within `limit`, killing it after; panics (test failure) then.
/// Its output is read while it runs, so that a child writing more than a pipe holds never
/// blocks.
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            panic!(
                "{cmd:?} did not finish within {limit:?}; stderr: {}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs mkomi with `args`, within two minutes.
pub fn run(args: &[&str]) -> Output {
    let mut c = mkomi();
    c.args(args);
    run_with_timeout(c, Duration::from_secs(120))
}

/// Runs mkomi and requires success.
pub fn ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "mkomi {args:?} failed ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A new unencrypted SSH key pair of `kind` (ed25519, rsa, ecdsa) at `path` and `path.pub`,
/// with `comment`, made by the real ssh-keygen.
pub fn keygen(kind: &str, path: &std::path::Path, comment: &str) {
    let path = path.to_str().expect("UTF-8 path");
    tool(
        "ssh-keygen",
        &["-q", "-t", kind, "-N", "", "-C", comment, "-f", path],
    );
}

/// Runs a tool and requires exit 0; returns stdout.
pub fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} could not run: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({:?}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A sparse raw file of `size` bytes with `(offset, len, byte)` runs written.
pub fn sparse_raw(path: &Path, size: u64, runs: &[(u64, u64, u8)]) {
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.set_len(size).unwrap();
    for &(off, len, byte) in runs {
        // A pattern that varies within the run, so swapped clusters would be noticed.
        let mut buf = vec![byte; len as usize];
        for (i, chunk) in buf.chunks_mut(512).enumerate() {
            chunk[0] = (i % 251) as u8 ^ byte;
        }
        f.write_all_at(&buf, off).unwrap();
    }
}

/// `qemu-img check` must find no errors and no leaks.
pub fn qemu_check(path: &Path) {
    tool("qemu-img", &["check", path.to_str().unwrap()]);
}

/// `qemu-img compare` must find the two images identical.
pub fn qemu_compare(a: &Path, b: &Path) {
    tool(
        "qemu-img",
        &["compare", a.to_str().unwrap(), b.to_str().unwrap()],
    );
}

/// The parsed manifest of a bundle.
pub fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// `sha256sum -c SHA256SUMS` in the bundle must pass.
pub fn sha256sum_check(dir: &Path) {
    let out = Command::new("sha256sum")
        .args(["-c", "--strict", "SHA256SUMS"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sha256sum -c failed in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Entries of a directory, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Opens a file for in-place corruption.
pub fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// A stand-in EFI application of `len` bytes (at least 512): a PE32+ header (DOS stub, `PE\0\0`,
/// COFF with `machine`, optional header magic 0x20b, subsystem 10) followed by filler.
/// `machine`: 0x8664 for x86_64, 0x14c for i386 (whose header says PE32, magic 0x10b).
#[allow(dead_code)]
pub fn fake_efi(len: usize, machine: u16) -> Vec<u8> {
    assert!(len >= 512);
    let mut b = vec![0x4d; len];
    b[..0x80].fill(0);
    b[0] = b'M';
    b[1] = b'Z';
    b[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    b[0x80..0x84].copy_from_slice(b"PE\0\0");
    b[0x84..0x86].copy_from_slice(&machine.to_le_bytes());
    b[0x86..0x98].fill(0);
    let (magic, opt_len): (u16, u16) = if machine == 0x14c {
        (0x10b, 0xe0)
    } else {
        (0x20b, 0xf0)
    };
    b[0x94..0x96].copy_from_slice(&opt_len.to_le_bytes());
    b[0x96..0x98].copy_from_slice(&0x22u16.to_le_bytes());
    b[0x98..0x98 + opt_len as usize].fill(0);
    b[0x98..0x9a].copy_from_slice(&magic.to_le_bytes());
    // Subsystem, at offset 68 of the optional header in both PE32 and PE32+.
    b[0x98 + 68..0x98 + 70].copy_from_slice(&10u16.to_le_bytes());
    b
}

/// `len` incompressible bytes (xorshift64).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A qcow2 bundle `dir/omi` of two disks made by `mkomi register` (x86_64, no boot check):
/// `root` on /dev/sda1 and `data` on /dev/sdb with the `--bdm` options `bdm`
/// (`type=io1,iops=300`…), written as `dir/root.img` and `dir/data.img` first; `extra` goes to
/// register as well (`--boot-mode uefi`…). The publish and pull tests' bundle.
pub fn two_disk_bundle(
    dir: &Path,
    name: &str,
    root: &[u8],
    data: &[u8],
    bdm: &str,
    extra: &[&str],
) -> PathBuf {
    let root_path = dir.join("root.img");
    let data_path = dir.join("data.img");
    std::fs::write(&root_path, root).expect("write root");
    std::fs::write(&data_path, data).expect("write data");
    let out = dir.join("omi");
    let text = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    let bdm = format!("/dev/sdb={},{bdm}", text(&data_path));
    let (root_text, out_text) = (text(&root_path), text(&out));
    let mut args: Vec<&str> = vec![
        "register",
        &root_text,
        "-o",
        &out_text,
        "--arch",
        "x86_64",
        "--no-boot-check",
        "--name",
        name,
        "--format",
        "qcow2",
        "--bdm",
        &bdm,
        "-q",
    ];
    args.extend_from_slice(extra);
    ok(&args);
    out
}
