//! Objects in S3-protocol storage — Outscale OOS, AWS S3 or any endpoint that speaks SigV4 —
//! behind a blocking API.
//!
//! [`Client`] wraps the `object_store` crate, which signs every request with SigV4 (the payload's
//! SHA-256 included, so the server checks each body) and retries 5xx answers, timeouts and broken
//! connections with exponential backoff (up to 8 times, within 4 minutes; each request has 2
//! minutes). Its async runtime is private: a small tokio runtime is
//! created inside each [`Client`], so callers stay synchronous (and must not call it from inside
//! another tokio runtime).
//!
//! Large objects go up as multipart uploads ([`Client::put_stream_with`]): parts of a fixed size
//! read one after the other from any [`Read`], a few in flight at once (their data within
//! [`MAX_BUFFERED`] bytes), each with its SHA-256 sent as the part's `x-amz-checksum-sha256` (see
//! [`Config::checksums`]). A state file may record the upload and each finished part (number,
//! size, SHA-256, ETag), rewritten atomically as each part's upload completes. On an error or an
//! interruption the multipart upload is aborted, unless the state is to be kept: then a later
//! call with the same file re-reads the data, checks each finished part's SHA-256 against the
//! record without sending it again, sends the rest and completes the upload. Uploads left open by
//! a killed process are found with [`Client::list_uploads`] (where the server implements it) or
//! their state files ([`recorded_upload`]), and aborted with [`Client::abort_upload`].
//!
//! Downloads ([`Client::get_stream`], and [`get_url`] for pre-signed URLs, without credentials)
//! stream in ranged GETs pinned to the object's ETag, each retried on its own.
//!
//! Credentials come from the environment ([`Config::from_env`]) and are never printed: errors
//! name the bucket, the key, what was being done and the HTTP status with S3's error code, never a
//! header, a signature or a response body.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, Checksum};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::signer::{Method, Signer};
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload,
    RetryConfig,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

/// S3's smallest part size (all parts but the last must be at least this big).
pub const MIN_PART_SIZE: usize = 5 << 20;
/// S3's largest part size.
pub const MAX_PART_SIZE: usize = 5 << 30;
/// The part size used when the caller has no better idea: 32 MiB, so 10,000 parts hold 312 GiB.
pub const DEFAULT_PART_SIZE: usize = 32 << 20;
/// Parts in flight at once by default.
pub const DEFAULT_PARALLEL_PARTS: usize = 4;
/// The most part data a multipart upload holds in memory (parts in flight and the one being
/// read), whatever the part size, unless one part is larger: see [`buffered_parts`].
pub const MAX_BUFFERED: usize = 256 << 20;
/// S3's largest part number.
pub const MAX_PARTS: usize = 10_000;
/// The longest a pre-signed URL may live: 7 days, SigV4's (and so Outscale's and AWS's) maximum.
pub const MAX_PRESIGN: Duration = Duration::from_secs(7 * 24 * 3600);
/// How many bytes one ranged GET of [`Client::get_stream`] asks for, so that each request
/// finishes within [`REQUEST_TIMEOUT`] and is retried on its own.
const GET_RANGE: u64 = 32 << 20;
/// The longest one request may take, body included: a 32 MiB part needs 0.3 MB/s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// No retry starts later than this after a request's first try: SigV4 signatures are made once
/// per request and servers refuse them 15 minutes after their date.
const RETRY_TIMEOUT: Duration = Duration::from_secs(240);
/// The first line of a resume state file's format.
const STATE_FORMAT: &str = "mkomi-s3-upload/1";

/// An error of this module; one line, naming the object, never a credential or a signature.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An `s3://` location that cannot be used.
    #[error("invalid S3 location {input:?}: {reason}")]
    Location {
        /// What was given.
        input: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// An object key that cannot be used.
    #[error("invalid object key {key:?}: {reason}")]
    Key {
        /// What was given.
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Neither credential pair is in the environment.
    #[error(
        "no S3 credentials: set OSC_ACCESS_KEY and OSC_SECRET_KEY, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )]
    NoCredentials,
    /// Half a credential pair is in the environment.
    #[error("incomplete S3 credentials: {set} is set but {missing} is not")]
    PartialCredentials {
        /// The variable that is set.
        set: &'static str,
        /// The one missing.
        missing: &'static str,
    },
    /// No region given or in the environment.
    #[error("no S3 region: give one or set OSC_REGION, AWS_REGION or AWS_DEFAULT_REGION")]
    NoRegion,
    /// A setting (endpoint, region, part size, URL lifetime…) out of range.
    #[error("invalid S3 setting: {0}")]
    Setting(String),
    /// The server answered with an error status.
    #[error("s3://{bucket}/{key}: {op} failed: HTTP {status}{}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Http {
        /// The bucket.
        bucket: String,
        /// The object key (or prefix).
        key: String,
        /// What was being done (`PUT`, `upload part 3`…).
        op: String,
        /// The HTTP status code.
        status: u16,
        /// S3's error code (`SignatureDoesNotMatch`, `NoSuchBucket`…) when the body had one.
        code: Option<String>,
    },
    /// The object does not exist.
    #[error("s3://{bucket}/{key}: no such object (HTTP 404)")]
    NotFound {
        /// The bucket.
        bucket: String,
        /// The object key.
        key: String,
    },
    /// No answer: connection refused or broken, time-out, after the retries.
    #[error("s3://{bucket}/{key}: {op} failed: {reason}")]
    Transport {
        /// The bucket.
        bucket: String,
        /// The object key.
        key: String,
        /// What was being done.
        op: String,
        /// Why, in one line.
        reason: String,
    },
    /// The data to upload could not be read.
    #[error("s3://{bucket}/{key}: reading the data to upload: {source}")]
    Read {
        /// The bucket.
        bucket: String,
        /// The object key.
        key: String,
        /// The reader's error.
        source: io::Error,
    },
    /// A resume state file that cannot be read, written or used.
    #[error("resume state {}: {reason}", path.display())]
    State {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Resuming, the data differs from what was uploaded before.
    #[error(
        "s3://{bucket}/{key}: part {part} differs from the part uploaded before ({reason}); the data changed since {} was written: delete it to start again",
        state.display()
    )]
    Changed {
        /// The bucket.
        bucket: String,
        /// The object key.
        key: String,
        /// The part number (from 1).
        part: usize,
        /// How it differs.
        reason: String,
        /// The state file.
        state: PathBuf,
    },
    /// Resuming, the server no longer knows the multipart upload.
    #[error(
        "s3://{bucket}/{key}: the multipart upload recorded in {} is gone from the server (HTTP {status}: completed, aborted or expired): delete it to start again",
        state.display()
    )]
    UploadGone {
        /// The bucket.
        bucket: String,
        /// The object key.
        key: String,
        /// The HTTP status of the refused request.
        status: u16,
        /// The state file.
        state: PathBuf,
    },
    /// A GET through a URL failed; the URL is shown without its query (the signature).
    #[error("{url}: GET failed: {reason}")]
    Url {
        /// The URL up to its `?`.
        url: String,
        /// `HTTP 403 AccessDenied`, `cannot connect (…)`…
        reason: String,
    },
    /// The upload was interrupted (see [`Client::set_cancel`]).
    #[error("s3://{bucket}/{key}: interrupted")]
    Interrupted {
        /// The bucket.
        bucket: String,
        /// The object key.
        key: String,
    },
    /// The data needs more than 10,000 parts.
    #[error(
        "s3://{bucket}/{key}: more than {MAX_PARTS} parts of {part_size} bytes (the S3 limit): use larger parts"
    )]
    TooManyParts {
        /// The bucket.
        bucket: String,
        /// The object key.
        key: String,
        /// The part size.
        part_size: usize,
    },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An `s3://BUCKET/KEY` location; the key may be a prefix, or empty for the whole bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The bucket name: 3 to 63 lower-case letters, digits, dots and hyphens.
    pub bucket: String,
    /// The object key or prefix, without a leading or trailing `/`; may be empty.
    pub key: String,
}

