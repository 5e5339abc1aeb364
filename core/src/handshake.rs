//! The application handshake (SPEC R6.2), signed and bound to the secure channel.
//!
//! Each side signs its [`Hello`] together with its role and the channel binding (the Noise
//! handshake hash in production, a seeded random value in the simulator). A captured Hello is
//! useless on another connection, and a responder's answer cannot be reflected as an initiator's.

use core::net::SocketAddr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{parse_version, versions_compatible};
use crate::id::{NodeId, PublicKey};
use crate::identity::{self, Identity};
use crate::wire::Hello;

/// Capabilities this build announces (SPEC R6.2 `supported_features`).
pub const FEATURES: [&str; 3] = ["content_sync", "consensus", "dht"];
const DOMAIN: &str = "mynet/handshake/v1";

/// Which end of the connection signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The dialer, sending `Hello`.
    Initiator,
    /// The listener, answering with `HelloAck`.
    Responder,
}

/// Channel binding: a value both ends of one secure channel share and nobody else can choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding(pub [u8; 32]);

/// Why a peer's handshake was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandshakeError {
    #[error("bad handshake signature")]
    BadSignature,
    #[error("node id {claimed} does not match its public key")]
    NodeIdMismatch { claimed: NodeId },
    #[error("wrong network {theirs:?} (ours is {ours:?})")]
    WrongNetwork { ours: String, theirs: String },
    #[error("incompatible protocol version {theirs:?} (ours is {ours})")]
    IncompatibleVersion { ours: String, theirs: String },
    #[error("handshake timestamp is {skew_ms} ms away from our clock (limit {limit_ms} ms)")]
    ClockSkew { skew_ms: u64, limit_ms: u64 },
    #[error("connection to ourselves")]
    SelfConnection,
}

/// What our side needs to judge a peer's Hello.
#[derive(Clone, Copy, Debug)]
pub struct Expect<'a> {
    /// Our id, to catch connections to ourselves.
    pub our_id: NodeId,
    /// Our network id.
    pub network_id: &'a str,
    /// Our protocol version.
    pub version: &'a str,
    /// Our wall clock now.
    pub now_wall_ms: u64,
    /// Largest accepted clock difference.
    pub max_skew_ms: u64,
}

/// Builds and signs our Hello for `role` on the channel with `binding`.
pub fn build_hello(
    identity: &Identity,
    role: Role,
    binding: Binding,
    network_id: &str,
    version: &str,
    timestamp_ms: u64,
    listen_addr: Option<SocketAddr>,
) -> Hello {
    let mut hello = Hello {
        node_id: identity.node_id(),
        public_key: identity.public_key(),
        network_id: network_id.to_string(),
        network_version: version.to_string(),
        features: FEATURES.iter().map(|f| f.to_string()).collect(),
        timestamp_ms,
        listen_addr,
        signature: [0; 64],
    };
    hello.signature = identity.sign(&signed_bytes(&hello, role, binding));
    hello
}

/// Checks a peer's Hello sent in `role` on the channel with `binding`.
pub fn verify_hello(hello: &Hello, role: Role, binding: Binding, expect: &Expect<'_>) -> Result<(), HandshakeError> {
    if NodeId::from_public_key(&hello.public_key) != hello.node_id {
        return Err(HandshakeError::NodeIdMismatch { claimed: hello.node_id });
    }
    identity::verify(&hello.public_key, &signed_bytes(hello, role, binding), &hello.signature)
        .map_err(|_| HandshakeError::BadSignature)?;
    if hello.network_id != expect.network_id {
        return Err(HandshakeError::WrongNetwork {
            ours: expect.network_id.to_string(),
            theirs: hello.network_id.clone(),
        });
    }
    let compatible = match (parse_version(&hello.network_version), parse_version(expect.version)) {
        (Some(theirs), Some(ours)) => versions_compatible(theirs, ours),
        _ => false,
    };
    if !compatible {
        return Err(HandshakeError::IncompatibleVersion {
            ours: expect.version.to_string(),
            theirs: hello.network_version.clone(),
        });
    }
    let skew_ms = hello.timestamp_ms.abs_diff(expect.now_wall_ms);
    if skew_ms > expect.max_skew_ms {
        return Err(HandshakeError::ClockSkew { skew_ms, limit_ms: expect.max_skew_ms });
    }
    if hello.node_id == expect.our_id {
        return Err(HandshakeError::SelfConnection);
    }
    Ok(())
}

