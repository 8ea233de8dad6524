//! `mkomi import` of untrusted packages: through local HTTP servers written here (one that
//! holds an object half-sent, one that answers errors with huge bodies) and directories; objects
//! cut short, sizes beyond the free space, a package's own `ChecksSkipped`, and Ctrl-C.

mod common;
use common::*;
#[path = "common/http.rs"]
mod http;
use http::*;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `data` as gzip members of 1 MiB of input each, as mkomi's export writes them.
fn gzip_members(data: &[u8]) -> Vec<Vec<u8>> {
    use flate2::{Compression, write::GzEncoder};
    data.chunks(MIB as usize)
        .map(|c| {
            let mut e = GzEncoder::new(Vec::new(), Compression::fast());
            e.write_all(c).unwrap();
            e.finish().unwrap()
        })
        .collect()
}

/// An export manifest of one snapshot per `(device, file name, Size)`, without URLs.
fn export_manifest(snaps: &[(&str, &str, u64)]) -> Value {
    let snaps: Vec<Value> = snaps
        .iter()
        .map(|(device, file, size)| {
            json!({"DeleteOnTermination": true, "Device": device, "Filename": file,
                   "Iops": null, "PreSignedUrl": null, "Size": size, "VolumeType": "standard"})
        })
        .collect();
    json!({"Version": 1, "Image": {"Name": "imported", "Architecture": "x86_64",
           "Type": "machine", "ProductTypes": ["0001"], "Public": false, "Snapshots": snaps}})
}

/// Runs `mkomi import` and requires a one-line refusal containing every one of `want`, with
/// nothing left beside the output.
fn refused(args: &[&str], out: &Path, want: &[&str]) -> String {
    let mut all = vec!["import"];
    all.extend_from_slice(args);
    all.extend(["-o", s(out), "-q"]);
    let o = run(&all);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    for w in want {
        assert!(err.contains(w), "wanted {w:?} in {err}");
    }
    assert!(!out.exists(), "{} was written", out.display());
    assert_eq!(entries(out.parent().unwrap()), Vec::<String>::new());
    err
}

#[test]
fn http_error_bodies_are_read_up_to_64_kib() {
    // Every GET is answered 500 with a 256 MiB body, sent 16 KiB at a time; each connection
    // counts what the client let it send before it hung up.
    const BODY: usize = 256 << 20;
    let sent: Arc<Mutex<Vec<usize>>> = Arc::default();
    let counts = sent.clone();
    let base = serve(move |_, _, conn| {
        let head = format!(
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\n\
             Content-Length: {BODY}\r\n\r\n<Error><Code>InternalError</Code>"
        );
        let _ = conn.write_all(head.as_bytes());
        let chunk = vec![b' '; 16 << 10];
        let mut n = 0;
        while n < BODY && conn.write_all(&chunk).is_ok() {
            n += chunk.len();
        }
        counts.lock().unwrap().push(n);
        let _ = conn.shutdown(std::net::Shutdown::Both);
    });
    let d = tempfile::tempdir().unwrap();
    let out_parent = d.path().join("in");
    std::fs::create_dir(&out_parent).unwrap();
    let err = refused(
        &[&format!(
            "{base}/images/manifest.json?X-Amz-Signature=secret"
        )],
        &out_parent.join("back"),
        &["/images/manifest.json", "HTTP 500 InternalError"],
    );
    assert!(!err.contains("secret"), "{err}");
    // The answer was tried again (a 5xx), and each body was left after its start: what the
    // server could push is the 64 KiB read plus what the sockets' buffers hold, far from the
    // 256 MiB it offered.
    let sent = sent.lock().unwrap().clone();
    eprintln!("bytes sent per answer: {sent:?}");
    assert!(sent.len() > 1, "{sent:?}");
    for n in &sent {
        assert!(
            *n < 16 << 20,
            "the client read {n} bytes of an error body: {sent:?}"
        );
    }
}

