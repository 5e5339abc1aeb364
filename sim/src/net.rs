//! The network model: where nodes sit and how long a message takes between them.
//!
//! Each node gets a point in the unit square; one-way latency is a base plus a term
//! proportional to distance, plus per-message jitter. Delivery on one connection is FIFO,
//! as on TCP.

use core::net::SocketAddr;

use rand_chacha::ChaCha8Rng;
use rand_core::Rng;

/// Port every simulated node listens on.
pub const LISTEN_PORT: u16 = 7401;
/// Smallest one-way latency.
pub const LATENCY_US_MIN: u64 = 2_000;
/// One-way latency across the whole square.
pub const LATENCY_US_SPAN: u64 = 80_000;
/// Largest per-message jitter.
pub const JITTER_US_MAX: u64 = 2_000;

/// A node's place in the network.
#[derive(Clone, Copy, Debug)]
pub struct Place {
    x: f64,
    y: f64,
}

impl Place {
    /// A random place.
    pub fn random(rng: &mut ChaCha8Rng) -> Place {
        Place { x: unit(rng), y: unit(rng) }
    }

    /// One-way latency to `other`, without jitter.
    pub fn latency_us(&self, other: &Place) -> u64 {
        // Only +, -, * and sqrt: IEEE 754 makes these bit-exact on every platform.
        let (dx, dy) = (self.x - other.x, self.y - other.y);
        let d = (dx * dx + dy * dy).sqrt() / std::f64::consts::SQRT_2;
        LATENCY_US_MIN + (d * LATENCY_US_SPAN as f64) as u64
    }
}

/// Uniform in [0, 1) from 53 random bits.
pub fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Jitter for one message.
pub fn jitter_us(rng: &mut ChaCha8Rng) -> u64 {
    rng.next_u64() % (JITTER_US_MAX + 1)
}

/// The listen address of node `index`: 10.a.b.c, distinct for up to 2^24 - 2 nodes.
pub fn node_addr(index: usize) -> SocketAddr {
    // Consecutive nodes in different /24 networks (the DHT caps entries per /24), and never
    // 10.255.0.0/16, where the misbehaving peers live.
    let n = index as u32 + 1;
    SocketAddr::from(([10, (n % 250) as u8, (n / 250 % 256) as u8, (1 + n / 64_000) as u8], LISTEN_PORT))
}
