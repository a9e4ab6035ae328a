//! Route matching by host, path and method, in time that depends on the request (its host
//! and the number of path segments), never on the number of routes.
//!
//! Hosts are looked up in hash maps (exact first, then `*.suffix` wildcards, then routes
//! without a host); paths in a trie of `/`-separated segments for prefix routes and a hash
//! map for exact routes. We wrote this rather than use `matchit`, the usual radix router,
//! because a gateway needs longest-prefix matching on segment boundaries, method sets per
//! route and a 405 answer, and matchit's catch-all parameters do not give these.
//!
//! The most specific route path decides, whatever the method: a method that route does not
//! accept is answered 405, never handed to a less specific route (whose policy was written
//! for other paths).
//!
//! ```
//! use tollgate_router::{Match, PathMatch, RouteSpec, Router};
//!
//! let mut router = Router::new();
//! router.insert(RouteSpec::new(None, "/api", PathMatch::Prefix, &["GET"]), "api").unwrap();
//! router.insert(RouteSpec::new(None, "/api/admin", PathMatch::Prefix, &[]), "admin").unwrap();
//! assert_eq!(router.find(Some("example.com"), "/api/users", "GET"), Match::Found(&"api"));
//! assert_eq!(router.find(None, "/api/admin/x", "DELETE"), Match::Found(&"admin"));
//! assert!(matches!(router.find(None, "/api/users", "POST"), Match::MethodNotAllowed(_)));
//! // `/api/admin` decides for its paths, so a method it lacks is not retried on `/api`.
//! router.insert(RouteSpec::new(None, "/api/admin/ro", PathMatch::Prefix, &["GET"]), "ro").unwrap();
//! assert_eq!(router.find(None, "/api/admin/ro", "POST"), Match::MethodNotAllowed(vec!["GET"]));
//! assert_eq!(router.find(None, "/other", "GET"), Match::NotFound);
//! ```

use std::collections::HashMap;
use std::fmt;

/// How a route's path is compared with the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathMatch {
    /// The request path equals the route path, or continues it after a `/`
    /// (`/api` matches `/api`, `/api/` and `/api/x`, not `/apix`).
    Prefix,
    /// The request path equals the route path exactly.
    Exact,
}

/// What a route matches on. Hosts are compared case-insensitively and without a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// `None` matches any host; `*.example.com` matches any subdomain of example.com.
    pub host: Option<String>,
    pub path: String,
    pub path_match: PathMatch,
    /// Upper-case method names; empty matches every method.
    pub methods: Vec<String>,
    /// Compare the path ignoring ASCII letter case (`/Admin` matches a route `/admin`), for
    /// upstreams that do so themselves.
    pub case_insensitive: bool,
}

impl RouteSpec {
    pub fn new(host: Option<&str>, path: &str, path_match: PathMatch, methods: &[&str]) -> Self {
        RouteSpec {
            host: host.map(str::to_owned),
            path: path.to_owned(),
            path_match,
            methods: methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
            case_insensitive: false,
        }
    }

    /// The same route, its path compared ignoring ASCII letter case when `yes`.
    pub fn case_insensitive(mut self, yes: bool) -> Self {
        self.case_insensitive = yes;
        self
    }
}

/// Why a route could not be added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertError {
    /// The path does not start with `/` or holds a `.`/`..` segment.
    InvalidPath,
    /// The host is empty, holds a port, or a `*` anywhere but a leading `*.`.
    InvalidHost,
    /// Another route has the same host, path and match kind, and shares a method with this one.
    /// Carries the index (insertion order) of that route.
    Conflict { existing: usize },
    /// One of the two routes compares paths ignoring case, and the two paths differ only in
    /// case (or in a trailing `/`, or in match kind): for a request matching both, the choice
    /// between them would turn on the letter case the client wrote.
    CaseConflict { existing: usize },
}

impl fmt::Display for InsertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InsertError::InvalidPath => {
                f.write_str("path must start with '/' and hold no '.' or '..' segment")
            }
            InsertError::InvalidHost => {
                f.write_str("host must be a name without port, optionally starting with '*.'")
            }
            InsertError::Conflict { existing } => write!(
                f,
                "route {existing} already matches the same host, path and methods"
            ),
            InsertError::CaseConflict { existing } => write!(
                f,
                "route {existing} has the same host and a path that differs only in letter case, \
                 and one of the two ignores case"
            ),
        }
    }
}

