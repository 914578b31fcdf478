//! Network namespaces for tests, the demo and benchmarks. `setns(CLONE_NEWNET)` moves only the
//! calling thread, so code that must create sockets in a namespace runs on a thread that
//! entered it ([`spawn_in`], [`within`]).

use std::{
    fs::File,
    io::Write as _,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread::JoinHandle,
};

use anyhow::{Context as _, bail};

/// Runs a command; its stdout, or an error with its stderr.
pub fn sh(args: &[&str]) -> anyhow::Result<String> {
    let (program, rest) = args.split_first().context("an empty command")?;
    let out = Command::new(program)
        .args(rest)
        .output()
        .with_context(|| format!("could not run `{program}`"))?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip` (iproute2) with `args`; its stdout.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["ip"];
    full.extend_from_slice(args);
    sh(&full)
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, short enough for an interface (15 bytes) with a
/// prefix of up to 4.
pub fn unique(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}{n}", std::process::id() % 100_000)
}

/// `-4` or `-6`, for `ip`, from an address or CIDR.
pub fn family(addr: &str) -> &'static str {
    if addr.contains(':') { "-6" } else { "-4" }
}

/// Where iproute2 keeps the namespace `name`.
pub fn ns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// The namespace's file, for [`enter`].
pub fn ns_file(name: &str) -> anyhow::Result<File> {
    let path = ns_path(name);
    File::open(&path).with_context(|| format!("opening {}", path.display()))
}

/// Moves the calling thread (only it) into the namespace of `file`.
pub fn enter(file: &File) -> anyhow::Result<()> {
    // SAFETY: setns on a descriptor we own; CLONE_NEWNET affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a new thread, named `thread`, that first enters namespace `name` (the thread's
/// sockets live there and interface names resolve there).
pub fn spawn_in<T: Send + 'static>(
    name: &str,
    thread: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<JoinHandle<anyhow::Result<T>>> {
    let file = ns_file(name)?;
    let name = name.to_string();
    std::thread::Builder::new()
        .name(thread.to_string())
        .spawn(move || {
            enter(&file).with_context(|| format!("entering namespace {name}"))?;
            drop(file);
            f()
        })
        .context("spawning a thread")
}

/// [`spawn_in`], waiting for the result (a panic in `f` becomes an error).
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    spawn_in(name, &format!("in-{name}"), f)?
        .join()
        .map_err(|_| anyhow::anyhow!("a thread inside namespace {name} panicked"))?
}

/// Runs `f` with the calling thread inside namespace `name`, then moves it back.
pub fn within<T>(name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let home = File::open("/proc/thread-self/ns/net").context("opening this thread's netns")?;
    enter(&ns_file(name)?)?;
    let r = f();
    enter(&home).context("returning to the original netns")?;
    r
}

/// Adds namespace `name` with its loopback up.
pub fn add(name: &str) -> anyhow::Result<()> {
    ip(&["netns", "add", name])?;
    ip(&["-n", name, "link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes namespace `name` (with every interface, program and rule inside it).
pub fn del(name: &str) -> anyhow::Result<()> {
    ip(&["netns", "del", name]).map(drop)
}

/// Namespaces whose name starts with `prefix`.
pub fn list_with_prefix(prefix: &str) -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// A veth pair, `if_a` in `ns_a` and `if_b` in `ns_b`, both up.
pub fn veth(ns_a: &str, if_a: &str, ns_b: &str, if_b: &str) -> anyhow::Result<()> {
    ip(&[
        "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b,
    ])?;
    ip(&["-n", ns_a, "link", "set", if_a, "up"])?;
    ip(&["-n", ns_b, "link", "set", if_b, "up"])?;
    Ok(())
}

/// Adds `cidr` to `ifname` in `ns`. IPv6 addresses skip duplicate address detection, which
/// would hold them back for a second or two.
pub fn add_addr(ns: &str, ifname: &str, cidr: &str) -> anyhow::Result<()> {
    let mut args = vec!["-n", ns, family(cidr), "addr", "add", cidr, "dev", ifname];
    if cidr.contains(':') {
        args.push("nodad");
    }
    ip(&args).map(drop)
}

/// Writes sysctls (paths under /proc/sys, e.g. `net/ipv4/ip_forward`) of namespace `ns`:
/// /proc/sys/net resolves against the writing thread's namespace, so a short-lived thread
/// enters it and writes them.
pub fn sysctls(ns: &str, values: &[(&str, &str)]) -> anyhow::Result<()> {
    let values: Vec<(String, String)> = values
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    run_in(ns, move || {
        for (key, value) in values {
            let path = Path::new("/proc/sys").join(&key);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|mut f| f.write_all(value.as_bytes()))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_fit_an_interface_name() {
        let (a, b) = (unique("vc"), unique("vc"));
        assert_ne!(a, b);
        assert!(a.len() <= 15, "{a}");
    }

    #[test]
    fn a_failing_command_says_what_failed() {
        let err = ip(&["link", "show", "dev", "no-such-interface-x"]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("link show dev no-such-interface-x"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }
}
