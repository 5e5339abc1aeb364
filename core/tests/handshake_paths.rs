//! Every way a connection can end during or around the handshake, driven through the node's
//! one door with a hand-made peer (SPEC R6.1, R6.2).

mod common;

use core::net::SocketAddr;

use common::*;
use mynet_core::discovery;
use mynet_core::handshake::{Binding, HandshakeError, Role, build_hello};
use mynet_core::wire::{self, FRAME_LEN_MAX, Kind, Message, Request, Response};
use mynet_core::{
    CloseReason, Config, ConnId, Event, Identity, Input, Node, Output, Phase, RequestId, StartupFailure, Time,
    Violation, WireError,
};

#[test]
fn valid_handshake_establishes_and_answers() {
    let (_, conn, peer, outputs) = established_peer();
    let binding = Binding([5; 32]);
    let ack = outputs.iter().find_map(|o| match o {
        Output::Send { conn: c, bytes } if *c == conn => Some(bytes.clone()),
        _ => None,
    });
    let ack = wire::decode_body(&ack.expect("an answer")[4..]).expect("decodes");
    let Message::HelloAck(ack) = ack else { panic!("expected handshake_response, got {ack:?}") };
    let expect = mynet_core::handshake::Expect {
        our_id: peer.node_id(),
        network_id: "mynet-dev",
        version: "1.0.0",
        now_wall_ms: WALL,
        max_skew_ms: 1000,
    };
    assert_eq!(mynet_core::handshake::verify_hello(&ack, Role::Responder, binding, &expect), Ok(()));
}

#[test]
fn garbage_bytes_close_the_connection() {
    let reason = inbound_sends(vec![0, 0, 0, 3, 0xde, 0xad, 0xbe]);
    assert!(matches!(reason, Some(CloseReason::Wire(WireError::UnknownVersion(0xde)))), "{reason:?}");
}

#[test]
fn oversized_length_prefix_closes() {
    let reason = inbound_sends(((FRAME_LEN_MAX as u32) + 1).to_be_bytes().to_vec());
    assert!(matches!(reason, Some(CloseReason::Wire(WireError::FrameTooLarge { .. }))), "{reason:?}");
}

#[test]
fn undecodable_frame_closes() {
    let reason = inbound_sends(vec![0, 0, 0, 3, wire::WIRE_VERSION, 0xff, 0xff]);
    assert!(matches!(reason, Some(CloseReason::Wire(WireError::Undecodable(_)))), "{reason:?}");
}

#[test]
fn message_before_handshake_closes() {
    let reason = inbound_sends(get_network_info(0));
    assert_eq!(reason, Some(CloseReason::BeforeHandshake(Kind::GetNetworkInfo)));
}

#[test]
fn bad_signature_closes() {
    let peer = Identity::from_secret_bytes(&[2; 32]);
    let mut hello = build_hello(&peer, Role::Initiator, Binding([5; 32]), "mynet-dev", "1.0.0", WALL, None);
    hello.signature[10] ^= 0x40;
    let reason = inbound_sends(frame(&Message::Hello(hello)));
    assert_eq!(reason, Some(CloseReason::Handshake(HandshakeError::BadSignature)));
}

#[test]
fn replayed_handshake_from_another_channel_closes() {
    let peer = Identity::from_secret_bytes(&[2; 32]);
    // Signed for binding [4; 32], replayed on a channel whose binding is [5; 32].
    let reason = inbound_sends(hello_from(&peer, Binding([4; 32]), "mynet-dev", "1.0.0", WALL));
    assert_eq!(reason, Some(CloseReason::Handshake(HandshakeError::BadSignature)));
}

#[test]
fn node_id_not_matching_key_closes() {
    let peer = Identity::from_secret_bytes(&[2; 32]);
    let mut hello = build_hello(&peer, Role::Initiator, Binding([5; 32]), "mynet-dev", "1.0.0", WALL, None);
    hello.node_id = Identity::from_secret_bytes(&[3; 32]).node_id();
    let reason = inbound_sends(frame(&Message::Hello(hello)));
    assert!(matches!(reason, Some(CloseReason::Handshake(HandshakeError::NodeIdMismatch { .. }))), "{reason:?}");
}

