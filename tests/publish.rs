//! `mkomi::publish::run::publish` (`publish --via snapshots`) against the fake Outscale API
//! (`tests/oapi/fake_api.py`), which downloads each pre-signed object from the tests' S3 server
//! (s3s-fs), converts it with `qemu-img` and computes its own content digest: the image it ends
//! with is compared with the bundle's manifest, and a second publish must create nothing.

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::oapi_server::{ACCESS_KEY, OapiServer, REGION, SECRET_KEY};
use mkomi::export::s3::{Config, Credentials as S3Credentials, Location};
use mkomi::progress::Progress;
use mkomi::publish::client::{Backoff, Client, Endpoint, Error as ClientError};
use mkomi::publish::credentials::Credentials;
use mkomi::publish::run::{
    Error as RunError, PublishRequest, Published, TAG_DIGEST, TOKEN_SLOTS, publish, snapshot_size,
    snapshot_token,
};
use serde_json::Value;

const MIB: usize = 1 << 20;

/// A qcow2 bundle of two disks: a root of 6 MiB + 512 bytes of noise (an odd size, so the
/// virtual size is not a whole MiB) and a 3 MiB io1 data volume on /dev/sdb.
fn bundle(dir: &Path) -> PathBuf {
    bundle_seeded(dir, 3)
}

/// [`bundle`] with other noise: seeds `seed` and `seed + 1`, in `dir/omi`.
fn bundle_seeded(dir: &Path, seed: u64) -> PathBuf {
    common::two_disk_bundle(
        dir,
        "publish-test (v1)",
        &common::noise(6 * MIB + 512, seed),
        &common::noise(3 * MIB, seed + 1),
        "size=2,type=io1,iops=300,delete-on-vm-deletion=false",
        // Not the fake's default (legacy), so that the image's value proves it was sent.
        &["--boot-mode", "uefi"],
    )
}

/// A client of the fake with quick retries.
fn api(fake: &OapiServer) -> Client {
    fake.client()
}

/// The request: the bundle to `s3://BUCKET/omis/PREFIX` of the S3 server, quick polls, the
/// upload's resume state and locks beside the bundle (in the test's temporary directory, not
/// the user's cache). Each test has its own prefix: an export aborts the uploads left open
/// under its prefix, so that tests running together must not share one.
fn request(bundle: &Path, s3: &s3_server::S3Server, prefix: &str) -> PublishRequest {
    let config = Config {
        endpoint: Some(s3.endpoint.clone()),
        region: s3_server::REGION.to_string(),
        credentials: S3Credentials::new(s3_server::ACCESS_KEY, s3_server::SECRET_KEY, None),
        allow_http: true,
        checksums: true,
    };
    let location =
        Location::parse(&format!("s3://{}/omis/{prefix}", s3_server::BUCKET)).expect("location");
    let mut req = PublishRequest::new(bundle.to_path_buf(), location, config);
    req.state_dir = bundle.parent().map(|p| p.join("upload-state"));
    req.timeout = Duration::from_secs(120);
    req.poll_first = Duration::from_millis(20);
    req.poll_max = Duration::from_millis(200);
    req.threads = 1;
    // Two 5 MiB parts for the root disk: the multipart, resumable upload path.
    req.part_size = 5 * MIB;
    req.tags = vec![("team".to_string(), "images".to_string())];
    req
}

fn manifest(bundle: &Path) -> Value {
    let text = std::fs::read_to_string(bundle.join("manifest.json")).expect("manifest");
    serde_json::from_str(&text).expect("manifest JSON")
}

/// The objects under the bucket's `omis/PREFIX`, as files of the S3 server's root: their keys
/// below the prefix (`sda1.qcow2.gz`, or `SUB/sda1.qcow2.gz` if publish adds a level), sorted.
/// Directories are not objects: s3s-fs may leave empty ones after a deletion.
fn objects(s3: &s3_server::S3Server, prefix: &str) -> Vec<String> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let key = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), &key, out);
            } else {
                out.push(key);
            }
        }
    }
    let mut names = Vec::new();
    walk(
        &s3.root.join(s3_server::BUCKET).join("omis").join(prefix),
        "",
        &mut names,
    );
    names.sort();
    names
}

fn run(req: &PublishRequest, api: &Client, fake: &OapiServer) -> Published {
    publish(req, api, &Progress::quiet(), None)
        .unwrap_or_else(|e| panic!("publish: {e}\nfake log:\n{}", fake.log()))
}

