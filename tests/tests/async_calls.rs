//! Calls and services for tokio (feature `tokio`): `start_async`,
//! `unary_async`, `collect_async`, `finish_async`, `list_async`, `Service::next_async`
//! and `reply_async`, across real processes and a real broker, on both
//! runtimes; call futures dropped midway cancel their call and leave no
//! descriptor behind.

use std::time::Duration;

use shmbus_client::{
    AsyncReceiver, AsyncSender, Connection, CreditSpec, Error, ErrorCode, MethodSpec, StreamMode,
    TransportPreference,
};
use shmbus_tests::{fnv1a, pattern, tokio_runtimes, Broker, Peer};

const SEC: Duration = Duration::from_secs(1);

#[test]
fn every_flow_with_an_async_caller() {
    let broker = Broker::start();
    let _numbers = Peer::serve(&broker, &["numbers", "nums"]);
    let _sink = Peer::serve(&broker, &["sink", "store"]);
    let _echo = Peer::serve(&broker, &["echo", "e"]);
    let _math = Peer::serve(&broker, &["unary", "math"]);
    let _failing = Peer::serve(&broker, &["failing", "bad"]);
    let socket = broker.socket.clone();
    for (name, rt) in tokio_runtimes() {
        rt.block_on(async {
            let conn = Connection::connect_async(&socket).await.unwrap();
            for transport in [
                TransportPreference::SharedMemory,
                TransportPreference::Socket,
            ] {
                // Download.
                let mut call = conn
                    .call("nums", "numbers")
                    .args_typed(&5000u64)
                    .unwrap()
                    .transport(transport)
                    .credit(CreditSpec::items(16))
                    .start_async()
                    .await
                    .unwrap();
                let mut rx = AsyncReceiver::new(call.take_receiver().unwrap()).unwrap();
                let mut n = 0u64;
                while let Some(i) = rx.recv::<u64>().await.unwrap() {
                    assert_eq!(i, n, "{name}");
                    n += 1;
                }
                assert_eq!(n, 5000);
                call.finish_async().await.unwrap();
                // Upload.
                let data = pattern(3, 1 << 20);
                let mut call = conn
                    .call("store", "sink")
                    .transport(transport)
                    .start_async()
                    .await
                    .unwrap();
                let mut tx = AsyncSender::new(call.take_sender().unwrap()).unwrap();
                for chunk in data.chunks(10_000) {
                    tx.feed_bytes(chunk).await.unwrap();
                }
                tx.finish().await.unwrap();
                let got = call.finish_async().await.unwrap();
                assert_eq!(
                    String::from_utf8(got).unwrap(),
                    format!("{},{}", data.len(), fnv1a(0, &data))
                );
                // Bidirectional, the sender left in the call for finish_async.
                let mut call = conn
                    .call("e", "echo")
                    .transport(transport)
                    .start_async()
                    .await
                    .unwrap();
                let mut rx = AsyncReceiver::new(call.take_receiver().unwrap()).unwrap();
                let mut tx = AsyncSender::new(call.take_sender().unwrap()).unwrap();
                tx.send_bytes(b"hi").await.unwrap();
                let item = rx.recv_bytes().await.unwrap().unwrap();
                assert_eq!(item, b"Echo: hi");
                tx.finish().await.unwrap();
                assert_eq!(rx.recv_bytes().await.unwrap(), None);
                call.finish_async().await.unwrap();
                // Stream-error after items, and a failed call.
                let mut call = conn
                    .call("bad", "fail")
                    .args_typed(&3u64)
                    .unwrap()
                    .transport(transport)
                    .start_async()
                    .await
                    .unwrap();
                let mut rx = AsyncReceiver::new(call.take_receiver().unwrap()).unwrap();
                for i in 0..3u64 {
                    assert_eq!(rx.recv::<u64>().await.unwrap(), Some(i));
                }
                let e = rx.recv::<u64>().await.unwrap_err();
                assert!(
                    matches!(&e, Error::Stream(m) if m == "Processing failed"),
                    "{e}"
                );
                let e = call.finish_async().await.unwrap_err();
                assert_eq!(e.code(), Some(ErrorCode::Failed));
            }
            // Unary, and a batch.
            let sum = conn
                .call("math", "add")
                .args_typed(&(40u64, 2u64))
                .unwrap()
                .unary_async()
                .await
                .unwrap();
            assert_eq!(sum, 42u64.to_le_bytes());
            let all: Vec<u64> = conn
                .call("nums", "numbers")
                .args_typed(&100u64)
                .unwrap()
                .collect_async()
                .await
                .unwrap();
            assert_eq!(all, (0..100).collect::<Vec<_>>());
            // A clear error for an unknown service.
            let e = conn.call("nobody", "x").unary_async().await.unwrap_err();
            assert_eq!(e.code(), Some(ErrorCode::NoSuchService));
        });
    }
}

