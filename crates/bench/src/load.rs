//! How requests are sent: a closed loop (a fixed number of clients, each sending its next request
//! when the previous one ends) or an open loop (arrivals at a rate, Poisson or gamma-distributed
//! gaps for burstiness, whatever the server's speed). Both stop after the request list, the time
//! limit, or a stop signal (Ctrl-C), and return what finished.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Gamma};
use tokio::sync::{Mutex, watch};

use crate::target::{Record, Target};
use crate::workload::BenchRequest;

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Load {
    /// `concurrency` clients in a closed loop.
    Closed { concurrency: usize },
    /// Requests per second; gaps are gamma-distributed with shape `burstiness` (1: Poisson).
    Open { rate: f64, burstiness: f64 },
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Load::Closed { concurrency } => write!(f, "concurrency {concurrency}"),
            Load::Open { rate, burstiness } if *burstiness == 1.0 => write!(f, "{rate} req/s (Poisson)"),
            Load::Open { rate, burstiness } => write!(f, "{rate} req/s (gamma {burstiness})"),
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    pub records: Vec<Record>,
    /// Failed requests by error kind.
    pub errors: BTreeMap<String, u64>,
    /// First send to last completion.
    pub wall: Duration,
    /// Stopped early (Ctrl-C or the time limit) rather than after every request.
    pub cut_short: bool,
}

/// Called after each request (progress display).
pub type OnDone = Arc<dyn Fn(&Result<Record, String>) + Send + Sync>;

#[derive(Clone)]
pub struct Runner {
    pub target: Target,
    pub time_limit: Option<Duration>,
    pub stop: watch::Receiver<bool>,
    pub on_done: Option<OnDone>,
    pub seed: u64,
}

impl Runner {
    pub async fn run(&self, requests: Vec<BenchRequest>, load: Load) -> RunResult {
        let start = Instant::now();
        let requests = Arc::new(requests);
        let out = Arc::new(Mutex::new(RunResult::default()));
        let deadline = self.time_limit.map(|t| start + t);
        let over = {
            let stop = self.stop.clone();
            move || *stop.borrow() || deadline.is_some_and(|d| Instant::now() >= d)
        };
        let one = {
            let (target, out, on_done) = (self.target.clone(), out.clone(), self.on_done.clone());
            move |req: BenchRequest| {
                let (target, out, on_done) = (target.clone(), out.clone(), on_done.clone());
                async move {
                    let r = target.send(&req, start).await;
                    if let Some(f) = &on_done {
                        f(&r);
                    }
                    let mut o = out.lock().await;
                    match r {
                        Ok(rec) => o.records.push(rec),
                        Err(kind) => *o.errors.entry(kind).or_default() += 1,
                    }
                }
            }
        };
        let mut cut_short = false;
        match load {
            Load::Closed { concurrency } => {
                let next = Arc::new(AtomicUsize::new(0));
                let workers: Vec<_> = (0..concurrency.max(1))
                    .map(|_| {
                        let (next, requests, one, over) = (next.clone(), requests.clone(), one.clone(), over.clone());
                        tokio::spawn(async move {
                            loop {
                                let i = next.fetch_add(1, Ordering::Relaxed);
                                if i >= requests.len() || over() {
                                    return i < requests.len();
                                }
                                one(requests[i].clone()).await;
                            }
                        })
                    })
                    .collect();
                for w in workers {
                    cut_short |= w.await.unwrap_or(true);
                }
            }
            Load::Open { rate, burstiness } => {
                let shape = burstiness.max(1e-3);
                let gaps = Gamma::new(shape, 1.0 / (rate.max(1e-9) * shape)).expect("positive gamma parameters");
                let mut rng = StdRng::seed_from_u64(self.seed);
                let mut at = Instant::now();
                let mut tasks = Vec::with_capacity(requests.len());
                for req in requests.iter() {
                    if over() {
                        cut_short = true;
                        break;
                    }
                    tokio::time::sleep_until(at.into()).await;
                    tasks.push(tokio::spawn(one(req.clone())));
                    at += Duration::from_secs_f64(gaps.sample(&mut rng));
                }
                for t in tasks {
                    let _ = t.await;
                }
            }
        }
        let mut result = std::mem::take(&mut *out.lock().await);
        result.wall = start.elapsed();
        result.cut_short = cut_short || *self.stop.borrow();
        result.records.sort_by_key(|r| r.sent_at);
        result
    }
}
