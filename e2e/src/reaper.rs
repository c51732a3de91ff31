//! Children die with the harness. [`Stack`](crate::stack::Stack) stops its processes when it
//! is dropped, but a harness ended by a signal (Ctrl-C, `timeout`'s SIGTERM, a CI runner
//! cancelling a job) never runs its destructors, and its NATS servers and cores would keep
//! their ports and files. Every child the harness starts is registered here; the first
//! registration starts one watcher thread that, on SIGINT, SIGTERM or SIGHUP, kills every
//! registered child and every other direct child of the process (the NATS servers
//! `tessera-bus` starts), then exits with the conventional `128 + signal` status.
//!
//! SIGKILL cannot be caught; a harness killed that way still leaves its children (Linux's
//! parent-death signal would need `unsafe` at spawn, which the workspace denies).

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Mutex, Once};

static LIVE: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
static WATCHER: Once = Once::new();

/// Starts watching for the signals (once per process): from then on a signal kills every
/// direct child, registered or not.
pub fn arm() {
    WATCHER.call_once(start_watcher);
}

/// Registers a child to be killed if the harness is ended by a signal.
pub fn watch(pid: u32) {
    arm();
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).insert(pid);
}

/// Forgets a child that has been stopped (its pid may be reused).
pub fn release(pid: u32) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
}

/// This process's direct children (from `/proc`): the ones started elsewhere too, such
/// as the NATS servers `tessera-bus` starts for the stack.
fn children() -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().is_some_and(|stat| {
                // pid (comm) state ppid ...: the command may hold spaces and parentheses.
                let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
                after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(me)
            })
        })
        .collect()
}

/// Starts the watcher and returns once its handlers are installed, so a signal that
/// arrives right after the first child starts is already caught.
fn start_watcher() {
    let (ready, installed) = std::sync::mpsc::sync_channel::<()>(1);
    let spawned = std::thread::Builder::new().name("reaper".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("reaper: no runtime ({e}); children may outlive a signal");
                return;
            }
        };
        let signo = rt.block_on(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) else {
                eprintln!("reaper: cannot install signal handlers; children may outlive a signal");
                return None;
            };
            let _ = ready.send(());
            tokio::select! {
                _ = int.recv() => Some(2),
                _ = term.recv() => Some(15),
                _ = hup.recv() => Some(1),
            }
        });
        let Some(signo) = signo else { return };
        let mut pids = LIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
        pids.extend(children());
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        eprintln!("signal {signo}: stopping {} child process(es)", pids.len());
        if !pids.is_empty() {
            let _ = Command::new("kill").arg("-KILL").args(&pids).status();
        }
        std::process::exit(128 + signo);
    });
    match spawned {
        // Returns early (the sender dropped) when the handlers could not be installed.
        Ok(_) => {
            let _ = installed.recv();
        }
        Err(e) => eprintln!("reaper: no watcher thread ({e}); children may outlive a signal"),
    }
}

/// A child that is killed when this value is dropped (an early return included) or when
/// the harness is ended by a signal.
#[derive(Debug)]
pub struct Reaped(pub std::process::Child);

impl Reaped {
    pub fn new(child: std::process::Child) -> Reaped {
        watch(child.id());
        Reaped(child)
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        release(self.0.id());
    }
}
