//! tokio_peer: the Tokio column of `bench/compare_native.py`.
//!
//! The scheduler workloads are Tokio's own `benches/rt_multi_threaded.rs` (spawn_many_local,
//! spawn_many_remote_idle/busy1/busy2, ping_pong, yield_many, chained_spawn), re-written as a
//! plain binary that times each iteration itself (no criterion), plus three time / I/O
//! workloads (timers, timer_cancel, tcp_echo) with the same runtime configuration.
//!
//! Each case builds its own multi-thread runtime with `--workers W`, runs one warm-up iteration
//! and `--repetitions N` timed ones, and reports the median in Google Benchmark's JSON shape
//! (`run_type: aggregate`, `aggregate_name: median`, user counter `ns_per_op`) so that
//! compare_native.py reads tideloop, oneTBB and Tokio with one parser. Lower is better.
//!
//! Every iteration runs under a watchdog. Tokio 1.24's LIFO slot never yields to the injector
//! while a task keeps spawning into it, so spawn_many_remote_busy2 never finishes there: when an
//! iteration exceeds `--timeout` the case is reported as `error_occurred` ("did not finish"),
//! the background tasks are told to stop so the runtime can recover, and if it still does not
//! recover the JSON is written and the process exits (a stuck runtime cannot be dropped).

use std::fmt::Write as _;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use regex::Regex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::{Builder, Runtime};
use tokio::sync::oneshot;

// Workload sizes. The scheduler ones are upstream's constants.
const NUM_SPAWN: usize = 10_000;
const NUM_SPAWN_BUSY2: usize = 1_000;
const STALL_DUR: Duration = Duration::from_micros(10);
const NUM_PINGS: usize = 1_000;
const YIELD_TASKS: usize = 200;
const NUM_YIELD: usize = 1_000;
const CHAIN_LEN: usize = 1_000;
const NUM_TIMERS: usize = 100_000;
/// Timer deadlines are spread uniformly over [0, TIMER_WINDOW]; the window itself is not
/// overhead, so it is subtracted before dividing by the number of timers.
const TIMER_WINDOW: Duration = Duration::from_millis(10);
/// Floor for the per-timer overhead so a (theoretically) sub-window run stays positive.
const TIMER_FLOOR_NS_PER_OP: f64 = 0.01;
const NUM_CANCEL: usize = 1_000_000;
const ECHO_CLIENTS: usize = 64;
const ECHO_ROUND_TRIPS: usize = 10_000;
const ECHO_MSG: usize = 1024;
/// After the watchdog fires it stops the background load and waits this long for the
/// iteration to drain before giving up on the process.
const RECOVERY_GRACE: Duration = Duration::from_secs(3);
/// Bound for the heavy I/O / timer cases, which legitimately take seconds on 1 worker.
const LONG_CASE_TIMEOUT: Duration = Duration::from_secs(120);
const TOKIO_VERSION: &str = env!("TOKIO_PEER_TOKIO_VERSION");

// ---------------------------------------------------------------------------------------------
// Command line

struct Options {
    workers: usize,
    filter: Option<Regex>,
    repetitions: usize,
    json: Option<String>,
    scale: f64,
    timeout: Duration,
    min_time: Duration,
    list: bool,
}

