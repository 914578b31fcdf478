//! `cargo xtask demo`: replays a contact-lookup enumeration attack against a lookup service in
//! network namespaces, once without and once with the real `monitor` daemon in front of it,
//! and reports what the attackers got, what legitimate users lost, and what the monitor saw.
//! Owns the run's life cycle: preparing the machine, the world, the runs, the report, the chart,
//! and removing everything it created, also on Ctrl-C or failure.

mod chart;
mod daemon;
mod fleet;
mod http;
mod netns;
mod report;
mod scenario;
mod service;
mod world;

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::sync::watch;

use crate::{setup, util};
use daemon::Daemon;
use report::{LOW_AND_SLOW_STATEMENT, LowAndSlow, Report, RunReport};
use scenario::{Class, Scenario};
use service::PhoneBook;
use world::{Names, Role, World};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    Xdp,
    Tc,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Only {
    With,
    Without,
}

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Seconds per run (the scenario runs twice: without and with the monitor).
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(3..=600))]
    duration: u64,
    /// Seed for the phone book, the addresses and the clients' choices.
    #[arg(long, default_value_t = 6)]
    seed: u64,
    /// Where the monitor attaches on the API host.
    #[arg(long, value_enum, default_value = "xdp")]
    attach: Attach,
    /// Run only one of the two runs.
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// Leave the world and the daemon up afterwards for exploring with the CLI.
    #[arg(long)]
    keep: bool,
    /// Print the report as JSON on stdout (the human report goes to stderr).
    #[arg(long)]
    json: bool,
    /// Build and run the monitor with the release profile.
    #[arg(long)]
    release: bool,
    /// Where to write the chart (default: target/demo/demo.svg).
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Spread the scraper over N API hosts (2 to 10) behind a router running redis-server, and
    /// compare per-host limits with `--fleet` (one limit across every host).
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=10))]
    hosts: Option<u64>,
    /// Remove every world left by `--keep` or by an interrupted run, then exit.
    #[arg(long)]
    teardown: bool,
    /// For measuring other defaults only: an extra `monitor run` argument (repeatable). The
    /// report then says plainly that the monitor did not run with its defaults.
    #[arg(long = "monitor-arg", hide = true, allow_hyphen_values = true)]
    monitor_args: Vec<String>,
}

/// Set by SIGINT/SIGTERM; every stage checks it and unwinds through the normal clean-up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let stop = watch_signals()?;
    if args.teardown {
        return teardown_all();
    }
    setup::run()?;
    let bin = build_monitor(args.release)?;
    check_interrupted()?;
    if let Some(hosts) = args.hosts {
        let dir = target_dir()
            .join("demo")
            .join(format!("fleet-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        let report = fleet::run(
            &bin,
            hosts as usize,
            Duration::from_secs(args.duration.min(60)),
            &dir,
        )?;
        eprintln!("\n{}", report.text());
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        let _ = fs::remove_dir_all(&dir);
        return Ok(());
    }
    sweep_stale();
    let names = Names::new(&std::process::id().to_string());
    clean_up_on_panic(&names);
    let result = run_world(&args, &names, &bin, stop);
    if result.is_err() || !args.keep {
        // Belt and braces: the guards have removed everything already; this catches what a
        // failure between creating something and guarding it could leave.
        world::sweep(&names);
    }
    let report = result?;
    if args.json {
        let json = serde_json::to_string_pretty(&report)?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{json}")?;
    }
    Ok(())
}

/// The workspace builds with `panic = "abort"`, so no destructor runs after a panic (ours or a
/// dependency's). The panic hook still runs before the abort: it removes this run's world.
fn clean_up_on_panic(names: &Names) {
    let names = names.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        eprintln!("demo: removing what this run created before aborting");
        world::sweep(&names);
    }));
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted: everything the demo created has been removed");
    }
    Ok(())
}

/// Catches SIGINT and SIGTERM on a helper thread; returns the watch that tells clients to stop.
fn watch_signals() -> anyhow::Result<watch::Receiver<bool>> {
    let (tx, rx) = watch::channel(false);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                    return;
                }
            };
            rt.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("cannot catch SIGINT/SIGTERM")));
                    return;
                };
                let _ = ready_tx.send(Ok(()));
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    if !INTERRUPTED.swap(true, Ordering::Relaxed) {
                        eprintln!("\ndemo: interrupted, cleaning up ...");
                    }
                    let _ = tx.send(true);
                }
            });
        })?;
    ready_rx.recv().context("the signal thread died")??;
    Ok(rx)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn build_monitor(release: bool) -> anyhow::Result<PathBuf> {
    let mut args = vec!["build", "--package", "monitor", "--bin", "monitor"];
    if release {
        args.push("--release");
    }
    util::step("building the monitor daemon and CLI", || {
        util::run(
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(&args)
                .current_dir(workspace_root()),
        )
    })?;
    let bin = target_dir()
        .join(if release { "release" } else { "debug" })
        .join("monitor");
    if !bin.exists() {
        bail!("the build finished but {} is missing", bin.display());
    }
    Ok(bin)
}

