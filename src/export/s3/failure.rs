//! What a failed request amounts to: its HTTP status and S3 error code, or the transport
//! failure, turned into this module's one-line [`Error`]s.

use futures_util::stream::StreamExt;

use super::Error;
use super::credentials::Scrubber;

/// What an `object_store` error amounts to.
pub(super) enum Failure {
    Status { status: u16, code: Option<String> },
    Transport(String),
    Other(String),
}

/// Classifies an `object_store` error: its HTTP status and S3 error code, found in the error
/// chain's messages (the retry error type that holds them is not public), or the transport
/// failure at the bottom of the chain.
pub(super) fn classify(e: &object_store::Error) -> Failure {
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
pub(super) fn error_code(text: &str) -> Option<String> {
    let start = text.find("<Code>")? + 6;
    let len = text[start..].find("</Code>")?;
    let code = &text[start..start + len];
    (!code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| code.to_string())
}

pub(super) fn map_error(
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

/// The most of an error answer's body read, for its S3 error code: a URL from a package is
/// untrusted, and its server may answer with an endless body.
const MAX_ERROR_BODY: usize = 64 << 10;

/// The start of an error answer's body (at most [`MAX_ERROR_BODY`] bytes), as text; the rest is
/// never read: dropping the response closes the connection.
pub(super) async fn error_body(response: reqwest::Response) -> String {
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

pub(super) fn retryable(status: u16) -> bool {
    status >= 500 || status == 429 || status == 408
}

/// The innermost cause of a reqwest error, which is where the useful words are; never the URL.
pub(super) fn reqwest_reason(e: &reqwest::Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes() {
        assert_eq!(
            error_code("<Error><Code>SignatureDoesNotMatch</Code><Message>..."),
            Some("SignatureDoesNotMatch".to_string())
        );
        assert_eq!(error_code("<Code>a b</Code>"), None);
    }
}
