//! OpenSSH keys as the audit needs them: `authorized_keys` lines, public key blobs and their
//! SHA256 fingerprints, and private key files (their format, whether they are encrypted and the
//! public key some of them carry).
//!
//! Everything here reads hostile bytes: lengths are checked before slicing, and the errors are
//! fixed phrases (plus key type names from [`KEY_TYPES`]), never a piece of the input.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest, Sha256};

/// The fields of a public key blob after its type name (and, for a certificate, its nonce).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fields {
    /// `mpint e, mpint n`.
    Rsa,
    /// `mpint p, q, g, y`.
    Dss,
    /// `string curve, string Q`, the curve named and its size in bits.
    Ecdsa(&'static str, u32),
    /// `string pk` of 32 bytes.
    Ed25519,
    /// `string curve ("nistp256"), string Q, string application`.
    SkEcdsa,
    /// `string pk` of 32 bytes, `string application`.
    SkEd25519,
}

/// A key type OpenSSH reads from `authorized_keys` and `.pub` files.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct KeyType {
    /// The type name, as in a key line and at the start of the blob.
    pub name: &'static str,
    /// What `ssh-keygen -l` prints in parentheses (`ED25519`, `RSA-CERT`…).
    pub label: &'static str,
    /// For a certificate, the type name of the plain key inside; `None` for a plain key.
    plain: Option<&'static str>,
    fields: Fields,
}

const fn plain(name: &'static str, label: &'static str, fields: Fields) -> KeyType {
    KeyType {
        name,
        label,
        plain: None,
        fields,
    }
}

const fn cert(
    name: &'static str,
    label: &'static str,
    plain: &'static str,
    fields: Fields,
) -> KeyType {
    KeyType {
        name,
        label,
        plain: Some(plain),
        fields,
    }
}

/// The key types of OpenSSH 9 (sshkey.c's `keyimpls`), plain keys and certificates.
pub(crate) const KEY_TYPES: &[KeyType] = &[
    plain("ssh-ed25519", "ED25519", Fields::Ed25519),
    plain("ssh-rsa", "RSA", Fields::Rsa),
    plain(
        "ecdsa-sha2-nistp256",
        "ECDSA",
        Fields::Ecdsa("nistp256", 256),
    ),
    plain(
        "ecdsa-sha2-nistp384",
        "ECDSA",
        Fields::Ecdsa("nistp384", 384),
    ),
    plain(
        "ecdsa-sha2-nistp521",
        "ECDSA",
        Fields::Ecdsa("nistp521", 521),
    ),
    plain("ssh-dss", "DSA", Fields::Dss),
    plain(
        "sk-ssh-ed25519@openssh.com",
        "ED25519-SK",
        Fields::SkEd25519,
    ),
    plain(
        "sk-ecdsa-sha2-nistp256@openssh.com",
        "ECDSA-SK",
        Fields::SkEcdsa,
    ),
    cert(
        "ssh-ed25519-cert-v01@openssh.com",
        "ED25519-CERT",
        "ssh-ed25519",
        Fields::Ed25519,
    ),
    cert(
        "ssh-rsa-cert-v01@openssh.com",
        "RSA-CERT",
        "ssh-rsa",
        Fields::Rsa,
    ),
    cert(
        "ecdsa-sha2-nistp256-cert-v01@openssh.com",
        "ECDSA-CERT",
        "ecdsa-sha2-nistp256",
        Fields::Ecdsa("nistp256", 256),
    ),
    cert(
        "ecdsa-sha2-nistp384-cert-v01@openssh.com",
        "ECDSA-CERT",
        "ecdsa-sha2-nistp384",
        Fields::Ecdsa("nistp384", 384),
    ),
    cert(
        "ecdsa-sha2-nistp521-cert-v01@openssh.com",
        "ECDSA-CERT",
        "ecdsa-sha2-nistp521",
        Fields::Ecdsa("nistp521", 521),
    ),
    cert(
        "ssh-dss-cert-v01@openssh.com",
        "DSA-CERT",
        "ssh-dss",
        Fields::Dss,
    ),
    cert(
        "sk-ssh-ed25519-cert-v01@openssh.com",
        "ED25519-SK-CERT",
        "sk-ssh-ed25519@openssh.com",
        Fields::SkEd25519,
    ),
    cert(
        "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
        "ECDSA-SK-CERT",
        "sk-ecdsa-sha2-nistp256@openssh.com",
        Fields::SkEcdsa,
    ),
];

