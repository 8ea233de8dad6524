//! Audits of ext4 images built by `mkfs.ext4 -d` from trees with planted secrets, keys made by
//! the real `ssh-keygen` and fingerprints compared with what `ssh-keygen -l` prints.

use super::*;
use crate::format::{self, OpenOptions};
use crate::fs::ext4::Ext4;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A tree to plant files in, then an image made of it.
struct Tree {
    dir: tempfile::TempDir,
}

/// A key pair made by `ssh-keygen`, in the scratch directory.
struct KeyPair {
    private: PathBuf,
    /// The `.pub` line, without its newline.
    public: String,
    /// What `ssh-keygen -l -f` prints as the fingerprint.
    fingerprint: String,
}

impl KeyPair {
    /// The base64 key data of the public key.
    fn data(&self) -> &str {
        self.public.split(' ').nth(1).unwrap()
    }

    fn private_text(&self) -> String {
        std::fs::read_to_string(&self.private).unwrap()
    }
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tree")).unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        Tree { dir }
    }

    fn path(&self, path: &str) -> PathBuf {
        self.dir
            .path()
            .join("tree")
            .join(path.trim_start_matches('/'))
    }

    fn put(&self, path: &str, data: impl AsRef<[u8]>) {
        let p = self.path(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    fn mkdir(&self, path: &str) {
        std::fs::create_dir_all(self.path(path)).unwrap();
    }

    fn link(&self, path: &str, target: &str) {
        let p = self.path(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        symlink(target, p).unwrap();
    }

    /// A key pair made by `ssh-keygen -t kind -N passphrase -C comment`.
    fn keygen(&self, name: &str, kind: &str, passphrase: &str, comment: &str) -> KeyPair {
        let private = self.dir.path().join("keys").join(name);
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(["-q", "-t", kind, "-N", passphrase, "-C", comment, "-f"])
            .arg(&private);
        if kind == "rsa" {
            cmd.args(["-b", "2048"]);
        }
        run(&mut cmd);
        let pub_path = private.with_extension("pub");
        let public = std::fs::read_to_string(&pub_path).unwrap();
        let fingerprint = keygen_l(&pub_path).remove(0);
        KeyPair {
            private,
            public: public.trim_end().to_owned(),
            fingerprint,
        }
    }

    /// Plants the private key (and the `.pub` when `with_pub`) of `key` at `path`.
    fn plant_private(&self, path: &str, key: &KeyPair, with_pub: bool) {
        self.put(path, key.private_text());
        if with_pub {
            self.put(&format!("{path}.pub"), format!("{}\n", key.public));
        }
    }

    /// The ext4 image of the tree, opened.
    fn image(&self) -> Ext4 {
        let image = self.dir.path().join("root.ext4");
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(self.path("/"))
            .arg(&image)
            .arg("32M"));
        let src = format::open_path(&image, &OpenOptions::default()).unwrap();
        let size = src.size();
        Ext4::open(src, 0, size, Path::new("root.ext4")).unwrap()
    }
}

/// The fingerprints `ssh-keygen -l -f path` prints, one per key.
fn keygen_l(path: &Path) -> Vec<String> {
    let out = run(Command::new("ssh-keygen").arg("-l").arg("-f").arg(path));
    out.lines()
        .map(|l| l.split_whitespace().nth(1).unwrap().to_owned())
        .collect()
}

/// The findings as (severity, code, path), in order.
fn summary(audit: &Audit) -> Vec<(Severity, &'static str, String)> {
    audit
        .findings
        .iter()
        .map(|f| (f.severity, f.code, f.path.clone()))
        .collect()
}

fn messages<'a>(audit: &'a Audit, path: &str, code: &str) -> Vec<&'a str> {
    audit
        .findings
        .iter()
        .filter(|f| f.path == path && f.code == code)
        .map(|f| f.message.as_str())
        .collect()
}

const ROOT_HASH: &str = "$6$rOoTsAlT$q8mHVZ2TFGtHs2MtW7e3sSPk.vYFvKCBV9FCqQh9aKYsbnZeGoRQ3eYh6.tB1";
const TOOR_HASH: &str = "$5$tOoRsAlT$D8vBmTnq1vqhcfTj6mfW0o4eHnYkBgY3zqwkJ0Y7Z.4";
const ALICE_HASH: &str = "$y$j9T$aLiCeSaLt$Xk2bW9nE3dFqL7pTr4uVxY1zA5cH8gJ0mN6sR2tK.W3";
const LOCKED_HASH: &str = "$6$lOcKsAlT$Lk9sQw2Er4Ty6Ui8Op0As2Df4Gh6Jk8Lz0Xc2Vb4Nm6Qw8Er0Ty2";
const OLD_ROOT_HASH: &str = "$6$oLdSaLt$OldRootHashOldRootHashOldRootHashOldRootHash0123456789";
const MACHINE_ID: &str = "0123456789abcdef0123456789abcdef";

