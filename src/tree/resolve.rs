//! `root:` paths looked up in a tree, as [`crate::fs::ext4::Ext4::resolve`] looks them up in an
//! ext4 image: the same patterns, the same rules, so a template works with either kind of root.

use super::{Data, Kind, Tree, TreePath};
use crate::glob::{self, Syntax};

/// Symbolic links followed in one lookup before giving up, as Linux's `MAXSYMLINKS` (40).
const MAX_LINKS: usize = 40;

/// Glob syntax of the last component: `*` and `?`, as [`crate::fs::ext4`] reads it.
const FILE_NAME: Syntax = Syntax::FileName;

/// Why a pattern found no file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pattern cannot be used.
    #[error("{pattern}: {reason}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Why.
        reason: &'static str,
    },
    /// Nothing matches.
    #[error("{pattern}: no regular file matches in the tree")]
    NoMatch {
        /// The pattern.
        pattern: String,
    },
    /// More than one file matches.
    #[error("{pattern}: {} files match ({}); name one", matches.len(), matches.join(", "))]
    Several {
        /// The pattern.
        pattern: String,
        /// The matches, sorted.
        matches: Vec<String>,
    },
    /// Too many symbolic links.
    #[error("{pattern}: more than 40 symbolic links on the way")]
    Loop {
        /// The pattern.
        pattern: String,
    },
}

/// Finds the one regular file `pattern` names: an absolute path whose last component may hold
/// `*` and `?` (not matching a leading `.` unless the pattern starts with one). Links in the
/// directory part are followed as the kernel would inside a chroot (`..` stops at the root); a
/// link matched by the last component counts when it leads to a regular file. Returns the file's
/// data; zero or several matches are errors.
pub fn resolve(tree: &Tree, pattern: &str) -> Result<Data, Error> {
    find(tree, pattern).map(|(_, data)| data)
}

/// [`resolve`], with the path matched (not the target of a link it names), as
/// [`crate::fs::ext4::Ext4::resolve`] returns it.
pub fn find(tree: &Tree, pattern: &str) -> Result<(String, Data), Error> {
    let bad = |reason| Error::Pattern {
        pattern: pattern.to_owned(),
        reason,
    };
    let Some((dir, last)) = pattern
        .strip_prefix('/')
        .and_then(|_| pattern.rsplit_once('/'))
    else {
        return Err(bad("not an absolute path"));
    };
    if last.is_empty() {
        return Err(bad("ends with /: a file name must follow"));
    }
    if FILE_NAME.is_pattern(dir) {
        return Err(bad(
            "glob characters (* ?) are supported in the last component only",
        ));
    }
    let looping = || Error::Loop {
        pattern: pattern.to_owned(),
    };
    let no_match = || Error::NoMatch {
        pattern: pattern.to_owned(),
    };
    let mut hops = 0;
    let dir = walk(tree, &TreePath::root(), dir.as_bytes(), &mut hops)
        .and_then(|d| match d {
            Some(d) => follow(tree, &d, &mut hops),
            None => Ok(None),
        })
        .map_err(|()| looping())?
        .filter(|d| tree.get(d).is_some_and(|e| e.is_dir()))
        .ok_or_else(no_match)?;
    let mut found: Vec<(String, Data)> = Vec::new();
    for (path, _) in tree.children(&dir) {
        let name = path.name().unwrap_or_default();
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        let hit = if FILE_NAME.is_pattern(last) {
            glob::matches(FILE_NAME, last, name)
        } else {
            name == last
        };
        if !hit {
            continue;
        }
        let mut hops = 0;
        let target = follow(tree, path, &mut hops).map_err(|()| looping())?;
        if let Some(data) = target.and_then(|t| file_data(tree, &t)) {
            // The path as it is (a boot loader opens it), escaped only when it is not UTF-8 or
            // holds a control character (it also goes into one-line messages).
            let text = String::from_utf8(path.to_bytes())
                .ok()
                .filter(|t| !t.chars().any(char::is_control))
                .unwrap_or_else(|| path.to_string());
            found.push((text, data));
        }
    }
    match found.len() {
        0 => Err(no_match()),
        1 => Ok(found.remove(0)),
        _ => Err(Error::Several {
            pattern: pattern.to_owned(),
            matches: found.into_iter().map(|(p, _)| p).collect(),
        }),
    }
}

