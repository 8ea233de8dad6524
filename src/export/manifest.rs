//! Outscale's export manifest: the JSON document an OMI export writes next to its disk objects,
//! whose pre-signed URL is the `FileLocation` of CreateImage (see `outscale.md`, "The export
//! manifest"). mkomi writes it and reads it back, treating a read one as hostile.

use crate::manifest::rules;
use serde::{Deserialize, Serialize};

/// `Version` of every export manifest so far.
pub const VERSION: u32 = 1;
/// Largest manifest read: a 40-mapping manifest with long URLs is a few tens of KiB.
pub const MAX_BYTES: u64 = 1 << 20;
/// Most snapshots: Outscale's limit on block device mappings.
const MAX_SNAPSHOTS: usize = 40;
/// Largest `Size` accepted: 14,901 GiB, Outscale's largest volume.
pub const MAX_SIZE: u64 = 14_901 << 30;
/// The longest a pre-signed URL may stay valid: 7 days, the platform's and SigV4's limit.
pub const MAX_EXPIRY_SECS: u64 = 7 * 24 * 3600;

/// The whole document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExportManifest {
    /// Always [`VERSION`].
    pub version: u32,
    /// The image.
    pub image: ExportImage,
}

/// The image of an export manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExportImage {
    /// `ImageName`.
    pub name: String,
    /// `Description`; left out when there is none, as in Outscale's manifests (never `null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `x86_64` or `i386`.
    pub architecture: String,
    /// Always `machine`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// Product codes; `0001` (Linux) when none is known.
    pub product_types: Vec<String>,
    /// Whether the image is public: an export is never.
    pub public: bool,
    /// One per block device mapping, root first.
    pub snapshots: Vec<Snapshot>,
}

/// One disk object of an export.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Snapshot {
    /// `DeleteOnVmDeletion` of the mapping.
    pub delete_on_termination: bool,
    /// The device name (`/dev/sda1`, `/dev/sdb`…).
    pub device: String,
    /// The object's file name: `sda1.qcow2.gz`.
    pub filename: String,
    /// `Iops` (io1), else null.
    pub iops: Option<u32>,
    /// A pre-signed GET URL of the object; null in a package written to a directory.
    pub pre_signed_url: Option<String>,
    /// The volume's size in bytes; the disk in the object (a raw image's length, a qcow2
    /// image's virtual size) is at most this.
    pub size: u64,
    /// `standard`, `gp2` or `io1`.
    pub volume_type: String,
}

/// What an object holds, from its file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectFormat {
    /// `.qcow2.gz`.
    Qcow2,
    /// `.raw.gz`.
    Raw,
}

impl Snapshot {
    /// The object's format, from its file name.
    pub fn format(&self) -> Option<ObjectFormat> {
        if self.filename.ends_with(".qcow2.gz") {
            Some(ObjectFormat::Qcow2)
        } else if self.filename.ends_with(".raw.gz") {
            Some(ObjectFormat::Raw)
        } else {
            None
        }
    }
}

impl ExportManifest {
    /// Serialises as written: pretty JSON and a final newline, deterministic.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Parses and checks a manifest read from anywhere; the error is one line.
    ///
    /// Refused: another `Version`, no or too many snapshots, a `Filename` that is not one plain
    /// name ending in `.qcow2.gz` or `.raw.gz`, a device against Outscale's rules or named
    /// twice, a `Size` of 0 or beyond the largest volume, a URL whose scheme is not http(s) or
    /// s3.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() as u64 > MAX_BYTES {
            return Err(format!(
                "{} bytes: larger than any export manifest",
                bytes.len()
            ));
        }
        let doc: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not an export manifest: {e}"))?;
        // Each snapshot is read field by field first, so that a bad value is named by its
        // snapshot and field rather than by serde's line and column.
        if let Some(snaps) = doc.pointer("/Image/Snapshots").and_then(|v| v.as_array()) {
            for (i, s) in snaps.iter().enumerate() {
                check_snapshot_fields(s).map_err(|reason| {
                    let device = s.get("Device").and_then(|d| d.as_str()).unwrap_or("?");
                    format!("Snapshots[{i}] ({device}): {reason}")
                })?;
            }
        }
        let m: ExportManifest =
            serde_json::from_value(doc).map_err(|e| format!("not an export manifest: {e}"))?;
        if m.version != VERSION {
            return Err(format!(
                "Version {}; mkomi reads Version {VERSION}",
                m.version
            ));
        }
        let snaps = &m.image.snapshots;
        if snaps.is_empty() || snaps.len() > MAX_SNAPSHOTS {
            return Err(format!(
                "{} snapshots: an image has 1 to {MAX_SNAPSHOTS}",
                snaps.len()
            ));
        }
        if m.image.architecture != "x86_64" && m.image.architecture != "i386" {
            return Err(format!(
                "Architecture {:?}: x86_64 or i386",
                m.image.architecture
            ));
        }
        for (i, s) in snaps.iter().enumerate() {
            let at = |reason: String| format!("Snapshots[{i}] ({}): {reason}", s.device);
            if !crate::bundle::is_safe_member_name(&s.filename) || s.format().is_none() {
                return Err(at(format!(
                    "Filename {:?} is not a plain file name ending in .qcow2.gz or .raw.gz",
                    s.filename
                )));
            }
            if s.size == 0 || s.size > MAX_SIZE {
                return Err(at(format!(
                    "Size {} is not between 1 and {MAX_SIZE} bytes",
                    s.size
                )));
            }
            let device_ok = if i == 0 {
                rules::root_device(&s.device)
            } else {
                rules::extra_device(&s.device)
            };
            device_ok.map_err(|e| at(e.to_string()))?;
            if s.volume_type
                .parse::<crate::manifest::VolumeType>()
                .is_err()
            {
                return Err(at(format!(
                    "VolumeType {:?}: {}",
                    s.volume_type,
                    crate::manifest::VolumeType::NAMES
                )));
            }
            if let Some(url) = &s.pre_signed_url {
                let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
                if !matches!(scheme.as_deref(), Some("http" | "https" | "s3")) {
                    return Err(at(format!(
                        "PreSignedUrl scheme {:?}: http, https or s3 only",
                        scheme.unwrap_or_default()
                    )));
                }
            }
        }
        rules::mappings(snaps.iter().map(|s| s.device.as_str())).map_err(|e| e.to_string())?;
        Ok(m)
    }
}

