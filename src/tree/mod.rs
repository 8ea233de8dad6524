//! File trees: what a directory, a tar archive or a container image holds, as one model that the
//! root file system writer ([`crate::layout::ext4`]) lays out.
//!
//! A [`Tree`] maps paths to [`Entry`]s. Paths are lists of components, each a non-empty byte
//! string without `/` or NUL that is neither `.` nor `..`; names need not be UTF-8. The map is
//! ordered by components, so a directory's subtree is one contiguous range and iteration order
//! (the order inodes and blocks are given out in) depends on the names alone, never on the order
//! an input listed them in. File data is not held: an entry points at the storage its bytes live
//! in (the host file, or the spool a tar stream was read into), and holes in that storage are
//! holes in the file.

pub mod add;
pub mod dir;
pub mod hostfile;
pub mod oci;
pub mod resolve;
pub mod sanitize;
pub mod source;
pub mod tar;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::storage::ReadAt;

/// The longest name ext4 (and every Linux file system) stores: `name_len` is one byte.
pub const MAX_NAME: usize = 255;

/// Errors of tree building.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path component is empty, `.`, `..`, too long, or holds `/` or NUL.
    #[error("{path}: {reason}")]
    BadPath {
        /// The path, as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A path goes through something that is not a directory.
    #[error("{path}: its parent {parent} is not a directory")]
    NotADirectory {
        /// The path inserted.
        path: String,
        /// The ancestor that is not a directory.
        parent: String,
    },
    /// A hard link names a path that is missing or not a regular file.
    #[error("{path}: hard link to {target}, which {reason}")]
    BadLink {
        /// The link.
        path: String,
        /// What it links to.
        target: String,
        /// Why it cannot be linked.
        reason: &'static str,
    },
}

/// Result of tree operations.
pub type Result<T> = std::result::Result<T, Error>;

/// The longest path, in bytes between `/`s (the leading one not counted): Linux's `PATH_MAX`
/// (4,096, its terminating NUL included). It also bounds the depth, and so what one member of
/// an archive can cost to insert.
pub const MAX_PATH: usize = 4095;

/// A path inside a tree: its components, root first; the root has none.
///
/// Held as one byte string, the components joined by NUL (which no component holds), so a path
/// costs its length and not an allocation per component; and since NUL sorts before every other
/// byte, the byte order of that string is the order of the component lists: a directory comes
/// right before its subtree, which is one contiguous range.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TreePath(Box<[u8]>);

impl TreePath {
    /// The root directory.
    pub fn root() -> Self {
        TreePath(Box::default())
    }

    /// Parses `/`-separated bytes. Leading, trailing and repeated `/` and `.` components are
    /// dropped; `..`, NUL, names over [`MAX_NAME`] bytes and paths over [`MAX_PATH`] are refused
    /// (an archive cannot climb out of its own tree).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut out: Vec<u8> = Vec::new();
        for c in bytes.split(|&b| b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => return Err(bad(bytes, "`..` leads out of the tree")),
                _ if c.contains(&0) => return Err(bad(bytes, "a name holds a NUL byte")),
                _ if c.len() > MAX_NAME => return Err(bad(bytes, "a name is over 255 bytes")),
                _ => {
                    if !out.is_empty() {
                        out.push(0);
                    }
                    out.extend_from_slice(c);
                    if out.len() > MAX_PATH {
                        return Err(bad(bytes, "the path is over 4,095 bytes"));
                    }
                }
            }
        }
        Ok(TreePath(out.into()))
    }

    /// The components, root first.
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == 0).filter(|c| !c.is_empty())
    }

    /// How many components: 0 for the root.
    pub fn depth(&self) -> usize {
        if self.0.is_empty() {
            0
        } else {
            self.0.iter().filter(|&&b| b == 0).count() + 1
        }
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The last component; `None` for the root.
    pub fn name(&self) -> Option<&[u8]> {
        if self.0.is_empty() {
            return None;
        }
        self.0.rsplit(|&b| b == 0).next()
    }

    /// The parent; `None` for the root.
    pub fn parent(&self) -> Option<TreePath> {
        if self.0.is_empty() {
            return None;
        }
        let cut = self.0.iter().rposition(|&b| b == 0).unwrap_or(0);
        Some(TreePath(self.0.get(..cut).unwrap_or_default().into()))
    }

    /// This path with `name` appended (the caller vouches that it is a valid component).
    pub fn join(&self, name: &[u8]) -> TreePath {
        let mut p = Vec::with_capacity(self.0.len() + 1 + name.len());
        p.extend_from_slice(&self.0);
        if !p.is_empty() {
            p.push(0);
        }
        p.extend_from_slice(name);
        TreePath(p.into())
    }

    /// Whether `self` is `other` or lies under it.
    pub fn starts_with(&self, other: &TreePath) -> bool {
        other.0.is_empty()
            || (self.0.starts_with(&other.0) && matches!(self.0.get(other.0.len()), None | Some(0)))
    }

    /// The path as `/`-separated bytes, starting with `/`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() + 1);
        out.push(b'/');
        out.extend(self.0.iter().map(|&b| if b == 0 { b'/' } else { b }));
        out
    }
}

