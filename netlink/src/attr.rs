//! Raw netlink attributes for the structures no rust-netlink crate
//! decodes (sock_diag's MPTCP info and subflow attributes), and
//! [`RawMessage`], a netlink message whose payload is plain bytes.

use netlink_packet_core::{NetlinkDeserializable, NetlinkHeader, NetlinkSerializable};
use std::convert::Infallible;

/// Attribute type bits that are flags, not the type (nested, byte order).
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLA_F_NESTED: u16 = 0x8000;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Iterates over netlink attributes: (type without flag bits, payload).
/// Malformed trailing bytes end the iteration.
pub struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Attrs<'a> {
    /// Over a buffer of attributes.
    pub fn new(buf: &'a [u8]) -> Self {
        Attrs { rest: buf }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let head = self.rest.get(..4)?;
        let len = u16::from_ne_bytes([head[0], head[1]]) as usize;
        let ty = u16::from_ne_bytes([head[2], head[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > self.rest.len() {
            self.rest = &[];
            return None;
        }
        let data = &self.rest[4..len];
        self.rest = self.rest.get(align4(len)..).unwrap_or(&[]);
        Some((ty, data))
    }
}

/// Builds a sequence of netlink attributes after a fixed prefix.
#[derive(Default)]
pub struct AttrWriter {
    /// The bytes written so far.
    pub buf: Vec<u8>,
}

impl AttrWriter {
    /// Starts with `prefix` (a fixed header).
    pub fn new(prefix: &[u8]) -> Self {
        AttrWriter {
            buf: prefix.to_vec(),
        }
    }

    /// Appends one attribute.
    pub fn put(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    /// Appends a u8 attribute.
    pub fn put_u8(&mut self, ty: u16, v: u8) {
        self.put(ty, &[v]);
    }

    /// Appends a u32 attribute (native byte order).
    pub fn put_u32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_ne_bytes());
    }

    /// Starts a nested attribute; close it with [`AttrWriter::end_nested`].
    pub fn begin_nested(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    /// Closes the nested attribute started at `start`.
    pub fn end_nested(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

/// A u8 payload, or None if empty.
pub fn get_u8(d: &[u8]) -> Option<u8> {
    d.first().copied()
}

/// A native-endian u32 payload, or None if too short.
pub fn get_u32(d: &[u8]) -> Option<u32> {
    let b: [u8; 4] = d.get(..4)?.try_into().ok()?;
    Some(u32::from_ne_bytes(b))
}

/// A native-endian u64 payload, or None if too short.
pub fn get_u64(d: &[u8]) -> Option<u64> {
    let b: [u8; 8] = d.get(..8)?.try_into().ok()?;
    Some(u64::from_ne_bytes(b))
}

/// A netlink message of a given type whose payload is kept as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// The netlink message type.
    pub message_type: u16,
    /// The payload after the netlink header.
    pub payload: Vec<u8>,
}

impl NetlinkSerializable for RawMessage {
    fn message_type(&self) -> u16 {
        self.message_type
    }
    fn buffer_len(&self) -> usize {
        self.payload.len()
    }
    fn serialize(&self, buffer: &mut [u8]) {
        buffer[..self.payload.len()].copy_from_slice(&self.payload);
    }
}

impl NetlinkDeserializable for RawMessage {
    type Error = Infallible;
    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Self::Error> {
        Ok(RawMessage {
            message_type: header.message_type,
            payload: payload.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding_and_nesting() {
        let mut w = AttrWriter::new(&[9, 9, 0, 0]);
        w.put_u8(1, 7);
        let n = w.begin_nested(2);
        w.put(4, b"abcde");
        w.end_nested(n);
        w.put_u32(5, 0xdead_beef);
        assert_eq!(w.buf.len() % 4, 0);
        let top: Vec<_> = Attrs::new(&w.buf[4..]).collect();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0], (1, &[7u8][..]));
        assert_eq!(top[1].0, 2, "nested flag is masked off the type");
        let inner: Vec<_> = Attrs::new(top[1].1).collect();
        assert_eq!(inner[0], (4, &b"abcde"[..]));
        assert_eq!(get_u32(top[2].1), Some(0xdead_beef));
        // Claims 12 bytes but only 6 are there.
        assert_eq!(Attrs::new(&[12u8, 0, 1, 0, 1, 2]).count(), 0);
    }
}
