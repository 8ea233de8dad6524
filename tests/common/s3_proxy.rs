//! An HTTP proxy in front of the test S3 server (s3s-fs) that counts the part uploads it forwards
//! and can hold them after a given number, so that a test stops an export in a known state
//! instead of racing it. It also answers ListMultipartUploads, which s3s-fs does not implement,
//! from the uploads s3s-fs keeps on disk, so that the client's listing is exercised.
//!
//! One request per connection: each is forwarded with `Connection: close`, and the answer relayed
//! until the server closes.
#![allow(dead_code)]

use base64::Engine;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// A running proxy.
pub struct Proxy {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: u16,
    /// s3s-fs's root, to answer ListMultipartUploads from.
    root: PathBuf,
    /// Part uploads forwarded.
    parts: AtomicUsize,
    /// Part uploads are held once this many were forwarded.
    hold_after: Mutex<Option<usize>>,
    /// Each part upload waits this long before it is forwarded (a slow server).
    part_delay: std::time::Duration,
    released: Condvar,
    /// ListMultipartUploads requests answered.
    lists: AtomicUsize,
}

impl Proxy {
    /// A proxy to `127.0.0.1:upstream` (s3s-fs over `root`) that holds every part upload after
    /// the first `hold_after`.
    pub fn start(upstream: u16, root: PathBuf, hold_after: Option<usize>) -> Proxy {
        Proxy::slow(upstream, root, hold_after, std::time::Duration::ZERO)
    }

    /// The same, with each part upload forwarded only after `part_delay`: a slow server, whose
    /// uploads fall behind the data.
    pub fn slow(
        upstream: u16,
        root: PathBuf,
        hold_after: Option<usize>,
        part_delay: std::time::Duration,
    ) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let shared = Arc::new(Shared {
            upstream,
            root,
            parts: AtomicUsize::new(0),
            hold_after: Mutex::new(hold_after),
            part_delay,
            released: Condvar::new(),
            lists: AtomicUsize::new(0),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = s.serve(conn);
                });
            }
        });
        Proxy { endpoint, shared }
    }

    /// Part uploads forwarded so far.
    pub fn part_puts(&self) -> usize {
        self.shared.parts.load(Ordering::SeqCst)
    }

    /// ListMultipartUploads requests answered so far.
    pub fn lists(&self) -> usize {
        self.shared.lists.load(Ordering::SeqCst)
    }

    /// Lets held part uploads (and all later ones) through.
    pub fn release(&self) {
        *self.shared.hold_after.lock().unwrap() = None;
        self.shared.released.notify_all();
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).expect("a %XX escape"));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("UTF-8")
}

impl Shared {
    fn serve(&self, conn: TcpStream) -> io::Result<()> {
        let mut client = BufReader::new(conn.try_clone()?);
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if client.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
            lines.push(line);
        }
        let mut first = lines[0].split_whitespace();
        let (method, target) = (
            first.next().unwrap_or("").to_owned(),
            first.next().unwrap_or("").to_owned(),
        );
        let mut length = 0u64;
        for h in &lines[1..] {
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().expect("Content-Length");
            }
            assert!(
                !lower.starts_with("transfer-encoding:"),
                "the proxy handles Content-Length bodies only: {h}"
            );
        }
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let params: Vec<(String, String)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        let mut out = conn;
        if method == "GET" && param("uploads").is_some() {
            self.lists.fetch_add(1, Ordering::SeqCst);
            let bucket = path.trim_start_matches('/');
            let body = self.list_uploads(bucket, param("prefix").map_or("", |p| p.as_str()));
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            )?;
            return out.shutdown(Shutdown::Both);
        }
        if method == "PUT" && param("partNumber").is_some() {
            std::thread::sleep(self.part_delay);
            let mut hold = self.hold_after.lock().unwrap();
            while hold.is_some_and(|n| self.parts.load(Ordering::SeqCst) >= n) {
                hold = self.released.wait(hold).unwrap();
            }
            self.parts.fetch_add(1, Ordering::SeqCst);
        }
        let mut upstream = TcpStream::connect(("127.0.0.1", self.upstream))?;
        let mut head = lines[0].clone();
        for h in &lines[1..] {
            if !h.to_ascii_lowercase().starts_with("connection:") {
                head.push_str(h);
            }
        }
        head.push_str("Connection: close\r\n\r\n");
        upstream.write_all(head.as_bytes())?;
        io::copy(&mut (&mut client).take(length), &mut upstream)?;
        io::copy(&mut upstream, &mut out)?;
        out.shutdown(Shutdown::Both)
    }

    /// A ListMultipartUploadsResult of the uploads s3s-fs keeps for `bucket` under `prefix`:
    /// the files `.bucket-B64(bucket).object-B64(key).upload-ID.metadata.json` of its root.
    fn list_uploads(&self, bucket: &str, prefix: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut uploads = Vec::new();
        for e in std::fs::read_dir(&self.root)
            .expect("read the root")
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name
                .strip_prefix(".bucket-")
                .and_then(|r| r.strip_suffix(".metadata.json"))
            else {
                continue;
            };
            let Some((b, rest)) = rest.split_once(".object-") else {
                continue;
            };
            let Some((k, id)) = rest.split_once(".upload-") else {
                continue;
            };
            let (Ok(b), Ok(k)) = (b64.decode(b), b64.decode(k)) else {
                continue;
            };
            let key = String::from_utf8_lossy(&k).into_owned();
            if b == bucket.as_bytes() && key.starts_with(prefix) {
                uploads.push((key, id.to_owned()));
            }
        }
        uploads.sort();
        let mut xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListMultipartUploadsResult>\
             <Bucket>{bucket}</Bucket><Prefix>{prefix}</Prefix><IsTruncated>false</IsTruncated>"
        );
        for (key, id) in uploads {
            xml.push_str(&format!(
                "<Upload><Key>{key}</Key><UploadId>{id}</UploadId></Upload>"
            ));
        }
        xml.push_str("</ListMultipartUploadsResult>");
        xml
    }
}
