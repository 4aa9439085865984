//! The TCP rendezvous on MASTER_ADDR:MASTER_PORT: rank 0 listens, every other rank connects (retrying until the
//! timeout, since ranks start in any order), says hello (rank, world, protocol version), and receives the group id
//! rank 0 hands out (NCCL's 128-byte unique id; nothing for the tcp backend).
//!
//! The sockets stay open afterwards: the tcp backend moves its collectives over them, the NCCL backend uses them as
//! an "am I alive" channel (see `nccl::Liveness`). When a rank does not arrive, rank 0 fails with an error naming
//! it and sends the reason to the ranks that did arrive, so every rank's error says which rank is missing.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::wire::{self, Tag};
use super::DistError;

/// How long one connect attempt may take before retrying.
const CONNECT_ATTEMPT: Duration = Duration::from_secs(2);
/// Pause between connect attempts while rank 0 is not listening yet.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A joined group: the sockets to the peers, and the id rank 0 handed out.
#[derive(Debug)]
pub struct Rendezvous {
    pub rank: usize,
    pub world: usize,
    /// `MASTER_ADDR:MASTER_PORT`, for error messages.
    pub addr: String,
    /// Indexed by rank. Rank 0 holds one socket per other rank; every other rank holds only `peers[0]`.
    pub(crate) peers: Vec<Option<TcpStream>>,
    /// The id rank 0 handed out (identical on every rank).
    pub group_id: Vec<u8>,
}

impl Rendezvous {
    /// Join the group of `world` ranks whose rank 0 listens on `addr` ("host:port"). Rank 0 hands out `group_id`
    /// (ignored on the other ranks). Blocks until every rank has arrived or `timeout` has passed.
    pub fn join(
        addr: &str,
        rank: usize,
        world: usize,
        group_id: &[u8],
        timeout: Duration,
    ) -> Result<Rendezvous, DistError> {
        assert!(rank < world, "rank {rank} out of range for world {world}");
        let mut rv = Rendezvous { rank, world, addr: addr.to_string(), peers: Vec::new(), group_id: Vec::new() };
        if world == 1 {
            rv.peers = vec![None];
            rv.group_id = group_id.to_vec();
            return Ok(rv);
        }
        if rank == 0 {
            rv.peers = serve(addr, world, group_id, timeout)?;
            rv.group_id = group_id.to_vec();
        } else {
            let (stream, id) = connect(addr, rank, world, timeout)?;
            rv.peers = (0..world).map(|_| None).collect();
            rv.peers[0] = Some(stream);
            rv.group_id = id;
        }
        Ok(rv)
    }

    pub(crate) fn err(&self, msg: impl Into<String>) -> DistError {
        DistError::Rendezvous { addr: self.addr.clone(), msg: msg.into() }
    }
}

fn resolve(addr: &str) -> Result<Vec<SocketAddr>, DistError> {
    let rv_err = |msg: String| DistError::Rendezvous { addr: addr.to_string(), msg };
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(|e| rv_err(format!("cannot resolve: {e}")))?.collect();
    if addrs.is_empty() {
        return Err(rv_err("the address resolves to nothing".into()));
    }
    Ok(addrs)
}

