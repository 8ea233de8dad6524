//! Reading a tar into a [`crate::tree::Tree`].
