//! Where the Outscale API is and as whom to call it, in the conventions of Outscale's own tools
//! (the `outscale_api` SDK's `ProfileBuilder::from_standard_configuration`, oapi-cli, the
//! Terraform provider): the `OSC_*` variables and the profiles of `~/.osc/config.json`.
//!
//! The S3 side (`crate::export::s3::Config`) reads the same `OSC_ACCESS_KEY`/`OSC_SECRET_KEY`
//! pair, but keeps the keys private to its module and knows no profiles; this module gives the
//! API client the keys it signs with.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::client::{Endpoint, Error, Result};

/// The most of a configuration file read: a profile file is a few hundred bytes.
const MAX_CONFIG: u64 = 1 << 20;

/// An access key and its secret key. `Debug` shows neither.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub(super) access_key: String,
    pub(super) secret_key: String,
}

impl Credentials {
    /// Credentials given directly.
    pub fn new(access_key: &str, secret_key: &str) -> Self {
        Credentials {
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
        }
    }

    /// The strings that must never appear in a message (both keys: the access key identifies
    /// the account, and is kept out as the S3 side does).
    pub(super) fn secrets(&self) -> Vec<String> {
        let mut s = vec![self.access_key.clone(), self.secret_key.clone()];
        // A 1-3 character "secret" (a test's) would blank out ordinary words.
        s.retain(|s| s.len() >= 4);
        s
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &"[redacted]")
            .field("secret_key", &"[redacted]")
            .finish()
    }
}

/// One profile of `~/.osc/config.json`: the fields Outscale's SDK reads that matter here
/// (others, such as `x509_client_cert`, are ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Profile {
    access_key: Option<String>,
    secret_key: Option<String>,
    region: Option<String>,
    protocol: Option<String>,
    endpoints: ProfileEndpoints,
}

/// A profile's `endpoints` object; only `api` is used.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ProfileEndpoints {
    api: Option<String>,
}

/// What the command line says, each `None` when not given.
#[derive(Debug, Clone, Default)]
pub struct Overrides<'a> {
    /// `--profile`: a profile of the configuration file (else `OSC_PROFILE`, else `default`).
    pub profile: Option<&'a str>,
    /// `--region`.
    pub region: Option<&'a str>,
    /// `--api-endpoint`: the API's base URL (`https://api.eu-west-2.outscale.com/api/v1`).
    pub api_endpoint: Option<&'a str>,
}

/// The endpoint and credentials from the process environment and `~/.osc/config.json`; see
/// [`resolve`].
pub fn from_env(overrides: &Overrides<'_>) -> Result<(Endpoint, Credentials)> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    resolve(|n| std::env::var(n).ok(), home.as_deref(), overrides)
}

