//! Encrypted storage on untrusted sources.
//!
//! A file is split into fixed-size packets; each packet is encrypted under its own key with
//! an AEAD the master chose, and stored on `r` sources under a name that looks random and
//! tells a source nothing about the file, the position or the owner ([`packet`]). The
//! metadata (which packets make a file, their order, keys, versions, expiry and who may read
//! it) lives with the masters, in the replicated catalog ([`master`]); sources only ever see
//! opaque blobs.

pub mod client;
pub mod data;
pub mod error;
pub mod mailbox;
pub mod master;
pub mod packet;
pub mod placement;
pub mod source;
pub mod wire;
