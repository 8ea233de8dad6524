//! Files a template adds to a tree (`[[file]]`): new files, replacements, symbolic links.

use super::{Data, Entry, Kind, Meta, Tree, TreePath};
use crate::storage::ReadAt;
use crate::storage::file::LocalFile;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;

/// Errors of adding files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The host file could not be opened.
    #[error("{}: {source}", path.display())]
    Source {
        /// The host file.
        path: PathBuf,
        /// Why.
        source: crate::storage::Error,
    },
    /// The host file is not a regular file.
    #[error("{}: not a regular file", path.display())]
    NotAFile {
        /// The host file.
        path: PathBuf,
    },
    /// A directory stands where the file goes.
    #[error("{path}: a directory is there; a file cannot replace it")]
    IsADirectory {
        /// The path in the tree.
        path: String,
    },
    /// The tree refused it (a parent is not a directory).
    #[error(transparent)]
    Tree(#[from] super::Error),
}

/// Where an added file's content comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddContent {
    /// These bytes.
    Bytes(Vec<u8>),
    /// A regular file on the host.
    Host(PathBuf),
    /// A symbolic link to this target.
    Symlink(Vec<u8>),
}

/// One `[[file]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddFile {
    /// Where it goes.
    pub path: TreePath,
    /// What it holds.
    pub content: AddContent,
    /// Permission bits (`0o7777`).
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Only when this path is in the tree (e.g. `/usr/bin/cloud-init`).
    pub if_exists: Option<TreePath>,
}

/// What was done, for the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Added {
    /// The path, non-UTF-8 bytes escaped.
    pub path: String,
    /// Whether something was there before.
    pub replaced: bool,
    /// Size of the content, in bytes.
    pub bytes: u64,
}

/// Adds `files` to `tree`, in order, stamped with `mtime`; files whose `if_exists` path is
/// missing are skipped. Missing parent directories are made (`0755`, root). A file may replace
/// a file or a link, never a directory.
pub fn add_files(tree: &mut Tree, files: &[AddFile], mtime: i64) -> Result<Vec<Added>, Error> {
    let mut done = Vec::new();
    for f in files {
        if let Some(cond) = &f.if_exists
            && tree.get(cond).is_none()
        {
            continue;
        }
        let existing = tree.get(&f.path);
        if existing.is_some_and(Entry::is_dir) {
            return Err(Error::IsADirectory {
                path: f.path.to_string(),
            });
        }
        let replaced = existing.is_some();
        let kind = match &f.content {
            AddContent::Bytes(b) => Kind::File(Data::Bytes(b.as_slice().into())),
            AddContent::Symlink(t) => Kind::Symlink(t.clone()),
            AddContent::Host(p) => {
                if !std::fs::metadata(p).is_ok_and(|m| m.is_file()) && p.exists() {
                    return Err(Error::NotAFile { path: p.clone() });
                }
                let file = LocalFile::open(p).map_err(|source| Error::Source {
                    path: p.clone(),
                    source,
                })?;
                let storage: Arc<dyn ReadAt> = Arc::new(file);
                Kind::File(Data::Storage(storage))
            }
        };
        let bytes = match &kind {
            Kind::File(d) => d.len(),
            Kind::Symlink(t) => t.len() as u64,
            _ => 0,
        };
        let meta = Meta {
            mode: f.mode & 0o7777,
            uid: f.uid,
            gid: f.gid,
            mtime,
            mtime_nsec: 0,
        };
        tree.insert(
            f.path.clone(),
            Entry::new(kind, meta),
            Meta::implied_dir(mtime),
        )?;
        done.push(Added {
            path: f.path.to_string(),
            replaced,
            bytes,
        });
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> TreePath {
        TreePath::parse(s.as_bytes()).unwrap()
    }

    fn add(path: &str, content: AddContent) -> AddFile {
        AddFile {
            path: p(path),
            content,
            mode: 0o644,
            uid: 0,
            gid: 0,
            if_exists: None,
        }
    }

    #[test]
    fn adds_replaces_and_skips() {
        let mut t = Tree::new(Meta::implied_dir(0));
        let m = Meta::implied_dir(0);
        t.insert(
            p("/usr/bin/cloud-init"),
            Entry::new(Kind::Symlink(b"x".to_vec()), m),
            m,
        )
        .unwrap();
        t.insert(
            p("/etc/old"),
            Entry::new(Kind::Symlink(b"y".to_vec()), m),
            m,
        )
        .unwrap();
        let mut cond = add(
            "/etc/cloud/cloud.cfg.d/90.cfg",
            AddContent::Bytes(b"a: 1\n".to_vec()),
        );
        cond.if_exists = Some(p("/usr/bin/cloud-init"));
        let mut skipped = add("/etc/never", AddContent::Bytes(b"x".to_vec()));
        skipped.if_exists = Some(p("/usr/bin/missing"));
        let files = [
            cond,
            skipped,
            add("/etc/old", AddContent::Bytes(b"new".to_vec())),
            add("/etc/link", AddContent::Symlink(b"/etc/old".to_vec())),
        ];
        let done = add_files(&mut t, &files, 42).unwrap();
        assert_eq!(done.len(), 3);
        assert!(done[1].replaced);
        let e = t.get(&p("/etc/cloud/cloud.cfg.d/90.cfg")).unwrap();
        assert_eq!(e.meta.mtime, 42);
        assert_eq!(e.meta.mode, 0o644);
        assert!(t.get(&p("/etc/cloud")).unwrap().is_dir());
        assert!(t.get(&p("/etc/never")).is_none());
        assert!(matches!(t.get(&p("/etc/old")).unwrap().kind, Kind::File(_)));
    }

    #[test]
    fn a_directory_is_not_replaced_and_links_are_not_followed() {
        let mut t = Tree::new(Meta::implied_dir(0));
        let m = Meta::implied_dir(0);
        t.insert(p("/etc"), Entry::new(Kind::Dir, m), m).unwrap();
        t.insert(p("/lnk"), Entry::new(Kind::Symlink(b"/etc".to_vec()), m), m)
            .unwrap();
        let e = add_files(&mut t, &[add("/etc", AddContent::Bytes(vec![]))], 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc: a directory is there; a file cannot replace it"
        );
        let e = add_files(&mut t, &[add("/lnk/x", AddContent::Bytes(vec![]))], 0).unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");
    }
}
