//! Auditing a root file system for what must not ship in a machine image: SSH keys that would let
//! somebody in, passwords, host keys and identities that every instance would share, histories
//! and cloud-init state left by the instance the image was made from.
//!
//! [`scan`] reads the file system through [`FileSystem`], without mounting it, and never fails as
//! a whole: what it finds goes in [`Audit::findings`], what it could not read in
//! [`Audit::problems`], one line each, and the rest of the audit still runs.
//!
//! The file system is hostile: every read is bounded ([`MAX_TEXT`], [`MAX_ENTRIES`]), symlinks
//! are followed only by the [`FileSystem`] (which bounds their chains), and the number of
//! findings per file and of problems is capped. No finding shows a secret: keys are shown by
//! their SHA256 fingerprint, password hashes by their scheme, histories by their size; a line
//! that does not parse is shown by its number, never its content.
//!
//! What is looked at, and why each severity (finding codes in parentheses):
//! - keys in `authorized_keys` and `authorized_keys2` of `/root`, of each directory of `/home`
//!   and of each home directory in `/etc/passwd` — **high** for every user, not only root: a key
//!   nobody expects in an image is a backdoor into every instance, and the default user of a
//!   cloud image usually has password-less `sudo` (`ssh-authorized-key`); a line that is not
//!   a key is **medium** (`ssh-authorized-keys-invalid-line`);
//! - SSH private keys `~/.ssh/id_*` — **high**, **medium** when encrypted or in no known format
//!   (`ssh-private-key`);
//! - `/etc/shadow`: an empty password field (a login without password) is **high**
//!   (`shadow-empty-password`), so is a usable hash of a uid-0 user (`shadow-root-password`);
//!   another user's usable hash is **medium** (`shadow-password`), a locked hash still in the
//!   file **info** (`locked-password-hash`); the same for password fields of `/etc/passwd` that
//!   do not point to `/etc/shadow` (`passwd-empty-password`, `passwd-password`); hashes in the
//!   backup `/etc/shadow-` are **low** (`shadow-backup`);
//! - SSH host private keys `/etc/ssh/ssh_host_*_key` — **medium**: every instance would share
//!   them (`ssh-host-key`);
//! - a populated `/etc/machine-id` — **medium**: instances would share journal and DHCP
//!   identities (`machine-id`); a `/var/lib/dbus/machine-id` that is a file rather than a
//!   symlink — **low** (`dbus-machine-id`);
//! - non-empty shell and tool histories in the same home directories — **low**: they may hold
//!   secrets typed on command lines, but are no way in by themselves (`history`);
//! - cloud-init state of a previous instance in `/var/lib/cloud` — **medium**
//!   (`cloud-init-instance`);
//! - over [`MAX_PER_FILE`] findings in one file: the rest summed up in one (`more-findings`).
//!
//! On a Windows volume (paths looked up without regard to case, as NTFS does; none of them
//! exists on a Linux volume):
//! - OpenSSH for Windows: keys in `ProgramData/ssh/administrators_authorized_keys` and in
//!   `Users/*/.ssh/authorized_keys` — **high** (`ssh-authorized-key`, and
//!   `ssh-authorized-keys-invalid-line` as above); private keys `Users/*/.ssh/id_*` as above
//!   (`ssh-private-key`); host private keys `ProgramData/ssh/ssh_host_*_key` — **medium**
//!   (`ssh-host-key`);
//! - answer files `unattend.xml` / `autounattend.xml` where Setup looks for them
//!   (`Windows/Panther/Unattend`, `Windows/Panther`, `Windows/System32/Sysprep`, the root) that
//!   hold a password setting (`AdministratorPassword`, `AutoLogon/Password`,
//!   `LocalAccount/Password`, `Credentials/Password`…), UTF-8 or UTF-16 — **high** in plain text
//!   and also with `PlainText` `false` (base64, not encryption), **medium** when empty; the
//!   finding names the setting and its line, never the value; Setup's own
//!   `*SENSITIVE*DATA*DELETED*` is no finding (`unattend-password`);
//! - PowerShell's command history `Users/*/AppData/Roaming/Microsoft/Windows/PowerShell/
//!   PSReadLine/ConsoleHost_history.txt`, not empty — **low**, as the shell histories above
//!   (`history`);
//! - `hiberfil.sys` (`hibernation-file`), `pagefile.sys` and `swapfile.sys` (`page-file`) at
//!   the root — **medium**: memory of the machine the image was made from, and needless size;
//!   **info** when the file reads as zeros only (checked up to [`MAX_ZERO_SCAN`] bytes);
//! - cloud agent state (`cloud-agent-state`): EC2Launch v2's `ProgramData/Amazon/EC2Launch/
//!   state/.run-once` and `state.json` — **medium**, instances would skip first-boot tasks;
//!   Cloudbase-Init's plugin state in the SOFTWARE hive (`Cloudbase Solutions\Cloudbase-Init`)
//!   — **medium** when kept without an instance id (it applies to every instance), **low** when
//!   kept for the build instance's id (another id runs the plugins again). A SOFTWARE hive
//!   that cannot be read (damaged, dirty, over [`MAX_HIVE`]) is a problem, not a clean result;
//! - names that differ only in case in a directory on those paths (NTFS's POSIX namespace allows
//!   `ProgramData` next to `PROGRAMDATA`): a problem, since only one of them is read.

