//! What must not ship in an image, removed from a tree before it is laid out.
//!
//! `mkomi audit` finds these in an image after the fact; a tree build does not ship them in the
//! first place. Each item matches an audit check (the finding code in parentheses) and can be
//! switched off in the template's `[sanitize]` section:
//! - `machine-id` (`machine-id`, `dbus-machine-id`): `/etc/machine-id` emptied — systemd takes an
//!   empty file for "not yet initialized" and writes a new ID at first boot (machine-id(5)) — and
//!   a regular `/var/lib/dbus/machine-id` removed (Debian makes it a link to the former);
//! - `ssh-host-keys` (`ssh-host-key`): `/etc/ssh/ssh_host_*` removed; sshd's packaging or
//!   cloud-init makes new ones at first boot;
//! - `cloud-init` (`cloud-init-instance`): everything under `/var/lib/cloud` removed, so the new
//!   instance runs cloud-init's first-boot modules;
//! - `dhcp-leases`: the lease files of dhclient, dhcpcd and NetworkManager removed;
//! - `random-seed`: systemd's and Debian's saved random seeds removed (each instance would start
//!   from the same entropy);
//! - `shell-history` (`history`): the histories audit looks for, in `/root` and `/home/*`;
//! - `logs`: every regular file under `/var/log` truncated to nothing (kept, so that services
//!   that log to them find them with their owners and modes);
//! - `authorized-keys` (`ssh-authorized-key`): `/root/.ssh/authorized_keys` and
//!   `authorized_keys2` removed, with a warning, since someone may have meant it.
//!
//! Every change is returned, for the manifest.

use super::{Data, Entry, Kind, Tree, TreePath};
use serde::Serialize;

/// Which items to remove; all on by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sanitize {
    /// Empty `/etc/machine-id`, remove a regular `/var/lib/dbus/machine-id`.
    pub machine_id: bool,
    /// Remove `/etc/ssh/ssh_host_*`.
    pub ssh_host_keys: bool,
    /// Remove everything under `/var/lib/cloud`.
    pub cloud_init: bool,
    /// Remove DHCP client leases.
    pub dhcp_leases: bool,
    /// Remove saved random seeds.
    pub random_seed: bool,
    /// Remove shell and tool histories in `/root` and `/home/*`.
    pub shell_history: bool,
    /// Truncate the regular files under `/var/log`.
    pub logs: bool,
    /// Remove `/root/.ssh/authorized_keys{,2}` (with a warning).
    pub authorized_keys: bool,
}

impl Default for Sanitize {
    fn default() -> Self {
        Sanitize::ALL
    }
}

impl Sanitize {
    /// Every item on.
    pub const ALL: Sanitize = Sanitize {
        machine_id: true,
        ssh_host_keys: true,
        cloud_init: true,
        dhcp_leases: true,
        random_seed: true,
        shell_history: true,
        logs: true,
        authorized_keys: true,
    };

    /// Every item off.
    pub const NONE: Sanitize = Sanitize {
        machine_id: false,
        ssh_host_keys: false,
        cloud_init: false,
        dhcp_leases: false,
        random_seed: false,
        shell_history: false,
        logs: false,
        authorized_keys: false,
    };

    /// The items' names as the template spells them.
    pub const NAMES: [&'static str; 8] = [
        "machine-id",
        "ssh-host-keys",
        "cloud-init",
        "dhcp-leases",
        "random-seed",
        "shell-history",
        "logs",
        "authorized-keys",
    ];

    /// The items' names as the template spells them, with a mutable handle on each.
    pub fn items_mut(&mut self) -> [(&'static str, &mut bool); 8] {
        let [a, b, c, d, e, f, g, h] = Self::NAMES;
        [
            (a, &mut self.machine_id),
            (b, &mut self.ssh_host_keys),
            (c, &mut self.cloud_init),
            (d, &mut self.dhcp_leases),
            (e, &mut self.random_seed),
            (f, &mut self.shell_history),
            (g, &mut self.logs),
            (h, &mut self.authorized_keys),
        ]
    }
}

/// What was done to a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Removed, with everything under it.
    Removed,
    /// Kept, its content emptied.
    Emptied,
}

/// One change, for the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Change {
    /// The item that asked for it (`ssh-host-keys`).
    pub item: &'static str,
    /// The path, non-UTF-8 bytes escaped.
    pub path: String,
    /// What was done.
    pub action: Action,
    /// Bytes of content that went (the file's size; for a directory, its files' sizes).
    pub bytes: u64,
}

/// Where DHCP clients keep leases: (directory, file-name suffix).
const LEASE_DIRS: &[(&str, &str)] = &[
    ("/var/lib/dhcp", ".leases"),
    ("/var/lib/dhclient", ".leases"),
    ("/var/lib/dhclient", ".lease"),
    ("/var/lib/dhcpcd", ".lease"),
    ("/var/lib/dhcpcd", ".lease6"),
    ("/var/lib/NetworkManager", ".lease"),
];

/// Saved random seeds: systemd-random-seed's and Debian's older urandom script's.
const RANDOM_SEEDS: &[&str] = &[
    "/var/lib/systemd/random-seed",
    "/var/lib/urandom/random-seed",
];

