//! Reconciliation through the node's one door: publishing, refusing bad metadata (and who is
//! blamed), bounds, and answers to a hand-made peer (SPEC R8).

mod common;

use common::*;
use mynet_core::content::ContentId;
use mynet_core::reconcile::meta::{FUTURE_MAX_MS, Invalid, Meta, Signed};
use mynet_core::reconcile::proto::{CELLS_PER_MESSAGE, Refusal, Request, Response};
use mynet_core::wire::{self, Message};
use mynet_core::{CloseReason, Config, ConnId, Identity, Input, Node, Output, RequestId, Violation};

fn ask(node: &mut Node, conn: ConnId, ms: u64, id: u32, request: Request) -> Vec<Output> {
    let message = Message::Request { id: RequestId(id), body: wire::Request::Reconcile(request) };
    node.handle(at(ms), Input::Received { conn, bytes: frame(&message) });
    drain(node)
}

/// The node's reconciliation answer to request `id` among `outputs`.
fn answer(outputs: &[Output], conn: ConnId, id: u32) -> Option<Response> {
    outputs.iter().find_map(|o| match o {
        Output::Send { conn: c, bytes } if *c == conn => {
            match wire::decode_body(&bytes[wire::FRAME_HEADER_LEN..]).ok()? {
                Message::Response { id: got, body: wire::Response::Reconcile(r) } if got == RequestId(id) => Some(r),
                _ => None,
            }
        }
        _ => None,
    })
}

fn meta_by(author: &Identity, n: u8, version: u64) -> Signed {
    Meta::new(ContentId([n; 32]), 4096, version, author.public_key()).sign(author)
}

#[test]
fn an_added_item_is_published_signed_by_the_node_and_an_edit_is_a_newer_version() {
    let mut node = first_node(Config::default());
    let id = ContentId([3; 32]);
    node.handle(at(5), Input::Added { id, size: 10_000 });
    drain(&mut node);
    let first = node.reconcile().catalogue().get(&id).cloned().expect("published");
    assert_eq!(first.meta.author, node.identity().public_key());
    assert_eq!(first.meta.version, WALL + 5);
    assert_eq!(first.validate(&[], WALL + 5), Ok(()));
    node.handle(at(5), Input::Describe { id, size: 10_000, tags: vec!["cover".into()] });
    drain(&mut node);
    let second = node.reconcile().catalogue().get(&id).cloned().expect("edited");
    assert_eq!(second.meta.version, WALL + 6, "same millisecond: still a newer version");
    assert!(second.beats(&first));
    assert_eq!(node.reconcile().catalogue().len(), 1);
}

#[test]
fn badly_signed_metadata_is_refused_and_the_sender_closed() {
    let (mut node, conn, peer, _) = established_peer();
    let mut forged = meta_by(&peer, 4, WALL);
    forged.meta.size = 8192;
    forged.meta.pieces = 1;
    let outputs = ask(&mut node, conn, 10, 50, Request::Offer { metas: vec![forged] });
    assert_eq!(answer(&outputs, conn, 50), Some(Response::Taken { refused: 1, reason: Some(Invalid::BadSignature) }));
    assert_eq!(closed_reason(&outputs, conn), Some(CloseReason::Protocol(Violation::ItemMeta(Invalid::BadSignature))));
    assert!(node.reconcile().catalogue().is_empty());
}

#[test]
fn metadata_from_a_key_that_may_not_publish_is_refused_and_penalised() {
    let publisher = Identity::from_secret_bytes(&[40; 32]);
    let config = Config { publishers: vec![publisher.public_key()], ..Config::default() };
    let (mut node, conn, peer, _) = established_peer_with(config);
    let outputs = ask(&mut node, conn, 10, 50, Request::Offer { metas: vec![meta_by(&peer, 4, WALL)] });
    assert_eq!(answer(&outputs, conn, 50), Some(Response::Taken { refused: 1, reason: Some(Invalid::NotPublisher) }));
    assert!(node.reconcile().catalogue().is_empty());
    let score = node.state_json()["penalties"]["scores"].to_string();
    assert!(score.contains(&peer.node_id().to_string()), "penalised: {score}");
    // A publisher's metadata, forwarded by the same peer, is taken.
    let outputs = ask(&mut node, conn, 11, 51, Request::Offer { metas: vec![meta_by(&publisher, 5, WALL)] });
    assert_eq!(answer(&outputs, conn, 51), Some(Response::Taken { refused: 0, reason: None }));
    assert_eq!(node.reconcile().catalogue().len(), 1);
    assert_eq!(node.reconcile().stats().refused_not_publisher, 1);
}

