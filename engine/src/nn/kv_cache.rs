use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::Result;

/// Keys and values of one sequence for every layer, `[kv_heads, positions, head_dim]` each.
///
/// Buffers grow geometrically and are written in place, so appending one token costs one
/// token's worth of copying rather than the whole history. Reads are narrowed views into the
/// buffers; attention consumes them without a copy.
///
/// A cache may start on a shared, read-only prefix ([`KvCache::share`]): a prefix-cache hit
/// reads the cached positions where they are instead of copying them (50 MB for a 2,000-token
/// prompt of the default model), and its own buffers hold only the positions after them.
/// Attention then reads two parts per layer ([`KvLayer`]).
#[derive(Debug)]
pub struct KvCache {
    /// The positions after the shared prefix, from index 0.
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    /// Positions held, the shared prefix's included.
    len: usize,
    /// Positions the own buffers have room for.
    capacity: usize,
    prefix: Option<SharedPrefix>,
    n_kv_heads: usize,
    head_dim: usize,
    /// What the buffers hold: [`KvDtype`]'s type.
    dtype: DType,
    device: Device,
}

/// How a KV cache on the CPU keeps keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvDtype {
    /// Each value rounded to the nearest f16 as it is written, as llama.cpp keeps them: half
    /// the bytes, and a warm edit's attention is bound by reading its whole context's keys
    /// and values; the prefix cache holds twice the positions in the same memory.
    #[default]
    F16,
    /// The projections' values as they are.
    F32,
}

impl KvDtype {
    /// The tensor type of the buffers.
    pub fn dtype(self) -> DType {
        match self {
            KvDtype::F16 => DType::F16,
            KvDtype::F32 => DType::F32,
        }
    }

    /// The name `--kv-dtype` takes.
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F16 => "f16",
            KvDtype::F32 => "f32",
        }
    }
}

impl fmt::Display for KvDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KvDtype {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f16" => Ok(KvDtype::F16),
            "f32" => Ok(KvDtype::F32),
            other => Err(format!("KV cache type {other:?} is not `f16` or `f32`")),
        }
    }
}

/// The first `len` positions of a cache that has no shared prefix of its own.
#[derive(Clone, Debug)]
struct SharedPrefix {
    cache: Arc<KvCache>,
    len: usize,
}

/// One layer's keys and values as attention reads them: the shared prefix's positions, if
/// any, then the cache's own, each `[kv_heads, positions, head_dim]`.
#[derive(Clone, Debug)]
pub struct KvLayer {
    parts: Vec<(Tensor, Tensor)>,
}

impl KvLayer {
    /// The parts in order of position.
    pub fn parts(&self) -> &[(Tensor, Tensor)] {
        &self.parts
    }

    /// All keys and values as one tensor each (a copy where there are two parts).
    pub fn concatenated(&self) -> Result<(Tensor, Tensor)> {
        concatenate_parts(&self.parts)
    }
}

/// Keys and values held in parts, in order of position, as one tensor each (a copy where
/// there is more than one part).
pub(crate) fn concatenate_parts(parts: &[(Tensor, Tensor)]) -> Result<(Tensor, Tensor)> {
    match parts {
        [(k, v)] => Ok((k.clone(), v.clone())),
        parts => {
            let keys: Vec<&Tensor> = parts.iter().map(|(k, _)| k).collect();
            let values: Vec<&Tensor> = parts.iter().map(|(_, v)| v).collect();
            Ok((Tensor::cat(&keys, 1)?, Tensor::cat(&values, 1)?))
        }
    }
}

const MIN_CAPACITY: usize = 64;

