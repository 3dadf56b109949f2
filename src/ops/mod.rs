//! Fused CPU operations with their own backward, added to burn's flex backend through its backend
//! extension mechanism. Each public function falls back to burn's generic ops on other backends
//! (the AdamW step leaves that to its optimizer, `optim::FusedAdamW`), and tests compare
//! the fused path against the generic one (values and gradients).

/// Defines a kernel function compiled twice, for the baseline target and for AVX2 + FMA, and picks
/// the second at run time when the CPU has it: burn-flex's own SIMD dispatches the same way, and
/// the loops of these kernels (`#[inline(always)]` helpers included) then use 8-wide vectors.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])* $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}

/// e^x for f32 without a library call, so that loops over it vectorise: x = n ln 2 + r with
/// |r| <= ln 2 / 2, a degree-6 polynomial for e^r, and 2^n built in the exponent bits (relative
/// error below 3e-7; inputs are clamped to [-87, 88], where f32 neither underflows nor overflows).
///
/// Meant for the [`multiversion`] kernels, where `mul_add` is one FMA instruction (as on
/// aarch64); in the baseline x86-64 build, for CPUs without FMA (before 2013), it is a call to
/// the C library's `fmaf`: correct, slower.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer, kept in the low bits
    let x = x.clamp(-87.0, 88.0);
    let shifted = x.mul_add(std::f32::consts::LOG2_E, ROUND);
    let n = shifted - ROUND;
    let r = n.mul_add(-1.428_606_8e-6, n.mul_add(-0.693_145_75, x));
    let mut p = 1.0_f32 / 720.0;
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p.mul_add(r, c);
    }
    // n as an integer from the bits rather than `n as i32`: Rust's saturating float-to-int cast
    // kept these loops scalar (one conversion per value), the integer arithmetic vectorises
    let n = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    f32::from_bits(n.wrapping_add(127) << 23) * p
}

pub mod adamw;
pub mod attention;
pub mod gather;
pub mod gelu;
pub mod layer_norm;
pub mod linear;

use std::cell::Cell;
use std::mem::MaybeUninit;

use burn::tensor::{DType, Device, Tensor};

thread_local! {
    /// Set while [`with_generic_ops`] runs on this thread.
    static GENERIC: Cell<bool> = const { Cell::new(false) };
    /// Fused dispatches taken on this thread (see [`fused_dispatches`]).
    static FUSED: Cell<u64> = const { Cell::new(0) };
}

/// Runs `f` with every fused op replaced by burn's generic ops on this thread: the code path a GPU
/// backend takes, so the CPU test suite can run whole models through it and compare them with the
/// fused path and the PyTorch fixtures. The choice is made when an op runs forward; its backward
/// follows it.
pub fn with_generic_ops<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GENERIC.set(self.0);
        }
    }
    let _restore = Restore(GENERIC.replace(true));
    f()
}

/// How many times this thread has taken a fused kernel instead of burn's generic ops (the
/// tests' proof of which path ran).
pub fn fused_dispatches() -> u64 {
    FUSED.get()
}

/// Whether the fused kernels run for `t`: f32 on burn's flex CPU backend (with or without
/// autodiff), outside [`with_generic_ops`]. Counts the dispatches it allows.
pub(crate) fn on_flex_f32<const D: usize>(t: &Tensor<D>) -> bool {
    let fused = !GENERIC.get() && t.dtype() == DType::F32 && is_flex(&t.device());
    if fused {
        FUSED.set(FUSED.get() + 1);
    }
    fused
}

fn is_flex(device: &Device) -> bool {
    matches!(device.clone().inner().as_dispatch(), burn::backend::DispatchDevice::Flex(_))
}