const USAGE: &str = "usage: tokio_peer --workers W [--filter REGEX] [--repetitions N] [--json FILE]
                  [--scale F] [--min-time SECS] [--timeout SECS] [--list]
  --workers W      worker threads of the multi-thread runtime (default 2)
  --filter REGEX   run only cases whose name (e.g. spawn_many_local/2) matches
  --repetitions N  timed iterations per case after one warm-up (default 5); the median is reported
  --json FILE      write Google-Benchmark-shaped JSON here (default: stdout)
  --scale F        shrink (or grow) timer_cancel and tcp_echo op counts, 0 < F (default 1,
                   or env TOKIO_PEER_SCALE)
  --min-time SECS  each repetition repeats the iteration for at least this long (default 0.1)
  --timeout SECS   an iteration slower than this is reported as did-not-finish (default 5;
                   timers/timer_cancel/tcp_echo use max(SECS, 120))
  --list           print the case names and exit";

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        workers: 2,
        filter: None,
        repetitions: 5,
        json: None,
        scale: std::env::var("TOKIO_PEER_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0),
        timeout: Duration::from_secs(5),
        min_time: Duration::from_millis(100),
        list: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        // Accept both "--flag value" and "--flag=value".
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline.clone().or_else(|| args.next()).ok_or(format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--workers" | "-w" => {
                o.workers = value("--workers")?.parse().map_err(|e| format!("--workers: {e}"))?
            }
            "--filter" | "--benchmark_filter" => {
                let f = value("--filter")?;
                o.filter = Some(Regex::new(&f).map_err(|e| format!("--filter: {e}"))?);
            }
            "--repetitions" | "-r" => {
                o.repetitions =
                    value("--repetitions")?.parse().map_err(|e| format!("--repetitions: {e}"))?
            }
            "--json" => o.json = Some(value("--json")?),
            "--scale" => o.scale = value("--scale")?.parse().map_err(|e| format!("--scale: {e}"))?,
            "--timeout" => {
                let s: f64 = value("--timeout")?.parse().map_err(|e| format!("--timeout: {e}"))?;
                o.timeout = Duration::from_secs_f64(s);
            }
            "--min-time" => {
                let s: f64 = value("--min-time")?.parse().map_err(|e| format!("--min-time: {e}"))?;
                o.min_time = Duration::from_secs_f64(s);
            }
            "--list" => o.list = true,
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.workers == 0 || o.repetitions == 0 || o.scale.is_nan() || o.scale <= 0.0 {
        return Err("--workers, --repetitions and --scale must be positive".into());
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// Report: Google Benchmark's JSON shape, kept in a global so the watchdog can flush it from its
// own thread when the main thread is stuck inside a runtime that will never return.

struct Report {
    context: String,
    entries: Vec<String>,
    path: Option<String>,
}

static REPORT: Mutex<Option<Report>> = Mutex::new(None);

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "null".into()
    }
}

fn push_entry(entry: String) {
    if let Some(r) = REPORT.lock().unwrap().as_mut() {
        r.entries.push(entry);
    }
}

fn write_report() -> std::io::Result<()> {
    let guard = REPORT.lock().unwrap();
    let r = guard.as_ref().expect("report initialised");
    let mut text = String::new();
    let _ = write!(text, "{{\n  \"context\": {},\n  \"benchmarks\": [", r.context);
    for (i, e) in r.entries.iter().enumerate() {
        text.push_str(if i == 0 { "\n    " } else { ",\n    " });
        text.push_str(e);
    }
    text.push_str("\n  ]\n}\n");
    match &r.path {
        Some(p) => std::fs::write(p, text),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

fn dnf_entry(name: &str, message: &str) -> String {
    format!(
        "{{\"name\": {}, \"run_name\": {}, \"run_type\": \"aggregate\", \"aggregate_name\": \"median\", \
         \"error_occurred\": true, \"error_message\": {}}}",
        json_str(name),
        json_str(name),
        json_str(message)
    )
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm), for the context's date.
fn utc_now_string() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+00:00", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn context_json(o: &Options) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!(
        "{{\"date\": {}, \"host_name\": {}, \"executable\": {}, \"num_cpus\": {}, \
         \"library_build_type\": \"release\", \"peer\": \"tokio\", \"tokio_version\": {}, \
         \"workers\": {}, \"repetitions\": {}, \"scale\": {}, \"min_time_s\": {}, \"timeout_s\": {}}}",
        json_str(&utc_now_string()),
        json_str(host.trim()),
        json_str(&exe),
        cpus,
        json_str(TOKIO_VERSION),
        o.workers,
        o.repetitions,
        json_num(o.scale),
        json_num(o.min_time.as_secs_f64()),
        json_num(o.timeout.as_secs_f64())
    )
}

// ---------------------------------------------------------------------------------------------
// Watchdog: one thread that bounds every iteration.

struct Armed {
    name: String,
    deadline: Instant,
    limit: Duration,
    /// Background-load switch of the running case; cleared when the watchdog fires so the
    /// runtime can drain the stuck iteration.
    stop: Option<Arc<AtomicBool>>,
}

#[derive(Default)]
struct WatchState {
    armed: Option<Armed>,
    fired: bool,
}

struct Watchdog {
    state: Mutex<WatchState>,
    cv: Condvar,
}

