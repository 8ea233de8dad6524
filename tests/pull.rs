//! `mkomi::publish::pull::pull` against the fake Outscale API (`tests/oapi/fake_api.py`), whose
//! export tasks write real export packages (`qemu-img`, gzip) into the tests' S3 server
//! (s3s-fs): a bundle is published (`mkomi::publish::run::publish`), pulled back, checked with
//! `mkomi verify`, and its ContentDigests compared with the original's.
//!
//! The fake, like the real API, exports each disk as its whole volume (`VolumeSize` GiB, the
//! tail zero). `publish` tags each snapshot with the disk's size and ContentDigest
//! (`mkomi:virtual-size`, `mkomi:digest`), by which `pull` cuts each disk back to the published
//! one: the round trip gives the original manifest's ContentDigests and VirtualSizes exactly.
//! Tags altered through the API show what `pull` does when they do not describe the disk.

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::oapi_server::OapiServer;
use mkomi::digest::{BLOCK_SIZE, ContentHasher, block_digest, zero_block_digest};
use mkomi::export::s3::{Config, Credentials as S3Credentials, Location};
use mkomi::manifest::Manifest;
use mkomi::manifest::rules::GIB;
use mkomi::progress::Progress;
use mkomi::publish::client::{Client, Retry};
use mkomi::publish::oapi::{
    CreateTagsRequest, CreateTagsResponse, DeleteTagsRequest, DeleteTagsResponse, ResourceTag,
};
use mkomi::publish::pull::{Error as PullError, PullRequest, Pulled, Sizing, Source, pull};
use mkomi::publish::run::{PublishRequest, Published, TAG_DIGEST, TAG_VIRTUAL_SIZE, publish};

const MIB: usize = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The two disks' bytes: a root of 6 MiB + 512 bytes of noise (not a whole MiB) and a 3 MiB
/// data disk.
fn disks() -> (Vec<u8>, Vec<u8>) {
    (common::noise(6 * MIB + 512, 3), common::noise(3 * MIB, 4))
}

/// A qcow2 bundle of the two disks, the data one an io1 volume of 2 GiB on /dev/sdb.
fn bundle(dir: &Path) -> PathBuf {
    let (root, data) = disks();
    common::two_disk_bundle(
        dir,
        "pull-test (v1)",
        &root,
        &data,
        "size=2,type=io1,iops=300,delete-on-vm-deletion=false",
        &[],
    )
}

/// The ContentDigest of `bytes` zero-extended to `size` bytes (src/digest.rs: SHA-256 of the
/// 4 MiB blocks' SHA-256s).
fn extended_digest(bytes: &[u8], size: u64) -> String {
    assert!(bytes.len() as u64 <= size);
    let mut h = ContentHasher::new();
    let mut at = 0u64;
    while at < size {
        let len = BLOCK_SIZE.min(size - at);
        let start = usize::try_from(at).expect("offset");
        if start < bytes.len() {
            let mut block = bytes[start..bytes.len().min(start + len as usize)].to_vec();
            block.resize(len as usize, 0);
            h.push(&block_digest(&block));
        } else {
            h.push(&zero_block_digest(len));
        }
        at += len;
    }
    h.finish()
}

/// A client of the fake with quick retries.
fn api(fake: &OapiServer) -> Client {
    fake.client()
}

fn s3_config(s3: &s3_server::S3Server) -> Config {
    Config {
        endpoint: Some(s3.endpoint.clone()),
        region: s3_server::REGION.to_string(),
        credentials: S3Credentials::new(s3_server::ACCESS_KEY, s3_server::SECRET_KEY, None),
        allow_http: true,
        checksums: true,
    }
}