/// The key type called `name`, if OpenSSH knows it.
pub(crate) fn key_type(name: &[u8]) -> Option<&'static KeyType> {
    KEY_TYPES.iter().find(|t| t.name.as_bytes() == name)
}

/// A public key that parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublicKey {
    /// Its type.
    pub key_type: &'static KeyType,
    /// Size in bits, as `ssh-keygen -l` prints it.
    pub bits: u32,
    /// `SHA256:` and the unpadded base64 of the SHA-256 of the (plain) key blob, as
    /// `ssh-keygen -l` prints it; a certificate has the fingerprint of the key it certifies.
    pub fingerprint: String,
}

impl PublicKey {
    /// `ED25519 SHA256:… (256 bits)`.
    pub fn describe(&self) -> String {
        format!(
            "{} {} ({} bits)",
            self.key_type.label, self.fingerprint, self.bits
        )
    }
}

/// A reader of SSH wire-format fields (RFC 4251 §5) that never reads past its buffer.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_be_bytes(b.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        Some(u64::from_be_bytes(b.try_into().ok()?))
    }

    fn string(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u32()?).ok()?;
        self.take(len)
    }

    /// A non-negative `mpint`, returned as its size in bits (leading zero bytes allowed, as
    /// OpenSSH does); `None` if negative.
    fn mpint_bits(&mut self) -> Option<u32> {
        let b = self.string()?;
        if b.first().is_some_and(|&first| first & 0x80 != 0) {
            return None;
        }
        let Some(start) = b.iter().position(|&x| x != 0) else {
            return Some(0);
        };
        let digits = b.get(start..)?;
        let &first = digits.first()?;
        let bytes = u32::try_from(digits.len()).ok()?;
        (bytes - 1)
            .checked_mul(8)?
            .checked_add(8 - first.leading_zeros())
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

/// Why a blob is not a key: a fixed phrase.
const MALFORMED: &str = "the key data is truncated or malformed";

/// The fields of `fields`; returns the key's size in bits.
fn read_fields(r: &mut Reader, fields: Fields) -> Option<u32> {
    match fields {
        Fields::Rsa => {
            r.mpint_bits()?;
            r.mpint_bits()
        }
        Fields::Dss => {
            let bits = r.mpint_bits()?;
            for _ in 0..3 {
                r.mpint_bits()?;
            }
            Some(bits)
        }
        Fields::Ecdsa(curve, bits) => {
            (r.string()? == curve.as_bytes()).then_some(())?;
            (!r.string()?.is_empty()).then_some(bits)
        }
        Fields::Ed25519 => (r.string()?.len() == 32).then_some(256),
        Fields::SkEcdsa => {
            (r.string()? == b"nistp256").then_some(())?;
            (!r.string()?.is_empty()).then_some(())?;
            r.string()?;
            Some(256)
        }
        Fields::SkEd25519 => {
            (r.string()?.len() == 32).then_some(())?;
            r.string()?;
            Some(256)
        }
    }
}

/// The certificate fields after the key (PROTOCOL.certkeys), checked for structure only: serial,
/// type, key id, principals, validity, critical options, extensions, reserved, signature key and
/// signature, and nothing after them.
fn read_cert_tail(r: &mut Reader) -> Option<()> {
    r.u64()?;
    r.u32()?;
    r.string()?;
    r.string()?;
    r.u64()?;
    r.u64()?;
    for _ in 0..5 {
        r.string()?;
    }
    r.is_empty().then_some(())
}

/// Parses the public key `blob`, which the key line says is of type `expected`.
pub(crate) fn parse_blob(blob: &[u8], expected: &'static KeyType) -> Result<PublicKey, String> {
    let mut r = Reader::new(blob);
    let name = r.string().ok_or(MALFORMED)?;
    if name != expected.name.as_bytes() {
        return Err(match key_type(name) {
            Some(t) => format!(
                "the key data is a {} key, not the {} the line says",
                t.name, expected.name
            ),
            None => format!(
                "the key data is not a {} key (its type is unknown)",
                expected.name
            ),
        });
    }
    if expected.plain.is_some() {
        r.string().ok_or(MALFORMED)?; // nonce
    }
    let start = r.pos;
    let bits = read_fields(&mut r, expected.fields).ok_or(MALFORMED)?;
    let end = r.pos;
    let fingerprint = match expected.plain {
        None => {
            if !r.is_empty() {
                return Err("the key data has bytes after the key".to_owned());
            }
            fingerprint(blob)
        }
        Some(plain) => {
            read_cert_tail(&mut r).ok_or("the certificate is truncated or malformed")?;
            // ssh-keygen fingerprints the certified key, as a plain key blob.
            let fields = blob.get(start..end).ok_or(MALFORMED)?;
            let mut plain_blob = Vec::with_capacity(4 + plain.len() + fields.len());
            let name_len = u32::try_from(plain.len()).map_err(|_| MALFORMED)?;
            plain_blob.extend_from_slice(&name_len.to_be_bytes());
            plain_blob.extend_from_slice(plain.as_bytes());
            plain_blob.extend_from_slice(fields);
            fingerprint(&plain_blob)
        }
    };
    Ok(PublicKey {
        key_type: expected,
        bits,
        fingerprint,
    })
}

/// `SHA256:` and the unpadded standard base64 of the SHA-256 of `blob`, as `ssh-keygen -l`.
pub(crate) fn fingerprint(blob: &[u8]) -> String {
    format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(blob)))
}

