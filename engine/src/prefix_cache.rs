//! Reuse of KV state across requests that share a token prefix.
//!
//! Editors resend almost the same prompt on every keystroke, so the longest common prefix
//! with a recent request is usually all but the last few tokens. Entries are snapshots of a
//! prompt's KV cache, bounded in total bytes and evicted least recently used first. A
//! namespace separates states that must never mix (later: one per adapter and generation).
//!
//! A hit does not copy the entry: the request's cache reads the entry's positions in place
//! ([`KvCache::share`]) and keeps them alive while it runs. A finished request's cache is
//! stored in buffers of its own (the shared part copied, once its answer is out), so that
//! one entry never keeps another's buffers alive.

use std::sync::Arc;

use crate::Result;
use crate::nn::KvCache;

/// How many tokens an entry may hold past its common prefix with a newer entry and still
/// be dropped for it: a lookup loses at most this many reusable positions.
const SUPERSEDE_SLACK: usize = 16;

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Counters for observability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Lookups.
    pub queries: u64,
    /// Lookups that reused at least `min_match` tokens.
    pub hits: u64,
    /// Prompt tokens looked up.
    pub query_tokens: u64,
    /// Prompt tokens whose KV state was reused.
    pub hit_tokens: u64,
    /// Entries held now.
    pub entries: u64,
    /// Bytes held now.
    pub bytes: u64,
}

struct Entry {
    namespace: u64,
    tokens: Vec<u32>,
    kv: Arc<KvCache>,
    bytes: usize,
    last_used: u64,
}

/// A byte-bounded LRU of prompt KV snapshots.
pub struct PrefixCache {
    entries: Vec<Entry>,
    max_bytes: usize,
    min_match: usize,
    clock: u64,
    stats: PrefixCacheStats,
}

