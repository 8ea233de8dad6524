//! The store's commands: `snapshot`, `image` and `store`, Outscale's verbs offline.

use super::args::{ImageArgs, parse_var};
use super::common::{
    CANCEL, EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_MISMATCH, errln, fail, now_epoch, outln, usage,
};
use super::export::{PackageArgs, StorageArgs, import_origin, package_request, print_export};
use super::open::OpenArgs;
use clap::Subcommand;
use mkomi::export::import;
use mkomi::manifest::Architecture;
use mkomi::manifest::volume::parse_bool;
use mkomi::progress::Progress;
use mkomi::store::image::{self, Filter};
use mkomi::store::{self, Store, maintain, snapshot};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Store a disk image's content as a new snapshot; prints its ID.
    #[command(after_help = "Example:
  mkomi snapshot create disk.qcow2 --description 'web root, 2026-11'

The content is stored once per ContentDigest: a snapshot of content the store already has costs
no space, and a second snapshot of an unchanged file reads nothing.")]
    Create {
        /// A raw or qcow2 disk image.
        source: PathBuf,
        /// Description.
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        open: OpenArgs,
    },
    /// List the snapshots.
    List,
    /// Show a snapshot (JSON: Snapshot, Outscale's fields, beside Mkomi, mkomi's).
    Show {
        /// snap-…
        #[arg(value_parser = store::snapshot_id)]
        id: String,
    },
    /// Delete a snapshot; refused while an image uses it.
    Delete {
        /// snap-…
        #[arg(value_parser = store::snapshot_id)]
        id: String,
    },
}

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Register an image from snapshots, from disk images (snapshotted first), or from a bundle;
    /// prints its ID.
    #[command(after_help = "Examples:
  mkomi image create --root snap-1a2b3c4d --name web --arch x86_64
  mkomi image create --root root.qcow2 --bdm /dev/sdb=data.raw,size=100,type=gp2
  mkomi image create --from-bundle debian-omi

The disks are inspected and audited as `register` does (--arch and --boot-mode default to what
the root disk holds). The image is `pending` while it is made and `available` once committed.")]
    Create(Box<CreateArgs>),
    /// List the images.
    List {
        /// name=…,arch=…,state=…,tag:KEY=VALUE (repeatable; `*` matches any characters).
        #[arg(long)]
        filter: Vec<String>,
    },
    /// Show an image (JSON: Image, Outscale's fields, beside Mkomi, mkomi's).
    Show {
        /// ami-…
        #[arg(value_parser = store::image_id)]
        id: String,
    },
    /// Change launch permissions, description and tags, as UpdateImage does.
    Update(UpdateArgs),
    /// Copy an image: a new ID with its own snapshots, independent of the source.
    Copy {
        /// ami-…
        #[arg(value_parser = store::image_id)]
        id: String,
        /// The copy's ImageName; default: the source's.
        #[arg(long)]
        name: Option<String>,
    },
    /// Deregister and delete an image; its snapshots stay unless --with-snapshots.
    Delete {
        /// ami-…
        #[arg(value_parser = store::image_id)]
        id: String,
        /// Also delete its snapshots that no other image uses.
        #[arg(long)]
        with_snapshots: bool,
    },
    /// Write an image out as a bundle (then `verify` and `export` apply).
    Bundle {
        /// ami-…
        #[arg(value_parser = store::image_id)]
        id: String,
        /// The bundle directory to create.
        #[arg(short, long, value_name = "DIR")]
        output: PathBuf,
        /// Replace DIR if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Export an image as an Outscale export package (see `mkomi export`).
    Export {
        /// ami-…
        #[arg(value_parser = store::image_id)]
        id: String,
        #[command(flatten)]
        package: PackageArgs,
    },
    /// Import an export package into the store (see `mkomi import`); prints the image's ID.
    Import {
        /// The export manifest: a path, s3://BUCKET/KEY or an http(s) URL.
        manifest: String,
        #[command(flatten)]
        storage: StorageArgs,
    },
}

#[derive(Subcommand)]
pub enum StoreCmd {
    /// Check the catalog and re-verify every blob; turn images left pending by a crash into
    /// failed and remove what crashed operations left. Exit code 3 when damage is found.
    Check,
    /// Remove blobs no snapshot uses and what crashed operations left.
    Gc,
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The root volume: snap-… or a disk image.
    #[arg(
        long,
        value_name = "snap-…|PATH",
        required_unless_present = "from_bundle"
    )]
    root: Option<String>,
    /// A bundle made by register, build or import.
    #[arg(long, value_name = "DIR", conflicts_with = "root")]
    from_bundle: Option<PathBuf>,
    #[command(flatten)]
    image: ImageArgs,
}

