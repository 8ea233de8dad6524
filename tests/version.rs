//! What mkomi says about its own version: `mkomi --version` (the crate version, the commit, the
//! qemu-img the tests ran against, checked against the installed one), CHANGELOG.md's newest
//! release, and the `Builder` a bundle records.

mod common;
use common::*;
use std::process::Command;

/// `.ci/qemu-img-version`: the `qemu-img --version` line `mkomi --version` claims it was tested
/// with.
const TESTED: &str = include_str!("../.ci/qemu-img-version");

/// `X.Y` of a `qemu-img version X.Y.Z (…)` line.
fn series(line: &str) -> Option<String> {
    let v = line.trim().strip_prefix("qemu-img version ")?;
    let mut parts = v.split_whitespace().next()?.split('.');
    Some(format!("{}.{}", parts.next()?, parts.next()?))
}

/// The installed qemu-img is of the series `mkomi --version` names, so that "tested with" is
/// true of the run that passes. The series, not the exact build: Debian's stable updates of one
/// series (7.2.x in bookworm) are fixes, and an update landing between two CI runs must not stop
/// the next one; a new series (backports' 10.x) fails here until the suite has passed on it.
#[test]
fn qemu_img_is_the_one_tested() {
    let installed = tool("qemu-img", &["--version"]);
    let installed = installed.lines().next().unwrap_or_default().trim();
    assert_eq!(TESTED.lines().count(), 1, ".ci/qemu-img-version: one line");
    let tested = series(TESTED).expect(".ci/qemu-img-version: `qemu-img version X.Y.Z …`");
    assert_eq!(
        series(installed).as_deref(),
        Some(tested.as_str()),
        "the installed qemu-img ({installed}) is not of the series mkomi --version says it was \
         tested with ({tested}): install it (scripts/test does), or run the suite against this \
         one and then `qemu-img --version | head -n1 > .ci/qemu-img-version`"
    );
}

/// `mkomi --version` and `-V`: `mkomi VERSION (git COMMIT, tested with qemu-img X.Y)`, the
/// commit being this checkout's HEAD (build.rs reruns when HEAD moves).
#[test]
fn version_names_the_commit_and_qemu_img() {
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(repo())
        .output()
        .expect("git");
    assert!(head.status.success(), "git rev-parse: not a checkout?");
    let head = String::from_utf8(head.stdout).expect("UTF-8");
    let qemu = series(TESTED).expect(".ci/qemu-img-version: `qemu-img version X.Y.Z …`");
    let expected = format!(
        "mkomi {} (git {}, tested with qemu-img {qemu})\n",
        env!("CARGO_PKG_VERSION"),
        head.trim()
    );
    for flag in ["--version", "-V"] {
        let out = ok(&[flag]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{flag}");
    }
}

/// `MAJOR.MINOR.PATCH[-PRE]`, numbers without leading zeros (semver.org).
fn is_semver(v: &str) -> bool {
    let (core, pre) = match v.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (v, None),
    };
    let number = |n: &str| {
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && (n == "0" || !n.starts_with('0'))
    };
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| number(p))
        && pre.is_none_or(|p| {
            p.split('.').all(|id| {
                !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
        })
}

/// The semver check itself accepts and refuses what it must (else the test above proves
/// nothing).
#[test]
fn semver_check_refuses_what_it_must() {
    for good in ["0.1.0", "1.20.3", "1.0.0-rc.1", "2.0.0-alpha"] {
        assert!(is_semver(good), "{good}");
    }
    for bad in [
        "0.1",
        "01.0.0",
        "1.0.0.0",
        "1.0.x",
        "1.0.0-",
        "1.0.0-a..b",
        "v1.0.0",
    ] {
        assert!(!is_semver(bad), "{bad}");
    }
}

/// The crate version is semver, and CHANGELOG.md's newest release (Keep a Changelog:
/// `## [VERSION] - YYYY-MM-DD`, under an optional `## [Unreleased]`) is it.
#[test]
fn changelog_names_this_version() {
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        is_semver(version),
        "Cargo.toml's version {version} is not semver"
    );
    let changelog = std::fs::read_to_string(repo().join("CHANGELOG.md")).expect("CHANGELOG.md");
    let newest = changelog
        .lines()
        .filter_map(|l| l.strip_prefix("## ["))
        .find(|l| !l.starts_with("Unreleased]"))
        .expect("CHANGELOG.md: no `## [VERSION] - DATE` heading");
    let (heading_version, rest) = newest.split_once(']').expect("## [VERSION]");
    assert_eq!(
        heading_version, version,
        "CHANGELOG.md's newest release is not Cargo.toml's version"
    );
    let date = rest.strip_prefix(" - ").expect("## [VERSION] - DATE");
    let ymd: Vec<&str> = date.trim().split('-').collect();
    assert!(
        ymd.len() == 3
            && [4, 2, 2]
                .iter()
                .zip(&ymd)
                .all(|(n, p)| p.len() == *n && p.bytes().all(|b| b.is_ascii_digit())),
        "CHANGELOG.md: {date:?} is not YYYY-MM-DD"
    );
}

/// A bundle says which mkomi made it: manifest `Builder` {Name: mkomi, Version: the crate's}.
#[test]
fn bundle_names_its_builder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("omi");
    let fixture = repo().join("fixtures/tiny.qcow2");
    ok(&[
        "register",
        fixture.to_str().expect("UTF-8"),
        "-o",
        out.to_str().expect("UTF-8"),
        "--arch",
        "x86_64",
        "--no-boot-check",
        "-q",
    ]);
    let m = manifest(&out);
    assert_eq!(
        m["Builder"],
        serde_json::json!({"Name": "mkomi", "Version": env!("CARGO_PKG_VERSION")})
    );
}
