//! The framing of every message on the rendezvous sockets: `[tag u8][len u64 LE][payload]`.

use std::io::{self, Read, Write};

/// Versioned so two different tokenmill builds in one job fail at rendezvous, not with garbage gradients.
pub(crate) const MAGIC: &[u8; 4] = b"TMDP";
pub(crate) const PROTOCOL_VERSION: u32 = 1;

/// Upper bound on one payload: a corrupted length must not make a rank allocate terabytes.
const MAX_PAYLOAD: u64 = 1 << 36;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tag {
    /// rank -> 0: magic, version, rank, world.
    Hello = 1,
    /// 0 -> rank: the group's id (the NCCL unique id; empty for tcp).
    Welcome = 2,
    /// A collective's buffer.
    Data = 3,
    /// "The job is over": a UTF-8 reason. Sent by rank 0 to everyone when one rank fails.
    Abort = 4,
    /// Clean leave after the final barrier.
    Bye = 5,
}

impl Tag {
    fn from_u8(b: u8) -> Option<Tag> {
        Some(match b {
            1 => Tag::Hello,
            2 => Tag::Welcome,
            3 => Tag::Data,
            4 => Tag::Abort,
            5 => Tag::Bye,
            _ => return None,
        })
    }
}

pub(crate) fn write_frame(s: &mut impl Write, tag: Tag, payload: &[u8]) -> io::Result<()> {
    let mut head = [0u8; 9];
    head[0] = tag as u8;
    head[1..].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    // One write for small frames: with TCP_NODELAY every write is a packet.
    if payload.len() <= 1 << 16 {
        let mut buf = Vec::with_capacity(9 + payload.len());
        buf.extend_from_slice(&head);
        buf.extend_from_slice(payload);
        s.write_all(&buf)?;
    } else {
        s.write_all(&head)?;
        s.write_all(payload)?;
    }
    s.flush()
}

pub(crate) fn read_frame(s: &mut impl Read) -> io::Result<(Tag, Vec<u8>)> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head)?;
    let tag = Tag::from_u8(head[0])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unknown message tag {}", head[0])))?;
    let len = u64::from_le_bytes(head[1..].try_into().expect("8 bytes"));
    if len > MAX_PAYLOAD {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("message length {len} is implausible")));
    }
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload)?;
    Ok((tag, payload))
}

/// The hello a rank sends to rank 0.
pub(crate) fn hello(rank: usize, world: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    b.extend_from_slice(&(rank as u32).to_le_bytes());
    b.extend_from_slice(&(world as u32).to_le_bytes());
    b
}

/// (rank, world) from a hello, or why it is not one of ours.
pub(crate) fn parse_hello(b: &[u8]) -> Result<(usize, usize), String> {
    if b.len() != 16 || &b[..4] != MAGIC {
        return Err("a connection that is not a tokenmill rank (wrong handshake)".into());
    }
    let word = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    if word(4) != PROTOCOL_VERSION {
        return Err(format!(
            "a rank speaks protocol version {} but rank 0 speaks {PROTOCOL_VERSION} (different tokenmill builds)",
            word(4)
        ));
    }
    Ok((word(8) as usize, word(12) as usize))
}

/// True for the errors a read timeout produces (the kind differs by platform).
pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_reject_garbage() {
        let mut buf = Vec::new();
        write_frame(&mut buf, Tag::Data, &[1, 2, 3]).unwrap();
        write_frame(&mut buf, Tag::Bye, &[]).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r).unwrap(), (Tag::Data, vec![1, 2, 3]));
        assert_eq!(read_frame(&mut r).unwrap(), (Tag::Bye, vec![]));
        assert_eq!(read_frame(&mut r).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let mut bad = &[9u8, 0, 0, 0, 0, 0, 0, 0, 0][..];
        assert!(read_frame(&mut bad).unwrap_err().to_string().contains("unknown message tag 9"));
        assert_eq!(parse_hello(&hello(3, 8)).unwrap(), (3, 8));
        assert!(parse_hello(b"GET / HTTP/1.1\r\n").is_err());
    }
}
