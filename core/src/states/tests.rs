use super::*;

#[test]
fn classification_follows_the_seed() {
    let mut tags = vec!["cover".to_string()];
    assert_eq!(classify(true, true, &mut tags), ItemState::Encrypted, "the encrypted flag wins");
    assert_eq!(tags, vec!["cover".to_string()]);
    assert_eq!(classify(false, false, &mut tags), ItemState::Decrypted);
    assert_eq!(classify(false, true, &mut tags), ItemState::Preview);
    assert_eq!(tags, vec!["cover".to_string(), "preview".to_string()], "a preview missing its tag gets it");
    assert_eq!(classify(false, false, &mut tags), ItemState::Preview, "the tag alone makes a preview");
}

#[test]
fn key_flags_cover_missing_expired_revoked_and_valid() {
    let record = |from, until, revoked| KeyRecord {
        key_id: "k".into(),
        algorithm: "a".into(),
        valid_from_ms: from,
        valid_until_ms: until,
        revoked,
    };
    assert_eq!(key_flag(None, 5), Some(Flag::KeyMissing));
    assert_eq!(key_flag(Some(&record(0, None, false)), 5), None);
    let later = 10 + crate::reconcile::meta::FUTURE_MAX_MS;
    assert_eq!(key_flag(Some(&record(later, None, false)), 5), Some(Flag::KeyExpired), "not valid yet");
    assert_eq!(key_flag(Some(&record(10, None, false)), 5), None, "a publisher's clock a little ahead is tolerated");
    assert_eq!(key_flag(Some(&record(0, Some(4), false)), 5), Some(Flag::KeyExpired));
    assert_eq!(key_flag(Some(&record(0, Some(5), false)), 5), None, "valid through its last millisecond");
    assert_eq!(key_flag(Some(&record(0, None, true)), 5), Some(Flag::KeyRevoked));
}

#[test]
fn decrypt_verdicts_are_bounded_and_keep_failures() {
    let mut states = States::default();
    let id = |n: u32| {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.to_le_bytes());
        ContentId(b)
    };
    assert!(states.checked(id(0), id(1), false));
    assert!(!states.checked(id(0), id(1), false), "known already");
    for n in 2..(CHECKS_MAX as u32 + 10) {
        states.checked(id(n), id(n + 1), true);
    }
    assert_eq!(states.count, CHECKS_MAX);
    assert_eq!(states.checks.values().map(BTreeMap::len).sum::<usize>(), CHECKS_MAX);
    assert_eq!(states.verdict(id(0), id(1)), Some(false), "the failure outlives successes");
}
