//! Process-level settings that make burn fast on a CPU, and device selection.

use anyhow::{Result, bail};
use burn::tensor::Device;

/// Keeps large buffers in the process instead of returning them to the OS after every step.
///
/// glibc's defaults `munmap` every large tensor buffer on free and fault it back in on the next
/// allocation; in a training step that was 28-34% of all CPU time (kernel page faults). Raising
/// the mmap and trim thresholds removes it. Called once at start-up by the CLI; harmless to call again.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        // M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1 (malloc.h)
        libc::mallopt(-3, 32 << 20);
        libc::mallopt(-1, i32::MAX);
    }
}

/// Parses a device name: `cpu` (burn's flex backend) or, built with `--features cuda`, `cuda:N`.
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        s if s.starts_with("cuda") => {
            let idx = s.strip_prefix("cuda").unwrap().trim_start_matches(':');
            let idx: usize = if idx.is_empty() {
                0
            } else {
                idx.parse().map_err(|_| anyhow::anyhow!("bad device '{s}': use cuda:0"))?
            };
            // burn opens a CUDA device on its first use and panics there when it does not exist
            // (no NVIDIA driver, or no GPU with this index). Counting first turns that into an
            // error here; the count checks that the driver library loads before calling it.
            let found = Device::enumerate(burn::tensor::DeviceType::Cuda).len();
            if idx >= found {
                bail!("device '{s}': this machine has {found} CUDA device(s) (NVIDIA driver and GPU needed)");
            }
            Ok(Device::cuda(idx))
        }
        s if s.starts_with("cuda") => bail!("device '{s}' needs a CUDA build: cargo build --release --features cuda"),
        s => bail!("unknown device '{s}': use cpu{}", if cfg!(feature = "cuda") { " or cuda:N" } else { "" }),
    }
}
