"""Self-test of tests/oapi/fake_api.py: `python3 -m unittest tests/oapi/test_fake_api.py -v`
(or `python3 tests/oapi/fake_api.py --self-test`).

The fake runs as a subprocess, as the Rust tests will run it; requests are signed by the stdlib
SigV4 client below, written from the AWS SigV4 description independently of the fake's verifier.
Every answer is checked against the spec: 200s against `<Op>Response`, errors against
`ErrorResponse`. Disk contents are served by a local `http.server`, as s3s-fs serves pre-signed
objects in the real tests.
"""

import datetime
import functools
import gzip
import hashlib
import hmac
import http.client
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fake_api  # noqa: E402  (for its Spec loader only: the signer below is separate)

KEY = "AKTEST0000000000000001"
SECRET = "test-secret/with+chars"
REGION = "eu-west-2"
GIB = 1 << 30
# tests/common/s3_server.rs.
S3_KEY = "mkomi-test-key"
S3_SECRET = "mkomi-test-secret-5f1c09b2"
S3_BUCKET = "mkomi-test"


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port, seconds=10):
    import socket

    end = time.time() + seconds
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def sigv4_headers(host, path, body, key=KEY, secret=SECRET, region=REGION, service="oapi",
                  when=None, content_sha=False, sign_content_type=True):
    """Headers of a SigV4-signed `POST path` with JSON `body` bytes."""
    when = when or datetime.datetime.now(datetime.timezone.utc)
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    payload = hashlib.sha256(body).hexdigest()
    headers = {"host": host, "x-amz-date": amz_date}
    if sign_content_type:
        headers["content-type"] = "application/json"
    if content_sha:
        headers["x-amz-content-sha256"] = payload
    names = sorted(headers)
    canonical = "\n".join([
        "POST",
        path,  # /api/v1/Op has nothing to encode
        "",
        "".join(f"{n}:{headers[n]}\n" for n in names),
        ";".join(names),
        payload,
    ])
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders={';'.join(names)}, Signature={sig}"
    )
    headers.setdefault("content-type", "application/json")
    return headers


def digest_of(data):
    """sha256-4m of `data` zero-padded to a whole sector (src/digest.rs)."""
    data = data + b"\0" * (-len(data) % 512)
    outer = hashlib.sha256()
    for i in range(0, len(data), 4 << 20):
        outer.update(hashlib.sha256(data[i:i + (4 << 20)]).digest())
    return "sha256-4m:" + outer.hexdigest()


class FakeApiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.spec = fake_api.Spec(fake_api.DEFAULT_SPEC)
        cls.tmp = tempfile.mkdtemp(prefix="fake-oapi-test-")
        cls.s3 = None
        s3_args = []
        s3s = shutil.which("s3s-fs") or os.path.expanduser("~/.cargo/bin/s3s-fs")
        if os.path.isfile(s3s) and shutil.which("qemu-img"):
            # The tests' S3 server (tests/common/s3_server.rs): its keys, one bucket.
            root = os.path.join(cls.tmp, "s3")
            os.makedirs(os.path.join(root, S3_BUCKET))
            s3_port = _free_port()
            cls.s3 = subprocess.Popen(
                [s3s, "--host", "127.0.0.1", "--port", str(s3_port), "--access-key", S3_KEY,
                 "--secret-key", S3_SECRET, root], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _wait_port(s3_port)
            cls.s3_endpoint = f"http://127.0.0.1:{s3_port}"
            s3_args = ["--s3-endpoint", cls.s3_endpoint, "--s3-access-key", S3_KEY, "--s3-secret-key", S3_SECRET]
        cls.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "fake_api.py"), "--access-key", KEY, "--secret-key",
             SECRET, "--region", REGION, "--progress-step", "40", "--image-polls", "2",
             "--state-file", os.path.join(cls.tmp, "state.json")] + s3_args,
            stdout=subprocess.PIPE, text=True,
        )
        line = cls.proc.stdout.readline()
        assert line.startswith("PORT "), line
        cls.port = int(line.split()[1])
        cls.host = f"127.0.0.1:{cls.port}"
        files = os.path.join(cls.tmp, "files")
        os.makedirs(files)
        cls.files = files
        handler = functools.partial(_QuietHandler, directory=files)
        cls.fileserver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=cls.fileserver.serve_forever, daemon=True).start()
        cls.file_url = f"http://127.0.0.1:{cls.fileserver.server_address[1]}/"

    @classmethod
    def tearDownClass(cls):
        cls.fileserver.shutdown()
        cls.proc.terminate()
        cls.proc.wait(10)
        cls.proc.stdout.close()
        if cls.s3:
            cls.s3.terminate()
            cls.s3.wait(10)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    # -- helpers ------------------------------------------------------------------------------

    def raw(self, method, path, body=b"", headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, json.loads(r.read() or b"null")
        finally:
            c.close()

    def call(self, op, body, **sign):
        """Signs and sends `op`; checks the answer against the spec; returns (status, json)."""
        data = json.dumps(body).encode()
        path = "/api/v1/" + op
        status, answer = self.raw("POST", path, data, sigv4_headers(self.host, path, data, **sign))
        schema = op + "Response" if status == 200 else "ErrorResponse"
        self.assertEqual(self.spec.errors(schema, answer), [], f"{op} answer {answer}")
        if status != 200:
            self.assertTrue(answer["ResponseContext"]["RequestId"])
        return status, answer

    def ok(self, op, body):
        status, answer = self.call(op, body)
        self.assertEqual(status, 200, answer)
        return answer

    def control(self, body):
        status, answer = self.raw("POST", "/_control", json.dumps(body).encode(),
                                  {"content-type": "application/json"})
        self.assertEqual(status, 200, answer)

    def state(self):
        return self.raw("GET", "/_control/state")[1]

    def serve(self, name, content):
        with open(os.path.join(self.files, name), "wb") as f:
            f.write(content)
        return self.file_url + name

    def disk(self, size, seed):
        # Non-zero, non-repeating content, so a wrong block or a wrong order changes the digest.
        out = bytearray()
        i = 0
        while len(out) < size:
            out += hashlib.sha256(f"{seed}-{i}".encode()).digest() * 128
            i += 1
        return bytes(out[:size])

    def wait_snapshot(self, sid, want=("completed", "error"), polls=200):
        seen = []
        for _ in range(polls):
            snaps = self.ok("ReadSnapshots", {"Filters": {"SnapshotIds": [sid]}})["Snapshots"]
            self.assertEqual(len(snaps), 1)
            seen.append((snaps[0]["State"], snaps[0]["Progress"]))
            if snaps[0]["State"] in want:
                return snaps[0], seen
            time.sleep(0.02)
        self.fail(f"snapshot {sid} never reached {want}: {seen[-5:]}")

    def import_snapshot(self, content, name, token=None, size=GIB):
        url = self.serve(name, gzip.compress(content, 1))
        body = {"FileLocation": url, "SnapshotSize": size, "Description": name}
        if token:
            body["ClientToken"] = token
        return self.ok("CreateSnapshot", body)["Snapshot"], body

    # -- signatures ---------------------------------------------------------------------------

    def test_good_signature_accepted(self):
        self.assertIn("Snapshots", self.ok("ReadSnapshots", {}))
        # The SDK's form (host;x-amz-date only) and object_store's (x-amz-content-sha256 signed).
        self.assertEqual(self.call("ReadImages", {}, sign_content_type=False)[0], 200)
        self.assertEqual(self.call("ReadImages", {}, content_sha=True)[0], 200)

    def test_botocore_signer_accepted(self):
        # A second, widely used SigV4 implementation as an oracle for the verifier (not in CI).
        try:
            from botocore.auth import SigV4Auth
            from botocore.awsrequest import AWSRequest
            from botocore.credentials import Credentials
        except ImportError:
            self.skipTest("botocore not installed")
        for secret, want in ((SECRET, 200), ("wrong", 401)):
            data = b'{"Filters":{"States":["completed"]}}'
            req = AWSRequest("POST", f"http://{self.host}/api/v1/ReadSnapshots", data=data,
                             headers={"Content-Type": "application/json"})
            SigV4Auth(Credentials(KEY, secret), "oapi", REGION).add_auth(req)
            status, _ = self.raw("POST", "/api/v1/ReadSnapshots", data, dict(req.headers.items()))
            self.assertEqual(status, want)
        self.control({"unlock": True})

    def test_bad_signatures_401(self):
        try:
            status, a = self.call("ReadSnapshots", {}, secret="wrong")
            self.assertEqual((status, a["Errors"][0]["Type"]), (401, "AuthFailure"))
            self.assertIn("signature", a["Errors"][0]["Details"])
            for kw in ({"region": "us-east-2"}, {"service": "s3"}, {"key": "AKUNKNOWN"}):
                self.assertEqual(self.call("ReadSnapshots", {}, **kw)[0], 401, kw)
            late = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=6)
            self.assertEqual(self.call("ReadSnapshots", {}, when=late)[0], 401)
            close = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=4)
            self.control({"unlock": True})
            self.assertEqual(self.call("ReadSnapshots", {}, when=close)[0], 200)
            # A body changed after signing.
            data = b"{}"
            h = sigv4_headers(self.host, "/api/v1/ReadSnapshots", data)
            self.assertEqual(self.raw("POST", "/api/v1/ReadSnapshots", b'{ }', h)[0], 401)
            # Four failures in a row lock the key out, even for a good signature (spec: lockout).
            self.control({"unlock": True})
            for _ in range(4):
                self.assertEqual(self.call("ReadSnapshots", {}, secret="wrong")[0], 401)
            status, a = self.call("ReadSnapshots", {})
            self.assertEqual(status, 401)
            self.assertIn("locked", a["Errors"][0]["Details"])
        finally:
            self.control({"unlock": True})
        self.assertEqual(self.call("ReadSnapshots", {})[0], 200)

    def test_server_clock_skew_and_state_file(self):
        try:
            self.control({"clock_skew": 400})  # the server runs 6m40s ahead: every request is late
            status, a = self.call("ReadImages", {})
            self.assertEqual(status, 401)
            self.assertIn("5 minutes", a["Errors"][0]["Details"])
        finally:
            self.control({"clock_skew": 0, "unlock": True})
        self.assertEqual(self.call("ReadImages", {})[0], 200)
        with open(os.path.join(self.tmp, "state.json")) as f:
            self.assertEqual(json.load(f)["Requests"][-1], ["ReadImages", 200])
        self.assertEqual(self.raw("POST", "/_control", b'{"faults": [{"kind": "429"}]}')[0], 400)

    # -- schema -------------------------------------------------------------------------------

    def test_schema_errors_400(self):
        status, a = self.call("CreateImage", {"ImageName": "x-image", "ClientToken": "t"})
        self.assertEqual(status, 400)
        self.assertEqual(a["Errors"][0]["Type"], "UnknownParameter")
        self.assertIn("ClientToken", a["Errors"][0]["Details"])
        for op, body, word in [
            ("CreateSnapshot", {"SnapshotSize": "10"}, "SnapshotSize"),
            ("CreateSnapshot", {"SnapshotSize": 1 << 63}, "SnapshotSize"),
            ("CreateImage", {"BootModes": ["bios"]}, "BootModes"),
            ("CreateTags", {"ResourceIds": ["snap-1"]}, "Tags"),
            ("ReadSnapshots", {"ResultsPerPage": 0}, "ResultsPerPage"),
        ]:
            status, a = self.call(op, body)
            self.assertEqual(status, 400, (op, body))
            self.assertIn(word, a["Errors"][0]["Details"], (op, body))
        self.assertEqual(self.raw("POST", "/api/v1/NoSuchOp", b"{}", sigv4_headers(self.host, "/api/v1/NoSuchOp", b"{}"))[0], 404)

    def test_validate_mode(self):
        good = [{"Operation": "CreateTags", "Body": {"ResourceIds": ["ami-1"], "Tags": [{"Key": "k", "Value": ""}]}}]
        bad = good + [{"Operation": "CreateImage", "Body": {"ClientToken": "t"}}]
        for items, rc in ((good, 0), (bad, 1)):
            path = os.path.join(self.tmp, "dry-run.json")
            with open(path, "w") as f:
                json.dump(items, f)
            p = subprocess.run([sys.executable, os.path.join(HERE, "fake_api.py"), "--validate", path],
                               capture_output=True, text=True)
            self.assertEqual(p.returncode, rc, p.stdout + p.stderr)
        self.assertIn("ClientToken", p.stdout)

    def test_pagination(self):
        for i in range(3):
            self.ok("CreateSnapshot", {"FileLocation": self.file_url + f"page{i}.gz", "SnapshotSize": GIB, "Description": "page"})
        ids, token = [], None
        for _ in range(10):
            body = {"Filters": {"Descriptions": ["page"]}, "ResultsPerPage": 2}
            if token:
                body["NextPageToken"] = token
            a = self.ok("ReadSnapshots", body)
            ids += [s["SnapshotId"] for s in a["Snapshots"]]
            token = a.get("NextPageToken")
            if not token:
                break
        self.assertEqual(len(ids), 3)
        self.assertEqual(len(set(ids)), 3)
        # A default page size set through /_control applies when ResultsPerPage is absent.
        self.control({"page_size": 2})
        try:
            a = self.ok("ReadSnapshots", {"Filters": {"Descriptions": ["page"]}})
            self.assertEqual(len(a["Snapshots"]), 2)
            self.assertIn("NextPageToken", a)
        finally:
            self.control({"page_size": 100})
        self.assertNotIn("NextPageToken", self.ok("ReadSnapshots", {"Filters": {"Descriptions": ["page"]}}))

    # -- snapshot and image life cycle --------------------------------------------------------

    def test_snapshot_then_image(self):
        content = self.disk((5 << 20) + 1000, "a")  # 2 digest blocks, not a whole sector
        snap, body = self.import_snapshot(content, "a.raw.gz", token="tok-a")
        sid = snap["SnapshotId"]
        self.assertEqual((snap["State"], snap["Progress"], snap["VolumeSize"]), ("in-queue", 0, 1))
        # The same token answers the same snapshot; other parameters with it are refused.
        self.assertEqual(self.ok("CreateSnapshot", body)["Snapshot"]["SnapshotId"], sid)
        self.assertEqual(self.call("CreateSnapshot", dict(body, SnapshotSize=2 * GIB))[0], 400)
        done, seen = self.wait_snapshot(sid)
        self.assertEqual(done["State"], "completed", seen)
        self.assertEqual(done["Progress"], 100)
        self.assertIn(("importing", 40), seen)
        self.assertEqual(self.ok("ReadSnapshots", {"Filters": {"ClientTokens": ["tok-a"]}})["Snapshots"][0]["SnapshotId"], sid)
        kept = [s for s in self.state()["Snapshots"] if s["SnapshotId"] == sid][0]
        self.assertEqual(kept["_digest"], digest_of(content))
        self.assertEqual(kept["_virtual_size"], (5 << 20) + 1024)

        image = {
            "ImageName": "mkomi-test-image",
            "Description": "two",
            "Architecture": "x86_64",
            "BootModes": ["uefi"],
            "RootDeviceName": "/dev/sda1",
            "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Bsu": {"SnapshotId": sid, "VolumeSize": 2, "VolumeType": "gp2"}}],
        }
        # Refusals: an unknown snapshot, an unmapped root device, a volume smaller than the snapshot.
        bad = json.loads(json.dumps(image))
        bad["BlockDeviceMappings"][0]["Bsu"]["SnapshotId"] = "snap-ffffffff"
        self.assertEqual(self.call("CreateImage", bad)[0], 400)
        self.assertEqual(self.call("CreateImage", dict(image, RootDeviceName="/dev/sdb"))[0], 400)
        bad = json.loads(json.dumps(image))
        bad["BlockDeviceMappings"][0]["Bsu"]["VolumeSize"] = 0
        self.assertEqual(self.call("CreateImage", bad)[0], 400)
        img = self.ok("CreateImage", image)["Image"]
        iid = img["ImageId"]
        self.assertEqual(img["State"], "pending")
        self.assertEqual(self.call("CreateImage", image)[0], 400)  # the name is taken
        states = [self.ok("ReadImages", {"Filters": {"ImageIds": [iid]}})["Images"][0]["State"] for _ in range(3)]
        self.assertEqual(states, ["pending", "available", "available"])
        self.ok("CreateTags", {"ResourceIds": [iid, sid], "Tags": [{"Key": "mkomi:digest", "Value": digest_of(content)}]})
        for f in ({"BlockDeviceMappingSnapshotIds": [sid]}, {"ImageNames": ["mkomi-test-image"]},
                  {"Tags": ["mkomi:digest=" + digest_of(content)]}):
            found = self.ok("ReadImages", {"Filters": f})["Images"]
            self.assertEqual([i["ImageId"] for i in found], [iid], f)
        self.assertEqual(self.ok("ReadImages", {"Filters": {"Tags": ["mkomi:digest=other"]}})["Images"], [])
        got = self.ok("UpdateImage", {"ImageId": iid, "PermissionsToLaunch": {"Additions": {"AccountIds": ["111122223333"], "GlobalPermission": True}}})["Image"]
        self.assertEqual(got["PermissionsToLaunch"], {"AccountIds": ["111122223333"], "GlobalPermission": True})
        self.assertEqual(self.call("DeleteSnapshot", {"SnapshotId": sid})[0], 400)  # in use
        self.ok("DeleteImage", {"ImageId": iid})
        self.ok("DeleteSnapshot", {"SnapshotId": sid})
        self.assertEqual(self.ok("ReadSnapshots", {"Filters": {"SnapshotIds": [sid]}})["Snapshots"], [])

    @unittest.skipUnless(shutil.which("qemu-img"), "qemu-img not installed")
    def test_qcow2_import_has_the_raw_digest(self):
        content = self.disk(3 << 20, "q")
        raw = os.path.join(self.tmp, "q.raw")
        with open(raw, "wb") as f:
            f.write(content)
        qcow = os.path.join(self.tmp, "q.qcow2")
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow], check=True)
        with open(qcow, "rb") as f:
            snap, _ = self.import_snapshot(f.read(), "q.qcow2.gz")
        done, _ = self.wait_snapshot(snap["SnapshotId"])
        self.assertEqual(done["State"], "completed")
        kept = [s for s in self.state()["Snapshots"] if s["SnapshotId"] == snap["SnapshotId"]][0]
        self.assertEqual(kept["_digest"], digest_of(content))

    def test_failed_imports_end_in_error(self):
        missing = self.ok("CreateSnapshot", {"FileLocation": self.file_url + "nope.gz", "SnapshotSize": GIB})["Snapshot"]
        small, _ = self.import_snapshot(self.disk(2 << 20, "s"), "s.raw.gz", size=1 << 20)
        plain = self.ok("CreateSnapshot", {"FileLocation": self.serve("p.raw", b"x" * 512), "SnapshotSize": GIB})["Snapshot"]
        for snap, why in ((missing, "HTTP 404"), (small, "SnapshotSize"), (plain, "gzip")):
            done, _ = self.wait_snapshot(snap["SnapshotId"])
            self.assertEqual(done["State"], "error")
            kept = [s for s in self.state()["Snapshots"] if s["SnapshotId"] == snap["SnapshotId"]][0]
            self.assertIn(why, kept["_reason"])
        image = {"ImageName": "from-error", "RootDeviceName": "/dev/sda1",
                 "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Bsu": {"SnapshotId": missing["SnapshotId"]}}]}
        status, a = self.call("CreateImage", image)
        self.assertEqual(status, 400)
        self.assertIn("not completed", a["Errors"][0]["Details"])

    def manifest(self, name, disks):
        """Serves an export manifest (src/export/manifest.rs) over `disks`: (device, url, size)."""
        doc = {"Version": 1, "Image": {
            "Name": name, "Architecture": "x86_64", "Type": "machine", "ProductTypes": ["0001"],
            "Public": False, "Snapshots": [
                {"DeleteOnTermination": True, "Device": dev, "Filename": url.rsplit("/", 1)[1],
                 "Iops": None, "PreSignedUrl": url, "Size": size, "VolumeType": "standard"}
                for dev, url, size in disks]}}
        return self.serve(name + "-manifest.json", json.dumps(doc).encode())

    def wait_image(self, iid, polls=200):
        for _ in range(polls):
            img = self.ok("ReadImages", {"Filters": {"ImageIds": [iid]}})["Images"][0]
            if img["State"] != "pending":
                return img
            time.sleep(0.02)
        self.fail(f"image {iid} stays pending")

    def test_image_from_manifest(self):
        root, data = self.disk(2 << 20, "m0"), self.disk(1 << 20, "m1")
        url0 = self.serve("m0.raw.gz", gzip.compress(root, 1))
        url1 = self.serve("m1.raw.gz", gzip.compress(data, 1))
        loc = self.manifest("from-manifest", [("/dev/sda1", url0, GIB), ("/dev/sdb", url1, 2 * GIB)])
        self.assertEqual(self.call("CreateImage", {"FileLocation": loc, "RootDeviceName": "/dev/sda1"})[0], 400)
        img = self.ok("CreateImage", {"FileLocation": loc, "BootModes": ["uefi"]})["Image"]
        self.assertEqual((img["ImageName"], img["State"], img["RootDeviceName"]), ("from-manifest", "pending", "/dev/sda1"))
        img = self.wait_image(img["ImageId"])
        self.assertEqual(img["State"], "available", img)
        self.assertEqual([(m["DeviceName"], m["Bsu"]["VolumeSize"]) for m in img["BlockDeviceMappings"]],
                         [("/dev/sda1", 1), ("/dev/sdb", 2)])
        kept = {s["SnapshotId"]: s for s in self.state()["Snapshots"]}
        digests = [kept[m["Bsu"]["SnapshotId"]]["_digest"] for m in img["BlockDeviceMappings"]]
        self.assertEqual(digests, [digest_of(root), digest_of(data)])
        # A disk that cannot be fetched fails the image, with a reason.
        loc = self.manifest("broken-manifest", [("/dev/sda1", self.file_url + "gone.raw.gz", GIB)])
        img = self.wait_image(self.ok("CreateImage", {"FileLocation": loc})["Image"]["ImageId"])
        self.assertEqual(img["State"], "failed")
        self.assertIn("404", img["StateComment"]["StateMessage"])
        self.assertEqual(self.call("CreateImage", {"FileLocation": self.file_url + "no-manifest.json"})[0], 400)

    def test_export_tasks_write_into_s3(self):
        if not self.s3:
            self.skipTest("s3s-fs or qemu-img not installed")
        content = self.disk((3 << 20) + 512, "e")
        snap, _ = self.import_snapshot(content, "e.raw.gz")
        sid = snap["SnapshotId"]
        self.assertEqual(self.wait_snapshot(sid)[0]["State"], "completed")
        image = {"ImageName": "to-export", "Description": "exported", "RootDeviceName": "/dev/sda1",
                 "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Bsu": {"SnapshotId": sid}}]}
        iid = self.ok("CreateImage", image)["Image"]["ImageId"]
        self.assertEqual(self.wait_image(iid)["State"], "available")
        osu = {"DiskImageFormat": "qcow2", "OsuBucket": S3_BUCKET, "OsuPrefix": "pulls"}
        self.assertEqual(self.call("CreateImageExportTask", {"ImageId": iid, "OsuExport": dict(osu, DiskImageFormat="vmdk")})[0], 400)
        task = self.ok("CreateImageExportTask", {"ImageId": iid, "OsuExport": osu})["ImageExportTask"]
        self.assertEqual((task["State"], task["OsuExport"]["OsuPrefix"]), ("pending/queued", f"pulls/{iid}/"))
        for _ in range(300):
            t = self.ok("ReadImageExportTasks", {"Filters": {"TaskIds": [task["TaskId"]]}})["ImageExportTasks"][0]
            if t["State"] in ("completed", "failed"):
                break
            time.sleep(0.02)
        self.assertEqual(t["State"], "completed", t)
        # The manifest and the disk come back through s3s-fs's pre-signed URLs.
        with urllib.request.urlopen(t["OsuExport"]["OsuManifestUrl"]) as r:
            manifest = json.load(r)
        self.assertEqual((manifest["Image"]["Name"], manifest["Image"]["Description"]), ("to-export", "exported"))
        (disk,) = manifest["Image"]["Snapshots"]
        self.assertEqual((disk["Device"], disk["Filename"], disk["Size"]), ("/dev/sda1", "sda1.qcow2.gz", GIB))
        qcow = os.path.join(self.tmp, "exported.qcow2")
        with urllib.request.urlopen(disk["PreSignedUrl"]) as r, open(qcow, "wb") as f:
            f.write(gzip.decompress(r.read()))
        # qemu-img as the oracle: the export is the imported disk, zero-extended to the volume.
        ref = os.path.join(self.tmp, "expected.raw")
        with open(ref, "wb") as f:
            f.write(content)
            f.truncate(GIB)
        p = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", ref, qcow], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        # A snapshot export, and a refused export of a shared image.
        st = self.ok("CreateSnapshotExportTask", {"SnapshotId": sid, "OsuExport": dict(osu, DiskImageFormat="raw")})["SnapshotExportTask"]
        for _ in range(300):
            t = self.ok("ReadSnapshotExportTasks", {"Filters": {"SnapshotIds": [sid]}})["SnapshotExportTasks"][0]
            if t["State"] in ("completed", "failed"):
                break
            time.sleep(0.02)
        self.assertEqual((t["TaskId"], t["State"]), (st["TaskId"], "completed"), t)
        obj = os.path.join(self.tmp, "s3", S3_BUCKET, "pulls", f"{sid}.raw.gz")
        with gzip.open(obj) as f:
            self.assertEqual(f.read(len(content)), content)
        with open(obj, "rb") as f:
            f.seek(-4, os.SEEK_END)  # gzip's ISIZE: the uncompressed size mod 2^32
            self.assertEqual(int.from_bytes(f.read(4), "little"), GIB)
        # A URL that s3s-fs refuses (a wrong signature, as an expired one is) fails the import.
        bad_url = fake_api.s3_presign(self.s3_endpoint, "us-east-1", S3_KEY, "not-the-secret", S3_BUCKET, f"pulls/{sid}.raw.gz")
        refused = self.ok("CreateSnapshot", {"FileLocation": bad_url, "SnapshotSize": GIB})["Snapshot"]
        self.assertEqual(self.wait_snapshot(refused["SnapshotId"])[0]["State"], "error")
        kept = [s for s in self.state()["Snapshots"] if s["SnapshotId"] == refused["SnapshotId"]][0]
        self.assertIn("HTTP 403", kept["_reason"])
        self.ok("UpdateImage", {"ImageId": iid, "PermissionsToLaunch": {"Additions": {"GlobalPermission": True}}})
        self.assertEqual(self.call("CreateImageExportTask", {"ImageId": iid, "OsuExport": osu})[0], 400)

    # -- faults -------------------------------------------------------------------------------

    def test_429_once_then_ok(self):
        self.control({"faults": [{"op": "ReadImages", "kind": "429"}]})
        status, a = self.call("ReadImages", {})
        self.assertEqual((status, a["Errors"][0]["Type"]), (429, "RequestLimitExceeded"))
        self.assertEqual(self.call("ReadImages", {})[0], 200)
        self.control({"faults": [{"op": "ReadImages", "kind": "503", "nth": 2}]})
        self.assertEqual([self.call("ReadImages", {})[0] for _ in range(3)], [200, 503, 200])

    def test_drop_after_commit_applies_the_operation(self):
        snap, _ = self.import_snapshot(self.disk(1 << 20, "d"), "d.raw.gz")
        self.assertEqual(self.wait_snapshot(snap["SnapshotId"])[0]["State"], "completed")
        self.control({"faults": [{"op": "CreateImage", "kind": "drop-after-commit"}]})
        image = {"ImageName": "lost-answer", "RootDeviceName": "/dev/sda1",
                 "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Bsu": {"SnapshotId": snap["SnapshotId"]}}]}
        with self.assertRaises((http.client.HTTPException, ConnectionError)):
            self.call("CreateImage", image)
        found = self.ok("ReadImages", {"Filters": {"ImageNames": ["lost-answer"]}})["Images"]
        self.assertEqual(len(found), 1)


    def test_import_error_fault_fails_the_next_import_only(self):
        # Only operations that start imports take this kind.
        body = {"faults": [{"op": "ReadImages", "kind": "import-error"}]}
        status, _ = self.raw("POST", "/_control", json.dumps(body).encode(), {"content-type": "application/json"})
        self.assertEqual(status, 400)
        self.control({"faults": [{"op": "CreateSnapshot", "kind": "import-error"}]})
        bad, _ = self.import_snapshot(self.disk(1 << 20, "e1"), "e1.raw.gz")
        good, _ = self.import_snapshot(self.disk(1 << 20, "e2"), "e2.raw.gz")
        self.assertEqual(bad["State"], "in-queue")  # the call itself succeeds
        self.assertEqual(self.wait_snapshot(bad["SnapshotId"])[0]["State"], "error")
        self.assertEqual(self.wait_snapshot(good["SnapshotId"])[0]["State"], "completed")
        kept = [s for s in self.state()["Snapshots"] if s["SnapshotId"] == bad["SnapshotId"]][0]
        self.assertIn("injected import error", kept["_reason"])
        log = [(f["op"], f["kind"]) for f in self.state()["FaultLog"]]
        self.assertEqual(log.count(("CreateSnapshot", "import-error")), 1, log)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


if __name__ == "__main__":
    unittest.main()