/// Publishes the bundle through `omis/up-PREFIX` (objects deleted afterwards).
fn published(
    b: &Path,
    s3: &s3_server::S3Server,
    fake: &OapiServer,
    api: &Client,
    prefix: &str,
) -> Published {
    let location =
        Location::parse(&format!("s3://{}/omis/up-{prefix}", s3_server::BUCKET)).expect("loc");
    let mut req = PublishRequest::new(b.to_path_buf(), location, s3_config(s3));
    req.state_dir = b.parent().map(|p| p.join("upload-state"));
    req.timeout = Duration::from_secs(120);
    req.poll_first = Duration::from_millis(20);
    req.poll_max = Duration::from_millis(200);
    req.threads = 1;
    req.part_size = 5 * MIB;
    publish(&req, api, &Progress::quiet(), None)
        .unwrap_or_else(|e| panic!("publish: {e}\nfake log:\n{}", fake.log()))
}

/// A pull of `source` into `output` through `omis/down-PREFIX`, quick polls, no fsync.
fn pull_request(
    source: Source,
    output: &Path,
    s3: &s3_server::S3Server,
    prefix: &str,
) -> PullRequest {
    let location =
        Location::parse(&format!("s3://{}/omis/down-{prefix}", s3_server::BUCKET)).expect("loc");
    let mut req = PullRequest::new(source, output.to_path_buf(), location, s3_config(s3));
    req.timeout = Duration::from_secs(120);
    req.poll_first = Duration::from_millis(20);
    req.poll_max = Duration::from_millis(200);
    req.sync = false;
    // Noise disks: no binaries to check an architecture or a boot mode against.
    req.checks.boot = false;
    req.checks.loader = false;
    req
}

fn run_pull(req: &PullRequest, api: &Client, fake: &OapiServer) -> Pulled {
    pull(req, api, &Progress::quiet(), None)
        .unwrap_or_else(|e| panic!("pull: {e}\nfake log:\n{}", fake.log()))
}

/// Every file under the bucket's `omis/down-PREFIX`, as paths relative to it.
fn objects(s3: &s3_server::S3Server, prefix: &str) -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, base, out);
            } else {
                out.push(
                    p.strip_prefix(base)
                        .expect("under base")
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    let base = s3
        .root
        .join(s3_server::BUCKET)
        .join("omis")
        .join(format!("down-{prefix}"));
    let mut out = Vec::new();
    walk(&base, &base, &mut out);
    out.sort();
    out
}

/// `mkomi verify` on a bundle.
fn verify(bundle: &Path) {
    common::ok(&["verify", s(bundle)]);
}

/// Nothing beside `output` in its directory but what was there before (no work directory);
/// the publish's upload state, which the tests keep there, is not pull's.
fn siblings(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != "upload-state")
        .collect();
    names.sort();
    names
}

/// The ContentDigest and VirtualSize of each disk, by device.
fn digests(m: &Manifest) -> Vec<(String, u64, String)> {
    m.disks
        .iter()
        .map(|d| {
            (
                d.device_name.clone(),
                d.virtual_size,
                d.content_digest.clone(),
            )
        })
        .collect()
}

/// The snapshot `publish` made for `device`.
fn snapshot_of<'a>(p: &'a Published, device: &str) -> &'a str {
    &p.snapshots
        .iter()
        .find(|s| s.device_name == device)
        .expect("snapshot of the device")
        .snapshot_id
}

/// Sets a tag on a resource through the API, as a user could.
fn set_tag(api: &Client, id: &str, key: &str, value: &str) {
    let r = CreateTagsRequest {
        resource_ids: vec![id.to_string()],
        tags: vec![ResourceTag {
            key: key.to_string(),
            value: value.to_string(),
        }],
        ..Default::default()
    };
    let _: (CreateTagsResponse, _) = api.call("CreateTags", &r, Retry::Safe).expect("CreateTags");
}

