//! What defines a scenario ([`Spec`]) and what its measurements are made
//! of ([`Group`]s of [`Variant`]s), with the helpers every scenario uses to
//! build its jobs and read its runs.

use serde_json::{Map, Value};
use shmbus::credit::CreditSpec;

use crate::cli::Options;
use crate::job::{Job, Outcome, Scenario, Transport, Wait};
use crate::stats::summarize;

/// What every job of a run shares.
#[derive(Debug, Clone)]
pub struct Context {
    /// The bench service's name on the broker.
    pub service: String,
    /// The broker's process id, when known.
    pub broker_pid: Option<u32>,
}

/// One transport (and variant: typed items, wait policy) within a group.
#[derive(Debug, Clone)]
pub struct Variant {
    /// The transport or baseline.
    pub transport: Transport,
    /// The job it runs (its start time is set when it runs).
    pub job: Job,
}

impl Variant {
    /// The row label: the transport, plus "typed" or the wait policy where
    /// they distinguish rows.
    pub fn label(&self) -> String {
        let mut s = self.transport.name().to_string();
        if self.job.typed {
            s.push_str(" typed");
        }
        if self.job.copied {
            s.push_str(" copied");
        }
        if self.job.asynchronous {
            s.push_str(" async");
        }
        if self.job.scenario == Scenario::Blob {
            s.push_str(if self.job.blob { " blob" } else { " streamed" });
        }
        if self.transport == Transport::Tcp {
            s.push_str(&match self.job.sock_buf {
                0 => " auto".to_string(),
                b => format!(" {}M", b >> 20),
            });
        }
        if self.job.scenario == Scenario::Latency && self.transport == Transport::Shm {
            s.push(' ');
            s.push_str(self.job.wait.name());
        }
        if self.job.scenario == Scenario::Throughput && self.transport == Transport::BareRing {
            let r = self.job.ring;
            s.push_str(&if r >= 1 << 20 {
                format!(" {}M", r >> 20)
            } else {
                format!(" {}K", r >> 10)
            });
            if self.job.whole_writes {
                s.push_str(" whole");
            }
        }
        s
    }
}

/// Measurements compared with one another: run as rounds of every variant
/// in turn, so that each round's runs share a time window.
#[derive(Debug, Clone)]
pub struct Group {
    /// The first table cell of the group (size or stream count).
    pub title: String,
    /// Its variants, shmbus first, then the baselines.
    pub variants: Vec<Variant>,
}

/// A scenario's definition.
pub trait Spec {
    /// Which scenario.
    fn scenario(&self) -> Scenario;
    /// The measurements, grouped.
    fn groups(&self, o: &Options, ctx: &Context) -> Vec<Group>;
    /// Lines explaining the setup, printed above the table.
    fn notes(&self, o: &Options) -> Vec<String>;
    /// Titles and widths of the table's columns before the ratios.
    fn columns(&self) -> Vec<(&'static str, usize)>;
    /// The cells after the group title and label, from a variant's runs.
    fn cells(&self, runs: &[&Outcome]) -> Vec<String>;
    /// The figure ratios compare; per run.
    fn headline(&self, o: &Outcome) -> Option<f64>;
    /// Scenario-specific JSON fields from a variant's runs.
    fn fields(&self, v: &Variant, runs: &[&Outcome]) -> Map<String, Value>;
}

/// A job with the run's shared fields filled in and neutral defaults.
pub fn job(ctx: &Context, o: &Options, scenario: Scenario, transport: Transport) -> Job {
    Job {
        scenario,
        transport,
        size: 1,
        typed: false,
        wait: Wait::Blocking,
        streams: 1,
        ring: shmbus::DEFAULT_RING_SIZE,
        credit: CreditSpec::default(),
        sock_buf: crate::baselines::uds::link_buffer(shmbus::DEFAULT_RING_SIZE),
        duration_ns: (o.duration * 1e9) as u64,
        start_at: 0,
        service: ctx.service.clone(),
        broker_pid: ctx.broker_pid,
        gap_ns: 0,
        whole_writes: false,
        copied: false,
        asynchronous: false,
        blob: false,
    }
}

/// The baselines the options ask for, each with `make` applied to a job.
pub fn baselines(o: &Options, mut make: impl FnMut(Transport) -> Job) -> Vec<Variant> {
    Transport::BASELINES
        .into_iter()
        .filter(|&t| o.has(t))
        .map(|t| Variant {
            transport: t,
            job: make(t),
        })
        .collect()
}

/// A run's latency percentile: 0 for p50, 1 for p99, 2 for p99.9.
pub fn percentile(o: &Outcome, i: usize) -> Option<f64> {
    o.latency_ns.map(|l| l[i] as f64)
}

/// The values of one figure over a variant's runs.
pub fn values(runs: &[&Outcome], f: impl Fn(&Outcome) -> Option<f64>) -> Vec<f64> {
    runs.iter().filter_map(|o| f(o)).collect()
}

/// Inserts `key: value` when the value exists.
pub fn put(m: &mut Map<String, Value>, key: &str, value: Option<impl Into<Value>>) {
    if let Some(v) = value {
        m.insert(key.to_string(), v.into());
    }
}

/// The median of a figure as a JSON integer, when any run has it.
pub fn median_u64(runs: &[&Outcome], f: impl Fn(&Outcome) -> Option<f64>) -> Option<u64> {
    summarize(&values(runs, f)).map(|s| s.median.round() as u64)
}