#[test]
#[cfg_attr(
    not(feature = "tool-tests"),
    ignore = "calls external tools: run with --features tool-tests"
)]
fn finds_every_planted_item_without_showing_secrets() {
    let t = Tree::new();
    let ed = t.keygen("ed", "ed25519", "", "alice at laptop");
    let rsa = t.keygen("rsa", "rsa", "", "bob");
    let ecdsa = t.keygen("ecdsa", "ecdsa", "", "carol");
    let alice = t.keygen("alice", "ed25519", "", "alice@home");
    let extra = t.keygen("extra", "ecdsa", "", "");
    let svc = t.keygen("svc", "ed25519", "", "deploy");
    let root_id = t.keygen("root_id", "ed25519", "", "root@build");
    let alice_id = t.keygen("alice_id", "rsa", "s3cret passphrase", "alice@build");
    let host_ed = t.keygen("host_ed", "ed25519", "", "root@template");
    let host_rsa = t.keygen("host_rsa", "rsa", "", "root@template");
    let keys = [
        &ed, &rsa, &ecdsa, &alice, &extra, &svc, &root_id, &alice_id, &host_ed, &host_rsa,
    ];

    t.put(
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\n\
         daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
         toor:x:0:0::/root:/bin/sh\n\
         alice:x:1000:1000:Alice:/home/alice:/bin/bash\n\
         svc:x:998:998::/srv/svc/:/bin/sh\n\
         nopass:x:1001:1001::/home/nopass:/bin/sh\n",
    );
    t.put(
        "/etc/shadow",
        format!(
            "root:{ROOT_HASH}:19000:0:99999:7:::\n\
             daemon:*:19000:0:99999:7:::\n\
             bin:!:19000::::::\n\
             sys:!!:19000::::::\n\
             lp:*LK*:19000::::::\n\
             toor:{TOOR_HASH}:19000::::::\n\
             alice:{ALICE_HASH}:19000:0:99999:7:::\n\
             locked:!{LOCKED_HASH}:19000::::::\n\
             nopass::19000::::::\n\
             malformed-line\n"
        ),
    );
    t.put(
        "/etc/shadow-",
        format!("root:{OLD_ROOT_HASH}:18000::::::\n"),
    );

    // root's authorized_keys: options with a quoted comma and space, a comment with spaces, a
    // garbage line, a comment line and a blank line.
    let options = "command=\"echo hi, there\",no-pty";
    t.put(
        "/root/.ssh/authorized_keys",
        format!(
            "# keys\n{options} {}\n{}\n\nthis-is-garbage SECRETGARBAGE\n{}\n",
            ed.public, rsa.public, ecdsa.public
        ),
    );
    // A symlink to another file is read.
    t.put("/etc/ssh/extra_keys", format!("{}\n", extra.public));
    t.link("/root/.ssh/authorized_keys2", "/etc/ssh/extra_keys");
    t.plant_private("/root/.ssh/id_ed25519", &root_id, true);
    t.put("/root/.ssh/known_hosts", "host ssh-ed25519 AAAA\n");
    t.put(
        "/home/alice/.ssh/authorized_keys",
        format!("{}\n", alice.public),
    );
    // Encrypted, without .pub: the fingerprint comes from the private key file.
    t.plant_private("/home/alice/.ssh/id_rsa", &alice_id, false);
    t.put("/srv/svc/.ssh/authorized_keys", format!("{}\n", svc.public));

    t.plant_private("/etc/ssh/ssh_host_ed25519_key", &host_ed, true);
    t.plant_private("/etc/ssh/ssh_host_rsa_key", &host_rsa, false);
    t.put(
        "/etc/ssh/ssh_host_ecdsa_key.pub",
        format!("{}\n", ecdsa.public),
    );
    t.put(
        "/etc/ssh/sshd_config",
        "PermitRootLogin prohibit-password\n",
    );

    t.put("/etc/machine-id", format!("{MACHINE_ID}\n"));
    t.put("/var/lib/dbus/machine-id", format!("{MACHINE_ID}\n"));

    t.put("/root/.bash_history", "mysql -u root -pSECRETPW\n");
    t.put("/root/.lesshst", ".less-history-file:\n");
    t.put("/home/alice/.python_history", "token = 'SECRETTOKEN'\n");
    t.put("/home/alice/.zsh_history", "");
    t.link("/home/alice/.sh_history", "/dev/null");

    t.link(
        "/var/lib/cloud/instance",
        "/var/lib/cloud/instances/i-0123abcd",
    );
    t.put("/var/lib/cloud/instances/i-0123abcd/obj.pkl", "pickle");

    let fs = t.image();
    let audit = scan(&fs);
    use Severity::*;
    let expected = [
        (Medium, "machine-id", "/etc/machine-id"),
        (Info, "locked-password-hash", "/etc/shadow"),
        (High, "shadow-empty-password", "/etc/shadow"),
        (Medium, "shadow-password", "/etc/shadow"),
        (High, "shadow-root-password", "/etc/shadow"),
        (High, "shadow-root-password", "/etc/shadow"),
        (Low, "shadow-backup", "/etc/shadow-"),
        (Medium, "ssh-host-key", "/etc/ssh/ssh_host_ed25519_key"),
        (Medium, "ssh-host-key", "/etc/ssh/ssh_host_rsa_key"),
        (Low, "history", "/home/alice/.python_history"),
        (
            High,
            "ssh-authorized-key",
            "/home/alice/.ssh/authorized_keys",
        ),
        (Medium, "ssh-private-key", "/home/alice/.ssh/id_rsa"),
        (Low, "history", "/root/.bash_history"),
        (Low, "history", "/root/.lesshst"),
        (High, "ssh-authorized-key", "/root/.ssh/authorized_keys"),
        (High, "ssh-authorized-key", "/root/.ssh/authorized_keys"),
        (High, "ssh-authorized-key", "/root/.ssh/authorized_keys"),
        (
            Medium,
            "ssh-authorized-keys-invalid-line",
            "/root/.ssh/authorized_keys",
        ),
        (High, "ssh-authorized-key", "/root/.ssh/authorized_keys2"),
        (High, "ssh-private-key", "/root/.ssh/id_ed25519"),
        (High, "ssh-authorized-key", "/srv/svc/.ssh/authorized_keys"),
        (Medium, "cloud-init-instance", "/var/lib/cloud/instance"),
        (Medium, "cloud-init-instance", "/var/lib/cloud/instances"),
        (Low, "dbus-machine-id", "/var/lib/dbus/machine-id"),
    ]
    .map(|(s, c, p)| (s, c, p.to_owned()));
    assert_eq!(summary(&audit), expected, "{audit:#?}");
    assert_eq!(
        audit.problems,
        ["/etc/shadow: line 10 is not name:password:…; skipped"]
    );
    assert_eq!(audit.highest(), Some(High));
    assert_eq!(audit.count(High), 10);
    assert_eq!(audit.count(Medium), 8);
    assert_eq!(audit.count(Low), 5);
    assert_eq!(audit.count(Info), 1);

    // The fingerprints are those ssh-keygen prints, in the order of the lines.
    let root_keys = messages(&audit, "/root/.ssh/authorized_keys", "ssh-authorized-key");
    let printed = keygen_l(&t.path("/root/.ssh/authorized_keys"));
    assert_eq!(
        printed,
        [
            ed.fingerprint.clone(),
            rsa.fingerprint.clone(),
            ecdsa.fingerprint.clone()
        ]
    );
    assert_eq!(
        root_keys,
        [
            format!(
                "line 2: key 1 of 3, can log in: ED25519 {} (256 bits), comment \"alice at laptop\", \
                 options command,no-pty",
                printed[0]
            ),
            format!(
                "line 3: key 2 of 3, can log in: RSA {} (2048 bits), comment \"bob\"",
                printed[1]
            ),
            format!(
                "line 6: key 3 of 3, can log in: ECDSA {} (256 bits), comment \"carol\"",
                printed[2]
            ),
        ]
    );
    assert_eq!(
        messages(
            &audit,
            "/root/.ssh/authorized_keys",
            "ssh-authorized-keys-invalid-line"
        ),
        [
            "line 5 is not a key mkomi can read: it holds no key type OpenSSH knows, at its start or after options \
          (content not shown)"
        ]
    );
    let one = |path: &str, code: &str| {
        let m = messages(&audit, path, code);
        assert_eq!(m.len(), 1, "{path} {code}: {m:?}");
        m[0].to_owned()
    };
    let ak2 = one("/root/.ssh/authorized_keys2", "ssh-authorized-key");
    assert!(ak2.contains(&format!(
        "ECDSA {} (256 bits), no comment",
        extra.fingerprint
    )));
    let alice_ak = one("/home/alice/.ssh/authorized_keys", "ssh-authorized-key");
    assert!(alice_ak.contains(&alice.fingerprint), "{alice_ak}");
    assert!(alice_ak.contains("comment \"alice@home\""), "{alice_ak}");
    let svc_ak = one("/srv/svc/.ssh/authorized_keys", "ssh-authorized-key");
    assert!(svc_ak.contains(&svc.fingerprint), "{svc_ak}");

    assert_eq!(
        one("/root/.ssh/id_ed25519", "ssh-private-key"),
        format!(
            "an SSH private key (OpenSSH, not encrypted): ED25519 {} (256 bits)",
            root_id.fingerprint
        )
    );
    // ssh-keygen reads the public key of an encrypted private key without its passphrase.
    let alice_private = t.path("/home/alice/.ssh/id_rsa");
    assert_eq!(keygen_l(&alice_private), [alice_id.fingerprint.as_str()]);
    assert_eq!(
        one("/home/alice/.ssh/id_rsa", "ssh-private-key"),
        format!(
            "an SSH private key (OpenSSH, encrypted with a passphrase): RSA {} (2048 bits)",
            alice_id.fingerprint
        )
    );
    for (path, key, bits) in [
        ("/etc/ssh/ssh_host_ed25519_key", &host_ed, "ED25519"),
        ("/etc/ssh/ssh_host_rsa_key", &host_rsa, "RSA"),
    ] {
        let m = one(path, "ssh-host-key");
        assert!(m.contains(&format!("({bits} {} (", key.fingerprint)), "{m}");
        assert_eq!(keygen_l(&t.path(path)), [key.fingerprint.as_str()]);
    }

    let shadow = messages(&audit, "/etc/shadow", "shadow-root-password");
    assert_eq!(
        shadow,
        [
            "line 1: \"root\" (uid 0) has a password (sha512crypt hash, not shown)",
            "line 6: \"toor\" (uid 0) has a password (sha256crypt hash, not shown)",
        ]
    );
    assert_eq!(
        one("/etc/shadow", "shadow-password"),
        "line 7: \"alice\" has a password (yescrypt hash, not shown)"
    );
    assert_eq!(
        one("/etc/shadow", "shadow-empty-password"),
        "line 9: \"nopass\" has an empty password field: a login without password"
    );
    assert!(one("/etc/shadow", "locked-password-hash").contains("\"locked\""));
    assert!(
        one("/etc/shadow-", "shadow-backup").contains("the password hashes of 1 user(s) (root)")
    );
    assert!(one("/root/.bash_history", "history").contains("of 25 bytes"));
    assert!(
        one("/var/lib/cloud/instance", "cloud-init-instance")
            .contains("links to \"/var/lib/cloud/instances/i-0123abcd\"")
    );
    assert!(
        one("/var/lib/cloud/instances", "cloud-init-instance")
            .contains("1 previous instance(s) (\"i-0123abcd\")")
    );
    for f in &audit.findings {
        assert!(!f.fix.is_empty() && !f.message.contains('\n'), "{f:?}");
    }

    // No secret anywhere in what the audit says.
    let json = serde_json::to_string(&audit).unwrap();
    assert!(json.contains("\"severity\":\"high\",\"code\":\"shadow-empty-password\""));
    let mut secrets: Vec<String> = [ROOT_HASH, TOOR_HASH, ALICE_HASH, LOCKED_HASH, OLD_ROOT_HASH]
        .iter()
        .flat_map(|h| [h.to_string(), h.rsplit('$').next().unwrap().to_owned()])
        .collect();
    secrets.extend(
        [
            "SECRETGARBAGE",
            "SECRETPW",
            "SECRETTOKEN",
            MACHINE_ID,
            "echo hi",
        ]
        .map(String::from),
    );
    secrets.push("this-is-garbage".to_owned());
    for key in keys {
        secrets.push(key.data().to_owned());
        secrets.push(key.data()[20..60].to_owned());
        for line in key
            .private_text()
            .lines()
            .filter(|l| !l.starts_with("-----"))
        {
            secrets.push(line.to_owned());
        }
    }
    for secret in &secrets {
        assert!(!json.contains(secret.as_str()), "{secret} in {json}");
    }
    // The same through a reading of the messages as the CLI would print them.
    for f in &audit.findings {
        for secret in &secrets {
            assert!(!f.message.contains(secret.as_str()) && !f.fix.contains(secret.as_str()));
        }
    }
}

