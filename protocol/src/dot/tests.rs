use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;

fn model(set: &RangeSet) -> BTreeSet<u64> {
    set.ranges().flat_map(|(s, e)| s..=e).collect()
}

proptest! {
    #[test]
    fn range_set_matches_a_plain_set(ops in prop::collection::vec((0u64..60, 0u64..4), 0..40)) {
        let mut set = RangeSet::new();
        let mut reference = BTreeSet::new();
        for (start, width) in ops {
            set.insert_range(start, start + width);
            reference.extend(start..=start + width);
            // Invariant: sorted, disjoint, non-adjacent.
            let ranges: Vec<_> = set.ranges().collect();
            for pair in ranges.windows(2) {
                prop_assert!(pair[0].1 + 1 < pair[1].0, "{:?}", ranges);
            }
        }
        prop_assert_eq!(model(&set), reference.clone());
        prop_assert_eq!(set.len(), reference.len() as u64);
        for x in 0..70 {
            prop_assert_eq!(set.contains(x), reference.contains(&x));
        }
        let expected_contiguous = (1..).take_while(|x| reference.contains(x)).last().unwrap_or(0);
        prop_assert_eq!(set.contiguous(), expected_contiguous);
    }

    #[test]
    fn missing_from_is_set_difference(
        a in prop::collection::vec((0u64..50, 0u64..5), 0..12),
        b in prop::collection::vec((0u64..50, 0u64..5), 0..12),
    ) {
        let build = |v: &[(u64, u64)]| {
            let mut s = RangeSet::new();
            for &(x, w) in v { s.insert_range(x, x + w); }
            s
        };
        let (sa, sb) = (build(&a), build(&b));
        let missing: BTreeSet<u64> =
            sa.missing_from(&sb).into_iter().flat_map(|(s, e)| s..=e).collect();
        let expected: BTreeSet<u64> = model(&sb).difference(&model(&sa)).copied().collect();
        prop_assert_eq!(missing, expected.clone());
        prop_assert_eq!(sa.is_superset(&sb), expected.is_empty());
    }
}

#[test]
fn gaps_lists_holes_from_one() {
    let mut set = RangeSet::new();
    set.insert_range(3, 4);
    set.insert(7);
    assert_eq!(set.gaps(), vec![(1, 2), (5, 6)]);
    assert_eq!(set.contiguous(), 0);
    set.insert_range(1, 2);
    assert_eq!(set.contiguous(), 4);
}

#[test]
fn digest_is_of_the_set_not_its_history() {
    let a = ActorId(1);
    let mut x = DotSet::new();
    x.insert(Dot::new(a, 2));
    x.insert(Dot::new(a, 1));
    let mut y = DotSet::new();
    y.insert_range(a, 1, 2);
    assert_eq!(x.digest(), y.digest());
    y.insert(Dot::new(ActorId(2), 1));
    assert_ne!(x.digest(), y.digest());
}

#[test]
fn decoding_normalises_dot_sets() {
    use crate::codec::{decode_stored, encode_stored};
    let a = ActorId(5);
    // {5: []} is the empty set; {5: [[1,2]], 5: [[7,8]]} is their union.
    let empty: DotSet = decode_stored(&encode_stored(
        &[(a, Vec::<(u64, u64)>::new())]
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
    ))
    .expect("decodes");
    assert_eq!(empty, DotSet::new());
    assert!(empty.is_empty() && DotSet::new().is_superset(&empty));
    assert_eq!(empty.digest(), DotSet::new().digest());
    let bytes = [
        0xa2, 0x05, 0x81, 0x82, 0x01, 0x02, 0x05, 0x81, 0x82, 0x07, 0x08,
    ];
    let twice: DotSet = decode_stored(&bytes).expect("decodes");
    let mut expected = DotSet::new();
    expected.insert_range(a, 1, 2);
    expected.insert_range(a, 7, 8);
    assert_eq!(twice, expected);
}

#[test]
fn lengths_saturate() {
    let mut full = RangeSet::new();
    full.insert_range(0, u64::MAX);
    assert_eq!(full.len(), u64::MAX);
    let mut set = DotSet::new();
    set.insert_range(ActorId(1), 0, u64::MAX - 1);
    set.insert_range(ActorId(2), 0, u64::MAX - 1);
    assert_eq!(set.len(), u64::MAX);
}

#[test]
fn comparison_per_actor() {
    let a = ActorId(9);
    let mut x = DotSet::new();
    let mut y = DotSet::new();
    x.insert_range(a, 1, 5);
    y.insert_range(a, 1, 3);
    assert_eq!(x.compare_actor(&y, a), Comparison::Ahead);
    assert_eq!(y.compare_actor(&x, a), Comparison::Behind);
    y.insert(Dot::new(a, 9));
    assert_eq!(x.compare_actor(&y, a), Comparison::Concurrent);
    assert_eq!(x.compare_actor(&x.clone(), a), Comparison::Equal);
}
