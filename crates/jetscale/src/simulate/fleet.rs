//! The simulated devices: identities, believable sensor walks and per-device timestamps.
//!
//! Every device owns its own random generator seeded from the run seed and its index, so the
//! values a device produces depend only on (seed, device, message number), never on scheduling
//! or on how fast the server acknowledges.

use super::payload::{write_payload, METRICS};
use super::SimulateOptions;

/// Normal devices wander inside this band (°C).
const TEMP_BAND: (f64, f64) = (18.0, 28.0);
/// Overheating devices drift towards a target drawn from this band (°C).
const HOT_BAND: (f64, f64) = (36.0, 45.0);
const HUMIDITY_BAND: (f64, f64) = (30.0, 70.0);
/// A device's timestamps advance by at least this much (ns) between messages, so two messages
/// of one device never share a time even when the wall clock stalls or steps back.
const MIN_TIME_STEP_NS: i64 = 1000;

/// One generated message: what was written into the caller's buffer, for bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Message {
    /// 1-based message number of this device (part of the Nats-Msg-Id).
    pub seq: u64,
    /// Time of the first point; the other two are `+1` and `+2` ns.
    pub time_unix_nano: i64,
    /// Temperature, humidity, battery (the order of [`METRICS`]).
    pub values: [f64; 3],
}

/// A device's identity and sensor state.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    pub(crate) id: String,
    pub(crate) location: u32,
    rng: fastrand::Rng,
    overheating: bool,
    /// The temperature a healthy device reverts to, or the hot target of an overheating one.
    temp_target: f64,
    temperature: f64,
    humidity_target: f64,
    humidity: f64,
    battery: f64,
    drain: f64,
    last_time: i64,
    pub(crate) seq: u64,
}

/// A fleet of simulated devices, usable without a server (benchmarks of the decoder or the
/// store generate realistic payloads with it).
#[derive(Debug, Clone)]
pub struct Fleet {
    pub(crate) devices: Vec<Device>,
    locations: Vec<String>,
}

impl Fleet {
    /// Builds `opts.devices` devices; identical options give identical value sequences.
    ///
    /// `opts` is assumed valid (see [`SimulateOptions::validate`]); a zero location count is
    /// treated as one.
    pub fn new(opts: &SimulateOptions) -> Self {
        let locations = (0..opts.locations.max(1)).map(location_name).collect();
        let share = opts.overheat_share.clamp(0.0, 1.0);
        // Overheating devices are spread evenly through the fleet, exactly round(n * share) of
        // them, at a seed-dependent phase: a fixed count keeps demos and anomaly queries
        // predictable, unlike a per-device coin flip.
        let phase = fastrand::Rng::with_seed(mix(opts.seed ^ 0x6f76_6572_6865_6174)).f64();
        let devices = (0..opts.devices)
            .map(|i| {
                let overheating = share > 0.0 && {
                    let a = ((f64::from(i) + phase) * share).floor();
                    let b = ((f64::from(i) + 1.0 + phase) * share).floor();
                    b > a
                };
                Device::new(
                    format!("{}{:06}", opts.device_prefix, u64::from(i) + 1),
                    i % opts.locations.max(1),
                    opts.seed,
                    i,
                    overheating,
                )
            })
            .collect();
        Fleet { devices, locations }
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// True when the fleet has no devices.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The device id (`sensor-000001`, ...) of device `index`, if it exists.
    pub fn device_id(&self, index: usize) -> Option<&str> {
        self.devices.get(index).map(|d| d.id.as_str())
    }

    /// The `device.location` of device `index`, if it exists.
    pub fn location(&self, index: usize) -> Option<&str> {
        let d = self.devices.get(index)?;
        self.locations.get(d.location as usize).map(String::as_str)
    }

    /// Whether device `index` is one of the overheating share.
    pub fn is_overheating(&self, index: usize) -> bool {
        self.devices.get(index).is_some_and(|d| d.overheating)
    }

    /// Advances device `index` by one message stamped at `now_unix_nano` (or just after its
    /// previous message, if the clock has not moved on) and writes the payload into `out`.
    /// Returns `None` if there is no such device.
    pub fn next_message(
        &mut self,
        index: usize,
        now_unix_nano: i64,
        out: &mut Vec<u8>,
    ) -> Option<Message> {
        let device = self.devices.get_mut(index)?;
        let msg = device.advance(now_unix_nano);
        let location = self
            .locations
            .get(device.location as usize)
            .map_or("", String::as_str);
        write_payload(out, &device.id, location, msg.time_unix_nano, msg.values);
        Some(msg)
    }

    pub(crate) fn location_of(&self, device: &Device) -> &str {
        self.locations
            .get(device.location as usize)
            .map_or("", String::as_str)
    }
}

impl Device {
    fn new(id: String, location: u32, seed: u64, index: u32, overheating: bool) -> Self {
        let mut rng = fastrand::Rng::with_seed(mix(seed.wrapping_add(
            u64::from(index)
                .wrapping_add(1)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15),
        )));
        let (temp_target, temperature) = if overheating {
            // Already running hot, and drifting hotter: a short run shows the anomaly too.
            (uniform(&mut rng, HOT_BAND), uniform(&mut rng, (35.5, 38.0)))
        } else {
            let target = uniform(&mut rng, (19.5, 26.5));
            (target, target + noise(&mut rng))
        };
        let humidity_target = uniform(&mut rng, (38.0, 62.0));
        let humidity = humidity_target + 2.0 * noise(&mut rng);
        Device {
            id,
            location,
            overheating,
            temp_target,
            temperature: if overheating {
                temperature
            } else {
                reflect(temperature, TEMP_BAND)
            },
            humidity_target,
            humidity: reflect(humidity, HUMIDITY_BAND),
            battery: uniform(&mut rng, (60.0, 100.0)),
            drain: uniform(&mut rng, (0.002, 0.02)),
            last_time: 0,
            seq: 0,
            rng,
        }
    }