#[test]
#[cfg_attr(
    not(feature = "tool-tests"),
    ignore = "calls external tools: run with --features tool-tests"
)]
fn a_clean_tree_has_no_findings_and_no_problems() {
    let t = Tree::new();
    t.put(
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\n\
         daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
         alice:x:1000:1000::/home/alice:/bin/bash\n",
    );
    t.put(
        "/etc/shadow",
        "root:*:19000:0:99999:7:::\n\
         daemon:*:19000:0:99999:7:::\n\
         nobody:!:19000::::::\n\
         alice:!!:19000::::::\n",
    );
    t.put("/etc/machine-id", "");
    t.link("/var/lib/dbus/machine-id", "/etc/machine-id");
    t.mkdir("/root/.ssh");
    t.mkdir("/home/alice/.ssh");
    t.put("/root/.ssh/known_hosts", "host ssh-ed25519 AAAA\n");
    t.put("/home/alice/.bashrc", "alias ll='ls -l'\n");
    t.put("/home/alice/.bash_history", "");
    t.link("/root/.bash_history", "/dev/null");
    t.put(
        "/etc/ssh/sshd_config",
        "PermitRootLogin prohibit-password\n",
    );
    t.put("/etc/ssh/ssh_host_ed25519_key.pub", "");
    t.mkdir("/var/lib/cloud/instances");
    t.mkdir("/var/lib/cloud/data");
    let audit = scan(&t.image());
    assert_eq!(audit, Audit::default());
    assert_eq!(audit.highest(), None);

    // `uninitialized` is as clean as empty, and an empty tree has nothing to say either.
    t.put("/etc/machine-id", "uninitialized\n");
    assert_eq!(scan(&t.image()), Audit::default());
    let empty = Tree::new();
    assert_eq!(scan(&empty.image()), Audit::default());
}

