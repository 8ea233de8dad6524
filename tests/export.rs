//! `mkomi export` and `mkomi import` through a directory: packages checked with the real gzip,
//! sha256sum and qemu-img, imported back to bundles with the same ContentDigests, and hostile
//! manifests and objects refused with nothing written.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A qcow2 bundle of a 40 MiB root (12 MiB of data) and an 8 MiB io1 data volume.
fn bundle(dir: &Path, format: &str) -> PathBuf {
    let root = dir.join("web.img");
    let data = dir.join("data.img");
    if !root.exists() {
        sparse_raw(
            &root,
            40 * MIB,
            &[(0, 3 * MIB, 0x10), (20 * MIB, 9 * MIB, 0x20)],
        );
        sparse_raw(&data, 8 * MIB, &[(MIB, 64 * 1024, 0x30)]);
    }
    let out = dir.join(format!("omi-{format}"));
    ok(&[
        "register",
        s(&root),
        "-o",
        s(&out),
        "--arch",
        "x86_64",
        "--no-boot-check",
        "--name",
        "web (v2)",
        "--format",
        format,
        "--bdm",
        &format!(
            "/dev/sdb={},size=20,type=io1,iops=600,delete-on-vm-deletion=false",
            s(&data)
        ),
        "--force",
        "-q",
    ]);
    out
}

fn gunzip(path: &Path) -> Vec<u8> {
    let out = Command::new("gunzip").arg("-c").arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn directory_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), "qcow2");
    let pkg = d.path().join("pkg");
    ok(&["export", s(&b), "--to", s(&pkg), "-q"]);
    assert_eq!(
        entries(&pkg),
        [
            "SHA256SUMS",
            "manifest.json",
            "mkomi-manifest.json",
            "sda1.qcow2.gz",
            "sdb.qcow2.gz"
        ]
    );
    sha256sum_check(&pkg);
    for name in ["sda1", "sdb"] {
        let gz = pkg.join(format!("{name}.qcow2.gz"));
        tool("gzip", &["-t", s(&gz)]);
        let original = std::fs::read(b.join(format!("{name}.qcow2"))).unwrap();
        assert!(
            gunzip(&gz) == original,
            "{name}: gunzip differs from the disk file"
        );
    }
    let em = json(&pkg.join("manifest.json"));
    assert_eq!(em["Version"], 1);
    assert_eq!(em["Image"]["Name"], "web (v2)");
    assert_eq!(em["Image"]["Architecture"], "x86_64");
    assert_eq!(em["Image"]["Type"], "machine");
    assert_eq!(em["Image"]["ProductTypes"], serde_json::json!(["0001"]));
    let snaps = em["Image"]["Snapshots"].as_array().unwrap();
    assert_eq!(snaps[0]["Device"], "/dev/sda1");
    // Size is the volume's: 1 GiB for the root (its disk is 40 MiB), 20 GiB for /dev/sdb.
    assert_eq!(snaps[0]["Size"], 1u64 << 30);
    assert_eq!(snaps[1]["Size"], 20u64 << 30);
    assert_eq!(snaps[0]["Filename"], "sda1.qcow2.gz");
    assert_eq!(snaps[0]["DeleteOnTermination"], true);
    assert_eq!(snaps[1]["Iops"], 600);
    assert_eq!(snaps[1]["VolumeType"], "io1");
    assert_eq!(snaps[1]["PreSignedUrl"], Value::Null);
    assert!(
        std::fs::read(pkg.join("mkomi-manifest.json")).unwrap()
            == std::fs::read(b.join("manifest.json")).unwrap()
    );

    // The same bundle exports to the same bytes.
    let again = d.path().join("pkg2");
    ok(&["export", s(&b), "--to", s(&again), "--threads", "1", "-q"]);
    for name in entries(&pkg) {
        assert!(
            std::fs::read(pkg.join(&name)).unwrap() == std::fs::read(again.join(&name)).unwrap(),
            "{name} differs"
        );
    }

    // Import: a new bundle with the same content, checked against both manifests.
    let back = d.path().join("back");
    let o = ok(&["import", s(&pkg.join("manifest.json")), "-o", s(&back)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("objects checked against SHA256SUMS, disks against mkomi-manifest.json"),
        "{err}"
    );
    ok(&["verify", s(&back), "-q"]);
    let (m0, m1) = (manifest(&b), manifest(&back));
    assert_eq!(m0["Image"], m1["Image"]);
    for i in 0..2 {
        assert_eq!(
            m0["Disks"][i]["ContentDigest"],
            m1["Disks"][i]["ContentDigest"]
        );
    }
    qemu_compare(&b.join("sda1.qcow2"), &back.join("sda1.qcow2"));
    // The disk files are rewritten by mkomi's own writer: the same bytes as the originals.
    for i in 0..2 {
        assert_eq!(m0["Disks"][i]["Sha256"], m1["Disks"][i]["Sha256"]);
    }
    // Into a raw bundle, the same objects go through the copy engine.
    let back_as_raw = d.path().join("back-as-raw");
    ok(&[
        "import",
        s(&pkg.join("manifest.json")),
        "-o",
        s(&back_as_raw),
        "--format",
        "raw",
        "-q",
    ]);
    ok(&["verify", s(&back_as_raw), "-q"]);
    qemu_compare(&b.join("sdb.qcow2"), &back_as_raw.join("sdb.raw"));

    // Raw objects from a qcow2 bundle: the virtual disk, holes as zeros.
    let raw = d.path().join("pkg-raw");
    ok(&["export", s(&b), "--to", s(&raw), "--format", "raw", "-q"]);
    let web = std::fs::read(d.path().join("web.img")).unwrap();
    assert_volume_of(&gunzip(&raw.join("sda1.raw.gz")), &web);
    let back_raw = d.path().join("back-raw");
    ok(&[
        "import",
        s(&raw.join("manifest.json")),
        "-o",
        s(&back_raw),
        "--format",
        "raw",
        "-q",
    ]);
    assert_eq!(
        manifest(&back_raw)["Disks"][0]["ContentDigest"],
        m0["Disks"][0]["ContentDigest"]
    );
}

