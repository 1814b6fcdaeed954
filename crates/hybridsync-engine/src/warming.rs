//! Predictive cache warming: learns when each key is read, predicts the reads due
//! before the next round, and loads those records into the hot cache ahead of them.
//!
//! The read path only records: it hashes the key and writes the hash and the time into
//! a fixed ring of atomics (no lock, no allocation). A background round digests the
//! ring into per-key histories (an LRU of at most `max_keys` keys, each with its last
//! [`HISTORY`] access times), scores every key, and prefetches the best `top_k` above
//! `threshold` that are not cached yet. A key's name is learnt on a cache miss, the
//! one read that goes to the store anyway: a key that never misses never needs warming.
//!
//! Two predictors, the higher confidence wins:
//! - **regular intervals**: the newest four or more gaps (three at first), spread under 30 % of
//!   their mean (a user unlocking every morning); confidence 0.8–0.95 by regularity,
//!   weighed by the number of gaps ((n+½)/(n+1½): three gaps within a tenth of their
//!   mean reach the default threshold, two never do), and halved for every expected
//!   read that did not come;
//! - **frequency**: a key read at a steady rate and recently, with the Poisson chance
//!   of at least one read within the round ahead (capped at 0.9).

use hybridsync_core::{CollectionName, Key};
use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hybridsync_core::MutexExt;

/// Access times kept per key.
pub(crate) const HISTORY: usize = 8;

/// Slots of the access ring the read path writes (a power of two).
const RING: usize = 1 << 14;

/// Reads of one key closer together than this count as one access (a burst of reads
/// for one login is one event).
const COALESCE_MS: u64 = 50;

/// How early a regular key's read is expected, in standard deviations of its reads
/// about their line: three, since the hot cache keeps an unread prefetch for a second
/// lap (with two, 13 % of the periodic bench's reads missed, the early ones most; with
/// three, 10 %; `tests/bench/measures.md`).
const RESIDUALS_EARLY: f64 = 3.0;

/// How early, beyond [`RESIDUALS_EARLY`] residuals, a regular key's read is expected.
const SLACK_MS: f64 = 10.0;

/// Names learnt on misses and not yet digested, at most.
const PENDING_NAMES: usize = 4_096;

/// How predictive warming runs (`[cache.warming]`).
#[derive(Debug, Clone, PartialEq)]
pub struct WarmingConfig {
    /// Whether reads are recorded and the warming loop runs.
    pub enabled: bool,
    /// How often the loop predicts and prefetches; also how far ahead it looks. The
    /// access ring is digested at least every [`WarmingConfig::DIGEST_EVERY`].
    pub interval: Duration,
    /// The least confidence (0–1) that a key is read within the next interval for it
    /// to be prefetched.
    pub threshold: f64,
    /// At most this many keys are prefetched per round, most confident first.
    pub top_k: usize,
    /// At most this many keys have an access history (least recently read dropped).
    pub max_keys: usize,
}

impl WarmingConfig {
    /// The longest the ring goes undigested, so a busy store loses few accesses.
    pub const DIGEST_EVERY: Duration = Duration::from_millis(250);
}

impl Default for WarmingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(60),
            threshold: 0.7,
            top_k: 10,
            max_keys: 4_096,
        }
    }
}

/// What warming has done since the store opened.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WarmingStats {
    pub enabled: bool,
    /// Reads recorded by the read path.
    pub accesses: u64,
    /// Recorded reads overwritten in the ring before a digest read them.
    pub dropped: u64,
    /// Keys with an access history now.
    pub tracked_keys: usize,
    /// Predictions at or above the threshold, over all rounds (cached keys included).
    pub predictions: u64,
    /// Records loaded into the hot cache ahead of a read.
    pub prefetches: u64,
    /// Reads served by a prefetched record (its first read after the load).
    pub prefetch_hits: u64,
    /// `prefetch_hits / prefetches` (0 before the first prefetch).
    pub accuracy: f64,
    /// Bytes the warming state holds: the ring, the known-names table, the histories
    /// and the key names.
    pub memory_bytes: usize,
}

