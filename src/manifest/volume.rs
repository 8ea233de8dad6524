//! One volume of an image as a user declares it: the device, the disk image that fills it and
//! its mapping's fields, with Outscale's defaults.
//!
//! `--bdm DEVICE=PATH[,size=GiB][,type=TYPE][,iops=N][,delete-on-vm-deletion=BOOL]` and a
//! template's `[[volume]]` table name the fields alike; both are read here, the first by
//! [`Volume::from_str`](std::str::FromStr) (text, key by key through [`Volume::set`]), the
//! second by `layout::template`, whose TOML already types the numbers and booleans and which
//! sets the rest through the same [`Volume::set`]. Outscale's rules (device names, sizes, IOPS)
//! are checked later, against the disk, by `register`.

use super::VolumeType;
use std::path::{Path, PathBuf};

/// One volume of the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// `DeviceName`.
    pub device: String,
    /// The disk image to read (`image create` also takes `snap-…`).
    pub source: PathBuf,
    /// `VolumeSize` in GiB; the disk's size rounded up when absent.
    pub volume_size: Option<u64>,
    /// `VolumeType`.
    pub volume_type: VolumeType,
    /// `Iops` (io1 only).
    pub iops: Option<u32>,
    /// `DeleteOnVmDeletion`.
    pub delete_on_vm_deletion: bool,
}

/// A field of a volume, by the name `--bdm` and `[[volume]]` give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// `size`: `VolumeSize` in GiB.
    Size,
    /// `type`: `VolumeType`.
    Type,
    /// `iops`: `Iops`.
    Iops,
    /// `delete-on-vm-deletion`: `DeleteOnVmDeletion`.
    DeleteOnVmDeletion,
}

impl Key {
    /// The key's name.
    pub fn name(self) -> &'static str {
        match self {
            Key::Size => "size",
            Key::Type => "type",
            Key::Iops => "iops",
            Key::DeleteOnVmDeletion => "delete-on-vm-deletion",
        }
    }
}

impl std::str::FromStr for Key {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        [Key::Size, Key::Type, Key::Iops, Key::DeleteOnVmDeletion]
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| Error::UnknownKey(s.to_owned()))
    }
}

/// What is wrong with a volume's declaration: one line, naming the key and the value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No `=` between the device and the path.
    #[error("expected DEVICE=PATH[,key=value...]")]
    NoDevice,
    /// Nothing after `DEVICE=`.
    #[error("missing PATH")]
    NoPath,
    /// An option without `=`.
    #[error("{0:?}: expected key=value")]
    NotKeyValue(String),
    /// A key that is none of [`Key`]'s.
    #[error("unknown key {0:?}: use size, type, iops or delete-on-vm-deletion")]
    UnknownKey(String),
    /// `size=` that is not a whole number.
    #[error("size={0}: not a whole number of GiB")]
    Size(String),
    /// `type=` that is not a volume type.
    #[error("type={0}: must be {names}", names = VolumeType::NAMES)]
    Type(String),
    /// `iops=` that is not a number.
    #[error("iops={0}: not a number")]
    Iops(String),
    /// A boolean that is not one.
    #[error("{0:?} is not true or false")]
    Bool(String),
}

/// A boolean as mkomi's command line writes one: `true`, `yes` or `1`; `false`, `no` or `0`.
pub fn parse_bool(s: &str) -> Result<bool, Error> {
    match s {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(Error::Bool(s.to_owned())),
    }
}

impl Volume {
    /// A volume with Outscale's defaults: standard, deleted with the VM, sized to the disk.
    pub fn new(device: &str, source: &Path) -> Self {
        Self {
            device: device.to_owned(),
            source: source.to_owned(),
            volume_size: None,
            volume_type: VolumeType::Standard,
            iops: None,
            delete_on_vm_deletion: true,
        }
    }

    /// Sets the field `key` from its text.
    pub fn set(&mut self, key: Key, value: &str) -> Result<(), Error> {
        match key {
            Key::Size => {
                self.volume_size = Some(value.parse().map_err(|_| Error::Size(value.into()))?)
            }
            Key::Type => self.volume_type = value.parse().map_err(|_| Error::Type(value.into()))?,
            Key::Iops => self.iops = Some(value.parse().map_err(|_| Error::Iops(value.into()))?),
            Key::DeleteOnVmDeletion => self.delete_on_vm_deletion = parse_bool(value)?,
        }
        Ok(())
    }
}

impl std::str::FromStr for Volume {
    type Err = Error;

    /// `DEVICE=PATH[,key=value...]`, as `--bdm` takes it.
    fn from_str(s: &str) -> Result<Self, Error> {
        let (device, rest) = s.split_once('=').ok_or(Error::NoDevice)?;
        let mut parts = rest.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or(Error::NoPath)?;
        let mut volume = Volume::new(device, Path::new(path));
        for opt in parts {
            let (key, value) = opt
                .split_once('=')
                .ok_or_else(|| Error::NotKeyValue(opt.to_owned()))?;
            volume.set(key.parse()?, value)?;
        }
        Ok(volume)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bdm(s: &str) -> Result<Volume, String> {
        s.parse::<Volume>().map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_mapping() {
        let v =
            bdm("/dev/sdb=data.qcow2,size=100,type=io1,iops=500,delete-on-vm-deletion=no").unwrap();
        assert_eq!(v.device, "/dev/sdb");
        assert_eq!(v.source, PathBuf::from("data.qcow2"));
        assert_eq!(v.volume_size, Some(100));
        assert_eq!(v.volume_type, VolumeType::Io1);
        assert_eq!(v.iops, Some(500));
        assert!(!v.delete_on_vm_deletion);
        assert_eq!(
            bdm("/dev/sdb=snap-1a2b3c4d").unwrap(),
            Volume::new("/dev/sdb", Path::new("snap-1a2b3c4d"))
        );
    }

    /// The messages `--bdm` has always printed.
    #[test]
    fn errors() {
        for (arg, message) in [
            ("nodevice", "expected DEVICE=PATH[,key=value...]"),
            ("/dev/sdb=", "missing PATH"),
            ("/dev/sdb=p,size", "\"size\": expected key=value"),
            ("/dev/sdb=p,size=x", "size=x: not a whole number of GiB"),
            (
                "/dev/sdb=p,type=ssd",
                "type=ssd: must be standard, gp2 or io1",
            ),
            ("/dev/sdb=p,iops=q", "iops=q: not a number"),
            (
                "/dev/sdb=p,delete-on-vm-deletion=maybe",
                "\"maybe\" is not true or false",
            ),
            (
                "/dev/sdb=p,colour=red",
                "unknown key \"colour\": use size, type, iops or delete-on-vm-deletion",
            ),
        ] {
            assert_eq!(bdm(arg).unwrap_err(), message, "{arg}");
        }
    }

    #[test]
    fn booleans() {
        for (s, b) in [("true", true), ("yes", true), ("1", true)] {
            assert_eq!(parse_bool(s), Ok(b));
        }
        for (s, b) in [("false", false), ("no", false), ("0", false)] {
            assert_eq!(parse_bool(s), Ok(b));
        }
        assert!(parse_bool("True").is_err());
    }
}
