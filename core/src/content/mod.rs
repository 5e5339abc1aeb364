//! Content: what the network stores and replicates (SPEC R7). `verify` holds content identity
//! and the verification of metadata and pieces against the plain BLAKE3 hash of a file; the
//! store and the transfer protocol build on it.

pub mod verify;

pub use verify::{ContentId, Layout, PIECE_LEN, VerifyError};
