//! What an executable is built for, from its header: ELF (System V gABI, `elf(5)`) for Linux
//! programs such as `/sbin/init`, PE/COFF (Microsoft's PE format, UEFI 2.10 §2.1.1) for EFI
//! applications such as `BOOTX64.EFI`.
//!
//! Only the headers are read, through [`FileSystem::read_at`]: 64 bytes at the start, and for a
//! PE file 94 bytes where the DOS header's `e_lfanew` points, after checking that it points
//! inside the file and below [`MAX_E_LFANEW`]. The file is hostile: every offset is checked
//! before it is used, and bad input is an [`Error`], never a panic.

use crate::fs::{FileSystem, Kind};
use serde::Serialize;
use std::convert::Infallible;
use std::fmt;
use std::path::PathBuf;

/// Largest `e_lfanew` accepted. Windows' loader takes any offset in the file, but real PE files
/// put their header within the first kilobytes, after a DOS stub.
pub const MAX_E_LFANEW: u32 = 16 << 20;

/// Bytes read at the start of a file: an ELF64 header, and the 64-byte DOS header.
const HEAD_LEN: usize = 64;
/// `\x7fELF`.
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// Size of the ELF header of each class (gABI, "ELF Header").
const ELF32_HEADER_LEN: usize = 52;
const ELF64_HEADER_LEN: usize = 64;
/// Offset of `e_machine`, the same in both classes.
const E_MACHINE: usize = 18;
/// Size of the MS-DOS header, and the offset of its `e_lfanew`.
const DOS_HEADER_LEN: usize = 64;
const E_LFANEW: usize = 0x3c;
/// The PE signature, the COFF file header that follows it, and the offsets in the latter.
const PE_SIGNATURE: &[u8; 4] = b"PE\0\0";
const COFF_LEN: usize = 20;
const COFF_MACHINE: usize = 4;
const COFF_SIZE_OF_OPTIONAL_HEADER: usize = 4 + 16;
/// Start of the optional header, relative to the signature.
const OPTIONAL: usize = 4 + COFF_LEN;
/// `Subsystem`'s offset in the optional header: the same in PE32 and PE32+ (PE32 has
/// `BaseOfData` where PE32+ has the upper half of its 8-byte `ImageBase`).
const SUBSYSTEM: usize = 68;
/// Bytes of the NT headers read: signature, COFF header, optional header up to `Subsystem`.
const NT_LEN: usize = OPTIONAL + SUBSYSTEM + 2;

/// The two executable formats told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// ELF: Linux (and most Unix) executables, libraries and kernels' `vmlinux`.
    Elf,
    /// PE/COFF: EFI applications and drivers, Windows executables.
    Pe,
}

/// What [`identify`] found in a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Binary {
    /// ELF or PE.
    pub format: Format,
    /// 32 or 64: the ELF class, or PE32 / PE32+.
    pub bits: u8,
    /// The ELF `e_machine` or the PE `Machine` field, as stored.
    pub machine: u16,
    /// The architecture, as Linux distributions name it (`x86_64`, `i386`, `aarch64`, `arm`,
    /// `riscv64`, `ppc64le`, `s390x`…); `None` for a machine this module does not know.
    pub arch: Option<&'static str>,
    /// The PE optional header's `Subsystem` (10 for an EFI application); `None` for ELF.
    pub subsystem: Option<u16>,
}

impl Binary {
    /// Whether this is a PE image for UEFI: an application, a boot service or runtime driver,
    /// or a ROM image (subsystems 10 to 13).
    pub fn is_efi(&self) -> bool {
        self.format == Format::Pe && matches!(self.subsystem, Some(10..=13))
    }
}

/// "ELF 64-bit x86_64", "ELF 32-bit e_machine 4660", "PE32+ x86_64 EFI application",
/// "PE32 machine 0x1234 subsystem 99".
impl fmt::Display for Binary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.format {
            Format::Elf => {
                write!(f, "ELF {}-bit ", self.bits)?;
                match self.arch {
                    Some(arch) => f.write_str(arch),
                    None => write!(f, "e_machine {}", self.machine),
                }
            }
            Format::Pe => {
                f.write_str(if self.bits == 64 { "PE32+ " } else { "PE32 " })?;
                match self.arch {
                    Some(arch) => f.write_str(arch)?,
                    None => write!(f, "machine {:#x}", self.machine)?,
                }
                match self.subsystem {
                    Some(s) => match subsystem_name(s) {
                        Some(name) => write!(f, " {name}"),
                        None => write!(f, " subsystem {s}"),
                    },
                    None => Ok(()),
                }
            }
        }
    }
}

/// What a PE `Subsystem` value means, for the values this module knows.
pub fn subsystem_name(subsystem: u16) -> Option<&'static str> {
    Some(match subsystem {
        1 => "native",
        2 => "Windows GUI application",
        3 => "Windows console application",
        9 => "Windows CE application",
        10 => "EFI application",
        11 => "EFI boot service driver",
        12 => "EFI runtime driver",
        13 => "EFI ROM",
        16 => "Windows boot application",
        _ => return None,
    })
}