impl WarmingStats {
    /// Sets the warming metrics to these figures.
    pub fn publish(&self) {
        use hybridsync_telemetry::catalogue;
        metrics::counter!(catalogue::WARMING_PREDICTIONS).absolute(self.predictions);
        metrics::counter!(catalogue::WARMING_PREFETCHES).absolute(self.prefetches);
        metrics::counter!(catalogue::WARMING_PREFETCH_HITS).absolute(self.prefetch_hits);
        metrics::gauge!(catalogue::WARMING_ACCURACY).set(self.accuracy);
        metrics::gauge!(catalogue::WARMING_TRACKED_KEYS).set(self.tracked_keys as f64);
        metrics::gauge!(catalogue::WARMING_MEMORY).set(self.memory_bytes as f64);
    }
}

/// One predicted read.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub collection: CollectionName,
    pub key: Key,
    /// 0–1: the chance the key is read before the next round.
    pub confidence: f64,
    /// When that read is expected.
    pub due_in: Duration,
}

/// The access history of one key.
#[derive(Debug, Default)]
struct History {
    /// Milliseconds since the warmer's epoch, oldest first.
    times: VecDeque<u64>,
    /// Learnt on a miss.
    name: Option<(CollectionName, Key)>,
}

impl History {
    fn push(&mut self, at: u64) {
        match self.times.back() {
            Some(&last) if at < last + COALESCE_MS => {}
            _ => {
                if self.times.len() == HISTORY {
                    self.times.pop_front();
                }
                self.times.push_back(at);
            }
        }
    }

    /// The chance (0–1) that this key is read in `(now, now + ahead]`, and when that
    /// read is expected (ms since the epoch).
    fn confidence(&self, now: u64, ahead: u64) -> (f64, u64) {
        let n = self.times.len();
        let (Some(&first), Some(&last)) = (self.times.front(), self.times.back()) else {
            return (0.0, u64::MAX);
        };
        if n < 3 {
            return (0.0, u64::MAX);
        }
        // On the stack: a round scores every tracked key under the histories' lock.
        let mut buffer = [0.0f64; HISTORY - 1];
        for (gap, (a, b)) in buffer
            .iter_mut()
            .zip(self.times.iter().zip(self.times.iter().skip(1)))
        {
            *gap = (b - a) as f64;
        }
        let gaps = &buffer[..n - 1];
        let (now_f, ahead_f, last_f) = (now as f64, ahead as f64, last as f64);
        let mut best = (0.0, u64::MAX);
        // The longest run of newest gaps that is regular (at least four, or three
        // while that is all there is): an old outlier, or an earlier habit, does not
        // hide the current one. Three random gaps look regular too often.
        let regular = (gaps.len().min(4)..=gaps.len())
            .rev()
            .map(|len| (len, mean_and_spread(&gaps[gaps.len() - len..])))
            .find(|&(_, (mean, spread))| mean > 0.0 && spread < 0.3 * mean);
        if let Some((len, (mean, spread))) = regular {
            let (due, period, residual) = next_in_line(self.times.range(n - 1 - len..));
            // The next expected read not yet past (allowing the slack), and
            // how many expected reads have not come since.
            let slack = RESIDUALS_EARLY * residual + SLACK_MS;
            let missed = ((now_f - slack - due) / period.max(1.0)).ceil().max(0.0);
            let due = due + missed * period;
            if due - slack <= now_f + ahead_f && missed < 8.0 {
                // 0.8–0.95 by regularity, weighed by the evidence ((n+½)/(n+1½) for n
                // gaps): three exact gaps give 0.74, three spread by 10 % of their
                // mean 0.70, two at most 0.68; four exact ones give 0.78, four loose
                // ones 0.65.
                let regularity = 0.8 + 0.15 * (1.0 - spread / (0.3 * mean));
                let evidence = (len as f64 + 0.5) / (len as f64 + 1.5);
                best = (regularity * evidence * 0.5f64.powf(missed), due as u64);
            }
        }
        // A steady rate, still going: the Poisson chance of a read within `ahead`.
        let rate_gap = (last - first) as f64 / (n - 1) as f64;
        if rate_gap > 0.0 && now_f - last_f < 3.0 * rate_gap {
            let frequent = (1.0 - (-ahead_f / rate_gap).exp()).min(0.9);
            if frequent > best.0 {
                best = (frequent, (last_f + rate_gap).max(now_f) as u64);
            }
        }
        best
    }
}

