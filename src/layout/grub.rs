//! Legacy BIOS boot with GRUB for i386-pc, installed rootless and in-process: what
//! `grub-install` does with a device, done on the disk being laid out.
//!
//! The chain, as GRUB 2.06 sets it up (`util/setup.c`, `grub-core/boot/i386/pc/boot.S` and
//! `diskboot.S`): the BIOS loads sector 0, whose first 440 bytes are GRUB's `boot.img`; boot.img
//! loads one sector, the first of `core.img`, whose LBA it holds at byte 0x5c; that sector is
//! `diskboot.img`, which ends with a block list (start LBA, sector count, segment) and loads the
//! rest of core.img. core.img is made by `grub-mkimage` from GRUB's module directory
//! (`/usr/lib/grub/i386-pc`, package grub-pc-bin) with the modules listed in [`MODULES`] and an
//! embedded configuration ([`config`]) that finds the root file system by its UUID and boots the
//! kernel from it: nothing has to be written into the root file system, and nothing is loaded
//! from it but the kernel and initrd.
//!
//! Where core.img goes is the caller's choice: the first sector of a GPT BIOS boot partition, or
//! sector 1 of an MBR disk (the gap before the first partition at 1 MiB).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Sector size.
pub const SECTOR_SIZE: u64 = 512;

/// The modules built into core.img: disk access through the BIOS, both partition tables, the
/// file systems the kernel may sit on, `search` (to find the root by UUID), `linux` (and
/// `initrd`), `boot`, and the serial console (Outscale's console output is the first serial
/// port). Their dependencies come from the directory's `moddep.lst`, as grub-mkimage reads it.
pub const MODULES: [&str; 10] = [
    "biosdisk",
    "part_gpt",
    "part_msdos",
    "ext2",
    "fat",
    "search",
    "linux",
    "boot",
    "serial",
    "terminal",
];

/// The images grub-mkimage assembles core.img from, and boot.img, besides the modules.
pub const IMAGES: [&str; 4] = [
    "boot.img",
    "diskboot.img",
    "kernel.img",
    "lzma_decompress.img",
];

/// The module dependency list of GRUB's directory.
pub const MODDEP: &str = "moddep.lst";

/// Byte offset in boot.img of the LBA of core.img's first sector (`GRUB_BOOT_MACHINE_KERNEL_SECTOR`
/// in `include/grub/i386/pc/boot.h`).
const KERNEL_SECTOR: usize = 0x5c;

/// Byte offset in boot.img of the boot drive; 0xff: the drive the BIOS booted from
/// (`GRUB_BOOT_MACHINE_BOOT_DRIVE`).
const BOOT_DRIVE: usize = 0x64;

/// Byte offset in boot.img of the jump that checks the BIOS passed a hard disk number; setup.c
/// turns it into two NOPs for hard disks, for BIOSes that pass 0 or 1 when booting from 0x80
/// (`GRUB_BOOT_MACHINE_DRIVE_CHECK`).
const DRIVE_CHECK: usize = 0x66;

/// diskboot.img's block list: 12 bytes at the end of its sector (`GRUB_BOOT_MACHINE_LIST_SIZE`):
/// u64 start LBA, u16 sector count, u16 load segment.
const BLOCKLIST: usize = 512 - 12;

/// The segment diskboot.img loads the rest of core.img at (`GRUB_BOOT_I386_PC_KERNEL_SEG` +
/// 0x20, the sector after diskboot itself), as grub-mkimage leaves it.
const CORE_SEGMENT: u16 = 0x820;

