//! The fake Outscale API for the tests: `tests/oapi/fake_api.py` (python3) on a free port of
//! 127.0.0.1, with the test keys and region below, a state file in a temporary directory, and
//! optionally the S3 server its export tasks write to; killed on drop.
//!
//! The fake prints `PORT n` once it listens (it binds port 0 itself, so no port can be taken
//! between a pick and a bind). Its faults are injected through the unsigned `POST /_control`,
//! and its whole state is read through `GET /_control/state` (see the fake's docstring).
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

/// The access key the fake accepts.
pub const ACCESS_KEY: &str = "AKMKOMITEST0000000001";
/// Its secret key: `/` and `+` as real Outscale secrets have, which a signer must not escape.
pub const SECRET_KEY: &str = "mkomi-oapi/secret+7d21c3";
/// The region the signatures must name.
pub const REGION: &str = "eu-west-2";

/// A running fake API.
pub struct OapiServer {
    child: Child,
    // Kept open: the fake's stdout, after `PORT n`.
    _stdout: BufReader<ChildStdout>,
    /// The port it listens on.
    pub port: u16,
    /// The API's base URL, `http://127.0.0.1:PORT/api/v1`.
    pub api_url: String,
    /// The state file the fake rewrites on each change.
    pub state_file: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl OapiServer {
    /// Starts the fake; `s3_endpoint` is the S3 server (s3s-fs) export tasks write to.
    pub fn start(s3_endpoint: Option<&str>) -> OapiServer {
        Self::start_with(s3_endpoint, &[])
    }

    /// Starts the fake with more command-line options (`--progress-step`, `--image-polls`...).
    pub fn start_with(s3_endpoint: Option<&str>, extra: &[&str]) -> OapiServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let state_file = dir.path().join("state.json");
        let log = dir.path().join("fake_api.log");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oapi/fake_api.py");
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .args(["--region", REGION])
            .arg("--state-file")
            .arg(&state_file)
            .args(extra)
            // The fake's work directory (imported disks) is made under TMPDIR: inside the
            // temporary directory, it goes when the directory does, even after a kill.
            .env("TMPDIR", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("log file"));
        if let Some(endpoint) = s3_endpoint {
            cmd.args(["--s3-endpoint", endpoint]);
        }
        let mut child = cmd
            .spawn()
            .expect("cannot start python3 tests/oapi/fake_api.py");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        // The first line is `PORT n`; end of file first means the fake died (its log says why).
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse::<u16>().ok());
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the fake API did not start (first line {line:?}); its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        OapiServer {
            child,
            _stdout: stdout,
            port,
            api_url: format!("http://127.0.0.1:{port}/api/v1"),
            state_file,
            log,
            _dir: dir,
        }
    }

    /// A client of the fake with the test keys and quick retries (10 ms to 100 ms, 4 tries).
    pub fn client(&self) -> mkomi::publish::client::Client {
        use mkomi::publish::client::{Backoff, Client, Endpoint};
        use mkomi::publish::credentials::Credentials;
        let endpoint = Endpoint::new(&self.api_url, REGION).expect("endpoint");
        Client::new(endpoint, Credentials::new(ACCESS_KEY, SECRET_KEY))
            .expect("client")
            .with_backoff(Backoff {
                first: Duration::from_millis(10),
                max: Duration::from_millis(100),
                attempts: 4,
            })
    }

    /// The fake's whole state (`GET /_control/state`): `Snapshots`, `Images` (with their
    /// private `_` fields, such as a snapshot's `_digest`), `Calls` (authenticated calls per
    /// operation), `Requests` (`[op, status]` of every request, 0 for a dropped answer),
    /// `FaultLog`, `AuthFailures`.
    pub fn state(&self) -> serde_json::Value {
        let (status, body) = self.control("GET", "/_control/state", None);
        assert_eq!(status, 200, "GET /_control/state: {body}");
        body
    }

    /// The fake's snapshots (`Snapshots` of [`OapiServer::state`]), private fields included.
    pub fn snapshots(&self) -> Vec<serde_json::Value> {
        self.state()["Snapshots"]
            .as_array()
            .expect("Snapshots")
            .clone()
    }

    /// The fake's images (`Images` of [`OapiServer::state`]).
    pub fn images(&self) -> Vec<serde_json::Value> {
        self.state()["Images"].as_array().expect("Images").clone()
    }

    /// Injects faults: `json` is the `/_control` body, such as
    /// `{"faults": [{"op": "ReadImages", "kind": "429", "nth": 1, "count": 1}]}` (kinds `429`,
    /// `503`, `500`, `drop-after-commit`, `hang`, and `import-error` for `CreateSnapshot` and
    /// `CreateImage`: the call succeeds, the import it starts ends in `error`), `{"clear": true}`,
    /// `{"unlock": true}`, `{"page_size": n}` (the `ResultsPerPage` of a `Read*` without one;
    /// 100 at start). `nth` counts every authenticated request of `op` from now, retries
    /// included (1: the next one).
    pub fn fault(&self, json: serde_json::Value) -> serde_json::Value {
        let (status, body) = self.control("POST", "/_control", Some(json));
        assert_eq!(status, 200, "POST /_control: {body}");
        body
    }

    /// The HTTP statuses answered to the requests of operation `op`, in order (0: dropped).
    pub fn requests_of(&self, op: &str) -> Vec<i64> {
        self.state()["Requests"]
            .as_array()
            .expect("Requests")
            .iter()
            .filter(|r| r[0] == op)
            .map(|r| r[1].as_i64().expect("status"))
            .collect()
    }

    /// What the fake wrote on its stderr so far (tracebacks of fake bugs, `--verbose` logs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One unsigned request to the control endpoint, on its own connection; (status, JSON).
    fn control(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the fake");
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        write!(
            conn,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .expect("send to the fake");
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer)
            .expect("read the fake's answer");
        let text = String::from_utf8_lossy(&answer);
        let (head, json) = text.split_once("\r\n\r\n").expect("an HTTP answer");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status");
        let json = serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {json}"));
        (status, json)
    }
}

impl Drop for OapiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
