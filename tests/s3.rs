//! The S3 client of `mkomi export` against a real S3 server (s3s-fs, see
//! `fixtures/s3-server.sh`): single and multipart uploads, ranged downloads, pre-signed URLs,
//! resumed and aborted uploads, credential errors, retries.

#[path = "common/s3_server.rs"]
mod s3_server;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use sha2::{Digest, Sha256};
use std::time::Duration;

use mkomi::export::s3::{self, Client, Config, Credentials, Error, MIN_PART_SIZE};
use s3_server::{ACCESS_KEY, BUCKET, REGION, S3Server, SECRET_KEY};

const MIB: usize = 1 << 20;

/// Deterministic, incompressible bytes.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn config(endpoint: &str, secret: &str) -> Config {
    Config {
        endpoint: Some(endpoint.to_string()),
        region: REGION.to_string(),
        credentials: Credentials::new(ACCESS_KEY, secret, None),
        allow_http: true,
        checksums: true,
    }
}

fn client(server: &S3Server) -> Client {
    Client::new(&config(&server.endpoint, SECRET_KEY), BUCKET).expect("client")
}

fn get(client: &Client, key: &str) -> Vec<u8> {
    let mut reader = client.get_stream(key).expect("get_stream");
    let mut out = Vec::new();
    reader.read_to_end(&mut out).expect("read the object");
    assert_eq!(out.len() as u64, reader.size());
    out
}

#[test]
fn single_put_get_list_delete() {
    let server = S3Server::start();
    let client = client(&server);
    let body = data(100_000, 1);
    let report = client.put_bytes("dir/small.bin", &body).unwrap();
    assert!(!report.multipart);
    assert_eq!((report.parts, report.parts_sent), (1, 1));
    assert_eq!((report.bytes, report.bytes_sent), (100_000, 100_000));
    assert!(report.etag.is_some());
    assert_eq!(client.head("dir/small.bin").unwrap(), Some(100_000));
    assert_eq!(get(&client, "dir/small.bin"), body);

    client.put_bytes("dir/empty", b"").unwrap();
    assert_eq!(client.head("dir/empty").unwrap(), Some(0));
    assert!(get(&client, "dir/empty").is_empty());
    assert_eq!(
        client.list("dir/").unwrap(),
        vec![
            ("dir/empty".to_string(), 0),
            ("dir/small.bin".to_string(), 100_000)
        ]
    );

    client.delete("dir/small.bin").unwrap();
    assert_eq!(client.head("dir/small.bin").unwrap(), None);
    let e = client.get_stream("dir/small.bin").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("s3://{BUCKET}/dir/small.bin: no such object (HTTP 404)")
    );
    let e = client.put_bytes("a//b", b"x").unwrap_err();
    assert!(matches!(e, Error::Key { .. }), "{e}");
}

#[test]
fn multipart_round_trip() {
    let server = S3Server::start();
    let mut client = client(&server);
    let body = data(12 * MIB + 12_345, 2);
    let report = client
        .put_stream("big.bin", &body[..], MIN_PART_SIZE, 2, None)
        .unwrap();
    assert!(report.multipart);
    assert_eq!((report.parts, report.parts_sent), (3, 3));
    assert_eq!(report.bytes, body.len() as u64);
    assert!(
        report.etag.as_deref().unwrap_or("").ends_with("-3\""),
        "{report:?}"
    );
    assert_eq!(client.head("big.bin").unwrap(), Some(body.len() as u64));
    // Read back in 1 MiB ranges (13 ranged GETs) and in 32 MiB ones (one).
    client.set_get_range(MIB as u64);
    assert!(get(&client, "big.bin") == body, "ranged read differs");
    client.set_get_range(32 << 20);
    assert!(get(&client, "big.bin") == body, "read differs");
    assert!(
        server.upload_files().is_empty(),
        "{:?}",
        server.upload_files()
    );

    // Exactly one part: still multipart (the data did not end before a full part).
    let one = data(MIN_PART_SIZE, 3);
    let report = client
        .put_stream("one.bin", &one[..], MIN_PART_SIZE, 2, None)
        .unwrap();
    assert!(report.multipart);
    assert_eq!(report.parts, 1);
    assert!(get(&client, "one.bin") == one);
}