/// One key of an `authorized_keys` file (or a `.pub` file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyLine {
    /// The key.
    pub key: PublicKey,
    /// The names of the options before the key (`command`, `no-pty`…); a name that is not
    /// made of letters, digits and `-` is `?`.
    pub options: Vec<String>,
    /// The rest of the line after the key, trimmed.
    pub comment: String,
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// The first run of non-blank characters of `s` and what follows it.
fn token(s: &str) -> (&str, &str) {
    s.split_at(s.find(is_blank).unwrap_or(s.len()))
}

/// Splits the options at the start of `line` from the rest, as sshd's
/// `sshkey_advance_past_options`: they end at the first blank outside double quotes, and `\"`
/// is a quote inside quotes.
fn split_options(line: &str) -> Result<(&str, &str), &'static str> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = line.get(i + 1..).is_some_and(|r| r.starts_with('"'));
        } else if c == '"' {
            quoted = !quoted;
        } else if !quoted && is_blank(c) {
            return Ok(line.split_at(i));
        }
    }
    if quoted {
        Err("its options have an unterminated quote")
    } else {
        Ok((line, ""))
    }
}

/// The names of the comma-separated options in `options` (commas inside quotes do not count).
fn option_names(options: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut start = 0;
    let mut push = |part: &str| {
        let name = part.split('=').next().unwrap_or_default();
        let plain = !name.is_empty()
            && name.len() <= 32
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        names.push(if plain {
            name.to_ascii_lowercase()
        } else {
            "?".to_owned()
        });
    };
    for (i, c) in options.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = options.get(i + 1..).is_some_and(|r| r.starts_with('"'));
        } else if c == '"' {
            quoted = !quoted;
        } else if c == ',' && !quoted {
            push(options.get(start..i).unwrap_or_default());
            start = i + 1;
        }
    }
    push(options.get(start..).unwrap_or_default());
    names
}

/// The longest comment kept, in characters.
const MAX_COMMENT: usize = 100;

