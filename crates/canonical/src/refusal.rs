//! Why a request was refused: one small enum for the whole crate, answered with HTTP 400 by
//! the gateway. Messages are fixed sentences, never echoing the input, so they are safe to
//! send to a client and to log.

/// Why a request was refused; every variant is answered with HTTP 400 by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The method is not an RFC 9110 token (empty, or holds a byte outside `tchar`).
    #[error("request method is not a valid token")]
    InvalidMethod,
    /// A standard method (`GET`, `POST`, ...) written in another case (`get`). Methods are
    /// case-sensitive (RFC 9110 §9.1); routes list them upper-case.
    #[error("request method must be written in upper case")]
    MethodCase,
    /// The target is not origin-form, absolute-form or (for `OPTIONS`) asterisk-form, holds a
    /// fragment, user information or an empty authority, or is a `CONNECT` target.
    #[error("request target is malformed or not in a supported form")]
    InvalidTarget,
    /// An absolute-form target with a scheme other than `http` or `https`.
    #[error("request target scheme is not http or https")]
    UnsupportedScheme,
    /// HTTP/1.1 request without a host: no `Host` header (or an empty one) and no
    /// absolute-form target.
    #[error("request has no host")]
    MissingHost,
    /// The host (header or absolute-form authority) is not a valid name, address or port.
    #[error("request host is not a valid host name, address or port")]
    InvalidHost,
    /// More than one `Host` header.
    #[error("request has more than one host header")]
    ConflictingHost,
    /// A `%` not followed by two hexadecimal digits.
    #[error("request path holds a malformed percent escape")]
    InvalidEscape,
    /// `%2F` or `%5C` (encoded `/` or `\`) while they are refused.
    #[error("request path holds an encoded slash or backslash")]
    EncodedSlash,
    /// `//` in the path while runs of slashes are not merged.
    #[error("request path holds an empty segment")]
    EmptySegment,
    /// A raw `\`, which some servers treat as `/`.
    #[error("request path holds a backslash")]
    Backslash,
    /// A control character, space or non-ASCII byte, raw or (for controls) percent-encoded.
    #[error("request path holds a control, space or non-ascii character")]
    ControlCharacter,
    /// A `.` or `..` segment (also percent-encoded, or before a `;`).
    #[error("request path holds a dot segment")]
    DotSegment,
    /// A `;` (path parameter) while they are refused.
    #[error("request path holds a path parameter")]
    PathParameter,
    /// The query holds a control character, space, non-ASCII byte or `#`.
    #[error("request query holds an invalid character")]
    InvalidQuery,
}

impl Refusal {
    /// A stable snake_case label for metrics, logs and the JSON error body.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::InvalidMethod => "invalid_method",
            Refusal::MethodCase => "method_case",
            Refusal::InvalidTarget => "invalid_target",
            Refusal::UnsupportedScheme => "unsupported_scheme",
            Refusal::MissingHost => "missing_host",
            Refusal::InvalidHost => "invalid_host",
            Refusal::ConflictingHost => "conflicting_host",
            Refusal::InvalidEscape => "invalid_escape",
            Refusal::EncodedSlash => "encoded_slash",
            Refusal::EmptySegment => "empty_segment",
            Refusal::Backslash => "backslash",
            Refusal::ControlCharacter => "control_character",
            Refusal::DotSegment => "dot_segment",
            Refusal::PathParameter => "path_parameter",
            Refusal::InvalidQuery => "invalid_query",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Refusal; 15] = [
        Refusal::EmptySegment,
        Refusal::InvalidMethod,
        Refusal::MethodCase,
        Refusal::InvalidTarget,
        Refusal::UnsupportedScheme,
        Refusal::MissingHost,
        Refusal::InvalidHost,
        Refusal::ConflictingHost,
        Refusal::InvalidEscape,
        Refusal::EncodedSlash,
        Refusal::Backslash,
        Refusal::ControlCharacter,
        Refusal::DotSegment,
        Refusal::PathParameter,
        Refusal::InvalidQuery,
    ];

    #[test]
    fn reasons_are_unique_snake_case_labels() {
        let mut seen = std::collections::HashSet::new();
        for r in ALL {
            let label = r.reason();
            assert!(seen.insert(label), "{label} twice");
            assert!(label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
    }

    #[test]
    fn messages_are_lowercase_sentences_without_trailing_period() {
        for r in ALL {
            let msg = r.to_string();
            assert!(!msg.ends_with('.'), "{msg}");
            assert_eq!(msg, msg.to_lowercase(), "{msg}");
        }
    }
}
