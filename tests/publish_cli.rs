//! `mkomi publish` as users run it: the binary, its credentials from the environment, against
//! the fake Outscale API (`tests/oapi/fake_api.py`, which checks every signature and body
//! against the API description and imports each disk from its pre-signed URL) and the tests'
//! S3 server. A publish killed (SIGKILL) in each phase is run again: one image in the end, no
//! orphaned snapshot, no object left. Ctrl-C removes what the run created. `--dry-run` output
//! validates against the spec and sends nothing.

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::oapi_server::{ACCESS_KEY, OapiServer, REGION, SECRET_KEY};
use serde_json::Value;

const MIB: usize = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A qcow2 bundle: a 12 MiB root (three 5 MiB parts at the smallest part size, so that an
/// upload can be caught half-way) and a 1 MiB gp2 volume on /dev/sdb.
fn bundle(dir: &Path, name: &str) -> PathBuf {
    common::two_disk_bundle(
        dir,
        name,
        &common::noise(12 * MIB, 11),
        &common::noise(MIB, 12),
        "type=gp2",
        &["--boot-mode", "uefi"],
    )
}

/// One account, one bucket, one cache directory (the upload's resume state) for the test.
struct Setup {
    fake: OapiServer,
    s3: s3_server::S3Server,
    home: tempfile::TempDir,
    dir: tempfile::TempDir,
    bundle: PathBuf,
}

impl Setup {
    fn new(fake_args: &[&str]) -> Setup {
        let s3 = s3_server::S3Server::start();
        let fake = OapiServer::start_with(Some(&s3.endpoint), fake_args);
        let dir = tempfile::tempdir().expect("tempdir");
        let bundle = bundle(dir.path(), "publish-cli (v1)");
        Setup {
            fake,
            s3,
            home: tempfile::tempdir().expect("tempdir"),
            dir,
            bundle,
        }
    }

    /// `mkomi publish BUNDLE` with the account's options and `extra`; keys from the
    /// environment as users give them (the API's as OSC_*, the bucket's as AWS_*).
    fn publish(&self, extra: &[&str]) -> Command {
        let mut c = self.mkomi(&["publish", s(&self.bundle)]);
        c.args(["--threads", "1"]).args(extra);
        c
    }

    /// `mkomi ARGS` with the account's options and keys.
    fn mkomi(&self, args: &[&str]) -> Command {
        let mut c = common::mkomi();
        c.args(args)
            .args(["--api-endpoint", &self.fake.api_url])
            .args(["--oos-endpoint", &self.s3.endpoint])
            .args(["--bucket", s3_server::BUCKET, "--prefix", "omis/cli"])
            .args(["--poll", "50ms", "--timeout", "120"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .env("HOME", self.home.path())
            .env("XDG_CACHE_HOME", self.home.path().join("cache"))
            .env("OSC_ACCESS_KEY", ACCESS_KEY)
            .env("OSC_SECRET_KEY", SECRET_KEY)
            .env("OSC_REGION", REGION)
            .env("AWS_ACCESS_KEY_ID", s3_server::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", s3_server::SECRET_KEY)
            .env("AWS_REGION", s3_server::REGION)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn run(&self, extra: &[&str]) -> Output {
        common::run_with_timeout(self.publish(extra), Duration::from_secs(180))
    }

    /// The objects left under the prefix, at any depth.
    fn objects(&self) -> Vec<String> {
        self.s3.objects("omis/cli")
    }

    /// The fake's images and snapshots that are not being deleted.
    fn live(&self) -> (Vec<Value>, Vec<Value>) {
        let st = self.fake.state();
        let pick = |key: &str| -> Vec<Value> {
            st[key]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter(|v| v["State"] != "deleting" && v["State"] != "deleted")
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        };
        (pick("Images"), pick("Snapshots"))
    }

    /// Waits until `cond` holds on the fake's state (or the child ended), then SIGKILLs the
    /// child; true when it was killed while running.
    fn kill_when(&self, child: &mut Child, what: &str, cond: impl Fn(&Value) -> bool) -> bool {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("publish ended ({status}) before {what}");
            }
            if cond(&self.fake.state()) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "never saw {what}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().expect("kill");
        let _ = child.wait();
        true
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn assert_ok(o: &Output, setup: &Setup) {
    assert!(
        o.status.success(),
        "publish failed ({:?}): {}\nfake log:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr),
        setup.fake.log()
    );
}

/// Exactly one image, available, mapping two live snapshots; no other snapshot; no object
/// left under the prefix; the printed ID is the image's.
fn assert_one_clean_image(setup: &Setup, printed: &str) {
    let (images, snapshots) = setup.live();
    assert_eq!(images.len(), 1, "images: {images:#?}");
    let image = &images[0];
    assert_eq!(image["ImageId"], printed);
    assert_eq!(image["State"], "available");
    let mapped: Vec<&Value> = image["BlockDeviceMappings"]
        .as_array()
        .expect("mappings")
        .iter()
        .map(|m| &m["Bsu"]["SnapshotId"])
        .collect();
    assert_eq!(mapped.len(), 2);
    assert_eq!(snapshots.len(), 2, "orphaned snapshots: {snapshots:#?}");
    for s in &snapshots {
        assert!(
            mapped.contains(&&s["SnapshotId"]),
            "{} is not mapped",
            s["SnapshotId"]
        );
    }
    assert_eq!(setup.objects(), Vec::<String>::new(), "objects left");
}

/// The snapshot path end to end through the binary: the ID on stdout, the image's fields and
/// tags, the digests the fake computed equal to the bundle's; `--json` gives the record.
#[test]
fn publish_prints_the_image_and_leaves_nothing_behind() {
    let setup = Setup::new(&[]);
    let out = setup.run(&["--tag", "team=images", "--share", "123456789012"]);
    assert_ok(&out, &setup);
    let id = stdout(&out);
    assert!(id.starts_with("ami-") && !id.contains('\n'), "{id:?}");
    assert_one_clean_image(&setup, &id);
    let (images, snapshots) = setup.live();
    let image = &images[0];
    assert_eq!(image["ImageName"], "publish-cli (v1)");
    assert_eq!(image["BootModes"], serde_json::json!(["uefi"]));
    assert_eq!(
        image["PermissionsToLaunch"]["AccountIds"],
        serde_json::json!(["123456789012"])
    );
    let tags: Vec<(String, String)> = image["Tags"]
        .as_array()
        .expect("tags")
        .iter()
        .map(|t| {
            (
                t["Key"].as_str().unwrap_or_default().to_string(),
                t["Value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(tags.contains(&("team".into(), "images".into())), "{tags:?}");
    assert!(
        tags.iter()
            .any(|(k, v)| k == "mkomi:bundle" && v.starts_with("sha256:"))
    );
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(setup.bundle.join("manifest.json")).expect("manifest"),
    )
    .expect("manifest JSON");
    for d in m["Disks"].as_array().expect("disks") {
        let dev = &d["DeviceName"];
        let mapping = image["BlockDeviceMappings"]
            .as_array()
            .expect("mappings")
            .iter()
            .find(|b| &b["DeviceName"] == dev)
            .expect("mapped");
        let snap = snapshots
            .iter()
            .find(|s| s["SnapshotId"] == mapping["Bsu"]["SnapshotId"])
            .expect("snapshot");
        assert_eq!(snap["_digest"], d["ContentDigest"], "{dev}");
    }

    // Again, with --json: found, nothing new.
    let again = setup.run(&["--json"]);
    assert_ok(&again, &setup);
    let record: Value = serde_json::from_slice(&again.stdout).expect("--json output");
    assert_eq!(record["ImageId"], id.as_str());
    assert_eq!(record["ImageCreated"], false);
    assert_eq!(record["Uploaded"], false);
    assert_eq!(setup.fake.requests_of("CreateImage").len(), 1);
    assert_eq!(setup.fake.requests_of("CreateSnapshot").len(), 2);
    assert_one_clean_image(&setup, &id);
}

/// `--via manifest`: CreateImage{FileLocation} with the export manifest's URL; the fake
/// fetches it and every disk it lists. A warning says the boot modes cannot be set.
#[test]
fn publish_via_manifest() {
    let setup = Setup::new(&[]);
    let out = setup.run(&["--via", "manifest"]);
    assert_ok(&out, &setup);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot set BootModes"), "{err}");
    let id = stdout(&out);
    assert_one_clean_image(&setup, &id);
    let create = setup.fake.requests_of("CreateImage");
    assert_eq!(create, vec![200]);
    let again = setup.run(&["--via", "manifest"]);
    assert_ok(&again, &setup);
    assert_eq!(stdout(&again), id);
    assert_eq!(setup.fake.requests_of("CreateImage").len(), 1);
}

/// `--dry-run`: the calls a first run would make, every body valid against the API
/// description (the fake's `--validate`), no secret in them, and no request sent.
#[test]
fn dry_run_is_valid_and_sends_nothing() {
    let setup = Setup::new(&[]);
    for via in ["snapshots", "manifest"] {
        let out = setup.run(&[
            "--dry-run",
            "--via",
            via,
            "--share",
            "123456789012",
            "--global",
        ]);
        assert_ok(&out, &setup);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(!text.contains(SECRET_KEY) && !text.contains(s3_server::SECRET_KEY));
        let calls: Value = serde_json::from_str(&text).expect("JSON");
        let ops: Vec<&str> = calls
            .as_array()
            .expect("array")
            .iter()
            .map(|c| c["Operation"].as_str().expect("Operation"))
            .collect();
        for op in ["CreateImage", "UpdateImage", "CreateTags"] {
            assert!(ops.contains(&op), "{via}: {ops:?}");
        }
        assert_eq!(
            ops.contains(&"CreateSnapshot"),
            via == "snapshots",
            "{ops:?}"
        );
        let file = setup.dir.path().join(format!("{via}.json"));
        std::fs::write(&file, &text).expect("write");
        let check = Command::new("python3")
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oapi/fake_api.py"))
            .arg("--validate")
            .arg(&file)
            .output()
            .expect("python3");
        assert!(
            check.status.success(),
            "{via}: {}",
            String::from_utf8_lossy(&check.stdout)
        );
    }
    assert_eq!(setup.fake.state()["Requests"], serde_json::json!([]));
    assert_eq!(setup.objects(), Vec::<String>::new());
}

/// A publish SIGKILLed while uploading, then run again: the upload resumes, and the end is
/// one image with its two snapshots and nothing else.
#[test]
fn killed_during_upload_then_rerun() {
    let setup = Setup::new(&[]);
    let mut child = setup
        .publish(&["--part-size", "5"])
        .spawn()
        .expect("spawn publish");
    // The upload's state files appear when its first multipart upload starts.
    let uploads = setup.home.path().join("cache/mkomi/uploads");
    let start = Instant::now();
    loop {
        let started = std::fs::read_dir(&uploads)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .any(|e| e.file_name().to_string_lossy().ends_with(".json"))
            })
            .unwrap_or(false);
        if started {
            break;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "publish ended before its upload was seen"
        );
        assert!(start.elapsed() < Duration::from_secs(60), "no upload seen");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("kill");
    let _ = child.wait();
    assert_eq!(setup.fake.requests_of("CreateSnapshot").len(), 0);
    let out = setup.run(&[]);
    assert_ok(&out, &setup);
    assert_one_clean_image(&setup, &stdout(&out));
}

/// Killed after the upload, before any snapshot (a CreateSnapshot that hangs keeps it there),
/// then run again: the package complete in the bucket is used as it is, not sent again.
#[test]
fn killed_after_the_upload_then_rerun_uploads_nothing() {
    let setup = Setup::new(&[]);
    setup.fake.fault(serde_json::json!({"faults": [
        {"op": "CreateSnapshot", "nth": 1, "kind": "hang", "seconds": 10}
    ]}));
    let mut child = setup.publish(&[]).spawn().expect("spawn publish");
    setup.kill_when(&mut child, "CreateSnapshot", |st| {
        st["FaultLog"]
            .as_array()
            .is_some_and(|l| l.iter().any(|f| f["op"] == "CreateSnapshot"))
    });
    assert!(
        setup.objects().iter().any(|o| o.ends_with("SHA256SUMS")),
        "{:?}",
        setup.objects()
    );
    let out = setup.run(&["--json"]);
    assert_ok(&out, &setup);
    let record: Value = serde_json::from_slice(&out.stdout).expect("--json output");
    assert_eq!(record["Uploaded"], false, "sent again");
    assert_eq!(record["ImageCreated"], true);
    assert_one_clean_image(&setup, record["ImageId"].as_str().expect("id"));
}

/// Killed while waiting for the snapshots (a poll that hangs keeps it there), then run again:
/// the snapshots are found by their tokens, not made again.
#[test]
fn killed_during_snapshot_wait_then_rerun() {
    let setup = Setup::new(&[]);
    // ReadSnapshots: one lookup per disk, then the first poll of the wait, which hangs.
    setup.fake.fault(serde_json::json!({"faults": [
        {"op": "ReadSnapshots", "nth": 3, "kind": "hang", "seconds": 10}
    ]}));
    let mut child = setup.publish(&[]).spawn().expect("spawn publish");
    setup.kill_when(&mut child, "the snapshot wait", |st| {
        st["FaultLog"]
            .as_array()
            .is_some_and(|l| l.iter().any(|f| f["op"] == "ReadSnapshots"))
    });
    assert_eq!(setup.fake.requests_of("CreateSnapshot").len(), 2);
    let out = setup.run(&[]);
    assert_ok(&out, &setup);
    assert_eq!(
        setup.fake.requests_of("CreateSnapshot").len(),
        2,
        "made again"
    );
    assert_one_clean_image(&setup, &stdout(&out));
}

/// Killed while waiting for the image, then run again: the image is found through its root
/// snapshot (it has no tags yet), never created a second time.
#[test]
fn killed_during_image_wait_then_rerun() {
    let setup = Setup::new(&[]);
    // ReadImages: the lookup by name and bundle tag, the lookup by root snapshot, then the
    // first poll of the wait, which hangs.
    setup.fake.fault(serde_json::json!({"faults": [
        {"op": "ReadImages", "nth": 3, "kind": "hang", "seconds": 10}
    ]}));
    let mut child = setup.publish(&[]).spawn().expect("spawn publish");
    setup.kill_when(&mut child, "the image wait", |st| {
        st["FaultLog"]
            .as_array()
            .is_some_and(|l| l.iter().any(|f| f["op"] == "ReadImages"))
    });
    assert_eq!(setup.fake.requests_of("CreateImage").len(), 1);
    let out = setup.run(&[]);
    assert_ok(&out, &setup);
    assert_eq!(setup.fake.requests_of("CreateImage").len(), 1, "made again");
    assert_one_clean_image(&setup, &stdout(&out));
}

/// Ctrl-C (SIGINT) while the snapshots are imported: exit 130, and the snapshots and objects
/// this run made are removed; with --keep-failed they stay.
#[test]
fn ctrl_c_removes_what_the_run_created() {
    for keep in [false, true] {
        let setup = Setup::new(&[]);
        setup.fake.fault(serde_json::json!({"faults": [
            {"op": "ReadSnapshots", "nth": 3, "kind": "hang", "seconds": 3}
        ]}));
        let extra: &[&str] = if keep { &["--keep-failed"] } else { &[] };
        let mut child = setup.publish(extra).spawn().expect("spawn publish");
        let start = Instant::now();
        while setup.fake.state()["FaultLog"]
            .as_array()
            .is_none_or(Vec::is_empty)
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no snapshot wait"
            );
            assert!(child.try_wait().expect("wait").is_none(), "ended early");
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-INT", &pid])
                .status()
                .expect("kill")
                .success()
        );
        let out = child.wait_with_output().expect("wait");
        assert_eq!(
            out.status.code(),
            Some(130),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (images, snapshots) = setup.live();
        assert!(images.is_empty(), "{images:#?}");
        if keep {
            assert_eq!(snapshots.len(), 2);
            assert!(!setup.objects().is_empty());
        } else {
            assert!(snapshots.is_empty(), "{snapshots:#?}");
            assert_eq!(setup.objects(), Vec::<String>::new());
        }
    }
}

/// A wrong secret: one signed request, refused (401), not retried; the message names the
/// operation and the request ID, never a key; nothing uploaded.
#[test]
fn a_bad_secret_fails_once_and_says_so() {
    let setup = Setup::new(&[]);
    let out = common::run_with_timeout(
        {
            let mut c = setup.publish(&[]);
            c.env("OSC_SECRET_KEY", "wrong-secret-key-123");
            c
        },
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("ReadImages") && err.contains("401"), "{err}");
    assert!(
        !err.contains("wrong-secret-key-123") && !err.contains(ACCESS_KEY),
        "{err}"
    );
    assert_eq!(
        setup.fake.state()["Requests"],
        serde_json::json!([["ReadImages", 401]])
    );
    assert_eq!(setup.objects(), Vec::<String>::new());
}

/// The round trip through the binary: publish, then `mkomi pull` of the image into a new
/// bundle, which `mkomi verify` passes and whose disks are the published ones (same
/// ContentDigest and size, device by device); then a pull of one snapshot.
#[test]
fn pull_brings_the_published_image_back() {
    let setup = Setup::new(&[]);
    let out = setup.run(&[]);
    assert_ok(&out, &setup);
    let id = stdout(&out);
    let back = setup.dir.path().join("back");
    let pulled = common::run_with_timeout(
        setup.mkomi(&["pull", &id, "-o", s(&back)]),
        Duration::from_secs(180),
    );
    assert_ok(&pulled, &setup);
    common::ok(&["verify", s(&back)]);
    let read = |dir: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).expect("read"))
            .expect("manifest JSON")
    };
    let (a, b) = (read(&setup.bundle), read(&back));
    let disks = |m: &Value| -> Vec<(String, String, u64)> {
        let mut v: Vec<_> = m["Disks"]
            .as_array()
            .expect("Disks")
            .iter()
            .map(|d| {
                (
                    d["DeviceName"].as_str().expect("device").to_string(),
                    d["ContentDigest"].as_str().expect("digest").to_string(),
                    d["VirtualSize"].as_u64().expect("size"),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(disks(&a), disks(&b));
    assert_eq!(a["Image"]["Architecture"], b["Image"]["Architecture"]);

    // One snapshot, as a one-disk bundle.
    let (images, _) = setup.live();
    let snap = images[0]["BlockDeviceMappings"]
        .as_array()
        .expect("mappings")
        .iter()
        .find(|m| m["DeviceName"] == "/dev/sdb")
        .map(|m| m["Bsu"]["SnapshotId"].as_str().expect("id").to_string())
        .expect("sdb");
    let one = setup.dir.path().join("one");
    let pulled = common::run_with_timeout(
        setup.mkomi(&["pull", &snap, "-o", s(&one), "--json"]),
        Duration::from_secs(180),
    );
    assert_ok(&pulled, &setup);
    common::ok(&["verify", s(&one)]);
    let sdb = disks(&a)
        .into_iter()
        .find(|d| d.0 == "/dev/sdb")
        .expect("sdb");
    let got = disks(&read(&one));
    assert_eq!(got.len(), 1);
    assert_eq!((&got[0].1, got[0].2), (&sdb.1, sdb.2));
}
