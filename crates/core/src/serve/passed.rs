//! Listening sockets passed in by whoever started the process (systemd's socket
//! activation: fds from 3 on, `LISTEN_FDS` of them, named by `LISTEN_FDNAMES`), so that a
//! port outlives its process: `sluice run --distributed` binds every component's ports
//! once and passes them to each start of the component, and a systemd `.socket` unit can
//! do the same. A passed socket is taken by name ([`crate::serve::listen`]'s port name);
//! the rest are left alone.
//!
//! `LISTEN_PID`, when set, must be this process (listenfd's rule; systemd sets it, and a
//! parent that cannot may leave it out).

use std::net::TcpListener;
use std::sync::LazyLock;

use parking_lot::Mutex;

/// The sockets passed to this process and their names.
struct Passed {
    fds: listenfd::ListenFd,
    names: Vec<String>,
}

static PASSED: LazyLock<Mutex<Passed>> = LazyLock::new(|| {
    Mutex::new(Passed {
        fds: listenfd::ListenFd::from_env(),
        names: names(std::env::var("LISTEN_FDNAMES").ok().as_deref()),
    })
});

/// The names in `LISTEN_FDNAMES`, in fd order.
fn names(var: Option<&str>) -> Vec<String> {
    var.filter(|v| !v.is_empty())
        .map(|v| v.split(':').map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The listening TCP socket passed under `name`, ready for Tokio (non-blocking) and not
/// inherited by this process's own children. `None` when none was passed; an error when
/// the one passed is not a listening TCP socket.
pub fn take(name: &str) -> std::io::Result<Option<TcpListener>> {
    let mut passed = PASSED.lock();
    let Some(index) = passed.names.iter().position(|n| n == name) else {
        return Ok(None);
    };
    let Some(listener) = passed.fds.take_tcp_listener(index)? else {
        return Ok(None);
    };
    listener.set_nonblocking(true)?;
    nix::fcntl::fcntl(
        &listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    Ok(Some(listener))
}

/// The environment that passes `names`' sockets as fds 3, 4, … of a child.
pub fn env(names: &[&str]) -> [(&'static str, String); 2] {
    [
        ("LISTEN_FDS", names.len().to_string()),
        ("LISTEN_FDNAMES", names.join(":")),
    ]
}

/// The variables to remove from a child's environment that is passed no socket.
pub const VARS: [&str; 3] = ["LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_split_on_colons_in_fd_order() {
        assert_eq!(names(Some("serving:metrics")), ["serving", "metrics"]);
        assert!(names(Some("")).is_empty());
        assert!(names(None).is_empty());
    }

    #[test]
    fn no_socket_is_taken_when_none_was_passed() {
        // The test runner passes none.
        assert!(take("serving").expect("no error").is_none());
    }
}