#[test]
fn imports_larger_than_the_free_space_are_refused_before_writing() {
    let d = tempfile::tempdir().unwrap();
    let pkg = d.path().join("pkg");
    std::fs::create_dir(&pkg).unwrap();
    // Two volumes of the largest size, 14,901 GiB each: more than any test machine has free.
    let max = 14_901u64 << 30;
    let em = export_manifest(&[
        ("/dev/sda1", "sda1.raw.gz", max),
        ("/dev/sdb", "sdb.raw.gz", max),
    ]);
    std::fs::write(pkg.join("manifest.json"), em.to_string()).unwrap();
    for name in ["sda1.raw.gz", "sdb.raw.gz"] {
        std::fs::write(
            pkg.join(name),
            gzip_members(&noise(MIB as usize, 3)).concat(),
        )
        .unwrap();
    }
    let out_parent = d.path().join("in");
    std::fs::create_dir(&out_parent).unwrap();
    let avail = tool("df", &["-B1", "--output=avail", s(&out_parent)]);
    let avail: u64 = avail.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(
        avail < 2 * max,
        "the test needs less than {} bytes free",
        2 * max
    );
    let out = out_parent.join("back");
    let manifest = pkg.join("manifest.json");
    // A raw output holds both disks at their full size.
    refused(
        &[s(&manifest), "--format", "raw"],
        &out,
        &[
            s(&out),
            &format!("the import needs {} bytes", 2 * max),
            "bytes free",
        ],
    );
    // A qcow2 output holds only what is not zeros, which no manifest declares: the import goes
    // on, and finds the objects far shorter than their Size.
    refused(
        &[s(&manifest)],
        &out,
        &[&format!(
            "sda1.raw.gz: decompresses to 1048576 bytes, but the Size in manifest.json says the disk has {max}"
        )],
    );
}

/// A raw disk of `size` bytes: 4 MiB of noise, zeros after, as a 1 MiB-member gzip object.
fn raw_object(size: u64) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut disk = noise(4 * MIB as usize, 11);
    disk.resize(size as usize, 0);
    let members = gzip_members(&disk);
    (disk, members)
}

#[test]
fn a_raw_object_cut_at_a_gzip_member_boundary_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let pkg = d.path().join("pkg");
    std::fs::create_dir(&pkg).unwrap();
    let size = 16 * MIB;
    let (disk, members) = raw_object(size);
    let em = export_manifest(&[("/dev/sda1", "sda1.raw.gz", size)]);
    std::fs::write(pkg.join("manifest.json"), em.to_string()).unwrap();
    std::fs::write(pkg.join("sda1.raw.gz"), members.concat()).unwrap();
    let (base, _, _) = gated_http(pkg.clone(), "none", 0);
    let url = format!("{base}/manifest.json");
    let out_parent = d.path().join("in");
    std::fs::create_dir(&out_parent).unwrap();

    // Whole, the object is the disk.
    let whole = out_parent.join("whole");
    ok(&["import", &url, "-o", s(&whole), "-q"]);
    assert_eq!(manifest(&whole)["Disks"][0]["VirtualSize"], size);
    std::fs::write(d.path().join("disk.img"), &disk).unwrap();
    qemu_compare(&d.path().join("disk.img"), &whole.join("sda1.qcow2"));
    std::fs::remove_dir_all(&whole).unwrap();

    // Cut after its 6th member (the data's end, as far as gzip knows), it is refused.
    std::fs::write(pkg.join("sda1.raw.gz"), members[..6].concat()).unwrap();
    refused(
        &[&url],
        &out_parent.join("cut"),
        &[
            "sda1.raw.gz: decompresses to 6291456 bytes, but the Size in manifest.json says the disk has 16777216: the object is cut short",
        ],
    );
}

