//! Content states and groups through the node's one door (SPEC R9): classification, key
//! records, the processors' flags, groups, the replication policy, and decrypt verdicts.

mod common;

use common::*;
use mynet_core::content::ContentId;
use mynet_core::reconcile::meta::{ItemState, key_record_id};
use mynet_core::states::{Flag, ItemEdit, KeyEdit};
use mynet_core::{Config, Event, Input, Node, Output};

const ALG: &str = "xchacha20poly1305-stream-64k";

fn add(node: &mut Node, ms: u64, n: u8, size: u64) -> ContentId {
    let id = ContentId([n; 32]);
    node.handle(at(ms), Input::Added { id, size });
    drain(node);
    id
}

fn edit(id: ContentId, size: u64) -> ItemEdit {
    ItemEdit { id, size, key_id: None, plain_hash: None, tags: Vec::new(), group: None, relation: None }
}

fn key(node: &mut Node, ms: u64, key_id: &str, valid_until_ms: Option<u64>, revoked: bool) {
    let edit = KeyEdit { key_id: key_id.into(), algorithm: ALG.into(), valid_until_ms, revoked };
    node.handle(at(ms), Input::KeyEdit(edit));
    drain(node);
}

/// An encrypted original, its decrypted form and two previews, as one group.
fn group_of_four(node: &mut Node, plain_ok: bool, big_preview: bool) -> [ContentId; 4] {
    let (root, dec, p1, p2) = (ContentId([1; 32]), ContentId([2; 32]), ContentId([3; 32]), ContentId([4; 32]));
    for (n, size) in [(1, 10_000), (2, 9_000), (3, 500), (4, if big_preview { 20_000 } else { 700 })] {
        add(node, 1, n, size);
    }
    let mut original = edit(root, 10_000);
    original.key_id = Some("album".into());
    original.plain_hash = Some(if plain_ok { dec.0 } else { [9; 32] });
    original.group = Some(root);
    node.handle(at(2), Input::Edit(original));
    for (child, size, relation) in [(dec, 9_000, "decrypted"), (p1, 500, "preview"), (p2, 700, "preview")] {
        let mut e = edit(child, size);
        e.group = Some(root);
        e.relation = Some(relation.into());
        node.handle(at(3), Input::Edit(e));
    }
    drain(node);
    [root, dec, p1, p2]
}

#[test]
fn states_are_classified_as_the_seed_does_and_a_preview_gets_its_tag() {
    let mut node = first_node(Config::default());
    let [root, dec, p1, _] = group_of_four(&mut node, true, false);
    let meta = |node: &Node, id: ContentId| node.reconcile().catalogue().get(&id).expect("published").meta.clone();
    let meta_of = |id: ContentId| meta(&node, id);
    assert_eq!(meta_of(root).state, ItemState::Encrypted);
    assert_eq!(meta_of(root).key_id.as_deref(), Some("album"));
    assert_eq!(meta_of(dec).state, ItemState::Decrypted);
    assert_eq!(meta_of(p1).state, ItemState::Preview);
    assert_eq!(meta_of(p1).tags, vec!["preview".to_string()], "declared a preview: tagged");
    let relations: Vec<(String, ContentId)> =
        meta_of(root).relations.iter().map(|r| (r.kind.clone(), r.child)).collect();
    // Tagged `preview` without a relation: still a preview.
    let mut tagged = edit(ContentId([7; 32]), 10);
    tagged.tags = vec!["preview".into()];
    add(&mut node, 4, 7, 10);
    node.handle(at(5), Input::Edit(tagged));
    drain(&mut node);
    assert_eq!(meta(&node, ContentId([7; 32])).state, ItemState::Preview);
    // The root names its members, each with its relation.
    assert_eq!(relations.len(), 3);
    assert!(relations.contains(&("decrypted".into(), dec)));
}

