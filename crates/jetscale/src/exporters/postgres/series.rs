//! Series identity for the series layout. Every distinct (device, location, metric, unit,
//! attributes) is stored once in `{table}_series`; a point row is only `(time, series_id,
//! value)`. The collector keys a series by a 128-bit XXH3 hash of its identity, computed
//! while decoding, and keeps the ids it has seen in a bounded cache, so in the steady state a
//! point costs no lookup in the database at all. Misses are resolved by the writer inside the
//! batch's transaction (see `writer.rs`), and only committed ids enter the cache.

use std::sync::Mutex;
use xxhash_rust::xxh3::{xxh3_128, Xxh3};

/// Bytes of each field's length prefix in a series identity.
const LEN_PREFIX: usize = 8;

/// Identities up to this size (five length prefixes and the text) are hashed in one call.
const INLINE_IDENTITY: usize = 512;

/// A series' identity hash, stored as the series table's `series_key uuid`. The hash is
/// XXH3-128, whose output is fixed by its specification, so keys written by one version of
/// jetscale are found by the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey(pub [u64; 2]);

impl SeriesKey {
    /// Hashes the fields with their lengths, so `("ab", "c")` and `("a", "bc")` differ.
    ///
    /// Called once per point: an identity that fits [`INLINE_IDENTITY`] bytes (nearly all) is
    /// laid out on the stack and hashed in one call, which gives the same digest as feeding
    /// the streaming hasher the same bytes at a fraction of its cost (its state is a struct of
    /// about 580 bytes with a 256-byte input buffer).
    pub fn of(
        device_id: &str,
        location: &str,
        metric_name: &str,
        unit: &str,
        attributes: &str,
    ) -> Self {
        let fields = [device_id, location, metric_name, unit, attributes];
        let identity_len: usize = fields.iter().map(|f| LEN_PREFIX + f.len()).sum();
        let v = if identity_len <= INLINE_IDENTITY {
            let mut identity = [0u8; INLINE_IDENTITY];
            let mut at = 0;
            for field in fields {
                identity[at..at + LEN_PREFIX].copy_from_slice(&(field.len() as u64).to_le_bytes());
                at += LEN_PREFIX;
                identity[at..at + field.len()].copy_from_slice(field.as_bytes());
                at += field.len();
            }
            xxh3_128(&identity[..at])
        } else {
            let mut h = Xxh3::new();
            for field in fields {
                h.update(&(field.len() as u64).to_le_bytes());
                h.update(field.as_bytes());
            }
            h.digest128()
        };
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
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let value = (u128::from(self.0[0]) << 64) | u128::from(self.0[1]);
        let mut text = String::with_capacity(36);
        for i in 0..32 {
            if matches!(i, 8 | 12 | 16 | 20) {
                text.push('-');
            }
            let nibble = (value >> (124 - 4 * i)) & 0xf;
            text.push(char::from(HEX[nibble as usize]));
        }
        text
    }
}

/// A bounded map from series key to series id, shared by the decoder and the writers.
///
/// Two generations of up to `capacity` entries each: lookups hit the current one or promote
/// from the previous one; when the current one is full it becomes the previous one and the
/// oldest generation is dropped. A fleet with up to `capacity` active series therefore
/// never misses once its series are known, whatever order they arrive in; one with more
/// misses on the excess every time round (the writers count those lookups, and the
/// collector warns). A turnover only happens when more than `capacity` distinct series are
/// seen, so a steady fleet holds one generation.
///
/// Each generation is a [`KeyTable`]: 16 bytes an entry, grown a segment at a time, so a
/// fleet of 1.5 million series costs about 32 MiB and growing it never holds two copies.
/// Lookups take one trip to memory; [`SeriesCache::get_many`] overlaps those trips.
#[derive(Debug)]
pub struct SeriesCache {
    capacity: usize,
    generations: Mutex<Generations>,
}

#[derive(Debug)]
struct Generations {
    current: KeyTable,
    previous: KeyTable,
}

