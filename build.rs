//! Records the git commit mkomi is built from, for `mkomi --version`, as the compile-time
//! variable `MKOMI_BUILD_COMMIT`:
//! - in a git checkout (`.git` beside Cargo.toml), `git rev-parse --short=12 HEAD`;
//! - else `MKOMI_GIT_COMMIT`, which a build from a tarball can pass (scripts/deb passes it too);
//! - else `unknown`.
//!
//! No `-dirty` mark: knowing whether the work tree differs from HEAD means running
//! `git status` (a walk of the whole tree) on every build, since cargo can only be told to
//! rerun this script when named files change, not when any file of the tree does; computed only
//! when HEAD moves, the mark would be stale as often as right.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=MKOMI_GIT_COMMIT");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    // Only this crate's own checkout: a source tarball unpacked inside some other repository
    // must not take that repository's commit.
    let commit = if dir.join(".git").exists() {
        git_commit(&dir)
    } else {
        None
    };
    let commit = commit
        .or_else(|| {
            std::env::var("MKOMI_GIT_COMMIT")
                .ok()
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=MKOMI_BUILD_COMMIT={commit}");
}

/// HEAD's short hash, and the files to watch so that a commit or a checkout reruns this
/// script (and nothing else does); `None` when git is missing or refuses the directory.
fn git_commit(dir: &Path) -> Option<String> {
    let commit = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
    // HEAD names the branch (or holds the hash when detached); the branch's hash is in its loose
    // ref file or, once packed, in packed-refs. In a worktree HEAD is the worktree's own and the
    // refs are the main repository's: `--git-path` resolves both. A watched file that does not
    // exist would rerun the script on every build, so only existing ones are named. A loose
    // ref that appears later (a commit on a packed branch) changes neither HEAD nor
    // packed-refs; HEAD's reflog, which git appends to on every commit and checkout, covers it.
    let mut watch = vec![
        "HEAD".to_owned(),
        "packed-refs".to_owned(),
        "logs/HEAD".to_owned(),
    ];
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        watch.push(branch);
    }
    for name in watch {
        if let Some(path) = git(dir, &["rev-parse", "--git-path", &name]) {
            let path = dir.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    Some(commit)
}

/// `git -C dir ARGS`'s output, trimmed; `None` on any failure.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}
