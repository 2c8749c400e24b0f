//! The scenarios: which measurements each one makes ([`Group`]s of
//! [`Variant`]s run round-robin), how its table reads and what its JSON
//! records hold.

pub mod blob;
pub mod bridge;
pub mod fanout;
pub mod idle;
pub mod latency;
pub mod setup;
pub mod spec;
pub mod throughput;

use crate::job::Scenario;
pub use spec::{Context, Group, Spec, Variant};

/// Every scenario's definition.
pub fn definition(s: Scenario) -> Box<dyn Spec> {
    match s {
        Scenario::Throughput => Box::new(throughput::Throughput),
        Scenario::Latency => Box::new(latency::Latency),
        Scenario::Setup => Box::new(setup::Setup),
        Scenario::Fanout => Box::new(fanout::Fanout),
        Scenario::Idle => Box::new(idle::Idle),
        Scenario::Blob => Box::new(blob::Blob),
        Scenario::Bridge => Box::new(bridge::Bridge),
        Scenario::Crash | Scenario::Soak | Scenario::Flood => {
            unreachable!("fault scenarios run in crate::faults")
        }
    }
}
