//! Unit tests of the encoder and decoder together; the codec's property tests are in
//! `proto/tests/frames.rs`.

use bytes::BytesMut;

use super::*;
use crate::limits::ERROR_MESSAGE_BYTES_MAX;

/// An over-long message whose cut at `ERROR_MESSAGE_BYTES_MAX` falls inside a character is
/// truncated further back; the length prefix must count the bytes actually written.
#[test]
fn error_message_truncated_inside_a_character_keeps_the_stream_framed() {
    let message = format!("{}é", "a".repeat(ERROR_MESSAGE_BYTES_MAX - 1));
    let f = Frame::Error {
        code: ErrorCode::Internal,
        message,
    };
    let mut out = BytesMut::new();
    f.encode(&mut out);
    assert_eq!(out.len(), f.encoded_len());
    Frame::Ping { nonce: 7 }.encode(&mut out);
    let Some(Frame::Error { message, .. }) = decode_frame(&mut out).unwrap() else {
        panic!("not an Error frame");
    };
    assert_eq!(message, "a".repeat(ERROR_MESSAGE_BYTES_MAX - 1));
    assert_eq!(
        decode_frame(&mut out).unwrap(),
        Some(Frame::Ping { nonce: 7 })
    );
    assert!(out.is_empty());
}