/// Why GRUB could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// grub-mkimage is not installed.
    #[error(
        "grub-mkimage not found: legacy BIOS boot needs it to make GRUB's core image (Debian: \
         apt-get install grub-pc-bin)"
    )]
    NoMkimage,
    /// grub-mkimage failed.
    #[error("grub-mkimage -d {}: {message}", dir.display())]
    Mkimage {
        /// The module directory.
        dir: PathBuf,
        /// Its last line of error, or its exit status.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// boot.img is not GRUB's i386-pc boot sector.
    #[error("{what}: not GRUB's i386-pc boot.img: {reason}")]
    BootImg {
        /// Where it came from.
        what: String,
        /// Why.
        reason: String,
    },
    /// core.img does not start with diskboot.img.
    #[error("core.img made by grub-mkimage is not an i386-pc core: {0}")]
    CoreImg(String),
    /// `moddep.lst` lacks a module or is malformed.
    #[error("{what}: {reason}")]
    ModDep {
        /// Where it came from.
        what: String,
        /// Why.
        reason: String,
    },
    /// A path or an option GRUB's parser would read otherwise than meant.
    #[error("{what} {value:?} cannot be written in GRUB's configuration: {reason}")]
    Unquotable {
        /// What it is.
        what: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: &'static str,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// The largest `moddep.lst` read: GRUB 2.06's is about 10 KiB.
pub const MAX_MODDEP: u64 = 1 << 20;

/// The largest file of GRUB's directory copied for grub-mkimage: GRUB 2.06's largest i386-pc
/// module is under 200 KiB, and core.img itself must fit the 1 MiB before the first partition.
pub const MAX_FILE: u64 = 4 << 20;

/// Whether `name` can be a GRUB module's name (`part_gpt`, `gcry_sha256`, `video-bochs`): the
/// name becomes a file name in the build's work directory, so `/`, `..` and the like from a
/// hostile root file system's `moddep.lst` must never get that far.
fn module_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The modules of [`MODULES`] and every module they depend on, per `moddep` (the text of
/// `moddep.lst`: lines `name: dep dep ...`), sorted. `what` names the list in errors; a name
/// that is not a module name is one.
pub fn module_closure(moddep: &str, what: &str) -> Result<Vec<String>> {
    let mut deps: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for line in moddep.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        let list: Vec<&str> = rest.split_whitespace().collect();
        if let Some(bad) = std::iter::once(name)
            .chain(list.iter().copied())
            .find(|n| !module_name(n))
        {
            return Err(Error::ModDep {
                what: what.to_owned(),
                reason: format!("{bad:?} is not a GRUB module name"),
            });
        }
        deps.insert(name, list);
    }
    let mut out: std::collections::BTreeSet<String> = Default::default();
    let mut todo: Vec<&str> = MODULES.to_vec();
    while let Some(m) = todo.pop() {
        if !out.insert(m.to_owned()) {
            continue;
        }
        let Some(d) = deps.get(m) else {
            return Err(Error::ModDep {
                what: what.to_owned(),
                reason: format!("no module {m} listed: not GRUB's i386-pc directory?"),
            });
        };
        todo.extend(d.iter().copied());
    }
    Ok(out.into_iter().collect())
}

/// What core.img's embedded configuration boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootConfig {
    /// The UUID of the file system holding the kernel, as GRUB prints it (`search --fs-uuid`).
    pub fs_uuid: String,
    /// GRUB's name of that partition on the boot disk (`hd0,gpt2`, `hd0,msdos1`): the root when
    /// the search finds nothing.
    pub partition: String,
    /// The kernel's path in that file system.
    pub kernel: String,
    /// The initrd's path, if any.
    pub initrd: Option<String>,
    /// The kernel command line.
    pub options: String,
}

/// The kernel's whitespace (`isspace` in the kernel's `lib/ctype.c`, ASCII only).
fn kernel_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// Splits a kernel command line into arguments as the kernel does (`next_arg` in
/// `kernel/params.c`): whitespace outside double quotes separates them, and a double quote
/// toggles quoting. The quotes are dropped: what is left is each argument's text.
pub fn kernel_args(options: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in options.chars() {
        if c == '"' {
            quoted = !quoted;
            any = true;
        } else if kernel_space(c) && !quoted {
            if any {
                args.push(std::mem::take(&mut cur));
                any = false;
            }
        } else {
            cur.push(c);
            any = true;
        }
    }
    if any {
        args.push(cur);
    }
    args
}

/// The command line both boot paths pass: [`kernel_args`], an argument holding whitespace
/// wrapped in double quotes, joined by one space. That is the text GRUB makes from these
/// arguments (`grub_create_loader_cmdline` in `lib/cmdline.c` quotes an argument with a space),
/// so systemd-boot, which passes its entry's options as they are, is given the same text:
/// `acpi_osi="!Windows 2012"` becomes `"acpi_osi=!Windows 2012"` for both, which the kernel
/// reads alike.
pub fn canonical_options(options: &str) -> String {
    kernel_args(options)
        .into_iter()
        .map(|a| {
            if a.chars().any(kernel_space) {
                format!("\"{a}\"")
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Single-quotes `s` for GRUB's command-line parser (`grub-core/kern/parser.c`): inside single
/// quotes nothing is special, and a single quote cannot be written at all.
fn quote(what: &'static str, s: &str) -> Result<String> {
    if s.contains('\'') {
        return Err(Error::Unquotable {
            what,
            value: s.to_owned(),
            reason: "it holds a single quote",
        });
    }
    if s.chars().any(char::is_control) {
        return Err(Error::Unquotable {
            what,
            value: s.to_owned(),
            reason: "it holds a control character",
        });
    }
    Ok(format!("'{s}'"))
}

/// The configuration embedded in core.img (`grub-mkimage -c`). GRUB runs it before anything
/// else, with the commands of the built-in modules: the serial console first, so that a failure
/// shows on the console Outscale records; the root set to the partition the build placed it in,
/// then to the file system with that UUID wherever it is (another disk order); the kernel with
/// the same command line as the UEFI entry, word by word, each quoted; and `boot`.
pub fn config(c: &BootConfig) -> Result<String> {
    // No comment line: the early parser (kern/parser.c, before `normal` is loaded) takes `#`
    // for a command ("Unknown command `#'"), and a configuration that began with one was seen
    // here to end at GRUB's prompt without booting.
    let mut out = String::from(
        "serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n",
    );
    out.push_str(&format!("set root={}\n", quote("partition", &c.partition)?));
    out.push_str(&format!(
        "search --no-floppy --fs-uuid --set=root {}\n",
        quote("file system UUID", &c.fs_uuid)?
    ));
    for (what, path) in [
        ("kernel path", Some(&c.kernel)),
        ("initrd path", c.initrd.as_ref()),
    ] {
        if let Some(p) = path
            && p.contains('\\')
        {
            return Err(Error::Unquotable {
                what,
                value: p.clone(),
                reason: "it holds a backslash (or a byte that is not UTF-8)",
            });
        }
    }
    let mut linux = format!("linux {}", quote("kernel path", &c.kernel)?);
    for arg in kernel_args(&c.options) {
        // GRUB passes a backslash or a quote to the kernel escaped with a backslash
        // (lib/cmdline.c), and the kernel does not unescape it: the two paths would differ.
        if arg.contains('\\') {
            return Err(Error::Unquotable {
                what: "kernel command line argument",
                value: arg,
                reason: "GRUB would pass its backslash to the kernel doubled",
            });
        }
        linux.push(' ');
        linux.push_str(&quote("kernel command line argument", &arg)?);
    }
    out.push_str(&linux);
    out.push('\n');
    if let Some(i) = &c.initrd {
        out.push_str(&format!("initrd {}\n", quote("initrd path", i)?));
    }
    out.push_str("boot\n");
    Ok(out)
}

/// Runs `grub-mkimage` on the module directory `dir` with the configuration `config`, in
/// `work` (a directory of the build's), and returns core.img padded to whole sectors.
/// grub-mkimage's output depends only on its inputs: the same directory and configuration give
/// the same bytes.
pub fn make_core(dir: &Path, config: &str, work: &Path) -> Result<Vec<u8>> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    let cfg = work.join("grub-early.cfg");
    std::fs::write(&cfg, config).map_err(io(&cfg))?;
    let out = work.join("core.img");
    let result = Command::new("grub-mkimage")
        .arg("-O")
        .arg("i386-pc")
        .arg("-d")
        .arg(dir)
        .arg("-c")
        .arg(&cfg)
        .arg("-p")
        .arg("/boot/grub")
        .arg("-o")
        .arg(&out)
        .args(MODULES)
        .stdin(std::process::Stdio::null())
        .output();
    let output = match result {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NoMkimage),
        Err(source) => {
            return Err(Error::Io {
                path: "grub-mkimage".into(),
                source,
            });
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let message = stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .map_or_else(|| output.status.to_string(), |l| l.trim().to_owned());
        return Err(Error::Mkimage {
            dir: dir.to_owned(),
            message,
        });
    }
    let mut core = std::fs::read(&out).map_err(io(&out))?;
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&cfg);
    let padded = core.len().next_multiple_of(SECTOR_SIZE as usize);
    core.resize(padded, 0);
    Ok(core)
}

/// core.img's size in sectors.
pub fn core_sectors(core: &[u8]) -> u64 {
    (core.len() as u64).div_ceil(SECTOR_SIZE)
}

/// Points core.img, to be written at `lba`, at itself: diskboot.img's block list loads the
/// sectors after `lba` (`util/setup.c`, the embedding case: one contiguous run).
pub fn patch_core(core: &mut [u8], lba: u64) -> Result<()> {
    let sectors = core_sectors(core);
    let Some(list) = core.get_mut(BLOCKLIST..512) else {
        return Err(Error::CoreImg("shorter than one sector".into()));
    };
    let segment = u16::from_le_bytes([list[10], list[11]]);
    if segment != CORE_SEGMENT {
        return Err(Error::CoreImg(format!(
            "its block list loads at segment {segment:#x}, not {CORE_SEGMENT:#x}"
        )));
    }
    let count = u16::try_from(sectors.saturating_sub(1))
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| Error::CoreImg(format!("{sectors} sectors long")))?;
    list[0..8].copy_from_slice(&(lba + 1).to_le_bytes());
    list[8..10].copy_from_slice(&count.to_le_bytes());
    Ok(())
}

/// The MBR's first 440 bytes: boot.img (`boot_img`, 512 bytes, read from `what`) pointed at
/// core.img's first sector `core_lba`, booting from the drive the BIOS booted from, with the
/// floppy check off as grub-bios-setup leaves it for hard disks. The disk signature and the
/// partition table that follow are the caller's.
pub fn boot_code(boot_img: &[u8], what: &str, core_lba: u64) -> Result<Vec<u8>> {
    let bad = |reason: &str| Error::BootImg {
        what: what.to_owned(),
        reason: reason.to_owned(),
    };
    if boot_img.len() != SECTOR_SIZE as usize {
        return Err(bad(&format!(
            "{} bytes, where boot.img is one 512-byte sector",
            boot_img.len()
        )));
    }
    if boot_img.get(510..512) != Some(&[0x55, 0xaa][..]) {
        return Err(bad("it does not end with the boot signature 0x55 0xAA"));
    }
    // boot.S's error strings, which any GRUB 2 boot.img carries ("GRUB ", "Geom", "Hard Disk",
    // "Read", " Error").
    let has = |s: &[u8]| boot_img.windows(s.len()).any(|w| w == s);
    if !(has(b"GRUB \0") && has(b"Geom\0") && has(b"Hard Disk\0")) {
        return Err(bad(
            "it lacks boot.S's messages (\"GRUB \", \"Geom\", \"Hard Disk\")",
        ));
    }
    let mut code = boot_img[..crate::layout::mbr::BOOT_CODE_LEN].to_vec();
    code[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    code[BOOT_DRIVE] = 0xff;
    code[DRIVE_CHECK] = 0x90;
    code[DRIVE_CHECK + 1] = 0x90;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closure_follows_moddep() {
        let mut lst = String::new();
        for m in MODULES {
            lst.push_str(&format!("{m}:\n"));
        }
        lst.push_str("extra: more\nmore:\n");
        lst = lst.replace("linux:\n", "linux: relocator\nrelocator: mmap\nmmap:\n");
        let c = module_closure(&lst, "t").unwrap();
        assert!(c.contains(&"relocator".to_owned()) && c.contains(&"mmap".to_owned()));
        assert!(!c.contains(&"extra".to_owned()));
        for bad in [
            "linux: ../../etc/evil\n",
            "../x: ext2\n",
            "a/b:\n",
            "linux: x\0y\n",
        ] {
            let e = module_closure(&format!("{lst}{bad}"), "m").unwrap_err();
            assert!(
                e.to_string().contains("is not a GRUB module name"),
                "{bad:?}: {e}"
            );
        }
        let e = module_closure("ext2:\n", "dir/moddep.lst").unwrap_err();
        assert!(
            e.to_string().starts_with("dir/moddep.lst: no module"),
            "{e}"
        );
    }

    #[test]
    fn options_split_as_the_kernel_splits_them() {
        assert_eq!(
            kernel_args("  a b=\"c d\" \"e f\"  g\"\" "),
            vec!["a", "b=c d", "e f", "g"]
        );
        assert_eq!(kernel_args("x=\"unclosed y"), vec!["x=unclosed y"]);
        assert_eq!(
            canonical_options("root=PARTUUID=1  acpi_osi=\"!Windows 2012\" rw"),
            "root=PARTUUID=1 \"acpi_osi=!Windows 2012\" rw"
        );
        assert_eq!(canonical_options("a b"), "a b");
    }

    #[test]
    fn config_quotes_every_word() {
        let c = BootConfig {
            fs_uuid: "0123".into(),
            partition: "hd0,gpt2".into(),
            kernel: "/boot/vmlinuz-6.1".into(),
            initrd: Some("/boot/initrd.img-6.1".into()),
            options: "root=PARTUUID=ab rw  console=ttyS0,115200n8 x=$y q=\"a b\"".into(),
        };
        let cfg = config(&c).unwrap();
        assert!(
            cfg.contains(
                "linux '/boot/vmlinuz-6.1' 'root=PARTUUID=ab' 'rw' 'console=ttyS0,115200n8' 'x=$y' \
             'q=a b'\n"
            ),
            "{cfg}"
        );
        let back = BootConfig {
            options: "a=x\\y".into(),
            ..c.clone()
        };
        assert!(config(&back).is_err());
        let back = BootConfig {
            kernel: "/boot/v\\xc3".into(),
            ..c.clone()
        };
        assert!(config(&back).is_err());
        assert!(cfg.contains("search --no-floppy --fs-uuid --set=root '0123'\n"));
        assert!(cfg.ends_with("initrd '/boot/initrd.img-6.1'\nboot\n"));
        let bad = BootConfig {
            options: "a='b'".into(),
            ..c
        };
        assert!(config(&bad).is_err());
    }

    #[test]
    fn patches_boot_img_and_core() {
        let mut boot = vec![0u8; 512];
        boot[0x180..0x186].copy_from_slice(b"GRUB \0");
        boot[0x186..0x18b].copy_from_slice(b"Geom\0");
        boot[0x18b..0x195].copy_from_slice(b"Hard Disk\0");
        boot[510] = 0x55;
        boot[511] = 0xaa;
        let code = boot_code(&boot, "b", 2048).unwrap();
        assert_eq!(code.len(), 440);
        assert_eq!(
            u64::from_le_bytes(code[0x5c..0x64].try_into().unwrap()),
            2048
        );
        assert_eq!(code[0x64], 0xff);
        assert_eq!(&code[0x66..0x68], &[0x90, 0x90]);
        assert!(boot_code(&boot[..511], "b", 1).is_err());
        let mut plain = boot.clone();
        plain[0x180] = b'X';
        assert!(boot_code(&plain, "b", 1).is_err());

        let mut core = vec![0u8; 512 * 3];
        core[510..512].copy_from_slice(&0x820u16.to_le_bytes());
        patch_core(&mut core, 2048).unwrap();
        assert_eq!(u64::from_le_bytes(core[500..508].try_into().unwrap()), 2049);
        assert_eq!(u16::from_le_bytes(core[508..510].try_into().unwrap()), 2);
        core[510] = 0;
        assert!(patch_core(&mut core, 1).is_err());
        assert!(patch_core(&mut [0u8; 100], 1).is_err());
    }
}
