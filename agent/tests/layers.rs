//! The agent's and the guest crate's modules form layers: no import loop between modules (at any
//! level of nesting), and the gate, the bottom of the agent, refers to nothing of the agent
//! outside itself. Checked on the sources, from every `crate::` and `super::` path outside the
//! test modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path inside its crate, e.g. `["gate", "audit"]`; the crate root is `[]`.
type ModPath = Vec<String>;

/// Every module of the crate whose sources are in `src`, with the text of its file (test
/// modules cut off).
fn modules(src: &Path) -> BTreeMap<ModPath, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel: PathBuf = path.strip_prefix(src).unwrap().with_extension("");
            let mut m: ModPath = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                m.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = match text.find("#[cfg(test)]\nmod tests") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            // main.rs and lib.rs are both the root; lib.rs declares the modules.
            out.entry(m).or_insert(String::new()).push_str(&code);
        }
    }
    out
}

/// The module paths a file refers to through `crate::` and `super::`, resolved to the
/// longest prefix that is a module.
fn references(me: &ModPath, code: &str, known: &BTreeMap<ModPath, String>) -> BTreeSet<ModPath> {
    let mut found = BTreeSet::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let start = if boundary && rest.starts_with("crate::") {
            Some((Vec::new(), "crate::".len()))
        } else if boundary && rest.starts_with("super::") {
            // A file's `super` is its parent module.
            let mut base = me.clone();
            let mut len = 0;
            while code[i + len..].starts_with("super::") {
                base.pop();
                len += "super::".len();
            }
            Some((base, len))
        } else {
            None
        };
        let Some((base, len)) = start else {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        let tail = &code[i + len..];
        let mut heads: Vec<Vec<String>> = Vec::new();
        if let Some(group) = tail.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                heads.push(path_segments(item.trim()));
            }
        } else {
            heads.push(path_segments(tail));
        }
        for segs in heads {
            let mut full = base.clone();
            full.extend(segs);
            while !full.is_empty() && !known.contains_key(&full) {
                full.pop();
            }
            found.insert(full);
        }
        i += len;
    }
    found
}

fn path_segments(text: &str) -> Vec<String> {
    let mut segs = Vec::new();
    let mut rest = text;
    loop {
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        segs.push(rest[..end].to_string());
        match rest[end..].strip_prefix("::") {
            Some(r) if !r.starts_with('{') => rest = r,
            _ => break,
        }
    }
    segs
}

/// The edges between sibling modules that a reference from `from` to `to` implies: at the
/// level where their paths part. A reference to an ancestor (a child using its parent) is an
/// edge child -> parent, which closes a loop with the parent's `mod child`.
fn sibling_edge(from: &ModPath, to: &ModPath) -> Option<(ModPath, ModPath)> {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    if common == from.len() {
        return None; // a module using its own descendants
    }
    if common == to.len() {
        return Some((from.clone(), to.clone()));
    }
    Some((from[..=common].to_vec(), to[..=common].to_vec()))
}

fn find_cycle(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Option<Vec<ModPath>> {
    fn visit(
        n: &ModPath,
        edges: &BTreeMap<ModPath, BTreeSet<ModPath>>,
        state: &mut BTreeMap<ModPath, u8>,
        stack: &mut Vec<ModPath>,
    ) -> Option<Vec<ModPath>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let at = stack.iter().position(|m| m == n).unwrap();
                let mut cycle = stack[at..].to_vec();
                cycle.push(n.clone());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for next in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, edges, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if let Some(c) = visit(n, edges, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

fn show(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

fn check_crate(src: &Path) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let mods = modules(src);
    assert!(mods.len() > 3, "{}: too few modules found", src.display());
    let mut refs = BTreeMap::new();
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    // A parent declares (and usually re-exports) its children: it depends on them.
    for m in mods.keys().filter(|m| !m.is_empty()) {
        let parent = m[..m.len() - 1].to_vec();
        edges.entry(parent).or_default().insert(m.clone());
    }
    for (m, code) in &mods {
        let r = references(m, code, &mods);
        for to in &r {
            if let Some((a, b)) = sibling_edge(m, to) {
                edges.entry(a).or_default().insert(b);
            }
        }
        refs.insert(m.clone(), r);
    }
    if let Some(cycle) = find_cycle(&edges) {
        let text: Vec<String> = cycle.iter().map(show).collect();
        panic!(
            "{}: import loop between modules: {}",
            src.display(),
            text.join(" -> ")
        );
    }
    refs
}

fn src(krate: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src")
}

#[test]
fn agent_modules_have_no_import_loops_and_the_gate_is_the_bottom() {
    let refs = check_crate(&src("agent"));
    let gate: ModPath = vec!["gate".into()];
    let mut gate_files = 0;
    for (m, to) in &refs {
        if !m.starts_with(&gate) {
            continue;
        }
        gate_files += 1;
        for t in to {
            assert!(
                t.starts_with(&gate),
                "the gate ({}) refers to {}, above it",
                show(m),
                show(t)
            );
        }
    }
    assert!(gate_files >= 2, "the gate's modules were not found");
    // The service wiring sits above the gate, and the gate below everything that uses it.
    assert!(refs[&vec!["service".to_string()]].contains(&gate));
}

#[test]
fn guest_modules_have_no_import_loops() {
    let refs = check_crate(&src("guest"));
    assert!(refs
        .keys()
        .any(|m| m.first().is_some_and(|s| s == "network")));
}

#[test]
fn the_checker_sees_a_loop_and_a_child_using_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    std::fs::create_dir(s.join("a")).unwrap();
    std::fs::write(s.join("lib.rs"), "mod a; mod b;\n").unwrap();
    std::fs::write(s.join("a/mod.rs"), "mod x;\nuse crate::b::Thing;\n").unwrap();
    std::fs::write(s.join("a/x.rs"), "fn f() {}\n").unwrap();
    std::fs::write(
        s.join("b.rs"),
        "pub struct Thing;\nfn g() { crate::a::x::f() }\n",
    )
    .unwrap();
    let e = std::panic::catch_unwind(|| check_crate(s)).unwrap_err();
    let msg = e.downcast_ref::<String>().unwrap();
    assert!(
        msg.contains("a -> b -> a") || msg.contains("b -> a -> b"),
        "{msg}"
    );

    std::fs::write(s.join("b.rs"), "pub struct Thing;\n").unwrap();
    check_crate(s);
    std::fs::write(s.join("a/x.rs"), "use super::{Parent, other};\n").unwrap();
    let e = std::panic::catch_unwind(|| check_crate(s)).unwrap_err();
    let msg = e.downcast_ref::<String>().unwrap();
    assert!(msg.contains("a::x -> a"), "{msg}");
}
