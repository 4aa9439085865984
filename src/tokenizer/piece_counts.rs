//! How each thread's pre-tokenized pieces were answered, counted by the encoders that keep a piece cache (GPT-2's
//! `gpt2_split`, the byte-level BPE of `byte_bpe`); `prep`'s profile reads the counts around each segment.

use std::cell::Cell;

/// How a thread's pieces were answered, since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PieceCounts {
    /// One token, from the shared vocabulary table.
    pub vocab: u64,
    /// Several tokens, from this thread's cache.
    pub cached: u64,
    /// Several tokens, merged now (and cached).
    pub merged: u64,
}

thread_local! {
    static COUNTS: Cell<PieceCounts> = const { Cell::new(PieceCounts { vocab: 0, cached: 0, merged: 0 }) };
}

/// This thread's piece counts so far.
pub fn current() -> PieceCounts {
    COUNTS.get()
}

/// Add one text's counts to this thread's (once per text, not per piece: the counts cost nothing per piece).
pub(super) fn add(more: PieceCounts) {
    let now = COUNTS.get();
    COUNTS.set(PieceCounts {
        vocab: now.vocab + more.vocab,
        cached: now.cached + more.cached,
        merged: now.merged + more.merged,
    });
}