#[test]
fn an_async_service_answers_blocking_callers() {
    let broker = Broker::start();
    let socket = broker.socket.clone();
    for (name, rt) in tokio_runtimes() {
        let service_name = format!("gen-{name}");
        rt.block_on(async {
            let conn = Connection::connect_async(&socket).await.unwrap();
            let service = conn
                .register_async(
                    &service_name,
                    &[
                        MethodSpec::new("numbers", StreamMode::Download),
                        MethodSpec::new("add", StreamMode::Unary),
                    ],
                )
                .await
                .unwrap();
            // The broker refuses the name a second time, and the refusal
            // reaches the awaiting task.
            let again = conn
                .register_async(&service_name, &[MethodSpec::new("add", StreamMode::Unary)])
                .await;
            match again {
                Err(e) => assert_eq!(e.code(), Some(ErrorCode::NameTaken), "{name}: {e}"),
                Ok(_) => panic!("{name}: a second registration of one name was accepted"),
            }
            let mut consumer = Peer::start(&broker, &["consume", &service_name, "numbers", "shm"]);
            let mut adder = Peer::start(&broker, &["call-add", &service_name]);
            for _ in 0..2 {
                let next = tokio::time::timeout(10 * SEC, service.next_async()).await;
                let mut call = next.expect("the service's calls arrive").unwrap().unwrap();
                let job = tokio::spawn(async move {
                    if call.method() == "add" {
                        let (a, b): (u64, u64) = call.args_typed()?;
                        return call.reply_async((a + b).to_le_bytes().to_vec()).await;
                    }
                    let mut tx = AsyncSender::new(call.take_sender().unwrap())?;
                    for i in 0..20_000u64 {
                        tx.feed(&i).await?;
                    }
                    tx.finish().await?;
                    call.reply_async(Vec::new()).await
                });
                job.await.unwrap().unwrap();
            }
            assert_eq!(adder.expect_line("result", 10 * SEC), "5", "{name}");
            assert_eq!(consumer.expect_line("done", 10 * SEC), "20000", "{name}");
        });
    }
}

#[test]
fn dropped_call_futures_cancel_their_call_and_leak_nothing() {
    let broker = Broker::start();
    let mut endless = Peer::serve(&broker, &["endless", "inf"]);
    let _slow = Peer::serve(&broker, &["deadlines", "dl"]);
    let socket = broker.socket.clone();
    let baseline = broker.fd_baseline();
    for (name, rt) in tokio_runtimes() {
        rt.block_on(async {
            let conn = Connection::connect_async(&socket).await.unwrap();
            // finish_async dropped while it drains an endless stream: the
            // call is cancelled, and the service hears of it.
            let call = conn
                .call("inf", "endless")
                .credit(CreditSpec::items(8))
                .start_async()
                .await
                .unwrap();
            let r = tokio::time::timeout(Duration::from_millis(100), call.finish_async()).await;
            assert!(r.is_err(), "{name}: an endless stream cannot finish");
            endless.expect_line("cancelled-after", 10 * SEC);
            // unary_async dropped while the service naps: cancelled too.
            let nap = conn
                .call("dl", "nap")
                .args_typed(&(0u64, 300u64))
                .unwrap()
                .unary_async();
            assert!(tokio::time::timeout(Duration::from_millis(50), nap)
                .await
                .is_err());
            // start_async dropped at once, many times.
            for _ in 0..50 {
                let start = conn
                    .call("inf", "endless")
                    .credit(CreditSpec::items(2))
                    .start_async();
                let _ = tokio::time::timeout(Duration::from_micros(1), start).await;
            }
            drop(conn);
        });
    }
    // Every call, stream and connection is gone from the broker.
    broker.wait_fds(baseline);
}