impl PrefixCache {
    /// Holds at most `max_bytes` of KV state; matches shorter than `min_match` tokens are not
    /// worth a copy and count as misses. `max_bytes == 0` disables the cache.
    pub fn new(max_bytes: usize, min_match: usize) -> Self {
        PrefixCache {
            entries: Vec::new(),
            max_bytes,
            min_match: min_match.max(1),
            clock: 0,
            stats: PrefixCacheStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> PrefixCacheStats {
        PrefixCacheStats {
            entries: self.entries.len() as u64,
            bytes: self.entries.iter().map(|e| e.bytes as u64).sum(),
            ..self.stats
        }
    }

    /// A cache holding the longest reusable prefix of `tokens`, with room for `extra` more
    /// positions, and its length. At least one token is always left to compute, because the
    /// caller needs the logits of the last one.
    pub fn lookup(
        &mut self,
        namespace: u64,
        tokens: &[u32],
        extra: usize,
    ) -> Result<Option<(KvCache, usize)>> {
        self.stats.queries += 1;
        self.stats.query_tokens += tokens.len() as u64;
        let limit = tokens.len().saturating_sub(1);
        let best = self
            .entries
            .iter_mut()
            .filter(|e| e.namespace == namespace)
            .map(|e| {
                let common = common_prefix(&e.tokens, tokens).min(limit);
                (common, e)
            })
            .max_by_key(|(common, e)| (*common, e.last_used));
        match best {
            Some((common, entry)) if common >= self.min_match => {
                self.clock += 1;
                entry.last_used = self.clock;
                let kv = KvCache::share(&entry.kv, common, tokens.len() - common + extra)?;
                self.stats.hits += 1;
                self.stats.hit_tokens += common as u64;
                Ok(Some((kv, common)))
            }
            _ => Ok(None),
        }
    }

    /// Remembers the KV state of `tokens` (the first `tokens.len()` positions of `kv`),
    /// taking the cache itself: a finished request's buffers become the entry without a
    /// copy. Only buffers with much unused room (a request that stopped far short of its
    /// `max_tokens`) are copied down to size first, so that an entry never holds more memory
    /// than its positions need by over a quarter.
    pub fn insert(&mut self, namespace: u64, tokens: &[u32], mut kv: KvCache) -> Result<()> {
        if self.max_bytes == 0 || tokens.len() < self.min_match || kv.len() < tokens.len() {
            return Ok(());
        }
        self.clock += 1;
        let clock = self.clock;
        if let Some(entry) = self
            .entries
            .iter_mut()
            .find(|e| e.namespace == namespace && e.tokens.starts_with(tokens))
        {
            entry.last_used = clock;
            return Ok(());
        }
        let needed = tokens.len() * kv.bytes_per_position();
        if needed > self.max_bytes {
            return Ok(());
        }
        kv.truncate(tokens.len());
        if kv.shared_len() > 0 || kv.allocated_bytes() > needed + needed / 4 {
            // Into buffers of its own, and no larger than its positions need.
            kv = kv.fork(tokens.len(), 0)?;
        }
        let bytes = kv.allocated_bytes().max(needed);
        if bytes > self.max_bytes {
            return Ok(());
        }
        // An entry that the new one covers all but its last few tokens of is superseded: a
        // prompt's last token is often re-tokenized once more text follows it ("foo" becomes
        // "foob" on the next keystroke), so exact prefixes alone would keep one near-copy of
        // the file per keystroke. Only now, when the new entry is sure to be kept.
        self.entries.retain(|e| {
            e.namespace != namespace
                || common_prefix(&e.tokens, tokens) + SUPERSEDE_SLACK < e.tokens.len()
        });
        let mut used: usize = self.entries.iter().map(|e| e.bytes).sum();
        while used + bytes > self.max_bytes {
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
            else {
                break;
            };
            used -= self.entries.swap_remove(oldest).bytes;
        }
        self.entries.push(Entry {
            namespace,
            tokens: tokens.to_vec(),
            kv: Arc::new(kv),
            bytes,
            last_used: clock,
        });
        Ok(())
    }

    /// Forgets every entry (benchmarks that must start cold).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Forgets every entry of `namespace` (an adapter was replaced or unloaded).
    pub fn invalidate(&mut self, namespace: u64) {
        self.entries.retain(|e| e.namespace != namespace);
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    /// A 2-layer cache holding `len` positions whose values count up from `start`, with room
    /// for `room` positions in all.
    fn cache(len: usize, room: usize, start: f32) -> KvCache {
        let (heads, dim) = (2, 4);
        let mut kv = KvCache::new(2, heads, dim, candle_core::DType::F32, &Device::Cpu);
        kv.reserve(room).expect("test cache");
        let values: Vec<f32> = (0..heads * len * dim).map(|i| start + i as f32).collect();
        let t = Tensor::from_vec(values, (heads, len, dim), &Device::Cpu).expect("test cache");
        for layer in 0..2 {
            kv.write(layer, &t, &t).expect("test cache");
        }
        kv.advance(len);
        kv
    }

    fn first_layer_keys(kv: &KvCache, len: usize) -> Vec<f32> {
        let (keys, _) = kv.layer(0).expect("test cache");
        keys.narrow(1, 0, len)
            .expect("test cache")
            .flatten_all()
            .expect("test cache")
            .to_vec1()
            .expect("test cache")
    }

    #[test]
    fn an_inserted_cache_is_found_again_with_its_values() {
        let mut prefix = PrefixCache::new(1 << 20, 2);
        let tokens: Vec<u32> = (0..8).collect();
        let kv = cache(8, 8, 100.0);
        let expected = first_layer_keys(&kv, 6);
        prefix.insert(0, &tokens, kv).expect("test cache");
        let query: Vec<u32> = (0..6).chain([99, 98]).collect();
        let (hit, common) = prefix
            .lookup(0, &query, 4)
            .expect("test cache")
            .expect("a hit");
        assert_eq!(common, 6);
        assert_eq!(first_layer_keys(&hit, 6), expected);
        assert!(
            prefix.lookup(1, &query, 4).expect("test cache").is_none(),
            "other namespace"
        );
    }

    #[test]
    fn a_newer_entry_supersedes_one_that_differs_only_in_its_last_tokens() {
        let mut prefix = PrefixCache::new(1 << 20, 2);
        let file: Vec<u32> = (0..100).collect();
        prefix
            .insert(0, &file, cache(100, 100, 0.0))
            .expect("test cache");
        // The next keystroke re-tokenizes the last token and adds two.
        let edited: Vec<u32> = (0..99).chain([500, 501, 502]).collect();
        prefix
            .insert(0, &edited, cache(102, 102, 0.0))
            .expect("test cache");
        assert_eq!(prefix.stats().entries, 1, "the near-copy was dropped");
        // Another namespace's entry is never dropped for it.
        prefix
            .insert(1, &file, cache(100, 100, 0.0))
            .expect("test cache");
        // An entry that diverges earlier than the slack stays: it still holds reusable
        // positions that the newer one does not.
        let branch: Vec<u32> = (0..50).chain(1000..1060).collect();
        prefix
            .insert(0, &branch, cache(110, 110, 0.0))
            .expect("test cache");
        assert_eq!(prefix.stats().entries, 3);
        let (_, common) = prefix
            .lookup(
                0,
                &(0..99).chain([500, 501, 502, 7]).collect::<Vec<u32>>(),
                1,
            )
            .expect("test cache")
            .expect("a hit");
        assert_eq!(common, 102);
    }

    #[test]
    fn an_entry_too_large_to_keep_supersedes_nothing() {
        let bytes_per_position = cache(1, 1, 0.0).bytes_per_position();
        let mut prefix = PrefixCache::new(bytes_per_position * 120, 2);
        let file: Vec<u32> = (0..100).collect();
        prefix
            .insert(0, &file, cache(100, 100, 0.0))
            .expect("test cache");
        // Covers the entry, but does not fit the budget: the old entry must stay.
        let longer: Vec<u32> = (0..200).collect();
        prefix
            .insert(0, &longer, cache(200, 200, 0.0))
            .expect("test cache");
        assert_eq!(prefix.stats().entries, 1);
        let (_, common) = prefix
            .lookup(0, &(0..150).collect::<Vec<u32>>(), 1)
            .expect("test cache")
            .expect("the old entry still answers");
        assert_eq!(common, 100);
    }

    #[test]
    fn entries_hold_their_real_allocation_within_the_budget() {
        let bytes_per_position = cache(1, 1, 0.0).bytes_per_position();
        // Room for 1,000 positions, 10 used: the entry must not keep the other 990.
        let mut prefix = PrefixCache::new(bytes_per_position * 100, 2);
        prefix
            .insert(0, &(0..10).collect::<Vec<u32>>(), cache(10, 1000, 0.0))
            .expect("test cache");
        let held = prefix.stats().bytes as usize;
        assert_eq!(prefix.stats().entries, 1, "kept, copied down to size");
        assert!(
            held <= 10 * bytes_per_position * 5 / 4,
            "{held} bytes for 10 positions of {bytes_per_position}"
        );
        // Distinct prompts until the budget has evicted some: never over it.
        for i in 0..20u32 {
            let tokens: Vec<u32> = (0..30).map(|t| t + 1000 * (i + 1)).collect();
            prefix
                .insert(0, &tokens, cache(30, 32, 0.0))
                .expect("test cache");
            let stats = prefix.stats();
            assert!(
                stats.bytes as usize <= bytes_per_position * 100,
                "{stats:?}"
            );
        }
        assert!(prefix.stats().entries >= 2);
    }

    /// A hit reads the entry's positions in place rather than copying them, and a finished
    /// request that read a shared prefix is stored with its own copy of every position, so
    /// that dropping the old entry leaves the new one whole.
    #[test]
    fn a_hit_shares_the_entry_and_a_stored_follow_up_owns_its_positions() {
        let mut prefix = PrefixCache::new(1 << 20, 2);
        let file: Vec<u32> = (0..200).collect();
        let kv = cache(200, 200, 0.0);
        let expected = first_layer_keys(&kv, 200);
        prefix.insert(0, &file, kv).expect("test cache");
        let edited: Vec<u32> = (0..199).chain([900, 901]).collect();
        let (mut hit, common) = prefix
            .lookup(0, &edited, 4)
            .expect("test cache")
            .expect("a hit");
        assert_eq!((common, hit.shared_len()), (199, 199));
        assert!(
            hit.allocated_bytes() < 199 * hit.bytes_per_position(),
            "the hit copied the entry's positions"
        );
        // The request computes its two new positions, then is stored: the old entry is
        // superseded, and the new one holds all 201 positions itself.
        let t = Tensor::full(-1f32, (2, 2, 4), &Device::Cpu).expect("test cache");
        hit.reserve(2).expect("test cache");
        for layer in 0..2 {
            hit.write(layer, &t, &t).expect("test cache");
        }
        hit.advance(2);
        prefix.insert(0, &edited, hit).expect("test cache");
        assert_eq!(prefix.stats().entries, 1, "the old entry was superseded");
        let again: Vec<u32> = edited.iter().copied().chain([7]).collect();
        let (stored, common) = prefix
            .lookup(0, &again, 1)
            .expect("test cache")
            .expect("a hit");
        assert_eq!(common, 201);
        let keys = first_layer_keys(&stored, 201);
        // Head 0's first 199 positions are the old entry's; the last two are the edit's.
        assert_eq!(keys[..199 * 4], expected[..199 * 4]);
        assert_eq!(keys[199 * 4..201 * 4], [-1.0; 8]);
        assert!(prefix.stats().bytes as usize >= 201 * stored.bytes_per_position());
    }
}
