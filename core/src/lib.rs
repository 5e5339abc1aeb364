//! mynet-core: the pure state machine of a mynet node.
//!
//! Everything that happens to a node is an [`Input`] passed to [`Node::handle`]; everything it
//! wants done comes out of [`Node::poll_output`]; [`Node::poll_timeout`] says when it next
//! needs a [`Input::Tick`]. There is no I/O, no clock, no OS randomness and no thread here,
//! which is what lets the same code run in production, in the simulator and in replay.

pub mod bootstrap;
pub mod config;
pub mod conns;
pub mod content;
pub mod context;
pub mod dht;
pub mod discovery;
pub mod event;
pub mod handshake;
pub mod hex;
pub mod id;
pub mod identity;
pub mod lan;
pub mod netstatus;
pub mod node;
pub mod peers;
pub mod penalties;
pub mod reconcile;
pub mod refusal;
pub mod request;
pub mod states;
pub mod time;
pub mod wire;

pub use config::{Config, ConfigError, Layer, Source};
pub use context::{Counters, Output};
pub use event::{CloseReason, Direction, Event, Phase, StartupFailure, Violation};
pub use id::{ConnId, NodeId, PublicKey};
pub use identity::{Identity, IdentityError};
pub use node::{Input, InvariantViolation, Node, NodeStatus, PeerStatus, SnapshotError, TimerKind};
pub use request::RequestId;
pub use time::{Mono, Time};
pub use wire::{Message, WireError};

/// The protocol version this build speaks (SPEC R6.2 `network_version`).
pub const PROTOCOL_VERSION: &str = "1.0.0";