/// A two-disk bundle published through snapshots: exactly one image, whose Architecture,
/// BootModes, RootDeviceName and mappings (device, VolumeSize, VolumeType, Iops,
/// DeleteOnVmDeletion) are the manifest's; each mapping's snapshot holds the disk the fake
/// downloaded, with the bundle's ContentDigest; tags are set; the objects are gone. A second
/// publish uploads nothing and creates nothing: the same image and snapshots.
#[test]
fn publish_two_disks_then_again_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = bundle(dir.path());
    let m = manifest(&b);
    let s3 = s3_server::S3Server::start();
    let fake = OapiServer::start(Some(&s3.endpoint));
    let api = api(&fake);
    let req = request(&b, &s3, "two-disks");

    let first = run(&req, &api, &fake);
    assert!(first.image_created && first.uploaded);
    assert!(first.image_id.starts_with("ami-"), "{}", first.image_id);
    assert_eq!(first.snapshots.len(), 2);
    assert!(first.snapshots.iter().all(|s| s.created));
    assert_eq!(
        objects(&s3, &req.location.key.replace("omis/", "")),
        Vec::<String>::new(),
        "objects left behind"
    );
    assert_eq!(
        first.objects_deleted.len(),
        5,
        "{:?}",
        first.objects_deleted
    );

    let state = fake.state();
    let images = state["Images"].as_array().expect("Images");
    assert_eq!(images.len(), 1, "{images:?}");
    let image = &images[0];
    let want = &m["Image"];
    assert_eq!(image["ImageId"], first.image_id.as_str());
    assert_eq!(image["ImageName"], want["ImageName"]);
    assert_eq!(image["Architecture"], want["Architecture"]);
    assert_eq!(want["BootModes"], serde_json::json!(["uefi"]));
    assert_eq!(image["BootModes"], want["BootModes"]);
    assert_eq!(image["RootDeviceName"], want["RootDeviceName"]);
    assert_eq!(image["State"], "available");
    let got_maps = image["BlockDeviceMappings"].as_array().expect("mappings");
    let want_maps = want["BlockDeviceMappings"].as_array().expect("mappings");
    assert_eq!(got_maps.len(), want_maps.len());
    let snapshots = state["Snapshots"].as_array().expect("Snapshots");
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    for w in want_maps {
        let g = got_maps
            .iter()
            .find(|g| g["DeviceName"] == w["DeviceName"])
            .unwrap_or_else(|| panic!("no mapping {}", w["DeviceName"]));
        for field in ["VolumeSize", "VolumeType", "DeleteOnVmDeletion"] {
            assert_eq!(
                g["Bsu"][field], w["Bsu"][field],
                "{field} of {}",
                w["DeviceName"]
            );
        }
        if !w["Bsu"]["Iops"].is_null() {
            assert_eq!(g["Bsu"]["Iops"], w["Bsu"]["Iops"]);
        }
        let snap_id = &g["Bsu"]["SnapshotId"];
        let snap = snapshots
            .iter()
            .find(|s| &s["SnapshotId"] == snap_id)
            .expect("the mapped snapshot exists");
        let disk = m["Disks"]
            .as_array()
            .expect("Disks")
            .iter()
            .find(|d| d["DeviceName"] == w["DeviceName"])
            .expect("the mapping's disk");
        assert_eq!(snap["State"], "completed");
        assert_eq!(
            snap["_digest"], disk["ContentDigest"],
            "{}",
            w["DeviceName"]
        );
        let tags = snap["Tags"].as_array().expect("snapshot tags");
        assert!(
            tags.iter()
                .any(|t| t["Key"] == TAG_DIGEST && t["Value"] == disk["ContentDigest"]),
            "{tags:?}"
        );
    }
    let tags = image["Tags"].as_array().expect("image tags");
    for key in [TAG_DIGEST, "mkomi:version", "team"] {
        assert!(
            tags.iter().any(|t| t["Key"] == key),
            "{key} missing: {tags:?}"
        );
    }

    // Again: found by token and by snapshot, nothing uploaded, nothing created.
    let calls_before = state["Calls"].clone();
    assert_eq!(calls_before["CreateSnapshot"], 2, "{calls_before}");
    assert_eq!(calls_before["CreateImage"], 1, "{calls_before}");
    let second = run(&req, &api, &fake);
    assert_eq!(second.image_id, first.image_id);
    assert!(!second.image_created && !second.uploaded);
    assert!(second.snapshots.iter().all(|s| !s.created));
    let ids = |p: &Published| -> Vec<String> {
        p.snapshots.iter().map(|s| s.snapshot_id.clone()).collect()
    };
    assert_eq!(ids(&second), ids(&first));
    let after = fake.state();
    assert_eq!(after["Images"].as_array().map(Vec::len), Some(1));
    assert_eq!(after["Snapshots"].as_array().map(Vec::len), Some(2));
    for op in ["CreateSnapshot", "CreateImage"] {
        assert_eq!(after["Calls"][op], calls_before[op], "{op} called again");
    }
    assert_eq!(
        objects(&s3, &req.location.key.replace("omis/", "")),
        Vec::<String>::new()
    );
}

