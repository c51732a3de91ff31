//! Power loss under load. Two "processes" (two store handles, each with its own threads,
//! as two cores of a machine would have) commit transfers between accounts flat out on a
//! [`PowerLossFs`]; at a random file-system call the power goes, dropping everything not
//! synced; the store is opened again and checked; and again, many times, through log
//! rotations and snapshots (the segments are tiny).
//!
//! After every restart the recovered state must be one the commit order allows:
//! - every commit that was acknowledged is there, at the version it was acknowledged with;
//! - the commits that are there form a prefix of the commit order: their versions run
//!   without a gap up to the store's version (a commit may survive unacknowledged, but
//!   never while one before it is gone);
//! - replaying them in version order from the opening balances, each transfer read exactly
//!   the balances it recorded having read, and the replay ends at the stored balances
//!   (every commit whole or not at all, serializable in version order).
//!
//! With syncing turned off the store acknowledges writes that are only in memory: the
//! harness must then report a lost acknowledged commit, and one test keeps showing that
//! it does.

mod fs;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tessera_store::embedded::{EmbeddedOptions, EmbeddedStore};
use tessera_store::{MutationType, RangeRequest, Store, StoreError, Transaction};

pub(crate) use fs::{Persist, PowerLossFs};

const ACCOUNTS: u16 = 24;
const OPENING_BALANCE: i64 = 1_000;
const CLIENTS: usize = 24;

fn account_key(a: u16) -> Vec<u8> {
    format!("acct/{a:03}").into_bytes()
}

fn record_key(client: usize, seq: u64) -> Vec<u8> {
    format!("xfer/{client:03}/{seq:010}").into_bytes()
}

/// A transfer's record: `[versionstamp 10][from u16][to u16][amount i64][read_from i64]
/// [read_to i64]`, written with the commit's versionstamp filled in by the store.
struct Transfer {
    version: u64,
    index: u16,
    from: u16,
    to: u16,
    amount: i64,
    read_from: i64,
    read_to: i64,
}

impl Transfer {
    fn operand(from: u16, to: u16, amount: i64, read_from: i64, read_to: i64) -> Vec<u8> {
        let mut v = vec![0u8; 10];
        v.extend_from_slice(&from.to_le_bytes());
        v.extend_from_slice(&to.to_le_bytes());
        v.extend_from_slice(&amount.to_le_bytes());
        v.extend_from_slice(&read_from.to_le_bytes());
        v.extend_from_slice(&read_to.to_le_bytes());
        // The placeholder is at offset 0.
        v.extend_from_slice(&0u32.to_le_bytes());
        v
    }

    fn decode(b: &[u8]) -> Option<Transfer> {
        if b.len() != 10 + 2 + 2 + 8 + 8 + 8 {
            return None;
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let i64_at = |i: usize| i64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        Some(Transfer {
            version: u64::from_be_bytes(b[..8].try_into().ok()?),
            index: u16::from_be_bytes([b[8], b[9]]),
            from: u16_at(10),
            to: u16_at(12),
            amount: i64_at(14),
            read_from: i64_at(22),
            read_to: i64_at(30),
        })
    }
}

/// How the run is set up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) persist: Persist,
    pub(crate) sync: bool,
    pub(crate) power_losses: usize,
    pub(crate) seed: u64,
    /// The power goes at a call drawn from `1..=calls_max` after the load starts.
    pub(crate) calls_max: u64,
}

/// What a run saw.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) power_losses: usize,
    pub(crate) acknowledged: usize,
    pub(crate) recovered_commits: usize,
    pub(crate) writes: u64,
    pub(crate) syncs: u64,
    pub(crate) snapshots: u64,
}

fn options(sync: bool) -> EmbeddedOptions {
    // Tiny segments: a rotation, and a snapshot written while commits go on, every few
    // dozen batches.
    EmbeddedOptions { segment_bytes_max: 16 << 10, sync, ..EmbeddedOptions::default() }
}

