//! AMT messages (RFC 7450 §5.1) as a gateway or relay receives them in a
//! UDP payload: `amt_gateway::wire::amt::Message::decode`.
//!
//! Asserts: the cheap type check agrees with the full decode; a decoded
//! message re-encodes to `encoded_len` bytes that decode to the same
//! message, and that encoding is a fixed point; `emit` into a buffer one
//! byte short fails cleanly.
#![no_main]

use amt_gateway::wire::amt::{Message, message_type};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let kind = message_type(data);
    let Ok(msg) = Message::decode(data) else {
        return;
    };
    assert_eq!(kind, Ok(msg.message_type()));
    let bytes = msg.to_vec();
    assert_eq!(bytes.len(), msg.encoded_len());
    let again = Message::decode(&bytes).expect("a re-encoded message decodes");
    assert_eq!(again, msg, "decode -> encode -> decode changed the message");
    assert_eq!(again.to_vec(), bytes, "encoding is not a fixed point");
    let mut short = vec![0u8; bytes.len() - 1];
    assert!(msg.emit(&mut short).is_err());
});