impl Location {
    /// Parses `s3://bucket`, `s3://bucket/` or `s3://bucket/key/or/prefix[/]`.
    pub fn parse(input: &str) -> Result<Location> {
        let bad = |reason| Error::Location {
            input: input.to_string(),
            reason,
        };
        let rest = input
            .strip_prefix("s3://")
            .ok_or_else(|| bad("it must start with s3://"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket name"));
        }
        check_bucket(bucket).map_err(bad)?;
        let key = key.strip_suffix('/').unwrap_or(key);
        if !key.is_empty() {
            check_key(key).map_err(bad)?;
        }
        Ok(Location {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }

    /// The key of `name` under this location's prefix (`name` itself when the prefix is empty).
    pub fn join(&self, name: &str) -> String {
        if self.key.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.key)
        }
    }
}

impl FromStr for Location {
    type Err = Error;
    fn from_str(s: &str) -> Result<Location> {
        Location::parse(s)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// S3's bucket naming rules (the common subset of AWS's and Outscale's).
fn check_bucket(bucket: &str) -> Result<(), &'static str> {
    if !(3..=63).contains(&bucket.len()) {
        return Err("a bucket name has 3 to 63 characters");
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err("a bucket name has only lower-case letters, digits, dots and hyphens");
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bucket.as_bytes()[0]) || !alnum(bucket.as_bytes()[bucket.len() - 1]) {
        return Err("a bucket name starts and ends with a letter or a digit");
    }
    if bucket.contains("..") {
        return Err("a bucket name has no two dots in a row");
    }
    Ok(())
}

/// Object keys are limited to S3's "safe characters" — letters, digits and `! - _ . * ' ( )` —
/// in `/`-separated segments, none empty, `.` or `..`; at most 1024 bytes.
fn check_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("an object key is not empty");
    }
    if key.len() > 1024 {
        return Err("an object key has at most 1024 bytes");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!-_.*'()/".contains(&b))
    {
        return Err("an object key has only letters, digits, / and ! - _ . * ' ( )");
    }
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err("an object key has no empty, . or .. segment between slashes");
    }
    Ok(())
}

fn object_path(key: &str) -> Result<ObjectPath> {
    check_key(key).map_err(|reason| Error::Key {
        key: key.to_string(),
        reason,
    })?;
    ObjectPath::parse(key).map_err(|_| Error::Key {
        key: key.to_string(),
        reason: "not a valid object path",
    })
}

/// An access key, its secret and maybe a session token. `Debug` shows none of them.
#[derive(Clone)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl Credentials {
    /// Credentials given directly.
    pub fn new(access_key_id: &str, secret_access_key: &str, session_token: Option<&str>) -> Self {
        Credentials {
            access_key_id: access_key_id.to_string(),
            secret_access_key: secret_access_key.to_string(),
            session_token: session_token.map(str::to_string),
        }
    }

    /// The strings that must never appear in a message.
    fn secrets(&self) -> Vec<String> {
        let mut s = vec![self.access_key_id.clone(), self.secret_access_key.clone()];
        s.extend(self.session_token.clone());
        s.retain(|s| s.len() >= 4);
        s
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &"[redacted]")
            .field("secret_access_key", &"[redacted]")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Config {
    /// The endpoint URL (`https://oos.eu-west-2.outscale.com`, `http://127.0.0.1:9000`); `None`
    /// for AWS S3's own endpoint of the region (virtual-hosted-style requests). With an endpoint,
    /// requests are path-style (`ENDPOINT/BUCKET/KEY`).
    pub endpoint: Option<String>,
    /// The region, part of every SigV4 signature.
    pub region: String,
    /// The credentials.
    pub credentials: Credentials,
    /// Allow a plain `http://` endpoint (set for `http://` endpoints by [`Config::from_env`]).
    pub allow_http: bool,
    /// Send each part's and each object's SHA-256 as `x-amz-checksum-sha256`, for the server to
    /// check and keep (on by default). Servers that do not know the header ignore it; the SigV4
    /// payload hash is checked by every server either way.
    pub checksums: bool,
}

impl Config {
    /// The configuration from the process environment; see [`Config::from_vars`].
    pub fn from_env(endpoint: Option<&str>, region: Option<&str>) -> Result<Config> {
        Config::from_vars(|name| std::env::var(name).ok(), endpoint, region)
    }

    /// The configuration from variables looked up by `var`:
    /// - credentials: `OSC_ACCESS_KEY` and `OSC_SECRET_KEY` or else `AWS_ACCESS_KEY_ID`,
    ///   `AWS_SECRET_ACCESS_KEY` and maybe `AWS_SESSION_TOKEN` (empty values count as unset);
    /// - region: `region`, else `OSC_REGION`, `AWS_REGION`, `AWS_DEFAULT_REGION`;
    /// - endpoint: `endpoint`; without one, Outscale's OOS of the region
    ///   (`https://oos.REGION.outscale.com`) for `OSC_` credentials, AWS S3 for `AWS_` ones.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        endpoint: Option<&str>,
        region: Option<&str>,
    ) -> Result<Config> {
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
        let pair = |key: &'static str, secret: &'static str| match (var(key), var(secret)) {
            (Some(k), Some(s)) => Ok(Some((k, s))),
            (Some(_), None) => Err(Error::PartialCredentials {
                set: key,
                missing: secret,
            }),
            (None, Some(_)) => Err(Error::PartialCredentials {
                set: secret,
                missing: key,
            }),
            (None, None) => Ok(None),
        };
        let (credentials, outscale) =
            if let Some((k, s)) = pair("OSC_ACCESS_KEY", "OSC_SECRET_KEY")? {
                (Credentials::new(&k, &s, None), true)
            } else if let Some((k, s)) = pair("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")? {
                let token = var("AWS_SESSION_TOKEN");
                (Credentials::new(&k, &s, token.as_deref()), false)
            } else {
                return Err(Error::NoCredentials);
            };
        let region = match region.filter(|r| !r.is_empty()) {
            Some(r) => r.to_string(),
            None => ["OSC_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"]
                .iter()
                .find_map(|n| var(n))
                .ok_or(Error::NoRegion)?,
        };
        if !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(Error::Setting(format!(
                "region {region:?}: only lower-case letters, digits and hyphens"
            )));
        }
        let endpoint = match endpoint.filter(|e| !e.is_empty()) {
            Some(e) => Some(e.trim_end_matches('/').to_string()),
            None if outscale => Some(format!("https://oos.{region}.outscale.com")),
            None => None,
        };
        let allow_http = match &endpoint {
            Some(e) if e.starts_with("http://") => true,
            Some(e) if e.starts_with("https://") => false,
            Some(e) => {
                return Err(Error::Setting(format!(
                    "endpoint {e:?}: it must start with https:// or http://"
                )));
            }
            None => false,
        };
        Ok(Config {
            endpoint,
            region,
            credentials,
            allow_http,
            checksums: true,
        })
    }
}

/// How [`Client::put_stream_with`] uploads.
#[derive(Debug, Clone, Copy)]
pub struct PutOptions<'a> {
    /// Bytes per part ([`MIN_PART_SIZE`] to [`MAX_PART_SIZE`]); data shorter than a part goes
    /// up in a single PUT.
    pub part_size: usize,
    /// Parts in flight at most.
    pub parallel_parts: usize,
    /// The file recording the multipart upload and its finished parts.
    pub state: Option<&'a Path>,
    /// On an error or interruption, leave the upload open and its state file in place, to be
    /// resumed, instead of aborting it.
    pub keep_on_error: bool,
}

