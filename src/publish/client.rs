//! A blocking client of the Outscale API (OAPI): one signed `POST {api_url}/{Operation}` with a
//! JSON body per call, its answer parsed into the generated types of [`super::oapi`], its
//! errors into [`Error::Api`], and a retry policy chosen per call ([`Retry`]).
//!
//! **Signing.** Requests are signed with AWS SigV4, service `oapi`, scope
//! `DATE/REGION/oapi/aws4_request` (the API description's "Authentication Schemes", and what
//! Outscale's own SDK sends), by the same `object_store` `AwsAuthorizer` that signs the S3 code's
//! hand-built requests (`src/export/s3/uploads.rs`). The body is serialized once, and those exact
//! bytes are both hashed into the signature and sent. The signed headers are `content-type`,
//! `host`, `x-amz-content-sha256` and `x-amz-date`:
//! - `content-type` is signed (as Outscale's OSC4 scheme does) so that nobody on the way can
//!   change how the body is read;
//! - `x-amz-content-sha256` (the body's SHA-256, which the SigV4 canonical request carries
//!   anyway) is added by `AwsAuthorizer` and cannot be left out of it. Outscale's SDK does not
//!   send it (it signs `host;x-amz-date`), but a SigV4 verifier rebuilds the canonical request
//!   from the `SignedHeaders` the request lists, and any signed header is allowed by the
//!   scheme, so its presence changes only the string signed, not whether it verifies. Whether
//!   Outscale's gateway really follows `SignedHeaders` cannot be checked from here (issue #15
//!   research, open question 1); if it does not, the fallback is a hand-made signer of
//!   `host;x-amz-date` (the test below already computes one independently).
//!
//! The request is signed again for each try: a signature has a date, and the API refuses
//! requests more than 5 minutes from it.
//!
//! **Retries.** [`Retry::Safe`] (reads, deletes, tags, permission updates, creates carrying a
//! `ClientToken`) resends on HTTP 429, 500, 502, 503 and 504, on an error whose `Type` is
//! `RequestLimitExceeded` or `Throttling`, and on transport failures, with jittered exponential
//! backoff ([`Backoff`]), a `Retry-After` header being honoured up to the backoff's maximum.
//! [`Retry::Never`] (`CreateImage`, which has no `ClientToken`, and the export tasks) sends
//! once: a lost answer may hide a resource created, which the caller must look up before
//! trying again ([`Error::outcome_unknown`]). 401 and 403 are never retried: the API locks an
//! access key out after four failed authentications in a row (spec, "Authentication").
//!
//! **Secrecy.** No error shows a header, the secret key or the access key: the API's own texts
//! (`Details`) pass through [`scrub`] first, and nothing else of a request or answer is shown.
//!
//! The async reqwest client runs on a private current-thread tokio runtime, as the S3 code's
//! URL reader does: callers stay synchronous, and must not call it from inside a tokio runtime.

use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::{HttpRequest, HttpRequestBody};
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::runtime::Runtime;

use super::credentials::Credentials;
use super::oapi::ErrorResponse;

/// The longest one request may take, answer included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest successful answer read: a `ReadImages` without filters lists every public image
/// of the region, a few MiB; anything much larger is not an API answer.
pub const MAX_RESPONSE: usize = 64 << 20;
/// The most of an error answer read, for its `ErrorResponse`.
const MAX_ERROR_BODY: usize = 64 << 10;
/// The longest text from the API (`Details`) kept in an error.
const MAX_TEXT: usize = 300;

