//! Reading a container image into a [`Tree`]: an OCI image layout (a directory, or the same in
//! an uncompressed tar as `skopeo copy … oci-archive:` writes it), or a `docker save` archive.
//!
//! OCI (image-spec v1.1: image-layout.md, image-index.md, manifest.md, layer.md): `index.json`
//! lists manifests, or further indexes, by platform. The manifest for the wanted platform is
//! taken (os and architecture must match; a variant is not looked at, since amd64 and 386 have
//! none). A descriptor with no platform is followed when it is an index, and taken when it is the
//! only manifest listed (single-image layouts often omit the platform); then the config's `os`
//! and `architecture` must match instead. No match is an error listing what the image has.
//! The layers are then applied in order ([`super::tar::Mode::Layer`]: whiteouts and opaque
//! directories), each decompressed as its first bytes say.
//!
//! `docker save` (without an `index.json`): `manifest.json` lists one image's config and layer
//! paths inside the archive; the config's `os` and `architecture` must match the platform.
//!
//! Every blob is checked: only `sha256:<64 lowercase hex>` digests are accepted (a digest names
//! a path, so anything else could lead out of `blobs/`), and each blob's bytes are hashed as
//! they stream and compared with its digest and size once read, so a tree with a bad layer is
//! never returned. Each layer's uncompressed tar is also checked against the config's
//! `rootfs.diff_ids` (one per layer, required for OCI; a `docker save` layer stored under a path
//! that is not its digest is checked against it alone).
//!
//! A layout directory's files are opened only when they are regular files, symlinks not
//! followed (a layer linked to `/dev/zero` would read without end, a FIFO would block). Nested
//! indexes are each read once, and at most `MAX_DESCRIPTORS` (1,024) descriptors are looked at in all.
//! Strings from the image quoted in errors are escaped and cut, so that an error is one line.
//!
//! An archive is read in place: its members are indexed (offsets, through seeks), then the
//! blobs are read at their offsets, so it must not be compressed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::tar::{self, Compression, Mode, Seekable, Spool, Streamed, TarReader};
use super::{Meta, Tree, TreePath};

/// The largest JSON blob read (index, manifest, config, `manifest.json`): they are a few KiB;
/// anything larger is refused before it is read.
pub const MAX_JSON: u64 = 4 << 20;

/// The deepest chain of nested indexes followed.
const MAX_DEPTH: usize = 4;

/// The most descriptors looked at in all the indexes of an image: a real one lists a few per
/// platform; without a cap, indexes listing each other many times would fan out without end.
const MAX_DESCRIPTORS: usize = 1024;

/// The most platforms an error message lists.
const MAX_SEEN: usize = 32;

/// The longest string from an image (a platform, a media type) quoted in a message.
const MAX_SHOWN: usize = 100;

/// `s` for a message: escaped (so that it stays on one line) and cut at [`MAX_SHOWN`]
/// characters.
fn shown(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.escape_debug().enumerate() {
        if i == MAX_SHOWN {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out
}

/// The platform an image is read for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64` or `386` (Go's `GOARCH` names, which OCI uses).
    pub architecture: String,
}

impl Platform {
    /// Linux on `architecture`.
    pub fn linux(architecture: &str) -> Self {
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)
    }
}