#[test]
fn wrong_network_and_incompatible_version_close() {
    let peer = Identity::from_secret_bytes(&[2; 32]);
    let reason = inbound_sends(hello_from(&peer, Binding([5; 32]), "other-net", "1.0.0", WALL));
    assert!(matches!(reason, Some(CloseReason::Handshake(HandshakeError::WrongNetwork { .. }))), "{reason:?}");
    let reason = inbound_sends(hello_from(&peer, Binding([5; 32]), "mynet-dev", "2.0.0", WALL));
    assert!(matches!(reason, Some(CloseReason::Handshake(HandshakeError::IncompatibleVersion { .. }))), "{reason:?}");
}

#[test]
fn stale_and_future_timestamps_close() {
    let peer = Identity::from_secret_bytes(&[2; 32]);
    for ts in [WALL - 120_000, WALL + 120_000] {
        let reason = inbound_sends(hello_from(&peer, Binding([5; 32]), "mynet-dev", "1.0.0", ts));
        assert!(matches!(reason, Some(CloseReason::Handshake(HandshakeError::ClockSkew { .. }))), "{reason:?}");
    }
}

#[test]
fn connection_to_ourselves_closes() {
    let ourselves = Identity::from_secret_bytes(&[1; 32]);
    let reason = inbound_sends(hello_from(&ourselves, Binding([5; 32]), "mynet-dev", "1.0.0", WALL));
    assert_eq!(reason, Some(CloseReason::Handshake(HandshakeError::SelfConnection)));
}

#[test]
fn second_connection_to_a_peer_we_have_closes() {
    let mut node = first_node(Config::default());
    let peer = Identity::from_secret_bytes(&[2; 32]);
    for (i, binding) in [(1, Binding([5; 32])), (2, Binding([6; 32]))] {
        let conn = ConnId::inbound(i);
        open(&mut node, conn, peer_addr(2), binding);
        node.handle(at(2), Input::Received { conn, bytes: hello_from(&peer, binding, "mynet-dev", "1.0.0", WALL) });
        let outputs = drain(&mut node);
        if i == 2 {
            assert_eq!(closed_reason(&outputs, conn), Some(CloseReason::Duplicate));
        }
    }
    assert_eq!(node.peer_ids(), vec![peer.node_id()]);
}

#[test]
fn silence_times_out_at_the_configured_deadline() {
    let config = Config { handshake_timeout_ms: 10_000, ..Config::default() };
    let mut node = first_node(config);
    let conn = ConnId::inbound(1);
    open(&mut node, conn, peer_addr(2), Binding([5; 32]));
    let deadline = at(10_001).mono;
    node.handle(at(9_000), Input::Tick);
    assert!(closed_reason(&drain(&mut node), conn).is_none(), "not before the deadline");
    // Other timers (the DHT's first round) may come first: tick through them to the deadline.
    let mut reason = None;
    while reason.is_none() {
        let (due, _) = node.poll_timeout().expect("a deadline");
        assert!(due <= deadline, "the handshake deadline passed without a close");
        node.handle(Time { mono: due, wall_ms: WALL + due.0 / 1000 }, Input::Tick);
        reason = closed_reason(&drain(&mut node), conn);
    }
    assert_eq!(reason, Some(CloseReason::HandshakeTimeout));
}

#[test]
fn inbound_and_per_ip_limits_count_handshaking_connections() {
    let config = Config { max_inbound: 4, max_per_ip: 2, ..Config::default() };
    let mut node = first_node(config);
    // Two from one IP are fine, the third is refused though none completed a handshake.
    for i in 0..3u64 {
        node.handle(
            at(1),
            Input::Incoming { conn: ConnId::inbound(i), addr: SocketAddr::from(([10, 0, 0, 9], 1000 + i as u16)) },
        );
    }
    // The refused one is accepted only to hear why (outside the limits), then closed.
    let outputs = drain(&mut node);
    assert!(outputs.contains(&Output::Accept { conn: ConnId::inbound(2) }));
    node.check_invariants().expect("limits hold while it hears why");
    node.handle(at(1), Input::Secured { conn: ConnId::inbound(2), binding: Binding([5; 32]) });
    assert_eq!(
        closed_reason(&drain(&mut node), ConnId::inbound(2)),
        Some(CloseReason::PerIpLimit { ip: [10, 0, 0, 9].into(), max: 2 })
    );
    for i in 3..6u64 {
        node.handle(at(1), Input::Incoming { conn: ConnId::inbound(i), addr: peer_addr(i as u8) });
    }
    let outputs = drain(&mut node);
    assert!(outputs.contains(&Output::Accept { conn: ConnId::inbound(4) }));
    let (inbound, _, _) = node.connection_counts();
    assert_eq!(inbound, 4, "the refused connection is not counted against the limits");
    node.handle(at(1), Input::Secured { conn: ConnId::inbound(5), binding: Binding([6; 32]) });
    assert_eq!(closed_reason(&drain(&mut node), ConnId::inbound(5)), Some(CloseReason::InboundLimit { max: 4 }));
    node.check_invariants().expect("limits hold");
}