#[test]
fn presigned_get() {
    let server = S3Server::start();
    let client = client(&server);
    let dir = tempfile::tempdir().unwrap();
    let body = data(2 * MIB + 300_000, 4);
    client.put_bytes("shared/disk.gz", &body).unwrap();

    let url = client
        .presign_get("shared/disk.gz", Duration::from_secs(3600))
        .unwrap();
    assert!(
        url.starts_with(&format!("{}/{BUCKET}/shared/disk.gz?", server.endpoint)),
        "{url}"
    );
    assert!(url.contains("X-Amz-Expires=3600"), "{url}");
    assert!(!url.contains(SECRET_KEY));
    let curl = |url: &str, out: &Path| {
        Command::new("curl")
            .args(["-sf", "-o"])
            .arg(out)
            .arg(url)
            .status()
            .expect("run curl")
    };
    let out = dir.path().join("fetched");
    assert!(curl(&url, &out).success());
    assert!(
        std::fs::read(&out).unwrap() == body,
        "fetched object differs"
    );

    // One hex digit of the signature changed: refused.
    let at = url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let mut tampered = url.clone().into_bytes();
    tampered[at] = if tampered[at] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(tampered).unwrap();
    let status = curl(&tampered, &dir.path().join("tampered"));
    assert_eq!(status.code(), Some(22), "curl -f exit for an HTTP error");
    // Another object with the same signature: refused too.
    let other = url.replace("disk.gz", "disk.gy");
    assert_eq!(curl(&other, &dir.path().join("other")).code(), Some(22));

    // mkomi's own reader of URLs: whole, in 1 MiB ranges, and refusals without the signature.
    let read_url = |url: &str, range: u64| -> Result<Vec<u8>, Error> {
        let mut reader = s3::get_url_ranged(url, range)?;
        let mut out = Vec::new();
        reader
            .read_to_end(&mut out)
            .map_err(|e| match e.downcast::<Error>() {
                Ok(e) => e,
                Err(e) => panic!("{e}"),
            })?;
        assert_eq!(out.len() as u64, reader.size());
        Ok(out)
    };
    assert!(read_url(&url, 32 * MIB as u64).unwrap() == body);
    assert!(s3::get_url(&url).is_ok());
    assert!(
        read_url(&url, MIB as u64).unwrap() == body,
        "ranged read differs"
    );
    let shown = format!("{}/{BUCKET}/shared/disk.gz", server.endpoint);
    let e = read_url(&tampered, MIB as u64).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{shown}: GET failed: HTTP 403 SignatureDoesNotMatch")
    );
    client.put_bytes("shared/empty", b"").unwrap();
    let empty = client
        .presign_get("shared/empty", Duration::from_secs(60))
        .unwrap();
    assert!(read_url(&empty, MIB as u64).unwrap().is_empty());
    let missing = client
        .presign_get("shared/missing", Duration::from_secs(60))
        .unwrap();
    let e = read_url(&missing, MIB as u64).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("/shared/missing: GET failed: HTTP 404 NoSuchKey"),
        "{e}"
    );

    // 7 days is the maximum.
    let week = client
        .presign_get("shared/disk.gz", Duration::from_secs(7 * 24 * 3600))
        .unwrap();
    assert!(week.contains("X-Amz-Expires=604800"), "{week}");
    let e = client
        .presign_get("shared/disk.gz", Duration::from_secs(7 * 24 * 3600 + 1))
        .unwrap_err();
    assert!(matches!(e, Error::Setting(_)), "{e}");
}

/// Gives `limit` bytes of `data`, then fails.
struct FailAfter<'a> {
    data: &'a [u8],
    limit: usize,
}

impl Read for FailAfter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.limit == 0 {
            return Err(io::Error::other("disk unplugged"));
        }
        let n = buf.len().min(self.limit).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.limit -= n;
        Ok(n)
    }
}