/// Removes from `tree` what `what` selects; returns the changes, in the order made.
pub fn sanitize(tree: &mut Tree, what: &Sanitize) -> Vec<Change> {
    let mut s = Sanitizer {
        tree,
        changes: Vec::new(),
    };
    if what.machine_id {
        s.empty("machine-id", "/etc/machine-id");
        if s.is_file("/var/lib/dbus/machine-id") {
            s.remove("machine-id", &path("/var/lib/dbus/machine-id"));
        }
    }
    if what.ssh_host_keys {
        s.remove_children("ssh-host-keys", "/etc/ssh", |name, _| {
            name.starts_with(b"ssh_host_")
        });
    }
    if what.cloud_init {
        s.remove_children("cloud-init", "/var/lib/cloud", |_, _| true);
    }
    if what.dhcp_leases {
        for (dir, suffix) in LEASE_DIRS {
            s.remove_children("dhcp-leases", dir, |name, e| {
                name.ends_with(suffix.as_bytes()) && !e.is_dir()
            });
        }
    }
    if what.random_seed {
        for p in RANDOM_SEEDS {
            s.remove("random-seed", &path(p));
        }
    }
    if what.shell_history {
        for home in s.homes() {
            for h in crate::audit::HISTORIES {
                s.remove_file("shell-history", &home.join(h.as_bytes()));
            }
        }
    }
    if what.logs {
        let log = path("/var/log");
        let files: Vec<TreePath> = s
            .tree
            .subtree(&log)
            .filter(|(_, e)| matches!(&e.kind, Kind::File(d) if !d.is_empty()))
            .map(|(p, _)| p.clone())
            .collect();
        for p in files {
            s.empty_path("logs", &p);
        }
    }
    if what.authorized_keys {
        for name in ["authorized_keys", "authorized_keys2"] {
            s.remove_file("authorized-keys", &path("/root/.ssh").join(name.as_bytes()));
        }
    }
    s.changes
}

/// A path from a constant: every constant here parses.
fn path(p: &str) -> TreePath {
    TreePath::parse(p.as_bytes()).unwrap_or_default()
}

struct Sanitizer<'a> {
    tree: &'a mut Tree,
    changes: Vec<Change>,
}

