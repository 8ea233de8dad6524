#!/usr/bin/env python3
"""A local fake of the Outscale API (OAPI 1.40.1) that enforces the published contract.

The tests of `mkomi publish`/`pull` (issue #15) cannot reach the real API, so they run this server.
It is as strict as the real API where the contract is written down, and says so where it guesses:

* every request is SigV4-signed (`AWS4-HMAC-SHA256`, service `oapi`, the test's key, secret and
  region; the spec's "Authentication Schemes" and docs.outscale.com "About Signatures of API
  Requests": a request must arrive within 5 minutes of its timestamp). A bad one answers 401 with
  an `ErrorResponse`. Four failures in a row for one access key lock it out for a minute (the spec's
  "invalid access key four times in a row ... prevented for 1 minute"), so a test proves that a
  client never retries a 401;
* every body is validated with jsonschema against `<Operation>Request` of the spec (unknown fields,
  types, enums, required fields); errors answer 400 with an `ErrorResponse` whose `Details` name
  the field. Every answer of the fake is validated against `<Operation>Response` too (a failure is a
  fake bug: it answers 500 `FakeBug`, which no test should ever see);
* `CreateSnapshot{FileLocation}` really downloads the (pre-signed) URL with urllib, gunzips it,
  converts qcow2 to raw with `qemu-img`, checks the virtual size against `SnapshotSize`, and keeps
  the `sha256-4m` ContentDigest (as src/digest.rs defines it); states go `in-queue` ->
  `importing`/`pending` (progress per ReadSnapshots poll) -> `completed`, or `error`;
* `CreateImage` checks that every snapshot exists and is completed and that the root device is
  mapped; the image is `pending` for a few ReadImages polls, then `available`;
* `ClientToken` idempotency for CreateSnapshot;
* faults injected through the unsigned `POST /_control` (429, 503, 500, drop-after-commit, hang,
  `import-error`: the call succeeds, but the import it starts ends in `error`, as a disk the
  API cannot read would; `export-fail` on a Create*ExportTask: the task fails after writing its
  first object), a default page size (`page_size`), and the whole state through
  `GET /_control/state`.

Only python3's stdlib, PyYAML and jsonschema are used (what CI guarantees), plus `qemu-img`.

Error `Code` values are made up (the spec documents the shape, not the codes); their `Type` names
follow the spec's examples and the AWS conventions Outscale keeps (`InvalidParameterValue`,
`AccessDenied`, `InvalidResource`, ...). Every guess is marked `ASSUMPTION` below.

Usage:
    fake_api.py --access-key AK --secret-key SK [--region eu-west-2] [--state-file F]
        prints `PORT <n>` on stdout, then serves on 127.0.0.1:<n> until killed.
    fake_api.py --validate FILE
        validates a JSON file `[{"Operation": op, "Body": {...}}, ...]` (e.g. publish --dry-run
        output) against the request schemas; exit 0 if all are valid.
    fake_api.py --self-test
        runs tests/oapi/test_fake_api.py.
"""

import argparse
import base64
import binascii
import datetime
import gzip
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jsonschema
import yaml

try:
    import referencing
    import referencing.jsonschema
except ImportError:
    # jsonschema < 4.18 (Debian bookworm's python3-jsonschema is 4.10) has no `referencing`:
    # its RefResolver resolves the same `urn:osc` references.
    referencing = None

HERE = os.path.dirname(os.path.abspath(__file__))
# The spec lives next to the checkouts (../shared/specs from the repository root).
DEFAULT_SPEC = os.path.normpath(
    os.path.join(HERE, "..", "..", "..", "shared", "specs", "osc-api-1.40.1.yaml")
)
GIB = 1 << 30
# src/digest.rs: the digest block size, 4 MiB.
DIGEST_BLOCK = 4 << 20
# A bound on request bodies: the largest OAPI body mkomi sends is a few KiB.
MAX_BODY = 1 << 20
# docs.outscale.com, "About Signatures of API Requests": 5 minutes.
CLOCK_TOLERANCE = 300
# Spec, "Authentication Schemes": four bad keys in a row lock the key out for one minute.
LOCKOUT_AFTER = 4
LOCKOUT_SECONDS = 60
# The operations this fake implements; any other valid operation answers 400 FakeNotImplemented.
# The fault kinds of `POST /_control`.
FAULT_KINDS = ("429", "503", "500", "drop-after-commit", "hang", "import-error", "export-fail")
OPERATIONS = {
    "CreateSnapshot",
    "ReadSnapshots",
    "DeleteSnapshot",
    "CreateImage",
    "ReadImages",
    "DeleteImage",
    "UpdateImage",
    "CreateTags",
    "DeleteTags",
    "CreateImageExportTask",
    "ReadImageExportTasks",
    "CreateSnapshotExportTask",
    "ReadSnapshotExportTasks",
}


class ApiError(Exception):
    """An error answer: HTTP status, `Type`, made-up `Code`, `Details`."""

    def __init__(self, status, type_, code, details):
        super().__init__(details)
        self.status = status
        self.type_ = type_
        self.code = code
        self.details = details


def bad_param(details):
    return ApiError(400, "InvalidParameterValue", "4000", details)


def no_resource(details):
    return ApiError(400, "InvalidResource", "5000", details)


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# ---------------------------------------------------------------------------------------------
# Spec and validation
# ---------------------------------------------------------------------------------------------


class Spec:
    """The API description, with Draft 7 validators for `<Op>Request` and `<Op>Response`."""

    def __init__(self, path):
        with open(path, "rb") as f:
            doc = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        self.schemas = doc["components"]["schemas"]
        self.operations = {p.strip("/") for p in doc["paths"]}
        if referencing is not None:
            resource = referencing.Resource(
                contents={"components": doc["components"]},
                specification=referencing.jsonschema.DRAFT7,
            )
            self.refs = {"registry": referencing.Registry().with_resource("urn:osc", resource)}
        else:
            self.refs = {
                "resolver": jsonschema.RefResolver("urn:osc", {"components": doc["components"]})
            }
        self.format_checker = jsonschema.FormatChecker(formats=())
        # `format` is not asserted by Draft 7 validators by default; the spec's int64/int32 and
        # byte formats are checked here (SnapshotSize is int64, NextPageToken is byte).
        self.format_checker.checks("int64")(
            lambda v: not isinstance(v, int) or -(1 << 63) <= v < (1 << 63)
        )
        self.format_checker.checks("int32")(
            lambda v: not isinstance(v, int) or -(1 << 31) <= v < (1 << 31)
        )
        self.format_checker.checks("byte", raises=(binascii.Error, ValueError))(
            lambda v: not isinstance(v, str) or base64.b64decode(v, validate=True) is not None
        )
        self._validators = {}

    def validator(self, name):
        if name not in self._validators:
            self._validators[name] = jsonschema.Draft7Validator(
                {"$ref": "urn:osc#/components/schemas/" + name},
                **self.refs,
                format_checker=self.format_checker,
            )
        return self._validators[name]

    def errors(self, name, value):
        """The schema errors of `value` against schema `name`, as readable strings."""
        out = []
        for e in sorted(self.validator(name).iter_errors(value), key=lambda e: list(e.path)):
            where = "/".join(str(p) for p in e.absolute_path) or "(body)"
            out.append(f"{where}: {e.message}")
        return out


# ---------------------------------------------------------------------------------------------
# SigV4
# ---------------------------------------------------------------------------------------------


