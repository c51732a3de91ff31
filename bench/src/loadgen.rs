//! A lean HTTP/1.1 load generator for the edge benchmarks, in the spirit of `wrk`: each
//! connection has one request in flight at a time (no pipelining), requests are written
//! from pre-encoded bytes and responses parsed just enough to find their end
//! (`content-length` or chunked). It runs on its own thread and single-threaded runtime,
//! so the load it adds to the machine is one busy thread, and the figure measured is the
//! server's.
//!
//! - [`closed_loop`]: `connections` clients as fast as they go; requests per second.
//! - [`open_loop`]: requests offered at a fixed rate; latency measured from each request's
//!   intended send time (a request that waits for a free connection waits on the clock,
//!   so queueing shows and coordinated omission does not hide it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// One request, encoded (`GET /path HTTP/1.1\r\nhost: ..\r\n...\r\n\r\n`).
#[derive(Debug, Clone)]
pub struct Encoded(pub Arc<Vec<u8>>);

impl Encoded {
    /// A GET with these headers (`host` is added).
    pub fn get(addr: SocketAddr, path: &str, headers: &[(String, String)]) -> Encoded {
        let mut s = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n");
        for (k, v) in headers {
            s.push_str(k);
            s.push_str(": ");
            s.push_str(v);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        Encoded(Arc::new(s.into_bytes()))
    }
}

/// The outcome of one run.
#[derive(Debug, Clone)]
pub struct Run {
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency_us: hdrhistogram::Histogram<u64>,
    /// The first non-200 answer or transport error seen, for the report.
    pub first_error: Option<String>,
}

impl Run {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

/// A keep-alive connection that sends one request and reads one response at a time.
struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        Conn { addr, stream: None, buf: Vec::with_capacity(64 << 10) }
    }

    /// Sends `req` and reads the whole response; returns its status.
    async fn call(&mut self, req: &[u8]) -> anyhow::Result<u16> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).await.context("connect")?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        let result = self.exchange(req).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn exchange(&mut self, req: &[u8]) -> anyhow::Result<u16> {
        let Some(stream) = self.stream.as_mut() else { bail!("not connected") };
        stream.write_all(req).await?;
        self.buf.clear();
        // Read the head.
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if stream.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed before the response head");
            }
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).context("response head")?;
        let status: u16 =
            head.get(9..12).and_then(|s| s.parse().ok()).context("response status line")?;
        let mut length = None;
        let mut chunked = false;
        let mut close = false;
        for line in head.split("\r\n").skip(1) {
            let Some((k, v)) = line.split_once(':') else { continue };
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                length = v.parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.eq_ignore_ascii_case("chunked");
            } else if k.eq_ignore_ascii_case("connection") {
                close = v.eq_ignore_ascii_case("close");
            }
        }
        let mut pos = head_end;
        if chunked {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf[pos..], b"\r\n") {
                        break pos + i;
                    }
                    if stream.read_buf(&mut self.buf).await? == 0 {
                        bail!("connection closed inside a chunked body");
                    }
                };
                let size_text = std::str::from_utf8(&self.buf[pos..line_end])?;
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .context("chunk size")?;
                let need = line_end + 2 + size + 2;
                while self.buf.len() < need {
                    if stream.read_buf(&mut self.buf).await? == 0 {
                        bail!("connection closed inside a chunk");
                    }
                }
                pos = need;
                if size == 0 {
                    break;
                }
            }
        } else {
            let need = head_end + length.unwrap_or(0);
            while self.buf.len() < need {
                if stream.read_buf(&mut self.buf).await? == 0 {
                    bail!("connection closed inside the body");
                }
            }
        }
        if close {
            self.stream = None;
        }
        Ok(status)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn on_own_thread<F, T>(f: F) -> anyhow::Result<T>
where
    F: FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<T>>>>
        + Send
        + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name("loadgen".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(f())
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("load generator panicked"))?
}

