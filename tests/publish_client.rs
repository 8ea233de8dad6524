//! The real OAPI client (`mkomi::publish::client::Client`) against the fake API
//! (`tests/oapi/fake_api.py`): two independent implementations of one contract, so a
//! disagreement between them is a bug in one or a question for the real API.
//!
//! - the client's SigV4 signer (object_store's `AwsAuthorizer`, service `oapi`) against the
//!   fake's verifier, written from the AWS description in Python;
//! - the generated request types against the fake's jsonschema validation of the spec;
//! - mkomi's `sha256-4m` digest (src/digest.rs) against the fake's, computed over what it
//!   downloaded from `FileLocation` and gunzipped;
//! - the client's retry policy against the fake's injected faults.

mod common;
#[path = "common/http.rs"]
mod http;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::io::Write;
use std::time::{Duration, Instant};

use common::oapi_server::{ACCESS_KEY, OapiServer, REGION, SECRET_KEY};
use mkomi::publish::client::{Backoff, Client, Endpoint, Error, Retry};
use mkomi::publish::credentials::Credentials;
use mkomi::publish::oapi::{
    BlockDeviceMappingImage, BsuToCreate, CreateImageRequest, CreateImageResponse,
    CreateSnapshotExportTaskRequest, CreateSnapshotExportTaskResponse, CreateSnapshotRequest,
    CreateSnapshotResponse, FiltersImage, FiltersSnapshot, FiltersSnapshotExportTask,
    OsuExportToCreate, ReadImagesRequest, ReadImagesResponse, ReadSnapshotExportTasksRequest,
    ReadSnapshotExportTasksResponse, ReadSnapshotsRequest, ReadSnapshotsResponse,
};
use serde_json::{Value, json};

const MIB: usize = 1 << 20;

/// A client of the fake signing with `secret`; retries quick (the fake's faults are instant).
fn client(fake: &OapiServer, secret: &str) -> Client {
    let endpoint = Endpoint::new(&fake.api_url, REGION).expect("endpoint");
    Client::new(endpoint, Credentials::new(ACCESS_KEY, secret))
        .expect("client")
        .with_backoff(Backoff {
            first: Duration::from_millis(10),
            max: Duration::from_millis(100),
            attempts: 4,
        })
}

/// `data` gzip'd, as the import takes it (the fake refuses anything else).
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

/// Serves `body` at every path with a plain 200 (a stand-in for a pre-signed URL); the URL.
fn serve_bytes(body: Vec<u8>) -> String {
    let body = std::sync::Arc::new(body);
    let base = http::serve(move |_, _, conn| {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(head.as_bytes());
        let _ = conn.write_all(&body);
    });
    format!("{base}/disk.raw.gz?X-Amz-Signature=not-checked")
}

/// A disk of `len` bytes: a whole zero 4 MiB block (the digest's shortcut), then noise.
fn disk(len: usize) -> Vec<u8> {
    let mut d = vec![0u8; 4 * MIB];
    d.extend(common::noise(len - 4 * MIB, 15));
    d
}

/// The virtual disk qemu sees: `data` zero-filled up to a whole 512-byte sector
/// (src/digest.rs).
fn virtual_disk(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().div_ceil(512) * 512, 0);
    v
}