#[test]
#[cfg_attr(
    not(feature = "tool-tests"),
    ignore = "calls external tools: run with --features tool-tests"
)]
fn loops_and_large_directories_are_problems_not_hangs() {
    let t = Tree::new();
    t.put(
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\nbob:x:1000:1000::/srv/bob:/bin/sh\n",
    );
    let shadow = format!("root:*:19000::::::\n{}", "\n".repeat(2000));
    t.put("/etc/shadow", &shadow);
    t.link("/root/.ssh/authorized_keys", "authorized_keys2");
    t.link("/root/.ssh/authorized_keys2", "authorized_keys");
    t.link("/home/loop", "/home/loop");
    for i in 0..30 {
        t.mkdir(&format!("/home/user{i:02}"));
    }
    t.put(
        "/srv/bob/.ssh/authorized_keys",
        "garbage SECRET1\ngarbage SECRET2\ngarbage SECRET3\ngarbage SECRET4\ngarbage SECRET5\n",
    );
    let fs = t.image();

    let audit = scan(&fs);
    assert_eq!(
        audit.problems,
        [
            "root.ext4: /home/loop: too many levels of symbolic links",
            "root.ext4: /root/.ssh/authorized_keys: too many levels of symbolic links",
            "root.ext4: /root/.ssh/authorized_keys2: too many levels of symbolic links",
        ]
    );
    assert_eq!(
        audit.count(Severity::Medium),
        5,
        "the five garbage lines: {audit:#?}"
    );
    assert_eq!(audit.findings.len(), 5);

    let small = Limits {
        text: 1000,
        entries: 20,
        per_file: 3,
        problems: 3,
        ..Limits::DEFAULT
    };
    let audit = scan_with(&fs, &small);
    assert_eq!(
        audit.problems,
        [
            format!(
                "root.ext4: /etc/shadow: {} bytes, more than the 1000 allowed",
                shadow.len()
            ),
            "root.ext4: /home: a directory of more than 20 entries".to_owned(),
            "root.ext4: /root/.ssh/authorized_keys: too many levels of symbolic links".to_owned(),
            "… and 1 more problems".to_owned(),
        ]
    );
    let bob = "/srv/bob/.ssh/authorized_keys";
    assert_eq!(
        summary(&audit),
        [
            (Severity::Medium, "more-findings", bob.to_owned()),
            (
                Severity::Medium,
                "ssh-authorized-keys-invalid-line",
                bob.to_owned()
            ),
            (
                Severity::Medium,
                "ssh-authorized-keys-invalid-line",
                bob.to_owned()
            ),
            (
                Severity::Medium,
                "ssh-authorized-keys-invalid-line",
                bob.to_owned()
            ),
        ]
    );
    assert_eq!(
        audit.findings[0].message,
        "2 more findings in this file are not listed (at most 3 per file)"
    );
    let json = serde_json::to_string(&audit).unwrap();
    assert!(!json.contains("SECRET"), "{json}");
}

#[test]
fn severities() {
    assert!(Severity::Info < Severity::Low && Severity::Medium < Severity::High);
    for s in Severity::ALL {
        assert_eq!(s.to_string().parse::<Severity>().unwrap(), s);
        assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
    }
    assert_eq!("high".parse::<Severity>().unwrap(), Severity::High);
    assert_eq!("HIGH".parse::<Severity>().unwrap(), Severity::High);
    assert_eq!(format!("{:>6}", Severity::Low), "   low");
    assert_eq!(
        "critical".parse::<Severity>().unwrap_err().to_string(),
        "unknown severity \"critical\": expected info, low, medium or high"
    );
}

#[test]
fn helpers() {
    assert_eq!(join("/", ".ssh"), "/.ssh");
    assert_eq!(join("/root", ".ssh"), "/root/.ssh");
    assert_eq!(normalise_home("/srv/x//").as_deref(), Some("/srv/x"));
    assert_eq!(normalise_home("/").as_deref(), Some("/"));
    assert_eq!(normalise_home("relative"), None);
    assert_eq!(printable("a\u{1b}[31mb", 4), "a?[3…");
    let passwd = |name: &str, field: &str, root: bool| {
        password_finding("/etc/passwd", 3, name, field, root).map(|f| (f.severity, f.code))
    };
    assert_eq!(passwd("root", "x", true), None);
    assert_eq!(passwd("bob", "*", false), None);
    assert_eq!(
        passwd("bob", "", false),
        Some((Severity::High, "passwd-empty-password"))
    );
    assert_eq!(
        passwd("root", "$6$salt$hash", true),
        Some((Severity::High, "passwd-password"))
    );
    assert_eq!(
        passwd("bob", "$6$salt$hash", false),
        Some((Severity::Medium, "passwd-password"))
    );
    let f = password_finding("/etc/passwd", 3, "bob", "$6$salt$hash", false).unwrap();
    assert!(
        !f.message.contains("salt") && !f.fix.contains("salt"),
        "{f:?}"
    );
    let text = b"a\r\n\n  \nb\xff\n";
    let got: Vec<_> = lines(text).collect();
    assert_eq!(got, [(1, "a".to_owned()), (4, "b\u{fffd}".to_owned())]);
}

#[test]
#[cfg_attr(
    not(feature = "tool-tests"),
    ignore = "calls external tools: run with --features tool-tests"
)]
fn fingerprints_bits_and_labels_match_ssh_keygen() {
    let t = Tree::new();
    let mut files = Vec::new();
    for (name, kind, bits) in [
        ("ed", "ed25519", None),
        ("rsa", "rsa", Some("3072")),
        ("p384", "ecdsa", Some("384")),
        ("p521", "ecdsa", Some("521")),
    ] {
        let private = t.dir.path().join("keys").join(name);
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(["-q", "-t", kind, "-N", "", "-C", "a comment", "-f"])
            .arg(&private);
        if let Some(bits) = bits {
            cmd.args(["-b", bits]);
        }
        run(&mut cmd);
        files.push(private.with_extension("pub"));
    }
    // A user certificate of the P-384 key, signed by the Ed25519 one.
    run(Command::new("ssh-keygen")
        .args(["-q", "-I", "id", "-n", "alice", "-s"])
        .arg(t.dir.path().join("keys/ed"))
        .arg(&files[2]));
    files.push(t.dir.path().join("keys/p384-cert.pub"));
    for file in &files {
        let printed = run(Command::new("ssh-keygen").arg("-l").arg("-f").arg(file));
        let text = std::fs::read(file).unwrap();
        let key = ssh::parse_pub(&text).unwrap().key;
        let ours = format!(
            "{} {} a comment ({})",
            key.bits, key.fingerprint, key.key_type.label
        );
        assert_eq!(printed.trim_end(), ours, "{}", file.display());
    }
}

/// The Windows checks on Windows-like trees, written to FAT by mtools and to NTFS by mkntfs and
/// ntfs-3g: both file systems look names up without regard to case, as Windows does.
mod windows_volumes {
    use super::*;
    use crate::fs::fat::Fat;
    use crate::fs::ntfs::Ntfs;

    /// Which file system a tree is written to.
    #[derive(Debug, Clone, Copy)]
    enum Volume {
        Fat,
        Ntfs,
    }

    fn run_env(cmd: &mut Command) {
        cmd.env("MTOOLS_SKIP_CHECK", "1").env("LC_ALL", "C.UTF-8");
        run(cmd);
    }

