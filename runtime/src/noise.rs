//! The encrypted transport: Noise XX (X25519, ChaCha20-Poly1305, BLAKE2s) over TCP.
//!
//! Noise messages are framed by a 2-byte big-endian length and are at most 65,535 bytes, so
//! application frames are split into chunks of at most [`PLAINTEXT_MAX`]. The Noise handshake
//! hash is the channel binding that the signed application handshake covers.

use std::time::Duration;

use snow::{HandshakeState, StatelessTransportState};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_AESGCM_BLAKE2s";
/// Largest Noise message.
pub const NOISE_MSG_MAX: usize = 65_535;
/// Largest plaintext per transport message (the tag takes 16 bytes).
pub const PLAINTEXT_MAX: usize = NOISE_MSG_MAX - 16;
const PROLOGUE: &[u8] = b"mynet/noise/1";

/// A failure of the encrypted transport.
#[derive(Debug, Error)]
pub enum NoiseError {
    #[error("noise handshake failed: {0}")]
    Handshake(String),
    #[error("decryption failed: {0}")]
    Decrypt(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed by peer")]
    Eof,
    #[error("bad framing: {0}")]
    Protocol(String),
}

fn builder() -> snow::Builder<'static> {
    // ring's ChaCha20-Poly1305 (BoringSSL's vectorised assembly) for the transport; the pure
    // Rust resolver for what ring does not provide (X25519, BLAKE2s).
    use snow::resolvers::{DefaultResolver, FallbackResolver, RingResolver};
    let resolver = FallbackResolver::new(Box::new(RingResolver), Box::new(DefaultResolver));
    snow::Builder::with_resolver(NOISE_PARAMS.parse().expect("valid noise parameters"), Box::new(resolver))
}

/// A fresh static X25519 key for this process. Identity is ed25519; this key only secures.
pub fn generate_static_key() -> Vec<u8> {
    builder().generate_keypair().map(|kp| kp.private).expect("X25519 key generation")
}

/// Runs the XX handshake on `stream` and returns the transport state and the handshake hash.
pub async fn handshake<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    stream: &mut S,
    initiator: bool,
    static_key: &[u8],
) -> Result<(StatelessTransportState, [u8; 32]), NoiseError> {
    let hs_err = |e: snow::Error| NoiseError::Handshake(e.to_string());
    let b = builder().local_private_key(static_key).map_err(hs_err)?.prologue(PROLOGUE).map_err(hs_err)?;
    let mut hs = if initiator { b.build_initiator() } else { b.build_responder() }.map_err(hs_err)?;
    let mut buf = vec![0u8; NOISE_MSG_MAX];
    let mut payload = vec![0u8; NOISE_MSG_MAX];
    while !hs.is_handshake_finished() {
        if hs.is_my_turn() {
            let n = hs.write_message(&[], &mut buf).map_err(hs_err)?;
            write_msg(stream, &buf[..n]).await?;
        } else {
            let msg = read_msg(stream).await?;
            hs.read_message(&msg, &mut payload).map_err(hs_err)?;
        }
    }
    finish(hs)
}

fn finish(hs: HandshakeState) -> Result<(StatelessTransportState, [u8; 32]), NoiseError> {
    let mut binding = [0u8; 32];
    let hash = hs.get_handshake_hash();
    if hash.len() != 32 {
        return Err(NoiseError::Handshake(format!("handshake hash of {} bytes", hash.len())));
    }
    binding.copy_from_slice(hash);
    let transport = hs.into_stateless_transport_mode().map_err(|e| NoiseError::Handshake(e.to_string()))?;
    Ok((transport, binding))
}

/// Reads one length-prefixed Noise message.
pub async fn read_msg<S: AsyncReadExt + Unpin>(stream: &mut S) -> Result<Vec<u8>, NoiseError> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Err(NoiseError::Eof),
        Err(err) => return Err(err.into()),
    }
    let len = usize::from(u16::from_be_bytes(len));
    let mut msg = vec![0u8; len];
    stream.read_exact(&mut msg).await?;
    Ok(msg)
}

