//! Stage 1: adopt the socket systemd passed (sd_listen_fds(3)), or bind one.
//!
//! A listening socket (`Accept=no`) is served until idle; a connected one
//! (`Accept=yes`) is one connection. `SO_ACCEPTCONN` tells them apart, since
//! systemd passes both the same way.
//!
//! The `LISTEN_*` variables stay in sockhook's environment: commands start
//! with a cleared one, and removing a variable is sound only while no other
//! thread exists, a contract this module could not enforce.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{AddressFamily, SockType, SockaddrLike, SockaddrStorage, getsockname};
use nix::sys::socket::{getsockopt, sockopt};

use crate::error::Error;

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;
/// Names the process the fds are meant for.
pub const LISTEN_PID: &str = "LISTEN_PID";
/// How many fds are passed.
pub const LISTEN_FDS: &str = "LISTEN_FDS";
/// Their names (`FileDescriptorName=`), colon-separated.
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// The name that makes a socket speak HTTPS (`FileDescriptorName=https`).
pub const HTTPS_NAME: &str = "https";

/// A listening socket, and whether its connections speak TLS.
#[derive(Debug)]
pub struct Endpoint {
    /// The socket.
    pub listener: Listener,
    /// Its connections are HTTPS.
    pub tls: bool,
}

impl Endpoint {
    /// `http://ADDR` or `https://ADDR`, for the start-up log line.
    pub fn describe(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.listener.describe())
    }
}

/// What sockhook serves.
#[derive(Debug)]
pub enum Socket {
    /// Listening sockets (`Accept=no`, or `--listen`): accept until idle.
    Listeners(Vec<Endpoint>),
    /// One connected socket (`Accept=yes`): serve it, then exit.
    Connection(Stream),
}

/// A listening TCP or Unix stream socket.
#[derive(Debug)]
pub enum Listener {
    /// TCP over IPv4 or IPv6.
    Tcp(TcpListener),
    /// A Unix stream socket.
    Unix(UnixListener),
}

/// A connected TCP or Unix stream socket.
#[derive(Debug)]
pub enum Stream {
    /// TCP over IPv4 or IPv6.
    Tcp(TcpStream),
    /// A Unix stream socket.
    Unix(UnixStream),
}

/// How many fds systemd passed to this process: 0 when none were.
///
/// Pure, for testing: `pid` and `fds` are the values of `LISTEN_PID` and
/// `LISTEN_FDS`. Fds meant for another process are an error rather than
/// "none", so that a wrapper which forgot to set `LISTEN_PID` is noticed.
pub fn passed_fds(pid: Option<&str>, fds: Option<&str>, our_pid: u32) -> Result<usize, Error> {
    let Some(fds) = fds else { return Ok(0) };
    let count: usize = fds
        .parse()
        .map_err(|_| Error::Socket(format!("{LISTEN_FDS}={fds:?} is not a number")))?;
    match pid.map(str::parse::<u32>) {
        None => Err(Error::Socket(format!(
            "{LISTEN_FDS} is set but {LISTEN_PID} is not; the activator must set it to the pid it executes"
        ))),
        Some(Ok(pid)) if pid == our_pid => Ok(count),
        Some(_) => Err(Error::Socket(format!(
            "{LISTEN_PID}={:?} names another process than this one ({our_pid})",
            pid.unwrap_or_default()
        ))),
    }
}

