//! How long `mim serve` takes to answer each view of the page, for each shipped model: the time
//! from sending a request on the loopback to the last byte of the answer (HTTP, model, PNG and
//! JSON), as the page experiences it. Appends one JSON line per model and view to OUT.jsonl.
//!
//! ```bash
//! cargo run --release --example viewer_latency -- docs/bench/viewer_latency.jsonl 30
//! ```
//! Run from the repository's root (the shipped models and data subset are read from there), with
//! nothing else running: each request is a new image and a new random mask at the method's ratio.

use anyhow::{Context, Result, bail, ensure};
use mim::bench::quartiles;
use mim::runtime::RunInfo;
use mim::serve::{ServeConfig, shipped};
use mim::train::methods::Method;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

/// Requests before the timed ones (first-call allocations, caches).
const WARMUP: usize = 3;

/// POSTs `body` (or GETs when `None`) and returns the JSON answer and the seconds it took.
fn call(addr: SocketAddr, path: &str, body: Option<&Value>) -> Result<(Value, f64)> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    let request = match body {
        Some(b) => {
            let b = b.to_string();
            format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                b.len()
            )
        }
        None => format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    };
    s.write_all(request.as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let seconds = t0.elapsed().as_secs_f64();
    let (head, json) = answer.split_once("\r\n\r\n").context("no HTTP header")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{path}: {}", head.lines().next().unwrap_or(""));
    Ok((serde_json::from_str(json).with_context(|| format!("{path}: not JSON"))?, seconds))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, requests] = args.as_slice() else { bail!("usage: viewer_latency OUT.jsonl REQUESTS") };
    let requests: usize = requests.parse().with_context(|| format!("'{requests}' is not a number of requests"))?;
    ensure!(requests >= 2, "REQUESTS must be at least 2");
    let info = RunInfo::here(std::env::args().collect::<Vec<_>>().join(" "), 0);
    let mut lines = String::new();
    println!("| model | view | min | q1 | median | q3 | max (ms) |\n|---|---|---|---|---|---|---|");
    for method in [Method::Mae, Method::Beit, Method::Simmim] {
        let model = shipped(method);
        let viewer = model.viewer();
        let upload_limit = (ServeConfig::UPLOAD_LIMIT_MB * 1e6) as usize;
        let cfg = ServeConfig { viewer, host: [127, 0, 0, 1].into(), port: 0, upload_limit };
        let server = mim::serve::start(cfg, &mut |_| {})?;
        let addr = server.addr();
        let (page, _) = call(addr, "/api/info", None)?;
        let views: Vec<&str> = [
            ("reconstruct", "no_reconstruction"),
            ("attention", "no_attention"),
            ("neighbours", "no_neighbours"),
            ("tokens", "no_tokens"),
        ]
        .into_iter()
        .filter(|(_, unavailable)| page[*unavailable].is_null())
        .map(|(view, _)| view)
        .collect();
        let (ratio, strategy) = (page["default_ratio"].clone(), page["default_strategy"].clone());
        let name = page["model"].as_str().unwrap_or("?");
        for view in views {
            let mut ms = Vec::new();
            for i in 0..WARMUP + requests {
                let mask = json!({ "strategy": strategy, "ratio": ratio, "seed": i });
                let (removed, _) = call(addr, "/api/mask", Some(&mask))?;
                let body = json!({ "image": { "dataset": i }, "removed": removed["removed"] });
                let (_, seconds) = call(addr, &format!("/api/{view}"), Some(&body))?;
                if i >= WARMUP {
                    ms.push(seconds * 1e3);
                }
            }
            let q = quartiles(&ms);
            let (min, max) = (ms.iter().copied().fold(f64::INFINITY, f64::min), ms.iter().copied().fold(0.0, f64::max));
            println!("| {name} | {view} | {min:.1} | {:.1} | {:.1} | {:.1} | {max:.1} |", q.q1, q.median, q.q3);
            let record = json!({
                "model": name, "weights": model.weights, "view": view, "requests": requests,
                "min_ms": min, "q1_ms": q.q1, "median_ms": q.median, "q3_ms": q.q3, "max_ms": max, "info": info,
            });
            lines.push_str(&format!("{record}\n"));
        }
    }
    std::fs::OpenOptions::new().create(true).append(true).open(out)?.write_all(lines.as_bytes())?;
    println!("appended to {out}");
    Ok(())
}
