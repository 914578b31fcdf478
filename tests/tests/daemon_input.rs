//! Bad input: invalid flags and config values are refused before anything is touched; a
//! second daemon on the same pin path or socket is refused; invalid CIDRs, durations and
//! subcommands, a non-root client and garbage frames each get a one-line error, and the
//! running daemon keeps working.

use std::{path::Path, process::Command, time::Duration};

use tests::{
    daemon::{Daemon, Paths, bin, cli, raw_exchange, run_to_exit},
    netns::Link,
};

const EXIT: Duration = Duration::from_secs(30);

fn one_line(err: &str) -> &str {
    let trimmed = err.trim_end();
    assert_eq!(trimmed.lines().count(), 1, "not one line: {err:?}");
    assert!(trimmed.starts_with("monitor: error: "), "{err:?}");
    trimmed
}

#[test]
fn invalid_flags_and_config_values_are_refused_before_touching_anything() {
    let link = Link::new(&["10.230.0.1/24"]);
    let paths = Paths::new();
    let bad_file = paths.dir.join("bad.toml");
    std::fs::write(&bad_file, "port = [8443]\nburst = \"many\"\n").unwrap();
    let unknown_key = paths.dir.join("unknown.toml");
    std::fs::write(&unknown_key, "port = [8443]\nrat = \"5/s\"\n").unwrap();
    let iface = link.server_if.as_str();
    let file_arg = bad_file.to_str().unwrap();
    let unknown_arg = unknown_key.to_str().unwrap();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["--port", "8443", "--rate", "fast"], 2, "invalid rate"),
        (vec!["--port", "8443", "--attach", "ebpf"], 2, "--attach"),
        (vec!["--port", "0"], 2, "--port"),
        (
            vec!["--port", "8443", "--allow", "10.0.0.1/8"],
            2,
            "host bits",
        ),
        (
            vec!["--port", "8443", "--deny", "300.0.0.0/8"],
            2,
            "invalid CIDR",
        ),
        (
            vec!["--port", "8443", "--ban", "ten"],
            2,
            "invalid duration",
        ),
        (
            vec!["--port", "8443", "--metrics", "localhost"],
            2,
            "--metrics",
        ),
        (
            vec!["--port", "8443", "--v4-prefix", "33"],
            1,
            "v4-prefix 33",
        ),
        (vec!["--port", "8443", "--burst", "0"], 1, "burst 0"),
        (vec!["--port", "8443", "--http-path", "api"], 1, "http-path"),
        (
            vec!["--port", "8443", "--max-sources", "0"],
            1,
            "max-sources",
        ),
        (vec!["--rate", "5/s"], 1, "no --port"),
        (vec!["--config", file_arg], 1, "line 2"),
        (vec!["--config", unknown_arg], 1, "unknown field"),
        (
            vec!["--port", "8443", "--config", "/nonexistent/monitor.toml"],
            1,
            "config file",
        ),
    ];
    let base = paths.run_args();
    for (extra, code, needle) in &cases {
        let mut args = vec!["run", "--iface", iface];
        args.extend(base.iter().map(String::as_str));
        args.extend(extra.iter().copied());
        let (got, err) = run_to_exit(Some(&link.server), &args, EXIT);
        assert_eq!(got, Some(*code), "{extra:?}: {err}");
        assert!(one_line(&err).contains(needle), "{extra:?}: {err}");
        assert!(!paths.pin.exists(), "{extra:?} touched the pin path");
        assert!(!paths.socket.exists(), "{extra:?} created the socket");
    }
    // A missing interface is found before anything is loaded.
    let mut args = vec!["run", "--iface", "nosuch0", "--port", "8443"];
    args.extend(base.iter().map(String::as_str));
    let (got, err) = run_to_exit(Some(&link.server), &args, EXIT);
    assert_eq!(got, Some(1), "{err}");
    assert!(
        one_line(&err).contains("interface nosuch0 does not exist"),
        "{err}"
    );
    assert!(!paths.pin.exists());
    // Without privileges.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin())
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(one_line(&err).contains("needs root"), "{err}");
}

