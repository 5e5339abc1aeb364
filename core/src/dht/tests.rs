//! The lookup state machine against an oracle network: convergence, dead peers, disjoint
//! paths. (Whole nodes run lookups in the simulator: `sim/tests/dht.rs`.)

use core::net::SocketAddr;
use std::collections::BTreeSet;

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use super::lookup::{Lookup, Purpose, State};
use super::table::{K, Table, distance};
use crate::discovery::PeerRecord;
use crate::id::{NodeId, PublicKey};
use crate::time::Mono;

/// Nodes with random ids (keys are not checked here) and each one's routing table built from
/// every other node, as a settled network would have it.
fn network(n: usize, seed: u64) -> (Vec<PeerRecord>, Vec<Table>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let records: Vec<PeerRecord> = (0..n)
        .map(|i| {
            let mut id = [0u8; 32];
            rng.fill_bytes(&mut id);
            let addr = SocketAddr::from(([11, (i >> 8) as u8, i as u8, 1], 7401));
            PeerRecord { node_id: NodeId(id), address: addr, public_key: PublicKey([0; 32]) }
        })
        .collect();
    let tables = records
        .iter()
        .map(|me| {
            let mut t = Table::new(me.node_id);
            for other in &records {
                // One /24 per node: the caps do not bind.
                t.verified(other, Some(50), Mono(0));
            }
            t
        })
        .collect();
    (records, tables)
}

fn closest(records: &[PeerRecord], target: &[u8; 32], n: usize) -> Vec<NodeId> {
    let mut all: Vec<&PeerRecord> = records.iter().collect();
    all.sort_by_key(|r| distance(&r.node_id.0, target));
    all.into_iter().take(n).map(|r| r.node_id).collect()
}

/// Runs a lookup from node `from`: every waiting candidate answers from its table at once,
/// except the `dead`, whose contacts fail.
fn run(
    records: &[PeerRecord],
    tables: &[Table],
    from: usize,
    target: [u8; 32],
    purpose: Purpose,
    dead: &BTreeSet<NodeId>,
) -> Lookup {
    let index = |id: &NodeId| records.iter().position(|r| r.node_id == *id);
    let seeds: Vec<PeerRecord> = tables[from].closest(&target, K, |_| true).into_iter().map(|e| e.record()).collect();
    let mut lookup = Lookup::new(target, purpose, 1, &seeds, Mono(0));
    let mut now = Mono(0);
    for _ in 0..1_000 {
        let asked = lookup.next(now, |_| now.plus_ms(800));
        if asked.is_empty() && lookup.done() {
            return lookup;
        }
        now = now.plus_ms(100);
        for r in asked {
            if dead.contains(&r.node_id) {
                assert!(lookup.failed(&r.node_id));
                continue;
            }
            let Some(i) = index(&r.node_id) else { continue };
            let answer: Vec<PeerRecord> = tables[i]
                .closest(&target, K, |e| e.id != records[from].node_id)
                .into_iter()
                .map(|e| e.record())
                .collect();
            lookup.answered(&r.node_id, &answer, now);
        }
        if lookup.done() {
            return lookup;
        }
    }
    panic!("lookup did not end");
}

#[test]
fn lookups_converge_on_the_k_closest() {
    let (records, tables) = network(300, 7);
    for t in 0..20 {
        let target = records[(t * 13) % records.len()].node_id.0;
        let lookup = run(&records, &tables, t + 1, target, Purpose::Node, &BTreeSet::new());
        assert!(lookup.succeeded(), "target {t} reached: {lookup:?}");
        assert!(lookup.named_at_hop.is_some_and(|h| h <= 3), "{:?}", lookup.named_at_hop);
        let random = {
            let mut r = ChaCha8Rng::seed_from_u64(t as u64);
            let mut id = [0u8; 32];
            r.fill_bytes(&mut id);
            id[0] ^= 0x5a;
            id
        };
        let lookup = run(&records, &tables, t, random, Purpose::Discover, &BTreeSet::new());
        let want: Vec<NodeId> =
            closest(&records, &random, K).into_iter().filter(|id| *id != records[t].node_id).collect();
        let got: Vec<NodeId> = lookup.closest_answered(K).iter().map(|r| r.node_id).collect();
        assert_eq!(got.len(), K, "{lookup:?}");
        assert_eq!(got[..K - 1], want[..K - 1], "a random-id lookup ends at the true closest nodes");
    }
}

#[test]
fn dead_peers_fail_and_the_lookup_goes_on() {
    let (records, tables) = network(300, 8);
    let dead: BTreeSet<NodeId> = records.iter().step_by(5).map(|r| r.node_id).collect();
    let mut found = 0;
    for t in 0..40usize {
        let from = 1 + t * 5 % 299;
        let target = records[(t * 7 + 2) % records.len()].node_id;
        if dead.contains(&target) || dead.contains(&records[from].node_id) {
            continue;
        }
        let lookup = run(&records, &tables, from, target.0, Purpose::Node, &dead);
        found += usize::from(lookup.succeeded());
        assert!(lookup.failed as usize <= lookup.queried as usize);
    }
    assert!(found > 20, "{found}");
}

#[test]
fn disjoint_paths_never_share_a_node() {
    let (records, tables) = network(200, 9);
    let target = records[17].node_id.0;
    let seeds: Vec<PeerRecord> = tables[3].closest(&target, K, |_| true).into_iter().map(|e| e.record()).collect();
    let mut lookup = Lookup::new(target, Purpose::Providers, 2, &seeds, Mono(0));
    let mut asked_by_path: Vec<BTreeSet<NodeId>> = vec![BTreeSet::new(); 2];
    for _ in 0..50 {
        let asked = lookup.next(Mono(0), |_| Mono(1_000));
        if asked.is_empty() {
            break;
        }
        for r in asked {
            let path = usize::from(lookup.path_of(&r.node_id).expect("claimed"));
            assert!(asked_by_path[path].insert(r.node_id));
            let i = records.iter().position(|x| x.node_id == r.node_id).expect("known");
            let answer: Vec<PeerRecord> =
                tables[i].closest(&target, K, |_| true).into_iter().map(|e| e.record()).collect();
            lookup.answered(&r.node_id, &answer, Mono(1));
        }
    }
    assert!(asked_by_path[0].is_disjoint(&asked_by_path[1]));
    assert!(!asked_by_path[0].is_empty() && !asked_by_path[1].is_empty());
    assert!(lookup.done());
    let _ = State::New;
}

#[test]
fn contact_deadlines_scale_with_round_trips() {
    assert_eq!(super::contact_ms(10), super::CONTACT_MIN_MS);
    assert_eq!(super::contact_ms(100), 800);
    assert_eq!(super::contact_ms(10_000), super::CONTACT_MAX_MS);
}
