//! Records the commit the binary is built from (`MIM_BUILD_COMMIT`, `-dirty` when tracked files had
//! changes), so that a run's records name the code that ran even when the tree has moved on since.

use std::path::Path;
use std::process::Command;

fn main() {
    // Sources, and git's pointers to the commit; only paths that exist (a missing one reruns always).
    for path in ["src", "Cargo.toml", "Cargo.lock", ".git/HEAD", ".git/index", ".git/refs", ".git/packed-refs"] {
        if Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = match (git(&["rev-parse", "HEAD"]), git(&["status", "--porcelain", "--untracked-files=no"])) {
        (Some(head), Some(changes)) if !changes.is_empty() => format!("{head}-dirty"),
        (Some(head), _) => head,
        _ => "unknown".into(),
    };
    println!("cargo:rustc-env=MIM_BUILD_COMMIT={commit}");
}
