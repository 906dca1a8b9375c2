use candle_core::{DType, Device, Tensor};

use crate::Result;

/// Keys and values of one sequence for every layer, `[kv_heads, positions, head_dim]` each.
///
/// Buffers grow geometrically and are written in place, so appending one token costs one
/// token's worth of copying rather than the whole history. Reads are narrowed views into the
/// buffers; attention consumes them without a copy.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: usize,
    capacity: usize,
    n_kv_heads: usize,
    head_dim: usize,
    device: Device,
}

const MIN_CAPACITY: usize = 64;

impl KvCache {
    /// An empty cache for a model with these dimensions.
    pub fn new(n_layers: usize, n_kv_heads: usize, head_dim: usize, device: &Device) -> Self {
        KvCache {
            keys: Vec::with_capacity(n_layers),
            values: Vec::with_capacity(n_layers),
            len: 0,
            capacity: 0,
            n_kv_heads,
            head_dim,
            device: device.clone(),
        }
        .with_layers(n_layers)
    }

    /// A cache with no layers, standing in for one that was moved out or never needed.
    pub fn empty() -> Self {
        KvCache::new(0, 0, 0, &Device::Cpu)
    }

    fn with_layers(mut self, n_layers: usize) -> Self {
        // Zero-capacity placeholders; real buffers are made by the first `reserve`.
        self.keys =
            vec![Tensor::zeros(0, DType::F32, &self.device).expect("empty tensor"); n_layers];
        self.values = self.keys.clone();
        self
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

    /// Bytes one position takes across all layers.
    pub fn bytes_per_position(&self) -> usize {
        self.keys.len() * 2 * self.n_kv_heads * self.head_dim * DType::F32.size_in_bytes()
    }

    /// Bytes allocated.
    pub fn allocated_bytes(&self) -> usize {
        self.capacity * self.bytes_per_position()
    }

    /// Makes room for `additional` more positions.
    pub fn reserve(&mut self, additional: usize) -> Result<()> {
        let needed = self.len + additional;
        if needed <= self.capacity {
            return Ok(());
        }
        let capacity = needed.max(self.capacity * 2).max(MIN_CAPACITY);
        let shape = (self.n_kv_heads, capacity, self.head_dim);
        for buffers in [&mut self.keys, &mut self.values] {
            for buffer in buffers.iter_mut() {
                let grown = Tensor::zeros(shape, DType::F32, &self.device)?;
                if self.len > 0 {
                    grown.slice_set(&buffer.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                }
                *buffer = grown;
            }
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Writes `n` new positions of `layer_idx` (`[kv_heads, n, head_dim]` each) after the
    /// current length and returns all keys and values including them. The length itself
    /// moves on in [`KvCache::advance`], once every layer has been written.
    pub(crate) fn write(
        &mut self,
        layer_idx: usize,
        keys: &Tensor,
        values: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let n = keys.dim(1)?;
        debug_assert!(self.len + n <= self.capacity, "reserve before write");
        let k_buf = &self.keys[layer_idx];
        let v_buf = &self.values[layer_idx];
        k_buf.slice_set(&keys.contiguous()?, 1, self.len)?;
        v_buf.slice_set(&values.contiguous()?, 1, self.len)?;
        Ok((
            k_buf.narrow(1, 0, self.len + n)?,
            v_buf.narrow(1, 0, self.len + n)?,
        ))
    }

    /// Keys and values of `layer_idx` at the positions held.
    #[cfg(test)]
    pub(crate) fn layer(&self, layer_idx: usize) -> Result<(Tensor, Tensor)> {
        Ok((
            self.keys[layer_idx].narrow(1, 0, self.len)?,
            self.values[layer_idx].narrow(1, 0, self.len)?,
        ))
    }

    /// Commits `n` positions written to every layer.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Drops every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// A deep copy of the first `len` positions, with room for `extra` more.
    pub fn fork(&self, len: usize, extra: usize) -> Result<KvCache> {
        let len = len.min(self.len);
        let mut res = KvCache::new(
            self.keys.len(),
            self.n_kv_heads,
            self.head_dim,
            &self.device,
        );
        if len == 0 {
            res.reserve(extra)?;
            return Ok(res);
        }
        // One pass per buffer: the narrowed history and a zeroed tail, concatenated. (On
        // the pool's two threads it took as long: the copy is bound by memory bandwidth.)
        let capacity = len + extra.max(1);
        let tail = Tensor::zeros(
            (self.n_kv_heads, capacity - len, self.head_dim),
            DType::F32,
            &self.device,
        )?;
        for (dst, src) in res
            .keys
            .iter_mut()
            .zip(&self.keys)
            .chain(res.values.iter_mut().zip(&self.values))
        {
            *dst = Tensor::cat(&[&src.narrow(1, 0, len)?, &tail], 1)?;
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
        let mut cache = KvCache::new(n_layers, heads, dim, &Device::Cpu);
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
}