/// The data of the regular file at `path` (through a hard link).
fn file_data(tree: &Tree, path: &TreePath) -> Option<Data> {
    match &tree.get(path)?.kind {
        Kind::File(d) => Some(d.clone()),
        Kind::HardLink(t) => match &tree.get(t)?.kind {
            Kind::File(d) => Some(d.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// Follows `path` while it is a symbolic link; `Ok(None)` when a link dangles.
fn follow(tree: &Tree, path: &TreePath, hops: &mut usize) -> Result<Option<TreePath>, ()> {
    let mut path = path.clone();
    loop {
        let Some(e) = tree.get(&path) else {
            return Ok(None);
        };
        let Kind::Symlink(target) = &e.kind else {
            return Ok(Some(path));
        };
        *hops += 1;
        if *hops > MAX_LINKS {
            return Err(());
        }
        let base = path.parent().unwrap_or_default();
        match walk(tree, &base, target, hops)? {
            Some(p) => path = p,
            None => return Ok(None),
        }
    }
}

/// Walks `rel` from directory `base` (from the root when `rel` is absolute), following links in
/// every component; the result is the path of the final component after links, which need not
/// exist. `Ok(None)` when a component on the way is missing or not a directory.
fn walk(
    tree: &Tree,
    base: &TreePath,
    rel: &[u8],
    hops: &mut usize,
) -> Result<Option<TreePath>, ()> {
    let mut at = if rel.starts_with(b"/") {
        TreePath::root()
    } else {
        base.clone()
    };
    let parts: Vec<&[u8]> = rel
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    for (i, c) in parts.iter().enumerate() {
        if *c == b".." {
            at = at.parent().unwrap_or_default();
            continue;
        }
        if c.len() > super::MAX_NAME || c.contains(&0) {
            return Ok(None);
        }
        let next = at.join(c);
        let last = i + 1 == parts.len();
        if last {
            return Ok(Some(next));
        }
        match follow(tree, &next, hops)? {
            Some(p) if tree.get(&p).is_some_and(|e| e.is_dir()) => at = p,
            _ => return Ok(None),
        }
    }
    Ok(Some(at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Entry, Meta};

    fn p(s: &str) -> TreePath {
        TreePath::parse(s.as_bytes()).unwrap()
    }

    fn tree() -> Tree {
        let m = Meta::implied_dir(0);
        let mut t = Tree::new(m);
        let file = |b: &[u8]| Entry::new(Kind::File(Data::Bytes(b.into())), m);
        let link = |b: &str| Entry::new(Kind::Symlink(b.as_bytes().to_vec()), m);
        t.insert(p("/usr/lib/boot/vmlinuz-6.1"), file(b"kernel"), m)
            .unwrap();
        t.insert(p("/usr/lib/boot/initrd.img-6.1"), file(b"initrd"), m)
            .unwrap();
        t.insert(p("/usr/lib/boot/.hidden-1"), file(b"h"), m)
            .unwrap();
        t.insert(p("/boot"), link("usr/lib/boot"), m).unwrap();
        t.insert(p("/vmlinuz"), link("boot/vmlinuz-6.1"), m)
            .unwrap();
        t.insert(p("/two/a1"), file(b"a"), m).unwrap();
        t.insert(p("/two/a2"), file(b"b"), m).unwrap();
        t.insert(p("/loop"), link("/loop"), m).unwrap();
        t.insert(p("/dangling"), link("/nowhere"), m).unwrap();
        t.insert(p("/up"), link("../../../usr/lib/boot/vmlinuz-6.1"), m)
            .unwrap();
        t
    }

    fn bytes(d: Data) -> Vec<u8> {
        match d {
            Data::Bytes(b) => b.to_vec(),
            Data::Storage(_) => panic!("storage"),
        }
    }

    #[test]
    fn globs_and_links_resolve_like_the_kernel() {
        let t = tree();
        assert_eq!(bytes(resolve(&t, "/boot/vmlinuz-*").unwrap()), b"kernel");
        assert_eq!(
            bytes(resolve(&t, "/boot/initrd.img-6.1").unwrap()),
            b"initrd"
        );
        assert_eq!(bytes(resolve(&t, "/vmlinuz").unwrap()), b"kernel");
        assert_eq!(bytes(resolve(&t, "/up").unwrap()), b"kernel");
        assert_eq!(bytes(resolve(&t, "/boot/.hid*").unwrap()), b"h");
    }

    #[test]
    fn failures_say_why() {
        let t = tree();
        assert!(matches!(
            resolve(&t, "/boot/none-*"),
            Err(Error::NoMatch { .. })
        ));
        assert!(matches!(
            resolve(&t, "/dangling"),
            Err(Error::NoMatch { .. })
        ));
        assert!(matches!(resolve(&t, "/loop"), Err(Error::Loop { .. })));
        assert!(matches!(resolve(&t, "/boot"), Err(Error::NoMatch { .. })));
        assert!(matches!(resolve(&t, "/*/x"), Err(Error::Pattern { .. })));
        assert!(matches!(resolve(&t, "boot/x"), Err(Error::Pattern { .. })));
        assert!(matches!(resolve(&t, "/boot/*"), Err(Error::Several { .. })));
        let e = resolve(&t, "/two/a?").unwrap_err().to_string();
        assert_eq!(e, "/two/a?: 2 files match (/two/a1, /two/a2); name one");
    }
}