/// Copies the package `pkg` to `name` with the export manifest edited by `edit`, without
/// mkomi's manifest (which would refuse the edit by itself), and SHA256SUMS updated for it.
fn edited(pkg: &Path, name: &str, edit: impl Fn(&mut Value)) -> PathBuf {
    let dir = pkg.with_file_name(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    for e in entries(pkg) {
        std::fs::copy(pkg.join(&e), dir.join(&e)).unwrap();
    }
    std::fs::remove_file(dir.join("mkomi-manifest.json")).unwrap();
    let mut m = json(&dir.join("manifest.json"));
    edit(&mut m);
    let bytes = serde_json::to_vec(&m).unwrap();
    std::fs::write(dir.join("manifest.json"), &bytes).unwrap();
    // SHA256SUMS vouches for the edited manifest, so that the edit itself is what is tested.
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let new = tool("sha256sum", &[s(&dir.join("manifest.json"))]);
    let new = new.split_whitespace().next().unwrap();
    let sums: String = sums
        .lines()
        .map(|l| match l.strip_suffix("  manifest.json") {
            Some(_) => format!("{new}  manifest.json\n"),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(dir.join("SHA256SUMS"), sums).unwrap();
    dir.join("manifest.json")
}

fn refused(manifest: &Path, out: &Path, want: &str) {
    let o = run(&["import", s(manifest), "-o", s(out), "-q"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(want), "wanted {want:?} in {err}");
    assert!(!out.exists(), "{} was written", out.display());
    let parent = out.parent().unwrap();
    let leftovers: Vec<String> = entries(parent)
        .into_iter()
        .filter(|e| e.contains(".mkomi-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn hostile_packages_are_refused_with_nothing_written() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), "raw");
    let pkg = d.path().join("pkg");
    ok(&["export", s(&b), "--to", s(&pkg), "-q"]);
    let out = d.path().join("out");

    let snap = |i: usize, k: &'static str, v: Value| {
        move |m: &mut Value| m["Image"]["Snapshots"][i][k] = v.clone()
    };
    refused(
        &edited(&pkg, "e1", snap(0, "Filename", "../sda1.raw.gz".into())),
        &out,
        "not a plain file name",
    );
    refused(
        &edited(&pkg, "e2", snap(0, "Filename", "/etc/passwd".into())),
        &out,
        "not a plain file name",
    );
    refused(
        &edited(&pkg, "e3", snap(1, "Device", "/dev/sda1".into())),
        &out,
        "/dev/sda1",
    );
    refused(
        &edited(
            &pkg,
            "e4",
            snap(0, "PreSignedUrl", "file:///etc/passwd".into()),
        ),
        &out,
        "scheme \"file\"",
    );
    refused(
        &edited(&pkg, "e5", snap(0, "PreSignedUrl", "https://127.0.0.1:9/b/sda1.raw.gz?X-Amz-Date=20200101T000000Z&X-Amz-Expires=604800&X-Amz-Signature=00".into())),
        &out,
        "the PreSignedUrl of /dev/sda1 expired at 2020-01-08T00:00:00Z",
    );
    // Sizes that disagree with the data: a raw object longer than its Size.
    refused(
        &edited(&pkg, "e6", snap(0, "Size", (40 * MIB - 4096).into())),
        &out,
        "decompresses to more than 41938944 bytes",
    );
    // … or than mkomi's manifest says.
    let sizes = d.path().join("e7");
    let _ = std::fs::remove_dir_all(&sizes);
    std::fs::create_dir(&sizes).unwrap();
    for e in entries(&pkg) {
        std::fs::copy(pkg.join(&e), sizes.join(&e)).unwrap();
    }
    let mut mm = json(&sizes.join("mkomi-manifest.json"));
    mm["Disks"][0]["VirtualSize"] = (40 * MIB + 4096).into();
    std::fs::write(
        sizes.join("mkomi-manifest.json"),
        serde_json::to_vec(&mm).unwrap(),
    )
    .unwrap();
    std::fs::remove_file(sizes.join("SHA256SUMS")).unwrap();
    // (The object is the whole volume, so the longer disk reads zeros: its digest differs.)
    refused(
        &sizes.join("manifest.json"),
        &out,
        "/dev/sda1: ContentDigest",
    );

    // A gzip bomb: a small object that decompresses far beyond the declared Size.
    // (Its Iops is lowered too, to what a 1 GiB volume allows: the fields are checked first.)
    let bomb_dir = edited(&pkg, "e8", |m: &mut Value| {
        m["Image"]["Snapshots"][1]["Size"] = MIB.into();
        m["Image"]["Snapshots"][1]["Iops"] = 300.into();
    });
    let zeros = d.path().join("zeros");
    sparse_raw(&zeros, 512 * MIB, &[]);
    let gz = Command::new("gzip")
        .arg("-c")
        .arg("-9")
        .arg(&zeros)
        .output()
        .unwrap();
    assert!(gz.stdout.len() < (MIB as usize), "{}", gz.stdout.len());
    std::fs::write(bomb_dir.with_file_name("sdb.raw.gz"), &gz.stdout).unwrap();
    std::fs::remove_file(bomb_dir.with_file_name("SHA256SUMS")).unwrap();
    refused(&bomb_dir, &out, "decompresses to more than 1048576 bytes");

    // An object that does not match SHA256SUMS.
    let tampered = edited(&pkg, "e9", |_| {});
    let obj = tampered.with_file_name("sdb.raw.gz");
    let mut bytes = std::fs::read(&obj).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x55;
    std::fs::write(&obj, &bytes).unwrap();
    refused(&tampered, &out, "sdb.raw.gz");

    // Not gzip at all.
    let notgz = edited(&pkg, "e10", |_| {});
    std::fs::write(notgz.with_file_name("sda1.raw.gz"), b"plain bytes").unwrap();
    std::fs::remove_file(notgz.with_file_name("SHA256SUMS")).unwrap();
    refused(&notgz, &out, "cannot decompress");

    // An edited manifest that SHA256SUMS does not vouch for.
    let forged = d.path().join("e12");
    let _ = std::fs::remove_dir_all(&forged);
    std::fs::create_dir(&forged).unwrap();
    for e in entries(&pkg) {
        std::fs::copy(pkg.join(&e), forged.join(&e)).unwrap();
    }
    let mut m = json(&forged.join("manifest.json"));
    m["Image"]["Name"] = "someone else's".into();
    std::fs::write(
        forged.join("manifest.json"),
        serde_json::to_vec(&m).unwrap(),
    )
    .unwrap();
    refused(
        &forged.join("manifest.json"),
        &out,
        "differs from SHA256SUMS",
    );

    // A qcow2 object that names a backing file (from a qcow2 package).
    let qpkg = d.path().join("qpkg");
    let qb = bundle(d.path(), "qcow2");
    ok(&["export", s(&qb), "--to", s(&qpkg), "-q"]);
    let backed = edited(&qpkg, "e13", |_| {});
    let base = d.path().join("base.qcow2");
    tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", s(&base), "40M"],
    );
    let top = d.path().join("top.qcow2");
    tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            s(&base),
            "-F",
            "qcow2",
            s(&top),
        ],
    );
    let gz = Command::new("gzip").arg("-c").arg(&top).output().unwrap();
    std::fs::write(backed.with_file_name("sda1.qcow2.gz"), &gz.stdout).unwrap();
    std::fs::remove_file(backed.with_file_name("SHA256SUMS")).unwrap();
    refused(&backed, &out, "names a backing file");

    // A manifest that is not one, and a missing object.
    let junk = d.path().join("junk.json");
    std::fs::write(&junk, b"{\"Version\": 1}").unwrap();
    refused(&junk, &out, "not an export manifest");
    let missing = edited(&pkg, "e11", |_| {});
    std::fs::remove_file(missing.with_file_name("sdb.raw.gz")).unwrap();
    refused(&missing, &out, "sdb.raw.gz");
    let o = run(&["import", "ftp://host/m.json", "-o", s(&out)]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn an_outscale_manifest_alone_is_imported_with_digests_recorded() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), "qcow2");
    let pkg = d.path().join("pkg");
    ok(&["export", s(&b), "--to", s(&pkg), "-q"]);
    std::fs::remove_file(pkg.join("SHA256SUMS")).unwrap();
    std::fs::remove_file(pkg.join("mkomi-manifest.json")).unwrap();
    let back = d.path().join("back");
    let o = ok(&["import", s(&pkg.join("manifest.json")), "-o", s(&back)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("SHA-256s recorded on arrival"), "{err}");
    let sha = tool("sha256sum", &[s(&pkg.join("sda1.qcow2.gz"))]);
    assert!(
        err.contains(sha.split_whitespace().next().unwrap()),
        "{err}"
    );
    ok(&["verify", s(&back), "-q"]);
    assert_eq!(
        manifest(&back)["Disks"][0]["ContentDigest"],
        manifest(&b)["Disks"][0]["ContentDigest"]
    );
}

#[test]
fn a_disk_of_odd_size_keeps_its_tail_through_export_and_import() {
    let d = tempfile::tempdir().unwrap();
    // 57 bytes past a whole sector, holding data.
    let size = 3_158_073u64;
    let padded = 3_158_528u64;
    let src = d.path().join("odd.raw");
    sparse_raw(&src, size, &[(0, 100_000, 0x71), (size - 57, 57, 0x72)]);
    let b = d.path().join("b");
    ok(&[
        "register",
        s(&src),
        "-o",
        s(&b),
        "--arch",
        "x86_64",
        "--no-boot-check",
        "-q",
    ]);
    for object in ["qcow2", "raw"] {
        let pkg = d.path().join(format!("pkg-{object}"));
        ok(&["export", s(&b), "--to", s(&pkg), "--format", object, "-q"]);
        for format in ["qcow2", "raw"] {
            let back = d.path().join(format!("back-{object}-{format}"));
            ok(&[
                "import",
                s(&pkg.join("manifest.json")),
                "-o",
                s(&back),
                "--format",
                format,
                "-q",
            ]);
            ok(&["verify", s(&back), "-q"]);
            let disk = back.join(format!("sda1.{format}"));
            qemu_compare(&src, &disk);
            let info: Value =
                serde_json::from_str(&tool("qemu-img", &["info", "--output=json", s(&disk)]))
                    .unwrap();
            assert_eq!(info["virtual-size"], padded, "{object} to {format}");
            let m = manifest(&back);
            assert_eq!(m["Disks"][0]["VirtualSize"], padded);
            assert_eq!(
                m["Disks"][0]["ContentDigest"],
                manifest(&b)["Disks"][0]["ContentDigest"]
            );
        }
    }
}

#[path = "common/s3_server.rs"]
mod s3_server;
use s3_server::{ACCESS_KEY, BUCKET, REGION, S3Server, SECRET_KEY};

/// mkomi with the test server's credentials in the environment.
fn with_s3(args: &[&str], secret: &str) -> std::process::Output {
    let mut c = mkomi();
    c.args(args)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("OSC_ACCESS_KEY", ACCESS_KEY)
        .env("OSC_SECRET_KEY", secret)
        .env(
            "XDG_CACHE_HOME",
            std::env::temp_dir().join("mkomi-test-cache"),
        );
    run_with_timeout(c, std::time::Duration::from_secs(300))
}

fn curl(url: &str) -> Vec<u8> {
    let out = Command::new("curl").args(["-sf", url]).output().unwrap();
    assert!(out.status.success(), "curl {url}: {:?}", out.status);
    out.stdout
}

#[test]
fn bucket_round_trip_through_presigned_urls() {
    let server = S3Server::start();
    let d = tempfile::tempdir().unwrap();
    // Incompressible data, so the root object takes three 5 MiB parts.
    let root = d.path().join("noise.img");
    let noise = noise(12 << 20, 0x9e37_79b9_7f4a_7c15);
    std::fs::write(&root, &noise).unwrap();
    let b = d.path().join("omi");
    ok(&[
        "register",
        s(&root),
        "-o",
        s(&b),
        "--arch",
        "x86_64",
        "--no-boot-check",
        "-q",
    ]);
    let to = format!("s3://{BUCKET}/images/noise");
    let args = [
        "export",
        s(&b),
        "--to",
        &to,
        "--endpoint",
        &server.endpoint,
        "--region",
        REGION,
        "--part-size",
        "5",
        "--level",
        "1",
        "--json",
    ];
    let o = with_s3(&args, SECRET_KEY);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(!text.contains(SECRET_KEY));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r["Objects"][0]["Parts"].as_u64().unwrap() >= 3, "{r:#}");
    let url = r["ManifestUrl"].as_str().unwrap().to_owned();
    assert!(
        url.contains("X-Amz-Signature=") && url.contains("X-Amz-Expires=604800"),
        "{url}"
    );

    // What CreateImage would fetch: the manifest and each object through its pre-signed URL.
    let em: Value = serde_json::from_slice(&curl(&url)).unwrap();
    let snap = &em["Image"]["Snapshots"][0];
    let obj = d.path().join("sda1.qcow2.gz");
    std::fs::write(&obj, curl(snap["PreSignedUrl"].as_str().unwrap())).unwrap();
    assert!(gunzip(&obj) == std::fs::read(b.join("sda1.qcow2")).unwrap());
    // A tampered signature is refused by the server.
    let bad = url.replace("X-Amz-Signature=", "X-Amz-Signature=0");
    let st = Command::new("curl")
        .args(["-sf", &bad])
        .output()
        .unwrap()
        .status;
    assert!(!st.success());

    // Import through the pre-signed manifest URL (no side files reachable) …
    let back = d.path().join("back-url");
    let o = with_s3(&["import", &url, "-o", s(&back)], SECRET_KEY);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("recorded on arrival"));
    // … and through s3://, where SHA256SUMS and mkomi's manifest are checked.
    let back2 = d.path().join("back-s3");
    let m = format!("s3://{BUCKET}/images/noise/manifest.json");
    let o = with_s3(
        &[
            "import",
            &m,
            "-o",
            s(&back2),
            "--endpoint",
            &server.endpoint,
            "--region",
            REGION,
        ],
        SECRET_KEY,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("objects checked against SHA256SUMS, disks against mkomi-manifest.json"),
        "{err}"
    );
    for out in [&back, &back2] {
        ok(&["verify", s(out), "-q"]);
        assert_eq!(
            manifest(out)["Disks"][0]["ContentDigest"],
            manifest(&b)["Disks"][0]["ContentDigest"]
        );
    }

    // A wrong secret: a one-line error with the status, never the secret, and no upload left.
    let wrong = "wrong-secret-8d3a1f";
    let args2 = [
        "export",
        s(&b),
        "--to",
        &format!("s3://{BUCKET}/images/denied"),
        "--endpoint",
        &server.endpoint,
        "--region",
        REGION,
    ];
    let o = with_s3(&args2, wrong);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("403") && !err.contains(wrong), "{err}");
    assert!(
        server.upload_files().is_empty(),
        "{:?}",
        server.upload_files()
    );

    // HTTP errors name the object and the status.
    let missing = format!("{}/{BUCKET}/images/nothing/manifest.json", server.endpoint);
    let x = d.path().join("x");
    let o = with_s3(&["import", &missing, "-o", s(&x)], SECRET_KEY);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("images/nothing/manifest.json") && err.contains("HTTP 40"),
        "{err}"
    );
    assert!(!x.exists());
}

