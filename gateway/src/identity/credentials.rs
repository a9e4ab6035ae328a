//! Credentials in a request: finding the token where the route's providers say it is, and
//! removing it from the request the upstream receives.
//!
//! Both read the query string through one parser ([`token_params`]), so a parameter the
//! gateway takes as a token is exactly one it strips: a name is compared as an upstream's
//! form parser would decode it (`access%5Ftoken` is `access_token`).

use crate::identity::dpop::Scheme;
use crate::util::cookie;
use pingora_http::RequestHeader;
use tollgate_config::TokenSource;

/// More than one token in one request (two sources, or one source twice): refused as
/// `multiple_tokens` (RFC 6750 §2), never guessed between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultipleTokens;

/// Whether a query parameter's name as written (`access%5Ftoken`, `access_token`) is `name`
/// once decoded as an upstream's form parser decodes it (percent escapes, `+` as space).
fn query_name_is(raw: &str, name: &str) -> bool {
    if !raw.contains(['%', '+']) {
        return raw == name;
    }
    // The name alone, as `application/x-www-form-urlencoded` decodes it.
    form_urlencoded::parse(raw.as_bytes())
        .next()
        .is_some_and(|(decoded, _)| decoded == name)
}

/// The `&`-separated pairs of `query`, each with whether its name is the parameter `name`
/// and its value (`None` for a pair without `=`).
fn token_params<'q, 'n>(
    query: &'q str,
    name: &'n str,
) -> impl Iterator<Item = (&'q str, bool, Option<&'q str>)> + use<'q, 'n> {
    query.split('&').map(move |pair| {
        let (key, value) = match pair.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (pair, None),
        };
        (pair, query_name_is(key, name), value)
    })
}

/// [`find_presented`] without DPoP, the token alone (for the unit tests below).
#[cfg(test)]
pub fn find_token<'a>(
    req: &'a RequestHeader,
    sources: &[TokenSource],
) -> Result<Option<&'a str>, MultipleTokens> {
    Ok(find_presented(req, sources, false)?.map(|(t, _)| t))
}

/// Whether the request's one `Authorization: Bearer` token (the scheme in any case) is
/// `expected`, compared in constant time: how the gateway's own endpoints (the Shared
/// Signals push, the admin view) check their callers.
pub fn carries_bearer(req: &RequestHeader, expected: &[u8]) -> bool {
    match find_presented(req, &[TokenSource::Bearer], false) {
        Ok(Some((token, _))) => {
            !expected.is_empty()
                && bool::from(subtle::ConstantTimeEq::ct_eq(token.as_bytes(), expected))
        }
        _ => false,
    }
}

/// Finds the token in a request, looking at `sources`, with the scheme it came under.
/// `Ok(None)` when there is none; [`MultipleTokens`] when there are several
/// (RFC 6750 §2: a client must use only one method). With `accept_dpop`,
/// `Authorization: DPoP` (RFC 9449 §7.1) counts wherever `Authorization: Bearer` does.
pub fn find_presented<'a>(
    req: &'a RequestHeader,
    sources: &[TokenSource],
    accept_dpop: bool,
) -> Result<Option<(&'a str, Scheme)>, MultipleTokens> {
    let mut found: Option<(&str, Scheme)> = None;
    let mut add = |t: &'a str, scheme: Scheme| -> Result<(), MultipleTokens> {
        if found.is_some() {
            return Err(MultipleTokens);
        }
        found = Some((t, scheme));
        Ok(())
    };
    for source in sources {
        match source {
            TokenSource::Bearer => {
                for v in req.headers.get_all(http::header::AUTHORIZATION) {
                    let Ok(v) = v.to_str() else { continue };
                    if let Some((scheme, token)) = v.split_once(' ') {
                        if scheme.eq_ignore_ascii_case("bearer") {
                            add(token.trim(), Scheme::Bearer)?;
                        } else if accept_dpop && scheme.eq_ignore_ascii_case("dpop") {
                            add(token.trim(), Scheme::Dpop)?;
                        }
                    }
                }
            }
            TokenSource::Header(name) => {
                for v in req.headers.get_all(name.as_str()) {
                    if let Ok(v) = v.to_str() {
                        add(v.trim(), Scheme::Bearer)?;
                    }
                }
            }
            TokenSource::Cookie(name) => {
                for v in req.headers.get_all(http::header::COOKIE) {
                    for value in cookie::values(v.as_bytes(), name) {
                        // A value that is not text is no token (the strip removes it all the
                        // same).
                        if let Ok(value) = std::str::from_utf8(value) {
                            add(value, Scheme::Bearer)?;
                        }
                    }
                }
            }
            TokenSource::Query(name) => {
                let query = req.uri.query().unwrap_or("");
                for (_, is_token, value) in token_params(query, name) {
                    if let (true, Some(value)) = (is_token, value) {
                        add(value, Scheme::Bearer)?;
                    }
                }
            }
        }
    }
    Ok(found.filter(|(t, _)| !t.is_empty()))
}