/// Takes the sockets systemd passed, or `None` when it passed none.
///
/// Call it once: each fd is wrapped into an owning value.
pub fn from_systemd() -> Result<Option<Socket>, Error> {
    let pid = std::env::var(LISTEN_PID).ok();
    let fds = std::env::var(LISTEN_FDS).ok();
    let count = passed_fds(pid.as_deref(), fds.as_deref(), std::process::id())?;
    if count == 0 {
        return Ok(None);
    }
    let names = fd_names(std::env::var(LISTEN_FDNAMES).ok().as_deref(), count);
    let mut listeners = Vec::with_capacity(count);
    let mut connection = None;
    for (fd, name) in (LISTEN_FDS_START..).zip(names) {
        match adopt(fd)? {
            Adopted::Listener(listener) => listeners.push(Endpoint {
                listener,
                tls: name == HTTPS_NAME,
            }),
            Adopted::Connection(c) => connection = Some(c),
        }
    }
    match (connection, listeners.is_empty()) {
        (Some(c), true) if count == 1 => Ok(Some(Socket::Connection(c))),
        (Some(_), _) => Err(Error::Socket(format!(
            "{count} fds passed and one is a connection; Accept=yes passes exactly one"
        ))),
        (None, _) => Ok(Some(Socket::Listeners(listeners))),
    }
}

/// The name of each of `count` fds: `LISTEN_FDNAMES` split at `:`, an
/// empty name for each it does not cover (sd_listen_fds_with_names(3)).
pub fn fd_names(names: Option<&str>, count: usize) -> Vec<String> {
    let mut names: Vec<String> = names
        .unwrap_or("")
        .split(':')
        .take(count)
        .map(str::to_owned)
        .collect();
    names.resize(count, String::new());
    names
}

enum Adopted {
    Listener(Listener),
    Connection(Stream),
}

#[allow(unsafe_code)]
fn adopt(fd: RawFd) -> Result<Adopted, Error> {
    // A raw probe: a BorrowedFd must name an open fd, and this one may not be.
    // SAFETY: F_GETFD reads flags and is harmless on any fd number.
    if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } < 0 {
        return Err(Error::Socket(format!(
            "fd {fd} is not open although {LISTEN_FDS} says so"
        )));
    }
    // SAFETY: fd is open (checked above), systemd handed it to this process, and
    // it is wrapped exactly once, so the OwnedFd is its only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let kind = getsockopt(&owned, sockopt::SockType)
        .map_err(|_| Error::Socket(format!("fd {fd} is not a socket")))?;
    if kind != SockType::Stream {
        return Err(Error::Socket(format!(
            "fd {fd} is a {kind:?} socket; sockhook needs a stream socket (ListenStream=)"
        )));
    }
    let family = getsockname::<SockaddrStorage>(owned.as_raw_fd())
        .ok()
        .and_then(|addr| addr.family());
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| Error::system(format!("set close-on-exec on fd {fd}"), e.into()))?;
    let listening = getsockopt(&owned, sockopt::AcceptConn)
        .map_err(|e| Error::system(format!("read SO_ACCEPTCONN of fd {fd}"), e.into()))?;
    Ok(match (family, listening) {
        (Some(AddressFamily::Inet | AddressFamily::Inet6), true) => {
            Adopted::Listener(Listener::Tcp(owned.into()))
        }
        (Some(AddressFamily::Inet | AddressFamily::Inet6), false) => {
            Adopted::Connection(Stream::Tcp(owned.into()))
        }
        (Some(AddressFamily::Unix), true) => Adopted::Listener(Listener::Unix(owned.into())),
        (Some(AddressFamily::Unix), false) => Adopted::Connection(Stream::Unix(owned.into())),
        (other, _) => {
            return Err(Error::Socket(format!(
                "fd {fd} is a stream socket of family {other:?}; sockhook serves TCP and Unix sockets"
            )));
        }
    })
}

