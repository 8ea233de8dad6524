//! The generated OAPI types against the spec's own examples, which the generator copies into
//! `oapi-examples.json` (the spec says they validate against its schemas; the issue #15
//! research checked that with jsonschema).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::oapi::{self, *};

/// The spec's examples of every operation, as `tools/gen-oapi-types.py` wrote them.
const EXAMPLES: &str = include_str!("oapi-examples.json");

fn examples() -> Value {
    serde_json::from_str(EXAMPLES).expect("oapi-examples.json is JSON")
}

/// `value` parses as `T` and serializes back to the same JSON value: no field is lost,
/// renamed, retyped or invented. Returns how many examples were checked.
fn round_trip<T: Serialize + DeserializeOwned>(op: &str, side: &str, list: &Value) -> usize {
    let list = list
        .as_array()
        .unwrap_or_else(|| panic!("{op} {side}: not a list"));
    for example in list {
        let name = &example["name"];
        let value = &example["value"];
        let parsed: T = serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("{op} {side} {name}: {e}"));
        let back =
            serde_json::to_value(&parsed).unwrap_or_else(|e| panic!("{op} {side} {name}: {e}"));
        assert_eq!(
            &back, value,
            "{op} {side} {name}: round trip changed the value"
        );
    }
    list.len()
}

/// Checks every request example with `$req` and every response example with `$resp` (or
/// with `ErrorResponse` for an error status), and returns the operations covered.
macro_rules! check_ops {
    ($ex:expr, $($op:literal => $req:ty, $resp:ty;)*) => {{
        let mut done = Vec::new();
        $(
            let entry = &$ex["operations"][$op];
            let requests = round_trip::<$req>($op, "request", &entry["request"]);
            assert!(requests > 0, "{}: no request example", $op);
            let responses = entry["response"].as_array().expect("response examples");
            assert!(!responses.is_empty(), "{}: no response example", $op);
            for r in responses {
                let one = Value::Array(vec![r.clone()]);
                if r["status"] == "200" {
                    assert_eq!(r["schema"], concat!($op, "Response"));
                    round_trip::<$resp>($op, "response", &one);
                } else {
                    assert_eq!(r["schema"], "ErrorResponse");
                    round_trip::<ErrorResponse>($op, "error", &one);
                }
            }
            done.push($op);
        )*
        done
    }};
}

#[test]
fn every_example_round_trips() {
    let ex = examples();
    assert_eq!(ex["version"], oapi::API_VERSION);
    let done = check_ops!(ex,
        "CreateImage" => CreateImageRequest, CreateImageResponse;
        "CreateImageExportTask" => CreateImageExportTaskRequest, CreateImageExportTaskResponse;
        "CreateSnapshot" => CreateSnapshotRequest, CreateSnapshotResponse;
        "CreateSnapshotExportTask" => CreateSnapshotExportTaskRequest, CreateSnapshotExportTaskResponse;
        "CreateTags" => CreateTagsRequest, CreateTagsResponse;
        "DeleteImage" => DeleteImageRequest, DeleteImageResponse;
        "DeleteSnapshot" => DeleteSnapshotRequest, DeleteSnapshotResponse;
        "DeleteTags" => DeleteTagsRequest, DeleteTagsResponse;
        "ReadImageExportTasks" => ReadImageExportTasksRequest, ReadImageExportTasksResponse;
        "ReadImages" => ReadImagesRequest, ReadImagesResponse;
        "ReadSnapshotExportTasks" => ReadSnapshotExportTasksRequest, ReadSnapshotExportTasksResponse;
        "ReadSnapshots" => ReadSnapshotsRequest, ReadSnapshotsResponse;
        "UpdateImage" => UpdateImageRequest, UpdateImageResponse;
    );
    // The 13 operations here are exactly the generated ones and the examples' ones.
    assert_eq!(done, oapi::OPERATIONS);
    let in_file: Vec<&str> = ex["operations"]
        .as_object()
        .expect("operations")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(in_file, oapi::OPERATIONS);
}

#[test]
fn requests_refuse_unknown_fields_responses_accept_them() {
    // The issue's trap: CreateImageRequest has no ClientToken in 1.40.1.
    let bad = serde_json::json!({"ImageName": "x", "ClientToken": "t"});
    let err = serde_json::from_value::<CreateImageRequest>(bad).unwrap_err();
    assert!(err.to_string().contains("ClientToken"), "{err}");
    // Also in nested request-only schemas.
    let bad = serde_json::json!({"Filters": {"ImageNames": ["a"], "Colour": "red"}});
    assert!(serde_json::from_value::<ReadImagesRequest>(bad).is_err());
    // CreateSnapshotRequest does have one.
    let ok = serde_json::json!({"ClientToken": "t", "SnapshotSize": 10_737_418_240_i64});
    let req: CreateSnapshotRequest = serde_json::from_value(ok).expect("CreateSnapshotRequest");
    assert_eq!(req.snapshot_size, Some(10_737_418_240));
    // A newer API's extra field in an answer is ignored.
    let answer = serde_json::json!({
        "Snapshot": {"SnapshotId": "snap-1", "State": "importing", "NewField": 1},
        "ResponseContext": {"RequestId": "r"}
    });
    let resp: CreateSnapshotResponse = serde_json::from_value(answer).expect("lenient answer");
    let snap = resp.snapshot.expect("snapshot");
    assert_eq!(snap.state.as_deref(), Some("importing"));
}

#[test]
fn required_fields_are_required_and_none_is_left_out() {
    // DeleteImageRequest requires ImageId (spec `required`).
    assert!(serde_json::from_value::<DeleteImageRequest>(serde_json::json!({})).is_err());
    let req = CreateTagsRequest {
        resource_ids: vec!["ami-1".into()],
        tags: vec![ResourceTag {
            key: "mkomi:digest".into(),
            value: String::new(),
        }],
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_value(&req).expect("serialize"),
        serde_json::json!({"ResourceIds": ["ami-1"], "Tags": [{"Key": "mkomi:digest", "Value": ""}]})
    );
    assert_eq!(BOOT_MODE_VALUES, ["uefi", "legacy"]);
}

#[test]
#[cfg_attr(
    not(feature = "tool-tests"),
    ignore = "calls external tools: run with --features tool-tests"
)]
fn generated_files_are_up_to_date() {
    // Regenerate-and-diff: `oapi.rs` and `oapi-examples.json` are what the generator writes
    // from the pinned spec now (python3 and PyYAML are CI dependencies, .ci/run).
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("python3")
        .arg("tools/gen-oapi-types.py")
        .arg("--check")
        .current_dir(root)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "tools/gen-oapi-types.py --check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
