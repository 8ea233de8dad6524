//! Reading a host directory into a [`Tree`].
//!
//! The walk never follows a symbolic link (`symlink_metadata`, `lgetxattr`): a link is an entry
//! of its own, whatever it points at. Names are taken as raw bytes, owners and modes as they are
//! (a template may remap them later). Regular files are not read: each becomes a [`HostFile`],
//! opened only while the image is written (see [`super::hostfile`] for why not a `LocalFile`),
//! whose holes `SEEK_DATA`/FIEMAP report, so a sparse file stays sparse. Files with more than one
//! link are grouped by `(st_dev, st_ino)`: the first path in tree order holds the data and the
//! others become [`Kind::HardLink`]s to it, whatever order the directory listed them in.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::hostfile::{FdPool, HostFile};
use super::{Data, Entry, Kind, Meta, Tree, TreePath};

/// The most bytes `llistxattr` returns and the largest xattr value (`XATTR_LIST_MAX`,
/// `XATTR_SIZE_MAX` in linux/limits.h).
const XATTR_MAX: usize = 65_536;

/// Errors of reading a directory; each names the host path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call on the path failed.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The host path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The system's error.
        source: io::Error,
    },
    /// The entry cannot go into the tree.
    #[error("{}: {source}", path.display())]
    Tree {
        /// The host path.
        path: PathBuf,
        /// Why.
        source: super::Error,
    },
    /// The input is not a directory.
    #[error("{}: not a directory", path.display())]
    NotADirectory {
        /// The host path.
        path: PathBuf,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

fn io_err(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { path, what, source }
}

/// Reads the directory `root` (a symbolic link naming a directory is followed for the root
/// only: the caller named it) and everything under it.
pub fn read_dir_tree(root: &Path) -> Result<Tree> {
    let meta = std::fs::metadata(root).map_err(io_err(root, "cannot stat"))?;
    if !meta.is_dir() {
        return Err(Error::NotADirectory {
            path: root.to_owned(),
        });
    }
    let mut tree = Tree::new(meta_of(&meta));
    if let Some(e) = tree.get_mut(&TreePath::root()) {
        e.xattrs = xattrs(root)?;
    }
    let pool = FdPool::new();
    let mut next_id = 0u64;
    // Files with more than one link, by (device, inode), with every path seen.
    let mut links: BTreeMap<(u64, u64), Vec<TreePath>> = BTreeMap::new();
    let mut pending: Vec<(PathBuf, TreePath)> = vec![(root.to_owned(), TreePath::root())];
    while let Some((host_dir, tree_dir)) = pending.pop() {
        let list = std::fs::read_dir(&host_dir).map_err(io_err(&host_dir, "cannot list"))?;
        for item in list {
            let item = item.map_err(io_err(&host_dir, "cannot list"))?;
            let host = item.path();
            let name = item.file_name();
            let path = tree_dir.join(name.as_bytes());
            let md = std::fs::symlink_metadata(&host).map_err(io_err(&host, "cannot stat"))?;
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                pending.push((host.clone(), path.clone()));
                Kind::Dir
            } else if ft.is_file() {
                if md.nlink() > 1 {
                    links
                        .entry((md.dev(), md.ino()))
                        .or_default()
                        .push(path.clone());
                }
                next_id += 1;
                let f = HostFile::new(pool.clone(), next_id, host.clone(), md.len());
                Kind::File(Data::Storage(Arc::new(f)))
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&host).map_err(io_err(&host, "cannot read"))?;
                Kind::Symlink(target.as_os_str().as_bytes().to_vec())
            } else if ft.is_char_device() {
                let (major, minor) = dev_numbers(md.rdev());
                Kind::CharDevice { major, minor }
            } else if ft.is_block_device() {
                let (major, minor) = dev_numbers(md.rdev());
                Kind::BlockDevice { major, minor }
            } else if ft.is_fifo() {
                Kind::Fifo
            } else {
                Kind::Socket
            };
            let mut entry = Entry::new(kind, meta_of(&md));
            entry.xattrs = xattrs(&host)?;
            let implied = Meta::implied_dir(0);
            tree.insert(path, entry, implied)
                .map_err(|source| Error::Tree { path: host, source })?;
        }
    }
    // The first name of each multiply linked file in tree order keeps the data.
    for paths in links.values_mut() {
        paths.sort();
        let Some((first, rest)) = paths.split_first() else {
            continue;
        };
        for p in rest {
            if let Some(e) = tree.get_mut(p) {
                e.kind = Kind::HardLink(first.clone());
                e.xattrs.clear();
            }
        }
    }
    tree.check_links().map_err(|source| Error::Tree {
        path: root.to_owned(),
        source,
    })?;
    Ok(tree)
}

/// Major and minor of a device number (glibc's `gnu_dev_major`/`gnu_dev_minor` encoding, which
/// rustix implements).
fn dev_numbers(rdev: u64) -> (u32, u32) {
    (rustix::fs::major(rdev), rustix::fs::minor(rdev))
}

/// The tree metadata of a host entry.
fn meta_of(md: &std::fs::Metadata) -> Meta {
    Meta {
        // The permission bits with set-user-ID, set-group-ID and sticky; the type is the Kind's.
        mode: (md.mode() & 0o7777) as u16,
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime(),
        // The kernel keeps it below 10^9; clamped all the same, as Meta requires.
        mtime_nsec: u32::try_from(md.mtime_nsec()).unwrap_or(0).min(999_999_999),
    }
}

/// Every extended attribute of `path` itself (never of what a symlink names).
fn xattrs(path: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = BTreeMap::new();
    // Most files have none: ask the size first rather than zero a 64 KiB buffer per file.
    let size = match rustix::fs::llistxattr_query(path) {
        Ok(0) => return Ok(out),
        Ok(n) => n,
        // File systems without xattrs (some FUSE ones) have none to copy.
        Err(rustix::io::Errno::OPNOTSUPP) => return Ok(out),
        Err(e) => return Err(io_err(path, "cannot list the xattrs of")(e.into())),
    };
    // The list may grow between the two calls: the kernel's maximum always holds it.
    let mut list = vec![0u8; size.min(XATTR_MAX)];
    let n = match rustix::fs::llistxattr(path, &mut list[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::RANGE) => {
            list = vec![0u8; XATTR_MAX];
            rustix::fs::llistxattr(path, &mut list[..])
                .map_err(|e| io_err(path, "cannot list the xattrs of")(e.into()))?
        }
        Err(e) => return Err(io_err(path, "cannot list the xattrs of")(e.into())),
    };
    for name in list.get(..n).unwrap_or_default().split(|&b| b == 0) {
        if name.is_empty() {
            continue;
        }
        let cname = std::ffi::OsStr::from_bytes(name);
        let read = |cap: usize| -> rustix::io::Result<Vec<u8>> {
            let mut value = vec![0u8; cap];
            let len = rustix::fs::lgetxattr(path, cname, &mut value[..])?;
            value.truncate(len);
            Ok(value)
        };
        let got = match rustix::fs::lgetxattr_query(path, cname) {
            Ok(len) => match read(len.min(XATTR_MAX)) {
                Err(rustix::io::Errno::RANGE) => read(XATTR_MAX),
                other => other,
            },
            Err(e) => Err(e),
        };
        match got {
            Ok(value) => {
                out.insert(name.to_vec(), value);
            }
            // Removed between the list and the read.
            Err(rustix::io::Errno::NODATA) => {}
            Err(e) => return Err(io_err(path, "cannot read an xattr of")(e.into())),
        }
    }
    Ok(out)
}
