//! Where and as whom to connect (from the environment), and the redaction of anything secret
//! from the texts that come back from the HTTP library.

use std::fmt;

use super::{Error, Result};

/// An access key, its secret and maybe a session token. `Debug` shows none of them.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub(super) access_key_id: String,
    pub(super) secret_access_key: String,
    pub(super) session_token: Option<String>,
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
    pub(super) fn secrets(&self) -> Vec<String> {
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
    /// - credentials: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and maybe
    ///   `AWS_SESSION_TOKEN`, or else `OSC_ACCESS_KEY` and `OSC_SECRET_KEY` (empty values count
    ///   as unset);
    /// - region: `region`, else `OSC_REGION`, `AWS_REGION`, `AWS_DEFAULT_REGION`;
    /// - endpoint: `endpoint`; without one, Outscale's OOS of the region
    ///   (`https://oos.REGION.outscale.com`) when the `OSC_` pair is set, else AWS S3.
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
        // AWS_* first, as `publish` does for its bucket (`publish::credentials`): a CI job
        // holding both pairs in its environment (the API's and a bucket-only key) gives the
        // bucket its own key. The OSC_* pair still means Outscale: the endpoint stays OOS.
        // Half a pair is an error only when no whole pair is there to use.
        let osc = pair("OSC_ACCESS_KEY", "OSC_SECRET_KEY");
        let aws = pair("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY");
        let outscale = matches!(osc, Ok(Some(_)));
        let credentials = match (aws, osc) {
            (Ok(Some((k, s))), _) => {
                let token = var("AWS_SESSION_TOKEN");
                Credentials::new(&k, &s, token.as_deref())
            }
            (_, Ok(Some((k, s)))) => Credentials::new(&k, &s, None),
            (Err(e), _) | (_, Err(e)) => return Err(e),
            (Ok(None), Ok(None)) => return Err(Error::NoCredentials),
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

/// Removes anything secret from a text that came from the HTTP library: the credentials
/// themselves and the values of SigV4 query parameters and XML error fields.
#[derive(Debug)]
pub(crate) struct Scrubber(pub(crate) Vec<String>);

impl Scrubber {
    /// `text` on one line with the secrets and SigV4 values redacted, cut to 300 bytes.
    pub(crate) fn scrub(&self, text: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

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
        // A whole OSC_* pair beside half an AWS_* one: the whole pair is used.
        let c = Config::from_vars(
            vars(&[
                ("OSC_ACCESS_KEY", "AKOSC"),
                ("OSC_SECRET_KEY", "api-secret"),
                ("AWS_ACCESS_KEY_ID", "AKLEFTOVER"),
                ("OSC_REGION", "eu-west-2"),
            ]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(c.credentials.secrets(), ["AKOSC", "api-secret"]);
        // Both pairs: the bucket's own AWS_* key, and OOS because the OSC_* pair is there.
        let c = Config::from_vars(
            vars(&[
                ("OSC_ACCESS_KEY", "AKOSC"),
                ("OSC_SECRET_KEY", "api-secret"),
                ("AWS_ACCESS_KEY_ID", "AKBUCKET"),
                ("AWS_SECRET_ACCESS_KEY", "bucket-secret"),
                ("OSC_REGION", "eu-west-2"),
            ]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(c.credentials.secrets(), ["AKBUCKET", "bucket-secret"]);
        assert_eq!(
            c.endpoint.as_deref(),
            Some("https://oos.eu-west-2.outscale.com")
        );
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
    }
}
