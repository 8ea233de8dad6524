//! Objects read through a pre-signed (or public) URL, without credentials.

use std::fmt;
use std::io::{self, Read};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use tokio::runtime::Runtime;

use super::client::{GET_RANGE, REQUEST_TIMEOUT};
use super::failure::error_code;
use super::http::{error_body, reqwest_reason, retryable};
use super::object::hand_out;
use super::{Error, Result};

/// Tries of each GET through a URL (see [`get_url`]).
pub(super) const URL_TRIES: u32 = 6;

/// Reads an object through a pre-signed (or public) `https://` URL, without credentials; see
/// [`get_url_ranged`].
pub fn get_url(url: &str) -> Result<UrlReader> {
    get_url_ranged(url, GET_RANGE)
}

/// Reads an object through a URL in ranged GETs of `range` bytes (at least 1 MiB), pinned to
/// the object's ETag; each GET, and the rest of a range whose body broke, is tried up to 6 times
/// with exponential backoff on 5xx and 429 answers and connection failures. Errors show the URL
/// without its query, where a pre-signed URL has its signature.
pub fn get_url_ranged(url: &str, range: u64) -> Result<UrlReader> {
    let shown = url.split(['?', '#']).next().unwrap_or("").to_string();
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(Error::Url {
            url: shown,
            reason: "not an https:// or http:// URL".to_string(),
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Setting(format!("cannot start the I/O runtime: {e}")))?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| Error::Setting(format!("cannot set up HTTP: {}", e.without_url())))?;
    let mut reader = UrlReader {
        runtime,
        http,
        url: url.to_string(),
        shown,
        range: range.max(1 << 20),
        size: 0,
        etag: None,
        pos: 0,
        range_end: 0,
        body: None,
        buf: Bytes::new(),
    };
    reader.first()?;
    Ok(reader)
}

/// The content of an object read through a URL; see [`get_url_ranged`].
pub struct UrlReader {
    runtime: Runtime,
    http: reqwest::Client,
    url: String,
    shown: String,
    range: u64,
    size: u64,
    etag: Option<String>,
    pos: u64,
    range_end: u64,
    body: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    buf: Bytes,
}

impl fmt::Debug for UrlReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UrlReader")
            .field("url", &self.shown)
            .field("size", &self.size)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

/// Why one GET through a URL failed: an HTTP status (and whether trying again may help), or
/// no answer.
enum UrlFailure {
    Status(u16, Option<String>),
    Transport(String),
}

impl UrlReader {
    /// The object's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn error(&self, failure: UrlFailure) -> Error {
        let reason = match failure {
            UrlFailure::Status(status, code) => match code {
                Some(code) => format!("HTTP {status} {code}"),
                None => format!("HTTP {status}"),
            },
            UrlFailure::Transport(reason) => reason,
        };
        Error::Url {
            url: self.shown.clone(),
            reason,
        }
    }

    /// GETs bytes `start..end` (tried up to [`URL_TRIES`] times).
    fn fetch(&self, start: u64, end: u64) -> Result<reqwest::Response, UrlFailure> {
        self.runtime.block_on(async {
            let mut delay = Duration::from_millis(250);
            let mut tries = 0;
            loop {
                tries += 1;
                let mut request = self
                    .http
                    .get(&self.url)
                    .header(reqwest::header::RANGE, format!("bytes={start}-{}", end - 1));
                if let Some(etag) = &self.etag {
                    request = request.header(reqwest::header::IF_MATCH, etag);
                }
                let failure = match request.send().await {
                    Ok(response) if response.status().is_success() => return Ok(response),
                    Ok(response) => {
                        let status = response.status();
                        let body = error_body(response).await;
                        let failure = UrlFailure::Status(status.as_u16(), error_code(&body));
                        // 416 is the answer for an empty object: the caller handles it.
                        if !retryable(status)
                            || status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE
                        {
                            return Err(failure);
                        }
                        failure
                    }
                    Err(e) => UrlFailure::Transport(reqwest_reason(&e)),
                };
                if tries >= URL_TRIES {
                    return Err(failure);
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(20));
            }
        })
    }

    /// The first GET: the size, the ETag and the first range.
    fn first(&mut self) -> Result<()> {
        let response = match self.fetch(0, self.range) {
            Ok(r) => r,
            // An empty object has no byte 0.
            Err(UrlFailure::Status(416, _)) => return Ok(()),
            Err(f) => return Err(self.error(f)),
        };
        let headers = response.headers();
        self.etag = headers
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if response.status() == reqwest::StatusCode::PARTIAL_CONTENT {
            // Content-Range: bytes 0-N/SIZE
            let total = headers
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit_once('/'))
                .and_then(|(_, size)| size.parse().ok());
            self.size = total.ok_or_else(|| {
                self.error(UrlFailure::Transport(
                    "a partial answer without a usable Content-Range".to_string(),
                ))
            })?;
            self.range_end = self.size.min(self.range);
        } else {
            // The whole object (the server ignored the range).
            self.size = response.content_length().ok_or_else(|| {
                self.error(UrlFailure::Transport(
                    "an answer without Content-Length".to_string(),
                ))
            })?;
            self.range_end = self.size;
        }
        self.body = Some(response.bytes_stream().boxed());
        Ok(())
    }
}

impl Read for UrlReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut broken = 0;
        loop {
            if !self.buf.is_empty() || out.is_empty() {
                return Ok(hand_out(&mut self.buf, out, &mut self.pos));
            }
            if let Some(body) = &mut self.body {
                match self.runtime.block_on(body.next()) {
                    Some(Ok(bytes)) => {
                        if bytes.len() as u64 > self.range_end - self.pos {
                            return Err(io::Error::other(self.error(UrlFailure::Transport(
                                "more bytes than asked for".to_string(),
                            ))));
                        }
                        self.buf = bytes;
                        continue;
                    }
                    Some(Err(e)) => {
                        // The body broke: ask again for the rest of the range.
                        broken += 1;
                        self.body = None;
                        if broken >= URL_TRIES {
                            return Err(io::Error::other(
                                self.error(UrlFailure::Transport(reqwest_reason(&e))),
                            ));
                        }
                        self.range_end = self.pos;
                    }
                    None => {
                        self.body = None;
                        if self.pos != self.range_end {
                            broken += 1;
                            if broken >= URL_TRIES {
                                return Err(io::Error::new(
                                    io::ErrorKind::UnexpectedEof,
                                    self.error(UrlFailure::Transport(format!(
                                        "the answer ended at byte {} of {}",
                                        self.pos, self.range_end
                                    ))),
                                ));
                            }
                            self.range_end = self.pos;
                        }
                        continue;
                    }
                }
            }
            if self.pos >= self.size {
                return Ok(0);
            }
            let end = self.size.min(self.pos + self.range);
            let response = self
                .fetch(self.pos, end)
                .map_err(|f| io::Error::other(self.error(f)))?;
            if response.status() != reqwest::StatusCode::PARTIAL_CONTENT {
                return Err(io::Error::other(self.error(UrlFailure::Transport(
                    format!(
                        "HTTP {} instead of 206 for a range",
                        response.status().as_u16()
                    ),
                ))));
            }
            self.range_end = end;
            self.body = Some(response.bytes_stream().boxed());
        }
    }
}
