//! Free space on the data dir's file system. sled cannot recover from a write that fails with
//! "no space left" (its error is sticky until the process restarts), so gantry never lets it
//! get there: new jobs are refused (503) while space is low, and a reserve file of the same size
//! is given up the moment space runs short, so jobs already running can still record their end.
//! Once space is back (twice the reserve free), the reserve is taken again and jobs are accepted.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub const RESERVE_FILE: &str = "space-reserve";

#[derive(Debug)]
pub struct SpaceGuard {
    dir: PathBuf,
    reserve: u64,
    /// (refusing submissions, reserve file held).
    state: Mutex<(bool, bool)>,
    /// The last answer and when it was computed (ms since `started`): a submission reuses an
    /// answer younger than `FRESH_MS` instead of asking the file system again.
    last: AtomicU64,
    started: Instant,
}

/// How long a free-space answer is reused. The reserve covers what a disk filling faster than
/// this could still take.
const FRESH_MS: u64 = 10;

/// Bytes available to this (non-root reserved blocks excluded) user on `dir`'s file system.
pub fn available(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `stat` is written by the call on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

impl SpaceGuard {
    /// `reserve` bytes (0 disables the guard) are held in `<dir>/space-reserve`.
    pub fn new(dir: &Path, reserve: u64) -> SpaceGuard {
        let guard = SpaceGuard {
            dir: dir.to_path_buf(),
            reserve,
            state: Mutex::new((false, false)),
            last: AtomicU64::new(u64::MAX),
            started: Instant::now(),
        };
        guard.check();
        guard
    }

    fn reserve_file(&self) -> PathBuf {
        self.dir.join(RESERVE_FILE)
    }

    /// Whether new work may be accepted (at most `FRESH_MS` old).
    pub fn has_room(&self) -> bool {
        if self.reserve == 0 {
            return true;
        }
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last.load(Ordering::Relaxed);
        if last != u64::MAX && now.saturating_sub(last >> 1) < FRESH_MS {
            return last & 1 == 1;
        }
        let room = self.check();
        self.last
            .store((now << 1) | u64::from(room), Ordering::Relaxed);
        room
    }

    /// Asks the file system; gives up or retakes the reserve as space changes.
    pub fn check(&self) -> bool {
        let Some(free) = available(&self.dir) else {
            return true;
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (low, held) = &mut *state;
        let file = self.reserve_file();
        if !*low && free < self.reserve / 2 {
            *low = true;
            *held = false;
            let _ = std::fs::remove_file(&file);
            tracing::error!(
                dir = %self.dir.display(),
                free_mib = free >> 20,
                "data dir almost full: refusing new jobs, reserve released for running ones"
            );
        } else if *low && free >= self.reserve * 2 {
            *low = false;
            tracing::warn!(dir = %self.dir.display(), "space is back: accepting jobs again");
        }
        // One statvfs per call on the common path; the reserve is (re)taken only when missing.
        if !*low && !*held {
            match take_reserve(&file, self.reserve) {
                Ok(()) => *held = true,
                Err(_) => *low = true,
            }
        }
        !*low
    }

    pub fn reserve_mib(&self) -> u64 {
        self.reserve >> 20
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Allocates the reserve file for real (not sparse), so the space is held.
fn take_reserve(file: &Path, size: u64) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::File::create(file)?;
    // SAFETY: a valid open file descriptor and non-negative offsets.
    let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, size as libc::off_t) };
    if rc != 0 {
        drop(f);
        let _ = std::fs::remove_file(file);
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_held_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let guard = SpaceGuard::new(dir.path(), 1 << 20);
        assert!(guard.has_room());
        let held = std::fs::metadata(dir.path().join(RESERVE_FILE)).unwrap();
        assert_eq!(held.len(), 1 << 20);
        assert!(available(dir.path()).unwrap() > 0);
        assert!(SpaceGuard::new(dir.path(), 0).has_room(), "0 disables it");
    }
}