/// Runs `plan`; `Err` says which property broke, after which power loss.
pub(crate) fn run(plan: Plan) -> Result<Report, String> {
    let fs = PowerLossFs::new(plan.persist, plan.seed);
    let dir = std::path::PathBuf::from("/power-loss/store");
    // Acknowledged commits, over every life of the machine: (client, seq) -> version.
    let acked: Arc<Mutex<HashMap<(usize, u64), u64>>> = Arc::default();
    let mut report = Report::default();
    let mut next_seq = [0u64; CLIENTS];
    // The opening balances, committed (and checked) before the first power loss.
    let setup_version = {
        let rt = runtime();
        let store = EmbeddedStore::open_on(fs.boot(), &dir, options(true))
            .map_err(|e| format!("open: {e}"))?;
        rt.block_on(async {
            let t = store.create_trx().map_err(|e| e.to_string())?;
            for a in 0..ACCOUNTS {
                t.set(&account_key(a), &OPENING_BALANCE.to_le_bytes());
            }
            t.commit().await.map(|i| i.version).map_err(|e| format!("setup: {e}"))
        })?
    };
    for life in 0..=plan.power_losses {
        let started = Instant::now();
        // Recovery and the checks run on a thread of their own: a store that hangs while
        // opening fails the run instead of hanging it.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let boot = fs.boot();
        let (dir2, acked2) = (dir.clone(), acked.lock().clone());
        std::thread::spawn(move || {
            let opened = (|| {
                let a = EmbeddedStore::open_on(boot.clone(), &dir2, options(plan.sync))?;
                let b = EmbeddedStore::open_on(boot, &dir2, options(plan.sync))?;
                Ok::<_, StoreError>([a, b])
            })();
            let result = match opened {
                Err(e) => Err(format!("the store does not open: {}", chain(&e))),
                Ok(stores) => runtime()
                    .block_on(check(&stores[0], setup_version, &acked2))
                    .map(|recovered| (stores, recovered)),
            };
            let _ = done_tx.send(result);
        });
        let (stores, recovered) = match done_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(r) => r.map_err(|e| format!("after power loss {life}: {e}"))?,
            Err(_) => {
                return Err(format!(
                    "after power loss {life}: opening and checking the store took over 60 s"
                ));
            }
        };
        let rt = runtime();
        report.recovered_commits = recovered;
        if life == plan.power_losses {
            break;
        }
        // Load on both "processes" until the power goes.
        let epoch = fs.epoch();
        fs.lose_power_after(1 + fs.random() % plan.calls_max);
        for client in 0..CLIENTS {
            let store = stores[client % 2].clone();
            let acked = acked.clone();
            let first = next_seq[client];
            // Sequence numbers of a life never repeat those of an earlier one.
            next_seq[client] += 1 << 32;
            rt.spawn(transfers(store, client, first, acked));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while fs.epoch() == epoch {
            if Instant::now() > deadline {
                fs.disarm();
                return Err(format!("life {life}: the power never went (no file system calls?)"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // The machine is off: its threads are stuck in the file system for good.
        rt.shutdown_background();
        std::mem::forget(stores);
        report.power_losses += 1;
        eprintln!(
            "power loss {}: {} acknowledged so far, {} commits recovered before it, life {:.0?}",
            life + 1,
            acked.lock().len(),
            recovered,
            started.elapsed()
        );
    }
    let counts = fs.counts();
    report.acknowledged = acked.lock().len();
    report.writes = counts.writes;
    assert_eq!(counts.crashes as usize, report.power_losses, "every power loss was seen");
    report.syncs = counts.syncs;
    report.snapshots = counts.renames;
    Ok(report)
}

/// An error and its causes, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// One client: transfers between random accounts until the machine stops. A transfer of
/// more than the balance moves nothing (so what a transfer did depends on the order).
async fn transfers(
    store: EmbeddedStore,
    client: usize,
    first_seq: u64,
    acked: Arc<Mutex<HashMap<(usize, u64), u64>>>,
) {
    let mut x = (client as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ first_seq;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut seq = first_seq;
    loop {
        let from = (next() % u64::from(ACCOUNTS)) as u16;
        let to = (from + 1 + (next() % u64::from(ACCOUNTS - 1)) as u16) % ACCOUNTS;
        let wanted = 1 + (next() % 300) as i64;
        let Ok(t) = store.create_trx() else { return };
        let balance = |v: Result<Option<tessera_store::Bytes>, StoreError>| {
            v.ok().flatten().and_then(|b| Some(i64::from_le_bytes(b.get(..8)?.try_into().ok()?)))
        };
        let a = balance(t.get(&account_key(from), false).await);
        let b = balance(t.get(&account_key(to), false).await);
        let (Some(a), Some(b)) = (a, b) else { return };
        let amount = if wanted <= a { wanted } else { 0 };
        t.set(&account_key(from), &(a - amount).to_le_bytes());
        t.set(&account_key(to), &(b + amount).to_le_bytes());
        t.atomic_op(
            &record_key(client, seq),
            &Transfer::operand(from, to, amount, a, b),
            MutationType::SetVersionstampedValue,
        );
        match t.commit().await {
            Ok(info) => {
                acked.lock().insert((client, seq), info.version);
            }
            Err(StoreError::Conflict | StoreError::TooOld) => {}
            Err(_) => return,
        }
        seq += 1;
    }
}

/// Checks the recovered state; returns how many transfers it holds.
async fn check(
    store: &EmbeddedStore,
    setup_version: u64,
    acked: &HashMap<(usize, u64), u64>,
) -> Result<usize, String> {
    let t = store.create_trx().map_err(|e| e.to_string())?;
    let rows = t
        .get_range(&RangeRequest::prefix(b"xfer/"), true)
        .await
        .map_err(|e| format!("read transfers: {e}"))?;
    let mut present: HashMap<(usize, u64), Transfer> = HashMap::new();
    for (k, v) in &rows {
        let key = std::str::from_utf8(k).map_err(|_| "a transfer key is not text".to_owned())?;
        let mut parts = key.split('/').skip(1);
        let (Some(c), Some(s)) = (parts.next(), parts.next()) else {
            return Err(format!("bad transfer key {key}"));
        };
        let id = (c.parse().unwrap_or(usize::MAX), s.parse().unwrap_or(u64::MAX));
        let rec = Transfer::decode(v).ok_or_else(|| format!("transfer {key} is garbled"))?;
        present.insert(id, rec);
    }
    // 1. Every acknowledged commit is there, at its version.
    let mut lost: Vec<String> = Vec::new();
    for (id, version) in acked {
        match present.get(id) {
            None => lost.push(format!("{id:?} (version {version})")),
            Some(rec) if rec.version != *version => lost.push(format!(
                "{id:?} was acknowledged at version {version} and is there at {}",
                rec.version
            )),
            Some(_) => {}
        }
    }
    if !lost.is_empty() {
        lost.sort();
        return Err(format!(
            "{} acknowledged commits were lost, e.g. {}",
            lost.len(),
            lost.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    // 2. A prefix of the commit order: versions without a gap up to the store's.
    let mut by_version: BTreeMap<(u64, u16), &Transfer> = BTreeMap::new();
    for rec in present.values() {
        if by_version.insert((rec.version, rec.index), rec).is_some() {
            return Err(format!("two commits carry versionstamp {}/{}", rec.version, rec.index));
        }
    }
    let versions: std::collections::BTreeSet<u64> = by_version.keys().map(|(v, _)| *v).collect();
    let store_version = store.stats().map_err(|e| e.to_string())?.version;
    let mut expect = setup_version + 1;
    for v in &versions {
        if *v != expect {
            return Err(format!(
                "commits of version {expect} are gone while version {v} is there: not a prefix of the commit order"
            ));
        }
        expect += 1;
    }
    if store_version != expect - 1 {
        return Err(format!(
            "the store is at version {store_version}, its last surviving commit at {}",
            expect - 1
        ));
    }
    // 3. Replay in version order.
    let mut balance = vec![OPENING_BALANCE; usize::from(ACCOUNTS)];
    for ((v, i), rec) in &by_version {
        let (f, to) = (usize::from(rec.from), usize::from(rec.to));
        if balance[f] != rec.read_from || balance[to] != rec.read_to {
            return Err(format!(
                "the transfer at {v}/{i} read {} and {} where the commits before it leave {} and {}",
                rec.read_from, rec.read_to, balance[f], balance[to]
            ));
        }
        balance[f] -= rec.amount;
        balance[to] += rec.amount;
    }
    for a in 0..ACCOUNTS {
        let got = t
            .get(&account_key(a), true)
            .await
            .map_err(|e| e.to_string())?
            .map(|b| i64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])));
        if got != Some(balance[usize::from(a)]) {
            return Err(format!(
                "account {a} holds {got:?}, the surviving commits make it {}",
                balance[usize::from(a)]
            ));
        }
    }
    Ok(present.len())
}

fn seed() -> u64 {
    std::env::var("TESSERA_POWER_LOSS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(
        || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        },
    )
}

fn run_and_report(persist: Persist, sync: bool, power_losses: usize) -> Result<Report, String> {
    let seed = seed();
    let plan = Plan { persist, sync, power_losses, seed, calls_max: 20_000 };
    let result = run(plan);
    eprintln!("{plan:?}: {result:?} (TESSERA_POWER_LOSS_SEED={seed} repeats it)");
    result
}

#[test]
fn acknowledged_commits_survive_power_loss_under_load() {
    let r = run_and_report(Persist::Synced, true, 25).unwrap();
    assert_eq!(r.power_losses, 25);
    assert!(r.acknowledged > 5_000, "too little load to mean anything: {r:?}");
    assert!(r.snapshots > 5, "too few log rotations to mean anything: {r:?}");
}

#[test]
fn acknowledged_commits_survive_power_loss_when_unsynced_sectors_land_at_random() {
    let r = run_and_report(Persist::SomeSectors, true, 25).unwrap();
    assert_eq!(r.power_losses, 25);
    assert!(r.acknowledged > 5_000, "too little load to mean anything: {r:?}");
    assert!(r.snapshots > 5, "too few log rotations to mean anything: {r:?}");
}

/// The harness itself must catch a store that acknowledges before syncing.
#[test]
fn without_fsync_the_harness_reports_lost_acknowledged_commits() {
    let err = run_and_report(Persist::Synced, false, 25).expect_err("the loss went unnoticed");
    assert!(err.contains("acknowledged commits were lost"), "{err}");
}
