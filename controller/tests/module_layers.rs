//! The controller's modules form layers: following `crate::<module>` paths
//! from any module never leads back to it (the layers are described in
//! `src/lib.rs`).
//!
//! The graph is read from the sources: every `crate::` path outside comments,
//! string and char literals and `#[cfg(test)]` items, in `src/*.rs` and the
//! files below `src/<module>/`. Test files (`*_tests.rs`) are left out, like
//! inline test modules: a test may reach across layers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

/// module → the modules it refers to, each with where it first does (`file:line`).
type Graph = BTreeMap<String, BTreeMap<String, String>>;

#[test]
fn the_module_graph_is_acyclic() {
    let graph = read_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(graph.len() > 10, "too few modules found: {graph:?}");
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "the controller's modules import each other in a cycle:\n{}",
        cycles.join("\n")
    );
    // The layers, bottom up (`cargo test --test module_layers -- --nocapture`).
    for (depth, modules) in layers(&graph).iter().enumerate() {
        println!("{depth}: {}", modules.join(" "));
    }
}

/// Each file's module: `src/x.rs` and `src/x/**.rs` are `x`. The crate roots
/// and test files are none.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let name = file.file_name()?.to_str()?;
    if name.ends_with("_tests.rs") || !name.ends_with(".rs") {
        return None;
    }
    let first = rel.components().next()?.as_os_str().to_str()?;
    let module = first.strip_suffix(".rs").unwrap_or(first);
    (module != "lib" && module != "main").then(|| module.to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn read_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut graph = Graph::new();
    let mut refs = Vec::new();
    for file in &files {
        let Some(module) = module_of(src, file) else {
            continue;
        };
        graph.entry(module.clone()).or_default();
        let text = std::fs::read_to_string(file).unwrap();
        let name = file.strip_prefix(src).unwrap().display().to_string();
        for (target, line) in crate_refs(&without_tests(&code_only(&text))) {
            refs.push((module.clone(), target, format!("{name}:{line}")));
        }
    }
    // `crate::` paths that name no module (a re-export at the root) are no edges.
    for (from, to, at) in refs {
        if from != to && graph.contains_key(&to) {
            graph.get_mut(&from).unwrap().entry(to).or_insert(at);
        }
    }
    graph
}

/// `src` with comments blanked and string and char literals emptied; line
/// breaks stay, so lines keep their numbers.
fn code_only(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let mut out = String::with_capacity(src.len());
    // Skips c[from..to], keeping its line breaks.
    let blank = |out: &mut String, from: usize, to: usize| {
        out.extend(c[from..to.min(c.len())].iter().filter(|&&ch| ch == '\n'));
    };
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '/' && at(i + 1) == '/' {
            let end = (i..c.len()).find(|&j| c[j] == '\n').unwrap_or(c.len());
            i = end;
        } else if ch == '/' && at(i + 1) == '*' {
            let (mut j, mut depth) = (i + 2, 1);
            while j < c.len() && depth > 0 {
                if c[j] == '/' && at(j + 1) == '*' {
                    depth += 1;
                    j += 2;
                } else if c[j] == '*' && at(j + 1) == '/' {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            out.push(' ');
            i = j;
        } else if ch == 'r'
            && (at(i + 1) == '"' || at(i + 1) == '#')
            && (i == 0
                || !is_ident(c[i - 1])
                || (c[i - 1] == 'b' && (i < 2 || !is_ident(c[i - 2]))))
        {
            // A raw string: r"…", r#"…"#, br"…".
            let hashes = (i + 1..c.len()).take_while(|&j| c[j] == '#').count();
            if at(i + 1 + hashes) != '"' {
                out.push(ch);
                i += 1;
                continue;
            }
            let body = i + 2 + hashes;
            let close = |j: usize| c[j] == '"' && (1..=hashes).all(|k| at(j + k) == '#');
            let end = (body..c.len()).find(|&j| close(j)).unwrap_or(c.len());
            blank(&mut out, i, end);
            out.push_str("\"\"");
            i = end + 1 + hashes;
        } else if ch == '"' {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            blank(&mut out, i, j);
            out.push_str("\"\"");
            i = j + 1;
        } else if ch == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
            // A char literal ('x', '\'', '\u{1F600}'); otherwise a lifetime.
            let body = if at(i + 1) == '\\' { i + 3 } else { i + 2 };
            let end = (body..c.len()).find(|&j| c[j] == '\'').unwrap_or(c.len());
            out.push_str("' '");
            i = end + 1;
        } else {
            out.push(ch);
            i += 1;
        }
    }
    out
}