/// Errors of reading an image; each names the image and, where there is one, the blob.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or member could not be read.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The image.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// The system's error.
        source: io::Error,
    },
    /// The image is not laid out as expected.
    #[error("{}: {reason}", path.display())]
    Layout {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A JSON document does not parse.
    #[error("{}: {what}: {source}", path.display())]
    Json {
        /// The image.
        path: PathBuf,
        /// Which document.
        what: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A blob's bytes do not match its digest or size.
    #[error("{}: blob {digest}: {reason}", path.display())]
    Digest {
        /// The image.
        path: PathBuf,
        /// The digest the blob was expected to have.
        digest: String,
        /// What was found instead.
        reason: String,
    },
    /// The image has nothing for the wanted platform.
    #[error("{}: no image for {wanted} (it has: {available})", path.display())]
    NoPlatform {
        /// The image.
        path: PathBuf,
        /// The platform asked for.
        wanted: Platform,
        /// What it has, comma-separated.
        available: String,
    },
    /// A layer cannot be read as a tar (the tar error names the layer).
    #[error("{}: {source}", path.display())]
    Layer {
        /// The image.
        path: PathBuf,
        /// The tar reader's error, which names the layer by digest (or by its path in a
        /// `docker save` archive).
        source: Box<tar::Error>,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// An OCI content descriptor (image-spec descriptor.md), the fields read.
#[derive(Clone, Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    platform: Option<PlatformJson>,
}

#[derive(Clone, Debug, Deserialize)]
struct PlatformJson {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Debug, Default, Deserialize)]
struct Config {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Debug, Default, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// One image of `docker save`'s `manifest.json`.
#[derive(Debug, Deserialize)]
struct DockerImage {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
/// Layer media types read (image-spec media-types.md, and Docker's image manifest v2.2); the
/// compression is told by content, the type only says it is a tar.
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];

/// Where the blobs are: a directory, or members of an archive read in place.
enum Store {
    Dir(PathBuf),
    Archive {
        file: File,
        len: u64,
        /// Member path (normalised, no leading `/`) → (data offset, size).
        members: BTreeMap<Vec<u8>, (u64, u64)>,
    },
}

/// A member of an archive, read at its offset.
struct Section<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        let Some(part) = buf.get_mut(..want) else {
            return Ok(0);
        };
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(part, self.pos)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let got = buf.get(..n).unwrap_or_default();
        self.hash.update(got);
        self.count += n as u64;
        Ok(n)
    }
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            hash: Sha256::new(),
            count: 0,
        }
    }

    /// Reads to the end, then gives the hex digest and the byte count.
    fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((hex::encode(self.hash.finalize()), self.count))
    }
}

/// The hex of a `sha256:<64 lowercase hex>` digest; anything else is refused.
fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

struct Image<'p> {
    path: &'p Path,
    store: Store,
}

impl<'p> Image<'p> {
    fn layout(&self, reason: impl Into<String>) -> Error {
        Error::Layout {
            path: self.path.to_owned(),
            reason: reason.into(),
        }
    }

    fn io<S: Into<String>>(&self, what: S) -> impl FnOnce(io::Error) -> Error + use<S> {
        let what = what.into();
        let path = self.path.to_owned();
        move |source| Error::Io { path, what, source }
    }

    /// Opens `name` (a path inside the layout); `None` when it is not there.
    fn open(&self, name: &str) -> Result<Option<(Box<dyn Read + '_>, u64)>> {
        match &self.store {
            Store::Dir(dir) => {
                let p = dir.join(name);
                let shown = shown(name);
                // A regular file only: a symlink could lead anywhere on the host (`/dev/zero`
                // reads without end), a FIFO blocks, a device is not an image's. Checked before
                // opening (so a device is never opened), and again on the opened file, which
                // `O_NOFOLLOW` keeps from being a symlink swapped in meanwhile; `O_NONBLOCK`
                // keeps a FIFO swapped in from blocking the open (it does nothing to reads of
                // a regular file).
                let not_regular = || self.layout(format!("{shown} is not a regular file"));
                match std::fs::symlink_metadata(&p) {
                    Ok(m) if m.file_type().is_symlink() => {
                        return Err(self
                            .layout(format!("{shown} is a symlink (symlinks are not followed)")));
                    }
                    Ok(m) if !m.is_file() => return Err(not_regular()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(self.io(shown)(e)),
                }
                let f = File::options()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&p)
                    .map_err(self.io(shown.clone()))?;
                let m = f.metadata().map_err(self.io(shown.clone()))?;
                if !m.is_file() {
                    return Err(not_regular());
                }
                Ok(Some((
                    Box::new(io::BufReader::with_capacity(256 * 1024, f)),
                    m.len(),
                )))
            }
            Store::Archive { file, len, members } => {
                let Some(&(off, size)) = members.get(name.as_bytes()) else {
                    return Ok(None);
                };
                let end = off
                    .checked_add(size)
                    .filter(|&e| e <= *len)
                    .ok_or_else(|| {
                        self.layout(format!("{} runs past the archive's end", shown(name)))
                    })?;
                let s = Section {
                    file,
                    pos: off,
                    end,
                };
                Ok(Some((
                    Box::new(io::BufReader::with_capacity(256 * 1024, s)),
                    size,
                )))
            }
        }
    }

