//! The lease decision, pure: what a candidate read (a [`LeaseRecord`], or none) and the time →
//! what to do ([`Action`]). Time is an argument (`Instant`s the caller passes), so every rule is
//! tested without sleeping.
//!
//! Rules (the ones client-go's leader election follows, for the same reasons):
//! - **Expiry by local observation, not by the record's clock.** A candidate counts a lease
//!   held by another as expired `leaseDurationSeconds` after *it first saw the record in its
//!   current form* (its `resourceVersion`), never from `renewTime`: the holder's clock and ours
//!   may disagree, our own monotonic clock does not.
//! - **The leader gives up first.** It leads until `renew_deadline` after the moment it *sent*
//!   its last successful write; `renew_deadline` is shorter than the lease duration, so a leader
//!   that cannot renew stops writing before any candidate may take over.
//! - **Anything unexpected while leading is a loss**: the lease held by someone else, released
//!   by someone else, or deleted. The replica then stops (and is restarted as a candidate)
//!   rather than trying to win again while another may already write.
//!
//! Writes are conditional (create fails when the lease exists, replace carries the
//! `resourceVersion` read), so two candidates that decide [`Action::Acquire`] on the same
//! record cannot both win: the API server accepts one and answers the other 409.

use std::fmt;
use std::time::{Duration, Instant};

/// The timing of the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a lease lasts without renewal (written into `leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// How long after its last successful write the leader still counts as leading. Shorter
    /// than `lease_duration`, by a margin for the two clocks' rates and for request latency.
    pub renew_deadline: Duration,
    /// How often the leader renews.
    pub renew_period: Duration,
    /// How often a candidate looks again, and the leader retries a failed renewal.
    pub retry_period: Duration,
}

impl Default for LeaseTiming {
    /// 15 s leases, renewed every 5 s, given up 10 s after the last renewal; candidates look
    /// every 2 s.
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            renew_period: Duration::from_secs(5),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What the election reads from a Lease.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseRecord {
    /// `spec.holderIdentity` (`None` or empty: nobody holds it).
    pub holder: Option<String>,
    /// `spec.leaseDurationSeconds`, as the holder wrote it.
    pub lease_duration: Option<Duration>,
    /// `spec.leaseTransitions`.
    pub transitions: i32,
    /// `metadata.resourceVersion`: a new one means the record changed.
    pub resource_version: Option<String>,
}

impl LeaseRecord {
    /// The holder, if there is one.
    #[must_use]
    pub fn holder(&self) -> Option<&str> {
        self.holder.as_deref().filter(|h| !h.is_empty())
    }
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loss {
    /// The lease names another holder.
    HeldBy(String),
    /// The lease was released (no holder) by someone else.
    Released,
    /// The lease is gone.
    Deleted,
    /// No renewal succeeded within the renew deadline.
    NotRenewed(Duration),
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HeldBy(h) => write!(f, "the lease is now held by {h:?}"),
            Self::Released => f.write_str("the lease was released by someone else"),
            Self::Deleted => f.write_str("the lease was deleted"),
            Self::NotRenewed(d) => write!(f, "the lease could not be renewed within {d:?}"),
        }
    }
}

/// What to do after a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No lease exists: create it, holding it.
    Create,
    /// Take the lease (free, expired, or recorded as ours though we do not lead): replace it,
    /// holding it, with `transitions` and a new acquire time.
    Acquire { transitions: i32 },
    /// Renew our lease: replace it with a new renew time.
    Renew,
    /// Another holds a live lease; it expires for us in `expires_in` unless it is renewed.
    Wait { holder: String, expires_in: Duration },
    /// We led and must stop writing now.
    Lost(Loss),
}

/// One candidate's view of the election.
#[derive(Debug, Clone)]
pub struct Elector {
    identity: String,
    timing: LeaseTiming,
    /// The record last read, and when it was first seen in that form.
    seen: Option<(LeaseRecord, Instant)>,
    /// While leading: when leading ends unless renewed.
    leading_until: Option<Instant>,
}

impl Elector {
    /// A candidate named `identity`.
    #[must_use]
    pub fn new(identity: impl Into<String>, timing: LeaseTiming) -> Self {
        Self { identity: identity.into(), timing, seen: None, leading_until: None }
    }

    /// This candidate's identity.
    #[must_use]
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The timing.
    #[must_use]
    pub fn timing(&self) -> LeaseTiming {
        self.timing
    }

