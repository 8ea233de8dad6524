//! Reading a dir into a [`crate::tree::Tree`].