    /// Reads a small JSON file of the layout (not a blob).
    fn json_file<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<T>> {
        let Some((r, len)) = self.open(name)? else {
            return Ok(None);
        };
        if len > MAX_JSON {
            return Err(self.layout(format!(
                "{} is {len} bytes (at most {MAX_JSON})",
                shown(name)
            )));
        }
        let mut data = Vec::new();
        r.take(MAX_JSON)
            .read_to_end(&mut data)
            .map_err(self.io(shown(name)))?;
        serde_json::from_slice(&data)
            .map(Some)
            .map_err(|source| Error::Json {
                path: self.path.to_owned(),
                what: shown(name),
                source,
            })
    }

    /// The path of the blob `digest`, which must be `sha256:<64 hex>`.
    fn blob_name(&self, digest: &str) -> Result<String> {
        let hex = sha256_hex(digest).ok_or_else(|| {
            self.layout(format!(
                "\"{}\" is not a sha256:<64 hex> digest",
                shown(digest)
            ))
        })?;
        Ok(format!("blobs/sha256/{hex}"))
    }

    /// Reads a JSON blob, checking its size and digest.
    fn json_blob<T: for<'de> Deserialize<'de>>(&self, d: &Descriptor) -> Result<T> {
        let name = self.blob_name(&d.digest)?;
        if d.size > MAX_JSON {
            return Err(self.layout(format!(
                "blob {} is {} bytes (at most {MAX_JSON})",
                d.digest, d.size
            )));
        }
        let (r, _) = self
            .open(&name)?
            .ok_or_else(|| self.layout(format!("blob {} is missing", d.digest)))?;
        let mut data = Vec::new();
        let mut h = Hashing::new(r.take(MAX_JSON + 1));
        h.read_to_end(&mut data).map_err(self.io(&name))?;
        let (hex, count) = h.finish().map_err(self.io(&name))?;
        self.check(&d.digest, d.size, &hex, count)?;
        serde_json::from_slice(&data).map_err(|source| Error::Json {
            path: self.path.to_owned(),
            what: d.digest.clone(),
            source,
        })
    }

    /// Compares what a blob hashed to with its descriptor.
    fn check(&self, digest: &str, size: u64, hex: &str, count: u64) -> Result<()> {
        if Some(hex) != sha256_hex(digest) {
            return Err(Error::Digest {
                path: self.path.to_owned(),
                digest: digest.to_owned(),
                reason: format!("its content has digest sha256:{hex}"),
            });
        }
        if count != size {
            return Err(Error::Digest {
                path: self.path.to_owned(),
                digest: digest.to_owned(),
                reason: format!("{count} bytes, its descriptor says {size}"),
            });
        }
        Ok(())
    }

    /// Applies one layer, read from `name`. `compressed` is the digest of the stored bytes to
    /// check (with `size`); `diff_id`, when given, that of the uncompressed tar.
    fn apply_layer(
        &self,
        name: &str,
        label: &str,
        compressed: Option<(&str, u64)>,
        diff_id: Option<&str>,
        tree: &mut Tree,
        spool: &mut Spool,
    ) -> Result<()> {
        let (r, _) = self
            .open(name)?
            .ok_or_else(|| self.layout(format!("layer {label} is missing")))?;
        let layer_err = |source| Error::Layer {
            path: self.path.to_owned(),
            source: Box::new(source),
        };
        let mut stored = Hashing::new(r);
        let (plain_hex, _) = {
            let (plain, _) =
                tar::decompress(&mut stored).map_err(self.io(format!("layer {label}")))?;
            let mut plain = Hashing::new(plain);
            {
                let name = format!("layer {label}");
                let mut reader = TarReader::new(Box::new(Streamed(&mut plain)), &name);
                tar::apply(&mut reader, tree, spool, Mode::Layer).map_err(layer_err)?;
                reader.drain().map_err(layer_err)?;
            }
            plain.finish().map_err(self.io(format!("layer {label}")))?
        };
        let (hex, count) = stored.finish().map_err(self.io(format!("layer {label}")))?;
        // The stored bytes first: a blob that is not the one named is the clearer error.
        if let Some((digest, size)) = compressed {
            self.check(digest, size, &hex, count)?;
        }
        if let Some(want) = diff_id
            && Some(plain_hex.as_str()) != sha256_hex(want)
        {
            return Err(Error::Digest {
                path: self.path.to_owned(),
                digest: shown(want),
                reason: format!("layer {label} has diff_id sha256:{plain_hex}"),
            });
        }
        Ok(())
    }

