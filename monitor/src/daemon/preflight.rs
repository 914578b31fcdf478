//! Checks made before the daemon touches anything: privileges, interfaces, bpffs, another
//! daemon on the same socket or pin path. The pin-path lock taken here is held for the
//! daemon's life.

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    path::Path,
};

use anyhow::{Context as _, Result, bail};

use crate::config::Settings;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

pub fn privileges() -> Result<()> {
    let caps = effective_caps().unwrap_or(0);
    let has = |c: u32| caps & (1 << c) != 0;
    let bpf = has(CAP_BPF) || has(CAP_SYS_ADMIN);
    let perfmon = has(CAP_PERFMON) || has(CAP_SYS_ADMIN);
    if !(bpf && perfmon && has(CAP_NET_ADMIN)) {
        bail!(
            "monitor run needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (see deploy/monitor.service)"
        );
    }
    Ok(())
}

pub fn interfaces(settings: &Settings) -> Result<()> {
    for iface in &settings.ifaces {
        let name = std::ffi::CString::new(iface.as_str()).context("interface name")?;
        // SAFETY: a valid NUL-terminated string.
        if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
            bail!("interface {iface} does not exist (see `ip link`)");
        }
    }
    Ok(())
}

/// The nearest existing ancestor of the pin path must be on bpffs.
pub fn bpffs(pin_path: &Path) -> Result<()> {
    let mut probe = pin_path;
    while !probe.exists() {
        probe = match probe.parent() {
            Some(p) => p,
            None => break,
        };
    }
    let c = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes()).context("pin path")?;
    // SAFETY: statfs writes into the zeroed struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        bail!(
            "pin path {}: {}",
            pin_path.display(),
            io::Error::last_os_error()
        );
    }
    if st.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "pin path {} is not on a bpf filesystem; mount one (`mount -t bpf bpf /sys/fs/bpf`) or choose a path under it",
            pin_path.display()
        );
    }
    Ok(())
}

/// Refuses when something already answers on the socket; removes a stale socket file.
pub fn socket(path: &Path) -> Result<()> {
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => bail!(
            "another monitor daemon is listening on {}; stop it or give this one its own --socket",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        Err(_) => {}
    }
    Ok(())
}

/// The exclusive lock on the pin directory, held while the daemon runs (bpffs directories take
/// `flock`). A stale directory left by a crashed `--persist` daemon is not locked and is
/// adopted.
pub struct PinLock {
    _dir: File,
}

pub fn lock_pin_path(pin_path: &Path) -> Result<PinLock> {
    std::fs::create_dir_all(pin_path)
        .with_context(|| format!("creating the pin directory {}", pin_path.display()))?;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(pin_path)
        .with_context(|| format!("opening the pin directory {}", pin_path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!(
                "another monitor daemon owns the pin path {}; stop it or give this one its own --pin-path",
                pin_path.display()
            );
        }
        return Err(err).context("locking the pin directory");
    }
    Ok(PinLock { _dir: dir })
}

/// Raises this process's open-file soft limit to its hard limit. Every control and metrics
/// connection, map and link is a descriptor; the common soft limit of 1,024 is what let about
/// 990 idle control connections stop the daemon from accepting. Returns the soft limit now in
/// force (None if it could not be read).
pub fn raise_open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        log::warn!(
            "reading the open-file limit failed: {}",
            io::Error::last_os_error()
        );
        return None;
    }
    if lim.rlim_cur >= lim.rlim_max {
        return Some(lim.rlim_cur);
    }
    let old = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        log::warn!(
            "raising the open-file limit from {old} to {} failed: {}",
            lim.rlim_max,
            io::Error::last_os_error()
        );
        return Some(old);
    }
    log::debug!("open-file limit raised from {old} to {}", lim.rlim_max);
    Some(lim.rlim_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_soft_limit_ends_at_the_hard_limit() {
        let soft = raise_open_file_limit().expect("readable limit");
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!((soft, lim.rlim_cur), (lim.rlim_max, lim.rlim_max));
    }
}
