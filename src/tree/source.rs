//! Which kind of input a path is, and reading it into a [`Tree`]: the one entry point the build
//! uses for a root file system's source.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::Tree;
pub use super::oci::Platform;
use super::tar::{self, Seekable, Streamed, TarReader};

/// What kind of input a path holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A host directory ([`super::dir`]).
    Dir,
    /// A tar archive, plain or compressed ([`super::tar`]).
    Tar,
    /// An OCI image layout directory, an OCI layout in a tar (`skopeo copy … oci-archive:`), or
    /// a `docker save` archive ([`super::oci`]).
    Oci,
}

/// How to read an input.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    /// The image platform to take from a multi-platform image.
    pub platform: Platform,
    /// Where tar data is spooled: the build's work directory, deleted by the caller. A failed
    /// read leaves nothing in it.
    pub spool_dir: PathBuf,
}

/// Errors of detecting or reading an input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path cannot be examined.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The input.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The system's error.
        source: io::Error,
    },
    /// Reading a directory failed.
    #[error(transparent)]
    Dir(#[from] super::dir::Error),
    /// Reading a tar failed.
    #[error(transparent)]
    Tar(#[from] tar::Error),
    /// Reading an image failed.
    #[error(transparent)]
    Oci(#[from] super::oci::Error),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// What `path` is: a directory with an `oci-layout` file is an OCI layout, any other directory
/// a [`SourceKind::Dir`]. A file is a tar (after decompression); it is an image when its top
/// level is an image's (`oci-layout`, or `manifest.json` with `blobs/` or `*/layer.tar`
/// members), a plain [`SourceKind::Tar`] as soon as it shows a member no image has at its top
/// level (so a root file system archive is told from its first members).
pub fn detect(path: &Path) -> Result<SourceKind> {
    let io = |what| {
        move |source| Error::Io {
            path: path.to_owned(),
            what,
            source,
        }
    };
    let md = std::fs::metadata(path).map_err(io("cannot stat"))?;
    if md.is_dir() {
        let layout = path.join("oci-layout");
        return Ok(if std::fs::symlink_metadata(layout).is_ok() {
            SourceKind::Oci
        } else {
            SourceKind::Dir
        });
    }
    let mut file = File::open(path).map_err(io("cannot open"))?;
    let mut head = [0u8; 6];
    let n = read_some(&mut file, &mut head).map_err(io("cannot read"))?;
    let name = path.display().to_string();
    let compressed = tar::sniff(head.get(..n).unwrap_or_default()) != tar::Compression::None;
    let file = File::open(path).map_err(io("cannot open"))?;
    let mut reader = if compressed {
        let (stream, _) = tar::decompress(io::BufReader::new(file)).map_err(io("cannot read"))?;
        TarReader::new(Box::new(Streamed(stream)), &name)
    } else {
        TarReader::new(Box::new(Seekable(file)), &name)
    };
    let (mut manifest, mut blobs) = (false, false);
    while let Some(m) = reader.next_member()? {
        let Ok(p) = super::TreePath::parse(&m.name) else {
            return Ok(SourceKind::Tar);
        };
        let Some(top) = p.components().first() else {
            continue;
        };
        let deeper = p.components().len() > 1;
        match top.as_slice() {
            b"oci-layout" if !deeper => return Ok(SourceKind::Oci),
            b"manifest.json" if !deeper => manifest = true,
            b"index.json" | b"repositories" if !deeper => {}
            b"blobs" => blobs = true,
            t if is_docker_layer_dir(t) => {
                blobs |= p.components().get(1).is_some_and(|c| c == b"layer.tar");
            }
            _ => return Ok(SourceKind::Tar),
        }
    }
    Ok(if manifest && blobs {
        SourceKind::Oci
    } else {
        SourceKind::Tar
    })
}

/// Whether a top-level name is one `docker save` writes: `<64 hex>` (a layer directory) or
/// `<64 hex>.json` (a config).
fn is_docker_layer_dir(name: &[u8]) -> bool {
    let stem = name.strip_suffix(b".json").unwrap_or(name);
    stem.len() == 64 && stem.iter().all(u8::is_ascii_hexdigit)
}

fn read_some(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(buf.get_mut(got..).unwrap_or_default())? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Reads the input at `path`, of kind `kind`, into a tree.
pub fn read_tree(path: &Path, kind: SourceKind, opts: &ReadOptions) -> Result<Tree> {
    Ok(match kind {
        SourceKind::Dir => super::dir::read_dir_tree(path)?,
        SourceKind::Tar => tar::read_tar_tree(path, &opts.spool_dir)?,
        SourceKind::Oci => super::oci::read_image_tree(path, &opts.platform, &opts.spool_dir)?,
    })
}