/// A lost `CreateImage` answer (the fake commits, then drops the connection): publish looks
/// the image up instead of creating a second one, and ends with exactly one image.
#[test]
fn a_lost_create_image_answer_ends_with_one_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = bundle(dir.path());
    let s3 = s3_server::S3Server::start();
    let fake = OapiServer::start(Some(&s3.endpoint));
    let api = api(&fake);
    fake.fault(serde_json::json!({
        "faults": [{"op": "CreateImage", "kind": "drop-after-commit", "nth": 1, "count": 1}]
    }));
    let published = run(&request(&b, &s3, "lost-answer"), &api, &fake);
    assert!(published.image_created);
    let state = fake.state();
    assert_eq!(state["Images"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        fake.requests_of("CreateImage"),
        vec![0],
        "sent once, answer dropped"
    );
    assert_eq!(state["Images"][0]["ImageId"], published.image_id.as_str());
}

/// `CreateImage` answered 500 (not committed by the fake): the outcome is unknown and no image
/// is found, so publish fails without sending it again and keeps the completed snapshots (an
/// image could still appear that maps them); the objects are removed. The next run finds the
/// snapshots by token, uploads nothing, and creates the one image.
#[test]
fn an_unknown_create_image_outcome_fails_then_the_next_run_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = bundle(dir.path());
    let s3 = s3_server::S3Server::start();
    let fake = OapiServer::start(Some(&s3.endpoint));
    let api = api(&fake);
    let req = request(&b, &s3, "unknown-outcome");
    fake.fault(serde_json::json!({
        "faults": [{"op": "CreateImage", "kind": "500", "nth": 1, "count": 1}]
    }));
    let err = publish(&req, &api, &Progress::quiet(), None).expect_err("CreateImage fails");
    assert!(
        matches!(err, mkomi::publish::run::Error::ImageOutcomeUnknown(_)),
        "{err}"
    );
    assert_eq!(
        fake.requests_of("CreateImage"),
        vec![500],
        "never resent blindly"
    );
    let state = fake.state();
    assert_eq!(state["Images"].as_array().map(Vec::len), Some(0));
    assert_eq!(state["Snapshots"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        objects(&s3, &req.location.key.replace("omis/", "")),
        Vec::<String>::new(),
        "objects left behind"
    );

    let published = run(&req, &api, &fake);
    assert!(!published.uploaded && published.image_created);
    assert!(published.snapshots.iter().all(|s| !s.created));
    let state = fake.state();
    assert_eq!(state["Images"].as_array().map(Vec::len), Some(1));
    assert_eq!(state["Snapshots"].as_array().map(Vec::len), Some(2));
    assert_eq!(state["Calls"]["CreateSnapshot"], 2);
}

/// A leaked cancel flag: `publish` takes a `&'static AtomicBool` (a Ctrl-C handler's).
fn cancel_flag() -> &'static AtomicBool {
    Box::leak(Box::new(AtomicBool::new(false)))
}

/// The objects of `req`'s prefix.
fn objects_of(s3: &s3_server::S3Server, req: &PublishRequest) -> Vec<String> {
    objects(s3, &req.location.key.replace("omis/", ""))
}

/// The snapshots of the fake that are not being deleted.
fn live_snapshots(fake: &OapiServer) -> Vec<Value> {
    fake.snapshots()
        .into_iter()
        .filter(|s| s["State"] != "deleting")
        .collect()
}

/// The `ClientToken` slots 0.. of `device`'s snapshot for `req`, as `publish` derives them.
fn token_slots(
    req: &PublishRequest,
    api: &Client,
    bundle: &Path,
    device: &str,
    object: &str,
) -> Vec<String> {
    let m = manifest(bundle);
    let disk = m["Disks"]
        .as_array()
        .expect("Disks")
        .iter()
        .find(|d| d["DeviceName"] == device)
        .expect("the disk")
        .clone();
    let size = snapshot_size(disk["VirtualSize"].as_u64().expect("VirtualSize"));
    let endpoint = api.endpoint();
    (0..TOKEN_SLOTS)
        .map(|n| {
            snapshot_token(
                disk["ContentDigest"].as_str().expect("ContentDigest"),
                device,
                &endpoint.region,
                &endpoint.api_url,
                &format!("{}/{}", req.location.bucket, req.location.join(object)),
                size,
                n,
            )
        })
        .collect()
}

