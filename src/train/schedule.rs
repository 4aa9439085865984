//! The learning-rate schedule of build-nanogpt's `get_lr`: linear warmup over `warmup_steps`, then a cosine from
//! `max_lr` down to `min_lr` at `max_steps`, flat afterwards. A pure function of the step, so a resumed run gets the
//! same learning rate as an uninterrupted one without storing anything.

/// Warmup + cosine decay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub max_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub max_steps: usize,
}

impl LrSchedule {
    pub fn from_config(cfg: &super::TrainConfig) -> Self {
        LrSchedule {
            max_lr: cfg.optim.max_lr,
            min_lr: cfg.min_lr(),
            warmup_steps: cfg.optim.warmup_steps,
            max_steps: cfg.optim.max_steps,
        }
    }

    /// Learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        // Warmup counts from 1 so that step 0 already moves the weights.
        if step < self.warmup_steps {
            return self.max_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        if step > self.max_steps || self.max_steps == self.warmup_steps {
            return self.min_lr;
        }
        let decay_ratio = (step - self.warmup_steps) as f64 / (self.max_steps - self.warmup_steps) as f64;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * decay_ratio).cos());
        self.min_lr + coeff * (self.max_lr - self.min_lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt2() -> LrSchedule {
        LrSchedule { max_lr: 6e-4, min_lr: 6e-5, warmup_steps: 715, max_steps: 19073 }
    }

    #[test]
    fn warmup_is_linear_from_one_step() {
        let s = gpt2();
        assert_eq!(s.lr(0), 6e-4 / 715.0);
        assert!((s.lr(356) - 6e-4 * 357.0 / 715.0).abs() < 1e-15);
        assert_eq!(s.lr(714), 6e-4);
    }

    #[test]
    fn cosine_reaches_ten_percent_at_max_steps() {
        let s = gpt2();
        assert_eq!(s.lr(715), 6e-4);
        let mid = 715 + (19073 - 715) / 2;
        assert!((s.lr(mid) - 3.3e-4).abs() < 1e-8, "{}", s.lr(mid));
        assert!((s.lr(19073) - 6e-5).abs() < 1e-15);
        assert_eq!(s.lr(30_000), 6e-5);
        for step in 715..19073 {
            assert!(s.lr(step + 1) <= s.lr(step));
        }
    }
}
