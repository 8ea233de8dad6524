//! The local image store through the real binary: snapshots, images, launch permissions, copies,
//! deletion with its rules, bundles checked with `mkomi verify` and qemu-img, export and import,
//! and the image fields validated against Outscale's own schemas.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// mkomi against the store in `dir`.
fn st(store: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--store", s(store)];
    all.extend_from_slice(args);
    run(&all)
}

fn st_ok(store: &Path, args: &[&str]) -> String {
    let o = st(store, args);
    assert!(
        o.status.success(),
        "mkomi {args:?} failed ({:?}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// Runs a refused command: exit 1, one line on stderr containing `want`.
fn st_refused(store: &Path, args: &[&str], want: &str) {
    let o = st(store, args);
    assert_eq!(o.status.code(), Some(1), "{args:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(want), "wanted {want:?} in {err}");
}

fn json(store: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&st_ok(store, &all)).unwrap()
}

/// A raw disk of `len` MiB whose data depends on `seed`.
fn disk(dir: &Path, name: &str, mib: u64, seed: u8) -> PathBuf {
    let p = dir.join(name);
    sparse_raw(
        &p,
        mib * MIB,
        &[
            (0, MIB, seed),
            (mib * MIB / 2, 2 * MIB, seed.wrapping_add(1)),
        ],
    );
    p
}

fn blobs(store: &Path) -> Vec<String> {
    entries(&store.join("blobs"))
}

fn image_snapshots(store: &Path, id: &str) -> Vec<String> {
    let shown = json(store, &["image", "show", id]);
    shown["Image"]["BlockDeviceMappings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Bsu"]["SnapshotId"].as_str().unwrap().to_owned())
        .collect()
}

/// Validates `doc` against the named definitions of Outscale's schemas.
fn outscale_valid(doc: &Value, defs: &[&str]) {
    let schemas =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/specs/outscale-image-schemas.json");
    let script = r##"
import json, sys, jsonschema
spec = json.load(open(sys.argv[1]))
doc = json.loads(sys.argv[2])
for name in sys.argv[3:]:
    schema = {"$schema": spec["$schema"], "$defs": spec["$defs"], "$ref": "#/$defs/" + name}
    jsonschema.Draft202012Validator(schema).validate(doc)
    print(name, "ok")
"##;
    let mut args = vec![
        "-c".to_owned(),
        script.to_owned(),
        s(&schemas).to_owned(),
        doc.to_string(),
    ];
    args.extend(defs.iter().map(|d| d.to_string()));
    let out = Command::new("python3").args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn snapshots_share_their_data_and_cannot_be_deleted_while_used() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let a = disk(d.path(), "a.raw", 16, 0x11);
    let b = d.path().join("b.raw");
    std::fs::copy(&a, &b).unwrap();

    let s1 = st_ok(&store, &["snapshot", "create", s(&a), "-q"]);
    let s2 = st_ok(
        &store,
        &["snapshot", "create", s(&b), "-q", "--description", "b"],
    );
    assert!(s1.starts_with("snap-") && s1.len() == 13, "{s1}");
    assert_ne!(s1, s2);
    let j1 = json(&store, &["snapshot", "show", &s1]);
    let j2 = json(&store, &["snapshot", "show", &s2]);
    assert_eq!(j1["Mkomi"]["ContentDigest"], j2["Mkomi"]["ContentDigest"]);
    assert_eq!(j2["Snapshot"]["Description"], "b");
    assert_eq!(j1["Mkomi"]["VirtualSize"], 16 * MIB);
    // The same content is stored once.
    assert_eq!(blobs(&store).len(), 1);

    let ami = st_ok(
        &store,
        &[
            "image",
            "create",
            "--root",
            &s1,
            "--arch",
            "x86_64",
            "--no-boot-check",
            "--name",
            "web",
            "-q",
        ],
    );
    assert!(ami.starts_with("ami-") && ami.len() == 12, "{ami}");
    assert_eq!(image_snapshots(&store, &ami), vec![s1.clone()]);
    st_refused(
        &store,
        &["snapshot", "delete", &s1],
        &format!("{s1}: used by {ami}: delete that image first"),
    );
    // An unused snapshot goes; the blob stays while another snapshot shares it.
    st_ok(&store, &["snapshot", "delete", &s2]);
    assert_eq!(blobs(&store).len(), 1);
    st_refused(&store, &["snapshot", "show", &s2], "no such snapshot");
    st_ok(&store, &["image", "delete", &ami]);
    st_ok(&store, &["snapshot", "delete", &s1]);
    assert!(blobs(&store).is_empty(), "{:?}", blobs(&store));
    let check = json(&store, &["store", "check"]);
    assert_eq!(check["Problems"], Value::Array(vec![]));
}

#[test]
fn images_from_volumes_bundle_out_verified_and_identical_each_time() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let root = disk(d.path(), "root.raw", 24, 0x21);
    let data = disk(d.path(), "data.raw", 8, 0x31);
    let snap = st_ok(&store, &["snapshot", "create", s(&data), "-q"]);
    let ami = st_ok(
        &store,
        &[
            "image",
            "create",
            "--root",
            s(&root),
            "--bdm",
            &format!("/dev/sdb={snap},size=20,type=io1,iops=600,delete-on-vm-deletion=false"),
            "--arch",
            "x86_64",
            "--no-boot-check",
            "--name",
            "web (v2)",
            "--description",
            "two volumes",
            "-q",
        ],
    );
    let shown = json(&store, &["image", "show", &ami]);
    let image = &shown["Image"];
    assert_eq!(image["State"], "available");
    assert_eq!(image["ImageName"], "web (v2)");
    assert_eq!(image["BlockDeviceMappings"][1]["Bsu"]["SnapshotId"], snap);
    assert_eq!(image["BlockDeviceMappings"][1]["Bsu"]["Iops"], 600);
    assert_eq!(image["BlockDeviceMappings"][0]["Bsu"]["VolumeSize"], 1);
    assert_eq!(shown["Mkomi"]["Audit"]["Policy"], "report");
    outscale_valid(image, &["Image"]);
    // The root's new snapshot is listed with the image that uses it.
    let root_snap = image["BlockDeviceMappings"][0]["Bsu"]["SnapshotId"]
        .as_str()
        .unwrap();
    let rs = json(&store, &["snapshot", "show", root_snap]);
    assert_eq!(rs["Mkomi"]["Images"], serde_json::json!([ami]));

    let b1 = d.path().join("b1");
    let b2 = d.path().join("b2");
    st_ok(&store, &["image", "bundle", &ami, "-o", s(&b1)]);
    st_ok(&store, &["image", "bundle", &ami, "-o", s(&b2)]);
    ok(&["verify", s(&b1), "-q"]);
    sha256sum_check(&b1);
    qemu_check(&b1.join("sda1.qcow2"));
    qemu_compare(&root, &b1.join("sda1.qcow2"));
    qemu_compare(&data, &b1.join("sdb.qcow2"));
    assert_eq!(
        std::fs::read(b1.join("SHA256SUMS")).unwrap(),
        std::fs::read(b2.join("SHA256SUMS")).unwrap()
    );
    let m = manifest(&b1);
    outscale_valid(&m["Image"], &["CreateImageRequest", "Image"]);
    // The same disk registered directly has the same ContentDigest.
    let direct = d.path().join("direct");
    ok(&[
        "register",
        s(&root),
        "-o",
        s(&direct),
        "--arch",
        "x86_64",
        "--no-boot-check",
        "-q",
    ]);
    assert_eq!(
        manifest(&direct)["Disks"][0]["ContentDigest"],
        m["Disks"][0]["ContentDigest"]
    );
    // An existing output is refused without --force, and nothing else is written.
    let o = st(&store, &["image", "bundle", &ami, "-o", s(&b1)]);
    assert_eq!(o.status.code(), Some(1));
    st_ok(&store, &["image", "bundle", &ami, "-o", s(&b1), "--force"]);
}

