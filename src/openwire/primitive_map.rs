//! ActiveMQ's primitive maps: message properties, MapMessage bodies and
//! WireFormatInfo options (wire-format reference §1.9).

use crate::openwire::wire::{
    decode_modified_utf8, modified_utf8_len, put_modified_utf8, PutExt, Reader, Result, WireError,
};
use bytes::{BufMut, Bytes};

#[derive(Clone, Debug, PartialEq)]
pub enum MapValue {
    Null,
    Bool(bool),
    Byte(i8),
    Char(u16),
    Short(i16),
    Int(i32),
    Long(i64),
    Double(f64),
    Float(f32),
    String(String),
    Bytes(Bytes),
    Map(Vec<(String, MapValue)>),
    List(Vec<MapValue>),
}

const MAX_ENTRIES: usize = 1 << 20;
const MAX_DEPTH: usize = 16;

/// Decodes a map; `None` for the null map (count -1).
pub fn decode_map(bytes: &Bytes) -> Result<Option<Vec<(String, MapValue)>>> {
    let mut r = Reader::over(bytes);
    let map = read_map(&mut r, 0)?;
    Ok(map)
}

/// A map's entry count (`None` for the null map), refused when it could
/// not fit in what is left.
pub fn read_map_len(r: &mut Reader) -> Result<Option<usize>> {
    let n = r.i32()?;
    if n < 0 {
        return Ok(None);
    }
    let n = n as usize;
    if n > MAX_ENTRIES || n > r.remaining() {
        return Err(WireError::Invalid(format!(
            "map of {n} entries is too large"
        )));
    }
    Ok(Some(n))
}

fn read_map(r: &mut Reader, depth: usize) -> Result<Option<Vec<(String, MapValue)>>> {
    let Some(n) = read_map_len(r)? else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let key = r.utf()?;
        out.push((key, read_value(r, depth)?));
    }
    Ok(Some(out))
}

/// Reads one typed value (also the elements of a StreamMessage body).
pub fn read_value(r: &mut Reader, depth: usize) -> Result<MapValue> {
    let t = r.u8()?;
    read_typed(r, t, depth)
}

/// Reads one value whose type byte `t` was read.
pub fn read_typed(r: &mut Reader, t: u8, depth: usize) -> Result<MapValue> {
    if depth > MAX_DEPTH {
        return Err(WireError::Invalid("maps nested too deeply".into()));
    }
    Ok(match t {
        0 => MapValue::Null,
        1 => MapValue::Bool(r.bool()?),
        2 => MapValue::Byte(r.i8()?),
        3 => MapValue::Char(r.u16()?),
        4 => MapValue::Short(r.i16()?),
        5 => MapValue::Int(r.i32()?),
        6 => MapValue::Long(r.i64()?),
        7 => MapValue::Double(r.f64()?),
        8 => MapValue::Float(r.f32()?),
        9 => MapValue::String(r.utf()?),
        10 => {
            let n = r.len32()?;
            MapValue::Bytes(r.take_bytes(n)?)
        }
        11 => MapValue::Map(read_map(r, depth + 1)?.unwrap_or_default()),
        12 => {
            let n = r.i32()?;
            if n < 0 || n as usize > r.remaining() {
                return Err(WireError::Invalid(format!("bad list length {n}")));
            }
            let mut items = Vec::with_capacity((n as usize).min(1024));
            for _ in 0..n {
                items.push(read_value(r, depth + 1)?);
            }
            MapValue::List(items)
        }
        13 => {
            let n = r.i32()?;
            if n < 0 {
                MapValue::Null
            } else {
                let raw = r.take(n as usize)?;
                MapValue::String(decode_modified_utf8(raw)?)
            }
        }
        t => return Err(WireError::Invalid(format!("unknown primitive type {t}"))),
    })
}

pub fn encode_map(entries: &[(String, MapValue)]) -> Result<Bytes> {
    let mut out = Vec::with_capacity(16 + entries.len() * 16);
    write_map(&mut out, entries)?;
    Ok(Bytes::from(out))
}

