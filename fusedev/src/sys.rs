//! The system calls fusedev makes that std does not wrap: mount(2),
//! umount2(2), ioctls on /dev/fuse, CPU affinity. Each unsafe call sits in
//! a small function with its invariant written down.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::abi::{self, BackingMap};

fn cstring(p: &[u8]) -> io::Result<CString> {
    CString::new(p)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in a mount argument"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens a new `/dev/fuse` channel.
pub fn open_dev_fuse() -> io::Result<OwnedFd> {
    let f: File = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")?;
    Ok(f.into())
}

/// mount(2).
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let source = cstring(source.as_bytes())?;
    let target = cstring(target.as_os_str().as_bytes())?;
    let fstype = cstring(fstype.as_bytes())?;
    let data = cstring(data.as_bytes())?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives
    // the call; the kernel copies them.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })?;
    Ok(())
}

/// umount2(2).
pub fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let target = cstring(target.as_os_str().as_bytes())?;
    // SAFETY: `target` is a valid NUL-terminated string for the call.
    check(unsafe { libc::umount2(target.as_ptr(), flags) })?;
    Ok(())
}

/// A new channel on the connection of `main` (`FUSE_DEV_IOC_CLONE`), so a
/// thread reads and writes requests on its own fd.
pub fn clone_channel(main: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let fd = open_dev_fuse()?;
    let src: u32 = main.as_raw_fd() as u32;
    // SAFETY: the ioctl reads one u32 (the fd to clone) from a pointer to a
    // live local; `fd` is an open /dev/fuse fd.
    check(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            abi::ioctl::DEV_IOC_CLONE as _,
            &src as *const u32,
        )
    })?;
    Ok(fd)
}

/// Registers `backing` as a passthrough backing file; returns its id.
pub fn backing_open(fuse: BorrowedFd<'_>, backing: BorrowedFd<'_>) -> io::Result<i32> {
    let map = BackingMap {
        fd: backing.as_raw_fd(),
        flags: 0,
        padding: 0,
    };
    // SAFETY: the ioctl reads a `fuse_backing_map` (16 bytes, layout asserted
    // in abi.rs) from a pointer to a live local.
    check(unsafe {
        libc::ioctl(
            fuse.as_raw_fd(),
            abi::ioctl::DEV_IOC_BACKING_OPEN as _,
            &map as *const BackingMap,
        )
    })
}

/// Releases a backing id.
pub fn backing_close(fuse: BorrowedFd<'_>, id: i32) -> io::Result<()> {
    let id = id as u32;
    // SAFETY: the ioctl reads one u32 from a pointer to a live local.
    check(unsafe {
        libc::ioctl(
            fuse.as_raw_fd(),
            abi::ioctl::DEV_IOC_BACKING_CLOSE as _,
            &id as *const u32,
        )
    })?;
    Ok(())
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cpu out of range",
        ));
    }
    // SAFETY: `cpu` is below CPU_SETSIZE, checked above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; 0 = this thread.
    check(unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) })?;
    Ok(())
}

/// The CPUs the kernel may ever bring online (FUSE makes one queue each).
pub fn possible_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| parse_cpu_list(s.trim()))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// `0-3,5` → 6 (highest id + 1).
fn parse_cpu_list(s: &str) -> Option<usize> {
    s.split(',')
        .map(|part| {
            part.rsplit('-')
                .next()
                .and_then(|n| n.parse::<usize>().ok())
        })
        .try_fold(0usize, |max, n| n.map(|n| max.max(n + 1)))
}

/// An eventfd for waking a core.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; the returned fd is owned below.
    let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })?;
    // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Sets `O_NONBLOCK` on `fd`. On a `/dev/fuse` channel this is a flag of
/// the shared open file: every process holding it (the keeper, the next
/// daemon) sees it too, which is what a takeover session wants.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL takes no pointer; `fd` is a valid borrowed fd.
    let flags = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: F_SETFL takes an int argument, no pointer; `fd` is valid.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// Waits until `chan` is readable or `wake` is: returns whether `wake`
/// fired. EINTR counts as "look again" (false).
pub fn wait_readable(chan: BorrowedFd<'_>, wake: BorrowedFd<'_>) -> io::Result<bool> {
    let mut fds = [
        libc::pollfd {
            fd: chan.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: `fds` is a live array of 2 pollfds for the whole call and
    // both fds are valid borrowed fds.
    match check(unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) }) {
        Ok(_) => Ok(fds[1].revents != 0),
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_lists() {
        assert_eq!(super::parse_cpu_list("0-1"), Some(2));
        assert_eq!(super::parse_cpu_list("0"), Some(1));
        assert_eq!(super::parse_cpu_list("0-3,6"), Some(7));
        assert_eq!(super::parse_cpu_list("x"), None);
    }
}