#[test]
fn a_version_from_the_future_waits_until_it_is_due_and_nobody_is_blamed() {
    let (mut node, conn, peer, _) = established_peer();
    let ahead = WALL + 10 + FUTURE_MAX_MS + 60_000;
    let outputs = ask(&mut node, conn, 10, 50, Request::Offer { metas: vec![meta_by(&peer, 4, ahead)] });
    assert_eq!(answer(&outputs, conn, 50), Some(Response::Taken { refused: 1, reason: Some(Invalid::Future) }));
    assert_eq!(closed_reason(&outputs, conn), None);
    assert!(node.reconcile().catalogue().is_empty());
    let due = 10 + 60_000;
    let outputs = ask(&mut node, conn, due, 51, Request::Offer { metas: vec![meta_by(&peer, 4, ahead)] });
    assert_eq!(answer(&outputs, conn, 51), Some(Response::Taken { refused: 0, reason: None }));
    assert_eq!(node.reconcile().catalogue().len(), 1);
}

#[test]
fn the_conflict_rule_keeps_the_winner_whatever_the_order() {
    let (a, b) = (Identity::from_secret_bytes(&[41; 32]), Identity::from_secret_bytes(&[42; 32]));
    let versions = [meta_by(&a, 6, WALL), meta_by(&b, 6, WALL), meta_by(&a, 6, WALL - 1)];
    let winner = versions.iter().max_by_key(|v| v.order()).cloned().expect("three");
    for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
        let (mut node, conn, _, _) = established_peer();
        for (k, i) in order.iter().enumerate() {
            ask(&mut node, conn, 10 + k as u64, 60 + k as u32, Request::Offer { metas: vec![versions[*i].clone()] });
        }
        assert_eq!(node.reconcile().catalogue().get(&ContentId([6; 32])), Some(&winner), "order {order:?}");
    }
}

#[test]
fn cells_past_the_index_are_refused_with_the_reason_and_oversized_asks_close() {
    let (mut node, conn, _, _) = established_peer();
    let len = node.reconcile().catalogue().set().sketch().len() as u32;
    let outputs = ask(&mut node, conn, 10, 50, Request::Cells { from: len, to: len + 10 });
    assert_eq!(answer(&outputs, conn, 50), Some(Response::Refused { reason: Refusal::BeyondIndex { len } }));
    assert_eq!(closed_reason(&outputs, conn), None);
    let outputs = ask(&mut node, conn, 11, 51, Request::Cells { from: 1, to: 2 + CELLS_PER_MESSAGE as u32 });
    assert!(matches!(closed_reason(&outputs, conn), Some(CloseReason::Wire(_))));
}

#[test]
fn equal_catalogues_answer_equal_and_a_difference_differs() {
    let (mut node, conn, _, _) = established_peer();
    let empty = mynet_core::reconcile::catalogue::KeySet::default();
    let outputs = ask(&mut node, conn, 10, 50, empty.start());
    assert_eq!(answer(&outputs, conn, 50), Some(Response::Equal));
    node.handle(at(11), Input::Added { id: ContentId([8; 32]), size: 100 });
    drain(&mut node);
    let outputs = ask(&mut node, conn, 12, 51, empty.start());
    // One item apart: cell 0 alone settles it, no counts needed.
    assert!(
        matches!(answer(&outputs, conn, 51), Some(Response::Differs { count: 1, ref counts, .. }) if counts.is_empty())
    );
}

/// The reconciliation requests among `outputs` sent on `conn`.
fn reconcile_requests(outputs: &[Output], conn: ConnId) -> Vec<(RequestId, Request)> {
    requests_on(outputs, conn)
        .into_iter()
        .filter_map(|(id, body)| match body {
            wire::Request::Reconcile(r) => Some((id, r)),
            _ => None,
        })
        .collect()
}

