//! OpenWire primitives: the flag stream ("BooleanStream"), big-endian data
//! reads and writes, Java's modified UTF-8, and the tight/loose encodings of
//! longs and strings. Pure functions over byte slices; no I/O.

use bytes::{BufMut, Bytes};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame ended early: needed {needed} more bytes")]
    Truncated { needed: usize },
    #[error("flag stream exhausted")]
    FlagsExhausted,
    #[error("unknown data structure type {0}")]
    UnknownType(u8),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, WireError>;

/// Reads bits from a tight frame's flag block, least significant bit first.
#[derive(Debug)]
pub struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        BitReader { bytes, pos: 0 }
    }

    pub fn read(&mut self) -> Result<bool> {
        let byte = *self
            .bytes
            .get(self.pos / 8)
            .ok_or(WireError::FlagsExhausted)?;
        let bit = byte >> (self.pos % 8) & 1 == 1;
        self.pos += 1;
        Ok(bit)
    }

    /// True when every bit was consumed (the bits left in the last byte are padding).
    pub fn exhausted(&self) -> bool {
        self.pos.div_ceil(8) == self.bytes.len()
    }
}

/// Collects the bits of a tight frame.
#[derive(Debug, Default)]
pub struct BitWriter {
    bytes: Vec<u8>,
    bits: usize,
}

impl BitWriter {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.bits = 0;
    }

    pub fn write(&mut self, bit: bool) {
        if self.bits.is_multiple_of(8) {
            self.bytes.push(0);
        }
        if bit {
            *self.bytes.last_mut().expect("pushed above") |= 1 << (self.bits % 8);
        }
        self.bits += 1;
    }

    /// Writes the block: its length prefix, then the bit bytes.
    pub fn put_block(&self, out: &mut Vec<u8>) {
        let n = self.bytes.len();
        if n < 64 {
            out.push(n as u8);
        } else if n < 256 {
            out.push(0xC0);
            out.push(n as u8);
        } else {
            out.push(0x80);
            out.extend_from_slice(&(n as i16).to_be_bytes());
        }
        out.extend_from_slice(&self.bytes);
    }
}

