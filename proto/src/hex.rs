//! Lowercase hexadecimal, the one spelling of bytes in ferry's file names, logs, URLs and
//! records (node ids, blob ids, stored keys).

/// `bytes` as lowercase hex, two digits a byte.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// The bytes `s` spells, in exactly the form [`encode`] writes (lowercase, an even length);
/// `None` for anything else.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let b = s.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    b.chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// [`decode`] into exactly `N` bytes.
pub fn decode_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    decode(s)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_and_decode_round_trip_and_refuse_other_spellings() {
        let b = [0x00, 0x9f, 0xa0, 0xff];
        assert_eq!(encode(&b), "009fa0ff");
        assert_eq!(decode("009fa0ff"), Some(b.to_vec()));
        assert_eq!(decode_array::<4>("009fa0ff"), Some(b));
        assert_eq!(decode_array::<3>("009fa0ff"), None);
        for bad in ["009FA0FF", "0", "0g", " 00", "00 "] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        assert_eq!(decode(""), Some(Vec::new()));
    }
}
