//! Publishing bundles to an Outscale account and pulling images back (issue #15):
//! - [`oapi`]: the OAPI request and response types, generated from the API description by
//!   `tools/gen-oapi-types.py`, so that no request shape is written by hand;
//! - [`client`]: signs (SigV4, service `oapi`) and sends them, with one retry policy per call
//!   and one-line errors; [`credentials`]: where the account is and as whom to call it;
//! - [`run`]: `mkomi publish` (and its `--dry-run` plan); [`pull`]: `mkomi pull`.

pub mod client;
pub mod credentials;
pub mod oapi;
pub mod pull;
pub mod run;

#[cfg(test)]
mod tests;