    /// The manifest for `platform` from the index `index` (nested indexes followed, each
    /// index once, at most `MAX_DESCRIPTORS` (1,024) descriptors in all).
    fn choose(
        &self,
        index: &Index,
        platform: &Platform,
        depth: usize,
        walk: &mut Walk,
    ) -> Result<Option<(Descriptor, bool)>> {
        if depth > MAX_DEPTH {
            return Err(self.layout("indexes nested too deep"));
        }
        let manifests = index
            .manifests
            .iter()
            .filter(|d| MANIFEST_TYPES.contains(&d.media_type.as_str()))
            .count();
        for d in &index.manifests {
            walk.descriptors += 1;
            if walk.descriptors > MAX_DESCRIPTORS {
                return Err(self.layout(format!(
                    "its indexes list over {MAX_DESCRIPTORS} descriptors"
                )));
            }
            let is_index = INDEX_TYPES.contains(&d.media_type.as_str());
            let is_manifest = MANIFEST_TYPES.contains(&d.media_type.as_str());
            match &d.platform {
                Some(p) => {
                    walk.saw(format!("{}/{}", shown(&p.os), shown(&p.architecture)));
                    if p.os != platform.os || p.architecture != platform.architecture {
                        continue;
                    }
                    if is_manifest {
                        return Ok(Some((d.clone(), true)));
                    }
                    if is_index && let Some(found) = self.sub_index(d, platform, depth, walk)? {
                        return Ok(Some(found));
                    }
                }
                None if is_index => {
                    if let Some(found) = self.sub_index(d, platform, depth, walk)? {
                        return Ok(Some(found));
                    }
                }
                // The only image of the layout: its config says the platform.
                None if is_manifest && manifests == 1 => return Ok(Some((d.clone(), false))),
                None => {}
            }
        }
        Ok(None)
    }

    /// [`Image::choose`] in the index `d` names, unless it was looked in already (an index
    /// listed many times, or by several, is read once).
    fn sub_index(
        &self,
        d: &Descriptor,
        platform: &Platform,
        depth: usize,
        walk: &mut Walk,
    ) -> Result<Option<(Descriptor, bool)>> {
        if !walk.indexes.insert(d.digest.clone()) {
            return Ok(None);
        }
        let sub: Index = self.json_blob(d)?;
        self.choose(&sub, platform, depth + 1, walk)
    }

    /// Checks a config's platform against the wanted one.
    fn check_config(&self, config: &Config, platform: &Platform) -> Result<()> {
        if config.os != platform.os || config.architecture != platform.architecture {
            return Err(Error::NoPlatform {
                path: self.path.to_owned(),
                wanted: platform.clone(),
                available: format!("{}/{}", shown(&config.os), shown(&config.architecture)),
            });
        }
        Ok(())
    }

