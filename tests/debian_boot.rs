//! The real-Debian boot proof, big brother of tests/boot.rs: a debootstrapped bookworm tree
//! (fixtures/make-debian-tree.sh: minbase, linux-image-cloud-amd64, systemd-sysv,
//! systemd-boot-efi, udev) goes through templates/debian-outscale.toml — as
//! tests/debian/debian-test.toml, the same template plus the guest check shipped by `[[file]]`
//! — and the qcow2, a hybrid disk, boots under qemu-system-x86_64 with SeaBIOS and with OVMF
//! (TCG), both at once, until systemd reaches
//! multi-user.target. Then tests/debian/mkomi-check prints what it found on ttyS0: the marker
//! read from the root file system, the root mounted read-write, a machine-id generated at
//! boot, no SSH host key from the build. Needs root (debootstrap, `tar -x` keeping owners).

mod common;
use common::qemu::{self, Firmware};
use common::*;
use std::collections::BTreeMap;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Where the debootstrapped tree and its tarball are kept between runs.
fn cache() -> PathBuf {
    std::env::var_os("MKOMI_DEBIAN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/mkomi-debian/cache"))
}

fn test_template() -> PathBuf {
    repo().join("tests/debian/debian-test.toml")
}

fn parse_toml(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap();
    text.parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `[[file]]` entries of a template.
fn files(t: &toml::Table) -> Vec<toml::Table> {
    t.get("file")
        .and_then(|f| f.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_table().cloned()).collect())
        .unwrap_or_default()
}

/// What the marker file of the test template holds (the guest must print it back).
fn expected_marker() -> String {
    let t = parse_toml(&test_template());
    let f = files(&t)
        .into_iter()
        .find(|f| f.get("path").and_then(|p| p.as_str()) == Some("/etc/mkomi-marker"))
        .expect("debian-test.toml ships /etc/mkomi-marker");
    f["content"].as_str().unwrap().trim().to_string()
}

/// The fixture: the tarball and what was planted in it for the sanitize step to remove.
struct Fixture {
    tarball: PathBuf,
    planted_machine_id: String,
    planted_keys: Vec<String>,
}