/// A snapshot whose import ends in `error` (the fake's `import-error` fault on the second
/// `CreateSnapshot`, the data disk's):
/// 1. publish fails with `SnapshotFailed` naming `/dev/sdb` and the snapshot; both snapshots
///    this run created are deleted, the uploaded objects too, no image is made;
/// 2. the same with `keep_failed`: the snapshots (the failed one in `error`) and the five
///    objects stay;
/// 3. a run without the fault succeeds: it reuses the root disk's live snapshot, deletes the
///    failed one, and imports the data disk under the next token slot (1), as the failed one
///    keeps slot 0 on an API that remembers tokens.
#[test]
fn snapshot_error_cleans_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = bundle(dir.path());
    let s3 = s3_server::S3Server::start();
    let fake = OapiServer::start(Some(&s3.endpoint));
    let api = api(&fake);
    let mut req = request(&b, &s3, "snapshot-error");
    let import_error =
        serde_json::json!({"faults": [{"op": "CreateSnapshot", "kind": "import-error", "nth": 2}]});

    // 1. Cleaned up.
    fake.fault(import_error.clone());
    let err = publish(&req, &api, &Progress::quiet(), None).expect_err("the import fails");
    let RunError::SnapshotFailed {
        device,
        snapshot,
        state,
        ..
    } = &err
    else {
        panic!("not SnapshotFailed: {err}\n{}", fake.log());
    };
    assert_eq!((device.as_str(), state.as_str()), ("/dev/sdb", "error"));
    assert!(snapshot.starts_with("snap-"), "{snapshot}");
    let text = err.to_string();
    assert!(
        text.contains("/dev/sdb") && text.contains(snapshot.as_str()),
        "{text}"
    );
    assert_eq!(live_snapshots(&fake), Vec::<Value>::new(), "snapshots left");
    assert_eq!(fake.requests_of("DeleteSnapshot"), vec![200, 200]);
    assert_eq!(fake.images(), Vec::<Value>::new());
    assert_eq!(fake.requests_of("CreateImage"), Vec::<i64>::new());
    assert_eq!(objects_of(&s3, &req), Vec::<String>::new(), "objects left");

    // 2. Kept.
    req.keep_failed = true;
    fake.fault(import_error);
    let err = publish(&req, &api, &Progress::quiet(), None).expect_err("the import fails");
    assert!(
        matches!(&err, RunError::SnapshotFailed { device, .. } if device == "/dev/sdb"),
        "{err}"
    );
    let kept = fake.snapshots();
    assert_eq!(kept.len(), 2, "{kept:?}");
    let failed = kept
        .iter()
        .find(|s| s["State"] == "error")
        .unwrap_or_else(|| panic!("no snapshot in error: {kept:?}"));
    assert!(
        failed["_reason"]
            .as_str()
            .is_some_and(|r| r.contains("injected")),
        "{failed}"
    );
    let root_snapshot = kept
        .iter()
        .find(|s| s["State"] != "error")
        .expect("the root disk's snapshot")["SnapshotId"]
        .clone();
    let left = objects_of(&s3, &req);
    assert_eq!(left.len(), 5, "{left:?}");
    let sdb_object = left
        .iter()
        .find(|o| o.contains("sdb"))
        .unwrap_or_else(|| panic!("no object of /dev/sdb: {left:?}"))
        .clone();
    let slots = token_slots(&req, &api, &b, "/dev/sdb", &sdb_object);
    assert_eq!(
        failed["ClientToken"],
        slots[0].as_str(),
        "the failed one holds slot 0"
    );
    assert_eq!(fake.images(), Vec::<Value>::new());

    // 3. Resumed, on the next slot.
    req.keep_failed = false;
    let published = run(&req, &api, &fake);
    // The package kept by keep_failed is complete in its place: used as it is, not sent again.
    assert!(published.image_created && !published.uploaded);
    let by_device = |d: &str| {
        published
            .snapshots
            .iter()
            .find(|s| s.device_name == d)
            .unwrap_or_else(|| panic!("no snapshot of {d}"))
            .clone()
    };
    let root = by_device("/dev/sda1");
    assert!(!root.created, "the root disk's snapshot is reused");
    assert_eq!(root_snapshot, root.snapshot_id.as_str());
    let data = by_device("/dev/sdb");
    assert!(data.created);
    assert_eq!(data.client_token, slots[1], "the next token slot");
    let snaps = fake.snapshots();
    assert_eq!(snaps.len(), 2, "the failed one is deleted: {snaps:?}");
    assert!(snaps.iter().all(|s| s["State"] == "completed"), "{snaps:?}");
    assert!(
        !snaps
            .iter()
            .any(|s| s["SnapshotId"] == failed["SnapshotId"])
    );
    assert_eq!(fake.images().len(), 1);
    assert_eq!(objects_of(&s3, &req), Vec::<String>::new(), "objects left");
}