/// A config whose only bootstrap node is `bootstrap` at 10.0.0.2:7401.
fn bootstrap_config(bootstrap: &Identity) -> Config {
    let entry = mynet_core::config::BootstrapNode {
        node_id: bootstrap.node_id(),
        address: SocketAddr::from(([10, 0, 0, 2], 7401)),
        public_key: bootstrap.public_key(),
    };
    Config { bootstrap_nodes: vec![entry], ..Config::default() }
}

/// A joining node (config from `bootstrap_config`, then `tweak`) whose dial to its bootstrap
/// node has a secure channel (binding [5; 32]) and is waiting for the handshake answer.
fn joining_node(bootstrap: &Identity, tweak: impl FnOnce(&mut Config)) -> (Node, ConnId, Binding) {
    let mut config = bootstrap_config(bootstrap);
    tweak(&mut config);
    let mut node = Node::new(config, Identity::from_secret_bytes(&[1; 32]), 7, at(0));
    let conn = drain(&mut node)
        .iter()
        .find_map(|o| if let Output::Dial { conn, .. } = o { Some(*conn) } else { None })
        .expect("dials bootstrap");
    let binding = Binding([5; 32]);
    node.handle(at(1), Input::Secured { conn, binding });
    drain(&mut node);
    (node, conn, binding)
}

#[test]
fn bootstrap_node_answering_with_another_identity_is_refused() {
    let bootstrap = Identity::from_secret_bytes(&[2; 32]);
    let impostor = Identity::from_secret_bytes(&[3; 32]);
    let (mut node, conn, binding) = joining_node(&bootstrap, |c| c.bootstrap_attempts = 1);
    let ack = build_hello(&impostor, Role::Responder, binding, "mynet-dev", "1.0.0", WALL, None);
    node.handle(at(2), Input::Received { conn, bytes: frame(&Message::HelloAck(ack)) });
    let outputs = drain(&mut node);
    assert!(matches!(closed_reason(&outputs, conn), Some(CloseReason::UnexpectedIdentity { .. })));
    assert!(outputs.iter().any(|o| matches!(
        o,
        Output::Event(Event::StartupFailed { reason: StartupFailure::NoBootstrapReachable, .. })
    )));
    assert_eq!(node.phase(), Phase::Failed);
}

#[test]
fn unreachable_bootstrap_fails_after_all_rounds() {
    let bootstrap = Identity::from_secret_bytes(&[2; 32]);
    let config = Config { bootstrap_attempts: 2, bootstrap_retry_ms: 500, ..bootstrap_config(&bootstrap) };
    let mut node = Node::new(config, Identity::from_secret_bytes(&[1; 32]), 7, at(0));
    let mut now_ms = 0;
    let mut failures = 0;
    for _ in 0..10 {
        while let Some(output) = node.poll_output() {
            match output {
                Output::Dial { conn, .. } => {
                    node.handle(at(now_ms), Input::Closed { conn, reason: "connection refused".into() })
                }
                Output::Event(Event::BootstrapFailed { .. }) => failures += 1,
                _ => {}
            }
        }
        match node.poll_timeout() {
            Some((deadline, _)) => {
                now_ms = deadline.0 / 1000;
                node.handle(at(now_ms), Input::Tick);
            }
            None => break,
        }
    }
    assert_eq!(failures, 2);
    assert_eq!(node.phase(), Phase::Failed);
}
/// A node whose bootstrap node (key `[2; 32]`) completed the handshake; the requests the node
/// sent it on the new link.
fn joined_bootstrap(tweak: impl FnOnce(&mut Config)) -> (Node, ConnId, Vec<(RequestId, Kind)>) {
    let bootstrap = Identity::from_secret_bytes(&[2; 32]);
    let (mut node, conn, binding) = joining_node(&bootstrap, tweak);
    let ack = build_hello(&bootstrap, Role::Responder, binding, "mynet-dev", "1.0.0", WALL, None);
    node.handle(at(2), Input::Received { conn, bytes: frame(&Message::HelloAck(ack)) });
    let asked = requests_sent(&drain(&mut node), conn);
    (node, conn, asked)
}

