//! The userspace crate's layout holds: each concern in its folder, each
//! layer using only the ones below it (no import cycles between the
//! top-level modules), the wire contract free of the program and of the
//! command line, the store free of the wire types, and no source file past
//! about 600 lines.
//!
//! The module graph is read from the sources: every `crate::NAME` path (in
//! `use` lines and in code) in a file under `spacefilter/src/NAME/` (or
//! `NAME.rs`) is an edge. A path spelt `super::` inside a module stays in
//! it, so it needs no edge.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// The top-level modules of the crate and the ones each may use. This is
/// the architecture: `cli → api (client) ═ socket ═ server → daemon →
/// store, bpf → kernel`, with `net` (prefixes, lists) and `telemetry` (what
/// samples become) below the daemon. `fleet` (the outside sources of rules:
/// CrowdSec, etcd) sits beside `server`: another way in to the daemon's
/// handle, started by the command line.
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "cli",
        &[
            "api",
            "config",
            "daemon",
            "server",
            "fleet",
            "net",
            "telemetry",
            "bpf",
        ],
    ),
    ("config", &["daemon", "server", "net", "bpf"]),
    ("server", &["api", "daemon"]),
    ("fleet", &["api", "daemon", "net"]),
    ("daemon", &["api", "bpf", "net", "store", "telemetry"]),
    ("telemetry", &["api", "bpf", "net"]),
    ("store", &["net"]),
    ("bpf", &["net"]),
    ("api", &["net"]),
    ("net", &[]),
];

/// The longest a source file may grow before it is split.
const MAX_LINES: usize = 650;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../spacefilter/src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable source folder") {
        let path = entry.expect("readable entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`None` for `lib.rs`, `main.rs`).
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src_dir()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_owned())
}

/// The code of a file without its comments (line comments and doc
/// comments, which may name modules freely).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a file's code names: `crate::NAME`, and the
/// first name of each item in a `use crate::{...}` group.
fn uses(code: &str) -> BTreeSet<String> {
    let modules: BTreeSet<&str> = ALLOWED.iter().map(|(m, _)| *m).collect();
    let ident = |text: &str| -> String {
        text.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            names.push(ident(rest));
            continue;
        };
        // The group's items, split at its top-level commas.
        let mut depth = 0;
        let mut item = String::new();
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    names.push(ident(&item));
                    item.clear();
                    continue;
                }
                _ => {}
            }
            item.push(c);
        }
        names.push(ident(&item));
    }
    names
        .into_iter()
        .filter(|name| modules.contains(name.as_str()))
        .collect()
}

struct Crate {
    /// Each file's module, its code and its line count.
    files: Vec<(PathBuf, String, String, usize)>,
}

fn read_crate() -> Crate {
    let mut paths = Vec::new();
    rust_files(&src_dir(), &mut paths);
    paths.sort();
    let files = paths
        .into_iter()
        .filter_map(|path| {
            let module = module_of(&path)?;
            let text = fs::read_to_string(&path).expect("readable source");
            let lines = text.lines().count();
            Some((path, module, code(&text), lines))
        })
        .collect();
    Crate { files }
}

fn graph(krate: &Crate) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, module, code, _) in &krate.files {
        let edges = graph.entry(module.clone()).or_default();
        for used in uses(code) {
            if used != *module {
                edges.insert(used);
            }
        }
    }
    graph
}

#[test]
fn the_reader_sees_uses() {
    // Positive controls for the reader the other tests rely on.
    let found = uses("use crate::{\n    api::{A, b::C},\n    net::List,\n    daemon,\n};");
    assert_eq!(
        found,
        ["api", "daemon", "net"].map(str::to_owned).into(),
        "the use-group reader"
    );
    assert_eq!(
        uses("let x = crate::store::now_ms();"),
        ["store".to_owned()].into()
    );
    assert!(uses(&code("// crate::store is named in a comment only")).is_empty());
    // The crate has every module the architecture names, each with code.
    let graph = graph(&read_crate());
    for (module, _) in ALLOWED {
        assert!(
            graph.contains_key(*module),
            "no module {module} in the crate"
        );
    }
    assert!(
        graph["server"].contains("daemon"),
        "the server's use of the daemon was not seen: the reader is broken"
    );
}

#[test]
fn each_layer_uses_only_the_ones_below() {
    let graph = graph(&read_crate());
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for (module, used) in &graph {
        let Some(may) = allowed.get(module.as_str()) else {
            wrong.push(format!(
                "{module} is not in the architecture (tests/tests/layout.rs)"
            ));
            continue;
        };
        for target in used {
            if !may.contains(&target.as_str()) {
                wrong.push(format!("{module} uses {target}"));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken: {wrong:#?}");
}

/// Depth-first search from `node` for a path back into itself.
fn visit<'a>(
    node: &'a str,
    graph: &'a BTreeMap<String, BTreeSet<String>>,
    path: &mut Vec<&'a str>,
    done: &mut BTreeSet<&'a str>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|n| *n == node) {
        let mut cycle: Vec<String> = path[at..].iter().map(|s| (*s).to_owned()).collect();
        cycle.push(node.to_owned());
        return Some(cycle);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node);
    for next in graph.get(node).into_iter().flatten() {
        if let Some(cycle) = visit(next, graph, path, done) {
            return Some(cycle);
        }
    }
    path.pop();
    done.insert(node);
    None
}

#[test]
fn no_import_cycles() {
    let graph = graph(&read_crate());
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        let cycle = visit(node, &graph, &mut Vec::new(), &mut done);
        assert!(
            cycle.is_none(),
            "import cycle: {}",
            cycle.unwrap().join(" → ")
        );
    }
}

#[test]
fn the_wire_contract_knows_neither_the_program_nor_the_command_line() {
    let krate = read_crate();
    for (path, module, code, _) in &krate.files {
        if module == "api" {
            for foreign in ["aya", "clap", "tokio"] {
                assert!(
                    !code.contains(&format!("{foreign}::")),
                    "{} uses {foreign}",
                    path.display()
                );
            }
        }
        if module == "store" {
            assert!(
                !code.contains("crate::api") && !code.contains("View"),
                "{} uses the wire types",
                path.display()
            );
        }
    }
}

#[test]
fn no_source_file_is_too_long() {
    let krate = read_crate();
    let long: Vec<String> = krate
        .files
        .iter()
        .filter(|(_, _, _, lines)| *lines > MAX_LINES)
        .map(|(path, _, _, lines)| format!("{}: {lines} lines", path.display()))
        .collect();
    assert!(long.is_empty(), "split these: {long:#?}");
    assert!(
        krate.files.iter().any(|(_, _, _, lines)| *lines > 100),
        "no file over 100 lines: the line count is broken"
    );
}
