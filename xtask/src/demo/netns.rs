//! Threads that live in a network namespace: each enters the namespace on itself with
//! `setns(CLONE_NEWNET)` (which affects only the calling thread) and then runs its work, often a
//! current-thread tokio runtime, so every socket it creates belongs to that namespace.

use std::{
    future::Future,
    thread::{self, JoinHandle},
};

use anyhow::Context as _;

/// Starts a thread in namespace `ns` running `f`.
pub fn spawn_in<T, F>(ns: &str, name: &str, f: F) -> anyhow::Result<JoinHandle<anyhow::Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> anyhow::Result<T> + Send + 'static,
{
    let file = devkit::netns::ns_file(ns)?;
    let ns_name = ns.to_string();
    thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            devkit::netns::enter(&file).with_context(|| format!("entering namespace {ns_name}"))?;
            drop(file);
            f()
        })
        .context("spawning a thread")
}

/// Starts a thread in namespace `ns` that runs the future `make()` on a current-thread runtime.
pub fn spawn_async_in<T, Fut, M>(
    ns: &str,
    name: &str,
    make: M,
) -> anyhow::Result<JoinHandle<anyhow::Result<T>>>
where
    T: Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
    M: FnOnce() -> Fut + Send + 'static,
{
    spawn_in(ns, name, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building a tokio runtime")?;
        rt.block_on(make())
    })
}

/// Joins a namespace thread, turning a panic into an error.
pub fn join<T>(handle: JoinHandle<anyhow::Result<T>>) -> anyhow::Result<T> {
    match handle.join() {
        Ok(r) => r,
        Err(_) => anyhow::bail!("a namespace thread panicked"),
    }
}
