//! Windows images (issue #17): `mkomi inspect`, `register` and `build` on the synthetic disks of
//! fixtures/make-windows.sh — NTFS made by mkntfs and filled through an ntfs-3g FUSE mount,
//! registry hives made by hivex (fixtures/make-hives.py), GPT and MBR tables by sgdisk and
//! sfdisk. Needs root (FUSE), ntfs-3g, gdisk, fdisk, dosfstools, mtools, e2fsprogs,
//! libhivex-bin and python3-hivex (Debian's /usr/bin/python3), busybox-static, qemu-utils, and
//! Python `jsonschema` for the schema check.
//!
//! The fixtures are built once per version of the scripts: cached under `MKOMI_WINDOWS_CACHE`
//! (else /var/tmp/mkomi-windows) in a directory named by the scripts' SHA-256.

mod common;
use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The directory holding the fixtures, built on first use.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut h = Sha256::new();
        for f in ["fixtures/make-windows.sh", "fixtures/make-hives.py"] {
            h.update(std::fs::read(repo().join(f)).expect(f));
        }
        let key: String = h
            .finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        let root = std::env::var_os("MKOMI_WINDOWS_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/mkomi-windows"));
        let dir = root.join(&key);
        if dir.join("done").exists() {
            return dir;
        }
        let tmp = root.join(format!("{key}.tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        let out = Command::new("bash")
            .arg(repo().join("fixtures/make-windows.sh"))
            .arg(&tmp)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fixtures/make-windows.sh failed (root, ntfs-3g, python3-hivex…?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(tmp.join("done"), "").unwrap();
        // Another test process may have made it meanwhile: theirs is as good.
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        dir
    })
}

fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

fn inspect(path: &Path) -> Value {
    let o = ok(&["inspect", s(path), "--json"]);
    serde_json::from_slice(&o.stdout).unwrap()
}

fn inspect_text(path: &Path) -> String {
    String::from_utf8(ok(&["inspect", s(path)]).stdout).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

/// Whether some line of `lines` contains every part of `parts`.
fn has_line(lines: &[String], parts: &[&str]) -> bool {
    lines.iter().any(|l| parts.iter().all(|p| l.contains(p)))
}

/// What every Windows fixture's installation says: Server 2022 Datacenter, 21H2, build 20348,
/// an x86_64 kernel that the registry agrees with.
fn assert_windows(r: &Value, part: u32) {
    let sum = &r["summary"];
    assert_eq!(sum["windows"], true, "{r:#}");
    assert_eq!(sum["os"], "Windows Server 2022 Datacenter");
    assert_eq!(
        sum["os_from"],
        format!(
            "partition {part}: /Windows/System32/ntoskrnl.exe and /Windows/System32/config/SYSTEM"
        )
    );
    assert_eq!(
        sum["windows_version"],
        serde_json::json!({"product_name": "Windows Server 2022 Datacenter",
            "edition": "ServerDatacenter", "version": "21H2", "build": "20348"})
    );
    assert_eq!(sum["machine"], "x86_64");
    assert_eq!(sum["architecture"], "x86_64");
    let ev = strings(&sum["architecture_evidence"]);
    assert_eq!(
        ev,
        [
            format!("partition {part}: /Windows/System32/ntoskrnl.exe: PE32+ x86_64 native"),
            format!(
                "partition {part}: SYSTEM\\ControlSet001\\Control\\Session Manager\\Environment: \
                 PROCESSOR_ARCHITECTURE=AMD64"
            ),
        ],
        "{r:#}"
    );
    assert!(
        sum["problems"].as_array().unwrap().is_empty(),
        "{:#}",
        sum["problems"]
    );
}

fn sysprep(r: &Value) -> (String, Vec<String>) {
    let p = &r["summary"]["sysprep"];
    (
        p["state"].as_str().unwrap().to_owned(),
        strings(&p["evidence"]),
    )
}

#[test]
fn uefi_windows_generalized_or_not() {
    for (name, state, image_state) in [
        (
            "uefi-gen.raw",
            "generalized",
            "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE",
        ),
        ("uefi-notgen.raw", "not-generalized", "IMAGE_STATE_COMPLETE"),
        // uefi-gen with the audit's findings planted: inspected the same.
        (
            "findings.raw",
            "generalized",
            "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE",
        ),
    ] {
        let disk = fixture(name);
        let r = inspect(&disk);
        assert_windows(&r, 3);
        let sum = &r["summary"];
        assert_eq!(sum["boot_modes"], serde_json::json!(["uefi"]), "{name}");
        let boot = strings(&sum["boot_evidence"]);
        assert!(
            has_line(
                &boot,
                &["uefi: partition 1: /EFI/Microsoft/Boot/bootmgfw.efi: PE32+ x86_64"]
            ),
            "{boot:?}"
        );
        // The Microsoft partition types are named.
        let types: Vec<&str> = r["disks"][0]["partition_table"]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type_name"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "esp",
                "microsoft-reserved",
                "microsoft-basic-data",
                "windows-recovery"
            ]
        );
        let vol = &r["disks"][0]["volumes"][2];
        assert_eq!(vol["windows"]["kernel"]["machine"], 0x8664);
        assert_eq!(vol["windows"]["processor_architecture"], "AMD64");
        assert_eq!(vol["bootmgr"], false);
        let (got, evidence) = sysprep(&r);
        assert_eq!(got, state, "{name}: {evidence:?}");
        assert!(
            has_line(
                &evidence,
                &[
                    "partition 3: ImageState=",
                    image_state,
                    "SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Setup\\State"
                ]
            ),
            "{evidence:?}"
        );
        assert!(
            has_line(
                &evidence,
                &[
                    "partition 3: ImageState=",
                    image_state,
                    "(Windows\\Setup\\State\\State.ini)"
                ]
            ),
            "{evidence:?}"
        );
        assert!(
            has_line(&evidence, &["GeneralizationState=7", "not used to decide"]),
            "{evidence:?}"
        );

        let text = inspect_text(&disk);
        for want in [
            "os            Windows Server 2022 Datacenter  (partition 3: /Windows/System32/ntoskrnl.exe",
            "windows       yes: Windows Server 2022 Datacenter, edition ServerDatacenter, version 21H2, build 20348",
            "architecture  x86_64",
            "PROCESSOR_ARCHITECTURE=AMD64",
            "boot modes    uefi",
            &format!("sysprep       {}", state.replace('-', " ")),
            image_state,
            "microsoft-basic-data",
        ] {
            assert!(text.contains(want), "{name}: {want:?} not in\n{text}");
        }
    }
}

