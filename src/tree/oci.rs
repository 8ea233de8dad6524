//! Reading a oci into a [`crate::tree::Tree`].
