//! Resume state files: one multipart upload and its finished parts, written atomically.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::multipart::{MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE};
use super::uploads::OpenUpload;
use super::{Error, Result};

/// The first line of a resume state file's format.
pub(super) const STATE_FORMAT: &str = "mkomi-s3-upload/1";

/// The bucket and the upload recorded in a state file of
/// [`Client::put_stream_with`](super::Client::put_stream_with), `None` when there is no such
/// file.
pub fn recorded_upload(file: &Path) -> Result<Option<(String, OpenUpload)>> {
    let Some(state) = State::load(file, None, None)? else {
        return Ok(None);
    };
    Ok(Some((
        state.bucket,
        OpenUpload {
            key: state.key,
            upload_id: state.upload_id,
        },
    )))
}

/// One finished part, as recorded in a resume state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct DonePart {
    pub(super) size: u64,
    /// Hex SHA-256 of the part's bytes.
    pub(super) sha256: String,
    /// What `object_store` needs to complete the upload: the part's ETag (and checksum).
    pub(super) etag: String,
}

/// A resume state file: one multipart upload and its finished parts, by part number.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) format: String,
    pub(super) bucket: String,
    pub(super) key: String,
    pub(super) upload_id: String,
    pub(super) part_size: usize,
    pub(super) parts: BTreeMap<usize, DonePart>,
}

fn state_error(path: &Path, reason: String) -> Error {
    Error::State {
        path: path.to_path_buf(),
        reason,
    }
}

pub(super) fn remove_state(file: &Path) -> Result<()> {
    match fs::remove_file(file) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(state_error(file, format!("cannot remove it: {e}"))),
    }
}

impl State {
    /// The state in `file`, `None` when there is no such file; checked, and against the bucket
    /// and the key when they are given.
    pub(super) fn load(
        file: &Path,
        bucket: Option<&str>,
        key: Option<&str>,
    ) -> Result<Option<State>> {
        let text = match fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(state_error(file, format!("cannot read it: {e}"))),
        };
        let state: State = serde_json::from_str(&text)
            .map_err(|e| state_error(file, format!("not a resume state file: {e}")))?;
        let bucket = bucket.map_or_else(|| state.bucket.clone(), str::to_string);
        state.check(file, &bucket, key).map(Some)
    }

    fn check(self, file: &Path, bucket: &str, key: Option<&str>) -> Result<State> {
        let bad = |reason: String| Err(state_error(file, reason));
        if self.format != STATE_FORMAT {
            return bad(format!("unknown format {:?}", self.format));
        }
        if self.bucket != bucket || key.is_some_and(|k| k != self.key) {
            return bad(format!(
                "it is the upload of s3://{}/{}, not of s3://{bucket}/{}",
                self.bucket,
                self.key,
                key.unwrap_or("")
            ));
        }
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            return bad(format!("part size {} out of range", self.part_size));
        }
        if self.parts.keys().any(|&n| n == 0 || n > MAX_PARTS) {
            return bad("a part number out of range".to_string());
        }
        Ok(self)
    }

    /// Writes the state to `file` atomically: a temporary file beside it, synced, renamed.
    pub(super) fn save(&self, file: &Path) -> Result<()> {
        let fail = |what: &str, e: io::Error| state_error(file, format!("cannot {what}: {e}"));
        let mut tmp = file.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut json = serde_json::to_vec_pretty(self).expect("state serializes");
        json.push(b'\n');
        let mut f = File::create(&tmp).map_err(|e| fail("create a temporary file", e))?;
        f.write_all(&json)
            .and_then(|()| f.sync_all())
            .map_err(|e| fail("write a temporary file", e))?;
        fs::rename(&tmp, file).map_err(|e| fail("rename the temporary file", e))?;
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}
