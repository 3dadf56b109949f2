//! GFLOP/s of the gemm crate on 2048^3 and on the shapes of the MAE fmnist-tiny step (batch 256,
//! 13 encoder tokens per image, 50 decoder tokens), row-major f32, on `--threads` threads (2): the
//! median of 7 timings of enough products for about 20 GFLOP each. One JSON line per shape.
//!
//!     cargo run --release [--features x86-v4] -- [--threads 2] >> ../../docs/bench/gemm_shapes.jsonl
use std::process::Command;
use std::time::Instant;

/// The products to time, from `shapes.txt` (shared with tools/peer/matmul.py): (name, m, n, k, lhs
/// stored transposed as in a weight gradient `Xᵀ dY`).
fn shapes() -> Vec<(String, usize, usize, usize, bool)> {
    include_str!("../shapes.txt")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split('|').map(str::trim).collect();
            let size = |i: usize| f[i].parse().unwrap_or_else(|_| panic!("shapes.txt: {l}"));
            (f[0].to_string(), size(1), size(2), size(3), f[4] == "true")
        })
        .collect()
}

fn gflops(m: usize, n: usize, k: usize, transposed_lhs: bool, threads: usize) -> f64 {
    let (a, b, mut c) = (vec![0.5f32; m * k], vec![0.25f32; k * n], vec![0f32; m * n]);
    // lhs m x k: row-major (column stride 1, row stride k) or the transpose of a k x m row-major matrix
    let (lcs, lrs) = if transposed_lhs { (m as isize, 1) } else { (1, k as isize) };
    let mut product = || unsafe {
        // SAFETY: the strides describe buffers of exactly these sizes.
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            lcs,
            lrs,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(threads),
        )
    };
    let flops = 2.0 * (m * n * k) as f64;
    let reps = ((2e10 / flops) as usize).clamp(1, 200);
    product();
    product();
    let mut rates: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            (0..reps).for_each(|_| product());
            flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[3]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads = match args.iter().position(|a| a == "--threads") {
        Some(i) => args.get(i + 1).and_then(|t| t.parse().ok()).expect("--threads takes a number"),
        None => 2,
    };
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().expect("one thread pool");
    let git = |args: &[&str]| {
        Command::new("git").args(args).output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("?", |l| l.trim_start_matches([' ', '\t', ':']));
    let avx512 = cpuinfo.contains(" avx512f ");
    let kernels = if cfg!(feature = "x86-v4") { "AVX-512 and AVX2 (x86-v4)" } else { "AVX2 only" };
    for (name, m, n, k, t) in shapes() {
        println!(
            "{{\"kind\": \"gemm_shapes\", \"side\": \"gemm 0.19, {kernels}\", \"shape\": \"{name}\", \"gflops\": {:.1}, \"threads\": {threads}, \"commit\": \"{commit}\", \"cpu\": \"{cpu}\", \"avx512\": {avx512}, \"command\": \"{}\"}}",
            gflops(m, n, k, t, threads),
            args.join(" ")
        );
    }
}