/// Checks the type of each field of one snapshot of a manifest: the error names the field.
fn check_snapshot_fields(s: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value;
    let obj = s
        .as_object()
        .ok_or_else(|| format!("{}: not an object", shown(s)))?;
    let field = |name: &str| obj.get(name).unwrap_or(&Value::Null);
    for name in ["Device", "Filename", "VolumeType"] {
        if !field(name).is_string() {
            return Err(format!("{name}: {} is not a string", shown(field(name))));
        }
    }
    if !field("DeleteOnTermination").is_boolean() {
        let v = shown(field("DeleteOnTermination"));
        return Err(format!("DeleteOnTermination: {v} is not true or false"));
    }
    if field("Size").as_u64().is_none() {
        return Err(format!(
            "Size: {} is not a number of bytes",
            shown(field("Size"))
        ));
    }
    let iops = field("Iops");
    if !iops.is_null() && iops.as_u64().is_none_or(|n| u32::try_from(n).is_err()) {
        return Err(format!("Iops: {} is not null or a number", shown(iops)));
    }
    let url = field("PreSignedUrl");
    if !url.is_null() && !url.is_string() {
        return Err(format!("PreSignedUrl: {} is not null or a URL", shown(url)));
    }
    Ok(())
}

/// A JSON value as it appears in a message: short, one line.
fn shown(v: &serde_json::Value) -> String {
    let text = match v {
        serde_json::Value::Null => "missing or null".to_owned(),
        other => other.to_string(),
    };
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// When a SigV4 pre-signed URL expires, in seconds since the epoch: `X-Amz-Date` +
/// `X-Amz-Expires` from its query; `None` when it carries neither (not pre-signed, or another
/// scheme).
pub fn presigned_expiry(url: &str) -> Option<i64> {
    let query = url.split_once('?')?.1;
    let mut date = None;
    let mut expires = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=')?;
        match k {
            "X-Amz-Date" => date = Some(v),
            "X-Amz-Expires" => expires = v.parse::<i64>().ok(),
            _ => {}
        }
    }
    Some(parse_amz_date(date?)? + expires?)
}