/// Rank 0: accept world-1 hellos, then welcome everyone.
fn serve(addr: &str, world: usize, group_id: &[u8], timeout: Duration) -> Result<Vec<Option<TcpStream>>, DistError> {
    let rv_err = |msg: String| DistError::Rendezvous { addr: addr.to_string(), msg };
    let mut bind_errors = Vec::new();
    let listener = resolve(addr)?.into_iter().find_map(|a| match TcpListener::bind(a) {
        Ok(l) => Some(l),
        Err(e) => {
            bind_errors.push(format!("{a}: {e}"));
            None
        }
    });
    let Some(listener) = listener else {
        return Err(rv_err(format!(
            "rank 0 cannot listen ({}); MASTER_ADDR must name rank 0's own host and MASTER_PORT a free port",
            bind_errors.join("; ")
        )));
    };
    listener.set_nonblocking(true).map_err(|e| rv_err(format!("listener: {e}")))?;
    let deadline = Instant::now() + timeout;
    let mut peers: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
    let arrived = |peers: &[Option<TcpStream>]| peers.iter().skip(1).filter(|p| p.is_some()).count();

    let outcome = (|| -> Result<(), DistError> {
        while arrived(&peers) < world - 1 {
            let now = Instant::now();
            if now >= deadline {
                let missing = (1..world).filter(|&r| peers[r].is_none()).collect();
                return Err(DistError::NotArrived { addr: addr.to_string(), missing, world, after: timeout });
            }
            let mut stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(e) => return Err(rv_err(format!("accept: {e}"))),
            };
            let from = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
            let io_err = |e: io::Error| rv_err(format!("connection from {from}: {e}"));
            stream.set_nonblocking(false).map_err(io_err)?;
            stream.set_nodelay(true).map_err(io_err)?;
            stream.set_read_timeout(Some((deadline - now).max(Duration::from_millis(10)))).map_err(io_err)?;
            let (tag, payload) = wire::read_frame(&mut stream).map_err(io_err)?;
            let checked = (|| {
                let (rank, their_world) = match tag {
                    Tag::Hello => wire::parse_hello(&payload).map_err(|m| format!("connection from {from}: {m}"))?,
                    other => return Err(format!("connection from {from}: expected a hello, got {other:?}")),
                };
                if their_world != world {
                    return Err(format!(
                        "rank {rank} (from {from}) was started with world size {their_world}, rank 0 with {world}"
                    ));
                }
                if rank == 0 || rank >= world {
                    return Err(format!("a rank from {from} claims rank {rank}, outside 1..{world}"));
                }
                if peers[rank].is_some() {
                    return Err(format!("rank {rank} arrived twice (the second from {from}); check RANK"));
                }
                Ok(rank)
            })();
            let rank = match checked {
                Ok(rank) => rank,
                Err(msg) => {
                    // The refused rank learns why too (the ranks already in hear it below).
                    let e = rv_err(msg);
                    let _ = wire::write_frame(&mut stream, Tag::Abort, e.to_string().as_bytes());
                    return Err(e);
                }
            };
            peers[rank] = Some(stream);
        }
        Ok(())
    })();

    if let Err(e) = outcome {
        // Tell the ranks that did arrive why the job cannot start, so their errors name the culprit too.
        let reason = e.to_string();
        for s in peers.iter_mut().flatten() {
            let _ = wire::write_frame(s, Tag::Abort, reason.as_bytes());
        }
        return Err(e);
    }
    for (rank, s) in peers.iter_mut().enumerate().skip(1) {
        let s = s.as_mut().expect("all arrived");
        s.set_read_timeout(None).map_err(|e| rv_err(format!("rank {rank}: {e}")))?;
        wire::write_frame(s, Tag::Welcome, group_id).map_err(|e| rv_err(format!("welcoming rank {rank}: {e}")))?;
    }
    Ok(peers)
}

/// Rank > 0: connect (retrying until rank 0 listens), say hello, wait for the welcome.
fn connect(addr: &str, rank: usize, world: usize, timeout: Duration) -> Result<(TcpStream, Vec<u8>), DistError> {
    let rv_err = |msg: String| DistError::Rendezvous { addr: addr.to_string(), msg };
    let deadline = Instant::now() + timeout;
    let mut last_error = String::from("no attempt");
    let mut stream = 'connected: loop {
        // Re-resolve on every attempt: rank 0's host may only just have come up.
        if let Ok(addrs) = resolve(addr) {
            for a in addrs {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match TcpStream::connect_timeout(&a, left.min(CONNECT_ATTEMPT)) {
                    Ok(s) => break 'connected s,
                    Err(e) => last_error = format!("{a}: {e}"),
                }
            }
        }
        if Instant::now() + RETRY_PAUSE >= deadline {
            return Err(rv_err(format!(
                "rank {rank} could not reach rank 0 within {timeout:?} (last error: {last_error}); is rank 0 \
                 running, and is MASTER_ADDR rank 0's host?"
            )));
        }
        std::thread::sleep(RETRY_PAUSE);
    };
    let io_err = |e: io::Error| rv_err(format!("rank {rank}: {e}"));
    stream.set_nodelay(true).map_err(io_err)?;
    wire::write_frame(&mut stream, Tag::Hello, &wire::hello(rank, world)).map_err(io_err)?;
    // Rank 0 answers once everyone has arrived, or aborts at its own deadline: allow for its timeout plus a margin
    // in case it started later than this rank.
    let wait = deadline.saturating_duration_since(Instant::now()) + timeout / 2 + Duration::from_secs(1);
    stream.set_read_timeout(Some(wait)).map_err(io_err)?;
    match wire::read_frame(&mut stream) {
        Ok((Tag::Welcome, id)) => {
            stream.set_read_timeout(None).map_err(io_err)?;
            Ok((stream, id))
        }
        Ok((Tag::Abort, why)) => Err(DistError::Aborted { rank, msg: String::from_utf8_lossy(&why).into_owned() }),
        Ok((tag, _)) => Err(rv_err(format!("rank {rank}: expected the welcome, got {tag:?}"))),
        Err(e) if wire::is_timeout(&e) => Err(rv_err(format!(
            "rank {rank}: rank 0 accepted the connection but did not complete the rendezvous in time"
        ))),
        Err(e) => Err(rv_err(format!("rank {rank}: rank 0 closed the rendezvous ({e}); see rank 0's error"))),
    }
}

/// A free local TCP port (for tests and single-node defaults); another process may take it before it is used.
pub fn free_local_port() -> io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}