/// `connections` clients sending `requests` (round robin per connection) as fast as they
/// are answered, for `warmup` then `duration`. Counts 200s; anything else is an error.
pub fn closed_loop(
    addr: SocketAddr,
    requests: Vec<Encoded>,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Run> {
    on_own_thread(move || {
        Box::pin(async move {
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async move {
                    let counting = Arc::new(AtomicBool::new(false));
                    let stop = Arc::new(AtomicBool::new(false));
                    let ok = Arc::new(AtomicU64::new(0));
                    let errors = Arc::new(AtomicU64::new(0));
                    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
                    let mut tasks = Vec::new();
                    for i in 0..connections {
                        let req = requests[i % requests.len()].clone();
                        let (counting, stop, ok, errors, first_error) = (
                            counting.clone(),
                            stop.clone(),
                            ok.clone(),
                            errors.clone(),
                            first_error.clone(),
                        );
                        tasks.push(tokio::task::spawn_local(async move {
                            let mut conn = Conn::new(addr);
                            while !stop.load(Ordering::Relaxed) {
                                let r = conn.call(&req.0).await;
                                if !counting.load(Ordering::Relaxed) {
                                    continue;
                                }
                                match r {
                                    Ok(200) => {
                                        ok.fetch_add(1, Ordering::Relaxed);
                                    }
                                    other => {
                                        errors.fetch_add(1, Ordering::Relaxed);
                                        let mut e =
                                            first_error.lock().unwrap_or_else(|p| p.into_inner());
                                        if e.is_none() {
                                            *e = Some(match other {
                                                Ok(s) => format!("status {s}"),
                                                Err(err) => format!("{err:#}"),
                                            });
                                        }
                                    }
                                }
                            }
                        }));
                    }
                    tokio::time::sleep(warmup).await;
                    counting.store(true, Ordering::Relaxed);
                    let started = Instant::now();
                    tokio::time::sleep(duration).await;
                    counting.store(false, Ordering::Relaxed);
                    let elapsed = started.elapsed();
                    stop.store(true, Ordering::Relaxed);
                    for t in tasks {
                        let _ = t.await;
                    }
                    let e = first_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    Ok(Run {
                        ok: ok.load(Ordering::Relaxed),
                        errors: errors.load(Ordering::Relaxed),
                        elapsed,
                        latency_us: hdrhistogram::Histogram::new(3)?,
                        first_error: e,
                    })
                })
                .await
        })
    })
}

/// Requests offered at `rate` per second for `warmup` (not recorded) then `duration`, over
/// up to `connections` connections; latency of each from its intended send time.
pub fn open_loop(
    addr: SocketAddr,
    requests: Vec<Encoded>,
    rate: f64,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Run> {
    if rate.is_nan() || rate <= 0.0 {
        bail!("the offered rate must be positive, not {rate}");
    }
    on_own_thread(move || {
        Box::pin(async move {
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async move {
                    let interval = Duration::from_secs_f64(1.0 / rate);
                    let total = warmup + duration;
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, usize, bool)>();
                    // Idle connections take turns waiting for the next due request.
                    let rx = std::rc::Rc::new(tokio::sync::Mutex::new(rx));
                    let hist = std::rc::Rc::new(std::cell::RefCell::new(
                        hdrhistogram::Histogram::<u64>::new(3)?,
                    ));
                    let ok = std::rc::Rc::new(std::cell::Cell::new(0u64));
                    let errors = std::rc::Rc::new(std::cell::Cell::new(0u64));
                    let first_error = std::rc::Rc::new(std::cell::RefCell::new(None::<String>));
                    let mut workers = Vec::new();
                    for _ in 0..connections {
                        let (rx, requests, hist, ok, errors, first_error) = (
                            rx.clone(),
                            requests.clone(),
                            hist.clone(),
                            ok.clone(),
                            errors.clone(),
                            first_error.clone(),
                        );
                        workers.push(tokio::task::spawn_local(async move {
                            let mut conn = Conn::new(addr);
                            loop {
                                let next = rx.lock().await.recv().await;
                                let Some((due, n, record)) = next else { break };
                                let r = conn.call(&requests[n % requests.len()].0).await;
                                if !record {
                                    continue;
                                }
                                match r {
                                    Ok(200) => {
                                        let us = due.elapsed().as_micros() as u64;
                                        let _ = hist.borrow_mut().record(us.max(1));
                                        ok.set(ok.get() + 1);
                                    }
                                    other => {
                                        errors.set(errors.get() + 1);
                                        let mut e = first_error.borrow_mut();
                                        if e.is_none() {
                                            *e = Some(match other {
                                                Ok(s) => format!("status {s}"),
                                                Err(err) => format!("{err:#}"),
                                            });
                                        }
                                    }
                                }
                            }
                        }));
                    }
                    drop(rx);
                    let started = Instant::now();
                    let mut n = 0usize;
                    loop {
                        let due = started + interval.mul_f64(n as f64);
                        let offset = due.duration_since(started);
                        if offset >= total {
                            break;
                        }
                        tokio::time::sleep_until(due.into()).await;
                        let _ = tx.send((due, n, offset >= warmup));
                        n += 1;
                    }
                    drop(tx);
                    for w in workers {
                        let _ = w.await;
                    }
                    let h = hist.borrow().clone();
                    let e = first_error.borrow().clone();
                    Ok(Run {
                        ok: ok.get(),
                        errors: errors.get(),
                        elapsed: duration,
                        latency_us: h,
                        first_error: e,
                    })
                })
                .await
        })
    })
}
