//! "Am I alive" over the rendezvous sockets, for backends whose collectives cannot notice a dead peer themselves
//! (NCCL waits forever for a rank that crashed). A reader thread per socket waits for the peer's next message: a
//! clean `Bye` after the final barrier, or an `Abort`. A socket that closes without `Bye` means the peer process
//! ended (error, crash, kill -9: the kernel closes its sockets in every case), so the job cannot go on: rank 0 tells
//! every other rank which rank was lost, then the action ends this process with that message. This takes
//! milliseconds across nodes, where the launcher (which sees only its own node's children) cannot help, and leaves
//! the watchdog's timeout for ranks that hang while alive.

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::rendezvous::Rendezvous;
use super::wire::{self, Tag};
use super::DistError;

type Action = Arc<dyn Fn(String) + Send + Sync>;

struct Shared {
    rank: usize,
    /// Write halves, by rank (rank 0: all peers; others: rank 0 only).
    writers: Mutex<Vec<Option<TcpStream>>>,
    /// This rank has passed its final barrier (or is being dropped): disconnects are expected from now on.
    leaving: AtomicBool,
    /// The action already ran (the first loss wins).
    fired: AtomicBool,
    action: Action,
}

pub struct Liveness {
    shared: Arc<Shared>,
}

impl Liveness {
    /// Watch the peers of a joined rendezvous; `action(message)` runs once when one is lost or the job is aborted.
    pub fn start(rv: Rendezvous, action: impl Fn(String) + Send + Sync + 'static) -> Result<Liveness, DistError> {
        let mut writers = Vec::with_capacity(rv.peers.len());
        let mut readers = Vec::new();
        for (peer, s) in rv.peers.into_iter().enumerate() {
            match s {
                Some(s) => {
                    let clone = s.try_clone().map_err(|e| DistError::Io {
                        what: format!("rank {}: socket to rank {peer}", rv.rank),
                        source: e,
                    })?;
                    // Blocking reads: a peer may be silent for the whole run.
                    s.set_read_timeout(None).ok();
                    readers.push((peer, s));
                    writers.push(Some(clone));
                }
                None => writers.push(None),
            }
        }
        let shared = Arc::new(Shared {
            rank: rv.rank,
            writers: Mutex::new(writers),
            leaving: AtomicBool::new(false),
            fired: AtomicBool::new(false),
            action: Arc::new(action),
        });
        for (peer, stream) in readers {
            let sh = shared.clone();
            std::thread::Builder::new()
                .name(format!("dist-liveness-{peer}"))
                .spawn(move || watch(sh, peer, stream))
                .map_err(|e| DistError::Io { what: "spawning the liveness thread".into(), source: e })?;
        }
        Ok(Liveness { shared })
    }

    /// After the final barrier: say goodbye, so that peers treat this rank's exit as normal.
    pub fn leave(&self) {
        self.shared.leaving.store(true, Ordering::Release);
        for w in self.shared.writers.lock().unwrap_or_else(|p| p.into_inner()).iter_mut().flatten() {
            let _ = wire::write_frame(w, Tag::Bye, &[]);
        }
    }
}

impl Drop for Liveness {
    fn drop(&mut self) {
        // Unblock the readers; without a prior `leave` the peers see a disconnect without goodbye (a failure).
        self.shared.leaving.store(true, Ordering::Release);
        for w in self.shared.writers.lock().unwrap_or_else(|p| p.into_inner()).iter().flatten() {
            let _ = w.shutdown(Shutdown::Both);
        }
    }
}

fn watch(sh: Arc<Shared>, peer: usize, mut stream: TcpStream) {
    let me = sh.rank;
    let msg = loop {
        match wire::read_frame(&mut stream) {
            Ok((Tag::Bye, _)) => return,
            Ok((Tag::Abort, why)) => {
                break format!("rank {me}: the job was aborted: {}", String::from_utf8_lossy(&why))
            }
            // Nothing else travels on these sockets once the rendezvous is done; ignore rather than die.
            Ok(_) => continue,
            Err(e) => {
                if sh.leaving.load(Ordering::Acquire) {
                    return;
                }
                break format!(
                    "rank {me}: lost rank {peer}: its connection closed ({e}) before it finished; it exited or \
                     crashed, see its output"
                );
            }
        }
    };
    if sh.leaving.load(Ordering::Acquire) || sh.fired.swap(true, Ordering::AcqRel) {
        return;
    }
    if me == 0 {
        // The other ranks may be stuck in a collective with the lost one: tell them before this process ends.
        for (r, w) in sh.writers.lock().unwrap_or_else(|p| p.into_inner()).iter_mut().enumerate() {
            if let (Some(w), true) = (w, r != peer) {
                let _ = wire::write_frame(w, Tag::Abort, msg.as_bytes());
            }
        }
    }
    (sh.action)(msg);
}
