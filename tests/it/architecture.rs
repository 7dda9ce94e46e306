//! The shape of the code: no import cycle between the crate's top-level modules (read from the
//! `crate::` paths in src/, as `../shared/tools/module-cycles` reads them), and the README's
//! architecture section naming exactly the modules that exist, in an order the imports respect.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::helpers::repo_path;

/// One `crate::` reference: the file and line it is on.
type Edges = BTreeMap<(String, String), String>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (None for lib.rs and main.rs).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    match first.strip_suffix(".rs") {
        Some("lib" | "main") => None,
        Some(stem) => Some(stem.to_string()),
        None => Some(first),
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The top-level modules a line of code names through `crate::…`, including the members of a
/// `use crate::{a, b::c}` group.
fn referenced(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or_default();
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(is_ident) {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or_default();
            for item in inner.split(',') {
                let head: String = item.trim().chars().take_while(|c| is_ident(*c)).collect();
                if !head.is_empty() {
                    out.push(head);
                }
            }
            continue;
        }
        let head: String = rest.chars().take_while(|c| is_ident(*c)).collect();
        if !head.is_empty() {
            out.push(head);
        }
    }
    out
}

/// Every module-to-module reference outside `#[cfg(test)]` code, with an example location.
fn module_graph() -> (BTreeSet<String>, Edges) {
    let src = repo_path("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(&src, f)).collect();
    let mut edges = Edges::new();
    for file in &files {
        let Some(from) = module_of(&src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read a source file");
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            for to in referenced(line) {
                if to != from && modules.contains(&to) {
                    edges
                        .entry((from.clone(), to))
                        .or_insert_with(|| format!("{}:{}", file.display(), n + 1));
                }
            }
        }
    }
    (modules, edges)
}

/// A cycle in the graph, if there is one: its modules in order, the first repeated at the end.
fn find_cycle(modules: &BTreeSet<String>, edges: &Edges) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        m: &str,
        edges: &Edges,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(m.to_string(), Mark::Open);
        path.push(m.to_string());
        for (_, to) in edges.keys().filter(|(from, _)| from == m) {
            match marks.get(to).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let start = path.iter().position(|p| p == to).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(to.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(to, edges, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(m.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for m in modules {
        if marks.get(m).copied().unwrap_or(Mark::New) == Mark::New
            && let Some(c) = visit(m, edges, &mut marks, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn describe(cycle: &[String], edges: &Edges) -> String {
    let mut s = format!("import cycle: {}\n", cycle.join(" -> "));
    for pair in cycle.windows(2) {
        let at = &edges[&(pair[0].clone(), pair[1].clone())];
        s.push_str(&format!("  {} -> {}   e.g. {at}\n", pair[0], pair[1]));
    }
    s
}

#[test]
fn the_scanner_reads_crate_paths_like_the_module_cycles_tool() {
    assert_eq!(
        referenced("use crate::{agent::Inbound, store::Store};"),
        ["agent", "store"]
    );
    assert_eq!(
        referenced("let x = crate::inbox::receive(s).await; // crate::app::run"),
        ["inbox"]
    );
    assert_eq!(
        referenced("concierge::app::run; mycrate::x"),
        Vec::<String>::new()
    );
    let modules: BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
    let mut edges = Edges::new();
    edges.insert(("a".into(), "b".into()), "a.rs:1".into());
    edges.insert(("b".into(), "c".into()), "b.rs:2".into());
    assert_eq!(find_cycle(&modules, &edges), None);
    edges.insert(("c".into(), "a".into()), "c.rs:3".into());
    let cycle = find_cycle(&modules, &edges).expect("a cycle");
    assert_eq!(cycle, ["a", "b", "c", "a"]);
    assert!(describe(&cycle, &edges).contains("c -> a   e.g. c.rs:3"));
}

#[test]
fn no_module_imports_itself_around_a_cycle() {
    let (modules, edges) = module_graph();
    assert!(modules.contains("inbox") && modules.contains("channels"));
    if let Some(cycle) = find_cycle(&modules, &edges) {
        panic!("{}", describe(&cycle, &edges));
    }
}

/// The README's `## Architecture` section.
fn architecture_section() -> String {
    let readme = std::fs::read_to_string(repo_path("README.md")).expect("read README.md");
    let start = readme
        .find("\n## Architecture")
        .expect("README.md has an Architecture section");
    let body = &readme[start + 1..];
    let end = body[3..].find("\n## ").map_or(body.len(), |i| i + 3);
    body[..end].to_string()
}

/// The layers the README lists: lines `- layer: `src/a`, `src/b.rs` …`, lowest first.
fn readme_layers(section: &str) -> Vec<Vec<String>> {
    section
        .lines()
        .filter(|l| l.starts_with("- "))
        .map(|l| {
            l.split('`')
                .skip(1)
                .step_by(2)
                .filter_map(|name| name.strip_prefix("src/"))
                .map(|name| {
                    name.trim_end_matches('/')
                        .trim_end_matches(".rs")
                        .split('/')
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect::<Vec<_>>()
        })
        .filter(|layer| !layer.is_empty())
        .collect()
}

#[test]
fn the_readme_architecture_names_the_modules_in_an_order_their_imports_respect() {
    let section = architecture_section();
    let src = repo_path("src");
    // Every `src/…` path the section names exists.
    for path in section
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|p| p.starts_with("src/"))
    {
        assert!(
            repo_path(path.trim_end_matches('/')).exists(),
            "README's architecture names {path}, which does not exist"
        );
    }
    let layers = readme_layers(&section);
    let mut layer_of = BTreeMap::new();
    for (i, layer) in layers.iter().enumerate() {
        for m in layer {
            layer_of.insert(m.clone(), i);
        }
    }
    // Every top-level module is listed.
    let (modules, edges) = module_graph();
    for m in &modules {
        assert!(
            layer_of.contains_key(m),
            "README's architecture does not list src/{m} (in {})",
            src.display()
        );
    }
    // No module imports one listed in a higher layer.
    for ((from, to), at) in &edges {
        assert!(
            layer_of[to] <= layer_of[from],
            "README's architecture lists src/{to} above src/{from}, but {from} imports {to} ({at})"
        );
    }
}

/// Every outgoing HTTP client comes from `http_client`, which installs ring as rustls' crypto
/// provider first: a client made any other way panics at its first use ("No rustls crypto
/// provider is configured") in a process that has not made one through `http_client` yet.
#[test]
fn http_clients_are_made_by_http_client_only() {
    let mut files = Vec::new();
    rust_files(&repo_path("src"), &mut files);
    rust_files(&repo_path("tests"), &mut files);
    let own = [
        repo_path("src/http_client.rs"),
        repo_path("tests/it/architecture.rs"),
    ];
    let forbidden = [
        "reqwest::Client::new(",
        "reqwest::Client::builder(",
        "reqwest::ClientBuilder::new(",
        "reqwest::get(",
    ];
    let mut found = Vec::new();
    for file in files.iter().filter(|f| !own.contains(f)) {
        let text = std::fs::read_to_string(file).expect("read source");
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            if let Some(f) = forbidden.iter().find(|f| line.contains(*f)) {
                found.push(format!("{}:{}: {f}", file.display(), n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "make HTTP clients with concierge::http_client::{{client, builder}}:\n{}",
        found.join("\n")
    );
}