pub mod image;
mod password;
mod ssh;
mod windows;
pub use windows::{MAX_HIVE, MAX_ZERO_SCAN};

use crate::fs::{self, FileSystem, Kind};
use password::Password;
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// Largest text file read (`authorized_keys`, `/etc/shadow`, keys…), in bytes.
pub const MAX_TEXT: u64 = 1 << 20;
/// Most entries read from one directory (`/home`, `/etc/ssh`…), and most home directories
/// audited.
pub const MAX_ENTRIES: usize = 10_000;
/// Most findings kept for one file; the rest are summed up in one more finding.
pub const MAX_PER_FILE: usize = 100;
/// Most problem lines kept; the rest are counted in one more line.
const MAX_PROBLEMS: usize = 100;

/// How serious a finding is, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing, no action needed.
    Info,
    /// Leaks information, but is no way in.
    Low,
    /// Shared by every instance, or may be a way in.
    Medium,
    /// A way into every instance, or a credential given away.
    High,
}

impl Severity {
    /// Every severity, from least to most.
    pub const ALL: [Severity; 4] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
    ];

    /// The lowercase name: `info`, `low`, `medium` or `high`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A name that is not a [`Severity`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown severity {0:?}: expected info, low, medium or high")]
pub struct ParseSeverityError(String);

impl FromStr for Severity {
    type Err = ParseSeverityError;

    /// Reads `info`, `low`, `medium` or `high` (in any case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseSeverityError(s.to_owned()))
    }
}

/// Something in the image that should not ship.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// How serious it is.
    pub severity: Severity,
    /// A stable kebab-case identifier of the kind of finding (`ssh-authorized-key`…).
    pub code: &'static str,
    /// The path in the file system it is about.
    pub path: String,
    /// What was found, in one line, without any secret.
    pub message: String,
    /// What to do about it, in one line.
    pub fix: String,
}

/// What [`scan`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Audit {
    /// The findings, sorted by path, then code (then in the order found).
    pub findings: Vec<Finding>,
    /// What could not be read, one line each; those parts were not audited.
    pub problems: Vec<String>,
}

impl Audit {
    /// The most serious finding's severity; `None` without findings.
    pub fn highest(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    /// How many findings have `severity`.
    pub fn count(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity)
            .count()
    }
}

/// Audits the root file system `fs`: see the [module documentation](self) for what is looked at.
pub fn scan(fs: &dyn FileSystem) -> Audit {
    scan_with(fs, &Limits::DEFAULT)
}

/// The bounds of a scan; tests make them small.
#[derive(Debug, Clone, Copy)]
struct Limits {
    text: u64,
    entries: usize,
    per_file: usize,
    problems: usize,
    /// Largest registry hive read.
    hive: u64,
    /// Most bytes of a page or hibernation file read to tell data from zeros.
    zero_scan: u64,
}