    /// When leading ends unless renewed (`None`: not leading).
    #[must_use]
    pub fn leading_until(&self) -> Option<Instant> {
        self.leading_until
    }

    /// Whether this candidate leads at `now`.
    #[must_use]
    pub fn is_leading(&self, now: Instant) -> bool {
        self.leading_until.is_some_and(|until| now < until)
    }

    /// Decides from `record`, read at `now` (`None`: there is no lease).
    pub fn decide(&mut self, now: Instant, record: Option<&LeaseRecord>) -> Action {
        self.seen = match (record, self.seen.take()) {
            (None, _) => None,
            (Some(r), Some((old, at))) if old == *r => Some((old, at)),
            (Some(r), _) => Some((r.clone(), now)),
        };
        if let Some(loss) = self.deadline_passed(now) {
            return Action::Lost(loss);
        }
        let leading = self.leading_until.is_some();
        let Some((record, seen_at)) = &self.seen else {
            return if leading { self.lose(Loss::Deleted) } else { Action::Create };
        };
        match record.holder() {
            Some(h) if h == self.identity => {
                if leading {
                    Action::Renew
                } else {
                    // Recorded as ours (a restart under the same name): take it back as it is.
                    Action::Acquire { transitions: record.transitions }
                }
            }
            Some(h) if leading => {
                let loss = Loss::HeldBy(h.to_owned());
                self.lose(loss)
            }
            None if leading => self.lose(Loss::Released),
            None => Action::Acquire { transitions: record.transitions.saturating_add(1) },
            Some(holder) => {
                let duration = record.lease_duration.unwrap_or(self.timing.lease_duration);
                let expires = *seen_at + duration;
                if now >= expires {
                    Action::Acquire { transitions: record.transitions.saturating_add(1) }
                } else {
                    Action::Wait { holder: holder.to_owned(), expires_in: expires - now }
                }
            }
        }
    }

    /// Our write of `record`, sent at `sent_at`, succeeded: we lead until `sent_at` plus the
    /// renew deadline. (Counting from the send, not the answer: the API server may have stored
    /// it at any moment in between.)
    pub fn written(&mut self, sent_at: Instant, record: LeaseRecord) {
        self.seen = Some((record, sent_at));
        self.leading_until = Some(sent_at + self.timing.renew_deadline);
    }

    /// A read or write failed at `now` (including a 409 from a conditional write): a loss when
    /// leading past the deadline, otherwise `None` (try again after the retry period).
    pub fn failed(&mut self, now: Instant) -> Option<Loss> {
        self.deadline_passed(now)
    }

    /// How long to wait before the next read: the renew period while leading, the retry period
    /// otherwise; never past the moment leading ends.
    #[must_use]
    pub fn next_wait(&self, now: Instant) -> Duration {
        match self.leading_until {
            Some(until) => self.timing.renew_period.min(until.saturating_duration_since(now)),
            None => self.timing.retry_period,
        }
    }

    fn deadline_passed(&mut self, now: Instant) -> Option<Loss> {
        let until = self.leading_until?;
        (now >= until).then(|| {
            self.leading_until = None;
            Loss::NotRenewed(self.timing.renew_deadline)
        })
    }