/// Parses one line of an `authorized_keys` file: `Ok(None)` for a blank or comment line.
///
/// Like sshd, the line is first read as a key, then as options followed by a key. The error is
/// a fixed phrase saying why the line is not a key, never a piece of the line.
pub(crate) fn parse_line(line: &str) -> Result<Option<KeyLine>, String> {
    let line = line
        .trim_end_matches(['\r', '\n'])
        .trim_start_matches(is_blank);
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (options, rest) = if key_type(token(line).0.as_bytes()).is_some() {
        ("", line)
    } else {
        split_options(line)?
    };
    let rest = rest.trim_start_matches(is_blank);
    if rest.is_empty() {
        return Err("it holds no key".to_owned());
    }
    let (word, rest) = token(rest);
    let Some(key_type) = key_type(word.as_bytes()) else {
        return Err("it holds no key type OpenSSH knows, at its start or after options".to_owned());
    };
    let (data, rest) = token(rest.trim_start_matches(is_blank));
    if data.is_empty() {
        return Err(format!("no key data follows {}", key_type.name));
    }
    let blob = STANDARD
        .decode(data)
        .map_err(|_| "its key data is not valid base64".to_owned())?;
    let key = parse_blob(&blob, key_type)?;
    let comment = rest.trim_matches(is_blank);
    let comment = match comment.char_indices().nth(MAX_COMMENT) {
        Some((i, _)) => format!("{}…", comment.get(..i).unwrap_or_default()),
        None => comment.to_owned(),
    };
    Ok(Some(KeyLine {
        key,
        options: if options.is_empty() {
            Vec::new()
        } else {
            option_names(options)
        },
        comment,
    }))
}

/// The key of a `.pub` file: its first line that is not blank or a comment.
pub(crate) fn parse_pub(text: &[u8]) -> Result<KeyLine, String> {
    for line in text.split(|&b| b == b'\n') {
        if let Some(key) = parse_line(&String::from_utf8_lossy(line))? {
            return Ok(key);
        }
    }
    Err("it holds no key".to_owned())
}

/// What a private key file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PrivateKey {
    /// `OpenSSH`, `PEM RSA`, `PEM EC`, `PEM DSA` or `PKCS#8`.
    pub format: &'static str,
    /// Whether the key is encrypted with a passphrase.
    pub encrypted: bool,
    /// The public key stored next to it (OpenSSH format only), if it parses.
    pub public: Option<PublicKey>,
}

/// The base64 body between `-----BEGIN {label}-----` and `-----END {label}-----`, if any.
fn pem_body<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let body = text.get(start..)?;
    body.get(..body.find(&end)?)
}

