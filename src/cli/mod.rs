//! The command line: its grammar ([`Cli`], [`Command`]) and one file per command group, each
//! with its arguments and what it runs.
//!
//! - `common`: output macros, the Ctrl-C flag, exit codes, `fail` and `usage`;
//! - `open`: how disk images are opened (`--allow-backing`, `--input-format`);
//! - `args`: the argument groups several commands flatten in (checks, audit, image fields);
//! - `register`: `register` and `build`; `verify`: `verify`; `inspect`: `inspect` and `audit`;
//! - `export`: `export` and `import`; `publish`: `publish` and `pull`; `store`: `snapshot`, `image` and `store`;
//! - `completions`: `completions`; `generate` (hidden): the man pages and completion files
//!   packages ship.
//!
//! Nothing here reaches `main.rs`, which parses and dispatches; the library does the work.

pub mod args;
pub mod common;
pub mod completions;
pub mod export;
pub mod generate;
pub mod inspect;
pub mod open;
pub mod publish;
pub mod register;
pub mod store;
pub mod verify;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::LazyLock;

/// The exit codes, one line each, the code first: `mkomi --help` shows them (after_help) and
/// mkomi(1) renders them as its EXIT STATUS section (see [`generate`]), both from this text, so
/// that the two cannot differ.
pub const EXIT_STATUS: &str = "\
Exit codes:
  0    success
  1    error: unreadable or invalid input, a field against Outscale's rules, an I/O failure
  2    usage error (bad option or value)
  3    a check failed: verify found differences, the audit found what --deny or --audit deny= refuses, store check found damage, image bundle or image export found a damaged blob
  4    the audit under --deny or --audit deny= was incomplete (something holding data could not be read) and --allow-incomplete was not given; nothing was written
  130  interrupted (Ctrl-C); nothing was written";

/// The qemu-img the test suite was last run against: the first line `qemu-img --version`
/// printed on CI. tests/version.rs fails when the installed one is of another series (X.Y),
/// so that `mkomi --version`'s "tested with" stays true.
pub const QEMU_IMG_TESTED: &str = include_str!("../../.ci/qemu-img-version");

/// What `mkomi --version` prints after the name: the crate version, the commit it was built
/// from (build.rs) and the qemu-img version of [`QEMU_IMG_TESTED`], e.g.
/// `0.1.0 (git 530015d2a4b1, tested with qemu-img 7.2)`.
pub fn version() -> &'static str {
    // Made once at run time: the file's line cannot be trimmed and cut inside `concat!`.
    static TEXT: LazyLock<String> = LazyLock::new(|| {
        let line = QEMU_IMG_TESTED.lines().next().unwrap_or_default().trim();
        // "qemu-img version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)": the series (7.2) is
        // what the suite holds to (tests/version.rs); the file keeps the whole line.
        let upstream = line
            .strip_prefix("qemu-img version ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or(line);
        let qemu = upstream
            .match_indices('.')
            .nth(1)
            .map_or(upstream, |(i, _)| &upstream[..i]);
        format!(
            "{} (git {}, tested with qemu-img {qemu})",
            env!("CARGO_PKG_VERSION"),
            env!("MKOMI_BUILD_COMMIT")
        )
    });
    &TEXT
}

/// `mkomi`'s command line.
#[derive(Parser)]
#[command(
    name = "mkomi",
    version = version(),
    about = "Build Outscale machine images (OMIs) offline",
    long_about = "Build Outscale machine images (OMIs) offline: stream disk images into a bundle \
(manifest.json with Outscale's CreateImage fields, one disk file per block device mapping, \
SHA256SUMS); verify them; look inside disks (inspect) and audit them for embedded secrets; export \
bundles as Outscale export packages to a directory or a bucket, and import them back; publish \
them as OMIs of an Outscale account, and pull OMIs back; keep snapshots and images in a local store \
with Outscale's lifecycle (IDs, sharing, copies, deletion).",
    after_help = EXIT_STATUS
)]
pub struct Cli {
    /// No progress output.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Print the final summary as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// The image store (snapshot, image and store commands); default: MKOMI_STORE, else
    /// $XDG_DATA_HOME/mkomi/store, else ~/.local/share/mkomi/store.
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// The commands; each one's details and examples are with its arguments, in its group's file.
#[derive(Subcommand)]
pub enum Command {
    /// Stream a disk image (and extra volumes) into an OMI bundle.
    Register(Box<register::RegisterArgs>),
    /// Lay out a bootable disk from a template and register it as a bundle.
    Build(Box<register::BuildArgs>),
    /// Check a bundle's files against its manifest and SHA256SUMS.
    Verify(verify::VerifyArgs),
    /// Show what a disk or bundle holds: partitions, file systems, OS, kernels, bootloaders,
    /// architecture and boot modes.
    Inspect(inspect::InspectArgs),
    /// Look for what must not ship in an image: SSH keys, passwords, host keys, machine ids,
    /// histories, cloud-init state.
    Audit(inspect::AuditArgs),
    /// Package a bundle for Outscale object storage: gzip disk objects, the export manifest,
    /// mkomi's manifest and SHA256SUMS, in a directory or a bucket.
    Export(Box<export::ExportArgs>),
    /// Make a bundle from an export package (Outscale's or mkomi's).
    Import(Box<export::ImportArgs>),
    /// Make a bundle an OMI of an Outscale account: upload, snapshots, image, tags, sharing.
    Publish(Box<publish::PublishArgs>),
    /// Bring an OMI or a snapshot of an Outscale account back as a verified bundle.
    Pull(Box<publish::PullArgs>),
    /// Snapshots in the local store: create, list, show, delete.
    #[command(subcommand)]
    Snapshot(store::SnapshotCmd),
    /// Images in the local store: create, list, show, update (launch permissions, tags), copy,
    /// delete, bundle, export, import.
    #[command(subcommand)]
    Image(store::ImageCmd),
    /// The local store itself: check, gc.
    #[command(subcommand)]
    Store(store::StoreCmd),
    /// Print shell completions.
    Completions(completions::CompletionsArgs),
    /// Write the man pages or the completion files into a directory (for packagers).
    #[command(subcommand, hide = true)]
    Generate(generate::GenerateCmd),
}

impl Command {
    /// Whether the command polls [`common::CANCEL`], so that Ctrl-C may set it rather than end
    /// the process.
    pub fn polls_cancel(&self) -> bool {
        match self {
            Command::Register(_)
            | Command::Build(_)
            | Command::Import(_)
            | Command::Export(_)
            | Command::Publish(_) => true,
            Command::Snapshot(cmd) => cmd.polls_cancel(),
            Command::Image(cmd) => cmd.polls_cancel(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// clap's own consistency checks over the whole grammar.
    #[test]
    fn grammar() {
        Cli::command().debug_assert();
    }

    /// `CheckArgs::reword` reaches the arguments it names (an id it misses changes nothing).
    #[test]
    fn reworded_checks() {
        let cli = Cli::command();
        let help = |cmd: &str, arg: &str| {
            let sub = cli.find_subcommand(cmd).expect(cmd);
            let a = sub.get_arguments().find(|a| a.get_id() == arg).expect(arg);
            a.get_help().map(ToString::to_string).unwrap_or_default()
        };
        for (cmd, word) in [
            ("register", "Register"),
            ("build", "Build"),
            ("import", "Import"),
            ("pull", "Pull"),
        ] {
            for arg in ["no_arch_check", "no_boot_check"] {
                assert!(help(cmd, arg).starts_with(word), "{cmd} {arg}");
            }
        }
    }
}