/// An error of the API client; one line, never a header, a key or a secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API answered with an error status.
    #[error(
        "{op} failed: HTTP {status}{}",
        api_suffix(type_, code, details, request_id)
    )]
    Api {
        /// The operation (`CreateImage`).
        op: String,
        /// The HTTP status.
        status: u16,
        /// The API's error code (`4078`), if the answer had an `ErrorResponse`.
        code: Option<String>,
        /// The API's error type (`InvalidParameterValue`).
        type_: Option<String>,
        /// The API's details, scrubbed and cut to one short line.
        details: Option<String>,
        /// The request ID, for Outscale's support.
        request_id: Option<String>,
    },
    /// No answer: connection refused or broken, time-out (after the retries allowed).
    #[error("{op} failed: {reason}")]
    Transport {
        /// The operation.
        op: String,
        /// Why, in one line.
        reason: String,
        /// Whether the request may have reached the API (anything but a failure to connect).
        sent: bool,
    },
    /// A successful status with an answer that is not the operation's response.
    #[error("{op}: unreadable answer (HTTP {status}): {reason}")]
    Response {
        /// The operation.
        op: String,
        /// The HTTP status.
        status: u16,
        /// What is wrong with it.
        reason: String,
    },
    /// The request could not be made (serialized, signed, addressed).
    #[error("{op}: cannot make the request: {reason}")]
    Request {
        /// The operation.
        op: String,
        /// Why.
        reason: String,
    },
    /// No credentials in the environment or the profile.
    #[error(
        "no Outscale API credentials: set OSC_ACCESS_KEY and OSC_SECRET_KEY, or use a profile of ~/.osc/config.json"
    )]
    NoCredentials,
    /// Half a credential pair in the environment.
    #[error("incomplete Outscale API credentials: {set} is set but {missing} is not")]
    PartialCredentials {
        /// The variable that is set.
        set: &'static str,
        /// The one missing.
        missing: &'static str,
    },
    /// No region given, in the environment, the profile or the endpoint.
    #[error("no Outscale region: use --region, set OSC_REGION, or give one in the profile")]
    NoRegion,
    /// An endpoint, region or operation name that cannot be used.
    #[error("invalid Outscale API setting: {0}")]
    Setting(String),
    /// A configuration file that cannot be read or used.
    #[error("{}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The rest of an [`Error::Api`] message: ` TYPE (code CODE): DETAILS (request ID)`.
fn api_suffix(
    type_: &Option<String>,
    code: &Option<String>,
    details: &Option<String>,
    request_id: &Option<String>,
) -> String {
    let mut s = String::new();
    if let Some(t) = type_ {
        s.push_str(&format!(" {t}"));
    }
    if let Some(c) = code {
        s.push_str(&format!(" (code {c})"));
    }
    if let Some(d) = details {
        s.push_str(&format!(": {d}"));
    }
    if let Some(r) = request_id {
        s.push_str(&format!(" (request {r})"));
    }
    s
}

impl Error {
    /// Whether the operation may have taken effect although this error says it failed: the
    /// request may have arrived and its answer been lost (a broken connection or time-out after
    /// sending, a 5xx, a success that could not be read). After such an error to a call that
    /// creates something without a `ClientToken`, look the resource up before sending again.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            Error::Transport { sent, .. } => *sent,
            Error::Api { status, .. } => *status >= 500,
            Error::Response { .. } => true,
            _ => false,
        }
    }
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Where the API is: its base URL (`https://api.eu-west-2.outscale.com/api/v1`, operations are
/// POSTed to `{api_url}/{Operation}`) and the region the signatures name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The base URL, without a trailing `/`.
    pub api_url: String,
    /// The region (`eu-west-2`).
    pub region: String,
}

impl Endpoint {
    /// A checked endpoint: `https://`, or `http://` to this machine only (a test server; a
    /// request body may carry a secret, such as an export task's `OsuApiKey`); no query, no
    /// user name; a region of lower-case letters, digits and hyphens.
    pub fn new(api_url: &str, region: &str) -> Result<Endpoint> {
        let endpoint = Endpoint {
            api_url: api_url.trim_end_matches('/').to_string(),
            region: region.to_string(),
        };
        endpoint.check()?;
        Ok(endpoint)
    }

    /// The base URL parsed, after the checks of [`Endpoint::new`].
    fn check(&self) -> Result<Url> {
        let region = &self.region;
        if region.is_empty()
            || region.len() > 64
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(Error::Setting(format!(
                "region {region:?}: only lower-case letters, digits and hyphens"
            )));
        }
        let bad = |why: &str| Error::Setting(format!("API endpoint {:?}: {why}", self.api_url));
        let url = Url::parse(&self.api_url).map_err(|e| bad(&e.to_string()))?;
        let Some(host) = url.host_str() else {
            return Err(bad("no host"));
        };
        let local = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback());
        match url.scheme() {
            "https" => {}
            "http" if local => {}
            "http" => return Err(bad("plain http:// only to this machine; use https://")),
            _ => return Err(bad("not an https:// URL")),
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(bad("no query, fragment or user name allowed"));
        }
        Ok(url)
    }
}

