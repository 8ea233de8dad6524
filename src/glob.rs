//! Glob patterns, one matcher for every place mkomi takes them: file names inside a root file
//! system (`root:/boot/vmlinuz-*` in templates) and the values of `image list --filter`.
//!
//! The two differ only in their wildcards, which [`Syntax`] names; the matching itself (a `*`
//! retried one character further on each mismatch, linear in practice, no recursion, no
//! allocation) is shared.

/// Which characters are wildcards, and whether a wildcard may match a leading dot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    /// A file name, as a shell expands one: `*` matches any run of characters, `?` one
    /// character, and neither matches the leading `.` of a hidden file (`.*` does).
    FileName,
    /// `*` matches any run of characters, a leading `.` included; `?` is itself (the store's
    /// `--filter` values, as they have always been).
    Star,
}

impl Syntax {
    /// Whether `c` is a wildcard of this syntax.
    pub fn is_wildcard(self, c: char) -> bool {
        c == '*' || (c == '?' && self == Syntax::FileName)
    }

    /// Whether `pattern` holds a wildcard (otherwise it matches only itself).
    pub fn is_pattern(self, pattern: &str) -> bool {
        pattern.contains(|c| self.is_wildcard(c))
    }
}

/// Whether the whole of `text` matches `pattern`.
pub fn matches(syntax: Syntax, pattern: &str, text: &str) -> bool {
    if syntax == Syntax::FileName && text.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let (mut p, mut t) = (pattern, text);
    // The pattern after the last `*` seen, and the text from where that `*`'s match ends: on a
    // mismatch, the `*` takes one more character and the rest is tried again from there.
    let mut star: Option<(&str, &str)> = None;
    while let Some(tc) = t.chars().next() {
        let mut rest = p.chars();
        match rest.next() {
            Some('*') => {
                p = rest.as_str();
                star = Some((p, t));
            }
            Some(c) if c == tc || (c == '?' && syntax.is_wildcard(c)) => {
                p = rest.as_str();
                t = &t[tc.len_utf8()..];
            }
            _ => match star {
                Some((after, from)) => {
                    let mut from = from.chars();
                    from.next();
                    let from = from.as_str();
                    star = Some((after, from));
                    (p, t) = (after, from);
                }
                None => return false,
            },
        }
    }
    p.chars().all(|c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(pattern: &str, name: &str) -> bool {
        matches(Syntax::FileName, pattern, name)
    }

    fn star(pattern: &str, value: &str) -> bool {
        matches(Syntax::Star, pattern, value)
    }

    /// Templates' `root:` paths: kernels, initrds and loaders found by their file names.
    #[test]
    fn file_names() {
        assert!(file("vmlinuz-*", "vmlinuz-6.1"));
        assert!(file("*", "a"));
        assert!(file("a*b*c", "aXbYbZc"));
        assert!(file("a?c", "abc"));
        assert!(file("é?", "éè"));
        assert!(file("*.efi", "x.efi"));
        assert!(!file("*.efi", "x.efi.bak"));
        assert!(!file("a?c", "ac"));
        assert!(!file("*", ".hidden"));
        assert!(!file("?hidden", ".hidden"));
        assert!(file(".*", ".hidden"));
        assert!(file("**", ""));
        assert!(file("initrd.img-*", "initrd.img-6.1.0-13-amd64"));
        assert!(!file("vmlinuz-*", "vmlinuz"));
        assert!(file("vmlinuz", "vmlinuz"));
        assert!(Syntax::FileName.is_pattern("vmlinuz-?"));
        assert!(!Syntax::FileName.is_pattern("vmlinuz"));
    }

    /// `image list --filter name=…,tag:K=V`: `*` only, and nothing hidden.
    #[test]
    fn filter_values() {
        assert!(star("web", "web"));
        assert!(!star("web", "web2"));
        assert!(star("web*", "web (v2)"));
        assert!(star("*", ""));
        assert!(star("*", ".hidden"));
        assert!(star("*v2*", "web (v2)"));
        assert!(star("a*a", "aa"));
        assert!(!star("a*a", "a"));
        assert!(!star("ab*b", "ab"));
        assert!(star("*a*b*", "xaxb"));
        assert!(!star("*a*b*", "ba"));
        assert!(star("é*", "été"));
        // `?` is no wildcard here: a name holding one is found by itself.
        assert!(star("what?", "what?"));
        assert!(!star("what?", "whats"));
        assert!(!Syntax::Star.is_pattern("what?"));
        assert!(Syntax::Star.is_pattern("w*"));
    }

    /// Many stars against a long text end, and quickly: no backtracking blow-up.
    #[test]
    fn no_blow_up() {
        let text = "a".repeat(4096);
        let pattern = format!("{}b", "*a".repeat(64));
        assert!(!file(&pattern, &text));
        assert!(!star(&pattern, &text));
    }
}
