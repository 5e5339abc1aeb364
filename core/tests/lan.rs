//! LAN discovery through the node's one door: what it announces and when, and what it makes of
//! what it hears (SPEC R5.3, R5.5).

mod common;

use core::net::SocketAddr;

use common::{WALL, at, drain};
use mynet_core::lan::{Announcement, HEARD_PER_WINDOW};
use mynet_core::{Config, Event, Identity, Input, Node, Output};

fn config() -> Config {
    Config { listen_addr: "10.0.0.1:7401".parse().expect("addr"), ..Config::default() }
}

fn lan_node(config: Config) -> (Node, Vec<Output>) {
    let mut node = Node::new(config, Identity::from_secret_bytes(&[1; 32]), 7, at(0));
    let outputs = drain(&mut node);
    (node, outputs)
}

fn announcements(outputs: &[Output]) -> Vec<Announcement> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::LanAnnounce { bytes } => Some(Announcement::decode(bytes).expect("our own decodes")),
            _ => None,
        })
        .collect()
}

/// Runs the node's timers up to `until_ms`, collecting outputs.
fn run_until(node: &mut Node, until_ms: u64) -> Vec<Output> {
    let mut out = Vec::new();
    while let Some((at_mono, _)) = node.poll_timeout() {
        if at_mono.0 > until_ms * 1000 {
            break;
        }
        node.handle(mynet_core::Time::new(at_mono.0, WALL + at_mono.0 / 1000), Input::Tick);
        out.extend(drain(node));
    }
    out
}

fn heard(node: &mut Node, ms: u64, from: &str, bytes: Vec<u8>) -> Vec<Output> {
    node.handle(at(ms), Input::LanHeard { from: from.parse().expect("addr"), bytes });
    drain(node)
}

fn peer(i: u8) -> Identity {
    Identity::from_secret_bytes(&[i; 32])
}

fn announce(id: &Identity, listen: &str, wall_ms: u64) -> Vec<u8> {
    Announcement::build(id, "mynet-dev", mynet_core::PROTOCOL_VERSION, listen.parse().expect("addr"), wall_ms).encode()
}

fn dials(outputs: &[Output]) -> Vec<SocketAddr> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Dial { addr, .. } => Some(*addr),
            _ => None,
        })
        .collect()
}

#[test]
fn a_node_announces_at_start_twice_soon_after_then_every_discovery_interval() {
    let (mut node, first) = lan_node(config());
    let sent = announcements(&first);
    assert_eq!(sent.len(), 1, "one at start");
    assert_eq!(sent[0].node_id, node.node_id());
    assert_eq!(sent[0].listen_addr, config().listen_addr);
    let mut times = Vec::new();
    let mut now = 0;
    while now < 130_000 {
        let Some((at_mono, _)) = node.poll_timeout() else { break };
        now = at_mono.0 / 1000;
        node.handle(mynet_core::Time::new(at_mono.0, WALL + now), Input::Tick);
        if !announcements(&drain(&mut node)).is_empty() {
            times.push(now);
        }
    }
    assert_eq!(times, vec![1_000, 3_000, 63_000, 123_000]);
    assert_eq!(node.status(at(now)).lan.sent, 5);
}

#[test]
fn a_node_listening_on_loopback_or_with_lan_discovery_off_stays_quiet() {
    for config in [Config::default(), Config { lan_discovery: false, ..config() }] {
        let (mut node, mut out) = lan_node(config);
        out.extend(run_until(&mut node, 10_000));
        assert!(announcements(&out).is_empty());
        let out = heard(&mut node, 10_001, "10.0.0.2:5000", announce(&peer(2), "0.0.0.0:7401", WALL + 10_001));
        assert!(dials(&out).is_empty(), "nor does it listen");
        assert!(!node.status(at(10_001)).lan.active);
    }
}

#[test]
fn a_good_announcement_is_dialled_and_answered_within_a_second() {
    let (mut node, _) = lan_node(config());
    run_until(&mut node, 5_000);
    let other = peer(2);
    let out = heard(&mut node, 5_000, "10.0.0.2:5000", announce(&other, "0.0.0.0:7402", WALL + 5_000));
    assert_eq!(dials(&out), vec!["10.0.0.2:7402".parse().expect("addr")], "the source IP, the announced port");
    assert!(out.contains(&Output::Event(Event::LanPeer {
        node: other.node_id(),
        addr: "10.0.0.2:7402".parse().expect("addr")
    })));
    let answer = run_until(&mut node, 6_000);
    assert_eq!(announcements(&answer).len(), 1, "the newcomer is answered");
    let lan = node.status(at(6_000)).lan;
    assert_eq!((lan.accepted, lan.new_peers, lan.rejected, lan.nodes), (1, 1, 0, 1));
    // Heard again: newer, same address: nothing new to dial, no second answer.
    let out = heard(&mut node, 7_000, "10.0.0.2:5000", announce(&other, "0.0.0.0:7402", WALL + 7_000));
    assert!(dials(&out).is_empty());
    assert!(announcements(&run_until(&mut node, 9_000)).is_empty());
    assert_eq!(node.known_peers(), 1);
}