/// The next time of a regular series, from the least-squares line through `times`
/// (time against index): the line averages out each read's own jitter, where the last
/// read plus the mean gap would carry the last read's. Also the line's slope (the
/// period) and the residuals' standard deviation: how far off a read may fall.
fn next_in_line<'a>(times: impl ExactSizeIterator<Item = &'a u64> + Clone) -> (f64, f64, f64) {
    let m = times.len() as f64;
    let base = *times.clone().next().expect("at least four times") as f64;
    let ys = times.map(|&t| t as f64 - base);
    let x_mean = (m - 1.0) / 2.0;
    let y_mean = ys.clone().sum::<f64>() / m;
    let (mut sxx, mut sxy) = (0.0, 0.0);
    for (i, y) in ys.clone().enumerate() {
        let dx = i as f64 - x_mean;
        sxx += dx * dx;
        sxy += dx * (y - y_mean);
    }
    let slope = sxy / sxx;
    let intercept = y_mean - slope * x_mean;
    let squares: f64 = ys
        .enumerate()
        .map(|(i, y)| (y - intercept - slope * i as f64).powi(2))
        .sum();
    let residual = (squares / (m - 2.0).max(1.0)).sqrt();
    (base + intercept + slope * m, slope, residual)
}

/// The mean of `gaps` and their standard deviation.
fn mean_and_spread(gaps: &[f64]) -> (f64, f64) {
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    let variance = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
    (mean, variance.sqrt())
}

struct Learnt {
    histories: lru::LruCache<u64, History>,
    /// Ring slots read up to here.
    cursor: u64,
    /// Bytes of the key names held.
    name_bytes: usize,
}

/// The access recorder and predictor of one engine.
pub struct Warmer {
    config: WarmingConfig,
    epoch: Instant,
    /// The access ring: one cache line holds four slots.
    slots: Box<[Slot]>,
    head: AtomicU64,
    dropped: AtomicU64,
    learnt: Mutex<Learnt>,
    /// Names learnt on misses, not yet digested: apart from the histories, so a miss
    /// never waits for a digest or a prediction round.
    pending: Mutex<Vec<(u64, CollectionName, Key)>>,
    /// The hashes of the keys whose histories hold their names, one per slot (by the
    /// hash's low bits; 0 for none), rebuilt by every digest. Two named keys may want
    /// one slot: the other one's misses then queue its name again, to no harm.
    named: Box<[AtomicU64]>,
    predictions: AtomicU64,
}

impl std::fmt::Debug for Warmer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warmer")
            .field("config", &self.config)
            .field("accesses", &self.head.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A key hash and its stamp, `time_ms << 20 | index & 0xFFFFF`, by which a digest
/// tells a slot written for the index it expects from a stale or overwritten one.
#[repr(align(16))]
struct Slot {
    hash: AtomicU64,
    stamp: AtomicU64,
}

const INDEX_BITS: u32 = 20;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;

/// A hash of the collection and the key, eight bytes at a time (the rotate-xor-multiply
/// step of FxHash), each part's tail closed by its length: cheap on the short keys of
/// the read path (no call, no copy), and what the ring stores instead of the key.
#[inline]
pub(crate) fn key_hash(collection: &CollectionName, key: &str) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mix = |hash: u64, word: u64| (hash.rotate_left(5) ^ word).wrapping_mul(K);
    let mut hash = 0;
    for part in [collection.as_str().as_bytes(), key.as_bytes()] {
        let mut words = part.chunks_exact(8);
        for word in &mut words {
            hash = mix(
                hash,
                u64::from_le_bytes(word.try_into().expect("eight bytes")),
            );
        }
        let mut tail = 0u64;
        for (i, byte) in words.remainder().iter().enumerate() {
            tail |= u64::from(*byte) << (8 * i);
        }
        hash = mix(hash, tail ^ ((part.len() as u64) << 56));
    }
    hash
}