#[test]
fn deadlines_under_tokio_on_both_sides() {
    let broker = Broker::start();
    let mut dl = Peer::serve(&broker, &["deadlines", "dl"]);
    let socket = broker.socket.clone();
    for (name, rt) in tokio_runtimes() {
        let service_name = format!("adl-{name}");
        rt.block_on(async {
            let conn = Connection::connect_async(&socket).await.unwrap();
            // Past before it was routed.
            let r = conn
                .call("dl", "nap")
                .args_typed(&(0u64, 0u64))
                .unwrap()
                .deadline(std::time::Instant::now() - Duration::from_millis(1))
                .unary_async()
                .await;
            assert!(matches!(r, Err(Error::DeadlineExceeded)), "{name}: {r:?}");
            // Mid-stream, at the async caller.
            let mut call = conn
                .call("dl", "drip")
                .args_typed(&(1000u64, 20u64))
                .unwrap()
                .timeout(Duration::from_millis(300))
                .start_async()
                .await
                .unwrap();
            let mut rx = AsyncReceiver::new(call.take_receiver().unwrap()).unwrap();
            let mut got = 0u64;
            let e = loop {
                match rx.recv::<u64>().await {
                    Ok(Some(i)) => {
                        assert_eq!(i, got);
                        got += 1;
                    }
                    Ok(None) => panic!("ended"),
                    Err(e) => break e,
                }
            };
            assert!(matches!(e, Error::DeadlineExceeded), "{name}: {e}");
            assert!(got >= 3);
            assert!(matches!(
                call.finish_async().await,
                Err(Error::DeadlineExceeded)
            ));
            assert_eq!(dl.expect_line("send-failed", 10 * SEC), "deadline exceeded");
            // While the result is on its way.
            let mut call = conn
                .call("dl", "late")
                .args_typed(&(3u64, 800u64))
                .unwrap()
                .timeout(Duration::from_millis(300))
                .start_async()
                .await
                .unwrap();
            let mut rx = AsyncReceiver::new(call.take_receiver().unwrap()).unwrap();
            let mut items = Vec::new();
            while let Some(i) = rx.recv::<u64>().await.unwrap() {
                items.push(i);
            }
            assert_eq!(items, [0, 1, 2]);
            assert!(matches!(
                call.finish_async().await,
                Err(Error::DeadlineExceeded)
            ));
            // At an async service blocked on credit: its send fails at the
            // deadline the caller (another process) gave.
            let service = conn
                .register_async(
                    &service_name,
                    &[MethodSpec::new("flood", StreamMode::Download)],
                )
                .await
                .unwrap();
            let mut caller =
                Peer::start(&broker, &["call-deadline", &service_name, "flood", "300"]);
            let mut call = service.next_async().await.unwrap().unwrap();
            let left = call.time_left().unwrap();
            assert!(left <= Duration::from_millis(300) && left > Duration::from_millis(100));
            let mut tx = AsyncSender::new(call.take_sender().unwrap()).unwrap();
            let mut sent = 0u64;
            let e = loop {
                match tx.send(&sent).await {
                    Ok(()) => sent += 1,
                    Err(e) => break e,
                }
            };
            assert!(matches!(e, Error::DeadlineExceeded), "{name}: {e}");
            assert_eq!(sent, 2, "credit for two items");
            call.reply_async(Vec::new()).await.unwrap();
            assert_eq!(caller.expect_line("finish", 10 * SEC), "deadline exceeded");
        });
    }
}

/// Descriptors this process holds.
fn own_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn reserves_and_sends_dropped_at_random_leave_the_stream_whole_and_nothing_open() {
    let broker = Broker::start();
    let _sink = Peer::serve(&broker, &["sink", "store", "--delay-us", "2000"]);
    let socket = broker.socket.clone();
    let broker_fds = broker.fd_baseline();
    for (name, rt) in tokio_runtimes() {
        rt.block_on(async {
            let conn = Connection::connect_async(&socket).await.unwrap();
            let fds = own_fds();
            for transport in [
                TransportPreference::SharedMemory,
                TransportPreference::Socket,
            ] {
                let mut call = conn
                    .call("store", "sink")
                    .transport(transport)
                    .credit(CreditSpec::items(2))
                    .start_async()
                    .await
                    .unwrap();
                let mut tx = AsyncSender::new(call.take_sender().unwrap()).unwrap();
                let (mut sent, mut hash, mut bytes, mut dropped) = (0u64, 0u64, 0u64, 0u32);
                while sent < 150 {
                    let item = pattern(sent, 100 + (sent as usize % 7) * 1000);
                    let wait = Duration::from_millis(1 + sent % 3);
                    let done = if sent % 2 == 0 {
                        match tokio::time::timeout(wait, tx.reserve(item.len())).await {
                            Err(_) => false,
                            Ok(slot) => {
                                let mut slot = slot.unwrap();
                                slot.buf()[..item.len()].copy_from_slice(&item);
                                slot.commit(item.len()).unwrap();
                                true
                            }
                        }
                    } else {
                        match tokio::time::timeout(wait, tx.send_bytes(&item)).await {
                            Err(_) => false,
                            Ok(r) => {
                                r.unwrap();
                                true
                            }
                        }
                    };
                    if done {
                        hash = fnv1a(hash, &item);
                        bytes += item.len() as u64;
                        sent += 1;
                    } else {
                        dropped += 1;
                    }
                }
                tx.finish().await.unwrap();
                assert!(dropped > 20, "{name}: only {dropped} waits were dropped");
                let got = String::from_utf8(call.finish_async().await.unwrap()).unwrap();
                assert_eq!(got, format!("{bytes},{hash}"), "{name} {transport:?}");
            }
            // Every port closed again in this process.
            assert_eq!(own_fds(), fds, "{name}: descriptors left open");
        });
    }
    broker.wait_fds(broker_fds);
}