/// Regression (sim `--faults all`): a peer that completed a handshake and then stayed silent
/// held a connection slot forever. An unanswered request fails at its deadline; a peer still
/// silent when the grace for a late answer ends is dropped.
#[test]
fn a_peer_that_never_answers_discovery_is_dropped() {
    let (mut node, conn, _, _) = established_peer();
    // The discovery round asks established peers for more peers.
    node.handle(at(61_000), Input::Tick);
    // (The status broadcast's report is asked alongside; it is not what this test is about.)
    let asked: Vec<_> =
        requests_sent(&drain(&mut node), conn).into_iter().filter(|(_, k)| *k != Kind::StatusReport).collect();
    assert_eq!(asked.iter().map(|(_, k)| *k).collect::<Vec<_>>(), vec![Kind::DiscoverPeers]);
    let (deadline, _) = node.poll_timeout().expect("a request deadline");
    assert!(deadline <= at(71_001).mono);
    node.handle(Time { mono: deadline, wall_ms: WALL + 71_000 }, Input::Tick);
    let outputs = drain(&mut node);
    assert!(
        outputs.iter().any(|o| matches!(o, Output::Event(Event::RequestTimedOut { kind: Kind::DiscoverPeers, .. })))
    );
    assert_eq!(closed_reason(&outputs, conn), None, "the grace for a late answer runs");
    let (grace_end, _) = node.poll_timeout().expect("the grace deadline");
    assert!(grace_end <= at(81_001).mono);
    node.handle(Time { mono: grace_end, wall_ms: WALL + 81_000 }, Input::Tick);
    assert_eq!(closed_reason(&drain(&mut node), conn), Some(CloseReason::Unresponsive));
}

#[test]
fn a_late_answer_is_dropped_and_counted_not_punished() {
    let (mut node, conn, _, _) = established_peer();
    node.handle(at(61_000), Input::Tick);
    let (id, _) = requests_sent(&drain(&mut node), conn)[0];
    node.handle(at(71_000), Input::Tick);
    drain(&mut node);
    node.handle(at(72_000), Input::Received { conn, bytes: peers_answer(id, Vec::new()) });
    let outputs = drain(&mut node);
    assert!(outputs.contains(&Output::Event(Event::LateAnswer { conn, id, kind: Kind::Peers })), "{outputs:?}");
    assert_eq!(closed_reason(&outputs, conn), None);
    assert!(!outputs.iter().any(|o| matches!(o, Output::Event(Event::Penalised { .. }))));
    assert_eq!(node.status(at(72_000)).requests.late, 1);
    // Settled: nothing is left to time out, and the peer stays.
    node.handle(at(90_000), Input::Tick);
    assert_eq!(closed_reason(&drain(&mut node), conn), None);
    assert_eq!(node.peer_ids().len(), 1);
}

#[test]
fn an_answer_with_an_unknown_request_id_is_a_violation() {
    let (mut node, conn, _, _) = established_peer();
    node.handle(at(3), Input::Received { conn, bytes: peers_answer(RequestId(77), Vec::new()) });
    let reason = closed_reason(&drain(&mut node), conn);
    assert_eq!(
        reason,
        Some(CloseReason::Protocol(Violation::UnknownRequestId { id: RequestId(77), kind: Kind::Peers }))
    );
}

#[test]
fn an_answer_of_the_wrong_kind_is_a_violation() {
    let (mut node, conn, _, _) = established_peer();
    node.handle(at(61_000), Input::Tick);
    let (id, kind) = requests_sent(&drain(&mut node), conn)[0];
    assert_eq!(kind, Kind::DiscoverPeers);
    let info = discovery::Response::NetworkInfo(discovery::NetworkInfo::default());
    node.handle(
        at(61_001),
        Input::Received { conn, bytes: frame(&Message::Response { id, body: Response::Discovery(info) }) },
    );
    let reason = closed_reason(&drain(&mut node), conn);
    assert_eq!(
        reason,
        Some(CloseReason::Protocol(Violation::WrongAnswerKind { id, expected: Kind::Peers, got: Kind::NetworkInfo }))
    );
}