#[test]
fn bios_windows_and_system_reserved_boot_legacy() {
    for (name, state, win_part, active) in [
        ("bios-gen.raw", "generalized", 1, 1),
        ("bios-notgen.raw", "not-generalized", 1, 1),
        ("sysres.raw", "generalized", 2, 1),
    ] {
        let disk = fixture(name);
        let r = inspect(&disk);
        assert_windows(&r, win_part);
        let sum = &r["summary"];
        assert_eq!(sum["boot_modes"], serde_json::json!(["legacy"]), "{name}");
        let boot = strings(&sum["boot_evidence"]);
        assert_eq!(
            boot,
            [
                "legacy: the MBR holds boot code".to_owned(),
                format!("legacy: partition {active} (active) holds /bootmgr and /Boot/BCD"),
            ],
            "{name}"
        );
        assert_eq!(sysprep(&r).0, state, "{name}");
        let vols = r["disks"][0]["volumes"].as_array().unwrap();
        assert_eq!(vols[active as usize - 1]["bootmgr"], true);
        if name == "sysres.raw" {
            // System Reserved holds the boot files and no Windows.
            assert_eq!(vols[0]["windows"], Value::Null);
            assert_eq!(vols[1]["bootmgr"], false);
        }
        assert!(inspect_text(&disk).contains("boot modes    legacy"));
    }
}

