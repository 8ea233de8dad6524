//! The CI recipes of `examples/ci/`, run as their CI would run them, so that they cannot rot.
//!
//! Each recipe's YAML is parsed (python3 with PyYAML, what the fake API needs anyway) and the
//! job that makes the image, `omi`, is run step by step with `bash -euo pipefail` in a git
//! checkout of a commit holding the template, as a runner would:
//! - GitHub Actions: the `env:` of the workflow, the job and the step merged, `${{ … }}`
//!   replaced from the small table [`GITHUB_EXPRESSIONS`] (an expression not in it fails the
//!   test), `$GITHUB_ENV` read after each step, the `uses:` actions it needs played by
//!   [`github_action`] (checkout, download-artifact, upload-artifact; any other fails);
//! - GitLab CI: the global and job `variables:` expanded as GitLab expands them, the project's
//!   variables over them, `script` run as one shell, as the runner does.
//!
//! Only the install step is not run (GitHub: the step `id: install-mkomi`; GitLab:
//! `before_script`): the mkomi just built is first on PATH instead. The `rootfs` job, which
//! makes the tarball with debootstrap, is not run either: its artifact is the boot fixture's
//! tree (fixtures/make-boot-rootfs.sh) packed as the job packs it. The keys, the bucket and the
//! API are the tests' own: a local S3 server (s3s-fs) and the fake Outscale API
//! (tests/oapi/fake_api.py), given to the recipes as the CI's secrets and variables.
//!
//! A run passes when what users consume is there: a bundle that `mkomi verify` and
//! `qemu-img check` accept, with the commit's time as its CreationDate; the package in the
//! bucket (`sha256sum -c` of its objects); an available image in the fake API on the default
//! branch with the keys set, and no API call otherwise. A tree with a private key or a user's
//! password fails its job at the build or the audit with exit 3, so the harness cannot pass
//! vacuously. Every shell step of both recipes (the install and rootfs jobs included) passes
//! `shellcheck`.

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use common::oapi_server::{self, OapiServer};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The commit time of the recipes' checkout: it must become the bundle's CreationDate
/// (`SOURCE_DATE_EPOCH` from `git log -1 --format=%ct`), and differs from the epoch the other
/// tests set, so that it cannot come from anywhere else.
const COMMIT_TIME: u64 = 1_710_000_000;
/// [`COMMIT_TIME`] as the manifest writes it.
const COMMIT_DATE: &str = "2024-03-09T16:00:00Z";
/// The repository's default branch.
const DEFAULT_BRANCH: &str = "main";
/// Time for one step (a build of the fixture takes about a second, a publish a few).
const STEP_LIMIT: Duration = Duration::from_secs(300);

/// The `${{ … }}` expressions the GitHub harness replaces, as the runner would: each `secrets.X`
/// and `vars.X` from the settings of the run (an empty string when unset, as GitHub gives), the
/// commit and the default branch. Anything else in the recipe fails the test.
const GITHUB_EXPRESSIONS: [&str; 11] = [
    "secrets.AWS_ACCESS_KEY_ID",
    "secrets.AWS_SECRET_ACCESS_KEY",
    "secrets.OSC_ACCESS_KEY",
    "secrets.OSC_SECRET_KEY",
    "vars.BUCKET",
    "vars.S3_ENDPOINT",
    "vars.OSC_REGION",
    "vars.OSC_ENDPOINT_API",
    "vars.MKOMI_GIT",
    "github.sha",
    "github.event.repository.default_branch",
];

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The CI a recipe is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ci {
    GitHub,
    GitLab,
}

impl Ci {
    const ALL: [Ci; 2] = [Ci::GitHub, Ci::GitLab];

    /// The recipe in the repository.
    fn recipe(self) -> PathBuf {
        common::repo().join(match self {
            Ci::GitHub => "examples/ci/github-actions.yml",
            Ci::GitLab => "examples/ci/gitlab-ci.yml",
        })
    }

    /// Where a user's repository keeps it.
    fn place(self) -> &'static str {
        match self {
            Ci::GitHub => ".github/workflows/omi.yml",
            Ci::GitLab => ".gitlab-ci.yml",
        }
    }
}

