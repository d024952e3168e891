//! Jittered exponential backoff: the one schedule of waits between retries, for the SDK's
//! publish retries and for the collector's pull and write loops.
//!
//! The waits grow by a multiplier up to a cap, and each is shortened by a random share (the
//! randomization factor) so that clients that failed together do not all retry together.
//! Unlike a symmetric randomization factor, the jitter only ever shortens a wait: `max`
//! stays an upper bound of every wait.

use std::time::Duration;

/// A schedule of waits between retries: `initial`, then `multiplier` times the previous one,
/// capped at `max`, each shortened by a random share of up to `jitter`.
///
/// # Examples
///
/// ```
/// use jetscale_sdk::backoff::Backoff;
/// use std::time::Duration;
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
/// assert_eq!(backoff.ceiling(1), Duration::from_millis(100));
/// assert_eq!(backoff.ceiling(3), Duration::from_millis(400));
/// assert_eq!(backoff.ceiling(30), Duration::from_secs(10));
/// let wait = backoff.delay(3);
/// assert!(wait >= Duration::from_millis(200) && wait <= Duration::from_millis(400));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The wait before the first retry.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// How much each wait grows over the previous one (2.0 doubles it).
    pub multiplier: f64,
    /// The randomization factor, from 0 (no jitter) to 1: each wait is drawn uniformly
    /// between `(1 - jitter)` times its ceiling and the ceiling itself.
    pub jitter: f64,
}

impl Backoff {
    /// A schedule that doubles from `initial` up to `max`, each wait between half and all of
    /// its ceiling.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::backoff::Backoff;
    /// use std::time::Duration;
    ///
    /// let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    /// assert_eq!((backoff.multiplier, backoff.jitter), (2.0, 0.5));
    /// ```
    pub const fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            multiplier: 2.0,
            jitter: 0.5,
        }
    }

    /// The same schedule growing by `multiplier` (at least 1) per retry.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::backoff::Backoff;
    /// use std::time::Duration;
    ///
    /// let backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).multiplier(3.0);
    /// assert_eq!(backoff.ceiling(3), Duration::from_millis(90));
    /// ```
    pub const fn multiplier(mut self, multiplier: f64) -> Backoff {
        self.multiplier = multiplier;
        self
    }

    /// The same schedule with randomization factor `jitter` (0 to 1; 0 turns jitter off).
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::backoff::Backoff;
    /// use std::time::Duration;
    ///
    /// let steady = Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).jitter(0.0);
    /// assert_eq!(steady.delay(2), Duration::from_millis(20));
    /// ```
    pub const fn jitter(mut self, jitter: f64) -> Backoff {
        self.jitter = jitter;
        self
    }

    /// The wait before retry number `retry` (1 for the first) before jitter:
    /// `initial × multiplier^(retry − 1)`, capped at `max`.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::backoff::Backoff;
    /// use std::time::Duration;
    ///
    /// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    /// assert_eq!(backoff.ceiling(2), Duration::from_millis(200));
    /// assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(2));
    /// ```
    pub fn ceiling(&self, retry: u32) -> Duration {
        let growth = self.multiplier.max(1.0);
        let exponent = retry.saturating_sub(1).min(i32::MAX as u32) as i32;
        let wait = self.initial.as_secs_f64() * growth.powi(exponent);
        match Duration::try_from_secs_f64(wait) {
            Ok(wait) => wait.min(self.max),
            // Grown past what a Duration holds (or not a number): the cap applies.
            Err(_) => self.max,
        }
    }

    /// The wait before retry number `retry` (1 for the first): its [`ceiling`], shortened
    /// by a random share of up to `jitter`.
    ///
    /// [`ceiling`]: Backoff::ceiling
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::backoff::Backoff;
    /// use std::time::Duration;
    ///
    /// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    /// let wait = backoff.delay(1);
    /// assert!(wait >= Duration::from_millis(50) && wait <= Duration::from_millis(100));
    /// ```
    pub fn delay(&self, retry: u32) -> Duration {
        self.jittered(retry, fastrand::f64())
    }

    /// [`delay`](Backoff::delay) with the random draw `unit` (in `[0, 1)`) given.
    fn jittered(&self, retry: u32, unit: f64) -> Duration {
        let share = self.jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0);
        self.ceiling(retry).mul_f64(1.0 - share)
    }

    /// A run of retries on this schedule, starting at the first.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::backoff::Backoff;
    /// use std::time::Duration;
    ///
    /// let mut retries = Backoff::new(Duration::from_millis(1), Duration::from_millis(4)).retries();
    /// assert!(retries.next_delay() <= Duration::from_millis(1));
    /// assert!(retries.next_delay() <= Duration::from_millis(2));
    /// ```
    pub const fn retries(self) -> Retries {
        Retries {
            backoff: self,
            done: 0,
        }
    }
}

/// Where a run of retries is on its [`Backoff`] schedule: each wait is the next one, and a
/// success starts the schedule over.
///
/// # Examples
///
/// ```
/// use jetscale_sdk::backoff::Backoff;
/// use std::time::Duration;
///
/// let mut retries = Backoff::new(Duration::from_millis(100), Duration::from_millis(400)).retries();
/// for _ in 0..2 {
///     retries.next_delay();
/// }
/// assert_eq!(retries.count(), 2);
/// assert!(retries.at_max(), "the third wait would be the cap");
/// retries.reset();
/// assert_eq!(retries.count(), 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retries {
    backoff: Backoff,
    done: u32,
}