fn fixture(d: &Path) -> Fixture {
    let out_dir = d.join("fixture");
    let mut prep = Command::new("bash");
    prep.args([
        s(&repo().join("fixtures/make-debian-tree.sh")),
        s(&cache()),
        s(&out_dir),
    ]);
    // A cold run downloads ~70 MB of packages and installs them: minutes, not seconds.
    let out = run_with_timeout(prep, Duration::from_secs(1800));
    assert!(
        out.status.success(),
        "make-debian-tree.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |name: &str| std::fs::read_to_string(out_dir.join(name)).unwrap();
    let planted_machine_id = read("planted-machine-id").trim().to_string();
    let planted_keys: Vec<String> = read("planted-ssh-host-keys")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(planted_machine_id.len(), 32);
    assert!(
        !planted_keys.is_empty(),
        "the fixture must plant SSH host keys"
    );
    Fixture {
        tarball: out_dir.join("debian.tar.gz"),
        planted_machine_id,
        planted_keys,
    }
}

/// Removes ANSI escape sequences (systemd colours the unit names, OVMF moves the cursor) and
/// carriage returns, so lines can be matched as text.
fn plain(console: &[u8]) -> String {
    let text = String::from_utf8_lossy(console);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // CSI: parameters and intermediates, then one final byte in @..~.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// The `MKOMI-CHECK key=value` lines, anywhere in a line (a login prompt may precede one).
fn checks(console: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in console.lines() {
        if let Some(i) = line.find("MKOMI-CHECK ") {
            let rest = line[i + "MKOMI-CHECK ".len()..].trim();
            let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
            m.insert(k.to_string(), v.trim().to_string());
        }
    }
    m
}

/// Boots `disk` (qcow2) under `fw` with TCG; returns the console as plain text once the guest
/// powers off (or `limit` passes), how long that took, and whether qemu exited 0.
fn boot(disk: &Path, fw: Firmware, d: &Path, limit: Duration) -> (String, Duration, bool) {
    let b = qemu::boot(disk, fw, d, 1024, limit);
    eprintln!("debian boot {fw:?}: qemu ran {:?}", b.took);
    (plain(b.console.as_bytes()), b.took, b.exited_ok)
}

/// Asserts every MKOMI-CHECK line of a boot of the test template.
fn assert_booted(console: &str, took: Duration, exited_ok: bool, fixture: &Fixture) {
    let c = checks(console);
    eprintln!("debian boot: {c:?}");
    let ctx = || format!("after {took:?}; checks {c:?}; console:\n{console}");
    assert!(
        console.contains("Reached target multi-user.target"),
        "systemd did not report multi-user.target reached {}",
        ctx()
    );
    assert_eq!(
        c.get("done").map(String::as_str),
        Some(""),
        "mkomi-check did not finish {}",
        ctx()
    );
    assert_eq!(
        c.get("multi-user").map(String::as_str),
        Some("active"),
        "{}",
        ctx()
    );
    assert_eq!(
        c.get("marker"),
        Some(&expected_marker()),
        "the marker read from the root file system {}",
        ctx()
    );
    assert_eq!(c.get("root").map(String::as_str), Some("rw"), "{}", ctx());
    let id = c.get("machine-id").cloned().unwrap_or_default();
    assert!(
        id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "machine-id {id:?} is not 32 lower-case hex digits (EMPTY or \"uninitialized\" = not generated) {}",
        ctx()
    );
    assert_ne!(
        id,
        fixture.planted_machine_id,
        "the machine-id planted in the tree shipped {}",
        ctx()
    );
    if let Ok(host) = std::fs::read_to_string("/etc/machine-id") {
        assert_ne!(id, host.trim(), "the build host's machine-id {}", ctx());
    }
    assert_eq!(
        c.get("ssh-host-keys").map(String::as_str),
        Some("none"),
        "SSH host keys shipped (planted: {:?}) {}",
        fixture.planted_keys,
        ctx()
    );
    // The tree has no /usr/bin/cloud-init: the template's if-exists entry must be skipped.
    assert_eq!(
        c.get("outscale-cloud-cfg").map(String::as_str),
        Some("absent"),
        "{}",
        ctx()
    );
    assert!(
        exited_ok,
        "qemu did not exit 0 (the guest powers off) {}",
        ctx()
    );
}

/// The full path: the tarball through the shipped template (as the test template).
#[test]
fn a_debian_tree_built_with_the_shipped_template_boots_to_multi_user() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fixture = fixture(d);

    let bundle = d.join("omi");
    let mut build = mkomi();
    build.args([
        "build",
        s(&test_template()),
        "--set",
        &format!("tree={}", s(&fixture.tarball)),
        "-o",
        s(&bundle),
        "-q",
    ]);
    let out = run_with_timeout(build, Duration::from_secs(600));
    assert!(
        out.status.success(),
        "build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&["verify", s(&bundle), "-q"]);

    // The hybrid disk, under both firmwares at once (one core each).
    let disk = bundle.join("sda1.qcow2");
    let boots: Vec<_> = std::thread::scope(|scope| {
        let runs: Vec<_> = [Firmware::Bios64, Firmware::Uefi64]
            .into_iter()
            .map(|fw| {
                let disk = &disk;
                scope.spawn(move || (fw, boot(disk, fw, d, Duration::from_secs(900))))
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for (fw, (console, took, exited_ok)) in boots {
        eprintln!("debian boot under {fw:?}");
        assert_booted(&console, took, exited_ok, &fixture);
    }
}

/// The issue's "same tree through every source": the Debian tree as the fixture's tar.gz, as a
/// tar.zst, extracted to a directory (as root, owners and xattrs kept) and as an OCI image
/// layout (one gzip layer, written by tests/tree/treetool.py) gives the same bundle, byte for
/// byte, through the shipped template.
#[test]
fn the_debian_tree_through_every_source_gives_the_same_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fixture = fixture(d);
    let gz = s(&fixture.tarball);
    let plain = d.join("debian.tar");
    let zst = d.join("debian.tar.zst");
    let tree = d.join("tree");
    let layout = d.join("layout");
    let sh = |script: &str| {
        tool(
            "sh",
            &["-euc", script, "sh", gz, s(&plain), s(&zst), s(&tree)],
        );
    };
    sh(r#"gzip -dc "$1" >"$2"; zstd -q -o "$3" "$2"; mkdir "$4"
          tar --numeric-owner --xattrs --xattrs-include='*' -xpf "$2" -C "$4""#);
    tool(
        "python3",
        &[
            s(&repo().join("tests/tree/treetool.py")),
            "oci",
            s(&layout),
            s(&plain),
        ],
    );
    let mut sums = Vec::new();
    for (name, source) in [
        ("tar.gz", fixture.tarball.clone()),
        ("tar.zst", zst),
        ("directory", tree),
        ("oci", layout),
    ] {
        let out = d.join(format!("omi-{name}"));
        let mut build = mkomi();
        build.args([
            "build",
            s(&repo().join("templates/debian-outscale.toml")),
            "--set",
            &format!("tree={}", s(&source)),
            "-o",
            s(&out),
            "-q",
            "--no-sync",
        ]);
        let res = run_with_timeout(build, Duration::from_secs(600));
        assert!(
            res.status.success(),
            "build from the {name}: {}",
            String::from_utf8_lossy(&res.stderr)
        );
        sums.push((
            name,
            std::fs::read_to_string(out.join("SHA256SUMS")).unwrap(),
        ));
    }
    for (name, sum) in &sums[1..] {
        assert_eq!(
            sum, &sums[0].1,
            "the {name} gives another bundle than the tar.gz"
        );
    }
}

#[test]
fn the_test_template_is_the_shipped_template_plus_test_files() {
    let shipped = parse_toml(&repo().join("templates/debian-outscale.toml"));
    let test = parse_toml(&test_template());
    let keys = |t: &toml::Table| t.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&shipped), keys(&test));
    for (k, v) in &shipped {
        if k != "file" {
            assert_eq!(Some(v), test.get(k), "[{k}] differs");
        }
    }
    let test_files = files(&test);
    for f in files(&shipped) {
        assert!(test_files.contains(&f), "the test template lacks {f:?}");
    }
    assert!(
        test_files.len() > files(&shipped).len(),
        "no test files added"
    );
}

/// The cloud-init settings are the ones the issue names, and valid YAML (python3's yaml module
/// is the oracle when it is installed).
#[test]
fn the_shipped_cloud_init_settings_are_outscale_s() {
    let shipped = parse_toml(&repo().join("templates/debian-outscale.toml"));
    let f = files(&shipped)
        .into_iter()
        .find(|f| f["path"].as_str() == Some("/etc/cloud/cloud.cfg.d/90-outscale.cfg"))
        .expect("the cloud-init file");
    assert_eq!(f["if-exists"].as_str(), Some("/usr/bin/cloud-init"));
    let yaml = f["content"].as_str().unwrap();
    for needle in [
        "datasource_list: [ Ec2 ]",
        "strict_id: false",
        "http://169.254.169.254",
        "name: outscale",
        "when: [ boot, hotplug ]",
    ] {
        assert!(yaml.contains(needle), "{needle:?} missing from:\n{yaml}");
    }
    let script = "import sys, yaml, json; print(json.dumps(yaml.safe_load(sys.stdin)))";
    let Ok(mut child) = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("python3 not found: YAML not parsed");
        return;
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if String::from_utf8_lossy(&out.stderr).contains("No module named 'yaml'") {
        eprintln!("python3 has no yaml module: YAML not parsed");
        return;
    }
    assert!(
        out.status.success(),
        "python3 yaml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["datasource_list"], serde_json::json!(["Ec2"]));
    assert_eq!(v["datasource"]["Ec2"]["strict_id"], false);
    assert_eq!(
        v["datasource"]["Ec2"]["metadata_urls"],
        serde_json::json!(["http://169.254.169.254"])
    );
    assert_eq!(v["system_info"]["default_user"]["name"], "outscale");
    assert_eq!(
        v["updates"]["network"]["when"],
        serde_json::json!(["boot", "hotplug"])
    );
}

/// The console parsing the verdict rests on.
#[test]
fn check_lines_are_found_behind_escapes_and_prompts() {
    let raw = b"\x1b[0;32m  OK  \x1b[0m] Reached target \x1b[0;1;39mmulti-user.target\x1b[0m - Multi-User System.\r\nlocalhost login: MKOMI-CHECK marker=abc\r\n\r\nMKOMI-CHECK done\r\n";
    let p = plain(raw);
    assert!(p.contains("Reached target multi-user.target - Multi-User System."));
    let c = checks(&p);
    assert_eq!(c.get("marker").map(String::as_str), Some("abc"));
    assert_eq!(c.get("done").map(String::as_str), Some(""));
    assert_eq!(c.len(), 2);
}