impl Watchdog {
    fn start() -> Arc<Watchdog> {
        let wd = Arc::new(Watchdog { state: Mutex::new(WatchState::default()), cv: Condvar::new() });
        let me = wd.clone();
        std::thread::Builder::new()
            .name("tokio_peer-watchdog".into())
            .spawn(move || me.run())
            .expect("spawn watchdog");
        wd
    }

    fn arm(&self, name: &str, limit: Duration, stop: Option<Arc<AtomicBool>>) {
        let mut st = self.state.lock().unwrap();
        st.armed = Some(Armed { name: name.into(), deadline: Instant::now() + limit, limit, stop });
        st.fired = false;
        self.cv.notify_one();
    }

    /// Returns true when the iteration overran its limit.
    fn disarm(&self) -> bool {
        let mut st = self.state.lock().unwrap();
        st.armed = None;
        self.cv.notify_one();
        std::mem::take(&mut st.fired)
    }

    fn run(&self) {
        let mut st = self.state.lock().unwrap();
        loop {
            let Some(armed) = st.armed.as_ref() else {
                st = self.cv.wait(st).unwrap();
                continue;
            };
            let now = Instant::now();
            if now < armed.deadline {
                let wait = armed.deadline - now;
                st = self.cv.wait_timeout(st, wait).unwrap().0;
                continue;
            }
            if !st.fired {
                eprintln!(
                    "tokio_peer: {} did not finish within {:.1} s; stopping its background load",
                    armed.name,
                    armed.limit.as_secs_f64()
                );
                if let Some(stop) = &armed.stop {
                    stop.store(false, Relaxed);
                }
                st.fired = true;
                st.armed.as_mut().unwrap().deadline = now + RECOVERY_GRACE;
                continue;
            }
            // The runtime did not recover: it cannot be dropped, so flush and leave.
            let msg = format!("did not finish within {} s", fmt_secs(armed.limit));
            eprintln!("tokio_peer: {} is stuck; writing the report and exiting", armed.name);
            push_entry(dnf_entry(&armed.name, &msg));
            drop(st);
            if let Err(e) = write_report() {
                eprintln!("tokio_peer: cannot write report: {e}");
                std::process::exit(2);
            }
            std::process::exit(0);
        }
    }
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s:.1}")
    }
}

// ---------------------------------------------------------------------------------------------
// Measurement

struct Bench {
    workers: usize,
    repetitions: usize,
    scale: f64,
    timeout: Duration,
    min_time: Duration,
    watchdog: Arc<Watchdog>,
    name: String,
}

struct Spec {
    /// Operations per iteration (spawns, pings, yields, timers, round trips...).
    ops: usize,
    /// Part of an iteration that is not overhead (the timer window), removed before dividing.
    window: Option<Duration>,
    limit: Duration,
    stop: Option<Arc<AtomicBool>>,
}

enum Outcome {
    /// Per repetition: mean ns per iteration and ns per op; `inner` iterations per repetition.
    Done { iter_ns: Vec<f64>, ns_per_op: Vec<f64>, ops: usize, inner: usize },
    DidNotFinish(String),
}

impl Bench {
    fn runtime(&self) -> Runtime {
        Builder::new_multi_thread()
            .worker_threads(self.workers)
            .enable_all()
            .build()
            .expect("build tokio runtime")
    }

    fn scaled(&self, n: usize) -> usize {
        ((n as f64 * self.scale).round() as usize).max(1)
    }

    fn spec(&self, ops: usize) -> Spec {
        Spec { ops, window: None, limit: self.timeout, stop: None }
    }