#[path = "common/s3_proxy.rs"]
mod s3_proxy;
use s3_proxy::Proxy;

/// A raw bundle of `len` bytes of noise (seed `seed`) named `name`, at `dir/name`.
/// A raw object is the whole 1 GiB volume: `disk`, then zeros.
fn assert_volume_of(object: &[u8], disk: &[u8]) {
    assert_eq!(object.len() as u64, 1 << 30);
    assert!(object[..disk.len()] == disk[..]);
    assert!(object[disk.len()..].iter().all(|&b| b == 0));
}

fn noise_bundle(dir: &Path, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let noise = noise(len, seed);
    let img = dir.join(format!("{name}.img"));
    std::fs::write(&img, &noise).unwrap();
    let b = dir.join(name);
    ok(&[
        "register",
        s(&img),
        "-o",
        s(&b),
        "--arch",
        "x86_64",
        "--no-boot-check",
        "--format",
        "raw",
        "--name",
        name,
        "-q",
    ]);
    std::fs::remove_file(&img).unwrap();
    (b, noise)
}

/// `mkomi export BUNDLE --to s3://BUCKET/PREFIX` through `endpoint` in 5 MiB parts, with the
/// test's credentials and `cache` as XDG_CACHE_HOME.
fn s3_export(bundle: &Path, prefix: &str, endpoint: &str, cache: &Path, extra: &[&str]) -> Command {
    let mut c = mkomi();
    c.args([
        "export",
        s(bundle),
        "--to",
        &format!("s3://{BUCKET}/{prefix}"),
    ])
    .args(["--endpoint", endpoint, "--region", REGION])
    .args(extra)
    .env_remove("AWS_ACCESS_KEY_ID")
    .env_remove("AWS_SECRET_ACCESS_KEY")
    .env("OSC_ACCESS_KEY", ACCESS_KEY)
    .env("OSC_SECRET_KEY", SECRET_KEY)
    .env("XDG_CACHE_HOME", cache);
    if !extra.contains(&"--part-size") {
        c.args(["--part-size", "5"]);
    }
    c
}