/// A vector of `len` values written by `fill`, without the `vec![0.0; len]` first: that is a
/// serial memset of the whole buffer on the calling thread, for every op output. Kernels that
/// accumulate zero their own chunks with [`zeroed`]
/// inside their parallel tasks.
///
/// # Safety
/// `fill` must write every value of the buffer it is given.
pub(crate) unsafe fn init_f32(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: `fill` wrote every value (the caller's contract).
    unsafe { v.set_len(len) };
    v
}

/// Zeroes `chunk` and returns it as initialised values, for kernels that accumulate.
pub(crate) fn zeroed(chunk: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    chunk.fill(MaybeUninit::new(0.0));
    // SAFETY: every value was just written.
    unsafe { assume_init(chunk) }
}

/// `chunk` as the values a kernel has written into it.
///
/// # Safety
/// Every value of `chunk` has been written.
pub(crate) unsafe fn assume_init(chunk: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: the caller's contract; MaybeUninit<f32> has f32's layout.
    unsafe { &mut *(chunk as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// `f` of the values at each index of equally long slices, combined by `op` from `init` in 8
/// independent lanes, so that the loop vectorises (a serial f32 fold may not be reordered by the
/// compiler). The values are taken in whole 8-wide chunks: a closure indexing the slices itself
/// kept its bounds checks, and with them every reduction of the softmax and LayerNorm, scalar.
#[inline(always)]
pub(crate) fn fold8<const K: usize>(
    s: [&[f32]; K],
    init: f32,
    op: impl Fn(f32, f32) -> f32,
    f: impl Fn([f32; K]) -> f32,
) -> f32 {
    let n = s[0].len();
    debug_assert!(s.iter().all(|x| x.len() == n));
    let main = n / 8 * 8;
    let mut acc = [init; 8];
    for c in (0..main).step_by(8) {
        let chunk: [&[f32; 8]; K] = s.map(|x| x[c..c + 8].try_into().unwrap());
        for (l, a) in acc.iter_mut().enumerate() {
            *a = op(*a, f(chunk.map(|x| x[l])));
        }
    }
    let lanes = acc.into_iter().fold(init, &op);
    (main..n).fold(lanes, |a, j| op(a, f(s.map(|x| x[j]))))
}

/// `Σ_j f(values at j)` over equally long slices: [`fold8`] with addition.
#[inline(always)]
pub(crate) fn sum8<const K: usize>(s: [&[f32]; K], f: impl Fn([f32; K]) -> f32) -> f32 {
    fold8(s, 0.0, |a, b| a + b, f)
}

/// Asks the CPU to bring `data` into its L2 cache ahead of use (x86_64; elsewhere nothing): the
/// attention kernels call it on the next image's rows, which they read per head, in short slices
/// too far apart for the hardware prefetcher to follow.
#[inline(always)]
pub(crate) fn prefetch(data: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in data.chunks(16) {
        // SAFETY: SSE is part of x86_64, and a prefetch is a hint that never faults.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// The element-wise sum of equally long `parts`, added in their order, so that results do not
/// depend on how rayon scheduled the tasks that produced them.
pub(crate) fn sum_in_order(parts: impl IntoIterator<Item = Vec<f32>>) -> Vec<f32> {
    let mut parts = parts.into_iter();
    let mut sum = parts.next().expect("at least one part");
    for p in parts {
        sum.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    sum
}

/// A flex tensor's f32 values in row-major order (borrowed when already contiguous).
pub(crate) fn contiguous_f32(t: &burn::backend::flex::FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(t.to_contiguous().as_slice::<f32>().expect("f32 tensor").to_vec()),
    }
}

/// Largest absolute difference of two tensors, relative to the largest entry of `theirs` (or
/// absolute when that is below 1): how the fused ops' tests compare values and gradients.
#[cfg(test)]
pub(crate) fn relative_diff<const D: usize>(ours: Tensor<D>, theirs: Tensor<D>) -> f32 {
    let scale = theirs.clone().abs().max().into_scalar::<f32>().max(1.0);
    (ours - theirs).abs().max().into_scalar::<f32>() / scale
}

#[cfg(test)]
mod tests {
    #[test]
    fn fast_exp_matches_std() {
        let mut worst = 0f32;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            worst = worst.max((super::exp(x) - x.exp()).abs() / x.exp());
        }
        assert!(worst < 3e-7, "max relative error {worst}");
    }
}