impl KvCache {
    /// An empty cache for a model with these dimensions, its buffers of `dtype` (f32 or f16;
    /// f16 only where attention runs on the CPU).
    pub fn new(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Self {
        KvCache {
            keys: Vec::with_capacity(n_layers),
            values: Vec::with_capacity(n_layers),
            len: 0,
            capacity: 0,
            prefix: None,
            n_kv_heads,
            head_dim,
            dtype,
            device: device.clone(),
        }
        .with_layers(n_layers)
    }

    /// A cache with no layers, standing in for one that was moved out or never needed.
    pub fn empty() -> Self {
        KvCache::new(0, 0, 0, DType::F32, &Device::Cpu)
    }

    fn with_layers(mut self, n_layers: usize) -> Self {
        // Zero-capacity placeholders; real buffers are made by the first `reserve`.
        self.keys =
            vec![Tensor::zeros(0, self.dtype, &self.device).expect("empty tensor"); n_layers];
        self.values = self.keys.clone();
        self
    }

    /// A cache that starts with the first `len` positions of `base` (at most all of them),
    /// read in place, with room for `extra` more of its own. A base that itself starts on a
    /// shared prefix is copied instead ([`KvCache::fork`]), so that a cache reads at most two
    /// parts.
    pub fn share(base: &Arc<KvCache>, len: usize, extra: usize) -> Result<KvCache> {
        let len = len.min(base.len);
        if base.prefix.is_some() || len == 0 {
            return base.fork(len, extra);
        }
        let mut res = KvCache::new(
            base.n_layers(),
            base.n_kv_heads,
            base.head_dim,
            base.dtype,
            &base.device,
        );
        res.prefix = Some(SharedPrefix {
            cache: Arc::clone(base),
            len,
        });
        res.len = len;
        res.reserve(extra)?;
        Ok(res)
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Layers.
    pub fn n_layers(&self) -> usize {
        self.keys.len()
    }

    /// Positions read from a shared prefix.
    pub fn shared_len(&self) -> usize {
        self.prefix.as_ref().map_or(0, |p| p.len)
    }

    /// Positions in this cache's own buffers.
    fn own_len(&self) -> usize {
        self.len - self.shared_len()
    }

    /// Bytes one position takes across all layers.
    pub fn bytes_per_position(&self) -> usize {
        self.keys.len() * 2 * self.n_kv_heads * self.head_dim * self.dtype.size_in_bytes()
    }

    /// Bytes allocated for this cache's own positions (a shared prefix belongs to its base).
    pub fn allocated_bytes(&self) -> usize {
        self.capacity * self.bytes_per_position()
    }

    /// Makes room for `additional` more positions.
    pub fn reserve(&mut self, additional: usize) -> Result<()> {
        let own = self.own_len();
        let needed = own + additional;
        if needed <= self.capacity {
            return Ok(());
        }
        let capacity = needed.max(self.capacity * 2).max(MIN_CAPACITY);
        let shape = (self.n_kv_heads, capacity, self.head_dim);
        for buffers in [&mut self.keys, &mut self.values] {
            for buffer in buffers.iter_mut() {
                let grown = Tensor::zeros(shape, self.dtype, &self.device)?;
                if own > 0 {
                    grown.slice_set(&buffer.narrow(1, 0, own)?.contiguous()?, 1, 0)?;
                }
                *buffer = grown;
            }
        }
        self.capacity = capacity;
        Ok(())
    }

    /// The shared prefix's keys and values of `layer_idx`, if the cache starts on one.
    fn shared_part(&self, layer_idx: usize) -> Result<Option<(Tensor, Tensor)>> {
        let Some(prefix) = &self.prefix else {
            return Ok(None);
        };
        Ok(Some((
            prefix.cache.keys[layer_idx].narrow(1, 0, prefix.len)?,
            prefix.cache.values[layer_idx].narrow(1, 0, prefix.len)?,
        )))
    }

    /// Writes `n` new positions of `layer_idx` (`[kv_heads, n, head_dim]` each) after the
    /// current length and returns all keys and values including them. The length itself
    /// moves on in [`KvCache::advance`], once every layer has been written.
    pub(crate) fn write(
        &mut self,
        layer_idx: usize,
        keys: &Tensor,
        values: &Tensor,
    ) -> Result<KvLayer> {
        let n = keys.dim(1)?;
        let own = self.own_len();
        debug_assert!(own + n <= self.capacity, "reserve before write");
        let k_buf = &self.keys[layer_idx];
        let v_buf = &self.values[layer_idx];
        k_buf.slice_set(&keys.to_dtype(self.dtype)?.contiguous()?, 1, own)?;
        v_buf.slice_set(&values.to_dtype(self.dtype)?.contiguous()?, 1, own)?;
        let mut parts = Vec::with_capacity(2);
        parts.extend(self.shared_part(layer_idx)?);
        parts.push((k_buf.narrow(1, 0, own + n)?, v_buf.narrow(1, 0, own + n)?));
        Ok(KvLayer { parts })
    }

    /// Keys and values of `layer_idx` at the positions held, as one tensor each.
    #[cfg(test)]
    pub(crate) fn layer(&self, layer_idx: usize) -> Result<(Tensor, Tensor)> {
        let mut parts = Vec::with_capacity(2);
        parts.extend(self.shared_part(layer_idx)?);
        let own = self.own_len();
        parts.push((
            self.keys[layer_idx].narrow(1, 0, own)?,
            self.values[layer_idx].narrow(1, 0, own)?,
        ));
        KvLayer { parts }.concatenated()
    }

    /// Commits `n` positions written to every layer.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Drops every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        if let Some(prefix) = &mut self.prefix {
            prefix.len = prefix.len.min(self.len);
        }
    }