/// A cursor over a frame's data bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// When set, byte sequences are returned as slices of this (zero-copy).
    backing: Option<&'a Bytes>,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            backing: None,
        }
    }

    /// A reader whose byte sequences share `bytes` instead of copying.
    pub fn over(bytes: &'a Bytes) -> Self {
        Reader {
            buf: bytes,
            pos: 0,
            backing: Some(bytes),
        }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(WireError::Truncated {
                needed: n - self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn take_bytes(&mut self, n: usize) -> Result<Bytes> {
        let start = self.pos;
        let s = self.take(n)?;
        Ok(match self.backing {
            Some(b) => b.slice(start..start + n),
            None => Bytes::copy_from_slice(s),
        })
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn i8(&mut self) -> Result<i8> {
        Ok(self.u8()? as i8)
    }
    pub fn bool(&mut self) -> Result<bool> {
        Ok(self.u8()? != 0)
    }
    pub fn i16(&mut self) -> Result<i16> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    pub fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    pub fn f32(&mut self) -> Result<f32> {
        Ok(f32::from_bits(self.u32()?))
    }
    pub fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_bits(self.i64()? as u64))
    }

    /// A non-negative i32 length, checked against what is left.
    pub fn len32(&mut self) -> Result<usize> {
        let n = self.i32()?;
        if n < 0 {
            return Err(WireError::Invalid(format!("negative length {n}")));
        }
        if n as usize > self.remaining() {
            return Err(WireError::Truncated {
                needed: n as usize - self.remaining(),
            });
        }
        Ok(n as usize)
    }

    /// Java `readUTF`: u16 byte length, then modified UTF-8.
    pub fn utf(&mut self) -> Result<String> {
        let n = self.u16()? as usize;
        decode_modified_utf8(self.take(n)?)
    }

    /// A tight long: two flags choose 0, 2, 4 or 8 data bytes.
    pub fn tight_long(&mut self, bits: &mut BitReader) -> Result<i64> {
        match (bits.read()?, bits.read()?) {
            (false, false) => Ok(0),
            (false, true) => Ok(self.u16()? as i64),
            (true, false) => Ok(self.u32()? as i64),
            (true, true) => self.i64(),
        }
    }

    /// A tight string: present flag, ASCII flag, then the bytes.
    pub fn tight_string(&mut self, bits: &mut BitReader) -> Result<Option<String>> {
        if !bits.read()? {
            return Ok(None);
        }
        if bits.read()? {
            let n = self.i16()?;
            if n < 0 {
                return Err(WireError::Invalid(format!("negative string length {n}")));
            }
            let raw = self.take(n as usize)?;
            // ASCII by the writer's promise; decode leniently all the same.
            Ok(Some(String::from_utf8_lossy(raw).into_owned()))
        } else {
            Ok(Some(self.utf()?))
        }
    }

    pub fn loose_string(&mut self) -> Result<Option<String>> {
        if !self.bool()? {
            return Ok(None);
        }
        Ok(Some(self.utf()?))
    }
}

/// Appends big-endian data.
pub trait PutExt: BufMut {
    fn put_utf(&mut self, s: &str) -> Result<()> {
        // Plain ASCII (property names, mostly) is the same in both encodings.
        if s.len() <= u16::MAX as usize && s.bytes().all(|b| b != 0 && b < 0x80) {
            self.put_u16(s.len() as u16);
            self.put_slice(s.as_bytes());
            return Ok(());
        }
        let n = modified_utf8_len(s);
        if n > u16::MAX as usize {
            return Err(WireError::Invalid(format!(
                "string of {n} encoded bytes is too long"
            )));
        }
        self.put_u16(n as u16);
        put_modified_utf8(self, s);
        Ok(())
    }
}

impl<T: BufMut + ?Sized> PutExt for T {}

/// Class of a tight long: (first flag, second flag).
pub fn tight_long_class(v: i64) -> (bool, bool) {
    let u = v as u64;
    if u == 0 {
        (false, false)
    } else if u & 0xFFFF_FFFF_FFFF_0000 == 0 {
        (false, true)
    } else if u & 0xFFFF_FFFF_0000_0000 == 0 {
        (true, false)
    } else {
        (true, true)
    }
}

pub fn put_tight_long(out: &mut Vec<u8>, bits: &mut BitWriter, v: i64) {
    let (a, b) = tight_long_class(v);
    bits.write(a);
    bits.write(b);
    match (a, b) {
        (false, false) => {}
        (false, true) => out.put_u16(v as u16),
        (true, false) => out.put_u32(v as u32),
        (true, true) => out.put_i64(v),
    }
}

pub fn put_tight_string(out: &mut Vec<u8>, bits: &mut BitWriter, s: Option<&str>) -> Result<()> {
    bits.write(s.is_some());
    let Some(s) = s else { return Ok(()) };
    // Java counts UTF-16 units: ASCII means every unit is 0x01..=0x7F.
    let ascii = s.bytes().all(|b| (0x01..=0x7F).contains(&b));
    bits.write(ascii);
    let n = modified_utf8_len(s);
    if n >= i16::MAX as usize {
        return Err(WireError::Invalid(
            "Encountered a String value that is too long to encode.".into(),
        ));
    }
    if ascii {
        out.put_i16(s.len() as i16);
        out.extend_from_slice(s.as_bytes());
    } else {
        out.put_utf(s)?;
    }
    Ok(())
}

pub fn put_loose_string(out: &mut Vec<u8>, s: Option<&str>) -> Result<()> {
    out.put_u8(s.is_some() as u8);
    if let Some(s) = s {
        out.put_utf(s)?;
    }
    Ok(())
}

/// Decodes Java's modified UTF-8 (`C0 80` for NUL, supplementary characters
/// as two 3-byte surrogates) into a proper Rust string.
pub fn decode_modified_utf8(bytes: &[u8]) -> Result<String> {
    // Fast path: plain ASCII without NUL is the same in both encodings.
    if bytes.iter().all(|&b| b != 0 && b < 0x80) {
        return Ok(String::from_utf8(bytes.to_vec()).expect("ASCII"));
    }
    let bad = || WireError::Invalid("malformed modified UTF-8".into());
    let mut units: Vec<u16> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let cont = |k: usize| -> Result<u16> {
            match bytes.get(i + k) {
                Some(&c) if c & 0xC0 == 0x80 => Ok((c & 0x3F) as u16),
                _ => Err(bad()),
            }
        };
        if b < 0x80 {
            units.push(b as u16);
            i += 1;
        } else if b & 0xE0 == 0xC0 {
            units.push(((b & 0x1F) as u16) << 6 | cont(1)?);
            i += 2;
        } else if b & 0xF0 == 0xE0 {
            units.push(((b & 0x0F) as u16) << 12 | cont(1)? << 6 | cont(2)?);
            i += 3;
        } else if b & 0xF8 == 0xF0 {
            // A real 4-byte UTF-8 sequence (not Java's form, but ActiveMQ's
            // STOMP bridge passes them through): accept it.
            let c = ((b & 0x07) as u32) << 18
                | (cont(1)? as u32) << 12
                | (cont(2)? as u32) << 6
                | cont(3)? as u32;
            let ch = char::from_u32(c).ok_or_else(bad)?;
            let mut buf = [0u16; 2];
            units.extend_from_slice(ch.encode_utf16(&mut buf));
            i += 4;
        } else {
            return Err(bad());
        }
    }
    Ok(String::from_utf16_lossy(&units))
}

