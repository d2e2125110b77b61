//! The API crate's modules depend on each other without cycles, and `operations` never
//! depends on `routes` (what the API does must not know how it is asked). Read from the
//! sources: `crate::…` and `super::…` paths, and a module's uses of its own children.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name (`routes::extract`; the crate root is `crate`) → its source without tests
/// and comments.
fn modules() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = BTreeMap::new();
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path.strip_prefix(&root).unwrap().with_extension("");
            let mut parts: Vec<String> = relative
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            match parts.last().map(String::as_str) {
                // The binary is a crate of its own.
                Some("main") if parts.len() == 1 => continue,
                Some("mod" | "lib") => {
                    parts.pop();
                }
                _ => {}
            }
            let name = if parts.is_empty() {
                "crate".to_owned()
            } else {
                parts.join("::")
            };
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let code: Vec<&str> = code
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .collect();
            found.insert(name, code.join("\n"));
        }
    }
    found
}

/// The identifiers of a path (`a::b::c`) at the start of `text`.
fn path_at(text: &str) -> Vec<String> {
    let mut path = Vec::new();
    let mut cursor = text.trim_start();
    loop {
        let name: String = cursor
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            break;
        }
        cursor = &cursor[name.len()..];
        path.push(name);
        match cursor.strip_prefix("::") {
            Some(next) => cursor = next,
            None => break,
        }
    }
    path
}

/// The paths that follow `prefix::` in `code`; `prefix::{a::b, c}` gives both.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let needle = format!("{prefix}::");
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(&needle) {
        let before = rest[..at].chars().last();
        rest = &rest[at + needle.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        match rest.strip_prefix('{') {
            Some(group) => {
                let inner = group.split('}').next().unwrap_or_default();
                paths.extend(inner.split(',').map(path_at));
            }
            None => paths.push(path_at(rest)),
        }
    }
    paths
}

/// The longest module named by `base` followed by a prefix of `path`.
fn resolve(known: &BTreeMap<String, String>, base: &[String], path: &[String]) -> Option<String> {
    (0..=path.len()).rev().find_map(|n| {
        let parts: Vec<&str> = base.iter().chain(&path[..n]).map(String::as_str).collect();
        let name = if parts.is_empty() {
            "crate".to_owned()
        } else {
            parts.join("::")
        };
        known.contains_key(&name).then_some(name)
    })
}

fn dependencies(known: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for (name, code) in known {
        let own: Vec<String> = if name == "crate" {
            Vec::new()
        } else {
            name.split("::").map(str::to_owned).collect()
        };
        let parent = &own[..own.len().saturating_sub(1)];
        let mut targets = BTreeSet::new();
        for path in paths_after(code, "crate") {
            targets.extend(resolve(known, &[], &path));
        }
        for path in paths_after(code, "super") {
            targets.extend(resolve(known, parent, &path));
        }
        let children = known.keys().filter_map(|other| {
            let rest = if name == "crate" {
                Some(other.as_str())
            } else {
                other.strip_prefix(&format!("{name}::"))
            }?;
            (!rest.contains("::") && rest != "crate").then_some(rest)
        });
        for child in children {
            if !paths_after(code, child).is_empty() {
                targets.extend(resolve(known, &own, &[child.to_owned()]));
            }
        }
        targets.remove(name);
        graph.insert(name.clone(), targets);
    }
    graph
}

/// A cycle through `start`, if any, as the modules along it.
fn cycle_through(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![vec![start.to_owned()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap();
        for next in graph.get(last).into_iter().flatten() {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(next.clone());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn the_dependency_reader_sees_the_known_edges() {
    let graph = dependencies(&modules());

    assert!(
        graph["routes"].contains("routes::verifications"),
        "{graph:#?}"
    );
    assert!(
        graph["routes::portatext"].contains("routes::extract"),
        "{graph:#?}"
    );
    assert!(graph["routes::extract"].contains("auth"), "{graph:#?}");
    assert!(
        graph["operations::verifications"].contains("state"),
        "{graph:#?}"
    );
}

#[test]
fn no_module_of_the_api_crate_depends_on_itself_through_others() {
    let graph = dependencies(&modules());

    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|name| cycle_through(&graph, name))
        .map(|cycle| cycle.join(" -> "))
        .collect();

    assert!(cycles.is_empty(), "{}", cycles.join("\n"));
}

#[test]
fn operations_never_depend_on_routes() {
    let graph = dependencies(&modules());

    let wrong: Vec<String> = graph
        .iter()
        .filter(|(name, _)| name.starts_with("operations"))
        .flat_map(|(name, targets)| {
            targets
                .iter()
                .filter(|target| target.starts_with("routes"))
                .map(move |target| format!("{name} -> {target}"))
        })
        .collect();

    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
