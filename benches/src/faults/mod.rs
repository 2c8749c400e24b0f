//! Fault scenarios: what the bus does when peers die, misbehave or flood it.
//! Not part of a default run (they measure robustness, not speed); chosen
//! with `--scenario crash`, `soak` or `flood`.
//!
//! - [`crash`]: SIGKILL of a producer or a consumer at random points, over
//!   both transports; the survivor's error delay, distribution over the
//!   trials, and what leaks.
//! - [`soak`]: streams, random kills and malformed traffic mixed for a
//!   chosen time; errors against injected faults, descriptor and RSS drift.
//! - [`flood`]: one user floods the broker; another user's call-setup
//!   latency with and without the flood.

pub mod crash;
pub mod flood;
pub mod harness;
pub mod peer;
pub mod soak;

use crate::cli::FaultOptions;
use crate::job::Fault;

/// Runs the fault scenarios asked for, printing tables; the JSON records.
pub fn run(which: &[Fault], o: &FaultOptions) -> Result<(Vec<serde_json::Value>, usize), String> {
    let (mut records, mut failures) = (Vec::new(), 0);
    for f in which {
        let r = match f {
            Fault::Crash => crash::run(o),
            Fault::Soak => soak::run(o),
            Fault::Flood => flood::run(o),
        };
        match r {
            Ok((recs, fails)) => {
                records.extend(recs);
                failures += fails;
            }
            Err(e) => {
                println!("{f:?}: failed: {e}");
                failures += 1;
            }
        }
    }
    Ok((records, failures))
}
