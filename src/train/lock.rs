//! One run per output folder: an OS advisory lock (`flock`) on `RUN_DIR/.lock`, held for the
//! whole run. The kernel drops it when the process exits in any way (kill -9 included), so a
//! crashed run never leaves a stale lock; the pid written into the file only names the holder.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Held while a run writes into its folder; dropping it (or dying) releases the folder.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lock file of a run folder.
pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join(".lock")
}

/// Creates `dir` if needed and takes its lock without waiting: a folder another process is
/// writing into is refused with that process's id.
pub fn lock_run_dir(dir: &Path) -> Result<RunLock> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create output folder '{}'", dir.display()))?;
    let path = lock_path(dir);
    // Not truncated on open: the holder's pid must stay readable to a process that is refused.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot create the lock file '{}'", path.display()))?;
    if !try_lock(&file).with_context(|| format!("cannot lock '{}'", path.display()))? {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let who = match holder.trim().parse::<u32>() {
            Ok(pid) => format!("process {pid}"),
            Err(_) => "another process".to_string(),
        };
        anyhow::bail!(
            "'{}' is in use by {who}: wait for that run to finish (or stop it), or choose another --out",
            dir.display()
        );
    }
    let write_pid = |f: &mut File| -> std::io::Result<()> {
        f.set_len(0)?;
        f.rewind()?;
        writeln!(f, "{}", std::process::id())?;
        f.sync_data()
    };
    write_pid(&mut file).with_context(|| format!("cannot write '{}'", path.display()))?;
    Ok(RunLock { _file: file, path })
}

#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    loop {
        // SAFETY: flock on a descriptor this File owns; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

#[cfg(not(unix))]
fn try_lock(_file: &File) -> std::io::Result<bool> {
    // No advisory lock here: runs into one folder are not kept apart on this platform.
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_a_dropped_one_frees_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let held = lock_run_dir(&run).unwrap();
        // flock belongs to the open file, so a second open in this same process is refused too.
        let err = lock_run_dir(&run).unwrap_err().to_string();
        assert!(err.contains(&format!("is in use by process {}", std::process::id())), "{err}");
        drop(held);
        let again = lock_run_dir(&run).unwrap();
        assert!(again.path().is_file());
    }
}