#[test]
fn an_encrypted_item_is_kept_and_flagged_until_its_key_record_is_valid() {
    let mut node = first_node(Config::default());
    let [root, ..] = group_of_four(&mut node, true, false);
    let flags =
        |node: &Node| node.group(&root).expect("group").members.into_iter().find(|m| m.root).expect("root").flags;
    assert_eq!(flags(&node), vec![Flag::KeyMissing], "no record names the key yet");
    key(&mut node, 10, "album", Some(WALL + 1_000), false);
    let record = node.reconcile().catalogue().get(&key_record_id("album")).expect("record").clone();
    assert!(record.meta.key.as_ref().is_some_and(|k| !k.revoked && k.algorithm == ALG));
    assert_eq!(flags(&node), Vec::<Flag>::new(), "valid now");
    node.handle(at(2_000), Input::Tick);
    drain(&mut node);
    assert_eq!(flags(&node), vec![Flag::KeyExpired], "past valid_until");
    key(&mut node, 2_001, "album", None, true);
    assert_eq!(flags(&node), vec![Flag::KeyRevoked]);
    key(&mut node, 2_002, "album", None, false);
    assert_eq!(flags(&node), vec![Flag::KeyRevoked], "a revoked key stays revoked");
    assert!(node.content().holds(&root), "flagged, never dropped");
    let status = node.status(at(2_003));
    assert_eq!(status.states.by_flag.get("key_revoked"), Some(&1));
    assert_eq!(status.states.by_state.get("encrypted"), Some(&1));
    assert_eq!(status.states.by_state.get("preview"), Some(&2));
    assert_eq!(status.states.key_records, 1);
}

#[test]
fn a_wrong_decrypted_form_and_an_oversized_preview_are_flagged() {
    let mut node = first_node(Config::default());
    let [root, dec, _, p2] = group_of_four(&mut node, false, true);
    let group = node.group(&dec).expect("found from a member");
    assert_eq!(group.root, root);
    assert!(group.members[0].root, "root first");
    assert_eq!(group.members.len(), 4);
    assert!(group.members.iter().all(|m| m.held && m.known));
    let flags_of = |id: ContentId| group.members.iter().find(|m| m.id == id).expect("member").flags.clone();
    assert_eq!(flags_of(dec), vec![Flag::RelationMismatch], "the signed plaintext hash is another");
    assert_eq!(flags_of(p2), vec![Flag::PreviewNotSmaller]);
}

#[test]
fn a_failed_decrypt_check_flags_the_relation_and_penalises_the_forms_author() {
    let mut node = first_node(Config::default());
    let [root, dec, ..] = group_of_four(&mut node, true, false);
    node.handle(at(20), Input::RelationChecked { parent: root, child: dec, ok: true });
    assert!(drain(&mut node).is_empty(), "a passing check says nothing");
    node.handle(at(21), Input::RelationChecked { parent: root, child: dec, ok: false });
    let outputs = drain(&mut node);
    assert!(outputs.contains(&Output::Event(Event::RelationMismatch { parent: root, child: dec })), "{outputs:?}");
    let flags = node.group(&root).expect("group").members.into_iter().find(|m| m.id == dec).expect("dec").flags;
    assert_eq!(flags, vec![Flag::RelationMismatch]);
}

#[test]
fn edits_naming_an_unknown_root_are_refused_with_a_reason() {
    let mut node = first_node(Config::default());
    let child = add(&mut node, 1, 5, 100);
    let mut e = edit(child, 100);
    e.group = Some(ContentId([6; 32]));
    node.handle(at(2), Input::Edit(e));
    let outputs = drain(&mut node);
    assert!(
        outputs.iter().any(|o| matches!(o, Output::Event(Event::EditRefused { id, .. }) if *id == child)),
        "{outputs:?}"
    );
    assert_eq!(node.reconcile().catalogue().get(&child).expect("still published").meta.group, None);
}

#[test]
fn replicate_states_and_key_records_shape_what_is_queued() {
    // A node that replicates previews only learns a group through a peer's catalogue.
    let config = Config { replicate_states: vec![ItemState::Preview], ..Config::default() };
    let (mut node, conn, _, _) = established_peer_with(config);
    let mut source = first_node(Config::default());
    let [root, dec, p1, p2] = group_of_four(&mut source, true, false);
    key(&mut source, 5, "album", None, false);
    let metas: Vec<_> = source.reconcile().catalogue().metas().values().cloned().collect();
    assert_eq!(metas.len(), 5, "four items and one key record");
    let message = mynet_core::wire::Message::Request {
        id: mynet_core::RequestId(1),
        body: mynet_core::wire::Request::Reconcile(mynet_core::reconcile::proto::Request::Offer { metas }),
    };
    node.handle(at(10), Input::Received { conn, bytes: frame(&message) });
    drain(&mut node);
    let queued: Vec<ContentId> = node.items().into_iter().map(|i| i.id).collect();
    assert!(queued.contains(&p1) && queued.contains(&p2), "previews queued: {queued:?}");
    assert!(!queued.contains(&root) && !queued.contains(&dec), "other states are not: {queued:?}");
    assert!(!queued.contains(&key_record_id("album")), "a key record is not content");
    assert!(node.reconcile().catalogue().get(&key_record_id("album")).is_some(), "but it converges");
}