    /// One step of every sensor's walk; returns the message's bookkeeping.
    pub(crate) fn advance(&mut self, now_unix_nano: i64) -> Message {
        let rng = &mut self.rng;
        if self.overheating {
            let t =
                self.temperature + 0.15 * (self.temp_target - self.temperature) + 0.3 * noise(rng);
            self.temperature = t.clamp(TEMP_BAND.0, HOT_BAND.1);
        } else {
            let t =
                self.temperature + 0.08 * (self.temp_target - self.temperature) + 0.25 * noise(rng);
            self.temperature = reflect(t, TEMP_BAND);
        }
        let h = self.humidity + 0.05 * (self.humidity_target - self.humidity) + 0.8 * noise(rng);
        self.humidity = reflect(h, HUMIDITY_BAND);
        self.battery = (self.battery - self.drain * (0.5 + rng.f64())).clamp(0.0, 100.0);

        let time = now_unix_nano.max(self.last_time.saturating_add(MIN_TIME_STEP_NS));
        self.last_time = time;
        self.seq += 1;
        Message {
            seq: self.seq,
            time_unix_nano: time,
            values: [self.temperature, self.humidity, self.battery],
        }
    }
}

/// `warehouse-a` .. `warehouse-z`, then `warehouse-aa`, ... (bijective base 26), so any location
/// count gets distinct names like the IoT pipeline design's.
pub(crate) fn location_name(index: u32) -> String {
    let mut n = u64::from(index) + 1;
    let mut letters = Vec::new();
    while n > 0 {
        n -= 1;
        letters.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    letters.reverse();
    let mut name = String::from("warehouse-");
    name.extend(letters.into_iter().map(char::from));
    name
}

fn uniform(rng: &mut fastrand::Rng, (lo, hi): (f64, f64)) -> f64 {
    lo + (hi - lo) * rng.f64()
}

/// Cheap bell-shaped noise in (-1.5, 1.5), standard deviation 0.5.
fn noise(rng: &mut fastrand::Rng) -> f64 {
    rng.f64() + rng.f64() + rng.f64() - 1.5
}

/// Folds a value that stepped outside `[lo, hi]` back inside, so a walk bounces off the edges
/// instead of sticking to them.
fn reflect(v: f64, (lo, hi): (f64, f64)) -> f64 {
    let v = if v < lo {
        2.0 * lo - v
    } else if v > hi {
        2.0 * hi - v
    } else {
        v
    };
    v.clamp(lo, hi)
}

/// splitmix64 finalizer: decorrelates neighbouring seeds, which wyrand alone would turn into
/// shifted copies of one sequence.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Metric names, for [`super::SentPoint`].
pub(crate) fn metric_name(i: usize) -> &'static str {
    METRICS.get(i).map_or("", |m| m.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetscale_model::now_unix_nanos;
    use std::time::Instant;

    fn opts(devices: u32, seed: u64) -> SimulateOptions {
        SimulateOptions {
            devices,
            seed,
            ..SimulateOptions::default()
        }
    }

    #[test]
    fn names() {
        let fleet = Fleet::new(&opts(10, 1));
        assert_eq!(fleet.device_id(0), Some("sensor-000001"));
        assert_eq!(fleet.device_id(9), Some("sensor-000010"));
        assert_eq!(fleet.location(0), Some("warehouse-a"));
        assert_eq!(fleet.location(7), Some("warehouse-h"));
        assert_eq!(fleet.location(8), Some("warehouse-a"));
        assert_eq!(location_name(25), "warehouse-z");
        assert_eq!(location_name(26), "warehouse-aa");
        assert_eq!(location_name(27), "warehouse-ab");
    }

    #[test]
    fn same_seed_same_values_other_seed_other_values() {
        let run = |seed| {
            let mut fleet = Fleet::new(&opts(50, seed));
            let mut buf = Vec::new();
            let mut out = Vec::new();
            for _ in 0..20 {
                for i in 0..fleet.len() {
                    let m = fleet.next_message(i, 0, &mut buf).expect("device exists");
                    out.push(m.values.map(f64::to_bits));
                }
            }
            out
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn values_are_believable() {
        let mut fleet = Fleet::new(&SimulateOptions {
            devices: 1000,
            overheat_share: 0.02,
            ..SimulateOptions::default()
        });
        let hot: Vec<usize> = (0..fleet.len())
            .filter(|&i| fleet.is_overheating(i))
            .collect();
        assert_eq!(hot.len(), 20, "2% of 1000 devices overheat");
        let mut buf = Vec::new();
        let mut first_battery = vec![0.0; fleet.len()];
        let mut last = vec![[0.0; 3]; fleet.len()];
        for round in 0..200 {
            for (i, slot) in last.iter_mut().enumerate() {
                let m = fleet.next_message(i, 0, &mut buf).expect("device exists");
                let [t, h, b] = m.values;
                if round == 0 {
                    first_battery[i] = b;
                    assert!((60.0..=100.0).contains(&b), "battery starts at {b}");
                }
                assert!((0.0..=100.0).contains(&b));
                assert!((30.0..=70.0).contains(&h), "humidity {h}");
                if fleet.is_overheating(i) {
                    assert!((18.0..=45.0).contains(&t), "hot temperature {t}");
                } else {
                    assert!((18.0..=28.0).contains(&t), "temperature {t}");
                }
                *slot = m.values;
            }
        }
        for (i, v) in last.iter().enumerate() {
            assert!(v[2] < first_battery[i], "battery drains");
            if fleet.is_overheating(i) {
                assert!(v[0] > 34.0, "overheating device {i} reached only {}", v[0]);
            }
        }
    }

    #[test]
    fn timestamps_strictly_increase_even_if_the_clock_stalls() {
        let mut fleet = Fleet::new(&opts(2, 0));
        let mut buf = Vec::new();
        let t0 = 1_700_000_000_000_000_000;
        let a = fleet.next_message(0, t0, &mut buf).expect("device");
        let b = fleet.next_message(0, t0, &mut buf).expect("device");
        let c = fleet.next_message(0, t0 - 5_000, &mut buf).expect("device");
        let d = fleet
            .next_message(0, t0 + 1_000_000, &mut buf)
            .expect("device");
        assert_eq!(a.time_unix_nano, t0);
        assert_eq!(b.time_unix_nano, t0 + MIN_TIME_STEP_NS);
        assert_eq!(c.time_unix_nano, t0 + 2 * MIN_TIME_STEP_NS);
        assert_eq!(d.time_unix_nano, t0 + 1_000_000);
        assert_eq!((a.seq, d.seq), (1, 4));
        // Another device has its own clock.
        let other = fleet.next_message(1, t0, &mut buf).expect("device");
        assert_eq!(other.time_unix_nano, t0);
    }

    /// Payload generation speed (values + JSON + the copy into `Bytes`). Run with
    /// `cargo test -p jetscale --release --lib simulate::fleet::tests::generation_speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement, not a check; run in release"]
    fn generation_speed() {
        let mut fleet = Fleet::new(&opts(10_000, 1));
        let mut buf = Vec::with_capacity(1024);
        let n = 2_000_000usize;
        let mut bytes = 0usize;
        let start = Instant::now();
        for k in 0..n {
            let i = k % fleet.len();
            let m = fleet
                .next_message(i, now_unix_nanos(), &mut buf)
                .expect("device");
            let payload = bytes::Bytes::copy_from_slice(&buf);
            bytes += payload.len() + (m.seq as usize & 1);
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{n} payloads in {secs:.3} s: {:.0} msg/s on one core, {:.0} MB/s, {} bytes each",
            n as f64 / secs,
            bytes as f64 / secs / 1e6,
            buf.len()
        );
    }
}