    /// The tree `t` written to a new volume of kind `volume`, opened.
    fn volume(t: &Tree, volume: Volume) -> Box<dyn FileSystem> {
        let tree = t.path("/");
        let mut top: Vec<PathBuf> = std::fs::read_dir(&tree)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        top.sort();
        match volume {
            Volume::Fat => {
                let image = t.dir.path().join("win.fat");
                run(Command::new("mkfs.fat")
                    .args(["-F", "32", "-C", "-n", "WINDOWS"])
                    .arg(&image)
                    .arg("65536"));
                if !top.is_empty() {
                    run_env(
                        Command::new("mcopy")
                            .args(["-s", "-i"])
                            .arg(&image)
                            .args(&top)
                            .arg("::/"),
                    );
                }
                let src = format::open_path(&image, &OpenOptions::default()).unwrap();
                let size = src.size();
                Box::new(Fat::open(src, 0, size, Path::new("win.fat")).unwrap())
            }
            Volume::Ntfs => {
                // mkntfs, then the tree copied in through an ntfs-3g FUSE mount (root).
                let image = t.dir.path().join("win.ntfs");
                let mnt = t.dir.path().join("mnt");
                std::fs::create_dir(&mnt).unwrap();
                let script = crate::fs::ntfs::with_ntfs3g(
                    r#"set -euo pipefail
img=$1 mnt=$2 tree=$3
truncate -s 64M "$img"
mkntfs -F -Q -q -L WINDOWS "$img"
ntfs3g_mount "$img" "$mnt"
trap 'ntfs3g_unmount "$img" "$mnt"' EXIT
cp -r "$tree"/. "$mnt"/
trap - EXIT
ntfs3g_unmount "$img" "$mnt"
"#,
                );
                run(Command::new("bash")
                    .args(["-c", &script, "mkntfs"])
                    .arg(&image)
                    .arg(&mnt)
                    .arg(&tree));
                let src = format::open_path(&image, &OpenOptions::default()).unwrap();
                let size = src.size();
                Box::new(Ntfs::open(src, 0, size, Path::new("win.ntfs")).unwrap())
            }
        }
    }

    /// Test hives made by fixtures/make-hives.py (hivex) at `/Windows/System32/config`.
    fn plant_hives(t: &Tree, cloudbase: &[&str]) {
        let config = t.path("/Windows/System32/config");
        std::fs::create_dir_all(&config).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/make-hives.py");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(script).arg(&config).arg("generalized");
        for id in cloudbase {
            cmd.args(["--cloudbase-init", id]);
        }
        run(&mut cmd);
    }

    fn utf16le_bom(text: &str) -> Vec<u8> {
        let mut out = vec![0xff, 0xfe];
        out.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        out
    }

