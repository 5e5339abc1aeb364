//! The node's ed25519 identity: signing, verifying, and the start-up self-check.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use thiserror::Error;

use crate::id::{NodeId, PublicKey};

/// Why a signature or key was rejected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IdentityError {
    #[error("public key is not a valid ed25519 point")]
    BadPublicKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("self-check failed: {0}")]
    SelfCheck(&'static str),
}

/// A node's key pair. The secret never leaves this type except through [`Identity::secret_bytes`],
/// which the key file code uses to persist it.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
    public: PublicKey,
    node_id: NodeId,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.node_id.short())
    }
}

impl Identity {
    /// The identity whose secret seed is `secret` (32 bytes from a CSPRNG or a key file).
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Identity {
        let key = SigningKey::from_bytes(secret);
        let public = PublicKey(key.verifying_key().to_bytes());
        Identity { key, public, node_id: NodeId::from_public_key(&public) }
    }

    /// The 32-byte secret seed, for the key file.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The public key peers see.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// BLAKE3 of the public key.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// Signs and verifies a probe message, and checks a corrupted signature is refused
    /// (SPEC R3.4). The driver runs it at start-up and stops loudly if it fails.
    pub fn self_check(&self) -> Result<(), IdentityError> {
        let probe = b"mynet self-check: sign and verify";
        let mut signature = self.sign(probe);
        verify(&self.public, probe, &signature).map_err(|_| IdentityError::SelfCheck("own signature rejected"))?;
        signature[0] ^= 1;
        if verify(&self.public, probe, &signature).is_ok() {
            return Err(IdentityError::SelfCheck("corrupted signature accepted"));
        }
        Ok(())
    }
}

/// Verifies `signature` over `message` under `key`, rejecting malleable and small-order forms.
pub fn verify(key: &PublicKey, message: &[u8], signature: &[u8; 64]) -> Result<(), IdentityError> {
    let key = VerifyingKey::from_bytes(&key.0).map_err(|_| IdentityError::BadPublicKey)?;
    let signature = Signature::from_bytes(signature);
    key.verify_strict(message, &signature).map_err(|_| IdentityError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_blake3_of_public_key_and_self_check_passes() {
        let identity = Identity::from_secret_bytes(&[7u8; 32]);
        assert_eq!(identity.node_id().0, *blake3::hash(&identity.public_key().0).as_bytes());
        assert_eq!(identity.node_id().to_string().len(), 64);
        identity.self_check().expect("self-check");
        let sig = identity.sign(b"x");
        assert_eq!(verify(&identity.public_key(), b"y", &sig), Err(IdentityError::BadSignature));
        let other = Identity::from_secret_bytes(&[8u8; 32]);
        assert_eq!(verify(&other.public_key(), b"x", &sig), Err(IdentityError::BadSignature));
    }
}
