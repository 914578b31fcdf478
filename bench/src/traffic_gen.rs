//! The traffic generator: `bench_gen` run with BPF_PROG_TEST_RUN in XDP live-frames mode from
//! a thread pinned to one CPU and moved into the generator namespace, so its redirects leave
//! through the generator-side veth.

use std::{
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{net, sys};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
/// Frames per batch inside one test run (the kernel's maximum is 256).
const BATCH: u32 = 256;

#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// One live-frames run of `count` frames. Returns once the kernel has sent them all.
pub fn live_run(prog: i32, frame: &[u8], count: u32) -> anyhow::Result<()> {
    let mut attr = TestAttr {
        prog_fd: prog as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: count,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: BATCH,
        ..Default::default()
    };
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            size_of::<TestAttr>() as u32,
        )
    };
    if ret < 0 {
        bail!(
            "live-frames BPF_PROG_TEST_RUN: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// What one generator thread did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    pub frames: u64,
    pub secs: f64,
}

impl Sent {
    pub fn pps(&self) -> f64 {
        if self.secs > 0.0 {
            self.frames as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// How a generator thread paces itself.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// One run of this many frames, as fast as the CPU goes.
    Flat(u32),
    /// Runs of `chunk` frames, spaced so the average is `pps`, for `frames` in total.
    Paced { frames: u64, chunk: u32, pps: f64 },
    /// Runs of `chunk` frames back to back until `secs` have passed: threads on several CPUs
    /// then cover the same window, however fast each one is.
    For { secs: f64, chunk: u32 },
}

/// Starts a generator thread on `cpu` inside `netns`.
pub fn spawn(
    prog: &OwnedFd,
    netns: &net::Netns,
    cpu: usize,
    frame: Vec<u8>,
    pace: Pace,
) -> anyhow::Result<thread::JoinHandle<anyhow::Result<Sent>>> {
    let prog = prog.try_clone().context("dup program fd")?;
    let ns = netns.file()?;
    Ok(thread::spawn(move || {
        sys::pin_thread(cpu)?;
        sys::realtime_thread()?;
        net::setns(&ns)?;
        let fd = prog.as_fd().as_raw_fd();
        let start = Instant::now();
        let mut frames = 0u64;
        match pace {
            Pace::Flat(n) => {
                live_run(fd, &frame, n)?;
                frames = n as u64;
            }
            Pace::Paced {
                frames: total,
                chunk,
                pps,
            } => {
                while frames < total {
                    let n = chunk.min((total - frames) as u32);
                    live_run(fd, &frame, n)?;
                    frames += n as u64;
                    let due = Duration::from_secs_f64(frames as f64 / pps);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        thread::sleep(wait);
                    }
                }
            }
            Pace::For { secs, chunk } => {
                while start.elapsed().as_secs_f64() < secs {
                    live_run(fd, &frame, chunk)?;
                    frames += chunk as u64;
                }
            }
        }
        Ok(Sent {
            frames,
            secs: start.elapsed().as_secs_f64(),
        })
    }))
}

/// Runs a few paced frames from a generator thread on each of `cpus`, untimed: the first
/// live-frames runs of a process on a CPU pay one-off setup that would otherwise shorten the
/// first measured run's traffic inside its timed window.
pub fn prime(
    prog: &OwnedFd,
    netns: &net::Netns,
    frame: &[u8],
    cpus: &[usize],
) -> anyhow::Result<()> {
    let handles = cpus
        .iter()
        .map(|&cpu| {
            spawn(
                prog,
                netns,
                cpu,
                frame.to_vec(),
                Pace::Paced {
                    frames: 500,
                    chunk: 10,
                    pps: 2_000.0,
                },
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
    }
    Ok(())
}
