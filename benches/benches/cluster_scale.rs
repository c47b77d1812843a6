//! Cluster coordination at scale: N simulated members against one coordinator, on the
//! embedded store and on a real etcd on loopback (started by the benchmark).
//!
//! For each store and each N (default 100, 1,000 and 10,000):
//! 1. **registration storm**: every member registers at once (8 threads); failures are
//!    counted (target: none);
//! 2. **steady heartbeats**: every member heartbeats every `--interval-ms` (default
//!    2,000), spread evenly, for 3 intervals; latency per heartbeat, the benchmark
//!    process's CPU time per heartbeat (the coordinator's work: the simulated members only
//!    build a report), and the store writes per heartbeat (target: none: a heartbeat that
//!    changes nothing writes nothing);
//! 3. **finalization**: `Coordinator::finalize` while heartbeats go on; a member told to
//!    finalize sets its MLV and heartbeats again at once (as `Member` does); the time from
//!    the call to checkpoint `complete`, in heartbeat intervals (target at 10,000: within
//!    3), and the heartbeat latency p99 meanwhile (target: below a quarter of the 10 s
//!    lease).
//!
//! Bytes written per member change are counted at the store interface
//! (`layout_testkit::cluster::ObservedStore`: kind, member id and JSON value of each member
//! record written), for every N: they must not depend on N.
//!
//! ```text
//! cargo bench -p layout-benches --bench cluster_scale -- --bench
//! cargo bench -p layout-benches --bench cluster_scale -- --bench --members 100,1000 --stores embedded
//! ```
//!
//! Without `--bench` (cargo's test mode) it runs one small round (50 members, embedded
//! store, short interval) as a smoke test.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use layout_core::cluster::{
    ClusterStore, Coordinator, CoordinatorOptions, EmbeddedStore, FinalizationCheckpoint,
    Instruction, MemberReport,
};
use layout_testkit::cluster::ObservedStore;
use layout_testkit::etcd::EtcdServer;
use parking_lot::Mutex;

const KIND: &str = "datanode";
const LEASE: Duration = Duration::from_secs(10);
const THREADS: usize = 8;

#[derive(Debug, Clone)]
struct Args {
    members: Vec<usize>,
    stores: Vec<String>,
    interval: Duration,
    steady_intervals: u32,
}

fn parse_args() -> Args {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let measuring = args.iter().any(|a| a == "--bench");
    let mut parsed = if measuring {
        Args {
            members: vec![100, 1_000, 10_000],
            stores: vec!["embedded".into(), "etcd".into()],
            interval: Duration::from_secs(2),
            steady_intervals: 3,
        }
    } else {
        Args {
            members: vec![50],
            stores: vec!["embedded".into()],
            interval: Duration::from_millis(200),
            steady_intervals: 2,
        }
    };
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--members" => {
                parsed.members = value
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .parse()
                            .expect("--members: numbers separated by commas")
                    })
                    .collect();
                i += 1;
            }
            "--stores" => {
                parsed.stores = value.split(',').map(str::to_owned).collect();
                i += 1;
            }
            "--interval-ms" => {
                parsed.interval =
                    Duration::from_millis(value.parse().expect("--interval-ms: a number"));
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    parsed
}

/// One simulated member: its report's changing parts.
struct Sim {
    id: String,
    incarnation: String,
    mlv: AtomicU32,
}

impl Sim {
    fn report(&self) -> MemberReport {
        MemberReport::new(KIND, &self.id, 2, self.mlv.load(Ordering::Relaxed))
            .with_incarnation(&self.incarnation)
    }
}

/// Latencies (µs) recorded by the heartbeat workers, per phase.
#[derive(Default)]
struct Latencies {
    steady: Mutex<Vec<u64>>,
    finalizing: Mutex<Vec<u64>>,
}

fn percentile(values: &mut [u64], p: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((values.len() - 1) as f64 * p).round() as usize;
    values[rank]
}

/// This process's CPU time (user + system), from /proc/self/stat, in µs.
fn cpu_us() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the whole line (utime, stime) are 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    ticks * 10_000 // USER_HZ is 100 on Linux
}

struct Row {
    store: String,
    members: usize,
    registration: Duration,
    registration_failures: usize,
    steady_heartbeats: usize,
    steady_p50_us: u64,
    steady_p99_us: u64,
    cpu_us_per_heartbeat: f64,
    writes_per_steady_heartbeat: f64,
    finalize_call: Duration,
    to_complete: Duration,
    finalizing_p99_us: u64,
    heartbeat_failures: usize,
    bytes_per_member_change: f64,
}

