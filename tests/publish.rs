//! `mkomi::publish::run::publish` (`publish --via snapshots`) against the fake Outscale API
//! (`tests/oapi/fake_api.py`), which downloads each pre-signed object from the tests' S3 server
//! (s3s-fs), converts it with `qemu-img` and computes its own content digest: the image it ends
//! with is compared with the bundle's manifest, and a second publish must create nothing.

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::oapi_server::{ACCESS_KEY, OapiServer, REGION, SECRET_KEY};
use mkomi::export::s3::{Config, Credentials as S3Credentials, Location};
use mkomi::progress::Progress;
use mkomi::publish::client::{Backoff, Client, Endpoint};
use mkomi::publish::credentials::Credentials;
use mkomi::publish::run::{PublishRequest, Published, TAG_DIGEST, publish};
use serde_json::Value;

const MIB: usize = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A qcow2 bundle of two disks: a root of 6 MiB + 512 bytes of noise (an odd size, so the
/// virtual size is not a whole MiB) and a 3 MiB io1 data volume on /dev/sdb.
fn bundle(dir: &Path) -> PathBuf {
    let root = dir.join("root.img");
    let data = dir.join("data.img");
    std::fs::write(&root, common::noise(6 * MIB + 512, 3)).expect("write root");
    std::fs::write(&data, common::noise(3 * MIB, 4)).expect("write data");
    let out = dir.join("omi");
    common::ok(&[
        "register",
        s(&root),
        "-o",
        s(&out),
        "--arch",
        "x86_64",
        "--no-boot-check",
        // Not the fake's default (legacy), so that the image's value proves it was sent.
        "--boot-mode",
        "uefi",
        "--name",
        "publish-test (v1)",
        "--format",
        "qcow2",
        "--bdm",
        &format!(
            "/dev/sdb={},size=2,type=io1,iops=300,delete-on-vm-deletion=false",
            s(&data)
        ),
        "-q",
    ]);
    out
}

/// A client of the fake with quick retries.
fn api(fake: &OapiServer) -> Client {
    let endpoint = Endpoint::new(&fake.api_url, REGION).expect("endpoint");
    Client::new(endpoint, Credentials::new(ACCESS_KEY, SECRET_KEY))
        .expect("client")
        .with_backoff(Backoff {
            first: Duration::from_millis(10),
            max: Duration::from_millis(100),
            attempts: 4,
        })
}

/// The request: the bundle to `s3://BUCKET/omis/PREFIX` of the S3 server, quick polls. Each
/// test has its own prefix: the upload's resume state lives in the user's cache directory
/// (`export` takes no other), named by bucket, key and manifest, and an export aborts the
/// uploads left open under its prefix, so that tests running together must not share one.
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

/// The objects under the bucket's `omis/PREFIX`, as files of the S3 server's root.
fn objects(s3: &s3_server::S3Server, prefix: &str) -> Vec<String> {
    let dir = s3.root.join(s3_server::BUCKET).join("omis").join(prefix);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
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