/// The endpoint and credentials, from the command line, the variables `var` looks up and the
/// configuration file, as Outscale's SDK resolves them:
/// - the file: `OSC_CONFIG_FILE`, else `HOME/.osc/config.json` if it exists (a JSON object of
///   profiles); the profile: `--profile`, else `OSC_PROFILE`, else `default`. A profile asked
///   for by name (option or variable) must exist; `default` may be missing;
/// - credentials: `OSC_ACCESS_KEY` and `OSC_SECRET_KEY` (both or neither; empty counts as
///   unset), else the profile's `access_key` and `secret_key` (the pair is taken whole from one
///   place, never a key from each);
/// - region: `--region`, else `OSC_REGION`, else the profile's, else the `R` of an endpoint
///   `https://api.R.outscale.com/…`;
/// - endpoint: `--api-endpoint`, else `OSC_ENDPOINT_API`, else the profile's `endpoints.api`,
///   else `PROTOCOL://api.REGION.outscale.com/api/v1` with `OSC_PROTOCOL`, the profile's
///   `protocol` or `https` (the SDK's `EndpointBuilder::build`).
pub fn resolve(
    var: impl Fn(&str) -> Option<String>,
    home: Option<&Path>,
    overrides: &Overrides<'_>,
) -> Result<(Endpoint, Credentials)> {
    let var = |name: &str| var(name).filter(|v| !v.is_empty());
    let named = overrides
        .profile
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .or_else(|| var("OSC_PROFILE"));
    let file = match var("OSC_CONFIG_FILE") {
        Some(f) => Some(PathBuf::from(f)),
        None => home
            .map(|h| h.join(".osc/config.json"))
            .filter(|p| p.exists()),
    };
    let profile = match (&file, &named) {
        (Some(path), name) => {
            load_profile(path, name.as_deref().unwrap_or("default"), name.is_some())?
        }
        (None, Some(name)) => {
            return Err(Error::Config {
                path: home.map_or_else(
                    || PathBuf::from("~/.osc/config.json"),
                    |h| h.join(".osc/config.json"),
                ),
                reason: format!("no configuration file, so no profile {name:?}"),
            });
        }
        (None, None) => Profile::default(),
    };
    let keys = match (var("OSC_ACCESS_KEY"), var("OSC_SECRET_KEY")) {
        (Some(k), Some(s)) => Credentials::new(&k, &s),
        (Some(_), None) => {
            return Err(Error::PartialCredentials {
                set: "OSC_ACCESS_KEY",
                missing: "OSC_SECRET_KEY",
            });
        }
        (None, Some(_)) => {
            return Err(Error::PartialCredentials {
                set: "OSC_SECRET_KEY",
                missing: "OSC_ACCESS_KEY",
            });
        }
        (None, None) => {
            let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
            match (nonempty(&profile.access_key), nonempty(&profile.secret_key)) {
                (Some(k), Some(s)) => Credentials::new(&k, &s),
                (None, None) => return Err(Error::NoCredentials),
                _ => {
                    return Err(Error::Config {
                        path: file.unwrap_or_default(),
                        reason: "the profile has only one of access_key and secret_key".to_string(),
                    });
                }
            }
        }
    };
    let api = overrides
        .api_endpoint
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .or_else(|| var("OSC_ENDPOINT_API"))
        .or_else(|| profile.endpoints.api.clone().filter(|e| !e.is_empty()));
    let region = overrides
        .region
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .or_else(|| var("OSC_REGION"))
        .or_else(|| profile.region.clone().filter(|r| !r.is_empty()))
        .or_else(|| api.as_deref().and_then(region_of));
    let Some(region) = region else {
        return Err(Error::NoRegion);
    };
    let api = match api {
        Some(api) => api,
        None => {
            let protocol = var("OSC_PROTOCOL")
                .or(profile.protocol.clone())
                .unwrap_or_else(|| "https".to_string());
            format!("{protocol}://api.{region}.outscale.com/api/v1")
        }
    };
    Ok((Endpoint::new(&api, &region)?, keys))
}

/// Object storage for a publish or a pull: the same keys as the API's unless S3 variables
/// (`AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, maybe `AWS_SESSION_TOKEN`) are set, as the
/// issue asks. Without `endpoint`, Outscale's OOS of the API's region
/// (`https://oos.REGION.outscale.com`) in that region, whoever's keys: the bucket is where the
/// API's import reads, never AWS S3 because AWS variables happen to be set. With `endpoint`,
/// the region is `region`, else the S3 variables' (`AWS_REGION`, `AWS_DEFAULT_REGION`) when they
/// give the keys, else the API's. `var` looks up variables (the process environment in the
/// command).
pub fn s3_config(
    var: impl Fn(&str) -> Option<String>,
    api: &Credentials,
    api_region: &str,
    endpoint: Option<&str>,
    region: Option<&str>,
) -> crate::export::s3::Result<crate::export::s3::Config> {
    let aws = var("AWS_ACCESS_KEY_ID").is_some_and(|v| !v.is_empty());
    let endpoint = endpoint.filter(|e| !e.is_empty());
    let given = region.filter(|r| !r.is_empty()).map(str::to_string);
    let region = match endpoint {
        None => given.unwrap_or_else(|| api_region.to_string()),
        Some(_) => given
            .or_else(|| {
                aws.then(|| {
                    ["AWS_REGION", "AWS_DEFAULT_REGION"]
                        .iter()
                        .find_map(|n| var(n).filter(|v| !v.is_empty()))
                })
                .flatten()
            })
            .unwrap_or_else(|| api_region.to_string()),
    };
    let oos = format!("https://oos.{region}.outscale.com");
    crate::export::s3::Config::from_vars(
        |name| match name {
            // With S3 variables, the OSC_ pair (the API's keys) must not win over them.
            "OSC_ACCESS_KEY" if aws => None,
            "OSC_SECRET_KEY" if aws => None,
            "OSC_ACCESS_KEY" => Some(api.access_key.clone()),
            "OSC_SECRET_KEY" => Some(api.secret_key.clone()),
            other => var(other),
        },
        Some(endpoint.unwrap_or(&oos)),
        Some(&region),
    )
}