def _hmac(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signing_key(secret, date, region, service):
    k = _hmac(("AWS4" + secret).encode(), date)
    k = _hmac(k, region)
    k = _hmac(k, service)
    return _hmac(k, "aws4_request")


def uri_encode(s, encode_slash=False):
    safe = "-_.~" if encode_slash else "-_.~/"
    return urllib.parse.quote(s, safe=safe)


def canonical_uri(path, service):
    # SigV4: each path segment URI-encoded; for every service but s3 the path is encoded twice.
    enc = uri_encode(path)
    if service != "s3":
        enc = uri_encode(enc)
    return enc or "/"


def canonical_query(query):
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    return "&".join(
        f"{uri_encode(k, True)}={uri_encode(v, True)}" for k, v in sorted(pairs)
    )


def canonical_header_value(v):
    return re.sub(r"\s+", " ", v.strip())


AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=([^,\s]+)\s*,\s*SignedHeaders=([^,\s]+)\s*,\s*Signature=([0-9a-f]{64})\s*$"
)


def verify_sigv4(method, path, query, headers, body, creds, region, service, now):
    """Checks a SigV4 `Authorization` header; returns None or the reason for refusing it.

    `headers` is a list of (name, value) as received (a name may repeat)."""
    by_name = {}
    for k, v in headers:
        by_name.setdefault(k.lower(), []).append(v)
    auth = by_name.get("authorization")
    if not auth or len(auth) != 1:
        return "missing Authorization header"
    m = AUTH_RE.match(auth[0].strip())
    if not m:
        return "Authorization is not AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=..."
    credential, signed, signature = m.groups()
    parts = credential.split("/")
    if len(parts) != 5:
        return "bad Credential scope"
    key_id, date, c_region, c_service, term = parts
    if key_id not in creds:
        return f"unknown access key {key_id!r}"
    if c_service != service or term != "aws4_request":
        return f"credential scope service must be {service!r}/aws4_request"
    if c_region != region:
        return f"credential scope region {c_region!r} is not {region!r}"
    signed_list = signed.split(";")
    if signed_list != sorted(set(signed_list)):
        return "SignedHeaders must be sorted, lower-case and unique"
    if "host" not in signed_list or "x-amz-date" not in signed_list:
        return "host and x-amz-date must be signed"
    amz_date = by_name.get("x-amz-date", [""])[0]
    try:
        t = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(
            tzinfo=datetime.timezone.utc
        )
    except ValueError:
        return "bad X-Amz-Date"
    if amz_date[:8] != date:
        return "X-Amz-Date does not match the credential date"
    if abs(t.timestamp() - now) > CLOCK_TOLERANCE:
        return "request time is more than 5 minutes away from the server time"
    payload_hash = hashlib.sha256(body).hexdigest()
    sent_hash = by_name.get("x-amz-content-sha256")
    if sent_hash is not None and sent_hash[0] != payload_hash:
        return "x-amz-content-sha256 does not match the body"
    lines = []
    for h in signed_list:
        if h not in by_name:
            return f"signed header {h!r} is missing"
        lines.append(h + ":" + ",".join(canonical_header_value(v) for v in by_name[h]) + "\n")
    creq = "\n".join(
        [method, canonical_uri(path, service), canonical_query(query), "".join(lines), signed, payload_hash]
    )
    scope = f"{date}/{c_region}/{c_service}/aws4_request"
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
    want = hmac.new(signing_key(creds[key_id], date, c_region, c_service), sts.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, signature):
        return "signature does not match"
    return None


# ---------------------------------------------------------------------------------------------
# Disk content
# ---------------------------------------------------------------------------------------------


def content_digest(path, size):
    """`sha256-4m:` digest (src/digest.rs) of the file at `path`, zero-padded to `size` bytes."""
    outer = hashlib.sha256()
    zero = bytes(DIGEST_BLOCK)
    zero_digest = hashlib.sha256(zero).digest()
    done = 0
    with open(path, "rb") as f:
        while done < size:
            want = min(DIGEST_BLOCK, size - done)
            block = f.read(want)
            if len(block) < want:
                block += b"\0" * (want - len(block))
            # A whole zero block (most of a sparse volume) takes the digest computed once.
            outer.update(zero_digest if block == zero else hashlib.sha256(block).digest())
            done += want
    return "sha256-4m:" + outer.hexdigest()


def import_disk(url, workdir, snapshot_size, timeout=60):
    """Downloads, gunzips and converts one disk. Returns (raw path, virtual size, digest).

    Raises ValueError with the reason the import fails (the snapshot goes to `error`)."""
    gz = os.path.join(workdir, "download")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(gz, "wb") as out:
            shutil.copyfileobj(r, out, 1 << 20)
    except urllib.error.HTTPError as e:
        raise ValueError(f"GET FileLocation: HTTP {e.code}") from e
    except (urllib.error.URLError, OSError) as e:
        raise ValueError(f"GET FileLocation: {e}") from e
    with open(gz, "rb") as f:
        magic = f.read(2)
    # ASSUMPTION (open question 2): the import takes gzip'd objects only, as Outscale's exports are.
    if magic != b"\x1f\x8b":
        raise ValueError("FileLocation is not a gzip file")
    unz = os.path.join(workdir, "unzipped")
    limit = snapshot_size + (64 << 20)  # a qcow2 may hold metadata beyond its virtual size
    try:
        with gzip.open(gz, "rb") as src, open(unz, "wb") as out:
            total = 0
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                total += len(chunk)
                if total > limit:
                    raise ValueError("uncompressed content is larger than SnapshotSize")
                out.write(chunk)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"gunzip: {e}") from e
    os.unlink(gz)
    with open(unz, "rb") as f:
        magic = f.read(4)
    raw = os.path.join(workdir, "disk.raw")
    if magic == b"QFI\xfb":
        p = subprocess.run(
            ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", unz, raw],
            capture_output=True,
            text=True,
        )
        os.unlink(unz)
        if p.returncode != 0:
            raise ValueError(f"qemu-img convert: {p.stderr.strip()}")
    else:
        os.rename(unz, raw)
    size = os.path.getsize(raw)
    # The virtual disk: the content rounded up to a whole sector, as qemu sees it (src/digest.rs).
    vsize = (size + 511) // 512 * 512
    if vsize > snapshot_size:
        raise ValueError(f"disk of {vsize} bytes does not fit SnapshotSize {snapshot_size}")
    return raw, vsize, content_digest(raw, vsize)


# ---------------------------------------------------------------------------------------------
# S3 (the export tasks write into the tests' S3 server, s3s-fs)
# ---------------------------------------------------------------------------------------------


def _s3_scope(key, region, when):
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    return amz_date, f"{amz_date[:8]}/{region}/s3/aws4_request"


def s3_put(endpoint, region, key_id, secret, bucket, key, path):
    """PUTs the file at `path` as `bucket/key` (path style), signed with SigV4 for `s3`."""
    import http.client

    u = urllib.parse.urlsplit(endpoint)
    obj_path = "/" + bucket + "/" + key
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    payload = sha.hexdigest()
    amz_date, scope = _s3_scope(key_id, region, datetime.datetime.now(datetime.timezone.utc))
    headers = {"host": u.netloc, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    names = sorted(headers)
    creq = "\n".join(["PUT", uri_encode(obj_path), "", "".join(f"{n}:{headers[n]}\n" for n in names),
                      ";".join(names), payload])
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
    sig = hmac.new(signing_key(secret, amz_date[:8], region, "s3"), sts.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, SignedHeaders={';'.join(names)}, Signature={sig}"
    )
    headers["content-length"] = str(os.path.getsize(path))
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=120)
    try:
        with open(path, "rb") as f:
            conn.request("PUT", uri_encode(obj_path), body=f, headers=headers)
            r = conn.getresponse()
            text = r.read(4096).decode(errors="replace")
        if r.status != 200:
            raise ValueError(f"PUT {bucket}/{key}: HTTP {r.status} {text[:200]}")
    except OSError as e:
        raise ValueError(f"PUT {bucket}/{key}: {e}") from e
    finally:
        conn.close()