/// Marks every fd above stderr close-on-exec, so that a command inherits
/// nothing but stdin, stdout and stderr — not the sockets, and not whatever
/// sockhook's own parent leaked to it.
#[allow(unsafe_code)]
pub fn close_inherited_on_exec() -> Result<(), Error> {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only changes fd flags.
    let done = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_close_range,
            3,
            u32::MAX,
            nix::libc::CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if done {
        return Ok(());
    }
    // Kernels before 5.11 lack close_range: mark each open fd instead.
    let listing =
        std::fs::read_dir("/proc/self/fd").map_err(|e| Error::system("list /proc/self/fd", e))?;
    let fds: Vec<RawFd> = listing
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // A raw call: the listing's own fd is closed by now, and a BorrowedFd
        // must name an open one.
        // SAFETY: F_SETFD changes only the flags of whatever fd has that number.
        unsafe { nix::libc::fcntl(fd, nix::libc::F_SETFD, nix::libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Binds `addr` (`IP:PORT`) for `--listen` or `--listen-tls` (`option`).
pub fn bind(option: &str, addr: &str) -> Result<Listener, Error> {
    let parsed: SocketAddr = addr.parse().map_err(|_| {
        Error::Usage(format!(
            "--{option} wants IP:PORT such as 127.0.0.1:7777, not {addr:?}"
        ))
    })?;
    TcpListener::bind(parsed)
        .map(Listener::Tcp)
        .map_err(|e| Error::system(format!("bind {parsed}"), e))
}

impl Listener {
    /// Accepts one connection; the new socket is close-on-exec and blocking.
    pub fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
        }
    }

    /// Makes `accept` return `WouldBlock` instead of waiting.
    pub fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(l) => l.set_nonblocking(true),
        }
    }

    /// The local address, for the start-up log line.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp".into(), |a| a.to_string()),
            Listener::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                .unwrap_or_else(|| "unix".into()),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l) => l.as_fd(),
        }
    }
}

impl Stream {
    /// The peer's address; `None` for Unix sockets.
    ///
    /// An IPv4 client of an IPv6 socket (`::ffff:a.b.c.d`) is given as the
    /// IPv4 address it is, for the log, `SOCKHOOK_REMOTE_ADDR` and limits.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            Stream::Tcp(s) => s
                .peer_addr()
                .ok()
                .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port())),
            Stream::Unix(_) => None,
        }
    }

    /// Makes reads and writes return `WouldBlock` instead of waiting.
    pub fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(true),
            Stream::Unix(s) => s.set_nonblocking(true),
        }
    }

    /// Sets the timeout of the next reads; `None` waits forever.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(timeout),
            Stream::Unix(s) => s.set_read_timeout(timeout),
        }
    }

    /// Half-closes: sends FIN once everything written is out, keeps reading possible.
    pub fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::passed_fds;

    #[test]
    fn fd_names_are_split_and_padded() {
        use super::fd_names;
        assert_eq!(fd_names(Some("http:https"), 2), ["http", "https"]);
        assert_eq!(fd_names(Some("https"), 2), ["https", ""]);
        assert_eq!(fd_names(None, 1), [""]);
        assert_eq!(fd_names(Some("a:b:c"), 2), ["a", "b"]);
    }

    #[test]
    fn no_listen_fds_means_no_socket() {
        assert_eq!(passed_fds(None, None, 42).unwrap(), 0);
        assert_eq!(passed_fds(Some("42"), None, 42).unwrap(), 0);
    }

    #[test]
    fn fds_for_this_process_are_counted() {
        assert_eq!(passed_fds(Some("42"), Some("1"), 42).unwrap(), 1);
        assert_eq!(passed_fds(Some("42"), Some("2"), 42).unwrap(), 2);
    }

    #[test]
    fn fds_for_another_process_are_refused() {
        let e = passed_fds(Some("41"), Some("1"), 42).unwrap_err();
        assert!(e.to_string().contains("another process"), "{e}");
    }

    #[test]
    fn missing_listen_pid_is_refused() {
        // listenfd accepts this; sd_listen_fds(3) does not, and neither do we.
        let e = passed_fds(None, Some("1"), 42).unwrap_err();
        assert!(e.to_string().contains("LISTEN_PID is not"), "{e}");
    }

    #[test]
    fn junk_counts_are_refused() {
        assert!(passed_fds(Some("42"), Some("one"), 42).is_err());
        assert!(passed_fds(Some("42"), Some("-1"), 42).is_err());
        assert!(passed_fds(Some("x"), Some("1"), 42).is_err());
    }
}