/// Writes one length-prefixed Noise message.
pub async fn write_msg<S: AsyncWriteExt + Unpin>(stream: &mut S, msg: &[u8]) -> Result<(), NoiseError> {
    let len = u16::try_from(msg.len()).map_err(|_| NoiseError::Handshake("noise message too long".into()))?;
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await?;
    Ok(())
}

/// Encrypts `plaintext` (any length) as consecutive transport messages, starting at `nonce`.
pub fn seal_chunks(
    transport: &StatelessTransportState,
    nonce: &mut u64,
    plaintext: &[u8],
) -> Result<Vec<u8>, NoiseError> {
    // Each chunk is encrypted straight into the output (no intermediate buffer).
    let mut out = Vec::with_capacity(plaintext.len() + 18 * (plaintext.len() / PLAINTEXT_MAX + 1));
    for chunk in plaintext.chunks(PLAINTEXT_MAX) {
        let at = out.len();
        out.resize(at + 2 + chunk.len() + 16, 0);
        let n = transport
            .write_message(*nonce, chunk, &mut out[at + 2..])
            .map_err(|e| NoiseError::Decrypt(e.to_string()))?;
        *nonce += 1;
        out[at..at + 2].copy_from_slice(&(n as u16).to_be_bytes());
        out.truncate(at + 2 + n);
    }
    Ok(out)
}

/// Reads one length-prefixed Noise message into `msg` (reused between calls).
pub async fn read_msg_into<S: AsyncReadExt + Unpin>(stream: &mut S, msg: &mut Vec<u8>) -> Result<(), NoiseError> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Err(NoiseError::Eof),
        Err(err) => return Err(err.into()),
    }
    msg.resize(usize::from(u16::from_be_bytes(len)), 0);
    stream.read_exact(msg).await?;
    Ok(())
}

/// Decrypts one transport message received with `nonce` into `out` (reused between calls).
pub fn open_into(
    transport: &StatelessTransportState,
    nonce: u64,
    msg: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), NoiseError> {
    out.resize(msg.len(), 0);
    let n = transport.read_message(nonce, msg, out).map_err(|e| NoiseError::Decrypt(e.to_string()))?;
    out.truncate(n);
    Ok(())
}

/// Decrypts one transport message received with `nonce`.
pub fn open(transport: &StatelessTransportState, nonce: u64, msg: &[u8]) -> Result<Vec<u8>, NoiseError> {
    let mut out = vec![0u8; msg.len()];
    let n = transport.read_message(nonce, msg, &mut out).map_err(|e| NoiseError::Decrypt(e.to_string()))?;
    out.truncate(n);
    Ok(out)
}

/// Start-up self-check (SPEC R3.4): a Noise handshake in memory, then seal, open, and refuse a
/// tampered message.
pub async fn self_check() -> Result<(), NoiseError> {
    let (mut a, mut b) = tokio::io::duplex(1 << 17);
    let (ka, kb) = (generate_static_key(), generate_static_key());
    let initiator = handshake(&mut a, true, &ka);
    let responder = handshake(&mut b, false, &kb);
    let both = tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(initiator, responder) });
    let (ra, rb) = both.await.map_err(|_| NoiseError::Handshake("self-check timed out".into()))?;
    let ((ta, ha), (tb, hb)) = (ra?, rb?);
    if ha != hb {
        return Err(NoiseError::Handshake("handshake hashes differ".into()));
    }
    let mut nonce = 0;
    let sealed = seal_chunks(&ta, &mut nonce, b"mynet self-check: seal and open")?;
    let msg = &sealed[2..];
    if open(&tb, 0, msg)? != b"mynet self-check: seal and open" {
        return Err(NoiseError::Decrypt("round trip changed the message".into()));
    }
    let mut tampered = msg.to_vec();
    tampered[0] ^= 1;
    if open(&tb, 0, &tampered).is_ok() {
        return Err(NoiseError::Decrypt("a tampered message was accepted".into()));
    }
    Ok(())
}
