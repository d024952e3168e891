//! Which device publishes next and when: the fleet spread evenly over the interval (or taken
//! in turn when devices publish back to back), under an optional cap on messages per second.

use super::SimulateOptions;
use std::time::Duration;
use tokio::time::Instant;

/// Burst the rate pacer tolerates: timers are coarse (about 1 ms), so strict spacing would
/// undershoot high rates.
const PACER_TOLERANCE: Duration = Duration::from_millis(10);

/// Which device publishes next, and when.
pub(super) enum Schedule {
    /// `interval == 0`: every device is always due; take them in turn.
    RoundRobin {
        next: u32,
        devices: u32,
        /// Messages left in total (`None`: unbounded).
        left: Option<u128>,
        start: Instant,
    },
    /// Device `i`'s message `r` is due at `start + r × interval + interval × i / devices`:
    /// the fleet spread evenly over the interval, each device at a fixed rate, so a late
    /// message does not shift its device's phase. Due times only ever grow in the order
    /// (round, device), so the next is computed instead of kept in a queue.
    Timed {
        next: u32,
        round: u64,
        devices: u32,
        /// Messages per device (`None`: unbounded).
        rounds: Option<u64>,
        start: Instant,
        interval_ns: u128,
    },
}

impl Schedule {
    pub(super) fn new(opts: &SimulateOptions, start: Instant) -> Self {
        if opts.interval.is_zero() {
            return Schedule::RoundRobin {
                next: 0,
                devices: opts.devices,
                left: opts.count.map(|c| u128::from(c) * u128::from(opts.devices)),
                start,
            };
        }
        Schedule::Timed {
            next: 0,
            round: 0,
            devices: opts.devices,
            rounds: opts.count,
            start,
            interval_ns: opts.interval.as_nanos(),
        }
    }

    pub(super) fn is_done(&self) -> bool {
        self.peek().is_none()
    }

    /// The next device and when it is due.
    pub(super) fn peek(&self) -> Option<(Instant, u32)> {
        match self {
            Schedule::RoundRobin {
                next, left, start, ..
            } => (*left != Some(0)).then_some((*start, *next)),
            Schedule::Timed {
                next,
                round,
                devices,
                rounds,
                start,
                interval_ns,
            } => {
                if *devices == 0 || *rounds == Some(*round) {
                    return None;
                }
                let offset = interval_ns * u128::from(*round)
                    + interval_ns * u128::from(*next) / u128::from(*devices);
                let due = start.checked_add(Duration::from_nanos(u64::try_from(offset).ok()?))?;
                Some((due, *next))
            }
        }
    }

    /// Marks the device returned by `peek` as sent and moves on to the next.
    pub(super) fn advance(&mut self) {
        match self {
            Schedule::RoundRobin {
                next,
                devices,
                left,
                ..
            } => {
                *next = (*next + 1) % (*devices).max(1);
                if let Some(l) = left {
                    *l = l.saturating_sub(1);
                }
            }
            Schedule::Timed {
                next,
                round,
                devices,
                ..
            } => {
                *next += 1;
                if *next >= *devices {
                    *next = 0;
                    *round += 1;
                }
            }
        }
    }
}

/// Caps total messages per second (GCRA: a theoretical arrival time advanced by one period per
/// message, with a small burst tolerance).
pub(super) struct Pacer {
    period: Duration,
    tat: Instant,
}

impl Pacer {
    pub(super) fn new(rate: f64, start: Instant) -> Self {
        Pacer {
            period: Duration::try_from_secs_f64(1.0 / rate).unwrap_or(Duration::MAX / 4),
            tat: start,
        }
    }

    pub(super) fn ready_at(&self) -> Instant {
        self.tat.checked_sub(PACER_TOLERANCE).unwrap_or(self.tat)
    }

    pub(super) fn consume(&mut self, now: Instant) {
        let base = self.tat.max(now);
        self.tat = base.checked_add(self.period).unwrap_or(base);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_schedule_spreads_devices_over_the_interval() {
        let start = Instant::now();
        let opts = SimulateOptions {
            devices: 4,
            count: Some(2),
            interval: Duration::from_secs(8),
            ..SimulateOptions::default()
        };
        let mut s = Schedule::new(&opts, start);
        let mut order = Vec::new();
        while let Some((due, device)) = s.peek() {
            order.push(((due - start).as_secs(), device));
            s.advance();
        }
        assert_eq!(
            order,
            [
                (0, 0),
                (2, 1),
                (4, 2),
                (6, 3),
                (8, 0),
                (10, 1),
                (12, 2),
                (14, 3)
            ]
        );
        assert!(s.is_done());
    }

    #[test]
    fn round_robin_schedule_stops_after_count() {
        let opts = SimulateOptions {
            devices: 3,
            count: Some(2),
            interval: Duration::ZERO,
            ..SimulateOptions::default()
        };
        let mut s = Schedule::new(&opts, Instant::now());
        let mut devices = Vec::new();
        while let Some((_, d)) = s.peek() {
            devices.push(d);
            s.advance();
        }
        assert_eq!(devices, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn pacer_spaces_messages() {
        let start = Instant::now();
        let mut p = Pacer::new(1000.0, start);
        // Within the tolerance a short burst goes at once, then one per millisecond.
        let mut burst = 0;
        while p.ready_at() <= start {
            p.consume(start);
            burst += 1;
        }
        assert!((10..=11).contains(&burst), "burst {burst}");
        assert_eq!(p.ready_at() - start, Duration::from_millis(burst - 10));
    }
}
