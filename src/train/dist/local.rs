//! N ranks as N threads of one process: the backend the data-parallel tests run on, with no GPU and no sockets.
//!
//! Each collective is a timed rendezvous on shared state: every rank deposits its payload, the last to arrive
//! combines them in rank order and publishes the result. A plain `std::sync::Barrier` would wait forever for a dead
//! peer; here a rank that has not arrived within the timeout is named in the error, and a rank whose handle is
//! dropped (its thread returned or panicked) fails the others at once.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::collective::{Collective, Exchange};
use super::DistError;

/// Builds the per-thread handles of one in-process group.
pub struct LocalGroup;

impl LocalGroup {
    /// `world` handles, one per rank thread; a collective fails after waiting `timeout` for a rank.
    pub fn ranks(world: usize, timeout: Duration) -> Vec<LocalCommunicator> {
        assert!(world > 0, "a group has at least one rank");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                completed: 0,
                slots: (0..world).map(|_| None).collect(),
                result: Arc::new(Vec::new()),
                departed: vec![false; world],
                finished: vec![false; world],
                broken: None,
            }),
            changed: Condvar::new(),
            timeout,
        });
        (0..world).map(|rank| LocalCommunicator { rank, world, shared: shared.clone() }).collect()
    }
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    timeout: Duration,
}

struct State {
    /// Collectives completed so far; a waiter is done when this moves past the round it joined.
    completed: u64,
    /// This round's contributions, by rank.
    slots: Vec<Option<(Collective, Vec<u8>)>>,
    /// The last completed round's result. It cannot be overwritten before every rank has read it: the next round
    /// needs every rank's contribution.
    result: Arc<Vec<u8>>,
    /// Ranks whose handle was dropped.
    departed: Vec<bool>,
    /// Ranks that passed `shutdown`; their departure is not a failure.
    finished: Vec<bool>,
    broken: Option<String>,
}

/// One rank's handle. Dropping it leaves the group: peers still waiting in a collective fail, naming this rank.
pub struct LocalCommunicator {
    rank: usize,
    world: usize,
    shared: Arc<Shared>,
}

impl LocalCommunicator {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A rank thread that panicked while holding the lock leaves consistent state (every update is a few
        // assignments), so poisoning carries no information here.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mark the group failed with `e` and wake everyone.
    fn fail(&self, st: &mut State, e: DistError) -> DistError {
        st.broken.get_or_insert_with(|| e.to_string());
        self.shared.changed.notify_all();
        e
    }

    fn check_departed(&self, st: &mut State, op: &'static str) -> Result<(), DistError> {
        let gone: Vec<usize> =
            (0..self.world).filter(|&r| st.departed[r] && !st.finished[r] && r != self.rank).collect();
        match gone.first() {
            Some(&peer) => Err(self.fail(
                st,
                DistError::PeerLost {
                    rank: self.rank,
                    peer,
                    op,
                    detail: "it left the group (its thread returned or panicked) while others still needed it".into(),
                },
            )),
            None => Ok(()),
        }
    }
}

impl Exchange for LocalCommunicator {
    const BACKEND: &'static str = "local";
    fn position(&self) -> (usize, usize) {
        (self.rank, self.world)
    }
    fn mark_finished(&self) {
        self.lock().finished[self.rank] = true;
    }
    fn exchange(&self, c: Collective, payload: Vec<u8>) -> Result<Vec<u8>, DistError> {
        let op = c.name();
        let mut st = self.lock();
        if let Some(first) = &st.broken {
            return Err(DistError::Broken { rank: self.rank, first: first.clone() });
        }
        if st.finished[self.rank] {
            return Err(DistError::Broken { rank: self.rank, first: "shutdown() was already called".into() });
        }
        self.check_departed(&mut st, op)?;
        let round = st.completed;
        st.slots[self.rank] = Some((c, payload));
        if st.slots.iter().all(|s| s.is_some()) {
            let slots: Vec<(Collective, Vec<u8>)> = st.slots.iter_mut().map(|s| s.take().expect("all full")).collect();
            if let Some((r, (theirs, _))) = slots.iter().enumerate().find(|(_, (k, _))| *k != slots[0].0) {
                let msg = format!("rank 0 is in {:?} but rank {r} in {theirs:?}", slots[0].0);
                return Err(self.fail(&mut st, DistError::Mismatch { rank: self.rank, op, msg }));
            }
            let parts: Vec<&[u8]> = slots.iter().map(|(_, p)| &p[..]).collect();
            let result = match c.combine(&parts) {
                Ok(r) => r,
                Err(msg) => return Err(self.fail(&mut st, DistError::Mismatch { rank: self.rank, op, msg })),
            };
            st.result = Arc::new(result);
            st.completed += 1;
            self.shared.changed.notify_all();
            return Ok(st.result.to_vec());
        }
        let deadline = Instant::now() + self.shared.timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                let waiting_for = (0..self.world).filter(|&r| st.slots[r].is_none()).collect();
                let after = self.shared.timeout;
                return Err(self.fail(&mut st, DistError::Timeout { rank: self.rank, op, waiting_for, after }));
            }
            st = self.shared.changed.wait_timeout(st, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
            if st.completed > round {
                return Ok(st.result.to_vec());
            }
            if let Some(first) = &st.broken {
                return Err(DistError::Aborted { rank: self.rank, msg: first.clone() });
            }
            self.check_departed(&mut st, op)?;
        }
    }
}

impl Drop for LocalCommunicator {
    fn drop(&mut self) {
        let mut st = self.lock();
        st.departed[self.rank] = true;
        self.shared.changed.notify_all();
    }
}
