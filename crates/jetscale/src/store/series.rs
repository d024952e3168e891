//! Series identity for the series layout. Every distinct (device, location, metric, unit,
//! attributes) is stored once in `{table}_series`; a point row is only `(time, series_id,
//! value)`. The collector keys a series by a 128-bit XXH3 hash of its identity, computed
//! while decoding, and keeps the ids it has seen in a bounded cache, so in the steady state a
//! point costs no lookup in the database at all. Misses are resolved by the writer inside the
//! batch's transaction (see `writer.rs`), and only committed ids enter the cache.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use xxhash_rust::xxh3::Xxh3;

/// A series' identity hash, stored as the series table's `series_key uuid`. The hash is
/// XXH3-128, whose output is fixed by its specification, so keys written by one version of
/// jetscale are found by the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey(pub [u64; 2]);

impl SeriesKey {
    /// Hashes the fields with their lengths, so `("ab", "c")` and `("a", "bc")` differ.
    pub fn of(
        device_id: &str,
        location: &str,
        metric_name: &str,
        unit: &str,
        attributes: &str,
    ) -> Self {
        let mut h = Xxh3::new();
        for field in [device_id, location, metric_name, unit, attributes] {
            h.update(&(field.len() as u64).to_le_bytes());
            h.update(field.as_bytes());
        }
        let v = h.digest128();
        SeriesKey([(v >> 64) as u64, v as u64])
    }

    /// A key from PostgreSQL's `uuid` text form (hyphens anywhere, 32 hex digits).
    pub fn from_uuid_text(text: &str) -> Option<Self> {
        let mut value: u128 = 0;
        let mut digits = 0;
        for c in text.bytes().filter(|&c| c != b'-') {
            value = (value << 4) | u128::from((c as char).to_digit(16)?);
            digits += 1;
        }
        (digits == 32).then_some(SeriesKey([(value >> 64) as u64, value as u64]))
    }

    /// The key as PostgreSQL's `uuid` text form.
    pub fn uuid_text(&self) -> String {
        let hex = format!("{:016x}{:016x}", self.0[0], self.0[1]);
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }
}

/// Keys are already uniform hashes: the low word is a perfectly good table hash.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
    fn write_usize(&mut self, _: usize) {
        // The array length `Hash` for `[u64; 2]` writes first; it carries no information.
    }
}

type KeyMap = HashMap<SeriesKey, i64, BuildHasherDefault<KeyHasher>>;

/// A bounded map from series key to series id, shared by the decoder and the writers.
///
/// Two generations of up to `capacity` entries each: lookups hit the current one or promote
/// from the previous one; when the current one is full it becomes the previous one and the
/// oldest generation is dropped. A fleet with up to `capacity` active series therefore
/// never misses once its series are known, whatever order they arrive in; one with more
/// misses on the excess every time round (the writers count those lookups, and the
/// collector warns). Memory is bounded by `2 × capacity` entries (24 bytes each plus hash
/// table slack); a turnover only happens when more than `capacity` distinct series are
/// seen, so a steady fleet holds one generation. Each operation is one or two hash lookups
/// under an uncontended lock.
#[derive(Debug)]
pub struct SeriesCache {
    capacity: usize,
    maps: Mutex<(KeyMap, KeyMap)>,
}

impl SeriesCache {
    pub fn new(capacity: usize) -> Self {
        SeriesCache {
            capacity: capacity.max(1),
            maps: Mutex::new((KeyMap::default(), KeyMap::default())),
        }
    }

