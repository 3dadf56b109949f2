//! The PyTorch peer (`tools/peer/peer_torch.py serve`) as a persistent child process: one per
//! workload variant, so that its peak memory is that variant's own, answering `train N` /
//! `infer N` on stdin with one JSON line each, so that its steps interleave with mim's.

use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

use super::workload::WorkloadFlops;

/// Where to find the peer's setup and usage (named by every error about the peer).
pub const PEER_README: &str = "tools/peer/README.md";

/// An error naming the fix when the peer script is not where `script` says.
pub fn check_peer_script(script: &Path) -> Result<()> {
    if !script.is_file() {
        bail!("peer script '{}' not found: pass --peer-script (see {PEER_README})", script.display());
    }
    Ok(())
}

/// An error naming the fix unless `python` runs and imports what the peer needs (checked before
/// any timing, not minutes later at the first workload).
pub fn check_peer_python(python: &Path) -> Result<()> {
    let out = Command::new(python)
        .args(["-c", "import torch, torchvision, transformers, timm"])
        .output()
        .with_context(|| {
            format!(
                "cannot run the peer with '{}': pass the python of the peer's venv (tools/peer/setup.sh makes one; see {PEER_README})",
                python.display()
            )
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "'{}' cannot import the peer's packages ({}): run tools/peer/setup.sh and pass its python (see {PEER_README})",
            python.display(),
            err.lines().last().unwrap_or("no message")
        );
    }
    Ok(())
}

/// How the peer runs its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerKind {
    /// Eager PyTorch.
    Eager,
    /// `torch.compile` (inductor).
    Compiled,
}

impl PeerKind {
    /// Short name in the table and the JSONL rows.
    pub fn label(self) -> &'static str {
        match self {
            PeerKind::Eager => "torch",
            PeerKind::Compiled => "torch.compile",
        }
    }
}

/// How to start the peer for one workload variant.
#[derive(Debug, Clone)]
pub struct PeerSpec<'a> {
    /// Python of the peer's venv.
    pub python: &'a Path,
    /// `tools/peer/peer_torch.py`.
    pub script: &'a Path,
    /// Workload name.
    pub workload: &'a str,
    /// MAE workloads: the mask ratio (the others' ratios are the peer's recipe).
    pub mask_ratio: Option<f64>,
    /// Eager or compiled.
    pub kind: PeerKind,
    /// `torch.set_num_threads`.
    pub threads: usize,
    /// Untimed steps after building.
    pub warmup: usize,
    /// Seed.
    pub seed: u64,
    /// Images per batch.
    pub batch: usize,
    /// The pipeline workload's image folder.
    pub data: Option<&'a Path>,
}

/// What the peer says once its model is built and warmed up.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PeerReady {
    /// Images per step.
    pub images: usize,
    /// Its analytic FLOP counts (checked against mim's).
    pub flops: WorkloadFlops,
    /// Trainable parameters.
    #[serde(default)]
    pub params: usize,
    /// The whole line: versions, threads, BLAS, argv (recorded in the JSONL rows).
    #[serde(skip)]
    pub env: Value,
}

/// A running peer.
pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: std::fs::File,
    /// Eager or compiled.
    pub kind: PeerKind,
    /// Its ready line.
    pub ready: PeerReady,
}

impl Peer {
    /// Starts the peer and waits until it has built and warmed up its model.
    pub fn spawn(spec: &PeerSpec) -> Result<Self> {
        check_peer_script(spec.script)?;
        let mut cmd = Command::new(spec.python);
        cmd.arg(spec.script)
            .args(["serve", "--workload", spec.workload])
            .args(["--threads", &spec.threads.to_string(), "--warmup", &spec.warmup.to_string()])
            .args(["--seed", &spec.seed.to_string(), "--batch", &spec.batch.to_string()]);
        if let Some(r) = spec.mask_ratio {
            cmd.args(["--mask-ratio", &r.to_string()]);
        }
        if spec.kind == PeerKind::Compiled {
            cmd.arg("--compile");
        }
        if let Some(d) = spec.data {
            cmd.arg("--data").arg(d);
        }
        // A file, not a pipe: a chatty peer cannot block on a full stderr pipe nobody reads.
        let stderr = tempfile::tempfile().context("cannot create a temporary file for the peer's messages")?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr.try_clone()?)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot run the peer with '{}': pass the python of the peer's venv (tools/peer/setup.sh makes one; see {PEER_README})",
                    spec.python.display()
                )
            })?;
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        let (Some(stdin), Some(stdout)) = (stdin, stdout) else { bail!("the peer's stdin and stdout were not piped") };
        let mut peer =
            Peer { child, stdin, stdout: BufReader::new(stdout), stderr, kind: spec.kind, ready: PeerReady::default() };
        let line = peer.answer("ready")?;
        peer.ready = PeerReady { env: line.clone(), ..serde_json::from_value(line).context("the peer's ready line")? };
        Ok(peer)
    }

    /// The next JSON line of kind `kind`; other stdout lines (a library's print) are skipped. An
    /// error line, or the end of the output, is an error carrying the peer's last messages.
    fn answer(&mut self, kind: &str) -> Result<Value> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                let _ = self.child.wait();
                bail!(
                    "the PyTorch peer stopped: {}
(see {PEER_README})",
                    self.messages()
                );
            }
            let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
            match v.get("kind").and_then(Value::as_str) {
                Some(k) if k == kind => return Ok(v),
                Some("error") => bail!("the PyTorch peer says: {}", v["message"].as_str().unwrap_or("?")),
                _ => {}
            }
        }
    }

    /// The last lines the peer wrote to stderr.
    fn messages(&mut self) -> String {
        let mut text = String::new();
        let _ = self.stderr.rewind().and_then(|_| self.stderr.read_to_string(&mut text));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// `n` timed training steps (`what` = "train") or inference calls ("infer"), seconds each.
    pub fn times(&mut self, what: &str, n: usize) -> Result<Vec<f64>> {
        writeln!(self.stdin, "{what} {n}")
            .and_then(|_| self.stdin.flush())
            .with_context(|| format!("the PyTorch peer is gone: {}\n(see {PEER_README})", self.messages()))?;
        let v = self.answer(what)?;
        serde_json::from_value(v["times"].clone()).context("the peer's timings")
    }

    /// Ends the peer; its peak resident memory in MiB.
    pub fn quit(mut self) -> Result<f64> {
        writeln!(self.stdin, "quit")?;
        self.stdin.flush()?;
        let v = self.answer("bye")?;
        let _ = self.child.wait();
        Ok(v["peak_rss_mib"].as_f64().unwrap_or(0.0))
    }
}

impl Drop for Peer {
    /// A peer left behind by an error is killed, not left waiting on its stdin.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The default peer script: the repository's own.
pub fn default_peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/peer/peer_torch.py")
}