/// A multipart upload in progress on the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct OpenUpload {
    /// The object key.
    pub key: String,
    /// The upload ID.
    pub upload_id: String,
}

/// What [`Client::put_stream`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutReport {
    /// Parts in the object (1 for a single PUT).
    pub parts: usize,
    /// Parts sent by this call (fewer than `parts` when resuming).
    pub parts_sent: usize,
    /// The object's size.
    pub bytes: u64,
    /// Bytes sent by this call.
    pub bytes_sent: u64,
    /// Whether it went up as a multipart upload.
    pub multipart: bool,
    /// The object's ETag, as the server gave it.
    pub etag: Option<String>,
}

/// Removes anything secret from a text that came from the HTTP library: the credentials
/// themselves and the values of SigV4 query parameters and XML error fields.
#[derive(Debug)]
struct Scrubber(Vec<String>);

impl Scrubber {
    fn scrub(&self, text: &str) -> String {
        let mut s: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        for secret in &self.0 {
            s = s.replace(secret.as_str(), "[redacted]");
        }
        for marker in [
            "Signature=",
            "Credential=",
            "Security-Token=",
            "<SignatureProvided>",
            "<AWSAccessKeyId>",
            "<StringToSign>",
            "<StringToSignBytes>",
            "<CanonicalRequest>",
            "<CanonicalRequestBytes>",
        ] {
            let mut from = 0;
            while let Some(i) = s[from..].find(marker) {
                let start = from + i + marker.len();
                let end = s[start..]
                    .find(['&', '<', '"', ' ', ','])
                    .map_or(s.len(), |j| start + j);
                s.replace_range(start..end, "[redacted]");
                from = start + "[redacted]".len();
            }
        }
        if s.len() > 300 {
            let mut cut = 300;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push('…');
        }
        s
    }
}

/// What an `object_store` error amounts to.
enum Failure {
    Status { status: u16, code: Option<String> },
    Transport(String),
    Other(String),
}