/// A recipe file as JSON (PyYAML's `safe_load`, as YAML 1.1: `on` becomes `true`).
fn load(ci: Ci) -> Value {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(ci.recipe())
        .output()
        .expect("python3 could not run");
    assert!(
        out.status.success(),
        "{}: not YAML PyYAML reads (python3 with PyYAML needed): {}",
        ci.recipe().display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from python3")
}

/// The keys of a YAML mapping, failing the test on any not in `allowed` (the harness plays only
/// what it knows: an `if:` or a `cache:` it ignored would make a run mean nothing).
fn keys_within(v: &Value, what: &str, allowed: &[&str]) {
    let map = v.as_object().unwrap_or_else(|| panic!("{what}: a mapping"));
    for k in map.keys() {
        assert!(
            allowed.contains(&k.as_str()),
            "{what}: the harness does not play `{k}:` (it knows {allowed:?})"
        );
    }
}

/// A string field.
fn text<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: a string, not {v}"))
}

/// The boot fixture's x86_64 tree (fixtures/make-boot-rootfs.sh, made as tests/boot.rs makes
/// it: from the package cache, built on a first run), packed as the recipes' rootfs job packs
/// a tree, once per test process.
fn fixture_tarball() -> &'static Path {
    static TARBALL: OnceLock<PathBuf> = OnceLock::new();
    TARBALL.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ci_recipes");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let mut prep = Command::new("bash");
        prep.arg(common::repo().join("fixtures/make-boot-rootfs.sh"))
            .arg(common::qemu::boot_cache())
            .arg(dir.join("fx"))
            .arg("x86_64");
        let out = common::run_with_timeout(prep, Duration::from_secs(900));
        assert!(
            out.status.success(),
            "fixtures/make-boot-rootfs.sh failed (see fixtures/boot-README.md): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tarball = dir.join("rootfs.tar.gz");
        pack(&dir.join("fx/rootfs"), &tarball);
        // What templates/debian-outscale.toml takes from the tree, and from the host.
        let listing = common::tool("tar", &["-tzf", s(&tarball)]);
        let has = |prefix: &str| listing.lines().any(|l| l.starts_with(prefix));
        for needed in [
            "./boot/vmlinuz-",
            "./boot/initrd.img-",
            "./usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        ] {
            assert!(
                has(needed),
                "the boot fixture's tree has no {needed}, which debian-outscale.toml needs"
            );
        }
        assert!(
            Path::new("/usr/lib/grub/i386-pc/boot.img").is_file(),
            "debian-outscale.toml needs GRUB's i386-pc modules on the host: apt-get install grub-pc-bin"
        );
        tarball
    })
}

/// `tar --numeric-owner -czf TARBALL -C TREE .`, as the recipes' rootfs job packs.
fn pack(tree: &Path, tarball: &Path) {
    common::tool(
        "tar",
        &["--numeric-owner", "-czf", s(tarball), "-C", s(tree), "."],
    );
}

/// What a tree holds that must not ship.
#[derive(Clone, Copy, Debug)]
enum Plant {
    /// Nothing: the fixture as it is.
    Nothing,
    /// `/root/.ssh/id_ed25519`, a real (unencrypted) key from ssh-keygen: a high finding.
    PrivateKey,
    /// A password hash for the user alice in `/etc/shadow`: a medium finding.
    UserPassword,
}

/// The tarball of the fixture with `plant` added, in `dir`.
fn tarball(dir: &Path, plant: Plant) -> PathBuf {
    let clean = fixture_tarball();
    let out = dir.join("rootfs.tar.gz");
    let tree = dir.join("planted");
    match plant {
        Plant::Nothing => {
            std::fs::copy(clean, &out).expect("copy the tarball");
            return out;
        }
        Plant::PrivateKey => {
            std::fs::create_dir_all(tree.join("root/.ssh")).expect("mkdir");
            common::keygen("ed25519", &tree.join("root/.ssh/id_ed25519"), "planted");
        }
        Plant::UserPassword => {
            std::fs::create_dir_all(tree.join("etc")).expect("mkdir");
            std::fs::write(
                tree.join("etc/passwd"),
                "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
            )
            .expect("passwd");
            std::fs::write(
                tree.join("etc/shadow"),
                "root:*:19000:0:99999:7:::\nalice:$6$c2FsdHNhbHQ$0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstu.:19000:0:99999:7:::\n",
            )
            .expect("shadow");
        }
    }
    // The fixture's tree under the planted files (one tree, so that the tarball has each
    // entry once).
    let fixture = clean.parent().expect("scratch directory").join("fx/rootfs");
    common::tool(
        "cp",
        &[
            "-a",
            "--no-clobber",
            &format!("{}/.", s(&fixture)),
            s(&tree),
        ],
    );
    pack(&tree, &out);
    out
}