    /// How many active series it holds without misses.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The series id of a key, if known.
    pub fn get(&self, key: &SeriesKey) -> Option<i64> {
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&id) = maps.0.get(key) {
            return Some(id);
        }
        let id = maps.1.remove(key)?;
        self.insert_locked(&mut maps, *key, id);
        Some(id)
    }

    /// Remembers committed series ids.
    pub fn insert_all(&self, entries: impl IntoIterator<Item = (SeriesKey, i64)>) {
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        for (key, id) in entries {
            self.insert_locked(&mut maps, key, id);
        }
    }

    fn insert_locked(&self, maps: &mut (KeyMap, KeyMap), key: SeriesKey, id: i64) {
        if maps.0.len() >= self.capacity {
            maps.1 = std::mem::take(&mut maps.0);
        }
        maps.0.insert(key, id);
    }

    /// Entries held (both generations).
    pub fn len(&self) -> usize {
        let maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        maps.0.len() + maps.1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Fills the cache with the most recently created series, up to its capacity, so a
/// restarted collector finds its fleet's series with one read instead of a lookup per batch.
/// Rows are streamed into the cache: holding a million rows first would triple the
/// collector's peak memory for the sake of one read at start.
pub async fn warm(
    client: &tokio_postgres::Client,
    series_table: &str,
    cache: &SeriesCache,
) -> Result<usize, super::StoreError> {
    use futures::TryStreamExt;
    let limit = i64::try_from(cache.capacity).unwrap_or(i64::MAX);
    // Oldest first, so the most recent series are the last inserted and the surest kept.
    let rows = client
        .query_raw(
            &format!(
                "SELECT series_key::text, series_id FROM
                   (SELECT series_key, series_id FROM {series_table} ORDER BY series_id DESC LIMIT $1) s
                 ORDER BY series_id"
            ),
            [limit],
        )
        .await?;
    futures::pin_mut!(rows);
    let mut loaded = 0;
    while let Some(row) = rows.try_next().await? {
        if let Some(key) = SeriesKey::from_uuid_text(row.get(0)) {
            cache.insert_all([(key, row.get(1))]);
            loaded += 1;
        }
    }
    Ok(loaded)
}

/// A series the cache did not know when its point was decoded: everything needed to find
/// or create its row.
#[derive(Debug, Clone)]
pub struct NewSeries {
    pub key: SeriesKey,
    pub device_id: String,
    pub location: String,
    pub metric_name: String,
    pub unit: String,
    pub attributes: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED: &str = "491e09ec-c71f-0fff-4f66-56c9a00da753";

    #[test]
    fn keys_are_stable_across_versions() {
        // Persisted in the database: a change here orphans every stored series.
        let key = SeriesKey::of("dev-1", "building-a", "device.temperature", "Cel", "{}");
        assert_eq!(
            key,
            SeriesKey::of("dev-1", "building-a", "device.temperature", "Cel", "{}")
        );
        assert_eq!(key.uuid_text(), PINNED);
        assert_eq!(
            SeriesKey::of("", "", "", "", "").uuid_text(),
            SeriesKey::of("", "", "", "", "").uuid_text()
        );
        let reference = Xxh3::new();
        let mut reference = reference;
        for _ in 0..5 {
            reference.update(&0u64.to_le_bytes());
        }
        let v = reference.digest128();
        assert_eq!(
            SeriesKey::of("", "", "", "", "").0,
            [(v >> 64) as u64, v as u64]
        );
    }

    #[test]
    fn field_boundaries_matter() {
        assert_ne!(
            SeriesKey::of("ab", "c", "m", "", "{}"),
            SeriesKey::of("a", "bc", "m", "", "{}")
        );
        assert_ne!(
            SeriesKey::of("d", "l", "m", "", "{}"),
            SeriesKey::of("d", "l", "m", "", "{\"a\":1}")
        );
    }

    #[test]
    fn uuid_text_is_postgres_uuid_syntax() {
        let key = SeriesKey([0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210]);
        assert_eq!(key.uuid_text(), "01234567-89ab-cdef-fedc-ba9876543210");
        assert_eq!(SeriesKey::from_uuid_text(&key.uuid_text()), Some(key));
        assert_eq!(SeriesKey::from_uuid_text("not-a-uuid"), None);
        assert_eq!(
            SeriesKey::from_uuid_text("01234567-89AB-CDEF-FEDC-BA9876543210"),
            Some(key)
        );
        assert_eq!(
            SeriesKey::from_uuid_text("01234567-89ab-cdef-fedc-ba9876543210f"),
            None
        );
        assert_eq!(
            SeriesKey::from_uuid_text("01234567-89ab-cdef-fedc-ba987654321"),
            None
        );
    }

    #[test]
    fn cache_is_bounded_and_keeps_recent_keys() {
        let cache = SeriesCache::new(100);
        let key = |i: u64| SeriesKey([i, i.wrapping_mul(0x9e37_79b9_7f4a_7c15)]);
        for i in 0..1_000 {
            cache.insert_all([(key(i), i as i64)]);
            assert!(cache.len() <= 200);
        }
        // The last `capacity` inserted are all there, with their ids.
        for i in 900..1_000 {
            assert_eq!(cache.get(&key(i)), Some(i as i64));
        }
        assert_eq!(cache.get(&key(0)), None);
    }

    #[test]
    fn a_fleet_as_large_as_the_cache_never_misses_once_known() {
        // A fleet reports its series round and round. With a generation of half the
        // capacity, a fleet between half and all of it used to miss part of every round.
        let capacity = 1_000;
        let cache = SeriesCache::new(capacity);
        let key = |i: u64| SeriesKey([i, i.wrapping_mul(0x9e37_79b9_7f4a_7c15)]);
        let mut misses = 0;
        for round in 0..10 {
            for i in 0..capacity as u64 {
                if cache.get(&key(i)).is_none() {
                    assert_eq!(round, 0, "series {i} missed in round {round}");
                    misses += 1;
                    cache.insert_all([(key(i), i as i64)]);
                }
            }
        }
        assert_eq!(misses, capacity);
    }

    #[test]
    fn lookups_keep_a_key_alive() {
        let cache = SeriesCache::new(10);
        let key = |i: u64| SeriesKey([i, !i]);
        cache.insert_all([(key(0), 0)]);
        for i in 1..100 {
            cache.insert_all([(key(i), i as i64)]);
            assert_eq!(cache.get(&key(0)), Some(0), "after {i} inserts");
        }
    }
}