#[test]
fn a_disk_of_odd_size_keeps_its_tail_in_a_blob() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    // 57 bytes past a whole sector, holding data: the blob's disk is rounded up to a sector.
    let size = 3_158_073u64;
    let padded = 3_158_528u64;
    let src = d.path().join("odd.raw");
    sparse_raw(&src, size, &[(0, 100_000, 0x61), (size - 57, 57, 0x62)]);
    let snap = st_ok(&store, &["snapshot", "create", s(&src), "-q"]);
    assert_eq!(
        json(&store, &["snapshot", "show", &snap])["Mkomi"]["VirtualSize"],
        padded
    );
    let ami = st_ok(
        &store,
        &[
            "image",
            "create",
            "--root",
            &snap,
            "--arch",
            "x86_64",
            "--name",
            "odd",
            "--no-boot-check",
            "-q",
        ],
    );
    let b = d.path().join("b");
    st_ok(&store, &["image", "bundle", &ami, "-o", s(&b)]);
    ok(&["verify", s(&b), "-q"]);
    let disk = b.join("sda1.qcow2");
    qemu_check(&disk);
    qemu_compare(&src, &disk);
    let info: Value =
        serde_json::from_str(&tool("qemu-img", &["info", "--output=json", s(&disk)])).unwrap();
    assert_eq!(info["virtual-size"], padded);
    assert_eq!(manifest(&b)["Disks"][0]["VirtualSize"], padded);
}