/// Removes what earlier runs left when they were killed outright (their xtask is gone and they
/// were not kept on purpose).
fn sweep_stale() {
    for id in world::known_runs() {
        let names = Names::new(&id);
        if !world::run_in_use(&names) {
            eprintln!("demo: removing what an earlier, interrupted run {id} left behind");
            world::sweep(&names);
        }
    }
}

fn teardown_all() -> anyhow::Result<()> {
    let mut n = 0;
    for id in world::known_runs() {
        let names = Names::new(&id);
        let live_xtask =
            id.parse().is_ok_and(world::pid_alive) && id != std::process::id().to_string();
        if live_xtask && !names.run_dir().join("kept").exists() {
            eprintln!("demo: run {id} is still running; leaving it alone");
            continue;
        }
        world::sweep(&names);
        n += 1;
    }
    eprintln!("demo: removed {n} demo world(s)");
    Ok(())
}

struct Ctx<'a> {
    args: &'a DemoArgs,
    names: &'a Names,
    bin: &'a Path,
    book: Arc<PhoneBook>,
    stop: watch::Receiver<bool>,
}

fn run_world(
    args: &DemoArgs,
    names: &Names,
    bin: &Path,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Report> {
    fs::create_dir_all(names.run_dir())
        .with_context(|| format!("creating {}", names.run_dir().display()))?;
    let mut world = util::step(
        "building the world (namespaces, veth pairs, routes)",
        || World::create(names.clone()),
    )?;
    check_interrupted()?;
    let book = Arc::new(PhoneBook::generate(args.seed));

    // The lookup service runs for both runs; its own stop channel ends it at the end.
    let (svc_stop_tx, svc_stop_rx) = watch::channel(false);
    let svc_book = book.clone();
    let service = netns::spawn_async_in(&names.ns(Role::Api), "lookup-service", move || {
        service::serve(world::LOOKUP_PORT, svc_book, svc_stop_rx)
    })?;
    let ctx = Ctx {
        args,
        names,
        bin,
        book,
        stop,
    };
    let result = run_both(&ctx);
    let _ = svc_stop_tx.send(true);
    let svc = netns::join(service);
    let (mut report, daemon) = result?;
    svc.context("the lookup service failed")?;

    if args.keep {
        world.keep();
        fs::write(names.run_dir().join("kept"), "")?;
        report.kept = true;
    }
    let text = report.text();
    if args.json {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
    if args.keep {
        print_keep_help(names, daemon.as_ref());
    }
    if let Some(mut d) = daemon {
        if args.keep {
            d.detach();
        } else {
            d.stop()?;
        }
    }
    Ok(report)
}

fn print_keep_help(names: &Names, daemon: Option<&Daemon>) {
    eprintln!("\nThe world is left up (--keep):");
    for role in Role::ALL {
        eprintln!("  namespace {}", names.ns(role));
    }
    if let Some(d) = daemon {
        eprintln!(
            "  daemon pid {} enforcing on {}/{} (log: {})",
            d.pid().unwrap_or(0),
            names.ns(Role::Api),
            world::API_IFACE,
            d.log.display()
        );
        let s = d.socket.display();
        eprintln!("Explore it with the CLI, for example:");
        eprintln!("  {} --socket {s} top", d.bin.display());
        eprintln!("  {} --socket {s} offenders", d.bin.display());
        eprintln!("  {} --socket {s} stats", d.bin.display());
    }
    eprintln!(
        "The lookup service and the clients ended with the demo; the daemon keeps enforcing and \
         keeps its counters and offender history."
    );
    eprintln!("Tear it all down with:\n  cargo xtask demo --teardown");
}

fn run_both(ctx: &Ctx) -> anyhow::Result<(Report, Option<Daemon>)> {
    let args = ctx.args;
    let mut report = Report {
        attacker_reduction: None,
        attacker_served_reduction: None,
        legit_lost: None,
        legit_lost_without: None,
        chart: None,
        run_id: ctx.names.id.clone(),
        seed: args.seed,
        duration_s: args.duration,
        attach: format!("{:?}", args.attach).to_lowercase(),
        daemon_command: None,
        daemon_defaults: true,
        without: None,
        with: None,
        attackers: Vec::new(),
        attackers_not_in_offenders: Vec::new(),
        time_to_stop: Vec::new(),
        low_and_slow: LowAndSlow {
            sources: 0,
            resolved_without: None,
            resolved_with: None,
            statement: LOW_AND_SLOW_STATEMENT,
        },
        top: None,
        offenders: None,
        stats: None,
        kept: false,
    };
    let mut series = Vec::new();
    let mut daemon = None;
    let duration = Duration::from_secs(args.duration);

    if args.only != Some(Only::With) {
        let (run, tally) = run_once(ctx, "without", None)?;
        report.legit_lost_without = Some(run.legit.dropped);
        report.low_and_slow.resolved_without = Some(run.low_and_slow.resolved);
        series.push(chart::RunSeries {
            title: "without the monitor".into(),
            classes: Class::ALL.map(|c| (c, tally.series(c))).to_vec(),
        });
        report.without = Some(run);
    }
    if args.only != Some(Only::Without) {
        let attach = format!("{:?}", args.attach).to_lowercase();
        let d = util::step(
            "starting the monitor daemon in front of the service",
            || Daemon::start(ctx.bin, ctx.names, &attach, &args.monitor_args),
        )?;
        report.daemon_command = Some(d.command_line());
        report.daemon_defaults = args.monitor_args.is_empty();
        let (run, tally) = run_once(ctx, "with", Some((&d, &mut report)))?;
        report.legit_lost = Some(run.legit.dropped);
        report.low_and_slow.resolved_with = Some(run.low_and_slow.resolved);
        report.time_to_stop = tally
            .units
            .iter()
            .filter(|u| u.class.stoppable_attacker() && (u.group.is_none()))
            .map(|u| u.summary(duration))
            .collect();
        match d.cli(&["offenders"]) {
            Ok(v) => report.offenders = Some(v),
            Err(e) => eprintln!("demo: monitor offenders: {e:#}"),
        }
        match d.cli(&["stats"]) {
            Ok(v) => report.stats = Some(v),
            Err(e) => eprintln!("demo: monitor stats: {e:#}"),
        }
        series.push(chart::RunSeries {
            title: "with the monitor".into(),
            classes: Class::ALL.map(|c| (c, tally.series(c))).to_vec(),
        });
        report.with = Some(run);
        daemon = Some(d);
    }

    // Every source of the loud and distributed scrapers as the monitor keys it by default
    // (the /32s, and the rotating /64); the same for both runs.
    let scenario = Scenario::new(args.seed, duration, &ctx.book);
    report.attackers = scenario
        .tally
        .units
        .iter()
        .filter(|u| u.class.stoppable_attacker() && !u.source.ends_with("/24"))
        .map(|u| u.source.clone())
        .collect();
    report.low_and_slow.sources = scenario
        .tally
        .units
        .iter()
        .filter(|u| u.class == Class::LowAndSlow)
        .count();
    if let Some(off) = &report.offenders {
        report.attackers_not_in_offenders = report::uncovered(&report.attackers, off);
    }
    report.fill_reductions();

    let chart_path = args
        .chart
        .clone()
        .unwrap_or_else(|| target_dir().join("demo").join("demo.svg"));
    if let Some(dir) = chart_path.parent() {
        fs::create_dir_all(dir)?;
    }
    chart::draw(&chart_path, &series)?;
    report.chart = Some(chart_path.display().to_string());
    Ok((report, daemon))
}

/// One run of the scenario; with the monitor, also takes `monitor top` while the attack runs.
fn run_once(
    ctx: &Ctx,
    label: &str,
    monitor: Option<(&Daemon, &mut Report)>,
) -> anyhow::Result<(RunReport, Arc<scenario::Tally>)> {
    check_interrupted()?;
    let args = ctx.args;
    let duration = Duration::from_secs(args.duration);
    eprintln!(
        "demo: run {label} the monitor, {} s (served/dropped per second)",
        args.duration
    );
    let mut scenario = Scenario::new(args.seed, duration, &ctx.book);
    let tally = scenario.tally.clone();
    let start = tally.start;
    let mut threads = Vec::new();
    for class in Class::ALL {
        let run = scenario.take_class(class);
        let stop = ctx.stop.clone();
        threads.push(netns::spawn_async_in(
            &ctx.names.ns(class.role()),
            class.label(),
            move || run.run(start, duration, stop),
        )?);
    }
    let mut monitor = monitor;
    for sec in 1..=args.duration {
        let due = start + Duration::from_secs(sec);
        while Instant::now() < due && !INTERRUPTED.load(Ordering::Relaxed) {
            thread::sleep(
                Duration::from_millis(50).min(due.saturating_duration_since(Instant::now())),
            );
        }
        if INTERRUPTED.load(Ordering::Relaxed) {
            break;
        }
        let s = (sec - 1) as usize;
        let cells: Vec<String> = Class::ALL
            .iter()
            .map(|&c| {
                let (served, dropped) = tally.second(c, s);
                format!("{} {served:>5}/{dropped:<4}", c.label())
            })
            .collect();
        eprintln!("  [{label:>7}] {sec:>3}s  {}", cells.join("  "));
        // `monitor top` shows live rates: take it near the end, while the attack still runs.
        if sec + 2 == args.duration
            && let Some((d, report)) = monitor.as_mut()
        {
            match d.cli(&["top"]) {
                Ok(v) => report.top = Some(v),
                Err(e) => eprintln!("demo: monitor top: {e:#}"),
            }
        }
    }
    let mut first_err = None;
    for t in threads {
        if let Err(e) = netns::join(t) {
            first_err.get_or_insert(e);
        }
    }
    check_interrupted()?;
    if let Some(e) = first_err {
        return Err(e.context(format!("the {label} run")));
    }
    let mut run = RunReport::default();
    for class in Class::ALL {
        run.set(class, tally.totals(class));
    }
    Ok((run, tally))
}
