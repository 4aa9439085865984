//! Jobs on a rayon pool, results handed back in submission order, at most `window` jobs outstanding (running, queued
//! or finished but not yet taken). Unlike a `par_iter` over a chunk, there is no barrier: while the consumer handles
//! one result the pool keeps working on the next ones, and the window bounds memory however fast the pool is.

use std::collections::BTreeMap;

use crossbeam_channel::{unbounded, Receiver, Sender};

pub struct OrderedJobs<'p, T> {
    pool: &'p rayon::ThreadPool,
    tx: Sender<(u64, T)>,
    rx: Receiver<(u64, T)>,
    /// Results that arrived ahead of their turn.
    ready: BTreeMap<u64, T>,
    next_submit: u64,
    next_take: u64,
    window: usize,
}

impl<'p, T: Send + 'static> OrderedJobs<'p, T> {
    pub fn new(pool: &'p rayon::ThreadPool, window: usize) -> Self {
        let (tx, rx) = unbounded();
        OrderedJobs { pool, tx, rx, ready: BTreeMap::new(), next_submit: 0, next_take: 0, window: window.max(1) }
    }

    /// Whether another job may be submitted without exceeding the window.
    pub fn has_room(&self) -> bool {
        ((self.next_submit - self.next_take) as usize) < self.window
    }

    pub fn is_empty(&self) -> bool {
        self.next_submit == self.next_take
    }

    pub fn submit(&mut self, job: impl FnOnce() -> T + Send + 'static) {
        let (seq, tx) = (self.next_submit, self.tx.clone());
        self.next_submit += 1;
        // A send fails only once `self` is gone (the consumer stopped early): the result is not wanted.
        self.pool.spawn(move || {
            let _ = tx.send((seq, job()));
        });
    }

    /// The result of the oldest job not yet taken, waiting for it; `None` when nothing is outstanding.
    pub fn wait_next(&mut self) -> Option<T> {
        if self.is_empty() {
            return None;
        }
        let want = self.next_take;
        let out = match self.ready.remove(&want) {
            Some(t) => t,
            None => loop {
                let (seq, t) = self.rx.recv().expect("the sender lives in self");
                if seq == want {
                    break t;
                }
                self.ready.insert(seq, t);
            },
        };
        self.next_take += 1;
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_submission_order_within_the_window() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
        let mut jobs = OrderedJobs::new(&pool, 3);
        let mut got = Vec::new();
        let mut submitted = 0u64;
        loop {
            while jobs.has_room() && submitted < 50 {
                let i = submitted;
                // Later jobs finish first: order must come from the sequence numbers, not completion.
                jobs.submit(move || {
                    std::thread::sleep(std::time::Duration::from_micros((50 - i) * 20));
                    i
                });
                submitted += 1;
            }
            assert!((jobs.next_submit - jobs.next_take) <= 3);
            match jobs.wait_next() {
                Some(i) => got.push(i),
                None => break,
            }
        }
        assert_eq!(got, (0..50).collect::<Vec<_>>());
    }
}