impl Limits {
    const DEFAULT: Limits = Limits {
        text: MAX_TEXT,
        entries: MAX_ENTRIES,
        per_file: MAX_PER_FILE,
        problems: MAX_PROBLEMS,
        hive: MAX_HIVE,
        zero_scan: MAX_ZERO_SCAN,
    };
}

fn scan_with(fs: &dyn FileSystem, limits: &Limits) -> Audit {
    let mut s = Scanner {
        fs,
        limits: *limits,
        findings: Vec::new(),
        problems: Vec::new(),
        dropped_problems: 0,
    };
    let accounts = s.passwd();
    s.shadow(&accounts.roots);
    s.shadow_backup();
    s.homes(accounts.homes);
    s.host_keys();
    s.machine_id();
    s.cloud_init();
    s.windows();
    s.finish()
}

/// The shell and tool histories looked for in home directories.
pub(crate) const HISTORIES: &[&str] = &[
    ".bash_history",
    ".zsh_history",
    ".sh_history",
    ".ash_history",
    ".python_history",
    ".mysql_history",
    ".psql_history",
    ".lesshst",
    ".viminfo",
];

const FIX_AUTHORIZED_KEY: &str = "remove the key (or the whole file) from the image; cloud-init \
     installs the launch key pair at first boot";
const FIX_INVALID_LINE: &str = "remove the line (or the whole file) from the image";
const FIX_PRIVATE_KEY: &str = "delete the key and its .pub from the image; a key an instance \
     needs belongs in a secret store or in user data, not in the image";
const FIX_HOST_KEY: &str = "delete /etc/ssh/ssh_host_*_key and their .pub files from the image; \
     cloud-init (or `ssh-keygen -A` at boot) makes new ones on each instance";
const FIX_MACHINE_ID: &str = "empty the file (`truncate -s 0 /etc/machine-id`): systemd makes a \
     new machine id at first boot";
const FIX_DBUS_MACHINE_ID: &str = "delete the file, or make it a symlink to /etc/machine-id";
const FIX_HISTORY: &str = "delete the file from the image";
const FIX_CLOUD_INIT: &str = "run `cloud-init clean --logs` in the image (or delete \
     /var/lib/cloud/instance and /var/lib/cloud/instances/*)";
const FIX_LOCKED_HASH: &str = "replace the hash with `*` (`usermod -p '*' USER`) if the password \
     is never to be restored";
const FIX_SHADOW_BACKUP: &str = "delete /etc/shadow- from the image (the next password change \
     makes a new backup)";

/// What `/etc/passwd` says that the rest of the scan needs.
#[derive(Debug, Default)]
struct Accounts {
    /// The users of uid 0 (`root`, and any other), always with `root`.
    roots: BTreeSet<String>,
    /// Home directories, normalised, as listed.
    homes: Vec<String>,
}

struct Scanner<'a> {
    fs: &'a dyn FileSystem,
    limits: Limits,
    findings: Vec<Finding>,
    problems: Vec<String>,
    dropped_problems: usize,
}