/// The CI settings of a run: the project's secrets and variables, and the pushed branch.
struct Settings {
    /// GitHub `secrets.*`; GitLab masked project variables.
    secrets: BTreeMap<&'static str, String>,
    /// GitHub `vars.*`; GitLab project variables.
    vars: BTreeMap<&'static str, String>,
    /// The branch the commit was pushed to.
    branch: &'static str,
}

impl Settings {
    /// The bucket of `s3` with its keys; the API keys and endpoint of `api` when given.
    fn new(s3: &s3_server::S3Server, api: Option<&OapiServer>, branch: &'static str) -> Self {
        let mut secrets = BTreeMap::from([
            ("AWS_ACCESS_KEY_ID", s3_server::ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", s3_server::SECRET_KEY.to_string()),
        ]);
        let mut vars = BTreeMap::from([
            ("BUCKET", s3_server::BUCKET.to_string()),
            ("S3_ENDPOINT", s3.endpoint.clone()),
            ("OSC_REGION", oapi_server::REGION.to_string()),
            ("MKOMI_GIT", "https://example.invalid/mkomi.git".to_string()),
        ]);
        if let Some(api) = api {
            secrets.insert("OSC_ACCESS_KEY", oapi_server::ACCESS_KEY.to_string());
            secrets.insert("OSC_SECRET_KEY", oapi_server::SECRET_KEY.to_string());
            vars.insert("OSC_ENDPOINT_API", api.api_url.clone());
        }
        Settings {
            secrets,
            vars,
            branch,
        }
    }
}

/// How a run of a recipe's job ended.
struct Outcome {
    /// The checkout the job ran in.
    ws: PathBuf,
    /// The commit.
    sha: String,
    /// The step that failed (GitHub: its name; GitLab: `script`) and its exit code.
    failed: Option<(String, i32)>,
    /// What every step printed, stdout and stderr.
    log: String,
    /// The artifacts the job keeps, as paths in the checkout.
    artifacts: Vec<PathBuf>,
}

impl Outcome {
    /// Requires the job to have passed.
    fn passed(&self, ci: Ci) -> &Self {
        assert!(
            self.failed.is_none(),
            "{ci:?}: the job failed at {:?}; its log:\n{}",
            self.failed,
            self.log
        );
        self
    }
}

/// A checkout of a commit (at [`COMMIT_TIME`]) of a user's repository: the recipe in its place
/// and templates/debian-outscale.toml. Returns the checkout and the commit.
fn checkout(dir: &Path, ci: Ci) -> (PathBuf, String) {
    let ws = dir.join("repo");
    std::fs::create_dir_all(ws.join("templates")).expect("mkdir");
    std::fs::copy(
        common::repo().join("templates/debian-outscale.toml"),
        ws.join("templates/debian-outscale.toml"),
    )
    .expect("copy the template");
    let place = ws.join(ci.place());
    std::fs::create_dir_all(place.parent().expect("parent")).expect("mkdir");
    std::fs::copy(ci.recipe(), &place).expect("copy the recipe");
    let git = |args: &[&str]| -> String {
        let out = Command::new("git")
            .args(["-c", "user.name=CI", "-c", "user.email=ci@example.invalid"])
            .args([
                "-c",
                "commit.gpgsign=false",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(&ws)
            .env("GIT_AUTHOR_DATE", format!("@{COMMIT_TIME} +0000"))
            .env("GIT_COMMITTER_DATE", format!("@{COMMIT_TIME} +0000"))
            .output()
            .expect("git could not run");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "omi"]);
    let sha = git(&["rev-parse", "HEAD"]);
    (ws, sha)
}

/// The environment every runner gives a job: PATH with the mkomi under test first (in place of
/// the install step), HOME (mkomi keeps its upload state in ~/.cache), CI=true.
fn runner_env(home: &Path) -> BTreeMap<String, String> {
    let bin = Path::new(env!("CARGO_BIN_EXE_mkomi"))
        .parent()
        .expect("the binary's directory");
    let path = format!(
        "{}:{}",
        s(bin),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".to_string())
    );
    BTreeMap::from([
        ("PATH".to_string(), path),
        ("HOME".to_string(), s(home).to_string()),
        ("CI".to_string(), "true".to_string()),
        ("LC_ALL".to_string(), "C.UTF-8".to_string()),
    ])
}

/// Runs `script` as a runner runs a step: `bash -euo pipefail` (the runners give -e and
/// pipefail; -u is stricter), in the checkout, with exactly `env`. Returns the exit code and
/// what it printed.
fn run_script(
    dir: &Path,
    n: usize,
    script: &str,
    ws: &Path,
    env: &BTreeMap<String, String>,
) -> (i32, String) {
    let file = dir.join(format!("step-{n}.sh"));
    std::fs::write(&file, script).expect("write the step");
    let mut bash = Command::new("bash");
    bash.args(["--noprofile", "--norc", "-euo", "pipefail"])
        .arg(&file)
        .current_dir(ws)
        .env_clear()
        .envs(env);
    let out = common::run_with_timeout(bash, STEP_LIMIT);
    let log = format!(
        "$ {script}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), log)
}

/// Replaces each `${{ expression }}` of `value` from `table`; an expression the table does not
/// know fails the test.
fn github_expand(value: &str, table: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find("}}")
            .unwrap_or_else(|| panic!("unterminated ${{{{ in {value:?}"));
        let expr = rest[start + 3..start + end].trim();
        assert!(
            GITHUB_EXPRESSIONS.contains(&expr),
            "the harness does not know the expression ${{{{ {expr} }}}} (it knows {GITHUB_EXPRESSIONS:?})"
        );
        out.push_str(table.get(expr).map_or("", String::as_str));
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

/// An `env:` mapping with its expressions replaced, merged into `into`.
fn github_env(
    env: Option<&Value>,
    table: &BTreeMap<String, String>,
    into: &mut BTreeMap<String, String>,
) {
    let Some(env) = env else { return };
    for (k, v) in env.as_object().expect("env: a mapping") {
        let v = match v {
            Value::String(t) => github_expand(t, table),
            other => other.to_string(),
        };
        into.insert(k.clone(), v);
    }
}

/// Plays a `uses:` step of the omi job; anything but the three actions the recipe needs fails.
fn github_action(
    step: &Value,
    ws: &Path,
    tarball: &Path,
    artifacts: &mut Vec<PathBuf>,
    log: &mut String,
) {
    let action = text(&step["uses"], "uses");
    let with = |k: &str| step["with"][k].as_str().map(str::to_string);
    match action {
        // The checkout is the commit the job runs for.
        "actions/checkout@v4" => {}
        // The rootfs job's artifact: the fixture's tarball.
        "actions/download-artifact@v4" => {
            assert_eq!(
                with("name").as_deref(),
                Some("rootfs"),
                "the artifact taken"
            );
            let into = ws.join(with("path").unwrap_or_default());
            std::fs::create_dir_all(&into).expect("mkdir");
            std::fs::copy(tarball, into.join("rootfs.tar.gz")).expect("copy the artifact");
        }
        "actions/upload-artifact@v4" => {
            let path = ws.join(with("path").expect("upload-artifact: path"));
            assert!(
                path.exists(),
                "upload-artifact: {} does not exist",
                path.display()
            );
            artifacts.push(path);
        }
        other => panic!("the harness does not play the action {other}"),
    }
    log.push_str(&format!("(uses {action})\n"));
}

/// Runs the omi job of the GitHub Actions recipe.
fn run_github(dir: &Path, tarball: &Path, settings: &Settings) -> Outcome {
    let wf = load(Ci::GitHub);
    keys_within(
        &wf,
        "the workflow",
        &["name", "true", "on", "defaults", "jobs", "env"],
    );
    assert_eq!(
        wf["defaults"]["run"]["shell"], "bash",
        "the steps' shell: the harness runs bash"
    );
    let jobs: BTreeSet<&str> = wf["jobs"]
        .as_object()
        .expect("jobs")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        jobs,
        BTreeSet::from(["rootfs", "omi"]),
        "a job the harness does not run"
    );
    let job = &wf["jobs"]["omi"];
    keys_within(job, "jobs.omi", &["needs", "runs-on", "env", "steps"]);
    assert_eq!(job["needs"], "rootfs");
    let (ws, sha) = checkout(dir, Ci::GitHub);
    let home = dir.join("home");
    std::fs::create_dir_all(&home).expect("mkdir");
    let github_env_file = dir.join("github-env");
    std::fs::write(&github_env_file, "").expect("GITHUB_ENV");

    let mut table: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &settings.secrets {
        table.insert(format!("secrets.{k}"), v.clone());
    }
    for (k, v) in &settings.vars {
        table.insert(format!("vars.{k}"), v.clone());
    }
    table.insert("github.sha".into(), sha.clone());
    table.insert(
        "github.event.repository.default_branch".into(),
        DEFAULT_BRANCH.into(),
    );

    let mut base = runner_env(&home);
    for (k, v) in [
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_SHA", sha.as_str()),
        ("GITHUB_REF_NAME", settings.branch),
        ("GITHUB_WORKSPACE", s(&ws)),
        ("GITHUB_ENV", s(&github_env_file)),
    ] {
        base.insert(k.to_string(), v.to_string());
    }
    let mut declared = BTreeMap::new();
    github_env(wf.get("env"), &table, &mut declared);
    github_env(job.get("env"), &table, &mut declared);

    let mut outcome = Outcome {
        ws: ws.clone(),
        sha,
        failed: None,
        log: String::new(),
        artifacts: Vec::new(),
    };
    let steps = job["steps"].as_array().expect("steps");
    let mut installs = 0;
    for (n, step) in steps.iter().enumerate() {
        keys_within(
            step,
            "a step",
            &["name", "id", "env", "run", "uses", "with"],
        );
        if step.get("uses").is_some() {
            github_action(step, &ws, tarball, &mut outcome.artifacts, &mut outcome.log);
            continue;
        }
        let run = text(&step["run"], "run");
        // Secrets and variables reach a script through env: only, never pasted into its text
        // (where a value could turn into shell code).
        assert!(
            !run.contains("${{"),
            "an expression inside a run: block: {run}"
        );
        let mut env = declared.clone();
        github_env(step.get("env"), &table, &mut env);
        if step["id"] == "install-mkomi" {
            assert!(
                run.contains("cargo install --locked"),
                "the install step: {run}"
            );
            installs += 1;
            continue;
        }
        // Later steps see what earlier ones wrote to $GITHUB_ENV (NAME=VALUE lines).
        let mut full = base.clone();
        let written = std::fs::read_to_string(&github_env_file).expect("GITHUB_ENV");
        for line in written.lines() {
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("GITHUB_ENV: not NAME=VALUE: {line:?}"));
            assert!(
                !env.contains_key(k),
                "{k} is both in GITHUB_ENV and in an env: mapping"
            );
            full.insert(k.to_string(), v.to_string());
        }
        full.extend(env);
        let (code, log) = run_script(dir, n, run, &ws, &full);
        outcome.log.push_str(&log);
        if code != 0 {
            let name = step["name"].as_str().unwrap_or(run).to_string();
            outcome.failed = Some((name, code));
            break;
        }
    }
    assert_eq!(installs, 1, "one install step, id: install-mkomi");
    outcome
}

/// Expands `$NAME` and `${NAME}` in a GitLab variable's value, as GitLab does, from `env`; a
/// name `env` does not have fails the test.
fn gitlab_expand(value: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut chars = value.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let braced = chars.peek().is_some_and(|&(_, c)| c == '{');
        if braced {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&(_, c)) = chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                chars.next();
            } else {
                break;
            }
        }
        if braced {
            assert_eq!(chars.next().map(|(_, c)| c), Some('}'), "in {value:?}");
        }
        assert!(!name.is_empty(), "a lone $ in {value:?}");
        out.push_str(
            env.get(&name)
                .unwrap_or_else(|| panic!("{value:?}: no variable {name}")),
        );
    }
    out
}

