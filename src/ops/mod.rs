//! Fused CPU operations with their own backward, added to burn's flex backend through its backend
//! extension mechanism. Each public function falls back to burn's generic ops on other backends,
//! and tests compare the fused path against the generic one (values and gradients).

pub mod gelu;

use burn::tensor::{DType, Device, Tensor};

/// Whether `t` lives on burn's flex CPU backend (with or without autodiff) as f32, the case the
/// fused kernels handle.
pub(crate) fn on_flex_f32<const D: usize>(t: &Tensor<D>) -> bool {
    t.dtype() == DType::F32 && is_flex(&t.device())
}

fn is_flex(device: &Device) -> bool {
    matches!(device.clone().inner().as_dispatch(), burn::backend::DispatchDevice::Flex(_))
}
