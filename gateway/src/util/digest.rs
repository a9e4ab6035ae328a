//! SHA-256, the one digest the gateway makes itself: token cache keys, Redis keys, DPoP
//! replay keys, certificate thumbprints, hashed subjects in logs, file fingerprints. And the
//! one hex writer (digests, request ids, trace ids).

/// SHA-256 of `parts` in order, as if concatenated (no separator is added: callers that
/// join fields put their own between them).
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    ctx.finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut out);
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// Lowercase hex of `bytes` into `out` (twice as long), for ids written on the stack.
pub fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 15)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_digest_as_their_concatenation() {
        // FIPS 180-2's "abc" vector.
        assert_eq!(
            hex(&sha256(&[b"a", b"", b"bc"])),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha256(&[b"abc"]), sha256(&[b"ab", b"c"]));
    }
}
