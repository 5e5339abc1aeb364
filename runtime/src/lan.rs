//! LAN discovery's sockets (SPEC R5.3): the node's signed announcements go out on an IPv4 and
//! an IPv6 multicast group on each real interface; what is heard comes back as
//! `Input::LanHeard`.
//!
//! Which interfaces: those named in `lan_interfaces`, else every interface that is up,
//! multicast-capable, not loopback, not point-to-point (VPN tunnels) and not named like a
//! virtual one (docker, bridges, veth, VM and VPN adapters), the mDNS lessons. When the node
//! listens on one specific address, only the interface holding it. Both groups are listened
//! to (a node listening on IPv4 can still dial an IPv6 address); announcements go out on the
//! families the listen address serves: IPv4 for `0.0.0.0` or an IPv4 address, both for `[::]`
//! (dual stack), IPv6 for an IPv6 address. A receiver dials the announced address, or the
//! datagram's source IP when the sender listens on every address; an IPv6 link-local source
//! is not dialled (its scope would not survive the event log), so IPv6-only LANs need a
//! listen address that is routable (ULA or global). Interfaces are looked at again every
//! [`RESCAN`], so one that comes up later (or gets its address late) is joined and given
//! the last announcement at once.
//!
//! What reaches the node is bounded before it is journaled: our own announcements looped
//! back, datagrams that do not decode, belong to another network or fail their signature are
//! dropped here; the rest pass a token bucket per source host ([`SOURCE_PER_SECOND`], burst
//! [`SOURCE_BURST`]) and one for all ([`HEARD_PER_SECOND`], burst [`HEARD_BURST`]), so one
//! host cannot use up everyone's share. The IPv4 socket is bound to the group address, so
//! unicast to the port is not received. Sends and receives that fail are counted with the
//! last error, for status `lan`.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mynet_core::lan::{ANNOUNCE_MAX_BYTES, Announcement};
use mynet_core::{Input, NodeId};
use nix::net::if_::InterfaceFlags;
use serde::Serialize;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// The IPv4 group: organisation-local scope (239.255/16), never routed off the site.
pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(239, 255, 77, 121);
/// The IPv6 group: link-local scope (ff02::/16).
pub const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0x6d79, 0x6e65);
/// The UDP port of both groups.
pub const LAN_PORT: u16 = 7399;
/// How often interfaces are enumerated again.
pub const RESCAN: Duration = Duration::from_secs(10);
/// An interface joined after start-up gets the last announcement at once if it is this
/// recent (the receivers' clock-skew check), else the next scheduled one.
const RESEND_FRESH: Duration = Duration::from_secs(30);
/// Announcements handed to the node per second, and the burst allowed.
pub const HEARD_PER_SECOND: f64 = 20.0;
pub const HEARD_BURST: f64 = 100.0;
/// Announcements one source may hand the node per second, and its burst; sources tracked.
pub const SOURCE_PER_SECOND: f64 = 2.0;
pub const SOURCE_BURST: f64 = 10.0;
const SOURCES_MAX: usize = 256;
/// Announcements waiting to be sent.
const OUTGOING_MAX: usize = 8;
/// Interfaces used at once.
const INTERFACES_MAX: usize = 32;

/// Name prefixes of virtual interfaces, skipped unless named in `lan_interfaces`.
const VIRTUAL_PREFIXES: &[&str] = &[
    "docker",
    "br-",
    "veth",
    "virbr",
    "vnet",
    "vmnet",
    "vboxnet",
    "tun",
    "tap",
    "wg",
    "zt",
    "tailscale",
    "utun",
    "lxc",
    "lxd",
    "cni",
    "flannel",
    "cali",
    "kube",
    "podman",
    "cilium",
    "weave",
    "ifb",
    "dummy",
    "gre",
    "sit",
    "ip6tnl",
    "nlmon",
    "bond",
];

/// One interface in use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LanInterface {
    pub name: String,
    pub index: u32,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: bool,
}

