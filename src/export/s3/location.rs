//! `s3://BUCKET/KEY` locations, and the bucket and key rules every request is checked against.

use std::fmt;
use std::str::FromStr;

use object_store::path::Path as ObjectPath;

use super::{Error, Result};

/// An `s3://BUCKET/KEY` location; the key may be a prefix, or empty for the whole bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The bucket name: 3 to 63 lower-case letters, digits, dots and hyphens.
    pub bucket: String,
    /// The object key or prefix, without a leading or trailing `/`; may be empty.
    pub key: String,
}

impl Location {
    /// Parses `s3://bucket`, `s3://bucket/` or `s3://bucket/key/or/prefix[/]`.
    pub fn parse(input: &str) -> Result<Location> {
        let bad = |reason| Error::Location {
            input: input.to_string(),
            reason,
        };
        let rest = input
            .strip_prefix("s3://")
            .ok_or_else(|| bad("it must start with s3://"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket name"));
        }
        check_bucket(bucket).map_err(bad)?;
        let key = key.strip_suffix('/').unwrap_or(key);
        if !key.is_empty() {
            check_key(key).map_err(bad)?;
        }
        Ok(Location {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }

    /// The key of `name` under this location's prefix (`name` itself when the prefix is empty).
    pub fn join(&self, name: &str) -> String {
        if self.key.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.key)
        }
    }
}

impl FromStr for Location {
    type Err = Error;
    fn from_str(s: &str) -> Result<Location> {
        Location::parse(s)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// S3's bucket naming rules (the common subset of AWS's and Outscale's).
pub(super) fn check_bucket(bucket: &str) -> Result<(), &'static str> {
    if !(3..=63).contains(&bucket.len()) {
        return Err("a bucket name has 3 to 63 characters");
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err("a bucket name has only lower-case letters, digits, dots and hyphens");
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bucket.as_bytes()[0]) || !alnum(bucket.as_bytes()[bucket.len() - 1]) {
        return Err("a bucket name starts and ends with a letter or a digit");
    }
    if bucket.contains("..") {
        return Err("a bucket name has no two dots in a row");
    }
    Ok(())
}

/// Object keys are limited to S3's "safe characters" — letters, digits and `! - _ . * ' ( )` —
/// in `/`-separated segments, none empty, `.` or `..`; at most 1024 bytes.
pub(super) fn check_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("an object key is not empty");
    }
    if key.len() > 1024 {
        return Err("an object key has at most 1024 bytes");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!-_.*'()/".contains(&b))
    {
        return Err("an object key has only letters, digits, / and ! - _ . * ' ( )");
    }
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err("an object key has no empty, . or .. segment between slashes");
    }
    Ok(())
}

pub(super) fn object_path(key: &str) -> Result<ObjectPath> {
    check_key(key).map_err(|reason| Error::Key {
        key: key.to_string(),
        reason,
    })?;
    ObjectPath::parse(key).map_err(|_| Error::Key {
        key: key.to_string(),
        reason: "not a valid object path",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let l = Location::parse("s3://my-bucket/images/debian/").unwrap();
        assert_eq!(
            (l.bucket.as_str(), l.key.as_str()),
            ("my-bucket", "images/debian")
        );
        assert_eq!(l.join("disk.qcow2.gz"), "images/debian/disk.qcow2.gz");
        assert_eq!(l.to_string(), "s3://my-bucket/images/debian");
        let l: Location = "s3://b.1-x".parse().unwrap();
        assert_eq!((l.bucket.as_str(), l.key.as_str()), ("b.1-x", ""));
        assert_eq!(l.join("m.json"), "m.json");
        for bad in [
            "my-bucket/x",
            "s3://",
            "s3:///key",
            "s3://ab/x",
            "s3://My-Bucket/x",
            "s3://bucket_1/x",
            "s3://-bucket/x",
            "s3://a..b/x",
            "s3://bucket//x",
            "s3://bucket/a/../b",
            "s3://bucket/a b",
            "s3://bucket/a%20b",
            "s3://bucket/a\\b",
        ] {
            let e = Location::parse(bad).unwrap_err();
            assert!(matches!(e, Error::Location { .. }), "{bad}: {e}");
        }
    }
}
