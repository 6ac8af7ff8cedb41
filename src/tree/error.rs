//! Errors of tree operations carry the errno the adapter answers with.

use std::fmt;
use std::io;

#[derive(Debug)]
pub struct FsError {
    pub errno: i32,
    pub message: String,
    /// The fault was logged where it was found (once): not worth logging per request.
    pub logged: bool,
}

impl FsError {
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        FsError {
            errno,
            message: message.into(),
            logged: false,
        }
    }

    /// Expected answers (a name that does not exist) are not worth a warning in the log.
    pub fn is_expected(&self) -> bool {
        matches!(
            self.errno,
            libc::ENOENT
                | libc::ENODATA
                | libc::EROFS
                | libc::ENOTDIR
                | libc::EISDIR
                | libc::ERANGE
                // A request whose caller was interrupted while it waited.
                | libc::EINTR
        )
    }
}

impl FsError {
    /// A backing file could not be opened: EIO for that file, except when the daemon is
    /// out of a resource (file descriptors, memory), which the caller may wait out and
    /// retry: those keep their errno (EMFILE, ENFILE, ENOMEM).
    pub fn opening(e: &io::Error, message: impl Into<String>) -> Self {
        let errno = match e.raw_os_error() {
            Some(n @ (libc::EMFILE | libc::ENFILE | libc::ENOMEM)) => n,
            _ => libc::EIO,
        };
        FsError::new(errno, message)
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (errno {})", self.message, self.errno)
    }
}

impl From<io::Error> for FsError {
    fn from(e: io::Error) -> Self {
        // Faults of a backing file that are not plain errnos (short reads, bad data)
        // become EIO for that file only.
        let reported = crate::archive::reported_errno_of(&e);
        FsError {
            errno: e.raw_os_error().or(reported).unwrap_or(libc::EIO),
            message: e.to_string(),
            logged: reported.is_some(),
        }
    }
}

/// `FsError` with a formatted message: `fs_err!(ENOENT, "no {name:?}")`.
#[macro_export]
macro_rules! fs_err {
    ($errno:ident, $($arg:tt)*) => {
        $crate::tree::FsError::new(libc::$errno, format!($($arg)*))
    };
}
