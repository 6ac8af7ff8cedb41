//! The only `unsafe` code of the crate: thin wrappers over Linux system calls that std does
//! not expose. Everything above this module is safe Rust.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

pub mod at;
pub mod zlib;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Opens `rel` beneath the folder `dir` without following any symlink on the way
/// (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): a path can never leave its layer root.
/// With `O_PATH | O_NOFOLLOW` a trailing symlink is opened itself.
pub fn open_beneath(dir: &impl AsRawFd, rel: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let path = c_path(rel)?;
    openat2(
        dir,
        &path,
        flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    )
}

/// Opens `rel` beneath the folder `dir` with `O_PATH`, following symlinks only while they
/// stay beneath `dir` (`RESOLVE_BENEATH`): an absolute symlink or one that climbs out
/// fails with `EXDEV`. For layer roots inside the cache or a contexts folder.
pub fn open_path_beneath(dir: &impl AsRawFd, rel: &Path) -> io::Result<OwnedFd> {
    let path = c_path(rel)?;
    openat2(
        dir,
        &path,
        libc::O_PATH | libc::O_CLOEXEC,
        libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    )
}

/// `openat2(2)` with `flags` and `resolve`; the new fd is ours.
fn openat2(
    dir: &impl AsRawFd,
    path: &CString,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = resolve;
    // SAFETY: `path` is a valid NUL-terminated string and `how` a valid open_how that
    // outlives the call; the kernel returns a new fd we take ownership of.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall succeeded, so `fd` is an open descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// `path` with its symlinks resolved as far as it exists: the longest existing prefix is
/// canonicalized and the rest (which cannot hold a symlink: it does not exist) is
/// appended lexically. So `LINK/new` compares as where `new` would be created.
pub fn resolve_existing(path: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let parts: Vec<Component> = path.components().collect();
    for split in (0..=parts.len()).rev() {
        let prefix: std::path::PathBuf = parts[..split].iter().collect();
        let base = if prefix.as_os_str().is_empty() {
            std::env::current_dir()
        } else {
            std::fs::canonicalize(&prefix)
        };
        let Ok(mut out) = base else { continue };
        for part in &parts[split..] {
            match part {
                Component::ParentDir => {
                    out.pop();
                }
                Component::Normal(name) => out.push(name),
                _ => {}
            }
        }
        return out;
    }
    path.to_path_buf()
}

/// Opens `path` with `O_PATH` (following symlinks: a layer root is whatever the user named).
pub fn open_path(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    // SAFETY: valid NUL-terminated path; the returned fd is owned by us on success.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by open(2).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Gives the heap's free pages back to the kernel (glibc's `malloc_trim`): memory freed
/// by the allocator otherwise stays in the process for reuse. Nothing on other C
/// libraries.
pub fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointer from us; it walks the allocator's own free
    // lists under the allocator's locks, and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Makes every thread allocate from the one main heap (glibc's `M_ARENA_MAX` of 1).
/// glibc gives threads heaps of their own (up to 8 per core) so that they do not wait
/// on one lock; each keeps its own free chunks and slack, which for the daemon's small,
/// long-lived records (allocated by whichever FUSE thread answered a lookup) is memory
/// per entry for no gain: its threads spend their time in system calls, not in malloc.
/// Call it before any thread starts (the limit is read when a second heap is first
/// wanted). Nothing on other C libraries.
pub fn single_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt takes two integers and changes only the allocator's own settings,
    // under its lock; M_ARENA_MAX is a parameter it documents.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// A time of `stat` (seconds and nanoseconds since the epoch) as a `SystemTime`; times
/// before the epoch show as the epoch.
pub fn system_time(secs: i64, nanos: i64) -> std::time::SystemTime {
    std::time::SystemTime::UNIX_EPOCH
        + std::time::Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
}

/// `fstat` of any fd, `O_PATH` ones included (std's `File::metadata` needs a `File`).
pub fn fstat(fd: &impl AsRawFd) -> io::Result<libc::stat> {
    // SAFETY: zeroed `stat` is a valid out-buffer for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open for the duration of the call; `st` is a valid pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Reads the target of the symlink opened with `O_PATH | O_NOFOLLOW` as `fd`.
pub fn readlink_fd(fd: &impl AsRawFd) -> io::Result<std::ffi::OsString> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    let empty = c"";
    // SAFETY: an empty path with a symlink fd reads that link (readlinkat(2)); `buf` is
    // writable for its whole length.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            empty.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(std::ffi::OsString::from_vec(buf))
}

/// Turns an `O_PATH` fd of a regular file into a readable `File`. Anything else (a FIFO,
/// a device or a socket put where a file was) is refused before it is opened, and the
/// open is `O_NONBLOCK`: nothing in a layer, the cache or the index folder can block a
/// worker (a FIFO would wait for a writer forever). The fd names one inode, so the check
/// and the open cannot be raced.
pub fn reopen_readonly(fd: &impl AsRawFd) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match fstat(fd)?.st_mode & libc::S_IFMT {
        libc::S_IFREG => {}
        libc::S_IFLNK => return Err(io::Error::from_raw_os_error(libc::ELOOP)),
        libc::S_IFDIR => return Err(io::Error::from_raw_os_error(libc::EISDIR)),
        _ => {
            return Err(io::Error::other(
                "not a regular file (a fifo, socket or device)",
            ))
        }
    }
    let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(proc)
}

/// Opens the regular file at `path` (symlinks followed) for reading, never blocking: see
/// [`reopen_readonly`].
pub fn open_regular(path: &Path) -> io::Result<File> {
    reopen_readonly(&open_path(path)?)
}

/// Reads the whole regular file at `path` (see [`open_regular`]).
pub fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    open_regular(path)?.read_to_end(&mut out)?;
    Ok(out)
}

