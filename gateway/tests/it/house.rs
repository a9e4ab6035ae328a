//! The house's shape, held by a test: no import circle between the modules of any crate of
//! the workspace, and the gateway's rooms (the folders of `gateway/src`) importing only
//! rooms below them, in the order ARCHITECTURE.md gives.
//!
//! Imports are read from the code, parsed with `syn`: every `use` tree, every path in code
//! (`crate::a::b::f()`), and `crate::`/`super::` paths inside macro invocations. A module is
//! a file; an inline module (`mod tests { .. }`) belongs to its file. A path is charged to
//! the deepest module it names. A parent declaring a child (`mod x;`) is no import.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use syn::visit::Visit;

/// Modules (by file) and the imports between them, for one crate.
#[derive(Debug, Default)]
struct Crate {
    /// Logical module path (`identity::auth`, `identity::auth::tests`) → the file module
    /// it belongs to (`identity::auth`).
    modules: BTreeMap<Vec<String>, Vec<String>>,
    /// `(from, to)` file modules → the names taken.
    edges: BTreeMap<(Vec<String>, Vec<String>), BTreeSet<String>>,
    /// File module → its file, for messages.
    files: BTreeMap<Vec<String>, PathBuf>,
}

/// A path as written, from the module it is written in.
struct Seen {
    from: Vec<String>,
    path: Vec<String>,
}

struct Collector {
    /// The logical module being read (inline modules pushed).
    at: Vec<String>,
    seen: Vec<Seen>,
    /// `mod x;` declarations found: (logical parent, name).
    children: Vec<(Vec<String>, String)>,
}

