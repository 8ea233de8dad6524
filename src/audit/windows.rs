//! The audit of a Windows volume: what a Windows image must not ship, read offline through the
//! same [`crate::fs::FileSystem`] as the Linux checks (see the [parent module](super) for the
//! list and the severities).
//!
//! Every path here is one Windows uses (`ProgramData/ssh`, `Users`, `Windows/Panther`,
//! `pagefile.sys`…): on a Linux volume none exists, so nothing is found and nothing is a
//! problem. NTFS looks names up without regard to case; the answer files are found by listing
//! their (small) directories and comparing names without regard to case, so that a file system
//! that does respect case (a Linux one, or NTFS names in the POSIX namespace) hides none.

use super::{Finding, Scanner, Severity, join, printable};
use crate::fs::Kind;
use crate::ondisk::regf::{self, Budget, Hive};

/// Largest registry hive read (the SOFTWARE hive of a real Windows Server is 50 to 150 MiB).
pub const MAX_HIVE: u64 = 256 << 20;
/// Most bytes of a page or hibernation file read to tell memory contents from zeros.
pub const MAX_ZERO_SCAN: u64 = 64 << 20;
/// Deepest element nesting of an answer file followed (real ones nest about 8 deep).
const MAX_DEPTH: usize = 64;
/// Most characters of an element's text kept: enough to tell empty, `true`/`false` and
/// Setup's `*SENSITIVE*DATA*DELETED*` apart, never the whole of a long value.
const MAX_CAPTURE: usize = 64;
/// Cloudbase-Init instance ids looked into per base key: an image keeps the ids of the few
/// instances it ran on; more are reported as not audited rather than walked.
const MAX_CLOUDBASE_IDS: usize = 4096;

const FIX_AUTHORIZED_KEY: &str = "remove the key (or the whole file) from the image; give each \
     instance its keys at first boot (user data or the cloud agent) instead";
const FIX_HOST_KEY: &str = "delete C:\\ProgramData\\ssh\\ssh_host_*_key and their .pub files from \
     the image; the OpenSSH server service generates missing host keys when it starts (or run \
     `ssh-keygen -A` at first boot)";
const FIX_UNATTEND: &str = "delete the answer file from the image (or the setting from it), give \
     the password at first boot instead (user data or the cloud agent), and change the password \
     it held wherever it is still used";
const FIX_HISTORY: &str = "delete the file from the image (`Clear-History` does not: it clears \
     only the session's history)";
const FIX_HIBERNATION: &str = "turn hibernation off in the image before capturing it \
     (`powercfg /hibernate off` deletes hiberfil.sys)";
const FIX_PAGE_FILE: &str = "delete the file from the image (Windows makes a new one at boot), \
     or have it cleared at shutdown (policy \"Shutdown: Clear virtual memory pagefile\")";
const FIX_EC2LAUNCH: &str = "run `ec2launch reset` (or `ec2launch sysprep`) as the last step \
     before capturing, or delete C:\\ProgramData\\Amazon\\EC2Launch\\state";
const FIX_CLOUDBASE: &str = "delete the key named here (under HKLM\\SOFTWARE\\Cloudbase \
     Solutions\\Cloudbase-Init) as the last step before capturing the image";

/// The directories Windows Setup searches for an answer file without being told where
/// (Microsoft, "Windows Setup Automation Overview", implicit answer file search order:
/// `%WINDIR%\Panther\Unattend`, `%WINDIR%\Panther`, `%WINDIR%\System32\Sysprep` and the root of
/// the system drive; removable media and `\Sources` are not in an image).
const ANSWER_DIRS: &[&str] = &[
    "/",
    "/Windows/Panther",
    "/Windows/Panther/Unattend",
    "/Windows/System32/Sysprep",
];
/// The directories on the paths this audit reads, looked at for names that differ only in case
/// (each user's profile and its `.ssh` are added as they are found).
const CASE_CHECKED: &[&str] = &[
    "/",
    "/ProgramData",
    "/ProgramData/ssh",
    "/ProgramData/Amazon",
    "/ProgramData/Amazon/EC2Launch",
    EC2LAUNCH_STATE,
    "/Users",
    "/Windows",
    "/Windows/Panther",
    "/Windows/Panther/Unattend",
    "/Windows/System32",
    "/Windows/System32/Sysprep",
    "/Windows/System32/config",
];
/// Most entries listed to look for names that differ only in case: `System32` holds about
/// 20,000 on a real Windows Server, so the audit's own [`super::MAX_ENTRIES`] is too few.
const MAX_CASE_ENTRIES: usize = 200_000;
/// Most pairs of such names shown in one problem line.
const MAX_TWINS_SHOWN: usize = 3;

/// The names Setup looks for in them.
const ANSWER_NAMES: &[&str] = &["unattend.xml", "autounattend.xml"];

