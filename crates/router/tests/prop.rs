//! Property tests: the router agrees with a plain linear reference matcher (found, 405 with
//! the deciding routes' methods, or not found), and never panics.

use proptest::prelude::*;
use tollgate_router::{Match, PathMatch, RouteSpec, Router};

/// What the reference expects from a lookup.
#[derive(Debug, PartialEq, Eq)]
enum Expected<'a> {
    Found(&'a usize),
    MethodNotAllowed(Vec<&'a str>),
    NotFound,
}

/// The obvious definition: among routes that match host and path (whatever the method), the
/// most specific host class, then exact before prefix, then the longest prefix, decides; of
/// the routes with that rank, the one accepting the method, else 405 with their methods.
fn reference<'a>(
    routes: &'a [(RouteSpec, usize)],
    host: Option<&str>,
    path: &str,
    method: &str,
) -> Expected<'a> {
    let host_rank = |spec: &RouteSpec| match (&spec.host, host) {
        (None, _) => Some(0),
        (Some(h), Some(req)) if h.eq_ignore_ascii_case(req) => Some(2),
        (Some(h), Some(req)) => h.strip_prefix("*.").and_then(|suffix| {
            let (_, rest) = req.split_once('.')?;
            rest.eq_ignore_ascii_case(suffix).then_some(1)
        }),
        _ => None,
    };
    let path_rank = |spec: &RouteSpec| match spec.path_match {
        PathMatch::Exact => (spec.path == path).then_some(usize::MAX),
        PathMatch::Prefix => {
            let p = spec.path.trim_end_matches('/');
            (path == p || path.starts_with(&format!("{p}/")) || p.is_empty()).then_some(p.len())
        }
    };
    let ranked: Vec<_> = routes
        .iter()
        .filter_map(|(s, v)| Some(((host_rank(s)?, path_rank(s)?), s, v)))
        .collect();
    let Some(best) = ranked.iter().map(|(rank, _, _)| *rank).max() else {
        return Expected::NotFound;
    };
    let deciding: Vec<_> = ranked.iter().filter(|(rank, _, _)| *rank == best).collect();
    if let Some((_, _, v)) = deciding
        .iter()
        .find(|(_, s, _)| s.methods.is_empty() || s.methods.iter().any(|m| m == method))
    {
        return Expected::Found(v);
    }
    let mut allowed: Vec<&str> = deciding
        .iter()
        .flat_map(|(_, s, _)| s.methods.iter().map(String::as_str))
        .collect();
    allowed.sort_unstable();
    allowed.dedup();
    Expected::MethodNotAllowed(allowed)
}

fn segment() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "api", "v1", ""]).prop_map(str::to_owned)
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 0..4).prop_map(|segs| format!("/{}", segs.join("/")))
}

fn spec() -> impl Strategy<Value = RouteSpec> {
    (
        prop::option::of(prop::sample::select(vec!["x.com", "*.x.com", "a.x.com"])),
        path(),
        prop::bool::ANY,
        prop::sample::subsequence(vec!["GET", "POST", "PUT"], 0..=2),
    )
        .prop_map(|(h, p, exact, m)| {
            let kind = if exact {
                PathMatch::Exact
            } else {
                PathMatch::Prefix
            };
            RouteSpec::new(h, &p, kind, &m)
        })
}

proptest! {
    #[test]
    fn router_agrees_with_linear_reference(
        specs in prop::collection::vec(spec(), 1..12),
        host in prop::option::of(prop::sample::select(vec!["x.com", "a.x.com", "b.x.com", "y.com"])),
        req in path(),
        method in prop::sample::select(vec!["GET", "POST", "PUT", "HEAD", "get"]),
    ) {
        let mut router = Router::new();
        let mut accepted = Vec::new();
        for (i, s) in specs.into_iter().enumerate() {
            if router.insert(s.clone(), i).is_ok() {
                accepted.push((s, i));
            }
        }
        let got = match router.find(host, &req, method) {
            Match::Found(v) => Expected::Found(v),
            Match::MethodNotAllowed(allowed) => Expected::MethodNotAllowed(allowed),
            Match::NotFound => Expected::NotFound,
        };
        prop_assert_eq!(got, reference(&accepted, host, &req, method));
    }

    #[test]
    fn find_never_panics(host in ".{0,20}", path in ".{0,40}", method in "[A-Z]{0,8}") {
        let mut router = Router::new();
        router.insert(RouteSpec::new(None, "/api", PathMatch::Prefix, &["GET"]), 0).unwrap();
        let _ = router.find(Some(&host), &path, &method);
    }
}