impl Collector {
    fn push(&mut self, path: Vec<String>) {
        if matches!(
            path.first().map(String::as_str),
            Some("crate" | "super" | "self")
        ) {
            self.seen.push(Seen {
                from: self.at.clone(),
                path,
            });
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut full = prefix.clone();
                full.push(n.ident.to_string());
                self.push(full);
            }
            syn::UseTree::Rename(r) => {
                let mut full = prefix.clone();
                full.push(r.ident.to_string());
                self.push(full);
            }
            syn::UseTree::Glob(_) => self.push(prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    /// `crate :: a :: b` and `super :: a` sequences in a macro's tokens.
    fn tokens(&mut self, tokens: proc_macro2::TokenStream) {
        let flat: Vec<proc_macro2::TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < flat.len() {
            match &flat[i] {
                proc_macro2::TokenTree::Group(g) => self.tokens(g.stream()),
                proc_macro2::TokenTree::Ident(id) if id == "crate" || id == "super" => {
                    let mut path = vec![id.to_string()];
                    let mut j = i + 1;
                    loop {
                        let colons = matches!((flat.get(j), flat.get(j + 1)),
                            (Some(proc_macro2::TokenTree::Punct(a)), Some(proc_macro2::TokenTree::Punct(b)))
                                if a.as_char() == ':' && b.as_char() == ':');
                        match (colons, flat.get(j + 2)) {
                            (true, Some(proc_macro2::TokenTree::Ident(next))) => {
                                path.push(next.to_string());
                                j += 3;
                            }
                            _ => break,
                        }
                    }
                    self.push(path);
                    i = j;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        self.push(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p);
    }

    // `pub(crate)` names no import.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        match &m.content {
            Some((_, items)) => {
                self.at.push(m.ident.to_string());
                for item in items {
                    self.visit_item(item);
                }
                self.at.pop();
            }
            None => self.children.push((self.at.clone(), m.ident.to_string())),
        }
    }
}

/// Reads the crate whose root file is `root` (`src/lib.rs`, `src/main.rs`, an example).
fn read_crate(root: &Path) -> Crate {
    let mut krate = Crate::default();
    let mut seen = Vec::new();
    // (file, its logical module, the directory its children live in)
    let mut todo = vec![(
        root.to_path_buf(),
        Vec::<String>::new(),
        root.parent().unwrap().to_path_buf(),
    )];
    while let Some((file, module, dir)) = todo.pop() {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{file:?}: {e}"));
        let mut c = Collector {
            at: module.clone(),
            seen: Vec::new(),
            children: Vec::new(),
        };
        c.visit_file(&ast);
        krate.files.insert(module.clone(), file.clone());
        krate.modules.insert(module.clone(), module.clone());
        record_inline(&ast.items, &module, &module, &mut krate);
        for (parent, name) in c.children {
            let sub = if parent == module {
                dir.clone()
            } else {
                dir.join(parent[module.len()..].join("/"))
            };
            let (path, child_dir) = if sub.join(format!("{name}.rs")).exists() {
                (sub.join(format!("{name}.rs")), sub.join(&name))
            } else {
                (sub.join(&name).join("mod.rs"), sub.join(&name))
            };
            let mut logical = parent.clone();
            logical.push(name);
            todo.push((path, logical, child_dir));
        }
        seen.extend(c.seen);
    }
    for s in seen {
        let from = krate.modules[&s.from].clone();
        let Some((target, names)) = resolve(&krate, &s.from, &s.path) else {
            continue;
        };
        let to = krate.modules[&target].clone();
        if from != to {
            krate.edges.entry((from, to)).or_default().insert(names);
        }
    }
    krate
}

/// Inline modules, mapped to the file module they are written in.
fn record_inline(items: &[syn::Item], at: &[String], file: &[String], krate: &mut Crate) {
    for item in items {
        if let syn::Item::Mod(m) = item {
            if let Some((_, inner)) = &m.content {
                let mut logical = at.to_vec();
                logical.push(m.ident.to_string());
                krate.modules.insert(logical.clone(), file.to_vec());
                record_inline(inner, &logical, file, krate);
            }
        }
    }
}

/// The deepest module `path` (written in module `from`) names, and the rest of the path.
fn resolve(krate: &Crate, from: &[String], path: &[String]) -> Option<(Vec<String>, String)> {
    let mut at: Vec<String> = Vec::new();
    let mut rest = path;
    match path.first()?.as_str() {
        "crate" => rest = &path[1..],
        "self" => {
            at = from.to_vec();
            rest = &path[1..];
        }
        "super" => {
            at = from.to_vec();
            while rest.first().map(String::as_str) == Some("super") {
                at.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    let mut module = at.clone();
    let mut used = 0;
    for seg in rest {
        let mut next = module.clone();
        next.push(seg.clone());
        if krate.modules.contains_key(&next) {
            module = next;
            used += 1;
        } else {
            break;
        }
    }
    // `use crate::a::b;` of a module `b` itself names `b`.
    let names = if used == rest.len() {
        module.last().cloned().unwrap_or_else(|| "crate".into())
    } else {
        rest[used..].join("::")
    };
    krate
        .modules
        .contains_key(&module)
        .then_some((module, names))
}

/// The circles of a crate: each strongly connected set of more than one module, with the
/// imports that tie it, as lines.
fn circles(krate: &Crate) -> Vec<String> {
    let nodes: Vec<&Vec<String>> = krate.files.keys().collect();
    let index: BTreeMap<&Vec<String>, usize> =
        nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut adj = vec![Vec::new(); nodes.len()];
    for (from, to) in krate.edges.keys() {
        if let (Some(&a), Some(&b)) = (index.get(from), index.get(to)) {
            adj[a].push(b);
        }
    }
    // Tarjan's strongly connected components.
    struct T {
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn strong(v: usize, adj: &[Vec<usize>], t: &mut T) {
        t.index[v] = Some(t.next);
        t.low[v] = t.next;
        t.next += 1;
        t.stack.push(v);
        t.on[v] = true;
        for &w in &adj[v] {
            match t.index[w] {
                None => {
                    strong(w, adj, t);
                    t.low[v] = t.low[v].min(t.low[w]);
                }
                Some(i) if t.on[w] => t.low[v] = t.low[v].min(i),
                Some(_) => {}
            }
        }
        if Some(t.low[v]) == t.index[v] {
            let mut scc = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on[w] = false;
                scc.push(w);
                if w == v {
                    break;
                }
            }
            t.out.push(scc);
        }
    }
    let mut t = T {
        index: vec![None; nodes.len()],
        low: vec![0; nodes.len()],
        on: vec![false; nodes.len()],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..nodes.len() {
        if t.index[v].is_none() {
            strong(v, &adj, &mut t);
        }
    }
    let name = |m: &Vec<String>| krate.files[m].display().to_string();
    let mut found = Vec::new();
    for scc in t.out.into_iter().filter(|s| s.len() > 1) {
        let members: BTreeSet<&Vec<String>> = scc.iter().map(|&i| nodes[i]).collect();
        let mut lines = vec![format!(
            "circle of {} modules: {}",
            members.len(),
            members
                .iter()
                .map(|m| name(m))
                .collect::<Vec<_>>()
                .join(", ")
        )];
        for ((from, to), names) in &krate.edges {
            if members.contains(from) && members.contains(to) {
                lines.push(format!(
                    "  {} -> {}: {}",
                    name(from),
                    name(to),
                    names.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        found.push(lines.join("\n"));
    }
    found
}

/// The rooms of ARCHITECTURE.md's order line, top first.
fn room_order(architecture: &str) -> Vec<String> {
    let line = architecture
        .lines()
        .find(|l| l.starts_with("Rooms, from the top:"))
        .expect("ARCHITECTURE.md has a line starting `Rooms, from the top:`");
    line.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Imports from a room to a room at or above it in `order` (files at the crate's root may
/// import anything; nothing may import them but each other).
fn upward_imports(krate: &Crate, order: &[String]) -> Vec<String> {
    let rank = |m: &Vec<String>| -> Option<usize> {
        match m.first() {
            Some(room) if m.len() > 1 || order.contains(room) => {
                order.iter().position(|r| r == room).or(Some(usize::MAX))
            }
            _ => None,
        }
    };
    let mut out = Vec::new();
    for ((from, to), names) in &krate.edges {
        let (a, b) = (rank(from), rank(to));
        let bad = match (a, b) {
            (Some(a), Some(b)) => from[0] != to[0] && a >= b,
            (Some(_), None) => true,
            _ => false,
        };
        if bad {
            out.push(format!(
                "{} -> {}: {}",
                krate.files[from].display(),
                krate.files[to].display(),
                names.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    out
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every crate root of the workspace and the fuzz crate: libraries, binaries, examples,
/// benches, fuzz targets.
fn crate_roots() -> Vec<PathBuf> {
    let ws = workspace();
    let mut packages = vec![ws.join("gateway"), ws.join("fuzz")];
    for entry in std::fs::read_dir(ws.join("crates")).unwrap() {
        packages.push(entry.unwrap().path());
    }
    let mut roots = Vec::new();
    for p in packages {
        for f in ["src/lib.rs", "src/main.rs"] {
            if p.join(f).exists() {
                roots.push(p.join(f));
            }
        }
        for dir in ["examples", "benches", "fuzz_targets", "src/bin"] {
            if let Ok(entries) = std::fs::read_dir(p.join(dir)) {
                for e in entries {
                    let path = e.unwrap().path();
                    if path.extension().is_some_and(|x| x == "rs") {
                        roots.push(path);
                    }
                }
            }
        }
    }
    assert!(roots.len() > 8, "found the workspace's crates: {roots:?}");
    roots
}

#[test]
fn no_crate_of_the_workspace_has_an_import_circle() {
    let mut found = Vec::new();
    for root in crate_roots() {
        found.extend(circles(&read_crate(&root)));
    }
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

#[test]
fn the_gateways_rooms_import_only_rooms_below_them_in_the_documented_order() {
    let ws = workspace();
    let order = room_order(&std::fs::read_to_string(ws.join("ARCHITECTURE.md")).unwrap());
    let src = ws.join("gateway/src");
    let folders: BTreeSet<String> = std::fs::read_dir(&src)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = order.iter().cloned().collect();
    assert_eq!(
        folders, listed,
        "every folder of gateway/src is a room in ARCHITECTURE.md's order, and only those"
    );
    let krate = read_crate(&src.join("lib.rs"));
    let loose: Vec<_> = krate
        .files
        .keys()
        .filter(|m| m.len() == 1 && !listed.contains(&m[0]) && m[0] != "fuzzing")
        .collect();
    assert!(loose.is_empty(), "modules outside every room: {loose:?}");
    let up = upward_imports(&krate, &order);
    assert!(
        up.is_empty(),
        "imports against the order {}:\n{}",
        order.join(" → "),
        up.join("\n")
    );
}

/// The checks catch what they are for: a circle written on purpose into a small crate, and
/// an import from a lower room to a higher one.
#[test]
fn a_circle_or_an_upward_import_added_on_purpose_is_found_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("low")).unwrap();
    std::fs::create_dir_all(src.join("high")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod high;\npub mod low;\n").unwrap();
    std::fs::write(src.join("high/mod.rs"), "pub mod a;\n").unwrap();
    std::fs::write(
        src.join("high/a.rs"),
        "use crate::low::b::B;\npub struct A(B);\n",
    )
    .unwrap();
    std::fs::write(src.join("low/mod.rs"), "pub mod b;\npub mod c;\n").unwrap();
    std::fs::write(
        src.join("low/b.rs"),
        "pub struct B;\nfn f() { super::c::g(); }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("low/c.rs"),
        "pub fn g() { tracing::info!(x = ?crate::low::b::B); }\nmod tests { use super::super::super::high::a::A; }\n",
    )
    .unwrap();
    let krate = read_crate(&src.join("lib.rs"));
    let prefix = format!("{}/", src.display());
    let found: Vec<String> = circles(&krate)
        .iter()
        .map(|c| c.replace(&prefix, ""))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    for edge in [
        "high/a.rs -> low/b.rs: B",
        "low/b.rs -> low/c.rs: g",
        "low/c.rs -> low/b.rs: B",
        "low/c.rs -> high/a.rs: A",
    ] {
        assert!(found[0].contains(edge), "{edge} in {}", found[0]);
    }
    let up = upward_imports(&krate, &["high".into(), "low".into()]);
    assert_eq!(up.len(), 1, "{up:?}");
    assert!(
        up[0].contains("low/c.rs -> ") && up[0].contains("high/a.rs: A"),
        "{up:?}"
    );
    assert!(upward_imports(&krate, &["low".into(), "high".into()])
        .iter()
        .any(|l| l.contains("high/a.rs -> ")));
}

/// The pure crates (`crates/*`) do no I/O: no files, sockets, environment, clocks, sleeps
/// or async runtime. The gateway passes text, bytes and `now` in. (Scoped threads in their
/// tests and `available_parallelism` for the `threads` default are not I/O.)
#[test]
fn the_pure_crates_do_no_io() {
    const IO: [&str; 13] = [
        "std::fs",
        "TcpListener",
        "ToSocketAddrs",
        "to_socket_addrs",
        "std::env",
        "thread::sleep",
        "std::process",
        "tokio",
        "SystemTime::now",
        "Instant::now",
        "File::open",
        "TcpStream",
        "UdpSocket",
    ];
    let mut found = Vec::new();
    let mut files = 0;
    let mut todo = vec![];
    for entry in std::fs::read_dir(workspace().join("crates")).unwrap() {
        todo.push(entry.unwrap().path().join("src"));
    }
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
                continue;
            }
            files += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for word in IO.iter().filter(|w| code.contains(*w)) {
                    found.push(format!("{}:{}: {word}", path.display(), n + 1));
                }
            }
        }
    }
    assert!(files > 20, "read the crates' sources ({files} files)");
    assert!(
        found.is_empty(),
        "I/O in a pure crate:\n{}",
        found.join("\n")
    );
}
