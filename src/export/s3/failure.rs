//! What a failed request amounts to: its HTTP status and S3 error code, or the transport
//! failure, turned into this module's one-line [`Error`]s.

use object_store::client::HttpError;

use super::Error;
use super::credentials::Scrubber;
use super::http::Answer;

/// An `object_store` error and the last HTTP answer of the operation that failed (see
/// [`observe`](super::http::observe)).
#[derive(Debug)]
pub(super) struct StoreError {
    /// What `object_store` says.
    pub(super) error: object_store::Error,
    /// The last answer, `None` when there was none (or it is not known: errors of a body being
    /// streamed).
    pub(super) answer: Option<Answer>,
}

impl From<object_store::Error> for StoreError {
    fn from(error: object_store::Error) -> Self {
        StoreError {
            error,
            answer: None,
        }
    }
}

/// What an `object_store` error amounts to.
pub(super) enum Failure {
    Status { status: u16, code: Option<String> },
    Transport(String),
    Other(String),
}

/// Classifies a failed operation, by type: a transport failure ([`HttpError`] in the error's
/// chain, with its kind), else the status and S3 error code of the last answer when it was an
/// error, else — for an error answer with status 2xx, S3's way of failing a request after its
/// headers — that status and the code `object_store` quotes from the body, else the status of
/// `object_store`'s typed variants (an operation run outside `observe`).
pub(super) fn classify(e: &StoreError) -> Failure {
    let mut messages = Vec::new();
    let mut transport = None;
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&e.error);
    let mut innermost = String::new();
    while let Some(err) = current {
        let text = err.to_string();
        if let Some(h) = err.downcast_ref::<HttpError>() {
            transport.get_or_insert(h.kind());
        }
        innermost = text.clone();
        messages.push(text);
        current = err.source();
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
    match &e.answer {
        Some(Answer { status, code }) if !status.is_success() => {
            return Failure::Status {
                status: status.as_u16(),
                code: code.clone(),
            };
        }
        Some(Answer { status, .. }) => {
            if let Some(code) = messages.iter().find_map(|m| error_code(m)) {
                return Failure::Status {
                    status: status.as_u16(),
                    code: Some(code),
                };
            }
        }
        None => {}
    }
    let status = match e.error {
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

/// The one-line error of a failed operation `op` on `key`.
pub(super) fn map_error(
    scrubber: &Scrubber,
    bucket: &str,
    key: &str,
    op: &str,
    e: &StoreError,
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
