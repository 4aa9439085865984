//! The two scalar traits the CPU kernels are generic over: `Real`, the accumulator (f32, or f64 for f64 inputs),
//! and `Elem<A>`, a stored element type that widens to and narrows from its accumulator (f32/bf16/f16 -> f32,
//! f64 -> f64). Narrowing rounds to nearest even, as the CUDA kernels' `__float2bfloat16` does.
//!
//! `float_pair!` (input and output dtypes) and `float_elem!` (one dtype) are the kernels' dtype dispatch (llm.c's
//! precision discipline: the dtypes the project runs, f32 and bf16 in any pair, and f64 for gradient checks on the
//! CPU; no f16, which no config selects). `acc_dtype` is the accumulator as a candle dtype (the ops' loss and
//! logsumexp outputs).

use candle_core::DType;
use half::{bf16, f16};

/// The accumulator's dtype for inputs in `dt` (what the kernels return their losses and logsumexps in): f64 for f64,
/// f32 otherwise.
pub fn acc_dtype(dt: DType) -> DType {
    if dt == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

pub trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn max(self, other: Self) -> Self;
    fn from_f64(x: f64) -> Self;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    fn tanh(self) -> Self {
        f32::tanh(self)
    }
    fn max(self, other: Self) -> Self {
        f32::max(self, other)
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    fn max(self, other: Self) -> Self {
        f64::max(self, other)
    }
    fn from_f64(x: f64) -> Self {
        x
    }
}

pub trait Elem<A: Real>: Copy + Send + Sync + 'static {
    fn to_acc(self) -> A;
    fn from_acc(a: A) -> Self;
}

impl Elem<f32> for f32 {
    fn to_acc(self) -> f32 {
        self
    }
    fn from_acc(a: f32) -> Self {
        a
    }
}

impl Elem<f32> for bf16 {
    fn to_acc(self) -> f32 {
        self.to_f32()
    }
    fn from_acc(a: f32) -> Self {
        bf16::from_f32(a)
    }
}

impl Elem<f32> for f16 {
    fn to_acc(self) -> f32 {
        self.to_f32()
    }
    fn from_acc(a: f32) -> Self {
        f16::from_f32(a)
    }
}

impl Elem<f64> for f64 {
    fn to_acc(self) -> f64 {
        self
    }
    fn from_acc(a: f64) -> Self {
        a
    }
}

/// Runs `$body` with `$T` and `$O` the element types of the dtypes `$x` and `$o`, and `$A` their accumulator: f32 and
/// bf16 in any pair accumulate in f32, f64 -> f64 in f64. Any other pair is an error naming `$op`.
macro_rules! float_pair {
    ($op:expr, ($x:expr, $o:expr), |$T:ident, $O:ident, $A:ident| $body:expr) => {{
        use candle_core::DType;
        use half::bf16;
        match ($x, $o) {
            (DType::F32, DType::F32) => float_pair!(@with ($T, $O, $A) = (f32, f32, f32) $body),
            (DType::F32, DType::BF16) => float_pair!(@with ($T, $O, $A) = (f32, bf16, f32) $body),
            (DType::BF16, DType::F32) => float_pair!(@with ($T, $O, $A) = (bf16, f32, f32) $body),
            (DType::BF16, DType::BF16) => float_pair!(@with ($T, $O, $A) = (bf16, bf16, f32) $body),
            (DType::F64, DType::F64) => float_pair!(@with ($T, $O, $A) = (f64, f64, f64) $body),
            (x, o) => candle_core::bail!("{}: {x:?} -> {o:?} is not supported (f32/bf16 pairs, or f64 -> f64)", $op),
        }
    }};
    (@with ($T:ident, $O:ident, $A:ident) = ($t:ty, $o:ty, $a:ty) $body:expr) => {{
        // A body need not name all three.
        #[allow(dead_code)]
        type $T = $t;
        #[allow(dead_code)]
        type $O = $o;
        #[allow(dead_code)]
        type $A = $a;
        $body
    }};
}
pub(super) use float_pair;

/// `float_pair!` for ops with one dtype in and out: runs `$body` with `$T` the element type of `$x` (f32, bf16 or
/// f64) and `$A` its accumulator.
macro_rules! float_elem {
    ($op:expr, $x:expr, |$T:ident, $A:ident| $body:expr) => {{
        use candle_core::DType;
        use half::bf16;
        match $x {
            DType::F32 => float_elem!(@with ($T, $A) = (f32, f32) $body),
            DType::BF16 => float_elem!(@with ($T, $A) = (bf16, f32) $body),
            DType::F64 => float_elem!(@with ($T, $A) = (f64, f64) $body),
            x => candle_core::bail!("{}: {x:?} is not supported (f32, bf16 or f64)", $op),
        }
    }};
    (@with ($T:ident, $A:ident) = ($t:ty, $a:ty) $body:expr) => {{
        type $T = $t;
        #[allow(dead_code)] // a body need not name the accumulator
        type $A = $a;
        $body
    }};
}
pub(super) use float_elem;
