//! `*at` system calls on a folder fd, for the upper layer: every change is made by name
//! inside a folder already opened beneath the upper root, so no path is re-resolved
//! through symlinks.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::time::SystemTime;

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn mkdirat(dir: &impl AsRawFd, name: &OsStr, mode: u32) -> io::Result<()> {
    let c = c_name(name)?;
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) })
}

/// Makes a FIFO or socket node (`mode` carries `S_IFIFO` or `S_IFSOCK`); no devices.
pub fn mknodat(dir: &impl AsRawFd, name: &OsStr, mode: u32) -> io::Result<()> {
    let kind = mode & libc::S_IFMT;
    if kind != libc::S_IFIFO && kind != libc::S_IFSOCK {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    let c = c_name(name)?;
    // SAFETY: valid fd and NUL-terminated name; device number 0 (no device is made).
    check(unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t, 0) })
}

pub fn unlinkat(dir: &impl AsRawFd, name: &OsStr, is_dir: bool) -> io::Result<()> {
    let c = c_name(name)?;
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) })
}

pub fn renameat2(
    from_dir: &impl AsRawFd,
    from: &OsStr,
    to_dir: &impl AsRawFd,
    to: &OsStr,
    flags: libc::c_uint,
) -> io::Result<()> {
    let (f, t) = (c_name(from)?, c_name(to)?);
    // SAFETY: valid fds and NUL-terminated names.
    check(unsafe {
        libc::renameat2(
            from_dir.as_raw_fd(),
            f.as_ptr(),
            to_dir.as_raw_fd(),
            t.as_ptr(),
            flags,
        )
    })
}

pub fn symlinkat(target: &OsStr, dir: &impl AsRawFd, name: &OsStr) -> io::Result<()> {
    let (t, n) = (c_name(target)?, c_name(name)?);
    // SAFETY: valid fd and NUL-terminated strings.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), n.as_ptr()) })
}

pub fn linkat(
    from_dir: &impl AsRawFd,
    from: &OsStr,
    to_dir: &impl AsRawFd,
    to: &OsStr,
) -> io::Result<()> {
    let (f, t) = (c_name(from)?, c_name(to)?);
    // SAFETY: valid fds and NUL-terminated names; no AT_SYMLINK_FOLLOW.
    check(unsafe {
        libc::linkat(
            from_dir.as_raw_fd(),
            f.as_ptr(),
            to_dir.as_raw_fd(),
            t.as_ptr(),
            0,
        )
    })
}

pub fn fchmodat(dir: &impl AsRawFd, name: &OsStr, mode: u32) -> io::Result<()> {
    let c = c_name(name)?;
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t, 0) })
}

/// `None` leaves the id unchanged. Never follows a trailing symlink.
pub fn fchownat(
    dir: &impl AsRawFd,
    name: &OsStr,
    uid: Option<u32>,
    gid: Option<u32>,
) -> io::Result<()> {
    let c = c_name(name)?;
    let uid = uid.unwrap_or(u32::MAX);
    let gid = gid.unwrap_or(u32::MAX);
    // SAFETY: valid fd and NUL-terminated name; -1 ids mean "unchanged".
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            c.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// A time to set: a value, now, or unchanged.
#[derive(Clone, Copy, Debug)]
pub enum SetTime {
    At(SystemTime),
    Now,
    Keep,
}

fn timespec(t: SetTime) -> libc::timespec {
    match t {
        SetTime::Now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        SetTime::Keep => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        SetTime::At(time) => {
            let d = time
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            }
        }
    }
}

pub fn utimensat(
    dir: &impl AsRawFd,
    name: &OsStr,
    atime: SetTime,
    mtime: SetTime,
) -> io::Result<()> {
    let c = c_name(name)?;
    let times = [timespec(atime), timespec(mtime)];
    // SAFETY: valid fd, NUL-terminated name and a two-element timespec array.
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// Creates and opens `name` in `dir` (`O_CREAT | O_EXCL`, never through a symlink).
pub fn create_at(
    dir: &impl AsRawFd,
    name: &OsStr,
    flags: libc::c_int,
    mode: u32,
) -> io::Result<std::fs::File> {
    let c = c_name(name)?;
    let flags = flags | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: valid fd and NUL-terminated name; the returned fd is owned by the File.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, mode as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: fd was just returned by openat.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Opens an existing regular file `name` in `dir` with `flags` (no symlink followed).
pub fn open_at(dir: &impl AsRawFd, name: &OsStr, flags: libc::c_int) -> io::Result<std::fs::File> {
    let c = c_name(name)?;
    let flags = (flags & !(libc::O_CREAT | libc::O_EXCL)) | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: valid fd and NUL-terminated name; the returned fd is owned by the File.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: fd was just returned by openat.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

pub fn fallocate(file: &impl AsRawFd, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: valid fd; offsets are plain integers.
    check(unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })
}

/// Extended attributes of an open file or folder (not symlinks: Linux allows no user
/// xattrs there).
pub fn fgetxattr(file: &impl AsRawFd, name: &OsStr) -> io::Result<Vec<u8>> {
    let c = c_name(name)?;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: valid fd, NUL-terminated name and a writable buffer of the given size.
    let n = unsafe {
        libc::fgetxattr(
            file.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn fsetxattr(file: &impl AsRawFd, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
    let c = c_name(name)?;
    // SAFETY: valid fd, NUL-terminated name and a readable value buffer.
    check(unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            c.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

pub fn fremovexattr(file: &impl AsRawFd, name: &OsStr) -> io::Result<()> {
    let c = c_name(name)?;
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe { libc::fremovexattr(file.as_raw_fd(), c.as_ptr()) })
}

pub fn flistxattr(file: &impl AsRawFd) -> io::Result<Vec<OsString>> {
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: valid fd and a writable buffer of the given size.
    let n = unsafe { libc::flistxattr(file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| OsString::from_vec(n.to_vec()))
        .collect())
}

/// `lstat` of the single name `name` in the folder `dir` (`fstatat` with
/// `AT_SYMLINK_NOFOLLOW`): a name listed by `getdents` is one component, so nothing is
/// resolved beyond `dir`. `dir` may be an `O_PATH` fd.
pub fn lstat_at(dir: &impl AsRawFd, name: &OsStr) -> io::Result<libc::stat> {
    let c = c_name(name)?;
    // SAFETY: zeroed `stat` is a valid out-buffer for fstatat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and NUL-terminated name; `st` is a valid pointer for the call.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// The target of the symlink `name` in the folder `dir`.
pub fn readlink_at(dir: &impl AsRawFd, name: &OsStr) -> io::Result<OsString> {
    let c = c_name(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: valid fd and NUL-terminated name; `buf` is writable for its whole length.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(OsString::from_vec(buf))
}
