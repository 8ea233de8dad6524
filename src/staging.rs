//! Staging: the one place where outputs appear atomically.
//!
//! An output directory (a bundle, an export package, a bundle written out of the store) is made
//! in a hidden temporary directory beside it, `.NAME.mkomi-PID.tmp`, and renamed into place
//! when complete ([`Target::commit`]), so the destination holds a whole output or nothing. The
//! temporary directory is removed if the work stops first (an error, Ctrl-C), by [`TempDir`]'s
//! `Drop`. Work directories beside the output (`.NAME.mkomi-PID.work`) use the same type and
//! are always removed.

use crate::format::{self, Disk};
use crate::util::sync_dir;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An error making an output; its message names the file or directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The output cannot be made where it was asked for.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The output or its parent directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The output exists and `--force` was not given.
    #[error("{}: already exists (use --force to replace it)", .0.display())]
    Exists(PathBuf),
    /// A file or directory could not be made, written, synced, moved or removed.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

fn io_err(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_owned();
    move |source| Error::Io { path, what, source }
}

/// Splits `output` into its parent directory and final name; the parent must exist.
pub fn split_output(output: &Path) -> Result<(PathBuf, String)> {
    let name = output
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| *n != "." && *n != "..")
        .ok_or_else(|| Error::Invalid {
            path: output.to_owned(),
            reason: "the output must name a directory to create".into(),
        })?;
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(Error::Invalid {
            path: parent,
            reason: "the output's parent directory does not exist".into(),
        });
    }
    Ok((parent, name.to_owned()))
}

/// The directory an output will appear as, checked to be creatable ([`split_output`]).
#[derive(Clone, Debug)]
pub struct Target {
    output: PathBuf,
    parent: PathBuf,
    name: String,
}

impl Target {
    /// The target `output`: see [`split_output`].
    pub fn new(output: &Path) -> Result<Self> {
        let (parent, name) = split_output(output)?;
        Ok(Self {
            output: output.to_owned(),
            parent,
            name,
        })
    }

    /// Refuses an output that exists (anything, even a dangling link) unless `force`.
    pub fn refuse_existing(&self, force: bool) -> Result<()> {
        if self.output.symlink_metadata().is_ok() && !force {
            return Err(Error::Exists(self.output.clone()));
        }
        Ok(())
    }

    /// The output's path.
    pub fn output(&self) -> &Path {
        &self.output
    }

    /// The directory the output appears in.
    pub fn parent(&self) -> &Path {
        &self.parent
    }

    /// A hidden sibling of the output, `.NAME.mkomi-PID.KIND`: on the output's file system, so
    /// that it renames into place, and named by process so that two runs do not collide.
    fn sibling(&self, kind: &str) -> PathBuf {
        self.parent.join(format!(
            ".{}.mkomi-{}.{kind}",
            self.name,
            std::process::id()
        ))
    }

    /// Creates the temporary directory the output is made in (`.NAME.mkomi-PID.tmp`), removed
    /// unless committed.
    pub fn stage(&self) -> Result<TempDir> {
        self.scratch("tmp")
    }

    /// Creates a work directory beside the output (`.NAME.mkomi-PID.KIND`), always removed
    /// when dropped. Directories of the same output left by runs that were killed (their PID
    /// no longer runs) are removed first: a killed build may leave gigabytes of spooled tree
    /// there, and nothing else will ever claim them.
    pub fn scratch(&self, kind: &str) -> Result<TempDir> {
        self.remove_stale();
        let path = self.sibling(kind);
        std::fs::create_dir(&path).map_err(io_err(&path, "cannot create"))?;
        Ok(TempDir::adopt(path))
    }

    /// Removes `.NAME.mkomi-PID.*` siblings whose process is gone (no `/proc/PID`). Best
    /// effort: what cannot be listed or removed stays, and the run goes on.
    fn remove_stale(&self) {
        let Ok(entries) = std::fs::read_dir(&self.parent) else {
            return;
        };
        let prefix = format!(".{}.mkomi-", self.name);
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            let Some((pid, kind)) = rest.split_once('.') else {
                continue;
            };
            let Ok(pid) = pid.parse::<u32>() else {
                continue;
            };
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if kind.is_empty()
                || !is_dir
                || pid == std::process::id()
                || Path::new(&format!("/proc/{pid}")).exists()
            {
                continue;
            }
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }

    /// Moves the finished temporary directory to the output. An existing output (with
    /// `--force`) is first moved aside, then removed once the new one is in place. With `sync`,
    /// the parent directory is synced after the rename.
    pub fn commit(&self, mut tmp: TempDir, sync: bool) -> Result<()> {
        let (output, parent) = (&self.output, &self.parent);
        let old = self.sibling("old");
        let replaced = output.symlink_metadata().is_ok();
        if replaced {
            std::fs::rename(output, &old).map_err(io_err(output, "cannot move aside"))?;
        }
        if let Err(e) = std::fs::rename(&tmp.path, output) {
            if replaced {
                let _ = std::fs::rename(&old, output);
            }
            return Err(io_err(output, "cannot rename the finished bundle to")(e));
        }
        tmp.committed = true;
        if sync {
            // Some filesystems refuse fsync on directories; the output is complete either way.
            let _ = sync_dir(parent);
        }
        if replaced {
            let removed = if old.is_dir() {
                std::fs::remove_dir_all(&old)
            } else {
                std::fs::remove_file(&old)
            };
            removed.map_err(io_err(&old, "cannot remove the replaced bundle"))?;
        }
        Ok(())
    }
}

/// A directory removed, with its content, when dropped unless committed
/// ([`Target::commit`]).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    committed: bool,
}

impl TempDir {
    /// Takes charge of the directory at `path`, which exists.
    pub fn adopt(path: PathBuf) -> Self {
        Self {
            path,
            committed: false,
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Writes `bytes` to a new file at `path` (in a staged directory); with `sync`, fsyncs it.
pub fn write_file(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let mut f = File::create(path).map_err(io_err(path, "cannot create"))?;
    std::io::Write::write_all(&mut f, bytes).map_err(io_err(path, "cannot write"))?;
    if sync {
        f.sync_all().map_err(io_err(path, "cannot sync"))?;
    }
    Ok(())
}

/// Syncs the staged directory `dir`, so that its entries survive a crash.
pub fn sync(dir: &Path) -> Result<()> {
    sync_dir(dir).map_err(io_err(dir, "cannot sync"))
}

/// A staged file read back, named in messages as the file it was made from: a bundle's disk
/// examined once copied, named as its source.
pub struct Renamed {
    /// The staged file, opened.
    pub inner: Arc<dyn Disk>,
    /// The name messages give it.
    pub path: PathBuf,
}

impl Disk for Renamed {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn extent(&self, offset: u64, max_len: u64) -> format::Result<format::Extent> {
        self.inner.extent(offset, max_len)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> format::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn format(&self) -> &'static str {
        self.inner.format()
    }
    fn path(&self) -> &Path {
        &self.path
    }
}
