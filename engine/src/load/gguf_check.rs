//! What candle's GGUF reader takes on trust, checked before it runs: a `general.alignment`
//! of 0 (a division by zero inside the reader) and tensors whose element count or byte size
//! overflows or runs past the end of the file (a multiplication that overflows while the
//! tensor is read) or that have no elements (an unaligned view of an empty buffer). Found by
//! the `gguf` fuzz target; see `fuzz/`.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};

use candle_core::quantized::gguf_file::Content;

/// Metadata value types (GGUF's numbering).
const STRING: u32 = 8;
const ARRAY: u32 = 9;

/// Arrays nested deeper than this are refused (GGUF files nest at most one level).
const MAX_NESTING: u32 = 4;

/// The `general.alignment` a file declares, or `None` when it declares none, read by
/// walking the metadata with every length checked against the file's size.
///
/// # Errors
/// A reason in words: a truncated header, an unknown value type, a length past the end, or
/// an alignment that is not a power of two.
pub fn declared_alignment(file: &mut File) -> Result<Option<u64>, String> {
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(|e| format!("cannot read the file: {e}"))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| format!("cannot read the file: {e}"))?;
    let mut walker = Walker {
        reader: BufReader::new(file),
        position: 0,
        size,
        wide: true,
    };
    let magic = walker.bytes4()?;
    if &magic != b"GGUF" {
        return Err("not a GGUF file (no GGUF magic)".into());
    }
    let version = walker.u32()?;
    // Version 1 wrote counts and lengths as 32-bit numbers, later ones as 64-bit.
    walker.wide = version != 1;
    let _tensors = walker.length()?;
    let entries = walker.length()?;
    let mut alignment = None;
    for _ in 0..entries {
        let key = walker.string()?;
        let kind = walker.u32()?;
        if key == "general.alignment" {
            let value = match kind {
                0 | 1 => u64::from(walker.bytes1()?),
                2 | 3 => walker.u16()?.into(),
                4 | 5 => walker.u32()?.into(),
                10 | 11 => walker.u64()?,
                other => return Err(format!("general.alignment has value type {other}")),
            };
            if !value.is_power_of_two() {
                return Err(format!(
                    "general.alignment is {value}; it must be a power of two"
                ));
            }
            alignment = Some(value);
        } else {
            walker.skip_value(kind, 0)?;
        }
    }
    Ok(alignment)
}

/// Refuses any tensor of `content` whose size overflows or whose bytes run past `file_size`.
pub fn check_tensors(content: &Content, file_size: u64) -> Result<(), String> {
    for (name, info) in &content.tensor_infos {
        let elements = info
            .shape
            .dims()
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| format!("tensor {name}: its shape {:?} overflows", info.shape.dims()))?;
        // Zero elements: candle views the empty buffer's dangling pointer as blocks, which
        // need not be aligned for them (undefined behaviour, caught by debug assertions).
        if elements == 0 {
            return Err(format!("tensor {name} has no elements"));
        }
        let block = info.ggml_dtype.block_size();
        if elements % block != 0 {
            return Err(format!(
                "tensor {name}: {elements} elements are not a whole number of {block}-element blocks"
            ));
        }
        let end = (elements / block)
            .checked_mul(info.ggml_dtype.type_size())
            .and_then(|bytes| u64::try_from(bytes).ok())
            .and_then(|bytes| {
                content
                    .tensor_data_offset
                    .checked_add(info.offset)?
                    .checked_add(bytes)
            });
        match end {
            Some(end) if end <= file_size => {}
            _ => {
                return Err(format!(
                    "tensor {name}: its data runs past the end of the file ({file_size} bytes)"
                ));
            }
        }
    }
    Ok(())
}

struct Walker<R> {
    reader: R,
    position: u64,
    size: u64,
    wide: bool,
}

impl<R: Read + Seek> Walker<R> {
    fn take(&mut self, n: u64) -> Result<(), String> {
        if n > self.size - self.position {
            return Err(format!(
                "the header runs past the end of the file at byte {} (needs {n} more)",
                self.position
            ));
        }
        self.position += n;
        Ok(())
    }

    fn read<const N: usize>(&mut self) -> Result<[u8; N], String> {
        self.take(N as u64)?;
        let mut buffer = [0; N];
        self.reader
            .read_exact(&mut buffer)
            .map_err(|e| format!("cannot read the header: {e}"))?;
        Ok(buffer)
    }

    fn bytes1(&mut self) -> Result<u8, String> {
        Ok(self.read::<1>()?[0])
    }

    fn bytes4(&mut self) -> Result<[u8; 4], String> {
        self.read::<4>()
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.read()?))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.read()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.read()?))
    }

    fn length(&mut self) -> Result<u64, String> {
        if self.wide {
            self.u64()
        } else {
            self.u32().map(u64::from)
        }
    }

    fn skip(&mut self, n: u64) -> Result<(), String> {
        self.take(n)?;
        let offset = i64::try_from(n).map_err(|_| "a length past any file".to_string())?;
        self.reader
            .seek_relative(offset)
            .map_err(|e| format!("cannot read the header: {e}"))
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.length()?;
        self.take(n)?;
        let mut bytes = vec![0; n as usize];
        self.reader
            .read_exact(&mut bytes)
            .map_err(|e| format!("cannot read the header: {e}"))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn skip_value(&mut self, kind: u32, depth: u32) -> Result<(), String> {
        match kind {
            0 | 1 | 7 => self.skip(1),
            2 | 3 => self.skip(2),
            4..=6 => self.skip(4),
            10..=12 => self.skip(8),
            STRING => {
                let n = self.length()?;
                self.skip(n)
            }
            ARRAY => {
                if depth >= MAX_NESTING {
                    return Err(format!("arrays nested deeper than {MAX_NESTING}"));
                }
                let inner = self.u32()?;
                let count = self.length()?;
                match fixed_size(inner) {
                    Some(each) => {
                        self.skip(count.checked_mul(each).ok_or("an array past any file")?)
                    }
                    None => (0..count).try_for_each(|_| self.skip_value(inner, depth + 1)),
                }
            }
            other => Err(format!("unknown metadata value type {other}")),
        }
    }
}

/// Bytes of one value of a fixed-size type; `None` for strings, arrays and unknown types.
fn fixed_size(kind: u32) -> Option<u64> {
    match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}