/// Throttling and transient answers on the operations `publish` retries: 429 and 503 on
/// `ReadSnapshots`, a 503 on `CreateSnapshot` and a lost answer after its commit (the resend
/// carries the same `ClientToken`, so it answers the same snapshot), a 500 on `ReadImages`,
/// 429 then 503 on `CreateTags`, 429 on `UpdateImage`. Publish succeeds with exactly two
/// snapshots and one image; `Published.api` counts every retry (8) and every throttling answer
/// (429 and 503: 6), and agrees with what the fake saw.
#[test]
fn throttling_is_retried_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = bundle(dir.path());
    let s3 = s3_server::S3Server::start();
    let fake = OapiServer::start(Some(&s3.endpoint));
    let api = api(&fake);
    let mut req = request(&b, &s3, "throttling");
    req.share = vec!["111122223333".to_string()];
    fake.fault(serde_json::json!({"faults": [
        {"op": "ReadSnapshots", "kind": "429", "nth": 1},
        {"op": "ReadSnapshots", "kind": "503", "nth": 3},
        {"op": "CreateSnapshot", "kind": "503", "nth": 1},
        {"op": "CreateSnapshot", "kind": "drop-after-commit", "nth": 3},
        {"op": "ReadImages", "kind": "500", "nth": 1},
        {"op": "CreateTags", "kind": "429", "nth": 1},
        {"op": "CreateTags", "kind": "503", "nth": 2},
        {"op": "UpdateImage", "kind": "429", "nth": 1},
    ]}));
    let published = run(&req, &api, &fake);
    let state = fake.state();
    let log = state["FaultLog"].as_array().expect("FaultLog");
    assert_eq!(log.len(), 8, "every fault was hit: {log:?}");
    assert_eq!(fake.requests_of("CreateSnapshot"), vec![503, 200, 0, 200]);
    assert_eq!(state["Snapshots"].as_array().map(Vec::len), Some(2));
    assert!(
        published.snapshots.iter().all(|s| s.created),
        "{:?}",
        published.snapshots
    );
    assert_eq!(fake.requests_of("CreateImage"), vec![200]);
    assert_eq!(state["Images"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        state["Images"][0]["PermissionsToLaunch"]["AccountIds"],
        serde_json::json!(["111122223333"])
    );

    let requests = state["Requests"].as_array().expect("Requests");
    let failed = requests.iter().filter(|r| r[1] != 200).count() as u64;
    let t = &published.api;
    assert_eq!((t.retries, t.throttled), (8, 6), "{t:?}");
    assert_eq!(
        t.retries, failed,
        "one retry per failed answer: {requests:?}"
    );
    assert_eq!(t.attempts, requests.len() as u64);
    assert_eq!(t.calls + t.retries, t.attempts);
    assert_eq!(objects_of(&s3, &req), Vec::<String>::new());
}

/// A 429 (`RequestLimitExceeded`) on `CreateImage`: the API refused it before doing anything
/// (throttling is decided before an operation runs), so sending it again cannot make a second
/// image. Publish must wait and send it again, and end with one image, rather than fail and
/// delete the snapshots it has just imported.
#[test]
fn a_throttled_create_image_is_sent_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = bundle(dir.path());
    let s3 = s3_server::S3Server::start();
    let fake = OapiServer::start(Some(&s3.endpoint));
    let api = api(&fake);
    let req = request(&b, &s3, "throttled-create-image");
    fake.fault(serde_json::json!({"faults": [{"op": "CreateImage", "kind": "429", "nth": 1}]}));
    let published = run(&req, &api, &fake);
    assert!(published.image_created);
    assert_eq!(fake.requests_of("CreateImage"), vec![429, 200]);
    assert_eq!(fake.images().len(), 1);
    assert_eq!(fake.snapshots().len(), 2);
    assert_eq!(published.api.throttled, 1);
}