impl std::error::Error for InsertError {}

/// The answer to a lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Match<'a, T> {
    Found(&'a T),
    /// The routes that decide for this host and path accept other methods: those methods,
    /// sorted and without duplicates.
    MethodNotAllowed(Vec<&'a str>),
    NotFound,
}

/// Routes at one path position: each with the methods it accepts.
#[derive(Debug)]
struct Slot<T> {
    entries: Vec<Entry<T>>,
}

#[derive(Debug)]
struct Entry<T> {
    /// Empty accepts every method.
    methods: Vec<String>,
    index: usize,
    value: T,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            entries: Vec::new(),
        }
    }
}

impl<T> Slot<T> {
    fn insert(&mut self, methods: Vec<String>, index: usize, value: T) -> Result<(), InsertError> {
        for e in &self.entries {
            let overlap = e.methods.is_empty()
                || methods.is_empty()
                || e.methods.iter().any(|m| methods.contains(m));
            if overlap {
                return Err(InsertError::Conflict { existing: e.index });
            }
        }
        // Routes naming methods are consulted before a catch-all at the same place.
        self.entries.push(Entry {
            methods,
            index,
            value,
        });
        self.entries.sort_by_key(|e| e.methods.is_empty());
        Ok(())
    }

    fn find(&self, method: &str) -> Option<&T> {
        self.entries
            .iter()
            .find(|e| e.methods.is_empty() || e.methods.iter().any(|m| m == method))
            .map(|e| &e.value)
    }

    /// The answer of this slot alone: its route for `method`, else 405 with its methods.
    fn decide(&self, method: &str) -> Match<'_, T> {
        if let Some(v) = self.find(method) {
            return Match::Found(v);
        }
        let mut allowed: Vec<&str> = self
            .entries
            .iter()
            .flat_map(|e| e.methods.iter().map(String::as_str))
            .collect();
        allowed.sort_unstable();
        allowed.dedup();
        Match::MethodNotAllowed(allowed)
    }
}

#[derive(Debug)]
struct Node<T> {
    children: HashMap<Box<str>, Node<T>>,
    prefix: Option<Slot<T>>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            prefix: None,
        }
    }
}

/// The routes of one host: those comparing paths as they are, and those ignoring case
/// (`path_case: insensitive`), kept under their lower-cased paths.
#[derive(Debug)]
struct PathTable<T> {
    exact: HashMap<Box<str>, Slot<T>>,
    prefixes: Node<T>,
    folded: Option<Box<PathTable<T>>>,
    /// Every route's lower-cased path without a trailing `/` → the first such route's index
    /// and whether it ignores case: finds routes whose paths differ only in case (or in a
    /// trailing `/`, or in match kind) when one of them ignores case.
    by_folded_path: HashMap<Box<str>, (usize, bool)>,
}

impl<T> Default for PathTable<T> {
    fn default() -> Self {
        PathTable {
            exact: HashMap::new(),
            prefixes: Node::default(),
            folded: None,
            by_folded_path: HashMap::new(),
        }
    }
}

/// How specific a match is: an exact route beats every prefix, a deeper prefix a shallower.
type Specificity = usize;
const EXACT: Specificity = usize::MAX;

impl<T> PathTable<T> {
    /// Adds a route, to the folded table when it ignores case.
    fn add(
        &mut self,
        spec: &RouteSpec,
        methods: Vec<String>,
        index: usize,
        value: T,
    ) -> Result<(), InsertError> {
        let folded_path = spec.path.to_ascii_lowercase();
        // Whatever the kinds: an exact `/ADMIN` ignoring case would beat a case-sensitive
        // prefix `/admin` on the request `/admin` itself.
        let key = Box::<str>::from(match folded_path.trim_end_matches('/') {
            "" => "/",
            trimmed => trimmed,
        });
        if let Some(&(existing, other_insensitive)) = self.by_folded_path.get(&key) {
            if other_insensitive != spec.case_insensitive {
                return Err(InsertError::CaseConflict { existing });
            }
        }
        if spec.case_insensitive {
            self.folded.get_or_insert_with(Box::default).insert(
                &folded_path,
                spec.path_match,
                methods,
                index,
                value,
            )?;
        } else {
            self.insert(&spec.path, spec.path_match, methods, index, value)?;
        }
        self.by_folded_path
            .entry(key)
            .or_insert((index, spec.case_insensitive));
        Ok(())
    }

