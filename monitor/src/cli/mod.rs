//! The command line: clap definitions for `monitor run` and the control subcommands, the
//! dispatch, and one-line errors with distinct exit codes (2 for usage, 1 for everything else).

mod output;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, error::ErrorKind};

use crate::{
    cidr::Cidr,
    config::{Action, CountMode, DEFAULT_SOCKET, Layer},
    proto::{ListName, MAX_OFFENDER_ROWS, MAX_TOP_ROWS, Request, SetRequest, client},
    units::{Rate, parse_duration},
};

/// What `monitor --version` prints after the name: xtask checks for this line to be sure
/// that `target/<profile>/monitor` is the daemon and not some other target's binary.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (kernel-level request limiter: daemon and CLI)"
);

#[derive(Debug, Parser)]
#[command(
    name = "monitor",
    version = VERSION,
    about = "Kernel-level per-source request limiter for API hosts: daemon and control CLI",
    propagate_version = true
)]
pub struct Cli {
    /// The daemon's control socket [default: /run/monitor/monitor.sock].
    #[arg(long, global = true, env = "MONITOR_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    layer: Layer,
    /// TOML file with the same settings (flags win over it); SIGHUP re-reads it.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

fn valid_cidr(s: &str) -> Result<String, String> {
    s.parse::<Cidr>().map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn valid_duration(s: &str) -> Result<String, String> {
    parse_duration(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn valid_rate(s: &str) -> Result<String, String> {
    s.parse::<Rate>().map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

/// A row count between 1 and `max`: above it the reply could outgrow a control frame.
fn rows(max: usize) -> impl clap::builder::TypedValueParser<Value = usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..=max as u64)
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: load and attach the program, serve the control socket.
    Run(Box<RunArgs>),
    /// Attached interfaces, limits, action, uptime and counters.
    Status,
    /// Current sources by request rate, with totals, drops and ban expiry.
    Top {
        /// How many rows (1 to 1000).
        #[arg(long, default_value_t = 20, value_parser = rows(MAX_TOP_ROWS))]
        limit: usize,
        /// Only this level: source or aggregate [default: both].
        #[arg(long, value_parser = ["source", "aggregate"])]
        level: Option<String>,
        /// Fleet-wide rates of the heavy hitters this host published (fleet mode).
        #[arg(long, conflicts_with = "level")]
        fleet: bool,
    },
    /// Fleet mode: whether the Redis link is up, live hosts, last sync, bans applied.
    Fleet,
    /// The offender history (first and last seen, peak rate, drops, bans).
    Offenders {
        /// Only offenders seen within DURATION (e.g. 1h).
        #[arg(long, value_name = "DURATION", value_parser = valid_duration)]
        since: Option<String>,
        /// How many rows (1 to 1000; narrow --since for older ones).
        #[arg(long, default_value_t = 100, value_parser = rows(MAX_OFFENDER_ROWS))]
        limit: usize,
    },
    /// Drop everything from CIDR for a while (a ban when CIDR is exactly one source).
    Block {
        #[arg(value_parser = valid_cidr)]
        cidr: String,
        /// How long [default: 1h].
        #[arg(long = "for", value_name = "DURATION", value_parser = valid_duration)]
        duration: Option<String>,
    },
    /// Lift a block or ban.
    Unblock {
        #[arg(value_parser = valid_cidr)]
        cidr: String,
    },
    /// The allow list: these networks are never limited.
    Allow {
        #[command(subcommand)]
        op: ListOp,
    },
    /// The deny list: these networks are always dropped.
    Deny {
        #[command(subcommand)]
        op: ListOp,
    },
    /// Change a setting live (no reload, no lost state).
    Set {
        #[command(subcommand)]
        what: SetCmd,
    },
    /// The kernel's counters.
    Stats,
    /// Re-read the config file and apply what changed (same as SIGHUP).
    Reload,
}

#[derive(Debug, Subcommand)]
enum ListOp {
    /// Add a CIDR.
    Add {
        #[arg(value_parser = valid_cidr)]
        cidr: String,
        /// Expire the entry after DURATION [default: never].
        #[arg(long = "for", value_name = "DURATION", value_parser = valid_duration)]
        duration: Option<String>,
    },
    /// Remove a CIDR.
    Rm {
        #[arg(value_parser = valid_cidr)]
        cidr: String,
    },
    /// Show the entries.
    List,
}

#[derive(Debug, Subcommand)]
enum SetCmd {
    /// Per-source rate, N/s or N/m.
    Rate {
        #[arg(value_parser = valid_rate)]
        rate: String,
    },
    /// Per-source burst.
    Burst { burst: u64 },
    /// Aggregate rate, N/s or N/m; 0 switches the aggregate level off.
    AggRate {
        #[arg(value_parser = valid_rate)]
        rate: String,
    },
    /// Aggregate burst.
    AggBurst { burst: u64 },
    /// drop or monitor.
    Action { action: Action },
    /// Ban duration for sources going over the limit (0 = no ban).
    Ban {
        #[arg(value_parser = valid_duration)]
        duration: String,
    },
    /// What counts as a request: syn, packets, payload or http.
    Count { mode: CountMode },
    /// Path prefix for --count http ("" = any path).
    HttpPath { prefix: String },
    /// The kernel's event budget: offender events per second across all sources (half of it
    /// reserved for ban starts); withheld events are counted, 0 sends none.
    EventsPerSec { per_sec: u32 },
    /// Add or remove a monitored port.
    Port {
        #[command(subcommand)]
        op: PortOp,
    },
}

#[derive(Debug, Subcommand)]
enum PortOp {
    Add {
        #[arg(value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
    },
    Rm {
        #[arg(value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
    },
}

/// Parses the command line, runs the command, and maps errors to one line and an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    ExitCode::SUCCESS
                }
                _ => {
                    let rendered = e.render().to_string();
                    let first = rendered.lines().next().unwrap_or("invalid arguments");
                    let first = first.strip_prefix("error: ").unwrap_or(first);
                    eprintln!("monitor: error: {first} (see `monitor --help`)");
                    ExitCode::from(2)
                }
            };
        }
    };
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("monitor: error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    let request = match cli.command {
        Command::Run(args) => {
            let RunArgs { layer, config } = *args;
            return crate::daemon::run(layer, cli.socket, config);
        }
        Command::Status => Request::Status,
        Command::Stats => Request::Stats,
        Command::Top {
            limit,
            level,
            fleet,
        } => Request::Top {
            limit,
            level,
            fleet,
        },
        Command::Fleet => Request::Fleet,
        Command::Offenders { since, limit } => Request::Offenders { since, limit },
        Command::Block { cidr, duration } => Request::Block { cidr, duration },
        Command::Unblock { cidr } => Request::Unblock { cidr },
        Command::Allow { op } => list_request(ListName::Allow, op),
        Command::Deny { op } => list_request(ListName::Deny, op),
        Command::Set { what } => Request::Set(match what {
            SetCmd::Rate { rate } => SetRequest::Rate(rate),
            SetCmd::Burst { burst } => SetRequest::Burst(burst),
            SetCmd::AggRate { rate } => SetRequest::AggRate(rate),
            SetCmd::AggBurst { burst } => SetRequest::AggBurst(burst),
            SetCmd::Action { action } => SetRequest::Action(action.to_string()),
            SetCmd::Ban { duration } => SetRequest::Ban(duration),
            SetCmd::Count { mode } => SetRequest::Count(mode.to_string()),
            SetCmd::HttpPath { prefix } => SetRequest::HttpPath(prefix),
            SetCmd::EventsPerSec { per_sec } => SetRequest::EventsPerSec(per_sec),
            SetCmd::Port { op } => match op {
                PortOp::Add { port } => SetRequest::PortAdd(port),
                PortOp::Rm { port } => SetRequest::PortRm(port),
            },
        }),
        Command::Reload => Request::Reload,
    };
    let socket = cli.socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let value = runtime.block_on(client::call(&socket, &request))?;
    output::print(&request, value, cli.json)
}

fn list_request(list: ListName, op: ListOp) -> Request {
    match op {
        ListOp::Add { cidr, duration } => Request::ListAdd {
            list,
            cidr,
            duration,
        },
        ListOp::Rm { cidr } => Request::ListRemove { list, cidr },
        ListOp::List => Request::ListShow { list },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("monitor").chain(args.iter().copied()))
    }

    #[test]
    fn row_counts_above_what_a_frame_holds_are_usage_errors() {
        for (cmd, max) in [("offenders", MAX_OFFENDER_ROWS), ("top", MAX_TOP_ROWS)] {
            assert!(parse(&[cmd, "--limit", &max.to_string()]).is_ok());
            for bad in [
                (max + 1).to_string(),
                "0".to_string(),
                usize::MAX.to_string(),
            ] {
                let err = parse(&[cmd, "--limit", &bad]).expect_err(&bad);
                // Not help or version: `main` maps these to exit code 2.
                assert!(
                    !matches!(
                        err.kind(),
                        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
                    ),
                    "{err}"
                );
                assert!(err.to_string().contains("1..=1000"), "{err}");
            }
        }
    }
}