/// What status shows of the sockets (beside the node's own counts).
#[derive(Clone, Debug, Default, Serialize)]
pub struct LanState {
    /// Interfaces announced on.
    pub interfaces: Vec<LanInterface>,
    /// Interfaces passed over, with why.
    pub skipped: Vec<String>,
    /// Datagrams sent (one per interface and family per announcement).
    pub datagrams_sent: u64,
    /// Datagrams dropped before the node: not a valid announcement of our network, or over
    /// a rate (their source's or everyone's). Our own, looped back, are dropped uncounted.
    pub dropped: u64,
    /// Our announcements dropped because the sockets were behind.
    pub send_dropped: u64,
    /// Socket errors (bind, join, send, receive).
    pub errors: u64,
    pub last_error: Option<String>,
}

impl LanState {
    fn error(&mut self, what: String) {
        tracing::warn!("LAN discovery: {what}");
        self.errors += 1;
        self.last_error = Some(what);
    }
}

/// The driver's handle on the LAN task.
#[derive(Debug)]
pub struct Lan {
    state: Arc<Mutex<LanState>>,
    outgoing: mpsc::Sender<Vec<u8>>,
}

impl Lan {
    /// Hands an announcement to the sockets (dropped when they are behind).
    pub fn announce(&self, bytes: Vec<u8>) {
        if self.outgoing.try_send(bytes).is_err() {
            self.with_state(|s| s.send_dropped += 1);
        }
    }

    /// What status shows.
    pub fn state(&self) -> LanState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn with_state(&self, f: impl FnOnce(&mut LanState)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
    }
}

/// Starts LAN discovery for a node listening on `listen`, or returns `None` when it is off or
/// the node listens where a LAN cannot reach it (loopback, port 0).
pub fn spawn(
    listen: SocketAddr,
    names: Vec<String>,
    (our_id, network_id): (NodeId, String),
    inputs: mpsc::UnboundedSender<Input>,
) -> Option<Lan> {
    if listen.ip().is_loopback() || listen.port() == 0 {
        return None;
    }
    let state = Arc::new(Mutex::new(LanState::default()));
    let (outgoing, rx) = mpsc::channel(OUTGOING_MAX);
    let task = Task {
        listen,
        names,
        our_id,
        inputs,
        state: state.clone(),
        v4: None,
        v6: None,
        joined: BTreeMap::new(),
        seen: BTreeMap::new(),
        sources: BTreeMap::new(),
        network_id,
        bucket: HEARD_BURST,
        refilled: Instant::now(),
        last: None,
    };
    tokio::spawn(task.run(rx));
    Some(Lan { state, outgoing })
}

struct Task {
    listen: SocketAddr,
    names: Vec<String>,
    our_id: NodeId,
    inputs: mpsc::UnboundedSender<Input>,
    state: Arc<Mutex<LanState>>,
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    /// Interfaces joined, by name (with the families that joined), and as they were seen
    /// when joined (a change means leave and join again).
    joined: BTreeMap<String, LanInterface>,
    seen: BTreeMap<String, LanInterface>,
    /// Per-source token buckets (the busiest host cannot use up everyone's share).
    sources: BTreeMap<IpAddr, (f64, Instant)>,
    network_id: String,
    bucket: f64,
    refilled: Instant,
    /// The last announcement and when it was handed to us.
    last: Option<(Vec<u8>, Instant)>,
}

impl Task {
    async fn run(mut self, mut outgoing: mpsc::Receiver<Vec<u8>>) {
        self.v4 = self.open(open_v4);
        self.v6 = self.open(open_v6);
        self.rescan();
        let mut rescan = tokio::time::interval(RESCAN);
        rescan.tick().await;
        let (mut buf4, mut buf6) = ([0u8; ANNOUNCE_MAX_BYTES + 1], [0u8; ANNOUNCE_MAX_BYTES + 1]);
        loop {
            tokio::select! {
                bytes = outgoing.recv() => match bytes {
                    Some(bytes) => {
                        self.send(&bytes, None).await;
                        self.last = Some((bytes, Instant::now()));
                    }
                    None => return,
                },
                got = recv(self.v4.as_ref(), &mut buf4) => self.heard(got, &buf4),
                got = recv(self.v6.as_ref(), &mut buf6) => self.heard(got, &buf6),
                _ = rescan.tick() => {
                    let joined = self.rescan();
                    let last = self.last.clone().filter(|(_, at)| at.elapsed() < RESEND_FRESH);
                    if let (false, Some((bytes, _))) = (joined.is_empty(), last) {
                        self.send(&bytes, Some(&joined)).await;
                    }
                }
            }
        }
    }

