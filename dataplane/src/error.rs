//! Errors of the dataplane layer.

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A netlink request the kernel refused. `op` says what we tried in words
    /// ("creating veth slice0 in the pod namespace"), `errno` what the kernel said.
    #[error("{name}: {op}: {message}", name = errno_name(*errno))]
    Netlink { op: String, errno: i32, message: String },
    /// A system call (open, setns, mount, write) that failed.
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    /// An object the operation needs does not exist.
    #[error("{0}")]
    NotFound(String),
    /// `nft` refused a command or a batch; `stderr` is what it said (for a batch, the whole
    /// transaction was rolled back: the previous ruleset is in force).
    #[error("{op}: nft: {stderr}")]
    Nft { op: String, stderr: String },
    /// Anything else the netlink stack reported (decode errors, closed connection).
    #[error("{op}: {message}")]
    Other { op: String, message: String },
}

impl Error {
    /// The errno behind a netlink or I/O error, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True when the object already exists (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }
}

/// The symbolic name of an errno ("EEXIST"), or "errno N".
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EEXIST => "EEXIST",
        libc::ENOENT => "ENOENT",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ERANGE => "ERANGE",
        libc::ESRCH => "ESRCH",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}
