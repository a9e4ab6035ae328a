//! The one reader of `Cookie` headers, for token sources (`cookie:`), for stripping token
//! cookies before the upstream, and for split conditions (`when: cookie`), so that no two
//! of them can read one header two ways.
//!
//! The syntax is RFC 6265 §4.2.1: pairs `name=value` separated by `;`. Whitespace around a
//! name or value is not part of it (`tok =x` is `tok`, as RFC 6265 §5.2 and most cookie
//! parsers read it: an upstream would, so the gateway must too); a name must be an RFC 9110
//! token, so a pair whose name is not one (`t k=x`, `=x`) names no cookie; a value in double
//! quotes is read without them (§4.1.1); a pair without `=` is no cookie.

/// The cookies of one `Cookie` header, in order, as `(name, value)`.
pub fn pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split(';').filter_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        let name = name.trim_matches(is_ows);
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return None;
        }
        let value = value.trim_matches(is_ows);
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        Some((name, value))
    })
}

/// The values of every cookie named `name` in one header.
pub fn values<'h, 'n>(
    header: &'h str,
    name: &'n str,
) -> impl Iterator<Item = &'h str> + use<'h, 'n> {
    pairs(header).filter_map(move |(k, v)| (k == name).then_some(v))
}

/// Whether one raw pair of a header (between `;`) is the cookie `name`.
pub fn pair_is(pair: &str, name: &str) -> bool {
    pairs(pair).any(|(k, _)| k == name)
}

fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
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
        let got: Vec<_> = pairs(" a=1; tok =x.y ;q=\"v\"; bare; t k=2; =3; e=").collect();
        assert_eq!(got, [("a", "1"), ("tok", "x.y"), ("q", "v"), ("e", "")]);
        assert_eq!(
            values("xcanary=1; canary=2", "canary").collect::<Vec<_>>(),
            ["2"]
        );
        assert!(pair_is(" tok =x", "tok"));
        assert!(!pair_is("tok", "tok"));
    }
}
