//! Arbitrary bytes through the control-frame splitter and decoder, and the
//! socket port's stream-message decoder: errors are fine, panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmbus::frame::{self, DEFAULT_MAX_FRAME};
use shmbus::link;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((header, body))) = frame::split_frame(rest, DEFAULT_MAX_FRAME) {
        if let Ok(f) = frame::decode(&rest[body.clone()], header.fds as usize) {
            // What decodes must encode back to something that decodes the same.
            let mut again = Vec::new();
            frame::encode(&f, &mut again);
            let (h2, b2) = frame::split_frame(&again, u32::MAX).unwrap().unwrap();
            assert_eq!(frame::decode(&again[b2], h2.fds as usize).unwrap(), f);
        }
        rest = &rest[body.end..];
    }
    let mut rest = data;
    while let Ok(Some((msg, used))) = link::decode(rest, 1 << 16) {
        if let link::LinkMessage::Data(items) = msg {
            for (item, _charge) in items {
                assert!(item.len() <= rest.len());
            }
        }
        rest = &rest[used..];
    }
});
