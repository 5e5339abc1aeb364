//! Refusals that explain themselves (issue 12, point 8): a node that refuses a connection
//! tells the dialler why, signed, with a retry hint, within a budget; the dialler logs it,
//! leaves the node alone until the hint has passed and names it when start-up fails. Two real
//! nodes meet through their one door, with hand-made peers for what no honest node sends.

mod common;

use core::net::SocketAddr;

use common::*;
use mynet_core::config::BootstrapNode;
use mynet_core::event::BootstrapRefusal;
use mynet_core::handshake::{Binding, HandshakeError};
use mynet_core::refusal::{
    GLOBAL, LIMIT_RETRY_JITTER_MS, LIMIT_RETRY_MS, PER_IP, REFUSING_DEADLINE_MS, REFUSING_MAX, Refusal, RefusalReason,
};
use mynet_core::wire::{self, FRAME_LEN_MAX, Kind, Message};
use mynet_core::{
    CloseReason, Config, ConnId, Event, Identity, Input, Node, Output, Phase, StartupFailure, Time, Violation,
    WireError,
};

/// Where the refusing node listens.
fn refuser_addr() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 2], 7401))
}

/// Where the joining node's dials come from.
fn joiner_source() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 5], 40_001))
}

fn refuser_identity() -> Identity {
    Identity::from_secret_bytes(&[2; 32])
}

/// The network's first node (key `[2; 32]`) with `tweak`ed config.
fn refuser(tweak: impl FnOnce(&mut Config)) -> Node {
    let mut config = Config { listen_addr: refuser_addr(), ..Config::default() };
    tweak(&mut config);
    let mut node = Node::new(config, refuser_identity(), 9, at(0));
    drain(&mut node);
    node
}

/// A node (key `[1; 32]`) whose only bootstrap node is the refuser; returns it and its dial.
fn joiner(tweak: impl FnOnce(&mut Config)) -> (Node, ConnId) {
    let refuser = refuser_identity();
    let entry = BootstrapNode { node_id: refuser.node_id(), address: refuser_addr(), public_key: refuser.public_key() };
    let mut config = Config { bootstrap_nodes: vec![entry], ..Config::default() };
    tweak(&mut config);
    let mut node = Node::new(config, Identity::from_secret_bytes(&[1; 32]), 7, at(0));
    let conn = dials(&drain(&mut node)).first().copied().expect("dials its bootstrap node");
    (node, conn)
}

fn dials(outputs: &[Output]) -> Vec<ConnId> {
    outputs.iter().filter_map(|o| if let Output::Dial { conn, .. } = o { Some(*conn) } else { None }).collect()
}