#[test]
fn bad_announcements_are_refused_counted_and_never_dialled() {
    let (mut node, _) = lan_node(config());
    let other = peer(2);
    let good = announce(&other, "0.0.0.0:7402", WALL + 100);
    let mut tampered = good.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let other_net = Announcement::build(&other, "elsewhere", "1.0.0", "0.0.0.0:7402".parse().expect("a"), WALL + 100);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("10.0.0.2:5000", b"GET / HTTP/1.1".to_vec(), "not a mynet announcement"),
        ("10.0.0.2:5000", vec![0; 2000], "larger than"),
        ("10.0.0.2:5000", tampered, "bad signature"),
        ("10.0.0.2:5000", other_net.encode(), "another network"),
        ("10.0.0.2:5000", announce(&other, "0.0.0.0:7402", WALL + 100 + 3_600_000), "timestamp"),
        ("10.0.0.2:5000", announce(&other, "127.0.0.1:7402", WALL + 100), "no address"),
    ];
    for (i, (from, bytes, why)) in cases.into_iter().enumerate() {
        let out = heard(&mut node, 100, from, bytes);
        assert!(dials(&out).is_empty(), "case {i}");
        let lan = node.status(at(100)).lan;
        assert_eq!(lan.rejected, i as u64 + 1);
        assert!(lan.last_rejection.as_deref().unwrap_or_default().contains(why), "{i}: {:?}", lan.last_rejection);
    }
    // Our own, looped back by multicast: ignored, not refused.
    let own = Announcement::build(&peer(1), "mynet-dev", mynet_core::PROTOCOL_VERSION, config().listen_addr, WALL);
    heard(&mut node, 100, "10.0.0.1:5000", own.encode());
    // The good one is taken; the same bytes again (a second interface, the other group) are
    // a duplicate, not a refusal; an older one is a replay.
    assert_eq!(dials(&heard(&mut node, 100, "10.0.0.2:5000", good.clone())).len(), 1);
    heard(&mut node, 100, "10.0.0.2:5000", good);
    let lan = node.status(at(100)).lan;
    assert_eq!((lan.heard, lan.accepted, lan.rejected, lan.duplicates), (9, 1, 6, 1));
    heard(&mut node, 100, "10.0.0.2:5000", announce(&other, "0.0.0.0:7402", WALL + 99));
    let lan = node.status(at(100)).lan;
    assert_eq!(lan.rejected, 7);
    assert!(lan.last_rejection.unwrap_or_default().contains("older than"));
    // Announced link-local IPv6: no scope survives the log, so it is not dialled.
    let link_local = announce(&peer(3), "[fe80::3]:7401", WALL + 100);
    assert!(dials(&heard(&mut node, 100, "[fd00::3]:5000", link_local)).is_empty());
}

#[test]
fn an_answer_to_a_newcomer_does_not_replace_the_early_repeats() {
    let (mut node, _) = lan_node(config());
    let mut times = Vec::new();
    let mut heard_newcomer = false;
    while let Some((at_mono, _)) = node.poll_timeout() {
        let now = at_mono.0 / 1000;
        if now > 70_000 {
            break;
        }
        if now >= 1_500 && !heard_newcomer {
            heard_newcomer = true;
            heard(&mut node, 1_500, "10.0.0.2:5000", announce(&peer(2), "0.0.0.0:7402", WALL + 1_500));
            continue;
        }
        node.handle(mynet_core::Time::new(at_mono.0, WALL + now), Input::Tick);
        if !announcements(&drain(&mut node)).is_empty() {
            times.push(now);
        }
    }
    assert_eq!(times, vec![1_000, 2_000, 3_000, 63_000], "the answer at 2 s, one second after the last");
}

#[test]
fn a_flood_of_announcements_is_dropped_unread_past_the_window() {
    let (mut node, _) = lan_node(Config { target_peers: 1, ..config() });
    for i in 0..HEARD_PER_WINDOW + 50 {
        let secret: [u8; 32] = [(i % 250) as u8 + 2, (i / 250) as u8 + 1, 0, 0].repeat(8).try_into().expect("32");
        let id = Identity::from_secret_bytes(&secret);
        heard(&mut node, 100, "10.0.0.2:5000", announce(&id, "0.0.0.0:7402", WALL + 100));
    }
    let lan = node.status(at(100)).lan;
    assert_eq!((lan.accepted, lan.rate_limited), (u64::from(HEARD_PER_WINDOW), 50));
    assert!(lan.nodes as usize <= mynet_core::lan::HEARD_NODES_MAX);
    // Past HEARD_NODES_MAX nodes, the longest unheard are forgotten.
    for w in 1..=6u64 {
        for i in 0..HEARD_PER_WINDOW {
            let secret: [u8; 32] =
                [(i % 250) as u8 + 2, (i / 250) as u8 + 1, w as u8, 7].repeat(8).try_into().expect("32");
            let at_ms = 100 + w * 10_000;
            heard(
                &mut node,
                at_ms,
                "10.0.0.2:5000",
                announce(&Identity::from_secret_bytes(&secret), "0.0.0.0:7402", WALL + at_ms),
            );
        }
    }
    assert_eq!(node.status(at(60_100)).lan.nodes as usize, mynet_core::lan::HEARD_NODES_MAX);
    // The next window examines announcements again.
    heard(&mut node, 70_200, "10.0.0.3:5000", announce(&peer(3), "0.0.0.0:7402", WALL + 70_200));
    assert_eq!(node.status(at(70_200)).lan.accepted, 7 * u64::from(HEARD_PER_WINDOW) + 1);
}
