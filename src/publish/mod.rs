//! Publishing bundles to an Outscale account and pulling images back (issue #15): for now, the
//! OAPI request and response types, generated from the API description by
//! `tools/gen-oapi-types.py` so that no request shape is written by hand, and the client that
//! signs and sends them ([`client`], with its credentials from [`credentials`]).

pub mod client;
pub mod credentials;
pub mod oapi;
pub mod pull;
pub mod run;

#[cfg(test)]
mod tests;