/// The round trip: publish a two-disk bundle, pull the image through the fake's
/// default export (each disk its whole volume), `mkomi verify` the pulled bundle: every disk
/// has the original manifest's ContentDigest and VirtualSize exactly, cut back from its volume
/// by the snapshots' tags; the image fields and mappings are the original's; the export task
/// was created once, its objects are gone, and no work directory is left.
#[test]
fn pull_image_round_trip_then_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = s3_server::S3Server::start();
    let fake = OapiServer::start(Some(&s3.endpoint));
    let api = api(&fake);
    let b = bundle(dir.path());
    let original = Manifest::read(&b.join("manifest.json")).expect("manifest");
    let p = published(&b, &s3, &fake, &api, "rt");

    let out = dir.path().join("pulled");
    let req = pull_request(Source::parse(&p.image_id).expect("id"), &out, &s3, "rt");
    let got = run_pull(&req, &api, &fake);
    assert!(got.task_created);
    assert_eq!(fake.requests_of("CreateImageExportTask"), vec![200]);
    verify(&out);

    let pulled = Manifest::read(&out.join("manifest.json")).expect("pulled manifest");
    // The test: the ContentDigests (and sizes) of the published bundle, exactly.
    assert_eq!(digests(&pulled), digests(&original));
    assert_eq!(got.import.bundle.manifest.disks, pulled.disks);
    // The reference is the disks' own bytes, and the export did hold whole volumes.
    let (root_bytes, data_bytes) = disks();
    for (old, bytes) in original.disks.iter().zip([&root_bytes, &data_bytes]) {
        assert_eq!(old.virtual_size, bytes.len() as u64);
        assert_eq!(old.content_digest, extended_digest(bytes, old.virtual_size));
    }
    assert!(got.warnings.is_empty(), "{:?}", got.warnings);
    let sizings: Vec<(String, Option<String>, Sizing)> = got
        .disks
        .iter()
        .map(|d| (d.device.clone(), d.snapshot_id.clone(), d.sizing.clone()))
        .collect();
    assert_eq!(
        sizings,
        [
            (
                "/dev/sda1".to_string(),
                Some(snapshot_of(&p, "/dev/sda1").to_string()),
                Sizing::Trimmed {
                    from: GIB,
                    to: root_bytes.len() as u64
                }
            ),
            (
                "/dev/sdb".to_string(),
                Some(snapshot_of(&p, "/dev/sdb").to_string()),
                Sizing::Trimmed {
                    from: 2 * GIB,
                    to: data_bytes.len() as u64
                }
            ),
        ]
    );

    assert_eq!(pulled.image.image_name, original.image.image_name);
    assert_eq!(pulled.image.architecture, original.image.architecture);
    assert_eq!(pulled.image.boot_modes, original.image.boot_modes);
    assert_eq!(
        pulled.image.root_device_name,
        original.image.root_device_name
    );
    assert_eq!(pulled.disks.len(), 2);
    for (new, old) in pulled
        .image
        .block_device_mappings
        .iter()
        .zip(&original.image.block_device_mappings)
    {
        assert_eq!(new.device_name, old.device_name);
        assert_eq!(new.bsu.volume_size, old.bsu.volume_size);
        assert_eq!(new.bsu.volume_type, old.bsu.volume_type);
        assert_eq!(new.bsu.iops, old.bsu.iops);
        assert_eq!(new.bsu.delete_on_vm_deletion, old.bsu.delete_on_vm_deletion);
    }
    assert_eq!(pulled.image.block_device_mappings.len(), 2);
    // The export wrote under down-rt/ami-…/ and pull deleted it all.
    assert_eq!(got.objects_deleted.len(), 3, "{:?}", got.objects_deleted);
    assert!(
        got.objects_deleted
            .iter()
            .all(|k| k.starts_with(&format!("omis/down-rt/{}/", p.image_id))),
        "{:?}",
        got.objects_deleted
    );
    assert_eq!(objects(&s3, "rt"), Vec::<String>::new());
    assert_eq!(
        siblings(dir.path()),
        ["data.img", "omi", "pulled", "root.img"]
    );
}