    fn read_oci(&self, index: Index, platform: &Platform, spool: &mut Spool) -> Result<Tree> {
        let mut walk = Walk::default();
        let (desc, by_platform) =
            self.choose(&index, platform, 0, &mut walk)?
                .ok_or_else(|| Error::NoPlatform {
                    path: self.path.to_owned(),
                    wanted: platform.clone(),
                    available: walk.available(),
                })?;
        let manifest: Manifest = self.json_blob(&desc)?;
        let config: Config = self.json_blob(&manifest.config)?;
        if !by_platform {
            self.check_config(&config, platform)?;
        }
        // Each layer's uncompressed tar is checked against the config, as for `docker save`
        // (image-spec config.md: `rootfs.diff_ids` is required, one per layer, in order).
        let diff_ids = config.rootfs.map(|r| r.diff_ids).unwrap_or_default();
        if diff_ids.len() != manifest.layers.len() {
            return Err(self.layout(format!(
                "the config lists {} diff_ids for {} layers",
                diff_ids.len(),
                manifest.layers.len()
            )));
        }
        let mut tree = Tree::new(Meta::implied_dir(0));
        for (layer, diff_id) in manifest.layers.iter().zip(&diff_ids) {
            if !LAYER_TYPES.contains(&layer.media_type.as_str()) {
                return Err(self.layout(format!(
                    "layer {}: unsupported media type {}",
                    shown(&layer.digest),
                    shown(&layer.media_type)
                )));
            }
            let name = self.blob_name(&layer.digest)?;
            self.apply_layer(
                &name,
                &layer.digest,
                Some((&layer.digest, layer.size)),
                Some(diff_id),
                &mut tree,
                spool,
            )?;
        }
        Ok(tree)
    }

    fn read_docker(&self, platform: &Platform, spool: &mut Spool) -> Result<Tree> {
        let images: Vec<DockerImage> = self
            .json_file("manifest.json")?
            .ok_or_else(|| self.layout("neither index.json nor manifest.json"))?;
        let [image] = images.as_slice() else {
            return Err(self.layout(format!(
                "manifest.json lists {} images; one is read",
                images.len()
            )));
        };
        let config_name = normalise(&image.config)
            .ok_or_else(|| self.layout(format!("bad config path \"{}\"", shown(&image.config))))?;
        let config: Config = match config_name.strip_prefix("blobs/sha256/") {
            Some(hex) => self.json_blob(&Descriptor {
                media_type: String::new(),
                digest: format!("sha256:{hex}"),
                size: self.member_size(&config_name)?,
                platform: None,
            })?,
            None => self
                .json_file(&config_name)?
                .ok_or_else(|| self.layout(format!("{} is missing", shown(&config_name))))?,
        };
        self.check_config(&config, platform)?;
        let diff_ids = config.rootfs.map(|r| r.diff_ids).unwrap_or_default();
        let mut tree = Tree::new(Meta::implied_dir(0));
        for (i, layer) in image.layers.iter().enumerate() {
            let name = normalise(layer)
                .ok_or_else(|| self.layout(format!("bad layer path \"{}\"", shown(layer))))?;
            let label = shown(&name);
            let by_digest = name
                .strip_prefix("blobs/sha256/")
                .map(|hex| format!("sha256:{hex}"))
                .filter(|d| sha256_hex(d).is_some());
            let diff_id = diff_ids.get(i).map(String::as_str);
            if by_digest.is_none() && diff_id.is_none() {
                return Err(self.layout(format!(
                    "layer {label}: neither its path nor the config gives its digest"
                )));
            }
            let size = self.member_size(&name)?;
            self.apply_layer(
                &name,
                by_digest.as_deref().unwrap_or(&label),
                by_digest.as_deref().map(|d| (d, size)),
                diff_id,
                &mut tree,
                spool,
            )?;
        }
        Ok(tree)
    }

    fn member_size(&self, name: &str) -> Result<u64> {
        match self.open(name)? {
            Some((_, len)) => Ok(len),
            None => Err(self.layout(format!("{} is missing", shown(name)))),
        }
    }
}

/// The walk through an image's indexes: what was looked at, for the caps and for the message
/// when no manifest matches.
#[derive(Default)]
struct Walk {
    /// Descriptors looked at.
    descriptors: usize,
    /// Digests of the indexes read.
    indexes: BTreeSet<String>,
    /// The platforms listed (shown, without repeats), at most [`MAX_SEEN`].
    seen: Vec<String>,
    /// The other platforms listed, past the cap (at most [`MAX_DESCRIPTORS`]).
    more: BTreeSet<String>,
}