def s3_presign(endpoint, region, key_id, secret, bucket, key, expires=7 * 24 * 3600):
    """A SigV4 query-string pre-signed GET URL of `bucket/key` (path style)."""
    u = urllib.parse.urlsplit(endpoint)
    obj_path = "/" + bucket + "/" + key
    amz_date, scope = _s3_scope(key_id, region, datetime.datetime.now(datetime.timezone.utc))
    q = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{key_id}/{scope}",
        "X-Amz-Date": amz_date,
        "X-Amz-Expires": str(expires),
        "X-Amz-SignedHeaders": "host",
    }
    query = "&".join(f"{uri_encode(k, True)}={uri_encode(v, True)}" for k, v in sorted(q.items()))
    creq = "\n".join(["GET", uri_encode(obj_path), query, f"host:{u.netloc}\n", "host", "UNSIGNED-PAYLOAD"])
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
    sig = hmac.new(signing_key(secret, amz_date[:8], region, "s3"), sts.encode(), hashlib.sha256).hexdigest()
    return f"{u.scheme}://{u.netloc}{uri_encode(obj_path)}?{query}&X-Amz-Signature={sig}"


def export_disk(raw, size, fmt, out):
    """Writes the disk `raw`, zero-extended to `size` bytes, as `out` (gzip'd qcow2 or raw)."""
    if fmt == "raw":
        # Streamed: the content, then zeros, straight into gzip (no full-size temporary file).
        with open(raw, "rb") as src, gzip.open(out, "wb", compresslevel=1) as dst:
            done = 0
            for chunk in iter(lambda: src.read(1 << 20), b""):
                dst.write(chunk)
                done += len(chunk)
            zeros = bytes(1 << 20)
            while done < size:
                n = min(len(zeros), size - done)
                dst.write(zeros[:n])
                done += n
        return
    full = out + ".full"
    with open(raw, "rb") as src, open(full, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.truncate(size)  # sparse zeros up to the volume's size
    q = out + ".qcow2"
    p = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", full, q],
                       capture_output=True, text=True)
    os.unlink(full)
    if p.returncode != 0:
        raise ValueError(f"qemu-img convert: {p.stderr.strip()}")
    with open(q, "rb") as src, gzip.open(out, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.unlink(q)


# ---------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------


class State:
    """Everything the fake API holds, under one lock."""

    def __init__(self, args):
        self.lock = threading.RLock()
        self.args = args
        self.account = args.account_id
        self.snapshots = {}  # id -> dict (API fields + "_" private fields)
        self.images = {}
        self.image_exports = {}
        self.snapshot_exports = {}
        self.counter = 0
        self.calls = {}  # op -> number of authenticated calls
        self.faults = []  # dicts: op, nth, kind, count, seconds
        self.fault_log = []
        self.auth_failures = {}  # key id -> consecutive failures
        self.lockouts = {}  # key id -> unlock time
        self.clock_skew = 0.0
        # The ResultsPerPage of a Read* request without one (`/_control` `page_size`), so that a
        # test can make a client meet NextPageToken with a handful of resources.
        self.page_size = 100
        # Set while an operation runs under an `import-error` fault: the imports it starts fail.
        self.import_error = False
        self.requests = []  # (op, status) of every request, in order
        self.workdir = tempfile.mkdtemp(prefix="fake-oapi-")

    def new_id(self, prefix):
        self.counter += 1
        return f"{prefix}-{self.counter:08x}"

    def dump(self):
        def public(d):
            return {k: v for k, v in d.items()}

        return {
            "Snapshots": [public(s) for s in self.snapshots.values()],
            "Images": [public(i) for i in self.images.values()],
            "ImageExportTasks": [public(t) for t in self.image_exports.values()],
            "SnapshotExportTasks": [public(t) for t in self.snapshot_exports.values()],
            "Calls": dict(self.calls),
            "Requests": list(self.requests),
            "Faults": list(self.faults),
            "FaultLog": list(self.fault_log),
            "AuthFailures": dict(self.auth_failures),
        }

    def save(self):
        if not self.args.state_file:
            return
        tmp = self.args.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.dump(), f, indent=1, sort_keys=True)
        os.replace(tmp, self.args.state_file)


def public_fields(d):
    return {k: v for k, v in d.items() if not k.startswith("_")}


def tag_matches(tags, filters):
    """FiltersImage/FiltersSnapshot Tags ("KEY=VALUE"), TagKeys and TagValues."""
    if "Tags" in filters:
        pairs = {f"{t['Key']}={t['Value']}" for t in tags}
        if not pairs.intersection(filters["Tags"]):
            return False
    if "TagKeys" in filters and not {t["Key"] for t in tags}.intersection(filters["TagKeys"]):
        return False
    if "TagValues" in filters and not {t["Value"] for t in tags}.intersection(filters["TagValues"]):
        return False
    return True


def paginate(items, body, default=100):
    """ResultsPerPage (`default` when absent) and NextPageToken (base64 of an offset, a fake
    format)."""
    start = 0
    if "NextPageToken" in body:
        try:
            start = int(base64.b64decode(body["NextPageToken"]).decode())
        except ValueError as e:
            raise bad_param("NextPageToken: not a token from this server") from e
    # The spec's descriptions (not its schemas) bound ResultsPerPage to 1-1000.
    # ASSUMPTION: 100 when absent, the default the spec states for other Read* operations.
    per = body.get("ResultsPerPage", default)
    if not 1 <= per <= 1000:
        raise bad_param("ResultsPerPage must be between 1 and 1000")
    page = items[start : start + per]
    nxt = None
    if start + per < len(items):
        nxt = base64.b64encode(str(start + per).encode()).decode()
    return page, nxt


# ---------------------------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------------------------