/// A snapshot whose `mkomi:digest` was altered after publish: the disk cut back to its tagged
/// size does not have that digest, so the pull fails naming the device, the snapshot and both
/// digests; no output, no work directory, and the export's objects are deleted.
#[test]
fn pull_with_an_altered_digest_tag_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = s3_server::S3Server::start();
    let fake = OapiServer::start(Some(&s3.endpoint));
    let api = api(&fake);
    let b = bundle(dir.path());
    let original = Manifest::read(&b.join("manifest.json")).expect("manifest");
    let p = published(&b, &s3, &fake, &api, "alt");
    let data_snap = snapshot_of(&p, "/dev/sdb");
    let forged = format!("{:064x}", 7);
    set_tag(&api, data_snap, TAG_DIGEST, &forged);

    let out = dir.path().join("pulled");
    let req = pull_request(Source::parse(&p.image_id).expect("id"), &out, &s3, "alt");
    let err = match pull(&req, &api, &Progress::quiet(), None) {
        Err(e) => e,
        Ok(got) => panic!("the pull succeeded: {:?}", got.disks),
    };
    let msg = err.to_string();
    assert!(matches!(err, PullError::DigestMismatch { .. }), "{msg}");
    let data = &original.disks[1];
    assert_eq!(data.device_name, "/dev/sdb");
    for part in ["/dev/sdb", data_snap, &forged, &data.content_digest] {
        assert!(msg.contains(part), "{part} not in {msg}");
    }
    assert!(!out.exists());
    assert_eq!(siblings(dir.path()), ["data.img", "omi", "root.img"]);
    assert_eq!(objects(&s3, "alt"), Vec::<String>::new());
}

/// Tags that do not describe the disk never cost data: a root snapshot whose
/// `mkomi:virtual-size` is smaller than its data (4 MiB of a 6 MiB disk) keeps the whole volume
/// and says so in a warning; a data snapshot without `mkomi:virtual-size` (as if not published
/// by mkomi) keeps today's behaviour, the whole volume, silently. Both verify, and each holds
/// the original disk zero-extended to its volume.
#[test]
fn pull_keeps_the_volume_when_the_tags_do_not_fit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = s3_server::S3Server::start();
    let fake = OapiServer::start(Some(&s3.endpoint));
    let api = api(&fake);
    let b = bundle(dir.path());
    let p = published(&b, &s3, &fake, &api, "keep");
    let (root_snap, data_snap) = (snapshot_of(&p, "/dev/sda1"), snapshot_of(&p, "/dev/sdb"));
    set_tag(&api, root_snap, TAG_VIRTUAL_SIZE, &(4 * MIB).to_string());
    let r = DeleteTagsRequest {
        resource_ids: vec![data_snap.to_string()],
        tags: vec![ResourceTag {
            key: TAG_VIRTUAL_SIZE.to_string(),
            value: String::new(),
        }],
        ..Default::default()
    };
    let _: (DeleteTagsResponse, _) = api.call("DeleteTags", &r, Retry::Safe).expect("DeleteTags");

    let out = dir.path().join("pulled");
    let req = pull_request(Source::parse(&p.image_id).expect("id"), &out, &s3, "keep");
    let got = run_pull(&req, &api, &fake);
    verify(&out);
    assert_eq!(got.disks.len(), 2);
    match &got.disks[0].sizing {
        Sizing::Kept { exported, reason } => {
            assert_eq!(*exported, GIB);
            assert!(reason.contains("not zero"), "{reason}");
        }
        other => panic!("root disk: {other:?}"),
    }
    assert_eq!(got.disks[1].sizing, Sizing::Untagged);
    assert_eq!(got.warnings.len(), 1, "{:?}", got.warnings);
    assert!(
        got.warnings[0].starts_with("/dev/sda1: kept whole")
            && got.warnings[0].contains(TAG_VIRTUAL_SIZE),
        "{:?}",
        got.warnings
    );
    let pulled = Manifest::read(&out.join("manifest.json")).expect("pulled manifest");
    let (root_bytes, data_bytes) = disks();
    assert_eq!(
        digests(&pulled),
        [
            (
                "/dev/sda1".to_string(),
                GIB,
                extended_digest(&root_bytes, GIB)
            ),
            (
                "/dev/sdb".to_string(),
                2 * GIB,
                extended_digest(&data_bytes, 2 * GIB)
            ),
        ]
    );
    assert_eq!(objects(&s3, "keep"), Vec::<String>::new());
    assert_eq!(
        siblings(dir.path()),
        ["data.img", "omi", "pulled", "root.img"]
    );
}