/// Classifies an `object_store` error: its HTTP status and S3 error code, found in the error
/// chain's messages (the retry error type that holds them is not public), or the transport
/// failure at the bottom of the chain.
fn classify(e: &object_store::Error) -> Failure {
    let mut messages = Vec::new();
    let mut transport = None;
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut innermost = String::new();
    while let Some(err) = current {
        let text = err.to_string();
        if let Some(h) = err.downcast_ref::<object_store::client::HttpError>() {
            transport.get_or_insert(h.kind());
        }
        innermost = text.clone();
        messages.push(text);
        current = err.source();
    }
    for m in &messages {
        if let Some(i) = m.find("status code: ") {
            let digits: String = m[i + 13..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(status) = digits.parse() {
                return Failure::Status {
                    status,
                    code: error_code(m),
                };
            }
        }
        if m.contains("Server returned error response") {
            return Failure::Status {
                status: 200,
                code: error_code(m),
            };
        }
    }
    let status = match e {
        object_store::Error::NotFound { .. } => Some(404),
        object_store::Error::PermissionDenied { .. } => Some(403),
        object_store::Error::Unauthenticated { .. } => Some(401),
        object_store::Error::Precondition { .. } => Some(412),
        object_store::Error::AlreadyExists { .. } => Some(409),
        _ => None,
    };
    if let Some(status) = status {
        return Failure::Status { status, code: None };
    }
    if let Some(kind) = transport {
        use object_store::client::HttpErrorKind as K;
        let what = match kind {
            K::Connect => "cannot connect",
            K::Timeout => "timed out",
            K::Request => "request failed",
            K::Interrupted => "connection broken",
            K::Decode => "bad response",
            _ => "HTTP error",
        };
        return Failure::Transport(format!("{what} ({innermost})"));
    }
    Failure::Other(messages.into_iter().next().unwrap_or_default())
}

/// The `<Code>` of an S3 XML error body within `text`, when it looks like one.
fn error_code(text: &str) -> Option<String> {
    let start = text.find("<Code>")? + 6;
    let len = text[start..].find("</Code>")?;
    let code = &text[start..start + len];
    (!code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| code.to_string())
}

/// A connection to one bucket. Blocking; not for use inside a tokio runtime.
#[derive(Debug)]
pub struct Client {
    bucket: String,
    store: Arc<AmazonS3>,
    runtime: Arc<Runtime>,
    scrubber: Arc<Scrubber>,
    get_range: u64,
    /// What [`Client::list_uploads`] needs to sign its own requests.
    endpoint: Option<String>,
    region: String,
    credentials: Credentials,
    cancel: Option<&'static AtomicBool>,
}

impl Client {
    /// A client for `bucket` (nothing is sent yet).
    pub fn new(config: &Config, bucket: &str) -> Result<Client> {
        check_bucket(bucket).map_err(|reason| Error::Location {
            input: bucket.to_string(),
            reason,
        })?;
        let c = &config.credentials;
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&config.region)
            .with_access_key_id(&c.access_key_id)
            .with_secret_access_key(&c.secret_access_key)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(20),
                    base: 2.0,
                },
                max_retries: 8,
                retry_timeout: RETRY_TIMEOUT,
            })
            .with_client_options(
                // (allow_http is a client option: AmazonS3Builder::with_allow_http before
                // with_client_options would be undone by it.)
                ClientOptions::new()
                    .with_allow_http(config.allow_http)
                    .with_connect_timeout(Duration::from_secs(15))
                    .with_timeout(REQUEST_TIMEOUT),
            );
        if let Some(token) = &c.session_token {
            builder = builder.with_token(token);
        }
        builder = match &config.endpoint {
            Some(endpoint) => builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false),
            None => builder.with_virtual_hosted_style_request(true),
        };
        if config.checksums {
            builder = builder.with_checksum_algorithm(Checksum::SHA256);
        }
        let scrubber = Scrubber(c.secrets());
        let store = builder
            .build()
            .map_err(|e| Error::Setting(scrubber.scrub(&e.to_string())))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mkomi-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::Setting(format!("cannot start the I/O runtime: {e}")))?;
        Ok(Client {
            bucket: bucket.to_string(),
            store: Arc::new(store),
            runtime: Arc::new(runtime),
            scrubber: Arc::new(scrubber),
            get_range: GET_RANGE,
            endpoint: config.endpoint.clone(),
            region: config.region.clone(),
            credentials: config.credentials.clone(),
            cancel: None,
        })
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Sets how many bytes each ranged GET of [`Client::get_stream`] asks for (default 32 MiB;
    /// at least 1 MiB).
    pub fn set_get_range(&mut self, bytes: u64) {
        self.get_range = bytes.max(1 << 20);
    }

    fn error(&self, key: &str, op: &str, e: &object_store::Error) -> Error {
        map_error(&self.scrubber, &self.bucket, key, op, e)
    }

    /// Uploads `data` to `key` (a single PUT below [`DEFAULT_PART_SIZE`], multipart above).
    pub fn put_bytes(&self, key: &str, data: &[u8]) -> Result<PutReport> {
        self.put_stream(key, data, DEFAULT_PART_SIZE, DEFAULT_PARALLEL_PARTS, None)
    }

    /// Uploads everything `reader` gives to `key`, with a resume state file when `resume` is
    /// given; see [`Client::put_stream_with`] (`keep_on_error` is `resume.is_some()`).
    pub fn put_stream(
        &self,
        key: &str,
        reader: impl Read,
        part_size: usize,
        parallel_parts: usize,
        resume: Option<&Path>,
    ) -> Result<PutReport> {
        self.put_stream_with(
            key,
            reader,
            &PutOptions {
                part_size,
                parallel_parts,
                state: resume,
                keep_on_error: resume.is_some(),
            },
        )
    }

    /// Uploads everything `reader` gives to `key`.
    ///
    /// Less than `part_size` bytes go up in a single PUT; more as a multipart upload with parts
    /// of `part_size` bytes ([`MIN_PART_SIZE`] to [`MAX_PART_SIZE`]), up to `parallel_parts` of
    /// them in flight. Part data held in memory (the parts in flight and the one being read)
    /// stays within [`MAX_BUFFERED`] bytes, or one part when a part is larger: see
    /// [`buffered_parts`].
    ///
    /// With a `state` file, the upload is recorded in it when it starts and each part when its
    /// upload completes (rewritten atomically each time), so that a process killed at any point
    /// leaves a record of what the server holds. On an error or an interruption (see
    /// [`Client::set_cancel`]) the multipart upload is aborted and the file removed, unless
    /// `keep_on_error`: then both are left for a later call with the same file (and the same
    /// data), which goes on with the upload: the recorded part size is used, each finished part
    /// is re-read and its SHA-256 compared with the record instead of being sent again. Without
    /// `keep_on_error`, an upload recorded in the file by an earlier call is aborted first. The
    /// file is removed once the object is complete.
    pub fn put_stream_with(
        &self,
        key: &str,
        mut reader: impl Read,
        options: &PutOptions<'_>,
    ) -> Result<PutReport> {
        let path = object_path(key)?;
        let part_size = options.part_size;
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&part_size) {
            return Err(Error::Setting(format!(
                "part size {part_size}: S3 parts have 5 MiB to 5 GiB"
            )));
        }
        let parallel = options.parallel_parts.clamp(1, 64);
        let state = match options.state {
            Some(file) => State::load(file, &self.bucket, key)?,
            None => None,
        };
        let state = match state {
            Some(old) if !options.keep_on_error => {
                // Left by a call that was killed: not ours to go on with.
                self.abort(&path, &old.upload_id);
                None
            }
            s => s,
        };
        let part_size = state.as_ref().map_or(part_size, |s| s.part_size);
        let first = read_part(&mut reader, part_size).map_err(|e| self.read_error(key, e))?;
        self.check_cancel(key)?;

        if state.is_none() && first.len() < part_size {
            let bytes = first.len() as u64;
            let result = self
                .cancellable(key, self.store.put(&path, first.into()))?
                .map_err(|e| self.error(key, "PUT", &e))?;
            if let Some(file) = options.state {
                remove_state(file)?;
            }
            return Ok(PutReport {
                parts: 1,
                parts_sent: 1,
                bytes,
                bytes_sent: bytes,
                multipart: false,
                etag: result.e_tag,
            });
        }

        let resumed = state.is_some();
        let state = match state {
            Some(s) => s,
            None => {
                let upload_id = self
                    .cancellable(key, self.store.create_multipart(&path))?
                    .map_err(|e| self.error(key, "create multipart upload", &e))?;
                let s = State {
                    format: STATE_FORMAT.to_string(),
                    bucket: self.bucket.clone(),
                    key: key.to_string(),
                    upload_id,
                    part_size,
                    parts: BTreeMap::new(),
                };
                if let Some(file) = options.state
                    && let Err(e) = s.save(file)
                {
                    self.abort(&path, &s.upload_id);
                    return Err(e);
                }
                s
            }
        };
        let upload_id = state.upload_id.clone();
        let record = Arc::new(Record {
            state: Mutex::new(state),
            file: options.state.map(Path::to_path_buf),
        });

        let mut upload = Upload {
            client: self,
            key,
            path: &path,
            record: record.clone(),
            state_file: options.state,
            resumed,
            sent: 0,
            bytes_sent: 0,
            buffers: buffered_parts(part_size, parallel),
        };
        let result = upload.run(first, reader, parallel);
        let (parts_sent, bytes_sent) = (upload.sent, upload.bytes_sent);
        match result {
            Ok((bytes, etag)) => {
                if let Some(file) = options.state {
                    remove_state(file)?;
                }
                Ok(PutReport {
                    parts: record.lock().parts.len(),
                    parts_sent,
                    bytes,
                    bytes_sent,
                    multipart: true,
                    etag,
                })
            }
            Err(e) => {
                if !options.keep_on_error {
                    self.abort(&path, &upload_id);
                    if let Some(file) = options.state {
                        let _ = remove_state(file);
                    }
                }
                Err(e)
            }
        }
    }

    /// Makes uploads stop, with [`Error::Interrupted`], soon after `flag` is set (by a Ctrl-C
    /// handler): between parts, and while waiting for parts in flight, which are then
    /// cancelled.
    pub fn set_cancel(&mut self, flag: &'static AtomicBool) {
        self.cancel = Some(flag);
    }

    /// Runs `fut` to its end, or until the cancel flag is set: then [`Error::Interrupted`]
    /// (the request is dropped: a request's retries may take minutes).
    fn cancellable<F: std::future::Future>(&self, key: &str, fut: F) -> Result<F::Output> {
        let Some(flag) = self.cancel else {
            return Ok(self.runtime.block_on(fut));
        };
        let watch = async move {
            while !flag.load(Ordering::Relaxed) {
                tokio::time::sleep(CANCEL_POLL).await;
            }
        };
        self.runtime.block_on(async move {
            let (fut, watch) = (std::pin::pin!(fut), std::pin::pin!(watch));
            match futures_util::future::select(fut, watch).await {
                futures_util::future::Either::Left((out, _)) => Ok(out),
                futures_util::future::Either::Right(_) => Err(Error::Interrupted {
                    bucket: self.bucket.clone(),
                    key: key.to_string(),
                }),
            }
        })
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
    }

    fn check_cancel(&self, key: &str) -> Result<()> {
        if self.cancelled() {
            return Err(Error::Interrupted {
                bucket: self.bucket.clone(),
                key: key.to_string(),
            });
        }
        Ok(())
    }

    /// The data could not be read: because of an interruption (the reader's own end may be
    /// what stopped), or as the reader says.
    fn read_error(&self, key: &str, source: io::Error) -> Error {
        if self.cancelled() {
            return Error::Interrupted {
                bucket: self.bucket.clone(),
                key: key.to_string(),
            };
        }
        Error::Read {
            bucket: self.bucket.clone(),
            key: key.to_string(),
            source,
        }
    }

    /// Aborts a multipart upload, best effort (the original error matters more).
    fn abort(&self, path: &ObjectPath, upload_id: &str) {
        let _ = self
            .runtime
            .block_on(self.store.abort_multipart(path, &upload_id.to_string()));
    }

    /// Aborts the multipart upload recorded in the resume state file `file` and removes the
    /// file; `false` when there is no such file.
    pub fn abort_resumable(&self, file: &Path) -> Result<bool> {
        let text = match fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(state_error(file, format!("cannot read it: {e}"))),
        };
        let state: State = serde_json::from_str(&text)
            .map_err(|e| state_error(file, format!("not a resume state file: {e}")))?;
        let state = state.check(file, &self.bucket, None)?;
        let path = object_path(&state.key)?;
        match self.runtime.block_on(
            self.store
                .abort_multipart(&path, &state.upload_id.to_string()),
        ) {
            Ok(()) => {}
            Err(e) => match classify(&e) {
                // Already gone: nothing left to abort.
                Failure::Status { status: 404, .. } => {}
                _ => return Err(self.error(&state.key, "abort multipart upload", &e)),
            },
        }
        remove_state(file)?;
        Ok(true)
    }

    /// Aborts the multipart upload `upload_id` of `key`; `false` when the server no longer knows
    /// it (HTTP 404 `NoSuchUpload`: completed, aborted or expired).
    pub fn abort_upload(&self, key: &str, upload_id: &str) -> Result<bool> {
        let path = object_path(key)?;
        match self
            .runtime
            .block_on(self.store.abort_multipart(&path, &upload_id.to_string()))
        {
            Ok(()) => Ok(true),
            Err(e) => match classify(&e) {
                Failure::Status { status: 404, .. } => Ok(false),
                Failure::Status { code: Some(c), .. } if c == "NoSuchUpload" => Ok(false),
                _ => Err(self.error(key, "abort multipart upload", &e)),
            },
        }
    }

    /// The multipart uploads in progress for keys under `prefix` (S3's ListMultipartUploads,
    /// every page), or `None` when the server does not implement it (HTTP 501) or does not
    /// allow it to these credentials (HTTP 403 `AccessDenied`: a policy may grant uploads
    /// without listing them).
    pub fn list_uploads(&self, prefix: &str) -> Result<Option<Vec<OpenUpload>>> {
        use object_store::aws::{AwsAuthorizer, AwsCredential};
        use object_store::client::{HttpRequest, HttpRequestBody};
        const OP: &str = "list multipart uploads";
        let base = match &self.endpoint {
            Some(e) => format!("{e}/{}", self.bucket),
            None => format!("https://{}.s3.{}.amazonaws.com/", self.bucket, self.region),
        };
        let c = &self.credentials;
        let credential = AwsCredential {
            key_id: c.access_key_id.clone(),
            secret_key: c.secret_access_key.clone(),
            token: c.session_token.clone(),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| Error::Setting(format!("cannot set up HTTP: {}", e.without_url())))?;
        let transport = |reason: String| Error::Transport {
            bucket: self.bucket.clone(),
            key: prefix.to_string(),
            op: OP.to_string(),
            reason: self.scrubber.scrub(&reason),
        };
        let mut uploads = Vec::new();
        let mut marker: Option<(String, String)> = None;
        // A server that keeps saying "truncated" is not followed for ever.
        for _ in 0..1000 {
            let mut query = vec![("prefix", prefix.to_string()), ("uploads", String::new())];
            if let Some((key, id)) = &marker {
                query.push(("key-marker", key.clone()));
                query.push(("upload-id-marker", id.clone()));
            }
            let url = reqwest::Url::parse_with_params(&base, &query)
                .map_err(|e| Error::Setting(format!("endpoint {base:?}: {e}")))?;
            let body = self.cancellable(prefix, async {
                let mut delay = Duration::from_millis(250);
                let mut tries = 0;
                loop {
                    tries += 1;
                    // Signed again for each try: a signature has a date.
                    let mut request = HttpRequest::new(HttpRequestBody::empty());
                    *request.uri_mut() = url
                        .as_str()
                        .parse()
                        .map_err(|_| Error::Setting(format!("endpoint {base:?}: not a URI")))?;
                    AwsAuthorizer::new(&credential, "s3", &self.region)
                        .try_authorize(&mut request, None)
                        .map_err(|e| transport(format!("cannot sign: {e}")))?;
                    let failure = match http
                        .get(url.clone())
                        .headers(request.headers().clone())
                        .send()
                        .await
                    {
                        Ok(r) if r.status().is_success() => {
                            return r
                                .text()
                                .await
                                .map(Some)
                                .map_err(|e| transport(reqwest_reason(&e)));
                        }
                        Ok(r) if r.status().as_u16() == 501 => return Ok(None),
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let code = error_code(&r.text().await.unwrap_or_default());
                            if status == 403 && code.as_deref() == Some("AccessDenied") {
                                return Ok(None);
                            }
                            let e = Error::Http {
                                bucket: self.bucket.clone(),
                                key: prefix.to_string(),
                                op: OP.to_string(),
                                status,
                                code,
                            };
                            if !retryable(status) {
                                return Err(e);
                            }
                            e
                        }
                        Err(e) => transport(reqwest_reason(&e)),
                    };
                    if tries >= URL_TRIES {
                        return Err(failure);
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(20));
                }
            })??;
            let Some(body) = body else {
                return Ok(None);
            };
            let (page, next) = parse_uploads(&body);
            uploads.extend(page.into_iter().filter(|u| u.key.starts_with(prefix)));
            match next {
                Some(next) if marker.as_ref() != Some(&next) => marker = Some(next),
                _ => return Ok(Some(uploads)),
            }
        }
        Ok(Some(uploads))
    }

    /// A URL that lets anyone GET `key` for `expires` (1 s to [`MAX_PRESIGN`]), signed locally
    /// with SigV4 query parameters (nothing is sent).
    pub fn presign_get(&self, key: &str, expires: Duration) -> Result<String> {
        let path = object_path(key)?;
        if expires < Duration::from_secs(1) || expires > MAX_PRESIGN {
            return Err(Error::Setting(format!(
                "pre-signed URL lifetime of {} s: it must be from 1 s to 7 days (604800 s)",
                expires.as_secs()
            )));
        }
        let url = self
            .runtime
            .block_on(self.store.signed_url(Method::GET, &path, expires))
            .map_err(|e| self.error(key, "pre-sign GET", &e))?;
        Ok(url.to_string())
    }

    /// The size of `key`, or `None` when there is no such object.
    pub fn head(&self, key: &str) -> Result<Option<u64>> {
        let path = object_path(key)?;
        match self.runtime.block_on(self.store.head(&path)) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(key, "HEAD", &e)),
        }
    }

    /// A reader of `key`'s content, streamed in ranged GETs of 32 MiB (see
    /// [`Client::set_get_range`]), each retried on its own, all pinned to the object's ETag so
    /// that an object replaced meanwhile is an error, not a mix.
    pub fn get_stream(&self, key: &str) -> Result<ObjectReader> {
        let path = object_path(key)?;
        let meta = match self.runtime.block_on(self.store.head(&path)) {
            Ok(meta) => meta,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::NotFound {
                    bucket: self.bucket.clone(),
                    key: key.to_string(),
                });
            }
            Err(e) => return Err(self.error(key, "HEAD", &e)),
        };
        Ok(ObjectReader {
            runtime: self.runtime.clone(),
            store: self.store.clone(),
            scrubber: self.scrubber.clone(),
            bucket: self.bucket.clone(),
            key: key.to_string(),
            path,
            size: meta.size,
            etag: meta.e_tag,
            pos: 0,
            range: self.get_range,
            range_end: 0,
            stream: None,
            buf: Bytes::new(),
        })
    }

    /// The objects under `prefix` (a `/`-separated "directory"; empty for the whole bucket),
    /// as (key, size), sorted by key.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let prefix = prefix.trim_end_matches('/');
        let path = if prefix.is_empty() {
            None
        } else {
            Some(object_path(prefix)?)
        };
        let metas: Vec<_> = self
            .runtime
            .block_on(self.store.list(path.as_ref()).try_collect())
            .map_err(|e| self.error(prefix, "list", &e))?;
        let mut out: Vec<_> = metas
            .into_iter()
            .map(|m| (m.location.to_string(), m.size))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Deletes `key` (no error when it does not exist).
    pub fn delete(&self, key: &str) -> Result<()> {
        let path = object_path(key)?;
        match self.runtime.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(key, "DELETE", &e)),
        }
    }
}

