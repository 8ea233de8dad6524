//! Entry points for the fuzz targets in `fuzz/` that are not public API: thin wrappers around
//! crate-private parsers. Not part of mkomi's interface; hidden from its documentation.

/// Whether `d` has the shape of a ContentDigest (the store's check).
pub fn is_digest(d: &str) -> bool {
    crate::store::is_digest(d)
}

/// Whether `s` matches the `image list --filter` glob `pattern` (`*` is any run).
pub fn glob(pattern: &str, s: &str) -> bool {
    crate::glob::matches(crate::glob::Syntax::Star, pattern, s)
}