    /// An answer file with `body` in the Shell-Setup component of the oobeSystem pass.
    fn answer(body: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"utf-16\"?>\n\
             <unattend xmlns=\"urn:schemas-microsoft-com:unattend\">\n\
             <settings pass=\"oobeSystem\">\n\
             <component name=\"Microsoft-Windows-Shell-Setup\" \
             xmlns:wcm=\"http://schemas.microsoft.com/WMIConfig/2002/State\">\n\
             {body}\n\
             </component>\n</settings>\n</unattend>\n"
        )
    }

    const ADMIN_PW: &str = "Adm1n-PLAIN-s3cret";
    const AUTOLOGON_PW: &str = "QQB1AHQAbwBMAG8AZwBvAG4AUwBlAGMAcgBlAHQAUABhAHMAcwB3AG8AcgBkAA==";
    const LOCAL_PW: &str = "L0cal-NOPLAINTEXT-s3cret";
    const INSTANCE: &str = "i-0fedcba9876543210";
    const PS_HISTORY: &str = "/Users/alice/AppData/Roaming/Microsoft/Windows/PowerShell/\
                              PSReadLine/ConsoleHost_history.txt";

    /// Plants one of each Windows finding in `t`; returns the key pairs used, in order:
    /// admin 1, admin 2, alice, alice's private key, host ed25519, host rsa.
    fn plant_windows(t: &Tree) -> Vec<KeyPair> {
        let admin1 = t.keygen("admin1", "ed25519", "", "admin@build");
        let admin2 = t.keygen("admin2", "rsa", "", "");
        let alice = t.keygen("alice", "ecdsa", "", "alice@laptop");
        let alice_id = t.keygen("alice_id", "ed25519", "", "alice@build");
        let host_ed = t.keygen("host_ed", "ed25519", "", "");
        let host_rsa = t.keygen("host_rsa", "rsa", "", "");
        t.put(
            "/ProgramData/ssh/administrators_authorized_keys",
            format!(
                "{}\r\nnot-a-key SECRETGARBAGE\r\n{}\r\n",
                admin1.public, admin2.public
            ),
        );
        t.plant_private("/ProgramData/ssh/ssh_host_ed25519_key", &host_ed, true);
        t.plant_private("/ProgramData/ssh/ssh_host_rsa_key", &host_rsa, false);
        t.put("/ProgramData/ssh/sshd_config", "Port 22\n");
        t.put(
            "/Users/alice/.ssh/authorized_keys",
            format!("{}\n", alice.public),
        );
        t.plant_private("/Users/alice/.ssh/id_ed25519", &alice_id, true);
        t.put(PS_HISTORY, "net user ops SECRETCMD /add\r\n");
        t.mkdir("/Users/Public/Documents");
        t.mkdir("/Users/bob/.ssh");
        t.put(
            "/Windows/Panther/unattend.xml",
            utf16le_bom(&answer(&format!(
                "<UserAccounts>\n<AdministratorPassword>\n<Value>{ADMIN_PW}</Value>\n\
                 <PlainText>true</PlainText>\n</AdministratorPassword>\n</UserAccounts>\n\
                 <AutoLogon>\n<Password>\n<Value>{AUTOLOGON_PW}</Value>\n\
                 <PlainText>false</PlainText>\n</Password>\n<Enabled>true</Enabled>\n</AutoLogon>"
            ))),
        );
        // What Setup leaves in its cached copy: no finding.
        t.put(
            "/Windows/System32/Sysprep/unattend.xml",
            answer(
                "<UserAccounts><AdministratorPassword><Value>*SENSITIVE*DATA*DELETED*</Value>\
                 <PlainText>true</PlainText></AdministratorPassword></UserAccounts>",
            ),
        );
        t.put(
            "/Autounattend.xml",
            answer(&format!(
                "<UserAccounts><LocalAccounts><LocalAccount wcm:action=\"add\">\n\
                 <Password><Value>{LOCAL_PW}</Value></Password>\n<Name>ops</Name>\n\
                 </LocalAccount></LocalAccounts></UserAccounts>"
            )),
        );
        // Memory: data in the hibernation and swap files, zeros in the page file.
        let mut memory = vec![0u8; 300_000];
        memory[200_000..200_016].copy_from_slice(b"MEMORY-SECRET-42");
        t.put("/hiberfil.sys", &memory);
        t.put("/swapfile.sys", &memory[150_000..]);
        t.put("/pagefile.sys", vec![0u8; 1 << 20]);
        t.put("/ProgramData/Amazon/EC2Launch/state/.run-once", "");
        t.put(
            "/ProgramData/Amazon/EC2Launch/state/state.json",
            "{\"stage\":\"postReady\"}",
        );
        t.put(
            "/ProgramData/Amazon/EC2Launch/config/agent-config.yml",
            "version: 1.0\n",
        );
        plant_hives(t, &[INSTANCE]);
        vec![admin1, admin2, alice, alice_id, host_ed, host_rsa]
    }

    fn check_planted(volume_kind: Volume) {
        let t = Tree::new();
        let keys = plant_windows(&t);
        let fs = volume(&t, volume_kind);
        let audit = scan(fs.as_ref());
        use Severity::*;
        let expected = [
            (High, "unattend-password", "/Autounattend.xml"),
            (
                High,
                "ssh-authorized-key",
                "/ProgramData/ssh/administrators_authorized_keys",
            ),
            (
                High,
                "ssh-authorized-key",
                "/ProgramData/ssh/administrators_authorized_keys",
            ),
            (
                Medium,
                "ssh-authorized-keys-invalid-line",
                "/ProgramData/ssh/administrators_authorized_keys",
            ),
            (
                Medium,
                "ssh-host-key",
                "/ProgramData/ssh/ssh_host_ed25519_key",
            ),
            (Medium, "ssh-host-key", "/ProgramData/ssh/ssh_host_rsa_key"),
            (
                Medium,
                "cloud-agent-state",
                "/ProgramData/Amazon/EC2Launch/state/.run-once",
            ),
            (
                Medium,
                "cloud-agent-state",
                "/ProgramData/Amazon/EC2Launch/state/state.json",
            ),
            (
                High,
                "ssh-authorized-key",
                "/Users/alice/.ssh/authorized_keys",
            ),
            (High, "ssh-private-key", "/Users/alice/.ssh/id_ed25519"),
            (Low, "history", PS_HISTORY),
            (High, "unattend-password", "/Windows/Panther/unattend.xml"),
            (High, "unattend-password", "/Windows/Panther/unattend.xml"),
            (
                Low,
                "cloud-agent-state",
                "/Windows/System32/config/SOFTWARE",
            ),
            (Medium, "hibernation-file", "/hiberfil.sys"),
            (Info, "page-file", "/pagefile.sys"),
            (Medium, "page-file", "/swapfile.sys"),
        ]
        .map(|(s, c, p)| (s, c, p.to_owned()));
        let mut got = summary(&audit);
        // The order of paths is byte order: `/ProgramData/Amazon` before `/ProgramData/ssh`.
        got.sort_by(|a, b| a.2.cmp(&b.2).then(a.1.cmp(b.1)));
        let mut want = expected.to_vec();
        want.sort_by(|a, b| a.2.cmp(&b.2).then(a.1.cmp(b.1)));
        assert_eq!(got, want, "{volume_kind:?}: {audit:#?}");
        assert!(
            audit.problems.is_empty(),
            "{volume_kind:?}: {:?}",
            audit.problems
        );

        let one = |path: &str, code: &str| {
            let m = messages(&audit, path, code);
            assert_eq!(m.len(), 1, "{path} {code}: {m:?}");
            m[0].to_owned()
        };
        let admins = messages(
            &audit,
            "/ProgramData/ssh/administrators_authorized_keys",
            "ssh-authorized-key",
        );
        assert_eq!(
            admins,
            [
                format!(
                    "line 1: key 1 of 2, can log in: ED25519 {} (256 bits), comment \"admin@build\"",
                    keys[0].fingerprint
                ),
                format!(
                    "line 3: key 2 of 2, can log in: RSA {} (2048 bits), no comment",
                    keys[1].fingerprint
                ),
            ]
        );
        assert!(
            one("/Users/alice/.ssh/authorized_keys", "ssh-authorized-key")
                .contains(&keys[2].fingerprint)
        );
        assert!(
            one("/Users/alice/.ssh/id_ed25519", "ssh-private-key").contains(&keys[3].fingerprint)
        );
        for (path, key) in [
            ("/ProgramData/ssh/ssh_host_ed25519_key", &keys[4]),
            ("/ProgramData/ssh/ssh_host_rsa_key", &keys[5]),
        ] {
            let m = one(path, "ssh-host-key");
            assert!(m.contains(&key.fingerprint), "{m}");
        }
        let unattend = messages(&audit, "/Windows/Panther/unattend.xml", "unattend-password");
        assert_eq!(
            unattend,
            [
                "line 6: AdministratorPassword holds a password in plain text (not shown)",
                "line 12: AutoLogon/Password holds a password \"hidden\" with PlainText false: \
                 base64, which anyone can decode (not shown)",
            ]
        );
        assert_eq!(
            one("/Autounattend.xml", "unattend-password"),
            "line 6: LocalAccount/Password holds a password, as given: no PlainText setting \
             (not shown)"
        );
        assert_eq!(
            one(PS_HISTORY, "history"),
            "a PowerShell history of 29 bytes: it may hold secrets typed on command lines \
             (not shown)"
        );
        assert!(one("/hiberfil.sys", "hibernation-file").contains("with data from byte 200000"));
        assert!(one("/swapfile.sys", "page-file").contains("with data from byte 50000"));
        assert!(one("/pagefile.sys", "page-file").contains("of 1.0 MiB that holds only zeros"));
        assert!(
            one("/Windows/System32/config/SOFTWARE", "cloud-agent-state").contains(&format!(
                "Cloudbase Solutions\\Cloudbase-Init\\{INSTANCE}\\Plugins"
            ))
        );

        // No secret anywhere in what the audit says.
        let json = serde_json::to_string(&audit).unwrap();
        let mut secrets = vec![
            ADMIN_PW.to_owned(),
            AUTOLOGON_PW.to_owned(),
            LOCAL_PW.to_owned(),
            "SECRETGARBAGE".to_owned(),
            "MEMORY-SECRET".to_owned(),
            "SECRETCMD".to_owned(),
        ];
        for k in &keys {
            secrets.push(k.data().to_owned());
            let private = k.private_text();
            secrets.extend(private.lines().filter(|l| l.len() > 20).map(str::to_owned));
        }
        for s in &secrets {
            assert!(!json.contains(s.as_str()), "{volume_kind:?}: {s} in {json}");
        }
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn finds_every_planted_windows_item_on_fat() {
        check_planted(Volume::Fat);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn finds_every_planted_windows_item_on_ntfs() {
        check_planted(Volume::Ntfs);
    }

    /// Names in any case: NTFS looks paths up without regard to case, and the answer files,
    /// host keys and key files are matched by name without regard to case.
    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn names_in_any_case_on_ntfs() {
        let t = Tree::new();
        let key = t.keygen("k", "ed25519", "", "");
        t.put(
            "/programdata/SSH/Administrators_Authorized_Keys",
            format!("{}\n", key.public),
        );
        t.put(
            "/WINDOWS/panther/UNATTEND.XML",
            answer(&format!(
                "<AutoLogon><Password><Value>{ADMIN_PW}</Value></Password></AutoLogon>"
            )),
        );
        t.put(
            "/WINDOWS/system32/SYSPREP/AutoUnattend.Xml",
            answer(&format!(
                "<UserAccounts><AdministratorPassword><Value>{ADMIN_PW}</Value>\
                 <PlainText>TRUE</PlainText></AdministratorPassword></UserAccounts>"
            )),
        );
        t.put(
            "/Users/Default/.SSH/AUTHORIZED_KEYS",
            format!("{}\n", key.public),
        );
        t.put("/HIBERFIL.SYS", "x");
        let fs = volume(&t, Volume::Ntfs);
        let audit = scan(fs.as_ref());
        use Severity::*;
        let expected = [
            (Medium, "hibernation-file", "/hiberfil.sys"),
            (
                High,
                "ssh-authorized-key",
                "/ProgramData/ssh/Administrators_Authorized_Keys",
            ),
            (
                High,
                "ssh-authorized-key",
                "/Users/Default/.ssh/AUTHORIZED_KEYS",
            ),
            (High, "unattend-password", "/Windows/Panther/UNATTEND.XML"),
            (
                High,
                "unattend-password",
                "/Windows/System32/Sysprep/AutoUnattend.Xml",
            ),
        ]
        .map(|(s, c, p)| (s, c, p.to_owned()));
        let mut got = summary(&audit);
        got.sort();
        let mut want = expected.to_vec();
        want.sort();
        assert_eq!(got, want, "{audit:#?}");
        assert!(audit.problems.is_empty(), "{:?}", audit.problems);
    }

    /// Names that differ only in case (NTFS's POSIX namespace, which ntfs-3g writes): the key
    /// under one of them may be what Windows sees, so the audit says it is incomplete.
    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn names_that_differ_only_in_case_make_the_audit_incomplete() {
        let t = Tree::new();
        let key = t.keygen("k", "ed25519", "", "");
        t.put("/ProgramData/ssh/sshd_config", "Port 22\n");
        t.put(
            "/PROGRAMDATA/ssh/administrators_authorized_keys",
            format!("{}\n", key.public),
        );
        t.put("/Users/alice/.ssh/authorized_keys", "");
        t.put(
            "/Users/alice/.SSH/authorized_keys",
            format!("{}\n", key.public),
        );
        let fs = volume(&t, Volume::Ntfs);
        let audit = scan(fs.as_ref());
        let problems = audit.problems.join("\n");
        assert!(
            problems
                .contains("/: names that differ only in case: \"PROGRAMDATA\" and \"ProgramData\"")
                || problems.contains(
                    "/: names that differ only in case: \"ProgramData\" and \"PROGRAMDATA\""
                ),
            "{problems}"
        );
        assert!(
            problems.contains("/Users/alice: names that differ only in case"),
            "{problems}"
        );
        assert_eq!(audit.problems.len(), 2, "{problems}");
    }

    /// What a clean, generalized Windows volume holds: no finding, no problem.
    fn check_clean(volume_kind: Volume) {
        let t = Tree::new();
        t.put("/Windows/System32/ntoskrnl.exe", "MZ");
        plant_hives(&t, &[]);
        t.put(
            "/Windows/Panther/unattend.xml",
            answer(
                "<UserAccounts><AdministratorPassword><Value>*SENSITIVE*DATA*DELETED*</Value>\
                 <PlainText>true</PlainText></AdministratorPassword></UserAccounts>",
            ),
        );
        t.put("/ProgramData/ssh/sshd_config", "Port 22\n");
        t.put(
            "/ProgramData/ssh/ssh_host_ed25519_key.pub",
            "ssh-ed25519 AAAA x\n",
        );
        t.mkdir("/ProgramData/Amazon/EC2Launch/state");
        t.mkdir("/Users/Public/Documents");
        t.mkdir("/Users/Administrator/.ssh");
        let fs = volume(&t, volume_kind);
        let audit = scan(fs.as_ref());
        assert_eq!(audit, Audit::default(), "{volume_kind:?}");
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn a_clean_windows_volume_on_fat_has_no_findings() {
        check_clean(Volume::Fat);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn a_clean_windows_volume_on_ntfs_has_no_findings() {
        check_clean(Volume::Ntfs);
    }

    /// The bounds: a hive over the limit is a problem; a file of zeros longer than what is read
    /// stays medium, and says how much was read.
    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn bounds_on_hives_and_zero_scans() {
        let t = Tree::new();
        plant_hives(&t, &[INSTANCE]);
        t.put("/pagefile.sys", vec![0u8; 10_000]);
        let mut hiber = vec![0u8; 10_000];
        hiber[5000] = 1;
        t.put("/hiberfil.sys", hiber);
        let fs = volume(&t, Volume::Fat);
        let small = Limits {
            hive: 8192,
            zero_scan: 4096,
            ..Limits::DEFAULT
        };
        let audit = scan_with(fs.as_ref(), &small);
        assert_eq!(audit.problems.len(), 1, "{audit:#?}");
        assert!(
            audit.problems[0].starts_with(
                "/Windows/System32/config/SOFTWARE: cannot read the registry hive, \
                 Cloudbase-Init state not audited: "
            ) && audit.problems[0].contains("8192"),
            "{:?}",
            audit.problems
        );
        use Severity::*;
        assert_eq!(
            summary(&audit),
            [
                (Medium, "hibernation-file", "/hiberfil.sys".to_owned()),
                (Medium, "page-file", "/pagefile.sys".to_owned()),
            ]
        );
        assert!(
            audit.findings[0]
                .message
                .contains("its first 4.0 KiB read as zeros, the rest was not read"),
            "{:?}",
            audit.findings[0]
        );
        assert!(
            audit.findings[1]
                .message
                .contains("its first 4.0 KiB read as zeros, the rest was not read"),
            "{:?}",
            audit.findings[1]
        );
        // With the default bounds: the data at byte 5000, the page file all zeros.
        let audit = scan(fs.as_ref());
        assert!(audit.problems.is_empty(), "{audit:#?}");
        assert_eq!(
            summary(&audit),
            [
                (
                    Low,
                    "cloud-agent-state",
                    "/Windows/System32/config/SOFTWARE".to_owned()
                ),
                (Medium, "hibernation-file", "/hiberfil.sys".to_owned()),
                (Info, "page-file", "/pagefile.sys".to_owned()),
            ]
        );
        assert!(
            audit.findings[1]
                .message
                .contains("with data from byte 5000")
        );
    }

    /// A SOFTWARE hive that is not a hive, or is dirty: a problem, so the audit is incomplete.
    fn check_unreadable_hive(volume_kind: Volume) {
        for (content, says) in [
            (
                b"this is not a registry hive".to_vec(),
                "not a registry hive",
            ),
            (dirty_hive(), "the hive is dirty"),
        ] {
            let t = Tree::new();
            t.put("/Windows/System32/config/SOFTWARE", content);
            let fs = volume(&t, volume_kind);
            let audit = scan(fs.as_ref());
            assert!(audit.findings.is_empty(), "{audit:#?}");
            assert_eq!(audit.problems.len(), 1, "{audit:#?}");
            let p = &audit.problems[0];
            assert!(
                p.starts_with(
                    "/Windows/System32/config/SOFTWARE: Cloudbase-Init state not audited"
                ) && p.contains(says),
                "{p}"
            );
        }
    }

    /// A SOFTWARE hive whose primary sequence number says a write did not finish.
    fn dirty_hive() -> Vec<u8> {
        let t = Tree::new();
        plant_hives(&t, &[INSTANCE]);
        let mut hive = std::fs::read(t.path("/Windows/System32/config/SOFTWARE")).unwrap();
        let seq = u32::from_le_bytes(hive[4..8].try_into().unwrap()) + 1;
        hive[4..8].copy_from_slice(&seq.to_le_bytes());
        let sum = (0..127).fold(0u32, |x, i| {
            x ^ u32::from_le_bytes(hive[i * 4..i * 4 + 4].try_into().unwrap())
        });
        hive[508..512].copy_from_slice(&sum.to_le_bytes());
        hive
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn an_unreadable_software_hive_on_fat_is_a_problem() {
        check_unreadable_hive(Volume::Fat);
    }

    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn an_unreadable_software_hive_on_ntfs_is_a_problem() {
        check_unreadable_hive(Volume::Ntfs);
    }

    /// Symbolic links where the audit looks for files (ntfs-3g writes them as Interix links,
    /// the NTFS reader follows them): what they lead to is audited under the link's name, as
    /// Windows opens it; a link that leads nowhere is a problem; a link of another name is
    /// none of the audit's business.
    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn symlinked_files_on_ntfs_are_followed() {
        let t = Tree::new();
        let key = t.keygen("k", "ed25519", "", "");
        let id = t.keygen("id", "ed25519", "", "");
        t.put("/Keep/admin_keys", format!("{}\n", key.public));
        t.link(
            "/ProgramData/ssh/administrators_authorized_keys",
            "../../Keep/admin_keys",
        );
        t.plant_private("/Keep/host", &id, true);
        t.link("/ProgramData/ssh/ssh_host_ed25519_key", "../../Keep/host");
        t.link("/ProgramData/ssh/unrelated", "nowhere");
        t.put(
            "/Keep/answer.xml",
            answer(&format!(
                "<AutoLogon><Password><Value>{ADMIN_PW}</Value></Password></AutoLogon>"
            )),
        );
        t.link("/Windows/Panther/unattend.xml", "../../Keep/answer.xml");
        t.plant_private("/Keep/id", &id, true);
        t.link("/Users/alice/.ssh/id_ed25519", "../../../Keep/id");
        t.link("/Users/alice/.ssh/authorized_keys", "../nowhere");
        let fs = volume(&t, Volume::Ntfs);
        let audit = scan(fs.as_ref());
        let codes: Vec<(&str, &str)> = audit
            .findings
            .iter()
            .map(|f| (f.code, f.path.as_str()))
            .collect();
        for want in [
            (
                "ssh-authorized-key",
                "/ProgramData/ssh/administrators_authorized_keys",
            ),
            ("ssh-host-key", "/ProgramData/ssh/ssh_host_ed25519_key"),
            ("unattend-password", "/Windows/Panther/unattend.xml"),
            ("ssh-private-key", "/Users/alice/.ssh/id_ed25519"),
        ] {
            assert!(codes.contains(&want), "{want:?} not in {audit:#?}");
        }
        assert_eq!(
            audit.problems,
            [
                "/Users/alice/.ssh/authorized_keys: a symbolic link that leads to nothing on this \
              volume; what it stands for was not audited"
            ],
            "{audit:#?}"
        );
    }

    use crate::ondisk::regf::test_hive::HiveBytes;

    /// A root with `Cloudbase Solutions\Cloudbase-Init` holding `ids`, and `Wow6432Node`
    /// leading to the very same `Cloudbase Solutions` key (cells shared, as a hostile hive may).
    fn cloudbase_hive(h: &mut HiveBytes, ids: &[u32]) -> Vec<u8> {
        let init = h.nk("Cloudbase-Init", ids);
        let solutions = h.nk("Cloudbase Solutions", &[init]);
        let wow = h.nk("Wow6432Node", &[solutions]);
        let root = h.nk("ROOT", &[solutions, wow]);
        std::mem::replace(h, HiveBytes::new()).finish(root)
    }

    /// The audit of a FAT volume holding only `software` as its SOFTWARE hive, timed.
    fn audit_software(software: Vec<u8>) -> (Audit, std::time::Duration) {
        let t = Tree::new();
        t.put("/Windows/System32/config/SOFTWARE", software);
        let fs = volume(&t, Volume::Fat);
        let start = std::time::Instant::now();
        let audit = scan(fs.as_ref());
        (audit, start.elapsed())
    }

    /// 20,000 Cloudbase-Init instance ids, under both base keys: the first 4,096 are looked
    /// into (a planted state among them is found), the rest are a problem (the audit is
    /// incomplete), and the whole takes well under the minutes a walk from the root per id did.
    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn many_cloudbase_init_ids_are_capped() {
        let mut h = HiveBytes::new();
        let plugins = h.nk("Plugins", &[]);
        let ids: Vec<u32> = (0..20_000)
            .map(|i| match i {
                100 => h.nk("i-planted", &[plugins]),
                _ => h.nk(&format!("i-{i:05}"), &[]),
            })
            .collect();
        let (audit, took) = audit_software(cloudbase_hive(&mut h, &ids));
        assert!(took.as_secs_f64() < 2.0, "{took:?}");
        let cap = |key: &str| {
            format!(
                "/Windows/System32/config/SOFTWARE: {key}: 20000 instance ids, only the first \
                 4096 audited: Cloudbase-Init state not audited in full"
            )
        };
        assert_eq!(
            audit.problems,
            [
                cap("Cloudbase Solutions\\Cloudbase-Init"),
                cap("Wow6432Node\\Cloudbase Solutions\\Cloudbase-Init"),
            ],
            "{audit:#?}"
        );
        assert_eq!(audit.findings.len(), 2, "{audit:#?}");
        for f in &audit.findings {
            assert_eq!((f.severity, f.code), (Severity::Low, "cloud-agent-state"));
            assert!(f.message.contains("\\i-planted\\Plugins"), "{f:?}");
        }
    }

    /// Instance ids that all lead to one long subkey list: more cells than the check's budget,
    /// which is a problem (not audited), never a clean answer.
    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn an_exhausted_hive_budget_is_a_problem() {
        let mut h = HiveBytes::new();
        let other = h.nk("Other", &[]);
        let shared = h.li(&[other; 1000]);
        let ids: Vec<u32> = (0..3000)
            .map(|i| h.nk_list(&format!("i-{i:04}"), 1000, shared))
            .collect();
        let (audit, took) = audit_software(cloudbase_hive(&mut h, &ids));
        assert!(took.as_secs_f64() < 2.0, "{took:?}");
        assert!(audit.findings.is_empty(), "{audit:#?}");
        assert!(!audit.problems.is_empty());
        assert!(
            audit.problems.iter().all(|p| p.starts_with(
                "/Windows/System32/config/SOFTWARE: Cloudbase Solutions\\Cloudbase-Init: \
                 Cloudbase-Init state not audited: the lookup visited over"
            ) || p.starts_with(
                "/Windows/System32/config/SOFTWARE: Wow6432Node\\Cloudbase Solutions\\\
                 Cloudbase-Init: Cloudbase-Init state not audited: the lookup visited over"
            )),
            "{:?}",
            audit.problems
        );
    }
}
