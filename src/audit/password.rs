//! The password field of `/etc/shadow` and `/etc/passwd`: whether it lets someone log in, and
//! the name of its hash scheme — never the hash.

/// What a password field allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Password {
    /// Empty: a login without any password (where PAM allows `nullok`, as most do).
    Empty,
    /// A crypt(3) hash of a password: whoever knows (or cracks) it can log in.
    Usable(&'static str),
    /// A hash behind a lock (`!` or `*` prefix): no login, but the hash is in the image and
    /// `passwd -u` restores it.
    LockedHash(&'static str),
    /// No password can match (`*`, `!`, `!!`, `*LK*`, `x`…).
    Locked,
}

/// The schemes of crypt(3) by their `$id$` prefix (libxcrypt's `crypt(5)`).
const SCHEMES: &[(&str, &str)] = &[
    ("1", "md5crypt"),
    ("2a", "bcrypt"),
    ("2b", "bcrypt"),
    ("2x", "bcrypt"),
    ("2y", "bcrypt"),
    ("3", "nthash"),
    ("5", "sha256crypt"),
    ("6", "sha512crypt"),
    ("7", "scrypt"),
    ("gy", "gost-yescrypt"),
    ("md5", "sunmd5"),
    ("sha1", "sha1crypt"),
    ("y", "yescrypt"),
];

fn is_crypt_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '/'
}

/// The scheme of a hash, or `None` if `field` cannot be a hash that some password matches.
fn scheme(field: &str) -> Option<&'static str> {
    if let Some(rest) = field.strip_prefix('$') {
        // `$id$…` or `$id,params$…` (sunmd5): the id is before the next `$` or `,`.
        let end = rest.find(['$', ','])?;
        let id = rest.get(..end)?;
        let known = SCHEMES
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, name)| *name);
        return Some(known.unwrap_or("an unrecognised $…$ scheme"));
    }
    if field.len() == 13 && field.chars().all(is_crypt_char) {
        return Some("descrypt");
    }
    if field.len() == 20 && field.starts_with('_') && field.chars().skip(1).all(is_crypt_char) {
        return Some("bsdicrypt");
    }
    None
}

/// Classifies a password field.
pub(crate) fn classify(field: &str) -> Password {
    if field.is_empty() {
        return Password::Empty;
    }
    if let Some(rest) = field.strip_prefix(['!', '*']) {
        let rest = rest.trim_start_matches(['!', '*']);
        return scheme(rest).map_or(Password::Locked, Password::LockedHash);
    }
    scheme(field).map_or(Password::Locked, Password::Usable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        use Password::*;
        assert_eq!(classify(""), Empty);
        for locked in ["*", "!", "!!", "!*", "*LK*", "x", "NP", "LOCKED", "$", "$6"] {
            assert_eq!(classify(locked), Locked, "{locked}");
        }
        assert_eq!(classify("$6$salt$hash"), Usable("sha512crypt"));
        assert_eq!(classify("$y$j9T$salt$hash"), Usable("yescrypt"));
        assert_eq!(classify("$5$rounds=5000$s$h"), Usable("sha256crypt"));
        assert_eq!(classify("$1$s$h"), Usable("md5crypt"));
        assert_eq!(classify("$2b$10$abc"), Usable("bcrypt"));
        assert_eq!(classify("$md5,rounds=9$s$h"), Usable("sunmd5"));
        assert_eq!(classify("$zz$s$h"), Usable("an unrecognised $…$ scheme"));
        assert_eq!(classify("abcdefghijklm"), Usable("descrypt"));
        assert_eq!(classify("_J9..abcdefghijklmno"), Usable("bsdicrypt"));
        assert_eq!(classify("!$6$salt$hash"), LockedHash("sha512crypt"));
        assert_eq!(classify("!!$y$j9T$s$h"), LockedHash("yescrypt"));
        assert_eq!(classify("*abcdefghijklm"), LockedHash("descrypt"));
    }
}
