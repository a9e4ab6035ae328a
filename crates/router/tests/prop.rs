//! Property tests: the router agrees with a plain linear reference matcher, and never panics.

use proptest::prelude::*;
use tollgate_router::{Match, PathMatch, RouteSpec, Router};

/// The obvious definition: among routes that match host and path, the most specific host
/// class, then exact before prefix, then the longest prefix, that accepts the method.
fn reference<'a>(
    routes: &'a [(RouteSpec, usize)],
    host: Option<&str>,
    path: &str,
    method: &str,
) -> Option<&'a usize> {
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
    routes
        .iter()
        .filter(|(s, _)| s.methods.is_empty() || s.methods.iter().any(|m| m == method))
        .filter_map(|(s, v)| Some(((host_rank(s)?, path_rank(s)?), v)))
        .max_by_key(|(rank, _)| *rank)
        .map(|(_, v)| v)
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
        prop::sample::subsequence(vec!["GET", "POST"], 0..=2),
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
        method in prop::sample::select(vec!["GET", "POST", "PUT"]),
    ) {
        let mut router = Router::new();
        let mut accepted = Vec::new();
        for (i, s) in specs.into_iter().enumerate() {
            if router.insert(s.clone(), i).is_ok() {
                accepted.push((s, i));
            }
        }
        let got = match router.find(host, &req, method) {
            Match::Found(v) => Some(v),
            _ => None,
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