#[test]
fn launch_permissions_tags_and_filters() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let root = disk(d.path(), "root.raw", 8, 0x41);
    let a = st_ok(
        &store,
        &[
            "image",
            "create",
            "--root",
            s(&root),
            "--arch",
            "x86_64",
            "--no-boot-check",
            "--name",
            "web-1",
            "-q",
        ],
    );
    let b = st_ok(
        &store,
        &[
            "image",
            "create",
            "--root",
            s(&root),
            "--arch",
            "i386",
            "--no-boot-check",
            "--name",
            "db-1",
            "-q",
            "--no-arch-check",
        ],
    );
    st_ok(
        &store,
        &[
            "image",
            "update",
            &a,
            "--add-account",
            "123456789012",
            "--add-account",
            "210987654321",
            "--tag",
            "env=prod",
            "--tag",
            "team=web",
            "--description",
            "shared",
        ],
    );
    st_ok(
        &store,
        &[
            "image",
            "update",
            &a,
            "--remove-account",
            "210987654321",
            "--global",
            "true",
        ],
    );
    let image = json(&store, &["image", "show", &a])["Image"].clone();
    assert_eq!(
        image["PermissionsToLaunch"],
        serde_json::json!({"GlobalPermission": true, "AccountIds": ["123456789012"]})
    );
    assert_eq!(image["Description"], "shared");
    assert_eq!(
        image["Tags"][0],
        serde_json::json!({"Key": "env", "Value": "prod"})
    );
    outscale_valid(&image, &["Image"]);

    let ids = |filters: &[&str]| -> Vec<String> {
        let mut args = vec!["image", "list"];
        for f in filters {
            args.extend(["--filter", f]);
        }
        json(&store, &args)["Images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["ImageId"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&[]), vec![a.clone(), b.clone()]);
    assert_eq!(ids(&["tag:env=prod"]), vec![a.clone()]);
    assert_eq!(ids(&["arch=i386"]), vec![b.clone()]);
    assert_eq!(
        ids(&["name=*-1,state=available"]),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(ids(&["name=web*", "arch=i386"]), Vec::<String>::new());
    assert_eq!(ids(&["state=pending"]), Vec::<String>::new());
    let plain = st_ok(&store, &["image", "list", "--filter", "name=db*"]);
    assert!(
        plain.starts_with(&b) && plain.contains("i386") && plain.contains("db-1"),
        "{plain}"
    );

    // Refused: a malformed account (usage error), an unknown filter, an unknown image.
    let o = st(&store, &["image", "update", &a, "--add-account", "12345"]);
    assert_eq!(o.status.code(), Some(2));
    let o = st(&store, &["image", "list", "--filter", "owner=me"]);
    assert_eq!(o.status.code(), Some(2));
    let o = st(&store, &["image", "list", "--filter", "state=deleted"]);
    assert_eq!(o.status.code(), Some(2));
    // A tag removed; the other stays.
    st_ok(&store, &["image", "update", &a, "--remove-tag", "env"]);
    let image = json(&store, &["image", "show", &a])["Image"].clone();
    assert_eq!(
        image["Tags"],
        serde_json::json!([{"Key": "team", "Value": "web"}])
    );
    assert_eq!(ids(&["tag:env=prod"]), Vec::<String>::new());
    st_refused(
        &store,
        &["image", "update", "ami-00000000", "--global", "false"],
        "ami-00000000: no such image",
    );
}

#[test]
fn copies_are_independent_of_their_source() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let root = disk(d.path(), "root.raw", 16, 0x51);
    let data = disk(d.path(), "data.raw", 8, 0x61);
    let src = st_ok(
        &store,
        &[
            "image",
            "create",
            "--root",
            s(&root),
            "--bdm",
            &format!("/dev/sdb={}", s(&data)),
            "--arch",
            "x86_64",
            "--no-boot-check",
            "--name",
            "src",
            "-q",
        ],
    );
    st_ok(
        &store,
        &["image", "update", &src, "--add-account", "123456789012"],
    );
    let copy = st_ok(&store, &["image", "copy", &src, "--name", "the copy"]);
    let shown = json(&store, &["image", "show", &copy]);
    assert_eq!(shown["Image"]["ImageName"], "the copy");
    assert_eq!(shown["Mkomi"]["CopiedFrom"], src);
    // A copy is private: launch permissions are not copied.
    assert_eq!(
        shown["Image"]["PermissionsToLaunch"]["AccountIds"],
        serde_json::json!([])
    );
    let (ss, cs) = (
        image_snapshots(&store, &src),
        image_snapshots(&store, &copy),
    );
    assert_eq!(cs.len(), 2);
    for (a, b) in ss.iter().zip(&cs) {
        assert_ne!(a, b);
        assert_eq!(
            json(&store, &["snapshot", "show", a])["Mkomi"]["ContentDigest"],
            json(&store, &["snapshot", "show", b])["Mkomi"]["ContentDigest"]
        );
    }
    assert_eq!(blobs(&store).len(), 2);

    // Deleting the source with its snapshots leaves the copy whole.
    let del = json(&store, &["image", "delete", &src, "--with-snapshots"]);
    assert_eq!(del["SnapshotsDeleted"], serde_json::json!(ss));
    assert_eq!(blobs(&store).len(), 2);
    let out = d.path().join("copy-bundle");
    st_ok(&store, &["image", "bundle", &copy, "-o", s(&out)]);
    ok(&["verify", s(&out), "-q"]);
    qemu_compare(&root, &out.join("sda1.qcow2"));
    qemu_compare(&data, &out.join("sdb.qcow2"));

    // Without --with-snapshots the snapshots stay; then they can go, and the data with them.
    let del = json(&store, &["image", "delete", &copy]);
    assert_eq!(del["SnapshotsKept"], serde_json::json!(cs));
    for snap in &cs {
        st_ok(&store, &["snapshot", "delete", snap]);
    }
    assert!(blobs(&store).is_empty());
    let gc = json(&store, &["store", "gc"]);
    assert_eq!(gc["BlobsRemoved"], serde_json::json!([]));
}

#[test]
fn bundles_and_packages_go_in_and_out() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let root = disk(d.path(), "root.raw", 16, 0x71);
    let data = disk(d.path(), "data.raw", 8, 0x72);
    let bundle = d.path().join("omi");
    ok(&[
        "register",
        s(&root),
        "-o",
        s(&bundle),
        "--arch",
        "x86_64",
        "--no-boot-check",
        "--name",
        "from bundle",
        "--bdm",
        &format!("/dev/sdb={},size=3,type=gp2", s(&data)),
        "--format",
        "raw",
        "-q",
    ]);
    let ami = st_ok(
        &store,
        &["image", "create", "--from-bundle", s(&bundle), "-q"],
    );
    let image = json(&store, &["image", "show", &ami])["Image"].clone();
    let m = manifest(&bundle);
    assert_eq!(image["ImageName"], m["Image"]["ImageName"]);
    assert_eq!(image["BlockDeviceMappings"][1]["Bsu"]["VolumeType"], "gp2");
    assert_eq!(image["BlockDeviceMappings"][1]["Bsu"]["VolumeSize"], 3);
    let out = d.path().join("out");
    st_ok(&store, &["image", "bundle", &ami, "-o", s(&out)]);
    let back = manifest(&out);
    assert_eq!(back["Image"], m["Image"]);
    for i in 0..2 {
        assert_eq!(
            back["Disks"][i]["ContentDigest"],
            m["Disks"][i]["ContentDigest"]
        );
    }

    // A damaged bundle is refused, and nothing enters the store.
    let bad = d.path().join("bad");
    ok(&[
        "register",
        s(&root),
        "-o",
        s(&bad),
        "--arch",
        "x86_64",
        "--no-boot-check",
        "-q",
    ]);
    let f = bad.join("sda1.qcow2");
    let mut bytes = std::fs::read(&f).unwrap();
    let n = bytes.len();
    bytes[n - 70_000] ^= 0xff;
    std::fs::write(&f, &bytes).unwrap();
    st_refused(
        &store,
        &["image", "create", "--from-bundle", s(&bad)],
        "does not verify",
    );
    assert_eq!(
        json(&store, &["image", "list"])["Images"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Export from the store, import back into it: the same content under new IDs.
    let pkg = d.path().join("pkg");
    st_ok(&store, &["image", "export", &ami, "--to", s(&pkg), "-q"]);
    tool("gzip", &["-t", s(&pkg.join("sda1.qcow2.gz"))]);
    let imported = st_ok(
        &store,
        &["image", "import", s(&pkg.join("manifest.json")), "-q"],
    );
    assert_ne!(imported, ami);
    let again = d.path().join("again");
    st_ok(&store, &["image", "bundle", &imported, "-o", s(&again)]);
    let am = manifest(&again);
    assert_eq!(am["Image"], m["Image"]);
    for i in 0..2 {
        assert_eq!(
            am["Disks"][i]["ContentDigest"],
            m["Disks"][i]["ContentDigest"]
        );
    }
    // Same content: still two blobs only.
    assert_eq!(blobs(&store).len(), 2);
    assert!(entries(&store.join("work")).is_empty());
}

#[test]
fn refused_images_leave_nothing() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    // A root with a private SSH key on an ext4 file system, refused by --audit deny=medium.
    let rootfs = d.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("root/.ssh")).unwrap();
    std::fs::write(
        rootfs.join("root/.ssh/id_ed25519"),
        "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
    )
    .unwrap();
    let img = d.path().join("root.ext4");
    let o = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d", s(&rootfs), s(&img), "16M"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = st(
        &store,
        &[
            "image",
            "create",
            "--root",
            s(&img),
            "--arch",
            "x86_64",
            "--no-boot-check",
            "--audit",
            "deny=medium",
            "-q",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Refused before anything was stored, on a new store: no store is left.
    assert!(!store.exists(), "a refused image create made {store:?}");
    // On a store that exists: nothing is left either.
    let other = disk(d.path(), "other.raw", 8, 0x99);
    st_ok(&store, &["snapshot", "create", s(&other), "-q"]);
    let o = st(
        &store,
        &[
            "image",
            "create",
            "--root",
            s(&img),
            "--arch",
            "x86_64",
            "--no-boot-check",
            "--audit",
            "deny=medium",
            "-q",
        ],
    );
    assert_eq!(o.status.code(), Some(3));
    // A contradicting field, a missing snapshot, a volume too small for its disk.
    st_refused(
        &store,
        &[
            "image",
            "create",
            "--root",
            "snap-0badf00d",
            "--arch",
            "x86_64",
            "--no-boot-check",
        ],
        "snap-0badf00d: no such snapshot",
    );
    st_refused(
        &store,
        &[
            "image",
            "create",
            "--root",
            s(&img),
            "--bdm",
            "/dev/sda1=x",
            "--arch",
            "x86_64",
            "--no-boot-check",
        ],
        "/dev/sda1",
    );
    let listed = json(&store, &["image", "list"]);
    assert_eq!(listed["Images"], serde_json::json!([]));
    assert_eq!(
        json(&store, &["snapshot", "list"])["Snapshots"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(entries(&store.join("work")).is_empty());
    // The refused disk's data was staged, never committed: only the snapshot's blob.
    assert_eq!(blobs(&store).len(), 1);
}

#[test]
fn an_unchanged_file_is_not_read_again_and_a_changed_one_is() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let a = disk(d.path(), "a.raw", 8, 0x81);
    // Files changed in the last 3 seconds are always read (coarse kernel timestamps).
    let settle = || std::thread::sleep(std::time::Duration::from_millis(3200));
    let create = || json(&store, &["snapshot", "create", s(&a), "-q"])["Mkomi"].clone();
    let fresh = create();
    assert!(fresh["BytesRead"].as_u64().unwrap() > 0, "{fresh}");
    settle();
    let first = create();
    assert!(first["BytesRead"].as_u64().unwrap() > 0, "{first}");
    let second = create();
    assert_eq!(second["BytesRead"], 0, "{second}");
    assert_eq!(second["ContentDigest"], first["ContentDigest"]);
    // Change one byte in place, same size, and put the modification time back: the change time
    // still tells, so the new content is read.
    let before = std::fs::metadata(&a).unwrap().modified().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&a).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"\x99", 4096).unwrap();
    f.set_modified(before).unwrap();
    drop(f);
    settle();
    let third = create();
    assert!(third["BytesRead"].as_u64().unwrap() > 0, "{third}");
    assert_ne!(third["ContentDigest"], first["ContentDigest"]);
    assert_eq!(blobs(&store).len(), 2);
}