/// `code` without the items marked `#[cfg(test)]`.
fn without_tests(code: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(start) = rest.find(MARK) {
        out.push_str(&rest[..start]);
        let item = &rest[start + MARK.len()..];
        let end = item_end(item);
        out.extend(item[..end].chars().filter(|&ch| ch == '\n'));
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// Where the item at the start of `code` ends: after more attributes, at its
/// `;` (a `use`, a `mod x;`) or after its `{ … }` body.
fn item_end(code: &str) -> usize {
    let mut depth = 0i32; // () and [] before the body
    for (i, ch) in code.char_indices() {
        match ch {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ';' if depth == 0 => return i + 1,
            // `use a::{b, c};` has no body.
            '{' if depth == 0 && !code[..i].split(|c: char| !is_ident(c)).any(|w| w == "use") => {
                let mut braces = 0;
                for (j, ch) in code[i..].char_indices() {
                    match ch {
                        '{' => braces += 1,
                        '}' => {
                            braces -= 1;
                            if braces == 0 {
                                return i + j + 1;
                            }
                        }
                        _ => {}
                    }
                }
                return code.len();
            }
            _ => {}
        }
    }
    code.len()
}

fn is_ident(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// The modules `crate::` paths in `code` name, with the line of each.
/// `crate::{a::X, b}` names `a` and `b`.
fn crate_refs(code: &str) -> Vec<(String, usize)> {
    const PREFIX: &str = "crate::";
    let first_ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|&c| is_ident(c))
            .collect()
    };
    let mut refs = Vec::new();
    for (start, _) in code.match_indices(PREFIX) {
        if code[..start].chars().next_back().is_some_and(is_ident) {
            continue; // `dpu_crate::`, not this crate
        }
        let line = code[..start].matches('\n').count() + 1;
        let after = &code[start + PREFIX.len()..];
        if let Some(group) = after.trim_start().strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        refs.push((first_ident(&item), line));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(ch);
            }
            refs.push((first_ident(&item), line));
        } else {
            refs.push((first_ident(after), line));
        }
    }
    refs.retain(|(m, _)| !m.is_empty() && m != "self");
    refs
}

/// One cycle per strongly connected component of more than one module, as
/// `a -> b (a.rs:3) -> a (b.rs:9)`.
fn cycles(graph: &Graph) -> Vec<String> {
    let mut found = Vec::new();
    for component in components(graph) {
        if component.len() < 2 {
            continue;
        }
        // The shortest way back to the first module, within the component.
        let start = component.iter().next().unwrap();
        let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([start.as_str()]);
        let mut last = None;
        'search: while let Some(m) = queue.pop_front() {
            for next in graph[m].keys() {
                if next == start {
                    last = Some(m);
                    break 'search;
                }
                if component.contains(next) && !came_from.contains_key(next.as_str()) {
                    came_from.insert(next, m);
                    queue.push_back(next);
                }
            }
        }
        let mut path = vec![start.as_str()];
        let mut m = last.expect("a component of two or more has a cycle");
        while m != start {
            path.push(m);
            m = came_from[m];
        }
        path[1..].reverse();
        path.push(start);
        let mut text = start.clone();
        for pair in path.windows(2) {
            text.push_str(&format!(" -> {} ({})", pair[1], graph[pair[0]][pair[1]]));
        }
        let all: Vec<&str> = component.iter().map(String::as_str).collect();
        let mut edges = String::new();
        for from in &component {
            for (to, at) in graph[from].iter().filter(|(to, _)| component.contains(*to)) {
                edges.push_str(&format!("\n      {from} -> {to} ({at})"));
            }
        }
        found.push(format!(
            "  {text}\n    modules in this cycle: {}\n    their imports of each other:{edges}",
            all.join(" ")
        ));
    }
    found
}