/// Recognises a private key file; `None` if it is not one of the formats OpenSSH writes.
pub(crate) fn parse_private(bytes: &[u8]) -> Option<PrivateKey> {
    let text = String::from_utf8_lossy(bytes);
    if let Some(body) = pem_body(&text, "OPENSSH PRIVATE KEY") {
        let data: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let decoded = STANDARD.decode(data).ok()?;
        let rest = decoded.strip_prefix(b"openssh-key-v1\0")?;
        let mut r = Reader::new(rest);
        let cipher = r.string()?;
        r.string()?; // kdf name
        r.string()?; // kdf options
        let public = match r.u32()? {
            0 => None,
            _ => r.string().and_then(|blob| {
                let name = Reader::new(blob).string()?;
                parse_blob(blob, key_type(name)?).ok()
            }),
        };
        return Some(PrivateKey {
            format: "OpenSSH",
            encrypted: cipher != b"none",
            public,
        });
    }
    for (label, format) in [
        ("RSA PRIVATE KEY", "PEM RSA"),
        ("EC PRIVATE KEY", "PEM EC"),
        ("DSA PRIVATE KEY", "PEM DSA"),
        ("PRIVATE KEY", "PKCS#8"),
        ("ENCRYPTED PRIVATE KEY", "PKCS#8"),
    ] {
        if let Some(body) = pem_body(&text, label) {
            return Some(PrivateKey {
                format,
                encrypted: label.starts_with("ENCRYPTED")
                    || body.contains("Proc-Type: 4,ENCRYPTED"),
                public: None,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s);
    }

    fn ed25519_blob(name: &str) -> Vec<u8> {
        let mut blob = Vec::new();
        string(&mut blob, name.as_bytes());
        string(&mut blob, &[7; 32]);
        blob
    }

    fn line_for(blob: &[u8]) -> String {
        format!("ssh-ed25519 {} c", STANDARD.encode(blob))
    }

    #[test]
    fn options_and_comments() {
        let b64 = STANDARD.encode(ed25519_blob("ssh-ed25519"));
        let line = format!(
            "  command=\"echo \\\"a b\\\", c\",no-pty,FROM=\"x\",b@d ssh-ed25519 {b64}  my key \r"
        );
        let key = parse_line(&line).unwrap().unwrap();
        assert_eq!(key.options, ["command", "no-pty", "from", "?"]);
        assert_eq!(key.comment, "my key");
        assert_eq!(key.key.bits, 256);
        assert_eq!(key.key.key_type.label, "ED25519");
        assert_eq!(
            key.key.fingerprint,
            fingerprint(&ed25519_blob("ssh-ed25519"))
        );
        assert_eq!(parse_line("").unwrap(), None);
        assert_eq!(parse_line("   # ssh-ed25519 AAAA").unwrap(), None);
        let long = format!("ssh-ed25519 {b64} {}", "x".repeat(500));
        let key = parse_line(&long).unwrap().unwrap();
        assert_eq!(key.comment.chars().count(), MAX_COMMENT + 1);
    }

    #[test]
    fn invalid_lines_do_not_echo_the_line() {
        let good = ed25519_blob("ssh-ed25519");
        let mut trailing = good.clone();
        trailing.push(0);
        let lines = [
            "command=\"unterminated ssh-ed25519 AAAA".to_owned(),
            "no-pty".to_owned(),
            "secretword AAAA".to_owned(),
            "no-pty secretword AAAA".to_owned(),
            "ssh-ed25519".to_owned(),
            "ssh-ed25519 secret*word".to_owned(),
            "ssh-ed25519 c2VjcmV0d29yZA".to_owned(), // no padding
            line_for(&ed25519_blob("ssh-rsa")),
            line_for(&ed25519_blob("secretword")),
            line_for(&good[..20]),
            line_for(&trailing),
            format!("ssh-ed25519 {}", STANDARD.encode(b"secretword")),
        ];
        for line in &lines {
            let e = parse_line(line).unwrap_err();
            assert!(!e.contains("secret") && !e.contains("AAAA"), "{line}: {e}");
        }
        assert_eq!(
            parse_line(&lines[7]).unwrap_err(),
            "the key data is a ssh-rsa key, not the ssh-ed25519 the line says"
        );
    }

    #[test]
    fn mpint_sizes() {
        let bits = |b: &[u8]| {
            let mut v = Vec::new();
            string(&mut v, b);
            Reader::new(&v).mpint_bits()
        };
        assert_eq!(bits(&[]), Some(0));
        assert_eq!(bits(&[1]), Some(1));
        assert_eq!(bits(&[0x00, 0x80]), Some(8));
        assert_eq!(bits(&[0x7f, 0]), Some(15));
        assert_eq!(bits(&[0x80]), None);
        assert_eq!(bits(&[0x00, 0x00, 0x01]), Some(1));
        assert_eq!(Reader::new(&[0, 0, 0, 9, 1]).mpint_bits(), None);
        assert_eq!(Reader::new(&[0xff; 4]).string(), None);
    }

    #[test]
    fn private_key_formats() {
        assert_eq!(parse_private(b"hello"), None);
        let pem = b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        let key = parse_private(pem).unwrap();
        assert_eq!((key.format, key.encrypted), ("PEM RSA", true));
        let p8 = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let key = parse_private(p8).unwrap();
        assert_eq!((key.format, key.encrypted), ("PKCS#8", false));
        // An OpenSSH body that is not base64 is not recognised.
        let bad = b"-----BEGIN OPENSSH PRIVATE KEY-----\n***\n-----END OPENSSH PRIVATE KEY-----\n";
        assert_eq!(parse_private(bad), None);
    }
}
