//! The PostgreSQL baselines, run on the same machine, in the same process, after the
//! store's runs:
//!
//! - **skip-locked**, the common open-source design (pretix, alf.io): seats and every
//!   general-admission place are rows, locked with `SELECT ... FOR UPDATE SKIP LOCKED`,
//!   then updated, with a hold row and an outbox row: six statements, six round trips.
//! - **best**, what a strong PostgreSQL engineer would write for the same job: one round
//!   trip per hold (a PL/pgSQL function run as one prepared statement), the seat taken
//!   with one conditional `UPDATE`, general admission as the *same* sharded counters the
//!   store uses (the shard capacities are read from the store's pool record), the
//!   per-customer limit as an upsert, a hold row with an expiry index and an outbox row.
//!   It runs twice: with the defaults, and with `commit_delay`/`commit_siblings` set so
//!   that concurrent commits share a WAL flush.
//!
//! Every run, for both designs: connections opened and statements prepared before the
//! clock starts, a `CHECKPOINT` and a `sync` of the disk just before it, the same
//! unmeasured warm-up as the store (one short run of each workload before the first
//! measured one), and afterwards a recount of the raw rows (seat rows, place rows or
//! shard values) against the holds the clients were told about. Between runs the seats
//! and places are freed again, so each run starts from the same venue.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use tokio_postgres::{Client, Statement};

use super::open_loop::{self, OpenLoopResult, Outcome};
use super::{Result_, Workload, progress, record, seat_name, settle_disk, summarize};

/// The bench event's id, as in the store.
const EVENT: &str = "bench-arena";
const POOL: &str = "FLOOR";
/// Places of the skip-locked design's pool: one row each (the best design and the store
/// use the full pool as sharded counters).
const SKIP_LOCKED_PLACES: i64 = 300_000;

/// The two designs, and the tuned variant of the best one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Design {
    SkipLocked,
    Best,
    /// The best design with `commit_delay` (µs) and `commit_siblings` set per connection.
    BestDelayed {
        commit_delay_us: u32,
        commit_siblings: u32,
    },
}

impl Design {
    pub(crate) fn label(&self) -> String {
        match self {
            Design::SkipLocked => "postgres skip-locked".into(),
            Design::Best => "postgres best".into(),
            Design::BestDelayed { commit_delay_us, .. } => {
                format!("postgres best+delay{commit_delay_us}")
            }
        }
    }
}

fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").is_file())
            .collect();
        versions.sort();
        if let Some(v) = versions.pop() {
            return Ok(v);
        }
    }
    bail!("PostgreSQL is not installed; run: apt-get install -y postgresql")
}