/// A `variables:` mapping (plain values or `{value: …, description: …}`), expanded and merged
/// into `into`.
fn gitlab_variables(vars: Option<&Value>, into: &mut BTreeMap<String, String>) {
    let Some(vars) = vars else { return };
    for (k, v) in vars.as_object().expect("variables: a mapping") {
        let raw = match v {
            Value::String(t) => t.clone(),
            Value::Object(m) => text(&m["value"], "a variable's value").to_string(),
            other => other.to_string(),
        };
        let value = gitlab_expand(&raw, into);
        into.insert(k.clone(), value);
    }
}

/// A script list: each entry a line of one shell script.
fn gitlab_lines(v: &Value, what: &str) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what}: a list"))
        .iter()
        .map(|l| text(l, what).to_string())
        .collect()
}

/// Runs the omi job of the GitLab CI recipe.
fn run_gitlab(dir: &Path, tarball: &Path, settings: &Settings) -> Outcome {
    let doc = load(Ci::GitLab);
    let reserved = ["stages", "variables", "default", "workflow"];
    let map = doc.as_object().expect("a mapping");
    for k in map.keys() {
        assert!(
            reserved.contains(&k.as_str()) || k == "rootfs" || k == "omi",
            "a key the harness does not play: {k}"
        );
    }
    assert!(
        doc.get("default").is_none() && doc.get("workflow").is_none(),
        "default: and workflow: are not played"
    );
    let job = &doc["omi"];
    keys_within(
        job,
        "omi",
        &[
            "stage",
            "image",
            "needs",
            "variables",
            "before_script",
            "script",
            "artifacts",
        ],
    );
    assert_eq!(job["needs"], serde_json::json!(["rootfs"]));
    assert_eq!(
        doc["rootfs"]["artifacts"]["paths"],
        serde_json::json!(["rootfs.tar.gz"]),
        "the rootfs job's artifact, which the harness puts in place"
    );
    let install = gitlab_lines(&job["before_script"], "before_script").join("\n");
    assert!(
        install.contains("cargo install --locked"),
        "before_script is the install: {install}"
    );

    let (ws, sha) = checkout(dir, Ci::GitLab);
    let home = dir.join("home");
    std::fs::create_dir_all(&home).expect("mkdir");
    std::fs::copy(tarball, ws.join("rootfs.tar.gz")).expect("the rootfs artifact");

    // Predefined variables, then .gitlab-ci.yml's (global, then the job's), then the
    // project's, which GitLab lets override the file's.
    let mut env = runner_env(&home);
    for (k, v) in [
        ("GITLAB_CI", "true"),
        ("CI_COMMIT_SHA", sha.as_str()),
        ("CI_COMMIT_SHORT_SHA", &sha[..8]),
        ("CI_COMMIT_BRANCH", settings.branch),
        ("CI_COMMIT_REF_NAME", settings.branch),
        ("CI_DEFAULT_BRANCH", DEFAULT_BRANCH),
        ("CI_PROJECT_DIR", s(&ws)),
    ] {
        env.insert(k.to_string(), v.to_string());
    }
    for (k, v) in settings.vars.iter().chain(&settings.secrets) {
        env.insert(k.to_string(), v.clone());
    }
    let project = env.clone();
    gitlab_variables(doc.get("variables"), &mut env);
    gitlab_variables(job.get("variables"), &mut env);
    for k in settings.vars.keys().chain(settings.secrets.keys()) {
        env.insert(k.to_string(), project[*k].clone());
    }

    // before_script and script run as one shell; before_script (the install) is left out.
    let script = gitlab_lines(&job["script"], "script").join("\n");
    let (code, log) = run_script(dir, 0, &script, &ws, &env);
    let mut outcome = Outcome {
        ws: ws.clone(),
        sha,
        failed: (code != 0).then(|| ("script".to_string(), code)),
        log,
        artifacts: Vec::new(),
    };
    if outcome.failed.is_none() {
        for p in job["artifacts"]["paths"]
            .as_array()
            .expect("artifacts.paths")
        {
            let path = ws.join(text(p, "an artifact path"));
            assert!(path.exists(), "artifact {} does not exist", path.display());
            outcome.artifacts.push(path);
        }
    }
    outcome
}

