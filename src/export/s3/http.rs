//! The HTTP layer under `object_store` and the URL reader: the last answer of each operation,
//! with its status as a type, and error bodies read only up to [`MAX_ERROR_BODY`] bytes.
//!
//! `object_store` keeps a failed answer's status in an error type of a private module, and
//! shows it only in its message. [`Connector`] wraps its reqwest client instead: each answer's
//! status (and the S3 error code of an error body) is recorded for the operation running in
//! the task, which [`observe`] returns with the error.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::stream::{Stream, StreamExt};
use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use reqwest::StatusCode;

use super::failure::{StoreError, error_code};

/// The most of an error answer's body read, for its S3 error code: a URL from a package is
/// untrusted, and any server may answer with an endless body.
pub(super) const MAX_ERROR_BODY: usize = 64 << 10;

/// The last HTTP answer of one operation (see [`observe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Answer {
    /// Its status.
    pub(super) status: StatusCode,
    /// S3's error code, from the body of a 4xx or 5xx answer.
    pub(super) code: Option<String>,
}

tokio::task_local! {
    /// The last answer of the operation [`observe`] runs in this task.
    static LAST: RefCell<Option<Answer>>;
}

/// Runs one `object_store` operation, keeping the last HTTP answer it got (the one its error,
/// if any, is about: a retry that got no answer clears nothing, but its error is then a
/// transport error, which [`super::failure::classify`] looks for first).
pub(super) async fn observe<T>(
    operation: impl Future<Output = object_store::Result<T>>,
) -> Result<T, StoreError> {
    LAST.scope(RefCell::new(None), async move {
        operation.await.map_err(|error| StoreError {
            error,
            answer: LAST.with(|last| last.borrow_mut().take()),
        })
    })
    .await
}

/// Makes `object_store`'s HTTP clients: its own reqwest client, wrapped in [`Observed`].
#[derive(Debug, Default)]
pub(super) struct Connector;

impl HttpConnector for Connector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(Observed(inner)))
    }
}

/// An HTTP client that records each answer for [`observe`] and cuts error bodies to
/// [`MAX_ERROR_BODY`] bytes before `object_store` reads them whole.
#[derive(Debug)]
struct Observed(HttpClient);

impl HttpService for Observed {
    // `HttpService` is an `async_trait`: this is the signature the macro would write.
    fn call<'life0, 'async_trait>(
        &'life0 self,
        request: HttpRequest,
    ) -> Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let response = self.0.execute(request).await?;
            let status = response.status();
            let (answer, response) = if status.as_u16() >= 400 {
                let (parts, body) = response.into_parts();
                let (body, broken) = read_capped(body.bytes_stream()).await;
                if let Some(e) = broken {
                    return Err(e);
                }
                let code = error_code(&String::from_utf8_lossy(&body));
                let response = HttpResponse::from_parts(parts, Bytes::from(body).into());
                (Some(Answer { status, code }), response)
            } else if status.is_redirection()
                && !response.headers().contains_key(reqwest::header::LOCATION)
            {
                // object_store's "bare redirect", an error with no status.
                (None, response)
            } else {
                (Some(Answer { status, code: None }), response)
            };
            // Outside `observe` (nothing to record for), `try_with` fails: no matter.
            let _ = LAST.try_with(|last| *last.borrow_mut() = answer);
            Ok(response)
        })
    }
}

/// The start of a body, at most [`MAX_ERROR_BODY`] bytes, and the error that broke it before
/// then, if any; the rest is never read: dropping the stream closes the connection. A cut in the
/// middle of a UTF-8 character leaves the character out, so that a text body stays text.
async fn read_capped<E>(
    mut stream: impl Stream<Item = Result<Bytes, E>> + Unpin,
) -> (Vec<u8>, Option<E>) {
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY {
        match stream.next().await {
            Some(Ok(chunk)) => {
                let room = MAX_ERROR_BODY - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Some(Err(e)) => return (body, Some(e)),
            None => return (body, None),
        }
    }
    if let Err(e) = std::str::from_utf8(&body)
        && e.error_len().is_none()
    {
        body.truncate(e.valid_up_to());
    }
    (body, None)
}

/// The start of an error answer's body (at most [`MAX_ERROR_BODY`] bytes), as text; a body
/// that breaks gives what came before.
pub(super) async fn error_body(response: reqwest::Response) -> String {
    let (body, _) = read_capped(response.bytes_stream()).await;
    String::from_utf8_lossy(&body).into_owned()
}

/// Whether an HTTP status is worth trying again: 5xx (and above), 429 Too Many Requests, 408
/// Request Timeout (as `object_store` does).
pub(super) fn retryable(status: StatusCode) -> bool {
    status.as_u16() >= 500
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// The innermost cause of a reqwest error, which is where the useful words are; never the URL.
pub(crate) fn reqwest_reason(e: &reqwest::Error) -> String {
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
        Some(cause) => format!(
            "{what} ({})",
            super::credentials::Scrubber(Vec::new()).scrub(&cause)
        ),
        None => what.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_bodies() {
        let run = |chunks: Vec<Result<Bytes, ()>>| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(read_capped(futures_util::stream::iter(chunks)))
        };
        let (body, broken) = run(vec![Ok(Bytes::from_static(b"<Code>A</Code>")), Err(())]);
        assert_eq!(
            (body.as_slice(), broken),
            (&b"<Code>A</Code>"[..], Some(()))
        );
        // 'é' is 2 bytes: the one across the cap is left out whole.
        let text = format!("x{}", "é".repeat(MAX_ERROR_BODY));
        let (body, broken) = run(vec![Ok(Bytes::from(text)), Ok(Bytes::from_static(b"more"))]);
        assert_eq!((body.len(), broken), (MAX_ERROR_BODY - 1, None));
        assert!(std::str::from_utf8(&body).is_ok());
    }
}