/// With exports of the imported disk only (`--export-size virtual`), nothing is cut: every
/// pulled disk has the original manifest's ContentDigest and VirtualSize, checked against the
/// tags (`Sizing::Exact`).
#[test]
fn pull_round_trip_is_exact_when_the_export_holds_the_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = s3_server::S3Server::start();
    let fake = OapiServer::start_with(Some(&s3.endpoint), &["--export-size", "virtual"]);
    let api = api(&fake);
    let b = bundle(dir.path());
    let original = Manifest::read(&b.join("manifest.json")).expect("manifest");
    let p = published(&b, &s3, &fake, &api, "exact");
    let out = dir.path().join("pulled");
    let req = pull_request(Source::parse(&p.image_id).expect("id"), &out, &s3, "exact");
    let got = run_pull(&req, &api, &fake);
    verify(&out);
    let pulled = Manifest::read(&out.join("manifest.json")).expect("pulled manifest");
    assert_eq!(digests(&pulled), digests(&original));
    // Nothing to cut, and the digests were checked against the tags.
    assert!(
        got.disks.iter().all(|d| d.sizing == Sizing::Exact),
        "{:?}",
        got.disks
    );
    assert!(got.warnings.is_empty(), "{:?}", got.warnings);
}

/// A snapshot pulled through CreateSnapshotExportTask: a one-disk bundle on /dev/sda1 that
/// verifies, holding the root disk exactly as published (cut back from the snapshot's volume by
/// its tags); the object and the work directory are gone.
#[test]
fn pull_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = s3_server::S3Server::start();
    let fake = OapiServer::start(Some(&s3.endpoint));
    let api = api(&fake);
    let b = bundle(dir.path());
    let p = published(&b, &s3, &fake, &api, "snap");
    let root = &p.snapshots[0];
    assert_eq!(root.device_name, "/dev/sda1");

    let out = dir.path().join("pulled-snap");
    let req = pull_request(
        Source::parse(&root.snapshot_id).expect("id"),
        &out,
        &s3,
        "snap",
    );
    let got = run_pull(&req, &api, &fake);
    assert!(got.task_created);
    assert_eq!(fake.requests_of("CreateSnapshotExportTask"), vec![200]);
    assert_eq!(fake.requests_of("CreateImageExportTask"), Vec::<i64>::new());
    verify(&out);
    let pulled = Manifest::read(&out.join("manifest.json")).expect("pulled manifest");
    assert_eq!(pulled.disks.len(), 1);
    assert_eq!(pulled.disks[0].device_name, "/dev/sda1");
    assert_eq!(pulled.image.image_name, root.snapshot_id);
    // The root disk exactly as published, cut back from the exported 1 GiB volume.
    let original = Manifest::read(&b.join("manifest.json")).expect("manifest");
    assert_eq!(digests(&pulled), digests(&original)[..1]);
    let (root_bytes, _) = disks();
    assert_eq!(got.disks.len(), 1);
    assert_eq!(
        got.disks[0].snapshot_id.as_deref(),
        Some(root.snapshot_id.as_str())
    );
    assert_eq!(
        got.disks[0].sizing,
        Sizing::Trimmed {
            from: GIB,
            to: root_bytes.len() as u64
        }
    );
    assert_eq!(pulled.image.block_device_mappings[0].bsu.volume_size, 1);
    assert_eq!(
        got.objects_deleted,
        [format!("omis/down-snap/{}.qcow2.gz", root.snapshot_id)]
    );
    assert_eq!(objects(&s3, "snap"), Vec::<String>::new());
    assert_eq!(
        siblings(dir.path()),
        ["data.img", "omi", "pulled-snap", "root.img"]
    );
}