    fn open(&mut self, f: fn() -> std::io::Result<UdpSocket>) -> Option<UdpSocket> {
        f().map_err(|e| self.error(format!("cannot open the multicast socket on port {LAN_PORT}: {e}"))).ok()
    }

    fn error(&self, what: String) {
        if let Ok(mut s) = self.state.lock() {
            s.error(what);
        }
    }

    /// Joins the groups on interfaces that appeared or changed (an address arriving after
    /// start-up, a new index after the interface was re-created); leaves them on interfaces
    /// that went (down, removed) or changed, so a later join is not refused as a duplicate.
    /// Returns the interfaces newly joined.
    fn rescan(&mut self) -> Vec<String> {
        let (chosen, skipped) = match interfaces(&self.names, self.listen.ip()) {
            Ok(found) => found,
            Err(e) => {
                self.error(format!("cannot list interfaces: {e}"));
                return Vec::new();
            }
        };
        let mut joined = Vec::new();
        let stale: Vec<LanInterface> = self
            .joined
            .iter()
            .filter(|(name, _)| !chosen.iter().any(|c| Some(c) == self.seen.get(*name)))
            .map(|(_, used)| used.clone())
            .collect();
        for used in stale {
            self.leave(&used);
            self.joined.remove(&used.name);
            self.seen.remove(&used.name);
        }
        for iface in chosen {
            if self.joined.contains_key(&iface.name) {
                continue;
            }
            self.seen.insert(iface.name.clone(), iface.clone());
            let mut used = iface.clone();
            if let (Some(v4), Some(addr)) = (&self.v4, iface.ipv4)
                && let Err(e) = v4.join_multicast_v4(GROUP_V4, addr).or_else(already_joined)
            {
                self.error(format!("joining {GROUP_V4} on {}: {e}", iface.name));
                used.ipv4 = None;
            }
            if let Some(v6) = &self.v6
                && iface.ipv6
                && let Err(e) = v6.join_multicast_v6(&GROUP_V6, iface.index).or_else(already_joined)
            {
                self.error(format!("joining {GROUP_V6} on {}: {e}", iface.name));
                used.ipv6 = false;
            }
            if self.v4.is_none() {
                used.ipv4 = None;
            }
            if self.v6.is_none() {
                used.ipv6 = false;
            }
            if used.ipv4.is_some() || used.ipv6 {
                tracing::info!("LAN discovery on {} ({:?}, IPv6 {})", used.name, used.ipv4, used.ipv6);
                joined.push(used.name.clone());
                self.joined.insert(used.name.clone(), used);
            }
        }
        if let Ok(mut s) = self.state.lock() {
            s.interfaces = self.joined.values().cloned().collect();
            s.skipped = skipped;
        }
        joined
    }

    /// Leaves the groups on an interface no longer used (errors are expected when it is gone).
    fn leave(&self, used: &LanInterface) {
        if let (Some(v4), Some(addr)) = (&self.v4, used.ipv4) {
            let _ = v4.leave_multicast_v4(GROUP_V4, addr);
        }
        if let (Some(v6), true) = (&self.v6, used.ipv6) {
            let _ = v6.leave_multicast_v6(&GROUP_V6, used.index);
        }
        tracing::info!("LAN discovery no longer on {}", used.name);
    }

