//! The status broadcast (SPEC R10.2): a ready node reports itself to its peers every 30 s;
//! peers' reports are checked (their own, signed, fresh), kept, aged out, and rate limited.

mod common;

use common::*;
use mynet_core::event::Violation;
use mynet_core::netstatus::{self, Report};
use mynet_core::wire::{self, Kind, Message, Request, Response};
use mynet_core::{CloseReason, ConnId, Event, Identity, Input, Node, Output, Phase, RequestId};

fn report(signer: &Identity, node: &Identity, seq: u64, items: u64) -> Report {
    netstatus::sign(
        signer,
        Report {
            node_id: node.node_id(),
            seq,
            wall_ms: WALL,
            phase: Phase::Ready,
            uptime_s: 60,
            peers: 3,
            items,
            bytes_stored: 1000,
            catalogue_items: 7,
            version: "1.0.0".into(),
            signature: [0; 64],
        },
    )
}

fn send(node: &mut Node, conn: ConnId, ms: u64, id: u32, r: Report) -> Vec<Output> {
    let bytes = frame(&Message::Request { id: RequestId(id), body: Request::Status(netstatus::Request::Report(r)) });
    node.handle(at(ms), Input::Received { conn, bytes });
    drain(node)
}

fn noted(outputs: &[Output], conn: ConnId) -> bool {
    outputs.iter().any(|o| match o {
        Output::Send { conn: c, bytes } if *c == conn => matches!(
            wire::decode_body(&bytes[wire::FRAME_HEADER_LEN..]),
            Ok(Message::Response { body: Response::Status(netstatus::Response::Noted), .. })
        ),
        _ => false,
    })
}

#[test]
fn a_peers_signed_report_is_kept_shown_and_aged_out_and_a_stale_one_is_not_taken() {
    let (mut node, conn, peer, _) = established_peer();
    let out = send(&mut node, conn, 10, 100, report(&peer, &peer, 5, 42));
    assert!(noted(&out, conn));
    let shown = node.status(at(10)).network;
    assert_eq!(shown.len(), 1);
    assert_eq!((shown[0].node_id, shown[0].items, shown[0].phase.as_str()), (peer.node_id(), 42, "ready"));
    // An older sequence number changes nothing.
    send(&mut node, conn, 20, 101, report(&peer, &peer, 4, 1));
    assert_eq!(node.status(at(20)).network[0].items, 42);
    assert_eq!(node.status(at(20)).broadcast.stale, 1);
    // Aged out after three intervals without news.
    node.handle(at(10 + netstatus::MAX_AGE_MS), Input::Tick);
    drain(&mut node);
    assert!(node.status(at(10 + netstatus::MAX_AGE_MS)).network.is_empty());
    assert_eq!(node.status(at(10 + netstatus::MAX_AGE_MS)).broadcast.aged_out, 1);
}

#[test]
fn a_forged_or_foreign_report_is_misbehaviour() {
    let (mut node, conn, peer, _) = established_peer();
    let other = Identity::from_secret_bytes(&[9; 32]);
    let out = send(&mut node, conn, 10, 100, report(&other, &peer, 5, 1));
    assert_eq!(closed_reason(&out, conn), Some(CloseReason::Protocol(Violation::BadStatusReport)));

    let (mut node, conn, peer, _) = established_peer();
    let _ = peer;
    let out = send(&mut node, conn, 10, 100, report(&other, &other, 5, 1));
    assert_eq!(
        closed_reason(&out, conn),
        Some(CloseReason::Protocol(Violation::ForeignNodeId { kind: Kind::StatusReport }))
    );
}

#[test]
fn reports_are_rate_limited_per_peer() {
    let (mut node, conn, peer, _) = established_peer();
    for i in 0..netstatus::RATE_LIMIT.max as u64 {
        let out = send(&mut node, conn, 10 + i, 100 + i as u32, report(&peer, &peer, 5 + i, 1));
        assert!(noted(&out, conn), "report {i} is within the rate");
    }
    let out = send(&mut node, conn, 20, 200, report(&peer, &peer, 50, 1));
    assert_eq!(
        closed_reason(&out, conn),
        Some(CloseReason::Protocol(Violation::RequestFlood { kind: Kind::StatusReport }))
    );
}

#[test]
fn a_ready_node_reports_itself_to_each_peer_every_interval() {
    let (mut node, conn, _, _) = established_peer();
    let mut sent = Vec::new();
    for ms in (1_000..=2 * netstatus::INTERVAL_MS + 1_000).step_by(1_000) {
        node.handle(at(ms), Input::Tick);
        for (id, kind) in requests_sent(&drain(&mut node), conn) {
            if kind == Kind::StatusReport {
                sent.push(ms);
                let bytes = frame(&Message::Response { id, body: Response::Status(netstatus::Response::Noted) });
                node.handle(at(ms), Input::Received { conn, bytes });
                let out = drain(&mut node);
                assert!(!out.iter().any(|o| matches!(o, Output::Event(Event::ConnectionClosed { .. }))));
            }
        }
    }
    // The first is due when the node became ready (the test's first tick), then one per interval.
    assert_eq!(sent, vec![1_000, 1_000 + netstatus::INTERVAL_MS, 1_000 + 2 * netstatus::INTERVAL_MS]);
    assert_eq!(node.status(at(70_000)).broadcast.sent, 3);
}
