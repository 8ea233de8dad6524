//! A real S3 server for the tests: s3s-fs (installed by `fixtures/s3-server.sh`) on a free port
//! of 127.0.0.1 over a temporary directory, with one bucket; killed on drop.
#![allow(dead_code)]

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "mkomi-test-key";
pub const SECRET_KEY: &str = "mkomi-test-secret-5f1c09b2";
pub const BUCKET: &str = "mkomi-test";
pub const REGION: &str = "us-east-1";

/// A running s3s-fs.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub port: u16,
    /// The server's root: each bucket is a directory in it.
    pub root: PathBuf,
    _dir: tempfile::TempDir,
}

/// The s3s-fs binary: `$MKOMI_S3S_FS`, on PATH, or in cargo's bin directory.
fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MKOMI_S3S_FS") {
        return p.into();
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("s3s-fs"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        candidates.push(Path::new(&home).join("bin/s3s-fs"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/s3s-fs"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .expect("s3s-fs not found: run `bash fixtures/s3-server.sh install` (or set MKOMI_S3S_FS)")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

impl S3Server {
    /// Starts a server with the bucket [`BUCKET`], and waits until it accepts connections.
    pub fn start() -> S3Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join(BUCKET)).expect("create the bucket directory");
        let bin = binary();
        // The port is free when picked but another process may take it before s3s-fs binds it:
        // a few tries.
        for _ in 0..5 {
            let port = free_port();
            let log = File::create(dir.path().join("s3s-fs.log")).expect("log file");
            let mut child = Command::new(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(&root)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if child.try_wait().expect("wait").is_some() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return S3Server {
                        child,
                        endpoint: format!("http://127.0.0.1:{port}"),
                        port,
                        root,
                        _dir: dir,
                    };
                }
                sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.path().join("s3s-fs.log")).unwrap_or_default();
        panic!("s3s-fs did not start; its log:\n{log}");
    }

    /// The files of multipart uploads in progress that s3s-fs keeps in its root
    /// (`.upload_id-ID*`): none once every upload is completed or aborted.
    pub fn upload_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.root)
            .expect("read the root")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".upload_id-"))
            .collect();
        names.sort();
        names
    }
}

impl S3Server {
    /// The objects under `prefix` in the tests' bucket, at any depth, as paths relative to
    /// it, sorted (files of the server's root; the directories s3s-fs leaves behind are not
    /// objects).
    pub fn objects(&self, prefix: &str) -> Vec<String> {
        fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = format!("{rel}{}", e.file_name().to_string_lossy());
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), &format!("{name}/"), out);
                } else {
                    out.push(name);
                }
            }
        }
        let mut names = Vec::new();
        walk(&self.root.join(BUCKET).join(prefix), "", &mut names);
        names.sort();
        names
    }

    /// The multipart uploads s3s-fs knows (`.upload-ID.json` in its root, from creation to
    /// completion or abort, parts or none), as their IDs.
    pub fn open_uploads(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.root)
            .expect("read the root")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter_map(|n| {
                n.strip_prefix(".upload-")?
                    .strip_suffix(".json")
                    .map(str::to_owned)
            })
            .collect();
        ids.sort();
        ids
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