/// The profile `name` of the configuration file `path`; a missing `default` profile is an
/// empty one unless it was asked for by name.
fn load_profile(path: &Path, name: &str, asked: bool) -> Result<Profile> {
    use std::io::Read;
    let bad = |reason: String| Error::Config {
        path: path.to_path_buf(),
        reason,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG + 1).read_to_string(&mut text))
        .map_err(|e| bad(e.to_string()))?;
    if text.len() as u64 > MAX_CONFIG {
        return Err(bad(format!("larger than {MAX_CONFIG} bytes")));
    }
    // serde_json's messages name a line and column, never the text around them: no key leaks.
    let mut profiles: HashMap<String, Profile> =
        serde_json::from_str(&text).map_err(|e| bad(format!("not a profile file: {e}")))?;
    match profiles.remove(name) {
        Some(p) => Ok(p),
        None if !asked => Ok(Profile::default()),
        None => Err(bad(format!("no profile {name:?}"))),
    }
}

/// The region of an Outscale API endpoint `http(s)://api.REGION.outscale.com[/…]`.
fn region_of(api: &str) -> Option<String> {
    let host = api.split_once("://")?.1.split(['/', ':']).next()?;
    let region = host.strip_prefix("api.")?.strip_suffix(".outscale.com")?;
    (!region.is_empty() && !region.contains('.')).then(|| region.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const PROFILES: &str = r#"{
        "default": {"access_key": "AKDEFAULT", "secret_key": "sk-default-secret", "region": "eu-west-2"},
        "cloudgouv": {"access_key": "AKGOUV", "secret_key": "sk-gouv-secret", "region": "cloudgouv-eu-west-1",
                      "endpoints": {"api": "http://127.0.0.1:8443/api/v1", "oos": "http://x"}, "x509_client_cert": "c"},
        "half": {"access_key": "AKHALF"}
    }"#;

    fn home() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".osc")).unwrap();
        std::fs::write(dir.path().join(".osc/config.json"), PROFILES).unwrap();
        dir
    }

    #[test]
    fn environment_first() {
        let h = home();
        let (e, c) = resolve(
            vars(&[
                ("OSC_ACCESS_KEY", "AKENV"),
                ("OSC_SECRET_KEY", "sk-env-secret"),
                ("OSC_REGION", "us-east-2"),
            ]),
            Some(h.path()),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c, Credentials::new("AKENV", "sk-env-secret"));
        assert_eq!(
            e.api_url.as_str(),
            "https://api.us-east-2.outscale.com/api/v1"
        );
        assert_eq!(e.region.as_str(), "us-east-2");
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("AKENV") && !debug.contains("sk-env"),
            "{debug}"
        );

        // The command line beats the variables; the profile's keys lose to the variables'.
        let (e, c) = resolve(
            vars(&[
                ("OSC_ACCESS_KEY", "AKENV"),
                ("OSC_SECRET_KEY", "sk-env-secret"),
            ]),
            Some(h.path()),
            &Overrides {
                profile: Some("cloudgouv"),
                region: Some("ap-northeast-1"),
                api_endpoint: None,
            },
        )
        .unwrap();
        assert_eq!(c.access_key, "AKENV");
        assert_eq!(
            (e.api_url.as_str(), e.region.as_str()),
            ("http://127.0.0.1:8443/api/v1", "ap-northeast-1")
        );
    }

    #[test]
    fn profiles() {
        let h = home();
        let (e, c) = resolve(vars(&[]), Some(h.path()), &Overrides::default()).unwrap();
        assert_eq!(c, Credentials::new("AKDEFAULT", "sk-default-secret"));
        assert_eq!(
            e.api_url.as_str(),
            "https://api.eu-west-2.outscale.com/api/v1"
        );
        let (e, c) = resolve(
            vars(&[("OSC_PROFILE", "cloudgouv")]),
            Some(h.path()),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.access_key, "AKGOUV");
        assert_eq!(
            (e.api_url.as_str(), e.region.as_str()),
            ("http://127.0.0.1:8443/api/v1", "cloudgouv-eu-west-1")
        );
        let e = resolve(
            vars(&[]),
            Some(h.path()),
            &Overrides {
                profile: Some("nope"),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(e, Error::Config { .. }) && e.to_string().contains("no profile \"nope\""),
            "{e}"
        );
        let e = resolve(
            vars(&[]),
            Some(h.path()),
            &Overrides {
                profile: Some("half"),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{e}");
        // No file: a named profile is an error, no profile at all is "no credentials".
        let empty = tempfile::tempdir().unwrap();
        let e = resolve(
            vars(&[]),
            Some(empty.path()),
            &Overrides {
                profile: Some("x"),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{e}");
        let e = resolve(vars(&[]), Some(empty.path()), &Overrides::default()).unwrap_err();
        assert!(
            matches!(e, Error::NoCredentials) && e.to_string().contains("OSC_ACCESS_KEY"),
            "{e}"
        );
        // A broken file names itself, not its content.
        std::fs::write(
            h.path().join(".osc/config.json"),
            "{\"default\": {\"secret_key\": \"sk-broken-secret\"",
        )
        .unwrap();
        let e = resolve(vars(&[]), Some(h.path()), &Overrides::default()).unwrap_err();
        assert!(!e.to_string().contains("sk-broken"), "{e}");
    }

    #[test]
    fn regions_and_endpoints() {
        let keys = [
            ("OSC_ACCESS_KEY", "AKENV"),
            ("OSC_SECRET_KEY", "sk-env-secret"),
        ];
        let e = resolve(vars(&keys), None, &Overrides::default()).unwrap_err();
        assert!(matches!(e, Error::NoRegion), "{e}");
        let (e, _) = resolve(
            vars(&keys),
            None,
            &Overrides {
                api_endpoint: Some("https://api.us-west-1.outscale.com/api/v1/"),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            (e.api_url.as_str(), e.region.as_str()),
            ("https://api.us-west-1.outscale.com/api/v1", "us-west-1")
        );
        let mut with_protocol = keys.to_vec();
        with_protocol.extend([("OSC_PROTOCOL", "http"), ("OSC_REGION", "eu-west-2")]);
        // Plain HTTP only to this machine: a remote http:// endpoint is refused.
        let e = resolve(vars(&with_protocol), None, &Overrides::default()).unwrap_err();
        assert!(matches!(e, Error::Setting(_)), "{e}");
        let e = resolve(
            vars(&keys),
            None,
            &Overrides {
                region: Some("EU west"),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, Error::Setting(_)), "{e}");
        let e = resolve(
            vars(&[("OSC_SECRET_KEY", "s")]),
            None,
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "incomplete Outscale API credentials: OSC_SECRET_KEY is set but OSC_ACCESS_KEY is not"
        );
        assert_eq!(
            region_of("https://api.eu-west-2.outscale.com"),
            Some("eu-west-2".into())
        );
        assert_eq!(region_of("http://127.0.0.1:9/api/v1"), None);
    }

    /// The bucket's keys: the API's, unless the S3 variables give others (with their region);
    /// OOS of the API's region by default.
    #[test]
    fn bucket_keys_follow_the_api_unless_s3_variables_are_set() {
        let api = Credentials::new("AKAPI", "sk-api-secret");
        let c = s3_config(vars(&[]), &api, "eu-west-2", None, None).unwrap();
        assert_eq!(c.region, "eu-west-2");
        assert_eq!(
            c.endpoint.as_deref(),
            Some("https://oos.eu-west-2.outscale.com")
        );
        assert_eq!(
            c.credentials,
            crate::export::s3::Credentials::new("AKAPI", "sk-api-secret", None)
        );
        let c = s3_config(
            vars(&[
                ("OSC_ACCESS_KEY", "AKAPI"),
                ("OSC_SECRET_KEY", "sk-api-secret"),
                ("AWS_ACCESS_KEY_ID", "AKS3"),
                ("AWS_SECRET_ACCESS_KEY", "sk-s3-secret"),
                ("AWS_REGION", "us-east-1"),
            ]),
            &api,
            "eu-west-2",
            Some("http://127.0.0.1:9000"),
            None,
        )
        .unwrap();
        assert_eq!(
            c.credentials,
            crate::export::s3::Credentials::new("AKS3", "sk-s3-secret", None)
        );
        assert_eq!(c.region, "us-east-1");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        let c = s3_config(vars(&[]), &api, "eu-west-2", None, Some("us-west-1")).unwrap();
        assert_eq!(c.region, "us-west-1");
        // AWS variables without an endpoint: still Outscale's OOS, in the API's region.
        let c = s3_config(
            vars(&[
                ("AWS_ACCESS_KEY_ID", "AKS3"),
                ("AWS_SECRET_ACCESS_KEY", "sk-s3-secret"),
                ("AWS_REGION", "us-east-1"),
            ]),
            &api,
            "eu-west-2",
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            c.endpoint.as_deref(),
            Some("https://oos.eu-west-2.outscale.com")
        );
        assert_eq!(c.region, "eu-west-2");
    }
}
