//! The DHT's wire messages and their decode bounds.

use serde::{Deserialize, Serialize};

use crate::discovery::PeerRecord;
use crate::id::NodeId;
use crate::wire::{Kind, RateLimit, WireError};

use super::table::K;

/// DHT requests a peer may make of us per window: a busy node answers several lookups a
/// second, each asking it once or twice.
pub const RATE_LIMIT: RateLimit = RateLimit { max: 400, window_ms: 10_000 };
/// DHT requests we keep in flight to one peer (several lookups may pass through it at once).
pub const IN_FLIGHT_MAX: usize = 4;
/// Most records in one answer.
pub const RECORDS_MAX: usize = K;
/// Most keys in one `AddProviders` request (a republish batch to one node).
pub const ADD_KEYS_MAX: usize = 512;

/// The DHT's requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The `K` nodes closest to `target` that the answering node knows (verified ones only).
    FindNode { target: NodeId },
    /// Providers of `key` the answering node stores, and the nodes closest to it it knows.
    GetProviders { key: [u8; 32] },
    /// The asker holds these items: store it as their provider. The provider is the identity
    /// proven on the connection, at the listen address it gave in its handshake.
    AddProviders { keys: Vec<[u8; 32]> },
}

/// The DHT's answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The answer to [`Request::FindNode`].
    Nodes(Vec<PeerRecord>),
    /// The answer to [`Request::GetProviders`].
    Providers { providers: Vec<PeerRecord>, closer: Vec<PeerRecord> },
    /// The answer to [`Request::AddProviders`]: how many records were stored.
    Added { stored: u32 },
}

impl Request {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Request::FindNode { .. } => Kind::FindNode,
            Request::GetProviders { .. } => Kind::GetProviders,
            Request::AddProviders { .. } => Kind::AddProviders,
        }
    }

    /// The kind of answer it expects.
    pub fn expects(&self) -> Kind {
        match self {
            Request::FindNode { .. } => Kind::Nodes,
            Request::GetProviders { .. } => Kind::Providers,
            Request::AddProviders { .. } => Kind::Added,
        }
    }

    /// Decode bounds.
    pub fn check_bounds(&self) -> Result<(), WireError> {
        match self {
            Request::AddProviders { keys } if keys.len() > ADD_KEYS_MAX => Err(WireError::OutOfBounds(format!(
                "{} provider keys in one request; at most {ADD_KEYS_MAX}",
                keys.len()
            ))),
            _ => Ok(()),
        }
    }
}

impl Response {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Response::Nodes(_) => Kind::Nodes,
            Response::Providers { .. } => Kind::Providers,
            Response::Added { .. } => Kind::Added,
        }
    }

    /// Decode bounds.
    pub fn check_bounds(&self) -> Result<(), WireError> {
        let (a, b) = match self {
            Response::Nodes(records) => (records.len(), 0),
            Response::Providers { providers, closer } => (providers.len(), closer.len()),
            Response::Added { .. } => (0, 0),
        };
        if a > RECORDS_MAX || b > RECORDS_MAX {
            return Err(WireError::OutOfBounds(format!(
                "{a} + {b} records in a DHT answer; at most {RECORDS_MAX} each"
            )));
        }
        Ok(())
    }
}
