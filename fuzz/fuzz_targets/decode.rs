//! Arbitrary bytes into `decode_frame`, frame after frame, until the stream ends or fails.
//!
//! Beyond "never panics", every frame that decodes must be canonical: re-encoding it gives exactly
//! the bytes it was decoded from, `encoded_len()` matches, and those bytes decode to the same
//! frame again.

#![no_main]

use bytes::BytesMut;
use ferry_proto::frame::{DecodeError, decode_frame};
use ferry_proto::limits::{FRAME_BYTES_MAX, FRAME_PREFIX_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        let consumed_from = data.len() - before;
        match decode_frame(&mut buf) {
            Ok(Some(frame)) => {
                let consumed = before - buf.len();
                assert!(consumed > FRAME_PREFIX_BYTES);
                assert!(consumed <= FRAME_PREFIX_BYTES + FRAME_BYTES_MAX);
                let original = &data[consumed_from..consumed_from + consumed];

                let encoded = frame.to_bytes();
                assert_eq!(
                    encoded.len(),
                    frame.encoded_len(),
                    "encoded_len of {frame:?}"
                );
                assert_eq!(
                    &encoded[..],
                    original,
                    "re-encoding {frame:?} changed its bytes"
                );

                let mut again = BytesMut::from(&encoded[..]);
                let back = decode_frame(&mut again).expect("re-encoded frame must decode");
                assert_eq!(back.as_ref(), Some(&frame));
                assert!(again.is_empty());
            }
            Ok(None) => {
                // Waiting for more: nothing was consumed, and what is there is a prefix of a
                // frame that is not complete yet.
                assert_eq!(buf.len(), before);
                if buf.len() >= FRAME_PREFIX_BYTES {
                    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    let len = usize::try_from(len).unwrap_or(usize::MAX);
                    assert!(buf.len() < FRAME_PREFIX_BYTES.saturating_add(len));
                }
                break;
            }
            Err(e) => {
                // A too-large or empty length prefix is reported without consuming anything.
                if matches!(
                    e,
                    DecodeError::FrameTooLarge { .. } | DecodeError::EmptyFrame
                ) {
                    assert_eq!(buf.len(), before);
                }
                let _ = e.code();
                let _ = e.to_string();
                break;
            }
        }
    }
});
