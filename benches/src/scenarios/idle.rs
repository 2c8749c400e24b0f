//! Idle: a bidirectional stream open with nothing flowing, both peers
//! waiting to receive; the CPU time each peer (and the broker) used.

use serde_json::{Map, Value};

use super::spec::{baselines, job, median_u64, put, values, Context, Group, Spec, Variant};
use crate::cli::{Options, FANOUT_RING};
use crate::job::{Outcome, Scenario, Transport};
use crate::stats::median;

/// The idle scenario.
pub struct Idle;

fn total(o: &Outcome) -> Option<f64> {
    Some((o.cpu_ns? + o.peer_cpu_ns?) as f64)
}

impl Spec for Idle {
    fn scenario(&self) -> Scenario {
        Scenario::Idle
    }

    fn groups(&self, o: &Options, ctx: &Context) -> Vec<Group> {
        let make = |t: Transport| {
            let mut j = job(ctx, o, Scenario::Idle, t);
            j.duration_ns = (o.idle * 1e9) as u64;
            j.ring = FANOUT_RING;
            j
        };
        let mut variants: Vec<Variant> = [Transport::Shm, Transport::Socket]
            .into_iter()
            .filter(|&t| o.has(t))
            .map(|t| Variant {
                transport: t,
                job: make(t),
            })
            .collect();
        variants.extend(baselines(o, make));
        vec![Group {
            title: format!("{} s", o.idle),
            variants,
        }]
    }

    fn notes(&self, _o: &Options) -> Vec<String> {
        vec![
            "both peers blocked receiving on an open stream (shmbus: WaitPolicy::BLOCKING); CPU = utime+stime of each peer process from /proc (10 ms ticks)".into(),
            "uds, pipe: blocked in read(2); bare_ring: both peers spin-waiting on their ring".into(),
            "% core: both peers' CPU time / the idle time; ratios compare both peers' CPU time (— when the baseline used none)".into(),
        ]
    }

    fn columns(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("caller CPU ms", 13),
            ("service CPU ms", 14),
            ("broker CPU ms", 13),
            ("% core", 7),
        ]
    }

    fn cells(&self, runs: &[&Outcome]) -> Vec<String> {
        let ms = |f: fn(&Outcome) -> Option<u64>| {
            median(&values(runs, |o| f(o).map(|c| c as f64)), 1e-6, 0)
        };
        vec![
            ms(|o| o.cpu_ns),
            ms(|o| o.peer_cpu_ns),
            ms(|o| o.broker_cpu_ns),
            median(
                &values(runs, |o| Some(total(o)? / (o.secs * 1e9))),
                100.0,
                1,
            ),
        ]
    }

    fn headline(&self, o: &Outcome) -> Option<f64> {
        total(o)
    }

    fn fields(&self, _v: &Variant, runs: &[&Outcome]) -> Map<String, Value> {
        let mut m = Map::new();
        put(
            &mut m,
            "seconds",
            crate::stats::summarize(&values(runs, |o| Some(o.secs))).map(|s| s.median),
        );
        put(
            &mut m,
            "caller_cpu_ns",
            median_u64(runs, |o| o.cpu_ns.map(|c| c as f64)),
        );
        put(
            &mut m,
            "service_cpu_ns",
            median_u64(runs, |o| o.peer_cpu_ns.map(|c| c as f64)),
        );
        put(
            &mut m,
            "broker_cpu_ns",
            median_u64(runs, |o| o.broker_cpu_ns.map(|c| c as f64)),
        );
        m
    }
}