#[test]
fn outbound_limit_counts_dials_still_in_their_handshake() {
    let (mut node, conn, asked) = joined_bootstrap(|c| c.max_outbound = 3);
    let (id, _) = *asked.iter().find(|(_, k)| *k == Kind::DiscoverPeers).expect("asks for peers");
    // The bootstrap node answers with ten dialable peers; none of them ever answers a dial.
    let records = (10..20u8)
        .map(|i| {
            let id = Identity::from_secret_bytes(&[i; 32]);
            mynet_core::wire::PeerRecord {
                node_id: id.node_id(),
                address: SocketAddr::from(([10, 0, 1, i], 7401)),
                public_key: id.public_key(),
            }
        })
        .collect();
    node.handle(at(3), Input::Received { conn, bytes: peers_answer(id, records) });
    let dials = drain(&mut node).iter().filter(|o| matches!(o, Output::Dial { .. })).count();
    assert_eq!(dials, 2, "one outbound slot is the bootstrap link; two more dials fill the limit of 3");
    let (_, outbound, _) = node.connection_counts();
    assert_eq!(outbound, 3);
    node.check_invariants().expect("limits hold");
}

/// Regression (review): a restart while the last bootstrap round was still dialling concluded
/// that round as failed and emitted StartupFailed, so the restarted process exited.
#[test]
fn a_restart_during_the_last_bootstrap_round_starts_bootstrap_afresh() {
    let bootstrap = Identity::from_secret_bytes(&[2; 32]);
    let config = Config { bootstrap_attempts: 1, ..bootstrap_config(&bootstrap) };
    let mut node = Node::new(config.clone(), Identity::from_secret_bytes(&[1; 32]), 7, at(0));
    drain(&mut node);
    node.handle(at(100), Input::Restart { config: Box::new(config), rng_seed: 8 });
    let outputs = drain(&mut node);
    assert!(!outputs.iter().any(|o| matches!(o, Output::Event(Event::StartupFailed { .. }))), "{outputs:?}");
    assert!(outputs.iter().any(|o| matches!(o, Output::Dial { .. })), "the new process dials the bootstrap node again");
    assert_eq!(node.phase(), Phase::Bootstrap);
}

/// Regression (review): a peer could make us sample and encode thousands of answers with one
/// message full of tiny requests.
#[test]
fn a_request_flood_closes_the_connection() {
    let (mut node, conn, _, _) = established_peer();
    let flood: Vec<u8> = (0..11).flat_map(get_network_info).collect();
    node.handle(at(3), Input::Received { conn, bytes: flood });
    let outputs = drain(&mut node);
    let answers = outputs.iter().filter(|o| matches!(o, Output::Send { conn: c, .. } if *c == conn)).count();
    assert_eq!(answers, 10, "ten requests a minute are served");
    assert_eq!(
        closed_reason(&outputs, conn),
        Some(CloseReason::Protocol(Violation::RequestFlood { kind: Kind::GetNetworkInfo }))
    );
}

/// Regression (review): with more than 256 peers our own discovery requests carried an exclude
/// list longer than any receiver accepts, so honest peers penalised and banned us.
#[test]
fn discovery_requests_fit_the_receivers_bounds_with_many_peers() {
    let config = Config { max_inbound: 400, max_per_ip: 400, target_peers: 1, ..Config::default() };
    let mut node = first_node(config);
    for i in 0..300u64 {
        let peer = Identity::from_secret_bytes(&[
            (i % 250) as u8 + 2,
            (i / 250) as u8 + 1,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ]);
        let conn = ConnId::inbound(i);
        let binding = Binding([i as u8; 32]);
        open(&mut node, conn, SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250) as u8], 4000)), binding);
        node.handle(at(2), Input::Received { conn, bytes: hello_from(&peer, binding, "mynet-dev", "1.0.0", WALL) });
        drain(&mut node);
    }
    assert_eq!(node.peer_ids().len(), 300);
    node.handle(at(61_000), Input::Tick);
    let mut requests = 0;
    for output in drain(&mut node) {
        if let Output::Send { bytes, .. } = output {
            let message = wire::decode_body(&bytes[wire::FRAME_HEADER_LEN..]).expect("the receiver's bounds accept it");
            if let Message::Request {
                body: Request::Discovery(discovery::Request::DiscoverPeers { exclude, .. }),
                ..
            } = message
            {
                assert!(exclude.len() <= wire::EXCLUDE_MAX);
                requests += 1;
            }
        }
    }
    assert!(requests > 0);
}