impl SeriesCache {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let segment_slots = KeyTable::segment_slots_for(capacity);
        SeriesCache {
            capacity,
            generations: Mutex::new(Generations {
                current: KeyTable::new(segment_slots),
                previous: KeyTable::new(segment_slots),
            }),
        }
    }

    /// How many active series it holds without misses.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.generations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The series id of a key, if known.
    pub fn get(&self, key: &SeriesKey) -> Option<i64> {
        let mut generations = self.lock();
        self.get_locked(&mut generations, key)
    }

    /// The series ids of many keys (`None` where unknown), in `ids`, under one lock and with
    /// the memory trips of the lookups overlapped: a point's lookup is a cache miss once the
    /// fleet outgrows the CPU's caches, and the misses of a message's points need not wait
    /// on one another.
    pub fn get_many(&self, keys: &[SeriesKey], ids: &mut Vec<Option<i64>>) {
        ids.clear();
        let mut generations = self.lock();
        for key in keys {
            generations.current.prefetch(key);
        }
        for key in keys {
            let id = self.get_locked(&mut generations, key);
            ids.push(id);
        }
    }

    fn get_locked(&self, generations: &mut Generations, key: &SeriesKey) -> Option<i64> {
        if let Some(id) = generations.current.get(key) {
            return Some(id);
        }
        // Promoted, not moved: the stale copy goes with its generation, which spares the
        // table deletions (and their tombstones).
        let id = generations.previous.get(key)?;
        self.insert_locked(generations, *key, id);
        Some(id)
    }

    /// Remembers committed series ids.
    pub fn insert_all(&self, entries: impl IntoIterator<Item = (SeriesKey, i64)>) {
        let mut generations = self.lock();
        for (key, id) in entries {
            self.insert_locked(&mut generations, key, id);
        }
    }

    fn insert_locked(&self, generations: &mut Generations, key: SeriesKey, id: i64) {
        if generations.current.len() >= self.capacity {
            let fresh = KeyTable::new(generations.current.segment_slots);
            generations.previous = std::mem::replace(&mut generations.current, fresh);
        }
        generations.current.insert(key, id);
    }

    /// Entries held (both generations).
    pub fn len(&self) -> usize {
        let generations = self.lock();
        generations.current.len() + generations.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of table memory held (both generations).
    pub fn table_bytes(&self) -> usize {
        let generations = self.lock();
        generations.current.bytes() + generations.previous.bytes()
    }
}

/// One entry of a [`KeyTable`]: 96 of the key's 128 bits and the id. Four share a cache
/// line. Two series of a fleet of a million share 96 bits with odds of about 10⁻¹⁷; a
/// mix-up there would file a point under another series, so the database keeps the full key.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(16))]
struct Slot {
    key_high: u64,
    key_mid: u32,
    /// The series id plus one; 0 marks an empty slot.
    id_plus_one: u32,
}

impl Slot {
    fn holds(&self, key: &SeriesKey) -> bool {
        self.key_high == key.0[0] && self.key_mid == (key.0[1] >> 32) as u32
    }

    /// The key as far as the slot keeps it: enough to place it again when a segment splits.
    fn key(&self) -> SeriesKey {
        SeriesKey([self.key_high, u64::from(self.key_mid) << 32])
    }
}

/// Series ids above this are not cached (their points are resolved by the writer every
/// batch); a table would need four billion series first.
const MAX_CACHED_ID: i64 = u32::MAX as i64 - 1;

/// A segment never fills beyond 7/8 of its slots: linear probing stays at a few probes per
/// lookup, within one or two cache lines.
const fn segment_max_len(slots: usize) -> usize {
    slots - slots / 8
}

#[derive(Debug)]
struct Segment {
    /// How many leading bits of the directory hash its keys share.
    depth: u32,
    len: usize,
    slots: Box<[Slot]>,
}

impl Segment {
    fn new(depth: u32, slots: usize) -> Self {
        Segment {
            depth,
            len: 0,
            slots: vec![Slot::default(); slots].into_boxed_slice(),
        }
    }

    fn home(&self, key: &SeriesKey) -> usize {
        key.0[0] as usize & (self.slots.len() - 1)
    }

    fn get(&self, key: &SeriesKey) -> Option<i64> {
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let slot = &self.slots[i];
            if slot.id_plus_one == 0 {
                return None;
            }
            if slot.holds(key) {
                return Some(i64::from(slot.id_plus_one) - 1);
            }
            i = (i + 1) & mask;
        }
    }

    /// Sets a key's id; true if the key is new here.
    fn put(&mut self, key: &SeriesKey, id_plus_one: u32) -> bool {
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let slot = &mut self.slots[i];
            if slot.id_plus_one == 0 {
                *slot = Slot {
                    key_high: key.0[0],
                    key_mid: (key.0[1] >> 32) as u32,
                    id_plus_one,
                };
                self.len += 1;
                return true;
            }
            if slot.holds(key) {
                slot.id_plus_one = id_plus_one;
                return false;
            }
            i = (i + 1) & mask;
        }
    }
}

