//! `TOKENMILL_PREP_PROFILE=1`: where a `prep` run's time goes, printed to stderr at its end (lines starting with
//! `prep profile:`), to tell a serial stage from per-thread slowdown and warm-up on a many-core machine where a run
//! lasts well under a second (`PROFILE=1 scripts/prep-scaling.sh`).
//!
//! What it records: marks on the run's timeline (inputs listed, writer open, encoder ready, pool ready, first and last
//! segment taken, end); per segment job, its thread, start and end, the time spent tokenizing and encoding (the rest of
//! the job is parquet/JSON decoding and buffer handling), its CPU time and run-queue wait from the kernel's schedstat,
//! its tokens and how its pieces were answered (shared vocabulary table, thread cache, merged); for the consumer (the
//! calling thread), time planning, waiting for the next segment in order, and pushing documents into the writer; the
//! process's user/sys time and minor faults. When the switch is off none of this runs: the only cost is a branch per
//! segment and per document.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::tokenizer::{piece_counts, PieceCounts};

/// Whether `TOKENMILL_PREP_PROFILE` is set to something other than `0` (read once per process).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("TOKENMILL_PREP_PROFILE").is_some_and(|v| !v.is_empty() && v != "0"))
}

/// Time spent inside one segment job, filled by `Segment::encode` when profiling.
#[derive(Clone, Copy, Debug, Default)]
pub struct StageTimes {
    /// Splitting and BPE (`Tokenizer::encode_document_into`).
    pub tokenize: Duration,
    /// Token ids to shard bytes.
    pub encode: Duration,
    pub tokens: u64,
}

/// One segment job as the worker thread saw it.
#[derive(Clone, Copy, Debug)]
struct Job {
    thread: usize,
    start: Duration,
    end: Duration,
    stages: StageTimes,
    cpu: Duration,
    runqueue: Duration,
    pieces: PieceCounts,
}

/// The consumer's (calling thread's) time, by activity.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConsumerTimes {
    pub planning: Duration,
    pub waiting: Duration,
    pub pushing: Duration,
}

/// A profile of one run; shared with the jobs (`Arc`), read once at the end.
pub struct Profile {
    start: Instant,
    process_start: ProcStat,
    marks: Mutex<Vec<(&'static str, Duration)>>,
    jobs: Mutex<Vec<Job>>,
    /// The pool's size and the consumer's times, once the segments are done.
    consumer: Mutex<(usize, ConsumerTimes)>,
}

/// A job being timed: created at its start on the worker thread, recorded by [`JobTimer::finish`].
pub struct JobTimer {
    start: Duration,
    sched: Option<(u64, u64)>,
    pieces: PieceCounts,
}

impl Profile {
    /// A profile of the run that started at `start`, or `None` when profiling is off.
    pub fn new(start: Instant) -> Option<Arc<Profile>> {
        enabled().then(|| {
            Arc::new(Profile {
                start,
                process_start: ProcStat::read(),
                marks: Mutex::new(Vec::new()),
                jobs: Mutex::new(Vec::new()),
                consumer: Mutex::new((0, ConsumerTimes::default())),
            })
        })
    }

    /// A point on the run's timeline (shown in the order marked).
    pub fn mark(&self, what: &'static str) {
        let at = self.start.elapsed();
        self.marks.lock().expect("profile lock").push((what, at));
    }

    /// A point on the timeline measured elsewhere (`at` from the run's start).
    pub fn mark_at(&self, what: &'static str, at: Duration) {
        self.marks.lock().expect("profile lock").push((what, at));
    }

    /// Start timing a job on the current (pool) thread.
    pub fn job_start(&self) -> JobTimer {
        JobTimer { start: self.start.elapsed(), sched: thread_schedstat(), pieces: piece_counts() }
    }

    pub fn job_finish(&self, timer: JobTimer, stages: StageTimes) {
        let end = self.start.elapsed();
        let (cpu, runqueue) = match (timer.sched, thread_schedstat()) {
            (Some((c0, w0)), Some((c1, w1))) => {
                (Duration::from_nanos(c1.saturating_sub(c0)), Duration::from_nanos(w1.saturating_sub(w0)))
            }
            _ => (Duration::ZERO, Duration::ZERO),
        };
        let now = piece_counts();
        let pieces = PieceCounts {
            vocab: now.vocab - timer.pieces.vocab,
            cached: now.cached - timer.pieces.cached,
            merged: now.merged - timer.pieces.merged,
        };
        let thread = rayon::current_thread_index().unwrap_or(usize::MAX);
        let job = Job { thread, start: timer.start, end, stages, cpu, runqueue, pieces };
        self.jobs.lock().expect("profile lock").push(job);
    }

