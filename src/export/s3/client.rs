//! [`Client`]: one bucket, its private tokio runtime, and the single requests (HEAD, GET, list,
//! DELETE, pre-signing) with cancellation.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, Checksum};
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use object_store::signer::{Method, Signer};
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};
use tokio::runtime::Runtime;

use super::credentials::{Config, Credentials, Scrubber};
use super::failure::{StoreError, map_error};
use super::http::{Connector, observe};
use super::location::{check_bucket, object_path};
use super::object::ObjectReader;
use super::{Error, Result};

/// The longest a pre-signed URL may live: 7 days, SigV4's (and so Outscale's and AWS's) maximum.
pub const MAX_PRESIGN: Duration = Duration::from_secs(7 * 24 * 3600);
/// How many bytes one ranged GET of [`Client::get_stream`] asks for, so that each request
/// finishes within [`REQUEST_TIMEOUT`] and is retried on its own.
pub(super) const GET_RANGE: u64 = 32 << 20;
/// The longest one request may take, body included: a 32 MiB part needs 0.3 MB/s.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// No retry starts later than this after a request's first try: SigV4 signatures are made once
/// per request and servers refuse them 15 minutes after their date.
const RETRY_TIMEOUT: Duration = Duration::from_secs(240);

/// How often a wait for parts in flight looks at the cancel flag.
pub(super) const CANCEL_POLL: Duration = Duration::from_millis(100);

/// A connection to one bucket. Blocking; not for use inside a tokio runtime.
#[derive(Debug)]
pub struct Client {
    pub(super) bucket: String,
    pub(super) store: Arc<AmazonS3>,
    pub(super) runtime: Arc<Runtime>,
    pub(super) scrubber: Arc<Scrubber>,
    pub(super) get_range: u64,
    /// What [`Client::list_uploads`] needs to sign its own requests.
    pub(super) endpoint: Option<String>,
    pub(super) region: String,
    pub(super) credentials: Credentials,
    pub(super) cancel: Option<&'static AtomicBool>,
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
            .with_http_connector(Connector)
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

    pub(super) fn error(&self, key: &str, op: &str, e: &StoreError) -> Error {
        map_error(&self.scrubber, &self.bucket, key, op, e)
    }

    /// Makes uploads stop, with [`Error::Interrupted`], soon after `flag` is set (by a Ctrl-C
    /// handler): between parts, and while waiting for parts in flight, which are then
    /// cancelled.
    pub fn set_cancel(&mut self, flag: &'static AtomicBool) {
        self.cancel = Some(flag);
    }

    /// Runs `fut` to its end, or until the cancel flag is set: then [`Error::Interrupted`]
    /// (the request is dropped: a request's retries may take minutes).
    pub(super) fn cancellable<F: std::future::Future>(
        &self,
        key: &str,
        fut: F,
    ) -> Result<F::Output> {
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

    pub(super) fn cancelled(&self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
    }

    pub(super) fn check_cancel(&self, key: &str) -> Result<()> {
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
    pub(super) fn read_error(&self, key: &str, source: io::Error) -> Error {
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
    pub(super) fn abort(&self, path: &ObjectPath, upload_id: &str) {
        let _ = self.runtime.block_on(observe(
            self.store.abort_multipart(path, &upload_id.to_string()),
        ));
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
            .map_err(|e| self.error(key, "pre-sign GET", &e.into()))?;
        Ok(url.to_string())
    }

    /// The size of `key`, or `None` when there is no such object.
    pub fn head(&self, key: &str) -> Result<Option<u64>> {
        let path = object_path(key)?;
        match self.runtime.block_on(observe(self.store.head(&path))) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(StoreError {
                error: object_store::Error::NotFound { .. },
                ..
            }) => Ok(None),
            Err(e) => Err(self.error(key, "HEAD", &e)),
        }
    }

    /// A reader of `key`'s content, streamed in ranged GETs of 32 MiB (see
    /// [`Client::set_get_range`]), each retried on its own, all pinned to the object's ETag so
    /// that an object replaced meanwhile is an error, not a mix.
    pub fn get_stream(&self, key: &str) -> Result<ObjectReader> {
        let path = object_path(key)?;
        let meta = match self.runtime.block_on(observe(self.store.head(&path))) {
            Ok(meta) => meta,
            Err(StoreError {
                error: object_store::Error::NotFound { .. },
                ..
            }) => {
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
            .block_on(observe(self.store.list(path.as_ref()).try_collect()))
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
        match self.runtime.block_on(observe(self.store.delete(&path))) {
            Ok(())
            | Err(StoreError {
                error: object_store::Error::NotFound { .. },
                ..
            }) => Ok(()),
            Err(e) => Err(self.error(key, "DELETE", &e)),
        }
    }
}
