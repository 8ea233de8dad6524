//! The operating system of an image, from `/etc/os-release` (or `/usr/lib/os-release`), as
//! `os-release(5)` describes it.
//!
//! The file is a list of shell-style assignments, `KEY=value`, one per line. Blank lines and lines
//! starting with `#` are comments. A value may be in single quotes (taken literally) or double
//! quotes (where `\"`, `\\`, `\$` and `` \` `` stand for the character). Unquoted, a backslash
//! escapes any character, and whitespace then `#` starts a comment. As systemd's own parser does,
//! whitespace around the `=` and an unquoted value's inner spaces are accepted. A line that is none of these (no `=`, a bad key,
//! an unterminated quote) is skipped: the file comes from the image, and a bad line must not
//! cost the rest.

use crate::fs::FileSystem;
use serde::Serialize;

/// Largest os-release file read. Real ones are under 1 KiB.
pub const MAX_LEN: u64 = 64 << 10;

/// Where the file is looked for, in order. `os-release(5)`: use the first that exists, and only
/// that one.
pub const PATHS: [&str; 2] = ["/etc/os-release", "/usr/lib/os-release"];

/// The fields of an os-release file that mkomi reports. A key that is missing, or set to an
/// empty value, is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OsRelease {
    /// `ID`: lower-case identifier of the OS (`debian`, `ubuntu`, `rocky`).
    pub id: Option<String>,
    /// `ID_LIKE`: space-separated IDs of related OSes (`rhel centos fedora`).
    pub id_like: Option<String>,
    /// `NAME`: the OS name without a version (`Debian GNU/Linux`).
    pub name: Option<String>,
    /// `VERSION`: the version for display (`12 (bookworm)`).
    pub version: Option<String>,
    /// `VERSION_ID`: the version for scripts (`12`, `22.04`).
    pub version_id: Option<String>,
    /// `VERSION_CODENAME`: the release code name (`bookworm`).
    pub version_codename: Option<String>,
    /// `PRETTY_NAME`: the name for display (`Debian GNU/Linux 12 (bookworm)`).
    pub pretty_name: Option<String>,
    /// `VARIANT`: the edition for display (`Server Edition`).
    pub variant: Option<String>,
    /// `VARIANT_ID`: the edition for scripts (`server`).
    pub variant_id: Option<String>,
    /// `BUILD_ID`: the build of a distribution image.
    pub build_id: Option<String>,
    /// `IMAGE_ID`: the name of the image the OS was installed from.
    pub image_id: Option<String>,
    /// `IMAGE_VERSION`: that image's version.
    pub image_version: Option<String>,
    /// `SUPPORT_END`: the date (`YYYY-MM-DD`) support for this version ends.
    pub support_end: Option<String>,
}

impl OsRelease {
    /// The name to show: `PRETTY_NAME`, else `NAME VERSION_ID` (or either), else `ID`, else
    /// `"unknown"`.
    pub fn display_name(&self) -> String {
        if let Some(pretty) = &self.pretty_name {
            return pretty.clone();
        }
        match (&self.name, &self.version_id) {
            (Some(name), Some(version)) => format!("{name} {version}"),
            (Some(name), None) => name.clone(),
            (None, Some(version)) => match &self.id {
                Some(id) => format!("{id} {version}"),
                None => version.clone(),
            },
            (None, None) => self.id.clone().unwrap_or_else(|| "unknown".to_owned()),
        }
    }
}

/// Parses the bytes of an os-release file. The caller bounds their size (see [`MAX_LEN`]);
/// invalid UTF-8 is replaced by U+FFFD. When a key is set twice, the last value wins, as in the
/// shell.
pub fn parse(bytes: &[u8]) -> OsRelease {
    parse_counting(bytes, &mut 0)
}