impl fmt::Display for TreePath {
    /// The path with non-UTF-8 bytes escaped, for messages and manifests.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_bytes().escape_ascii())
    }
}

impl fmt::Debug for TreePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

fn bad(path: &[u8], reason: &'static str) -> Error {
    Error::BadPath {
        path: path.escape_ascii().to_string(),
        reason,
    }
}

/// Owner, permissions and time of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits with set-user-ID, set-group-ID and sticky (`0o7777`); the file type is
    /// the [`Kind`]'s.
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time: seconds since the Unix epoch (may be negative).
    pub mtime: i64,
    /// Nanoseconds within that second, below 1,000,000,000.
    pub mtime_nsec: u32,
}

impl Meta {
    /// What a directory that an input implies but never lists gets: `0755`, root, `mtime`.
    pub fn implied_dir(mtime: i64) -> Self {
        Meta {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime,
            mtime_nsec: 0,
        }
    }
}

/// Where a regular file's bytes are.
#[derive(Clone)]
pub enum Data {
    /// These bytes (files added by a template, small rewrites).
    Bytes(Arc<[u8]>),
    /// All of this storage: a host file, or a window of a spool. Its holes are the file's holes.
    Storage(Arc<dyn ReadAt>),
}

impl Data {
    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Data::Bytes(b) => b.len() as u64,
            Data::Storage(s) => s.len(),
        }
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Data::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Data::Storage(s) => write!(f, "Storage({} bytes)", s.len()),
        }
    }
}

/// What an entry is.
#[derive(Clone, Debug)]
pub enum Kind {
    /// A directory; its children are the entries under its path.
    Dir,
    /// A regular file.
    File(Data),
    /// A symbolic link to these bytes (not resolved, not checked).
    Symlink(Vec<u8>),
    /// Another name for the regular file at this path: one inode with two links. Its own
    /// [`Meta`] and xattrs are ignored; the target's are the inode's.
    HardLink(TreePath),
    /// A character device.
    CharDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
    /// A Unix socket (kept as an inode, as `tar` and `mke2fs -d` keep it).
    Socket,
}

/// One path's entry.
#[derive(Clone, Debug)]
pub struct Entry {
    /// What it is.
    pub kind: Kind,
    /// Owner, permissions, time.
    pub meta: Meta,
    /// Extended attributes by full name (`security.capability`, `user.foo`), values as stored.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Entry {
    /// An entry with no xattrs.
    pub fn new(kind: Kind, meta: Meta) -> Self {
        Entry {
            kind,
            meta,
            xattrs: BTreeMap::new(),
        }
    }

    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir)
    }
}

/// A file tree: entries by path, the root always present and always a directory.
#[derive(Clone, Debug)]
pub struct Tree {
    entries: BTreeMap<TreePath, Entry>,
    /// How many [`Kind::HardLink`]s name each path, so that removing a file nothing links to
    /// (every replacement, every whiteout) does not scan the whole tree for its links.
    links_to: BTreeMap<TreePath, usize>,
}

impl Tree {
    /// A tree holding only its root directory, with this metadata.
    pub fn new(root: Meta) -> Self {
        let mut entries = BTreeMap::new();
        entries.insert(TreePath::root(), Entry::new(Kind::Dir, root));
        Tree {
            entries,
            links_to: BTreeMap::new(),
        }
    }

    /// The entry at `path`.
    pub fn get(&self, path: &TreePath) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// The entry at `path`, to change in place (its kind may change, but not to or from a
    /// [`Kind::HardLink`]: links go through [`Tree::insert`] and [`Tree::remove`]).
    pub fn get_mut(&mut self, path: &TreePath) -> Option<&mut Entry> {
        self.entries.get_mut(path)
    }

    /// Every entry, in path order: a directory comes right before its subtree, and siblings in
    /// byte order of their names.
    pub fn iter(&self) -> impl Iterator<Item = (&TreePath, &Entry)> {
        self.entries.iter()
    }

