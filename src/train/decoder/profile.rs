//! Per-kernel timing of the decoder engine with CUDA events, for docs/PERF.md's breakdown of a micro-step: with
//! `TOKENMILL_ENGINE_PROFILE=1` the engine records an event after every kernel (the region between two marks is the
//! kernel the second mark names), sums the regions per label at the end of every micro-step and optimizer step,
//! and prints the table when it is dropped. Off (the default), a mark is one branch.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{sys, CudaEvent, CudaStream};
use candle_core::{Error, Result};

pub struct Profiler {
    stream: Option<Arc<CudaStream>>,
    /// Reused events; `labels[i]` names the region that ends at `events[i]` (i >= 1).
    events: Vec<CudaEvent>,
    labels: Vec<&'static str>,
    used: usize,
    /// (label, total ms, regions), in first-seen order.
    totals: Vec<(&'static str, f64, usize)>,
    /// Micro-steps profiled.
    micro_steps: usize,
}

impl Profiler {
    pub fn new(stream: &Arc<CudaStream>) -> Profiler {
        let on = std::env::var("TOKENMILL_ENGINE_PROFILE").is_ok_and(|v| v == "1");
        Profiler {
            stream: on.then(|| stream.clone()),
            events: Vec::new(),
            labels: Vec::new(),
            used: 0,
            totals: Vec::new(),
            micro_steps: 0,
        }
    }

    fn record(&mut self, label: &'static str) -> Result<()> {
        let Some(stream) = &self.stream else { return Ok(()) };
        if self.used == self.events.len() {
            let e = stream.context().new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(Error::wrap)?;
            self.events.push(e);
            self.labels.push(label);
        }
        self.events[self.used].record(stream).map_err(Error::wrap)?;
        self.labels[self.used] = label;
        self.used += 1;
        Ok(())
    }

    /// The end of the region named `label` (and the start of the next).
    pub fn mark(&mut self, label: &'static str) -> Result<()> {
        if self.stream.is_some() && self.used == 0 {
            self.record("")?;
        }
        self.record(label)
    }

    /// Wait for the recorded regions and add them to the totals; `micro_step` counts one micro-step.
    pub fn collect(&mut self, micro_step: bool) -> Result<()> {
        if self.stream.is_none() {
            return Ok(());
        }
        for i in 1..self.used {
            let ms = self.events[i - 1].elapsed_ms(&self.events[i]).map_err(Error::wrap)? as f64;
            let label = self.labels[i];
            match self.totals.iter_mut().find(|(l, _, _)| *l == label) {
                Some(t) => {
                    t.1 += ms;
                    t.2 += 1;
                }
                None => self.totals.push((label, ms, 1)),
            }
        }
        self.used = 0;
        if micro_step {
            self.micro_steps += 1;
        }
        Ok(())
    }

    /// The table: per label, ms per micro-step, regions per micro-step, share of the total.
    pub fn report(&self) -> String {
        let per = self.micro_steps.max(1) as f64;
        let total: f64 = self.totals.iter().map(|t| t.1).sum();
        let mut out = format!("cuda engine profile over {} micro-steps (CUDA events)\n", self.micro_steps);
        out.push_str(&format!("{:<28} {:>12} {:>8} {:>7}\n", "kernel", "ms/micro", "calls", "share"));
        for (label, ms, n) in &self.totals {
            out.push_str(&format!(
                "{label:<28} {:>12.3} {:>8.1} {:>6.1}%\n",
                ms / per,
                *n as f64 / per,
                100.0 * ms / total.max(1e-12)
            ));
        }
        out.push_str(&format!("{:<28} {:>12.3}\n", "total", total / per));
        out
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        if self.stream.is_some() && !self.totals.is_empty() {
            eprint!("{}", self.report());
        }
    }
}