/// Re-runs reuse the export task: a pull that times out while the task runs leaves no output
/// and keeps the task; the next pull waits for that task (no second CreateImageExportTask).
/// A pull with `keep_objects` leaves the export in the bucket, and the pull after it (`force`)
/// imports it again without exporting. Once a pull deleted the objects, the next one exports
/// anew.
#[test]
fn pull_again_reuses_the_export_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = s3_server::S3Server::start();
    let fake = OapiServer::start(Some(&s3.endpoint));
    let api = api(&fake);
    let b = bundle(dir.path());
    let p = published(&b, &s3, &fake, &api, "again");
    let source = Source::parse(&p.image_id).expect("id");
    let out = dir.path().join("pulled");

    // 1. Timed out while the task runs.
    let mut req = pull_request(source.clone(), &out, &s3, "again");
    req.timeout = Duration::ZERO;
    match pull(&req, &api, &Progress::quiet(), None) {
        Err(PullError::Timeout { .. }) => {}
        other => panic!("want a time-out, got {:?}", other.map(|p| p.task_id)),
    }
    assert!(!out.exists());
    assert_eq!(siblings(dir.path()), ["data.img", "omi", "root.img"]);
    assert_eq!(fake.requests_of("CreateImageExportTask"), vec![200]);

    // 2. The re-run finds the task, waits for it and keeps the objects.
    let mut req = pull_request(source.clone(), &out, &s3, "again");
    req.keep_objects = true;
    let second = run_pull(&req, &api, &fake);
    assert!(!second.task_created);
    assert!(second.objects_deleted.is_empty());
    assert_eq!(fake.requests_of("CreateImageExportTask"), vec![200]);
    let kept = objects(&s3, "again");
    assert_eq!(kept.len(), 3, "{kept:?}");
    verify(&out);

    // 3. Again, over the output: the completed task and its objects are reused, then deleted.
    let mut req = pull_request(source.clone(), &out, &s3, "again");
    req.force = true;
    let third = run_pull(&req, &api, &fake);
    assert_eq!(third.task_id, second.task_id);
    assert!(!third.task_created);
    assert_eq!(fake.requests_of("CreateImageExportTask"), vec![200]);
    assert_eq!(objects(&s3, "again"), Vec::<String>::new());
    verify(&out);

    // 4. Without a force, an existing output is refused before any export.
    let req = pull_request(source.clone(), &out, &s3, "again");
    assert!(matches!(
        pull(&req, &api, &Progress::quiet(), None),
        Err(PullError::Output(_))
    ));
    assert_eq!(fake.requests_of("CreateImageExportTask"), vec![200]);

    // 5. The completed task's objects are gone: a new export.
    let mut req = pull_request(source, &out, &s3, "again");
    req.force = true;
    let fifth = run_pull(&req, &api, &fake);
    assert!(fifth.task_created);
    assert_ne!(fifth.task_id, third.task_id);
    assert_eq!(fake.requests_of("CreateImageExportTask"), vec![200, 200]);
    verify(&out);
}

/// A CreateImageExportTask whose answer is lost (the fake creates the task, then drops the
/// connection): pull looks the task up instead of sending the request again, and finishes with
/// that one task.
#[test]
fn pull_after_a_lost_create_answer_finds_the_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = s3_server::S3Server::start();
    let fake = OapiServer::start(Some(&s3.endpoint));
    let api = api(&fake);
    let b = bundle(dir.path());
    let p = published(&b, &s3, &fake, &api, "lost");
    fake.fault(serde_json::json!({"faults": [
        {"op": "CreateImageExportTask", "kind": "drop-after-commit"}
    ]}));
    let out = dir.path().join("pulled");
    let req = pull_request(Source::parse(&p.image_id).expect("id"), &out, &s3, "lost");
    let got = run_pull(&req, &api, &fake);
    assert_eq!(fake.requests_of("CreateImageExportTask"), vec![0]);
    let tasks = fake.state()["ImageExportTasks"]
        .as_array()
        .expect("tasks")
        .clone();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0]["TaskId"], got.task_id.as_str());
    verify(&out);
    assert_eq!(objects(&s3, "lost"), Vec::<String>::new());
}