/// A 503 on `CreateImage` (the fake answers it before committing, but a client cannot know
/// that: a gateway's 503 may come after the operation ran). Decided behaviour: it is never
/// resent blindly; publish looks the image up by its root snapshot, finds none, and fails with
/// `ImageOutcomeUnknown`, keeping the completed snapshots (an image that appears later would
/// map them) and removing the objects. The next run finds the snapshots by token and makes the
/// one image: exactly one in the end, and CreateImage committed once.
#[test]
fn a_503_on_create_image_is_looked_up_then_resumed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = bundle(dir.path());
    let s3 = s3_server::S3Server::start();
    let fake = OapiServer::start(Some(&s3.endpoint));
    let api = api(&fake);
    let req = request(&b, &s3, "create-image-503");
    fake.fault(serde_json::json!({"faults": [{"op": "CreateImage", "kind": "503", "nth": 1}]}));
    let err = publish(&req, &api, &Progress::quiet(), None).expect_err("outcome unknown");
    assert!(matches!(err, RunError::ImageOutcomeUnknown(_)), "{err}");
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(fake.requests_of("CreateImage"), vec![503], "sent once");
    // Looked up after the 503: by name and bundle tag first, then by root snapshot before
    // CreateImage, and once after.
    assert_eq!(fake.requests_of("ReadImages"), vec![200, 200, 200]);
    assert_eq!(fake.images(), Vec::<Value>::new());
    assert_eq!(fake.snapshots().len(), 2, "kept for the next run");
    assert_eq!(objects_of(&s3, &req), Vec::<String>::new());

    let published = run(&req, &api, &fake);
    assert!(published.image_created && !published.uploaded);
    assert_eq!(fake.requests_of("CreateImage"), vec![503, 200]);
    assert_eq!(fake.images().len(), 1);
    assert_eq!(fake.snapshots().len(), 2);
}

/// A client with a wrong secret: the first request (the snapshot lookup) is refused with 401,
/// and publish fails at once with an `Api` error whose message names the operation, the
/// status, the API's type and code and the request ID, and never the secret. The fake saw one
/// signed request: a 401 is not retried (four in a row would lock the key out). Nothing is
/// uploaded.
#[test]
fn bad_secret_fails_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = bundle(dir.path());
    let s3 = s3_server::S3Server::start();
    let fake = OapiServer::start(Some(&s3.endpoint));
    let wrong = "wrong/secret+0123456789";
    let endpoint = Endpoint::new(&fake.api_url, REGION).expect("endpoint");
    let api = Client::new(endpoint, Credentials::new(ACCESS_KEY, wrong))
        .expect("client")
        .with_backoff(Backoff {
            first: Duration::from_millis(10),
            max: Duration::from_millis(100),
            attempts: 4,
        });
    let req = request(&b, &s3, "bad-secret");
    let err = publish(&req, &api, &Progress::quiet(), None).expect_err("refused");
    let RunError::Api(api_err) = &err else {
        panic!("not an API error: {err}");
    };
    let ClientError::Api {
        op,
        status,
        code,
        type_,
        request_id,
        ..
    } = api_err.as_ref()
    else {
        panic!("not an API answer: {api_err:?}");
    };
    // The first call: the lookup of the image by name and bundle tag.
    assert_eq!((op.as_str(), *status), ("ReadImages", 401));
    let (code, type_) = (
        code.as_deref().expect("code"),
        type_.as_deref().expect("type"),
    );
    let request_id = request_id.as_deref().expect("request ID");
    assert_eq!(request_id.len(), 36, "the fake's UUID: {request_id}");
    let text = err.to_string();
    for want in ["ReadImages", "401", type_, code, request_id] {
        assert!(text.contains(want), "{want:?} not in {text:?}");
    }
    let debug = format!("{err:?}");
    for secret in [wrong, SECRET_KEY] {
        assert!(!text.contains(secret) && !debug.contains(secret), "{text}");
    }
    let state = fake.state();
    assert_eq!(
        state["Requests"],
        serde_json::json!([["ReadImages", 401]]),
        "one request, not retried"
    );
    assert_eq!(state["AuthFailures"][ACCESS_KEY], 1, "no lock-out");
    assert_eq!(api.totals().attempts, 1);
    assert_eq!(
        objects_of(&s3, &req),
        Vec::<String>::new(),
        "nothing uploaded"
    );
    assert!(
        !s3.root.join(s3_server::BUCKET).join("omis").exists(),
        "nothing uploaded under omis/"
    );
}