    /// The slot that decides for `path`: the more specific of the case-sensitive routes'
    /// and the case-insensitive routes' (which see the path lower-cased). The lower-cased
    /// copy is made only when this host has case-insensitive routes and the path has an
    /// upper-case letter.
    fn decide_slot(&self, path: &str) -> Option<&Slot<T>> {
        let sensitive = self.slot(path);
        let Some(folded) = &self.folded else {
            return sensitive.map(|(slot, _)| slot);
        };
        let insensitive = if path.bytes().any(|b| b.is_ascii_uppercase()) {
            folded.slot(&path.to_ascii_lowercase())
        } else {
            folded.slot(path)
        };
        match (sensitive, insensitive) {
            (Some((s, a)), Some((i, b))) => Some(if b > a { i } else { s }),
            (s, i) => s.or(i).map(|(slot, _)| slot),
        }
    }

    fn insert(
        &mut self,
        path: &str,
        kind: PathMatch,
        methods: Vec<String>,
        index: usize,
        value: T,
    ) -> Result<(), InsertError> {
        match kind {
            PathMatch::Exact => self
                .exact
                .entry(path.into())
                .or_default()
                .insert(methods, index, value),
            PathMatch::Prefix => {
                let mut node = &mut self.prefixes;
                for seg in prefix_segments(path) {
                    node = node.children.entry(seg.into()).or_default();
                }
                node.prefix
                    .get_or_insert_with(Slot::default)
                    .insert(methods, index, value)
            }
        }
    }

    /// The slot that decides for `path`, whatever the method, and how specific it is: the
    /// exact route's, else the deepest prefix route's. Allocates nothing.
    fn slot(&self, path: &str) -> Option<(&Slot<T>, Specificity)> {
        let occupied = |slot: &&Slot<T>| !slot.entries.is_empty();
        if let Some(slot) = self.exact.get(path).filter(occupied) {
            return Some((slot, EXACT));
        }
        let mut node = &self.prefixes;
        let mut best = node.prefix.as_ref().filter(occupied).map(|s| (s, 0));
        for (depth, seg) in request_segments(path).enumerate() {
            match node.children.get(seg) {
                Some(child) => node = child,
                None => break,
            }
            if let Some(slot) = node.prefix.as_ref().filter(occupied) {
                best = Some((slot, depth + 1));
            }
        }
        best
    }
}

/// Segments of a route prefix: `/api/v1/` and `/api/v1` are the same prefix.
fn prefix_segments(path: &str) -> impl Iterator<Item = &str> {
    path.trim_end_matches('/').split('/').skip(1)
}

/// Segments of a request path. A trailing empty segment (`/api/`) is kept, but it can only
/// match a route whose own path continues there, which none does, so `/api/` falls back to `/api`.
fn request_segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').skip(1)
}

/// Whether `path` is an absolute path without `.` or `..` segments (also percent-encoded ones).
///
/// The gateway refuses such request paths: an upstream that normalises `/api/../admin` to
/// `/admin` would otherwise serve a path that was matched, and authorised, as `/api`.
pub fn is_clean_path(path: &str) -> bool {
    if !path.starts_with('/') {
        return false;
    }
    path.split('/').all(|seg| !is_dot_segment(seg))
}

