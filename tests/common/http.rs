//! A minimal HTTP/1.1 file server for the import tests: ranges, a gate that holds an object
//! half-sent, and answers written by the test.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

/// A request's `Range`: its first byte, and its last when given.
pub type Range = Option<(usize, Option<usize>)>;

/// Reads one request's line and headers: its path and `Range` (start, end); `None` at the end
/// of the connection.
pub fn request(reader: &mut BufReader<TcpStream>) -> Option<(String, Range)> {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return None;
        }
        if h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
            let (a, b) = v.trim().split_once('-').unwrap();
            range = Some((a.parse().unwrap(), b.parse().ok()));
        }
    }
    Some((path, range))
}

/// A minimal HTTP/1.1 server on 127.0.0.1: each request of each connection is given to
/// `answer` with its path (query removed) and range; returns the base URL.
pub fn serve(answer: impl Fn(&str, Range, &mut TcpStream) + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                while let Some((path, range)) = request(&mut reader) {
                    let name = path.split('?').next().unwrap().trim_start_matches('/');
                    answer(name, range, &mut conn);
                }
            });
        }
    });
    base
}

/// A file server over `dir` with `Range` support. The first GET of `gated` from byte 0 stops
/// after `gate_at` bytes of its body, says so on the returned receiver, and goes on only when
/// the returned sender is sent to.
pub fn gated_http(
    dir: PathBuf,
    gated: &'static str,
    gate_at: usize,
) -> (String, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let (reached_tx, reached_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let gate = Mutex::new(Some((reached_tx, go_rx)));
    let base = serve(move |name, range, conn| {
        let Ok(body) = std::fs::read(dir.join(name)) else {
            let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            return;
        };
        let last = body.len() - 1;
        let (a, b) = match range {
            Some((a, b)) => (a, b.unwrap_or(last).min(last)),
            None => (0, last),
        };
        let head = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n\
             Content-Range: bytes {a}-{b}/{}\r\nETag: \"e\"\r\n\r\n",
            b + 1 - a,
            body.len()
        );
        let _ = conn.write_all(head.as_bytes());
        let part = &body[a..=b];
        let held = if name == gated && a == 0 {
            gate.lock().unwrap().take()
        } else {
            None
        };
        match held {
            Some((reached, go)) if part.len() > gate_at => {
                let _ = conn.write_all(&part[..gate_at]);
                let _ = conn.flush();
                let _ = reached.send(());
                let _ = go.recv();
                let _ = conn.write_all(&part[gate_at..]);
            }
            _ => {
                let _ = conn.write_all(part);
            }
        }
    });
    (base, reached_rx, go_tx)
}

/// Files under `dir`, recursively, with their sizes.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        match e.metadata() {
            Ok(m) if m.is_dir() => out.extend(files_under(&p)),
            Ok(m) => out.push((p, m.len())),
            Err(_) => {}
        }
    }
    out
}
