//! Setup: a new call until its first item arrives, against a new Unix
//! socket connection until its first byte comes back.

use serde_json::{Map, Value};

use super::spec::{job, median_u64, percentile as p, put, values, Context, Group, Spec, Variant};
use crate::cli::Options;
use crate::job::{Job, Outcome, Scenario, Transport};
use crate::stats::{count, median, range};

/// The setup scenario.
pub struct Setup;

impl Spec for Setup {
    fn scenario(&self) -> Scenario {
        Scenario::Setup
    }

    fn groups(&self, o: &Options, ctx: &Context) -> Vec<Group> {
        let mut variants: Vec<Variant> = [Transport::Shm, Transport::Socket, Transport::Uds]
            .into_iter()
            .filter(|&t| o.has(t))
            .map(|t| Variant {
                transport: t,
                job: Job {
                    gap_ns: o.setup_gap_ns,
                    ..job(ctx, o, Scenario::Setup, t)
                },
            })
            .collect();
        // The tokio API's call setup, against the blocking one.
        if o.asynchronous && o.has(Transport::Shm) {
            variants.insert(
                1,
                Variant {
                    transport: Transport::Shm,
                    job: Job {
                        gap_ns: o.setup_gap_ns,
                        asynchronous: true,
                        ..job(ctx, o, Scenario::Setup, Transport::Shm)
                    },
                },
            );
        }
        vec![Group {
            title: "1 B".into(),
            variants,
        }]
    }

    fn notes(&self, o: &Options) -> Vec<String> {
        let mut notes = vec![
            "shm, socket: Connection::call(...).start() on an open broker connection until the first (1-byte) item is received; default ring and credit".to_string(),
            "shm async (--api): the same with start_async, AsyncReceiver::recv_in_place and finish_async on a current-thread runtime; ×sync against shm".into(),
            "uds: connect(2) to a listener in another process + 1-byte ping + 1-byte pong, a new connection each time".into(),
            "ratios compare p50 (below 1: shmbus is faster)".into(),
        ];
        if o.setup_gap_ns > 0 {
            notes.push(format!(
                "a pause of {} µs before each call and each uds connection (--gap): every call starts from idle, possibly halted, CPUs",
                o.setup_gap_ns / 1000
            ));
        }
        notes
    }

    fn columns(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("p50 µs median [min, max]", 26),
            ("p99 µs", 9),
            ("calls", 8),
        ]
    }

    fn cells(&self, runs: &[&Outcome]) -> Vec<String> {
        vec![
            range(&values(runs, |o| p(o, 0)), 1e-3, 1),
            median(&values(runs, |o| p(o, 1)), 1e-3, 1),
            count(&values(runs, |o| Some(o.items as f64))),
        ]
    }

    fn headline(&self, o: &Outcome) -> Option<f64> {
        p(o, 0)
    }

    fn fields(&self, _v: &Variant, runs: &[&Outcome]) -> Map<String, Value> {
        let mut m = Map::new();
        put(&mut m, "p50_ns", median_u64(runs, |o| p(o, 0)));
        put(&mut m, "p99_ns", median_u64(runs, |o| p(o, 1)));
        put(&mut m, "p999_ns", median_u64(runs, |o| p(o, 2)));
        m
    }
}