/// The modified UTF-8 length of `s`.
pub fn modified_utf8_len(s: &str) -> usize {
    s.chars()
        .map(|c| match c as u32 {
            0 => 2,
            1..=0x7F => 1,
            0x80..=0x7FF => 2,
            0x800..=0xFFFF => 3,
            _ => 6,
        })
        .sum()
}

pub fn put_modified_utf8<B: BufMut + ?Sized>(out: &mut B, s: &str) {
    if s.bytes().all(|b| b != 0 && b < 0x80) {
        out.put_slice(s.as_bytes());
        return;
    }
    let mut buf = [0u16; 2];
    for ch in s.chars() {
        for &u in ch.encode_utf16(&mut buf).iter() {
            match u {
                1..=0x7F => out.put_u8(u as u8),
                0 | 0x80..=0x7FF => {
                    out.put_u8(0xC0 | (u >> 6) as u8);
                    out.put_u8(0x80 | (u & 0x3F) as u8);
                }
                _ => {
                    out.put_u8(0xE0 | (u >> 12) as u8);
                    out.put_u8(0x80 | ((u >> 6) & 0x3F) as u8);
                    out.put_u8(0x80 | (u & 0x3F) as u8);
                }
            }
        }
    }
}

pub fn modified_utf8(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(modified_utf8_len(s));
    put_modified_utf8(&mut v, s);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modified_utf8_round_trips_every_kind_of_character() {
        for s in [
            "",
            "abc",
            "nul\0inside",
            "héllo",
            "你好，世界 — ✓",
            "smile 😀 and 𝄞",
        ] {
            let enc = modified_utf8(s);
            assert_eq!(enc.len(), modified_utf8_len(s));
            assert!(!enc.contains(&0), "no raw NUL in modified UTF-8");
            assert_eq!(decode_modified_utf8(&enc).unwrap(), s);
        }
        // Supplementary characters are two 3-byte surrogates, not 4 bytes.
        assert_eq!(
            modified_utf8("😀"),
            vec![0xED, 0xA0, 0xBD, 0xED, 0xB8, 0x80]
        );
        // A 4-byte UTF-8 sequence is accepted too.
        assert_eq!(decode_modified_utf8("😀".as_bytes()).unwrap(), "😀");
        assert!(decode_modified_utf8(&[0xC3]).is_err());
    }

    #[test]
    fn flag_stream_layout() {
        let mut w = BitWriter::default();
        for b in [
            true, true, true, true, true, true, true, false, false, false, false, true, true,
        ] {
            w.write(b);
        }
        let mut out = Vec::new();
        w.put_block(&mut out);
        assert_eq!(out, vec![2, 0x7F, 0x18]);
        let mut r = BitReader::new(&out[1..]);
        for b in [
            true, true, true, true, true, true, true, false, false, false, false, true, true,
        ] {
            assert_eq!(r.read().unwrap(), b);
        }
        let mut big = BitWriter::default();
        for _ in 0..(70 * 8) {
            big.write(true);
        }
        let mut out = Vec::new();
        big.put_block(&mut out);
        assert_eq!(&out[..2], &[0xC0, 70]);
        let mut huge = BitWriter::default();
        for _ in 0..(300 * 8) {
            huge.write(false);
        }
        let mut out = Vec::new();
        huge.put_block(&mut out);
        assert_eq!(&out[..3], &[0x80, 0x01, 0x2C]);
    }

    #[test]
    fn tight_long_classes() {
        for (v, len) in [
            (0i64, 0usize),
            (1, 2),
            (65535, 2),
            (65536, 4),
            (0xFFFF_FFFF, 4),
            (1 << 32, 8),
            (-1, 8),
            (-2, 8),
        ] {
            let mut out = Vec::new();
            let mut bits = BitWriter::default();
            put_tight_long(&mut out, &mut bits, v);
            assert_eq!(out.len(), len, "{v}");
            let mut block = Vec::new();
            bits.put_block(&mut block);
            let mut br = BitReader::new(&block[1..]);
            assert_eq!(Reader::new(&out).tight_long(&mut br).unwrap(), v);
        }
    }

    #[test]
    fn tight_strings() {
        for s in [
            None,
            Some(""),
            Some("ascii"),
            Some("non-ascii é"),
            Some("nul\0"),
        ] {
            let mut out = Vec::new();
            let mut bits = BitWriter::default();
            put_tight_string(&mut out, &mut bits, s).unwrap();
            let mut block = Vec::new();
            bits.put_block(&mut block);
            let mut br = BitReader::new(&block[1..]);
            assert_eq!(
                Reader::new(&out).tight_string(&mut br).unwrap().as_deref(),
                s
            );
        }
    }
}
