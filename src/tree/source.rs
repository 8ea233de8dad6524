//! Which input a path is, and reading it.