#[test]
fn a_qcow2_object_cut_at_a_gzip_member_boundary_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.img");
    let mut data = noise(6 * MIB as usize, 5);
    data.resize(16 * MIB as usize, 0);
    std::fs::write(&img, &data).unwrap();
    // Two layouts: mkomi's (tables after the data) and qemu-img's (tables first).
    let mkomi_q = d.path().join("omi");
    ok(&[
        "register",
        s(&img),
        "-o",
        s(&mkomi_q),
        "--arch",
        "x86_64",
        "--no-boot-check",
        "-q",
    ]);
    let qemu_q = d.path().join("qemu.qcow2");
    tool("qemu-img", &["convert", "-O", "qcow2", s(&img), s(&qemu_q)]);
    let out_parent = d.path().join("in");
    std::fs::create_dir(&out_parent).unwrap();
    for (i, qcow2) in [mkomi_q.join("sda1.qcow2"), qemu_q].iter().enumerate() {
        let pkg = d.path().join(format!("pkg{i}"));
        std::fs::create_dir(&pkg).unwrap();
        let em = export_manifest(&[("/dev/sda1", "sda1.qcow2.gz", 1 << 30)]);
        std::fs::write(pkg.join("manifest.json"), em.to_string()).unwrap();
        let members = gzip_members(&std::fs::read(qcow2).unwrap());
        assert!(members.len() > 4, "{}", members.len());
        std::fs::write(pkg.join("sda1.qcow2.gz"), members[..4].concat()).unwrap();
        let (base, _, _) = gated_http(pkg.clone(), "none", 0);
        refused(
            &[&format!("{base}/manifest.json")],
            &out_parent.join("cut"),
            &["sda1.qcow2", "past the end of the file"],
        );
    }
}

/// A root disk whose binaries are i386 (an ELF32 header behind /sbin/init).
fn i386_root(dir: &Path) -> PathBuf {
    let t = dir.join("tree32");
    for d in ["bin", "sbin", "etc"] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }
    let mut elf = vec![0u8; 4096];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 1; // ELFCLASS32
    elf[5] = 1; // little-endian
    elf[6] = 1; // EV_CURRENT
    elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[18..20].copy_from_slice(&3u16.to_le_bytes()); // EM_386
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[40..42].copy_from_slice(&52u16.to_le_bytes()); // e_ehsize
    std::fs::write(t.join("bin/busybox"), elf).unwrap();
    std::os::unix::fs::symlink("../bin/busybox", t.join("sbin/init")).unwrap();
    std::fs::write(t.join("etc/os-release"), "ID=debian\nVERSION_ID=\"12\"\n").unwrap();
    let fs = dir.join("root32.ext4");
    tool("mkfs.ext4", &["-q", "-F", "-d", s(&t), s(&fs), "16M"]);
    // On an MBR disk with boot code (a legacy boot loader, as far as the boot check goes), the
    // ext4 at 1 MiB.
    let disk = dir.join("root32.img");
    let fs_bytes = std::fs::read(&fs).unwrap();
    let mut img = vec![0u8; MIB as usize];
    img[..3].copy_from_slice(&[0xeb, 0x63, 0x90]);
    for (i, b) in img[3..440].iter_mut().enumerate() {
        *b = (i * 7 + 1) as u8;
    }
    let rec = &mut img[446..462];
    rec[0] = 0x80;
    rec[4] = 0x83;
    rec[8..12].copy_from_slice(&((MIB / 512) as u32).to_le_bytes());
    rec[12..16].copy_from_slice(&((fs_bytes.len() / 512) as u32).to_le_bytes());
    img[510] = 0x55;
    img[511] = 0xaa;
    img.extend_from_slice(&fs_bytes);
    std::fs::write(&disk, img).unwrap();
    disk
}