    /// Sends on every joined interface, or on those named in `only`.
    async fn send(&mut self, bytes: &[u8], only: Option<&[String]>) {
        // A node listening on `[::]` announces on IPv4 only: an IPv6 copy to ff02:: leaves
        // from a link-local address, which receivers cannot dial.
        let (send_v4, send_v6) = match self.listen.ip() {
            IpAddr::V4(_) => (true, false),
            IpAddr::V6(v6) => (v6.is_unspecified(), !v6.is_unspecified()),
        };
        let mut sent = 0;
        for iface in self.joined.values().filter(|i| only.is_none_or(|names| names.contains(&i.name))) {
            if let (Some(v4), Some(addr), true) = (&self.v4, iface.ipv4, send_v4) {
                let result = socket2::SockRef::from(v4).set_multicast_if_v4(&addr);
                match result.map(|_| v4.send_to(bytes, SocketAddrV4::new(GROUP_V4, LAN_PORT))) {
                    Ok(send) => match send.await {
                        Ok(_) => sent += 1,
                        Err(e) => self.error(format!("sending on {} (IPv4): {e}", iface.name)),
                    },
                    Err(e) => self.error(format!("choosing {} for IPv4 multicast: {e}", iface.name)),
                }
            }
            if let (Some(v6), true, true) = (&self.v6, iface.ipv6, send_v6) {
                let result = socket2::SockRef::from(v6).set_multicast_if_v6(iface.index);
                let to = SocketAddrV6::new(GROUP_V6, LAN_PORT, 0, iface.index);
                match result.map(|_| v6.send_to(bytes, to)) {
                    Ok(send) => match send.await {
                        Ok(_) => sent += 1,
                        Err(e) => self.error(format!("sending on {} (IPv6): {e}", iface.name)),
                    },
                    Err(e) => self.error(format!("choosing {} for IPv6 multicast: {e}", iface.name)),
                }
            }
        }
        if let Ok(mut s) = self.state.lock() {
            s.datagrams_sent += sent;
        }
    }

    fn heard(&mut self, got: std::io::Result<(usize, SocketAddr)>, buf: &[u8]) {
        let (len, from) = match got {
            Ok(got) => got,
            Err(e) => return self.error(format!("receiving: {e}")),
        };
        let bytes = &buf[..len];
        // Ours (looped back), strays, other networks and forgeries never reach the log; the
        // node checks again what does (replay needs it to).
        let decoded = if len > ANNOUNCE_MAX_BYTES { None } else { Announcement::decode(bytes).ok() };
        if decoded.as_ref().is_some_and(|a| a.node_id == self.our_id) {
            return;
        }
        let valid = decoded.is_some_and(|a| a.network_id == self.network_id && a.verify().is_ok());
        // Each source its own bucket, then one for all.
        let now = Instant::now();
        if self.sources.len() >= SOURCES_MAX && !self.sources.contains_key(&from.ip()) {
            let oldest = self.sources.iter().min_by_key(|(_, (_, at))| *at).map(|(ip, _)| *ip);
            self.sources.retain(|ip, _| Some(*ip) != oldest);
        }
        let source = self.sources.entry(from.ip()).or_insert((SOURCE_BURST, now));
        source.0 = (source.0 + now.duration_since(source.1).as_secs_f64() * SOURCE_PER_SECOND).min(SOURCE_BURST);
        source.1 = now;
        self.bucket =
            (self.bucket + now.duration_since(self.refilled).as_secs_f64() * HEARD_PER_SECOND).min(HEARD_BURST);
        self.refilled = now;
        if !valid || source.0 < 1.0 || self.bucket < 1.0 {
            if let Ok(mut s) = self.state.lock() {
                s.dropped += 1;
            }
            return;
        }
        source.0 -= 1.0;
        self.bucket -= 1.0;
        let _ = self.inputs.send(Input::LanHeard { from, bytes: bytes.to_vec() });
    }
}