#[test]
fn a_second_daemon_on_the_same_pin_path_or_socket_is_refused() {
    let link = Link::new(&["10.231.0.1/24"]);
    let paths = Paths::new();
    let d = Daemon::start(
        &link.server,
        &link.server_if,
        &paths,
        &["--port", "8443", "--max-sources", "4096"],
    );
    let other = Paths::new();
    let pin = paths.pin.display().to_string();
    let socket = paths.socket.display().to_string();
    let other_socket = other.socket.display().to_string();
    let other_pin = other.pin.display().to_string();
    let iface = link.server_if.as_str();
    let (code, err) = run_to_exit(
        Some(&link.server),
        &[
            "run",
            "--iface",
            iface,
            "--port",
            "8443",
            "--socket",
            &other_socket,
            "--pin-path",
            &pin,
        ],
        EXIT,
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(one_line(&err).contains("owns the pin path"), "{err}");
    let (code, err) = run_to_exit(
        Some(&link.server),
        &[
            "run",
            "--iface",
            iface,
            "--port",
            "8443",
            "--socket",
            &socket,
            "--pin-path",
            &other_pin,
        ],
        EXIT,
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(one_line(&err).contains("listening on"), "{err}");
    assert!(d.cli(&["status"]).is_ok(), "the first daemon was disturbed");
}

#[test]
fn bad_commands_get_one_line_errors_and_the_daemon_keeps_working() {
    let link = Link::new(&["10.232.0.1/24"]);
    let paths = Paths::new();
    let d = Daemon::start(
        &link.server,
        &link.server_if,
        &paths,
        &["--port", "8443", "--max-sources", "4096"],
    );
    let usage: &[&[&str]] = &[
        &["block", "10.0.0.0/33"],
        &["block", "10.0.0.1/8"],
        &["allow", "add", "not-a-cidr"],
        &["deny", "rm", "2001:db8::/129"],
        &["block", "10.0.0.1", "--for", "soon"],
        &["offenders", "--since", "yesterday"],
        &["set", "rate", "lots"],
        &["set", "action", "explode"],
        &["frobnicate"],
        &["top", "--limit", "0"],
        &["top", "--limit", "1001"],
        &["offenders", "--limit", "1001"],
        &["offenders", "--limit", "18446744073709551615"],
    ];
    for args in usage {
        let out = Command::new(bin())
            .arg("--socket")
            .arg(&paths.socket)
            .args(*args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        one_line(&String::from_utf8_lossy(&out.stderr));
    }
    // Refused by the daemon (valid syntax, invalid value).
    for args in [
        &["set", "rate", "0/s"][..],
        &["set", "burst", "0"],
        &["unblock", "203.0.113.9"],
        &["allow", "rm", "203.0.113.0/24"],
        &["set", "port", "rm", "8443"],
    ] {
        let err = d.cli(args).expect_err(&format!("{args:?} must fail"));
        one_line(&err);
    }
    assert_eq!(
        d.json(&["status"])["limits"]["burst"],
        40,
        "a refused set changed the limits"
    );

    // The daemon not running: say so and how to start it.
    let missing = paths.dir.join("nobody-here.sock");
    let err = cli(&missing, &["status"]).unwrap_err();
    assert!(
        one_line(&err).contains("not running") && err.contains("monitor run"),
        "{err}"
    );
    let err = cli(Path::new("/nonexistent/dir/monitor.sock"), &["top"]).unwrap_err();
    assert!(err.contains("not running"), "{err}");

    // A non-root client.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin())
        .arg("--socket")
        .arg(&paths.socket)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(one_line(&err).contains("permission denied"), "{err}");

    // Garbage: not JSON, an oversized length, a truncated frame, random bytes. Each gets an
    // error or a close, and only its own connection is affected.
    let reply = raw_exchange(&paths.socket, b"\x00\x00\x00\x05hello");
    assert!(
        String::from_utf8_lossy(&reply).contains("malformed request"),
        "{reply:?}"
    );
    let reply = raw_exchange(&paths.socket, b"\x7f\xff\xff\xff{}");
    assert!(
        String::from_utf8_lossy(&reply).contains("bad frame"),
        "{reply:?}"
    );
    raw_exchange(&paths.socket, b"\x00\x00\x00\x40{\"command\":");
    let noise: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
    raw_exchange(&paths.socket, &noise);
    let held = std::os::unix::net::UnixStream::connect(&paths.socket).unwrap();
    assert!(
        d.cli(&["status"]).is_ok(),
        "daemon stopped answering after garbage"
    );
    assert!(d.cli(&["set", "burst", "41"]).is_ok());
    assert_eq!(d.json(&["status"])["limits"]["burst"], 41);
    drop(held);
}
