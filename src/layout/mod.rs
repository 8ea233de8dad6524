//! Laying out new disks: GPT partition tables and FAT file systems, built in-process and
//! reproducibly (every identifier and timestamp derives from the inputs and a seed).

pub mod composite;
pub mod fat;
pub mod gpt;
pub mod template;

use std::fmt;

/// A GUID as RFC 4122 prints it (`c12a7328-f81f-11d2-ba4b-00a0c93ec93b`), stored in that
/// textual byte order. GPT stores the first three fields little-endian: see [`Guid::to_gpt_bytes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (either case).
    pub fn parse(s: &str) -> Option<Guid> {
        let hex: String = s.chars().filter(|&c| c != '-').collect();
        let dashes_ok = s.len() == 36
            && s.char_indices()
                .all(|(i, c)| (c == '-') == matches!(i, 8 | 13 | 18 | 23));
        if !dashes_ok || hex.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Guid(out))
    }

    /// The 16 bytes as GPT stores them (UEFI spec, "GUID format"): the first three fields
    /// little-endian, the last two as they are.
    pub fn to_gpt_bytes(self) -> [u8; 16] {
        let b = self.0;
        [
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15],
        ]
    }

    /// The inverse of [`Guid::to_gpt_bytes`].
    pub fn from_gpt_bytes(b: [u8; 16]) -> Guid {
        Guid([
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15],
        ])
    }
}

/// GUIDs serialise as their RFC 4122 text, as reports and manifests show them.
impl serde::Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            b[0],
            b[1],
            b[2],
            b[3],
            b[4],
            b[5],
            b[6],
            b[7],
            b[8],
            b[9],
            b[10],
            b[11],
            b[12],
            b[13],
            b[14],
            b[15]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_round_trips() {
        let s = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
        let g = Guid::parse(s).unwrap();
        assert_eq!(g.to_string(), s);
        assert_eq!(Guid::from_gpt_bytes(g.to_gpt_bytes()), g);
        // The ESP type GUID as it appears on disk.
        assert_eq!(g.to_gpt_bytes()[..4], [0x28, 0x73, 0x2a, 0xc1]);
        assert!(Guid::parse("c12a7328f81f11d2ba4b00a0c93ec93b").is_none());
        assert!(Guid::parse("c12a7328-f81f-11d2-ba4b-00a0c93ec93").is_none());
    }
}
