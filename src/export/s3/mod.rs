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
//! read one after the other from any [`Read`](std::io::Read), a few in flight at once (their data
//! within [`MAX_BUFFERED`] bytes), each with its SHA-256 sent as the part's
//! `x-amz-checksum-sha256` (see [`Config::checksums`]). A state file may record the upload and
//! each finished part (number, size, SHA-256, ETag), rewritten atomically as each part's upload
//! completes. On an error or an interruption the multipart upload is aborted, unless the state is
//! to be kept: then a later call with the same file re-reads the data, checks each finished
//! part's SHA-256 against the record without sending it again, sends the rest and completes the
//! upload. Uploads left open by a killed process are found with [`Client::list_uploads`] (where
//! the server implements it) or their state files ([`recorded_upload`]), and aborted with
//! [`Client::abort_upload`].
//!
//! Downloads ([`Client::get_stream`], and [`get_url`] for pre-signed URLs, without credentials)
//! stream in ranged GETs pinned to the object's ETag, each retried on its own.
//!
//! Credentials come from the environment ([`Config::from_env`]) and are never printed: errors
//! name the bucket, the key, what was being done and the HTTP status with S3's error code, never a
//! header, a signature or a response body. The status is taken from the answer itself
//! (object_store shows it only in its messages), and of an error answer's body only the first
//! 64 KiB are read, for its code: any server may answer with an endless body.

mod client;
mod credentials;
mod failure;
mod http;
mod location;
mod multipart;
mod object;
mod resume;
mod uploads;
mod url;

use std::io;
use std::path::PathBuf;

pub use client::{Client, MAX_PRESIGN};
pub use credentials::{Config, Credentials};
// The API client of `publish` shows errors the same way, with the same scrubber.
pub(crate) use credentials::Scrubber;
pub(crate) use http::reqwest_reason;
pub use location::Location;
pub use multipart::{
    DEFAULT_PARALLEL_PARTS, DEFAULT_PART_SIZE, MAX_BUFFERED, MAX_PART_SIZE, MAX_PARTS,
    MIN_PART_SIZE, PutOptions, PutReport, buffered_parts,
};
pub use object::ObjectReader;
pub use resume::recorded_upload;
pub use uploads::OpenUpload;
pub use url::{UrlReader, get_url, get_url_ranged};

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
        "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or OSC_ACCESS_KEY and OSC_SECRET_KEY"
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
