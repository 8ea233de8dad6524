//! The JSON of `mkomi inspect --json` and `mkomi audit --json` validates against
//! `schemas/inspect.schema.json` and `schemas/audit.schema.json` (python3 `jsonschema`, draft
//! 2020-12), on a GPT disk made at test time (a FAT32 ESP with systemd-boot as the fallback
//! loader, an ext4 root with busybox, os-release, a kernel, an SSH key and a root password) and
//! on a bundle of it; and the schemas reject what they should.

mod common;
use common::*;
use serde_json::Value;
use std::os::unix::fs::{FileExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A sha512crypt hash (of "secret"): what the audit reports as a root password.
const ROOT_HASH: &str = "$6$jAJhbTqnOizIRid5$lBmADtWqob550jAbjsfYuJUvZg5RsEE3lg4Zs2z96B80o65t1T3KuRnNn2C7lVdpwxIRDCMLud/mk8dYA3uhO1";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small x86_64 Linux root: the host's busybox behind `/sbin/init`, os-release, a kernel, a
/// real SSH key in root's `authorized_keys` and a password for root.
fn root_tree(dir: &Path) -> PathBuf {
    let t = dir.join("tree");
    for d in ["bin", "sbin", "etc", "boot", "root/.ssh"] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed");
    std::fs::write(t.join("bin/busybox"), busybox).unwrap();
    symlink("../bin/busybox", t.join("sbin/init")).unwrap();
    std::fs::write(
        t.join("etc/os-release"),
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
    )
    .unwrap();
    std::fs::write(t.join("boot/vmlinuz-x"), vec![0x4b; 70_000]).unwrap();
    let key = dir.join("key");
    tool(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "test@host",
            "-f",
            s(&key),
        ],
    );
    std::fs::copy(
        key.with_extension("pub"),
        t.join("root/.ssh/authorized_keys"),
    )
    .unwrap();
    std::fs::write(
        t.join("etc/shadow"),
        format!("root:{ROOT_HASH}:19000:0:99999:7:::\n"),
    )
    .unwrap();
    t
}

/// A 16 MiB ext4 image of `tree`.
fn ext4(tree: &Path, out: &Path) -> PathBuf {
    tool("mkfs.ext4", &["-q", "-F", "-d", s(tree), s(out), "16M"]);
    out.to_owned()
}

/// A FAT32 ESP holding systemd-boot as `EFI/BOOT/BOOTX64.EFI`.
fn esp(dir: &Path) -> PathBuf {
    let out = dir.join("esp.img");
    tool("mkfs.fat", &["-F", "32", "-C", s(&out), "34000"]);
    let loader = Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    assert!(loader.exists(), "{} is missing", loader.display());
    let mtools = |program: &str, args: &[&str]| {
        let o = Command::new(program)
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i", s(&out)])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    mtools("mmd", &["::/EFI", "::/EFI/BOOT"]);
    mtools("mcopy", &[s(loader), "::/EFI/BOOT/BOOTX64.EFI"]);
    out
}

/// Copies `image` into `disk` at `offset`.
fn put(disk: &Path, offset: u64, image: &Path) {
    let bytes = std::fs::read(image).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.write_all_at(&bytes, offset).unwrap();
}

/// A GPT disk: each partition (sgdisk type code, name, image) 1 MiB aligned, in order, the
/// images copied in.
fn gpt_disk(out: &Path, parts: &[(&str, &str, &Path)]) -> PathBuf {
    let sizes: Vec<u64> = parts
        .iter()
        .map(|(_, _, img)| std::fs::metadata(img).unwrap().len().div_ceil(MIB))
        .collect();
    let total = (sizes.iter().sum::<u64>() + 2) * MIB;
    std::fs::File::create(out).unwrap().set_len(total).unwrap();
    let mut args = vec!["-o".to_owned()];
    let mut start = MIB / 512;
    for (i, ((code, name, _), mib)) in parts.iter().zip(&sizes).enumerate() {
        let n = i + 1;
        let end = start + mib * MIB / 512 - 1;
        args.push(format!("-n{n}:{start}:{end}"));
        args.push(format!("-t{n}:{code}"));
        args.push(format!("-c{n}:{name}"));
        start = end + 1;
    }
    args.push(s(out).to_owned());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    tool("sgdisk", &a);
    let mut offset = MIB;
    for ((_, _, img), mib) in parts.iter().zip(&sizes) {
        put(out, offset, img);
        offset += mib * MIB;
    }
    out.to_owned()
}

/// The JSON `mkomi COMMAND SOURCE --json` prints.
fn json(command: &str, source: &Path) -> Value {
    let out = ok(&[command, s(source), "--json"]);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Validates each document against the schema: each must pass; and each must fail with a bogus
/// property added to any of its objects, with its `schema` changed, or with an enumeration
/// value that is not one.
const SCRIPT: &str = r##"
import copy, json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema)

def objects(node, path=()):
    if isinstance(node, dict):
        yield path
        for k, v in node.items():
            yield from objects(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from objects(v, path + (i,))

def at(doc, path):
    for p in path:
        doc = doc[p]
    return doc

def must_fail(doc, what):
    if validator.is_valid(doc):
        sys.exit(f"{name}: passed with {what}")

for file in sys.argv[2:]:
    doc = json.load(open(file))
    name = file.rsplit("/", 1)[-1]
    validator.validate(doc)
    n = 0
    for path in objects(doc):
        bad = copy.deepcopy(doc)
        at(bad, path)["bogus"] = 1
        must_fail(bad, f"a bogus property at {list(path)}")
        n += 1
    bad = copy.deepcopy(doc)
    bad["schema"] = bad["schema"][:-1] + "2"
    must_fail(bad, "another schema")
    bad = copy.deepcopy(doc)
    if "disks" in doc:
        bad["disks"][0]["partition_table"]["scheme"] = "apm"
        must_fail(bad, "scheme apm")
        bad = copy.deepcopy(doc)
        del bad["summary"]["architecture"]
        must_fail(bad, "no summary.architecture")
    else:
        bad["findings"][0]["severity"] = "critical"
        must_fail(bad, "severity critical")
        bad = copy.deepcopy(doc)
        del bad["findings"][0]["device"]
        must_fail(bad, "a finding without device")
    if n < 4:
        sys.exit(f"{name}: only {n} objects")
    print(name, "ok")
"##;

/// Runs [`SCRIPT`] on `docs` (written as `NAME.json` in `dir`) with `schema`.
fn validate(dir: &Path, schema: &str, docs: &[(&str, &Value)]) {
    let mut args = vec![s(&repo().join("schemas").join(schema)).to_owned()];
    let mut expect = String::new();
    for (name, doc) in docs {
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
        args.push(s(&file).to_owned());
        expect.push_str(&format!("{name}.json ok\n"));
    }
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{schema}: validation failed (pip install jsonschema?): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), expect);
}