#[test]
fn a_package_s_own_checks_skipped_does_not_turn_checks_off() {
    let d = tempfile::tempdir().unwrap();
    let root = i386_root(d.path());
    // Registered against its binaries, with the check turned off: the manifest records it.
    let b = d.path().join("omi");
    ok(&[
        "register",
        s(&root),
        "-o",
        s(&b),
        "--arch",
        "x86_64",
        "--no-boot-check",
        "--no-arch-check",
        "-q",
    ]);
    assert_eq!(manifest(&b)["Image"]["BootModes"], json!(["legacy"]));
    let skipped = &manifest(&b)["Inspection"]["ChecksSkipped"];
    assert!(
        skipped.as_array().unwrap().contains(&"arch".into()),
        "{skipped}"
    );
    let pkg = d.path().join("pkg");
    ok(&["export", s(&b), "--to", s(&pkg), "-q"]);
    let out_parent = d.path().join("in");
    std::fs::create_dir(&out_parent).unwrap();
    let manifest_json = pkg.join("manifest.json");
    // The importer did not turn the check off: refused.
    refused(
        &[s(&manifest_json)],
        &out_parent.join("back"),
        &["contradicts", "--no-arch-check"],
    );
    // Its own flag does.
    let back = out_parent.join("back");
    ok(&[
        "import",
        s(&manifest_json),
        "-o",
        s(&back),
        "--no-arch-check",
        "-q",
    ]);
    let m = manifest(&back);
    assert_eq!(m["Image"]["Architecture"], "x86_64");
    assert!(
        m["Inspection"]["ChecksSkipped"]
            .as_array()
            .unwrap()
            .contains(&"arch".into()),
        "{m}"
    );
}