/// Why some bytes are not a header this module can read; the `Display` is one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// The file has no bytes at all.
    #[error("an empty file, not an ELF or PE file")]
    Empty,
    /// The path is a directory or a device, not a regular file.
    #[error("not a regular file")]
    NotFile,
    /// Neither `\x7fELF` nor `MZ` at the start.
    #[error("not an ELF or PE file")]
    Unknown,
    /// The file ends inside the ELF header.
    #[error("truncated ELF header ({len} of {need} bytes)")]
    TruncatedElf {
        /// Bytes there are.
        len: usize,
        /// Bytes the header needs.
        need: usize,
    },
    /// `EI_CLASS` is neither 1 nor 2.
    #[error("ELF class {0} is neither 32-bit (1) nor 64-bit (2)")]
    ElfClass(u8),
    /// `EI_DATA` is neither 1 nor 2.
    #[error("ELF data encoding {0} is neither little-endian (1) nor big-endian (2)")]
    ElfData(u8),
    /// The file ends inside the 64-byte DOS header.
    #[error("truncated DOS header ({len} of 64 bytes)")]
    TruncatedDos {
        /// Bytes there are.
        len: usize,
    },
    /// `e_lfanew` is at or past the end of the file.
    #[error("e_lfanew {e_lfanew:#x} points past the end of the {len}-byte file")]
    LfanewPastEnd {
        /// The DOS header's `e_lfanew`.
        e_lfanew: u32,
        /// Size of the file.
        len: u64,
    },
    /// `e_lfanew` is at or past [`MAX_E_LFANEW`].
    #[error("e_lfanew {e_lfanew:#x} is past the first 16 MiB, where a PE header must start")]
    LfanewTooFar {
        /// The DOS header's `e_lfanew`.
        e_lfanew: u32,
    },
    /// No `PE\0\0` where `e_lfanew` points: an MS-DOS program, or an NE/LE one.
    #[error("no PE signature where e_lfanew points (an MS-DOS, NE or LE executable?)")]
    NoPeSignature,
    /// The file ends inside the PE headers.
    #[error("truncated PE header ({len} of {need} bytes after e_lfanew)")]
    TruncatedPe {
        /// Bytes there are after `e_lfanew`.
        len: usize,
        /// Bytes needed up to and including `Subsystem`.
        need: usize,
    },
    /// The optional header's magic is neither 0x10b nor 0x20b.
    #[error("PE optional header magic {0:#x} is neither PE32 (0x10b) nor PE32+ (0x20b)")]
    PeMagic(u16),
    /// `SizeOfOptionalHeader` leaves out `Subsystem`.
    #[error("a PE optional header of {0} bytes is too short to hold its Subsystem field")]
    PeOptionalTooShort(u16),
}

/// An error from [`identify`]: the file could not be read, or it is not an ELF or PE file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the file system failed (including a path that does not exist).
    #[error(transparent)]
    Read(#[from] crate::fs::Error),
    /// The file's header is not one [`identify`] reads.
    #[error("{}: {path}: {reason}", name.display())]
    Invalid {
        /// The image, as the file system names it.
        name: PathBuf,
        /// The path in the file system.
        path: String,
        /// What is wrong.
        reason: Invalid,
    },
}

impl Error {
    /// Whether the path (or a directory on the way, or a symlink's target) does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::Read(e) => e.is_not_found(),
            Error::Invalid { .. } => false,
        }
    }
}

/// Identifies the ELF or PE file at `path` (symlinks followed) by reading its headers.
pub fn identify(fs: &dyn FileSystem, path: &str) -> Result<Binary, Error> {
    let invalid = |reason| Error::Invalid {
        name: fs.name().to_owned(),
        path: path.to_owned(),
        reason,
    };
    let meta = fs.metadata(path)?;
    if meta.kind != Kind::File {
        return Err(invalid(Invalid::NotFile));
    }
    identify_with(meta.len, |offset, buf| fs.read_at(path, offset, buf))?.map_err(invalid)
}

/// Identifies the ELF or PE file whose bytes (the whole file, or at least its start) are `bytes`.
/// For PE the header `e_lfanew` points to must be in `bytes`: the file is taken to end there.
pub fn identify_bytes(bytes: &[u8]) -> Result<Binary, Invalid> {
    let read = |offset: u64, buf: &mut [u8]| -> Result<usize, Infallible> {
        let rest = usize::try_from(offset)
            .ok()
            .and_then(|start| bytes.get(start..))
            .unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    };
    match identify_with(bytes.len() as u64, read) {
        Ok(result) => result,
        Err(never) => match never {},
    }
}