    /// Every entry, in path order, to change in place.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&TreePath, &mut Entry)> {
        self.entries.iter_mut()
    }

    /// The number of entries, the root included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false: the root is always there.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries under `dir` (not `dir` itself), in path order.
    pub fn subtree<'a>(
        &'a self,
        dir: &'a TreePath,
    ) -> impl Iterator<Item = (&'a TreePath, &'a Entry)> {
        self.entries
            .range(dir.clone()..)
            .skip(1)
            .take_while(move |(p, _)| p.starts_with(dir))
    }

    /// The direct children of `dir`, in name order.
    pub fn children<'a>(
        &'a self,
        dir: &'a TreePath,
    ) -> impl Iterator<Item = (&'a TreePath, &'a Entry)> {
        let depth = dir.depth() + 1;
        self.subtree(dir).filter(move |(p, _)| p.depth() == depth)
    }

    /// Puts `entry` at `path`, replacing what was there (a directory keeps its subtree when
    /// replaced by a directory, and loses it otherwise, as a later tar member or layer replaces
    /// an earlier one). Missing parent directories are created with `implied` metadata. A
    /// parent that exists and is not a directory is an error. The root can only be replaced by
    /// a directory (its metadata changes).
    pub fn insert(&mut self, path: TreePath, entry: Entry, implied: Meta) -> Result<()> {
        if path.is_root() {
            if !entry.is_dir() {
                return Err(Error::BadPath {
                    path: "/".into(),
                    reason: "the root can only be a directory",
                });
            }
            self.entries.insert(path, entry);
            return Ok(());
        }
        // From the parent up to the first ancestor that exists: usually the parent itself, so
        // an insert costs one lookup, not one per component.
        let mut missing = Vec::new();
        let mut up = path.parent();
        while let Some(ancestor) = up {
            match self.entries.get(&ancestor) {
                Some(e) if e.is_dir() => break,
                Some(_) => {
                    return Err(Error::NotADirectory {
                        path: path.to_string(),
                        parent: ancestor.to_string(),
                    });
                }
                None => {
                    up = ancestor.parent();
                    missing.push(ancestor);
                }
            }
        }
        for ancestor in missing {
            self.entries
                .insert(ancestor, Entry::new(Kind::Dir, implied));
        }
        let keep_subtree = entry.is_dir() && self.entries.get(&path).is_some_and(Entry::is_dir);
        if !keep_subtree {
            self.remove(&path);
        }
        if let Kind::HardLink(t) = &entry.kind {
            *self.links_to.entry(t.clone()).or_default() += 1;
        }
        self.entries.insert(path, entry);
        Ok(())
    }

    /// Removes `path` and everything under it; returns how many entries went. Removing the root
    /// empties it but keeps it. A regular file that hard links elsewhere point at moves to the
    /// first remaining link (in path order), so those links keep their content, as a file
    /// system keeps an inode while a name for it remains.
    pub fn remove(&mut self, path: &TreePath) -> usize {
        let doomed: Vec<TreePath> = if path.is_root() {
            self.subtree(path).map(|(p, _)| p.clone()).collect()
        } else if self.entries.contains_key(path) {
            std::iter::once(path.clone())
                .chain(self.subtree(path).map(|(p, _)| p.clone()))
                .collect()
        } else {
            return 0;
        };
        let mut removed = BTreeMap::new();
        for p in &doomed {
            if let Some(e) = self.entries.remove(p) {
                if let Kind::HardLink(t) = &e.kind {
                    self.unlink(t);
                }
                removed.insert(p.clone(), e);
            }
        }
        // Hard links elsewhere to a removed file: the first becomes the file, the rest point
        // at it. Links inside the removed subtree went with it.
        let linked_to = |p: &TreePath, e: &Entry| {
            matches!(e.kind, Kind::File(_)) && self.links_to.contains_key(p)
        };
        if !removed.iter().any(|(p, e)| linked_to(p, e)) {
            return doomed.len();
        }
        let linked: Vec<(TreePath, TreePath)> = self
            .entries
            .iter()
            .filter_map(|(p, e)| match &e.kind {
                Kind::HardLink(t) if removed.contains_key(t) => Some((p.clone(), t.clone())),
                _ => None,
            })
            .collect();
        let mut moved: BTreeMap<TreePath, TreePath> = BTreeMap::new();
        for (link, target) in linked {
            match moved.get(&target) {
                Some(new_home) => {
                    if let Some(e) = self.entries.get_mut(&link) {
                        e.kind = Kind::HardLink(new_home.clone());
                    }
                    self.unlink(&target);
                    *self.links_to.entry(new_home.clone()).or_default() += 1;
                }
                None => {
                    if let Some(file) = removed.get(&target) {
                        self.entries.insert(link.clone(), file.clone());
                        self.unlink(&target);
                        moved.insert(target, link);
                    }
                }
            }
        }
        doomed.len()
    }

    /// One link fewer names `target`.
    fn unlink(&mut self, target: &TreePath) {
        if let Some(n) = self.links_to.get_mut(target) {
            *n -= 1;
            if *n == 0 {
                self.links_to.remove(target);
            }
        }
    }

    /// Checks that every hard link names a regular file (not another link), as the writer
    /// needs; inputs call it once they are done.
    pub fn check_links(&self) -> Result<()> {
        for (p, e) in &self.entries {
            if let Kind::HardLink(t) = &e.kind {
                let reason = match self.entries.get(t).map(|e| &e.kind) {
                    None => "is not in the tree",
                    Some(Kind::File(_)) => continue,
                    Some(Kind::HardLink(_)) => "is itself a hard link",
                    Some(_) => "is not a regular file",
                };
                return Err(Error::BadLink {
                    path: p.to_string(),
                    target: t.to_string(),
                    reason,
                });
            }
        }
        Ok(())
    }

    /// A digest of everything the tree says about its entries except file content: paths, types,
    /// owners, modes, times, xattrs, sizes, link targets, device numbers, in path order. Equal
    /// trees read from different kinds of source have equal fingerprints.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let field = |h: &mut Sha256, b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        for (p, e) in &self.entries {
            h.update((p.depth() as u64).to_le_bytes());
            for c in p.components() {
                field(&mut h, c);
            }
            let (tag, detail): (u8, Vec<u8>) = match &e.kind {
                Kind::Dir => (0, Vec::new()),
                Kind::File(d) => (1, d.len().to_le_bytes().to_vec()),
                Kind::Symlink(t) => (2, t.clone()),
                Kind::HardLink(t) => (3, t.to_bytes()),
                Kind::CharDevice { major, minor } => {
                    (4, [major.to_le_bytes(), minor.to_le_bytes()].concat())
                }
                Kind::BlockDevice { major, minor } => {
                    (5, [major.to_le_bytes(), minor.to_le_bytes()].concat())
                }
                Kind::Fifo => (6, Vec::new()),
                Kind::Socket => (7, Vec::new()),
            };
            h.update([tag]);
            field(&mut h, &detail);
            let m = &e.meta;
            h.update(m.mode.to_le_bytes());
            h.update(m.uid.to_le_bytes());
            h.update(m.gid.to_le_bytes());
            h.update(m.mtime.to_le_bytes());
            h.update(m.mtime_nsec.to_le_bytes());
            h.update((e.xattrs.len() as u64).to_le_bytes());
            for (k, v) in &e.xattrs {
                field(&mut h, k);
                field(&mut h, v);
            }
        }
        h.finalize().into()
    }

    /// Clamps every time to at most `epoch` (`SOURCE_DATE_EPOCH`), as reproducible builds ask:
    /// later times become `epoch`, earlier ones stay.
    pub fn clamp_times(&mut self, epoch: i64) {
        for e in self.entries.values_mut() {
            if e.meta.mtime > epoch || (e.meta.mtime == epoch && e.meta.mtime_nsec > 0) {
                e.meta.mtime = epoch;
                e.meta.mtime_nsec = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> TreePath {
        TreePath::parse(s.as_bytes()).unwrap()
    }

    fn file(bytes: &[u8]) -> Entry {
        Entry::new(Kind::File(Data::Bytes(bytes.into())), Meta::implied_dir(0))
    }

    #[test]
    fn parse_refuses_escapes_and_normalises() {
        assert_eq!(p("/a//b/./c/"), p("a/b/c"));
        assert!(TreePath::parse(b"a/../b").is_err());
        assert!(TreePath::parse(b"a/b\0c").is_err());
        assert!(TreePath::parse(&[b'x'; 256]).is_err());
        assert!(TreePath::parse(&[b'x'; 255]).is_ok());
        assert_eq!(p("/").to_bytes(), b"/");
        assert_eq!(TreePath::parse(b"a/\xff").unwrap().to_string(), "/a/\\xff");
    }

    #[test]
    fn paths_are_compact_and_bounded() {
        let ab = p("a/b");
        assert_eq!(ab.depth(), 2);
        assert_eq!(ab.name(), Some(&b"b"[..]));
        assert_eq!(ab.parent(), Some(p("a")));
        assert_eq!(p("a").parent(), Some(TreePath::root()));
        assert_eq!(TreePath::root().parent(), None);
        assert_eq!(TreePath::root().join(b"a").join(b"b"), ab);
        assert!(p("a/b/c").starts_with(&ab));
        assert!(ab.starts_with(&ab));
        assert!(!p("a/bc").starts_with(&ab));
        assert!(ab.starts_with(&TreePath::root()));
        let comps: Vec<&[u8]> = ab.components().collect();
        assert_eq!(comps, [&b"a"[..], &b"b"[..]]);
        // 4,095 bytes between the slashes pass, 4,096 do not; so does depth.
        let name = [b'n'; 255];
        let mut long = Vec::new();
        while long.len() + 256 <= MAX_PATH {
            if !long.is_empty() {
                long.push(b'/');
            }
            long.extend_from_slice(&name);
        }
        long.push(b'/');
        long.resize(MAX_PATH, b'x');
        assert!(TreePath::parse(&long).is_ok());
        long.push(b'x');
        assert!(TreePath::parse(&long).is_err());
        assert!(TreePath::parse(&b"a/".repeat(2049)).is_err());
        assert_eq!(TreePath::parse(&b"a/".repeat(2048)).unwrap().depth(), 2048);
    }

    #[test]
    fn subtrees_are_contiguous_whatever_the_names() {
        let mut t = Tree::new(Meta::implied_dir(0));
        let m = Meta::implied_dir(0);
        for s in ["a/b/c", "a/b-x", "a/b0", "a/b/d"] {
            t.insert(p(s), file(b"x"), m).unwrap();
        }
        let under: Vec<String> = t.subtree(&p("a/b")).map(|(p, _)| p.to_string()).collect();
        assert_eq!(under, ["/a/b/c", "/a/b/d"]);
        let kids: Vec<String> = t.children(&p("a")).map(|(p, _)| p.to_string()).collect();
        assert_eq!(kids, ["/a/b", "/a/b-x", "/a/b0"]);
    }

    #[test]
    fn insert_through_a_file_is_refused() {
        let mut t = Tree::new(Meta::implied_dir(0));
        let m = Meta::implied_dir(0);
        t.insert(p("f"), file(b"x"), m).unwrap();
        assert!(matches!(
            t.insert(p("f/g"), file(b"y"), m),
            Err(Error::NotADirectory { .. })
        ));
    }

    #[test]
    fn replacing_a_directory_by_a_file_drops_its_subtree() {
        let mut t = Tree::new(Meta::implied_dir(0));
        let m = Meta::implied_dir(0);
        t.insert(p("d/x"), file(b"x"), m).unwrap();
        t.insert(p("d"), Entry::new(Kind::Dir, m), m).unwrap();
        assert!(t.get(&p("d/x")).is_some());
        t.insert(p("d"), file(b"now a file"), m).unwrap();
        assert!(t.get(&p("d/x")).is_none());
    }

    #[test]
    fn removing_a_link_target_moves_the_file_to_a_remaining_link() {
        let mut t = Tree::new(Meta::implied_dir(0));
        let m = Meta::implied_dir(0);
        t.insert(p("a/f"), file(b"data"), m).unwrap();
        t.insert(p("b/g"), Entry::new(Kind::HardLink(p("a/f")), m), m)
            .unwrap();
        t.insert(p("c/h"), Entry::new(Kind::HardLink(p("a/f")), m), m)
            .unwrap();
        assert_eq!(t.remove(&p("a")), 2);
        assert!(matches!(t.get(&p("b/g")).unwrap().kind, Kind::File(_)));
        match &t.get(&p("c/h")).unwrap().kind {
            Kind::HardLink(target) => assert_eq!(target, &p("b/g")),
            other => panic!("{other:?}"),
        }
        t.check_links().unwrap();
        // The index follows: one link to /b/g, none to /a/f.
        assert_eq!(t.links_to.get(&p("b/g")), Some(&1));
        assert_eq!(t.links_to.get(&p("a/f")), None);
        t.remove(&p("c/h"));
        assert!(t.links_to.is_empty());
    }

    #[test]
    fn clamp_only_lowers() {
        let mut t = Tree::new(Meta::implied_dir(500));
        t.insert(p("old"), file(b""), Meta::implied_dir(10))
            .unwrap();
        t.clamp_times(100);
        assert_eq!(t.get(&TreePath::root()).unwrap().meta.mtime, 100);
        assert_eq!(t.get(&p("old")).unwrap().meta.mtime, 0);
    }
}