/// `.` or `..`, with any dot possibly written `%2e`/`%2E`.
fn is_dot_segment(seg: &str) -> bool {
    // The longest dot segment is `%2e%2e`; anything longer cannot be one.
    if seg.is_empty() || seg.len() > 6 {
        return false;
    }
    let mut rest = seg.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && rest[2] | 0x20 == b'e' {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots <= 2
}

/// A set of routes, each carrying a `T`, matched by host, path and method.
#[derive(Debug)]
pub struct Router<T> {
    exact_hosts: HashMap<Box<str>, PathTable<T>>,
    /// Keyed by the suffix after `*.` (`*.example.com` → `example.com`).
    wildcard_hosts: HashMap<Box<str>, PathTable<T>>,
    any_host: PathTable<T>,
    len: usize,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Router<T> {
    pub fn new() -> Self {
        Router {
            exact_hosts: HashMap::new(),
            wildcard_hosts: HashMap::new(),
            any_host: PathTable::default(),
            len: 0,
        }
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a route; its index (reported in conflicts) is the number of routes added before it.
    pub fn insert(&mut self, spec: RouteSpec, value: T) -> Result<(), InsertError> {
        if !is_clean_path(&spec.path) {
            return Err(InsertError::InvalidPath);
        }
        let table = match spec.host.as_deref() {
            None => &mut self.any_host,
            Some(host) => {
                let host = host.to_ascii_lowercase();
                let (map, key) = match host.strip_prefix("*.") {
                    Some(suffix) => (&mut self.wildcard_hosts, suffix.to_owned()),
                    None => (&mut self.exact_hosts, host),
                };
                if key.is_empty() || key.contains(['*', ':', '/', ' ']) {
                    return Err(InsertError::InvalidHost);
                }
                map.entry(key.into()).or_default()
            }
        };
        let methods = spec
            .methods
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        table.add(&spec, methods, self.len, value)?;
        self.len += 1;
        Ok(())
    }

    /// Finds the route for a request. `host` may carry a port (it is ignored).
    ///
    /// Host and path alone choose the deciding routes: the most specific host table (exact
    /// host, then `*.suffix` wildcard, then any host) that has a route matching the path, and
    /// in it the exact route for the path, else the deepest matching prefix route. Only then
    /// is the method compared (exactly; route methods are upper-case): if none of those routes
    /// accepts it the answer is [`Match::MethodNotAllowed`] with their methods. A method
    /// mismatch never falls through to a less specific path or host, since such a route (a
    /// public `/` catch-all, say) carries a policy written for other paths.
    ///
    /// `HEAD` is not implied by `GET`: a route must list `HEAD` to accept it, otherwise the
    /// answer is 405. That is the safe choice: a method reaches a handler only through a route
    /// whose policy names it.
    ///
    /// Allocates nothing when a route is found and the host is lower-case; a 405 allocates
    /// its method list.
    pub fn find(&self, host: Option<&str>, path: &str, method: &str) -> Match<'_, T> {
        let host = host.map(strip_port);
        // Most clients send lower-case hosts; only the others pay for a lower-cased copy.
        let lowered;
        let host = match host {
            Some(h) if h.bytes().any(|b| b.is_ascii_uppercase()) => {
                lowered = h.to_ascii_lowercase();
                Some(lowered.as_str())
            }
            other => other,
        };
        let tables = [
            host.and_then(|h| self.exact_hosts.get(h)),
            host.and_then(|h| self.wildcard_table(h)),
            Some(&self.any_host),
        ];
        for table in tables.iter().flatten() {
            if let Some(slot) = table.decide_slot(path) {
                return slot.decide(method);
            }
        }
        Match::NotFound
    }

    fn wildcard_table(&self, host: &str) -> Option<&PathTable<T>> {
        if self.wildcard_hosts.is_empty() {
            return None;
        }
        let (_, suffix) = host.split_once('.')?;
        self.wildcard_hosts.get(suffix)
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(Option<&str>, &str, PathMatch, &[&str])]) -> Router<usize> {
        let mut r = Router::new();
        for (i, (host, path, kind, methods)) in routes.iter().enumerate() {
            r.insert(RouteSpec::new(*host, path, *kind, methods), i)
                .unwrap();
        }
        r
    }

    #[test]
    fn prefix_matches_on_segment_boundaries() {
        let r = router(&[(None, "/api", PathMatch::Prefix, &[])]);
        assert_eq!(r.find(None, "/api", "GET"), Match::Found(&0));
        assert_eq!(r.find(None, "/api/", "GET"), Match::Found(&0));
        assert_eq!(r.find(None, "/api/x/y", "GET"), Match::Found(&0));
        assert_eq!(r.find(None, "/apix", "GET"), Match::NotFound);
        assert_eq!(r.find(None, "/", "GET"), Match::NotFound);
    }

    #[test]
    fn longest_prefix_wins_and_root_catches_all() {
        let r = router(&[
            (None, "/", PathMatch::Prefix, &[]),
            (None, "/api", PathMatch::Prefix, &[]),
            (None, "/api/v1/", PathMatch::Prefix, &[]),
        ]);
        assert_eq!(r.find(None, "/", "GET"), Match::Found(&0));
        assert_eq!(r.find(None, "/other", "GET"), Match::Found(&0));
        assert_eq!(r.find(None, "/api/v2", "GET"), Match::Found(&1));
        assert_eq!(r.find(None, "/api/v1/users", "GET"), Match::Found(&2));
    }

    #[test]
    fn exact_beats_prefix_and_only_matches_exactly() {
        let r = router(&[
            (None, "/api", PathMatch::Prefix, &[]),
            (None, "/api/health", PathMatch::Exact, &[]),
        ]);
        assert_eq!(r.find(None, "/api/health", "GET"), Match::Found(&1));
        assert_eq!(r.find(None, "/api/health/x", "GET"), Match::Found(&0));
        assert_eq!(r.find(None, "/api/health/", "GET"), Match::Found(&0));
    }

    #[test]
    fn method_mismatch_does_not_fall_through_to_catch_all() {
        // The bug: `PATCH /admin` skipped the admin route and reached the public `/`.
        let r = router(&[
            (None, "/", PathMatch::Prefix, &[]),
            (None, "/admin", PathMatch::Prefix, &["GET", "POST"]),
        ]);
        assert_eq!(r.find(None, "/admin", "GET"), Match::Found(&1));
        for path in ["/admin", "/admin/", "/admin/users/1"] {
            assert_eq!(
                r.find(None, path, "PATCH"),
                Match::MethodNotAllowed(vec!["GET", "POST"]),
                "{path}"
            );
        }
        assert_eq!(r.find(None, "/public", "PATCH"), Match::Found(&0));
    }

    #[test]
    fn method_mismatch_does_not_fall_back_to_shorter_prefix() {
        let r = router(&[
            (None, "/api", PathMatch::Prefix, &["GET"]),
            (None, "/api/write", PathMatch::Prefix, &["POST", "PUT"]),
        ]);
        assert_eq!(r.find(None, "/api/write", "POST"), Match::Found(&1));
        assert_eq!(r.find(None, "/api/other", "GET"), Match::Found(&0));
        // Only the deciding route's methods are offered, not those of `/api`.
        assert_eq!(
            r.find(None, "/api/write", "GET"),
            Match::MethodNotAllowed(vec!["POST", "PUT"])
        );
        assert_eq!(
            r.find(None, "/api/write/x", "DELETE"),
            Match::MethodNotAllowed(vec!["POST", "PUT"])
        );
    }

    #[test]
    fn method_mismatch_on_exact_route_does_not_fall_through_to_prefix() {
        let r = router(&[
            (None, "/api", PathMatch::Prefix, &[]),
            (None, "/api/health", PathMatch::Exact, &["GET"]),
        ]);
        assert_eq!(
            r.find(None, "/api/health", "DELETE"),
            Match::MethodNotAllowed(vec!["GET"])
        );
        assert_eq!(r.find(None, "/api/health/x", "DELETE"), Match::Found(&0));
    }

    #[test]
    fn method_mismatch_on_host_route_does_not_fall_through_to_other_hosts() {
        let r = router(&[
            (
                Some("secure.example.com"),
                "/admin",
                PathMatch::Prefix,
                &["GET"],
            ),
            (Some("*.example.com"), "/", PathMatch::Prefix, &["GET"]),
            (None, "/", PathMatch::Prefix, &[]),
        ]);
        assert_eq!(
            r.find(Some("secure.example.com"), "/admin/x", "POST"),
            Match::MethodNotAllowed(vec!["GET"])
        );
        assert_eq!(
            r.find(Some("www.example.com"), "/admin", "POST"),
            Match::MethodNotAllowed(vec!["GET"])
        );
        // A host table without a route for the path still hands over to the next one.
        assert_eq!(
            r.find(Some("secure.example.com"), "/other", "GET"),
            Match::Found(&1)
        );
        assert_eq!(r.find(Some("a.org"), "/admin", "POST"), Match::Found(&2));
    }

    #[test]
    fn routes_sharing_a_path_decide_together() {
        let r = router(&[
            (None, "/", PathMatch::Prefix, &[]),
            (None, "/api", PathMatch::Prefix, &["GET", "HEAD"]),
            (None, "/api", PathMatch::Prefix, &["POST"]),
            (None, "/api/", PathMatch::Prefix, &["DELETE"]),
        ]);
        assert_eq!(r.find(None, "/api/x", "HEAD"), Match::Found(&1));
        assert_eq!(r.find(None, "/api/x", "POST"), Match::Found(&2));
        assert_eq!(r.find(None, "/api/x", "DELETE"), Match::Found(&3));
        assert_eq!(
            r.find(None, "/api/x", "PUT"),
            Match::MethodNotAllowed(vec!["DELETE", "GET", "HEAD", "POST"])
        );
    }

    #[test]
    fn head_is_not_implied_by_get() {
        let r = router(&[
            (None, "/", PathMatch::Prefix, &[]),
            (None, "/x", PathMatch::Prefix, &["GET"]),
        ]);
        assert_eq!(
            r.find(None, "/x", "HEAD"),
            Match::MethodNotAllowed(vec!["GET"])
        );
    }

    #[test]
    fn method_comparison_is_exact() {
        let r = router(&[
            (None, "/", PathMatch::Prefix, &[]),
            (None, "/admin", PathMatch::Prefix, &["GET"]),
        ]);
        assert_eq!(
            r.find(None, "/admin", "get"),
            Match::MethodNotAllowed(vec!["GET"])
        );
    }

    #[test]
    fn hosts_exact_then_wildcard_then_any() {
        let r = router(&[
            (Some("api.example.com"), "/", PathMatch::Prefix, &[]),
            (Some("*.example.com"), "/", PathMatch::Prefix, &[]),
            (None, "/", PathMatch::Prefix, &[]),
            (Some("API.other.com"), "/x", PathMatch::Prefix, &[]),
        ]);
        assert_eq!(
            r.find(Some("api.example.com"), "/a", "GET"),
            Match::Found(&0)
        );
        assert_eq!(
            r.find(Some("API.Example.com:8443"), "/a", "GET"),
            Match::Found(&0)
        );
        assert_eq!(
            r.find(Some("www.example.com"), "/a", "GET"),
            Match::Found(&1)
        );
        assert_eq!(
            r.find(Some("a.b.example.com"), "/a", "GET"),
            Match::Found(&2)
        );
        assert_eq!(r.find(Some("example.com"), "/a", "GET"), Match::Found(&2));
        assert_eq!(r.find(None, "/a", "GET"), Match::Found(&2));
        assert_eq!(r.find(Some("api.other.com"), "/x", "GET"), Match::Found(&3));
    }

    #[test]
    fn host_route_falls_back_to_any_host_for_other_paths() {
        let r = router(&[
            (Some("a.com"), "/only", PathMatch::Prefix, &[]),
            (None, "/", PathMatch::Prefix, &[]),
        ]);
        assert_eq!(r.find(Some("a.com"), "/only/1", "GET"), Match::Found(&0));
        assert_eq!(r.find(Some("a.com"), "/else", "GET"), Match::Found(&1));
    }

    fn insensitive(path: &str, kind: PathMatch, methods: &[&str]) -> RouteSpec {
        RouteSpec::new(None, path, kind, methods).case_insensitive(true)
    }

    #[test]
    fn a_case_insensitive_route_matches_the_path_in_any_case() {
        let mut r = Router::new();
        r.insert(RouteSpec::new(None, "/", PathMatch::Prefix, &[]), 0)
            .unwrap();
        r.insert(insensitive("/Admin", PathMatch::Prefix, &["GET"]), 1)
            .unwrap();
        r.insert(RouteSpec::new(None, "/api", PathMatch::Prefix, &[]), 2)
            .unwrap();
        for path in ["/admin", "/ADMIN", "/aDmIn/users", "/Admin/"] {
            assert_eq!(r.find(None, path, "GET"), Match::Found(&1), "{path}");
        }
        // The method still decides without falling through to the catch-all.
        assert_eq!(
            r.find(None, "/ADMIN", "POST"),
            Match::MethodNotAllowed(vec!["GET"])
        );
        // Case-sensitive routes keep comparing exactly.
        assert_eq!(r.find(None, "/api/x", "GET"), Match::Found(&2));
        assert_eq!(r.find(None, "/API/x", "GET"), Match::Found(&0));
    }

    #[test]
    fn the_most_specific_route_decides_across_case_sensitive_and_insensitive_routes() {
        let mut r = Router::new();
        r.insert(RouteSpec::new(None, "/api", PathMatch::Prefix, &[]), 0)
            .unwrap();
        r.insert(insensitive("/api/admin", PathMatch::Prefix, &[]), 1)
            .unwrap();
        r.insert(
            RouteSpec::new(None, "/api/admin/open", PathMatch::Exact, &[]),
            2,
        )
        .unwrap();
        r.insert(insensitive("/Docs", PathMatch::Exact, &[]), 3)
            .unwrap();
        assert_eq!(r.find(None, "/api/ADMIN/x", "GET"), Match::Found(&1));
        assert_eq!(r.find(None, "/api/admin/open", "GET"), Match::Found(&2));
        assert_eq!(r.find(None, "/api/Admin/open", "GET"), Match::Found(&1));
        assert_eq!(r.find(None, "/dOCS", "GET"), Match::Found(&3));
        assert_eq!(r.find(None, "/api/other", "GET"), Match::Found(&0));
    }

    #[test]
    fn paths_differing_only_in_case_conflict_when_one_route_ignores_case() {
        let mut r = Router::new();
        r.insert(
            RouteSpec::new(None, "/Admin", PathMatch::Prefix, &["GET"]),
            0,
        )
        .unwrap();
        assert_eq!(
            r.insert(insensitive("/admin/", PathMatch::Prefix, &["POST"]), 1),
            Err(InsertError::CaseConflict { existing: 0 })
        );
        // Whatever the match kinds: an exact route ignoring case would beat the prefix.
        assert_eq!(
            r.insert(insensitive("/ADMIN", PathMatch::Exact, &[]), 1),
            Err(InsertError::CaseConflict { existing: 0 })
        );
        // Two case-sensitive routes may differ only in case.
        r.insert(RouteSpec::new(None, "/admin", PathMatch::Prefix, &[]), 1)
            .unwrap();
        r.insert(insensitive("/other/", PathMatch::Prefix, &[]), 2)
            .unwrap();
        assert_eq!(
            r.insert(
                RouteSpec::new(None, "/Other", PathMatch::Exact, &["PUT"]),
                3
            ),
            Err(InsertError::CaseConflict { existing: 2 })
        );
    }

    #[test]
    fn conflicts_are_refused_with_the_existing_index() {
        let mut r = router(&[(None, "/api", PathMatch::Prefix, &["GET"])]);
        let dup = RouteSpec::new(None, "/api/", PathMatch::Prefix, &["get", "POST"]);
        assert_eq!(r.insert(dup, 9), Err(InsertError::Conflict { existing: 0 }));
        let any = RouteSpec::new(None, "/api", PathMatch::Prefix, &[]);
        assert_eq!(r.insert(any, 9), Err(InsertError::Conflict { existing: 0 }));
        // Other methods, other match kind, or another host do not conflict.
        r.insert(
            RouteSpec::new(None, "/api", PathMatch::Prefix, &["POST"]),
            1,
        )
        .unwrap();
        r.insert(RouteSpec::new(None, "/api", PathMatch::Exact, &["GET"]), 2)
            .unwrap();
        r.insert(
            RouteSpec::new(Some("h"), "/api", PathMatch::Prefix, &["GET"]),
            3,
        )
        .unwrap();
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn bad_paths_and_hosts_are_refused() {
        let mut r: Router<()> = Router::new();
        for p in ["api", "/a/../b", "/a/./b", "/%2e%2E/x", ""] {
            assert_eq!(
                r.insert(RouteSpec::new(None, p, PathMatch::Prefix, &[]), ()),
                Err(InsertError::InvalidPath),
                "{p}"
            );
        }
        for h in ["", "a.com:80", "a.*.com", "*"] {
            assert_eq!(
                r.insert(RouteSpec::new(Some(h), "/", PathMatch::Prefix, &[]), ()),
                Err(InsertError::InvalidHost),
                "{h}"
            );
        }
    }

    #[test]
    fn clean_paths() {
        assert!(is_clean_path("/"));
        assert!(is_clean_path("/a/b.c/..d/...x"));
        assert!(is_clean_path("/a//b"));
        assert!(!is_clean_path("/a/.."));
        assert!(!is_clean_path("/a/%2e%2e/b"));
        assert!(!is_clean_path("/a/.%2E"));
        assert!(!is_clean_path("/./a"));
        assert!(!is_clean_path("a"));
    }

    #[test]
    fn strip_port_handles_ipv6() {
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
    }
}