/// Whether a call may be sent again after a failure that may be transient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Safe to resend: reads, deletes, tags, permission updates, and creates whose
    /// `ClientToken` makes a second one return the first one's resource.
    Safe,
    /// Sent once: a create without a token (`CreateImage`, the export tasks).
    Never,
}

/// The pace of retries: the first wait, doubling up to `max`, each drawn between half and all
/// of its value (so that many clients throttled together do not come back together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait before the first retry (before jitter).
    pub first: Duration,
    /// The longest wait, `Retry-After` included.
    pub max: Duration,
    /// The most tries of one call, the first included (at least 1).
    pub attempts: u32,
}

impl Default for Backoff {
    /// 0.5 s, 1, 2, 4, 8 s between 6 tries: about 15 s, under the 1-minute windows the API's
    /// limits are counted in (it states none; the SDK retries 3 times, up to 60 s).
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(500),
            max: Duration::from_secs(20),
            attempts: 6,
        }
    }
}

/// What one call took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Requests sent (or tried), the first included.
    pub attempts: u32,
    /// Retries: `attempts - 1`.
    pub retries: u32,
    /// Answers that were throttling (429, 503, `RequestLimitExceeded`).
    pub throttled: u32,
    /// The successful answer's request ID (`ResponseContext.RequestId`).
    pub request_id: Option<String>,
}

/// Totals over every call of a [`Client`], for a summary (failed calls included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Calls made.
    pub calls: u64,
    /// Requests sent, retries included.
    pub attempts: u64,
    /// Retries.
    pub retries: u64,
    /// Throttling answers.
    pub throttled: u64,
}

/// A client of the Outscale API. Blocking; not for use inside a tokio runtime.
#[derive(Debug)]
pub struct Client {
    endpoint: Endpoint,
    credentials: Credentials,
    backoff: Backoff,
    http: reqwest::Client,
    runtime: Runtime,
    calls: AtomicU64,
    attempts: AtomicU64,
    throttled: AtomicU64,
}

/// One answer: its status, `Retry-After` and body (cut to the size allowed).
struct Answer {
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Bytes,
}