/// The work of [`identify`] on a file of `len` bytes that `read` reads like
/// [`FileSystem::read_at`]. A read error is the outer error, a bad header the inner one.
fn identify_with<E>(
    len: u64,
    mut read: impl FnMut(u64, &mut [u8]) -> Result<usize, E>,
) -> Result<Result<Binary, Invalid>, E> {
    let mut head = [0u8; HEAD_LEN];
    let n = read(0, &mut head)?.min(HEAD_LEN);
    let head = &head[..n];
    if head.is_empty() {
        return Ok(Err(Invalid::Empty));
    }
    if head.starts_with(ELF_MAGIC) {
        return Ok(parse_elf(head));
    }
    if !head.starts_with(b"MZ") {
        return Ok(Err(Invalid::Unknown));
    }
    let e_lfanew = match parse_pe_dos(head) {
        Ok(e_lfanew) => e_lfanew,
        Err(e) => return Ok(Err(e)),
    };
    // The file may have grown or shrunk since `len` was taken: what `read` returns is what
    // counts, `len` only keeps the read inside the file.
    if u64::from(e_lfanew) >= len {
        return Ok(Err(Invalid::LfanewPastEnd { e_lfanew, len }));
    }
    if e_lfanew >= MAX_E_LFANEW {
        return Ok(Err(Invalid::LfanewTooFar { e_lfanew }));
    }
    let mut nt = [0u8; NT_LEN];
    let n = read(u64::from(e_lfanew), &mut nt)?.min(NT_LEN);
    Ok(parse_pe_nt(&nt[..n]))
}

/// Reads an ELF header (the first 52 or 64 bytes of the file, or more).
pub fn parse_elf(bytes: &[u8]) -> Result<Binary, Invalid> {
    if !bytes.starts_with(ELF_MAGIC) {
        return Err(Invalid::Unknown);
    }
    let truncated = |need| Invalid::TruncatedElf {
        len: bytes.len(),
        need,
    };
    let (bits, need) = match bytes.get(4) {
        Some(1) => (32, ELF32_HEADER_LEN),
        Some(2) => (64, ELF64_HEADER_LEN),
        Some(&class) => return Err(Invalid::ElfClass(class)),
        None => return Err(truncated(ELF32_HEADER_LEN)),
    };
    let big_endian = match bytes.get(5) {
        Some(1) => false,
        Some(2) => true,
        Some(&data) => return Err(Invalid::ElfData(data)),
        None => return Err(truncated(need)),
    };
    if bytes.len() < need {
        return Err(truncated(need));
    }
    let field = u16_at(bytes, E_MACHINE).ok_or_else(|| truncated(need))?;
    let machine = if big_endian {
        field.swap_bytes()
    } else {
        field
    };
    Ok(Binary {
        format: Format::Elf,
        bits,
        machine,
        arch: elf_arch(machine, bits, big_endian),
        subsystem: None,
    })
}

/// Reads an MS-DOS header (the first 64 bytes of the file, or more) and returns its `e_lfanew`,
/// the offset of the PE signature; the caller checks it against the file's size.
pub fn parse_pe_dos(bytes: &[u8]) -> Result<u32, Invalid> {
    if !bytes.starts_with(b"MZ") {
        return Err(Invalid::Unknown);
    }
    if bytes.len() < DOS_HEADER_LEN {
        return Err(Invalid::TruncatedDos { len: bytes.len() });
    }
    u32_at(bytes, E_LFANEW).ok_or(Invalid::TruncatedDos { len: bytes.len() })
}

/// Reads the NT headers: the bytes from where `e_lfanew` points, the PE signature, the COFF
/// header and the optional header at least up to its `Subsystem` (94 bytes).
pub fn parse_pe_nt(bytes: &[u8]) -> Result<Binary, Invalid> {
    let truncated = || Invalid::TruncatedPe {
        len: bytes.len(),
        need: NT_LEN,
    };
    match bytes.get(..PE_SIGNATURE.len()) {
        Some(sig) if sig == PE_SIGNATURE => {}
        Some(_) => return Err(Invalid::NoPeSignature),
        // Fewer than 4 bytes cannot hold it, but they may be the start of one.
        None if PE_SIGNATURE.starts_with(bytes) => return Err(truncated()),
        None => return Err(Invalid::NoPeSignature),
    }
    let machine = u16_at(bytes, COFF_MACHINE).ok_or_else(truncated)?;
    let optional_len = u16_at(bytes, COFF_SIZE_OF_OPTIONAL_HEADER).ok_or_else(truncated)?;
    let bits = match u16_at(bytes, OPTIONAL).ok_or_else(truncated)? {
        0x10b => 32,
        0x20b => 64,
        magic => return Err(Invalid::PeMagic(magic)),
    };
    if usize::from(optional_len) < SUBSYSTEM + 2 {
        return Err(Invalid::PeOptionalTooShort(optional_len));
    }
    let subsystem = u16_at(bytes, OPTIONAL + SUBSYSTEM).ok_or_else(truncated)?;
    Ok(Binary {
        format: Format::Pe,
        bits,
        machine,
        arch: pe_arch(machine),
        subsystem: Some(subsystem),
    })
}

