//! The agent's modules depend on each other one way: no module uses one that uses it back
//! (cli → api → {replica, reconcile, swarm} → store → protocol). Read from the sources, so a
//! new `use` that closes a cycle fails here, with the cycle named.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Top-level module -> the top-level modules its files name with `crate::`.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&src).expect("under src");
            let first = relative.components().next().expect("a component");
            let module = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = fs::read_to_string(&path).expect("read source");
            let used = deps.entry(module.clone()).or_default();
            for name in used_modules(&text) {
                if name != module {
                    used.insert(name);
                }
            }
        }
    }
    deps
}

/// The first path segment after every `crate::` in code (comments left out), including
/// `crate::{a, b::c}` groups.
fn used_modules(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let text = code.as_str();
    let mut out = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.push(name);
            }
        } else {
            out.push(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    out.retain(|n| !n.is_empty() && n.chars().next().is_some_and(char::is_lowercase));
    out
}

/// A path from `from` to `to` in `deps`, if any.
fn path(deps: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> Option<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![vec![from.to_string()]];
    while let Some(route) = stack.pop() {
        let last = route.last().expect("non-empty").clone();
        if last == to {
            return Some(route);
        }
        if !seen.insert(last.clone()) {
            continue;
        }
        for next in deps.get(&last).into_iter().flatten() {
            let mut longer = route.clone();
            longer.push(next.clone());
            stack.push(longer);
        }
    }
    None
}

#[test]
fn no_agent_module_depends_on_itself_through_another() {
    let deps = dependencies();
    assert!(deps.len() > 10, "modules not found: {deps:?}");
    let mut cycles = Vec::new();
    for (module, used) in &deps {
        for other in used {
            if let Some(back) = path(&deps, other, module) {
                cycles.push(format!("{module} -> {}", back.join(" -> ")));
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_reader_sees_crate_paths_and_groups() {
    let text = "use crate::store::Store;\nuse crate::{api, swarm::X};\n\
                /// see crate::node\nlet x = crate::replica::now_ms(); // crate::cli";
    assert_eq!(used_modules(text), ["store", "api", "swarm", "replica"]);
}