impl Scanner<'_> {
    fn finish(mut self) -> Audit {
        self.findings
            .sort_by(|a, b| a.path.cmp(&b.path).then(a.code.cmp(b.code)));
        if self.dropped_problems > 0 {
            self.problems
                .push(format!("… and {} more problems", self.dropped_problems));
        }
        Audit {
            findings: self.findings,
            problems: self.problems,
        }
    }

    fn problem(&mut self, line: String) {
        if self.problems.len() < self.limits.problems {
            self.problems.push(line.replace(['\n', '\r'], " "));
        } else {
            self.dropped_problems += 1;
        }
    }

    fn fs_problem(&mut self, e: &fs::Error) {
        self.problem(e.to_string());
    }

    fn find(
        &mut self,
        severity: Severity,
        code: &'static str,
        path: &str,
        message: String,
        fix: &str,
    ) {
        self.findings.push(Finding {
            severity,
            code,
            path: path.to_owned(),
            message,
            fix: fix.to_owned(),
        });
    }

    /// Adds the findings of one file, the first `per_file` of them and one that sums up the rest.
    fn find_capped(&mut self, path: &str, mut found: Vec<Finding>) {
        if found.len() > self.limits.per_file {
            let rest = found.split_off(self.limits.per_file);
            let severity = rest
                .iter()
                .map(|f| f.severity)
                .max()
                .unwrap_or(Severity::Info);
            found.push(Finding {
                severity,
                code: "more-findings",
                path: path.to_owned(),
                message: format!(
                    "{} more findings in this file are not listed (at most {} per file)",
                    rest.len(),
                    self.limits.per_file
                ),
                fix: "fix the findings listed, then audit the image again".to_owned(),
            });
        }
        self.findings.extend(found);
    }

    /// The file at `path`, or `None` if it does not exist (silently) or cannot be read (a
    /// problem).
    fn read(&mut self, path: &str) -> Option<Vec<u8>> {
        match self.fs.read_to_vec(path, self.limits.text) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.is_not_found() => None,
            Err(e) => {
                self.fs_problem(&e);
                None
            }
        }
    }

    /// The entries of the directory at `path`, or `None` as [`Scanner::read`].
    fn list(&mut self, path: &str) -> Option<Vec<fs::Entry>> {
        match self.fs.read_dir(path, self.limits.entries) {
            Ok(entries) => Some(entries),
            Err(e) if e.is_not_found() => None,
            Err(e) => {
                self.fs_problem(&e);
                None
            }
        }
    }

    /// The metadata of `path` (symlinks followed), or `None` as [`Scanner::read`].
    fn meta(&mut self, path: &str) -> Option<fs::Meta> {
        match self.fs.metadata(path) {
            Ok(meta) => Some(meta),
            Err(e) if e.is_not_found() => None,
            Err(e) => {
                self.fs_problem(&e);
                None
            }
        }
    }

    /// Reads `/etc/passwd`: uid-0 users and home directories, and password fields that hold a
    /// password instead of pointing to `/etc/shadow`.
    fn passwd(&mut self) -> Accounts {
        const PATH: &str = "/etc/passwd";
        let mut accounts = Accounts::default();
        accounts.roots.insert("root".to_owned());
        let Some(text) = self.read(PATH) else {
            return accounts;
        };
        let mut found = Vec::new();
        for (n, line) in lines(&text) {
            let fields: Vec<&str> = line.split(':').collect();
            let &[name, field, uid, _gid, _gecos, home, _shell] = fields.as_slice() else {
                self.problem(format!(
                    "{PATH}: line {n} is not name:password:uid:gid:gecos:home:shell; skipped"
                ));
                continue;
            };
            if uid == "0" {
                accounts.roots.insert(name.to_owned());
            }
            if let Some(home) = normalise_home(home) {
                accounts.homes.push(home);
            }
            let root = name == "root" || uid == "0";
            if let Some(f) = password_finding(PATH, n, name, field, root) {
                found.push(f);
            }
        }
        self.find_capped(PATH, found);
        accounts
    }

    /// Reads `/etc/shadow`: empty and usable passwords.
    fn shadow(&mut self, roots: &BTreeSet<String>) {
        const PATH: &str = "/etc/shadow";
        let Some(text) = self.read(PATH) else {
            return;
        };
        let mut found = Vec::new();
        for (n, line) in lines(&text) {
            let mut fields = line.split(':');
            let (Some(name), Some(field)) = (fields.next(), fields.next()) else {
                self.problem(format!("{PATH}: line {n} is not name:password:…; skipped"));
                continue;
            };
            if let Some(f) = password_finding(PATH, n, name, field, roots.contains(name)) {
                found.push(f);
            }
        }
        self.find_capped(PATH, found);
    }

    /// Reads the backup `/etc/shadow-`: one finding if it holds hashes.
    fn shadow_backup(&mut self) {
        const PATH: &str = "/etc/shadow-";
        let Some(text) = self.read(PATH) else {
            return;
        };
        let mut users = Vec::new();
        for (_, line) in lines(&text) {
            let mut fields = line.split(':');
            let (Some(name), Some(field)) = (fields.next(), fields.next()) else {
                continue;
            };
            if let Password::Usable(_) | Password::LockedHash(_) = password::classify(field) {
                users.push(name.to_owned());
            }
        }
        if users.is_empty() {
            return;
        }
        let shown: Vec<String> = users.iter().take(10).map(|u| printable(u, 32)).collect();
        let more = if users.len() > shown.len() {
            ", …"
        } else {
            ""
        };
        self.find(
            Severity::Low,
            "shadow-backup",
            PATH,
            format!(
                "the backup of /etc/shadow holds the password hashes of {} user(s) ({}{more}): \
                 not used to log in, but open to offline cracking",
                users.len(),
                shown.join(", ")
            ),
            FIX_SHADOW_BACKUP,
        );
    }

    /// Audits `/root`, the directories of `/home` and the home directories from `/etc/passwd`.
    fn homes(&mut self, from_passwd: Vec<String>) {
        let mut homes = BTreeSet::new();
        homes.insert("/root".to_owned());
        for entry in self.list("/home").unwrap_or_default() {
            if matches!(entry.kind, Kind::Dir | Kind::Symlink) && !entry.name.contains(['/', '\0'])
            {
                homes.insert(format!("/home/{}", entry.name));
            }
        }
        for home in from_passwd {
            if homes.len() >= self.limits.entries && !homes.contains(&home) {
                self.problem(format!(
                    "/etc/passwd: more than {} home directories; the others are not audited",
                    self.limits.entries
                ));
                break;
            }
            homes.insert(home);
        }
        for home in &homes {
            self.home(home);
        }
    }

    fn home(&mut self, home: &str) {
        if self.meta(home).is_none_or(|m| m.kind != Kind::Dir) {
            return;
        }
        let ssh = join(home, ".ssh");
        if self.meta(&ssh).is_some_and(|m| m.kind == Kind::Dir) {
            for name in ["authorized_keys", "authorized_keys2"] {
                self.authorized_keys(&join(&ssh, name), FIX_AUTHORIZED_KEY);
            }
            for entry in self.list(&ssh).unwrap_or_default() {
                let private = entry.name.starts_with("id_")
                    && !entry.name.ends_with(".pub")
                    && matches!(entry.kind, Kind::File | Kind::Symlink);
                if private {
                    self.private_key(&join(&ssh, &entry.name));
                }
            }
        }
        for name in HISTORIES {
            let path = join(home, name);
            let Some(meta) = self.meta(&path) else {
                continue;
            };
            if meta.kind == Kind::File && meta.len > 0 {
                self.find(
                    Severity::Low,
                    "history",
                    &path,
                    format!(
                        "a history of {} bytes: it may hold secrets typed on command lines \
                         (not shown)",
                        meta.len
                    ),
                    FIX_HISTORY,
                );
            }
        }
    }

    /// The keys of the `authorized_keys` file at `path`; `fix` is what to do about each.
    fn authorized_keys(&mut self, path: &str, fix: &str) {
        let Some(text) = self.read(path) else {
            return;
        };
        let mut found = Vec::new();
        for (n, line) in lines(&text) {
            let finding = match ssh::parse_line(&line) {
                Ok(None) => continue,
                Ok(Some(key)) => {
                    let comment = if key.comment.is_empty() {
                        "no comment".to_owned()
                    } else {
                        format!("comment {:?}", key.comment)
                    };
                    let options = if key.options.is_empty() {
                        String::new()
                    } else {
                        format!(", options {}", key.options.join(","))
                    };
                    Finding {
                        severity: Severity::High,
                        code: "ssh-authorized-key",
                        path: path.to_owned(),
                        message: format!(
                            "line {n}: a key that can log in: {}, {comment}{options}",
                            key.key.describe()
                        ),
                        fix: fix.to_owned(),
                    }
                }
                Err(reason) => Finding {
                    severity: Severity::Medium,
                    code: "ssh-authorized-keys-invalid-line",
                    path: path.to_owned(),
                    message: format!(
                        "line {n} is not a key mkomi can read: {reason} (content not shown)"
                    ),
                    fix: FIX_INVALID_LINE.to_owned(),
                },
            };
            found.push(finding);
        }
        // How many keys the file holds, in each key's message: Outscale's advice is to keep only
        // the last entry, the launch key pair's.
        let total = found
            .iter()
            .filter(|f| f.code == "ssh-authorized-key")
            .count();
        let mut k = 0;
        for f in found.iter_mut().filter(|f| f.code == "ssh-authorized-key") {
            k += 1;
            f.message = f.message.replacen(
                "a key that can log in",
                &format!("key {k} of {total}, can log in"),
                1,
            );
        }
        self.find_capped(path, found);
    }

    /// The public key of the private key at `path`: from `path.pub` if it parses, else from the
    /// private key file itself (OpenSSH format).
    fn public_key(&mut self, path: &str, embedded: Option<ssh::PublicKey>) -> String {
        let from_pub = self
            .read(&format!("{path}.pub"))
            .and_then(|text| ssh::parse_pub(&text).ok())
            .map(|k| k.key);
        match from_pub.or(embedded) {
            Some(key) => key.describe(),
            None => "public key unknown".to_owned(),
        }
    }

    fn private_key(&mut self, path: &str) {
        let Some(bytes) = self.read(path) else {
            return;
        };
        let parsed = ssh::parse_private(&bytes);
        drop(bytes);
        let (severity, message) = match parsed {
            Some(key) => {
                let public = self.public_key(path, key.public);
                let (severity, state) = if key.encrypted {
                    (Severity::Medium, "encrypted with a passphrase")
                } else {
                    (Severity::High, "not encrypted")
                };
                let message = format!("an SSH private key ({}, {state}): {public}", key.format);
                (severity, message)
            }
            None => (
                Severity::Medium,
                "a file named like an SSH private key, in no format mkomi recognises".to_owned(),
            ),
        };
        self.find(severity, "ssh-private-key", path, message, FIX_PRIVATE_KEY);
    }

    /// The host private keys `/etc/ssh/ssh_host_*_key`.
    fn host_keys(&mut self) {
        for entry in self.list("/etc/ssh").unwrap_or_default() {
            let host_key = entry.name.starts_with("ssh_host_")
                && entry.name.ends_with("_key")
                && matches!(entry.kind, Kind::File | Kind::Symlink);
            if !host_key {
                continue;
            }
            self.host_key(&format!("/etc/ssh/{}", entry.name), FIX_HOST_KEY);
        }
    }

    /// The SSH host private key at `path`, if it is not empty; `fix` is what to do about it.
    fn host_key(&mut self, path: &str, fix: &str) {
        let Some(bytes) = self.read(path) else {
            return;
        };
        if bytes.is_empty() {
            return;
        }
        let parsed = ssh::parse_private(&bytes);
        drop(bytes);
        let public = self.public_key(path, parsed.and_then(|k| k.public));
        self.find(
            Severity::Medium,
            "ssh-host-key",
            path,
            format!(
                "an SSH host private key ({public}): every instance would share it, and \
                 anyone with the image could impersonate them"
            ),
            fix,
        );
    }

    fn machine_id(&mut self) {
        const PATH: &str = "/etc/machine-id";
        if let Some(bytes) = self.read(PATH) {
            let id = bytes.trim_ascii();
            if !id.is_empty() && id != b"uninitialized" {
                self.find(
                    Severity::Medium,
                    "machine-id",
                    PATH,
                    "the machine id is set: every instance would share it (journal, DHCP \
                     client identifiers…)"
                        .to_owned(),
                    FIX_MACHINE_ID,
                );
            }
        }
        const DBUS: &str = "/var/lib/dbus/machine-id";
        match self.fs.symlink_metadata(DBUS) {
            Ok(meta) if meta.kind == Kind::File && meta.len > 0 => self.find(
                Severity::Low,
                "dbus-machine-id",
                DBUS,
                "a D-Bus machine id of its own: every instance would share it".to_owned(),
                FIX_DBUS_MACHINE_ID,
            ),
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => self.fs_problem(&e),
        }
    }

    fn cloud_init(&mut self) {
        const INSTANCE: &str = "/var/lib/cloud/instance";
        const INSTANCES: &str = "/var/lib/cloud/instances";
        const WHY: &str = "the new instance may reuse the cached data source and skip first-boot \
                           modules (keys, host name, user data)";
        match self.fs.symlink_metadata(INSTANCE) {
            Ok(meta) => {
                let target = if meta.kind == Kind::Symlink {
                    match self.fs.read_link(INSTANCE) {
                        Ok(t) => format!(" (links to {:?})", printable(&t, 200)),
                        Err(e) => {
                            self.fs_problem(&e);
                            String::new()
                        }
                    }
                } else {
                    String::new()
                };
                self.find(
                    Severity::Medium,
                    "cloud-init-instance",
                    INSTANCE,
                    format!("cloud-init state of a previous instance{target}: {WHY}"),
                    FIX_CLOUD_INIT,
                );
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => self.fs_problem(&e),
        }
        let entries = self.list(INSTANCES).unwrap_or_default();
        if !entries.is_empty() {
            let shown: Vec<String> = entries
                .iter()
                .take(5)
                .map(|e| format!("{:?}", printable(&e.name, 64)))
                .collect();
            let more = if entries.len() > shown.len() {
                ", …"
            } else {
                ""
            };
            self.find(
                Severity::Medium,
                "cloud-init-instance",
                INSTANCES,
                format!(
                    "cloud-init state of {} previous instance(s) ({}{more}): {WHY}",
                    entries.len(),
                    shown.join(", ")
                ),
                FIX_CLOUD_INIT,
            );
        }
    }
}

