//! Path normalisation (RFC 3986 §6.2.2, with Envoy's `normalize_path`, `merge_slashes` and
//! `path_with_escaped_slashes_action` as the model) and query validation: the path the router
//! sees is the path the upstream receives, so `/%61dmin`, `//admin` and `/api/..;/admin`
//! cannot be routed as one path and served as another.

use crate::Refusal;

/// What to do with `%2F` (an encoded `/`) in a path. `%5C` (an encoded `\`) is refused
/// either way, as a raw `\` is.
///
/// There is no mode that forwards `%2F` as it is: the router would see one segment where an
/// upstream that decodes it (Werkzeug, many others) sees two, so `/admin%2Fusers` would be
/// routed by a catch-all and served as `/admin/users`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// Refuse the request ([`Refusal::EncodedSlash`]): upstreams disagree on whether `%2F`
    /// separates segments.
    #[default]
    Reject,
    /// Decode `%2F` to `/` (then merged and checked like any `/`), as Envoy's
    /// `UNESCAPE_AND_FORWARD`: router and upstream both see the separator.
    Decode,
}

/// What to do with `;` (path parameters, as in `/api/..;/admin`) in a path.
///
/// There is no mode that forwards them: Java servers strip `;...` from a segment, so
/// `/admin;x` routed by a catch-all would be served as `/admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathParams {
    /// Refuse the request ([`Refusal::PathParameter`]).
    #[default]
    Reject,
    /// Remove `;...` from every segment, as those servers do, before the dot-segment check:
    /// `/admin;x/y` is routed and forwarded as `/admin/y`, `/a/..;x/b` is refused.
    Strip,
}

/// Options from `server.http` in the config; `Default` gives the safe defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathOptions {
    /// Merge runs of `/` into one. Default true. `false` refuses them
    /// ([`Refusal::EmptySegment`]) rather than forwarding them: Python's `http.server` (and so
    /// Werkzeug and wsgiref) reads a leading `//admin` as `/admin`.
    pub merge_slashes: bool,
    /// What to do with `%2F`, `%5C` (encoded slash/backslash). Default `Reject`.
    pub escaped_slashes: EscapedSlashes,
    /// `;` inside a path segment (path parameters, `..;/`). Default `Reject`.
    pub path_params: PathParams,
}

impl Default for PathOptions {
    fn default() -> Self {
        PathOptions {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
            path_params: PathParams::Reject,
        }
    }
}

/// Path normalisation alone (input: the path part of an origin-form target, without query).
/// Returns the normalised path.
///
/// In order: each byte is checked (controls, space, DEL and non-ASCII →
/// [`Refusal::ControlCharacter`]; `\` → [`Refusal::Backslash`]; `#` and `?` →
/// [`Refusal::InvalidTarget`]); each `%XX` is decoded if it stands for an unreserved character
/// (letters, digits, `-._~`), refused if it stands for a control character or (by default) a
/// slash or backslash, else kept with upper-case hex digits; runs of `/` are merged (by
/// default); then any `.` or `..` segment is refused ([`Refusal::DotSegment`]), never resolved,
/// as is (by default) any `;` ([`Refusal::PathParameter`]). The empty path becomes `/`; a
/// trailing slash is kept. The result is a fixed point: normalising it again returns it.
pub fn normalize_path(path: &[u8], opts: &PathOptions) -> Result<String, Refusal> {
    match path.first() {
        None => return Ok("/".to_owned()),
        Some(b'/') => {}
        Some(_) => return Err(Refusal::InvalidTarget),
    }
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'%' => {
                let value = match (tail.first().and_then(hex), tail.get(1).and_then(hex)) {
                    (Some(hi), Some(lo)) => hi << 4 | lo,
                    _ => return Err(Refusal::InvalidEscape),
                };
                rest = &tail[2..];
                if value < 0x20 || value == 0x7f {
                    return Err(Refusal::ControlCharacter);
                }
                if value == b'\\' {
                    return Err(Refusal::EncodedSlash);
                }
                if value == b'/' {
                    if opts.escaped_slashes == EscapedSlashes::Reject {
                        return Err(Refusal::EncodedSlash);
                    }
                    if !out.ends_with('/') {
                        out.push('/');
                    } else if !opts.merge_slashes {
                        return Err(Refusal::EmptySegment);
                    }
                } else if is_unreserved(value) {
                    out.push(char::from(value));
                } else {
                    push_escape(&mut out, value);
                }
            }
            b'/' => {
                // Only slashes end up as `/` in `out`, so this finds exactly the runs.
                if !out.ends_with('/') {
                    out.push('/');
                } else if !opts.merge_slashes {
                    return Err(Refusal::EmptySegment);
                }
            }
            b'\\' => return Err(Refusal::Backslash),
            b'#' | b'?' => return Err(Refusal::InvalidTarget),
            b if !(0x21..0x7f).contains(&b) => return Err(Refusal::ControlCharacter),
            b => out.push(char::from(b)),
        }
    }
    if opts.path_params == PathParams::Strip && out.contains(';') {
        out = out
            .split('/')
            .map(|segment| segment.split(';').next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("/");
        // `/a;x/;y/b` leaves an empty segment: merge it as a raw `//` would be.
        while out.contains("//") {
            if !opts.merge_slashes {
                return Err(Refusal::EmptySegment);
            }
            out = out.replace("//", "/");
        }
    }
    for segment in out.split('/') {
        check_segment(segment, opts)?;
    }
    Ok(out)
}