/// The upload state files under `cache`, parsed.
fn states(cache: &Path) -> Vec<(PathBuf, Value)> {
    let mut out: Vec<(PathBuf, Value)> = std::fs::read_dir(cache.join("mkomi/uploads"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| {
            Some((
                p.clone(),
                serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?,
            ))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Waits until a state file under `cache` other than those in `except` records `parts` parts:
/// its path and content. Fails if the export ends first, or after two minutes.
fn wait_for_parts(
    child: &mut std::process::Child,
    cache: &Path,
    parts: usize,
    except: &[PathBuf],
) -> (PathBuf, Value) {
    let start = std::time::Instant::now();
    loop {
        if let Some(found) = states(cache).into_iter().find(|(p, v)| {
            !except.contains(p) && v["parts"].as_object().is_some_and(|m| m.len() >= parts)
        }) {
            return found;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut err).unwrap();
            }
            panic!("the export ended ({status}) before {parts} part(s) were recorded: {err}");
        }
        assert!(
            start.elapsed().as_secs() < 120,
            "{parts} part(s) never recorded: {:?}",
            states(cache)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn spawn(mut c: Command) -> std::process::Child {
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Sends SIGINT (Ctrl-C) to `child` and waits for it: exit code and stderr.
fn interrupt(child: std::process::Child) -> (Option<i32>, String) {
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ctrl_c_aborts_the_upload_or_keeps_it_to_resume_and_resume_sends_only_missing_parts() {
    let server = S3Server::start();
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache");
    // 24 MiB of noise and its volume's zeros: 6 parts of 5 MiB. A proxy holds the part uploads after the second, so
    // the export is stopped in a known state, however fast the machine.
    let (b, noise) = noise_bundle(d.path(), "noise", 24 << 20, 0x2545_f491_4f6c_dd1d);
    let object = server.root.join(BUCKET).join("ctrlc/sda1.raw.gz");

    // Ctrl-C without --resume: the upload is aborted and its record removed.
    let held = Proxy::start(server.port, server.root.clone(), Some(2));
    let mut child = spawn(s3_export(&b, "ctrlc", &held.endpoint, &cache, &[]));
    let (file, state) = wait_for_parts(&mut child, &cache, 2, &[]);
    assert_eq!(
        server.open_uploads(),
        [state["upload_id"].as_str().unwrap()]
    );
    let (code, err) = interrupt(child);
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(
        server.open_uploads().is_empty(),
        "{:?}",
        server.open_uploads()
    );
    assert!(
        server.upload_files().is_empty(),
        "{:?}",
        server.upload_files()
    );
    assert!(!file.exists());
    assert!(!object.exists());

    // Ctrl-C with --resume: the upload and its record (2 parts) are kept.
    let held = Proxy::start(server.port, server.root.clone(), Some(2));
    let mut child = spawn(s3_export(
        &b,
        "ctrlc",
        &held.endpoint,
        &cache,
        &["--resume"],
    ));
    let (file, _) = wait_for_parts(&mut child, &cache, 2, &[]);
    let (code, err) = interrupt(child);
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("--resume"), "{err}");
    let state = json(&file);
    assert_eq!(state["parts"].as_object().unwrap().len(), 2, "{state:#}");
    assert_eq!(
        server.open_uploads(),
        [state["upload_id"].as_str().unwrap()]
    );
    assert!(!object.exists());

    // Resumed: only the 3 missing parts go up (counted by the proxy), nothing is aborted.
    let counting = Proxy::start(server.port, server.root.clone(), None);
    let o = run_with_timeout(
        s3_export(
            &b,
            "ctrlc",
            &counting.endpoint,
            &cache,
            &["--resume", "--json"],
        ),
        std::time::Duration::from_secs(300),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    let obj = &r["Objects"][0];
    assert_eq!(
        // 24 MiB of noise, then the 1 GiB volume's zeros (about 1 MB compressed): 6 parts.
        (obj["Parts"].as_u64(), obj["PartsSent"].as_u64()),
        (Some(6), Some(4)),
        "{r:#}"
    );
    assert_eq!(counting.part_puts(), 4);
    assert_eq!(r["AbortedUploads"], serde_json::json!([]), "{r:#}");
    assert!(states(&cache).is_empty());
    assert!(
        server.open_uploads().is_empty(),
        "{:?}",
        server.open_uploads()
    );
    assert_volume_of(&gunzip(&object), &noise);
    assert_eq!(
        obj["Sha256"],
        tool("sha256sum", &[s(&object)])
            .split_whitespace()
            .next()
            .unwrap()
    );
}

#[test]
fn ctrl_c_is_obeyed_while_a_request_hangs() {
    let d = tempfile::tempdir().unwrap();
    let (b, _) = noise_bundle(d.path(), "noise", 1 << 20, 3);
    // A server that accepts connections and never answers: each request would wait two
    // minutes, and be retried.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let mut child = spawn(s3_export(
        &b,
        "hang",
        &endpoint,
        &d.path().join("cache"),
        &[],
    ));
    let (_conn, _) = silent.accept().unwrap();
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed().as_secs() > 60 {
            child.kill().unwrap();
            panic!("Ctrl-C ignored while a request hangs");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
}

#[test]
fn uploads_left_open_by_killed_exports_are_aborted_by_the_next() {
    let server = S3Server::start();
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache");
    let (a, _) = noise_bundle(d.path(), "first", 24 << 20, 11);
    let (b, noise_b) = noise_bundle(d.path(), "second", 24 << 20, 12);

    // Killed (SIGKILL) without --resume after a part: its upload stays open, but recorded.
    let held = Proxy::start(server.port, server.root.clone(), Some(1));
    let mut child = spawn(s3_export(&a, "stale", &held.endpoint, &cache, &[]));
    let (first_file, first) = wait_for_parts(&mut child, &cache, 1, &[]);
    child.kill().unwrap();
    child.wait().unwrap();
    let first_id = first["upload_id"].as_str().unwrap().to_owned();
    assert_eq!(server.open_uploads(), [first_id.as_str()]);

    // Another bundle to the same prefix, with --resume, killed too: it aborted the first upload
    // (from its record) when it started.
    let held = Proxy::start(server.port, server.root.clone(), Some(1));
    let mut child = spawn(s3_export(
        &b,
        "stale",
        &held.endpoint,
        &cache,
        &["--resume"],
    ));
    let (second_file, second) =
        wait_for_parts(&mut child, &cache, 1, std::slice::from_ref(&first_file));
    child.kill().unwrap();
    child.wait().unwrap();
    let second_id = second["upload_id"].as_str().unwrap().to_owned();
    assert_eq!(server.open_uploads(), [second_id.as_str()]);
    assert!(!first_file.exists());

    // An upload of the package that no local record knows (made elsewhere), found in the
    // server's list of uploads.
    let client = mkomi::export::s3::Client::new(
        &mkomi::export::s3::Config {
            endpoint: Some(server.endpoint.clone()),
            region: REGION.into(),
            credentials: mkomi::export::s3::Credentials::new(ACCESS_KEY, SECRET_KEY, None),
            allow_http: true,
            checksums: true,
        },
        BUCKET,
    )
    .unwrap();
    let elsewhere = d.path().join("elsewhere.json");
    let short = std::io::Read::chain(&noise_b[..6 << 20], FailingReader);
    client
        .put_stream("stale/sda1.raw.gz", short, 5 << 20, 1, Some(&elsewhere))
        .unwrap_err();
    let third_id = json(&elsewhere)["upload_id"].as_str().unwrap().to_owned();
    assert_eq!(server.open_uploads().len(), 2);

    // Resumed: it goes on with its own upload and aborts the other, saying so.
    let proxy = Proxy::start(server.port, server.root.clone(), None);
    let o = run_with_timeout(
        s3_export(
            &b,
            "stale",
            &proxy.endpoint,
            &cache,
            &["--resume", "--json"],
        ),
        std::time::Duration::from_secs(300),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(proxy.lists() >= 1);
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        r["AbortedUploads"],
        serde_json::json!([{
            "Object": format!("s3://{BUCKET}/stale/sda1.raw.gz"),
            "UploadId": third_id,
        }]),
        "{r:#}"
    );
    assert!(err.contains(&third_id) && err.contains("aborted"), "{err}");
    assert_eq!(r["Objects"][0]["PartsSent"].as_u64(), Some(5), "{r:#}");
    assert_eq!(proxy.part_puts(), 5);
    assert!(
        server.open_uploads().is_empty(),
        "{:?}",
        server.open_uploads()
    );
    assert!(!second_file.exists());
    let object = server.root.join(BUCKET).join("stale/sda1.raw.gz");
    assert_volume_of(&gunzip(&object), &noise_b);
}

/// A reader that fails: the data "ends" with an error.
struct FailingReader;

impl std::io::Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("disk unplugged"))
    }
}

#[test]
fn storage_errors_are_reported_not_the_broken_pipe_they_cause() {
    let server = S3Server::start();
    let d = tempfile::tempdir().unwrap();
    // 12 MiB of noise: a multipart upload in 5 MiB parts, refused at its start.
    let (b, _) = noise_bundle(d.path(), "noise", 12 << 20, 5);
    let wrong = "wrong-secret-8d3a1f";
    let mut c = s3_export(&b, "denied", &server.endpoint, &d.path().join("cache"), &[]);
    c.env("OSC_SECRET_KEY", wrong);
    let o = run_with_timeout(c, std::time::Duration::from_secs(300));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("s3://{BUCKET}/denied")) && err.contains("failed: HTTP 403"),
        "{err}"
    );
    assert!(
        !err.contains(wrong) && !err.contains("Broken pipe"),
        "{err}"
    );
    assert!(
        server.open_uploads().is_empty(),
        "{:?}",
        server.open_uploads()
    );

    // Nobody listening: the connection failure, not the pipe.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let c = s3_export(&b, "nowhere", &endpoint, &d.path().join("cache"), &[]);
    let o = run_with_timeout(c, std::time::Duration::from_secs(600));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("s3://{BUCKET}/nowhere")) && err.contains("cannot connect"),
        "{err}"
    );
    assert!(!err.contains("Broken pipe"), "{err}");
}