/// Where PSReadLine (PowerShell 5.1 and 7) saves a user's command history, under the profile
/// (`(Get-PSReadLineOption).HistorySavePath`).
const PSREADLINE_HISTORY: &str =
    "AppData/Roaming/Microsoft/Windows/PowerShell/PSReadLine/ConsoleHost_history.txt";

/// The EC2Launch v2 state directory and the files in it that record a previous boot.
const EC2LAUNCH_STATE: &str = "/ProgramData/Amazon/EC2Launch/state";

/// What Windows Setup leaves of a password in the copy of an answer file it caches
/// (`%WINDIR%\Panther\unattend.xml`) once the setting was applied.
const REMOVED: &str = "*SENSITIVE*DATA*DELETED*";

impl Scanner<'_> {
    /// The Windows checks, in the order of the module documentation.
    pub(super) fn windows(&mut self) {
        for dir in CASE_CHECKED {
            self.case_twins(dir);
        }
        self.windows_ssh();
        self.answer_files();
        self.memory_files();
        self.ec2launch();
        self.cloudbase_init();
    }

    /// Names in the NTFS directory `dir` that differ only in case (`ProgramData` and
    /// `PROGRAMDATA`): a problem, since the audit reads one of them and which one Windows opens
    /// is not known, so what the other holds was not audited. NTFS allows such names in its
    /// POSIX namespace (ntfs-3g writes them, Windows does in case-sensitive directories); other
    /// file systems are case-sensitive by design and left alone.
    fn case_twins(&mut self, dir: &str) {
        if self.fs.kind() != "ntfs" || self.meta(dir).is_none_or(|m| m.kind != Kind::Dir) {
            return;
        }
        let entries = match self.fs.read_dir(dir, MAX_CASE_ENTRIES) {
            Ok(entries) => entries,
            Err(e) if e.is_not_found() => return,
            Err(e) => return self.fs_problem(&e),
        };
        // NTFS compares names through its $UpCase table, i.e. upper-cased per UTF-16 unit;
        // Unicode's upper-casing stands for it here.
        let mut seen = std::collections::HashMap::with_capacity(entries.len());
        let mut twins = Vec::new();
        for entry in &entries {
            if let Some(first) = seen.insert(entry.name.to_uppercase(), entry.name.as_str()) {
                twins.push(format!("{first:?} and {:?}", entry.name));
            }
        }
        if twins.is_empty() {
            return;
        }
        let more = match twins.len().saturating_sub(MAX_TWINS_SHOWN) {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        twins.truncate(MAX_TWINS_SHOWN);
        self.problem(format!(
            "{dir}: names that differ only in case: {}{more}; Windows opens one of each, \
             which one is not known here, so the other was not audited",
            twins.join(", ")
        ));
    }

    /// OpenSSH for Windows: `administrators_authorized_keys` and the host keys in
    /// `ProgramData/ssh`, and each user's `.ssh` under `Users`.
    fn windows_ssh(&mut self) {
        const SSH: &str = "/ProgramData/ssh";
        if self.meta(SSH).is_some_and(|m| m.kind == Kind::Dir) {
            for entry in self.list(SSH).unwrap_or_default() {
                let name = entry.name.to_ascii_lowercase();
                let path = join(SSH, &entry.name);
                let admin_keys = name == "administrators_authorized_keys";
                let host_key = name.starts_with("ssh_host_") && name.ends_with("_key");
                // The name first: a link elsewhere in the directory is not this audit's concern.
                if !(admin_keys || host_key) || !self.is_file(&path, entry.kind) {
                    continue;
                }
                if admin_keys {
                    self.authorized_keys(&path, FIX_AUTHORIZED_KEY);
                } else {
                    self.host_key(&path, FIX_HOST_KEY);
                }
            }
        }
        const USERS: &str = "/Users";
        if self.meta(USERS).is_none_or(|m| m.kind != Kind::Dir) {
            return;
        }
        // Directories only: `All Users`, `Default User`… are junctions (symlinks here) to
        // directories audited under their own names.
        for entry in self.list(USERS).unwrap_or_default() {
            if entry.kind != Kind::Dir || entry.name.contains(['/', '\0']) {
                continue;
            }
            let home = join(USERS, &entry.name);
            self.case_twins(&home);
            self.powershell_history(&home);
            let ssh = join(&home, ".ssh");
            self.case_twins(&ssh);
            if self.meta(&ssh).is_none_or(|m| m.kind != Kind::Dir) {
                continue;
            }
            for file in self.list(&ssh).unwrap_or_default() {
                let name = file.name.to_ascii_lowercase();
                let path = join(&ssh, &file.name);
                let authorized = name == "authorized_keys";
                let private = name.starts_with("id_") && !name.ends_with(".pub");
                if !(authorized || private) || !self.is_file(&path, file.kind) {
                    continue;
                }
                if authorized {
                    self.authorized_keys(&path, FIX_AUTHORIZED_KEY);
                } else {
                    self.private_key(&path);
                }
            }
        }
    }

    /// Whether the directory entry `path` of kind `kind` is a file to audit: a file, or a
    /// symbolic link (an NTFS reparse point the reader follows) that leads to one, as Windows
    /// opens the file it leads to. A link that cannot be followed is a problem: what it stands
    /// for was not audited. Only the paths of files that matter are asked, so a link to
    /// nowhere elsewhere is no problem.
    fn is_file(&mut self, path: &str, kind: Kind) -> bool {
        match kind {
            Kind::File => true,
            Kind::Symlink => match self.fs.metadata(path) {
                Ok(meta) => meta.kind == Kind::File,
                Err(e) if e.is_not_found() => {
                    self.problem(format!(
                        "{path}: a symbolic link that leads to nothing on this volume; what it \
                         stands for was not audited"
                    ));
                    false
                }
                Err(e) => {
                    self.fs_problem(&e);
                    false
                }
            },
            _ => false,
        }
    }

    /// PSReadLine's command history of the user whose profile is `home`: **low**, as the shell
    /// histories of Linux homes (commands may carry secrets; no way in by itself).
    fn powershell_history(&mut self, home: &str) {
        let path = join(home, PSREADLINE_HISTORY);
        let Some(meta) = self.meta(&path) else {
            return;
        };
        if meta.kind == Kind::File && meta.len > 0 {
            self.find(
                Severity::Low,
                "history",
                &path,
                format!(
                    "a PowerShell history of {} bytes: it may hold secrets typed on command \
                     lines (not shown)",
                    meta.len
                ),
                FIX_HISTORY,
            );
        }
    }

    /// `unattend.xml` and `autounattend.xml` in the directories Setup searches.
    fn answer_files(&mut self) {
        for dir in ANSWER_DIRS {
            if self.meta(dir).is_none_or(|m| m.kind != Kind::Dir) {
                continue;
            }
            for entry in self.list(dir).unwrap_or_default() {
                let named = ANSWER_NAMES
                    .iter()
                    .any(|n| entry.name.eq_ignore_ascii_case(n));
                let path = join(dir, &entry.name);
                if named && self.is_file(&path, entry.kind) {
                    self.answer_file(&path);
                }
            }
        }
    }

    /// The password settings of the answer file at `path`.
    ///
    /// `PlainText` `false` is still **high**: Microsoft's answer files "hide" a password by
    /// storing the base64 of its UTF-16LE text followed by the setting's name (the example of
    /// "Password (microsoft-windows-shell-setup-useraccounts-localaccounts-localaccount-password)"
    /// on learn.microsoft.com decodes to `pwPassword`); that is an encoding anyone reverses in
    /// one command, not encryption. `PlainText` absent is reported as such, and high:
    /// Microsoft's pages give its two values but no default, and either way the password can be
    /// read, as is or from base64. An empty value is **medium** (a password set to
    /// nothing: a way in wherever blank passwords are allowed), and Setup's own
    /// `*SENSITIVE*DATA*DELETED*` (what Setup leaves in the copy it caches after applying the
    /// setting) is no finding.
    fn answer_file(&mut self, path: &str) {
        let Some(bytes) = self.read(path) else {
            return;
        };
        let text = decode_text(&bytes);
        drop(bytes);
        let mut found = Vec::new();
        for p in unattend_passwords(&text) {
            let (severity, what) = match p.form {
                Form::Removed => continue,
                Form::Empty => (Severity::Medium, "sets an empty password".to_owned()),
                Form::PlainText => (
                    Severity::High,
                    "holds a password in plain text (not shown)".to_owned(),
                ),
                Form::Unspecified => (
                    Severity::High,
                    "holds a password, as given: no PlainText setting (not shown)".to_owned(),
                ),
                Form::Encoded => (
                    Severity::High,
                    "holds a password \"hidden\" with PlainText false: base64, which anyone can \
                     decode (not shown)"
                        .to_owned(),
                ),
            };
            found.push(Finding {
                severity,
                code: "unattend-password",
                path: path.to_owned(),
                message: format!("line {}: {} {what}", p.line, p.setting),
                fix: FIX_UNATTEND.to_owned(),
            });
        }
        self.find_capped(path, found);
    }

    /// `hiberfil.sys`, `pagefile.sys` and `swapfile.sys` at the root.
    ///
    /// Each holds memory of the machine the image was made from (`swapfile.sys` the working
    /// sets of suspended Store apps): **medium**, as secrets may be among it, whatever its size.
    /// A file whose every byte reads as zero holds no memory (Windows zeroes the page file at
    /// shutdown when told to): **info**, since it only costs space. Up to [`MAX_ZERO_SCAN`]
    /// bytes are read to tell; a larger file of zeros cannot be told from one with data
    /// further on, so it stays medium, and the message says what was read.
    fn memory_files(&mut self) {
        for (name, code, what, fix) in [
            (
                "hiberfil.sys",
                "hibernation-file",
                "a hibernation file",
                FIX_HIBERNATION,
            ),
            ("pagefile.sys", "page-file", "a page file", FIX_PAGE_FILE),
            (
                "swapfile.sys",
                "page-file",
                "a swap file (Store apps' memory)",
                FIX_PAGE_FILE,
            ),
        ] {
            let path = format!("/{name}");
            let Some(meta) = self.meta(&path) else {
                continue;
            };
            if meta.kind != Kind::File || meta.len == 0 {
                continue;
            }
            let size = size_text(meta.len);
            let (severity, message) = match self.first_data(&path, meta.len) {
                None => continue,
                Some(Scan::Data(at)) => (
                    Severity::Medium,
                    format!(
                        "{what} of {size}, with data from byte {at}: memory contents of the \
                         machine the image was made from, which may hold secrets; it also \
                         makes the image needlessly large"
                    ),
                ),
                Some(Scan::ZerosFor(read)) => (
                    Severity::Medium,
                    format!(
                        "{what} of {size}; its first {} read as zeros, the rest was not read: \
                         it may hold memory contents of the machine the image was made from",
                        size_text(read)
                    ),
                ),
                Some(Scan::Zeros) => (
                    Severity::Info,
                    format!(
                        "{what} of {size} that holds only zeros: no memory contents, but it \
                         makes the image needlessly large"
                    ),
                ),
            };
            self.find(severity, code, &path, message, fix);
        }
    }

    /// Where the file at `path` (of `len` bytes) first holds a byte that is not zero, within
    /// [`MAX_ZERO_SCAN`] bytes (the scan's limit); `None` if it cannot be read (a problem).
    fn first_data(&mut self, path: &str, len: u64) -> Option<Scan> {
        const CHUNK: usize = 1 << 20;
        let mut buf = vec![0u8; CHUNK];
        let end = len.min(self.limits.zero_scan);
        let mut at = 0u64;
        while at < end {
            let want = usize::try_from(end - at).map_or(CHUNK, |n| n.min(CHUNK));
            let got = match self.fs.read_at(path, at, &mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    self.fs_problem(&e);
                    return None;
                }
            };
            if let Some(i) = buf[..got].iter().position(|&b| b != 0) {
                return Some(Scan::Data(at + i as u64));
            }
            at += got as u64;
        }
        Some(if at < len {
            Scan::ZerosFor(at)
        } else {
            Scan::Zeros
        })
    }

    /// EC2Launch v2's record of a previous boot in `ProgramData/Amazon/EC2Launch/state`.
    ///
    /// `.run-once` is what stops the tasks of frequency `once` (among them setting the
    /// administrator password) on later boots: AWS's "Reset the Windows administrator password
    /// using EC2Launch v2" deletes it so that they run again. `state.json` is the agent's state
    /// of the boot stages; `ec2launch reset` deletes both. Either left in an image: **medium**,
    /// an instance made from it skips what a first boot does.
    fn ec2launch(&mut self) {
        if self
            .meta(EC2LAUNCH_STATE)
            .is_none_or(|m| m.kind != Kind::Dir)
        {
            return;
        }
        for entry in self.list(EC2LAUNCH_STATE).unwrap_or_default() {
            let name = entry.name.to_ascii_lowercase();
            let what = match name.as_str() {
                ".run-once" => {
                    "EC2Launch v2's mark that its first-boot (frequency once) tasks have run, \
                     setting the administrator password among them: instances made from the \
                     image would skip them"
                }
                "state.json" => {
                    "EC2Launch v2's state of the boots it ran (`ec2launch reset` deletes it \
                     with .run-once): instances made from the image would inherit it"
                }
                _ => continue,
            };
            if entry.kind == Kind::Dir {
                continue;
            }
            let path = join(EC2LAUNCH_STATE, &entry.name);
            self.find(
                Severity::Medium,
                "cloud-agent-state",
                &path,
                what.to_owned(),
                FIX_EC2LAUNCH,
            );
        }
    }

    /// Cloudbase-Init's plugin state in the SOFTWARE hive.
    ///
    /// Cloudbase-Init records each plugin it ran as a value under
    /// `HKLM\SOFTWARE\Cloudbase Solutions\Cloudbase-Init\<instance id>\Plugins`, or under
    /// `…\Cloudbase-Init\Plugins` when the metadata service gives no instance id
    /// (`InitManager._get_plugins_section` in cloudbaseinit/init.py, key from
    /// `WindowsUtils._config_key`), and skips a plugin whose state says done ("Plugins" in its
    /// documentation: the MAIN stage plugins "are (re)executed according to their saved
    /// status"). State without an instance id applies to every instance: **medium**. State
    /// kept for an instance id only stops the plugins of an instance with that same id, so a
    /// new instance runs them again: **low**, left over from the build (it names the build
    /// instance), not a first boot skipped.
    ///
    /// A hive that exists but cannot be read is a problem: this part was not audited. So are
    /// more than [`MAX_CLOUDBASE_IDS`] instance ids under one base key, and a hive whose keys
    /// here take more cells than one lookup's budget (shared by the whole check).
    fn cloudbase_init(&mut self) {
        const SOFTWARE: &str = "/Windows/System32/config/SOFTWARE";
        // Cloudbase-Init's installer is 64-bit; a 32-bit one on 64-bit Windows writes under
        // Wow6432Node.
        const BASES: [&[&str]; 2] = [
            &["Cloudbase Solutions", "Cloudbase-Init"],
            &["Wow6432Node", "Cloudbase Solutions", "Cloudbase-Init"],
        ];
        let Some(meta) = self.meta(SOFTWARE) else {
            return;
        };
        if meta.kind != Kind::File {
            return;
        }
        let bytes = match self.fs.read_to_vec(SOFTWARE, self.limits.hive) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.problem(format!(
                    "{SOFTWARE}: cannot read the registry hive, Cloudbase-Init state not \
                     audited: {e}"
                ));
                return;
            }
        };
        let hive = match Hive::parse(&bytes) {
            Ok(hive) => hive,
            Err(e) => {
                self.problem(format!("{SOFTWARE}: Cloudbase-Init state not audited: {e}"));
                return;
            }
        };
        // One budget of cells for the whole check, both bases included: Wow6432Node may lead
        // to the same cells as the 64-bit key, and each instance id is looked into from its
        // own key, not from the root again, so the work grows with the hive, not its square.
        let mut budget = Budget::new();
        let mut found = Vec::new();
        for base in BASES {
            let key_name = base.join("\\");
            let not_audited = |e: regf::Error| {
                format!("{SOFTWARE}: {key_name}: Cloudbase-Init state not audited: {e}")
            };
            let ids = match hive.key_at(base, &mut budget) {
                Ok(None) => Vec::new(),
                Ok(Some(key)) => match hive.subkeys_of(key, &mut budget) {
                    Ok(ids) => ids,
                    Err(e) => {
                        self.problem(not_audited(e));
                        continue;
                    }
                },
                Err(e) => {
                    self.problem(not_audited(e));
                    continue;
                }
            };
            let mut examined = 0;
            for (id, key) in &ids {
                if id.eq_ignore_ascii_case("Plugins") {
                    found.push(Finding {
                        severity: Severity::Medium,
                        code: "cloud-agent-state",
                        path: SOFTWARE.to_owned(),
                        message: format!(
                            "SOFTWARE\\{key_name}\\Plugins: Cloudbase-Init's record of the \
                             plugins it ran, kept without an instance id, so for every \
                             instance: instances made from the image would skip them"
                        ),
                        fix: FIX_CLOUDBASE.to_owned(),
                    });
                    continue;
                }
                if examined == MAX_CLOUDBASE_IDS {
                    // A real image keeps the ids of the few instances it ran on; thousands are
                    // a hostile hive, and what the rest hold was not looked at.
                    self.problem(format!(
                        "{SOFTWARE}: {key_name}: {} instance ids, only the first \
                         {MAX_CLOUDBASE_IDS} audited: Cloudbase-Init state not audited in full",
                        ids.len()
                    ));
                    break;
                }
                examined += 1;
                let plugins = match hive.subkey(*key, "Plugins", &mut budget) {
                    Ok(plugins) => plugins.is_some(),
                    Err(regf::Error::Budget) => {
                        self.problem(not_audited(regf::Error::Budget));
                        break;
                    }
                    Err(e) => {
                        self.problem(format!(
                            "{SOFTWARE}: {key_name}\\{}: not audited: {e}",
                            printable(id, 64)
                        ));
                        continue;
                    }
                };
                if plugins {
                    found.push(Finding {
                        severity: Severity::Low,
                        code: "cloud-agent-state",
                        path: SOFTWARE.to_owned(),
                        message: format!(
                            "SOFTWARE\\{key_name}\\{}\\Plugins: Cloudbase-Init's record of the \
                             plugins it ran on instance {:?} (the one the image was made on); \
                             an instance with another id runs them again",
                            printable(id, 64),
                            printable(id, 64)
                        ),
                        fix: FIX_CLOUDBASE.to_owned(),
                    });
                }
            }
        }
        self.find_capped(SOFTWARE, found);
    }
}