    /// One warm-up iteration, then `repetitions` timed repetitions. Like Google Benchmark, a
    /// repetition repeats the iteration until it has run for at least `--min-time` (the count
    /// is calibrated on the warm-up), so millisecond-long iterations are not one noisy sample.
    /// `iter` returns its own elapsed time so setup that upstream keeps outside `b.iter` stays
    /// outside the clock.
    fn measure(&self, spec: Spec, mut iter: impl FnMut() -> Duration) -> Outcome {
        let mut run_once = || -> Option<Duration> {
            self.watchdog.arm(&self.name, spec.limit, spec.stop.clone());
            let elapsed = iter();
            if self.watchdog.disarm() {
                None
            } else {
                Some(elapsed)
            }
        };
        let dnf = || Outcome::DidNotFinish(format!("did not finish within {} s", fmt_secs(spec.limit)));
        let Some(warm) = run_once() else { return dnf() };
        let inner = (self.min_time.as_secs_f64() / warm.as_secs_f64().max(1e-6)).ceil();
        let inner = (inner as usize).clamp(1, 100_000);
        let mut iter_ns = Vec::with_capacity(self.repetitions);
        let mut per_op = Vec::with_capacity(self.repetitions);
        for _ in 0..self.repetitions {
            let mut total = 0.0;
            for _ in 0..inner {
                let Some(elapsed) = run_once() else { return dnf() };
                total += elapsed.as_nanos() as f64;
            }
            let ns = total / inner as f64;
            let op = match spec.window {
                Some(w) => ((ns - w.as_nanos() as f64) / spec.ops as f64).max(TIMER_FLOOR_NS_PER_OP),
                None => ns / spec.ops as f64,
            };
            iter_ns.push(ns);
            per_op.push(op);
        }
        Outcome::Done { iter_ns, ns_per_op: per_op, ops: spec.ops, inner }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Busy-wait like upstream's `stall()`: 10 µs of CPU, yielding the thread while spinning.
fn stall() {
    let now = Instant::now();
    while now.elapsed() < STALL_DUR {
        std::thread::yield_now();
    }
}

fn finish(rt: Runtime) {
    // Never block forever on a runtime whose workers might still be busy.
    rt.shutdown_timeout(Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------------
// Scheduler workloads: benches/rt_multi_threaded.rs

/// One task spawned from block_on performs NUM_SPAWN `tokio::spawn`s from a worker thread; the
/// last of the spawned tasks signals a std channel. ns_per_op: per spawn.
fn spawn_many_local(b: &Bench) -> Outcome {
    let rt = b.runtime();
    let (tx, rx) = mpsc::sync_channel::<()>(1000);
    let rem = Arc::new(AtomicUsize::new(0));
    let out = b.measure(b.spec(NUM_SPAWN), || {
        rem.store(NUM_SPAWN, Relaxed);
        let (tx, rem) = (tx.clone(), rem.clone());
        let start = Instant::now();
        rt.block_on(async {
            tokio::spawn(async move {
                for _ in 0..NUM_SPAWN {
                    let (tx, rem) = (tx.clone(), rem.clone());
                    tokio::spawn(async move {
                        if rem.fetch_sub(1, Relaxed) == 1 {
                            tx.send(()).unwrap();
                        }
                    });
                }
            });
            rx.recv().unwrap();
        });
        start.elapsed()
    });
    finish(rt);
    out
}

/// `spawn` from outside the runtime (through the handle, i.e. the injector) into an otherwise
/// idle runtime, then await every JoinHandle from block_on. ns_per_op: per spawn.
fn spawn_many_remote(b: &Bench, rt: &Runtime, n: usize, stop: Option<Arc<AtomicBool>>) -> Outcome {
    let handle = rt.handle().clone();
    let mut handles = Vec::with_capacity(n);
    let mut spec = b.spec(n);
    spec.stop = stop;
    b.measure(spec, || {
        let start = Instant::now();
        for _ in 0..n {
            handles.push(handle.spawn(async {}));
        }
        rt.block_on(async {
            for h in handles.drain(..) {
                h.await.unwrap();
            }
        });
        start.elapsed()
    })
}

fn spawn_many_remote_idle(b: &Bench) -> Outcome {
    let rt = b.runtime();
    let out = spawn_many_remote(b, &rt, NUM_SPAWN, None);
    finish(rt);
    out
}

/// Remote spawns while 2 × workers tasks loop { yield_now; stall 10 µs }: yielded tasks have a
/// lower notification priority than fresh spawns.
fn spawn_many_remote_busy1(b: &Bench) -> Outcome {
    let rt = b.runtime();
    let flag = Arc::new(AtomicBool::new(true));
    for _ in 0..2 * b.workers {
        let flag = flag.clone();
        rt.spawn(async move {
            while flag.load(Relaxed) {
                tokio::task::yield_now().await;
                stall();
            }
        });
    }
    let out = spawn_many_remote(b, &rt, NUM_SPAWN, Some(flag.clone()));
    flag.store(false, Relaxed);
    finish(rt);
    out
}

/// Remote spawns while 2 × workers chains of tasks each stall 10 µs and then spawn their
/// successor (a spawn from a worker goes to its LIFO slot, a higher priority than a yield).
/// Upstream's NUM_SPAWN is 1,000 here. Upstream starts NUM_WORKERS chains; we start two per
/// worker, like tideloop's port (bench/native/bench_runtime.cpp), so both sides carry the same
/// load. Tokio 1.24 starves the injector either way: expect a DNF.
fn spawn_many_remote_busy2(b: &Bench) -> Outcome {
    fn chain(flag: Arc<AtomicBool>) {
        tokio::spawn(async move {
            if flag.load(Relaxed) {
                stall();
                chain(flag);
            }
        });
    }
    let rt = b.runtime();
    let flag = Arc::new(AtomicBool::new(true));
    for _ in 0..2 * b.workers {
        let flag = flag.clone();
        rt.spawn(async move { chain(flag) });
    }
    let out = spawn_many_remote(b, &rt, NUM_SPAWN_BUSY2, Some(flag.clone()));
    flag.store(false, Relaxed);
    finish(rt);
    out
}

/// 1,000 tasks, each spawns a peer and plays one ping-pong over two oneshot channels.
/// ns_per_op: per ping.
fn ping_pong(b: &Bench) -> Outcome {
    let rt = b.runtime();
    let (done_tx, done_rx) = mpsc::sync_channel::<()>(1000);
    let rem = Arc::new(AtomicUsize::new(0));
    let out = b.measure(b.spec(NUM_PINGS), || {
        rem.store(NUM_PINGS, Relaxed);
        let (done_tx, rem) = (done_tx.clone(), rem.clone());
        let start = Instant::now();
        rt.block_on(async {
            tokio::spawn(async move {
                for _ in 0..NUM_PINGS {
                    let (done_tx, rem) = (done_tx.clone(), rem.clone());
                    tokio::spawn(async move {
                        let (tx1, rx1) = oneshot::channel::<()>();
                        let (tx2, rx2) = oneshot::channel::<()>();
                        tokio::spawn(async move {
                            rx1.await.unwrap();
                            tx2.send(()).unwrap();
                        });
                        tx1.send(()).unwrap();
                        rx2.await.unwrap();
                        if rem.fetch_sub(1, Relaxed) == 1 {
                            done_tx.send(()).unwrap();
                        }
                    });
                }
            });
            done_rx.recv().unwrap();
        });
        start.elapsed()
    });
    finish(rt);
    out
}

/// 200 tasks spawned from outside, each yield_now()s 1,000 times and then signals a std
/// channel; the main thread receives 200 signals. ns_per_op: per yield.
fn yield_many(b: &Bench) -> Outcome {
    let rt = b.runtime();
    let (tx, rx) = mpsc::sync_channel::<()>(YIELD_TASKS);
    let out = b.measure(b.spec(YIELD_TASKS * NUM_YIELD), || {
        let start = Instant::now();
        for _ in 0..YIELD_TASKS {
            let tx = tx.clone();
            rt.spawn(async move {
                for _ in 0..NUM_YIELD {
                    tokio::task::yield_now().await;
                }
                tx.send(()).unwrap();
            });
        }
        for _ in 0..YIELD_TASKS {
            rx.recv().unwrap();
        }
        start.elapsed()
    });
    finish(rt);
    out
}

/// A chain of 1,000 spawns, each task spawning the next; the last signals a std channel.
/// ns_per_op: per spawn.
fn chained_spawn(b: &Bench) -> Outcome {
    fn link(done: mpsc::SyncSender<()>, n: usize) {
        if n == 0 {
            done.send(()).unwrap();
        } else {
            tokio::spawn(async move { link(done, n - 1) });
        }
    }
    let rt = b.runtime();
    let (done_tx, done_rx) = mpsc::sync_channel::<()>(1000);
    let out = b.measure(b.spec(CHAIN_LEN), || {
        let done_tx = done_tx.clone();
        let start = Instant::now();
        rt.block_on(async {
            tokio::spawn(async move { link(done_tx, CHAIN_LEN) });
            done_rx.recv().unwrap();
        });
        start.elapsed()
    });
    finish(rt);
    out
}

// ---------------------------------------------------------------------------------------------
// Time and I/O workloads

/// 100,000 tasks sleep for deadlines spread uniformly over 0-10 ms (task i: i % 10,001 µs).
/// ns_per_op = (elapsed - 10 ms) / 100,000: what each timer costs beyond the window itself.
/// Tokio's wheel has 1 ms resolution, so about 1 ms of rounding is included.
fn timers(b: &Bench) -> Outcome {
    let rt = b.runtime();
    let (tx, rx) = mpsc::sync_channel::<()>(1);
    let rem = Arc::new(AtomicUsize::new(0));
    let window_us = TIMER_WINDOW.as_micros() as usize;
    let mut spec = b.spec(NUM_TIMERS);
    spec.window = Some(TIMER_WINDOW);
    spec.limit = spec.limit.max(LONG_CASE_TIMEOUT);
    let out = b.measure(spec, || {
        rem.store(NUM_TIMERS, Relaxed);
        let (tx, rem) = (tx.clone(), rem.clone());
        let start = Instant::now();
        rt.block_on(async {
            tokio::spawn(async move {
                for i in 0..NUM_TIMERS {
                    let (tx, rem) = (tx.clone(), rem.clone());
                    let after = Duration::from_micros((i % (window_us + 1)) as u64);
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        if rem.fetch_sub(1, Relaxed) == 1 {
                            tx.send(()).unwrap();
                        }
                    });
                }
            });
            rx.recv().unwrap();
        });
        start.elapsed()
    });
    finish(rt);
    out
}

/// Inside one task: create a 1 s sleep, poll it once (which registers it in the timer wheel;
/// a Pending poll gives its coop budget back, so every poll registers), drop it (which
/// deregisters it). 1,000,000 times (× --scale). ns_per_op: per create+drop pair.
fn timer_cancel(b: &Bench) -> Outcome {
    let rt = b.runtime();
    let n = b.scaled(NUM_CANCEL);
    let (tx, rx) = mpsc::sync_channel::<()>(1);
    let mut spec = b.spec(n);
    spec.limit = spec.limit.max(LONG_CASE_TIMEOUT);
    let out = b.measure(spec, || {
        let tx = tx.clone();
        let start = Instant::now();
        rt.block_on(async {
            tokio::spawn(async move {
                let mut pending = 0usize;
                for _ in 0..n {
                    let mut sleep = pin!(tokio::time::sleep(Duration::from_secs(1)));
                    poll_fn(|cx| {
                        if sleep.as_mut().poll(cx).is_pending() {
                            pending += 1;
                        }
                        Poll::Ready(())
                    })
                    .await;
                }
                assert_eq!(pending, n, "a one-second sleep fired or was never registered");
                tx.send(()).unwrap();
            });
            rx.recv().unwrap();
        });
        start.elapsed()
    });
    finish(rt);
    out
}

/// An echo server and 64 clients in the same runtime over loopback TCP (TCP_NODELAY on both
/// ends); each client does 10,000 (× --scale) round trips of 1 KiB: write_all, read_exact.
/// Connecting is inside the clock (64 connects are noise next to 640,000 round trips).
/// ns_per_op: elapsed / total round trips.
fn tcp_echo(b: &Bench) -> Outcome {
    async fn echo(mut s: TcpStream) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
    let rt = b.runtime();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr");
    rt.spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    tokio::spawn(echo(s));
                }
                Err(e) => eprintln!("tokio_peer: accept: {e}"),
            }
        }
    });
    let rounds = b.scaled(ECHO_ROUND_TRIPS);
    let mut spec = b.spec(ECHO_CLIENTS * rounds);
    spec.limit = spec.limit.max(LONG_CASE_TIMEOUT);
    let out = b.measure(spec, || {
        let start = Instant::now();
        rt.block_on(async {
            let clients: Vec<_> = (0..ECHO_CLIENTS)
                .map(|c| {
                    tokio::spawn(async move {
                        let mut s = TcpStream::connect(addr).await.expect("connect");
                        s.set_nodelay(true).expect("nodelay");
                        let out = [c as u8; ECHO_MSG];
                        let mut back = [0u8; ECHO_MSG];
                        for _ in 0..rounds {
                            s.write_all(&out).await.expect("write");
                            s.read_exact(&mut back).await.expect("read");
                        }
                        assert!(back == out, "echo corrupted the payload");
                    })
                })
                .collect();
            for c in clients {
                c.await.expect("client task");
            }
        });
        start.elapsed()
    });
    finish(rt);
    out
}

