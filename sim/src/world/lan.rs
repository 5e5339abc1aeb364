//! LAN discovery in the simulator (`--lan SIZE`): the honest nodes form broadcast domains of
//! SIZE consecutive indices and start with no bootstrap list, so announcements are the only
//! way they find each other. An announcement reaches every running node of the sender's domain
//! that no partition separates from it, after the one-way latency between them; the swarm
//! profile's message loss drops datagrams (multicast is unreliable; Wi-Fi drops it). Liveness
//! is then judged per domain: each must be connected and each node must meet its target
//! degree within the domain.

use super::*;

/// LAN figures over the run.
#[derive(Default)]
pub(super) struct LanCounts {
    announcements: u64,
    delivered: u64,
    lost: u64,
}

/// The `lan` section of the summary.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LanSummary {
    /// Broadcast domains (0: `--lan` not given).
    pub domains: usize,
    /// Announcements sent, datagrams delivered and lost.
    pub announcements: u64,
    pub delivered: u64,
    pub lost: u64,
    /// Over the running honest nodes: announcements accepted and refused.
    pub accepted: u64,
    pub rejected: u64,
    /// Peers at the end first found by a LAN announcement (the rest connected to them).
    pub peers_found_by_lan: u64,
    /// Peers at the end in another domain (must be 0: domains never hear each other).
    pub peers_across_domains: u64,
}

impl World {
    /// The broadcast domain of honest node `n`, if the run has domains.
    pub(super) fn domain_of(&self, n: usize) -> Option<usize> {
        (self.config.lan > 0 && n < self.honest).then(|| n / self.config.lan)
    }

    /// Honest nodes `n` may have as peers: its domain, or everyone.
    pub(super) fn reachable_count(&self, n: usize) -> usize {
        match self.domain_of(n) {
            Some(d) => (self.honest - d * self.config.lan).min(self.config.lan),
            None => self.honest,
        }
    }

    /// The degree node `n` must reach.
    pub(super) fn target_of(&self, n: usize) -> usize {
        (self.config.node_config.target_peers as usize).min(self.reachable_count(n).saturating_sub(1))
    }

    /// Node `n` multicast an announcement.
    pub(super) fn lan_announce(&mut self, n: usize, bytes: Vec<u8>) {
        let Some(domain) = self.domain_of(n) else { return };
        self.lan.announcements += 1;
        let from = self.nodes[n].addr;
        let members = domain * self.config.lan..((domain + 1) * self.config.lan).min(self.honest);
        for m in members.filter(|m| *m != n) {
            if self.node(m).is_none() || self.blocked(n, m) {
                continue;
            }
            if self.faults_active() && chance(&mut self.rng, self.config.faults.loss) {
                self.lan.lost += 1;
                continue;
            }
            let delay = self.nodes[n].place.latency_us(&self.nodes[m].place);
            let epoch = self.nodes[m].epoch;
            self.schedule(self.now_us + delay, Ev::LanDeliver { to: m, epoch, from, bytes: bytes.clone() });
        }
    }

    pub(super) fn lan_deliver(
        &mut self,
        to: usize,
        epoch: u32,
        from: SocketAddr,
        bytes: Vec<u8>,
    ) -> Result<(), SimError> {
        if self.nodes[to].epoch != epoch {
            return Ok(());
        }
        self.lan.delivered += 1;
        self.node_input(to, Input::LanHeard { from, bytes })
    }

    /// Liveness per domain: each domain's overlay of well-behaved nodes is connected.
    pub(super) fn domains_connected(&self, servers: &[usize], graph: &[Vec<usize>]) -> bool {
        let domains: BTreeSet<Option<usize>> = servers.iter().map(|n| self.domain_of(*n)).collect();
        domains.into_iter().all(|d| {
            let members: Vec<usize> = servers.iter().copied().filter(|n| self.domain_of(*n) == d).collect();
            let keep: BTreeMap<usize, usize> = members.iter().enumerate().map(|(i, n)| (*n, i)).collect();
            let sub: Vec<Vec<usize>> =
                members.iter().map(|n| graph[*n].iter().filter_map(|p| keep.get(p).copied()).collect()).collect();
            is_connected(&sub)
        })
    }

    pub(super) fn lan_summary(&self) -> LanSummary {
        let mut summary = LanSummary {
            domains: if self.config.lan > 0 { self.honest.div_ceil(self.config.lan) } else { 0 },
            announcements: self.lan.announcements,
            delivered: self.lan.delivered,
            lost: self.lan.lost,
            ..LanSummary::default()
        };
        let graph = self.peer_graph();
        for (n, peers) in graph.iter().enumerate() {
            let Some(node) = self.node(n) else { continue };
            let status = node.status(node.now());
            summary.accepted += status.lan.accepted;
            summary.rejected += status.lan.rejected;
            summary.peers_found_by_lan +=
                status.peers.iter().filter(|p| p.found_by == Some(mynet_core::peers::Found::Lan)).count() as u64;
            summary.peers_across_domains +=
                peers.iter().filter(|m| self.domain_of(**m) != self.domain_of(n)).count() as u64;
        }
        summary
    }
}
