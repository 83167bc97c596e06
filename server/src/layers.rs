//! The architecture's import rules, checked on the source: every top-level
//! module (and every service) uses only those in the layers before it, so
//! no two import each other, and the shard core imports no service.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, in order: a unit may use units of its own layer (where the
/// graph stays acyclic) and of earlier ones.
const LAYERS: &[&[&str]] = &[
    &[
        "clock",
        "metrics",
        "retry",
        "workers",
        "logging",
        "config",
        "limits",
        "check_host",
        "reload",
        "wake",
    ],
    &["log"],
    &["core"],
    &["http"],
    &["service"],
    &["services"],
    &["node"],
];

/// The unit a source file belongs to: its top-level module, or
/// `services::<name>` inside `services/`.
fn unit_of(relative: &Path) -> Option<String> {
    let parts: Vec<String> =
        relative.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned()).collect();
    match parts.as_slice() {
        [only] if only == "lib" || only == "main" || only == "layers" => None,
        [services, name, ..] if services == "services" => Some(format!("services::{name}")),
        [first, ..] => Some(first.clone()),
        [] => None,
    }
}

/// The units a file's code names (`crate::x`, `crate::services::x`, and
/// `super::x` from a file directly under `services/`).
fn uses(text: &str, relative: &Path) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .take_while(|line| !line.starts_with("#[cfg(test)]"))
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let word = |rest: &str| -> String {
        rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let first = word(&code[at + 7..]);
        if first == "services" {
            let rest = &code[at + 7 + first.len()..];
            match rest.strip_prefix("::") {
                Some(rest) if !word(rest).is_empty() => {
                    found.insert(format!("services::{}", word(rest)));
                }
                _ => {
                    found.insert(first);
                }
            }
        } else if !first.is_empty() {
            found.insert(first);
        }
    }
    let direct_service = relative.parent() == Some(Path::new("services"));
    if direct_service {
        for (at, _) in code.match_indices("super::") {
            let name = word(&code[at + 7..]);
            if !name.is_empty() {
                found.insert(format!("services::{name}"));
            }
        }
    }
    found
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every unit's uses of other units.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    files(&root, &mut paths);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in paths {
        let relative = path.strip_prefix(&root).unwrap();
        let Some(unit) = unit_of(relative) else { continue };
        let text = std::fs::read_to_string(&path).unwrap();
        let used = uses(&text, relative).into_iter().filter(|u| *u != unit);
        graph.entry(unit.clone()).or_default().extend(used);
    }
    graph
}

fn layer(unit: &str) -> usize {
    let top = unit.split("::").next().unwrap();
    LAYERS
        .iter()
        .position(|layer| layer.contains(&top))
        .unwrap_or_else(|| panic!("{unit} is in no layer: add it to LAYERS"))
}

/// A cycle of `graph`, if it has one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        unit: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|u| u == unit) {
            let mut cycle = path[at..].to_vec();
            cycle.push(unit.to_owned());
            return Some(cycle);
        }
        if !done.insert(unit.to_owned()) {
            return None;
        }
        path.push(unit.to_owned());
        for next in graph.get(unit).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|unit| visit(unit, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_unit_uses_a_later_layer_and_none_form_a_cycle() {
    let graph = graph();
    for service in ["services::ops", "services::passport", "services::ledger", "services::wallet"] {
        assert!(graph.contains_key(service), "{service} is found");
    }
    for (unit, used) in &graph {
        for other in used {
            assert!(
                layer(other) <= layer(unit),
                "{unit} uses {other}, of a later layer ({} > {})",
                layer(other),
                layer(unit)
            );
        }
    }
    assert_eq!(cycle(&graph), None);
    // A service uses only services that start before it.
    let order = crate::services::registry().names();
    let position = |unit: &str| {
        unit.strip_prefix("services::").and_then(|name| order.iter().position(|n| *n == name))
    };
    for (unit, used) in &graph {
        let Some(mine) = position(unit) else { continue };
        for other in used.iter().filter_map(|u| position(u)) {
            assert!(other < mine, "{unit} uses a service that starts after it");
        }
    }
    let core = &graph["core"];
    assert!(
        core.iter().all(|u| !u.starts_with("service")),
        "the shard core imports no service: {core:?}"
    );
}

#[test]
fn the_check_finds_a_cycle_and_a_later_layer() {
    let mut graph = graph();
    graph.get_mut("log").unwrap().insert("core".to_owned());
    assert!(cycle(&graph).is_some(), "log → core → log");
    assert!(layer("core") > layer("log"));
    let used = uses(
        "use crate::services::wallet::Wallet;\nuse super::ledger;",
        Path::new("services/x.rs"),
    );
    assert_eq!(
        used,
        BTreeSet::from(["services::wallet".to_owned(), "services::ledger".to_owned()])
    );
}
