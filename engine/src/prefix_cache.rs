//! Reuse of KV state across requests that share a token prefix.
//!
//! Editors resend almost the same prompt on every keystroke, so the longest common prefix
//! with a recent request is usually all but the last few tokens. Entries are snapshots of a
//! prompt's KV cache, bounded in total bytes and evicted least recently used first. A
//! namespace separates states that must never mix (later: one per adapter and generation).

use crate::Result;
use crate::nn::KvCache;

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
    kv: KvCache,
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
                let common = e
                    .tokens
                    .iter()
                    .zip(tokens)
                    .take_while(|(a, b)| a == b)
                    .count()
                    .min(limit);
                (common, e)
            })
            .max_by_key(|(common, e)| (*common, e.last_used));
        match best {
            Some((common, entry)) if common >= self.min_match => {
                self.clock += 1;
                entry.last_used = self.clock;
                let kv = entry.kv.fork(common, tokens.len() - common + extra)?;
                self.stats.hits += 1;
                self.stats.hit_tokens += common as u64;
                Ok(Some((kv, common)))
            }
            _ => Ok(None),
        }
    }

    /// Remembers the KV state of `tokens` (the first `tokens.len()` positions of `kv`).
    pub fn insert(&mut self, namespace: u64, tokens: &[u32], kv: &KvCache) -> Result<()> {
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
        // An entry whose tokens are a prefix of the new ones is superseded by it.
        self.entries
            .retain(|e| !(e.namespace == namespace && tokens.starts_with(&e.tokens)));
        let bytes = tokens.len() * kv.bytes_per_position();
        if bytes > self.max_bytes {
            return Ok(());
        }
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
        let kv = kv.fork(tokens.len(), 0)?;
        self.entries.push(Entry {
            namespace,
            tokens: tokens.to_vec(),
            kv,
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
