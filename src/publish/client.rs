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
//! again only after a throttling refusal with a 4xx status (429, `RequestLimitExceeded`): a
//! rate limit refuses a request before the operation runs, so nothing was created. Any other
//! failure returns at once: a lost answer or a 5xx may hide a resource created, which the
//! caller must look up before trying again ([`Error::outcome_unknown`]). 401 and 403 are
//! never retried: the API locks an access key out after four failed authentications in a row
//! (spec, "Authentication").
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
    /// A create without a token (`CreateImage`, the export tasks): sent again only after a
    /// 4xx throttling refusal, which proves that the operation did not run.
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
            // Whether the API refused the request before running it (then even a create
            // without a token may be sent again).
            let (failure, retry_after, refused) = match self.attempt(op, &url, &body) {
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
                    // A 429 or a RequestLimitExceeded with a 4xx status: the rate limit
                    // refuses before the operation runs. A 503 may come from a gateway after
                    // the operation ran, so it is not a refusal.
                    let refused = throttling && status.is_client_error();
                    (error, answer.retry_after, refused)
                }
                // Not connected: nothing reached the API, so even a create may go again.
                Err(e @ Error::Transport { sent, .. }) => (e, None, !sent),
                Err(e) => return Err(e),
            };
            if (retry == Retry::Never && !refused) || stats.attempts >= self.backoff.attempts.max(1)
            {
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
                reason: scrub(
                    &crate::export::s3::reqwest_reason(&e),
                    &self.credentials.secrets(),
                ),
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

/// `text` made safe to show on one line: control characters become spaces, each of `secrets`
/// and the values of SigV4 fields (`Credential=`, `Signature=`, …) become `[redacted]`, and it
/// is cut to 300 bytes: the S3 side's scrubber, so that both say the same of one failure.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let secrets = secrets.iter().filter(|s| !s.is_empty()).cloned().collect();
    crate::export::s3::Scrubber(secrets).scrub(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::oapi::{
        CreateImageRequest, CreateImageResponse, FiltersImage, ReadImagesRequest,
        ReadImagesResponse,
    };
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    const AK: &str = "AKIDTESTOAPI0001";
    const SK: &str = "sk-test-secret-do-not-show";
    const REGION: &str = "eu-west-2";

    /// A request as the test server received it.
    #[derive(Debug, Clone)]
    struct Captured {
        method: String,
        path: String,
        /// Lower-cased names, values as sent.
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Captured {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// What the test server does with one connection.
    enum Reply {
        /// Answers with this status, body and extra headers.
        Answer(u16, String, Vec<(&'static str, String)>),
        /// Reads the request and closes the connection without answering.
        Drop,
    }

    fn ok(body: &str) -> Reply {
        Reply::Answer(200, body.to_string(), Vec::new())
    }

    fn error(status: u16, type_: &str, code: &str, details: &str) -> Reply {
        let body = serde_json::json!({
            "Errors": [{"Type": type_, "Code": code, "Details": details}],
            "ResponseContext": {"RequestId": format!("req-{status}")},
        });
        Reply::Answer(status, body.to_string(), Vec::new())
    }

    /// A one-thread HTTP/1.1 server on 127.0.0.1 that plays `replies`, one connection each,
    /// then stops listening; every request it read is in the returned list.
    fn serve(replies: Vec<Reply>) -> (u16, Arc<Mutex<Vec<Captured>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for reply in replies {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap().to_string();
                let path = parts.next().unwrap().to_string();
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    let h = h.trim_end_matches(['\r', '\n']);
                    if h.is_empty() {
                        break;
                    }
                    let (n, v) = h.split_once(':').unwrap();
                    headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
                }
                let len: usize = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .map_or(0, |(_, v)| v.parse().unwrap());
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                log.lock().unwrap().push(Captured {
                    method,
                    path,
                    headers,
                    body,
                });
                let mut stream = stream;
                match reply {
                    Reply::Drop => drop(stream),
                    Reply::Answer(status, body, extra) => {
                        let mut head = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                            body.len()
                        );
                        for (n, v) in extra {
                            head.push_str(&format!("{n}: {v}\r\n"));
                        }
                        head.push_str("\r\n");
                        let _ = stream.write_all(head.as_bytes());
                        let _ = stream.write_all(body.as_bytes());
                    }
                }
            }
        });
        (port, seen)
    }

    fn client(port: u16) -> Client {
        let endpoint = Endpoint::new(&format!("http://127.0.0.1:{port}/api/v1/"), REGION).unwrap();
        Client::new(endpoint, Credentials::new(AK, SK))
            .unwrap()
            .with_backoff(Backoff {
                first: Duration::from_millis(1),
                max: Duration::from_millis(20),
                attempts: 4,
            })
    }

    fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
        use hmac::{KeyInit, Mac};
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).unwrap();
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    fn sha256_hex(data: &[u8]) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(data))
    }

    /// The SigV4 signature of a captured request, computed here from the SigV4 specification
    /// (AWS "Create a signed AWS API request": canonical request, string to sign, key
    /// derivation), with none of the client's code: an independent check of its signer.
    fn signature(c: &Captured, secret: &str) -> String {
        let auth = c.header("authorization").unwrap();
        let signed = auth
            .split("SignedHeaders=")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap();
        let date = c.header("x-amz-date").unwrap();
        let day = &date[..8];
        let mut canonical = format!("{}\n{}\n\n", c.method, c.path);
        for name in signed.split(';') {
            let value = c.header(name).unwrap_or_else(|| panic!("{name} not sent"));
            canonical.push_str(&format!("{name}:{}\n", value.trim()));
        }
        canonical.push_str(&format!("\n{signed}\n{}", sha256_hex(&c.body)));
        let scope = format!("{day}/{REGION}/oapi/aws4_request");
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
            sha256_hex(canonical.as_bytes())
        );
        let mut key = hmac(format!("AWS4{secret}").as_bytes(), day.as_bytes());
        for part in [REGION, "oapi", "aws4_request"] {
            key = hmac(&key, part.as_bytes());
        }
        hex::encode(hmac(&key, to_sign.as_bytes()))
    }

    fn read_images() -> ReadImagesRequest {
        ReadImagesRequest {
            filters: Some(FiltersImage {
                image_names: Some(vec!["mkomi-test é".to_string()]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn signed_request() {
        let answer = r#"{"Images": [{"ImageId": "ami-12345678", "State": "available", "New": 1}],
            "ResponseContext": {"RequestId": "0475ca1e-d0c5-441d-712a-da55a4175157"}}"#;
        let (port, seen) = serve(vec![ok(answer)]);
        let req = read_images();
        let (resp, stats): (ReadImagesResponse, _) =
            client(port).call("ReadImages", &req, Retry::Safe).unwrap();
        let images = resp.images.unwrap();
        assert_eq!(images[0].image_id.as_deref(), Some("ami-12345678"));
        assert_eq!(
            stats,
            CallStats {
                attempts: 1,
                retries: 0,
                throttled: 0,
                request_id: Some("0475ca1e-d0c5-441d-712a-da55a4175157".to_string()),
            }
        );

        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let c = &seen[0];
        assert_eq!(
            (c.method.as_str(), c.path.as_str()),
            ("POST", "/api/v1/ReadImages")
        );
        assert_eq!(c.header("content-type"), Some("application/json"));
        assert_eq!(c.header("host"), Some(format!("127.0.0.1:{port}").as_str()));
        assert_eq!(c.body, serde_json::to_vec(&req).unwrap());
        assert_eq!(
            c.header("x-amz-content-sha256"),
            Some(sha256_hex(&c.body).as_str())
        );
        let auth = c.header("authorization").unwrap();
        let date = c.header("x-amz-date").unwrap();
        assert_eq!(date.len(), 16, "{date}");
        let prefix = format!(
            "AWS4-HMAC-SHA256 Credential={AK}/{}/{REGION}/oapi/aws4_request, \
             SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date, Signature=",
            &date[..8]
        );
        assert!(auth.starts_with(&prefix), "{auth}");
        let sent = &auth[prefix.len()..];
        assert_eq!(sent, signature(c, SK));
        // The check can fail: another secret or another body gives another signature.
        assert_ne!(sent, signature(c, "another-secret"));
        let mut changed = c.clone();
        changed.body.push(b' ');
        assert_ne!(sent, signature(&changed, SK));
        assert!(c.header("x-amz-security-token").is_none());
    }

    #[test]
    fn api_error() {
        let (port, seen) = serve(vec![error(
            400,
            "InvalidParameterValue",
            "4078",
            "Invalid ImageName.\nSee the docs.",
        )]);
        let e = client(port)
            .call::<_, CreateImageResponse>(
                "CreateImage",
                &CreateImageRequest::default(),
                Retry::Safe,
            )
            .unwrap_err();
        match &e {
            Error::Api {
                op,
                status,
                code,
                type_,
                details,
                request_id,
            } => {
                assert_eq!((op.as_str(), *status), ("CreateImage", 400));
                assert_eq!(code.as_deref(), Some("4078"));
                assert_eq!(type_.as_deref(), Some("InvalidParameterValue"));
                assert_eq!(details.as_deref(), Some("Invalid ImageName. See the docs."));
                assert_eq!(request_id.as_deref(), Some("req-400"));
            }
            e => panic!("{e:?}"),
        }
        assert_eq!(
            e.to_string(),
            "CreateImage failed: HTTP 400 InvalidParameterValue (code 4078): Invalid ImageName. See the docs. (request req-400)"
        );
        assert!(!e.outcome_unknown());
        // A 400 is not retried, even with Retry::Safe.
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[test]
    fn safe_retry_after_503() {
        let (port, seen) = serve(vec![
            error(503, "ServiceUnavailable", "0", "busy"),
            ok(r#"{"Images": []}"#),
        ]);
        let c = client(port);
        let (resp, stats): (ReadImagesResponse, _) =
            c.call("ReadImages", &read_images(), Retry::Safe).unwrap();
        assert_eq!(resp.images, Some(Vec::new()));
        assert_eq!((stats.attempts, stats.retries, stats.throttled), (2, 1, 1));
        assert_eq!(stats.request_id, None);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        // The same bytes both times, each try signed on its own.
        assert_eq!(seen[0].body, seen[1].body);
        assert_eq!(
            signature(&seen[1], SK),
            seen[1]
                .header("authorization")
                .unwrap()
                .rsplit('=')
                .next()
                .unwrap()
        );
        assert_eq!(
            c.totals(),
            Totals {
                calls: 1,
                attempts: 2,
                retries: 1,
                throttled: 1
            }
        );
    }

    #[test]
    fn safe_retries_are_bounded() {
        let replies = (0..6)
            .map(|_| {
                Reply::Answer(
                    429,
                    "{}".to_string(),
                    vec![("Retry-After", "0".to_string())],
                )
            })
            .collect();
        let (port, seen) = serve(replies);
        let e = client(port)
            .call::<_, ReadImagesResponse>("ReadImages", &read_images(), Retry::Safe)
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Api {
                    status: 429,
                    code: None,
                    ..
                }
            ),
            "{e:?}"
        );
        // Backoff.attempts is 4.
        assert_eq!(seen.lock().unwrap().len(), 4);
    }

    #[test]
    fn throttling_type_is_retried() {
        let (port, seen) = serve(vec![
            error(400, "RequestLimitExceeded", "1", "slow down"),
            ok("{}"),
        ]);
        let (_, stats): (ReadImagesResponse, _) = client(port)
            .call("ReadImages", &read_images(), Retry::Safe)
            .unwrap();
        assert_eq!((stats.retries, stats.throttled), (1, 1));
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn never_is_sent_once() {
        let (port, seen) = serve(vec![
            error(503, "ServiceUnavailable", "0", "busy"),
            ok(r#"{"Image": {"ImageId": "ami-1"}}"#),
        ]);
        let e = client(port)
            .call::<_, CreateImageResponse>(
                "CreateImage",
                &CreateImageRequest::default(),
                Retry::Never,
            )
            .unwrap_err();
        assert!(matches!(e, Error::Api { status: 503, .. }), "{e:?}");
        assert!(e.outcome_unknown(), "a 5xx may hide an image created");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[test]
    fn never_is_sent_again_after_a_429() {
        let (port, seen) = serve(vec![
            error(429, "RequestLimitExceeded", "0", "slow down"),
            ok(r#"{"Image": {"ImageId": "ami-1"}}"#),
        ]);
        let (resp, stats): (CreateImageResponse, _) = client(port)
            .call("CreateImage", &CreateImageRequest::default(), Retry::Never)
            .unwrap();
        assert_eq!(
            resp.image.and_then(|i| i.image_id).as_deref(),
            Some("ami-1")
        );
        assert_eq!((stats.attempts, stats.retries, stats.throttled), (2, 1, 1));
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn lost_answer() {
        // Safe: a connection closed without an answer is tried again.
        let (port, seen) = serve(vec![Reply::Drop, ok("{}")]);
        let (_, stats): (ReadImagesResponse, _) = client(port)
            .call("ReadImages", &read_images(), Retry::Safe)
            .unwrap();
        assert_eq!((stats.attempts, stats.throttled), (2, 0));
        assert_eq!(seen.lock().unwrap().len(), 2);
        // Never: the error says the outcome is unknown.
        let (port, seen) = serve(vec![Reply::Drop, ok("{}")]);
        let e = client(port)
            .call::<_, CreateImageResponse>(
                "CreateImage",
                &CreateImageRequest::default(),
                Retry::Never,
            )
            .unwrap_err();
        assert!(matches!(e, Error::Transport { sent: true, .. }), "{e:?}");
        assert!(e.outcome_unknown());
        assert_eq!(seen.lock().unwrap().len(), 1);
        // Nobody listening: not sent, so certainly not done.
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = client(port)
            .call::<_, CreateImageResponse>(
                "CreateImage",
                &CreateImageRequest::default(),
                Retry::Never,
            )
            .unwrap_err();
        assert!(matches!(e, Error::Transport { sent: false, .. }), "{e:?}");
        assert!(!e.outcome_unknown());
    }

    #[test]
    fn auth_failure_is_not_retried() {
        for status in [401, 403] {
            let (port, seen) = serve(vec![
                error(status, "AccessDenied", "1", "bad signature"),
                ok("{}"),
            ]);
            let e = client(port)
                .call::<_, ReadImagesResponse>("ReadImages", &read_images(), Retry::Safe)
                .unwrap_err();
            assert!(
                matches!(e, Error::Api { status: s, .. } if s == status),
                "{e:?}"
            );
            assert_eq!(seen.lock().unwrap().len(), 1);
        }
    }

    #[test]
    fn secrets_never_shown() {
        // An answer echoing the keys and a signature: none of it comes out.
        let details = format!(
            "Authorization: AWS4-HMAC-SHA256 Credential={AK}/20260101/x, Signature=0123abcd {SK}"
        );
        let (port, _) = serve(vec![
            error(401, "AuthFailure", "1", &details),
            Reply::Answer(200, format!("{{\"Images\": \"{SK}\"}}"), Vec::new()),
        ]);
        let c = client(port);
        let e = c
            .call::<_, ReadImagesResponse>("ReadImages", &read_images(), Retry::Safe)
            .unwrap_err();
        let e2 = c
            .call::<_, ReadImagesResponse>("ReadImages", &read_images(), Retry::Safe)
            .unwrap_err();
        assert!(matches!(e2, Error::Response { status: 200, .. }), "{e2:?}");
        for text in [
            e.to_string(),
            format!("{e:?}"),
            e2.to_string(),
            format!("{c:?}"),
        ] {
            for leak in [AK, SK, "0123abcd"] {
                assert!(!text.contains(leak), "{leak} in {text}");
            }
            assert!(!text.contains('\n'), "{text}");
        }
        assert!(e.to_string().contains("AuthFailure"), "{e}");
    }

    #[test]
    fn settings() {
        let k = || Credentials::new(AK, SK);
        for (url, region) in [
            ("http://api.eu-west-2.outscale.com/api/v1", REGION),
            ("ftp://127.0.0.1/api/v1", REGION),
            ("https://u:p@api.eu-west-2.outscale.com/api/v1", REGION),
            ("https://api.eu-west-2.outscale.com/api/v1?x=1", REGION),
            ("https://api.eu-west-2.outscale.com/api/v1", "eu-west-2/x"),
            ("https://api.eu-west-2.outscale.com/api/v1", ""),
        ] {
            let e = Endpoint::new(url, region).unwrap_err();
            assert!(matches!(e, Error::Setting(_)), "{url} {region}: {e}");
        }
        Endpoint::new("http://[::1]:8080/api/v1", REGION).unwrap();
        Endpoint::new("http://localhost/api/v1", REGION).unwrap();
        let c = Client::new(
            Endpoint::new("https://api.eu-west-2.outscale.com/api/v1", REGION).unwrap(),
            k(),
        )
        .unwrap();
        for op in ["", "../ReadImages", "Read Images", "ReadImages?x"] {
            let e = c
                .call::<_, ReadImagesResponse>(op, &read_images(), Retry::Safe)
                .unwrap_err();
            assert!(matches!(e, Error::Request { .. }), "{op}: {e}");
        }
        assert_eq!(c.totals(), Totals::default());
        for d in [0, 1, 1000, 10_000_000] {
            let delay = Duration::from_micros(d);
            let j = jitter(delay);
            assert!(j >= delay / 2 && j <= delay, "{delay:?} {j:?}");
        }
    }
}