/// The finding for the password field `field` of user `name` on line `n` of `path`, if any.
fn password_finding(path: &str, n: usize, name: &str, field: &str, root: bool) -> Option<Finding> {
    let user = format!("{:?}", printable(name, 32));
    let (severity, code, message, fix) = match password::classify(field) {
        Password::Locked => return None,
        // In /etc/passwd, `x` and the like say "see /etc/shadow"; only a real field counts.
        Password::Empty => (
            Severity::High,
            if path == "/etc/shadow" {
                "shadow-empty-password"
            } else {
                "passwd-empty-password"
            },
            format!("line {n}: {user} has an empty password field: a login without password"),
            format!(
                "lock the account (`usermod -p '*' {}`)",
                printable(name, 32)
            ),
        ),
        Password::Usable(scheme) => (
            if root {
                Severity::High
            } else {
                Severity::Medium
            },
            match (path == "/etc/shadow", root) {
                (true, true) => "shadow-root-password",
                (true, false) => "shadow-password",
                (false, _) => "passwd-password",
            },
            format!(
                "line {n}: {user}{} has a password ({scheme} hash, not shown)",
                if root { " (uid 0)" } else { "" }
            ),
            format!(
                "lock it (`usermod -p '*' {}`) and give access through the launch key pair",
                printable(name, 32)
            ),
        ),
        Password::LockedHash(scheme) => (
            Severity::Info,
            "locked-password-hash",
            format!("line {n}: {user} is locked, but its {scheme} hash is still there (not shown)"),
            FIX_LOCKED_HASH.to_owned(),
        ),
    };
    Some(Finding {
        severity,
        code,
        path: path.to_owned(),
        message,
        fix,
    })
}

/// The lines of `text`, numbered from 1, invalid UTF-8 replaced; blank lines are skipped.
fn lines(text: &[u8]) -> impl Iterator<Item = (usize, String)> + '_ {
    text.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.trim_ascii().is_empty())
        .map(|(i, line)| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            (i + 1, String::from_utf8_lossy(line).into_owned())
        })
}

/// `rel` inside the directory `dir`.
fn join(dir: &str, rel: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{rel}")
    } else {
        format!("{dir}/{rel}")
    }
}

/// A home directory from `/etc/passwd`, without trailing `/`; `None` if not absolute.
fn normalise_home(home: &str) -> Option<String> {
    if !home.starts_with('/') || home.contains('\0') {
        return None;
    }
    let trimmed = home.trim_end_matches('/');
    Some(if trimmed.is_empty() { "/" } else { trimmed }.to_owned())
}

/// At most `max` characters of `s`, control characters replaced by `?`, `…` if cut.
fn printable(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests;