impl Client {
    /// A client of `endpoint` signing as `credentials` (nothing is sent yet), with the default
    /// [`Backoff`].
    pub fn new(endpoint: Endpoint, credentials: Credentials) -> Result<Client> {
        endpoint.check()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Setting(format!("cannot start the I/O runtime: {e}")))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .timeout(REQUEST_TIMEOUT)
            // A redirect would resend a signed body to a place the signature does not name.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Setting(format!("cannot set up HTTP: {}", e.without_url())))?;
        Ok(Client {
            endpoint,
            credentials,
            backoff: Backoff::default(),
            http,
            runtime,
            calls: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
        })
    }

    /// The same client with another pace of retries.
    pub fn with_backoff(mut self, backoff: Backoff) -> Client {
        self.backoff = backoff;
        self
    }

    /// The endpoint called.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The totals over every call so far.
    pub fn totals(&self) -> Totals {
        let calls = self.calls.load(Ordering::Relaxed);
        let attempts = self.attempts.load(Ordering::Relaxed);
        Totals {
            calls,
            attempts,
            retries: attempts.saturating_sub(calls),
            throttled: self.throttled.load(Ordering::Relaxed),
        }
    }

    /// Calls the operation `op` (`ReadImages`) with the request `req` and parses the answer as
    /// `Resp`, retrying as `retry` allows (see the module's documentation).
    pub fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        op: &str,
        req: &Req,
        retry: Retry,
    ) -> Result<(Resp, CallStats)> {
        let request_error = |reason: String| Error::Request {
            op: op.to_string(),
            reason,
        };
        // The generated operation names are PascalCase words: anything else in a URL path
        // would be a mistake, or a way to reach another path.
        if op.is_empty() || op.len() > 64 || !op.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(request_error("not an operation name".to_string()));
        }
        let url = Url::parse(&format!("{}/{op}", self.endpoint.api_url))
            .map_err(|e| request_error(e.to_string()))?;
        // Serialized once: these bytes are the ones signed and the ones sent, every try.
        let body = Bytes::from(serde_json::to_vec(req).map_err(|e| request_error(e.to_string()))?);
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut stats = CallStats::default();
        let mut delay = self.backoff.first;
        loop {
            stats.attempts += 1;
            self.attempts.fetch_add(1, Ordering::Relaxed);
            let (failure, retry_after) = match self.attempt(op, &url, &body) {
                Ok(answer) if answer.status.is_success() => {
                    return self.parse(op, answer, stats);
                }
                Ok(answer) => {
                    let status = answer.status;
                    let error = self.api_error(op, &answer);
                    let throttling = is_throttling(&error);
                    if throttling {
                        stats.throttled += 1;
                        self.throttled.fetch_add(1, Ordering::Relaxed);
                    }
                    let transient = matches!(status.as_u16(), 500 | 502 | 503 | 504) || throttling;
                    // 401/403: bad keys, a clock off, a refused access; resending counts
                    // towards the API's lock-out (spec, "Authentication").
                    let auth = matches!(status.as_u16(), 401 | 403);
                    if !transient || auth {
                        return Err(error);
                    }
                    (error, answer.retry_after)
                }
                Err(e @ Error::Transport { .. }) => (e, None),
                Err(e) => return Err(e),
            };
            if retry == Retry::Never || stats.attempts >= self.backoff.attempts.max(1) {
                return Err(failure);
            }
            stats.retries += 1;
            let wait = retry_after.unwrap_or_else(|| jitter(delay));
            std::thread::sleep(wait.min(self.backoff.max));
            delay = delay.saturating_mul(2).min(self.backoff.max);
        }
    }

    /// Signs and sends one request, and reads its answer.
    fn attempt(&self, op: &str, url: &Url, body: &Bytes) -> Result<Answer> {
        let request_error = |reason: String| Error::Request {
            op: op.to_string(),
            reason: scrub(&reason, &self.credentials.secrets()),
        };
        let mut request = HttpRequest::new(HttpRequestBody::from(body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = url
            .as_str()
            .parse()
            .map_err(|_| request_error("the URL is not a URI".to_string()))?;
        request
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let credential = AwsCredential {
            key_id: self.credentials.access_key.clone(),
            secret_key: self.credentials.secret_key.clone(),
            // No session token: `x-amz-security-token` is an S3/STS header the API does not use.
            token: None,
        };
        AwsAuthorizer::new(&credential, "oapi", &self.endpoint.region)
            .try_authorize(&mut request, None)
            .map_err(|e| request_error(format!("cannot sign: {e}")))?;
        self.runtime.block_on(async {
            let transport = |e: reqwest::Error| Error::Transport {
                op: op.to_string(),
                reason: scrub(&reqwest_reason(&e), &self.credentials.secrets()),
                sent: !e.is_connect(),
            };
            let mut response = self
                .http
                .post(url.clone())
                .headers(request.headers().clone())
                .body(body.clone())
                .send()
                .await
                .map_err(transport)?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let cap = if status.is_success() {
                MAX_RESPONSE
            } else {
                MAX_ERROR_BODY
            };
            let mut data = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(transport)? {
                let room = cap - data.len();
                if chunk.len() > room {
                    if status.is_success() {
                        return Err(Error::Response {
                            op: op.to_string(),
                            status: status.as_u16(),
                            reason: format!("larger than {cap} bytes"),
                        });
                    }
                    // An error body's start is enough for its ErrorResponse, or for nothing.
                    data.extend_from_slice(chunk.get(..room).unwrap_or_default());
                    break;
                }
                data.extend_from_slice(&chunk);
            }
            Ok(Answer {
                status,
                retry_after,
                body: Bytes::from(data),
            })
        })
    }

    /// A successful answer parsed as `Resp`, with its request ID in `stats`.
    fn parse<Resp: DeserializeOwned>(
        &self,
        op: &str,
        answer: Answer,
        mut stats: CallStats,
    ) -> Result<(Resp, CallStats)> {
        #[derive(serde::Deserialize)]
        struct Context {
            #[serde(rename = "ResponseContext")]
            context: Option<super::oapi::ResponseContext>,
        }
        let unreadable = |e: serde_json::Error| Error::Response {
            op: op.to_string(),
            status: answer.status.as_u16(),
            // serde_json quotes the value it could not take: that is answer text, scrubbed.
            reason: scrub(&e.to_string(), &self.credentials.secrets()),
        };
        let resp = serde_json::from_slice(&answer.body).map_err(unreadable)?;
        stats.request_id = serde_json::from_slice::<Context>(&answer.body)
            .ok()
            .and_then(|c| c.context)
            .and_then(|c| c.request_id)
            .map(|r| scrub(&r, &self.credentials.secrets()));
        Ok((resp, stats))
    }

    /// The [`Error::Api`] of an error answer: its first error's code and type, every error's
    /// details (scrubbed), and its request ID; only the status if the body is no
    /// `ErrorResponse`.
    fn api_error(&self, op: &str, answer: &Answer) -> Error {
        let secrets = self.credentials.secrets();
        let parsed: ErrorResponse = serde_json::from_slice(&answer.body).unwrap_or_default();
        let errors = parsed.errors.unwrap_or_default();
        let first = errors.first();
        let text = |s: &Option<String>| s.as_deref().map(|s| scrub(s, &secrets));
        let details: Vec<String> = errors
            .iter()
            .filter_map(|e| text(&e.details))
            .filter(|d| !d.is_empty())
            .collect();
        Error::Api {
            op: op.to_string(),
            status: answer.status.as_u16(),
            code: first.and_then(|e| text(&e.code)),
            type_: first.and_then(|e| text(&e.type_)),
            details: (!details.is_empty()).then(|| scrub(&details.join("; "), &secrets)),
            request_id: parsed.response_context.and_then(|c| text(&c.request_id)),
        }
    }
}

/// Whether an error answer is throttling: HTTP 429 or 503, or an error of type
/// `RequestLimitExceeded` or `Throttling` whatever its status (the API description states
/// neither the status nor the type of its rate limit; these are the names AWS-style APIs use).
fn is_throttling(error: &Error) -> bool {
    match error {
        Error::Api { status, type_, .. } => {
            matches!(status, 429 | 503)
                || matches!(
                    type_.as_deref(),
                    Some("RequestLimitExceeded" | "Throttling")
                )
        }
        _ => false,
    }
}

/// A wait between half and all of `delay`, drawn from the process's random hash keys (no random
/// number crate is a dependency; this needs no more than spread).
fn jitter(delay: Duration) -> Duration {
    let draw = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = delay / 2;
    let spread = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(draw.checked_rem(spread.saturating_add(1)).unwrap_or(0))
}

/// The innermost cause of a reqwest error, where the useful words are; never the URL.
fn reqwest_reason(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "no answer"
    };
    let mut inner = e.source();
    let mut last = None;
    while let Some(err) = inner {
        last = Some(err.to_string());
        inner = err.source();
    }
    match last {
        Some(cause) => format!("{what} ({cause})"),
        None => what.to_string(),
    }
}

/// `text` made safe to show on one line: control characters become spaces, each of `secrets`
/// and the value after a SigV4 `Credential=` or `Signature=` becomes `[redacted]`, and it is cut
/// to [`MAX_TEXT`] bytes.
///
/// (The S3 code has the same scrubber, `export::s3::credentials::Scrubber`, private to its
/// module; it also knows S3's XML error fields, which the API never sends.)
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut s: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        s = s.replace(secret.as_str(), "[redacted]");
    }
    for marker in ["Credential=", "Signature="] {
        let mut from = 0;
        while let Some(i) = s.get(from..).and_then(|rest| rest.find(marker)) {
            let start = from + i + marker.len();
            let end = s
                .get(start..)
                .and_then(|rest| rest.find(['&', '"', ' ', ',']))
                .map_or(s.len(), |j| start + j);
            s.replace_range(start..end, "[redacted]");
            from = start + "[redacted]".len();
        }
    }
    if s.len() > MAX_TEXT {
        let mut cut = MAX_TEXT;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}
