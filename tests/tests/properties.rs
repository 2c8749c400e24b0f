//! Property test across real processes: random item sizes, high-water
//! marks, size strategies, ring sizes, transports, directions and
//! cancellations. Whatever the mix, nothing is lost, duplicated or reordered:
//! the receiver sees exactly the sender's sequence, or an exact prefix of it
//! followed by the cancellation.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use shmbus_client::{CreditSpec, Error, SizeStrategy, StreamMode, TransportPreference};
use shmbus_tests::{Broker, Peer, SeqSpec};

#[derive(Debug, Clone)]
struct Case {
    spec: SeqSpec,
    strategy: SizeStrategy,
    hwm_slack: u64,
    ring_shift: u32,
    socket: bool,
    upload: bool,
    cancel_at: Option<u64>,
}

fn cases() -> impl Strategy<Value = Case> {
    (
        any::<u64>(),
        0u64..600,
        0u32..3000,
        prop_oneof![
            Just(SizeStrategy::Items),
            Just(SizeStrategy::Bytes),
            Just(SizeStrategy::Custom)
        ],
        0u64..5000,
        13u32..18,
        any::<bool>(),
        any::<bool>(),
        proptest::option::weighted(0.25, 0u64..600),
    )
        .prop_map(
            |(
                seed,
                count,
                max_size,
                strategy,
                hwm_slack,
                ring_shift,
                socket,
                upload,
                cancel_at,
            )| Case {
                spec: SeqSpec {
                    seed,
                    count,
                    max_size,
                },
                strategy,
                hwm_slack,
                ring_shift,
                socket,
                upload,
                cancel_at,
            },
        )
}

fn run(broker: &Broker, case: &Case) -> Result<(), TestCaseError> {
    let spec = case.spec;
    let biggest = 8 + spec.max_size as u64;
    // The smallest high-water mark that lets every item through (an item may
    // cost half of it), plus random slack.
    let need = match case.strategy {
        SizeStrategy::Items => 1,
        SizeStrategy::Bytes => biggest,
        SizeStrategy::Custom => SeqSpec::custom_charge(&vec![0; biggest as usize]),
    };
    let credit = CreditSpec {
        high_water_mark: 2 * need + case.hwm_slack,
        strategy: case.strategy,
    };
    // A ring whose largest record holds the biggest item.
    let mut ring = 1u32 << case.ring_shift;
    while (shmbus::ring::max_record(ring) as u64) < biggest {
        ring *= 2;
    }
    let conn = broker.connect();
    let mut call = conn
        .call("seq", if case.upload { "up" } else { "down" })
        .mode(if case.upload {
            StreamMode::Upload
        } else {
            StreamMode::Download
        })
        .args_typed(&spec)
        .unwrap()
        .credit(credit)
        .ring_size(ring)
        .transport(if case.socket {
            TransportPreference::Socket
        } else {
            TransportPreference::SharedMemory
        })
        .start()
        .map_err(|e| TestCaseError::fail(format!("start: {e}")))?;
    if case.upload {
        let tx = call.sender().unwrap();
        tx.set_size_fn(SeqSpec::custom_charge);
        for i in 0..spec.count {
            tx.send_bytes(&spec.item(i))
                .map_err(|e| TestCaseError::fail(format!("send {i}: {e}")))?;
        }
        tx.finish()
            .map_err(|e| TestCaseError::fail(format!("finish: {e}")))?;
        let verdict = String::from_utf8(call.finish().unwrap()).unwrap();
        prop_assert_eq!(verdict, format!("ok {}", spec.count));
        return Ok(());
    }
    let rx = call.receiver().unwrap();
    let mut i = 0u64;
    loop {
        if Some(i) == case.cancel_at {
            call.cancel().unwrap();
            let rx = call.receiver().unwrap();
            // Items already on their way may still arrive, in order.
            let end = loop {
                match rx.recv_bytes() {
                    Ok(Some(item)) => {
                        prop_assert_eq!(item, spec.item(i), "item {} after cancel", i);
                        i += 1;
                    }
                    other => break other,
                }
            };
            // A stream that had already ended normally cannot be cancelled.
            let ended = matches!(end, Ok(None)) && i == spec.count;
            prop_assert!(ended || matches!(end, Err(Error::Cancelled)), "{:?}", end);
            return Ok(());
        }
        match rx.recv_bytes() {
            Ok(Some(item)) => {
                prop_assert!(i < spec.count, "extra item {}", i);
                prop_assert_eq!(item, spec.item(i), "item {}", i);
                i += 1;
            }
            Ok(None) => break,
            Err(e) => return Err(TestCaseError::fail(format!("receive {i}: {e}"))),
        }
    }
    prop_assert_eq!(i, spec.count, "items lost");
    call.finish()
        .map_err(|e| TestCaseError::fail(format!("result: {e}")))?;
    Ok(())
}

#[test]
fn every_stream_delivers_exactly_what_was_sent() {
    let broker = Broker::start();
    let _service = Peer::serve(&broker, &["seq", "seq"]);
    let mut runner = TestRunner::new(Config {
        cases: std::env::var("SHMBUS_PROP_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64),
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&cases(), |case| run(&broker, &case)) {
        panic!("{e}");
    }
}