    /// A deep copy of the first `len` positions, shared prefix included, in buffers of its
    /// own with room for `extra` more.
    pub fn fork(&self, len: usize, extra: usize) -> Result<KvCache> {
        let len = len.min(self.len);
        let mut res = KvCache::new(
            self.keys.len(),
            self.n_kv_heads,
            self.head_dim,
            self.dtype,
            &self.device,
        );
        if len == 0 {
            res.reserve(extra)?;
            return Ok(res);
        }
        // One pass per buffer: the narrowed history (the shared prefix's, then its own) and
        // a zeroed tail, concatenated. (On the pool's two threads it took as long: the copy
        // is bound by memory bandwidth.)
        let capacity = len + extra.max(1);
        let tail = Tensor::zeros(
            (self.n_kv_heads, capacity - len, self.head_dim),
            self.dtype,
            &self.device,
        )?;
        let shared = self.shared_len().min(len);
        let own = len - shared;
        for (layer, (dst_k, dst_v)) in res.keys.iter_mut().zip(res.values.iter_mut()).enumerate() {
            for (dst, own_buf, prefix_buf) in [
                (
                    dst_k,
                    &self.keys[layer],
                    self.prefix.as_ref().map(|p| &p.cache.keys[layer]),
                ),
                (
                    dst_v,
                    &self.values[layer],
                    self.prefix.as_ref().map(|p| &p.cache.values[layer]),
                ),
            ] {
                let mut parts = Vec::with_capacity(3);
                if let Some(prefix_buf) = prefix_buf.filter(|_| shared > 0) {
                    parts.push(prefix_buf.narrow(1, 0, shared)?);
                }
                if own > 0 {
                    parts.push(own_buf.narrow(1, 0, own)?);
                }
                parts.push(tail.clone());
                *dst = Tensor::cat(&parts, 1)?;
            }
        }
        res.capacity = capacity;
        res.len = len;
        Ok(res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_util::random;

    fn filled(n_layers: usize, positions: usize) -> KvCache {
        let (heads, dim) = (2, 8);
        let mut cache = KvCache::new(n_layers, heads, dim, DType::F32, &Device::Cpu);
        cache.reserve(positions).expect("reserve");
        for layer in 0..n_layers {
            let values = |seed| {
                Tensor::from_vec(
                    random(heads * positions * dim, seed),
                    (heads, positions, dim),
                    &Device::Cpu,
                )
                .expect("values")
            };
            let (k, v) = (values(layer as u32 * 2 + 1), values(layer as u32 * 2 + 2));
            cache.write(layer, &k, &v).expect("write");
        }
        cache.advance(positions);
        cache
    }

    fn to_vec(t: &Tensor) -> Vec<f32> {
        t.flatten_all().and_then(|t| t.to_vec1()).expect("vec")
    }

    /// A fork holds exactly the first positions of every layer, has room for more, and
    /// writing to it leaves the original alone.
    #[test]
    fn a_fork_copies_the_prefix_and_is_independent() {
        let original = filled(3, 70);
        let mut fork = original.fork(37, 5).expect("fork");
        assert_eq!(fork.len(), 37);
        assert!(fork.allocated_bytes() >= 42 * fork.bytes_per_position());
        for layer in 0..3 {
            let (k, v) = fork.layer(layer).expect("fork layer");
            let (ko, vo) = original.layer(layer).expect("original layer");
            assert_eq!(to_vec(&k), to_vec(&ko.narrow(1, 0, 37).expect("narrow")));
            assert_eq!(to_vec(&v), to_vec(&vo.narrow(1, 0, 37).expect("narrow")));
        }
        let new = Tensor::ones((2, 5, 8), DType::F32, &Device::Cpu).expect("ones");
        for layer in 0..3 {
            fork.write(layer, &new, &new).expect("write");
        }
        fork.advance(5);
        let (k, _) = fork.layer(0).expect("layer");
        assert_eq!(to_vec(&k.narrow(1, 37, 5).expect("narrow")), vec![1.0; 80]);
        let (ko, _) = original.layer(0).expect("layer");
        assert_ne!(to_vec(&ko.narrow(1, 37, 5).expect("narrow")), vec![1.0; 80]);
        // Asking for more than it holds gives what it holds; nothing gives an empty cache.
        assert_eq!(original.fork(500, 0).expect("fork").len(), 70);
        assert!(original.fork(0, 3).expect("fork").is_empty());
    }

    /// An f16 cache holds each written value rounded to the nearest f16, in half the bytes,
    /// and its forks and the caches that share it keep f16.
    #[test]
    fn an_f16_cache_keeps_each_value_rounded_in_half_the_bytes() {
        let (heads, dim, positions) = (2, 8, 10);
        let mut half = KvCache::new(2, heads, dim, KvDtype::F16.dtype(), &Device::Cpu);
        let full = KvCache::new(2, heads, dim, KvDtype::F32.dtype(), &Device::Cpu);
        assert_eq!(2 * half.bytes_per_position(), full.bytes_per_position());
        half.reserve(positions).expect("reserve");
        // Values with more bits than an f16 holds, and one beyond its range.
        let mut values = random(heads * positions * dim, 9);
        values[3] = 1e6;
        let t = Tensor::from_vec(values.clone(), (heads, positions, dim), &Device::Cpu)
            .expect("values");
        for layer in 0..2 {
            half.write(layer, &t, &t).expect("write");
        }
        half.advance(positions);
        let (k, v) = half.layer(1).expect("layer");
        assert_eq!(k.dtype(), DType::F16);
        let rounded: Vec<f32> = values
            .iter()
            .map(|&x| half::f16::from_f32(x).to_f32())
            .collect();
        let widened = |t: &Tensor| to_vec(&t.to_dtype(DType::F32).expect("f32"));
        assert_eq!(widened(&k), rounded);
        assert_eq!(widened(&v), rounded);
        assert_ne!(rounded, values, "the test's values must need rounding");
        assert!(rounded[3].is_infinite());
        let base = std::sync::Arc::new(half);
        for cache in [
            base.fork(7, 3).expect("fork"),
            KvCache::share(&base, 7, 3).expect("share"),
        ] {
            assert_eq!(cache.bytes_per_position(), base.bytes_per_position());
            assert_eq!(cache.layer(0).expect("layer").0.dtype(), DType::F16);
        }
    }

    #[test]
    fn kv_dtype_names_parse_and_a_bad_one_is_named() {
        for dtype in [KvDtype::F16, KvDtype::F32] {
            assert_eq!(dtype.name().parse::<KvDtype>(), Ok(dtype));
            assert_eq!(dtype.to_string(), dtype.name());
        }
        assert_eq!(KvDtype::default(), KvDtype::F16);
        let err = "bf16".parse::<KvDtype>().expect_err("bf16");
        assert!(err.contains("\"bf16\""), "{err}");
    }

    /// A cache on a shared prefix reads the base's positions in place, writes its own
    /// elsewhere, leaves the base alone, and forks into one flat copy of both.
    #[test]
    fn a_cache_on_a_shared_prefix_reads_it_in_place() {
        let base = std::sync::Arc::new(filled(2, 100));
        let mut on = KvCache::share(&base, 30, 6).expect("share");
        assert_eq!((on.len(), on.shared_len()), (30, 30));
        // Only its own positions are its memory.
        assert!(on.allocated_bytes() < base.allocated_bytes());
        let new = Tensor::ones((2, 6, 8), DType::F32, &Device::Cpu).expect("ones");
        on.reserve(6).expect("reserve");
        for layer in 0..2 {
            let kv = on.write(layer, &new, &new).expect("write");
            assert_eq!(kv.parts().len(), 2);
            assert_eq!(kv.parts()[0].0.dims(), &[2, 30, 8]);
            assert_eq!(kv.parts()[1].0.dims(), &[2, 6, 8]);
        }
        on.advance(6);
        let (k, _) = on.layer(1).expect("layer");
        let (kb, _) = base.layer(1).expect("base layer");
        assert_eq!(
            to_vec(&k.narrow(1, 0, 30).expect("narrow")),
            to_vec(&kb.narrow(1, 0, 30).expect("narrow"))
        );
        assert_eq!(to_vec(&k.narrow(1, 30, 6).expect("narrow")), vec![1.0; 96]);
        assert_ne!(to_vec(&kb.narrow(1, 30, 6).expect("narrow")), vec![1.0; 96]);
        // A fork is flat and holds both parts.
        let flat = on.fork(on.len(), 2).expect("fork");
        assert_eq!((flat.len(), flat.shared_len()), (36, 0));
        assert_eq!(to_vec(&flat.layer(1).expect("layer").0), to_vec(&k));
        // A cache on a cache that has a prefix copies instead, so at most two parts are read.
        let second = KvCache::share(&std::sync::Arc::new(on), 33, 1).expect("share");
        assert_eq!((second.len(), second.shared_len()), (33, 0));
        // Truncating into the prefix shortens the part read from it.
        let mut short = KvCache::share(&base, 30, 1).expect("share");
        short.truncate(10);
        assert_eq!((short.len(), short.shared_len()), (10, 10));
    }
}