#[test]
fn inspect_and_audit_json_validate_against_their_schemas() {
    let d = tempfile::tempdir().unwrap();
    let root = ext4(&root_tree(d.path()), &d.path().join("root.ext4"));
    let esp = esp(d.path());
    let disk = gpt_disk(
        &d.path().join("disk.raw"),
        &[("ef00", "ESP", &esp), ("8304", "root", &root)],
    );
    let bundle = d.path().join("omi");
    ok(&[
        "register",
        s(&disk),
        "-o",
        s(&bundle),
        "--audit",
        "report",
        "-q",
    ]);

    let disk_inspect = json("inspect", &disk);
    let bundle_inspect = json("inspect", &bundle);
    let disk_audit = json("audit", &disk);
    let bundle_audit = json("audit", &bundle);

    // The documents hold what the schemas describe: both volumes, a loader and its PE header,
    // ELF evidence, os-release, the device in a bundle, and findings.
    for r in [&disk_inspect, &bundle_inspect] {
        let vols = &r["disks"][0]["volumes"];
        assert_eq!(vols[0]["loaders"][0]["kind"], "fallback", "{r:#}");
        assert_eq!(vols[0]["loaders"][0]["binary"]["format"], "pe");
        assert_eq!(vols[1]["evidence"][0]["link"], "../bin/busybox");
        assert_eq!(vols[1]["os_release"]["id"], "debian");
        assert_eq!(r["summary"]["architecture"], "x86_64");
        assert_eq!(r["summary"]["boot_modes"], serde_json::json!(["uefi"]));
    }
    assert_eq!(disk_inspect["disks"][0]["device"], Value::Null);
    assert_eq!(bundle_inspect["disks"][0]["device"], "/dev/sda1");
    for r in [&disk_audit, &bundle_audit] {
        let codes: Vec<&str> = r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["code"].as_str().unwrap())
            .collect();
        assert_eq!(
            codes,
            ["shadow-root-password", "ssh-authorized-key"],
            "{r:#}"
        );
        assert_eq!(r["highest"], "high");
    }
    assert_eq!(disk_audit["findings"][0]["device"], Value::Null);
    assert_eq!(bundle_audit["findings"][0]["device"], "/dev/sda1");

    validate(
        d.path(),
        "inspect.schema.json",
        &[
            ("disk-inspect", &disk_inspect),
            ("bundle-inspect", &bundle_inspect),
        ],
    );
    validate(
        d.path(),
        "audit.schema.json",
        &[("disk-audit", &disk_audit), ("bundle-audit", &bundle_audit)],
    );
}