impl Sanitizer<'_> {
    fn is_file(&self, p: &str) -> bool {
        matches!(
            self.tree.get(&path(p)).map(|e| &e.kind),
            Some(Kind::File(_) | Kind::HardLink(_))
        )
    }

    /// Bytes of content at `p` and under it.
    fn bytes(&self, p: &TreePath) -> u64 {
        let own = |e: &Entry| match &e.kind {
            Kind::File(d) => d.len(),
            _ => 0,
        };
        self.tree.get(p).map_or(0, own)
            + self
                .tree
                .subtree(p)
                .map(|(_, e)| own(e))
                .fold(0, u64::saturating_add)
    }

    fn remove(&mut self, item: &'static str, p: &TreePath) {
        if p.is_root() || self.tree.get(p).is_none() {
            return;
        }
        let bytes = self.bytes(p);
        self.tree.remove(p);
        self.changes.push(Change {
            item,
            path: p.to_string(),
            action: Action::Removed,
            bytes,
        });
    }

    /// Removes `p` if it is a file or a link (not a directory someone named like a file).
    fn remove_file(&mut self, item: &'static str, p: &TreePath) {
        if self.tree.get(p).is_some_and(|e| !e.is_dir()) {
            self.remove(item, p);
        }
    }

    fn remove_children(
        &mut self,
        item: &'static str,
        dir: &str,
        pick: impl Fn(&[u8], &Entry) -> bool,
    ) {
        let dir = path(dir);
        if !self.tree.get(&dir).is_some_and(Entry::is_dir) {
            return;
        }
        let doomed: Vec<TreePath> = self
            .tree
            .children(&dir)
            .filter(|(p, e)| pick(p.name().unwrap_or_default(), e))
            .map(|(p, _)| p.clone())
            .collect();
        for p in doomed {
            self.remove(item, &p);
        }
    }

    fn empty(&mut self, item: &'static str, p: &str) {
        self.empty_path(item, &path(p));
    }

    /// Empties a regular file, keeping its metadata. A hard link to it is emptied too (it is the
    /// same file).
    fn empty_path(&mut self, item: &'static str, p: &TreePath) {
        let target = match self.tree.get(p).map(|e| &e.kind) {
            Some(Kind::File(d)) if !d.is_empty() => p.clone(),
            Some(Kind::HardLink(t)) => t.clone(),
            _ => return,
        };
        let Some(e) = self.tree.get_mut(&target) else {
            return;
        };
        let Kind::File(d) = &e.kind else { return };
        let bytes = d.len();
        if bytes == 0 {
            return;
        }
        e.kind = Kind::File(Data::Bytes(Vec::new().into()));
        self.changes.push(Change {
            item,
            path: p.to_string(),
            action: Action::Emptied,
            bytes,
        });
    }

    /// `/root` and the directories under `/home`.
    fn homes(&self) -> Vec<TreePath> {
        let home = path("/home");
        let mut out = vec![path("/root")];
        out.extend(
            self.tree
                .children(&home)
                .filter(|(_, e)| e.is_dir())
                .map(|(p, _)| p.clone()),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Meta;

    fn tree(files: &[(&str, &[u8])]) -> Tree {
        let m = Meta::implied_dir(0);
        let mut t = Tree::new(m);
        for (p, data) in files {
            let e = if p.ends_with('/') {
                Entry::new(Kind::Dir, m)
            } else {
                Entry::new(Kind::File(Data::Bytes((*data).into())), m)
            };
            t.insert(path(p), e, m).unwrap();
        }
        t
    }

    fn content(t: &Tree, p: &str) -> Option<u64> {
        match &t.get(&path(p))?.kind {
            Kind::File(d) => Some(d.len()),
            _ => None,
        }
    }

    #[test]
    fn everything_the_audit_flags_goes() {
        let mut t = tree(&[
            ("/etc/machine-id", b"0123456789abcdef0123456789abcdef\n"),
            (
                "/var/lib/dbus/machine-id",
                b"0123456789abcdef0123456789abcdef\n",
            ),
            ("/etc/ssh/ssh_host_ed25519_key", b"KEY"),
            ("/etc/ssh/ssh_host_ed25519_key.pub", b"PUB"),
            ("/etc/ssh/sshd_config", b"config"),
            ("/var/lib/cloud/instance/x", b"x"),
            ("/var/lib/cloud/instances/i-1/y", b"y"),
            ("/var/lib/dhcp/dhclient.eth0.leases", b"lease"),
            ("/var/lib/dhcp/keep.conf", b"keep"),
            ("/var/lib/systemd/random-seed", b"seed"),
            ("/root/.bash_history", b"secret"),
            ("/home/u/.zsh_history", b"secret"),
            ("/home/u/.profile", b"keep"),
            ("/var/log/syslog", b"log"),
            ("/var/log/apt/history.log", b"log"),
            ("/var/log/empty", b""),
            ("/root/.ssh/authorized_keys", b"ssh-ed25519 AAAA"),
            ("/root/.ssh/config", b"keep"),
        ]);
        let changes = sanitize(&mut t, &Sanitize::ALL);
        assert_eq!(content(&t, "/etc/machine-id"), Some(0));
        for gone in [
            "/var/lib/dbus/machine-id",
            "/etc/ssh/ssh_host_ed25519_key",
            "/etc/ssh/ssh_host_ed25519_key.pub",
            "/var/lib/cloud/instance",
            "/var/lib/cloud/instances",
            "/var/lib/dhcp/dhclient.eth0.leases",
            "/var/lib/systemd/random-seed",
            "/root/.bash_history",
            "/home/u/.zsh_history",
            "/root/.ssh/authorized_keys",
        ] {
            assert!(t.get(&path(gone)).is_none(), "{gone} is still there");
        }
        for kept in [
            "/etc/ssh/sshd_config",
            "/var/lib/dhcp/keep.conf",
            "/home/u/.profile",
            "/root/.ssh/config",
        ] {
            assert!(content(&t, kept).unwrap() > 0, "{kept} went");
        }
        assert!(t.get(&path("/var/lib/cloud")).unwrap().is_dir());
        assert_eq!(content(&t, "/var/log/syslog"), Some(0));
        assert_eq!(content(&t, "/var/log/apt/history.log"), Some(0));
        // An already empty file is not a change.
        assert!(!changes.iter().any(|c| c.path == "/var/log/empty"));
        let items: Vec<&str> = changes.iter().map(|c| c.item).collect();
        for item in [
            "machine-id",
            "ssh-host-keys",
            "cloud-init",
            "dhcp-leases",
            "random-seed",
            "shell-history",
            "logs",
            "authorized-keys",
        ] {
            assert!(items.contains(&item), "no change from {item}");
        }
        let mid = changes
            .iter()
            .find(|c| c.path == "/etc/machine-id")
            .unwrap();
        assert_eq!((mid.action, mid.bytes), (Action::Emptied, 33));
    }

    #[test]
    fn each_item_can_be_switched_off() {
        let files: &[(&str, &[u8])] = &[
            ("/etc/machine-id", b"id\n"),
            ("/etc/ssh/ssh_host_rsa_key", b"KEY"),
            ("/var/log/syslog", b"log"),
        ];
        let mut off = Sanitize::ALL;
        off.ssh_host_keys = false;
        let mut t = tree(files);
        let changes = sanitize(&mut t, &off);
        assert!(content(&t, "/etc/ssh/ssh_host_rsa_key").is_some());
        assert_eq!(changes.len(), 2);
        let mut t = tree(files);
        assert!(sanitize(&mut t, &Sanitize::NONE).is_empty());
        assert_eq!(content(&t, "/etc/machine-id"), Some(3));
    }

    #[test]
    fn a_directory_named_like_a_history_is_left() {
        let mut t = tree(&[("/root/.bash_history/", b"")]);
        assert!(sanitize(&mut t, &Sanitize::ALL).is_empty());
    }
}
