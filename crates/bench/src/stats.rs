//! Per-run statistics from HDR histograms (microsecond resolution, 3 significant digits): mean,
//! p50, p90, p99 and max of TTFT, inter-token latency, time per output token and end-to-end
//! latency; throughput; and goodput, the rate of requests that met every given SLO.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::load::RunResult;

/// Latency objectives for goodput (seconds); `None` means not constrained.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Slo {
    pub ttft: Option<f64>,
    pub tpot: Option<f64>,
}

/// A latency distribution, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Dist {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub count: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub completed: usize,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    pub duration_s: f64,
    pub request_throughput: f64,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub ttft: Dist,
    pub itl: Dist,
    pub tpot: Dist,
    pub e2e: Dist,
    /// Requests per second that met the SLOs (all completed requests when none is given).
    pub goodput: f64,
    pub cut_short: bool,
}

/// Builds a histogram of durations (µs, 1 µs to 1 hour, 3 significant digits).
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds. This is a bug."))
    }
}

impl Hist {
    pub fn record(&mut self, d: Duration) {
        self.0.saturating_record((d.as_micros() as u64).max(1));
    }

    pub fn dist(&self) -> Dist {
        let h = &self.0;
        if h.is_empty() {
            return Dist::default();
        }
        let s = |v: u64| v as f64 / 1e6;
        Dist {
            mean: h.mean() / 1e6,
            p50: s(h.value_at_quantile(0.50)),
            p90: s(h.value_at_quantile(0.90)),
            p99: s(h.value_at_quantile(0.99)),
            max: s(h.max()),
            count: h.len(),
        }
    }
}

pub fn summarize(r: &RunResult, slo: Slo) -> Summary {
    let (mut ttft, mut itl, mut tpot, mut e2e) = (Hist::default(), Hist::default(), Hist::default(), Hist::default());
    let mut good = 0;
    for rec in &r.records {
        ttft.record(rec.ttft);
        e2e.record(rec.e2e);
        rec.itl.iter().for_each(|&g| itl.record(g));
        if let Some(t) = rec.tpot() {
            tpot.record(t);
        }
        let ok_ttft = slo.ttft.is_none_or(|s| rec.ttft.as_secs_f64() <= s);
        let ok_tpot = slo.tpot.is_none_or(|s| rec.tpot().is_none_or(|t| t.as_secs_f64() <= s));
        good += usize::from(ok_ttft && ok_tpot);
    }
    let secs = r.wall.as_secs_f64().max(1e-9);
    let input: u64 = r.records.iter().map(|x| x.input_tokens as u64).sum();
    let output: u64 = r.records.iter().map(|x| x.output_tokens as u64).sum();
    Summary {
        completed: r.records.len(),
        failed: r.errors.values().sum(),
        errors: r.errors.clone(),
        duration_s: secs,
        request_throughput: r.records.len() as f64 / secs,
        output_throughput: output as f64 / secs,
        total_token_throughput: (input + output) as f64 / secs,
        input_tokens: input,
        output_tokens: output,
        ttft: ttft.dist(),
        itl: itl.dist(),
        tpot: tpot.dist(),
        e2e: e2e.dist(),
        goodput: good as f64 / secs,
        cut_short: r.cut_short,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Record;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_throughput_and_goodput() {
        // 100 requests: TTFT 1..=100 ms, 11 output tokens over 10 further gaps of 5 ms each.
        let records: Vec<Record> = (1..=100)
            .map(|i| Record {
                sent_at: ms(i),
                input_tokens: 20,
                output_tokens: 11,
                ttft: ms(i),
                e2e: ms(i + 50),
                itl: vec![ms(5); 10],
            })
            .collect();
        let r = RunResult { records, wall: Duration::from_secs(10), ..Default::default() };
        let s = summarize(&r, Slo { ttft: Some(0.0305), tpot: Some(0.006) });
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.002 + 1e-6;
        assert!(close(s.ttft.p50, 0.050), "{:?}", s.ttft);
        assert!(close(s.ttft.p90, 0.090) && close(s.ttft.p99, 0.099) && close(s.ttft.max, 0.100), "{:?}", s.ttft);
        assert!(close(s.ttft.mean, 0.0505), "{:?}", s.ttft);
        assert!(close(s.itl.p50, 0.005) && s.itl.count == 1000);
        assert!(close(s.tpot.p99, 0.005), "TPOT = (e2e - ttft) / (tokens - 1)");
        assert!(close(s.request_throughput, 10.0) && close(s.output_throughput, 110.0));
        assert!(close(s.total_token_throughput, 310.0));
        // 30 requests have TTFT <= 30.5 ms, and every TPOT (5 ms) meets 6 ms.
        assert!(close(s.goodput, 3.0), "{}", s.goodput);
        let strict = summarize(&r, Slo { ttft: None, tpot: Some(0.004) });
        assert_eq!(strict.goodput, 0.0);
        assert!(close(summarize(&r, Slo::default()).goodput, 10.0), "no SLO: every request counts");
    }
}