#[derive(clap::Args)]
pub struct UpdateArgs {
    /// ami-…
    #[arg(value_parser = store::image_id)]
    id: String,
    /// An account that may launch the image (12 digits); repeatable.
    #[arg(long, value_name = "ACCOUNT", value_parser = image::account_id)]
    add_account: Vec<String>,
    /// An account that may no longer launch it; repeatable.
    #[arg(long, value_name = "ACCOUNT", value_parser = image::account_id)]
    remove_account: Vec<String>,
    /// Whether everyone may launch it.
    #[arg(long, value_name = "BOOL", value_parser = parse_bool)]
    global: Option<bool>,
    /// Description.
    #[arg(long)]
    description: Option<String>,
    /// A tag KEY=VALUE to set; repeatable.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_var)]
    tag: Vec<(String, String)>,
    /// A tag to remove, by key; repeatable.
    #[arg(long, value_name = "KEY")]
    remove_tag: Vec<String>,
}

impl SnapshotCmd {
    /// Whether the command polls [`CANCEL`] (so that Ctrl-C may set it rather than end the
    /// process).
    pub fn polls_cancel(&self) -> bool {
        matches!(self, SnapshotCmd::Create { .. })
    }
}

impl ImageCmd {
    /// Whether the command polls [`CANCEL`] (so that Ctrl-C may set it rather than end the
    /// process).
    pub fn polls_cancel(&self) -> bool {
        matches!(
            self,
            ImageCmd::Create(_) | ImageCmd::Export { .. } | ImageCmd::Import { .. }
        )
    }
}

/// Opens the store; `create` for the commands that may make it.
fn open(dir: Option<PathBuf>, create: bool) -> Result<Store, ExitCode> {
    let dir = match dir.or_else(store::default_dir) {
        Some(d) => d,
        None => return Err(usage("no store: give --store DIR or set MKOMI_STORE")),
    };
    let opened = if create {
        Store::open(&dir)
    } else {
        Store::open_existing(&dir)
    };
    opened.map_err(|e| fail(&e))
}