/// The strongly connected components (Tarjan).
fn components(graph: &Graph) -> Vec<BTreeSet<String>> {
    struct Walk<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<BTreeSet<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, m: &'g str) {
            let i = self.index.len();
            self.index.insert(m, i);
            self.low.insert(m, i);
            self.stack.push(m);
            self.on_stack.insert(m);
            for next in self.graph[m].keys() {
                let next = next.as_str();
                if !self.index.contains_key(next) {
                    self.visit(next);
                    self.low.insert(m, self.low[m].min(self.low[next]));
                } else if self.on_stack.contains(next) {
                    self.low.insert(m, self.low[m].min(self.index[next]));
                }
            }
            if self.low[m] == self.index[m] {
                let mut component = BTreeSet::new();
                while let Some(top) = self.stack.pop() {
                    self.on_stack.remove(top);
                    component.insert(top.to_string());
                    if top == m {
                        break;
                    }
                }
                self.out.push(component);
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for m in graph.keys() {
        if !walk.index.contains_key(m.as_str()) {
            walk.visit(m);
        }
    }
    walk.out
}

/// Modules by depth: 0 imports none of the others, n imports some at n - 1.
/// Only for an acyclic graph.
fn layers(graph: &Graph) -> Vec<Vec<String>> {
    fn depth<'g>(graph: &'g Graph, m: &'g str, memo: &mut BTreeMap<&'g str, usize>) -> usize {
        if let Some(&d) = memo.get(m) {
            return d;
        }
        let d = graph[m]
            .keys()
            .map(|n| depth(graph, n, memo) + 1)
            .max()
            .unwrap_or(0);
        memo.insert(m, d);
        d
    }
    let mut memo = BTreeMap::new();
    let mut layers: Vec<Vec<String>> = Vec::new();
    for m in graph.keys() {
        let d = depth(graph, m, &mut memo);
        if layers.len() <= d {
            layers.resize(d + 1, Vec::new());
        }
        layers[d].push(m.clone());
    }
    layers
}

#[test]
fn the_reader_sees_only_code_outside_tests() {
    let src = r##"
//! Uses `crate::doc` only in prose.
use crate::{a::X, b::{Y, Z}, self};
use crate::c;
/* crate::block /* nested crate::deeper */ */
fn f<'a>(s: &'a str) -> char {
    let _ = "crate::in_a_string \" crate::escaped";
    let _ = r#"crate::raw "quoted""#;
    let _ = dpu_crate::not_ours;
    crate::d::call('{', '\'');
    '"'
}
#[cfg(test)]
pub(crate) use crate::{test_only_use, other};
#[cfg(test)]
mod tests {
    use crate::test_only;
    fn g() { let _ = "}"; crate::still_test(); }
}
fn h() { crate::e::call(); }
"##;
    let refs = crate_refs(&without_tests(&code_only(src)));
    let names: Vec<&str> = refs.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "d", "e"]);
    let lines: Vec<usize> = refs.iter().map(|&(_, l)| l).collect();
    assert_eq!(lines, [3, 3, 4, 10, 20]);

    let mut graph = Graph::new();
    for (from, to) in [("x", "y"), ("y", "z"), ("z", "x"), ("z", "w")] {
        graph.entry(to.to_string()).or_default();
        graph
            .entry(from.to_string())
            .or_default()
            .insert(to.to_string(), format!("{from}.rs:1"));
    }
    assert_eq!(
        cycles(&graph),
        [
            "  x -> y (x.rs:1) -> z (y.rs:1) -> x (z.rs:1)\n    modules in this cycle: x y z\n    \
          their imports of each other:\n      x -> y (x.rs:1)\n      y -> z (y.rs:1)\n      \
          z -> x (z.rs:1)"
        ]
    );
    graph.get_mut("z").unwrap().remove("x");
    assert!(cycles(&graph).is_empty());
    assert_eq!(layers(&graph), [vec!["w"], vec!["z"], vec!["y"], vec!["x"]]);
}
