//! The CPU backend for separate processes: collectives as a star through rank 0 over the rendezvous sockets.
//! Every rank sends its buffer to rank 0, rank 0 combines them in rank order and sends the result back: 2(N-1)
//! transfers per collective, plenty for CPU training (a ring would matter only for large N and large buffers).
//!
//! Failure: a rank that dies closes its socket, so rank 0's read fails at once with "lost rank R"; a rank that hangs
//! trips the read timeout. Rank 0 then sends the reason to every other rank before failing, so all ranks exit naming
//! the same culprit, and the group refuses any further collective.

use std::io;
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::Duration;

use super::collective::{Collective, Exchange, HEADER};
use super::rendezvous::Rendezvous;
use super::wire::{self, Tag};
use super::DistError;

pub struct TcpCommunicator {
    rank: usize,
    world: usize,
    timeout: Duration,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Indexed by rank (see `Rendezvous::peers`).
    peers: Vec<Option<TcpStream>>,
    /// The first failure; once set, every collective fails with it.
    broken: Option<String>,
    /// The final barrier passed: peers may disconnect now.
    finished: bool,
}

impl TcpCommunicator {
    /// Collectives over a joined rendezvous. A collective fails when a peer sends nothing for `timeout` (non-root
    /// ranks allow rank 0 a little longer, so that rank 0, which knows which rank is missing, reports first).
    pub fn new(rv: Rendezvous, timeout: Duration) -> Result<TcpCommunicator, DistError> {
        let rank = rv.rank;
        let wait = if rank == 0 { timeout } else { timeout + timeout / 4 + Duration::from_secs(1) };
        for (peer, s) in rv.peers.iter().enumerate() {
            if let Some(s) = s {
                let setup = || -> io::Result<()> {
                    s.set_read_timeout(Some(wait))?;
                    s.set_write_timeout(Some(wait))?;
                    s.set_nodelay(true)
                };
                setup().map_err(|e| rv.err(format!("socket to rank {peer}: {e}")))?;
            }
        }
        Ok(TcpCommunicator {
            rank,
            world: rv.world,
            timeout,
            inner: Mutex::new(Inner { peers: rv.peers, broken: None, finished: false }),
        })
    }

    fn lost(&self, peer: usize, op: &'static str, e: &io::Error) -> DistError {
        if wire::is_timeout(e) {
            DistError::Timeout { rank: self.rank, op, waiting_for: vec![peer], after: self.timeout }
        } else {
            let detail = match e.kind() {
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                    format!("its connection closed ({e}): it exited or crashed, see its output")
                }
                _ => e.to_string(),
            };
            DistError::PeerLost { rank: self.rank, peer, op, detail }
        }
    }

    /// Rank 0's side: gather, combine, scatter.
    fn root_exchange(&self, inner: &mut Inner, c: Collective, mine: Vec<u8>) -> Result<Vec<u8>, DistError> {
        let op = c.name();
        let mut parts: Vec<Vec<u8>> = vec![mine];
        for peer in 1..self.world {
            let s = inner.peers[peer].as_mut().expect("rank 0 holds every peer");
            let (tag, payload) = wire::read_frame(s).map_err(|e| self.lost(peer, op, &e))?;
            if tag != Tag::Data {
                return Err(DistError::Mismatch { rank: 0, op, msg: format!("rank {peer} sent {tag:?}") });
            }
            match Collective::from_header(&payload) {
                Some(theirs) if theirs == c => parts.push(payload[HEADER..].to_vec()),
                theirs => {
                    let theirs = theirs.map(|t| format!("{t:?}")).unwrap_or_else(|| "garbage".into());
                    return Err(DistError::Mismatch {
                        rank: 0,
                        op,
                        msg: format!("rank 0 is in {c:?} but rank {peer} in {theirs}"),
                    });
                }
            }
        }
        let refs: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
        let result = c.combine(&refs).map_err(|msg| DistError::Mismatch { rank: 0, op, msg })?;
        for peer in 1..self.world {
            let s = inner.peers[peer].as_mut().expect("rank 0 holds every peer");
            wire::write_frame(s, Tag::Data, &result).map_err(|e| self.lost(peer, op, &e))?;
        }
        Ok(result)
    }

    fn leaf_exchange(&self, inner: &mut Inner, c: Collective, mine: Vec<u8>) -> Result<Vec<u8>, DistError> {
        let op = c.name();
        let s = inner.peers[0].as_mut().expect("every rank holds rank 0");
        let mut payload = Vec::with_capacity(HEADER + mine.len());
        payload.extend_from_slice(&c.header());
        payload.extend_from_slice(&mine);
        wire::write_frame(s, Tag::Data, &payload).map_err(|e| self.lost(0, op, &e))?;
        match wire::read_frame(s).map_err(|e| self.lost(0, op, &e))? {
            (Tag::Data, result) => Ok(result),
            (Tag::Abort, why) => {
                Err(DistError::Aborted { rank: self.rank, msg: String::from_utf8_lossy(&why).into_owned() })
            }
            (tag, _) => Err(DistError::Mismatch { rank: self.rank, op, msg: format!("rank 0 sent {tag:?}") }),
        }
    }
}

impl Exchange for TcpCommunicator {
    const BACKEND: &'static str = "tcp";
    fn position(&self) -> (usize, usize) {
        (self.rank, self.world)
    }
    fn mark_finished(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).finished = true;
    }
    fn exchange(&self, c: Collective, payload: Vec<u8>) -> Result<Vec<u8>, DistError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(first) = &inner.broken {
            return Err(DistError::Broken { rank: self.rank, first: first.clone() });
        }
        if inner.finished {
            return Err(DistError::Broken { rank: self.rank, first: "shutdown() was already called".into() });
        }
        if self.world == 1 {
            return c.combine(&[&payload]).map_err(|msg| DistError::Mismatch { rank: 0, op: c.name(), msg });
        }
        let result = if self.rank == 0 {
            self.root_exchange(&mut inner, c, payload)
        } else {
            self.leaf_exchange(&mut inner, c, payload)
        };
        if let Err(e) = &result {
            let reason = e.to_string();
            if self.rank == 0 {
                // Every other rank is blocked waiting for rank 0: tell them why the job ends.
                for s in inner.peers.iter_mut().flatten() {
                    let _ = wire::write_frame(s, Tag::Abort, reason.as_bytes());
                }
            }
            inner.broken = Some(reason);
        }
        result
    }
}