impl Walk {
    fn saw(&mut self, platform: String) {
        if self.seen.contains(&platform) {
            return;
        }
        if self.seen.len() < MAX_SEEN {
            self.seen.push(platform);
        } else {
            self.more.insert(platform);
        }
    }

    fn available(&self) -> String {
        if self.seen.is_empty() {
            return "no platform listed".into();
        }
        let mut s = self.seen.join(", ");
        if !self.more.is_empty() {
            s.push_str(&format!(" and {} more", self.more.len()));
        }
        s
    }
}

/// A path from `manifest.json` as the index key: normalised like a tree path, `..` refused.
fn normalise(p: &str) -> Option<String> {
    let t = TreePath::parse(p.as_bytes()).ok()?;
    if t.is_root() {
        return None;
    }
    let b = t.to_bytes();
    String::from_utf8(b.get(1..)?.to_vec()).ok()
}

/// Indexes the members of the uncompressed archive `path`: regular files by normalised name.
fn index_archive(path: &Path) -> Result<Store> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| Error::Io {
            path: path.to_owned(),
            what,
            source,
        }
    };
    let mut file = File::open(path).map_err(io("cannot open"))?;
    let len = file.metadata().map_err(io("cannot stat"))?.len();
    let mut head = [0u8; 6];
    let n = file.read_at(&mut head, 0).map_err(io("cannot read"))?;
    if tar::sniff(head.get(..n).unwrap_or_default()) != Compression::None {
        return Err(Error::Layout {
            path: path.to_owned(),
            reason: "a compressed image archive cannot be read in place; decompress it first"
                .into(),
        });
    }
    let mut members = BTreeMap::new();
    {
        let dup = file.try_clone().map_err(io("cannot open"))?;
        let mut reader = TarReader::new(Box::new(Seekable(dup)), "the archive's index");
        let tar_err = |source| Error::Layer {
            path: path.to_owned(),
            source: Box::new(source),
        };
        while let Some(m) = reader.next_member().map_err(tar_err)? {
            if !matches!(m.typeflag, b'0' | 0 | b'7') {
                continue;
            }
            if let Some(key) = std::str::from_utf8(&m.name).ok().and_then(normalise) {
                members.insert(key.into_bytes(), (m.data_offset, m.stored));
            }
        }
    }
    let _ = &mut file;
    Ok(Store::Archive { file, len, members })
}

/// Reads the image at `path` (a layout directory, or an OCI or `docker save` archive) for
/// `platform`, its file data spooled into a new file in `spool_dir`.
pub fn read_image_tree(path: &Path, platform: &Platform, spool_dir: &Path) -> Result<Tree> {
    let store = if path.is_dir() {
        Store::Dir(path.to_owned())
    } else {
        index_archive(path)?
    };
    let image = Image { path, store };
    let mut spool = Spool::create(spool_dir).map_err(|source| Error::Io {
        path: spool_dir.to_owned(),
        what: "cannot create a spool file in".into(),
        source,
    })?;
    let tree = match image.json_file::<Index>("index.json")? {
        Some(index) => image.read_oci(index, platform, &mut spool)?,
        None => image.read_docker(platform, &mut spool)?,
    };
    tree.check_links()
        .map_err(|e| image.layout(e.to_string()))?;
    spool
        .finish()
        .map_err(image.io("cannot finish the spool"))?;
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sha256_digests_name_blobs() {
        let ok = format!("sha256:{}", "a".repeat(64));
        assert!(sha256_hex(&ok).is_some());
        assert!(sha256_hex(&format!("sha256:{}", "A".repeat(64))).is_none());
        assert!(sha256_hex("sha256:../../etc/passwd").is_none());
        assert!(sha256_hex(&format!("sha512:{}", "a".repeat(64))).is_none());
        assert!(sha256_hex(&format!("sha256:{}/x", "a".repeat(62))).is_none());
    }

    #[test]
    fn manifest_paths_cannot_climb() {
        assert_eq!(
            normalise("./abc/layer.tar").as_deref(),
            Some("abc/layer.tar")
        );
        assert_eq!(normalise("../x"), None);
        assert_eq!(normalise("/"), None);
    }
}