/// Runs a recipe's omi job in `dir` over the fixture with `plant`.
fn run(ci: Ci, dir: &Path, plant: Plant, settings: &Settings) -> Outcome {
    let tarball = tarball(dir, plant);
    let outcome = match ci {
        Ci::GitHub => run_github(dir, &tarball, settings),
        Ci::GitLab => run_gitlab(dir, &tarball, settings),
    };
    // mkomi never prints a secret key; nor may a recipe (an `echo`, a `set -x`).
    for secret in [s3_server::SECRET_KEY, oapi_server::SECRET_KEY] {
        assert!(
            !outcome.log.contains(secret),
            "{ci:?}: a secret key is in the job's log:\n{}",
            outcome.log
        );
    }
    outcome
}

/// The checks on a passed run: the bundle verifies, `qemu-img check` accepts its disk, it was
/// built at the commit's time, it is the artifact, and the package is whole in the bucket.
/// Returns the bundle's SHA256SUMS.
fn check_bundle_and_export(ci: Ci, out: &Outcome, s3: &s3_server::S3Server) -> String {
    let bundle = out.ws.join("omi");
    common::ok(&["verify", s(&bundle), "-q"]);
    common::qemu_check(&bundle.join("sda1.qcow2"));
    let m = common::manifest(&bundle);
    assert_eq!(m["CreationDate"], COMMIT_DATE, "{ci:?}: SOURCE_DATE_EPOCH");
    assert_eq!(
        m["Image"]["BootModes"],
        serde_json::json!(["legacy", "uefi"])
    );
    assert_eq!(m["Audit"]["Complete"], true, "{ci:?}: {}", m["Audit"]);
    assert!(
        out.artifacts
            .iter()
            .any(|a| a.canonicalize().ok() == bundle.canonicalize().ok()),
        "{ci:?}: the bundle is not kept as an artifact: {:?}",
        out.artifacts
    );
    let prefix = format!("omis/{}", out.sha);
    assert_eq!(
        s3.objects(&prefix),
        [
            "SHA256SUMS",
            "manifest.json",
            "mkomi-manifest.json",
            "sda1.qcow2.gz"
        ],
        "{ci:?}: the exported package (and nothing publish left)"
    );
    let pkg = s3.root.join(s3_server::BUCKET).join(&prefix);
    common::sha256sum_check(&pkg);
    let export: Value =
        serde_json::from_slice(&std::fs::read(pkg.join("manifest.json")).expect("manifest"))
            .expect("the export manifest is JSON");
    assert_eq!(export["Version"], 1);
    assert_eq!(export["Image"]["Name"], "debian-outscale");
    let snaps = export["Image"]["Snapshots"].as_array().expect("Snapshots");
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["Filename"], "sda1.qcow2.gz");
    assert!(
        text(&snaps[0]["PreSignedUrl"], "PreSignedUrl").starts_with(&format!(
            "{}/{}/{prefix}/",
            s3.endpoint,
            s3_server::BUCKET
        )),
        "{ci:?}: {}",
        snaps[0]["PreSignedUrl"]
    );
    // gunzip gives back the bundle's disk file.
    let gz = common::tool(
        "sh",
        &[
            "-c",
            &format!("gzip -dc '{}/sda1.qcow2.gz' | sha256sum", s(&pkg)),
        ],
    );
    let disk = common::tool("sha256sum", &[s(&bundle.join("sda1.qcow2"))]);
    assert_eq!(
        gz.split(' ').next(),
        disk.split(' ').next(),
        "{ci:?}: the object's disk"
    );
    std::fs::read_to_string(bundle.join("SHA256SUMS")).expect("SHA256SUMS")
}

