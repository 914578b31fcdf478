//! Threads that live in a network namespace: each enters the namespace on itself with
//! `setns(CLONE_NEWNET)` (which affects only the calling thread) and then runs its work, often a
//! current-thread tokio runtime, so every socket it creates belongs to that namespace.
//! (`devkit::netns` does the entering; this adds the demo's async runtime and joining.)

use std::{future::Future, thread::JoinHandle};

use anyhow::Context as _;

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
    devkit::netns::spawn_in(ns, name, move || {
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