/// Regression (module split): when bootstrap heard of a new link before discovery had asked it
/// anything, the discovery phase found nothing to wait for and start-up skipped it.
#[test]
fn start_up_waits_in_peer_discovery_for_the_bootstrap_nodes_answers() {
    let (mut node, conn, asked) = joined_bootstrap(|_| {});
    // Discovery asks for network info and peers; reconciliation starts a round; the DHT
    // looks up our own id through the bootstrap link.
    assert_eq!(
        asked.iter().map(|(_, k)| *k).collect::<Vec<_>>(),
        vec![Kind::GetNetworkInfo, Kind::DiscoverPeers, Kind::Reconcile, Kind::FindNode]
    );
    assert_eq!(node.phase(), Phase::PeerDiscovery, "waiting for the bootstrap node's answers");
    let info = Response::Discovery(discovery::Response::NetworkInfo(discovery::NetworkInfo::default()));
    node.handle(at(3), Input::Received { conn, bytes: frame(&Message::Response { id: asked[0].0, body: info }) });
    drain(&mut node);
    assert_eq!(node.phase(), Phase::PeerDiscovery, "one answer is still owed");
    node.handle(at(4), Input::Received { conn, bytes: peers_answer(asked[1].0, Vec::new()) });
    drain(&mut node);
    // Phase 7: the initial sync waits for the first reconciliation round.
    assert_eq!(node.phase(), Phase::InitialSync);
    let bytes = frame(&Message::Response { id: asked[2].0, body: Response::Reconcile(equal()) });
    node.handle(at(5), Input::Received { conn, bytes });
    let outputs = drain(&mut node);
    assert_eq!(node.phase(), Phase::Ready);
    assert!(outputs.contains(&Output::Event(Event::Initialized { peers: 1 })));
}

/// Start-up phase 7 never blocks start-up forever: a bootstrap node that never answers our
/// reconciliation round delays readiness by at most `initial_sync_max_ms`.
#[test]
fn the_initial_sync_ends_in_bounded_time_when_a_round_never_ends() {
    let (mut node, conn, asked) = joined_bootstrap(|_| {});
    let info = Response::Discovery(discovery::Response::NetworkInfo(discovery::NetworkInfo::default()));
    node.handle(at(3), Input::Received { conn, bytes: frame(&Message::Response { id: asked[0].0, body: info }) });
    node.handle(at(4), Input::Received { conn, bytes: peers_answer(asked[1].0, Vec::new()) });
    drain(&mut node);
    assert_eq!(node.phase(), Phase::InitialSync, "waiting for the round");
    let limit = at(4).mono.plus_ms(node.config().initial_sync_max_ms);
    while node.phase() == Phase::InitialSync {
        let (due, _) = node.poll_timeout().expect("a deadline while waiting");
        assert!(due <= limit, "the wait is bounded by initial_sync_max_ms");
        node.handle(Time { mono: due, wall_ms: WALL + due.0 / 1000 }, Input::Tick);
        drain(&mut node);
    }
    assert_eq!(node.phase(), Phase::Ready);
}

/// SPEC R4.3: the popular items a bootstrap node names in its network info are queued first
/// by a joining node, which asks for their metadata at once.
#[test]
fn a_joining_node_fetches_the_popular_items_a_bootstrap_node_names() {
    let (mut node, conn, asked) = joined_bootstrap(|_| {});
    let popular = [9u8; 32];
    let info = discovery::NetworkInfo { popular_content: vec![popular], ..discovery::NetworkInfo::default() };
    let body = Response::Discovery(discovery::Response::NetworkInfo(info));
    node.handle(at(3), Input::Received { conn, bytes: frame(&Message::Response { id: asked[0].0, body }) });
    let outputs = drain(&mut node);
    let heads: Vec<Kind> = requests_sent(&outputs, conn).into_iter().map(|(_, k)| k).collect();
    assert_eq!(heads, vec![Kind::GetHead], "{outputs:?}");
    assert!(
        outputs.iter().any(|o| matches!(o, Output::Event(Event::TransferStarted { id, .. }) if id.0 == popular)),
        "{outputs:?}"
    );
}

/// A peer cancelling a request it made (an endgame duplicate that lost the race) makes the
/// node tell its driver to drop the answer if it has not gone out yet; no answer is sent.
#[test]
fn a_cancel_from_a_peer_drops_the_answer_it_names() {
    let (mut node, conn, _, _) = established_peer();
    node.handle(at(10), Input::Received { conn, bytes: frame(&Message::Cancel { id: RequestId(5) }) });
    let outputs = drain(&mut node);
    assert!(outputs.contains(&Output::CancelServe { conn, request: RequestId(5) }), "{outputs:?}");
    assert!(!outputs.iter().any(|o| matches!(o, Output::Send { .. })), "a cancel is not answered");
    assert_eq!(node.peer_ids().len(), 1, "the connection stays");
}