#[test]
fn interrupted_upload_resumes_without_resending() {
    let server = S3Server::start();
    let client = client(&server);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("upload.json");
    let body = data(3 * MIN_PART_SIZE + 2 * MIB + 7, 5); // 4 parts: 5, 5, 5 and 2 MiB
    let key = "images/root.qcow2.gz";

    let reader = FailAfter {
        data: &body,
        limit: 2 * MIN_PART_SIZE,
    };
    let e = client
        .put_stream(key, reader, MIN_PART_SIZE, 2, Some(&state))
        .unwrap_err();
    assert!(matches!(e, Error::Read { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        format!("s3://{BUCKET}/{key}: reading the data to upload: disk unplugged")
    );
    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let parts = recorded["parts"].as_object().unwrap();
    assert_eq!(parts.keys().collect::<Vec<_>>(), ["1", "2"], "{recorded}");
    assert_eq!(recorded["key"], key);
    assert_eq!(recorded["part_size"], MIN_PART_SIZE);
    assert!(
        !std::fs::read_to_string(&state)
            .unwrap()
            .contains(SECRET_KEY)
    );
    assert_eq!(
        client.head(key).unwrap(),
        None,
        "no object before completion"
    );
    assert!(
        !server.upload_files().is_empty(),
        "the upload is still open"
    );

    // Changed data is refused, and the state is kept.
    let mut changed = body.clone();
    changed[MIN_PART_SIZE + 10] ^= 1;
    let e = client
        .put_stream(key, &changed[..], MIN_PART_SIZE, 2, Some(&state))
        .unwrap_err();
    assert!(matches!(e, Error::Changed { part: 2, .. }), "{e}");
    assert!(state.exists());

    // Resumed: only parts 3 and 4 are sent (with a different part size asked: the recorded one
    // is used).
    let report = client
        .put_stream(key, &body[..], 8 * MIB, 3, Some(&state))
        .unwrap();
    assert_eq!((report.parts, report.parts_sent), (4, 2), "{report:?}");
    assert_eq!(report.bytes, body.len() as u64);
    assert_eq!(report.bytes_sent, (MIN_PART_SIZE + 2 * MIB + 7) as u64);
    assert!(!state.exists(), "state removed once complete");
    assert!(get(&client, key) == body, "resumed object differs");
    assert!(
        server.upload_files().is_empty(),
        "{:?}",
        server.upload_files()
    );

    // A state file for another key is refused.
    let reader = FailAfter {
        data: &body,
        limit: MIN_PART_SIZE,
    };
    client
        .put_stream("other", reader, MIN_PART_SIZE, 1, Some(&state))
        .unwrap_err();
    let e = client
        .put_stream("third", &body[..], MIN_PART_SIZE, 1, Some(&state))
        .unwrap_err();
    assert!(matches!(e, Error::State { .. }), "{e}");
    // …and abort_resumable cleans it up.
    assert!(client.abort_resumable(&state).unwrap());
    assert!(!state.exists());
    assert!(
        server.upload_files().is_empty(),
        "{:?}",
        server.upload_files()
    );
    assert!(!client.abort_resumable(&state).unwrap());
}

#[test]
fn failed_upload_without_state_is_aborted() {
    let server = S3Server::start();
    let client = client(&server);
    let body = data(3 * MIN_PART_SIZE, 6);
    let reader = FailAfter {
        data: &body,
        limit: 2 * MIN_PART_SIZE + 100,
    };
    let e = client
        .put_stream("x.bin", reader, MIN_PART_SIZE, 2, None)
        .unwrap_err();
    assert!(matches!(e, Error::Read { .. }), "{e}");
    assert!(
        server.upload_files().is_empty(),
        "{:?}",
        server.upload_files()
    );
    assert_eq!(client.head("x.bin").unwrap(), None);
}

#[test]
fn credential_errors() {
    let e = Config::from_vars(|_| None, Some("http://127.0.0.1:1"), Some(REGION)).unwrap_err();
    assert!(matches!(e, Error::NoCredentials), "{e}");
    assert!(e.to_string().contains("OSC_ACCESS_KEY"), "{e}");

    let server = S3Server::start();
    let wrong = "wrong-secret-7d3e1a";
    let client = Client::new(&config(&server.endpoint, wrong), BUCKET).unwrap();
    let body = data(MIN_PART_SIZE + 1, 7);
    let mut messages = vec![
        client.put_bytes("k", b"hello").unwrap_err().to_string(),
        client
            .put_stream("k", &body[..], MIN_PART_SIZE, 2, None)
            .unwrap_err()
            .to_string(),
        client.head("k").unwrap_err().to_string(),
        client.get_stream("k").unwrap_err().to_string(),
        client.list("").unwrap_err().to_string(),
    ];
    assert_eq!(
        messages[0],
        format!("s3://{BUCKET}/k: PUT failed: HTTP 403 SignatureDoesNotMatch")
    );
    assert_eq!(
        messages[1],
        format!("s3://{BUCKET}/k: create multipart upload failed: HTTP 403 SignatureDoesNotMatch")
    );
    // A HEAD answer has no body: the status alone.
    assert_eq!(
        messages[2],
        format!("s3://{BUCKET}/k: HEAD failed: HTTP 403")
    );
    let debug = format!("{:?}", config(&server.endpoint, wrong));
    messages.push(debug);
    for m in &messages {
        assert!(m.contains(BUCKET) || m.starts_with("Config"), "{m}");
        assert!(!m.contains(wrong) && !m.contains(ACCESS_KEY), "leak: {m}");
        assert!(!m.contains("Signature="), "leak: {m}");
    }
}

/// A TCP proxy to `target` that answers the first `failures` connections with HTTP 503; it
/// keeps the heads of the requests it refused.
fn flaky_proxy(target: u16, failures: usize) -> (u16, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (seen, refused) = (count.clone(), heads.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            if seen.fetch_add(1, Ordering::SeqCst) < failures {
                // Read the request head, answer 503 and close.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                refused
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let _ = conn.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                let _ = conn.shutdown(Shutdown::Both);
                continue;
            }
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) else {
                return;
            };
            let (mut a, mut b) = (conn.try_clone().unwrap(), upstream.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = io::copy(&mut a, &mut b);
                let _ = b.shutdown(Shutdown::Write);
            });
            let (mut a, mut b) = (upstream, conn);
            std::thread::spawn(move || {
                let _ = io::copy(&mut a, &mut b);
                let _ = b.shutdown(Shutdown::Write);
            });
        }
    });
    (port, count, heads)
}