#[allow(clippy::too_many_lines, clippy::cast_precision_loss)]
fn run(
    store_name: &str,
    store: &Arc<ObservedStore<Box<dyn ClusterStore>>>,
    n: usize,
    args: &Args,
) -> Row {
    let interval = args.interval;
    let coordinator = Arc::new(
        Coordinator::open(
            Arc::clone(store) as Arc<dyn ClusterStore>,
            CoordinatorOptions::default()
                .with_coordinator_id("scm")
                .with_member_lease_ttl(LEASE),
        )
        .expect("coordinator opens"),
    );
    let sims: Arc<Vec<Sim>> = Arc::new(
        (0..n)
            .map(|i| Sim {
                id: format!("dn-{i:05}"),
                incarnation: format!("inc-{i}"),
                mlv: AtomicU32::new(1),
            })
            .collect(),
    );

    // 1. Registration storm.
    let failures = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    thread::scope(|scope| {
        for t in 0..THREADS {
            let sims = Arc::clone(&sims);
            let coordinator = Arc::clone(&coordinator);
            let failures = Arc::clone(&failures);
            scope.spawn(move || {
                for sim in sims.iter().skip(t).step_by(THREADS) {
                    if let Err(e) = coordinator.register(&sim.report()) {
                        if failures.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("registration of {} failed: {e}", sim.id);
                        }
                    }
                }
            });
        }
    });
    let registration = started.elapsed();

    // 2 and 3. Heartbeats on a schedule, steady then during finalization.
    let latencies = Arc::new(Latencies::default());
    let finalizing = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let heartbeat_failures = Arc::new(AtomicUsize::new(0));
    let steady_count = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let sims = Arc::clone(&sims);
            let coordinator = Arc::clone(&coordinator);
            let latencies = Arc::clone(&latencies);
            let finalizing = Arc::clone(&finalizing);
            let stop = Arc::clone(&stop);
            let failures = Arc::clone(&heartbeat_failures);
            let steady_count = Arc::clone(&steady_count);
            thread::spawn(move || {
                let mine: Vec<&Sim> = sims.iter().skip(t).step_by(THREADS).collect();
                let begin = Instant::now();
                let mut round: u32 = 0;
                while !stop.load(Ordering::Relaxed) {
                    for (i, sim) in mine.iter().enumerate() {
                        #[allow(clippy::cast_possible_truncation)]
                        let due = begin
                            + interval * round
                            + interval.mul_f64(i as f64 / mine.len().max(1) as f64);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            thread::sleep(wait);
                        }
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let during = finalizing.load(Ordering::Relaxed);
                        let sent = Instant::now();
                        let answer = coordinator.heartbeat(&sim.report());
                        let took = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                        if during {
                            latencies.finalizing.lock().push(took);
                        } else {
                            latencies.steady.lock().push(took);
                            steady_count.fetch_add(1, Ordering::Relaxed);
                        }
                        match answer {
                            Ok(answer) => {
                                if let Some(Instruction::FinalizeTo { version }) =
                                    answer.instruction
                                {
                                    sim.mlv.store(version, Ordering::Relaxed);
                                    let sent = Instant::now();
                                    if coordinator.heartbeat(&sim.report()).is_err() {
                                        failures.fetch_add(1, Ordering::Relaxed);
                                    }
                                    let took = u64::try_from(sent.elapsed().as_micros())
                                        .unwrap_or(u64::MAX);
                                    latencies.finalizing.lock().push(took);
                                }
                            }
                            Err(e) => {
                                if failures.fetch_add(1, Ordering::Relaxed) < 3 {
                                    eprintln!("heartbeat of {} failed: {e}", sim.id);
                                }
                            }
                        }
                    }
                    round += 1;
                }
            })
        })
        .collect();

    // Steady: skip the first interval (caches warming), measure the next ones.
    thread::sleep(interval);
    latencies.steady.lock().clear();
    steady_count.store(0, Ordering::Relaxed);
    let cpu_before = cpu_us();
    let writes_before = store.writes();
    thread::sleep(interval * args.steady_intervals);
    let cpu = cpu_us().saturating_sub(cpu_before);
    let steady_writes = store.writes() - writes_before;
    let steady_heartbeats = steady_count.load(Ordering::Relaxed);
    let mut steady = std::mem::take(&mut *latencies.steady.lock());

    // Finalization.
    let bytes_before = store.member_bytes();
    let member_writes_before = store.member_writes();
    finalizing.store(true, Ordering::Relaxed);
    let started = Instant::now();
    coordinator
        .finalize(KIND, Some(2), "bench")
        .expect("finalization starts");
    let finalize_call = started.elapsed();
    let bound = interval * 20 + Duration::from_secs(30);
    let to_complete = loop {
        let record = store.load_kind(KIND).expect("store answers").expect("kind");
        if record
            .value
            .finalization
            .as_ref()
            .is_some_and(|f| f.checkpoint == FinalizationCheckpoint::Complete)
        {
            break started.elapsed();
        }
        if started.elapsed() >= bound {
            let below = store
                .members(KIND)
                .expect("store answers")
                .iter()
                .filter(|(_, m)| m.value.metadata_layout_version < 2)
                .count();
            panic!(
                "finalization did not complete within {bound:?}: {:?}, {below} members below the target",
                record.value.finalization
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("worker");
    }
    let member_writes = store.member_writes() - member_writes_before;
    let member_bytes = store.member_bytes() - bytes_before;
    let mut during = std::mem::take(&mut *latencies.finalizing.lock());

    Row {
        store: store_name.to_owned(),
        members: n,
        registration,
        registration_failures: failures.load(Ordering::Relaxed),
        steady_heartbeats,
        steady_p50_us: percentile(&mut steady, 0.50),
        steady_p99_us: percentile(&mut steady, 0.99),
        cpu_us_per_heartbeat: cpu as f64 / steady_heartbeats.max(1) as f64,
        writes_per_steady_heartbeat: steady_writes as f64 / steady_heartbeats.max(1) as f64,
        finalize_call,
        to_complete,
        finalizing_p99_us: percentile(&mut during, 0.99),
        heartbeat_failures: heartbeat_failures.load(Ordering::Relaxed),
        bytes_per_member_change: member_bytes as f64 / member_writes.max(1) as f64,
    }
}

#[allow(clippy::cast_precision_loss)]
fn main() {
    let args = parse_args();
    let mut rows = Vec::new();
    let etcd = args
        .stores
        .iter()
        .any(|s| s == "etcd")
        .then(|| EtcdServer::start().expect("etcd starts (scripts/test installs etcd-server)"));
    for store_name in &args.stores {
        for &n in &args.members {
            let dir = tempfile::tempdir().expect("temp dir");
            let inner: Box<dyn ClusterStore> = match store_name.as_str() {
                "embedded" => Box::new(
                    EmbeddedStore::open(dir.path().join("cluster-state")).expect("store opens"),
                ),
                "etcd" => Box::new(
                    etcd.as_ref()
                        .expect("etcd started")
                        .store(&format!("/scale-{n}"))
                        .expect("etcd store connects"),
                ),
                other => panic!("unknown store {other}: embedded or etcd"),
            };
            eprintln!("{store_name}: {n} members ...");
            let row = run(store_name, &Arc::new(ObservedStore::new(inner)), n, &args);
            assert_eq!(row.registration_failures, 0, "registrations failed");
            rows.push(row);
        }
    }
    let interval_ms = args.interval.as_secs_f64() * 1e3;
    println!(
        "| store | members | registration | failed | steady heartbeats | p50 | p99 | CPU per heartbeat | store writes per heartbeat | finalize call | to complete | (intervals) | p99 while finalizing | bytes per member change |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.2} s | {} | {} | {} µs | {} µs | {:.1} µs | {:.4} | {} ms | {} ms | {:.2} | {} µs | {:.0} B |",
            r.store,
            r.members,
            r.registration.as_secs_f64(),
            r.registration_failures + r.heartbeat_failures,
            r.steady_heartbeats,
            r.steady_p50_us,
            r.steady_p99_us,
            r.cpu_us_per_heartbeat,
            r.writes_per_steady_heartbeat,
            r.finalize_call.as_millis(),
            r.to_complete.as_millis(),
            r.to_complete.as_secs_f64() * 1e3 / interval_ms,
            r.finalizing_p99_us,
            r.bytes_per_member_change,
        );
    }
    let mut by_store: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in &rows {
        by_store.entry(r.store.as_str()).or_default().push(r);
    }
    for (store, rows) in by_store {
        let smallest = rows.iter().min_by_key(|r| r.members).expect("a row");
        let largest = rows.iter().max_by_key(|r| r.members).expect("a row");
        if smallest.members != largest.members {
            println!(
                "{store}: CPU per heartbeat at {} members / at {} members = {:.2}x; bytes per member change {:.0} B / {:.0} B",
                largest.members,
                smallest.members,
                largest.cpu_us_per_heartbeat / smallest.cpu_us_per_heartbeat.max(0.001),
                largest.bytes_per_member_change,
                smallest.bytes_per_member_change,
            );
        }
    }
}