/// The cancel flag (a Ctrl-C handler's) set while the snapshots import (the fake moves their
/// progress by 1% per poll, so the wait is long): publish stops with `Interrupted`, deletes
/// the two snapshots it created and the uploaded objects, and never calls CreateImage.
#[test]
fn interrupted_via_cancel_flag_cleans_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = bundle(dir.path());
    let s3 = s3_server::S3Server::start();
    let fake = OapiServer::start_with(Some(&s3.endpoint), &["--progress-step", "1"]);
    let api = api(&fake);
    let req = request(&b, &s3, "interrupted");
    let cancel = cancel_flag();
    let result = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) {
                if fake.snapshots().len() == 2 {
                    cancel.store(true, Ordering::Relaxed);
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Publish must not run forever if the snapshots never show.
            cancel.store(true, Ordering::Relaxed);
            false
        });
        let result = publish(&req, &api, &Progress::quiet(), Some(cancel));
        (result, watcher.join().expect("watcher"))
    });
    let (result, saw_snapshots) = result;
    assert!(
        saw_snapshots,
        "the snapshots never appeared: {}",
        fake.log()
    );
    let err = result.expect_err("interrupted");
    assert!(matches!(err, RunError::Interrupted), "{err}");
    let snaps = fake.snapshots();
    assert!(
        snaps.iter().all(|s| s["Progress"].as_i64() < Some(100)),
        "cancelled while importing: {snaps:?}"
    );
    assert_eq!(live_snapshots(&fake), Vec::<Value>::new(), "snapshots left");
    assert_eq!(fake.requests_of("DeleteSnapshot"), vec![200, 200]);
    assert_eq!(fake.requests_of("CreateImage"), Vec::<i64>::new());
    assert_eq!(fake.images(), Vec::<Value>::new());
    assert_eq!(objects_of(&s3, &req), Vec::<String>::new(), "objects left");
}

/// Two publishes of two different bundles to one prefix at the same time. Each bundle's
/// package goes one level down, under a name of its own (`mkomi-<digest>/`), so both succeed,
/// and each image maps snapshots holding *its* bundle's disks (the fake's digest of the
/// imported content equals the bundle's ContentDigest). The outcome of each run is printed
/// (`--nocapture`).
#[test]
fn two_publishes_to_one_prefix() {
    let dir_a = tempfile::tempdir().expect("tempdir");
    let dir_b = tempfile::tempdir().expect("tempdir");
    let a = bundle(dir_a.path());
    let b = bundle_seeded(dir_b.path(), 7);
    let s3 = s3_server::S3Server::start();
    let fake = OapiServer::start(Some(&s3.endpoint));
    let (api_a, api_b) = (api(&fake), api(&fake));
    let req_a = request(&a, &s3, "shared");
    let mut req_b = request(&b, &s3, "shared");
    req_b.name = Some("publish-test (v2)".to_string());
    let (ra, rb) = std::thread::scope(|scope| {
        let ta = scope.spawn(|| publish(&req_a, &api_a, &Progress::quiet(), None));
        let tb = scope.spawn(|| publish(&req_b, &api_b, &Progress::quiet(), None));
        (ta.join().expect("a"), tb.join().expect("b"))
    });
    let show = |r: &Result<Published, RunError>| match r {
        Ok(p) => format!("ok {}", p.image_id),
        Err(e) => format!("error: {e}"),
    };
    println!("publish A: {}\npublish B: {}", show(&ra), show(&rb));
    let snaps = fake.snapshots();
    let images = fake.images();
    println!(
        "snapshots: {:?}\nimages: {:?}\nobjects left: {:?}",
        snaps
            .iter()
            .map(|s| format!("{} {} {}", s["SnapshotId"], s["State"], s["_reason"]))
            .collect::<Vec<_>>(),
        images
            .iter()
            .map(|i| format!("{} {}", i["ImageId"], i["ImageName"]))
            .collect::<Vec<_>>(),
        objects(&s3, "shared")
    );
    assert_eq!(images.len(), 2, "two images");
    for (r, bundle) in [(&ra, &a), (&rb, &b)] {
        let m = manifest(bundle);
        let Ok(p) = r else {
            panic!("a publish failed: {}", show(r))
        };
        let image = images
            .iter()
            .find(|i| i["ImageId"] == p.image_id.as_str())
            .expect("the image published");
        for map in image["BlockDeviceMappings"].as_array().expect("mappings") {
            let snap = snaps
                .iter()
                .find(|s| s["SnapshotId"] == map["Bsu"]["SnapshotId"])
                .expect("the mapped snapshot");
            let disk = m["Disks"]
                .as_array()
                .expect("Disks")
                .iter()
                .find(|d| d["DeviceName"] == map["DeviceName"])
                .expect("the disk");
            assert_eq!(
                snap["_digest"], disk["ContentDigest"],
                "image {} ({}) maps {} holding another bundle's disk",
                p.image_id, image["ImageName"], map["DeviceName"]
            );
        }
    }
}