/// Removes the credentials `sources` read tokens from, so a token does not travel on to
/// the upstream: `Authorization`, token headers, every spelling of token query parameters
/// (with or without a value), and the token cookies, each read as the token reader reads
/// it (name trimmed). The Cookie header keeps the request's other cookies; it goes when
/// none is left.
pub fn strip(upstream: &mut RequestHeader, sources: &[TokenSource]) -> Result<(), http::Error> {
    upstream.remove_header(&http::header::AUTHORIZATION);
    // A DPoP proof is a credential too (and names this hop's URI, not the upstream's).
    upstream.remove_header("dpop");
    for source in sources {
        match source {
            TokenSource::Header(name) => {
                upstream.remove_header(name.as_str());
            }
            TokenSource::Query(name) => {
                let uri = &upstream.uri;
                let Some(query) = uri.query() else { continue };
                if !token_params(query, name).any(|(_, is_token, _)| is_token) {
                    continue;
                }
                let kept: Vec<&str> = token_params(query, name)
                    .filter(|(_, is_token, _)| !is_token)
                    .map(|(pair, _, _)| pair)
                    .collect();
                let new = if kept.is_empty() {
                    uri.path().to_owned()
                } else {
                    format!("{}?{}", uri.path(), kept.join("&"))
                };
                let new: http::Uri = new.parse().map_err(http::Error::from)?;
                upstream.set_uri(new);
            }
            TokenSource::Cookie(name) => strip_cookie(upstream, name)?,
            TokenSource::Bearer => {}
        }
    }
    Ok(())
}

/// Removes every cookie named `name` from the request's `Cookie` header(s), which the edge
/// has joined into one (RFC 9113 §8.2.3 crumbs included).
fn strip_cookie(upstream: &mut RequestHeader, name: &str) -> Result<(), http::Error> {
    // Over bytes, as the reader reads: a byte outside visible ASCII in one pair hides no
    // other, and what is kept goes on as it came.
    let is_token = |pair: &[u8]| cookie::pair_is(pair, name);
    fn pairs(v: &http::HeaderValue) -> std::slice::Split<'_, u8, fn(&u8) -> bool> {
        v.as_bytes().split(|b| *b == b';')
    }
    let cookies = || upstream.headers.get_all(http::header::COOKIE).iter();
    if !cookies().any(|v| pairs(v).any(is_token)) {
        return Ok(());
    }
    let kept: Vec<&[u8]> = cookies()
        .flat_map(pairs)
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty() && !is_token(pair))
        .collect();
    let value = (!kept.is_empty())
        .then(|| http::HeaderValue::from_bytes(&kept.join(&b"; "[..])))
        .transpose()?;
    match value {
        None => {
            upstream.remove_header(&http::header::COOKIE);
        }
        Some(value) => {
            if upstream.insert_header(http::header::COOKIE, value).is_err() {
                // Cannot happen with a typed name and value; never leave the token behind.
                upstream.remove_header(&http::header::COOKIE);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn query_names_are_compared_as_an_upstream_decodes_them() {
        assert!(query_name_is("access_token", "access_token"));
        assert!(query_name_is("access%5Ftoken", "access_token"));
        assert!(query_name_is("access%5ftoken", "access_token"));
        assert!(query_name_is("a+b", "a b"));
        assert!(!query_name_is("access_tokens", "access_token"));
        assert!(!query_name_is("access%5", "access_token"));
        let r = req("/x?access_token=a.b.c&access%5Ftoken=d.e.f", &[]);
        assert!(matches!(
            find_token(&r, &[TokenSource::Query("access_token".into())]),
            Err(MultipleTokens)
        ));
    }

    #[test]
    fn cookie_names_are_trimmed_as_cookie_parsers_trim_them() {
        let r = req(
            "/x",
            &[("authorization", "Bearer a.b.c"), ("cookie", "tok =d.e.f")],
        );
        assert!(matches!(
            find_token(
                &r,
                &[TokenSource::Bearer, TokenSource::Cookie("tok".into())]
            ),
            Err(MultipleTokens)
        ));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let r = req("/", &[("authorization", "bEaReR abc.def.ghi")]);
        assert_eq!(
            find_token(&r, &[TokenSource::Bearer]).unwrap(),
            Some("abc.def.ghi")
        );
        let r = req("/", &[("authorization", "Basic Zm9v")]);
        assert_eq!(find_token(&r, &[TokenSource::Bearer]).unwrap(), None);
    }

    #[test]
    fn every_source_kind_is_read() {
        let r = req(
            "/?a=1&access_token=q.q.q",
            &[("cookie", "x=1; session=c.c.c"), ("x-token", "h.h.h")],
        );
        assert_eq!(
            find_token(&r, &[TokenSource::Query("access_token".into())]).unwrap(),
            Some("q.q.q")
        );
        assert_eq!(
            find_token(&r, &[TokenSource::Cookie("session".into())]).unwrap(),
            Some("c.c.c")
        );
        assert_eq!(
            find_token(&r, &[TokenSource::Header("x-token".into())]).unwrap(),
            Some("h.h.h")
        );
    }

    #[test]
    fn two_tokens_are_refused() {
        let r = req("/?access_token=q", &[("authorization", "Bearer b")]);
        let sources = [
            TokenSource::Bearer,
            TokenSource::Query("access_token".into()),
        ];
        assert!(matches!(find_token(&r, &sources), Err(MultipleTokens)));
        let r = req(
            "/",
            &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
        );
        assert!(matches!(
            find_token(&r, &[TokenSource::Bearer]),
            Err(MultipleTokens)
        ));
    }

    #[test]
    fn stripping_removes_every_spelling_the_finder_reads() {
        let mut r = req(
            "/p?a=1&access_token=x&access%5Ftoken=y&access_token&b=2",
            &[("authorization", "Bearer z"), ("x-token", "h")],
        );
        let sources = [
            TokenSource::Query("access_token".into()),
            TokenSource::Header("x-token".into()),
        ];
        strip(&mut r, &sources).unwrap();
        assert_eq!(r.uri.to_string(), "/p?a=1&b=2");
        assert!(r.headers.get("authorization").is_none());
        assert!(r.headers.get("x-token").is_none());
        assert_eq!(find_token(&r, &sources).unwrap(), None);
        let mut only = req("/p?access_token=x", &[]);
        strip(&mut only, &sources).unwrap();
        assert_eq!(only.uri.to_string(), "/p");
    }
}