/// The architecture of an ELF `e_machine` (gABI and the psABIs), as Debian's `uname -m`-like
/// names go; the class and byte order pick among the variants of a machine.
fn elf_arch(machine: u16, bits: u8, big_endian: bool) -> Option<&'static str> {
    let wide = bits == 64;
    Some(match machine {
        3 => "i386",
        // ELFCLASS32 with EM_X86_64 is the x32 ABI: 64-bit mode, 32-bit pointers.
        62 if wide => "x86_64",
        62 => "x32",
        183 => "aarch64",
        40 if big_endian => "armeb",
        40 => "arm",
        243 if wide => "riscv64",
        243 => "riscv32",
        21 if big_endian => "ppc64",
        21 => "ppc64le",
        20 => "ppc",
        22 if wide => "s390x",
        22 => "s390",
        8 => match (wide, big_endian) {
            (true, true) => "mips64",
            (true, false) => "mips64el",
            (false, true) => "mips",
            (false, false) => "mipsel",
        },
        258 => "loongarch64",
        43 => "sparc64",
        2 => "sparc",
        50 => "ia64",
        _ => return None,
    })
}

/// The architecture of a PE `Machine` (PE format, "Machine Types").
fn pe_arch(machine: u16) -> Option<&'static str> {
    Some(match machine {
        0x14c => "i386",
        0x8664 => "x86_64",
        0xaa64 => "aarch64",
        // ARMNT (Thumb-2, what UEFI uses on 32-bit ARM), ARM and Thumb.
        0x1c4 | 0x1c0 | 0x1c2 => "arm",
        0x5064 => "riscv64",
        0x5032 => "riscv32",
        0x6264 => "loongarch64",
        0x200 => "ia64",
        0xebc => "ebc",
        _ => return None,
    })
}

/// The little-endian `u16` at `offset`, if `bytes` holds it.
fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    let b = bytes.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_le_bytes(b.try_into().ok()?))
}