/// A PostgreSQL server of our own, in the benchmark's directory; stopped on drop.
pub(crate) struct Postgres {
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Postgres {
    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn start(dir: &Path) -> anyhow::Result<Postgres> {
        let bin = match pg_bin_dir() {
            Ok(b) => b,
            Err(_) if super::is_root() => {
                eprintln!("    installing PostgreSQL (apt-get install -y postgresql)");
                let ok = Command::new("apt-get")
                    .args(["install", "-y", "-q", "postgresql"])
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .status()?
                    .success();
                if !ok {
                    bail!("apt-get install -y postgresql failed");
                }
                pg_bin_dir()?
            }
            Err(e) => return Err(e),
        };
        let data = dir.join("pgdata");
        std::fs::create_dir_all(&data)?;
        let as_postgres = super::is_root();
        if as_postgres {
            // PostgreSQL refuses to run as root: hand the directory to the postgres user.
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir)
                .status()?
                .success();
            if !ok {
                bail!("chown postgres {}", dir.display());
            }
        }
        let port = tessera_bench::free_port()?;
        let pg = Postgres { data, bin, port, as_postgres };
        let out = pg
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&pg.data)
            .output()?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        // Durable like the store (fsync, synchronous commit, full page writes: the store's
        // records carry checksums, PostgreSQL's 8 kB pages need full-page images on a
        // 4 kB-page filesystem). Checkpoints only when asked (before each run), so none
        // lands inside a measurement; no JIT for the short statements.
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=600 -c shared_buffers=1GB -c wal_buffers=64MB -c fsync=on -c synchronous_commit=on -c full_page_writes=on -c max_wal_size=16GB -c checkpoint_timeout=1h -c jit=off -c log_lock_waits=on",
            pg.data.display()
        );
        let log = pg.data.join("server.log");
        let out = pg
            .command("pg_ctl")
            .arg("-D")
            .arg(&pg.data)
            .args(["-o", &opts, "-l"])
            .arg(&log)
            .args(["-w", "start"])
            .output()?;
        if !out.status.success() {
            bail!(
                "pg_ctl start failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Ok(pg)
    }

    async fn connect(&self) -> anyhow::Result<Client> {
        let (client, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
        // The data directory goes with the run; its log is kept for a look afterwards.
        if let Ok(dir) = super::bench_dir() {
            let _ = std::fs::copy(self.data.join("server.log"), dir.join("postgres-last.log"));
        }
    }
}

const SCHEMA: &str = r#"
CREATE TABLE events (event_id text PRIMARY KEY, on_sale boolean NOT NULL,
    max_per_customer int NOT NULL, hold_ttl interval NOT NULL);
CREATE TABLE seats (event_id text, seat_id text, state smallint NOT NULL DEFAULT 0,
    hold_id text, expires_at timestamptz, PRIMARY KEY (event_id, seat_id))
    WITH (fillfactor = 80);
CREATE TABLE ga_places (event_id text, pool_id text, place_id bigint,
    state smallint NOT NULL DEFAULT 0, hold_id text, PRIMARY KEY (event_id, pool_id, place_id));
CREATE INDEX ga_free ON ga_places (event_id, pool_id, place_id) WHERE state = 0;
CREATE TABLE ga_shards (event_id text, pool_id text, shard int, capacity int NOT NULL,
    taken int NOT NULL DEFAULT 0 CHECK (taken <= capacity),
    PRIMARY KEY (event_id, pool_id, shard)) WITH (fillfactor = 50);
CREATE TABLE customer_tallies (event_id text, customer_id text, tickets int NOT NULL,
    PRIMARY KEY (event_id, customer_id));
CREATE TABLE holds (hold_id text PRIMARY KEY, event_id text NOT NULL, customer_id text NOT NULL,
    seat_id text, pool_id text, shard_takes int[], quantity int NOT NULL,
    expires_at timestamptz NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX holds_expiry ON holds (expires_at);
CREATE TABLE outbox (id bigserial PRIMARY KEY, event_id text NOT NULL, body jsonb NOT NULL);

-- One round trip per seat hold: the seat is taken by a conditional UPDATE (a concurrent
-- taker waits for the row and re-checks it), then the limit, the hold and the outbox.
CREATE FUNCTION hold_seat(p_event text, p_seat text, p_hold text, p_customer text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  ev events;
BEGIN
  SELECT * INTO ev FROM events WHERE event_id = p_event;
  IF NOT FOUND OR NOT ev.on_sale THEN RETURN false; END IF;
  UPDATE seats SET state = 1, hold_id = p_hold, expires_at = now() + ev.hold_ttl
   WHERE event_id = p_event AND seat_id = p_seat
     AND (state = 0 OR (state = 1 AND expires_at <= now()));
  IF NOT FOUND THEN RETURN false; END IF;
  INSERT INTO customer_tallies AS t VALUES (p_event, p_customer, 1)
    ON CONFLICT (event_id, customer_id) DO UPDATE SET tickets = t.tickets + 1
    WHERE t.tickets + 1 <= ev.max_per_customer;
  IF NOT FOUND THEN RAISE EXCEPTION 'limit_exceeded'; END IF;
  INSERT INTO holds (hold_id, event_id, customer_id, seat_id, quantity, expires_at)
    VALUES (p_hold, p_event, p_customer, p_seat, 1, now() + ev.hold_ttl);
  INSERT INTO outbox (event_id, body) VALUES (p_event, jsonb_build_object(
    'type', 'seats_held', 'hold_id', p_hold, 'customer_id', p_customer,
    'seats', jsonb_build_array(p_seat), 'quantity', 1, 'expires_at', now() + ev.hold_ttl));
  RETURN true;
END $$;

-- One round trip per general-admission hold, over sharded counters: the client names a
-- shard (round-robin, as the store's inventory does) and takes it if it is free and has
-- room. Otherwise the places are taken from the other shards in shard order. Nothing here
-- ever waits for a row: a waiting UPDATE keeps the row it re-checked locked even when it
-- no longer matches, and holding one shard while waiting for another deadlocks (it did,
-- in the contended workload). Locked shards are skipped instead; when the unlocked ones
-- do not have the room, the hold fails with `sold_out` if the pool has no room left at
-- all, else with `busy`, and the client tries again.
CREATE FUNCTION hold_ga(p_event text, p_pool text, p_qty int, p_hold text, p_customer text,
                        p_shard int)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  ev events;
  takes int[] := '{}';
  wanted int := p_qty;
  room bigint;
  t int;
  r record;
BEGIN
  SELECT * INTO ev FROM events WHERE event_id = p_event;
  IF NOT FOUND OR NOT ev.on_sale THEN RETURN false; END IF;
  SELECT capacity - taken INTO room FROM ga_shards
   WHERE event_id = p_event AND pool_id = p_pool AND shard = p_shard
   FOR UPDATE SKIP LOCKED;
  IF FOUND AND room >= p_qty THEN
    UPDATE ga_shards SET taken = taken + p_qty
     WHERE event_id = p_event AND pool_id = p_pool AND shard = p_shard;
    takes := ARRAY[p_shard, p_qty];
  ELSE
    FOR r IN SELECT shard, capacity - taken AS free FROM ga_shards
              WHERE event_id = p_event AND pool_id = p_pool AND taken < capacity
              ORDER BY shard FOR UPDATE SKIP LOCKED LOOP
      t := least(r.free, wanted);
      UPDATE ga_shards SET taken = taken + t
       WHERE event_id = p_event AND pool_id = p_pool AND shard = r.shard;
      takes := takes || ARRAY[r.shard, t];
      wanted := wanted - t;
      EXIT WHEN wanted = 0;
    END LOOP;
    IF wanted > 0 THEN
      SELECT coalesce(sum(capacity - taken), 0) INTO room FROM ga_shards
       WHERE event_id = p_event AND pool_id = p_pool;
      IF room < wanted THEN RAISE EXCEPTION 'sold_out'; END IF;
      RAISE EXCEPTION 'busy';
    END IF;
  END IF;
  INSERT INTO customer_tallies AS c VALUES (p_event, p_customer, p_qty)
    ON CONFLICT (event_id, customer_id) DO UPDATE SET tickets = c.tickets + p_qty
    WHERE c.tickets + p_qty <= ev.max_per_customer;
  IF NOT FOUND THEN RAISE EXCEPTION 'limit_exceeded'; END IF;
  INSERT INTO holds (hold_id, event_id, customer_id, pool_id, shard_takes, quantity, expires_at)
    VALUES (p_hold, p_event, p_customer, p_pool, takes, p_qty, now() + ev.hold_ttl);
  INSERT INTO outbox (event_id, body) VALUES (p_event, jsonb_build_object(
    'type', 'seats_held', 'hold_id', p_hold, 'customer_id', p_customer, 'pool', p_pool,
    'quantity', p_qty, 'expires_at', now() + ev.hold_ttl));
  RETURN true;
END $$;
"#;

/// One hold request.
pub(crate) enum Req {
    Seat { seat: String },
    Pool { pool: String, quantity: i32, shard: i32 },
}

/// A connection with its statements prepared.
struct Conn {
    db: Client,
    stmts: Stmts,
}

enum Stmts {
    SkipLocked {
        lock_seat: Statement,
        take_seat: Statement,
        lock_places: Statement,
        take_places: Statement,
        insert_hold: Statement,
        insert_outbox: Statement,
    },
    Best {
        hold_seat: Statement,
        hold_ga: Statement,
    },
}

impl Conn {
    async fn open(pg: &Postgres, design: Design) -> anyhow::Result<Conn> {
        let db = pg.connect().await?;
        let stmts = match design {
            Design::SkipLocked => Stmts::SkipLocked {
                lock_seat: db.prepare("SELECT seat_id FROM seats WHERE event_id = $1 AND seat_id = $2 AND state = 0 FOR UPDATE SKIP LOCKED").await?,
                take_seat: db.prepare("UPDATE seats SET state = 1, hold_id = $3, expires_at = now() + interval '10 minutes' WHERE event_id = $1 AND seat_id = $2").await?,
                lock_places: db.prepare("SELECT place_id FROM ga_places WHERE event_id = $1 AND pool_id = $2 AND state = 0 ORDER BY place_id LIMIT $3 FOR UPDATE SKIP LOCKED").await?,
                take_places: db.prepare("UPDATE ga_places SET state = 1, hold_id = $4 WHERE event_id = $1 AND pool_id = $2 AND place_id = ANY($3)").await?,
                insert_hold: db.prepare("INSERT INTO holds (hold_id, event_id, customer_id, seat_id, pool_id, quantity, expires_at) VALUES ($1, $2, $3, $4, $5, $6, now() + interval '10 minutes')").await?,
                insert_outbox: db.prepare("INSERT INTO outbox (event_id, body) VALUES ($1, $2)").await?,
            },
            Design::Best | Design::BestDelayed { .. } => {
                if let Design::BestDelayed { commit_delay_us, commit_siblings } = design {
                    db.batch_execute(&format!(
                        "SET commit_delay = {commit_delay_us}; SET commit_siblings = {commit_siblings}"
                    ))
                    .await?;
                }
                Stmts::Best {
                    hold_seat: db.prepare("SELECT hold_seat($1, $2, $3, $4)").await?,
                    hold_ga: db.prepare("SELECT hold_ga($1, $2, $3, $4, $5, $6)").await?,
                }
            }
        };
        Ok(Conn { db, stmts })
    }

    /// Places one hold; `Ok(false)` when refused (seat taken, not enough places).
    async fn hold(
        &mut self,
        event: &str,
        req: &Req,
        hold_id: &str,
        customer: &str,
    ) -> Result<bool, tokio_postgres::Error> {
        match &self.stmts {
            Stmts::Best { hold_seat, hold_ga } => {
                // The store's retry policy: 200 µs doubling to 50 ms, 100 attempts.
                let mut backoff = Duration::from_micros(200);
                for _ in 0..100 {
                    let row = match req {
                        Req::Seat { seat } => {
                            self.db.query_one(hold_seat, &[&event, seat, &hold_id, &customer]).await
                        }
                        Req::Pool { pool, quantity, shard } => {
                            self.db
                                .query_one(
                                    hold_ga,
                                    &[&event, pool, quantity, &hold_id, &customer, shard],
                                )
                                .await
                        }
                    };
                    match row {
                        Ok(r) => return Ok(r.get::<_, bool>(0)),
                        // Raised after a write, so that the statement's writes roll back.
                        Err(e) if raised(&e, &["sold_out", "limit_exceeded"]) => return Ok(false),
                        // Places are left but in shards others hold right now.
                        Err(e) if raised(&e, &["busy"]) => {
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_millis(50));
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(false)
            }
            Stmts::SkipLocked {
                lock_seat,
                take_seat,
                lock_places,
                take_places,
                insert_hold,
                insert_outbox,
            } => {
                let tx = self.db.transaction().await?;
                let ok = match req {
                    Req::Seat { seat } => {
                        if tx.query_opt(lock_seat, &[&event, seat]).await?.is_some() {
                            tx.execute(take_seat, &[&event, seat, &hold_id]).await?;
                            let none: Option<&str> = None;
                            tx.execute(
                                insert_hold,
                                &[&hold_id, &event, &customer, seat, &none, &1i32],
                            )
                            .await?;
                            true
                        } else {
                            false
                        }
                    }
                    Req::Pool { pool, quantity, .. } => {
                        let rows =
                            tx.query(lock_places, &[&event, pool, &i64::from(*quantity)]).await?;
                        if rows.len() as i32 == *quantity {
                            let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
                            tx.execute(take_places, &[&event, pool, &ids, &hold_id]).await?;
                            let none: Option<&str> = None;
                            tx.execute(
                                insert_hold,
                                &[&hold_id, &event, &customer, &none, pool, quantity],
                            )
                            .await?;
                            true
                        } else {
                            false
                        }
                    }
                };
                if ok {
                    let body = serde_json::json!({"type": "seats_held", "hold_id": hold_id, "customer_id": customer});
                    tx.execute(insert_outbox, &[&event, &body]).await?;
                    tx.commit().await?;
                } else {
                    tx.rollback().await?;
                }
                Ok(ok)
            }
        }
    }
}

/// Whether `e` is one of the functions' own exceptions named in `which`.
fn raised(e: &tokio_postgres::Error, which: &[&str]) -> bool {
    e.as_db_error().is_some_and(|d| {
        d.code() == &tokio_postgres::error::SqlState::RAISE_EXCEPTION
            && which.contains(&d.message())
    })
}

/// What a client was told it holds, for the recount.
#[derive(Default)]
struct Acked {
    /// (seat, hold) of every acknowledged seat hold.
    seats: Vec<(String, String)>,
    /// Places of every acknowledged general-admission hold.
    places: u64,
    holds: u64,
}

/// The PostgreSQL side of the benchmark: one server, loaded once.
pub(crate) struct PgBench {
    pg: Postgres,
    admin: Client,
    /// Seat names of the bench venue in the order clients take them (a seeded permutation,
    /// the same as the store's).
    order: Arc<Vec<String>>,
    shards: usize,
    run_no: AtomicU64,
}

/// Figures of one contended round.
#[derive(Debug, Default, Clone)]
pub(crate) struct Contended {
    pub(crate) seat_holds: u64,
    pub(crate) places: u64,
    pub(crate) refused: u64,
    pub(crate) errors: u64,
    pub(crate) oversold: u64,
    pub(crate) elapsed: Duration,
}

impl PgBench {
    /// Starts the server and loads the venue: `order` names every seat (in the order the
    /// clients take them), `shard_capacity` is the store's split of the 1,000,000-place
    /// pool over its shards.
    pub(crate) async fn setup(
        dir: &Path,
        order: Vec<String>,
        shard_capacity: &[u32],
    ) -> anyhow::Result<PgBench> {
        let pg = Postgres::start(dir)?;
        let admin = pg.connect().await?;
        let started = Instant::now();
        admin.batch_execute(SCHEMA).await.context("create the PostgreSQL schema")?;
        admin
            .execute("INSERT INTO events VALUES ($1, true, 6, interval '10 minutes')", &[&EVENT])
            .await?;
        admin
            .execute(
                "INSERT INTO seats (event_id, seat_id) SELECT $1, unnest($2::text[])",
                &[&EVENT, &order],
            )
            .await?;
        admin
            .execute(
                "INSERT INTO ga_places (event_id, pool_id, place_id) SELECT $1, $2, n FROM generate_series(1, $3::bigint) AS n",
                &[&EVENT, &POOL, &SKIP_LOCKED_PLACES],
            )
            .await?;
        load_shards(&admin, EVENT, POOL, shard_capacity).await?;
        admin.batch_execute("VACUUM ANALYZE").await?;
        eprintln!(
            "    loaded {} seats, {SKIP_LOCKED_PLACES} place rows and {} pool shards in {:.1?}",
            order.len(),
            shard_capacity.len(),
            started.elapsed()
        );
        Ok(PgBench {
            pg,
            admin,
            order: Arc::new(order),
            shards: shard_capacity.len(),
            run_no: AtomicU64::new(0),
        })
    }

    /// Frees every seat and place again, so the next run starts from the same venue.
    async fn reset(&self) -> anyhow::Result<()> {
        self.admin
            .batch_execute(
                "UPDATE seats SET state = 0, hold_id = NULL, expires_at = NULL WHERE state <> 0;
                 UPDATE ga_places SET state = 0, hold_id = NULL WHERE state <> 0;
                 UPDATE ga_shards SET taken = 0 WHERE taken <> 0;",
            )
            .await?;
        // On its own: VACUUM cannot run inside the implicit transaction of a batch.
        self.admin.batch_execute("VACUUM ANALYZE seats, ga_places, ga_shards").await?;
        Ok(())
    }

    /// A checkpoint (dirty pages and WAL written out), then a `sync` of the whole disk.
    async fn quiesce(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        self.admin.batch_execute("CHECKPOINT").await?;
        eprintln!("    CHECKPOINT in {:.1?}", started.elapsed());
        settle_disk();
        Ok(())
    }

    async fn connections(&self, design: Design, n: usize) -> anyhow::Result<Vec<Conn>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(Conn::open(&self.pg, design).await?);
        }
        Ok(out)
    }

    /// One unmeasured run of each workload at `clients`, then the venue is reset.
    pub(crate) async fn warm_up(
        &self,
        design: Design,
        clients: usize,
        seconds: u64,
    ) -> anyhow::Result<()> {
        eprintln!("    warm-up of {} ({seconds} s per workload, not counted)", design.label());
        for w in [Workload::Uniform, Workload::Ga] {
            let conns = self.connections(design, clients).await?;
            let (r, _) = self.drive(design, w, conns, seconds).await?;
            eprintln!("    warm-up {}: {:.0} holds/s", w.name(), r.per_s());
        }
        self.reset().await
    }

    /// A closed-loop run: `clients` connections each holding as fast as answers come, for
    /// `seconds`. Returns the figures and the recount's discrepancies (0 when every
    /// acknowledged hold is in the raw rows and nothing else is).
    pub(crate) async fn closed(
        &self,
        design: Design,
        workload: Workload,
        clients: usize,
        seconds: u64,
    ) -> anyhow::Result<(Result_, u64)> {
        let conns = self.connections(design, clients).await?;
        self.quiesce().await?;
        let (r, acked) = self.drive(design, workload, conns, seconds).await?;
        let oversold = self.recount(design, workload, EVENT, POOL, &acked, None).await?;
        self.reset().await?;
        Ok((r, oversold))
    }

    async fn drive(
        &self,
        design: Design,
        workload: Workload,
        conns: Vec<Conn>,
        seconds: u64,
    ) -> anyhow::Result<(Result_, Acked)> {
        let clients = conns.len();
        let run = self.run_no.fetch_add(1, Ordering::Relaxed);
        let cursor = Arc::new(AtomicUsize::new(0));
        let next_shard = Arc::new(AtomicUsize::new(0));
        let holds = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let deadline = started + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for (c, mut conn) in conns.into_iter().enumerate() {
            let (order, cursor, next_shard, holds, refused) = (
                self.order.clone(),
                cursor.clone(),
                next_shard.clone(),
                holds.clone(),
                refused.clone(),
            );
            let shards = self.shards;
            tasks.push(tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                let mut acked = Acked::default();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let req = match workload {
                        Workload::Uniform => {
                            let Some(seat) = order.get(cursor.fetch_add(1, Ordering::Relaxed))
                            else {
                                break;
                            };
                            Req::Seat { seat: seat.clone() }
                        }
                        Workload::Ga => Req::Pool {
                            pool: POOL.into(),
                            quantity: 1 + (i % 2) as i32,
                            shard: (next_shard.fetch_add(1, Ordering::Relaxed) % shards) as i32,
                        },
                    };
                    let hold_id = format!("h{run}-{c}-{i}");
                    let customer = format!("c{run}-{c}-{i}");
                    i += 1;
                    let t = Instant::now();
                    if conn.hold(EVENT, &req, &hold_id, &customer).await? {
                        record(&mut hist, t);
                        holds.fetch_add(1, Ordering::Relaxed);
                        acked.note(&req, hold_id);
                    } else {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                anyhow::Ok((hist, acked))
            }));
        }
        let ticker = progress(holds.clone(), started);
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut acked = Acked::default();
        let mut failed = None;
        for t in tasks {
            match t.await? {
                Ok((h, a)) => {
                    hist.add(h)?;
                    acked.merge(a);
                }
                Err(e) => failed = Some(e),
            }
        }
        ticker.abort();
        if let Some(e) = failed {
            return Err(e.context(format!("{} {} hold failed", design.label(), workload.name())));
        }
        Ok((
            summarize(
                &hist,
                holds.load(Ordering::Relaxed),
                refused.load(Ordering::Relaxed),
                started.elapsed(),
                clients,
            ),
            acked,
        ))
    }

    /// Recounts the raw rows of `event` against what the clients were told. Counts every
    /// discrepancy: an acknowledged seat hold whose seat row names another hold (the seat
    /// went twice), held seat rows no acknowledgement explains, places taken that differ
    /// from the places acknowledged, or more taken than there is.
    async fn recount(
        &self,
        design: Design,
        workload: Workload,
        event: &str,
        pool: &str,
        acked: &Acked,
        capacity: Option<(u64, u64)>,
    ) -> anyhow::Result<u64> {
        let mut bad = 0u64;
        let label = design.label();
        match workload {
            Workload::Uniform => {
                let rows = self
                    .admin
                    .query(
                        "SELECT seat_id, hold_id FROM seats WHERE event_id = $1 AND state = 1",
                        &[&event],
                    )
                    .await?;
                let owner: HashMap<String, String> =
                    rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                let mut wrong = 0u64;
                for (seat, hold) in &acked.seats {
                    if owner.get(seat) != Some(hold) {
                        wrong += 1;
                    }
                }
                let unexplained = (owner.len() as u64).saturating_sub(acked.seats.len() as u64);
                if wrong + unexplained > 0 {
                    eprintln!(
                        "    MISMATCH ({label}, {event}): {} seat rows held, {} seat holds acknowledged, {wrong} acknowledged holds not on their seat's row",
                        owner.len(),
                        acked.seats.len()
                    );
                }
                bad += wrong + unexplained;
                if let Some((seats, _)) = capacity
                    && acked.seats.len() as u64 > seats
                {
                    eprintln!(
                        "    MISMATCH ({label}, {event}): {} seat holds acknowledged for {seats} seats",
                        acked.seats.len()
                    );
                    bad += acked.seats.len() as u64 - seats;
                }
            }
            Workload::Ga => {
                let (taken, over) = match design {
                    Design::SkipLocked => {
                        let row = self
                            .admin
                            .query_one(
                                "SELECT count(*) FROM ga_places WHERE event_id = $1 AND pool_id = $2 AND state = 1",
                                &[&event, &pool],
                            )
                            .await?;
                        (row.get::<_, i64>(0) as u64, 0u64)
                    }
                    _ => {
                        let rows = self
                            .admin
                            .query(
                                "SELECT capacity, taken FROM ga_shards WHERE event_id = $1 AND pool_id = $2",
                                &[&event, &pool],
                            )
                            .await?;
                        let mut taken = 0u64;
                        let mut over = 0u64;
                        for r in rows {
                            let (cap, t): (i32, i32) = (r.get(0), r.get(1));
                            taken += t.max(0) as u64;
                            over += (t - cap).max(0) as u64;
                        }
                        (taken, over)
                    }
                };
                let mut more = over;
                if taken != acked.places {
                    more += taken.abs_diff(acked.places);
                }
                if let Some((_, places)) = capacity
                    && acked.places > places
                {
                    more += acked.places - places;
                }
                if more > 0 {
                    eprintln!(
                        "    MISMATCH ({label}, {event}): {taken} places taken in the raw rows, {} acknowledged, {over} past a shard's capacity",
                        acked.places
                    );
                }
                bad += more;
            }
        }
        Ok(bad)
    }

    /// Open loop: `rate_per_s` holds offered for `seconds` to `clients` connections (a
    /// request waits for a free connection, and that wait counts).
    pub(crate) async fn open(
        &self,
        design: Design,
        workload: Workload,
        clients: usize,
        rate_per_s: f64,
        seconds: u64,
    ) -> anyhow::Result<(OpenLoopResult, u64)> {
        type Job = (u64, tokio::sync::oneshot::Sender<(Outcome, Option<(Req, String)>)>);
        let conns = self.connections(design, clients).await?;
        self.quiesce().await?;
        let run = self.run_no.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let mut workers = Vec::new();
        let (order, shards) = (self.order.clone(), self.shards);
        for mut conn in conns {
            let (rx, order) = (rx.clone(), order.clone());
            workers.push(tokio::spawn(async move {
                loop {
                    let job = rx.lock().await.recv().await;
                    let Some((i, reply)) = job else { break };
                    let req = match workload {
                        Workload::Uniform => match order.get(i as usize) {
                            Some(seat) => Req::Seat { seat: seat.clone() },
                            None => {
                                let _ = reply.send((Outcome::Error, None));
                                continue;
                            }
                        },
                        Workload::Ga => Req::Pool {
                            pool: POOL.into(),
                            quantity: 1 + (i % 2) as i32,
                            shard: (i as usize % shards) as i32,
                        },
                    };
                    let hold_id = format!("h{run}-o{i}");
                    let customer = format!("c{run}-o{i}");
                    let outcome = match conn.hold(EVENT, &req, &hold_id, &customer).await {
                        Ok(true) => (Outcome::Held, Some((req, hold_id))),
                        Ok(false) => (Outcome::Refused, None),
                        Err(e) => {
                            eprintln!("    hold failed: {e}");
                            (Outcome::Error, None)
                        }
                    };
                    let _ = reply.send(outcome);
                }
            }));
        }
        let acked = Arc::new(parking_lot::Mutex::new(Acked::default()));
        let result = open_loop::run(rate_per_s, seconds, 1_000_000, |i| {
            let (tx, acked) = (tx.clone(), acked.clone());
            async move {
                let (otx, orx) = tokio::sync::oneshot::channel();
                if tx.send((i, otx)).is_err() {
                    return Outcome::Error;
                }
                match orx.await {
                    Ok((outcome, held)) => {
                        if let Some((req, hold_id)) = held {
                            acked.lock().note(&req, hold_id);
                        }
                        outcome
                    }
                    Err(_) => Outcome::Error,
                }
            }
        })
        .await?;
        drop(tx);
        for w in workers {
            w.await?;
        }
        let acked = std::mem::take(&mut *acked.lock());
        let oversold = self.recount(design, workload, EVENT, POOL, &acked, None).await?;
        self.reset().await?;
        Ok((result, oversold))
    }

    /// The contended workload: `clients` connections race for the `seats` seats and the
    /// `shard_capacity` pool of a fresh small event. Each client tries the seats in its own
    /// random order until one is its own or all are gone, then holds 1-2 places at a time
    /// until the pool is sold out. Then the raw rows are recounted.
    pub(crate) async fn contended(
        &self,
        design: Design,
        round: usize,
        clients: usize,
        seats: &[String],
        shard_capacity: &[u32],
    ) -> anyhow::Result<Contended> {
        let event = format!("contended-{}-{round}", self.run_no.fetch_add(1, Ordering::Relaxed));
        let pool = "SMALL";
        let places: u32 = shard_capacity.iter().sum();
        self.admin
            .execute("INSERT INTO events VALUES ($1, true, 6, interval '10 minutes')", &[&event])
            .await?;
        self.admin
            .execute(
                "INSERT INTO seats (event_id, seat_id) SELECT $1, unnest($2::text[])",
                &[&event, &seats],
            )
            .await?;
        self.admin
            .execute(
                "INSERT INTO ga_places (event_id, pool_id, place_id) SELECT $1, $2, n FROM generate_series(1, $3::bigint) AS n",
                &[&event, &pool, &i64::from(places)],
            )
            .await?;
        load_shards(&self.admin, &event, pool, shard_capacity).await?;
        let conns = self.connections(design, clients).await?;
        let seats = Arc::new(seats.to_vec());
        let next_shard = Arc::new(AtomicUsize::new(0));
        let shards = shard_capacity.len();
        let started = Instant::now();
        let gate = Arc::new(tokio::sync::Barrier::new(clients));
        let mut tasks = Vec::new();
        for (c, mut conn) in conns.into_iter().enumerate() {
            let (event, seats, next_shard, gate) =
                (event.clone(), seats.clone(), next_shard.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                // What this client was told, kept whatever happens after.
                let mut acked = Acked::default();
                let mut refused = 0u64;
                let mut mine: Vec<usize> = (0..seats.len()).collect();
                shuffle(&mut mine, (round * 1_000_003 + c) as u64);
                gate.wait().await;
                let mut i = 0;
                for s in mine {
                    let req = Req::Seat { seat: seats[s].clone() };
                    let hold_id = format!("{event}-{c}-{i}");
                    i += 1;
                    match conn.hold(&event, &req, &hold_id, &format!("{event}-c{c}-{i}")).await {
                        Ok(true) => {
                            acked.note(&req, hold_id);
                            break;
                        }
                        Ok(false) => refused += 1,
                        Err(e) => return (acked, refused, Some(e)),
                    }
                }
                loop {
                    let req = Req::Pool {
                        pool: pool.into(),
                        quantity: 1 + (c % 2) as i32,
                        shard: (next_shard.fetch_add(1, Ordering::Relaxed) % shards) as i32,
                    };
                    let hold_id = format!("{event}-{c}-{i}");
                    i += 1;
                    match conn.hold(&event, &req, &hold_id, &format!("{event}-c{c}-{i}")).await {
                        Ok(true) => acked.note(&req, hold_id),
                        Ok(false) => {
                            refused += 1;
                            break;
                        }
                        Err(e) => return (acked, refused, Some(e)),
                    }
                }
                (acked, refused, None)
            }));
        }
        let mut acked = Acked::default();
        let mut result = Contended::default();
        for t in tasks {
            let (a, refused, error) = t.await?;
            acked.merge(a);
            result.refused += refused;
            if let Some(e) = error {
                eprintln!("    contended hold failed: {e}");
                result.errors += 1;
            }
        }
        result.elapsed = started.elapsed();
        result.seat_holds = acked.seats.len() as u64;
        result.places = acked.places;
        let capacity = Some((seats.len() as u64, u64::from(places)));
        result.oversold =
            self.recount(design, Workload::Uniform, &event, pool, &acked, capacity).await?
                + self.recount(design, Workload::Ga, &event, pool, &acked, capacity).await?;
        Ok(result)
    }
}

impl Acked {
    fn note(&mut self, req: &Req, hold_id: String) {
        self.holds += 1;
        match req {
            Req::Seat { seat } => self.seats.push((seat.clone(), hold_id)),
            Req::Pool { quantity, .. } => self.places += *quantity as u64,
        }
    }
    fn merge(&mut self, other: Acked) {
        self.seats.extend(other.seats);
        self.places += other.places;
        self.holds += other.holds;
    }
}

async fn load_shards(
    admin: &Client,
    event: &str,
    pool: &str,
    shard_capacity: &[u32],
) -> anyhow::Result<()> {
    let caps: Vec<i32> = shard_capacity.iter().map(|c| *c as i32).collect();
    admin
        .execute(
            "INSERT INTO ga_shards (event_id, pool_id, shard, capacity) SELECT $1, $2, s - 1, c FROM unnest($3::int[]) WITH ORDINALITY AS u(c, s)",
            &[&event, &pool, &caps],
        )
        .await?;
    Ok(())
}

/// A seeded Fisher-Yates shuffle.
pub(crate) fn shuffle<T>(v: &mut [T], seed: u64) {
    use tessera_common::Rng as _;
    let rng = tessera_common::SeededRng::new(seed);
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

/// The seat names of a venue of `sections` sections, in the bench's fixed order.
pub(crate) fn seat_names(order: &[u32]) -> Vec<String> {
    order.iter().map(|n| seat_name(*n)).collect()
}
