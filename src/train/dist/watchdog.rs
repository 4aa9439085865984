//! A collective that cannot time out by itself (an NCCL kernel spinning on a peer that will never come) must not hang
//! the job silently: the watchdog notes when each guarded call began and, once one has run longer than the timeout,
//! reports it through an action. For a real run the action prints which collective on which rank stalled and ends
//! the process (`exit_action`), which in turn makes the launcher stop the other ranks. Checkpoints are written to a
//! temp directory and renamed, so ending the process at any moment never leaves half a checkpoint.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Exit status of a process ended by the watchdog or the liveness monitor (like `timeout(1)`).
pub const EXIT_STALLED: i32 = 124;

type Action = Box<dyn Fn(String) + Send + Sync>;

struct Shared {
    /// The guarded call in progress: (what, since).
    current: Mutex<Option<(String, Instant)>>,
    wake: Condvar,
    stop: AtomicBool,
}

pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Guards one call; dropping it marks the call finished.
pub struct Guard<'a> {
    dog: &'a Watchdog,
}

impl Watchdog {
    /// Fire `action(message)` once when a guarded call has run longer than `timeout`.
    pub fn new(timeout: Duration, action: Action) -> Watchdog {
        let shared = Arc::new(Shared { current: Mutex::new(None), wake: Condvar::new(), stop: AtomicBool::new(false) });
        let s = shared.clone();
        // Check often enough that the reported delay overshoots the timeout by at most ~10%.
        let tick = (timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(5));
        let thread = std::thread::Builder::new()
            .name("dist-watchdog".into())
            .spawn(move || {
                let mut cur = s.current.lock().unwrap_or_else(|p| p.into_inner());
                while !s.stop.load(Ordering::Acquire) {
                    if let Some((what, since)) = cur.as_ref() {
                        let ran = since.elapsed();
                        if ran >= timeout {
                            let msg = format!(
                                "{what} has not completed after {:.1}s (timeout {timeout:?}): a peer rank died or hung",
                                ran.as_secs_f64()
                            );
                            *cur = None;
                            drop(cur);
                            action(msg);
                            cur = s.current.lock().unwrap_or_else(|p| p.into_inner());
                            continue;
                        }
                    }
                    cur = s.wake.wait_timeout(cur, tick).unwrap_or_else(|p| p.into_inner()).0;
                }
            })
            .expect("spawning the watchdog thread");
        Watchdog { shared, thread: Some(thread) }
    }

    /// Start timing `what` (e.g. "rank 3: NCCL all_reduce of 25165824 f32").
    pub fn guard(&self, what: impl Into<String>) -> Guard<'_> {
        *self.shared.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((what.into(), Instant::now()));
        Guard { dog: self }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        *self.dog.shared.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The action of a real run: print the reason on stderr and end the process with [`EXIT_STALLED`].
pub fn exit_action() -> Action {
    Box::new(|msg| {
        eprintln!("error: {msg}; exiting");
        std::process::exit(EXIT_STALLED);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_only_for_a_call_that_outlives_the_timeout() {
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let tx = Mutex::new(tx);
        let dog = Watchdog::new(Duration::from_millis(200), Box::new(move |m| tx.lock().unwrap().send(m).unwrap()));
        {
            let _g = dog.guard("quick op");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(rx.recv_timeout(Duration::from_millis(400)).is_err(), "a finished call must not fire");
        let t0 = Instant::now();
        let _g = dog.guard("rank 1: all_reduce");
        let msg = rx.recv_timeout(Duration::from_secs(5)).expect("the watchdog fires");
        assert!(msg.contains("rank 1: all_reduce has not completed"), "{msg}");
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    }
}