#[test]
fn server_errors_are_retried() {
    let server = S3Server::start();
    let (port, connections, refused) = flaky_proxy(server.port, 2);
    let endpoint = format!("http://127.0.0.1:{port}");
    let client = Client::new(&config(&endpoint, SECRET_KEY), BUCKET).unwrap();
    let body = data(50_000, 8);
    let report = client.put_bytes("retried", &body).unwrap();
    assert_eq!(report.bytes, 50_000);
    assert!(connections.load(Ordering::SeqCst) >= 3);
    // The refused requests were the same PUT, with the body's SHA-256 as its checksum.
    let checksum = format!(
        "x-amz-checksum-sha256: {}",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&body))
    );
    let refused = refused.lock().unwrap();
    assert_eq!(refused.len(), 2);
    for head in refused.iter() {
        assert!(head.starts_with("PUT /mkomi-test/retried "), "{head}");
        assert!(head.contains(&checksum), "{head}");
        assert!(!head.contains(SECRET_KEY), "{head}");
    }
    assert!(get(&client, "retried") == body);

    // Reading through a pre-signed URL retries too.
    let (port, connections, _) = flaky_proxy(server.port, 2);
    let endpoint = format!("http://127.0.0.1:{port}");
    let client = Client::new(&config(&endpoint, SECRET_KEY), BUCKET).unwrap();
    let url = client
        .presign_get("retried", Duration::from_secs(60))
        .unwrap();
    let mut fetched = Vec::new();
    s3::get_url(&url)
        .unwrap()
        .read_to_end(&mut fetched)
        .unwrap();
    assert!(fetched == body);
    assert!(connections.load(Ordering::SeqCst) >= 3);
}

/// Gives `open` bytes of `data`, then blocks until `failed` is set, and fails.
struct Stalled<'a> {
    data: &'a [u8],
    open: usize,
    failed: &'a (Mutex<bool>, std::sync::Condvar),
}

impl Read for Stalled<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.open == 0 {
            let (lock, cv) = self.failed;
            let mut failed = lock.lock().unwrap();
            while !*failed {
                failed = cv.wait(failed).unwrap();
            }
            return Err(io::Error::other("disk unplugged"));
        }
        let n = buf.len().min(self.open);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.open -= n;
        Ok(n)
    }
}