/// An export task that fails after writing its first object (the fake's `export-fail`): the
/// error names the task and carries its Comment; no output and no work directory are left, and
/// the object the failed export wrote is deleted.
#[test]
fn pull_of_a_failed_export_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = s3_server::S3Server::start();
    let fake = OapiServer::start(Some(&s3.endpoint));
    let api = api(&fake);
    let b = bundle(dir.path());
    let p = published(&b, &s3, &fake, &api, "fail");
    fake.fault(serde_json::json!({"faults": [
        {"op": "CreateImageExportTask", "kind": "export-fail"}
    ]}));
    let out = dir.path().join("pulled");
    let req = pull_request(Source::parse(&p.image_id).expect("id"), &out, &s3, "fail");
    let err = match pull(&req, &api, &Progress::quiet(), None) {
        Err(e) => e,
        Ok(p) => panic!("the pull succeeded: {}", p.task_id),
    };
    let msg = err.to_string();
    assert!(matches!(err, PullError::TaskFailed { .. }), "{msg}");
    assert!(msg.contains("injected fault"), "{msg}");
    assert!(msg.contains(&p.image_id), "{msg}");
    // The export did write an object before it failed…
    let tasks = fake.state()["ImageExportTasks"]
        .as_array()
        .expect("tasks")
        .clone();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["State"], "failed");
    let written = tasks[0]["_objects"].as_array().expect("_objects").clone();
    assert_eq!(written.len(), 1, "{written:?}");
    // …and it is gone, with no output and no work directory.
    assert_eq!(objects(&s3, "fail"), Vec::<String>::new());
    assert!(!out.exists());
    assert_eq!(siblings(dir.path()), ["data.img", "omi", "root.img"]);
}

/// Ctrl-C while the export task runs: `Interrupted`, no output and no work directory; the
/// running task (which OAPI 1.40.1 cannot cancel) is left to finish, and the next pull takes
/// it, imports and deletes its objects, with one CreateImageExportTask in all.
#[test]
fn pull_interrupted_then_resumed() {
    static CANCEL: AtomicBool = AtomicBool::new(false);
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = s3_server::S3Server::start();
    let fake = OapiServer::start(Some(&s3.endpoint));
    let api = api(&fake);
    let b = bundle(dir.path());
    let p = published(&b, &s3, &fake, &api, "int");
    let source = Source::parse(&p.image_id).expect("id");
    let out = dir.path().join("pulled");

    let mut req = pull_request(source.clone(), &out, &s3, "int");
    // One poll, then a long wait, during which Ctrl-C comes.
    req.poll_first = Duration::from_secs(2);
    let ctrl_c = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(300));
        CANCEL.store(true, Ordering::Relaxed);
    });
    let started = std::time::Instant::now();
    let got = pull(&req, &api, &Progress::quiet(), Some(&CANCEL));
    ctrl_c.join().expect("thread");
    assert!(
        matches!(got, Err(PullError::Interrupted)),
        "{:?}",
        got.map(|p| p.task_id)
    );
    // It stopped during the wait (of 2 s), not at its end.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fake.requests_of("CreateImageExportTask"), vec![200]);
    assert!(!out.exists());
    assert_eq!(siblings(dir.path()), ["data.img", "omi", "root.img"]);

    let req = pull_request(source, &out, &s3, "int");
    let again = run_pull(&req, &api, &fake);
    assert!(!again.task_created);
    assert_eq!(fake.requests_of("CreateImageExportTask"), vec![200]);
    verify(&out);
    assert_eq!(objects(&s3, "int"), Vec::<String>::new());
}