/// Imports `content` (raw, gzip'd, served over HTTP) with `CreateSnapshot` and polls
/// `ReadSnapshots` until the snapshot is `completed`; its ID.
fn import_snapshot(fake: &OapiServer, api: &Client, content: &[u8], token: &str) -> String {
    let url = serve_bytes(gzip(content));
    let size = i64::try_from(virtual_disk(content).len()).expect("size");
    let req = CreateSnapshotRequest {
        client_token: Some(token.to_string()),
        description: Some("publish_client interop".to_string()),
        file_location: Some(url),
        snapshot_size: Some(size),
        ..Default::default()
    };
    // Safe: the ClientToken makes a resent CreateSnapshot return the first one's snapshot.
    let (created, _): (CreateSnapshotResponse, _) = api
        .call("CreateSnapshot", &req, Retry::Safe)
        .expect("CreateSnapshot");
    let snap = created.snapshot.expect("Snapshot in the answer");
    assert_eq!(snap.client_token.as_deref(), Some(token));
    let id = snap.snapshot_id.expect("SnapshotId");
    let read = ReadSnapshotsRequest {
        filters: Some(FiltersSnapshot {
            snapshot_ids: Some(vec![id.clone()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let start = Instant::now();
    let mut states = Vec::new();
    loop {
        let (resp, _): (ReadSnapshotsResponse, _) = api
            .call("ReadSnapshots", &read, Retry::Safe)
            .expect("ReadSnapshots");
        let snaps = resp.snapshots.unwrap_or_default();
        assert_eq!(snaps.len(), 1, "ReadSnapshots by SnapshotIds: {snaps:?}");
        let state = snaps[0].state.clone().unwrap_or_default();
        if states.last() != Some(&state) {
            states.push(state.clone());
        }
        match state.as_str() {
            "completed" => {
                assert_eq!(snaps[0].progress, Some(100));
                break;
            }
            "error" => panic!(
                "the import failed: {:?}; fake log:\n{}",
                fake.state()["Snapshots"],
                fake.log()
            ),
            _ => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not completed after a minute: states {states:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    id
}

/// The fake's private record of snapshot `id`.
fn snapshot_state(fake: &OapiServer, id: &str) -> Value {
    fake.state()["Snapshots"]
        .as_array()
        .expect("Snapshots")
        .iter()
        .find(|s| s["SnapshotId"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no snapshot {id} in the fake's state"))
}

/// A `CreateImage` of one snapshot mapped as the root device.
fn image_request(name: &str, snapshot: &str) -> CreateImageRequest {
    CreateImageRequest {
        image_name: Some(name.to_string()),
        architecture: Some("x86_64".to_string()),
        root_device_name: Some("/dev/sda1".to_string()),
        boot_modes: Some(vec!["uefi".to_string()]),
        block_device_mappings: Some(vec![BlockDeviceMappingImage {
            device_name: Some("/dev/sda1".to_string()),
            bsu: Some(BsuToCreate {
                snapshot_id: Some(snapshot.to_string()),
                volume_type: Some("gp2".to_string()),
                delete_on_vm_deletion: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

// -- a. signatures ----------------------------------------------------------------------------

/// Our signer against the fake's independent verifier: signed reads succeed, with bodies that
/// are empty, nested, and non-ASCII (the body's bytes are what is hashed into the signature).
#[test]
fn signed_reads_are_accepted() {
    let fake = OapiServer::start(None);
    let api = client(&fake, SECRET_KEY);
    let (images, stats): (ReadImagesResponse, _) = api
        .call("ReadImages", &ReadImagesRequest::default(), Retry::Safe)
        .expect("ReadImages");
    assert_eq!(images.images, Some(vec![]));
    assert_eq!(stats.attempts, 1);
    // The request ID is the fake's (a UUID it made up), read from ResponseContext.
    assert_eq!(stats.request_id.as_deref().map(str::len), Some(36));
    let filtered = ReadImagesRequest {
        filters: Some(FiltersImage {
            image_names: Some(vec!["débian 13 (ñ) / €".to_string()]),
            architectures: Some(vec!["x86_64".to_string()]),
            ..Default::default()
        }),
        results_per_page: Some(10),
        ..Default::default()
    };
    let (images, _): (ReadImagesResponse, _) = api
        .call("ReadImages", &filtered, Retry::Safe)
        .expect("ReadImages with non-ASCII filters");
    assert_eq!(images.images, Some(vec![]));
    let (snaps, _): (ReadSnapshotsResponse, _) = api
        .call(
            "ReadSnapshots",
            &ReadSnapshotsRequest::default(),
            Retry::Safe,
        )
        .expect("ReadSnapshots");
    assert_eq!(snaps.snapshots, Some(vec![]));
    assert_eq!(fake.requests_of("ReadImages"), vec![200, 200]);
    assert_eq!(fake.requests_of("ReadSnapshots"), vec![200]);
    assert_eq!(fake.state()["AuthFailures"][ACCESS_KEY], 0);
}

/// A wrong secret: the fake's verifier refuses the signature with 401, and the client sends
/// it once only, even with `Retry::Safe` (the API locks a key out after four failures).
#[test]
fn wrong_secret_is_401_sent_once() {
    let fake = OapiServer::start(None);
    let api = client(&fake, "not-the-secret-key-0000");
    let err = api
        .call::<_, ReadImagesResponse>("ReadImages", &ReadImagesRequest::default(), Retry::Safe)
        .expect_err("a wrong secret must fail");
    match &err {
        Error::Api {
            status,
            type_,
            details,
            ..
        } => {
            assert_eq!(*status, 401);
            assert_eq!(type_.as_deref(), Some("AuthFailure"));
            assert_eq!(details.as_deref(), Some("signature does not match"));
        }
        other => panic!("not an Api error: {other:?}"),
    }
    assert!(!err.outcome_unknown(), "a 401 did nothing");
    assert!(!err.to_string().contains(ACCESS_KEY), "{err}");
    assert_eq!(api.totals().attempts, 1);
    assert_eq!(fake.requests_of("ReadImages"), vec![401]);
    assert_eq!(fake.state()["AuthFailures"][ACCESS_KEY], 1);
}

// -- b. CreateImage has no ClientToken --------------------------------------------------------

/// `CreateImageRequest` has no `ClientToken` (a compile-time fact; at run time its
/// `deny_unknown_fields` refuses one), and the fake, validating against the spec, answers a
/// raw body carrying one with 400 `UnknownParameter` naming it, and creates nothing.
#[test]
fn create_image_refuses_client_token() {
    let body = json!({
        "ImageName": "mkomi-token-test",
        "RootDeviceName": "/dev/sda1",
        "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Bsu": {"SnapshotId": "snap-00000001"}}],
        "ClientToken": "mkomi-ct-1",
    });
    let typed = serde_json::from_value::<CreateImageRequest>(body.clone());
    assert!(
        typed.is_err_and(|e| e.to_string().contains("ClientToken")),
        "the generated type took a ClientToken"
    );
    let fake = OapiServer::start(None);
    let api = client(&fake, SECRET_KEY);
    let err = api
        .call::<_, Value>("CreateImage", &body, Retry::Never)
        .expect_err("ClientToken must be refused");
    match &err {
        Error::Api {
            status,
            type_,
            details,
            ..
        } => {
            assert_eq!(*status, 400);
            assert_eq!(type_.as_deref(), Some("UnknownParameter"));
            let details = details.as_deref().unwrap_or_default();
            assert!(details.contains("'ClientToken'"), "details: {details}");
        }
        other => panic!("not an Api error: {other:?}"),
    }
    assert!(!err.outcome_unknown());
    assert_eq!(fake.requests_of("CreateImage"), vec![400]);
    assert_eq!(fake.state()["Images"], json!([]));
}

// -- c. import and digest ---------------------------------------------------------------------

/// `CreateSnapshot{FileLocation}` of a gzip'd raw disk whose size is not a whole sector: the
/// fake downloads, gunzips and hashes it; its `_digest` is mkomi's own `sha256-4m` digest of
/// the virtual disk (content zero-filled to the sector), and its `_virtual_size` that disk's.
#[test]
fn imported_snapshot_digest_matches_mkomi() {
    let fake = OapiServer::start(None);
    let api = client(&fake, SECRET_KEY);
    // 4 MiB of zeros, then noise: 2 blocks and a bit, the last one short and not a whole
    // sector.
    let content = disk(9 * MIB + 1000);
    let id = import_snapshot(&fake, &api, &content, "mkomi-import-1");
    let want = mkomi::digest::content_digest_of(&virtual_disk(&content));
    let snap = snapshot_state(&fake, &id);
    assert_eq!(
        snap["_digest"],
        want.as_str(),
        "the fake's digest is not mkomi's"
    );
    assert_eq!(snap["_virtual_size"], virtual_disk(&content).len());
    assert_eq!(snap["VolumeSize"], 1);
    // Not the digest of the bytes alone: the sector padding matters, and both sides agree.
    assert_ne!(mkomi::digest::content_digest_of(&content), want);

    // The same token again (a resend after a lost answer): the same snapshot, no new one.
    let again = CreateSnapshotRequest {
        client_token: Some("mkomi-import-1".to_string()),
        description: Some("publish_client interop".to_string()),
        file_location: Some("http://127.0.0.1:9/re-signed".to_string()),
        snapshot_size: Some(i64::try_from(virtual_disk(&content).len()).expect("size")),
        ..Default::default()
    };
    let (resp, _): (CreateSnapshotResponse, _) = api
        .call("CreateSnapshot", &again, Retry::Safe)
        .expect("CreateSnapshot again");
    assert_eq!(resp.snapshot.and_then(|s| s.snapshot_id), Some(id));
    assert_eq!(fake.state()["Snapshots"].as_array().map(Vec::len), Some(1));
}

// -- d. retries -------------------------------------------------------------------------------

/// An injected 429 then success: `Retry::Safe` resends and succeeds, counting one throttled
/// answer; so does `Retry::Never`, since a 429 refuses before the operation runs; a 503 is
/// given back by `Retry::Never` after one request (the gateway may have passed it on).
#[test]
fn throttled_then_success_with_safe_retry() {
    let fake = OapiServer::start(None);
    let api = client(&fake, SECRET_KEY);
    fake.fault(json!({"faults": [{"op": "ReadImages", "kind": "429"}]}));
    let (resp, stats): (ReadImagesResponse, _) = api
        .call("ReadImages", &ReadImagesRequest::default(), Retry::Safe)
        .expect("ReadImages after a 429");
    assert_eq!(resp.images, Some(vec![]));
    assert_eq!((stats.attempts, stats.retries, stats.throttled), (2, 1, 1));
    assert_eq!(fake.requests_of("ReadImages"), vec![429, 200]);

    fake.fault(json!({"faults": [{"op": "ReadImages", "kind": "429"}]}));
    let (_, stats): (ReadImagesResponse, _) = api
        .call("ReadImages", &ReadImagesRequest::default(), Retry::Never)
        .expect("Never is sent again after a 429");
    assert_eq!((stats.attempts, stats.retries, stats.throttled), (2, 1, 1));

    fake.fault(json!({"faults": [{"op": "ReadImages", "kind": "503"}]}));
    let err = api
        .call::<_, ReadImagesResponse>("ReadImages", &ReadImagesRequest::default(), Retry::Never)
        .expect_err("Never does not resend after a 503");
    match &err {
        Error::Api { status, .. } => assert_eq!(*status, 503),
        other => panic!("not an Api error: {other:?}"),
    }
    assert_eq!(
        fake.requests_of("ReadImages"),
        vec![429, 200, 429, 200, 503]
    );
    let totals = api.totals();
    assert_eq!((totals.calls, totals.attempts, totals.throttled), (3, 5, 3));
}

/// The fake commits `CreateImage` and drops the connection before answering: with
/// `Retry::Never` the client sends once and says the outcome is unknown; the image the fake
/// made is found, exactly once, by `ReadImages` on `BlockDeviceMappingSnapshotIds`.
#[test]
fn create_image_drop_after_commit_is_outcome_unknown() {
    let fake = OapiServer::start(None);
    let api = client(&fake, SECRET_KEY);
    let snapshot = import_snapshot(&fake, &api, &disk(5 * MIB), "mkomi-drop-1");
    fake.fault(json!({"faults": [{"op": "CreateImage", "kind": "drop-after-commit"}]}));
    let err = api
        .call::<_, CreateImageResponse>(
            "CreateImage",
            &image_request("mkomi-drop-test", &snapshot),
            Retry::Never,
        )
        .expect_err("the answer was dropped");
    assert!(
        matches!(err, Error::Transport { sent: true, .. }),
        "not a transport error after sending: {err:?}"
    );
    assert!(err.outcome_unknown(), "{err}");
    assert_eq!(fake.requests_of("CreateImage"), vec![0]);
    assert_eq!(fake.state()["Calls"]["CreateImage"], 1);

    let find = ReadImagesRequest {
        filters: Some(FiltersImage {
            block_device_mapping_snapshot_ids: Some(vec![snapshot.clone()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (resp, _): (ReadImagesResponse, _) = api
        .call("ReadImages", &find, Retry::Safe)
        .expect("ReadImages by snapshot");
    let images = resp.images.unwrap_or_default();
    assert_eq!(images.len(), 1, "{images:?}");
    let image = &images[0];
    assert_eq!(image.image_name.as_deref(), Some("mkomi-drop-test"));
    assert_eq!(image.root_device_name.as_deref(), Some("/dev/sda1"));
    let mapped: Vec<_> = image
        .block_device_mappings
        .iter()
        .flatten()
        .filter_map(|m| m.bsu.as_ref()?.snapshot_id.clone())
        .collect();
    assert_eq!(mapped, vec![snapshot]);
    // A second CreateImage of the same name, the resend the lookup prevents, is refused.
    let err = api
        .call::<_, CreateImageResponse>(
            "CreateImage",
            &image_request("mkomi-drop-test", &mapped[0]),
            Retry::Never,
        )
        .expect_err("a second image of one name");
    assert!(matches!(err, Error::Api { status: 400, .. }), "{err:?}");
}

/// 503 and 500 are transient: `Retry::Safe` resends through both (the 503 counted as
/// throttling); with `Retry::Never` a 500 is given back as an outcome that may have happened
/// (the client cannot know the fake failed before doing anything).
#[test]
fn server_errors_are_retried_when_safe() {
    let fake = OapiServer::start(None);
    let api = client(&fake, SECRET_KEY);
    fake.fault(json!({"faults": [
        {"op": "ReadSnapshots", "kind": "503"},
        {"op": "ReadSnapshots", "kind": "500", "nth": 2},
    ]}));
    let (_, stats): (ReadSnapshotsResponse, _) = api
        .call(
            "ReadSnapshots",
            &ReadSnapshotsRequest::default(),
            Retry::Safe,
        )
        .expect("ReadSnapshots after a 503 and a 500");
    assert_eq!((stats.attempts, stats.throttled), (3, 1));
    assert_eq!(fake.requests_of("ReadSnapshots"), vec![503, 500, 200]);

    fake.fault(json!({"faults": [{"op": "ReadSnapshots", "kind": "500"}]}));
    let err = api
        .call::<_, ReadSnapshotsResponse>(
            "ReadSnapshots",
            &ReadSnapshotsRequest::default(),
            Retry::Never,
        )
        .expect_err("Never does not resend");
    assert!(matches!(err, Error::Api { status: 500, .. }), "{err:?}");
    assert!(err.outcome_unknown());
    assert_eq!(fake.requests_of("ReadSnapshots"), vec![503, 500, 200, 500]);
}

/// A clock more than 5 minutes off: the fake refuses the signature's date with 401, which the
/// client does not resend, and whose reason reaches the message.
#[test]
fn clock_skew_is_401_with_its_reason() {
    let fake = OapiServer::start(None);
    let api = client(&fake, SECRET_KEY);
    fake.fault(json!({"clock_skew": 400}));
    let err = api
        .call::<_, ReadImagesResponse>("ReadImages", &ReadImagesRequest::default(), Retry::Safe)
        .expect_err("a skewed clock must fail");
    assert!(matches!(err, Error::Api { status: 401, .. }), "{err:?}");
    assert!(err.to_string().contains("5 minutes"), "{err}");
    assert_eq!(fake.requests_of("ReadImages"), vec![401]);
    fake.fault(json!({"clock_skew": 240}));
    api.call::<_, ReadImagesResponse>("ReadImages", &ReadImagesRequest::default(), Retry::Safe)
        .expect("4 minutes is within the tolerance");
}

/// Every answer the fake gives (validated there against the spec's `<Op>Response`) parses into
/// the generated types and serializes back to the same JSON: no field the fake sends is lost
/// or renamed by the types. Covers a registered image going `pending` -> `available`.
#[test]
fn answers_round_trip_through_generated_types() {
    let fake = OapiServer::start(None);
    let api = client(&fake, SECRET_KEY);
    let snapshot = import_snapshot(&fake, &api, &disk(5 * MIB), "mkomi-roundtrip-1");
    let mut req = image_request("mkomi-roundtrip (test) 1.0", &snapshot);
    req.description = Some("round trip".to_string());
    req.product_codes = Some(vec!["0001".to_string()]);
    let (created, _): (Value, _) = api
        .call("CreateImage", &req, Retry::Never)
        .expect("CreateImage");
    round_trip::<CreateImageResponse>(&created);
    assert_eq!(created["Image"]["State"], "pending");
    let start = Instant::now();
    let image = loop {
        let (v, _): (Value, _) = api
            .call("ReadImages", &ReadImagesRequest::default(), Retry::Safe)
            .expect("ReadImages");
        let typed = round_trip::<ReadImagesResponse>(&v);
        let images = typed.images.unwrap_or_default();
        assert_eq!(images.len(), 1);
        if images[0].state.as_deref() == Some("available") {
            break images[0].clone();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never available");
    };
    assert_eq!(image.boot_modes, Some(vec!["uefi".to_string()]));
    assert_eq!(image.description.as_deref(), Some("round trip"));
    let (v, _): (Value, _) = api
        .call(
            "ReadSnapshots",
            &ReadSnapshotsRequest::default(),
            Retry::Safe,
        )
        .expect("ReadSnapshots");
    round_trip::<ReadSnapshotsResponse>(&v);
}

/// `answer` parsed as `T` and serialized back must be `answer` again; the parsed value.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(answer: &Value) -> T {
    let typed: T = serde_json::from_value(answer.clone()).expect("parse into the generated type");
    let back = serde_json::to_value(&typed).expect("serialize");
    assert_eq!(&back, answer, "the generated type loses or changes fields");
    typed
}

/// The way back: `CreateSnapshotExportTask` (sent once) writes the snapshot into the tests' S3
/// server (s3s-fs) as a gzip'd raw disk; `ReadSnapshotExportTasks` is polled until the task is
/// `completed`, and the object holds the imported disk again: the same `sha256-4m` digest.
#[test]
fn snapshot_export_lands_in_s3_with_the_same_digest() {
    let s3 = s3_server::S3Server::start();
    // `virtual`: the export holds the imported disk, not the whole 1 GiB volume.
    let fake = OapiServer::start_with(Some(&s3.endpoint), &["--export-size", "virtual"]);
    let api = client(&fake, SECRET_KEY);
    let content = disk(6 * MIB + 512);
    let snapshot = import_snapshot(&fake, &api, &content, "mkomi-export-1");
    let req = CreateSnapshotExportTaskRequest {
        snapshot_id: snapshot.clone(),
        osu_export: OsuExportToCreate {
            disk_image_format: "raw".to_string(),
            osu_bucket: s3_server::BUCKET.to_string(),
            osu_prefix: Some("exports".to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    let (created, _): (Value, _) = api
        .call("CreateSnapshotExportTask", &req, Retry::Never)
        .expect("CreateSnapshotExportTask");
    let created = round_trip::<CreateSnapshotExportTaskResponse>(&created);
    let task = created.snapshot_export_task.expect("SnapshotExportTask");
    assert_eq!(task.snapshot_id.as_deref(), Some(snapshot.as_str()));
    let task_id = task.task_id.expect("TaskId");
    let read = ReadSnapshotExportTasksRequest {
        filters: Some(FiltersSnapshotExportTask {
            task_ids: Some(vec![task_id.clone()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let start = Instant::now();
    loop {
        let (v, _): (Value, _) = api
            .call("ReadSnapshotExportTasks", &read, Retry::Safe)
            .expect("ReadSnapshotExportTasks");
        let tasks = round_trip::<ReadSnapshotExportTasksResponse>(&v)
            .snapshot_export_tasks
            .unwrap_or_default();
        assert_eq!(tasks.len(), 1, "{tasks:?}");
        match tasks[0].state.as_deref() {
            Some("completed") => break,
            Some("failed") => panic!("export failed: {:?}\n{}", tasks[0].comment, fake.log()),
            _ => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "export never completed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let object = s3
        .root
        .join(s3_server::BUCKET)
        .join(format!("exports/{snapshot}.raw.gz"));
    let gz = std::fs::read(&object).unwrap_or_else(|e| panic!("{}: {e}", object.display()));
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz.as_slice()), &mut raw)
        .expect("gunzip the export");
    assert_eq!(raw.len(), virtual_disk(&content).len());
    assert_eq!(
        mkomi::digest::content_digest_of(&raw),
        snapshot_state(&fake, &snapshot)["_digest"]
            .as_str()
            .expect("_digest")
    );
    assert_eq!(raw, content);
}

/// The fake's own tests (`tests/oapi/test_fake_api.py`: SigV4 checks, schema validation, the
/// import from a pre-signed URL, faults, pagination, export tasks): the contract the other
/// tests rely on holds.
#[test]
fn the_fake_api_passes_its_self_test() {
    let out = std::process::Command::new("python3")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oapi/fake_api.py"))
        .arg("--self-test")
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