    pub fn set_consumer(&self, threads: usize, times: ConsumerTimes) {
        *self.consumer.lock().expect("profile lock") = (threads, times);
    }

    /// The report, one `prep profile:` line each.
    pub fn report(&self) -> Vec<String> {
        let (threads, consumer) = *self.consumer.lock().expect("profile lock");
        let wall = self.start.elapsed();
        let process = ProcStat::read().since(&self.process_start);
        let marks = self.marks.lock().expect("profile lock").clone();
        let jobs = self.jobs.lock().expect("profile lock").clone();
        let s = |d: Duration| d.as_secs_f64();
        let sum = |f: &dyn Fn(&Job) -> Duration| jobs.iter().map(f).sum::<Duration>();
        let tokens: u64 = jobs.iter().map(|j| j.stages.tokens).sum();
        let mut out = Vec::new();
        let mut line = |l: String| out.push(format!("prep profile: {l}"));
        line(format!(
            "{threads} pool thread(s), {} segment(s), {tokens} tokens (skipped ones included), wall {:.3}s",
            jobs.len(),
            s(wall)
        ));
        let timeline: Vec<String> = marks.iter().map(|(what, at)| format!("{what} {:.3}", s(*at))).collect();
        line(format!("timeline (s from start): {}, end {:.3}", timeline.join(", "), s(wall)));
        if jobs.is_empty() {
            return out;
        }
        let busy = sum(&|j| j.end - j.start);
        let tokenize = sum(&|j| j.stages.tokenize);
        let encode = sum(&|j| j.stages.encode);
        let other = busy.saturating_sub(tokenize + encode);
        let cpu = sum(&|j| j.cpu);
        let runqueue = sum(&|j| j.runqueue);
        let first_start = jobs.iter().map(|j| j.start).min().unwrap_or_default();
        let last_end = jobs.iter().map(|j| j.end).max().unwrap_or_default();
        let span = last_end.saturating_sub(first_start);
        // Per thread: when it started its first job and ended its last; the spread of those is the pipeline's fill
        // and drain (threads idle while others work).
        let mut per_thread: Vec<(usize, Vec<&Job>)> = Vec::new();
        for j in &jobs {
            match per_thread.iter_mut().find(|(t, _)| *t == j.thread) {
                Some((_, v)) => v.push(j),
                None => per_thread.push((j.thread, vec![j])),
            }
        }
        per_thread.sort_by_key(|(t, _)| *t);
        let firsts: Vec<Duration> = per_thread.iter().map(|(_, v)| v.iter().map(|j| j.start).min().unwrap()).collect();
        let lasts: Vec<Duration> = per_thread.iter().map(|(_, v)| v.iter().map(|j| j.end).max().unwrap()).collect();
        let fill = firsts.iter().max().unwrap().saturating_sub(first_start);
        let drain = last_end.saturating_sub(*lasts.iter().min().unwrap());
        let capacity = span.as_secs_f64() * threads as f64;
        line(format!(
            "workers: busy {:.3}s of {threads} x {:.3}s between the first segment's start and the last's end ({:.0}%); \
             fill {:.3}s (until the last thread's first segment), drain {:.3}s (first thread done for good -> last \
             segment done); {} of {threads} thread(s) got a segment",
            s(busy),
            s(span),
            100.0 * s(busy) / capacity.max(1e-9),
            s(fill),
            s(drain),
            per_thread.len()
        ));
        let per_token = |d: Duration| d.as_nanos() as f64 / tokens.max(1) as f64;
        line(format!(
            "worker time per token (ns; the same at every thread count if nothing slows a thread down): busy {:.1} = \
             tokenize {:.1} + encode {:.1} + decode/other {:.1}; on-CPU {:.1}, run-queue wait {:.1}",
            per_token(busy),
            per_token(tokenize),
            per_token(encode),
            per_token(other),
            per_token(cpu),
            per_token(runqueue)
        ));
        let (vocab, cached, merged) = jobs
            .iter()
            .fold((0u64, 0u64, 0u64), |(a, b, c), j| (a + j.pieces.vocab, b + j.pieces.cached, c + j.pieces.merged));
        let pieces = (vocab + cached + merged).max(1) as f64;
        line(format!(
            "pieces (GPT-2 path or byte-level BPE fast path): {:.2}% one vocabulary token, {:.2}% from the thread's cache, {:.3}% merged ({merged})",
            100.0 * vocab as f64 / pieces,
            100.0 * cached as f64 / pieces,
            100.0 * merged as f64 / pieces
        ));
        line(format!(
            "consumer: planning {:.3}s, waiting for the next segment in order {:.3}s, pushing documents {:.3}s",
            s(consumer.planning),
            s(consumer.waiting),
            s(consumer.pushing)
        ));
        line(format!(
            "process since start: user {:.2}s, sys {:.2}s, minor faults {}, major faults {}",
            process.user, process.sys, process.minflt, process.majflt
        ));
        for ((t, v), (first, last)) in per_thread.iter().zip(firsts.iter().zip(&lasts)) {
            let busy: Duration = v.iter().map(|j| j.end - j.start).sum();
            let tok: Duration = v.iter().map(|j| j.stages.tokenize).sum();
            let cpu: Duration = v.iter().map(|j| j.cpu).sum();
            let tokens: u64 = v.iter().map(|j| j.stages.tokens).sum();
            let merged: u64 = v.iter().map(|j| j.pieces.merged).sum();
            line(format!(
                "thread {t:>3}: {:>4} segment(s), first start {:.3}, last end {:.3}, busy {:.3}s (tokenize {:.3}s, \
                 on-CPU {:.3}s), {:.1} ns/token, {merged} merged",
                v.len(),
                s(*first),
                s(*last),
                s(busy),
                s(tok),
                s(cpu),
                busy.as_nanos() as f64 / tokens.max(1) as f64
            ));
        }
        out
    }
}

/// The calling thread's (on-CPU ns, run-queue wait ns) from `/proc/thread-self/schedstat` (Linux; `None` elsewhere).
fn thread_schedstat() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    Some((fields.next()??, fields.next()??))
}