/// How much of a file read as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// The first byte that is not zero is at this offset.
    Data(u64),
    /// This many bytes (fewer than the file's) were read, all zeros.
    ZerosFor(u64),
    /// The whole file is zeros.
    Zeros,
}

/// `len` bytes in the largest binary unit that keeps it at least 1.
fn size_text(len: u64) -> String {
    const UNITS: [&str; 4] = ["bytes", "KiB", "MiB", "GiB"];
    let mut value = len as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{len} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The text of a file that may be UTF-16 (with a byte order mark, or starting with `<` as
/// UTF-16) or UTF-8 (with or without a mark); bytes that do not decode are replaced.
pub(crate) fn decode_text(bytes: &[u8]) -> String {
    let utf16 = |data: &[u8], big: bool| {
        let units: Vec<u16> = data
            .chunks_exact(2)
            .map(|c| {
                if big {
                    u16::from_be_bytes([c[0], c[1]])
                } else {
                    u16::from_le_bytes([c[0], c[1]])
                }
            })
            .collect();
        String::from_utf16_lossy(&units)
    };
    match bytes {
        [0xff, 0xfe, rest @ ..] => utf16(rest, false),
        [0xfe, 0xff, rest @ ..] => utf16(rest, true),
        [0xef, 0xbb, 0xbf, rest @ ..] => String::from_utf8_lossy(rest).into_owned(),
        [b'<', 0, ..] => utf16(bytes, false),
        [0, b'<', ..] => utf16(bytes, true),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// How an answer file gives a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// `PlainText` `true`, or a setting that is a bare string (`Credentials/Password`).
    PlainText,
    /// `PlainText` `false`: base64 of the UTF-16LE password and the setting's name.
    Encoded,
    /// A `Value` without any `PlainText`.
    Unspecified,
    /// No value, or an empty one.
    Empty,
    /// Setup's `*SENSITIVE*DATA*DELETED*`.
    Removed,
}

/// A password setting of an answer file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AnswerPassword {
    /// The line its element starts on, from 1.
    pub line: usize,
    /// `AdministratorPassword`, `AutoLogon/Password`, `LocalAccount/Password`…: the element's
    /// name, and its parent's for a plain `Password`.
    pub setting: String,
    /// How the value is given.
    pub form: Form,
}

/// A password element being read.
struct Open {
    setting: String,
    line: usize,
    /// The stack depth with the element on it.
    depth: usize,
    value: Option<String>,
    plain: Option<String>,
    direct: String,
}

impl Open {
    fn finish(self) -> AnswerPassword {
        let (text, bare) = match &self.value {
            Some(v) => (v.trim(), false),
            None => (self.direct.trim(), true),
        };
        let form = if text.is_empty() {
            Form::Empty
        } else if text == REMOVED {
            Form::Removed
        } else {
            match self.plain.as_deref().map(str::trim) {
                Some(p) if p.eq_ignore_ascii_case("false") => Form::Encoded,
                Some(_) => Form::PlainText,
                None if bare => Form::PlainText,
                None => Form::Unspecified,
            }
        };
        AnswerPassword {
            line: self.line,
            setting: self.setting,
            form,
        }
    }
}

/// Appends at most [`MAX_CAPTURE`] characters of `text` to `to`.
fn capture(to: &mut String, text: &str) {
    let room = MAX_CAPTURE.saturating_sub(to.chars().count());
    to.extend(text.chars().take(room));
}

/// The name of an element without its namespace prefix (`wcm:action` → `action`).
fn local(name: &str) -> &str {
    name.rsplit(':').next().unwrap_or(name)
}

/// Whether an element of this (local) name holds a password: `Password`,
/// `AdministratorPassword`, `OfflineAdministratorPassword`, `MachinePassword`…
fn is_password(name: &str) -> bool {
    name.len() >= 8
        && name
            .get(name.len() - 8..)
            .is_some_and(|end| end.eq_ignore_ascii_case("password"))
}

/// The password settings of an answer file's text, in order.
///
/// A small tolerant scanner, not an XML parser: it follows start and end tags (namespace
/// prefixes dropped, names compared without regard to case), skips comments, processing
/// instructions and declarations, reads CDATA as text, closes what a mismatched end tag leaves
/// open, and reports a password element still open at the end of a cut file. The nesting is
/// bounded ([`MAX_DEPTH`]), and of an element's text only [`MAX_CAPTURE`] characters are kept,
/// never shown.
pub(crate) fn unattend_passwords(text: &str) -> Vec<AnswerPassword> {
    let mut out = Vec::new();
    let mut stack: Vec<String> = Vec::new();
    // Elements opened deeper than MAX_DEPTH, counted but not named.
    let mut deeper = 0usize;
    let mut open: Option<Open> = None;
    let mut line = 1usize;
    let mut rest = text;
    // Text of the current element, routed to the open password element if it is its text or
    // that of its `Value` or `PlainText`.
    let on_text = |open: &mut Option<Open>, stack: &[String], deeper: usize, t: &str| {
        let Some(o) = open.as_mut() else {
            return;
        };
        if deeper > 0 {
            return;
        }
        if stack.len() == o.depth {
            capture(&mut o.direct, t);
        } else if stack.len() == o.depth + 1 {
            let top = stack.last().map(String::as_str).unwrap_or_default();
            if top.eq_ignore_ascii_case("Value") {
                capture(o.value.get_or_insert_with(String::new), t);
            } else if top.eq_ignore_ascii_case("PlainText") {
                capture(o.plain.get_or_insert_with(String::new), t);
            }
        }
    };
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            on_text(&mut open, &stack, deeper, rest);
            break;
        };
        let (before, at) = rest.split_at(lt);
        on_text(&mut open, &stack, deeper, before);
        line += before.matches('\n').count();
        // A construct that ends with `end` after `skip` bytes; its text is `(start, len)`.
        let skip_to = |at: &str, skip: usize, end: &str| -> (usize, usize) {
            match at.get(skip..).and_then(|r| r.find(end)) {
                Some(i) => (skip + i + end.len(), i),
                None => (at.len(), at.len().saturating_sub(skip)),
            }
        };
        let consumed = if at.starts_with("<!--") {
            skip_to(at, 4, "-->").0
        } else if at.starts_with("<![CDATA[") {
            let (n, len) = skip_to(at, 9, "]]>");
            let inner = at.get(9..9 + len).unwrap_or_default();
            on_text(&mut open, &stack, deeper, inner);
            n
        } else if at.starts_with("<?") {
            skip_to(at, 2, "?>").0
        } else if at.starts_with("<!") {
            skip_to(at, 2, ">").0
        } else {
            // A tag: up to the first `>` outside quotes.
            let mut quote = None;
            let mut end = at.len();
            for (i, c) in at.char_indices().skip(1) {
                match (quote, c) {
                    (Some(q), c) if c == q => quote = None,
                    (Some(_), _) => {}
                    (None, '"' | '\'') => quote = Some(c),
                    (None, '>') => {
                        end = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
            let tag = at.get(1..end).unwrap_or_default().trim_end_matches('>');
            let closing = tag.starts_with('/');
            let body = tag.trim_start_matches('/');
            let empty = body.ends_with('/');
            let name_end = body
                .find(|c: char| c.is_whitespace() || c == '/')
                .unwrap_or(body.len());
            let name = local(body.get(..name_end).unwrap_or_default());
            if closing {
                if deeper > 0 {
                    deeper -= 1;
                } else if let Some(i) = stack.iter().rposition(|n| n.eq_ignore_ascii_case(name)) {
                    stack.truncate(i);
                    if open.as_ref().is_some_and(|o| stack.len() < o.depth) {
                        out.extend(open.take().map(Open::finish));
                    }
                }
            } else if !name.is_empty() {
                if stack.len() >= MAX_DEPTH {
                    if !empty {
                        deeper += 1;
                    }
                } else {
                    let parent = stack.last().cloned().unwrap_or_default();
                    stack.push(name.chars().take(64).collect());
                    if open.is_none() && is_password(name) {
                        let setting = if name.eq_ignore_ascii_case("Password") && !parent.is_empty()
                        {
                            format!("{}/{}", printable(&parent, 64), printable(name, 64))
                        } else {
                            printable(name, 64)
                        };
                        open = Some(Open {
                            setting,
                            line,
                            depth: stack.len(),
                            value: None,
                            plain: None,
                            direct: String::new(),
                        });
                    } else if empty
                        && open.as_ref().is_some_and(|o| stack.len() == o.depth + 1)
                        && name.eq_ignore_ascii_case("Value")
                    {
                        // `<Value/>`: a value given, empty.
                        if let Some(o) = open.as_mut() {
                            o.value.get_or_insert_with(String::new);
                        }
                    }
                    if empty {
                        stack.pop();
                        if open.as_ref().is_some_and(|o| stack.len() < o.depth) {
                            out.extend(open.take().map(Open::finish));
                        }
                    }
                }
            }
            end
        };
        let (taken, after) = at.split_at(consumed.min(at.len()));
        line += taken.matches('\n').count();
        rest = after;
    }
    out.extend(open.take().map(Open::finish));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forms(text: &str) -> Vec<(usize, String, Form)> {
        unattend_passwords(text)
            .into_iter()
            .map(|p| (p.line, p.setting, p.form))
            .collect()
    }

    const ANSWER: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<!-- <AdministratorPassword><Value>in-a-comment</Value></AdministratorPassword> -->
<unattend xmlns="urn:schemas-microsoft-com:unattend">
  <settings pass="oobeSystem">
    <component name="Microsoft-Windows-Shell-Setup" xmlns:wcm="http://schemas.microsoft.com/WMIConfig/2002/State">
      <AutoLogon>
        <Password>
          <Value>Aut0L0gon!</Value>
          <PlainText>true</PlainText>
        </Password>
        <Username>Administrator</Username>
      </AutoLogon>
      <UserAccounts>
        <AdministratorPassword>
          <Value>cABhAHMAcwB3AG8AcgBkAEEAZABtAGkAbgBpAHMAdAByAGEAdABvAHIAUABhAHMAcwB3AG8AcgBkAA==</Value>
          <PlainText>false</PlainText>
        </AdministratorPassword>
        <LocalAccounts>
          <LocalAccount wcm:action="add">
            <wcm:Password><wcm:Value><![CDATA[L0cal>Secret]]></wcm:Value></wcm:Password>
            <Name>ops</Name>
          </LocalAccount>
          <LocalAccount wcm:action="add">
            <Password><Value>*SENSITIVE*DATA*DELETED*</Value><PlainText>true</PlainText></Password>
          </LocalAccount>
          <LocalAccount wcm:action="add"><Password><Value/><PlainText>true</PlainText></Password></LocalAccount>
        </LocalAccounts>
      </UserAccounts>
    </component>
    <component name="Microsoft-Windows-UnattendedJoin">
      <Identification><Credentials><Password>J0in Secret</Password></Credentials></Identification>
    </component>
  </settings>
</unattend>
"#;

    #[test]
    fn finds_each_password_setting_and_its_form() {
        assert_eq!(
            forms(ANSWER),
            [
                (7, "AutoLogon/Password".to_owned(), Form::PlainText),
                (14, "AdministratorPassword".to_owned(), Form::Encoded),
                (20, "LocalAccount/Password".to_owned(), Form::Unspecified),
                (24, "LocalAccount/Password".to_owned(), Form::Removed),
                (26, "LocalAccount/Password".to_owned(), Form::Empty),
                (31, "Credentials/Password".to_owned(), Form::PlainText),
            ]
        );
    }

    #[test]
    fn reads_utf16_answer_files() {
        let mut le = vec![0xff, 0xfe];
        le.extend(ANSWER.encode_utf16().flat_map(u16::to_le_bytes));
        let mut be = vec![0xfe, 0xff];
        be.extend(ANSWER.encode_utf16().flat_map(u16::to_be_bytes));
        let bare: Vec<u8> = ANSWER.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let mut bom8 = vec![0xef, 0xbb, 0xbf];
        bom8.extend(ANSWER.as_bytes());
        let want = forms(ANSWER);
        for bytes in [le, be, bare, bom8] {
            assert_eq!(forms(&decode_text(&bytes)), want);
        }
    }

    #[test]
    fn tolerates_damaged_answer_files() {
        // Cut inside the value: the open setting is still reported.
        let cut = &ANSWER[..ANSWER.find("Aut0L0gon!").unwrap() + 3];
        assert_eq!(
            forms(cut),
            [(7, "AutoLogon/Password".to_owned(), Form::Unspecified)]
        );
        // A mismatched end tag closes what it leaves open.
        let text = "<a><AdministratorPassword><Value>x</Value></a><b><Password>y</Password></b>";
        assert_eq!(
            forms(text),
            [
                (1, "AdministratorPassword".to_owned(), Form::Unspecified),
                (1, "b/Password".to_owned(), Form::PlainText),
            ]
        );
        // Nesting past MAX_DEPTH is followed without names, and the rest still read.
        let deep = format!(
            "{}{}<Password>z</Password>",
            "<d>".repeat(MAX_DEPTH + 10),
            "</d>".repeat(MAX_DEPTH + 10)
        );
        assert_eq!(forms(&deep), [(1, "Password".to_owned(), Form::PlainText)]);
        // Every prefix and arbitrary bytes: no panic.
        for end in 0..ANSWER.len() {
            if ANSWER.is_char_boundary(end) {
                let _ = unattend_passwords(&ANSWER[..end]);
            }
        }
        for text in [
            "<",
            "<!--",
            "<![CDATA[",
            "</",
            "<a b='>",
            "<<>>",
            "<?",
            "<!x",
        ] {
            let _ = unattend_passwords(text);
        }
        // Random sequences of XML pieces and multi-byte characters: no panic, and every
        // setting reported is a password element's.
        const PIECES: &[&str] = &[
            "<",
            ">",
            "/",
            "</",
            "/>",
            "<!--",
            "-->",
            "<![CDATA[",
            "]]>",
            "<?",
            "?>",
            "<!",
            "\"",
            "'",
            "=",
            " ",
            "\n",
            "Password",
            "AdministratorPassword",
            "Value",
            "PlainText",
            "wcm:",
            "true",
            "false",
            "é",
            "😀",
            "*SENSITIVE*DATA*DELETED*",
            "x",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..(seed % 40) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.push_str(PIECES[(seed % PIECES.len() as u64) as usize]);
            }
            for p in unattend_passwords(&text) {
                assert!(
                    is_password(p.setting.rsplit('/').next().unwrap()),
                    "{text:?}"
                );
            }
        }
    }

    #[test]
    fn sizes_are_readable() {
        assert_eq!(size_text(0), "0 bytes");
        assert_eq!(size_text(1023), "1023 bytes");
        assert_eq!(size_text(1536), "1.5 KiB");
        assert_eq!(size_text(8 << 30), "8.0 GiB");
    }
}
