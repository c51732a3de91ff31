//! A harness ended by a signal takes its children with it.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `pid` is a live process (a zombie waiting for its new parent to reap it counts
/// as dead: it holds no port, file or CPU).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

fn probe_then(signal: &str) -> (Option<i32>, Vec<u32>) {
    let mut probe = Command::new(env!("CARGO_BIN_EXE_reaper-probe"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the probe");
    let mut line = String::new();
    std::io::BufReader::new(probe.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the child's pid");
    let children: Vec<u32> = line.split_whitespace().map(|p| p.parse().expect("a pid")).collect();
    assert_eq!(children.len(), 2, "{line}");
    assert!(children.iter().all(|&c| alive(c)), "the probe's children run before the signal");
    let ok = Command::new("kill").args([signal, &probe.id().to_string()]).status().expect("kill");
    assert!(ok.success());
    let status = probe.wait().expect("wait for the probe");
    (status.code(), children)
}

fn gone_soon(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn sigterm_kills_the_children() {
    let (code, children) = probe_then("-TERM");
    assert_eq!(code, Some(143), "the harness exits 128 + SIGTERM");
    for child in children {
        assert!(gone_soon(child), "child {child} outlived its harness");
    }
}

#[test]
fn sigint_kills_the_children() {
    let (code, children) = probe_then("-INT");
    assert_eq!(code, Some(130), "the harness exits 128 + SIGINT");
    for child in children {
        assert!(gone_soon(child), "child {child} outlived its harness");
    }
}