    fn lose(&mut self, loss: Loss) -> Action {
        self.leading_until = None;
        Action::Lost(loss)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn held(holder: &str, rv: &str) -> LeaseRecord {
        LeaseRecord {
            holder: Some(holder.to_owned()),
            lease_duration: Some(15 * S),
            transitions: 3,
            resource_version: Some(rv.to_owned()),
        }
    }

    fn me() -> Elector {
        Elector::new("a", LeaseTiming::default())
    }

    #[test]
    fn no_lease_is_created_then_renewed() {
        let t0 = Instant::now();
        let mut e = me();
        assert_eq!(e.decide(t0, None), Action::Create);
        assert!(!e.is_leading(t0), "not before the create succeeded");
        e.written(t0, held("a", "1"));
        assert!(e.is_leading(t0 + 9 * S));
        assert!(!e.is_leading(t0 + 10 * S), "the renew deadline counts from the send");
        assert_eq!(e.next_wait(t0), 5 * S);
        assert_eq!(e.decide(t0 + 5 * S, Some(&held("a", "1"))), Action::Renew);
        e.written(t0 + 5 * S, held("a", "2"));
        assert!(e.is_leading(t0 + 14 * S));
    }

    #[test]
    fn a_live_lease_of_another_is_waited_for_from_first_sight() {
        let t0 = Instant::now();
        let mut e = me();
        let b = held("b", "7");
        assert_eq!(e.decide(t0, Some(&b)), Action::Wait { holder: "b".into(), expires_in: 15 * S });
        assert_eq!(e.decide(t0 + 10 * S, Some(&b)), Action::Wait { holder: "b".into(), expires_in: 5 * S });
        // b renews: the clock starts again from the new record.
        let b2 = held("b", "8");
        assert_eq!(e.decide(t0 + 12 * S, Some(&b2)), Action::Wait { holder: "b".into(), expires_in: 15 * S });
        assert_eq!(e.next_wait(t0), 2 * S, "candidates look every retry period");
        // Unrenewed for a whole lease duration: expired, taken over with one more transition.
        assert_eq!(e.decide(t0 + 27 * S, Some(&b2)), Action::Acquire { transitions: 4 });
    }

    #[test]
    fn the_lease_duration_is_the_holders() {
        let t0 = Instant::now();
        let mut e = me();
        let short = LeaseRecord { lease_duration: Some(2 * S), ..held("b", "7") };
        assert!(matches!(e.decide(t0, Some(&short)), Action::Wait { .. }));
        assert_eq!(e.decide(t0 + 2 * S, Some(&short)), Action::Acquire { transitions: 4 });
        let unset = LeaseRecord { lease_duration: None, ..held("c", "9") };
        assert!(matches!(e.decide(t0 + 2 * S, Some(&unset)), Action::Wait { expires_in, .. } if expires_in == 15 * S));
    }

    #[test]
    fn a_released_lease_is_taken_at_once_and_our_own_record_back() {
        let t0 = Instant::now();
        let mut e = me();
        let free = LeaseRecord { holder: Some(String::new()), ..held("", "7") };
        assert_eq!(e.decide(t0, Some(&free)), Action::Acquire { transitions: 4 });
        let mut e = me();
        assert_eq!(e.decide(t0, Some(&held("a", "7"))), Action::Acquire { transitions: 3 }, "a restart, same name");
    }

    #[test]
    fn a_leader_loses_to_another_holder_a_release_or_a_deletion() {
        let t0 = Instant::now();
        for (record, loss) in [
            (Some(held("b", "9")), Loss::HeldBy("b".into())),
            (Some(LeaseRecord { holder: None, ..held("", "9") }), Loss::Released),
            (None, Loss::Deleted),
        ] {
            let mut e = me();
            e.written(t0, held("a", "1"));
            assert_eq!(e.decide(t0 + S, record.as_ref()), Action::Lost(loss.clone()));
            assert!(!e.is_leading(t0 + S), "{loss}: stops at once");
        }
    }

    #[test]
    fn a_leader_that_cannot_renew_gives_up_before_anyone_may_take_over() {
        let t0 = Instant::now();
        let mut e = me();
        e.written(t0, held("a", "1"));
        // Renewals fail (API down, 409, timeouts) …
        assert_eq!(e.failed(t0 + 5 * S), None);
        assert_eq!(e.failed(t0 + 7 * S), None);
        assert_eq!(e.next_wait(t0 + 7 * S), 3 * S, "the next try comes no later than the deadline");
        // … until the deadline.
        assert_eq!(e.failed(t0 + 10 * S), Some(Loss::NotRenewed(10 * S)));
        assert!(!e.is_leading(t0 + 10 * S));
        // A read that comes too late is a loss too, even if the lease still names us.
        let mut e = me();
        e.written(t0, held("a", "1"));
        assert_eq!(e.decide(t0 + 11 * S, Some(&held("a", "1"))), Action::Lost(Loss::NotRenewed(10 * S)));
        // Another candidate that saw our last write at t0 takes over only at t0 + 15 s.
        let mut b = Elector::new("b", LeaseTiming::default());
        assert!(matches!(b.decide(t0, Some(&held("a", "1"))), Action::Wait { .. }));
        assert!(matches!(b.decide(t0 + 14 * S, Some(&held("a", "1"))), Action::Wait { .. }));
        assert_eq!(b.decide(t0 + 15 * S, Some(&held("a", "1"))), Action::Acquire { transitions: 4 });
    }

    #[test]
    fn failures_of_a_candidate_are_only_retried() {
        let t0 = Instant::now();
        let mut e = me();
        assert_eq!(e.failed(t0 + 100 * S), None);
        assert!(!e.is_leading(t0 + 100 * S));
    }
}
