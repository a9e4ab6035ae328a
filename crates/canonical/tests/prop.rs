//! Property tests: path normalisation is a fixed point with no dot segment, slash run or
//! needless escape left; `canonicalize` never panics; and the router decides the same on a
//! canonical request as on that request canonicalised again, with `/admin` paths reaching
//! only admin routes.

use proptest::prelude::*;
use tollgate_canonical::{
    canonicalize, normalize_path, CanonicalRequest, EscapedSlashes, PathOptions, PathParams,
};
use tollgate_router::{Match, PathMatch, RouteSpec, Router};

/// Path pieces that attacks are made of, plus a few ordinary ones.
const PIECES: &[&str] = &[
    "admin", "api", "v1", "users", "%61dmin", "adm%69n", "%41PI", "", "%2e", "%2E%2e", ".", "..",
    "..;", ";x", "%2F", "%2f", "%5c", "\\", "%00", "%7e", "%3a", "%25", "%2561", "a b", "x#y", "%",
    "%zz", "~", "a;b", "%c3%a9",
];

fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(PIECES).prop_map(str::to_owned),
        1 => "[a-zA-Z0-9%./;~:@_-]{0,6}",
    ]
}

/// A path from pieces, starting with `/` or `//`, optionally with a trailing slash.
fn path() -> impl Strategy<Value = String> {
    (
        prop::bool::ANY,
        prop::collection::vec(piece(), 0..6),
        prop::bool::ANY,
    )
        .prop_map(|(double, pieces, trailing)| {
            let lead = if double { "//" } else { "/" };
            let tail = if trailing { "/" } else { "" };
            format!("{lead}{}{tail}", pieces.join("/"))
        })
}

fn options() -> impl Strategy<Value = PathOptions> {
    (prop::bool::ANY, prop::bool::ANY, prop::bool::ANY).prop_map(|(merge, keep, allow)| {
        PathOptions {
            merge_slashes: merge,
            escaped_slashes: if keep {
                EscapedSlashes::Decode
            } else {
                EscapedSlashes::Reject
            },
            path_params: if allow {
                PathParams::Strip
            } else {
                PathParams::Reject
            },
        }
    })
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The value of each `%XX` escape in `path` (all are well-formed in a normalised path).
fn escapes(path: &str) -> Vec<u8> {
    let bytes = path.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            i += 1;
        }
    }
    out
}

/// The gateway's routes in miniature: a public catch-all, admin routes with restricted
/// methods, and a host with its own tables.
fn router() -> Router<&'static str> {
    let mut r = Router::new();
    let mut add = |host: Option<&str>, path: &str, kind, methods: &[&str], name| {
        r.insert(RouteSpec::new(host, path, kind, methods), name)
            .unwrap();
    };
    add(None, "/", PathMatch::Prefix, &[], "public");
    add(None, "/admin", PathMatch::Prefix, &["GET", "POST"], "admin");
    add(None, "/api", PathMatch::Prefix, &[], "api");
    add(None, "/api/v1/users", PathMatch::Exact, &["GET"], "users");
    let secure = Some("secure.example.com");
    add(secure, "/", PathMatch::Prefix, &["GET"], "secure");
    add(
        secure,
        "/admin",
        PathMatch::Prefix,
        &["GET", "DELETE"],
        "secure-admin",
    );
    r
}

fn find<'r>(router: &'r Router<&'static str>, req: &CanonicalRequest) -> Match<'r, &'static str> {
    router.find(req.host.as_deref(), &req.path, &req.method)
}

/// A raw request: method, target, Host header values, HTTP/1.1 or not.
#[derive(Debug, Clone)]
struct RawRequest {
    method: String,
    target: String,
    hosts: Vec<String>,
    http11: bool,
}

fn raw_request() -> impl Strategy<Value = RawRequest> {
    let method = prop::sample::select(vec![
        "GET", "POST", "PATCH", "DELETE", "HEAD", "get", "Post", "PROPFIND",
    ]);
    let host = (
        prop::sample::select(vec![
            "secure.example.com",
            "SECURE.example.COM",
            "secure.example.com.",
            "Secure.Example.Com.",
            "secure.example.com..",
            "other.com",
            "[::1]",
            "",
        ]),
        prop::option::of(prop::sample::select(vec!["8443", "0", "80"])),
    )
        .prop_map(|(h, port)| match port {
            Some(p) => format!("{h}:{p}"),
            None => h.to_owned(),
        });
    let query = prop::option::of(prop::sample::select(vec!["", "x=1", "a=%2F..", "b c"]));
    (
        method,
        host,
        path(),
        query,
        0..4u8,
        prop::bool::ANY,
        prop::bool::ANY,
    )
        .prop_map(|(method, host, path, query, shape, extra_host, http11)| {
            let query = query.map(|q| format!("?{q}")).unwrap_or_default();
            // 0: origin-form with Host; 1: origin-form without; 2, 3: absolute-form, with
            // and without a (then ignored) Host header.
            let target = if shape >= 2 {
                format!("http://{host}{path}{query}")
            } else {
                format!("{path}{query}")
            };
            let mut hosts = match shape {
                0 => vec![host],
                2 => vec!["other.com".to_owned()],
                _ => vec![],
            };
            if extra_host {
                hosts.push("secure.example.com".to_owned());
            }
            RawRequest {
                method: method.to_owned(),
                target,
                hosts,
                http11,
            }
        })
}

fn canon_raw(
    raw: &RawRequest,
    opts: &PathOptions,
) -> Result<CanonicalRequest, tollgate_canonical::Refusal> {
    let hosts: Vec<&[u8]> = raw.hosts.iter().map(|h| h.as_bytes()).collect();
    canonicalize(
        raw.method.as_bytes(),
        raw.target.as_bytes(),
        &hosts,
        raw.http11,
        opts,
    )
}