/// The bytes `outputs` send on `conn`.
fn sent(outputs: &[Output], conn: ConnId) -> Vec<u8> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { conn: c, bytes } if *c == conn => Some(bytes.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The messages `outputs` send on `conn`.
fn messages(outputs: &[Output], conn: ConnId) -> Vec<Message> {
    let mut buffer = wire::FrameBuffer::default();
    let mut frames = Vec::new();
    buffer.push(&sent(outputs, conn), &mut frames).expect("whole frames");
    frames.iter().map(|f| wire::decode_body(f).expect("decodes")).collect()
}

fn refusal_in(outputs: &[Output], conn: ConnId) -> Option<Refusal> {
    messages(outputs, conn).into_iter().find_map(|m| if let Message::Refused(r) = m { Some(r) } else { None })
}

/// The joiner's dial `jconn` reaches the refuser as `rconn` at `now` (the refuser's clock may
/// differ in wall time: `refuser_wall_ms`), both secure their channel, the joiner's Hello is
/// delivered, and what the refuser sends comes back before its close. Returns the refuser's
/// and the joiner's outputs.
fn meet(
    refuser: &mut Node,
    rconn: ConnId,
    joiner: &mut Node,
    jconn: ConnId,
    now_ms: u64,
    refuser_wall_ms: u64,
) -> (Vec<Output>, Vec<Output>) {
    let (now, rnow) = (at(now_ms), Time::new(now_ms * 1000, refuser_wall_ms));
    let binding = Binding([now_ms as u8 ^ 0x5a; 32]);
    refuser.handle(rnow, Input::Incoming { conn: rconn, addr: joiner_source() });
    let mut r_out = drain(refuser);
    let mut j_out = Vec::new();
    if r_out.contains(&Output::Accept { conn: rconn }) {
        refuser.handle(rnow, Input::Secured { conn: rconn, binding });
        r_out.extend(drain(refuser));
        joiner.handle(now, Input::Secured { conn: jconn, binding });
        j_out.extend(drain(joiner));
        if !r_out.contains(&Output::Close { conn: rconn }) {
            refuser.handle(rnow, Input::Received { conn: rconn, bytes: sent(&j_out, jconn) });
            r_out.extend(drain(refuser));
        }
        joiner.handle(now, Input::Received { conn: jconn, bytes: sent(&r_out, rconn) });
        j_out.extend(drain(joiner));
    }
    if r_out.contains(&Output::Close { conn: rconn }) {
        joiner.handle(now, Input::Closed { conn: jconn, reason: "connection closed by peer".into() });
        j_out.extend(drain(joiner));
    }
    (r_out, j_out)
}

fn closed_with(outputs: &[Output], conn: ConnId) -> Option<CloseReason> {
    outputs.iter().find_map(|o| match o {
        Output::Event(Event::ConnectionClosed { conn: c, reason, .. }) if *c == conn => Some(reason.clone()),
        _ => None,
    })
}

fn startup_failure(outputs: &[Output]) -> Option<StartupFailure> {
    outputs.iter().find_map(|o| match o {
        Output::Event(Event::StartupFailed { reason, .. }) => Some(reason.clone()),
        _ => None,
    })
}

/// Fills the refuser's `max_per_ip` of 1 with a connection from the joiner's IP.
fn fill_per_ip(refuser: &mut Node) {
    let other_port = SocketAddr::new(joiner_source().ip(), 40_000);
    refuser.handle(at(1), Input::Incoming { conn: ConnId::inbound(0), addr: other_port });
    assert!(drain(refuser).contains(&Output::Accept { conn: ConnId::inbound(0) }));
}

/// Regression (issue 12, point 8): thirty nodes on one machine bootstrapping from one node hit
/// its per-IP limit, and each joiner logged only "connection closed by peer". The refused
/// joiner now hears the per-IP limit with a retry hint, and its start-up failure names it.
#[test]
fn a_per_ip_refusal_reaches_the_dialler_and_names_its_start_up_failure() {
    let mut a = refuser(|c| c.max_per_ip = 1);
    fill_per_ip(&mut a);
    let (mut j, jconn) = joiner(|c| c.bootstrap_attempts = 1);
    let (a_out, j_out) = meet(&mut a, ConnId::inbound(1), &mut j, jconn, 2, WALL + 2);
    assert_eq!(
        closed_with(&a_out, ConnId::inbound(1)),
        Some(CloseReason::PerIpLimit { ip: joiner_source().ip(), max: 1 })
    );
    let Some(CloseReason::RefusedByPeer { reason, retry_after_ms }) = closed_with(&j_out, jconn) else {
        panic!("the joiner did not hear the refusal: {j_out:?}")
    };
    assert_eq!(reason, RefusalReason::PerIpLimit { max: 1 });
    assert!((LIMIT_RETRY_MS..LIMIT_RETRY_MS + LIMIT_RETRY_JITTER_MS).contains(&retry_after_ms), "{retry_after_ms}");
    let failure = startup_failure(&j_out).expect("start-up failed");
    let expected = BootstrapRefusal {
        node_id: refuser_identity().node_id(),
        addr: refuser_addr(),
        reason: RefusalReason::PerIpLimit { max: 1 },
        retry_after_ms,
    };
    assert_eq!(failure, StartupFailure::BootstrapRefused { refused: vec![expected], others: 0 });
    let text = failure.to_string();
    assert!(text.contains("refused: per-IP connection limit (1) reached (retry after"), "{text}");
    assert!(text.contains(&refuser_identity().node_id().to_string()), "{text}");
    assert_eq!(j.phase(), Phase::Failed);
    assert_eq!(j.status(at(3)).counters.refusals_heard, 1);
    assert_eq!(a.status(at(3)).counters.refusals_explained, 1);
    a.check_invariants().expect("limits hold");
}

#[test]
fn an_inbound_limit_refusal_reaches_the_dialler() {
    let mut a = refuser(|c| c.max_inbound = 1);
    a.handle(at(1), Input::Incoming { conn: ConnId::inbound(0), addr: peer_addr(9) });
    drain(&mut a);
    let (mut j, jconn) = joiner(|c| c.bootstrap_attempts = 1);
    let (_, j_out) = meet(&mut a, ConnId::inbound(1), &mut j, jconn, 2, WALL + 2);
    assert!(matches!(
        closed_with(&j_out, jconn),
        Some(CloseReason::RefusedByPeer { reason: RefusalReason::InboundLimit { max: 1 }, .. })
    ));
    let text = startup_failure(&j_out).expect("start-up failed").to_string();
    assert!(text.contains("inbound connection limit (1) reached"), "{text}");
}

/// The hint holds the next bootstrap round back: no dial before it has passed, one after.
#[test]
fn the_joiner_does_not_redial_before_the_hint() {
    let mut a = refuser(|c| c.max_per_ip = 1);
    fill_per_ip(&mut a);
    let (mut j, jconn) = joiner(|c| {
        c.bootstrap_attempts = 4;
        c.bootstrap_retry_ms = 500;
    });
    let (_, j_out) = meet(&mut a, ConnId::inbound(1), &mut j, jconn, 2, WALL + 2);
    let Some(CloseReason::RefusedByPeer { retry_after_ms, .. }) = closed_with(&j_out, jconn) else { panic!() };
    assert!(startup_failure(&j_out).is_none(), "more rounds to come");
    let hint_end = 2 + u64::from(retry_after_ms);
    let mut redial_at = None;
    let mut now_ms = 2;
    while redial_at.is_none() {
        let (due, _) = j.poll_timeout().expect("a next round");
        now_ms = due.0.div_ceil(1000).max(now_ms);
        assert!(now_ms <= hint_end + 1000, "no redial soon after the hint");
        j.handle(at(now_ms), Input::Tick);
        if !dials(&drain(&mut j)).is_empty() {
            redial_at = Some(now_ms);
        }
    }
    assert!(redial_at >= Some(hint_end), "redialled at {redial_at:?} ms, hint until {hint_end} ms");
}

/// Another network, another version: the dialler hears it once and gives up at once, however
/// many rounds it had left (the answer will not change).
#[test]
fn another_network_or_version_is_explained_and_ends_start_up_at_once() {
    type Tweak = fn(&mut Config);
    let cases: [(Tweak, RefusalReason); 2] = [
        (|c| c.network_id = "other-net".into(), RefusalReason::WrongNetwork { ours: "other-net".into() }),
        (|c| c.protocol_version = "2.0.0".into(), RefusalReason::IncompatibleVersion { ours: "2.0.0".into() }),
    ];
    for (tweak, expected) in cases {
        let mut a = refuser(tweak);
        let (mut j, jconn) = joiner(|c| c.bootstrap_attempts = 4);
        let (a_out, j_out) = meet(&mut a, ConnId::inbound(1), &mut j, jconn, 2, WALL + 2);
        assert!(matches!(closed_with(&a_out, ConnId::inbound(1)), Some(CloseReason::Handshake(_))));
        assert_eq!(
            closed_with(&j_out, jconn),
            Some(CloseReason::RefusedByPeer { reason: expected, retry_after_ms: 0 })
        );
        let text = startup_failure(&j_out).expect("fails without waiting for more rounds").to_string();
        assert!(text.contains("(do not retry)"), "{text}");
        assert!(
            text.contains("wrong network (the node is on \"other-net\")") || text.contains("speaks 2.0.0"),
            "{text}"
        );
    }
}

#[test]
fn a_clock_too_far_off_is_explained_with_a_minute_to_wait() {
    let mut a = refuser(|_| {});
    let (mut j, jconn) = joiner(|c| c.bootstrap_attempts = 1);
    // The refuser's wall clock is two minutes ahead (the limit is one).
    let (_, j_out) = meet(&mut a, ConnId::inbound(1), &mut j, jconn, 2, WALL + 2 + 120_000);
    let Some(CloseReason::RefusedByPeer { reason: RefusalReason::ClockSkew { skew_ms, limit_ms }, retry_after_ms }) =
        closed_with(&j_out, jconn)
    else {
        panic!("{j_out:?}")
    };
    assert_eq!((skew_ms, limit_ms, retry_after_ms), (120_000, 60_000, 60_000));
    let text = startup_failure(&j_out).expect("start-up failed").to_string();
    assert!(text.contains("our clocks differ by 120 s (the limit is 60 s)"), "{text}");
}

/// A blacklisted address hears so, with the ban's time left; a bootstrap node that asks for
/// longer than start-up waits ends start-up at once, naming it.
#[test]
fn a_banned_address_hears_the_time_left_of_its_ban() {
    let mut a = refuser(|c| c.ban_duration_ms = 600_000);
    // Five bad frames before any handshake from the joiner's IP: 100 points, banned.
    for i in 0..5u64 {
        let conn = ConnId::inbound(100 + i);
        a.handle(at(1), Input::Incoming { conn, addr: SocketAddr::new(joiner_source().ip(), 30_000 + i as u16) });
        a.handle(at(1), Input::Secured { conn, binding: Binding([7; 32]) });
        a.handle(at(1), Input::Received { conn, bytes: vec![0, 0, 0, 1, 0xff] });
    }
    drain(&mut a);
    let (mut j, jconn) = joiner(|c| c.bootstrap_attempts = 4);
    let (_, j_out) = meet(&mut a, ConnId::inbound(1), &mut j, jconn, 10_001, WALL + 10_001);
    let Some(CloseReason::RefusedByPeer { reason: RefusalReason::Banned, retry_after_ms }) = closed_with(&j_out, jconn)
    else {
        panic!("{j_out:?}")
    };
    assert_eq!(retry_after_ms, 590_000, "the ban started at 1 ms and lasts 600 s");
    let text = startup_failure(&j_out).expect("600 s is longer than start-up waits").to_string();
    assert!(text.contains("we are blacklisted there (retry after 590 s)"), "{text}");
}

/// A blacklisted node id is refused after its Hello, and hears so.
#[test]
fn a_banned_node_hears_it_after_its_hello() {
    let mut a = refuser(|_| {});
    let peer = Identity::from_secret_bytes(&[3; 32]);
    // Two protocol violations after the handshake: 2 x 50 points, the node is banned.
    for i in 0..2u64 {
        let conn = ConnId::inbound(10 + i);
        let binding = Binding([i as u8 + 1; 32]);
        open(&mut a, conn, peer_addr(3), binding);
        a.handle(at(2), Input::Received { conn, bytes: hello_from(&peer, binding, "mynet-dev", "1.0.0", WALL) });
        a.handle(at(2), Input::Received { conn, bytes: hello_from(&peer, binding, "mynet-dev", "1.0.0", WALL) });
        drain(&mut a);
    }
    let conn = ConnId::inbound(20);
    let binding = Binding([9; 32]);
    open(&mut a, conn, peer_addr(4), binding);
    a.handle(at(3), Input::Received { conn, bytes: hello_from(&peer, binding, "mynet-dev", "1.0.0", WALL) });
    let outputs = drain(&mut a);
    assert_eq!(closed_with(&outputs, conn), Some(CloseReason::Banned));
    let refusal = refusal_in(&outputs, conn).expect("explained");
    assert_eq!(refusal.verify(binding), Ok(()));
    assert_eq!(refusal.node_id, refuser_identity().node_id());
    assert_eq!((refusal.reason, refusal.retry_after_ms), (RefusalReason::Banned, 599_999));
}

/// A flood of refused connections gets at most the budget's explanations (connections being
/// refused at once, a rate per IP and in all); the rest are closed silently, nothing grows.
#[test]
fn a_flood_gets_at_most_its_budget_of_explanations() {
    let mut a = refuser(|c| c.max_inbound = 1);
    a.handle(at(1), Input::Incoming { conn: ConnId::inbound(0), addr: peer_addr(9) });
    drain(&mut a);
    let source = |i: u64| SocketAddr::from(([10, 9, (i / 250) as u8, (i % 250) as u8], 5000));
    // 200 at once from as many IPs, none securing its channel: REFUSING_MAX are kept.
    for i in 0..200u64 {
        a.handle(at(2), Input::Incoming { conn: ConnId::inbound(1 + i), addr: source(i) });
    }
    let outputs = drain(&mut a);
    let accepted = outputs.iter().filter(|o| matches!(o, Output::Accept { .. })).count();
    let closed = outputs.iter().filter(|o| matches!(o, Output::Close { .. })).count();
    assert_eq!((accepted, closed), (REFUSING_MAX, 200 - REFUSING_MAX));
    assert_eq!(a.status(at(2)).refusals.refusing, REFUSING_MAX as u32);
    a.check_invariants().expect("limits hold");
    // Their channels never come up: cut at the deadline, silently.
    a.handle(at(2 + REFUSING_DEADLINE_MS), Input::Tick);
    let outputs = drain(&mut a);
    assert_eq!(outputs.iter().filter(|o| matches!(o, Output::Close { .. })).count(), REFUSING_MAX);
    assert!(!outputs.iter().any(|o| matches!(o, Output::Send { .. })));
    assert_eq!(a.status(at(2 + REFUSING_DEADLINE_MS)).refusals.refusing, 0);

    // 100 from one IP, each securing at once: the per-IP burst is explained.
    let t = 60_000;
    let explained = |a: &mut Node, first: u64, n: u64, addr: &dyn Fn(u64) -> SocketAddr| {
        let mut count = 0;
        for i in first..first + n {
            let conn = ConnId::inbound(i);
            a.handle(at(t), Input::Incoming { conn, addr: addr(i) });
            a.handle(at(t), Input::Secured { conn, binding: Binding([1; 32]) });
            let outputs = drain(a);
            assert!(outputs.contains(&Output::Close { conn }), "every one is closed");
            count += usize::from(refusal_in(&outputs, conn).is_some());
        }
        count
    };
    assert_eq!(explained(&mut a, 1000, 100, &|_| peer_addr(7)), PER_IP.burst as usize);
    // 100 from distinct IPs: what is left of the global burst.
    let others = explained(&mut a, 2000, 100, &|i| source(i));
    assert_eq!(others, (GLOBAL.burst - PER_IP.burst) as usize);
    // Thousands of IPs over an hour: the rate tables stay bounded (checked by the invariants).
    for round in 0..20u64 {
        for i in 0..300u64 {
            let conn = ConnId::inbound(10_000 + round * 1000 + i);
            let addr = SocketAddr::from(([11, round as u8, (i / 250) as u8, (i % 250) as u8], 1));
            a.handle(at(t + round * 180_000), Input::Incoming { conn, addr });
            a.handle(at(t + round * 180_000), Input::Secured { conn, binding: Binding([1; 32]) });
        }
        drain(&mut a);
        a.check_invariants().expect("bounded");
        a.check_tables().expect("indexes in step");
    }
    let counters = a.status(at(t + 20 * 180_000)).counters;
    assert_eq!(counters.inbound_refused, 200 + 200 + 6000);
    assert!(counters.refusals_explained < 1000, "{counters:?}");
}

/// A refusal is only an answer to our Hello: anywhere else it breaks the protocol.
#[test]
fn a_refusal_at_the_wrong_time_is_a_violation() {
    // After the handshake.
    let (mut node, conn, peer, _) = established_peer();
    let refusal = Refusal::sign(&peer, Binding([5; 32]), RefusalReason::Banned, 1000);
    node.handle(at(4), Input::Received { conn, bytes: frame(&Message::Refused(refusal.clone())) });
    let outputs = drain(&mut node);
    assert_eq!(closed_reason(&outputs, conn), Some(CloseReason::Protocol(Violation::RefusalAfterHandshake)));
    assert!(outputs.iter().any(|o| matches!(o, Output::Event(Event::Penalised { .. }))));
    // From a dialler, who has nothing to refuse.
    let reason = inbound_sends(frame(&Message::Refused(refusal)));
    assert_eq!(reason, Some(CloseReason::BeforeHandshake(Kind::ConnectionRefused)));
}

/// A refusal that does not verify, or comes from another node than the one dialled, is not
/// believed: the dialler does not wait for a hint it cannot trust.
#[test]
fn a_forged_refusal_is_not_believed() {
    for other_signer in [false, true] {
        let (mut j, jconn) = joiner(|c| {
            c.bootstrap_attempts = 2;
            c.bootstrap_retry_ms = 500;
        });
        let binding = Binding([5; 32]);
        j.handle(at(1), Input::Secured { conn: jconn, binding });
        drain(&mut j);
        let (signer, signed_for) = if other_signer {
            (Identity::from_secret_bytes(&[8; 32]), binding)
        } else {
            (refuser_identity(), Binding([6; 32]))
        };
        let refusal = Refusal::sign(&signer, signed_for, RefusalReason::InboundLimit { max: 1 }, 3_600_000);
        j.handle(at(2), Input::Received { conn: jconn, bytes: frame(&Message::Refused(refusal)) });
        let outputs = drain(&mut j);
        let reason = closed_with(&outputs, jconn).expect("closed");
        if other_signer {
            assert!(matches!(reason, CloseReason::UnexpectedIdentity { .. }), "{reason:?}");
        } else {
            assert_eq!(reason, CloseReason::Handshake(HandshakeError::BadSignature));
        }
        assert_eq!(j.status(at(2)).refusals.waiting_for, 0);
        // The next round comes at the plain back-off and dials.
        j.handle(at(600), Input::Tick);
        assert_eq!(dials(&drain(&mut j)).len(), 1, "not held back by a hint it cannot trust");
    }
}

/// The longest refusal fits a frame easily; a longer string is refused on decode.
#[test]
fn refusals_fit_the_frame_limit_and_their_bounds_are_checked() {
    let id = refuser_identity();
    let longest = Refusal::sign(&id, Binding([1; 32]), RefusalReason::WrongNetwork { ours: "n".repeat(64) }, u32::MAX);
    let bytes = frame(&Message::Refused(longest));
    assert!(bytes.len() < 300 && bytes.len() < FRAME_LEN_MAX, "{} bytes", bytes.len());
    let too_long = Refusal::sign(&id, Binding([1; 32]), RefusalReason::WrongNetwork { ours: "n".repeat(65) }, 0);
    let bytes = wire::encode_frame(&Message::Refused(too_long)).expect("encodes");
    assert!(matches!(wire::decode_body(&bytes[wire::FRAME_HEADER_LEN..]), Err(WireError::OutOfBounds(_))));
}

/// A node that refused us is left alone by every module until its hint has passed, then
/// dialled again; a restart (maybe with a new config) forgets the hint.
#[test]
fn a_hint_holds_every_dial_back_until_a_restart() {
    let mut a = refuser(|c| c.max_per_ip = 1);
    fill_per_ip(&mut a);
    let (mut j, jconn) = joiner(|c| c.bootstrap_attempts = 1);
    let (_, j_out) = meet(&mut a, ConnId::inbound(1), &mut j, jconn, 2, WALL + 2);
    assert!(startup_failure(&j_out).is_some());
    assert_eq!(j.status(at(3)).refusals.waiting_for, 1);
    let config = j.config().clone();
    j.handle(at(4), Input::Restart { config: Box::new(config), rng_seed: 1 });
    assert_eq!(dials(&drain(&mut j)).len(), 1, "a restarted process dials its bootstrap node again");
    assert_eq!(j.status(at(4)).refusals.waiting_for, 0);
}

/// Discovery honours a hint too: a peer learnt by exchange that refused us with 40 s to wait
/// is not dialled again before then (its slot in `fill_peers` goes to others), and is after.
#[test]
fn discovery_does_not_redial_a_refusing_peer_before_its_hint() {
    let mut a = refuser(|_| {});
    let (mut j, jconn) = joiner(|_| {});
    let (_, j_out) = meet(&mut a, ConnId::inbound(1), &mut j, jconn, 2, WALL + 2);
    assert_eq!(j.peer_ids(), vec![refuser_identity().node_id()]);
    let (asked, _) = *requests_sent(&j_out, jconn).iter().find(|(_, k)| *k == Kind::DiscoverPeers).expect("asks");
    let p = Identity::from_secret_bytes(&[4; 32]);
    let p_addr = SocketAddr::from(([10, 0, 0, 4], 7401));
    let record = wire::PeerRecord { node_id: p.node_id(), address: p_addr, public_key: p.public_key() };
    j.handle(at(3), Input::Received { conn: jconn, bytes: peers_answer(asked, vec![record]) });
    let dial_to_p = |outputs: &[Output]| {
        outputs.iter().find_map(|o| match o {
            Output::Dial { conn, addr } if *addr == p_addr => Some(*conn),
            _ => None,
        })
    };
    let pconn = dial_to_p(&drain(&mut j)).expect("dials the peer it learnt");
    let binding = Binding([3; 32]);
    j.handle(at(4), Input::Secured { conn: pconn, binding });
    drain(&mut j);
    let refusal = Refusal::sign(&p, binding, RefusalReason::PerIpLimit { max: 3 }, 40_000);
    j.handle(at(5), Input::Received { conn: pconn, bytes: frame(&Message::Refused(refusal)) });
    let outputs = drain(&mut j);
    assert!(matches!(closed_with(&outputs, pconn), Some(CloseReason::RefusedByPeer { retry_after_ms: 40_000, .. })));
    let mut redial = None;
    let mut now_ms = 5;
    while redial.is_none() && now_ms < 200_000 {
        let (due, _) = j.poll_timeout().expect("timers");
        now_ms = due.0.div_ceil(1000).max(now_ms);
        j.handle(at(now_ms), Input::Tick);
        if dial_to_p(&drain(&mut j)).is_some() {
            redial = Some(now_ms);
        }
    }
    let redial = redial.expect("dialled again once the hint passed");
    assert!(redial >= 5 + 40_000, "redialled at {redial} ms, the hint ran until 40,005 ms");
}
