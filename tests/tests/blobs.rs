//! Sealed blobs on streams, across real processes and a real broker, over
//! both transports: sizes from 0 B to 1 GiB, blobs interleaved with items
//! in order, both directions, a receiver keeping blobs after the stream
//! ended and its sender exited, the receiver's limit, and the sender's
//! credit rules.

use std::os::fd::AsFd;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use shmbus_client::{
    Blob, BlobWriter, Call, Connection, CreditSpec, Error, Received, StreamMode, Transport,
};
use shmbus_tests::{blob_holds, both_transports, fill_blob, pref, Broker, Peer};

const SEC: Duration = Duration::from_secs(1);

fn download(conn: &Connection, t: Transport, sizes: &[u64], credit: CreditSpec) -> Call {
    conn.call("blobs", "blobs")
        .args_typed(&sizes.to_vec())
        .unwrap()
        .transport(pref(t))
        .credit(credit)
        .start()
        .unwrap()
}

fn upload(conn: &Connection, t: Transport, credit: CreditSpec) -> Call {
    conn.call("blobs", "take")
        .mode(StreamMode::Upload)
        .transport(pref(t))
        .credit(credit)
        .start()
        .unwrap()
}

/// Receives what the `blobs` method sends for `sizes`: item `i`, then
/// blob `i`, checked; returns the blobs, still held.
fn receive_all(call: &mut Call, sizes: &[u64]) -> Vec<Blob> {
    let rx = call.receiver().unwrap();
    let mut blobs = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        assert_eq!(rx.recv::<u64>().unwrap(), Some(i as u64), "item {i} first");
        let blob = rx.recv_blob().unwrap().expect("a blob");
        assert_eq!(blob.len() as u64, size, "blob {i}");
        assert!(blob_holds(i as u64, &blob), "blob {i} holds its pattern");
        blobs.push(blob);
    }
    assert!(rx.recv_blob().unwrap().is_none(), "then stream-end");
    blobs
}

/// The seals a receiver sees on a blob: no one can write or resize it.
fn assert_sealed(blob: &Blob) {
    let seals = SealFlag::from_bits_truncate(fcntl(blob.as_fd(), FcntlArg::F_GET_SEALS).unwrap());
    assert!(
        seals.contains(SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW)
    );
}

fn blobs_of_every_size_interleave_with_items(t: Transport) {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["blobs", "blobs"]);
    let conn = broker.connect();
    let sizes = [0, 1, 4096, 5000, 1 << 20, 3, 16 << 20];
    let mut call = download(&conn, t, &sizes, CreditSpec::items(4));
    let blobs = receive_all(&mut call, &sizes);
    assert_eq!(call.finish().unwrap(), b"ok");
    for b in &blobs {
        assert_sealed(b);
    }
}

fn a_gibibyte_blob_is_handed_over_whole(t: Transport) {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["blobs", "blobs"]);
    let conn = broker.connect();
    let sizes = [1 << 30];
    let mut call = download(&conn, t, &sizes, CreditSpec::items(2));
    let blobs = receive_all(&mut call, &sizes);
    call.finish().unwrap();
    assert_eq!(blobs[0].len(), 1 << 30);
}

fn blobs_outlive_their_stream_and_their_sender(t: Transport) {
    let broker = Broker::start();
    let mut peer = Peer::serve(&broker, &["blobs", "blobs", "--exit", "1"]);
    let conn = broker.connect();
    let sizes = [4096, 1 << 20];
    let mut call = download(&conn, t, &sizes, CreditSpec::items(8));
    // Let the sender finish, answer and exit before anything is read.
    peer.expect_line("exiting", 10 * SEC);
    assert_eq!(peer.wait(), Some(0));
    let blobs = receive_all(&mut call, &sizes);
    assert_eq!(call.finish().unwrap(), b"ok");
    for (i, b) in blobs.iter().enumerate() {
        assert!(blob_holds(i as u64, b), "blob {i} after the sender exited");
        assert_sealed(b);
    }
}

fn a_caller_uploads_blobs_and_items(t: Transport) {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["blobs", "blobs"]);
    let conn = broker.connect();
    let mut call = upload(&conn, t, CreditSpec::bytes(64 << 20));
    let tx = call.sender().unwrap();
    let mut total = 0;
    for (i, size) in [10u64, 0, 1 << 20, 123_457].into_iter().enumerate() {
        tx.send_bytes(b"between").unwrap();
        let mut w = BlobWriter::new(size).unwrap();
        fill_blob(i as u64, w.as_mut_slice());
        let blob = w.seal().unwrap();
        tx.send_blob(&blob).unwrap();
        // The sender keeps its blob, unchanged.
        assert!(blob_holds(i as u64, &blob));
        total += size;
    }
    let answer = String::from_utf8(call.finish().unwrap()).unwrap();
    assert_eq!(answer, format!("items 4 blobs 4 bytes {total} good"));
}