fn map_error(
    scrubber: &Scrubber,
    bucket: &str,
    key: &str,
    op: &str,
    e: &object_store::Error,
) -> Error {
    let (bucket, key, op) = (bucket.to_string(), key.to_string(), op.to_string());
    match classify(e) {
        Failure::Status { status, code } => Error::Http {
            bucket,
            key,
            op,
            status,
            code,
        },
        Failure::Transport(reason) => Error::Transport {
            bucket,
            key,
            op,
            reason: scrubber.scrub(&reason),
        },
        Failure::Other(reason) => Error::Transport {
            bucket,
            key,
            op,
            reason: scrubber.scrub(&reason),
        },
    }
}

/// The text of the first `<tag>…</tag>` in `xml`, with XML's five entities decoded.
fn xml_field(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{tag}>"))?;
    Some(
        xml[start..start + len]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// The uploads of one ListMultipartUploads answer, and the markers of the next page when it is
/// truncated.
fn parse_uploads(xml: &str) -> (Vec<OpenUpload>, Option<(String, String)>) {
    let mut uploads = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<Upload>") {
        let block = &rest[i..];
        let end = block.find("</Upload>").map_or(block.len(), |j| j + 9);
        if let (Some(key), Some(upload_id)) = (
            xml_field(&block[..end], "Key"),
            xml_field(&block[..end], "UploadId"),
        ) {
            uploads.push(OpenUpload { key, upload_id });
        }
        rest = &block[end..];
    }
    let next = (xml_field(xml, "IsTruncated").as_deref() == Some("true"))
        .then(|| {
            Some((
                xml_field(xml, "NextKeyMarker")?,
                xml_field(xml, "NextUploadIdMarker")?,
            ))
        })
        .flatten();
    (uploads, next)
}

/// The bucket and the upload recorded in a state file of [`Client::put_stream_with`], `None`
/// when there is no such file.
pub fn recorded_upload(file: &Path) -> Result<Option<(String, OpenUpload)>> {
    let text = match fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(state_error(file, format!("cannot read it: {e}"))),
    };
    let state: State = serde_json::from_str(&text)
        .map_err(|e| state_error(file, format!("not a resume state file: {e}")))?;
    let bucket = state.bucket.clone();
    let state = state.check(file, &bucket, None)?;
    Ok(Some((
        state.bucket,
        OpenUpload {
            key: state.key,
            upload_id: state.upload_id,
        },
    )))
}

