//! Early wake-ups for the file watcher: Linux inotify on the file's directory. The watcher still
//! checks the file every interval; an event only makes the next check come at once, so a missed
//! or unsupported event costs at most one interval, never an edit.
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

/// Why the watcher woke up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The interval passed.
    Interval,
    /// Something happened to the file. `written`: a writer finished it (closed after writing, or
    /// renamed or linked it into place), so there is no partial write to wait out.
    Event { written: bool },
}

/// Events on the watched file's directory that concern the file: its own name, or a name starting
/// with `..` (Kubernetes updates a mounted ConfigMap by swapping a `..data` symlink).
pub struct DirEvents {
    #[cfg(target_os = "linux")]
    fd: std::os::fd::OwnedFd,
    name: OsString,
}

impl DirEvents {
    /// Watches the directory of `path`; `None` where inotify is unavailable (other systems, the
    /// per-user watch limit reached): the interval alone paces the checks then.
    pub fn new(path: &Path) -> Option<DirEvents> {
        let name = path.file_name()?.to_os_string();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        Self::watch(&dir, name)
    }

    #[cfg(target_os = "linux")]
    fn watch(dir: &Path, name: OsString) -> Option<DirEvents> {
        use std::os::fd::{FromRawFd, OwnedFd};
        use std::os::unix::ffi::OsStrExt;
        let dir = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: plain syscalls; the descriptor is owned by `OwnedFd` from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mask = libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_FROM;
        // SAFETY: `fd` is an inotify descriptor and `dir` a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(std::os::fd::AsRawFd::as_raw_fd(&fd), dir.as_ptr(), mask) };
        (wd >= 0).then_some(DirEvents { fd, name })
    }

    #[cfg(not(target_os = "linux"))]
    fn watch(_dir: &Path, _name: OsString) -> Option<DirEvents> {
        None
    }

    /// Waits up to `timeout` for events about the file; unrelated events in the directory are
    /// read and ignored.
    #[cfg(target_os = "linux")]
    pub fn wait(&self, timeout: Duration) -> Wake {
        use std::os::fd::AsRawFd;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Wake::Interval;
            }
            let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                // Should not happen; fall back to the interval rather than spin.
                std::thread::sleep(left);
                return Wake::Interval;
            }
            if n > 0 {
                if let Some(wake) = self.drain() {
                    return wake;
                }
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn wait(&self, timeout: Duration) -> Wake {
        std::thread::sleep(timeout);
        Wake::Interval
    }

    /// Reads every queued event; what they say about the file, if anything.
    #[cfg(target_os = "linux")]
    fn drain(&self) -> Option<Wake> {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
        // Aligned for the event headers; large enough for many events with names (NAME_MAX 255).
        let mut buf = vec![0u64; 4096 / 8];
        let mut wake: Option<Wake> = None;
        loop {
            // SAFETY: reads into `buf`, at most its length in bytes.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len() * 8) };
            if n <= 0 {
                return wake;
            }
            // SAFETY: the kernel wrote `n` bytes of whole events into `buf`.
            let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
            let mut at = 0;
            while at + HEADER <= bytes.len() {
                // SAFETY: a whole header starts at `at` (events are packed by the kernel).
                let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(bytes[at..].as_ptr().cast()) };
                let name_bytes = &bytes[at + HEADER..(at + HEADER + ev.len as usize).min(bytes.len())];
                let name = &name_bytes[..name_bytes.iter().position(|b| *b == 0).unwrap_or(name_bytes.len())];
                at += HEADER + ev.len as usize;
                let ours =
                    name == self.name.as_bytes() || name.starts_with(b"..") || ev.mask & libc::IN_Q_OVERFLOW != 0;
                if !ours {
                    continue;
                }
                let written = ev.mask & (libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_CREATE) != 0;
                let prev = matches!(wake, Some(Wake::Event { written: true }));
                wake = Some(Wake::Event { written: written || prev });
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::{Duration, Instant};

    use super::{DirEvents, Wake};

    #[test]
    fn wakes_on_the_files_own_events_and_ignores_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.yaml");
        std::fs::write(&path, "namespaces: []\n").unwrap();
        let ev = DirEvents::new(&path).expect("inotify works here");
        assert_eq!(ev.wait(Duration::from_millis(50)), Wake::Interval, "nothing happened");

        // Another file in the directory: not a reason to wake.
        std::fs::write(dir.path().join("other.txt"), "x").unwrap();
        assert_eq!(ev.wait(Duration::from_millis(50)), Wake::Interval);

        // An atomic replacement (write aside, rename into place) wakes at once, as written.
        std::fs::write(dir.path().join(".registry.yaml.tmp"), "namespaces: []\n").unwrap();
        std::fs::rename(dir.path().join(".registry.yaml.tmp"), &path).unwrap();
        let t0 = Instant::now();
        assert_eq!(ev.wait(Duration::from_secs(5)), Wake::Event { written: true });
        assert!(t0.elapsed() < Duration::from_secs(1));

        // A Kubernetes-style symlink swap of `..data`.
        std::os::unix::fs::symlink("x", dir.path().join("..data_tmp")).unwrap();
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
        assert_eq!(ev.wait(Duration::from_secs(5)), Wake::Event { written: true });

        // Removed: an event, but nothing was written.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(ev.wait(Duration::from_secs(5)), Wake::Event { written: false });
    }
}