/// Refuses a `.`/`..` segment (also `..;x`) and any `;` left (none is left when stripped).
fn check_segment(segment: &str, _opts: &PathOptions) -> Result<(), Refusal> {
    let (name, params) = match segment.split_once(';') {
        Some((name, _)) => (name, true),
        None => (segment, false),
    };
    if name == "." || name == ".." {
        return Err(Refusal::DotSegment);
    }
    if params {
        return Err(Refusal::PathParameter);
    }
    Ok(())
}

/// Validates the query (the bytes after the first `?`), which is kept verbatim: printable
/// ASCII without space and without `#`, else [`Refusal::InvalidQuery`].
pub(crate) fn validate_query(query: &[u8]) -> Result<String, Refusal> {
    if query
        .iter()
        .any(|&b| !(0x21..0x7f).contains(&b) || b == b'#')
    {
        return Err(Refusal::InvalidQuery);
    }
    String::from_utf8(query.to_vec()).map_err(|_| Refusal::InvalidQuery)
}

/// RFC 3986 §2.3: ALPHA / DIGIT / "-" / "." / "_" / "~".
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: &u8) -> Option<u8> {
    char::from(*b).to_digit(16).map(|d| d as u8)
}

fn push_escape(out: &mut String, value: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(value >> 4)]));
    out.push(char::from(HEX[usize::from(value & 0xf)]));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, Refusal> {
        normalize_path(path.as_bytes(), &PathOptions::default())
    }

    fn decode_slashes() -> PathOptions {
        PathOptions {
            escaped_slashes: EscapedSlashes::Decode,
            ..PathOptions::default()
        }
    }

    fn strip_params() -> PathOptions {
        PathOptions {
            path_params: PathParams::Strip,
            ..PathOptions::default()
        }
    }

    #[test]
    fn defaults_are_the_safe_ones() {
        let d = PathOptions::default();
        assert!(d.merge_slashes);
        assert_eq!(d.escaped_slashes, EscapedSlashes::Reject);
        assert_eq!(d.path_params, PathParams::Reject);
    }

    #[test]
    fn percent_encoded_unreserved_is_decoded() {
        assert_eq!(norm("/%61dmin").as_deref(), Ok("/admin"));
        assert_eq!(norm("/%41%7a%30%2D%2e%5F%7E").as_deref(), Ok("/Az0-._~"));
    }

    #[test]
    fn other_escapes_are_upper_cased_not_decoded() {
        assert_eq!(norm("/a%3ab%c3%a9").as_deref(), Ok("/a%3Ab%C3%A9"));
        // `%25` stays `%25`: no double decoding of `%2561` into `a`.
        assert_eq!(norm("/%2561").as_deref(), Ok("/%2561"));
        assert_eq!(norm("/a%20b").as_deref(), Ok("/a%20b"));
    }

    #[test]
    fn malformed_escape_is_refused() {
        for bad in ["/%", "/%4", "/%zz", "/%4g", "/a%%41"] {
            assert_eq!(norm(bad), Err(Refusal::InvalidEscape), "{bad}");
        }
    }

    #[test]
    fn encoded_control_characters_are_refused() {
        for bad in ["/a%00", "/%0a", "/%0D%0A", "/%1f", "/%7F"] {
            assert_eq!(norm(bad), Err(Refusal::ControlCharacter), "{bad}");
        }
    }

    #[test]
    fn raw_control_space_and_non_ascii_bytes_are_refused() {
        for bad in [
            &b"/a b"[..],
            b"/a\tb",
            b"/\0",
            b"/a\x7f",
            b"/caf\xc3\xa9",
            b"/\x80",
        ] {
            assert_eq!(
                normalize_path(bad, &PathOptions::default()),
                Err(Refusal::ControlCharacter),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn raw_backslash_is_refused() {
        assert_eq!(norm("/api\\..\\admin"), Err(Refusal::Backslash));
        assert_eq!(
            normalize_path(b"/a\\b", &decode_slashes()),
            Err(Refusal::Backslash)
        );
    }

    #[test]
    fn encoded_slash_is_refused_by_default() {
        for bad in ["/api%2Fadmin", "/api%2fadmin", "/a%5Cb", "/a%5cb"] {
            assert_eq!(norm(bad), Err(Refusal::EncodedSlash), "{bad}");
        }
    }

    #[test]
    fn encoded_slash_is_decoded_to_a_separator_when_configured() {
        let opts = decode_slashes();
        // The router and the upstream both see `/admin/users`: no catch-all can take it.
        assert_eq!(
            normalize_path(b"/admin%2fusers", &opts).as_deref(),
            Ok("/admin/users")
        );
        assert_eq!(normalize_path(b"/%2Fadmin", &opts).as_deref(), Ok("/admin"));
        assert_eq!(
            normalize_path(b"/a%5cb", &opts),
            Err(Refusal::EncodedSlash),
            "an encoded backslash is refused in every mode"
        );
    }

    #[test]
    fn decoded_encoded_slash_cannot_hide_a_dot_segment() {
        let opts = decode_slashes();
        for bad in ["/api/..%2Fadmin", "/api%2F..%2Fadmin", "/a%2F%2e%2e"] {
            assert_eq!(
                normalize_path(bad.as_bytes(), &opts),
                Err(Refusal::DotSegment),
                "{bad}"
            );
        }
    }

    #[test]
    fn slash_runs_are_merged() {
        assert_eq!(norm("//admin").as_deref(), Ok("/admin"));
        assert_eq!(norm("/api///v1//users/").as_deref(), Ok("/api/v1/users/"));
        assert_eq!(norm("//").as_deref(), Ok("/"));
    }

    #[test]
    fn slash_runs_are_refused_when_merging_is_off() {
        let opts = PathOptions {
            merge_slashes: false,
            ..PathOptions::default()
        };
        // Forwarding `//admin` unmerged would let a catch-all route it while Python's
        // http.server serves `/admin`.
        assert_eq!(
            normalize_path(b"//admin", &opts),
            Err(Refusal::EmptySegment)
        );
        assert_eq!(normalize_path(b"/a//b", &opts), Err(Refusal::EmptySegment));
        assert_eq!(normalize_path(b"/a/b/", &opts).as_deref(), Ok("/a/b/"));
    }

    #[test]
    fn dot_segments_are_refused_not_resolved() {
        for bad in [
            "/.",
            "/..",
            "/./a",
            "/a/../admin",
            "/a/.",
            "/a/..",
            "/%2e",
            "/%2e%2e/admin",
            "/.%2E/",
            "/a/%2E/b",
            "//..//admin",
        ] {
            assert_eq!(norm(bad), Err(Refusal::DotSegment), "{bad}");
        }
    }

    #[test]
    fn dots_inside_names_are_kept() {
        assert_eq!(norm("/a/...").as_deref(), Ok("/a/..."));
        assert_eq!(
            norm("/.well-known/x.json").as_deref(),
            Ok("/.well-known/x.json")
        );
        assert_eq!(norm("/a/..b/.c").as_deref(), Ok("/a/..b/.c"));
    }

    #[test]
    fn semicolon_dot_dot_is_a_dot_segment() {
        assert_eq!(norm("/api/..;/admin"), Err(Refusal::DotSegment));
        for bad in ["/api/..;/admin", "/api/.;x/admin", "/api/%2e%2e;x/admin"] {
            assert_eq!(
                normalize_path(bad.as_bytes(), &strip_params()),
                Err(Refusal::DotSegment),
                "{bad}"
            );
        }
    }

    #[test]
    fn path_parameters_are_refused_by_default() {
        for bad in ["/a;b", "/a;", "/;/admin", "/api;jsessionid=1/x"] {
            assert_eq!(norm(bad), Err(Refusal::PathParameter), "{bad}");
        }
    }

    #[test]
    fn path_parameters_are_stripped_when_configured() {
        // As Java servers read it: the gateway routes, and forwards, `/admin/b`.
        assert_eq!(
            normalize_path(b"/admin;v=1/b;", &strip_params()).as_deref(),
            Ok("/admin/b")
        );
        assert_eq!(
            normalize_path(b"/a/;x/b", &strip_params()).as_deref(),
            Ok("/a/b")
        );
        // `%3B` is not a parameter separator; it stays encoded.
        assert_eq!(norm("/a%3bb").as_deref(), Ok("/a%3Bb"));
    }

    #[test]
    fn empty_path_becomes_root_and_trailing_slash_is_kept() {
        assert_eq!(norm("").as_deref(), Ok("/"));
        assert_eq!(norm("/api/").as_deref(), Ok("/api/"));
    }

    #[test]
    fn path_without_leading_slash_is_refused() {
        for bad in ["admin", "x:/admin", "*"] {
            assert_eq!(norm(bad), Err(Refusal::InvalidTarget), "{bad}");
        }
    }

    #[test]
    fn fragment_and_query_marks_are_refused_in_a_path() {
        assert_eq!(norm("/a#b"), Err(Refusal::InvalidTarget));
        assert_eq!(norm("/a?b"), Err(Refusal::InvalidTarget));
        assert_eq!(norm("/a%23b").as_deref(), Ok("/a%23b"));
    }

    #[test]
    fn query_is_kept_verbatim() {
        assert_eq!(
            validate_query(b"a=%2f&b=..;c/\\").as_deref(),
            Ok("a=%2f&b=..;c/\\")
        );
        assert_eq!(validate_query(b"").as_deref(), Ok(""));
    }

    #[test]
    fn query_with_space_control_non_ascii_or_fragment_is_refused() {
        for bad in [&b"a b"[..], b"a\0", b"a\x7f", b"\xff", b"a#b", b"a\r\nb"] {
            assert_eq!(validate_query(bad), Err(Refusal::InvalidQuery), "{bad:?}");
        }
    }
}