#[path = "common/s3_server.rs"]
mod s3_server;
use s3_server::{ACCESS_KEY, BUCKET, REGION, S3Server, SECRET_KEY};

#[test]
fn an_image_travels_between_stores_through_a_bucket() {
    let server = S3Server::start();
    let d = tempfile::tempdir().unwrap();
    let (one, two) = (d.path().join("one"), d.path().join("two"));
    let root = disk(d.path(), "root.raw", 16, 0x91);
    let ami = st_ok(
        &one,
        &[
            "image",
            "create",
            "--root",
            s(&root),
            "--arch",
            "x86_64",
            "--no-boot-check",
            "--name",
            "travel",
            "-q",
        ],
    );
    let s3 = |store: &Path, args: &[&str]| {
        let mut c = mkomi();
        c.arg("--store")
            .arg(store)
            .args(args)
            .args(["--endpoint", &server.endpoint, "--region", REGION, "-q"])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("OSC_ACCESS_KEY", ACCESS_KEY)
            .env("OSC_SECRET_KEY", SECRET_KEY)
            .env("XDG_CACHE_HOME", d.path().join("cache"));
        let o = run_with_timeout(c, std::time::Duration::from_secs(300));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    s3(
        &one,
        &[
            "image",
            "export",
            &ami,
            "--to",
            &format!("s3://{BUCKET}/travel"),
        ],
    );
    let got = s3(
        &two,
        &[
            "image",
            "import",
            &format!("s3://{BUCKET}/travel/manifest.json"),
        ],
    );
    assert!(got.starts_with("ami-"), "{got}");
    let a = json(&one, &["image", "show", &ami]);
    let b = json(&two, &["image", "show", &got]);
    assert_eq!(b["Image"]["ImageName"], "travel");
    let digest = |store: &Path, image: &Value| {
        let snap = image["Image"]["BlockDeviceMappings"][0]["Bsu"]["SnapshotId"]
            .as_str()
            .unwrap()
            .to_owned();
        json(store, &["snapshot", "show", &snap])["Mkomi"]["ContentDigest"].clone()
    };
    assert_eq!(digest(&one, &a), digest(&two, &b));
    // The store's work directory is left empty, and its check passes.
    assert!(entries(&two.join("work")).is_empty());
    assert_eq!(
        json(&two, &["store", "check"])["Problems"],
        serde_json::json!([])
    );
}

#[test]
fn a_lost_catalog_is_not_made_anew_over_the_data() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let a = disk(d.path(), "a.raw", 8, 0xa1);
    st_ok(&store, &["snapshot", "create", s(&a), "-q"]);
    for f in ["catalog.sqlite-wal", "catalog.sqlite-shm"] {
        let _ = std::fs::remove_file(store.join(f));
    }
    std::fs::write(store.join("catalog.sqlite"), b"").unwrap();
    for args in [
        &["snapshot", "list"][..],
        &["store", "gc"],
        &["store", "check"],
    ] {
        st_refused(
            &store,
            args,
            "catalog.sqlite: missing or empty, but blobs/ holds 1 file(s)",
        );
    }
    assert_eq!(blobs(&store).len(), 1);
}