#[test]
fn each_part_is_recorded_as_soon_as_it_is_uploaded() {
    let server = S3Server::start();
    let client = client(&server);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("upload.json");
    let body = data(3 * MIN_PART_SIZE + MIB, 9); // 4 parts: 5, 5, 5 and 1 MiB
    let failed = (Mutex::new(false), std::sync::Condvar::new());
    std::thread::scope(|scope| {
        // Three parts go up while the reader is stuck on the fourth: the loop, waiting for the
        // data, never collects them, but each must be in the state file once uploaded.
        let upload = scope.spawn(|| {
            let reader = Stalled {
                data: &body,
                open: 3 * MIN_PART_SIZE,
                failed: &failed,
            };
            client.put_stream("rec.bin", reader, MIN_PART_SIZE, 4, Some(&state))
        });
        let start = std::time::Instant::now();
        let recorded = loop {
            let parts = std::fs::read(&state)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["parts"].as_object().map(|p| p.len()))
                .unwrap_or(0);
            if parts == 3 || start.elapsed() > Duration::from_secs(60) {
                break parts;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        *failed.0.lock().unwrap() = true;
        failed.1.notify_all();
        let e = upload.join().unwrap().unwrap_err();
        assert!(matches!(e, Error::Read { .. }), "{e}");
        assert_eq!(recorded, 3, "parts recorded while the data was stalled");
    });
    // Resumed: only the last part is sent.
    let report = client
        .put_stream("rec.bin", &body[..], MIN_PART_SIZE, 4, Some(&state))
        .unwrap();
    assert_eq!((report.parts, report.parts_sent), (4, 1), "{report:?}");
    assert!(get(&client, "rec.bin") == body);
    assert!(
        server.open_uploads().is_empty(),
        "{:?}",
        server.open_uploads()
    );
}

#[test]
fn part_data_in_memory_is_bounded() {
    use s3::{MAX_BUFFERED, buffered_parts};
    assert_eq!(MAX_BUFFERED, 256 * MIB);
    // Small parts: all in flight plus the one being read.
    assert_eq!(buffered_parts(5 * MIB, 4), 5);
    assert_eq!(buffered_parts(32 * MIB, 4), 5);
    // Large ones: fewer, within the bound.
    assert_eq!(buffered_parts(64 * MIB, 4), 4);
    assert_eq!(buffered_parts(128 * MIB, 4), 2);
    // Beyond half the bound, one at a time: a part, then the next.
    assert_eq!(buffered_parts(s3::MAX_PART_SIZE, 4), 1);
    assert_eq!(buffered_parts(5 * MIB, 0), 2);
}

#[test]
fn the_uploads_in_progress_are_listed_where_the_server_can() {
    // s3s-fs has no ListMultipartUploads (HTTP 501): the client says so rather than failing.
    let server = S3Server::start();
    let client = client(&server);
    assert_eq!(client.list_uploads("images/").unwrap(), None);
    // A wrong secret is an error, naming the operation.
    let denied = Client::new(&config(&server.endpoint, "wrong-secret-3c1f"), BUCKET).unwrap();
    let e = denied.list_uploads("images/").unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "s3://{BUCKET}/images/: list multipart uploads failed: HTTP 403"
        )),
        "{e}"
    );
    assert!(!e.to_string().contains("wrong-secret"), "{e}");
    // An upload left open (and recorded) is aborted by its ID.
    let body = data(MIN_PART_SIZE + 1, 10);
    let reader = FailAfter {
        data: &body,
        limit: MIN_PART_SIZE + 1,
    };
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("s.json");
    client
        .put_stream("images/a", reader, MIN_PART_SIZE, 1, Some(&file))
        .unwrap_err();
    let (_, open) = s3::recorded_upload(&file).unwrap().unwrap();
    assert_eq!(server.open_uploads(), [open.upload_id.as_str()]);
    assert!(client.abort_upload("images/a", &open.upload_id).unwrap());
    assert!(server.open_uploads().is_empty());
}

#[test]
fn error_bodies_are_read_up_to_64_kib() {
    // Every request is answered 400 with a 256 MiB body, sent 16 KiB at a time; each connection
    // counts what the client let it send before it hung up.
    const BODY: usize = 256 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let sent: Arc<Mutex<Vec<usize>>> = Arc::default();
    let counts = sent.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let counts = counts.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let answer = format!(
                    "HTTP/1.1 400 Bad Request\r\nContent-Type: application/xml\r\n\
                     Content-Length: {BODY}\r\n\r\n<Error><Code>InvalidRequest</Code>"
                );
                let _ = conn.write_all(answer.as_bytes());
                let chunk = vec![b' '; 16 << 10];
                let mut n = 0;
                while n < BODY && conn.write_all(&chunk).is_ok() {
                    n += chunk.len();
                }
                counts.lock().unwrap().push(n);
                let _ = conn.shutdown(Shutdown::Both);
            });
        }
    });
    let client = Client::new(&config(&endpoint, SECRET_KEY), BUCKET).expect("client");
    let err = client.delete("k").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("s3://{BUCKET}/k: DELETE failed: HTTP 400 InvalidRequest")
    );
    // What the server could push is the 64 KiB read plus what the sockets' buffers hold, far
    // from the 256 MiB it offered.
    drop(client);
    for _ in 0..100 {
        if !sent.lock().unwrap().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let sent = sent.lock().unwrap().clone();
    eprintln!("bytes sent per answer: {sent:?}");
    assert!(!sent.is_empty(), "{sent:?}");
    for n in &sent {
        assert!(
            *n < 16 << 20,
            "the client read {n} bytes of an error body: {sent:?}"
        );
    }
}