/// An empty node joining a peer whose catalogue is larger than a fetch queue lists the peer's
/// keys once, at the pace it fetches their metadata. Before, the bulk path listed everything,
/// the queue kept its first 50,000 keys and dropped the rest, and the next round listed the
/// whole set again: about 20 listings of 40 MB each for an empty node joining a network of a
/// million items.
#[test]
fn an_empty_node_lists_a_large_catalogue_once_at_the_pace_it_fetches() {
    use mynet_core::reconcile::catalogue::Catalogue;
    use mynet_core::reconcile::proto::KEYS_PER_PAGE;
    const ITEMS: u32 = mynet_core::reconcile::QUEUE_MAX as u32 + 10_000;
    let author = Identity::from_secret_bytes(&[43; 32]);
    let mut theirs = Catalogue::default();
    for n in 0..ITEMS {
        let id = *blake3::hash(&n.to_le_bytes()).as_bytes();
        theirs.put(Meta::new(ContentId(id), 4096, 1_000 + u64::from(n), author.public_key()).sign(&author));
    }

    let mut node = first_node(Config::default());
    // A peer with a higher id, so the node leads the rounds.
    let peer = (2..=255u8)
        .map(|k| Identity::from_secret_bytes(&[k; 32]))
        .find(|p| p.node_id() > node.node_id())
        .expect("a higher id");
    let conn = ConnId::inbound(1);
    let binding = mynet_core::handshake::Binding([5; 32]);
    open(&mut node, conn, peer_addr(2), binding);
    node.handle(at(2), Input::Received { conn, bytes: hello_from(&peer, binding, "mynet-dev", "1.0.0", WALL) });
    let mut waiting = reconcile_requests(&drain(&mut node), conn);
    assert!(matches!(waiting.as_slice(), [(_, Request::Start { .. })]), "the lower id starts rounds");
    let mut ms = 3;
    let mut pages = std::collections::BTreeMap::<Option<ContentId>, u32>::new();
    let mut held_gets = Vec::new();
    let mut answer_gets = false;
    let mut stalled_at = None;
    loop {
        if waiting.is_empty() {
            if answer_gets || held_gets.is_empty() {
                break;
            }
            // The node stopped listing with its queue full: from here on, serve its fetches.
            let listed: u32 = pages.values().sum::<u32>() * KEYS_PER_PAGE as u32;
            stalled_at = Some(listed);
            answer_gets = true;
            waiting = std::mem::take(&mut held_gets);
        }
        let mut next = Vec::new();
        for (id, request) in std::mem::take(&mut waiting) {
            let response = match &request {
                Request::Get { .. } if !answer_gets => {
                    held_gets.push((id, request.clone()));
                    continue;
                }
                Request::Get { ids } => theirs.answer_get(ids),
                Request::Keys { after } => {
                    *pages.entry(*after).or_default() += 1;
                    theirs.set().answer(&request).expect("keys")
                }
                other => theirs.set().answer(other).expect("a round request"),
            };
            ms += 1;
            let bytes = frame(&Message::Response { id, body: wire::Response::Reconcile(response) });
            node.handle(at(ms), Input::Received { conn, bytes });
            let outputs = drain(&mut node);
            assert_eq!(closed_reason(&outputs, conn), None);
            next.extend(reconcile_requests(&outputs, conn));
        }
        waiting = next;
    }
    let stalled_at = stalled_at.expect("the node paused its listing for its fetches");
    assert!(
        stalled_at < ITEMS && stalled_at as usize <= mynet_core::reconcile::QUEUE_MAX + KEYS_PER_PAGE,
        "listed {stalled_at} keys before fetching"
    );
    assert!(pages.values().all(|n| *n == 1), "a page was listed twice: {pages:?}");
    assert_eq!(pages.len(), (ITEMS as usize).div_ceil(KEYS_PER_PAGE));
    let status = node.status(at(ms));
    assert_eq!(status.reconcile.items, u64::from(ITEMS));
    assert_eq!(status.reconcile.digest, mynet_core::hex::encode(&theirs.digest()));
}

/// The catalogue and its index are part of the node's state: a restart from a snapshot has
/// the same items, digest and cells, without rebuilding them from the metadata.
#[test]
fn the_catalogue_and_its_index_survive_a_restart() {
    let mut node = first_node(Config::default());
    for n in 0..40u8 {
        node.handle(at(10 + u64::from(n)), Input::Added { id: ContentId([n + 1; 32]), size: 100 });
        drain(&mut node);
    }
    let before = node.status(at(100)).reconcile;
    assert_eq!(before.items, 40);
    let restored = Node::restore(Identity::from_secret_bytes(&[1; 32]), &node.snapshot()).expect("restores");
    let after = restored.status(at(100)).reconcile;
    assert_eq!((after.items, &after.digest, after.index_cells), (before.items, &before.digest, before.index_cells));
    assert_eq!(restored.reconcile().catalogue(), node.reconcile().catalogue(), "metadata and cells alike");
}
