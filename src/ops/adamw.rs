//! One AdamW update of a parameter (moments, bias correction, decoupled weight decay) as a
//! single parallel pass: burn's AdamW runs it as about fifteen element-wise tensor ops, one after
//! the other on the calling thread, which shows in models with many parameters (ViT-B). The
//! arithmetic is burn's, operation for operation, so both give the same values (tested).

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use std::mem::MaybeUninit;

use super::{contiguous_f32, init_f32};

/// Values per rayon task.
const CHUNK: usize = 1 << 14;

/// The constants of one AdamW step.
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta_1: f32,
    /// Second-moment decay.
    pub beta_2: f32,
    /// Added to the root of the second moment.
    pub epsilon: f32,
    /// Decoupled weight decay (multiplied by the learning rate).
    pub weight_decay: f32,
    /// The step's number, from 1 (for the bias correction).
    pub time: usize,
}

multiversion! {
    /// One chunk: `(p, g, m, v)` in, `(p, m, v)` out. Zipped slices rather than indices, so that
    /// the loop (two divisions and a root per value) vectorises.
    fn step_chunk(inp: [&[f32]; 4], s: AdamWStep, out: [&mut [MaybeUninit<f32>]; 3]) {
        let (f1, f2) = (1.0 - s.beta_1, 1.0 - s.beta_2);
        let t = s.time as i32;
        let (c1, c2) = (1f32 - s.beta_1.powi(t), 1f32 - s.beta_2.powi(t));
        let (lr, keep) = (s.lr as f32, (1.0 - s.lr * s.weight_decay as f64) as f32);
        let [p, g, m, v] = inp;
        let [po, mo, vo] = out;
        for (((po, mo), vo), (((&p, &g), &m), &v)) in po.iter_mut().zip(mo).zip(vo).zip(p.iter().zip(g).zip(m).zip(v)) {
            let mi = m * s.beta_1 + g * f1;
            let vi = v * s.beta_2 + g * g * f2;
            let delta = (mi / c1) / ((vi / c2).sqrt() + s.epsilon);
            // keep is exactly 1 without decay, where burn skips the product
            po.write(p * keep - delta * lr);
            mo.write(mi);
            vo.write(vi);
        }
    }
}

/// `(parameter, first moment, second moment)` after one step.
fn step_kernel(p: &[f32], g: &[f32], m: &[f32], v: &[f32], s: AdamWStep) -> [Vec<f32>; 3] {
    let n = p.len();
    let (mut m1, mut v1) = (Vec::new(), Vec::new());
    // SAFETY (all three): the chunks cover the buffers and step_chunk writes every value of each.
    let p1 = unsafe {
        init_f32(n, |po| {
            m1 = init_f32(n, |mo| {
                v1 = init_f32(n, |vo| {
                    po.par_chunks_mut(CHUNK)
                        .zip(mo.par_chunks_mut(CHUNK))
                        .zip(vo.par_chunks_mut(CHUNK))
                        .enumerate()
                        .for_each(|(c, ((po, mo), vo))| {
                            let r = c * CHUNK..c * CHUNK + po.len();
                            step_chunk([&p[r.clone()], &g[r.clone()], &m[r.clone()], &v[r]], s, [po, mo, vo]);
                        })
                })
            })
        })
    };
    [p1, m1, v1]
}

/// The backend operation, on flex.
#[backend_extension(Flex)]
pub trait AdamWBackend: burn::backend::Backend {
    /// `(parameter, first moment, second moment)` after one step from the gradient `g`.
    fn fused_adamw_step(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        step: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

impl AdamWBackend for Flex {
    fn fused_adamw_step(
        p: FlexTensor,
        g: FlexTensor,
        m: FlexTensor,
        v: FlexTensor,
        step: AdamWStep,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = p.shape();
        let [p1, m1, v1] =
            step_kernel(&contiguous_f32(&p), &contiguous_f32(&g), &contiguous_f32(&m), &contiguous_f32(&v), step);
        let t = |x: Vec<f32>| FlexTensor::from_data(TensorData::new(x, shape.clone()));
        (t(p1), t(m1), t(v1))
    }
}

/// Whether the fused step applies: f32 tensors on flex without autodiff (the optimizer's case),
/// outside [`super::with_generic_ops`].
pub fn supported<const D: usize>(t: &Tensor<D>) -> bool {
    !super::GENERIC.get()
        && t.dtype() == burn::tensor::DType::F32
        && matches!(t.device().as_dispatch(), burn::backend::DispatchDevice::Flex(_))
}

/// One AdamW step of parameter `p` with gradient `g` and moments `m`, `v` (all plain flex f32,
/// see [`supported`]): the new parameter and moments.
pub fn adamw_step<const D: usize>(
    p: Tensor<D>,
    g: Tensor<D>,
    m: Tensor<D>,
    v: Tensor<D>,
    step: AdamWStep,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    let (p, m, v) =
        Dispatch::fused_adamw_step(p.into_dispatch(), g.into_dispatch(), m.into_dispatch(), v.into_dispatch(), step);
    (Tensor::from_dispatch(p), Tensor::from_dispatch(m), Tensor::from_dispatch(v))
}