#[test]
fn a_caller_cancels_under_tokio_and_the_result_is_call_aborted() {
    let broker = Broker::start();
    let mut endless = Peer::serve(&broker, &["endless", "inf"]);
    let socket = broker.socket.clone();
    for (name, rt) in tokio_runtimes() {
        rt.block_on(async {
            let conn = Connection::connect_async(&socket).await.unwrap();
            for transport in [
                TransportPreference::SharedMemory,
                TransportPreference::Socket,
            ] {
                let mut call = conn
                    .call("inf", "endless")
                    .transport(transport)
                    .credit(CreditSpec::items(8))
                    .start_async()
                    .await
                    .unwrap();
                let handle = call.cancel_handle();
                let mut rx = AsyncReceiver::new(call.take_receiver().unwrap()).unwrap();
                for i in 0..100u64 {
                    assert_eq!(rx.recv::<u64>().await.unwrap(), Some(i));
                }
                // Cancelled from another task while this one receives.
                tokio::spawn(async move { handle.cancel() })
                    .await
                    .unwrap()
                    .unwrap();
                let e = loop {
                    match rx.recv::<u64>().await {
                        Ok(Some(_)) => {}
                        Ok(None) => panic!("{name}: the stream ended instead"),
                        Err(e) => break e,
                    }
                };
                assert!(matches!(e, Error::Cancelled), "{name} {transport:?}: {e}");
                let e = call.finish_async().await.unwrap_err();
                assert_eq!(e.code(), Some(ErrorCode::Aborted), "{name} {transport:?}");
                endless.expect_line("cancelled-after", 10 * SEC);
            }
        });
    }
}

#[test]
fn a_registration_future_dropped_midway_leaves_the_name_free() {
    let broker = Broker::start();
    let socket = broker.socket.clone();
    for (name, rt) in tokio_runtimes() {
        rt.block_on(async {
            let conn = Connection::connect_async(&socket).await.unwrap();
            let add = [MethodSpec::new("add", StreamMode::Unary)];
            // Polled once (the registration goes out), then dropped; had
            // the broker answered already, the service it gave is dropped.
            let register = conn.register_async("abandoned", &add);
            tokio::select! {
                biased;
                service = register => drop(service.unwrap()),
                _ = std::future::ready(()) => {}
            }
            let again = conn.register_async("abandoned", &add).await;
            assert!(again.is_ok(), "{name}: {:?}", again.err());
            let other = broker.connect();
            drop(again);
            let mut taken = Err(Error::BrokerGone);
            for _ in 0..100 {
                taken = other.register("abandoned", &add);
                if taken.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(taken.is_ok(), "{name}: {:?}", taken.err());
        });
    }
}

#[test]
fn list_async_sees_services_and_fails_when_the_broker_dies() {
    let mut broker = Broker::start();
    let _math = Peer::serve(&broker, &["unary", "math"]);
    let conn = broker.connect();
    for (name, rt) in tokio_runtimes() {
        let listed = rt.block_on(conn.list_async()).unwrap();
        let math = listed.services.iter().find(|s| s.name == "math");
        let methods: Vec<_> = math.unwrap().methods.iter().map(|m| &m.name).collect();
        assert_eq!(methods, ["add"], "{name}");
    }
    // Asked while the broker is stopped, answered with an error once it is
    // killed: the future wakes, it does not wait forever.
    let pid = broker.pid();
    shmbus_tests::send_signal(pid, libc::SIGSTOP);
    let killer = std::thread::spawn(move || {
        std::thread::sleep(SEC / 2);
        shmbus_tests::send_signal(pid, libc::SIGKILL);
    });
    let (_, rt) = tokio_runtimes().remove(1);
    let r = rt.block_on(async { tokio::time::timeout(10 * SEC, conn.list_async()).await });
    killer.join().unwrap();
    broker.kill();
    assert!(matches!(r, Ok(Err(Error::BrokerGone))), "{r:?}");
}