/// The fake pages every `Read*` answer at one resource (`page_size`): publish must follow
/// `NextPageToken`, or its wait for two snapshots (filtered by both IDs, two pages) never sees
/// the second and times out. The publish succeeds, and a second one, whose lookups and waits
/// page too, creates nothing. (`ReadImages` is not followed by run.rs, but its filters, one
/// image ID or the root snapshot's ID, match one image here.)
#[test]
fn pages_of_one_are_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = bundle(dir.path());
    let s3 = s3_server::S3Server::start();
    let fake = OapiServer::start(Some(&s3.endpoint));
    let api = api(&fake);
    let mut req = request(&b, &s3, "pages");
    req.timeout = Duration::from_secs(30);
    fake.fault(serde_json::json!({"page_size": 1}));
    let first = run(&req, &api, &fake);
    assert!(first.image_created && first.snapshots.iter().all(|s| s.created));
    let second = run(&req, &api, &fake);
    assert!(!second.image_created && !second.uploaded);
    assert_eq!(second.image_id, first.image_id);
    assert_eq!(fake.snapshots().len(), 2);
    assert_eq!(fake.images().len(), 1);
    assert_eq!(fake.requests_of("CreateSnapshot"), vec![200, 200]);
}

/// The cancel flag set while the image is `pending` (the fake keeps it so for 30 `ReadImages`):
/// publish stops with `Interrupted` and removes what it created: the image first (the API
/// refuses to delete a snapshot an image maps), then the snapshots and the objects. The next run
/// publishes again: still exactly one image.
#[test]
fn interrupted_while_the_image_waits_then_resumed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = bundle(dir.path());
    let s3 = s3_server::S3Server::start();
    let fake = OapiServer::start_with(Some(&s3.endpoint), &["--image-polls", "30"]);
    let api = api(&fake);
    let req = request(&b, &s3, "interrupted-image");
    let cancel = cancel_flag();
    let (result, saw_image) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let start = Instant::now();
            let mut seen = false;
            while start.elapsed() < Duration::from_secs(60) {
                if fake.images().len() == 1 {
                    seen = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            cancel.store(true, Ordering::Relaxed);
            seen
        });
        let result = publish(&req, &api, &Progress::quiet(), Some(cancel));
        (result, watcher.join().expect("watcher"))
    });
    assert!(saw_image, "no image appeared: {}", fake.log());
    let err = result.expect_err("interrupted");
    assert!(matches!(err, RunError::Interrupted), "{err}");
    assert_eq!(
        fake.images(),
        Vec::<Value>::new(),
        "the image this run made"
    );
    assert_eq!(fake.requests_of("DeleteImage"), vec![200]);
    assert_eq!(fake.requests_of("DeleteSnapshot"), vec![200, 200]);
    assert_eq!(fake.snapshots().len(), 0);
    assert_eq!(objects_of(&s3, &req), Vec::<String>::new(), "objects left");

    let published = run(&req, &api, &fake);
    assert!(published.uploaded && published.image_created);
    assert_eq!(fake.requests_of("CreateImage"), vec![200, 200]);
    let images = fake.images();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["ImageId"], published.image_id.as_str());
    assert_eq!(images[0]["State"], "available");
}

/// The cancel flag set during the upload (as soon as the first object of the package is in
/// the bucket): publish stops with an interruption, creates no snapshot, and leaves no object;
/// the next run publishes the one image.
#[test]
fn interrupted_during_the_upload_then_resumed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = bundle(dir.path());
    let s3 = s3_server::S3Server::start();
    let fake = OapiServer::start(Some(&s3.endpoint));
    let api = api(&fake);
    let mut req = request(&b, &s3, "interrupted-upload");
    // Slower compression: a longer upload to stop in.
    req.level = 9;
    let cancel = cancel_flag();
    let (result, seen) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let start = Instant::now();
            let mut seen = Vec::new();
            while start.elapsed() < Duration::from_secs(60) {
                seen = objects_of(&s3, &req);
                if !seen.is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            cancel.store(true, Ordering::Relaxed);
            seen
        });
        let result = publish(&req, &api, &Progress::quiet(), Some(cancel));
        (result, watcher.join().expect("watcher"))
    });
    assert!(!seen.is_empty(), "no object appeared: {}", fake.log());
    let err = result.expect_err("interrupted");
    assert!(matches!(err, RunError::Interrupted), "{err:?}");
    assert_eq!(fake.requests_of("CreateSnapshot"), Vec::<i64>::new());
    assert_eq!(objects_of(&s3, &req), Vec::<String>::new(), "objects left");

    let published = run(&req, &api, &fake);
    assert!(published.uploaded && published.image_created);
    assert_eq!(fake.images().len(), 1);
    assert_eq!(fake.snapshots().len(), 2);
    assert_eq!(objects_of(&s3, &req), Vec::<String>::new());
}