/// An open-addressing hash table from key to id that grows by extendible hashing: a
/// directory indexed by the leading bits of the key's low word points at fixed-size
/// segments, and a full segment splits in two on one more bit. Growth therefore touches
/// one segment at a time and never needs the old and the new table at once, which a
/// doubling hash map does (1.5× its size at the worst moment).
#[derive(Debug)]
struct KeyTable {
    /// Bits of the key the directory is indexed by.
    depth: u32,
    directory: Vec<u32>,
    segments: Vec<Segment>,
    segment_slots: usize,
    len: usize,
}

/// Directory depth cap: 2²⁰ segments is beyond any cache's memory, and the cap bounds the
/// directory (4 MiB) should keys ever cluster instead of being uniform hashes.
const MAX_DEPTH: u32 = 20;

impl KeyTable {
    /// Slots per segment (a power of two): 1 MiB segments for large caches, smaller ones
    /// for small caches so that a turnover does not allocate far more than it holds.
    fn segment_slots_for(capacity: usize) -> usize {
        (capacity * 2).next_power_of_two().clamp(64, 1 << 16)
    }

    fn new(segment_slots: usize) -> Self {
        KeyTable {
            depth: 0,
            directory: Vec::new(),
            segments: Vec::new(),
            segment_slots,
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn bytes(&self) -> usize {
        self.segments.len() * self.segment_slots * std::mem::size_of::<Slot>()
            + self.directory.len() * std::mem::size_of::<u32>()
    }

    /// The directory hash: the top half of the key's low word, the part of it a slot keeps
    /// (so a split can place a key by what its slot holds). Its leading bits pick the
    /// segment; the home slot comes from the high word, independent of them.
    fn directory_hash(key: &SeriesKey) -> u64 {
        key.0[1] >> 32 << 32
    }

    fn segment_index(&self, key: &SeriesKey) -> Option<usize> {
        let entry = if self.depth == 0 {
            0
        } else {
            (Self::directory_hash(key) >> (64 - self.depth)) as usize
        };
        self.directory.get(entry).map(|&s| s as usize)
    }

    fn get(&self, key: &SeriesKey) -> Option<i64> {
        let segment = &self.segments[self.segment_index(key)?];
        segment.get(key)
    }

    fn prefetch(&self, key: &SeriesKey) {
        if let Some(segment) = self.segment_index(key).and_then(|s| self.segments.get(s)) {
            prefetch_read(&segment.slots[segment.home(key)]);
        }
    }

    fn insert(&mut self, key: SeriesKey, id: i64) {
        if !(0..=MAX_CACHED_ID).contains(&id) {
            return;
        }
        let id_plus_one = (id + 1) as u32;
        if self.segments.is_empty() {
            self.segments.push(Segment::new(0, self.segment_slots));
            self.directory.push(0);
        }
        loop {
            let Some(index) = self.segment_index(&key) else {
                return;
            };
            let segment = &mut self.segments[index];
            if segment.len < segment_max_len(self.segment_slots) || segment.get(&key).is_some() {
                if segment.put(&key, id_plus_one) {
                    self.len += 1;
                }
                return;
            }
            if !self.split(index) {
                // Out of directory bits: keep what is held rather than overfill a segment.
                return;
            }
        }
    }

    /// Splits a full segment in two on its next directory bit; false if it can not.
    fn split(&mut self, index: usize) -> bool {
        let depth = self.segments[index].depth;
        if depth >= MAX_DEPTH {
            return false;
        }
        if depth == self.depth {
            self.directory = self.directory.iter().flat_map(|&s| [s, s]).collect();
            self.depth += 1;
        }
        let old = std::mem::replace(
            &mut self.segments[index],
            Segment::new(depth + 1, self.segment_slots),
        );
        let mut high = Segment::new(depth + 1, self.segment_slots);
        let bit = 63 - depth;
        for slot in old.slots.iter().filter(|s| s.id_plus_one != 0) {
            let key = slot.key();
            if (Self::directory_hash(&key) >> bit) & 1 == 1 {
                high.put(&key, slot.id_plus_one);
            } else {
                self.segments[index].put(&key, slot.id_plus_one);
            }
        }
        let high_index = self.segments.len() as u32;
        self.segments.push(high);
        // Entries that pointed at the old segment and have the new bit set move to `high`.
        let shift = self.depth - 1 - depth;
        for (entry, target) in self.directory.iter_mut().enumerate() {
            if *target as usize == index && (entry >> shift) & 1 == 1 {
                *target = high_index;
            }
        }
        true
    }
}

/// Asks the CPU to start loading a line it is about to read.
#[inline(always)]
fn prefetch_read<T>(at: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint with no architectural effect; the address is a valid
    // reference.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((at as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
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
    let limit = i64::try_from(cache.capacity()).unwrap_or(i64::MAX);
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
    fn one_shot_and_streaming_hashes_agree_on_both_sides_of_the_inline_size() {
        let streamed = |fields: [&str; 5]| {
            let mut h = Xxh3::new();
            for field in fields {
                h.update(&(field.len() as u64).to_le_bytes());
                h.update(field.as_bytes());
            }
            h.digest128()
        };
        // The same identity laid out apart from `of`, hashed in one call.
        let one_shot = |fields: [&str; 5]| {
            let mut identity = Vec::new();
            for field in fields {
                identity.extend_from_slice(&(field.len() as u64).to_le_bytes());
                identity.extend_from_slice(field.as_bytes());
            }
            xxh3_128(&identity)
        };
        let fixed = 5 * LEN_PREFIX + "dev-1".len() + "site".len() + "m".len() + "u".len();
        // Every length through XXH3's own size classes (≤ 128, ≤ 240, longer) and the
        // streaming hasher's 256-byte buffer, up to past the inline size.
        for attributes_len in 0..=INLINE_IDENTITY - fixed + 64 {
            let attributes = "x".repeat(attributes_len);
            let fields = ["dev-1", "site", "m", "u", attributes.as_str()];
            let key = SeriesKey::of(fields[0], fields[1], fields[2], fields[3], fields[4]);
            let expected = streamed(fields);
            assert_eq!(one_shot(fields), expected, "{attributes_len} bytes");
            assert_eq!(
                key,
                SeriesKey([(expected >> 64) as u64, expected as u64]),
                "attributes of {attributes_len} bytes"
            );
        }
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

    fn random_keys(n: usize, seed: u64) -> Vec<SeriesKey> {
        (0..n as u64)
            .map(|i| {
                let v = xxhash_rust::xxh3::xxh3_128_with_seed(&i.to_le_bytes(), seed);
                SeriesKey([(v >> 64) as u64, v as u64])
            })
            .collect()
    }

    #[test]
    fn a_large_table_finds_every_key_through_its_splits() {
        let keys = random_keys(500_000, 7);
        let cache = SeriesCache::new(1_000_000);
        cache.insert_all(keys.iter().enumerate().map(|(i, k)| (*k, i as i64)));
        assert_eq!(cache.len(), keys.len());
        let mut ids = Vec::new();
        for (chunk_index, chunk) in keys.chunks(1_000).enumerate() {
            cache.get_many(chunk, &mut ids);
            for (i, id) in ids.iter().enumerate() {
                assert_eq!(*id, Some((chunk_index * 1_000 + i) as i64));
            }
        }
        for key in random_keys(1_000, 8) {
            assert_eq!(cache.get(&key), None);
        }
        // Segments split as they fill: the table holds the keys at no worse than 3/8 full.
        let slots = cache.table_bytes() / std::mem::size_of::<Slot>();
        assert!(
            slots * 3 / 8 <= keys.len(),
            "{slots} slots for {} keys",
            keys.len()
        );
    }

    #[test]
    fn reinserting_a_key_updates_its_id() {
        let cache = SeriesCache::new(1_000);
        let key = random_keys(1, 1)[0];
        cache.insert_all([(key, 5)]);
        cache.insert_all([(key, 9)]);
        assert_eq!(cache.get(&key), Some(9));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn ids_beyond_the_slot_are_resolved_elsewhere_not_truncated() {
        let cache = SeriesCache::new(1_000);
        let keys = random_keys(4, 2);
        cache.insert_all([
            (keys[0], -1),
            (keys[1], u32::MAX as i64),
            (keys[2], i64::MAX),
            (keys[3], MAX_CACHED_ID),
        ]);
        assert_eq!(cache.get(&keys[0]), None);
        assert_eq!(cache.get(&keys[1]), None);
        assert_eq!(cache.get(&keys[2]), None);
        assert_eq!(cache.get(&keys[3]), Some(MAX_CACHED_ID));
    }

    #[test]
    fn clustered_keys_stop_being_cached_instead_of_growing_without_bound() {
        // Not hashes: every key has the same directory bits, so splits can not spread them.
        let cache = SeriesCache::new(1_000_000);
        for i in 0..100_000u64 {
            cache.insert_all([(SeriesKey([i, 0]), i as i64)]);
        }
        assert!(cache.len() < 100_000);
        assert!(
            cache.table_bytes() < 64 << 20,
            "{} bytes",
            cache.table_bytes()
        );
        assert_eq!(cache.get(&SeriesKey([1, 0])), Some(1));
    }
}