// ---------------------------------------------------------------------------------------------

type CaseFn = fn(&Bench) -> Outcome;

const CASES: &[(&str, CaseFn)] = &[
    ("spawn_many_local", spawn_many_local),
    ("spawn_many_remote_idle", spawn_many_remote_idle),
    ("spawn_many_remote_busy1", spawn_many_remote_busy1),
    ("spawn_many_remote_busy2", spawn_many_remote_busy2),
    ("ping_pong", ping_pong),
    ("yield_many", yield_many),
    ("chained_spawn", chained_spawn),
    ("timers", timers),
    ("timer_cancel", timer_cancel),
    ("tcp_echo", tcp_echo),
];

fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("tokio_peer: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let selected: Vec<_> = CASES
        .iter()
        .map(|(name, f)| (format!("{name}/{}", opts.workers), *f))
        .filter(|(name, _)| opts.filter.as_ref().is_none_or(|re| re.is_match(name)))
        .collect();
    if opts.list {
        for (name, _) in &selected {
            println!("{name}");
        }
        return;
    }
    *REPORT.lock().unwrap() =
        Some(Report { context: context_json(&opts), entries: Vec::new(), path: opts.json.clone() });
    if selected.is_empty() {
        eprintln!("tokio_peer: no case matches the filter");
    }

    let watchdog = Watchdog::start();
    let total = selected.len();
    for (i, (name, run)) in selected.into_iter().enumerate() {
        eprintln!("tokio_peer [{}/{}] {name} (tokio {TOKIO_VERSION}) ...", i + 1, total);
        let bench = Bench {
            workers: opts.workers,
            repetitions: opts.repetitions,
            scale: opts.scale,
            timeout: opts.timeout,
            min_time: opts.min_time,
            watchdog: watchdog.clone(),
            name: name.clone(),
        };
        match run(&bench) {
            Outcome::Done { iter_ns, ns_per_op, ops, inner } => {
                let (med_iter, med_op) = (median(&iter_ns), median(&ns_per_op));
                let min = ns_per_op.iter().cloned().fold(f64::INFINITY, f64::min);
                let max = ns_per_op.iter().cloned().fold(0.0, f64::max);
                eprintln!(
                    "tokio_peer        {name}: {:.1} ns/op median (min {:.1}, max {:.1}), {:.3} ms/iteration, {} iterations x {} repetitions",
                    med_op,
                    min,
                    max,
                    med_iter / 1e6,
                    inner,
                    ns_per_op.len()
                );
                push_entry(format!(
                    "{{\"name\": {n}, \"run_name\": {n}, \"run_type\": \"aggregate\", \
                     \"aggregate_name\": \"median\", \"aggregate_unit\": \"time\", \
                     \"repetitions\": {reps}, \"iterations\": {reps}, \"real_time\": {rt}, \
                     \"time_unit\": \"ns\", \"ns_per_op\": {op}, \"ops_per_iteration\": {ops}, \"inner_iterations\": {inner}, \
                     \"ns_per_op_min\": {min}, \"ns_per_op_max\": {max}}}",
                    n = json_str(&name),
                    reps = ns_per_op.len(),
                    rt = json_num(med_iter),
                    op = json_num(med_op),
                    ops = ops,
                    inner = inner,
                    min = json_num(min),
                    max = json_num(max),
                ));
            }
            Outcome::DidNotFinish(msg) => {
                eprintln!("tokio_peer        {name}: DNF ({msg})");
                push_entry(dnf_entry(&name, &msg));
                // Upstream's rule for a DNF: report and stop this case; the runtime recovered
                // (the watchdog stopped the background load), so later cases still run.
            }
        }
    }
    if let Err(e) = write_report() {
        eprintln!("tokio_peer: cannot write report: {e}");
        std::process::exit(2);
    }
}