/// `20261127T070000Z` as seconds since the epoch.
fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> serde_json::Value {
        serde_json::json!({
            "Version": 1,
            "Image": {
                "Name": "web", "Description": null, "Architecture": "x86_64",
                "Type": "machine", "ProductTypes": ["0001"], "Public": false,
                "Snapshots": [
                    {"DeleteOnTermination": true, "Device": "/dev/sda1",
                     "Filename": "sda1.qcow2.gz", "Iops": null,
                     "PreSignedUrl": "https://oos.eu-west-2.outscale.com/b/sda1.qcow2.gz?X-Amz-Date=20261127T070000Z&X-Amz-Expires=604800",
                     "Size": 10737418240u64, "VolumeType": "standard"},
                    {"DeleteOnTermination": false, "Device": "/dev/sdb",
                     "Filename": "sdb.raw.gz", "Iops": 600, "PreSignedUrl": null,
                     "Size": 1073741824u64, "VolumeType": "io1"}
                ]
            }
        })
    }

    fn parse(v: &serde_json::Value) -> Result<ExportManifest, String> {
        ExportManifest::parse(&serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn round_trip_and_formats() {
        let m = parse(&good()).unwrap();
        assert_eq!(m.image.snapshots[0].format(), Some(ObjectFormat::Qcow2));
        assert_eq!(m.image.snapshots[1].format(), Some(ObjectFormat::Raw));
        assert_eq!(ExportManifest::parse(&m.to_bytes()).unwrap(), m);
    }

    #[test]
    fn hostile_manifests_are_refused() {
        type Edit = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Edit, &str)> = vec![
            (
                "slash",
                Box::new(|v| v["Image"]["Snapshots"][0]["Filename"] = "a/sda1.qcow2.gz".into()),
                "not a plain file name",
            ),
            (
                "dotdot",
                Box::new(|v| v["Image"]["Snapshots"][0]["Filename"] = "..".into()),
                "not a plain file name",
            ),
            (
                "absolute",
                Box::new(|v| v["Image"]["Snapshots"][0]["Filename"] = "/etc/passwd".into()),
                "not a plain file name",
            ),
            (
                "extension",
                Box::new(|v| v["Image"]["Snapshots"][0]["Filename"] = "sda1.vmdk".into()),
                "not a plain file name",
            ),
            (
                "dup",
                Box::new(|v| v["Image"]["Snapshots"][1]["Device"] = "/dev/sda1".into()),
                "/dev/sda1",
            ),
            (
                "scheme",
                Box::new(|v| {
                    v["Image"]["Snapshots"][0]["PreSignedUrl"] = "file:///etc/passwd".into()
                }),
                "scheme \"file\"",
            ),
            (
                "size0",
                Box::new(|v| v["Image"]["Snapshots"][0]["Size"] = 0.into()),
                "Size 0",
            ),
            (
                "version",
                Box::new(|v| v["Version"] = 2.into()),
                "Version 2",
            ),
            (
                "none",
                Box::new(|v| v["Image"]["Snapshots"] = serde_json::json!([])),
                "0 snapshots",
            ),
            (
                "arch",
                Box::new(|v| v["Image"]["Architecture"] = "arm64".into()),
                "Architecture",
            ),
            (
                "type",
                Box::new(|v| v["Image"]["Snapshots"][1]["VolumeType"] = "nvme".into()),
                "VolumeType",
            ),
        ];
        for (name, edit, want) in cases {
            let mut v = good();
            edit(&mut v);
            let e = parse(&v).unwrap_err();
            assert!(e.contains(want), "{name}: {e}");
            assert!(!e.contains('\n'), "{name}: {e}");
        }
        assert!(
            ExportManifest::parse(b"{")
                .unwrap_err()
                .starts_with("not an export manifest")
        );
    }

    #[test]
    fn no_description_is_left_out_not_null() {
        let mut v = good();
        v["Image"].as_object_mut().unwrap().remove("Description");
        let m = parse(&v).unwrap();
        assert_eq!(m.image.description, None);
        let text = String::from_utf8(m.to_bytes()).unwrap();
        assert!(!text.contains("Description"), "{text}");
        // A null one is read as none.
        let m = parse(&good()).unwrap();
        assert_eq!(m.image.description, None);
        v["Image"]["Description"] = "a web server".into();
        let text = String::from_utf8(parse(&v).unwrap().to_bytes()).unwrap();
        assert!(text.contains("\"Description\": \"a web server\""), "{text}");
    }

    #[test]
    fn bad_fields_are_named_with_their_snapshot() {
        type Edit = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|v| v["Image"]["Snapshots"][0]["Size"] = (-1).into()),
                "Snapshots[0] (/dev/sda1): Size: -1 is not a number of bytes",
            ),
            (
                Box::new(|v| v["Image"]["Snapshots"][1]["Size"] = "10".into()),
                "Snapshots[1] (/dev/sdb): Size: \"10\" is not a number of bytes",
            ),
            (
                Box::new(|v| v["Image"]["Snapshots"][1]["Size"] = 1.5.into()),
                "Snapshots[1] (/dev/sdb): Size: 1.5 is not a number of bytes",
            ),
            (
                Box::new(|v| {
                    v["Image"]["Snapshots"][0]
                        .as_object_mut()
                        .unwrap()
                        .remove("Size");
                }),
                "Snapshots[0] (/dev/sda1): Size: missing or null is not a number of bytes",
            ),
            (
                Box::new(|v| v["Image"]["Snapshots"][1]["Iops"] = (-600).into()),
                "Snapshots[1] (/dev/sdb): Iops: -600 is not null or a number",
            ),
            (
                Box::new(|v| v["Image"]["Snapshots"][0]["Device"] = 7.into()),
                "Snapshots[0] (?): Device: 7 is not a string",
            ),
            (
                Box::new(|v| v["Image"]["Snapshots"][0]["DeleteOnTermination"] = "yes".into()),
                "Snapshots[0] (/dev/sda1): DeleteOnTermination: \"yes\" is not true or false",
            ),
        ];
        for (edit, want) in cases {
            let mut v = good();
            edit(&mut v);
            assert_eq!(parse(&v).unwrap_err(), want);
        }
    }

    #[test]
    fn expiry_of_presigned_urls() {
        let url = "https://h/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20261127T070000Z&X-Amz-Expires=604800&X-Amz-Signature=ab";
        // 2026-11-27T07:00:00Z = 1795762800.
        assert_eq!(presigned_expiry(url), Some(1_795_762_800 + 604_800));
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(presigned_expiry("https://h/b/k"), None);
        assert_eq!(
            presigned_expiry("https://h/b/k?X-Amz-Date=bad&X-Amz-Expires=1"),
            None
        );
    }
}
