//! Sybils for the DHT (`--sybils PCT`): the last PCT percent of the nodes run the real node
//! code (they join, keep connections, pass every handshake) but lie in every DHT answer: a
//! `Nodes` answer, and the `closer` list of a `Providers` answer, name only Sybils, the ones
//! closest to the key asked about, and `Providers` answers name no provider (censorship). Each
//! Sybil sits in its own /24 (a botnet, not one rented subnet), so the IP-diversity caps do not
//! stop them by themselves. The figure is how much of the honest nodes' routing tables they
//! take (`dht.table_sybil_share`) and whether honest lookups still succeed.

use super::*;
use mynet_core::dht::proto::{Request as DhtRequest, Response as DhtResponse};
use mynet_core::discovery::PeerRecord;
use mynet_core::wire::{Request, Response};

/// Questions remembered per Sybil connection at once (each answered within seconds).
const ASKED_MAX: usize = 100_000;

#[derive(Default)]
pub(super) struct Sybils {
    /// Index of the first Sybil (`honest` when there are none).
    pub(super) first: usize,
    /// What each question a Sybil received asked about: (node, connection, request id).
    pub(super) asked: BTreeMap<(usize, ConnId, u32), [u8; 32]>,
    /// Answers rewritten.
    pub(super) lies: u64,
}

/// Where Sybil `k` listens: each in its own /24, outside the honest nodes' address plan.
pub(super) fn sybil_addr(k: usize) -> SocketAddr {
    SocketAddr::from(([10, 250 + (k % 4) as u8, (k / 4 % 256) as u8, 1 + (k / 1024 % 250) as u8], net::LISTEN_PORT))
}

impl World {
    pub(super) fn is_sybil(&self, n: usize) -> bool {
        n >= self.sybils.first && n < self.honest
    }

    /// Bytes reaching Sybil `to`: remember what each DHT question asks about.
    pub(super) fn sybil_heard(&mut self, to: End, bytes: &[u8]) {
        for message in whole_frames(bytes) {
            let Message::Request { id, body: Request::Dht(r) } = message else { continue };
            let key = match r {
                DhtRequest::FindNode { target } => target.0,
                DhtRequest::GetProviders { key } => key,
                DhtRequest::AddProviders { .. } => continue,
            };
            if self.sybils.asked.len() >= ASKED_MAX {
                self.sybils.asked.clear();
            }
            self.sybils.asked.insert((to.0, to.2, id.0), key);
        }
    }

    /// Bytes Sybil `n` sends on `conn`: DHT answers name only Sybils.
    pub(super) fn sybil_rewrite(&mut self, n: usize, conn: ConnId, bytes: Vec<u8>) -> Vec<u8> {
        let messages = whole_frames(&bytes);
        if messages.is_empty()
            || !messages.iter().any(|m| matches!(m, Message::Response { body: Response::Dht(_), .. }))
        {
            return bytes;
        }
        let mut out = Vec::with_capacity(bytes.len());
        for message in messages {
            let message = match message {
                Message::Response { id, body: Response::Dht(answer) } => {
                    let key = self.sybils.asked.remove(&(n, conn, id.0));
                    let lie =
                        |w: &World, key: Option<[u8; 32]>| key.map(|k| w.sybils_closest(n, &k)).unwrap_or_default();
                    let answer = match answer {
                        DhtResponse::Nodes(_) => DhtResponse::Nodes(lie(self, key)),
                        DhtResponse::Providers { .. } => {
                            DhtResponse::Providers { providers: Vec::new(), closer: lie(self, key) }
                        }
                        added => added,
                    };
                    self.sybils.lies += 1;
                    Message::Response { id, body: Response::Dht(answer) }
                }
                other => other,
            };
            match wire::encode_frame(&message) {
                Ok(frame) => out.extend(frame),
                Err(_) => return bytes,
            }
        }
        out
    }

    /// The `K` running Sybils (other than `n`) closest to `key`.
    fn sybils_closest(&self, n: usize, key: &[u8; 32]) -> Vec<PeerRecord> {
        let mut sybils: Vec<(NodeId, usize)> = (self.sybils.first..self.honest)
            .filter(|m| *m != n && self.node(*m).is_some())
            .map(|m| (self.nodes[m].identity.node_id(), m))
            .collect();
        sybils.sort_by_key(|(id, _)| mynet_core::dht::table::distance(&id.0, key));
        sybils
            .into_iter()
            .take(mynet_core::dht::table::K)
            .map(|(node_id, m)| PeerRecord {
                node_id,
                address: self.nodes[m].addr,
                public_key: self.nodes[m].identity.public_key(),
            })
            .collect()
    }

    /// Share of the honest nodes' routing-table entries that are Sybils.
    pub(super) fn table_sybil_share(&self) -> f64 {
        let sybil_ids: BTreeSet<NodeId> =
            (self.sybils.first..self.honest).map(|m| self.nodes[m].identity.node_id()).collect();
        let (mut all, mut sybil) = (0u64, 0u64);
        for n in (0..self.sybils.first).filter(|n| !self.dead(*n)) {
            let Some(node) = self.node(n) else { continue };
            for entry in node.dht().table().entries() {
                all += 1;
                sybil += u64::from(sybil_ids.contains(&entry.id));
            }
        }
        if all == 0 { 0.0 } else { (sybil as f64 / all as f64 * 10_000.0).round() / 10_000.0 }
    }
}

/// The messages in `bytes` if it is whole frames (the simulator delivers what one `Send` held).
fn whole_frames(bytes: &[u8]) -> Vec<Message> {
    let mut buffer = FrameBuffer::default();
    let mut frames = Vec::new();
    if buffer.push(bytes, &mut frames).is_err() || buffer.buffered_len() > 0 {
        return Vec::new();
    }
    frames.iter().filter_map(|f| wire::decode_body(f).ok()).collect()
}
