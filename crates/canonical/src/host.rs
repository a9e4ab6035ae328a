//! Host validation and normalisation (a `Host` header value or an absolute-form authority),
//! so that `Secure.Example.COM.:443` and `secure.example.com` route alike and the upstream
//! receives the name the gateway routed on.

use std::net::Ipv6Addr;

use crate::Refusal;

/// Longest host name in presentation form without the trailing dot (RFC 1035 §2.3.4).
const MAX_NAME: usize = 253;
/// Longest label (RFC 1035 §2.3.4).
const MAX_LABEL: usize = 63;

/// Validates and normalises a host (header value or absolute-form authority): returns
/// (host, port).
///
/// The name is lower-cased and loses exactly one trailing dot (`a.com.` → `a.com`); its labels
/// are letters, digits, `-` and `_` (some internal names use it), non-empty, at most 63 bytes,
/// the whole at most 253. IPv4 literals are names by this rule. An IPv6 literal stays in
/// brackets, in its RFC 5952 text form (`[0:0::1]` → `[::1]`); zone identifiers are refused.
/// A port is `:` and 1 to 5 digits with a value in 1..=65535. Anything else (empty, spaces,
/// `@`, `/`, `%`, non-ASCII) is [`Refusal::InvalidHost`].
pub fn normalize_host(raw: &[u8]) -> Result<(String, Option<u16>), Refusal> {
    if raw.first() == Some(&b'[') {
        let end = raw
            .iter()
            .position(|&b| b == b']')
            .ok_or(Refusal::InvalidHost)?;
        let port = parse_port(&raw[end + 1..])?;
        let literal = std::str::from_utf8(&raw[1..end]).map_err(|_| Refusal::InvalidHost)?;
        let addr: Ipv6Addr = literal.parse().map_err(|_| Refusal::InvalidHost)?;
        return Ok((format!("[{addr}]"), port));
    }
    let (name, port) = match raw.iter().position(|&b| b == b':') {
        Some(colon) => (&raw[..colon], parse_port(&raw[colon..])?),
        None => (raw, None),
    };
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(Refusal::InvalidHost);
    }
    for label in name.split(|&b| b == b'.') {
        let valid = !label.is_empty()
            && label.len() <= MAX_LABEL
            && label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(Refusal::InvalidHost);
        }
    }
    // Only ASCII letters, digits, `-`, `_` and `.` remain.
    let name = String::from_utf8(name.to_ascii_lowercase()).map_err(|_| Refusal::InvalidHost)?;
    Ok((name, port))
}

/// `rest` is what follows the host: empty, or `:` and the port.
fn parse_port(rest: &[u8]) -> Result<Option<u16>, Refusal> {
    let Some(digits) = rest.strip_prefix(b":") else {
        return if rest.is_empty() {
            Ok(None)
        } else {
            Err(Refusal::InvalidHost)
        };
    };
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Refusal::InvalidHost);
    }
    let value = digits
        .iter()
        .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'));
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(Some(port)),
        _ => Err(Refusal::InvalidHost),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(raw: &str) -> Result<(String, Option<u16>), Refusal> {
        normalize_host(raw.as_bytes())
    }

    #[test]
    fn host_is_lower_cased() {
        assert_eq!(
            host("Secure.Example.COM"),
            Ok(("secure.example.com".into(), None))
        );
    }

    #[test]
    fn one_trailing_dot_is_removed() {
        assert_eq!(
            host("secure.example.com."),
            Ok(("secure.example.com".into(), None))
        );
        assert_eq!(host("a.com.:8080"), Ok(("a.com".into(), Some(8080))));
    }

    #[test]
    fn two_trailing_dots_are_refused() {
        assert_eq!(host("a.com.."), Err(Refusal::InvalidHost));
        assert_eq!(host("."), Err(Refusal::InvalidHost));
    }

    #[test]
    fn port_is_split_off_and_range_checked() {
        assert_eq!(host("a.com:1"), Ok(("a.com".into(), Some(1))));
        assert_eq!(host("a.com:65535"), Ok(("a.com".into(), Some(65535))));
        for bad in [
            "a.com:0",
            "a.com:65536",
            "a.com:",
            "a.com:8o",
            "a.com:123456",
            "a.com:1:2",
        ] {
            assert_eq!(host(bad), Err(Refusal::InvalidHost), "{bad}");
        }
    }

    #[test]
    fn ipv4_literal_is_accepted() {
        assert_eq!(host("10.0.0.1:80"), Ok(("10.0.0.1".into(), Some(80))));
    }

    #[test]
    fn ipv6_literal_keeps_brackets_in_canonical_form() {
        assert_eq!(host("[::1]"), Ok(("[::1]".into(), None)));
        assert_eq!(host("[0:0::1]:8443"), Ok(("[::1]".into(), Some(8443))));
        assert_eq!(host("[2001:DB8::A]"), Ok(("[2001:db8::a]".into(), None)));
        for bad in ["[::1", "[]", "[::1]x", "[fe80::1%25eth0]", "[v1.x]", "::1"] {
            assert_eq!(host(bad), Err(Refusal::InvalidHost), "{bad}");
        }
    }

    #[test]
    fn underscore_is_allowed_in_internal_names() {
        assert_eq!(host("svc_a.internal"), Ok(("svc_a.internal".into(), None)));
    }

    #[test]
    fn malformed_names_are_refused() {
        let long_label = format!("{}.com", "a".repeat(64));
        let long_name = vec!["a".repeat(63); 4].join(".") + ".com";
        for bad in [
            "",
            "a b",
            "a@b",
            "user@a.com",
            "a/b",
            "a%2eb",
            "a..b",
            ".a",
            "a\tb",
            "é.com",
            "a.com\0",
            &long_label,
            &long_name,
        ] {
            assert_eq!(host(bad), Err(Refusal::InvalidHost), "{bad:?}");
        }
        let max_label = format!("{}.com", "a".repeat(63));
        assert!(host(&max_label).is_ok());
    }
}