/// Lists a folder opened with `O_PATH`: names with their `d_type`, without `.` and `..`.
pub fn read_dir_fd(fd: &impl AsRawFd) -> io::Result<Vec<(std::ffi::OsString, u8)>> {
    let dir = open_beneath(fd, Path::new(""), libc::O_RDONLY | libc::O_DIRECTORY)?;
    read_open_dir(&dir)
}

/// Lists the folder open for reading as `dir` (not `O_PATH`) from its start: names with
/// their `d_type`, without `.` and `..`. Reads with `getdents64` into one buffer: no
/// `DIR` stream, so no duplicate fd and no extra `fcntl`/`fstat` per folder.
pub fn read_open_dir(dir: &impl AsRawFd) -> io::Result<Vec<(std::ffi::OsString, u8)>> {
    // struct linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name.
    const RECLEN_AT: usize = 16;
    const TYPE_AT: usize = 18;
    const NAME_AT: usize = 19;
    let mut buf = vec![0u8; 32 * 1024];
    let mut out = Vec::new();
    loop {
        // SAFETY: `dir` is open for the call and `buf` is writable for its whole length;
        // the kernel writes at most that many bytes.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                // A folder removed while open lists as empty, as readdir(3) ends it.
                Some(libc::ENOENT) => return Ok(out),
                _ => return Err(err),
            }
        }
        if n == 0 {
            return Ok(out);
        }
        let filled = &buf[..n as usize];
        let mut at = 0;
        while at + NAME_AT <= filled.len() {
            let reclen =
                u16::from_ne_bytes([filled[at + RECLEN_AT], filled[at + RECLEN_AT + 1]]) as usize;
            if reclen < NAME_AT || at + reclen > filled.len() {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let kind = filled[at + TYPE_AT];
            let name = &filled[at + NAME_AT..at + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if name != b"." && name != b".." {
                out.push((std::ffi::OsString::from_vec(name.to_vec()), kind));
            }
            at += reclen;
        }
    }
}

/// `statvfs` of a path, for answering `statfs` on the mount.
pub fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let c = c_path(path)?;
    // SAFETY: zeroed statvfs is a valid out-buffer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// The file system type (`f_type` of statfs(2)) of the file system holding `path`.
pub fn fs_magic(path: &Path) -> io::Result<i64> {
    let c = c_path(path)?;
    // SAFETY: zeroed statfs is a valid out-buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// Raises the soft limit of open files to the hard limit: every open of a file in the
/// mount holds one backing fd in the daemon. Returns the new soft limit.
pub fn raise_open_files_limit() -> io::Result<u64> {
    // SAFETY: zeroed rlimit is a valid out-buffer.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: valid resource and out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: valid resource and pointer to an initialised rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur as u64)
}

/// Whether the kernel has closed the FUSE connection of `/dev/fuse` fd `fuse` (the file
/// system was unmounted or the connection aborted): poll(2) then reports POLLERR.
pub fn fuse_connection_closed(fuse: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: fuse.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd for the duration of the call; zero timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return n > 0 && pfd.revents & libc::POLLERR != 0;
    }
}

