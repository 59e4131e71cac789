//! Exponential backoff between failed passes of a control loop (the hub's reconcile, the
//! worker's): `min`, doubling up to `max`, back to `min` after a success. Pure: the caller
//! sleeps.

use std::time::Duration;

/// Exponential backoff: `min`, doubling up to `max` (at least `min`); reset by a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Backoff from `min` up to `max`.
    #[must_use]
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), next: min }
    }

    /// The wait after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Back to `min` after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(2));
        let seq: Vec<_> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(seq, [500, 1000, 2000, 2000]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 500);
    }

    #[test]
    fn a_max_below_min_is_min() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!([b.next_delay(), b.next_delay()], [Duration::from_secs(2); 2]);
    }
}