/// Each recipe, on the default branch with every key set: the bundle is built, audited,
/// verified and exported, and the image is published (the fake API has it, available, named
/// after the commit, made from the bundle's disk).
fn full_run(ci: Ci) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = s3_server::S3Server::start();
    let api = OapiServer::start(Some(&s3.endpoint));
    let settings = Settings::new(&s3, Some(&api), DEFAULT_BRANCH);
    let out = run(ci, dir.path(), Plant::Nothing, &settings);
    out.passed(ci);
    check_bundle_and_export(ci, &out, &s3);
    let images = api.images();
    assert_eq!(images.len(), 1, "{ci:?}: {images:?}\n{}", out.log);
    let image = &images[0];
    assert_eq!(image["State"], "available");
    let short = match ci {
        Ci::GitHub => &out.sha[..12],
        Ci::GitLab => &out.sha[..8],
    };
    assert_eq!(image["ImageName"], format!("debian-outscale-{short}"));
    let tags: BTreeMap<String, String> = image["Tags"]
        .as_array()
        .expect("Tags")
        .iter()
        .map(|t| {
            (
                text(&t["Key"], "Key").into(),
                text(&t["Value"], "Value").into(),
            )
        })
        .collect();
    assert_eq!(tags.get("commit"), Some(&out.sha), "{ci:?}: {tags:?}");
    let m = common::manifest(&out.ws.join("omi"));
    assert_eq!(
        m["Disks"][0]["ContentDigest"].as_str(),
        tags.get("mkomi:digest").map(String::as_str),
        "{ci:?}: the image is not the bundle's disk"
    );
}

