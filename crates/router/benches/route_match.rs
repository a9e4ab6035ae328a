//! Route lookup cost at 10, 1,000 and 10,000 routes: it should stay flat, since lookups
//! walk the request's path segments and never scan the route list.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use tollgate_router::{PathMatch, RouteSpec, Router};

/// `n` routes spread over 10 hosts and three path depths, plus exact routes.
fn build(n: usize) -> Router<usize> {
    let mut r = Router::new();
    for i in 0..n {
        let host = format!("svc{}.example.com", i % 10);
        let spec = match i % 3 {
            0 => RouteSpec::new(
                Some(&host),
                &format!("/api/v{}/r{i}", i % 7),
                PathMatch::Prefix,
                &[],
            ),
            1 => RouteSpec::new(
                Some(&host),
                &format!("/api/v{}/r{i}/items", i % 7),
                PathMatch::Prefix,
                &["GET", "POST"],
            ),
            _ => RouteSpec::new(
                Some(&host),
                &format!("/exact/r{i}"),
                PathMatch::Exact,
                &["GET"],
            ),
        };
        r.insert(spec, i).unwrap();
    }
    r
}

fn route_match(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_match");
    for n in [10usize, 1_000, 10_000] {
        let router = build(n);
        // A request that hits the last-inserted prefix route, deep in its path.
        let last = (0..n).rev().find(|i| i % 3 == 1).unwrap();
        let host = format!("svc{}.example.com", last % 10);
        let path = format!("/api/v{}/r{last}/items/42/details", last % 7);
        g.bench_with_input(BenchmarkId::new("hit", n), &n, |b, _| {
            b.iter(|| {
                router.find(
                    black_box(Some(host.as_str())),
                    black_box(path.as_str()),
                    "GET",
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("miss", n), &n, |b, _| {
            b.iter(|| {
                router.find(
                    black_box(Some("nohost.example.com")),
                    black_box("/nothing/here"),
                    "GET",
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, route_match);
criterion_main!(benches);