/// Reads up to `size` bytes: less only at the end of the data.
fn read_part(reader: &mut impl Read, size: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(size);
    reader.take(size as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// One finished part, as recorded in a resume state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DonePart {
    size: u64,
    /// Hex SHA-256 of the part's bytes.
    sha256: String,
    /// What `object_store` needs to complete the upload: the part's ETag (and checksum).
    etag: String,
}

/// A resume state file: one multipart upload and its finished parts, by part number.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    format: String,
    bucket: String,
    key: String,
    upload_id: String,
    part_size: usize,
    parts: BTreeMap<usize, DonePart>,
}

fn state_error(path: &Path, reason: String) -> Error {
    Error::State {
        path: path.to_path_buf(),
        reason,
    }
}

fn remove_state(file: &Path) -> Result<()> {
    match fs::remove_file(file) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(state_error(file, format!("cannot remove it: {e}"))),
    }
}

impl State {
    /// The state in `file`, `None` when there is no such file; checked against the object.
    fn load(file: &Path, bucket: &str, key: &str) -> Result<Option<State>> {
        let text = match fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(state_error(file, format!("cannot read it: {e}"))),
        };
        let state: State = serde_json::from_str(&text)
            .map_err(|e| state_error(file, format!("not a resume state file: {e}")))?;
        state.check(file, bucket, Some(key)).map(Some)
    }

    fn check(self, file: &Path, bucket: &str, key: Option<&str>) -> Result<State> {
        let bad = |reason: String| Err(state_error(file, reason));
        if self.format != STATE_FORMAT {
            return bad(format!("unknown format {:?}", self.format));
        }
        if self.bucket != bucket || key.is_some_and(|k| k != self.key) {
            return bad(format!(
                "it is the upload of s3://{}/{}, not of s3://{bucket}/{}",
                self.bucket,
                self.key,
                key.unwrap_or("")
            ));
        }
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            return bad(format!("part size {} out of range", self.part_size));
        }
        if self.parts.keys().any(|&n| n == 0 || n > MAX_PARTS) {
            return bad("a part number out of range".to_string());
        }
        Ok(self)
    }

    /// Writes the state to `file` atomically: a temporary file beside it, synced, renamed.
    fn save(&self, file: &Path) -> Result<()> {
        let fail = |what: &str, e: io::Error| state_error(file, format!("cannot {what}: {e}"));
        let mut tmp = file.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut json = serde_json::to_vec_pretty(self).expect("state serializes");
        json.push(b'\n');
        let mut f = File::create(&tmp).map_err(|e| fail("create a temporary file", e))?;
        f.write_all(&json)
            .and_then(|()| f.sync_all())
            .map_err(|e| fail("write a temporary file", e))?;
        fs::rename(&tmp, file).map_err(|e| fail("rename the temporary file", e))?;
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

/// How many parts' data a multipart upload holds in memory at once (the parts in flight and the
/// one being read): as many as fit in [`MAX_BUFFERED`], at most `parallel_parts + 1`, at least
/// one. With one, the next part is read only once the previous one is sent.
pub fn buffered_parts(part_size: usize, parallel_parts: usize) -> usize {
    (MAX_BUFFERED / part_size.max(1)).clamp(1, parallel_parts.clamp(1, 64) + 1)
}

/// A part's data as the payload of its request: slices of 1 MiB of the same buffer. The HTTP
/// client may copy each slice of a body into its own buffer as it sends it (it does on plain
/// `http://` connections): one slice the size of the part would double the part's memory.
fn payload(data: Vec<u8>) -> PutPayload {
    const SLICE: usize = 1 << 20;
    let data = Bytes::from(data);
    (0..data.len())
        .step_by(SLICE)
        .map(|start| data.slice(start..data.len().min(start + SLICE)))
        .collect()
}

/// The state of an upload, shared with the part tasks, which record each part as soon as its
/// upload completes.
struct Record {
    state: Mutex<State>,
    file: Option<PathBuf>,
}

impl Record {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a finished part, and saves the state (under the lock, so that saves are whole
    /// and in order).
    fn done(&self, number: usize, part: DonePart) -> Result<()> {
        let mut state = self.lock();
        state.parts.insert(number, part);
        match &self.file {
            Some(file) => state.save(file),
            None => Ok(()),
        }
    }
}

/// Why one part's task failed.
enum PartFailure {
    Store(object_store::Error),
    State(Error),
}

/// What one part's task gives back: part index (from 0), size, and how it went (the part is
/// already recorded when it succeeded).
type PartResult = (usize, u64, std::result::Result<(), PartFailure>);

/// One multipart upload in progress.
struct Upload<'a> {
    client: &'a Client,
    key: &'a str,
    path: &'a ObjectPath,
    record: Arc<Record>,
    state_file: Option<&'a Path>,
    resumed: bool,
    sent: usize,
    bytes_sent: u64,
    /// Parts' data held at most (see [`buffered_parts`]).
    buffers: usize,
}

/// How often a wait for parts in flight looks at the cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(100);

impl Upload<'_> {
    /// Sends the parts not yet finished and completes the upload: (object size, ETag).
    fn run(
        &mut self,
        first: Vec<u8>,
        mut reader: impl Read,
        parallel: usize,
    ) -> Result<(u64, Option<String>)> {
        let mut tasks: JoinSet<PartResult> = JoinSet::new();
        let result = self.send_parts(&mut tasks, first, &mut reader, parallel);
        drop(reader);
        // Whatever happened, the parts already in flight are waited for (each records itself),
        // unless the upload is interrupted: then they are cancelled.
        let mut first_error = result.err();
        loop {
            if self.client.cancelled() {
                tasks.abort_all();
            }
            let joined = match self
                .client
                .runtime
                .block_on(async { tokio::time::timeout(CANCEL_POLL, tasks.join_next()).await })
            {
                Ok(Some(joined)) => joined,
                Ok(None) => break,
                Err(_) => continue,
            };
            if let Err(e) = self.finish(joined)
                && first_error.is_none()
            {
                first_error = Some(e);
            }
        }
        self.client.check_cancel(self.key)?;
        if let Some(e) = first_error {
            return Err(e);
        }
        let total = self.check_complete()?;
        let (parts, id) = {
            let state = self.record.lock();
            let parts = state
                .parts
                .values()
                .map(|p| PartId {
                    content_id: p.etag.clone(),
                })
                .collect();
            (parts, state.upload_id.clone())
        };
        let result = self
            .client
            .cancellable(
                self.key,
                self.client.store.complete_multipart(self.path, &id, parts),
            )?
            .map_err(|e| self.error("complete multipart upload", &e))?;
        Ok((total, result.e_tag))
    }

    /// Waits until fewer than `limit` parts are in flight, recording those that finish.
    fn wait_below(&mut self, tasks: &mut JoinSet<PartResult>, limit: usize) -> Result<()> {
        while tasks.len() >= limit.max(1) {
            self.client.check_cancel(self.key)?;
            let joined = self
                .client
                .runtime
                .block_on(async { tokio::time::timeout(CANCEL_POLL, tasks.join_next()).await });
            match joined {
                Ok(Some(joined)) => self.finish(joined)?,
                Ok(None) => break,
                Err(_) => {}
            }
        }
        Ok(())
    }

    fn send_parts(
        &mut self,
        tasks: &mut JoinSet<PartResult>,
        first: Vec<u8>,
        reader: &mut impl Read,
        parallel: usize,
    ) -> Result<()> {
        let (part_size, upload_id) = {
            let state = self.record.lock();
            (state.part_size, state.upload_id.clone())
        };
        let mut next = Some(first);
        for index in 0.. {
            let data = match next.take() {
                Some(d) => d,
                None => {
                    // The part about to be read counts against the memory bound too.
                    self.wait_below(tasks, self.buffers)?;
                    self.client.check_cancel(self.key)?;
                    read_part(reader, part_size).map_err(|e| self.client.read_error(self.key, e))?
                }
            };
            if data.is_empty() && index > 0 {
                // The data ended on a part boundary.
                return self.check_no_more(index);
            }
            if index >= MAX_PARTS {
                return Err(Error::TooManyParts {
                    bucket: self.client.bucket.clone(),
                    key: self.key.to_string(),
                    part_size,
                });
            }
            let last = data.len() < part_size;
            let size = data.len() as u64;
            let sha256 = hex::encode(Sha256::digest(&data));
            let done = self.record.lock().parts.get(&(index + 1)).cloned();
            if let Some(done) = done {
                if done.size != size || done.sha256 != sha256 {
                    return Err(self.changed(
                        index + 1,
                        format!(
                            "{} bytes with SHA-256 {sha256}, not {} bytes with SHA-256 {}",
                            size, done.size, done.sha256
                        ),
                    ));
                }
            } else {
                self.wait_below(tasks, parallel)?;
                let store = self.client.store.clone();
                let path = self.path.clone();
                let id = upload_id.clone();
                let record = self.record.clone();
                let data = payload(data);
                tasks.spawn_on(
                    async move {
                        let outcome = match store.put_part(&path, &id, index, data).await {
                            // Recorded now, not when the loop gets to it: a process killed
                            // meanwhile must not send this part again.
                            Ok(part) => record
                                .done(
                                    index + 1,
                                    DonePart {
                                        size,
                                        sha256,
                                        etag: part.content_id,
                                    },
                                )
                                .map_err(PartFailure::State),
                            Err(e) => Err(PartFailure::Store(e)),
                        };
                        (index, size, outcome)
                    },
                    self.client.runtime.handle(),
                );
            }
            if last {
                return self.check_no_more(index + 1);
            }
        }
        unreachable!("the loop returns")
    }

    /// Resuming with data shorter than before: parts after `count` were recorded.
    fn check_no_more(&self, count: usize) -> Result<()> {
        let later = self
            .record
            .lock()
            .parts
            .keys()
            .find(|&&n| n > count)
            .copied();
        match later {
            Some(n) => Err(self.changed(n, format!("the data now ends after {count} parts"))),
            None => Ok(()),
        }
    }

    /// All parts from 1 to the last are recorded: the object's size.
    fn check_complete(&self) -> Result<u64> {
        let state = self.record.lock();
        for (i, &n) in state.parts.keys().enumerate() {
            if n != i + 1 {
                return Err(self.changed(i + 1, "missing from the record".to_string()));
            }
        }
        Ok(state.parts.values().map(|p| p.size).sum())
    }

    fn changed(&self, part: usize, reason: String) -> Error {
        Error::Changed {
            bucket: self.client.bucket.clone(),
            key: self.key.to_string(),
            part,
            reason,
            state: self.state_file.map(Path::to_path_buf).unwrap_or_default(),
        }
    }

    fn error(&self, op: &str, e: &object_store::Error) -> Error {
        if self.resumed
            && let Failure::Status { status, code } = classify(e)
            && (status == 404 || code.as_deref() == Some("NoSuchUpload"))
            && let Some(file) = self.state_file
        {
            return Error::UploadGone {
                bucket: self.client.bucket.clone(),
                key: self.key.to_string(),
                status,
                state: file.to_path_buf(),
            };
        }
        self.client.error(self.key, op, e)
    }

    /// Counts a finished part, or turns its failure into an error.
    fn finish(&mut self, joined: Result<PartResult, tokio::task::JoinError>) -> Result<()> {
        let (index, size, outcome) = match joined {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {
                // Cancelled: only an interruption does that.
                self.client.check_cancel(self.key)?;
                return Err(Error::Setting("an upload task was cancelled".to_string()));
            }
        };
        match outcome {
            Ok(()) => {
                self.sent += 1;
                self.bytes_sent += size;
                Ok(())
            }
            Err(PartFailure::Store(e)) => {
                Err(self.error(&format!("upload part {}", index + 1), &e))
            }
            Err(PartFailure::State(e)) => Err(e),
        }
    }
}

