//! The one reader of `Cookie` headers, for token sources (`cookie:`), for stripping token
//! cookies before the upstream, and for split conditions (`when: cookie`), so that no two
//! of them can read one header two ways.
//!
//! The syntax is RFC 6265 §4.2.1: pairs `name=value` separated by `;`. Whitespace around a
//! name or value is not part of it (`tok =x` is `tok`, as RFC 6265 §5.2 and most cookie
//! parsers read it: an upstream would, so the gateway must too); a name must be an RFC 9110
//! token, so a pair whose name is not one (`t k=x`, `=x`) names no cookie (and the config
//! refuses such names); a value in double quotes is read without them (§4.1.1); a pair
//! without `=` is no cookie. Read over bytes: a byte outside visible ASCII in one pair does
//! not hide the others.

/// The cookies of one `Cookie` header, in order, as `(name, value)`.
pub fn pairs(header: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    header.split(|b| *b == b';').filter_map(|pair| {
        let eq = pair.iter().position(|b| *b == b'=')?;
        let name = trim_ows(&pair[..eq]);
        if name.is_empty() || !name.iter().copied().all(is_tchar) {
            return None;
        }
        let value = trim_ows(&pair[eq + 1..]);
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        Some((name, value))
    })
}

/// The values of every cookie named `name` in one header, in order.
pub fn values<'h, 'n>(
    header: &'h [u8],
    name: &'n str,
) -> impl Iterator<Item = &'h [u8]> + use<'h, 'n> {
    pairs(header).filter_map(move |(k, v)| (k == name.as_bytes()).then_some(v))
}

/// Whether one raw pair of a header (between `;`) is the cookie `name`.
pub fn pair_is(pair: &[u8], name: &str) -> bool {
    pairs(pair).any(|(k, _)| k == name.as_bytes())
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_tokens_trimmed_and_quoted_values_unquoted() {
        let header = " a=1; tok =x.y ;q=\"v\"; bare; t k=2; =3; e=; u=\u{e9}".as_bytes();
        let got: Vec<_> = pairs(header).collect();
        let want: [(&[u8], &[u8]); 5] = [
            (b"a", b"1"),
            (b"tok", b"x.y"),
            (b"q", b"v"),
            (b"e", b""),
            (b"u", "\u{e9}".as_bytes()),
        ];
        assert_eq!(got, want);
        let firsts: Vec<_> = values(b"xcanary=1; canary=2; canary=3", "canary").collect();
        assert_eq!(firsts, [b"2", b"3"]);
        assert!(pair_is(b" tok =x", "tok"));
        assert!(!pair_is(b"tok", "tok"));
    }
}
