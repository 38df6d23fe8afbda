use std::time::Duration;

use pinmesh_protocol::sim::sim_cid;
use proptest::prelude::*;

use super::*;

fn cid(n: u64) -> Cid {
    sim_cid(n)
}

#[test]
fn new_work_goes_first_and_a_cid_is_queued_once() {
    let now = Instant::now();
    let mut queue = WorkQueue::default();
    queue.enqueue(cid(1), false, now);
    queue.enqueue(cid(2), true, now);
    queue.enqueue(cid(1), true, now); // already queued: stays where it is
    queue.enqueue(cid(3), false, now);
    assert_eq!(queue.counts().queued, 3);
    let order: Vec<Cid> = queue.drain();
    assert_eq!(order, vec![cid(2), cid(1), cid(3)]);
    assert_eq!(queue.counts(), Counts::default());
    assert_eq!(queue.pop(), None);
}

#[test]
fn a_change_while_running_reruns_once_the_worker_ends() {
    let now = Instant::now();
    let mut queue = WorkQueue::default();
    queue.enqueue(cid(1), true, now);
    let (popped, since) = queue.pop().expect("queued");
    assert_eq!((popped, since), (cid(1), now));
    queue.start(cid(1));
    queue.enqueue_now(cid(1), true, now);
    assert_eq!(queue.place(&cid(1)), Some(Place::Running { rerun: true }));
    assert_eq!(queue.counts().queued, 0, "not queued beside its worker");
    assert!(queue.finish(&cid(1)), "decided again");
    assert_eq!(queue.place(&cid(1)), None);
    assert!(!queue.finish(&cid(1)), "nothing runs any more");
}

#[test]
fn a_backoff_is_waited_out_unless_something_changes() {
    let now = Instant::now();
    let later = now + Duration::from_secs(5);
    let mut queue = WorkQueue::default();
    queue.retry_at(cid(1), later);
    queue.retry_at(cid(1), later + Duration::from_secs(1)); // replaces the first
    queue.retry_at(cid(2), later);
    assert_eq!(queue.counts().retrying, 2);
    assert_eq!(queue.next_retry(), Some(later));
    queue.enqueue(cid(1), true, now); // a listing: it waits
    assert_eq!(queue.counts().queued, 0);
    queue.promote_due(now);
    assert_eq!(queue.counts().retrying, 2, "none due yet");
    queue.enqueue_now(cid(1), true, now); // a change: now
    assert_eq!(queue.counts().retrying, 1);
    queue.promote_due(later);
    assert_eq!(queue.drain(), vec![cid(1), cid(2)]);
    assert_eq!(queue.next_retry(), None);
}

#[test]
fn unpins_waiting_for_synced_go_when_released_or_changed() {
    let now = Instant::now();
    let mut queue = WorkQueue::default();
    queue.wait_for_sync(cid(1));
    queue.wait_for_sync(cid(2));
    queue.enqueue(cid(1), true, now);
    assert_eq!(queue.counts().waiting_for_sync, 2);
    queue.enqueue_now(cid(2), true, now);
    assert_eq!(queue.counts().waiting_for_sync, 1);
    queue.release_sync_waiters(now);
    assert_eq!(queue.drain(), vec![cid(2), cid(1)]);
}

#[test]
fn a_node_back_up_queues_every_retry_at_once() {
    let now = Instant::now();
    let mut queue = WorkQueue::default();
    for n in 0..3 {
        queue.retry_at(cid(n), now + Duration::from_secs(60 * (n + 1)));
    }
    queue.promote_all(now);
    assert_eq!(queue.drain(), vec![cid(0), cid(1), cid(2)]);
}

#[derive(Debug, Clone)]
enum Step {
    Enqueue(u64, bool),
    EnqueueNow(u64, bool),
    PopAndStart,
    PopAndWait,
    PopAndRetry(u64),
    Finish(u64),
    RetryAt(u64, u64),
    PromoteDue(u64),
    PromoteAll,
    Release,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..6u64, any::<bool>()).prop_map(|(n, p)| Step::Enqueue(n, p)),
        (0..6u64, any::<bool>()).prop_map(|(n, p)| Step::EnqueueNow(n, p)),
        Just(Step::PopAndStart),
        Just(Step::PopAndWait),
        (0..10u64).prop_map(Step::PopAndRetry),
        (0..6u64).prop_map(Step::Finish),
        (0..6u64, 0..10u64).prop_map(|(n, s)| Step::RetryAt(n, s)),
        (0..10u64).prop_map(Step::PromoteDue),
        Just(Step::PromoteAll),
        Just(Step::Release),
    ]
}

proptest! {
    /// Whatever happens, the counts match the places, a pop yields only a queued CID (once),
    /// and the timetable holds exactly the CIDs waiting out a backoff.
    #[test]
    fn every_cid_is_in_one_place_and_the_counts_agree(steps in prop::collection::vec(step(), 1..80)) {
        let base = Instant::now();
        let at = |s: u64| base + Duration::from_secs(s);
        let mut queue = WorkQueue::default();
        for step in steps {
            match step {
                Step::Enqueue(n, p) => queue.enqueue(cid(n), p, base),
                Step::EnqueueNow(n, p) => queue.enqueue_now(cid(n), p, base),
                Step::PopAndStart | Step::PopAndWait | Step::PopAndRetry(_) => {
                    let before = queue.places.clone();
                    if let Some((popped, _)) = queue.pop() {
                        let was_queued = matches!(before.get(&popped), Some(Place::Queued { .. }));
                        prop_assert!(was_queued);
                        prop_assert_eq!(queue.place(&popped), None);
                        match step {
                            Step::PopAndStart => queue.start(popped),
                            Step::PopAndWait => queue.wait_for_sync(popped),
                            Step::PopAndRetry(s) => queue.retry_at(popped, at(s)),
                            _ => unreachable!(),
                        }
                    } else {
                        let none_queued = !before.values().any(|p| matches!(p, Place::Queued { .. }));
                        prop_assert!(none_queued);
                    }
                }
                Step::Finish(n) => {
                    queue.finish(&cid(n));
                }
                Step::RetryAt(n, s) => queue.retry_at(cid(n), at(s)),
                Step::PromoteDue(s) => queue.promote_due(at(s)),
                Step::PromoteAll => queue.promote_all(base),
                Step::Release => queue.release_sync_waiters(base),
            }
            let mut recount = Counts::default();
            for place in queue.places.values() {
                match place {
                    Place::Queued { .. } => recount.queued += 1,
                    Place::Retry { .. } => recount.retrying += 1,
                    Place::Running { .. } => recount.running += 1,
                    Place::WaitingForSync => recount.waiting_for_sync += 1,
                }
            }
            prop_assert_eq!(queue.counts(), recount);
            prop_assert_eq!(queue.retries.len(), recount.retrying);
            for (&(due, ticket), c) in &queue.retries {
                prop_assert_eq!(queue.place(c), Some(Place::Retry { at: due, ticket }));
            }
        }
        // Draining yields each queued CID exactly once.
        let queued: std::collections::HashSet<Cid> = queue
            .places
            .iter()
            .filter(|(_, p)| matches!(p, Place::Queued { .. }))
            .map(|(c, _)| *c)
            .collect();
        let drained = queue.drain();
        prop_assert_eq!(drained.len(), queued.len());
        prop_assert_eq!(drained.into_iter().collect::<std::collections::HashSet<_>>(), queued);
    }
}