/// The content of an object, read in ranged GETs; see [`Client::get_stream`].
pub struct ObjectReader {
    runtime: Arc<Runtime>,
    store: Arc<AmazonS3>,
    scrubber: Arc<Scrubber>,
    bucket: String,
    key: String,
    path: ObjectPath,
    size: u64,
    etag: Option<String>,
    /// Bytes handed out so far.
    pos: u64,
    /// Bytes per ranged GET.
    range: u64,
    /// The end of the range being streamed.
    range_end: u64,
    stream: Option<BoxStream<'static, object_store::Result<Bytes>>>,
    buf: Bytes,
}

impl fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectReader")
            .field("bucket", &self.bucket)
            .field("key", &self.key)
            .field("size", &self.size)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl ObjectReader {
    /// The object's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn fail(&self, op: &str, e: &object_store::Error) -> io::Error {
        io::Error::other(map_error(&self.scrubber, &self.bucket, &self.key, op, e))
    }
}

impl Read for ObjectReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.buf.is_empty() || out.is_empty() {
                let n = out.len().min(self.buf.len());
                out[..n].copy_from_slice(&self.buf.split_to(n));
                self.pos += n as u64;
                return Ok(n);
            }
            if let Some(stream) = &mut self.stream {
                match self.runtime.block_on(stream.next()) {
                    Some(Ok(bytes)) => {
                        if bytes.len() as u64 > self.range_end - self.pos {
                            return Err(io::Error::other(format!(
                                "s3://{}/{}: GET returned more than the range asked for",
                                self.bucket, self.key
                            )));
                        }
                        self.buf = bytes;
                    }
                    Some(Err(e)) => {
                        self.stream = None;
                        return Err(self.fail("GET", &e));
                    }
                    None => {
                        self.stream = None;
                        if self.pos != self.range_end {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!(
                                    "s3://{}/{}: GET ended at byte {} of {}",
                                    self.bucket, self.key, self.pos, self.range_end
                                ),
                            ));
                        }
                    }
                }
                continue;
            }
            if self.pos >= self.size {
                return Ok(0);
            }
            let end = self.size.min(self.pos + self.range);
            let options = GetOptions {
                range: Some(GetRange::Bounded(self.pos..end)),
                if_match: self.etag.clone(),
                ..GetOptions::default()
            };
            let result = self
                .runtime
                .block_on(self.store.get_opts(&self.path, options))
                .map_err(|e| self.fail("GET", &e))?;
            self.range_end = end;
            self.stream = Some(result.into_stream());
        }
    }
}

