//! Stopping a run cleanly. Schedulers preempt with SIGTERM, people press Ctrl-C (SIGINT); either used to lose every
//! step since the last checkpoint. After [`StopRequest::on_signals`] the first signal only raises a flag: the loop
//! finishes the step it is in, every data-parallel rank agrees on that step (one tiny all-reduce per step,
//! `Trainer::run`), rank 0 writes a checkpoint (atomically, as always) and the run ends with a clear line. A second
//! signal exits at once with the shell's status for it (128 + its number), as an impatient user expects.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

pub const SIGINT: i32 = signal_hook::consts::SIGINT;
pub const SIGTERM: i32 = signal_hook::consts::SIGTERM;

/// A request to stop after the current step: raised by a signal, or by [`request`](Self::request). Clones share it.
#[derive(Clone, Debug, Default)]
pub struct StopRequest {
    raised: Arc<AtomicBool>,
    /// The signal that raised it (0: none, or raised by `request` without one).
    signal: Arc<AtomicUsize>,
}

impl StopRequest {
    /// A request nothing raises but [`request`](Self::request) (library use, tests).
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on the first SIGTERM or SIGINT raises this request; a second one exits the process at once with
    /// status 128 + signal.
    pub fn on_signals(&self) -> std::io::Result<()> {
        for sig in [SIGTERM, SIGINT] {
            // Registration order is the mechanism: handlers run in order, so the shutdown handler sees the flag as
            // it was before this signal, and only a signal arriving after an earlier one exits.
            signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, self.raised.clone())?;
            signal_hook::flag::register_usize(sig, self.signal.clone(), sig as usize)?;
            signal_hook::flag::register(sig, self.raised.clone())?;
        }
        Ok(())
    }

    /// Raise the request as if `signal` (0 for none) had arrived.
    pub fn request(&self, signal: i32) {
        self.signal.store(signal.max(0) as usize, Ordering::SeqCst);
        self.raised.store(true, Ordering::SeqCst);
    }

    pub fn raised(&self) -> bool {
        self.raised.load(Ordering::SeqCst)
    }

    /// The signal that raised the request, if one did.
    pub fn signal(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s as i32),
        }
    }
}

/// `SIGTERM`, `SIGINT` or `signal N`.
pub fn signal_name(sig: i32) -> String {
    match sig {
        SIGTERM => "SIGTERM".into(),
        SIGINT => "SIGINT".into(),
        s => format!("signal {s}"),
    }
}