fn write_map(out: &mut Vec<u8>, entries: &[(String, MapValue)]) -> Result<()> {
    out.put_i32(entries.len() as i32);
    for (k, v) in entries {
        out.put_utf(k)?;
        write_value(out, v)?;
    }
    Ok(())
}

/// A string value (type byte first).
pub fn write_string(out: &mut Vec<u8>, s: &str) -> Result<()> {
    // Java uses the short form below 8191 UTF-16 units.
    if s.encode_utf16().count() < 8191 {
        out.put_u8(9);
        out.put_utf(s)?;
    } else {
        out.put_u8(13);
        out.put_i32(modified_utf8_len(s) as i32);
        put_modified_utf8(out, s);
    }
    Ok(())
}

pub fn write_value(out: &mut Vec<u8>, v: &MapValue) -> Result<()> {
    match v {
        MapValue::Null => out.put_u8(0),
        MapValue::Bool(b) => {
            out.put_u8(1);
            out.put_u8(*b as u8);
        }
        MapValue::Byte(b) => {
            out.put_u8(2);
            out.put_i8(*b);
        }
        MapValue::Char(c) => {
            out.put_u8(3);
            out.put_u16(*c);
        }
        MapValue::Short(s) => {
            out.put_u8(4);
            out.put_i16(*s);
        }
        MapValue::Int(i) => {
            out.put_u8(5);
            out.put_i32(*i);
        }
        MapValue::Long(l) => {
            out.put_u8(6);
            out.put_i64(*l);
        }
        MapValue::Double(d) => {
            out.put_u8(7);
            out.put_f64(*d);
        }
        MapValue::Float(f) => {
            out.put_u8(8);
            out.put_f32(*f);
        }
        MapValue::String(s) => write_string(out, s)?,
        MapValue::Bytes(b) => {
            out.put_u8(10);
            out.put_i32(b.len() as i32);
            out.extend_from_slice(b);
        }
        MapValue::Map(m) => {
            out.put_u8(11);
            write_map(out, m)?;
        }
        MapValue::List(items) => {
            out.put_u8(12);
            out.put_i32(items.len() as i32);
            for i in items {
                write_value(out, i)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip() {
        let m = vec![
            ("s".to_string(), MapValue::String("red".into())),
            ("i".to_string(), MapValue::Int(42)),
            ("l".to_string(), MapValue::Long(1 << 40)),
            ("d".to_string(), MapValue::Double(1.5)),
            ("f".to_string(), MapValue::Float(2.5)),
            ("b".to_string(), MapValue::Bool(true)),
            ("y".to_string(), MapValue::Byte(-1)),
            ("h".to_string(), MapValue::Short(7)),
            ("c".to_string(), MapValue::Char(65)),
            (
                "x".to_string(),
                MapValue::Bytes(Bytes::from_static(b"\0\x01")),
            ),
            ("n".to_string(), MapValue::Null),
            ("big".to_string(), MapValue::String("é".repeat(9000))),
            (
                "m".to_string(),
                MapValue::Map(vec![("k".into(), MapValue::List(vec![MapValue::Int(1)]))]),
            ),
        ];
        let enc = encode_map(&m).unwrap();
        assert_eq!(decode_map(&enc).unwrap().unwrap(), m);
        // The fixture's bytes: color=red, n=1.
        let fixture = Bytes::from_static(
            b"\x00\x00\x00\x02\x00\x05color\x09\x00\x03red\x00\x01n\x05\x00\x00\x00\x01",
        );
        let d = decode_map(&fixture).unwrap().unwrap();
        assert_eq!(d[0], ("color".into(), MapValue::String("red".into())));
        assert_eq!(d[1], ("n".into(), MapValue::Int(1)));
        assert_eq!(encode_map(&d).unwrap(), fixture);
        assert!(decode_map(&Bytes::from_static(b"\x7f\xff\xff\xff")).is_err());
    }
}