#[test]
fn github_actions_recipe_builds_exports_and_publishes() {
    full_run(Ci::GitHub);
}

#[test]
fn gitlab_ci_recipe_builds_exports_and_publishes() {
    full_run(Ci::GitLab);
}

/// Without the API keys, or off the default branch, publish says why it did nothing and calls
/// nothing, while the rest of the job passes; and the four bundles (two recipes, two runs
/// each) are byte-identical, since the commit's time is their only clock.
#[test]
fn publish_is_skipped_without_keys_or_off_the_default_branch() {
    let api = OapiServer::start(None);
    let mut sums = Vec::new();
    for ci in Ci::ALL {
        for keys in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let s3 = s3_server::S3Server::start();
            let (branch, why) = if keys {
                ("feature", "is not the default branch (main)")
            } else {
                (DEFAULT_BRANCH, "OSC_SECRET_KEY are not set")
            };
            let settings = Settings::new(&s3, keys.then_some(&api), branch);
            let out = run(ci, dir.path(), Plant::Nothing, &settings);
            out.passed(ci);
            assert!(
                out.log.contains("publish skipped: ") && out.log.contains(why),
                "{ci:?} (keys: {keys}): publish did not say it was skipped ({why}):\n{}",
                out.log
            );
            sums.push((ci, check_bundle_and_export(ci, &out, &s3)));
        }
    }
    let state = api.state();
    assert_eq!(state["Calls"], serde_json::json!({}), "API calls were made");
    assert_eq!(state["Images"], serde_json::json!([]));
    for (ci, sum) in &sums {
        assert_eq!(
            sum, &sums[0].1,
            "{ci:?}'s bundle differs from {:?}'s",
            sums[0].0
        );
    }
}