/// Tries of each GET through a URL (see [`get_url`]).
const URL_TRIES: u32 = 6;

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

/// The most of an error answer's body read, for its S3 error code: a URL from a package is
/// untrusted, and its server may answer with an endless body.
const MAX_ERROR_BODY: usize = 64 << 10;

/// The start of an error answer's body (at most [`MAX_ERROR_BODY`] bytes), as text; the rest is
/// never read: dropping the response closes the connection.
async fn error_body(response: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while body.len() < MAX_ERROR_BODY {
        match stream.next().await {
            Some(Ok(chunk)) => {
                let room = MAX_ERROR_BODY - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

fn retryable(status: u16) -> bool {
    status >= 500 || status == 429 || status == 408
}

/// The innermost cause of a reqwest error, which is where the useful words are; never the URL.
fn reqwest_reason(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "HTTP error"
    };
    let mut inner: Option<&(dyn std::error::Error + 'static)> = e.source();
    let mut last = None;
    while let Some(err) = inner {
        last = Some(err.to_string());
        inner = err.source();
    }
    match last {
        Some(cause) => format!("{what} ({})", Scrubber(Vec::new()).scrub(&cause)),
        None => what.to_string(),
    }
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
                        let status = response.status().as_u16();
                        let body = error_body(response).await;
                        let failure = UrlFailure::Status(status, error_code(&body));
                        // 416 is the answer for an empty object: the caller handles it.
                        if !retryable(status) || status == 416 {
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
                let n = out.len().min(self.buf.len());
                out[..n].copy_from_slice(&self.buf.split_to(n));
                self.pos += n as u64;
                return Ok(n);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn locations() {
        let l = Location::parse("s3://my-bucket/images/debian/").unwrap();
        assert_eq!(
            (l.bucket.as_str(), l.key.as_str()),
            ("my-bucket", "images/debian")
        );
        assert_eq!(l.join("disk.qcow2.gz"), "images/debian/disk.qcow2.gz");
        assert_eq!(l.to_string(), "s3://my-bucket/images/debian");
        let l: Location = "s3://b.1-x".parse().unwrap();
        assert_eq!((l.bucket.as_str(), l.key.as_str()), ("b.1-x", ""));
        assert_eq!(l.join("m.json"), "m.json");
        for bad in [
            "my-bucket/x",
            "s3://",
            "s3:///key",
            "s3://ab/x",
            "s3://My-Bucket/x",
            "s3://bucket_1/x",
            "s3://-bucket/x",
            "s3://a..b/x",
            "s3://bucket//x",
            "s3://bucket/a/../b",
            "s3://bucket/a b",
            "s3://bucket/a%20b",
            "s3://bucket/a\\b",
        ] {
            let e = Location::parse(bad).unwrap_err();
            assert!(matches!(e, Error::Location { .. }), "{bad}: {e}");
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn config_from_vars() {
        let c = Config::from_vars(
            vars(&[
                ("OSC_ACCESS_KEY", "AKOSC"),
                ("OSC_SECRET_KEY", "very-secret"),
                ("OSC_REGION", "eu-west-2"),
                ("AWS_SESSION_TOKEN", "tok"),
            ]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            c.endpoint.as_deref(),
            Some("https://oos.eu-west-2.outscale.com")
        );
        assert_eq!(c.region, "eu-west-2");
        assert!(!c.allow_http);
        assert!(c.credentials.session_token.is_none());
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("very-secret") && !debug.contains("AKOSC"),
            "{debug}"
        );

        let c = Config::from_vars(
            vars(&[
                ("AWS_ACCESS_KEY_ID", "AKAWS"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
                ("AWS_SESSION_TOKEN", "tok"),
                ("AWS_DEFAULT_REGION", "us-east-1"),
                ("AWS_REGION", "eu-west-3"),
            ]),
            Some("http://127.0.0.1:9000/"),
            None,
        )
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(c.region, "eu-west-3");
        assert!(c.allow_http);
        assert_eq!(c.credentials.session_token.as_deref(), Some("tok"));
        let c = Config::from_vars(
            vars(&[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "s")]),
            None,
            Some("us-west-1"),
        )
        .unwrap();
        assert_eq!((c.endpoint, c.region.as_str()), (None, "us-west-1"));

        let e = Config::from_vars(vars(&[("OSC_REGION", "eu-west-2")]), None, None).unwrap_err();
        assert!(matches!(e, Error::NoCredentials), "{e}");
        assert!(e.to_string().contains("OSC_ACCESS_KEY"), "{e}");
        let e = Config::from_vars(
            vars(&[("OSC_ACCESS_KEY", "k"), ("OSC_SECRET_KEY", "")]),
            None,
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "incomplete S3 credentials: OSC_ACCESS_KEY is set but OSC_SECRET_KEY is not"
        );
        let e = Config::from_vars(
            vars(&[("OSC_ACCESS_KEY", "k"), ("OSC_SECRET_KEY", "s")]),
            None,
            None,
        )
        .unwrap_err();
        assert!(matches!(e, Error::NoRegion), "{e}");
        let e = Config::from_vars(
            vars(&[("OSC_ACCESS_KEY", "k"), ("OSC_SECRET_KEY", "s")]),
            Some("ftp://x"),
            Some("eu-west-2"),
        )
        .unwrap_err();
        assert!(matches!(e, Error::Setting(_)), "{e}");
    }

    #[test]
    fn upload_lists() {
        let page = "<?xml version=\"1.0\"?><ListMultipartUploadsResult><Bucket>b</Bucket>\
            <KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>\
            <NextKeyMarker>p/b&amp;c.gz</NextKeyMarker><NextUploadIdMarker>id2</NextUploadIdMarker>\
            <IsTruncated>true</IsTruncated>\
            <Upload><Key>p/a.gz</Key><UploadId>id1</UploadId><Initiated>x</Initiated></Upload>\
            <Upload><Key>p/b&amp;c.gz</Key><UploadId>id2</UploadId></Upload>\
            <Upload><Key>no-id</Key></Upload></ListMultipartUploadsResult>";
        let (uploads, next) = parse_uploads(page);
        assert_eq!(
            uploads,
            [
                OpenUpload {
                    key: "p/a.gz".into(),
                    upload_id: "id1".into()
                },
                OpenUpload {
                    key: "p/b&c.gz".into(),
                    upload_id: "id2".into()
                }
            ]
        );
        assert_eq!(next, Some(("p/b&c.gz".into(), "id2".into())));
        let last = page.replace("<IsTruncated>true", "<IsTruncated>false");
        assert_eq!(parse_uploads(&last).1, None);
        assert!(parse_uploads("<ListMultipartUploadsResult/>").0.is_empty());
    }

    #[test]
    fn scrubbing() {
        let s = Scrubber(vec!["AKID1234".into(), "s3cr3t-key".into()]);
        let out = s.scrub(
            "GET http://h/b/k?X-Amz-Credential=AKID1234%2F2024&X-Amz-Signature=abcdef01&x=1 \
             <SignatureProvided>ffff</SignatureProvided> s3cr3t-key\n",
        );
        for leak in ["AKID1234", "abcdef01", "ffff", "s3cr3t-key", "\n"] {
            assert!(!out.contains(leak), "{out}");
        }
        assert!(out.contains("x=1"), "{out}");
        assert_eq!(
            error_code("<Error><Code>SignatureDoesNotMatch</Code><Message>..."),
            Some("SignatureDoesNotMatch".to_string())
        );
        assert_eq!(error_code("<Code>a b</Code>"), None);
    }
}