async fn recv(socket: Option<&UdpSocket>, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// A UDP socket others on this host may bind too (several nodes on one machine).
fn shared_socket(domain: Domain, bind: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if domain == Domain::IPV6 {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(bind))?;
    Ok(socket)
}

/// A join refused because the membership exists (the socket kept it across a link flap).
fn already_joined(err: std::io::Error) -> std::io::Result<()> {
    if err.kind() == std::io::ErrorKind::AddrInUse { Ok(()) } else { Err(err) }
}

/// Bound to the group address, not the wildcard: unicast to the port (from anywhere, spoofed
/// or not) is not received.
fn open_v4() -> std::io::Result<UdpSocket> {
    let socket = shared_socket(Domain::IPV4, SocketAddr::from((GROUP_V4, LAN_PORT)))?;
    socket.set_multicast_loop_v4(true)?;
    socket.set_multicast_ttl_v4(1)?;
    UdpSocket::from_std(socket.into())
}

fn open_v6() -> std::io::Result<UdpSocket> {
    let socket = shared_socket(Domain::IPV6, SocketAddr::from((Ipv6Addr::UNSPECIFIED, LAN_PORT)))?;
    socket.set_multicast_loop_v6(true)?;
    socket.set_multicast_hops_v6(1)?;
    UdpSocket::from_std(socket.into())
}

/// Why an interface is passed over, or `None` to use it.
pub fn skip_reason(name: &str, flags: InterfaceFlags, configured: &[String]) -> Option<&'static str> {
    if !configured.is_empty() {
        return (!configured.iter().any(|c| c == name)).then_some("not in lan_interfaces");
    }
    if flags.contains(InterfaceFlags::IFF_LOOPBACK) {
        return Some("loopback");
    }
    if flags.contains(InterfaceFlags::IFF_POINTOPOINT) {
        return Some("point-to-point (a tunnel)");
    }
    if VIRTUAL_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Some("virtual");
    }
    None
}

/// The interfaces to use, and those passed over with why.
fn interfaces(configured: &[String], listen: IpAddr) -> nix::Result<(Vec<LanInterface>, Vec<String>)> {
    let mut by_name: BTreeMap<String, (InterfaceFlags, Option<Ipv4Addr>, bool, Vec<IpAddr>)> = BTreeMap::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        let entry = by_name.entry(ifa.interface_name.clone()).or_insert((ifa.flags, None, false, Vec::new()));
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            entry.1.get_or_insert(v4.ip());
            entry.3.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            entry.2 = true;
            entry.3.push(IpAddr::V6(v6.ip()));
        }
    }
    let (mut chosen, mut skipped) = (Vec::new(), Vec::new());
    for (name, (flags, ipv4, ipv6, addrs)) in by_name {
        let up = flags.contains(InterfaceFlags::IFF_UP) && flags.contains(InterfaceFlags::IFF_RUNNING);
        let reason = skip_reason(&name, flags, configured)
            .or((!up).then_some("down"))
            .or((!flags.contains(InterfaceFlags::IFF_MULTICAST)).then_some("no multicast"))
            .or((!listen.is_unspecified() && !addrs.contains(&listen)).then_some("does not hold the listen address"))
            .or((ipv4.is_none() && !ipv6).then_some("no address"))
            .or((chosen.len() >= INTERFACES_MAX).then_some("too many interfaces"));
        if let Some(reason) = reason {
            skipped.push(format!("{name}: {reason}"));
            continue;
        }
        let Ok(index) = nix::net::if_::if_nametoindex(name.as_str()) else {
            skipped.push(format!("{name}: no index"));
            continue;
        };
        chosen.push(LanInterface { name, index, ipv4, ipv6 });
    }
    Ok((chosen, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_loopback_and_tunnel_interfaces_are_skipped_unless_named() {
        let up = InterfaceFlags::IFF_UP | InterfaceFlags::IFF_RUNNING | InterfaceFlags::IFF_MULTICAST;
        assert_eq!(skip_reason("eth0", up, &[]), None);
        assert_eq!(skip_reason("enp3s0", up, &[]), None);
        assert_eq!(skip_reason("wlan0", up, &[]), None);
        assert_eq!(skip_reason("lo", up | InterfaceFlags::IFF_LOOPBACK, &[]), Some("loopback"));
        assert_eq!(skip_reason("wg0", up | InterfaceFlags::IFF_POINTOPOINT, &[]), Some("point-to-point (a tunnel)"));
        for name in ["docker0", "br-1a2b", "veth12", "virbr0", "tailscale0", "vboxnet0", "tun0"] {
            assert_eq!(skip_reason(name, up, &[]), Some("virtual"), "{name}");
        }
        let named = vec!["veth-a".to_string()];
        assert_eq!(skip_reason("veth-a", up, &named), None, "configured wins");
        assert_eq!(skip_reason("eth0", up, &named), Some("not in lan_interfaces"));
    }
}