/// Starts an import of `url` into `out`, waits until the object is held half-sent and (when
/// `data`) some file under the output's parent holds at least 4 MiB, sends SIGINT, and requires
/// exit 130 and nothing left in the parent.
fn interrupt(url: &str, out: &Path, reached: &mpsc::Receiver<()>, data: bool) {
    let child = mkomi()
        .args(["import", url, "-o", s(out), "-q"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    reached
        .recv_timeout(Duration::from_secs(60))
        .expect("the object was never requested");
    let parent = out.parent().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let files = files_under(parent);
        if !data || files.iter().any(|(_, l)| *l >= 4 * MIB) {
            break;
        }
        assert!(Instant::now() < deadline, "no data arrived: {files:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    tool("kill", &["-INT", &pid]);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{:?}: {err}", o.status);
    assert!(err.contains("interrupted"), "{err}");
    assert_eq!(entries(parent), Vec::<String>::new());
}

#[test]
fn ctrl_c_during_an_import_removes_its_work_directory() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("noise.img");
    std::fs::write(&img, noise(48 * MIB as usize, 7)).unwrap();
    let out_parent = d.path().join("in");
    std::fs::create_dir(&out_parent).unwrap();
    for (format, object) in [("raw", "sda1.raw.gz"), ("qcow2", "sda1.qcow2.gz")] {
        let b = d.path().join(format!("omi-{format}"));
        ok(&[
            "register",
            s(&img),
            "-o",
            s(&b),
            "--arch",
            "x86_64",
            "--no-boot-check",
            "--format",
            format,
            "-q",
        ]);
        let pkg = d.path().join(format!("pkg-{format}"));
        ok(&["export", s(&b), "--to", s(&pkg), "-q"]);
        // Noise does not compress: the object is held after 16 MiB of disk. A raw object is
        // in the new bundle's disk file by then, a qcow2 one in its work file.
        let (base, reached, _go) = gated_http(pkg, object, 16 * MIB as usize);
        interrupt(
            &format!("{base}/manifest.json"),
            &out_parent.join("back"),
            &reached,
            true,
        );
        // A server that stalls in the middle of the manifest: Ctrl-C ends the wait.
        if format == "raw" {
            let (base, reached, _go) = gated_http(d.path().join("pkg-raw"), "manifest.json", 10);
            interrupt(
                &format!("{base}/manifest.json"),
                &out_parent.join("back"),
                &reached,
                false,
            );
        }
    }
}

/// A raw object is its whole volume (`Size`): the disk, then zeros. So a package reached by
/// its export manifest alone (a pre-signed URL) imports whole; with mkomi's manifest the disk
/// is its own size again, and data in the zeros is refused.
#[test]
fn a_raw_export_holds_its_volume_and_imports_from_its_manifest_alone() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.img");
    std::fs::write(&img, noise(16 * MIB as usize, 7)).unwrap();
    let bundle = d.path().join("omi");
    ok(&[
        "register",
        s(&img),
        "-o",
        s(&bundle),
        "--arch",
        "x86_64",
        "--no-boot-check",
        "-q",
    ]);
    let pkg = d.path().join("pkg");
    ok(&[
        "export",
        s(&bundle),
        "--to",
        s(&pkg),
        "--format",
        "raw",
        "-q",
    ]);
    let object = std::fs::read(pkg.join("sda1.raw.gz")).unwrap();
    // The volume is 1 GiB: the object decompresses to it, the disk first, zeros after.
    let mut all = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::MultiGzDecoder::new(&object[..]),
        &mut all,
    )
    .unwrap();
    assert_eq!(all.len() as u64, 1 << 30);
    assert_eq!(all[..16 * MIB as usize], std::fs::read(&img).unwrap()[..]);
    assert!(all[16 * MIB as usize..].iter().all(|&b| b == 0));
    drop(all);
    // The 16 MiB of noise do not compress; the 1008 MiB of zeros cost little.
    assert!(object.len() < 20 * MIB as usize, "{} bytes", object.len());

    // With mkomi's manifest beside it: the disk as registered.
    let out_parent = d.path().join("in");
    std::fs::create_dir(&out_parent).unwrap();
    let with = out_parent.join("with");
    ok(&[
        "import",
        s(&pkg.join("manifest.json")),
        "-o",
        s(&with),
        "-q",
    ]);
    assert_eq!(
        manifest(&with)["Disks"][0]["ContentDigest"],
        manifest(&bundle)["Disks"][0]["ContentDigest"]
    );

    // Through the export manifest alone, as a pre-signed URL gives it: the whole volume.
    let alone = d.path().join("alone");
    std::fs::create_dir(&alone).unwrap();
    for f in ["manifest.json", "sda1.raw.gz"] {
        std::fs::copy(pkg.join(f), alone.join(f)).unwrap();
    }
    let (base, _, _) = gated_http(alone.clone(), "none", 0);
    let by_url = out_parent.join("by-url");
    ok(&[
        "import",
        &format!("{base}/manifest.json"),
        "-o",
        s(&by_url),
        "-q",
    ]);
    assert_eq!(manifest(&by_url)["Disks"][0]["VirtualSize"], 1u64 << 30);
    qemu_compare(&img, &by_url.join("sda1.qcow2"));
    std::fs::remove_dir_all(&by_url).unwrap();

    // Data where the volume's zeros belong is refused, even with SHA256SUMS made to agree.
    let mut members = gzip_members(&std::fs::read(&img).unwrap());
    members.extend(gzip_members(&vec![1u8; MIB as usize]));
    members.extend(gzip_members(&vec![0u8; (1 << 30) - 17 * MIB as usize]));
    let tampered = members.concat();
    std::fs::write(pkg.join("sda1.raw.gz"), &tampered).unwrap();
    let sums = std::fs::read_to_string(pkg.join("SHA256SUMS")).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&tampered))
    };
    let sums: String = sums
        .lines()
        .map(|l| match l.split_once("  ") {
            Some((_, "sda1.raw.gz")) => format!("{sha}  sda1.raw.gz\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(pkg.join("SHA256SUMS"), sums).unwrap();
    std::fs::remove_dir_all(&with).unwrap();
    refused(
        &[s(&pkg.join("manifest.json"))],
        &out_parent.join("tampered"),
        &["sda1.raw.gz: holds data after the disk's 16777216 bytes"],
    );
}