impl Retries {
    /// The wait before the next retry, jittered; counts the retry.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::backoff::Backoff;
    /// use std::time::Duration;
    ///
    /// let mut retries = Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).retries();
    /// assert!(retries.next_delay() <= Duration::from_millis(10));
    /// assert_eq!(retries.count(), 1);
    /// ```
    pub fn next_delay(&mut self) -> Duration {
        self.done = self.done.saturating_add(1);
        self.backoff.delay(self.done)
    }

    /// Starts the schedule over, after a success.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::backoff::Backoff;
    /// use std::time::Duration;
    ///
    /// let mut retries = Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).retries();
    /// retries.next_delay();
    /// retries.reset();
    /// assert_eq!(retries.count(), 0);
    /// ```
    pub fn reset(&mut self) {
        self.done = 0;
    }

    /// Retries waited for since the start or the last [`reset`](Retries::reset).
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::backoff::Backoff;
    /// use std::time::Duration;
    ///
    /// let retries = Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).retries();
    /// assert_eq!(retries.count(), 0);
    /// ```
    pub const fn count(&self) -> u32 {
        self.done
    }

    /// Whether the next wait's ceiling is the cap: the schedule has stopped growing.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetscale_sdk::backoff::Backoff;
    /// use std::time::Duration;
    ///
    /// let mut retries = Backoff::new(Duration::from_millis(10), Duration::from_millis(20)).retries();
    /// assert!(!retries.at_max());
    /// retries.next_delay();
    /// assert!(retries.at_max());
    /// ```
    pub fn at_max(&self) -> bool {
        self.backoff.ceiling(self.done.saturating_add(1)) >= self.backoff.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceilings_grow_by_the_multiplier_up_to_the_cap() {
        let backoff = Backoff::new(100 * MS, 10_000 * MS);
        let ceilings: Vec<u128> = (1..=9).map(|r| backoff.ceiling(r).as_millis()).collect();
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
        // Retry 0 is read as the first, not as a wait shorter than `initial`.
        assert_eq!(backoff.ceiling(0), 100 * MS);
        let slow = Backoff::new(100 * MS, 10_000 * MS).multiplier(1.5);
        assert_eq!(slow.ceiling(3), 225 * MS);
        // A multiplier below 1 would shrink the waits: it is read as 1.
        assert_eq!(backoff.multiplier(0.5).ceiling(5), 100 * MS);
    }

    #[test]
    fn huge_retry_counts_and_multipliers_stay_at_the_cap() {
        let backoff = Backoff::new(100 * MS, 2_000 * MS);
        assert_eq!(backoff.ceiling(u32::MAX), 2_000 * MS);
        assert_eq!(backoff.multiplier(f64::MAX).ceiling(3), 2_000 * MS);
        assert_eq!(backoff.multiplier(f64::INFINITY).ceiling(2), 2_000 * MS);
        assert_eq!(backoff.multiplier(f64::NAN).ceiling(2), 100 * MS);
    }

    #[test]
    fn jitter_shortens_by_up_to_the_randomization_factor() {
        let backoff = Backoff::new(1_000 * MS, 60_000 * MS).jitter(0.25);
        assert_eq!(backoff.jittered(1, 0.0), 1_000 * MS);
        assert_eq!(backoff.jittered(1, 0.5), 875 * MS);
        assert_eq!(backoff.jittered(2, 1.0), 1_500 * MS);
        // Out-of-range factors and draws are clamped rather than lengthening a wait.
        assert_eq!(backoff.jitter(-1.0).jittered(1, 0.7), 1_000 * MS);
        assert_eq!(backoff.jitter(7.0).jittered(1, 1.0), Duration::ZERO);
        assert_eq!(backoff.jittered(1, 3.0), 750 * MS);
    }

    #[test]
    fn random_waits_spread_between_the_floor_and_the_ceiling() {
        let backoff = Backoff::new(100 * MS, 10_000 * MS);
        let waits: Vec<Duration> = (0..200).map(|_| backoff.delay(4)).collect();
        assert!(waits.iter().all(|w| (400 * MS..=800 * MS).contains(w)));
        // Two hundred draws all within 20 ms of each other would mean no jitter at all.
        let (low, high) = (waits.iter().min(), waits.iter().max());
        assert!(high.zip(low).is_some_and(|(h, l)| *h - *l > 20 * MS));
    }

    #[test]
    fn a_run_of_retries_walks_the_schedule_and_starts_over() {
        let mut retries = Backoff::new(100 * MS, 400 * MS).jitter(0.0).retries();
        let waits: Vec<Duration> = (0..4).map(|_| retries.next_delay()).collect();
        assert_eq!(waits, [100 * MS, 200 * MS, 400 * MS, 400 * MS]);
        assert!(retries.at_max());
        assert_eq!(retries.count(), 4);
        retries.reset();
        assert!(!retries.at_max());
        assert_eq!(retries.next_delay(), 100 * MS);
    }
}
