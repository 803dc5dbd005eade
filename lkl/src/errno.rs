//! Errors from the kernel library: a negative return value, typed.
use core::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

macro_rules! errnos {
    ($($name:ident = $num:literal, $text:literal;)*) => {
        impl Errno {
            $(pub const $name: Errno = Errno($num);)*

            /// The symbolic name and description, when this is a well-known code.
            pub fn describe(self) -> Option<(&'static str, &'static str)> {
                match self.0 {
                    $($num => Some((stringify!($name), $text)),)*
                    _ => None,
                }
            }

            /// The description with a trailing NUL, for C callers.
            fn c_text(self) -> Option<&'static str> {
                match self.0 {
                    $($num => Some(concat!($text, "\0")),)*
                    _ => None,
                }
            }
        }
    };
}

errnos! {
    EPERM = 1, "Operation not permitted";
    ENOENT = 2, "No such file or directory";
    ESRCH = 3, "No such process";
    EINTR = 4, "Interrupted system call";
    EIO = 5, "Input/output error";
    ENXIO = 6, "No such device or address";
    E2BIG = 7, "Argument list too long";
    ENOEXEC = 8, "Exec format error";
    EBADF = 9, "Bad file descriptor";
    ECHILD = 10, "No child processes";
    EAGAIN = 11, "Resource temporarily unavailable";
    ENOMEM = 12, "Cannot allocate memory";
    EACCES = 13, "Permission denied";
    EFAULT = 14, "Bad address";
    EBUSY = 16, "Device or resource busy";
    EEXIST = 17, "File exists";
    EXDEV = 18, "Invalid cross-device link";
    ENODEV = 19, "No such device";
    ENOTDIR = 20, "Not a directory";
    EISDIR = 21, "Is a directory";
    EINVAL = 22, "Invalid argument";
    ENFILE = 23, "Too many open files in system";
    EMFILE = 24, "Too many open files";
    ENOTTY = 25, "Inappropriate ioctl for device";
    EFBIG = 27, "File too large";
    ENOSPC = 28, "No space left on device";
    ESPIPE = 29, "Illegal seek";
    EROFS = 30, "Read-only file system";
    EMLINK = 31, "Too many links";
    EPIPE = 32, "Broken pipe";
    ERANGE = 34, "Numerical result out of range";
    ENAMETOOLONG = 36, "File name too long";
    ENOSYS = 38, "Function not implemented";
    ENOTEMPTY = 39, "Directory not empty";
    ELOOP = 40, "Too many levels of symbolic links";
    ENODATA = 61, "No data available";
    ELIBBAD = 80, "Accessing a corrupted shared library";
    ENOTSOCK = 88, "Socket operation on non-socket";
    EMSGSIZE = 90, "Message too long";
    EOPNOTSUPP = 95, "Operation not supported";
    EPROTONOSUPPORT = 93, "Protocol not supported";
    EAFNOSUPPORT = 97, "Address family not supported by protocol";
    EUCLEAN = 117, "Structure needs cleaning";
    ESHUTDOWN = 108, "Cannot send after transport endpoint shutdown";
    ETIMEDOUT = 110, "Connection timed out";
    EINPROGRESS = 115, "Operation now in progress";
    // Kernel-internal: an interrupted wait. Returned to a caller of the library by a task
    // that was interrupted; user space never sees it (a signal handler turns it into
    // EINTR, or into restarting the call when SA_RESTART is set).
    ERESTARTSYS = 512, "Interrupted system call (restartable)";
}

impl Errno {
    /// Splits a raw kernel return value into a result.
    pub fn result(ret: i64) -> Result<usize, Errno> {
        if (-4095..0).contains(&ret) {
            // The range check makes the negation fit.
            Err(Errno(i32::try_from(-ret).unwrap_or(i32::MAX)))
        } else {
            usize::try_from(ret).map_err(|_| Errno::EINVAL)
        }
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.describe() {
            Some((name, _)) => f.write_str(name),
            None => write!(f, "Errno({})", self.0),
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.describe() {
            Some((name, text)) => write!(f, "{text} ({name})"),
            None => write!(f, "error {}", self.0),
        }
    }
}

impl std::error::Error for Errno {}

/// LKL's `lkl_strerror`: a static description for C callers.
#[unsafe(no_mangle)]
pub extern "C" fn lkl_strerror(err: core::ffi::c_int) -> *const core::ffi::c_char {
    let code = err.checked_abs().map_or(Errno::EINVAL, Errno);
    code.c_text().unwrap_or("Unknown error\0").as_ptr().cast()
}