#[test]
fn read_commands_do_not_make_a_store_and_from_bundle_takes_no_image_options() {
    let d = tempfile::tempdir().unwrap();
    let typo = d.path().join("typo");
    st_refused(&typo, &["image", "list"], "no store here");
    st_refused(&typo, &["store", "check"], "no store here");
    assert!(!typo.exists());
    let root = disk(d.path(), "root.raw", 8, 0xb1);
    let bundle = d.path().join("omi");
    ok(&[
        "register",
        s(&root),
        "-o",
        s(&bundle),
        "--arch",
        "x86_64",
        "--no-boot-check",
        "-q",
    ]);
    let store = d.path().join("store");
    let o = st(
        &store,
        &[
            "image",
            "create",
            "--from-bundle",
            s(&bundle),
            "--name",
            "other",
            "--arch",
            "i386",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--arch, --name cannot apply"), "{err}");
    // Empty lists print nothing; a deleted snapshot's JSON names it.
    let snap = st_ok(&store, &["snapshot", "create", s(&root), "-q"]);
    assert_eq!(st_ok(&store, &["image", "list"]), "");
    let del = json(&store, &["snapshot", "delete", &snap]);
    assert_eq!(del["SnapshotId"], snap);
    assert_eq!(st_ok(&store, &["snapshot", "list"]), "");
}

/// Validates each document against a response of Outscale's API (osc-api 1.40.1, the whole
/// document but its `Mkomi` key, which is mkomi's own).
fn osc_api_valid(docs: &[(&Value, &str)]) {
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/specs/osc-api-1.40.1.yaml");
    let script = r##"
import json, sys, yaml, jsonschema
loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
spec = yaml.load(open(sys.argv[1]), Loader=loader)
for doc, name in json.load(sys.stdin):
    doc.pop("Mkomi", None)
    schema = {"components": spec["components"], "$ref": "#/components/schemas/" + name}
    jsonschema.Draft7Validator(schema).validate(doc)
    print(name, "ok")
"##;
    let input: Vec<(&Value, &str)> = docs.to_vec();
    let mut child = Command::new("python3")
        .args(["-c", script, s(&spec)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), &input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command that must be refused as a usage error: exit 2, stderr containing `want`.
fn st_usage(store: &Path, args: &[&str], want: &str) {
    let o = st(store, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(want), "{args:?}: wanted {want:?} in {err}");
}

#[test]
fn json_has_outscales_shapes_and_ids_are_checked() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let root = disk(d.path(), "root.raw", 8, 0xc1);
    let created = json(&store, &["snapshot", "create", s(&root), "-q"]);
    let snap = created["Snapshot"]["SnapshotId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        created["Mkomi"]["BytesRead"].as_u64().unwrap() > 0,
        "{created}"
    );
    let made = json(
        &store,
        &[
            "image",
            "create",
            "--root",
            &snap,
            "--arch",
            "x86_64",
            "--no-boot-check",
            "--name",
            "shapes",
            "-q",
        ],
    );
    let ami = made["Image"]["ImageId"].as_str().unwrap().to_owned();
    let updated = json(&store, &["image", "update", &ami, "--description", "d"]);
    assert_eq!(updated["Image"]["Description"], "d");
    let copied = json(&store, &["image", "copy", &ami]);
    let shown = json(&store, &["image", "show", &ami]);
    let snap_shown = json(&store, &["snapshot", "show", &snap]);
    assert_eq!(snap_shown["Snapshot"]["SnapshotId"], snap.as_str());
    assert_eq!(snap_shown["Mkomi"]["Images"], serde_json::json!([ami]));
    let images = json(&store, &["image", "list"]);
    assert_eq!(images["Images"].as_array().unwrap().len(), 2, "{images}");
    let snaps = json(&store, &["snapshot", "list"]);
    // The copy has a snapshot of its own, sharing the data.
    assert_eq!(snaps["Snapshots"].as_array().unwrap().len(), 2, "{snaps}");
    assert_eq!(snaps["Snapshots"][0]["SnapshotId"], snap.as_str());
    assert_eq!(
        snaps["Mkomi"][&snap]["ContentDigest"],
        snap_shown["Mkomi"]["ContentDigest"]
    );
    osc_api_valid(&[
        (&created, "CreateSnapshotResponse"),
        (&snap_shown, "CreateSnapshotResponse"),
        (&snaps, "ReadSnapshotsResponse"),
        (&made, "CreateImageResponse"),
        (&copied, "CreateImageResponse"),
        (&shown, "CreateImageResponse"),
        (&updated, "UpdateImageResponse"),
        (&images, "ReadImagesResponse"),
    ]);

    // An ID of the other kind, or of no kind, is a usage error that says so; a well-formed ID
    // that is not there is "no such".
    let wrong: &[(&[&str], &str)] = &[
        (
            &["image", "show", "snap-00000000"],
            "snap-00000000 is a snapshot ID",
        ),
        (&["image", "show", &snap], "is a snapshot ID"),
        (&["image", "delete", &snap], "is a snapshot ID"),
        (&["image", "copy", &snap], "is a snapshot ID"),
        (&["image", "bundle", &snap, "-o", "x"], "is a snapshot ID"),
        (&["image", "export", &snap, "--to", "x"], "is a snapshot ID"),
        (
            &["image", "update", &snap, "--global", "true"],
            "is a snapshot ID",
        ),
        (&["snapshot", "show", &ami], "is an image ID"),
        (
            &["snapshot", "delete", "ami-00000000"],
            "ami-00000000 is an image ID",
        ),
        (
            &["image", "show", "ami-xyz"],
            "not an image ID: ami- and 8 lowercase hex digits",
        ),
        (&["image", "show", "AMI-0000000A"], "not an image ID"),
        (
            &["snapshot", "show", "snap-1"],
            "not a snapshot ID: snap- and 8 lowercase hex digits",
        ),
    ];
    for (args, want) in wrong {
        st_usage(&store, args, want);
    }
    // A volume's content is a snapshot ID or a path: an image ID, or a malformed snapshot ID,
    // that names no file is a usage error too.
    let bdm = format!("/dev/sdb={ami}");
    let volumes: &[(&[&str], &str)] = &[
        (&["image", "create", "--root", &ami], "is an image ID"),
        (
            &["image", "create", "--root", "snap-xyz"],
            "not a snapshot ID",
        ),
        (
            &["image", "create", "--root", &snap, "--bdm", &bdm],
            "is an image ID",
        ),
    ];
    for (args, want) in volumes {
        st_usage(&store, args, want);
    }
    st_refused(
        &store,
        &["image", "show", "ami-00000000"],
        "ami-00000000: no such image",
    );
    st_refused(
        &store,
        &["snapshot", "show", "snap-00000000"],
        "snap-00000000: no such snapshot",
    );
    // An update that changes nothing is a usage error naming what can change.
    st_usage(
        &store,
        &["image", "update", &ami],
        "nothing to change: give --add-account, --remove-account, --global, --description, \
         --tag or --remove-tag",
    );
    assert_eq!(json(&store, &["image", "show", &ami]), shown);
}

#[test]
fn refused_creates_make_no_store() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let root = disk(d.path(), "root.raw", 8, 0xd1);
    let bundle = d.path().join("omi");
    ok(&[
        "register",
        s(&root),
        "-o",
        s(&bundle),
        "--arch",
        "x86_64",
        "--no-boot-check",
        "-q",
    ]);
    let missing = d.path().join("missing.raw");
    let no_package = d.path().join("none/manifest.json");
    let cases: &[(&[&str], i32)] = &[
        (&["snapshot", "create", s(&missing)], 1),
        (
            &["image", "create", "--root", s(&missing), "--arch", "x86_64"],
            1,
        ),
        (
            &[
                "image",
                "create",
                "--root",
                "snap-0badf00d",
                "--arch",
                "x86_64",
                "--no-boot-check",
            ],
            1,
        ),
        (&["image", "create", "--root", s(&root), "--name", "x"], 1),
        // Refused by the inspection, after the data was staged.
        (
            &[
                "image",
                "create",
                "--root",
                s(&root),
                "--arch",
                "x86_64",
                "--boot-mode",
                "uefi",
            ],
            1,
        ),
        (&["image", "create", "--from-bundle", s(&missing)], 1),
        (
            &[
                "image",
                "create",
                "--from-bundle",
                s(&bundle),
                "--arch",
                "i386",
            ],
            2,
        ),
        (&["image", "create"], 2),
        (&["image", "import", s(&no_package)], 1),
    ];
    for (args, code) in cases {
        let o = st(&store, args);
        assert_eq!(
            o.status.code(),
            Some(*code),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!store.exists(), "{args:?} was refused but made {store:?}");
    }
    // In a directory that exists (and is empty), a refused command leaves it empty.
    std::fs::create_dir(&store).unwrap();
    for (args, _) in cases {
        st(&store, args);
        assert_eq!(entries(&store), Vec::<String>::new(), "{args:?}");
    }
    // What was there before is not the store's to remove: only what it made goes.
    std::fs::write(store.join("notes.txt"), "mine").unwrap();
    std::fs::create_dir(store.join("work")).unwrap();
    for (args, _) in cases {
        st(&store, args);
        assert_eq!(entries(&store), vec!["notes.txt", "work"], "{args:?}");
    }
    std::fs::remove_file(store.join("notes.txt")).unwrap();
    std::fs::remove_dir(store.join("work")).unwrap();
    // What succeeds makes the store, and a later refusal leaves it as it was.
    st_ok(&store, &["snapshot", "create", s(&root), "-q"]);
    st(&store, &["snapshot", "create", s(&missing)]);
    assert_eq!(
        json(&store, &["snapshot", "list"])["Snapshots"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// How a command whose stdout reader went away ended: its exit code (None after a signal),
/// whether a signal was SIGPIPE, and its stderr.
struct Cut {
    code: Option<i32>,
    sigpipe: bool,
    stderr: String,
}

impl Cut {
    /// Ended quietly, as coreutils do: no panic, no message, exit code 0 or SIGPIPE.
    fn assert_quiet(&self, what: &str) {
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("Broken pipe"),
            "{what}: {}",
            self.stderr
        );
        assert!(
            self.code == Some(0) || self.sigpipe,
            "{what}: exit {:?}: {}",
            self.code,
            self.stderr
        );
    }
}

fn cut(child: std::process::Child) -> Cut {
    use std::os::unix::process::ExitStatusExt;
    let out = child.wait_with_output().unwrap();
    Cut {
        code: out.status.code(),
        sigpipe: out.status.signal() == Some(13),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// mkomi with stdout into a pipe whose reader has gone before it writes anything.
fn into_closed_pipe(args: &[&str]) -> Cut {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = mkomi()
        .args(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    cut(child)
}

/// mkomi with stdout into a pipe whose reader reads one line, then goes.
fn one_line_then_gone(args: &[&str]) -> Cut {
    use std::io::BufRead;
    let mut child = mkomi()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(!line.is_empty(), "{args:?} printed nothing");
    cut(child)
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let st_ = s(&store);
    let root = disk(d.path(), "root.raw", 8, 0xe1);
    let ami = st_ok(
        &store,
        &[
            "image",
            "create",
            "--root",
            s(&root),
            "--arch",
            "x86_64",
            "--no-boot-check",
            "--name",
            "piped",
            "-q",
        ],
    );
    let snap = image_snapshots(&store, &ami)[0].clone();
    let bundle = d.path().join("omi");
    st_ok(&store, &["image", "bundle", &ami, "-o", s(&bundle)]);
    let commands: Vec<Vec<&str>> = vec![
        vec!["--store", st_, "image", "list"],
        vec!["--store", st_, "--json", "image", "list"],
        vec!["--store", st_, "snapshot", "list"],
        vec!["--store", st_, "--json", "snapshot", "list"],
        vec!["--store", st_, "image", "show", &ami],
        vec!["--store", st_, "snapshot", "show", &snap],
        vec!["--store", st_, "image", "copy", &ami, "--json"],
        vec!["--store", st_, "image", "copy", &ami],
        vec!["--store", st_, "store", "check"],
        vec!["--store", st_, "--json", "store", "gc"],
        vec!["verify", s(&bundle)],
        vec!["--json", "verify", s(&bundle)],
        vec!["inspect", s(&root)],
        vec!["--json", "inspect", s(&root)],
        vec!["audit", s(&root)],
        vec!["--json", "audit", s(&root)],
        vec!["completions", "bash"],
    ];
    for c in &commands {
        into_closed_pipe(c).assert_quiet(&format!("{c:?}"));
    }
    // register --json: the bundle is whole, and no temporary file is left beside it.
    let out = d.path().join("registered");
    into_closed_pipe(&[
        "register",
        s(&root),
        "-o",
        s(&out),
        "--arch",
        "x86_64",
        "--no-boot-check",
        "--json",
        "-q",
    ])
    .assert_quiet("register --json");
    ok(&["verify", s(&out), "-q"]);
    assert!(
        !entries(d.path()).iter().any(|e| e.contains(".mkomi-")),
        "{:?}",
        entries(d.path())
    );
    // A reader that reads one line of an output larger than a pipe holds, then goes.
    let tags: Vec<String> = (0..300)
        .map(|i| format!("key{i:03}={}", "v".repeat(250)))
        .collect();
    let mut update = vec!["--store", st_, "image", "update", &ami];
    for t in &tags {
        update.extend(["--tag", t]);
    }
    ok(&update);
    for c in [
        vec!["--store", st_, "--json", "image", "list"],
        vec!["--store", st_, "image", "show", &ami],
        vec![
            "--store", st_, "--json", "image", "update", &ami, "--global", "false",
        ],
    ] {
        one_line_then_gone(&c).assert_quiet(&format!("{c:?}"));
    }
    // Any other failure to write stdout is an error, said once.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = mkomi()
        .args(["--store", st_, "image", "list"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot write to standard output") && err.lines().count() == 1,
        "{err}"
    );
}