/// Detaches a mount (`umount2(MNT_DETACH)`); works on stale FUSE mounts too.
pub fn unmount(path: &Path, detach: bool) -> io::Result<()> {
    let c = c_path(path)?;
    let flags = if detach { libc::MNT_DETACH } else { 0 };
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Forks the process. Must run before any thread is started.
pub fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: called while the process is single-threaded (the daemon forks before
    // the FUSE session starts its threads).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

/// Starts a new session so the daemon is detached from the terminal.
pub fn setsid() {
    // SAFETY: setsid has no memory-safety preconditions.
    unsafe { libc::setsid() };
}

/// Points stdin, stdout and stderr at `/dev/null` (or stderr at `log`).
pub fn detach_stdio(log: Option<&File>) -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let err_fd = log.map(|f| f.as_raw_fd()).unwrap_or(null.as_raw_fd());
    // SAFETY: dup2 onto the standard descriptors; both source fds are open.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
        libc::dup2(err_fd, 2);
    }
    Ok(())
}

/// Blocks the termination signals in the calling thread (and the threads it starts later),
/// so that one dedicated thread can wait for them with [`wait_for_signal`].
pub fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local, zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for one of the signals in `set` (blocked beforehand) and returns its number.
pub fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is a valid initialised sigset and `sig` a valid out pointer.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

/// The effective user id of the process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// What [`mount_fuse`] mounts.
#[derive(Debug)]
pub struct FuseMount<'a> {
    pub mountpoint: &'a Path,
    /// The `source` column of the mount table (`rootfs-mount:v1.23.4`).
    pub source: &'a str,
    /// The file system type, `fuse.SUBTYPE`.
    pub fstype: &'a str,
    pub read_only: bool,
    /// Let other users in (the kernel's `allow_other`).
    pub allow_other: bool,
}

/// Opens `/dev/fuse` and mounts it with mount(2) as root does, with the full type
/// `fuse.SUBTYPE` (fuser's own mount(2) path always says `fuse`). The mount is
/// `nosuid,nodev,default_permissions`. Returns the FUSE connection.
pub fn mount_fuse(m: &FuseMount<'_>) -> io::Result<OwnedFd> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let root_mode = std::fs::metadata(m.mountpoint)?.mode() & libc::S_IFMT;
    let fuse = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")?;
    let mut data = format!(
        "fd={},rootmode={root_mode:o},user_id={},group_id={},default_permissions",
        fuse.as_raw_fd(),
        euid(),
        // SAFETY: getegid has no preconditions and cannot fail.
        unsafe { libc::getegid() }
    );
    if m.allow_other {
        data.push_str(",allow_other");
    }
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if m.read_only {
        flags |= libc::MS_RDONLY;
    }
    let target = c_path(m.mountpoint)?;
    let source = CString::new(m.source).map_err(|_| io::ErrorKind::InvalidInput)?;
    let fstype = CString::new(m.fstype).map_err(|_| io::ErrorKind::InvalidInput)?;
    let data = CString::new(data).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: all four strings are valid and NUL-terminated for the duration of the call;
    // `data` is the text option string FUSE expects.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(fuse))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_larger_than_one_getdents_buffer_is_listed_whole() {
        let dir =
            std::env::temp_dir().join(format!("rootfs-mount-getdents-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        // 2000 names of ~70 bytes: several 32 KiB buffers of dirents.
        let mut want: Vec<String> = (0..2000)
            .map(|i| format!("{i:05}-{}", "x".repeat(64)))
            .collect();
        for name in &want {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        want.push("sub".into());
        want.sort();
        let fd = open_path(&dir).unwrap();
        let listed = read_dir_fd(&fd).unwrap();
        let mut names: Vec<String> = listed
            .iter()
            .map(|(n, _)| n.to_str().unwrap().to_string())
            .collect();
        names.sort();
        assert_eq!(names, want);
        let sub = listed.iter().find(|(n, _)| n == "sub").unwrap();
        assert_eq!(sub.1, libc::DT_DIR);
        assert!(listed
            .iter()
            .filter(|(n, _)| n != "sub")
            .all(|(_, t)| *t == libc::DT_REG));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