/// The process's CPU time (s) and page faults from `/proc/self/stat` (zeros where it cannot be read).
#[derive(Clone, Copy, Debug, Default)]
struct ProcStat {
    user: f64,
    sys: f64,
    minflt: u64,
    majflt: u64,
}

impl ProcStat {
    fn read() -> ProcStat {
        // Fields after the command name (which may hold spaces, hence after the last ')'): state is field 3 of
        // proc(5), so minflt (10), majflt (12), utime (14) and stime (15) are at 7, 9, 11 and 12 here.
        let Ok(text) = std::fs::read_to_string("/proc/self/stat") else { return ProcStat::default() };
        let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
        let get = |i: usize| f.get(i).copied().unwrap_or(0);
        // USER_HZ is 100 on every Linux ABI in use.
        let ticks = |i: usize| get(i) as f64 / 100.0;
        ProcStat { user: ticks(11), sys: ticks(12), minflt: get(7), majflt: get(9) }
    }

    fn since(&self, before: &ProcStat) -> ProcStat {
        ProcStat {
            user: self.user - before.user,
            sys: self.sys - before.sys,
            minflt: self.minflt.saturating_sub(before.minflt),
            majflt: self.majflt.saturating_sub(before.majflt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_counts_this_process_and_schedstat_this_thread() {
        let before = ProcStat::read();
        let sched_before = thread_schedstat();
        // Burn some CPU and touch fresh pages so every counter moves.
        let mut v = vec![0u8; 64 << 20];
        let mut x = 0u64;
        for (i, b) in v.iter_mut().enumerate() {
            *b = i as u8;
            x = x.wrapping_mul(31).wrapping_add(*b as u64);
        }
        std::hint::black_box(x);
        let after = ProcStat::read().since(&before);
        if cfg!(target_os = "linux") {
            assert!(after.minflt > 0, "{after:?}");
            let (c0, _) = sched_before.unwrap();
            let (c1, _) = thread_schedstat().unwrap();
            assert!(c1 > c0);
        }
    }
}