fn signed_bytes(hello: &Hello, role: Role, binding: Binding) -> Vec<u8> {
    #[derive(Serialize)]
    struct Signed<'a> {
        domain: &'a str,
        role: Role,
        binding: [u8; 32],
        node_id: NodeId,
        public_key: PublicKey,
        network_id: &'a str,
        network_version: &'a str,
        features: &'a [String],
        timestamp_ms: u64,
        listen_addr: Option<SocketAddr>,
    }
    let signed = Signed {
        domain: DOMAIN,
        role,
        binding: binding.0,
        node_id: hello.node_id,
        public_key: hello.public_key,
        network_id: &hello.network_id,
        network_version: &hello.network_version,
        features: &hello.features,
        timestamp_ms: hello.timestamp_ms,
        listen_addr: hello.listen_addr,
    };
    postcard::to_allocvec(&signed).expect("postcard encoding into a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn expect(our: &Identity) -> Expect<'_> {
        Expect { our_id: our.node_id(), network_id: "net", version: "1.0.0", now_wall_ms: NOW, max_skew_ms: 60_000 }
    }

    fn hello(id: &Identity, role: Role, binding: Binding) -> Hello {
        build_hello(id, role, binding, "net", "1.0.0", NOW, None)
    }

    #[test]
    fn every_refusal_path() {
        let (a, b) = (Identity::from_secret_bytes(&[1; 32]), Identity::from_secret_bytes(&[2; 32]));
        let bind = Binding([9; 32]);
        let ok = hello(&a, Role::Initiator, bind);
        assert_eq!(verify_hello(&ok, Role::Initiator, bind, &expect(&b)), Ok(()));
        // Replayed on another channel, or reflected in the other role.
        assert_eq!(
            verify_hello(&ok, Role::Initiator, Binding([8; 32]), &expect(&b)),
            Err(HandshakeError::BadSignature)
        );
        assert_eq!(verify_hello(&ok, Role::Responder, bind, &expect(&b)), Err(HandshakeError::BadSignature));
        let mut tampered = ok.clone();
        tampered.timestamp_ms += 1;
        assert_eq!(verify_hello(&tampered, Role::Initiator, bind, &expect(&b)), Err(HandshakeError::BadSignature));
        let mut wrong_id = ok.clone();
        wrong_id.node_id = b.node_id();
        assert!(matches!(
            verify_hello(&wrong_id, Role::Initiator, bind, &expect(&b)),
            Err(HandshakeError::NodeIdMismatch { .. })
        ));
        let other_net = build_hello(&a, Role::Initiator, bind, "other", "1.0.0", NOW, None);
        assert!(matches!(
            verify_hello(&other_net, Role::Initiator, bind, &expect(&b)),
            Err(HandshakeError::WrongNetwork { .. })
        ));
        let v2 = build_hello(&a, Role::Initiator, bind, "net", "2.0.0", NOW, None);
        assert!(matches!(
            verify_hello(&v2, Role::Initiator, bind, &expect(&b)),
            Err(HandshakeError::IncompatibleVersion { .. })
        ));
        let v11 = build_hello(&a, Role::Initiator, bind, "net", "1.1.0", NOW, None);
        assert_eq!(verify_hello(&v11, Role::Initiator, bind, &expect(&b)), Ok(()));
        let stale = build_hello(&a, Role::Initiator, bind, "net", "1.0.0", NOW - 60_001, None);
        assert!(matches!(
            verify_hello(&stale, Role::Initiator, bind, &expect(&b)),
            Err(HandshakeError::ClockSkew { skew_ms: 60_001, .. })
        ));
        let future = build_hello(&a, Role::Initiator, bind, "net", "1.0.0", NOW + 61_000, None);
        assert!(matches!(
            verify_hello(&future, Role::Initiator, bind, &expect(&b)),
            Err(HandshakeError::ClockSkew { .. })
        ));
        assert_eq!(verify_hello(&ok, Role::Initiator, bind, &expect(&a)), Err(HandshakeError::SelfConnection));
    }
}