#[test]
fn ntfs_data_and_linux_with_a_stray_bootmgfw_are_not_windows() {
    let r = inspect(&fixture("ntfs-data.raw"));
    let sum = &r["summary"];
    assert_eq!(r["disks"][0]["volumes"][0]["filesystem"], "ntfs");
    assert_eq!(r["disks"][0]["volumes"][0]["windows"], Value::Null);
    assert!(
        r["disks"][0]["volumes"][0]["problems"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{r:#}"
    );
    assert_eq!(sum["windows"], false);
    assert_eq!(sum["os"], Value::Null);
    assert_eq!(sum["sysprep"], Value::Null);

    let disk = fixture("linux-stray.raw");
    let r = inspect(&disk);
    let sum = &r["summary"];
    assert_eq!(sum["windows"], false, "{r:#}");
    assert_eq!(sum["os"], "Debian GNU/Linux 12 (bookworm)");
    assert_eq!(sum["windows_version"], Value::Null);
    assert_eq!(sum["boot_modes"], serde_json::json!(["uefi"]));
    let boot = strings(&sum["boot_evidence"]);
    assert!(!has_line(&boot, &["bootmgfw"]), "{boot:?}");
    let text = inspect_text(&disk);
    assert!(!text.contains("windows       yes"), "{text}");

    // register: Debian, no launch requirements, no Windows warning.
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("omi");
    let o = ok(&["register", s(&disk), "-o", s(&out), "--name", "stray"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("Windows"), "{err}");
    let m = manifest(&out);
    assert_eq!(m["Inspection"]["Os"], "Debian GNU/Linux 12 (bookworm)");
    assert!(m.get("LaunchRequirements").is_none(), "{m:#}");
    assert!(m["Inspection"].get("Windows").is_none(), "{m:#}");
    qemu_check(&out.join("sda1.qcow2"));
}

#[test]
fn a_dirty_system_hive_makes_sysprep_unknown() {
    let disk = fixture("dirty.raw");
    let r = inspect(&disk);
    assert_eq!(r["summary"]["windows"], true);
    let (state, evidence) = sysprep(&r);
    assert_eq!(state, "unknown");
    assert!(
        has_line(
            &evidence,
            &["partition 3: SYSTEM hive: the hive is dirty", "not applied"]
        ),
        "{evidence:?}"
    );
    // The architecture still comes from the kernel; the registry's cross-check is missing.
    assert_eq!(r["summary"]["architecture"], "x86_64");
    assert!(inspect_text(&disk).contains("sysprep       unknown"));

    // register: a warning naming why, and the state recorded.
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("omi");
    let o = ok(&["register", s(&disk), "-o", s(&out), "--name", "dirty"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.lines().any(|l| l.starts_with("mkomi: warning: ")
            && l.contains("unknown")
            && l.contains("dirty")),
        "{err}"
    );
    let m = manifest(&out);
    assert_eq!(m["Inspection"]["Windows"]["Sysprep"], "unknown");
    assert_eq!(m["LaunchRequirements"]["MinVcores"], 2);
    qemu_check(&out.join("sda1.qcow2"));
}

#[test]
fn register_refuses_what_sysprep_has_not_generalized() {
    let d = tempfile::tempdir().unwrap();
    for name in ["uefi-notgen.raw", "bios-notgen.raw"] {
        let disk = fixture(name);
        let out = d.path().join(format!("refused-{name}"));
        let o = run(&["register", s(&disk), "-o", s(&out), "--name", "notgen"]);
        assert_eq!(o.status.code(), Some(1), "{name}");
        let err = String::from_utf8_lossy(&o.stderr);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(
            lines[0].starts_with(&format!("mkomi: {}: ", disk.display()))
                && lines[0].contains("not generalized")
                && lines[0].contains("IMAGE_STATE_COMPLETE")
                && lines[0].contains("--no-sysprep-check"),
            "{err}"
        );
        assert!(!out.exists(), "{name}: a refused image leaves no bundle");

        // --no-sysprep-check registers it, and says so.
        let out = d.path().join(format!("forced-{name}"));
        let o = ok(&[
            "register",
            s(&disk),
            "-o",
            s(&out),
            "--name",
            "notgen",
            "--no-sysprep-check",
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("warning") && err.contains("not generalized"),
            "{err}"
        );
        let m = manifest(&out);
        assert_eq!(
            m["Inspection"]["ChecksSkipped"],
            serde_json::json!(["sysprep"])
        );
        assert_eq!(m["Inspection"]["Windows"]["Sysprep"], "not-generalized");
        assert_eq!(m["LaunchRequirements"]["MinMemoryGib"], 4);
        qemu_check(&out.join("sda1.qcow2"));
    }
}

#[test]
fn register_records_a_generalized_windows() {
    let d = tempfile::tempdir().unwrap();
    for (name, modes) in [("uefi-gen.raw", "uefi"), ("sysres.raw", "legacy")] {
        let disk = fixture(name);
        let out = d.path().join(name);
        let o = ok(&["register", s(&disk), "-o", s(&out), "--name", "win"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("2 vCores") && !err.contains("not generalized"),
            "{err}"
        );
        let m = manifest(&out);
        assert_eq!(m["Image"]["Architecture"], "x86_64");
        assert_eq!(m["Image"]["BootModes"], serde_json::json!([modes]));
        let i = &m["Inspection"];
        assert_eq!(i["Os"], "Windows Server 2022 Datacenter");
        assert_eq!(i["Machine"], "x86_64");
        assert!(i.get("ChecksSkipped").is_none(), "{i:#}");
        let w = &i["Windows"];
        assert_eq!(w["ProductName"], "Windows Server 2022 Datacenter");
        assert_eq!(w["Edition"], "ServerDatacenter");
        assert_eq!(w["Version"], "21H2");
        assert_eq!(w["Build"], "20348");
        assert_eq!(w["Sysprep"], "generalized");
        let ev = strings(&w["SysprepEvidence"]);
        assert!(
            has_line(&ev, &["ImageState=IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"]),
            "{ev:?}"
        );
        assert_eq!(
            m["LaunchRequirements"],
            serde_json::json!({"Reason": "Windows", "MinVcores": 2, "MinMemoryGib": 4,
                "MinProcessorGeneration": "v3"})
        );
        qemu_check(&out.join("sda1.qcow2"));
        ok(&["verify", s(&out), "-q"]);
    }
}

/// `mkomi build` takes a Windows disk's partitions as `content = "image"` (the ESP and the NTFS
/// volume, extracted from the fixtures): the same check refuses a volume sysprep has not
/// generalized, and `--no-sysprep-check` builds it.
#[test]
fn build_checks_sysprep_too() {
    let d = tempfile::tempdir().unwrap();
    let mib = 1u64 << 20;
    let disk = fixture("uefi-notgen.raw");
    disk::extract(&disk, mib, 34 * mib, &d.path().join("esp.img"));
    disk::extract(&disk, 36 * mib, 24 * mib, &d.path().join("windows.img"));
    let tpl = d.path().join("windows.toml");
    std::fs::write(
        &tpl,
        r#"[image]
name = "windows-notgen"
architecture = "x86_64"
boot-modes = ["uefi"]

[disk]
size = "64M"

[[partition]]
type = "esp"
label = "ESP"
size = "34M"
content = "image"
image = "esp.img"

[[partition]]
type = "linux-generic"
label = "Windows"
size = "24M"
content = "image"
image = "windows.img"
"#,
    )
    .unwrap();
    let build = |out: &str, extra: &[&str]| {
        let mut c = mkomi();
        c.current_dir(d.path())
            .args(["build", s(&tpl), "-o", out, "-q", "--no-sync"])
            .args(extra);
        run_with_timeout(c, std::time::Duration::from_secs(120))
    };
    let o = build("refused", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not generalized") && err.contains("--no-sysprep-check"),
        "{err}"
    );
    assert!(!d.path().join("refused").exists());

    let o = build("forced", &["--no-sysprep-check"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let m = manifest(&d.path().join("forced"));
    assert_eq!(m["Inspection"]["Windows"]["Sysprep"], "not-generalized");
    assert_eq!(
        m["Inspection"]["ChecksSkipped"],
        serde_json::json!(["sysprep"])
    );
    assert_eq!(m["LaunchRequirements"]["MinVcores"], 2);
    qemu_check(&d.path().join("forced").join("sda1.qcow2"));
}

/// The JSON reports of the Windows fixtures validate against schemas/inspect.schema.json.
#[test]
fn windows_reports_validate_against_the_schema() {
    let d = tempfile::tempdir().unwrap();
    let mut args = vec![s(&repo().join("schemas/inspect.schema.json")).to_owned()];
    for name in [
        "uefi-gen.raw",
        "sysres.raw",
        "dirty.raw",
        "linux-stray.raw",
        "ntfs-data.raw",
    ] {
        let file = d.path().join(format!("{name}.json"));
        std::fs::write(&file, ok(&["inspect", s(&fixture(name)), "--json"]).stdout).unwrap();
        args.push(s(&file).to_owned());
    }
    let script = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema)
for f in sys.argv[2:]:
    v.validate(json.load(open(f)))
    print("ok")
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "validation failed (pip install jsonschema?): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n".repeat(5));
}

// audit tests below
/// `mkomi audit` on findings.raw (uefi-gen plus plant_findings of fixtures/make-windows.sh):
/// every planted Windows finding on the NTFS partition, with its severity and path, no
/// problem (the Windows volume was read, so the audit is complete), no secret printed, and
/// `--deny high` refusing the image (exit 3). The clean Windows fixtures audit clean.
#[test]
fn audit_finds_every_planted_windows_item() {
    let disk = fixture("findings.raw");
    let o = run(&["audit", s(&disk), "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["problems"], serde_json::json!([]), "{r:#}");
    assert_eq!(r["complete"], true, "{r:#}");
    assert_eq!(
        r["audited"],
        serde_json::json!(["partition 1 (fat32)", "partition 3 (ntfs)"]),
        "{r:#}"
    );
    let mut got: Vec<(String, String, String)> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert_eq!(f["location"], "partition 3", "{f}");
            let field = |k: &str| f[k].as_str().unwrap().to_owned();
            (field("severity"), field("code"), field("path"))
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String, String)> = [
        (
            "high",
            "ssh-authorized-key",
            "/ProgramData/ssh/administrators_authorized_keys",
        ),
        (
            "high",
            "ssh-authorized-key",
            "/Users/alice/.ssh/authorized_keys",
        ),
        (
            "medium",
            "ssh-host-key",
            "/ProgramData/ssh/ssh_host_ed25519_key",
        ),
        ("high", "unattend-password", "/Windows/Panther/unattend.xml"),
        ("high", "unattend-password", "/autounattend.xml"),
        (
            "high",
            "unattend-password",
            "/Windows/System32/Sysprep/unattend.xml",
        ),
        ("medium", "hibernation-file", "/hiberfil.sys"),
        ("medium", "page-file", "/pagefile.sys"),
        (
            "medium",
            "cloud-agent-state",
            "/ProgramData/Amazon/EC2Launch/state/.run-once",
        ),
        (
            "medium",
            "cloud-agent-state",
            "/ProgramData/Amazon/EC2Launch/state/state.json",
        ),
        (
            "low",
            "cloud-agent-state",
            "/Windows/System32/config/SOFTWARE",
        ),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    want.sort();
    assert_eq!(got, want, "{r:#}");
    let text = String::from_utf8_lossy(&o.stdout);
    // The settings are named, with their line; the values never appear.
    for part in [
        "line 6: AdministratorPassword holds a password in plain text (not shown)",
        "line 5: AutoLogon/Password holds a password in plain text (not shown)",
        "PlainText false: base64, which anyone can decode",
        "Cloudbase-Init\\\\i-0d1f2e3c\\\\Plugins",
        "(256 bits), comment \\\"admin@fixture\\\"",
    ] {
        assert!(text.contains(part), "{part} not in {r:#}");
    }
    let human = run(&["audit", s(&disk)]);
    let all = String::from_utf8_lossy(&human.stdout).into_owned()
        + &String::from_utf8_lossy(&human.stderr);
    for secret in [
        "Secr3t!",
        "UwBlAGMAcgAzAHQAIQBBAGQAbQBpAG4AaQBzAHQAcgBhAHQAbwByAFAAYQBzAHMAdwBvAHIAZAA=",
        "UwBlAGMAcgAzAHQAIQ",
    ] {
        assert!(
            !text.contains(secret) && !all.contains(secret),
            "{secret} printed"
        );
    }
    assert!(
        all.contains("audit: findings (5 high, 5 medium, 1 low, 0 info); 2 file system(s) audited"),
        "{all}"
    );
    // --deny high: the image is refused (exit 3); above what was found, it is not.
    assert_eq!(
        run(&["audit", s(&disk), "--deny", "high"]).status.code(),
        Some(3)
    );
    // The Windows fixtures without planted items: clean, and complete.
    for name in ["uefi-gen.raw", "sysres.raw", "bios-gen.raw"] {
        let o = run(&["audit", s(&fixture(name)), "--json", "--deny", "info"]);
        let r: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(o.status.code(), Some(0), "{name}: {r:#}");
        assert_eq!(r["findings"], serde_json::json!([]), "{name}: {r:#}");
        assert_eq!(r["problems"], serde_json::json!([]), "{name}: {r:#}");
    }
}
