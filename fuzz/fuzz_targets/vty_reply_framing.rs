//! The vty reply framing of FRR daemons (`output \0\0\0 status`), read in
//! arbitrary pieces from a unix socket:
//! `frr_bridge::frr::vty::ReplyDecoder`.
//!
//! Input: frames (`fuzz_support::Frames`): each control byte says whether
//! to take replies after pushing that piece; the bodies together are the
//! byte stream.
//! Asserts: the replies do not depend on how the stream was split (they
//! equal those of a simple reference decoder run on the whole stream); no
//! reply contains the trailer; buffered bytes are exactly what was not
//! yet consumed.
#![no_main]

use frr_bridge::frr::vty::{ReplyDecoder, VtyStatus};
use fuzz_support::Frames;
use libfuzzer_sys::fuzz_target;

/// Reference: split the whole stream at each first run of three NULs
/// followed by a status byte.
fn reference(mut stream: &[u8]) -> (Vec<(Vec<u8>, VtyStatus)>, usize) {
    let mut out = Vec::new();
    while let Some(i) = stream.windows(3).position(|w| w == [0, 0, 0]) {
        let Some(&status) = stream.get(i + 3) else {
            break;
        };
        out.push((stream[..i].to_vec(), VtyStatus::from(status)));
        stream = &stream[i + 4..];
    }
    (out, stream.len())
}

fuzz_target!(|data: &[u8]| {
    let mut decoder = ReplyDecoder::new();
    let mut stream = Vec::new();
    let mut replies = Vec::new();
    for (control, piece) in Frames::new(data) {
        decoder.push(piece);
        stream.extend_from_slice(piece);
        if control & 1 == 0 {
            while let Some(reply) = decoder.next_reply() {
                replies.push(reply);
            }
        }
    }
    while let Some(reply) = decoder.next_reply() {
        replies.push(reply);
    }
    let (expected, left) = reference(&stream);
    assert_eq!(replies, expected, "framing depends on the split");
    assert_eq!(decoder.buffered(), left);
    for (output, _) in &replies {
        assert!(!output.windows(3).any(|w| w == [0, 0, 0]));
    }
});
