//! Process-level settings that make burn fast on a CPU, device selection, and the machine and
//! build a run happens on.

use anyhow::{Result, bail};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

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

/// Parses a run's devices: one [`device`], or several CUDA devices `cuda:0,cuda:1,...` for
/// data-parallel training (burn's collectives run over NCCL, so only CUDA devices can share a run).
pub fn devices(list: &str) -> Result<Vec<Device>> {
    let names = device_names(list);
    if names.len() > 1 {
        if let Some(dup) = names.iter().enumerate().find_map(|(i, n)| names[..i].contains(n).then_some(n)) {
            bail!("device '{dup}' is named twice in '{list}': name each device once");
        }
        if let Some(other) = names.iter().find(|n| !n.starts_with("cuda")) {
            bail!(
                "device '{other}' in '{list}': data-parallel training needs CUDA devices (burn's collectives run over \
                 NCCL); on the CPU use --device cpu, which already uses every core"
            );
        }
    }
    names.into_iter().map(device).collect()
}

/// The names in a device list (`cpu`, `cuda:0,cuda:1`): one per rank of the run, in rank order.
pub fn device_names(list: &str) -> Vec<&str> {
    list.split(',').map(str::trim).collect()
}

/// The machine and build a run was measured (or trained) on, carried by every JSONL record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The commit the binary was built from (`-dirty` when tracked files had uncommitted changes),
    /// `$MIM_COMMIT` when set, or "unknown" (built outside a git checkout).
    pub commit: String,
    /// The command line.
    pub command: String,
    /// Seed of models, inputs and masks on both sides.
    pub seed: u64,
    /// CPU model (`/proc/cpuinfo`).
    pub cpu: String,
    /// Whether the CPU has AVX-512F.
    pub avx512: bool,
    /// Whether the binary has the AVX-512 GEMM kernels (the default `avx512` feature; records from
    /// before this field always had them).
    #[serde(default = "built_with_avx512")]
    pub avx512_build: bool,
    /// Threads of each side.
    pub threads: usize,
    /// mim's version.
    pub mim_version: String,
}

impl RunInfo {
    /// This process's: `command` and `seed` as given.
    pub fn here(command: String, seed: u64) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        };
        Self {
            commit: commit(),
            command,
            seed,
            cpu: field("model name").unwrap_or_else(|| "unknown".into()),
            avx512: field("flags").is_some_and(|f| f.split_whitespace().any(|x| x == "avx512f")),
            avx512_build: cfg!(feature = "avx512"),
            threads: threads(),
            mim_version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// Threads this process may run on (its CPU affinity: 1 under `taskset -c 0`).
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// CPU seconds this process has used, all its threads together (`None` where the platform does not
/// say). A job that shares its cores with another takes longer on the clock but not in CPU time, so
/// the core-hours of a result come from it.
pub fn cpu_seconds() -> Option<f64> {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec.
        if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0 {
            return Some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9);
        }
    }
    None
}

/// Wall-clock and CPU time since [`Stopwatch::start`].
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch {
    wall: std::time::Instant,
    cpu: Option<f64>,
}

impl Stopwatch {
    /// Starts both clocks now.
    pub fn start() -> Self {
        Self { wall: std::time::Instant::now(), cpu: cpu_seconds() }
    }

    /// Wall-clock seconds since the start.
    pub fn wall_s(&self) -> f64 {
        self.wall.elapsed().as_secs_f64()
    }

    /// CPU seconds of this process (all threads) since the start.
    pub fn cpu_s(&self) -> Option<f64> {
        Some(cpu_seconds()? - self.cpu?)
    }
}

/// The serde default of [`RunInfo::avx512_build`]: every build had the kernels before it was recorded.
fn built_with_avx512() -> bool {
    true
}

/// What the matrix products of a run ran on, for provenance lines: "AVX-512", "AVX2" (every x86-64
/// CPU mim has met without AVX-512 had AVX2) or, on an AVX-512 CPU with a build without its
/// kernels, "AVX-512 CPU, AVX2 build".
pub fn simd_label(avx512_cpu: bool, avx512_build: bool) -> &'static str {
    match (avx512_cpu, avx512_build) {
        (true, true) => "AVX-512",
        (true, false) => "AVX-512 CPU, AVX2 build",
        (false, _) => "AVX2",
    }
}

/// The commit this binary was built from (see [`RunInfo::commit`]; build.rs records it).
fn commit() -> String {
    std::env::var("MIM_COMMIT").unwrap_or_else(|_| env!("MIM_BUILD_COMMIT").to_string())
}