/// The canonical request sent through `canonicalize` again, as the upstream would receive it.
fn recanonicalize(
    req: &CanonicalRequest,
    http11: bool,
    opts: &PathOptions,
) -> Result<CanonicalRequest, tollgate_canonical::Refusal> {
    let header = req.host_header();
    let hosts: Vec<&[u8]> = header.iter().map(|h| h.as_bytes()).collect();
    canonicalize(
        req.method.as_bytes(),
        req.target().as_bytes(),
        &hosts,
        http11,
        opts,
    )
}

fn is_under_admin(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn normalising_is_idempotent(path in path(), opts in options()) {
        if let Ok(once) = normalize_path(path.as_bytes(), &opts) {
            prop_assert_eq!(normalize_path(once.as_bytes(), &opts), Ok(once.clone()));
        }
    }

    #[test]
    fn normalising_arbitrary_bytes_is_idempotent(
        path in prop::collection::vec(any::<u8>(), 0..24).prop_map(|mut p| { p.insert(0, b'/'); p }),
        opts in options(),
    ) {
        if let Ok(once) = normalize_path(&path, &opts) {
            prop_assert_eq!(normalize_path(once.as_bytes(), &opts), Ok(once.clone()));
        }
    }

    #[test]
    fn normalised_path_has_no_slash_run_dot_segment_or_needless_escape(
        path in path(),
        keep in prop::bool::ANY,
        allow in prop::bool::ANY,
    ) {
        let opts = PathOptions {
            merge_slashes: true,
            escaped_slashes: if keep { EscapedSlashes::Decode } else { EscapedSlashes::Reject },
            path_params: if allow { PathParams::Strip } else { PathParams::Reject },
        };
        if let Ok(p) = normalize_path(path.as_bytes(), &opts) {
            prop_assert!(p.starts_with('/'), "{}", p);
            prop_assert!(!p.contains("//"), "{}", p);
            for segment in p.split('/') {
                let name = segment.split(';').next().unwrap_or_default();
                prop_assert!(name != "." && name != "..", "{}", p);
            }
            for value in escapes(&p) {
                prop_assert!(!is_unreserved(value), "{}", p);
                prop_assert!(value >= 0x20 && value != 0x7f, "{}", p);
            }
            prop_assert!(!p.bytes().any(|b| b == b'\\' || !(0x21..0x7f).contains(&b)), "{}", p);
        }
    }

    #[test]
    fn canonicalize_never_panics(
        method in prop::collection::vec(any::<u8>(), 0..10),
        target in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40),
            path().prop_map(String::into_bytes),
            "(https?|HTTP|ftp|x)://[a-zA-Z0-9.:@\\[\\]%_-]{0,20}(/[ -~]{0,10})?".prop_map(String::into_bytes),
        ],
        hosts in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..20), 0..3),
        http11 in prop::bool::ANY,
        opts in options(),
    ) {
        let hosts: Vec<&[u8]> = hosts.iter().map(Vec::as_slice).collect();
        let _ = canonicalize(&method, &target, &hosts, http11, &opts);
    }

    #[test]
    fn router_decides_alike_on_a_recanonicalised_request(
        raw in raw_request(),
        opts in options(),
    ) {
        let router = router();
        let Ok(first) = canon_raw(&raw, &opts) else { return Ok(()) };
        let again = recanonicalize(&first, raw.http11, &opts);
        prop_assert!(again.is_ok(), "{:?} → {:?} → {:?}", raw, first, again);
        let again = again.unwrap();
        prop_assert_eq!(&again.method, &first.method);
        prop_assert_eq!(&again.host, &first.host);
        prop_assert_eq!(again.port, first.port);
        prop_assert_eq!(&again.path, &first.path);
        prop_assert_eq!(&again.query, &first.query);
        prop_assert_eq!(find(&router, &again), find(&router, &first));
    }

    #[test]
    fn admin_paths_reach_only_admin_routes(raw in raw_request()) {
        let router = router();
        let Ok(req) = canon_raw(&raw, &PathOptions::default()) else { return Ok(()) };
        if let Match::Found(route) = find(&router, &req) {
            if is_under_admin(&req.path) {
                prop_assert!(
                    matches!(*route, "admin" | "secure-admin"),
                    "{:?} → {:?} → {}", raw, req, route
                );
            }
            // Case and a trailing dot do not take a request off the secure host's routes.
            if req.host.as_deref() == Some("secure.example.com") {
                prop_assert!(route.starts_with("secure"), "{:?} → {:?} → {}", raw, req, route);
            }
        }
    }

    #[test]
    fn encoded_admin_routes_like_admin(
        prefix in prop::sample::select(vec!["/", "//", "///"]),
        name in prop::sample::select(vec!["admin", "%61dmin", "adm%69n", "%61%64%6d%69%6e", "%61DMIN"]),
        rest in prop::sample::select(vec!["", "/", "/x", "//x/%7e"]),
        method in prop::sample::select(vec!["GET", "PATCH", "DELETE"]),
    ) {
        let router = router();
        let target = format!("{prefix}{name}{rest}");
        let req = canonicalize(method.as_bytes(), target.as_bytes(), &[b"a.com"], true, &PathOptions::default())
            .unwrap();
        let plain = canonicalize(method.as_bytes(), format!("/admin{rest}").as_bytes(), &[b"a.com"], true, &PathOptions::default())
            .unwrap();
        if name == "%61DMIN" {
            prop_assert!(req.path.starts_with("/aDMIN"));
        } else {
            prop_assert_eq!(find(&router, &req), find(&router, &plain));
            prop_assert!(!matches!(find(&router, &req), Match::Found(&"public")));
        }
    }
}
