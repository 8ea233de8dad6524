//! Outscale's rules for image fields (API v1.40, docs "About OMIs", "About Volumes").
//!
//! Each check returns [`Error::Field`], whose message names the field, the value and what is
//! allowed.

use super::{Error, Result, VolumeType};

/// The root device every OMI uses.
pub const ROOT_DEVICE: &str = "/dev/sda1";
/// Largest BSU volume, in GiB.
pub const MAX_VOLUME_GIB: u64 = 14_901;
/// Largest `Iops` of an io1 volume.
pub const MAX_IOPS: u32 = 13_000;
/// Largest `Iops` per GiB of an io1 volume.
pub const MAX_IOPS_PER_GIB: u64 = 300;
/// Most volumes a VM can have attached, so the most mappings an image can use.
pub const MAX_MAPPINGS: usize = 40;
/// One GiB.
pub const GIB: u64 = 1 << 30;

fn field(field: &str, value: impl ToString, rule: impl Into<String>) -> Error {
    Error::Field {
        field: field.into(),
        value: value.to_string(),
        rule: rule.into(),
    }
}

/// `ImageName`: 3 to 128 characters among letters, digits, `_`, space, `(`, `)`, `/`, `.`, `-`.
pub fn image_name(name: &str) -> Result<()> {
    let len = name.chars().count();
    if !(3..=128).contains(&len) {
        return Err(field(
            "ImageName",
            name,
            format!("{len} characters; must be 3 to 128"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_ ()/.-".contains(*c)))
    {
        return Err(field(
            "ImageName",
            name,
            format!("{c:?} is not allowed; use letters, digits, space and _ ( ) / . -"),
        ));
    }
    Ok(())
}

/// Makes an `ImageName` from a file name: disallowed characters become `-`, cut to 128.
pub fn image_name_from(stem: &str) -> String {
    stem.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_ ()/.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect()
}

/// `RootDeviceName`: Outscale requires `/dev/sda1`.
pub fn root_device(name: &str) -> Result<()> {
    if name == ROOT_DEVICE {
        Ok(())
    } else {
        Err(field(
            "RootDeviceName",
            name,
            format!("the root device must be {ROOT_DEVICE}"),
        ))
    }
}

/// `DeviceName` of a non-root mapping: `/dev/sdX`, `/dev/sdXX`, `/dev/xvdX` or `/dev/xvdXX`,
/// the first X in b–z, the second in a–z.
pub fn extra_device(name: &str) -> Result<()> {
    let letters = name
        .strip_prefix("/dev/xvd")
        .or_else(|| name.strip_prefix("/dev/sd"))
        .map(str::as_bytes);
    let ok = match letters {
        Some([a]) => (b'b'..=b'z').contains(a),
        Some([a, b]) => (b'b'..=b'z').contains(a) && b.is_ascii_lowercase(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(field(
            "DeviceName",
            name,
            "must be /dev/sdX, /dev/sdXX, /dev/xvdX or /dev/xvdXX (first X in b-z, second in a-z); the root is /dev/sda1",
        ))
    }
}

/// The bundle file name for a device: `/dev/sda1` → `sda1.qcow2`.
pub fn disk_file_name(device: &str, extension: &str) -> String {
    let base = device.rsplit('/').next().unwrap_or(device);
    format!("{base}.{extension}")
}

/// The smallest `VolumeSize` that holds `bytes`: rounded up to GiB, at least 1.
pub fn min_volume_gib(bytes: u64) -> u64 {
    bytes.div_ceil(GIB).max(1)
}

/// `VolumeSize` for a disk of `disk_bytes`: at least the disk, at most 14,901 GiB.
pub fn volume_size(gib: u64, disk_bytes: u64) -> Result<()> {
    let min = min_volume_gib(disk_bytes);
    if gib < min {
        return Err(field(
            "VolumeSize",
            gib,
            format!("the disk is {disk_bytes} bytes, so the volume must be at least {min} GiB"),
        ));
    }
    if gib > MAX_VOLUME_GIB {
        return Err(field(
            "VolumeSize",
            gib,
            format!("at most {MAX_VOLUME_GIB} GiB"),
        ));
    }
    Ok(())
}

/// `Iops`: required with io1 and only with io1; at most 13,000 and 300 per GiB.
pub fn iops(volume_type: VolumeType, iops: Option<u32>, gib: u64) -> Result<()> {
    match (volume_type, iops) {
        (VolumeType::Io1, None) => Err(field(
            "Iops",
            "none",
            "an io1 volume needs Iops (at most 13000 and 300 per GiB)",
        )),
        (VolumeType::Io1, Some(n)) => {
            let per_gib = gib.saturating_mul(MAX_IOPS_PER_GIB);
            if n == 0 || n > MAX_IOPS || u64::from(n) > per_gib {
                Err(field(
                    "Iops",
                    n,
                    format!(
                        "must be 1 to {} for a {gib} GiB io1 volume (at most {MAX_IOPS} and {MAX_IOPS_PER_GIB} per GiB)",
                        per_gib.min(u64::from(MAX_IOPS))
                    ),
                ))
            } else {
                Ok(())
            }
        }
        (other, Some(n)) => Err(field(
            "Iops",
            n,
            format!("only io1 volumes take Iops; this one is {}", other.name()),
        )),
        (_, None) => Ok(()),
    }
}

/// No device twice, and no more mappings than a VM can attach.
pub fn mappings<'a>(devices: impl IntoIterator<Item = &'a str>) -> Result<()> {
    let mut seen: Vec<&str> = Vec::new();
    for d in devices {
        if seen.contains(&d) {
            return Err(field(
                "DeviceName",
                d,
                "appears twice; each device maps once",
            ));
        }
        seen.push(d);
    }
    if seen.len() > MAX_MAPPINGS {
        return Err(field(
            "BlockDeviceMappings",
            seen.len(),
            format!("at most {MAX_MAPPINGS} volumes per VM"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(image_name("debian-12 (x86_64)/v1.0_a").is_ok());
        assert!(image_name("ab").is_err());
        assert!(image_name(&"a".repeat(129)).is_err());
        assert!(image_name("a,b,c").is_err());
        assert!(image_name("été").is_err());
        assert_eq!(image_name_from("my:disk+1"), "my-disk-1");
    }

    #[test]
    fn devices() {
        for ok in [
            "/dev/sdb",
            "/dev/sdz",
            "/dev/sdba",
            "/dev/xvdc",
            "/dev/xvdzz",
        ] {
            assert!(extra_device(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/dev/sda",
            "/dev/sda1",
            "/dev/sdb1",
            "/dev/sdB",
            "/dev/vdb",
            "sdb",
            "/dev/sdbaa",
            "/dev/xvda",
        ] {
            assert!(extra_device(bad).is_err(), "{bad}");
        }
        assert!(root_device("/dev/sda1").is_ok());
        assert!(root_device("/dev/xvda").is_err());
        assert_eq!(disk_file_name("/dev/sda1", "qcow2"), "sda1.qcow2");
    }

    #[test]
    fn sizes_and_iops() {
        assert_eq!(min_volume_gib(0), 1);
        assert_eq!(min_volume_gib(GIB), 1);
        assert_eq!(min_volume_gib(GIB + 1), 2);
        assert!(volume_size(1, GIB + 1).is_err());
        assert!(volume_size(14_901, 1).is_ok());
        assert!(volume_size(14_902, 1).is_err());
        assert!(iops(VolumeType::Io1, Some(3000), 10).is_ok());
        assert!(iops(VolumeType::Io1, Some(3001), 10).is_err());
        assert!(iops(VolumeType::Io1, Some(13_001), 100).is_err());
        assert!(iops(VolumeType::Io1, None, 10).is_err());
        assert!(iops(VolumeType::Gp2, Some(100), 10).is_err());
        assert!(mappings(["/dev/sda1", "/dev/sdb", "/dev/sdb"]).is_err());
    }

    #[test]
    fn messages_name_field_value_and_rule() {
        let e = volume_size(20_000, 1).unwrap_err().to_string();
        assert_eq!(e, "VolumeSize \"20000\": at most 14901 GiB");
    }
}