/// [`parse`], adding to `steps` the bytes that unquoting looks at (lookahead included), so that a
/// test can check that the work stays linear in the input.
fn parse_counting(bytes: &[u8], steps: &mut usize) -> OsRelease {
    let text = String::from_utf8_lossy(bytes);
    let mut os = OsRelease::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim_end();
        if !is_key(key) {
            continue;
        }
        let Some(value) = unquote(raw.trim_start(), steps) else {
            continue;
        };
        let slot = match key {
            "ID" => &mut os.id,
            "ID_LIKE" => &mut os.id_like,
            "NAME" => &mut os.name,
            "VERSION" => &mut os.version,
            "VERSION_ID" => &mut os.version_id,
            "VERSION_CODENAME" => &mut os.version_codename,
            "PRETTY_NAME" => &mut os.pretty_name,
            "VARIANT" => &mut os.variant,
            "VARIANT_ID" => &mut os.variant_id,
            "BUILD_ID" => &mut os.build_id,
            "IMAGE_ID" => &mut os.image_id,
            "IMAGE_VERSION" => &mut os.image_version,
            "SUPPORT_END" => &mut os.support_end,
            _ => continue,
        };
        *slot = (!value.is_empty()).then_some(value);
    }
    os
}

/// Reads and parses the os-release file of `fs`: the first of [`PATHS`] that exists (symlinks
/// followed, as `/etc/os-release -> ../usr/lib/os-release` usually is). `Ok(None)` when neither
/// exists; a file over [`MAX_LEN`] or one that cannot be read is an error.
pub fn read(fs: &dyn FileSystem) -> Result<Option<OsRelease>, crate::fs::Error> {
    for path in PATHS {
        match fs.read_to_vec(path, MAX_LEN) {
            Ok(bytes) => return Ok(Some(parse(&bytes))),
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// A shell variable name: a letter or `_`, then letters, digits and `_`.
fn is_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The value of an assignment's right-hand side (trimmed of surrounding whitespace by the
/// caller), with quotes removed and escapes resolved; `None` if a quote is not closed or the
/// line ends in a lone backslash. `steps` counts the bytes looked at.
fn unquote(raw: &str, steps: &mut usize) -> Option<String> {
    #[derive(PartialEq)]
    enum Quote {
        None,
        Single,
        Double,
    }
    let mut out = String::with_capacity(raw.len());
    let mut quote = Quote::None;
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        *steps += c.len_utf8();
        match (&quote, c) {
            (Quote::None, '\'') => quote = Quote::Single,
            (Quote::None, '"') => quote = Quote::Double,
            (Quote::None, '\\') => out.push(chars.next()?),
            // As in the shell, an unquoted `#` after whitespace starts a comment. The whole run
            // of blanks is taken at once, so that the lookahead reads each blank once, not once
            // per blank before it.
            (Quote::None, c) if c.is_whitespace() => {
                let rest = chars.as_str();
                let after = rest.trim_start();
                let run = rest.len() - after.len();
                *steps += run + 1;
                if after.starts_with('#') {
                    break;
                }
                out.push(c);
                out.push_str(&rest[..run]);
                chars = after.chars();
            }
            (Quote::Single, '\'') | (Quote::Double, '"') => quote = Quote::None,
            (Quote::Double, '\\') => match chars.next()? {
                c @ ('"' | '\\' | '$' | '`') => out.push(c),
                c => {
                    out.push('\\');
                    out.push(c);
                }
            },
            (_, c) => out.push(c),
        }
    }
    (quote == Quote::None).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{self, OpenOptions};
    use crate::fs::ext4::Ext4;
    use std::os::unix::fs::symlink;
    use std::path::Path;
    use std::process::Command;

    fn some(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    #[test]
    fn debian() {
        let os = parse(
            b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n\
              NAME=\"Debian GNU/Linux\"\n\
              VERSION_ID=\"12\"\n\
              VERSION=\"12 (bookworm)\"\n\
              VERSION_CODENAME=bookworm\n\
              ID=debian\n\
              HOME_URL=\"https://www.debian.org/\"\n\
              SUPPORT_URL=\"https://www.debian.org/support\"\n\
              BUG_REPORT_URL=\"https://bugs.debian.org/\"\n",
        );
        assert_eq!(
            os,
            OsRelease {
                id: some("debian"),
                name: some("Debian GNU/Linux"),
                version: some("12 (bookworm)"),
                version_id: some("12"),
                version_codename: some("bookworm"),
                pretty_name: some("Debian GNU/Linux 12 (bookworm)"),
                ..OsRelease::default()
            }
        );
        assert_eq!(os.display_name(), "Debian GNU/Linux 12 (bookworm)");
    }

    #[test]
    fn a_run_of_blanks_is_looked_past_once() {
        // The fuzz finding: `ID=a`, 65,000 blanks, `b`. Looking ahead for a comment at each blank
        // cost n²/2 steps (two billion here).
        let input = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/regressions/os_release/quadratic-whitespace"
        ))
        .unwrap();
        let mut steps = 0;
        let os = parse_counting(&input, &mut steps);
        let id = os.id.unwrap();
        assert!(id.starts_with("a ") && id.ends_with(" b"), "{id:?}");
        assert_eq!(id.len(), input.len() - "ID=\n".len());
        assert!(
            steps <= 2 * input.len(),
            "{steps} steps for {} bytes",
            input.len()
        );

        // Blanks then a comment, blanks then more value, in every quoting.
        let mut steps = 0;
        let value = |raw: &str, steps: &mut usize| unquote(raw, steps).unwrap();
        assert_eq!(value("a  \t # c", &mut steps), "a");
        assert_eq!(value("a  \t b#c", &mut steps), "a  \t b#c");
        assert_eq!(value("a \\  # c", &mut steps), "a  ");
        assert_eq!(value("a\\ #c", &mut steps), "a #c");
        assert_eq!(value("'a  # b'  c", &mut steps), "a  # b  c");
        assert!(steps < 100, "{steps}");
    }

    #[test]
    fn this_machine() {
        for path in PATHS {
            if let Ok(bytes) = std::fs::read(path) {
                let os = parse(&bytes);
                assert!(os.id.is_some(), "{path}: {os:?}");
                assert_ne!(os.display_name(), "unknown");
                return;
            }
        }
    }

    #[test]
    fn quoting_and_escapes() {
        let os = parse(
            br#"
# A comment, then blank lines.

   # An indented comment.
ID='rocky'
ID_LIKE="rhel centos fedora"
NAME="A \"quoted\" \\ back\slash \$HOME \`cmd\`"
VERSION='single \"kept\" $literal'
VERSION_ID=9.3
VERSION_CODENAME=Blue\ Onyx
PRETTY_NAME = "spaces around the equals sign"
VARIANT="con"'cat'enated
VARIANT_ID=server # a trailing comment
BUILD_ID="x" # after quotes too
IMAGE_ID=a#b
IMAGE_VERSION=Foo Linux
"#,
        );
        assert_eq!(os.id, some("rocky"));
        assert_eq!(os.id_like, some("rhel centos fedora"));
        assert_eq!(
            os.name,
            some(r#"A "quoted" \ back\slash $HOME `cmd`"#),
            "in double quotes only \\\" \\\\ \\$ \\` are escapes"
        );
        assert_eq!(os.version, some(r#"single \"kept\" $literal"#));
        assert_eq!(os.version_id, some("9.3"));
        assert_eq!(os.version_codename, some("Blue Onyx"));
        assert_eq!(os.pretty_name, some("spaces around the equals sign"));
        assert_eq!(os.variant, some("concatenated"));
        assert_eq!(os.variant_id, some("server"));
        assert_eq!(os.build_id, some("x"));
        assert_eq!(os.image_id, some("a#b"), "# inside a word is not a comment");
        assert_eq!(os.image_version, some("Foo Linux"));
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let os = parse(
            b"ID=good\n\
              NAME=\"unterminated\n\
              VERSION='also unterminated\n\
              VERSION_ID=trailing\\\n\
              just words\n\
              =no key\n\
              1ID=digit first\n\
              ID-LIKE=dash\n\
              export PRETTY_NAME=exported\n\
              \x00\xff\xfe=binary\n\
              VARIANT=\xff\xfe\n\
              VARIANT_ID=last\r\n\
              ID=good again\n",
        );
        assert_eq!(
            os,
            OsRelease {
                id: some("good again"),
                variant: some("\u{fffd}\u{fffd}"),
                variant_id: some("last"),
                ..OsRelease::default()
            }
        );
    }

    #[test]
    fn empty_values_are_none() {
        let os = parse(b"ID=debian\nPRETTY_NAME=\"\"\nNAME=''\nVERSION_ID=\n");
        assert_eq!(
            os,
            OsRelease {
                id: some("debian"),
                ..OsRelease::default()
            }
        );
        // A later empty assignment clears an earlier value, as in the shell.
        assert_eq!(parse(b"ID=a\nID=\n").id, None);
    }

    #[test]
    fn display_names() {
        let os = |text: &str| parse(text.as_bytes()).display_name();
        assert_eq!(os("PRETTY_NAME=P\nNAME=N\nVERSION_ID=1\nID=i"), "P");
        assert_eq!(os("NAME=N\nVERSION_ID=1\nID=i"), "N 1");
        assert_eq!(os("NAME=N\nID=i"), "N");
        assert_eq!(os("VERSION_ID=1\nID=i"), "i 1");
        assert_eq!(os("VERSION_ID=1"), "1");
        assert_eq!(os("ID=i"), "i");
        assert_eq!(os(""), "unknown");
        assert_eq!(parse(b"\x00\xff garbage \x01").display_name(), "unknown");
    }

    #[test]
    fn serializes() {
        let json = serde_json::to_value(parse(b"ID=debian\nVERSION_ID=12\n")).unwrap();
        assert_eq!(json["id"], "debian");
        assert_eq!(json["version_id"], "12");
        assert!(json["pretty_name"].is_null());
    }

    /// [`read`] through an ext4 image: the `/etc` symlink into `/usr/lib`, the fall back to
    /// `/usr/lib/os-release` when `/etc/os-release` dangles, none at all, one too big.
    #[test]
    #[cfg_attr(
        not(feature = "tool-tests"),
        ignore = "calls external tools: run with --features tool-tests"
    )]
    fn read_from_ext4() {
        let dir = tempfile::tempdir().unwrap();
        let image = |name: &str, setup: &dyn Fn(&Path)| {
            let tree = dir.path().join(name);
            std::fs::create_dir_all(tree.join("etc")).unwrap();
            std::fs::create_dir_all(tree.join("usr/lib")).unwrap();
            setup(&tree);
            let img = dir.path().join(format!("{name}.ext4"));
            let out = Command::new("mkfs.ext4")
                .args(["-q", "-F", "-d"])
                .arg(&tree)
                .arg(&img)
                .arg("16M")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let src = format::open_path(&img, &OpenOptions::default()).unwrap();
            let len = src.size();
            Ext4::open(src, 0, len, Path::new(name)).unwrap()
        };
        let usr = b"ID=debian\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";

        let linked = image("linked", &|t| {
            std::fs::write(t.join("usr/lib/os-release"), usr).unwrap();
            symlink("../usr/lib/os-release", t.join("etc/os-release")).unwrap();
        });
        let os = read(&linked).unwrap().unwrap();
        assert_eq!(os.display_name(), "Debian GNU/Linux 12 (bookworm)");

        // /etc wins over /usr/lib, even with less in it.
        let both = image("both", &|t| {
            std::fs::write(t.join("usr/lib/os-release"), usr).unwrap();
            std::fs::write(t.join("etc/os-release"), b"ID=custom\n").unwrap();
        });
        assert_eq!(read(&both).unwrap().unwrap().display_name(), "custom");

        let dangling = image("dangling", &|t| {
            std::fs::write(t.join("usr/lib/os-release"), usr).unwrap();
            symlink("../nowhere/os-release", t.join("etc/os-release")).unwrap();
        });
        assert_eq!(read(&dangling).unwrap().unwrap().id, some("debian"));

        let none = image("none", &|_| {});
        assert_eq!(read(&none).unwrap(), None);

        let big = image("big", &|t| {
            let mut text = b"ID=big\n".to_vec();
            text.resize(MAX_LEN as usize + 1, b'#');
            std::fs::write(t.join("etc/os-release"), text).unwrap();
        });
        let e = read(&big).unwrap_err();
        assert!(!e.is_not_found(), "{e}");

        let dir_not_file = image("dir", &|t| {
            std::fs::create_dir(t.join("etc/os-release")).unwrap();
        });
        assert!(read(&dir_not_file).is_err());
    }
}