impl Warmer {
    pub fn new(config: WarmingConfig) -> Self {
        let max_keys = NonZeroUsize::new(config.max_keys.max(1)).expect("at least one key");
        Self {
            config,
            epoch: Instant::now(),
            slots: (0..RING)
                .map(|_| Slot {
                    hash: AtomicU64::new(0),
                    stamp: AtomicU64::new(u64::MAX),
                })
                .collect(),
            head: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            learnt: Mutex::new(Learnt {
                histories: lru::LruCache::new(max_keys),
                cursor: 0,
                name_bytes: 0,
            }),
            pending: Mutex::new(Vec::new()),
            named: (0..(2 * max_keys.get()).next_power_of_two())
                .map(|_| AtomicU64::new(0))
                .collect(),
            predictions: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &WarmingConfig {
        &self.config
    }

    /// Milliseconds since this warmer started, at `at`.
    #[inline]
    pub fn millis(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch);
        since.as_secs() * 1_000 + u64::from(since.subsec_millis())
    }

    /// Records a read of `key` at `at` (the read's own start time): a hash, an atomic
    /// increment and two stores.
    #[inline]
    pub fn record(&self, collection: &CollectionName, key: &str, at: Instant) {
        self.record_at(key_hash(collection, key), self.millis(at));
    }

    /// Records a read of the key with `hash` at `ms` since the epoch.
    #[inline]
    pub fn record_at(&self, hash: u64, ms: u64) {
        let index = self.head.fetch_add(1, Ordering::Relaxed);
        let slot = &self.slots[(index as usize) & (RING - 1)];
        slot.hash.store(hash, Ordering::Relaxed);
        slot.stamp
            .store(ms << INDEX_BITS | (index & INDEX_MASK), Ordering::Release);
    }

    /// Learns the name behind a key's hash (on a miss the store answered). Without a
    /// lock when the name is known already, which is every miss but a key's first
    /// since its history began; otherwise the name waits for the next digest.
    pub fn learn(&self, collection: &CollectionName, key: &Key) {
        let hash = key_hash(collection, key.as_str());
        if self.named[self.named_slot(hash)].load(Ordering::Relaxed) == hash {
            return;
        }
        let mut pending = self.pending.lock_or_recover();
        if pending.len() < PENDING_NAMES {
            pending.push((hash, collection.clone(), key.clone()));
        }
    }

    #[inline]
    fn named_slot(&self, hash: u64) -> usize {
        (hash as usize) & (self.named.len() - 1)
    }

    /// Moves the ring's new accesses and the names learnt into the histories.
    pub fn digest(&self) {
        let head = self.head.load(Ordering::Acquire);
        let mut learnt = self.learnt.lock_or_recover();
        let from = learnt.cursor.max(head.saturating_sub(RING as u64));
        if from > learnt.cursor {
            self.dropped
                .fetch_add(from - learnt.cursor, Ordering::Relaxed);
        }
        for index in from..head {
            let slot = &self.slots[(index as usize) & (RING - 1)];
            let stamp = slot.stamp.load(Ordering::Acquire);
            let hash = slot.hash.load(Ordering::Relaxed);
            // Written for this index, and not overwritten while the hash was read.
            if stamp & INDEX_MASK != index & INDEX_MASK
                || stamp == u64::MAX
                || slot.stamp.load(Ordering::Acquire) != stamp
            {
                continue;
            }
            learnt
                .histories
                .get_or_insert_mut(hash, History::default)
                .push(stamp >> INDEX_BITS);
        }
        learnt.cursor = head;
        let pending = std::mem::take(&mut *self.pending.lock_or_recover());
        for (hash, collection, key) in pending {
            let size = collection.as_str().len() + key.as_str().len();
            let Some(history) = learnt.histories.peek_mut(&hash) else {
                continue;
            };
            if history.name.is_none() {
                history.name = Some((collection, key));
                learnt.name_bytes += size;
            }
        }
        // Names of histories the LRU dropped are no longer held, nor marked known.
        for slot in &self.named {
            slot.store(0, Ordering::Relaxed);
        }
        let mut held = 0;
        for (&hash, history) in learnt.histories.iter() {
            if let Some((collection, key)) = &history.name {
                held += collection.as_str().len() + key.as_str().len();
                self.named[self.named_slot(hash)].store(hash, Ordering::Relaxed);
            }
        }
        learnt.name_bytes = held;
    }

    /// The named keys likely read within the next interval, most confident first
    /// (at most `limit`, all at or above the threshold), skipping those `skip` says
    /// need no warming (already cached).
    pub fn predict(
        &self,
        limit: usize,
        skip: impl Fn(&CollectionName, &Key) -> bool,
    ) -> Vec<Prediction> {
        let now = self.millis(Instant::now());
        self.predict_at(now, limit, skip)
    }

    /// [`Warmer::predict`] at `now` ms since the epoch.
    pub fn predict_at(
        &self,
        now: u64,
        limit: usize,
        skip: impl Fn(&CollectionName, &Key) -> bool,
    ) -> Vec<Prediction> {
        let ahead = self.config.interval.as_millis() as u64;
        let mut confident = Vec::new();
        let mut made = 0;
        {
            let learnt = self.learnt.lock_or_recover();
            for (_, history) in learnt.histories.iter() {
                let (confidence, due) = history.confidence(now, ahead);
                if confidence < self.config.threshold {
                    continue;
                }
                made += 1;
                if let Some((collection, key)) = &history.name {
                    confident.push(Prediction {
                        collection: collection.clone(),
                        key: key.clone(),
                        confidence,
                        due_in: Duration::from_millis(due.saturating_sub(now)),
                    });
                }
            }
        }
        self.predictions.fetch_add(made, Ordering::Relaxed);
        // `skip` runs without the histories' lock (it takes the cache's).
        confident.retain(|p| !skip(&p.collection, &p.key));
        // Most confident first (in steps of 0.05), then the soonest due.
        let step = |p: &Prediction| (p.confidence * 20.0).floor() as u64;
        confident.sort_by(|a, b| step(b).cmp(&step(a)).then(a.due_in.cmp(&b.due_in)));
        confident.truncate(limit);
        confident
    }

    /// The confidence that the key with `hash` is read within the next interval (0 for
    /// a key without a history): how hot a cached entry is, against a prefetch that
    /// would evict it.
    pub fn confidence_of(&self, collection: &CollectionName, key: &str) -> f64 {
        let now = self.millis(Instant::now());
        let ahead = self.config.interval.as_millis() as u64;
        let learnt = self.learnt.lock_or_recover();
        learnt
            .histories
            .peek(&key_hash(collection, key))
            .map_or(0.0, |h| h.confidence(now, ahead).0)
    }

    /// Counters and the memory held, with the cache's prefetch figures.
    pub fn stats(&self, prefetches: u64, prefetch_hits: u64) -> WarmingStats {
        let learnt = self.learnt.lock_or_recover();
        let tracked = learnt.histories.len();
        // Per history: the LRU node (key, value, two links) and the times' buffer.
        let per_key = std::mem::size_of::<u64>()
            + std::mem::size_of::<History>()
            + 2 * std::mem::size_of::<usize>()
            + HISTORY * std::mem::size_of::<u64>();
        let ring = RING * std::mem::size_of::<Slot>()
            + self.named.len() * std::mem::size_of::<AtomicU64>();
        WarmingStats {
            enabled: true,
            accesses: self.head.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            tracked_keys: tracked,
            predictions: self.predictions.load(Ordering::Relaxed),
            prefetches,
            prefetch_hits,
            accuracy: if prefetches == 0 {
                0.0
            } else {
                prefetch_hits as f64 / prefetches as f64
            },
            memory_bytes: ring + tracked * per_key + learnt.name_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warmer(interval_ms: u64) -> Warmer {
        Warmer::new(WarmingConfig {
            interval: Duration::from_millis(interval_ms),
            ..WarmingConfig::default()
        })
    }

    fn name(s: &str) -> CollectionName {
        CollectionName::new(s).unwrap()
    }

    fn key(s: &str) -> Key {
        Key::new(s).unwrap()
    }

    fn read(w: &Warmer, k: &str, at: u64) {
        w.record_at(key_hash(&name("c"), k), at);
    }

    fn predicted(w: &Warmer, now: u64) -> Vec<(String, f64)> {
        w.digest();
        w.predict_at(now, 10, |_, _| false)
            .into_iter()
            .map(|p| (p.key.as_str().to_owned(), p.confidence))
            .collect()
    }

    #[test]
    fn a_regular_key_is_predicted_before_it_is_due_and_not_long_before() {
        let w = warmer(60_000);
        let day = 86_400_000;
        // 8:00 every day, give or take two minutes.
        for (i, jitter) in [0i64, 60_000, -90_000, 30_000, 120_000].iter().enumerate() {
            read(
                &w,
                "alice",
                (i as u64 + 1) * day + (*jitter + 200_000) as u64,
            );
        }
        w.learn(&name("c"), &key("alice"));
        let last = 5 * day + 320_000;
        assert!(
            predicted(&w, last + 3_600_000).is_empty(),
            "not due for hours"
        );
        let soon = predicted(&w, 6 * day + 200_000 - 50_000);
        assert_eq!(soon.len(), 1, "{soon:?}");
        assert!(soon[0].1 >= 0.75, "{soon:?}");
        // A day without her halves the confidence, below the threshold.
        assert!(predicted(&w, 7 * day + 200_000 - 50_000).is_empty());
    }

    #[test]
    fn three_gaps_within_a_tenth_of_their_mean_predict_and_two_or_three_loose_do_not() {
        let w = warmer(1_000);
        // Every 10 s up to 40 s: jittered by up to 4 % (gaps spread by 6.4 % of their
        // mean), by up to 20 % (28 %), and read only from 20 s (two gaps).
        let habits: [(&str, &[i64]); 3] = [
            ("steady", &[0, 400, -400, 300]),
            ("loose", &[0, 2_000, -1_500, 1_800]),
            ("new", &[0, 0, 0]),
        ];
        for (k, jitters) in habits {
            let first = 5 - jitters.len() as i64;
            for (i, jitter) in jitters.iter().enumerate() {
                read(&w, k, (10_000 * (first + i as i64) + jitter) as u64);
            }
            w.learn(&name("c"), &key(k));
        }
        let due = predicted(&w, 49_500);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].0, "steady");
        assert!(due[0].1 >= 0.7 && due[0].1 < 0.75, "{due:?}");
    }

    #[test]
    fn a_frequent_key_still_being_read_is_predicted_and_one_gone_quiet_is_not() {
        let w = warmer(10_000);
        // Every 2 s on average, irregularly (gaps of 0.5 s and 3.5 s).
        for i in 0..8 {
            read(&w, "busy", i * 2_000 + if i % 2 == 1 { 1_500 } else { 0 });
        }
        w.learn(&name("c"), &key("busy"));
        let now = predicted(&w, 15_000);
        assert_eq!(now.len(), 1);
        assert!(now[0].1 > 0.85 && now[0].1 <= 0.9, "{now:?}");
        assert!(predicted(&w, 60_000).is_empty(), "quiet for 45 s");
    }

    #[test]
    fn random_reads_give_no_confident_prediction() {
        let w = warmer(1_000);
        // 200 keys, each read about every 20 s at random (exponential gaps).
        let mut t = 0u64;
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..4_000 {
            t += (-(((next() % 10_000) as f64 + 0.5) / 10_000.0).ln() * 100.0) as u64;
            let k = format!("k{}", next() % 200);
            read(&w, &k, t);
            w.learn(&name("c"), &key(&k));
        }
        let confident = predicted(&w, t);
        assert!(
            confident.len() <= 2,
            "{} of 200 keys: {confident:?}",
            confident.len()
        );
    }

    #[test]
    fn the_histories_are_bounded_and_their_memory_counted() {
        let w = Warmer::new(WarmingConfig {
            max_keys: 100,
            ..WarmingConfig::default()
        });
        for i in 0..1_000u64 {
            read(&w, &format!("key-{i}"), i);
            w.learn(&name("c"), &key(&format!("key-{i}")));
            if i % 50 == 0 {
                w.digest();
            }
        }
        w.digest();
        let stats = w.stats(0, 0);
        assert_eq!(stats.tracked_keys, 100);
        assert_eq!(stats.accesses, 1_000);
        assert!(stats.memory_bytes < 300 << 10, "{stats:?}");
    }

    #[test]
    fn a_known_name_is_not_queued_again_and_an_evicted_one_is_relearnt() {
        let w = Warmer::new(WarmingConfig {
            max_keys: 1,
            ..WarmingConfig::default()
        });
        read(&w, "a", 1);
        w.learn(&name("c"), &key("a"));
        assert_eq!(w.pending.lock_or_recover().len(), 1);
        w.digest();
        // Known now: a miss queues nothing.
        w.learn(&name("c"), &key("a"));
        assert!(w.pending.lock_or_recover().is_empty());
        // "b" takes the only history; "a" is forgotten and must be learnt again.
        read(&w, "b", 2);
        w.learn(&name("c"), &key("b"));
        w.digest();
        w.learn(&name("c"), &key("a"));
        assert_eq!(w.pending.lock_or_recover().len(), 1);
        read(&w, "a", 3);
        w.digest();
        w.learn(&name("c"), &key("a"));
        assert!(w.pending.lock_or_recover().is_empty());
        assert_eq!(w.stats(0, 0).tracked_keys, 1);
    }

    #[test]
    fn accesses_beyond_the_ring_between_digests_are_counted_as_dropped() {
        let w = warmer(1_000);
        for i in 0..(RING as u64 + 10) {
            read(&w, "k", i * 100);
        }
        w.digest();
        assert_eq!(w.stats(0, 0).dropped, 10);
    }
}
