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
    assert_eq!(j1["ContentDigest"], j2["ContentDigest"]);
    assert_eq!(j2["Description"], "b");
    assert_eq!(j1["VirtualSize"], 16 * MIB);
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
    assert_eq!(rs["Images"], serde_json::json!([ami]));

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
            json(&store, &["snapshot", "show", a])["ContentDigest"],
            json(&store, &["snapshot", "show", b])["ContentDigest"]
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
        ],
        "/dev/sda1",
    );
    let listed = json(&store, &["image", "list"]);
    assert_eq!(listed["Images"], serde_json::json!([]));
    assert!(
        json(&store, &["snapshot", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(entries(&store.join("work")).is_empty());
    // The refused disk's data was staged, never committed: nothing in blobs/.
    assert!(blobs(&store).is_empty());
}

#[test]
fn an_unchanged_file_is_not_read_again_and_a_changed_one_is() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let a = disk(d.path(), "a.raw", 8, 0x81);
    // Files changed in the last 3 seconds are always read (coarse kernel timestamps).
    let settle = || std::thread::sleep(std::time::Duration::from_millis(3200));
    let create = || json(&store, &["snapshot", "create", s(&a), "-q"]);
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
        json(store, &["snapshot", "show", &snap])["ContentDigest"].clone()
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
