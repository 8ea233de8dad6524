//! Multipart uploads left open on the server: listing them (ListMultipartUploads) and aborting
//! them, by ID or from a resume state file.

use std::path::Path;
use std::time::Duration;

use object_store::multipart::MultipartStore;
use reqwest::StatusCode;
use serde::Serialize;

use super::client::{Client, REQUEST_TIMEOUT};
use super::failure::{Failure, classify, error_code};
use super::http::{error_body, observe, reqwest_reason, retryable};
use super::location::object_path;
use super::resume::{State, remove_state};
use super::url::URL_TRIES;
use super::{Error, Result};

/// A multipart upload in progress on the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct OpenUpload {
    /// The object key.
    pub key: String,
    /// The upload ID.
    pub upload_id: String,
}

impl Client {
    /// Aborts the multipart upload recorded in the resume state file `file` and removes the
    /// file; `false` when there is no such file.
    pub fn abort_resumable(&self, file: &Path) -> Result<bool> {
        let Some(state) = State::load(file, Some(&self.bucket), None)? else {
            return Ok(false);
        };
        let path = object_path(&state.key)?;
        match self.runtime.block_on(observe(
            self.store
                .abort_multipart(&path, &state.upload_id.to_string()),
        )) {
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
        match self.runtime.block_on(observe(
            self.store.abort_multipart(&path, &upload_id.to_string()),
        )) {
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
                        Ok(r) if r.status() == StatusCode::NOT_IMPLEMENTED => return Ok(None),
                        Ok(r) => {
                            let status = r.status();
                            let code = error_code(&error_body(r).await);
                            if status == StatusCode::FORBIDDEN
                                && code.as_deref() == Some("AccessDenied")
                            {
                                return Ok(None);
                            }
                            let e = Error::Http {
                                bucket: self.bucket.clone(),
                                key: prefix.to_string(),
                                op: OP.to_string(),
                                status: status.as_u16(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
