//! The reconciler's decisions as pure functions, unit-tested by table: what status a CID has
//! once a job on it ended.

use super::{Job, PinState, Status};

/// How a job on a CID ended.
#[derive(Debug)]
pub(super) enum Ended<'a> {
    /// The worker answered: `Ok(owned)` when the call succeeded (`owned`: the pin is this
    /// agent's), or the call's error.
    Done {
        job: &'a Job,
        result: Result<bool, String>,
    },
    /// The worker died without an answer (it panicked).
    Died(String),
}

/// The status a CID has after a job on it ended, from the status it had (`Ok(None)`: no
/// record; `Err(())`: the record could not be read).
///
/// `None` when nothing may be recorded: the old record could not be read and the result does
/// not say whether this agent owns the pin. A guess of "not owned" would make an owned pin one
/// that is never removed again; the CID is decided again later instead.
pub(super) fn settled(
    before: Result<Option<PinState>, ()>,
    ended: Ended<'_>,
    now_ms: u64,
) -> Option<PinState> {
    let mut state = match (&ended, before) {
        (_, Ok(Some(state))) => state,
        (Ended::Died(_), Ok(None)) => PinState::new(Status::PinError, false),
        (_, Ok(None)) => PinState::new(Status::Queued, false),
        // A success says who owns the pin; a failure does not.
        (Ended::Done { result: Ok(_), .. }, Err(())) => PinState::new(Status::Queued, false),
        (_, Err(())) => return None,
    };
    state.updated_ms = now_ms;
    match ended {
        Ended::Done {
            job,
            result: Ok(owned),
        } => {
            state.attempts = 0;
            state.error = None;
            (state.status, state.owned) = match job {
                Job::Pin { .. } => (Status::Pinned, owned),
                Job::Unpin => (Status::Unpinned, false),
            };
        }
        Ended::Done {
            job,
            result: Err(error),
        } => {
            state.attempts += 1;
            state.error = Some(error);
            state.status = match job {
                Job::Pin { .. } => Status::PinError,
                Job::Unpin => Status::UnpinError,
            };
        }
        Ended::Died(error) => {
            state.attempts += 1;
            state.error = Some(format!("internal error while working on it: {error}"));
            state.status = match state.status {
                Status::Unpinning | Status::UnpinError => Status::UnpinError,
                _ => Status::PinError,
            };
        }
    }
    Some(state)
}

#[cfg(test)]
mod tests {
    use pinmesh_protocol::PinMode;

    use super::*;
    use crate::reconcile::Wanted;

    fn pin_job() -> Job {
        Job::Pin {
            wanted: Wanted {
                mode: PinMode::Recursive,
                origins: Vec::new(),
            },
            owned: true,
        }
    }

    fn record(status: Status, owned: bool, attempts: u32) -> PinState {
        PinState {
            status,
            owned,
            attempts,
            error: None,
            updated_ms: 1,
        }
    }

    #[test]
    fn the_status_after_a_job_by_what_was_known_before_and_how_it_ended() {
        use Status::*;
        let pin = pin_job();
        let unpin = Job::Unpin;
        let ok = |owned| Ok(owned);
        let err = || Err("refused".to_string());
        // (before, job, result) -> (status, owned, attempts), or None: nothing recorded.
        type Case<'a> = (
            Result<Option<PinState>, ()>,
            Ended<'a>,
            Option<(Status, bool, u32)>,
        );
        let done = |job, result| Ended::Done { job, result };
        let cases: Vec<Case> = vec![
            // Successes say who owns the pin, whatever was known before.
            (Ok(None), done(&pin, ok(true)), Some((Pinned, true, 0))),
            (Ok(None), done(&pin, ok(false)), Some((Pinned, false, 0))),
            (Err(()), done(&pin, ok(true)), Some((Pinned, true, 0))),
            (
                Ok(Some(record(Pinning, true, 3))),
                done(&pin, ok(true)),
                Some((Pinned, true, 0)),
            ),
            (Err(()), done(&unpin, ok(false)), Some((Unpinned, false, 0))),
            (
                Ok(Some(record(Unpinning, true, 2))),
                done(&unpin, ok(false)),
                Some((Unpinned, false, 0)),
            ),
            // Failures keep the ownership on record and count the attempt.
            (
                Ok(Some(record(Pinning, true, 0))),
                done(&pin, err()),
                Some((PinError, true, 1)),
            ),
            (
                Ok(Some(record(Unpinning, true, 4))),
                done(&unpin, err()),
                Some((UnpinError, true, 5)),
            ),
            (Ok(None), done(&pin, err()), Some((PinError, false, 1))),
            // A failure with the record unreadable records nothing: no guess at ownership.
            (Err(()), done(&pin, err()), None),
            (Err(()), done(&unpin, err()), None),
            // A dead worker: an error of the kind of work the record shows.
            (
                Ok(Some(record(Unpinning, true, 0))),
                Ended::Died("panic".into()),
                Some((UnpinError, true, 1)),
            ),
            (
                Ok(Some(record(Pinning, true, 1))),
                Ended::Died("panic".into()),
                Some((PinError, true, 2)),
            ),
            (
                Ok(None),
                Ended::Died("panic".into()),
                Some((PinError, false, 1)),
            ),
            (Err(()), Ended::Died("panic".into()), None),
        ];
        for (i, (before, ended, want)) in cases.into_iter().enumerate() {
            let what = format!("case {i}: {before:?} {ended:?}");
            let got = settled(before, ended, 42);
            match (got, want) {
                (None, None) => {}
                (Some(state), Some((status, owned, attempts))) => {
                    assert_eq!(
                        (state.status, state.owned, state.attempts),
                        (status, owned, attempts),
                        "{what}"
                    );
                    assert_eq!(state.updated_ms, 42, "{what}");
                    assert_eq!(state.error.is_some(), attempts > 0, "{what}");
                }
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }
}