/// The little-endian `u32` at `offset`, if `bytes` holds it.
fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let b = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{self, OpenOptions};
    use crate::fs::ext4::Ext4;
    use std::os::unix::fs::symlink;
    use std::path::Path;
    use std::process::Command;

    /// An ELF header of `class` (1 or 2) and `data` (1 LE, 2 BE) for `machine`, full length.
    fn elf(class: u8, data: u8, machine: u16) -> Vec<u8> {
        let len = if class == 1 { 52 } else { 64 };
        let mut h = vec![0u8; len];
        h[..4].copy_from_slice(ELF_MAGIC);
        h[4] = class;
        h[5] = data;
        h[6] = 1;
        let (e_type, m) = if data == 2 {
            (2u16.to_be_bytes(), machine.to_be_bytes())
        } else {
            (2u16.to_le_bytes(), machine.to_le_bytes())
        };
        h[16..18].copy_from_slice(&e_type);
        h[18..20].copy_from_slice(&m);
        h
    }

    /// A PE file: DOS header with `e_lfanew`, then (if it fits in `len`) the NT headers.
    fn pe(len: usize, e_lfanew: u32, machine: u16, magic: u16, optional: u16, sub: u16) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[..2].copy_from_slice(b"MZ");
        let at = e_lfanew as usize;
        let mut nt = vec![0u8; NT_LEN];
        nt[..4].copy_from_slice(PE_SIGNATURE);
        nt[4..6].copy_from_slice(&machine.to_le_bytes());
        nt[20..22].copy_from_slice(&optional.to_le_bytes());
        nt[24..26].copy_from_slice(&magic.to_le_bytes());
        nt[NT_LEN - 2..].copy_from_slice(&sub.to_le_bytes());
        for (i, b) in nt.into_iter().enumerate() {
            if let Some(slot) = f.get_mut(at + i) {
                *slot = b;
            }
        }
        // Last: in a tiny PE the NT headers overlap the DOS header, `e_lfanew` included.
        f[E_LFANEW..E_LFANEW + 4].copy_from_slice(&e_lfanew.to_le_bytes());
        f
    }

    fn efi(machine: u16, magic: u16) -> Vec<u8> {
        pe(300, 0x80, machine, magic, 0xf0, 10)
    }

    #[test]
    fn elf_machines() {
        let cases: &[(u8, u8, u16, &str)] = &[
            (2, 1, 62, "x86_64"),
            (1, 1, 3, "i386"),
            (1, 1, 62, "x32"),
            (2, 1, 183, "aarch64"),
            (1, 1, 40, "arm"),
            (1, 2, 40, "armeb"),
            (2, 1, 243, "riscv64"),
            (1, 1, 243, "riscv32"),
            (2, 1, 21, "ppc64le"),
            (2, 2, 21, "ppc64"),
            (1, 2, 20, "ppc"),
            (2, 2, 22, "s390x"),
            (1, 2, 22, "s390"),
            (2, 2, 8, "mips64"),
            (1, 1, 8, "mipsel"),
            (2, 1, 258, "loongarch64"),
        ];
        for &(class, data, machine, arch) in cases {
            let b = parse_elf(&elf(class, data, machine)).unwrap();
            assert_eq!(b.format, Format::Elf);
            assert_eq!(b.bits, if class == 1 { 32 } else { 64 });
            assert_eq!(b.machine, machine, "{arch}");
            assert_eq!(b.arch, Some(arch));
            assert_eq!(b.subsystem, None);
            assert!(!b.is_efi());
            assert_eq!(identify_bytes(&elf(class, data, machine)), Ok(b));
        }
        // A big-endian header read as little-endian would say 0x1600, 0x3e00…
        assert_eq!(parse_elf(&elf(2, 2, 22)).unwrap().machine, 22);
        let unknown = parse_elf(&elf(2, 1, 0x1234)).unwrap();
        assert_eq!(unknown.arch, None);
        assert_eq!(unknown.to_string(), "ELF 64-bit e_machine 4660");
        assert_eq!(
            parse_elf(&elf(2, 1, 62)).unwrap().to_string(),
            "ELF 64-bit x86_64"
        );
        assert_eq!(
            parse_elf(&elf(1, 1, 3)).unwrap().to_string(),
            "ELF 32-bit i386"
        );
    }

    #[test]
    fn elf_bad_headers() {
        let e = |b: &[u8]| parse_elf(b).unwrap_err();
        assert_eq!(e(b""), Invalid::Unknown);
        assert_eq!(e(b"\x7fEL"), Invalid::Unknown);
        assert_eq!(e(b"\x7fELF"), Invalid::TruncatedElf { len: 4, need: 52 });
        assert_eq!(
            e(b"\x7fELF\x02"),
            Invalid::TruncatedElf { len: 5, need: 64 }
        );
        assert_eq!(
            e(&elf(1, 1, 3)[..51]),
            Invalid::TruncatedElf { len: 51, need: 52 }
        );
        assert_eq!(
            e(&elf(2, 1, 62)[..63]),
            Invalid::TruncatedElf { len: 63, need: 64 }
        );
        assert_eq!(
            e(&elf(2, 1, 62)[..20]).to_string(),
            "truncated ELF header (20 of 64 bytes)"
        );
        let mut bad = elf(2, 1, 62);
        bad[4] = 3;
        assert_eq!(e(&bad), Invalid::ElfClass(3));
        bad[4] = 0;
        assert_eq!(e(&bad), Invalid::ElfClass(0));
        let mut bad = elf(2, 1, 62);
        bad[5] = 0;
        assert_eq!(e(&bad), Invalid::ElfData(0));
        assert_eq!(
            e(&bad).to_string(),
            "ELF data encoding 0 is neither little-endian (1) nor big-endian (2)"
        );
        // A longer buffer (the whole file) is fine.
        let mut long = elf(1, 1, 3);
        long.extend_from_slice(&[0xff; 1000]);
        assert_eq!(parse_elf(&long).unwrap().arch, Some("i386"));
    }

    #[test]
    fn pe_machines() {
        let cases: &[(u16, u16, &str, u8)] = &[
            (0x8664, 0x20b, "x86_64", 64),
            (0x14c, 0x10b, "i386", 32),
            (0xaa64, 0x20b, "aarch64", 64),
            (0x1c4, 0x10b, "arm", 32),
            (0x5064, 0x20b, "riscv64", 64),
            (0x6264, 0x20b, "loongarch64", 64),
        ];
        for &(machine, magic, arch, bits) in cases {
            let b = identify_bytes(&efi(machine, magic)).unwrap();
            assert_eq!(b.format, Format::Pe);
            assert_eq!((b.machine, b.arch, b.bits), (machine, Some(arch), bits));
            assert_eq!(b.subsystem, Some(10));
            assert!(b.is_efi());
            assert_eq!(parse_pe_dos(&efi(machine, magic)), Ok(0x80));
            assert_eq!(parse_pe_nt(&efi(machine, magic)[0x80..]), Ok(b));
        }
        let show = |machine, magic, sub| {
            identify_bytes(&pe(300, 0x40, machine, magic, 0xe0, sub))
                .unwrap()
                .to_string()
        };
        assert_eq!(show(0x8664, 0x20b, 10), "PE32+ x86_64 EFI application");
        assert_eq!(show(0x14c, 0x10b, 11), "PE32 i386 EFI boot service driver");
        assert_eq!(show(0xaa64, 0x20b, 12), "PE32+ aarch64 EFI runtime driver");
        assert_eq!(
            show(0x8664, 0x20b, 3),
            "PE32+ x86_64 Windows console application"
        );
        assert_eq!(show(0x1234, 0x10b, 99), "PE32 machine 0x1234 subsystem 99");
        let console = identify_bytes(&pe(300, 0x40, 0x8664, 0x20b, 0xf0, 3)).unwrap();
        assert!(!console.is_efi());
        // The NT headers may overlap the DOS header (e_lfanew 4 is legal for the loader).
        let tiny = pe(200, 4, 0x8664, 0x20b, 0xf0, 10);
        assert_eq!(identify_bytes(&tiny).unwrap().arch, Some("x86_64"));
    }

    #[test]
    fn pe_bad_headers() {
        let e = |b: &[u8]| identify_bytes(b).unwrap_err();
        // The message the brief asks for.
        let past = pe(300, 0x1000, 0x8664, 0x20b, 0xf0, 10);
        assert_eq!(
            e(&past).to_string(),
            "e_lfanew 0x1000 points past the end of the 300-byte file"
        );
        let past = pe(300, u32::MAX, 0x8664, 0x20b, 0xf0, 10);
        assert_eq!(
            e(&past),
            Invalid::LfanewPastEnd {
                e_lfanew: u32::MAX,
                len: 300
            }
        );
        assert_eq!(
            e(&pe(300, 300, 0x8664, 0x20b, 0xf0, 10)),
            Invalid::LfanewPastEnd {
                e_lfanew: 300,
                len: 300
            }
        );
        // Inside the file, but the headers run past its end.
        assert_eq!(
            e(&pe(300, 299, 0x8664, 0x20b, 0xf0, 10)),
            Invalid::TruncatedPe { len: 1, need: 94 }
        );
        assert_eq!(
            e(&pe(300, 250, 0x8664, 0x20b, 0xf0, 10)).to_string(),
            "truncated PE header (50 of 94 bytes after e_lfanew)"
        );
        // Exactly enough bytes after e_lfanew, and one fewer.
        assert!(identify_bytes(&pe(294, 200, 0x8664, 0x20b, 0xf0, 10)).is_ok());
        assert_eq!(
            e(&pe(293, 200, 0x8664, 0x20b, 0xf0, 10)),
            Invalid::TruncatedPe { len: 93, need: 94 }
        );
        assert_eq!(e(b"MZ"), Invalid::TruncatedDos { len: 2 });
        assert_eq!(
            e(&[b'M', b'Z', 0, 0, 0, 0]),
            Invalid::TruncatedDos { len: 6 }
        );
        assert_eq!(
            e(&pe(300, 0x80, 0x8664, 0x20b, 0xf0, 10)[..63]),
            Invalid::TruncatedDos { len: 63 }
        );
        // An MS-DOS program: no PE signature.
        let mut dos = efi(0x8664, 0x20b);
        dos[0x80..0x84].copy_from_slice(b"NE\0\0");
        assert_eq!(e(&dos), Invalid::NoPeSignature);
        assert_eq!(
            parse_pe_nt(b"PE"),
            Err(Invalid::TruncatedPe { len: 2, need: 94 })
        );
        assert_eq!(parse_pe_nt(b"LE"), Err(Invalid::NoPeSignature));
        assert_eq!(
            parse_pe_nt(b""),
            Err(Invalid::TruncatedPe { len: 0, need: 94 })
        );
        assert_eq!(e(&efi(0x8664, 0x107)), Invalid::PeMagic(0x107));
        assert_eq!(
            e(&pe(300, 0x80, 0x8664, 0x20b, 0x40, 10)),
            Invalid::PeOptionalTooShort(0x40)
        );
        assert_eq!(
            e(&pe(300, 0x80, 0x8664, 0x20b, 0, 10)).to_string(),
            "a PE optional header of 0 bytes is too short to hold its Subsystem field"
        );
        assert_eq!(parse_pe_dos(b"\x7fELF"), Err(Invalid::Unknown));
    }

    #[test]
    fn lfanew_far_in_a_big_file() {
        // A 1 GiB file that is never allocated: `e_lfanew` inside it, but past 16 MiB.
        let head = pe(64, MAX_E_LFANEW, 0x8664, 0x20b, 0xf0, 10);
        let mut reads = Vec::new();
        let got = identify_with(1 << 30, |offset, buf: &mut [u8]| {
            reads.push((offset, buf.len()));
            let n = head.len().min(buf.len());
            buf[..n].copy_from_slice(&head[..n]);
            Ok::<_, Infallible>(n)
        })
        .unwrap();
        assert_eq!(
            got.unwrap_err().to_string(),
            "e_lfanew 0x1000000 is past the first 16 MiB, where a PE header must start"
        );
        // Only the 64-byte head was read.
        assert_eq!(reads, [(0, 64)]);
        // Just under the limit, the NT headers are read where it points, 94 bytes.
        let head = pe(64, MAX_E_LFANEW - 1, 0x8664, 0x20b, 0xf0, 10);
        let nt = &pe(NT_LEN, 0, 0x8664, 0x20b, 0xf0, 10)[..];
        let mut nt = nt.to_vec();
        nt[..4].copy_from_slice(PE_SIGNATURE);
        let mut reads = Vec::new();
        let got = identify_with(1 << 30, |offset, buf: &mut [u8]| {
            reads.push((offset, buf.len()));
            let src = if offset == 0 { &head } else { &nt };
            let n = src.len().min(buf.len());
            buf[..n].copy_from_slice(&src[..n]);
            Ok::<_, Infallible>(n)
        })
        .unwrap();
        assert_eq!(got.unwrap().arch, Some("x86_64"));
        assert_eq!(reads, [(0, 64), (u64::from(MAX_E_LFANEW - 1), NT_LEN)]);
    }

    #[test]
    fn not_binaries() {
        let e = |b: &[u8]| identify_bytes(b).unwrap_err();
        assert_eq!(e(b""), Invalid::Empty);
        assert_eq!(e(b"\x7f"), Invalid::Unknown);
        assert_eq!(e(b"M"), Invalid::Unknown);
        assert_eq!(e(b"#!/bin/sh\nexec true\n"), Invalid::Unknown);
        assert_eq!(e(b"#!/bin/sh\n").to_string(), "not an ELF or PE file");
        assert_eq!(e(&[0u8; 4096]), Invalid::Unknown);
    }

    /// Every prefix and every single-byte corruption of the headers is an answer, not a panic.
    #[test]
    fn hostile_bytes_never_panic() {
        let mut inputs = vec![
            elf(2, 1, 62),
            elf(1, 2, 22),
            efi(0x8664, 0x20b),
            pe(120, 4, 0x14c, 0x10b, 0xe0, 10),
        ];
        for real in ["/bin/sh", "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"] {
            if let Ok(mut b) = std::fs::read(real) {
                b.truncate(4096);
                inputs.push(b);
            }
        }
        let values = [0u8, 1, 2, 3, 0x7f, 0x80, 0xff];
        for input in &inputs {
            for len in 0..=input.len().min(400) {
                let _ = identify_bytes(&input[..len]);
                let _ = parse_elf(&input[..len]);
                let _ = parse_pe_dos(&input[..len]);
                let _ = parse_pe_nt(&input[..len]);
            }
            for i in 0..input.len().min(256) {
                for v in values {
                    let mut b = input.clone();
                    b[i] = v;
                    let _ = identify_bytes(&b);
                }
            }
        }
    }

    #[test]
    fn serializes() {
        let b = identify_bytes(&efi(0x8664, 0x20b)).unwrap();
        assert_eq!(
            serde_json::to_value(b).unwrap(),
            serde_json::json!({
                "format": "pe", "bits": 64, "machine": 0x8664, "arch": "x86_64", "subsystem": 10
            })
        );
        let b = identify_bytes(&elf(1, 1, 3)).unwrap();
        assert_eq!(
            serde_json::to_value(b).unwrap(),
            serde_json::json!({
                "format": "elf", "bits": 32, "machine": 3, "arch": "i386", "subsystem": null
            })
        );
    }

    /// Runs a tool, panicking with its stderr if it fails.
    fn run(cmd: &mut Command) {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e} (Debian: apt-get install binutils)"));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Real binaries made by binutils: an i386 ELF program, and (if `ld` has the PE
    /// emulations, as Debian's x86 binutils do) i386 and x86_64 EFI applications. Returns the
    /// paths that were made.
    fn toolchain_binaries(dir: &Path) -> (PathBuf, Option<PathBuf>, Option<PathBuf>) {
        let src = dir.join("start.s");
        std::fs::write(&src, ".globl _start\n_start:\n  ret\n").unwrap();
        let o32 = dir.join("start32.o");
        let o64 = dir.join("start64.o");
        run(Command::new("as").arg("--32").arg("-o").arg(&o32).arg(&src));
        run(Command::new("as").arg("--64").arg("-o").arg(&o64).arg(&src));
        let elf32 = dir.join("hello-i386");
        run(Command::new("ld")
            .args(["-m", "elf_i386", "-o"])
            .arg(&elf32)
            .arg(&o32));
        let pe = |emulation: &str, obj: &Path, name: &str| {
            let out = dir.join(name);
            let made = Command::new("ld")
                .args(["-m", emulation, "--subsystem", "10", "-e", "_start", "-o"])
                .arg(&out)
                .arg(obj)
                .output()
                .is_ok_and(|o| o.status.success());
            if !made {
                eprintln!("ld -m {emulation} is not available: {name} not made");
            }
            made.then_some(out)
        };
        let ia32 = pe("i386pe", &o32, "BOOTIA32.EFI");
        let x64 = pe("i386pep", &o64, "BOOTX64.EFI");
        (elf32, ia32, x64)
    }

    /// Binaries of this machine and made by binutils, read whole.
    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn real_binaries() {
        let dir = tempfile::tempdir().unwrap();
        let (elf32, ia32, x64) = toolchain_binaries(dir.path());
        let id = |p: &Path| identify_bytes(&std::fs::read(p).unwrap()).unwrap();
        assert_eq!(id(&elf32).to_string(), "ELF 32-bit i386");
        if let Some(p) = ia32 {
            assert_eq!(id(&p).to_string(), "PE32 i386 EFI application");
        }
        if let Some(p) = x64 {
            assert_eq!(id(&p).to_string(), "PE32+ x86_64 EFI application");
        }
        let host = |p: &str| {
            if Path::new(p).exists() {
                Some(id(Path::new(p)))
            } else {
                eprintln!("{p} is not on this machine");
                None
            }
        };
        let sh = host("/bin/sh").unwrap();
        assert_eq!(sh.format, Format::Elf);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(sh.to_string(), "ELF 64-bit x86_64");
            if let Some(b) = host("/usr/bin/busybox") {
                assert_eq!(b.to_string(), "ELF 64-bit x86_64");
            }
            if let Some(b) = host("/usr/lib/systemd/boot/efi/systemd-bootx64.efi") {
                assert_eq!(b.to_string(), "PE32+ x86_64 EFI application");
            }
        }
    }

    /// Through the [`FileSystem`] trait: an ext4 image with the usual symlinks to busybox.
    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn in_an_ext4_image() {
        let dir = tempfile::tempdir().unwrap();
        let (elf32, ia32, x64) = toolchain_binaries(dir.path());
        let tree = dir.path().join("tree");
        for d in ["bin", "sbin", "usr/lib/systemd", "boot/efi/EFI/BOOT", "bad"] {
            std::fs::create_dir_all(tree.join(d)).unwrap();
        }
        let i386 = std::fs::read(&elf32).unwrap();
        std::fs::write(tree.join("bin/busybox"), &i386).unwrap();
        symlink("../bin/busybox", tree.join("sbin/init")).unwrap();
        symlink("busybox", tree.join("bin/sh")).unwrap();
        symlink("/bin/busybox", tree.join("usr/lib/systemd/systemd")).unwrap();
        symlink("../nowhere", tree.join("sbin/dangling")).unwrap();
        let host_sh = std::fs::read("/bin/sh").unwrap();
        std::fs::write(tree.join("bin/dash"), &host_sh).unwrap();
        let efi_dir = tree.join("boot/efi/EFI/BOOT");
        if let Some(p) = &ia32 {
            std::fs::copy(p, efi_dir.join("BOOTIA32.EFI")).unwrap();
        }
        if let Some(p) = &x64 {
            std::fs::copy(p, efi_dir.join("BOOTX64.EFI")).unwrap();
        }
        let bad = tree.join("bad");
        std::fs::write(bad.join("empty"), b"").unwrap();
        std::fs::write(bad.join("short-elf"), &i386[..10]).unwrap();
        std::fs::write(
            bad.join("lfanew-max"),
            pe(300, u32::MAX, 0x8664, 0x20b, 0xf0, 10),
        )
        .unwrap();
        std::fs::write(
            bad.join("lfanew-past"),
            pe(300, 0x1000, 0x8664, 0x20b, 0xf0, 10),
        )
        .unwrap();
        std::fs::write(bad.join("script"), b"#!/bin/sh\n").unwrap();
        let image = dir.path().join("root.ext4");
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&tree)
            .arg(&image)
            .arg("16M"));
        let src = format::open_path(&image, &OpenOptions::default()).unwrap();
        let len = src.size();
        let fs = Ext4::open(src, 0, len, Path::new("root.ext4")).unwrap();
        let fs: &dyn FileSystem = &fs;

        for path in [
            "/sbin/init",
            "/bin/sh",
            "/usr/lib/systemd/systemd",
            "/bin/busybox",
        ] {
            assert_eq!(
                identify(fs, path).unwrap().to_string(),
                "ELF 32-bit i386",
                "{path}"
            );
        }
        let dash = identify(fs, "/bin/dash").unwrap();
        assert_eq!(dash, identify_bytes(&host_sh).unwrap());
        if ia32.is_some() {
            let b = identify(fs, "/boot/efi/EFI/BOOT/BOOTIA32.EFI").unwrap();
            assert_eq!(b.to_string(), "PE32 i386 EFI application");
        }
        if x64.is_some() {
            let b = identify(fs, "/boot/efi/EFI/BOOT/BOOTX64.EFI").unwrap();
            assert_eq!(b.to_string(), "PE32+ x86_64 EFI application");
        }

        let err = |path: &str| identify(fs, path).unwrap_err();
        let reason = |path: &str| match err(path) {
            Error::Invalid { reason, .. } => reason,
            e => panic!("{path}: {e}"),
        };
        assert_eq!(reason("/bad/empty"), Invalid::Empty);
        assert_eq!(
            reason("/bad/short-elf"),
            Invalid::TruncatedElf { len: 10, need: 52 }
        );
        assert_eq!(
            err("/bad/lfanew-max").to_string(),
            "root.ext4: /bad/lfanew-max: e_lfanew 0xffffffff points past the end of the \
             300-byte file"
        );
        assert_eq!(
            reason("/bad/lfanew-past"),
            Invalid::LfanewPastEnd {
                e_lfanew: 0x1000,
                len: 300
            }
        );
        assert_eq!(reason("/bad/script"), Invalid::Unknown);
        assert_eq!(reason("/bad"), Invalid::NotFile);
        assert!(!err("/bad").is_not_found());
        assert!(err("/sbin/dangling").is_not_found());
        assert!(err("/sbin/missing").is_not_found());
        assert!(err("/no/such/dir/init").is_not_found());
    }
}
