//! etcd's v3 JSON gateway: keys and values in base64, 64-bit numbers as
//! strings.

use std::io::BufReader;

use serde_json::Value;

/// The body as JSON, however large (a whole fleet's rules come in one).
pub(super) fn json_of(response: ureq::Response) -> Result<Value, String> {
    serde_json::from_reader(BufReader::new(response.into_reader())).map_err(|err| err.to_string())
}

/// etcd's gateway writes 64-bit numbers as strings.
pub(super) fn int(value: &Value) -> i64 {
    match value {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The end of the range of keys that start with `prefix`.
pub(super) fn range_end(prefix: &str) -> String {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("a prefix is never empty") += 1;
    b64_encode(&end)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub(super) fn b64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub(super) fn b64_decode(text: &str) -> Option<Vec<u8>> {
    // Each character's value, 64 for none: a joining member decodes a
    // whole fleet's keys.
    #[expect(clippy::cast_possible_truncation, reason = "the values are below 64")]
    const VALUES: [u8; 256] = {
        let mut values = [64u8; 256];
        let mut i = 0;
        while i < 64 {
            values[B64[i] as usize] = i as u8;
            i += 1;
        }
        values
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = VALUES[usize::from(c)];
        if v == 64 {
            return None;
        }
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits).to_le_bytes()[0]);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for text in [
            "",
            "a",
            "ab",
            "abc",
            "/spacefilter/edge/block/198.18.2.0/24",
        ] {
            let encoded = b64_encode(text.as_bytes());
            assert_eq!(b64_decode(&encoded).unwrap(), text.as_bytes());
        }
        assert_eq!(
            b64_encode(b"/sf/t/block/1.2.3.4/32"),
            "L3NmL3QvYmxvY2svMS4yLjMuNC8zMg=="
        );
        assert_eq!(range_end("/a/"), b64_encode(b"/a0"));
    }
}