class Api:
    def __init__(self, state):
        self.s = state
        # Set by an `export-fail` fault for the export task being created: it fails after
        # writing its first object, so that a client's cleanup of a failed export is tested.
        self.fail_next_export = False

    # -- snapshots ----------------------------------------------------------------------------

    def CreateSnapshot(self, body):
        s = self.s
        sources = [k for k in ("FileLocation", "SourceSnapshotId", "VolumeId") if k in body]
        if len(sources) != 1:
            raise bad_param("exactly one of FileLocation, SourceSnapshotId, VolumeId is required")
        if "FileLocation" not in body:
            raise ApiError(400, "FakeNotImplemented", "fake", "the fake imports from FileLocation only")
        if "SnapshotSize" not in body:
            # ASSUMPTION: the spec marks SnapshotSize "(when importing from a bucket)", read as required.
            raise ApiError(400, "MissingParameter", "7000", "SnapshotSize is required with FileLocation")
        size = body["SnapshotSize"]
        if size <= 0:
            raise bad_param("SnapshotSize must be positive")
        token = body.get("ClientToken")
        if token is not None:
            for snap in s.snapshots.values():
                if snap.get("ClientToken") == token:
                    # ASSUMPTION (open question 4): a token names one request; the same token with
                    # other parameters is refused, except FileLocation, which a client re-signs per run.
                    same = {k: v for k, v in body.items() if k not in ("FileLocation", "DryRun")}
                    if same != snap["_request"]:
                        raise ApiError(
                            409 if s.args.mismatch_409 else 400,
                            "IdempotentParameterMismatch",
                            "4122",
                            "ClientToken already used with other parameters",
                        )
                    return {"Snapshot": public_fields(snap)}
        sid = s.new_id("snap")
        snap = {
            "AccountId": s.account,
            "CreationDate": now_iso(),
            "Description": body.get("Description", ""),
            "PermissionsToCreateVolume": {"AccountIds": [], "GlobalPermission": False},
            "Progress": 0,
            "SnapshotId": sid,
            "State": "in-queue",
            "Tags": [],
            "VolumeSize": -(-size // GIB),
            "_request": {k: v for k, v in body.items() if k not in ("FileLocation", "DryRun")},
            "_file_location": body["FileLocation"],
            "_import": "running",  # running | done | failed
            "_reason": "",
            "_digest": None,
            "_virtual_size": None,
            "_raw": None,
            "_polls": 0,
        }
        if token is not None:
            snap["ClientToken"] = token
        s.snapshots[sid] = snap
        threading.Thread(target=self._import, args=(sid, body["FileLocation"], size, s.import_error),
                         daemon=True).start()
        return {"Snapshot": public_fields(snap)}

    def _import(self, sid, url, size, fail=False):
        workdir = os.path.join(self.s.workdir, sid)
        os.makedirs(workdir, exist_ok=True)
        try:
            if fail:
                raise ValueError("injected import error")
            raw, vsize, digest = import_disk(url, workdir, size)
            result = ("done", "", raw, vsize, digest)
        except ValueError as e:
            shutil.rmtree(workdir, ignore_errors=True)
            result = ("failed", str(e), None, None, None)
        with self.s.lock:
            snap = self.s.snapshots.get(sid)
            if snap is None:  # deleted meanwhile
                shutil.rmtree(workdir, ignore_errors=True)
                return
            snap["_import"], snap["_reason"], snap["_raw"], snap["_virtual_size"], snap["_digest"] = result
            self.s.save()

    def _advance_snapshot(self, snap):
        """One ReadSnapshots poll: an imported snapshot moves by `--progress-step` percent."""
        if snap["State"] in ("completed", "error"):
            return
        if snap["_import"] == "failed":
            snap["State"] = "error"
            return
        if snap["_import"] == "running":
            # Several state names seen for an import in progress (spec enum and its examples).
            snap["State"] = "pending/queued" if snap["State"] == "in-queue" else "in-queue"
            return
        snap["_polls"] += 1
        snap["Progress"] = min(100, snap["Progress"] + self.s.args.progress_step)
        if snap["Progress"] >= 100:
            snap["State"] = "completed"
        else:
            snap["State"] = "importing" if snap["_polls"] % 2 else "pending"

    SNAPSHOT_FILTERS = {
        "ClientTokens": lambda s, v: s.get("ClientToken") in v,
        "SnapshotIds": lambda s, v: s["SnapshotId"] in v,
        "States": lambda s, v: s["State"] in v,
        "Descriptions": lambda s, v: s["Description"] in v,
        "AccountIds": lambda s, v: s["AccountId"] in v,
        "Progresses": lambda s, v: s["Progress"] in v,
        "VolumeSizes": lambda s, v: s["VolumeSize"] in v,
    }

    def ReadSnapshots(self, body):
        f = body.get("Filters", {})
        for k in f:
            if k not in self.SNAPSHOT_FILTERS and k not in ("Tags", "TagKeys", "TagValues"):
                raise ApiError(400, "FakeNotImplemented", "fake", f"the fake has no filter {k}")
        out = []
        for snap in self.s.snapshots.values():
            self._advance_snapshot(snap)
            if all(fn(snap, f[k]) for k, fn in self.SNAPSHOT_FILTERS.items() if k in f) and tag_matches(
                snap["Tags"], f
            ):
                out.append(public_fields(snap))
        page, nxt = paginate(out, body, self.s.page_size)
        r = {"Snapshots": page}
        if nxt:
            r["NextPageToken"] = nxt
        return r

    def DeleteSnapshot(self, body):
        sid = body["SnapshotId"]
        snap = self.s.snapshots.get(sid)
        if snap is None:
            raise no_resource(f"snapshot {sid} does not exist")
        for img in self.s.images.values():
            if any(m.get("Bsu", {}).get("SnapshotId") == sid for m in img["BlockDeviceMappings"]):
                raise ApiError(400, "InvalidResource", "9059", f"snapshot {sid} is used by {img['ImageId']}")
        del self.s.snapshots[sid]
        shutil.rmtree(os.path.join(self.s.workdir, sid), ignore_errors=True)
        return {}

    # -- images -------------------------------------------------------------------------------

    NAME_RE = re.compile(r"^[A-Za-z0-9_ ()/.\-]{3,128}$")
    # ASSUMPTION: the BSU volume types of the Outscale docs; Iops only (and always) with io1.
    VOLUME_TYPES = {"standard", "gp2", "io1"}

    def CreateImage(self, body):
        s = self.s
        if "SourceImageId" in body or "VmId" in body:
            raise ApiError(400, "FakeNotImplemented", "fake", "the fake registers from snapshots or a manifest only")
        manifest = None
        if "FileLocation" in body:
            manifest = self._fetch_manifest(body)
        name = body.get("ImageName") if manifest is None else body.get("ImageName", manifest["Name"])
        if name is None:
            raise ApiError(400, "MissingParameter", "7000", "ImageName is required")
        # Spec CreateImageRequest.ImageName: "3-128 alphanumeric characters, underscores, spaces,
        # parentheses, slashes, periods, or dashes".
        if not self.NAME_RE.match(name):
            raise bad_param("ImageName: 3-128 characters among A-Z a-z 0-9 _ space ( ) / . -")
        # ASSUMPTION (open question 3): "A unique name" is enforced within the account.
        for img in s.images.values():
            if img["ImageName"] == name:
                raise ApiError(409 if s.args.mismatch_409 else 400, "ResourceConflict", "9008",
                               f"an image named {name!r} exists: {img['ImageId']}")
        if manifest is not None:
            return self._image_from_manifest(body, name, manifest)
        maps = body.get("BlockDeviceMappings")
        root = body.get("RootDeviceName")
        # Spec: BlockDeviceMappings and RootDeviceName are required when registering from snapshots.
        if not maps:
            raise ApiError(400, "MissingParameter", "7000", "BlockDeviceMappings is required")
        if root is None:
            raise ApiError(400, "MissingParameter", "7000", "RootDeviceName is required")
        devices = []
        out_maps = []
        for i, m in enumerate(maps):
            dev = m.get("DeviceName")
            if dev is None:
                raise ApiError(400, "MissingParameter", "7000", f"BlockDeviceMappings/{i}/DeviceName is required")
            if dev in devices:
                raise bad_param(f"device {dev} is mapped twice")
            devices.append(dev)
            om = {"DeviceName": dev}
            if "VirtualDeviceName" in m:
                om["VirtualDeviceName"] = m["VirtualDeviceName"]
            if "Bsu" in m:
                bsu = m["Bsu"]
                sid = bsu.get("SnapshotId")
                if sid is None:
                    raise ApiError(400, "MissingParameter", "7000", f"BlockDeviceMappings/{i}/Bsu/SnapshotId is required")
                snap = s.snapshots.get(sid)
                if snap is None or snap["AccountId"] != s.account:
                    raise no_resource(f"snapshot {sid} does not exist")
                if snap["State"] != "completed":
                    raise ApiError(400, "InvalidState", "6003", f"snapshot {sid} is {snap['State']}, not completed")
                vsize = bsu.get("VolumeSize", snap["VolumeSize"])
                # Spec BsuToCreate.VolumeSize: "must be at least equal to the snapshot size".
                if vsize < snap["VolumeSize"]:
                    raise bad_param(f"BlockDeviceMappings/{i}/Bsu/VolumeSize {vsize} < snapshot's {snap['VolumeSize']}")
                vtype = bsu.get("VolumeType", "standard")
                if vtype not in self.VOLUME_TYPES:
                    raise bad_param(f"BlockDeviceMappings/{i}/Bsu/VolumeType {vtype!r}")
                if ("Iops" in bsu) != (vtype == "io1"):
                    raise bad_param(f"BlockDeviceMappings/{i}/Bsu/Iops goes with io1 volumes only, and io1 needs it")
                ob = {
                    "DeleteOnVmDeletion": bsu.get("DeleteOnVmDeletion", True),
                    "SnapshotId": sid,
                    "VolumeSize": vsize,
                    "VolumeType": vtype,
                }
                if "Iops" in bsu:
                    ob["Iops"] = bsu["Iops"]
                om["Bsu"] = ob
            out_maps.append(om)
        if root not in devices:
            raise bad_param(f"RootDeviceName {root} is not in BlockDeviceMappings")
        root_map = out_maps[devices.index(root)]
        if "Bsu" not in root_map:
            raise bad_param(f"the root device {root} has no Bsu snapshot")
        return {"Image": public_fields(self._new_image(body, name, out_maps, root))}

    def _new_image(self, body, name, out_maps, root, architecture=None, description=None):
        s = self.s
        iid = s.new_id("ami")
        img = {
            "AccountId": s.account,
            "Architecture": body.get("Architecture", architecture or "x86_64"),
            "BlockDeviceMappings": out_maps,
            # ASSUMPTION (open question 9): BootModes honoured as given; legacy when absent.
            "BootModes": body.get("BootModes", ["legacy"]),
            "CreationDate": now_iso(),
            "Description": body.get("Description", description or ""),
            "FileLocation": f"{s.account}/{name}",
            "ImageId": iid,
            "ImageName": name,
            "ImageType": "machine",
            "PermissionsToLaunch": {"AccountIds": [], "GlobalPermission": False},
            "ProductCodes": body.get("ProductCodes", ["0001"]),
            "RootDeviceName": root,
            "RootDeviceType": "bsu",
            "SecureBoot": False,
            "State": "pending",
            "StateComment": {},
            "Tags": [],
            "TpmMandatory": body.get("TpmMandatory", False),
            "_polls": 0,
            "_imports": [],  # snapshots this image imports (registration from a manifest)
        }
        s.images[iid] = img
        return img

    def _fetch_manifest(self, body):
        """GETs CreateImage's FileLocation, an export manifest (src/export/manifest.rs)."""
        if "BlockDeviceMappings" in body or "RootDeviceName" in body:
            # ASSUMPTION: a manifest brings its own mappings; mixing both is refused.
            raise bad_param("FileLocation excludes BlockDeviceMappings and RootDeviceName")
        try:
            with urllib.request.urlopen(body["FileLocation"], timeout=30) as r:
                data = r.read(MAX_BODY + 1)
        except urllib.error.HTTPError as e:
            # ASSUMPTION: an unreadable manifest is refused at once, not left to a failed image.
            raise bad_param(f"FileLocation: HTTP {e.code}") from e
        except (urllib.error.URLError, OSError) as e:
            raise bad_param(f"FileLocation: {e}") from e
        try:
            doc = json.loads(data)
            image = doc["Image"]
            snaps = image["Snapshots"]
            if doc.get("Version") != 1 or not isinstance(snaps, list) or not 1 <= len(snaps) <= 40:
                raise ValueError("Version must be 1, with 1 to 40 snapshots")
            for sn in snaps:
                for k, t in (("Device", str), ("PreSignedUrl", str), ("Size", int), ("VolumeType", str),
                             ("DeleteOnTermination", bool)):
                    if not isinstance(sn.get(k), t):
                        raise ValueError(f"snapshot field {k}")
                if sn["Size"] <= 0:
                    raise ValueError("Size must be positive")
            if not isinstance(image.get("Name"), str) or image.get("Architecture") not in ("x86_64", "i386"):
                raise ValueError("Image Name or Architecture")
        except (ValueError, KeyError, TypeError) as e:
            raise bad_param(f"FileLocation is not an export manifest: {e}") from e
        return image

    def _image_from_manifest(self, body, name, manifest):
        """The manifest's disks become snapshots of the account, imported in the background."""
        s = self.s
        out_maps = []
        sids = []
        for sn in manifest["Snapshots"]:
            sid = s.new_id("snap")
            snap = {
                "AccountId": s.account,
                "CreationDate": now_iso(),
                "Description": f"imported for {name}",
                "PermissionsToCreateVolume": {"AccountIds": [], "GlobalPermission": False},
                "Progress": 0,
                "SnapshotId": sid,
                "State": "in-queue",
                "Tags": [],
                "VolumeSize": -(-sn["Size"] // GIB),
                "_request": {},
                "_file_location": sn["PreSignedUrl"],
                "_import": "running",
                "_reason": "",
                "_digest": None,
                "_virtual_size": None,
                "_raw": None,
                "_polls": 0,
            }
            s.snapshots[sid] = snap
            sids.append(sid)
            bsu = {"DeleteOnVmDeletion": sn["DeleteOnTermination"], "SnapshotId": sid,
                   "VolumeSize": snap["VolumeSize"], "VolumeType": sn["VolumeType"]}
            if sn.get("Iops") is not None:
                bsu["Iops"] = sn["Iops"]
            out_maps.append({"DeviceName": sn["Device"], "Bsu": bsu})
            threading.Thread(target=self._import, args=(sid, sn["PreSignedUrl"], sn["Size"], s.import_error),
                             daemon=True).start()
        # The root device is the first snapshot's (src/export/manifest.rs: "root first").
        img = self._new_image(body, name, out_maps, manifest["Snapshots"][0]["Device"],
                              manifest["Architecture"], manifest.get("Description"))
        img["_imports"] = sids
        img["ProductCodes"] = body.get("ProductCodes", manifest.get("ProductTypes") or ["0001"])
        return {"Image": public_fields(img)}

    def _advance_image(self, img):
        if img["State"] != "pending":
            return
        snaps = [self.s.snapshots.get(sid) for sid in img["_imports"]]
        failed = [sn for sn in snaps if sn is None or sn["_import"] == "failed"]
        if failed:
            img["State"] = "failed"
            reason = "; ".join(sn["_reason"] if sn else "snapshot deleted" for sn in failed)
            img["StateComment"] = {"StateCode": "Client.ImportFailed", "StateMessage": reason}
            for sn in snaps:
                if sn is not None and sn["_import"] == "failed":
                    sn["State"] = "error"
            return
        if any(sn["_import"] == "running" for sn in snaps):
            return
        for sn in snaps:
            sn["State"], sn["Progress"] = "completed", 100
        img["_polls"] += 1
        if img["_polls"] >= self.s.args.image_polls:
            img["State"] = "available"

    IMAGE_FILTERS = {
        "ImageIds": lambda i, v: i["ImageId"] in v,
        "ImageNames": lambda i, v: i["ImageName"] in v,
        "States": lambda i, v: i["State"] in v,
        "AccountIds": lambda i, v: i["AccountId"] in v,
        "Architectures": lambda i, v: i["Architecture"] in v,
        "Descriptions": lambda i, v: i["Description"] in v,
        "RootDeviceNames": lambda i, v: i["RootDeviceName"] in v,
        "BootModes": lambda i, v: bool(set(i["BootModes"]) & set(v)),
        "BlockDeviceMappingSnapshotIds": lambda i, v: any(
            m.get("Bsu", {}).get("SnapshotId") in v for m in i["BlockDeviceMappings"]
        ),
        "BlockDeviceMappingDeviceNames": lambda i, v: any(m["DeviceName"] in v for m in i["BlockDeviceMappings"]),
        "PermissionsToLaunchGlobalPermission": lambda i, v: i["PermissionsToLaunch"]["GlobalPermission"] == v,
        "PermissionsToLaunchAccountIds": lambda i, v: bool(set(i["PermissionsToLaunch"]["AccountIds"]) & set(v)),
    }

    def ReadImages(self, body):
        f = body.get("Filters", {})
        for k in f:
            if k not in self.IMAGE_FILTERS and k not in ("Tags", "TagKeys", "TagValues"):
                raise ApiError(400, "FakeNotImplemented", "fake", f"the fake has no filter {k}")
        out = []
        for img in self.s.images.values():
            self._advance_image(img)
            if all(fn(img, f[k]) for k, fn in self.IMAGE_FILTERS.items() if k in f) and tag_matches(img["Tags"], f):
                out.append(public_fields(img))
        page, nxt = paginate(out, body, self.s.page_size)
        r = {"Images": page}
        if nxt:
            r["NextPageToken"] = nxt
        return r

    def DeleteImage(self, body):
        iid = body["ImageId"]
        if iid not in self.s.images:
            raise no_resource(f"image {iid} does not exist")
        del self.s.images[iid]
        return {}

    def UpdateImage(self, body):
        iid = body["ImageId"]
        img = self.s.images.get(iid)
        if img is None:
            raise no_resource(f"image {iid} does not exist")
        if "Description" in body:
            img["Description"] = body["Description"]
        if "ProductCodes" in body:
            img["ProductCodes"] = body["ProductCodes"]
        perms = body.get("PermissionsToLaunch")
        if perms is not None:
            # Spec PermissionsOnResourceCreation: "Specify either the Additions or the Removals".
            if ("Additions" in perms) == ("Removals" in perms):
                raise bad_param("PermissionsToLaunch: specify either Additions or Removals")
            p = img["PermissionsToLaunch"]
            if "Additions" in perms:
                a = perms["Additions"]
                p["AccountIds"] = sorted(set(p["AccountIds"]) | set(a.get("AccountIds", [])))
                if a.get("GlobalPermission"):
                    p["GlobalPermission"] = True
            else:
                r = perms["Removals"]
                p["AccountIds"] = sorted(set(p["AccountIds"]) - set(r.get("AccountIds", [])))
                if r.get("GlobalPermission"):
                    p["GlobalPermission"] = False
        return {"Image": public_fields(img)}

    # -- tags ---------------------------------------------------------------------------------

    def _resource(self, rid):
        res = self.s.snapshots.get(rid) or self.s.images.get(rid)
        if res is None:
            raise no_resource(f"resource {rid} does not exist")
        return res

    def CreateTags(self, body):
        # Spec ResourceTag: Key 1-255 characters, Value 0-255.
        for t in body["Tags"]:
            if not 1 <= len(t["Key"]) <= 255 or len(t["Value"]) > 255:
                raise bad_param("Tags: Key must be 1-255 characters, Value 0-255")
        resources = [self._resource(r) for r in body["ResourceIds"]]
        for res in resources:
            for t in body["Tags"]:
                res["Tags"] = [x for x in res["Tags"] if x["Key"] != t["Key"]] + [
                    {"Key": t["Key"], "Value": t["Value"]}
                ]
        return {}

    def DeleteTags(self, body):
        resources = [self._resource(r) for r in body["ResourceIds"]]
        for res in resources:
            for t in body["Tags"]:
                # ASSUMPTION: an empty Value deletes the key whatever its value (AWS's convention).
                res["Tags"] = [
                    x for x in res["Tags"] if not (x["Key"] == t["Key"] and t["Value"] in ("", x["Value"]))
                ]
        return {}


    # -- export tasks -------------------------------------------------------------------------

    def _osu(self, osu):
        """Checks OsuExport; returns (format, bucket, prefix, key id, secret)."""
        fmt = osu["DiskImageFormat"]
        # Spec OsuExportToCreate.DiskImageFormat: "qcow2 | raw", described but not an enum.
        if fmt not in ("qcow2", "raw"):
            raise bad_param(f"OsuExport/DiskImageFormat {fmt!r}: qcow2 or raw")
        if not self.s.args.s3_endpoint:
            raise ApiError(400, "FakeNotImplemented", "fake", "the fake was started without --s3-endpoint")
        key = osu.get("OsuApiKey", {})
        # ASSUMPTION (open question 8): without OsuApiKey, the API writes with the caller's rights;
        # the fake uses the S3 server's keys given on its command line.
        return (fmt, osu["OsuBucket"], osu.get("OsuPrefix", ""),
                key.get("ApiKeyId", self.s.args.s3_access_key), key.get("SecretKey", self.s.args.s3_secret_key))

    def CreateImageExportTask(self, body):
        s = self.s
        iid = body["ImageId"]
        img = s.images.get(iid)
        if img is None or img["AccountId"] != s.account:
            raise no_resource(f"image {iid} does not exist")
        if img["State"] != "available":
            raise ApiError(400, "InvalidState", "6003", f"image {iid} is {img['State']}")
        perms = img["PermissionsToLaunch"]
        # Spec CreateImageExportTask: "You cannot export a shared or public OMI".
        if perms["GlobalPermission"] or perms["AccountIds"]:
            raise bad_param(f"image {iid} is shared or public and cannot be exported")
        fmt, bucket, prefix, kid, secret = self._osu(body["OsuExport"])
        out_prefix = (prefix.rstrip("/") + "/" if prefix else "") + iid + "/"
        tid = s.new_id("image-export")
        task = {
            "Comment": f"Export of image {iid}",
            "ImageId": iid,
            "OsuExport": {"DiskImageFormat": fmt, "OsuBucket": bucket, "OsuPrefix": out_prefix},
            "Progress": 0,
            "State": "pending/queued",
            "Tags": [],
            "TaskId": tid,
            "_result": None,
            "_objects": [],
            "_polls": 0,
        }
        disks = []
        for m in img["BlockDeviceMappings"]:
            snap = s.snapshots.get(m.get("Bsu", {}).get("SnapshotId"))
            if snap is None or snap["_raw"] is None:
                raise ApiError(400, "InvalidState", "6003", f"{iid}: snapshot of {m['DeviceName']} has no content")
            disks.append((m, snap))
        s.image_exports[tid] = task
        fail, self.fail_next_export = self.fail_next_export, False
        manifest = {
            "Version": 1,
            "Image": {
                "Name": img["ImageName"],
                "Architecture": img["Architecture"],
                "Type": "machine",
                "ProductTypes": img["ProductCodes"],
                "Public": False,
                "Snapshots": [],
            },
        }
        if img["Description"]:
            manifest["Image"]["Description"] = img["Description"]
        job = [(m["DeviceName"], snap["_raw"], self._export_size(m["Bsu"]["VolumeSize"], snap), m["Bsu"])
               for m, snap in disks]
        threading.Thread(target=self._export_image, args=(tid, job, manifest, fmt, bucket, out_prefix, kid, secret, fail),
                         daemon=True).start()
        return {"ImageExportTask": public_fields(task)}

    def _export_size(self, volume_gib, snap):
        # ASSUMPTION: an export holds the whole volume (VolumeSize GiB, the tail zero); with
        # `--export-size virtual`, only the imported disk (its digest then survives a round trip).
        return snap["_virtual_size"] if self.s.args.export_size == "virtual" else volume_gib * GIB

    def _export_image(self, tid, job, manifest, fmt, bucket, prefix, kid, secret, fail=False):
        a = self.s.args
        work = tempfile.mkdtemp(dir=self.s.workdir)
        objects = []
        try:
            # The root device first (src/export/manifest.rs).
            for dev, raw, size, bsu in job:
                name = dev.rsplit("/", 1)[-1] + f".{fmt}.gz"
                out = os.path.join(work, name)
                export_disk(raw, size, fmt, out)
                s3_put(a.s3_endpoint, a.s3_region, kid, secret, bucket, prefix + name, out)
                os.unlink(out)
                objects.append(prefix + name)
                if fail:
                    raise ValueError(f"injected fault: the export failed after writing {prefix + name}")
                manifest["Image"]["Snapshots"].append({
                    "DeleteOnTermination": bsu["DeleteOnVmDeletion"],
                    "Device": dev,
                    "Filename": name,
                    "Iops": bsu.get("Iops"),
                    "PreSignedUrl": s3_presign(a.s3_endpoint, a.s3_region, kid, secret, bucket, prefix + name),
                    "Size": bsu["VolumeSize"] * GIB,
                    "VolumeType": bsu["VolumeType"],
                })
            mpath = os.path.join(work, "manifest.json")
            with open(mpath, "w") as f:
                json.dump(manifest, f, indent=2)
                f.write("\n")
            s3_put(a.s3_endpoint, a.s3_region, kid, secret, bucket, prefix + "manifest.json", mpath)
            objects.append(prefix + "manifest.json")
            url = s3_presign(a.s3_endpoint, a.s3_region, kid, secret, bucket, prefix + "manifest.json")
            result = ("completed", url)
        except (ValueError, OSError) as e:
            result = ("failed", str(e))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        with self.s.lock:
            task = self.s.image_exports.get(tid)
            if task is not None:
                task["_result"], task["_objects"] = result, objects
            self.s.save()

    def CreateSnapshotExportTask(self, body):
        s = self.s
        sid = body["SnapshotId"]
        snap = s.snapshots.get(sid)
        if snap is None or snap["AccountId"] != s.account:
            raise no_resource(f"snapshot {sid} does not exist")
        if snap["State"] != "completed" or snap["_raw"] is None:
            raise ApiError(400, "InvalidState", "6003", f"snapshot {sid} is {snap['State']}")
        fmt, bucket, prefix, kid, secret = self._osu(body["OsuExport"])
        tid = s.new_id("snap-export")
        task = {
            "Comment": f"Export of snapshot {sid}",
            "OsuExport": {"DiskImageFormat": fmt, "OsuBucket": bucket, "OsuPrefix": prefix},
            "Progress": 0,
            "SnapshotId": sid,
            "State": "pending",
            "Tags": [],
            "TaskId": tid,
            "_result": None,
            "_objects": [],
            "_polls": 0,
        }
        s.snapshot_exports[tid] = task
        fail, self.fail_next_export = self.fail_next_export, False
        # ASSUMPTION (open question 8): the object is PREFIX/snap-….FORMAT.gz.
        key = (prefix.rstrip("/") + "/" if prefix else "") + f"{sid}.{fmt}.gz"
        size = self._export_size(snap["VolumeSize"], snap)
        threading.Thread(target=self._export_snapshot, args=(tid, snap["_raw"], size, fmt, bucket, key, kid, secret, fail),
                         daemon=True).start()
        return {"SnapshotExportTask": public_fields(task)}

    def _export_snapshot(self, tid, raw, size, fmt, bucket, key, kid, secret, fail=False):
        a = self.s.args
        work = tempfile.mkdtemp(dir=self.s.workdir)
        objects = []
        try:
            out = os.path.join(work, "disk.gz")
            export_disk(raw, size, fmt, out)
            s3_put(a.s3_endpoint, a.s3_region, kid, secret, bucket, key, out)
            objects.append(key)
            if fail:
                raise ValueError(f"injected fault: the export failed after writing {key}")
            result = ("completed", None)
        except (ValueError, OSError) as e:
            result = ("failed", str(e))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        with self.s.lock:
            task = self.s.snapshot_exports.get(tid)
            if task is not None:
                task["_result"], task["_objects"] = result, objects
            self.s.save()

    def _advance_task(self, task):
        """One poll: `pending/queued` -> `pending` (progress) -> `completed` or `failed`."""
        if task["State"] in ("completed", "failed", "cancelled"):
            return
        if task["_result"] is None:
            task["State"] = "pending/queued" if "ImageId" in task else "pending"
            return
        kind, what = task["_result"]
        if kind == "failed":
            task["State"], task["Comment"] = "failed", what
            return
        task["_polls"] += 1
        task["Progress"] = min(100, task["Progress"] + self.s.args.progress_step)
        task["State"] = "pending" if "ImageId" in task else "active"
        if task["Progress"] >= 100:
            task["State"] = "completed"
            if "ImageId" in task and what:
                task["OsuExport"]["OsuManifestUrl"] = what

    def _read_tasks(self, tasks, body, key, id_field, id_filter):
        f = body.get("Filters", {})
        out = []
        for t in tasks.values():
            self._advance_task(t)
            if "TaskIds" in f and t["TaskId"] not in f["TaskIds"]:
                continue
            if id_filter in f and t[id_field] not in f[id_filter]:
                continue
            out.append(public_fields(t))
        page, nxt = paginate(out, body, self.s.page_size)
        r = {key: page}
        if nxt:
            r["NextPageToken"] = nxt
        return r

    def ReadImageExportTasks(self, body):
        return self._read_tasks(self.s.image_exports, body, "ImageExportTasks", "ImageId", "ImageIds")

    def ReadSnapshotExportTasks(self, body):
        return self._read_tasks(self.s.snapshot_exports, body, "SnapshotExportTasks", "SnapshotId", "SnapshotIds")


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-oapi/1.40.1"

    def log_message(self, fmt, *args):
        if self.server.args.verbose:
            sys.stderr.write("fake-oapi: " + (fmt % args) + "\n")

    # -- helpers ------------------------------------------------------------------------------

    def _send(self, status, obj):
        data = json.dumps(obj).encode()
        self._record(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, e, request_id):
        body = {
            "Errors": [{"Code": e.code, "Details": e.details, "Type": e.type_}],
            "ResponseContext": {"RequestId": request_id},
        }
        self._send(e.status, body)
        return e.status

    def _record(self, status):
        """Logs an API request and saves the state before its answer leaves, so that a test that
        reads the state file after an answer sees that request."""
        op = getattr(self, "_api_op", None)
        if op is None:
            return
        self._api_op = None
        st = self.server.state
        with st.lock:
            st.requests.append([op, status])
            st.save()

    def _drop(self):
        self._record(0)
        self.close_connection = True
        try:
            self.connection.shutdown(2)
        except OSError:
            pass

    def _read_body(self):
        n = self.headers.get("Content-Length")
        if n is None or not n.isdigit() or int(n) > MAX_BODY:
            raise ApiError(400, "InvalidParameterValue", "4000", "Content-Length missing or too large")
        return self.rfile.read(int(n))

    # -- control ------------------------------------------------------------------------------

    def do_GET(self):
        st = self.server.state
        if self.path == "/_control/state":
            with st.lock:
                self._send(200, st.dump())
        else:
            self._send(404, {"error": "not found"})

    def _control(self):
        st = self.server.state
        try:
            body = json.loads(self._read_body() or b"{}")
            if not isinstance(body, dict) or not all(isinstance(f, dict) and "op" in f for f in body.get("faults", [])):
                raise ValueError("want {faults: [{op, kind, nth?, count?, seconds?}], clear?, unlock?, clock_skew?, page_size?}")
        except (ValueError, ApiError) as e:
            self._send(400, {"error": str(e)})
            return
        with st.lock:
            if body.get("clear"):
                st.faults.clear()
            for f in body.get("faults", []):
                if f.get("kind") not in FAULT_KINDS:
                    self._send(400, {"error": f"bad fault kind {f.get('kind')!r}"})
                    return
                if f["kind"] == "import-error" and f["op"] not in ("CreateSnapshot", "CreateImage"):
                    self._send(400, {"error": "import-error applies to CreateSnapshot or CreateImage"})
                    return
                # `nth`: the first call it applies to, counted from now (1 = the next call).
                f = dict(f)
                f["_from"] = st.calls.get(f["op"], 0) + f.get("nth", 1)
                f.setdefault("count", 1)
                st.faults.append(f)
            if "clock_skew" in body:
                st.clock_skew = float(body["clock_skew"])
            if "page_size" in body:
                if not isinstance(body["page_size"], int) or not 1 <= body["page_size"] <= 1000:
                    self._send(400, {"error": "page_size: 1 to 1000"})
                    return
                st.page_size = body["page_size"]
            if body.get("unlock"):
                st.lockouts.clear()
                st.auth_failures.clear()
            self._send(200, {"ok": True, "faults": st.faults})

    def _take_fault(self, op, nth):
        st = self.server.state
        for f in st.faults:
            if f["op"] in (op, "*") and f["count"] > 0 and nth >= f["_from"]:
                f["count"] -= 1
                st.fault_log.append({"op": op, "call": nth, "kind": f["kind"]})
                return f
        return None

    # -- API ----------------------------------------------------------------------------------

    def do_POST(self):
        if self.path.split("?")[0] == "/_control":
            return self._control()
        st = self.server.state
        args = self.server.args
        request_id = str(uuid.uuid4())
        path, _, query = self.path.partition("?")
        op = path[len("/api/v1/"):] if path.startswith("/api/v1/") else None
        self._api_op = op or path
        try:
            self._post(st, args, request_id, path, query, op)
        except Exception as e:  # a fake bug: say so loudly rather than drop the connection
            import traceback

            traceback.print_exc()
            self._error(ApiError(500, "FakeBug", "fake", f"{type(e).__name__}: {e}"), request_id)

    def _post(self, st, args, request_id, path, query, op):
        try:
            body_bytes = self._read_body()
        except ApiError as e:
            return self._error(e, request_id)
        # 1. Authentication, before anything else looks at the request.
        now = time.time() + st.clock_skew
        with st.lock:
            key = _credential_key(self.headers.get("Authorization", ""))
            if key in st.lockouts and st.lockouts[key] > now:
                return self._error(ApiError(401, "AccessDenied", "1", "access key locked out after failed attempts"), request_id)
            why = verify_sigv4(
                "POST", path, query, list(self.headers.items()), body_bytes,
                {args.access_key: args.secret_key}, args.region, "oapi", now,
            )
            if why is not None:
                if key:
                    st.auth_failures[key] = st.auth_failures.get(key, 0) + 1
                    if st.auth_failures[key] >= LOCKOUT_AFTER:
                        st.lockouts[key] = now + LOCKOUT_SECONDS
                return self._error(ApiError(401, "AuthFailure", "4", why), request_id)
            st.auth_failures[key] = 0
        # 2. The operation and its body.
        spec = self.server.spec
        if op is None or op not in spec.operations:
            return self._error(ApiError(404, "InvalidAction", "12000", f"no operation at {path}"), request_id)
        try:
            body = json.loads(body_bytes or b"{}")
        except ValueError as e:
            return self._error(bad_param(f"body is not JSON: {e}"), request_id)
        errs = spec.errors(op + "Request", body)
        if errs:
            unknown = any("Additional properties" in e for e in errs)
            t = "UnknownParameter" if unknown else "InvalidParameterValue"
            return self._error(ApiError(400, t, "3001" if unknown else "4000", "; ".join(errs)), request_id)
        if op not in OPERATIONS:
            return self._error(ApiError(400, "FakeNotImplemented", "fake", f"the fake has no {op}"), request_id)
        # 3. Faults and the operation itself.
        with st.lock:
            nth = st.calls.get(op, 0) + 1
            st.calls[op] = nth
            fault = self._take_fault(op, nth)
        if fault and fault["kind"] in ("429", "503", "500"):
            types = {"429": "RequestLimitExceeded", "503": "ServiceUnavailable", "500": "InternalError"}
            # ASSUMPTION (open question 7): throttling is 429 RequestLimitExceeded; 503 is the gateway's.
            return self._error(ApiError(int(fault["kind"]), types[fault["kind"]], "fault", "injected fault"), request_id)
        if fault and fault["kind"] == "hang":
            time.sleep(float(fault.get("seconds", 30)))
            self._drop()
            return 0
        with st.lock:
            try:
                if body.get("DryRun"):
                    result = {}
                else:
                    # `export-fail`: the export task this call creates fails after its first
                    # object (the call itself succeeds).
                    self.server.api.fail_next_export = bool(fault and fault["kind"] == "export-fail")
                    st.import_error = bool(fault and fault["kind"] == "import-error")
                    result = getattr(self.server.api, op)(body)
            except ApiError as e:
                return self._error(e, request_id)
            finally:
                st.import_error = False
            result = dict(result)
            result["ResponseContext"] = {"RequestId": request_id}
            st.save()
        bad = spec.errors(op + "Response", result)
        if bad:
            sys.stderr.write(f"fake-oapi: BUG: {op} answer breaks {op}Response: {bad}\n")
            return self._error(ApiError(500, "FakeBug", "fake", "; ".join(bad)), request_id)
        if fault and fault["kind"] == "drop-after-commit":
            self._drop()
            return 0
        self._send(200, result)
        return 200


def _credential_key(auth):
    m = re.search(r"Credential=([^/,\s]+)/", auth)
    return m.group(1) if m else ""


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, args, spec):
        super().__init__(("127.0.0.1", 0), Handler)
        self.args = args
        self.spec = spec
        self.state = State(args)
        self.api = Api(self.state)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--access-key", default="AKFAKE0000000000000")
    p.add_argument("--secret-key", default="fake-secret-key")
    p.add_argument("--region", default="eu-west-2")
    p.add_argument("--account-id", default="123456789012")
    p.add_argument("--spec", default=DEFAULT_SPEC)
    p.add_argument("--state-file", help="a JSON dump of the state, rewritten on each change")
    p.add_argument("--progress-step", type=int, default=50, help="percent per ReadSnapshots poll")
    p.add_argument("--image-polls", type=int, default=2, help="ReadImages polls an image is pending")
    p.add_argument("--mismatch-409", action="store_true", help="answer conflicts with 409, not 400")
    p.add_argument("--s3-endpoint", help="the S3 server export tasks write to (http://127.0.0.1:PORT)")
    p.add_argument("--s3-region", default="us-east-1")
    p.add_argument("--s3-access-key", default="mkomi-test-key")
    p.add_argument("--s3-secret-key", default="mkomi-test-secret-5f1c09b2")
    p.add_argument("--export-size", choices=("volume", "virtual"), default="volume",
                   help="exported disks hold the whole volume (default) or only the imported disk")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--validate", metavar="FILE", help="validate request bodies and exit")
    p.add_argument("--self-test", action="store_true")
    return p.parse_args(argv)


def validate_file(spec, path):
    with open(path) as f:
        items = json.load(f)
    ok = True
    for i, item in enumerate(items):
        errs = spec.errors(item["Operation"] + "Request", item["Body"])
        for e in errs:
            print(f"{i} {item['Operation']}: {e}")
            ok = False
    return 0 if ok else 1


def main(argv):
    args = parse_args(argv)
    if args.self_test:
        import unittest

        sys.path.insert(0, HERE)
        suite = unittest.defaultTestLoader.loadTestsFromName("test_fake_api")
        r = unittest.TextTestRunner(verbosity=2).run(suite)
        return 0 if r.wasSuccessful() else 1
    spec = Spec(args.spec)
    if args.validate:
        return validate_file(spec, args.validate)
    srv = Server(args, spec)
    print(f"PORT {srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        shutil.rmtree(srv.state.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