fn a_blob_over_the_receivers_limit_fails_the_stream(t: Transport) {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["blobs", "blobs"]);
    let conn = broker.connect();
    let mut call = download(&conn, t, &[100, 1 << 20, 100], CreditSpec::items(8));
    let rx = call.receiver().unwrap();
    rx.set_blob_limit(64 << 10);
    assert_eq!(rx.recv::<u64>().unwrap(), Some(0));
    assert_eq!(rx.recv_blob().unwrap().unwrap().len(), 100);
    assert_eq!(rx.recv::<u64>().unwrap(), Some(1));
    match rx.recv_blob() {
        Err(Error::Protocol(m)) => {
            assert!(m.contains("exceed the receiver's limit of 65536"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

fn items_and_blobs_each_have_their_receive(t: Transport) {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["blobs", "blobs"]);
    let conn = broker.connect();
    let mut call = download(&conn, t, &[3000, 7], CreditSpec::items(8));
    let rx = call.receiver().unwrap();
    // A blob asked for where an item comes: an error, and the item stays.
    match rx.recv_blob() {
        Err(Error::NotABlob { len: 1 }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(rx.recv::<u64>().unwrap(), Some(0));
    // A receiver that knows nothing of blobs gets a blob's bytes.
    let bytes = rx.recv_bytes().unwrap().unwrap();
    assert!(blob_holds(0, &bytes));
    // recv_any tells them apart.
    match rx.recv_any().unwrap() {
        Some(Received::Item(item)) => assert_eq!(&*item, &[1]),
        _ => panic!("item 1"),
    }
    match rx.recv_any().unwrap() {
        Some(Received::Blob(b)) => assert!(blob_holds(1, &b) && b.len() == 7),
        _ => panic!("blob 1"),
    }
    assert!(rx.recv_any().unwrap().is_none());
    call.finish().unwrap();
}

fn a_blob_too_costly_for_bytes_credit_is_refused_before_sending(t: Transport) {
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["blobs", "blobs"]);
    let conn = broker.connect();
    let mut call = upload(&conn, t, CreditSpec::bytes(1 << 20));
    let tx = call.sender().unwrap();
    let blob = Blob::copy_from(&vec![7; (1 << 20) + 1]).unwrap();
    match tx.send_blob(&blob) {
        Err(Error::TooLarge(m)) => {
            assert!(m.contains("ask for items credit"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    // Nothing went out: the stream goes on.
    let mut w = BlobWriter::new(100).unwrap();
    fill_blob(0, w.as_mut_slice());
    tx.send_blob(&w.seal().unwrap()).unwrap();
    let answer = String::from_utf8(call.finish().unwrap()).unwrap();
    assert_eq!(answer, "items 0 blobs 1 bytes 100 good");
}

both_transports!(
    blobs_of_every_size_interleave_with_items,
    a_gibibyte_blob_is_handed_over_whole,
    blobs_outlive_their_stream_and_their_sender,
    a_caller_uploads_blobs_and_items,
    a_blob_over_the_receivers_limit_fails_the_stream,
    items_and_blobs_each_have_their_receive,
    a_blob_too_costly_for_bytes_credit_is_refused_before_sending,
);

/// The tokio halves: a download of items and blobs taken with `recv_blob`
/// and `recv_any`, and an upload with `send_blob`, on both runtimes.
#[test]
fn async_halves_send_and_take_blobs() {
    use shmbus_client::{AsyncReceiver, AsyncSender};
    let broker = Broker::start();
    let _peer = Peer::serve(&broker, &["blobs", "blobs"]);
    let socket = broker.socket.clone();
    for (name, rt) in shmbus_tests::tokio_runtimes() {
        rt.block_on(async {
            let conn = Connection::connect_async(&socket).await.unwrap();
            for t in [Transport::SharedMemory, Transport::Socket] {
                let sizes = [5u64, 1 << 20, 0];
                let mut call = conn
                    .call("blobs", "blobs")
                    .args_typed(&sizes.to_vec())
                    .unwrap()
                    .transport(pref(t))
                    .credit(CreditSpec::items(2))
                    .start_async()
                    .await
                    .unwrap();
                let mut rx = AsyncReceiver::new(call.take_receiver().unwrap()).unwrap();
                for (i, &size) in sizes.iter().enumerate() {
                    match rx.recv_blob().await {
                        Err(Error::NotABlob { .. }) => {}
                        other => panic!("{name} {t:?}: {other:?}"),
                    }
                    assert_eq!(rx.recv::<u64>().await.unwrap(), Some(i as u64));
                    match rx.recv_any().await.unwrap() {
                        Some(Received::Blob(b)) => {
                            assert_eq!(b.len() as u64, size);
                            assert!(blob_holds(i as u64, &b), "{name} {t:?} blob {i}");
                        }
                        _ => panic!("{name} {t:?}: blob {i}"),
                    }
                }
                assert!(rx.recv_blob().await.unwrap().is_none());
                assert_eq!(call.finish_async().await.unwrap(), b"ok");

                let mut call = conn
                    .call("blobs", "take")
                    .mode(StreamMode::Upload)
                    .transport(pref(t))
                    .credit(CreditSpec::items(1))
                    .start_async()
                    .await
                    .unwrap();
                let mut tx = AsyncSender::new(call.take_sender().unwrap()).unwrap();
                for i in 0..20u64 {
                    let mut w = BlobWriter::new(1000 + i).unwrap();
                    fill_blob(i, w.as_mut_slice());
                    tx.send_blob(&w.seal().unwrap()).await.unwrap();
                }
                tx.finish().await.unwrap();
                let total: u64 = (0..20).map(|i| 1000 + i).sum();
                let answer = String::from_utf8(call.finish_async().await.unwrap()).unwrap();
                assert_eq!(
                    answer,
                    format!("items 0 blobs 20 bytes {total} good"),
                    "{name} {t:?}"
                );
            }
        });
    }
}