/// A tree holding a private key stops the job at the build (exit 3, no bundle); one holding a
/// user's password passes the build's `deny=high` and stops it at the audit (exit 3). Nothing
/// reaches the bucket either way.
#[test]
fn a_finding_fails_the_recipe() {
    for ci in Ci::ALL {
        for (plant, step) in [(Plant::PrivateKey, "Build"), (Plant::UserPassword, "Audit")] {
            let dir = tempfile::tempdir().expect("tempdir");
            let s3 = s3_server::S3Server::start();
            let settings = Settings::new(&s3, None, DEFAULT_BRANCH);
            let out = run(ci, dir.path(), plant, &settings);
            let step = match ci {
                Ci::GitHub => step,
                Ci::GitLab => "script",
            };
            assert_eq!(
                out.failed,
                Some((step.to_string(), 3)),
                "{ci:?} with {plant:?}; the log:\n{}",
                out.log
            );
            match plant {
                Plant::PrivateKey => {
                    assert!(out.log.contains("/root/.ssh/id_ed25519"), "{}", out.log);
                    assert!(!out.ws.join("omi").exists(), "{ci:?}: a bundle was written");
                }
                Plant::UserPassword => {
                    assert!(out.log.contains("\"alice\" has a password"), "{}", out.log);
                    assert!(out.ws.join("omi/manifest.json").is_file());
                }
                Plant::Nothing => unreachable!(),
            }
            assert!(out.artifacts.is_empty(), "{ci:?}: {:?}", out.artifacts);
            assert_eq!(
                s3.objects(""),
                Vec::<String>::new(),
                "{ci:?}: objects reached the bucket"
            );
        }
    }
}

/// Every shell step of both recipes, the jobs the harness does not run included, passes
/// shellcheck (as bash, the shell both recipes run).
#[test]
fn recipe_steps_pass_shellcheck() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut scripts: Vec<(String, String)> = Vec::new();
    let wf = load(Ci::GitHub);
    for (job, body) in wf["jobs"].as_object().expect("jobs") {
        for step in body["steps"].as_array().expect("steps") {
            if let Some(run) = step["run"].as_str() {
                let name = step["name"].as_str().unwrap_or("?");
                scripts.push((format!("github {job}: {name}"), run.to_string()));
            }
        }
    }
    let gl = load(Ci::GitLab);
    for job in ["rootfs", "omi"] {
        for part in ["before_script", "script"] {
            if let Some(lines) = gl[job].get(part) {
                let text = gitlab_lines(lines, part).join("\n");
                scripts.push((format!("gitlab {job}: {part}"), text));
            }
        }
    }
    assert!(scripts.len() >= 8, "{} scripts", scripts.len());
    for (n, (what, script)) in scripts.iter().enumerate() {
        let file = dir.path().join(format!("{n}.sh"));
        std::fs::write(&file, script).expect("write");
        let out = Command::new("shellcheck")
            .args(["--shell=bash", "--severity=style"])
            .arg(&file)
            .output()
            .expect("shellcheck could not run: apt-get install shellcheck");
        assert!(
            out.status.success(),
            "shellcheck {what}:\n{}\n{script}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