#[test]
fn export_memory_is_bounded_whatever_the_part_size() {
    let d = tempfile::tempdir().unwrap();
    let to = format!("s3://{BUCKET}/big");
    // Parts beyond 128 MiB are refused: one part and the next being read must fit in 256 MiB.
    let o = run(&["export", s(d.path()), "--to", &to, "--part-size", "129"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("5..=128"));

    // 400 MiB of noise in parts of 128 MiB, to a server slower than the compression: at most
    // two parts in memory (one in flight, one being read), where all four were, measured as the
    // child's peak RSS: its VmHWM, which only grows, read until it exits (the peak comes while
    // parts go up, long before the end).
    let server = S3Server::start();
    let slow = Proxy::slow(
        server.port,
        server.root.clone(),
        None,
        std::time::Duration::from_secs(3),
    );
    let (b, noise) = noise_bundle(d.path(), "noise", 400 << 20, 21);
    drop(noise);
    // (Two compression threads: their buffers grow with the thread count.)
    let extra = ["--json", "--part-size", "128", "--threads", "2"];
    let mut child = spawn(s3_export(
        &b,
        "big",
        &slow.endpoint,
        &d.path().join("cache"),
        &extra,
    ));
    let status = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let start = std::time::Instant::now();
    let exit = loop {
        if let Some(hwm) = std::fs::read_to_string(&status).ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        }) {
            peak_kib = peak_kib.max(hwm);
        }
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(start.elapsed().as_secs() < 600, "the export did not end");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let out = child.wait_with_output().unwrap();
    assert!(exit.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let peak_mib = peak_kib / 1024;
    eprintln!("peak RSS of the export: {peak_mib} MiB");
    assert!(
        peak_mib > 128 && peak_mib < 256 + 64,
        "peak RSS {peak_mib} MiB"
    );
    assert!(server.open_uploads().is_empty());
    let object = server.root.join(BUCKET).join("big/sda1.raw.gz");
    assert!(object.metadata().unwrap().len() > 400 << 20);
}

#[path = "common/http.rs"]
mod http;
use http::{files_under, gated_http};

#[test]
fn a_raw_object_is_imported_in_one_pass_as_it_downloads() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("noise.img");
    std::fs::write(&img, noise(48 * MIB as usize, 7)).unwrap();
    // A disk the size of its volume, 1 GiB (48 MiB of noise, zeros after): a raw object through
    // a bare URL must hold the whole volume.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let b = d.path().join("omi");
    ok(&[
        "register",
        s(&img),
        "-o",
        s(&b),
        "--arch",
        "x86_64",
        "--no-boot-check",
        "--format",
        "raw",
        "-q",
    ]);
    let pkg = d.path().join("pkg");
    ok(&["export", s(&b), "--to", s(&pkg), "-q"]);
    // Noise does not compress: half of the first 32 MiB range is 16 MiB of disk.
    let (base, reached, go) = gated_http(pkg.clone(), "sda1.raw.gz", 16 * MIB as usize);
    let out_parent = d.path().join("in");
    std::fs::create_dir(&out_parent).unwrap();
    let back = out_parent.join("back");
    let child = mkomi()
        .args([
            "import",
            &format!("{base}/manifest.json"),
            "-o",
            s(&back),
            "-q",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    reached
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the object was never requested");
    // While the object is held half-sent, its data is already in the new bundle's disk file,
    // and no other file holds it: no work file, no second pass.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let seen = loop {
        let files = files_under(&out_parent);
        let big: Vec<&(PathBuf, u64)> = files.iter().filter(|(_, l)| *l >= 4 * MIB).collect();
        if !big.is_empty() || std::time::Instant::now() > deadline {
            break files;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    go.send(()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let big: Vec<&(PathBuf, u64)> = seen.iter().filter(|(_, l)| *l >= MIB).collect();
    assert_eq!(big.len(), 1, "{seen:?}");
    let (path, len) = big[0];
    assert!(*len >= 4 * MIB && *len < 48 * MIB, "{seen:?}");
    assert_eq!(path.file_name().unwrap(), "sda1.qcow2", "{seen:?}");
    assert!(
        path.parent().unwrap().to_string_lossy().ends_with(".tmp"),
        "{seen:?}"
    );
    ok(&["verify", s(&back), "-q"]);
    // Through a bare URL neither SHA256SUMS nor mkomi's manifest is reachable: the disk is the
    // volume's Size (1 GiB), all of it in the object.
    let m = manifest(&back);
    assert_eq!(m["Disks"][0]["VirtualSize"], 1u64 << 30);
    tool(
        "qemu-img",
        &["compare", s(&img), s(&back.join("sda1.qcow2"))],
    );
}

/// Ctrl-C while the second disk goes up: the first disk's finished object is removed too, so
/// that no part of the package is left in the bucket.
#[test]
fn ctrl_c_on_a_later_disk_removes_the_objects_already_sent() {
    let server = S3Server::start();
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache");
    let root = d.path().join("root.img");
    std::fs::write(&root, noise(MIB as usize, 3)).unwrap();
    let data = d.path().join("data.img");
    std::fs::write(&data, noise(24 << 20, 4)).unwrap();
    let b = d.path().join("two");
    ok(&[
        "register",
        s(&root),
        "-o",
        s(&b),
        "--arch",
        "x86_64",
        "--no-boot-check",
        "--format",
        "raw",
        "--bdm",
        &format!("/dev/sdb={}", s(&data)),
        "-q",
    ]);
    // The root object (1 MiB of noise and its volume's zeros) goes up whole; the proxy holds
    // the second disk's upload after 2 of its parts.
    let held = Proxy::start(server.port, server.root.clone(), Some(2));
    let mut child = spawn(s3_export(&b, "two", &held.endpoint, &cache, &[]));
    wait_for_parts(&mut child, &cache, 2, &[]);
    let prefix = server.root.join(BUCKET).join("two");
    assert!(prefix.join("sda1.raw.gz").exists());
    let (code, err) = interrupt(child);
    assert_eq!(code, Some(130), "{err}");
    let left: Vec<_> = std::fs::read_dir(&prefix)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert!(
        server.open_uploads().is_empty(),
        "{:?}",
        server.open_uploads()
    );
}