fn print_json<T: Serialize>(v: &T) {
    outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// The exit code of a store error, its line on stderr.
fn failed(e: &store::Error) -> ExitCode {
    if e.is_interrupted() {
        errln!("mkomi: interrupted; nothing was stored");
        return ExitCode::from(EXIT_INTERRUPTED);
    }
    let code = fail(e);
    // Damage in the store, or an audit under deny=: a check failed.
    let refused_by_audit = matches!(e, store::Error::Bundle(b) if b.is_audit_denied());
    if e.is_damaged() || refused_by_audit {
        ExitCode::from(EXIT_MISMATCH)
    } else if matches!(e, store::Error::Bundle(b) if b.is_audit_incomplete()) {
        ExitCode::from(EXIT_INCOMPLETE)
    } else {
        code
    }
}

fn done<T: Serialize>(
    r: store::Result<T>,
    json: bool,
    line: impl FnOnce(&T) -> String,
) -> ExitCode {
    match r {
        Ok(v) if json => {
            print_json(&v);
            ExitCode::SUCCESS
        }
        Ok(v) => {
            let text = line(&v);
            if !text.is_empty() {
                outln!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => failed(&e),
    }
}

/// What a `create` or `import` that made a new store does when it fails: removes the store
/// again (if it stored nothing and no other process has it open), so that a refused command
/// leaves nothing.
fn settle<T>(store: Store, r: &store::Result<T>) {
    if r.is_err() {
        store.discard_if_new();
    }
}

/// `mkomi snapshot …`.
pub fn snapshot(
    cmd: SnapshotCmd,
    dir: Option<PathBuf>,
    progress: &Progress,
    json: bool,
) -> ExitCode {
    let create = matches!(cmd, SnapshotCmd::Create { .. });
    let mut store = match open(dir, create) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match cmd {
        SnapshotCmd::Create {
            source,
            description,
            open,
        } => {
            let req = snapshot::CreateRequest {
                source,
                description,
                open: open.options(),
            };
            let r = snapshot::create(&mut store, &req, progress, Some(&CANCEL));
            settle(store, &r);
            done(r.map(snapshot::Shown::from), json, |s| {
                s.snapshot.snapshot_id.clone()
            })
        }
        SnapshotCmd::List => done(
            snapshot::list(&store).map(snapshot::Listed::from),
            json,
            |l| {
                l.snapshots
                    .iter()
                    .map(|s| {
                        format!(
                            "{}  {:>5} GiB  {}  {}",
                            s.snapshot_id,
                            s.volume_size,
                            if s.mkomi.images.is_empty() {
                                "-".to_owned()
                            } else {
                                s.mkomi.images.join(",")
                            },
                            s.description.as_deref().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            },
        ),
        SnapshotCmd::Show { id } => done(
            snapshot::show(&store, &id).map(snapshot::Shown::from),
            true,
            |_| String::new(),
        ),
        SnapshotCmd::Delete { id } => {
            #[derive(Serialize)]
            #[serde(rename_all = "PascalCase")]
            struct Deleted {
                snapshot_id: String,
            }
            done(
                snapshot::delete(&mut store, &id).map(|()| Deleted {
                    snapshot_id: id.clone(),
                }),
                json,
                |d| format!("{} deleted", d.snapshot_id),
            )
        }
    }
}

/// A usage error found in the arguments before the store is opened (so that a refused
/// command makes no store).
fn image_usage(cmd: &ImageCmd) -> Result<(), ExitCode> {
    match cmd {
        ImageCmd::Create(a) => match (&a.from_bundle, &a.root) {
            (Some(_), _) => {
                let given = a.image.given();
                if !given.is_empty() {
                    return Err(usage(&format!(
                        "--from-bundle takes the image as the bundle has it: {} cannot apply",
                        given.join(", ")
                    )));
                }
                Ok(())
            }
            (None, Some(root)) => {
                // A volume's content is snap-… or a path: what looks like an ID but names no
                // file is a mistaken ID, not a missing file.
                let sources = std::iter::once(std::path::Path::new(root))
                    .chain(a.image.bdm.iter().map(|v| v.source.as_path()));
                for src in sources {
                    let text = src.to_string_lossy();
                    let id_like = text.starts_with("snap-") || store::is_image_id(&text);
                    if id_like && !src.exists() {
                        store::snapshot_id(&text).map_err(|m| usage(&m))?;
                    }
                }
                Ok(())
            }
            (None, None) => Err(usage("--root or --from-bundle is required")),
        },
        ImageCmd::List { filter } => {
            let mut f = Filter::default();
            for term in filter {
                f.add(term).map_err(|m| usage(&m))?;
            }
            Ok(())
        }
        ImageCmd::Update(a) if update_of(a).is_empty() => Err(usage(
            "image update: nothing to change: give --add-account, --remove-account, --global, \
             --description, --tag or --remove-tag",
        )),
        _ => Ok(()),
    }
}

fn update_of(a: &UpdateArgs) -> image::Update {
    image::Update {
        add_accounts: a.add_account.clone(),
        remove_accounts: a.remove_account.clone(),
        global: a.global,
        description: a.description.clone(),
        tags: a.tag.clone(),
        remove_tags: a.remove_tag.clone(),
    }
}

/// `mkomi image …`.
pub fn image(cmd: ImageCmd, dir: Option<PathBuf>, progress: &Progress, json: bool) -> ExitCode {
    if let Err(code) = image_usage(&cmd) {
        return code;
    }
    let create = matches!(cmd, ImageCmd::Create(_) | ImageCmd::Import { .. });
    let mut store = match open(dir, create) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match cmd {
        ImageCmd::Create(a) => {
            let r = match (&a.from_bundle, &a.root) {
                (Some(b), _) => image::create_from_bundle(&mut store, b, progress, Some(&CANCEL)),
                (_, root) => {
                    let root = root.as_deref().unwrap_or_default();
                    let i = &a.image;
                    let req = image::CreateRequest {
                        name: i.name.clone(),
                        description: i.description.clone(),
                        architecture: i.arch,
                        boot_modes: i.boot_modes.clone(),
                        checks: i.checks.checks(),
                        audit: i.audit.policy(),
                        root: i.root(std::path::Path::new(root)),
                        extra: i.bdm.clone(),
                        open: i.open.options(),
                    };
                    image::create(&mut store, &req, progress, Some(&CANCEL))
                }
            };
            settle(store, &r);
            done(r.map(image::Shown::from), json, |i| {
                i.image.image_id.clone()
            })
        }
        ImageCmd::List { filter } => {
            let mut f = Filter::default();
            for term in &filter {
                if let Err(m) = f.add(term) {
                    return usage(&m);
                }
            }
            done(
                image::list(&store, &f).map(|images| image::Listed { images }),
                json,
                |l| {
                    let l = &l.images;
                    l.iter()
                        .map(|i| {
                            format!(
                                "{}  {:<9}  {:<6}  {}",
                                i.image_id,
                                i.state,
                                i.architecture
                                    .map(|a| match a {
                                        Architecture::I386 => "i386",
                                        Architecture::X86_64 => "x86_64",
                                    })
                                    .unwrap_or("-"),
                                i.image_name
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            )
        }
        ImageCmd::Show { id } => done(
            image::show(&store, &id).map(image::Shown::from),
            true,
            |_| String::new(),
        ),
        ImageCmd::Update(a) => done(
            image::update(&mut store, &a.id, &update_of(&a)).map(image::Shown::from),
            json,
            |i| i.image.image_id.clone(),
        ),
        ImageCmd::Copy { id, name } => done(
            image::copy(&mut store, &id, name.as_deref()).map(image::Shown::from),
            json,
            |i| i.image.image_id.clone(),
        ),
        ImageCmd::Delete { id, with_snapshots } => {
            done(image::delete(&mut store, &id, with_snapshots), json, |d| {
                let mut line = format!("{} deleted", d.image_id);
                if !d.snapshots_deleted.is_empty() {
                    line += &format!("; snapshots deleted: {}", d.snapshots_deleted.join(", "));
                }
                if !d.snapshots_kept.is_empty() {
                    line += &format!("; snapshots kept: {}", d.snapshots_kept.join(", "));
                }
                line
            })
        }
        ImageCmd::Bundle { id, output, force } => {
            done(image::bundle(&store, &id, &output, force), json, |_| {
                output.display().to_string()
            })
        }
        ImageCmd::Export { id, package } => {
            let req = match package_request(&package, PathBuf::new()) {
                Ok(r) => r,
                Err(code) => return code,
            };
            match image::export(&store, &id, &req) {
                Ok(r) => print_export(&r, json),
                Err(e) => failed(&e),
            }
        }
        ImageCmd::Import { manifest, storage } => {
            let origin = match import_origin(&manifest, &storage) {
                Ok(o) => o,
                Err(code) => {
                    store.discard_if_new();
                    return code;
                }
            };
            let now = now_epoch();
            let req = import::Request {
                origin,
                output: PathBuf::new(),
                force: false,
                format: mkomi::manifest::DiskFormat::Qcow2,
                creation_epoch: now,
                now,
                sync: true,
                checks: Default::default(),
            };
            let r = image::import(&mut store, &req, progress, Some(&CANCEL)).map(|(i, _)| i);
            settle(store, &r);
            done(r.map(image::Shown::from), json, |i| {
                i.image.image_id.clone()
            })
        }
    }
}

/// `mkomi store …`.
pub fn maintain(cmd: StoreCmd, dir: Option<PathBuf>, progress: &Progress, json: bool) -> ExitCode {
    let mut store = match open(dir, false) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match cmd {
        StoreCmd::Check => match maintain::check(&mut store, progress) {
            Ok(r) => {
                if json {
                    print_json(&r);
                } else {
                    for f in &r.fixed {
                        outln!("fixed: {f}");
                    }
                    for p in &r.problems {
                        outln!("damage: {p}");
                    }
                    outln!(
                        "{}: {} image(s), {} snapshot(s), {} blob(s) verified ({} bytes read): {}",
                        store.root().display(),
                        r.images,
                        r.snapshots,
                        r.blobs,
                        r.bytes,
                        if r.problems.is_empty() {
                            "no damage".to_owned()
                        } else {
                            format!("{} problem(s)", r.problems.len())
                        }
                    );
                }
                if r.problems.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_MISMATCH)
                }
            }
            Err(e) => fail(&e),
        },
        StoreCmd::Gc => done(maintain::gc(&mut store), json, |r| {
            let mut lines: Vec<String> = r
                .blobs_removed
                .iter()
                .map(|b| format!("removed: {b}"))
                .chain(r.work_removed.iter().map(|w| format!("removed: {w}")))
                .collect();
            lines.push(format!(
                "{} blob(s) removed, {} bytes freed",
                r.blobs_removed.len(),
                r.bytes_freed
            ));
            lines.join("\n")
        }),
    }
}
