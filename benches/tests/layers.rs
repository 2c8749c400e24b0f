//! The harness's modules form layers, listed in the crate's module doc
//! (benches/src/main.rs): a module uses only modules of its own layer or
//! below, and no modules use one another in a cycle.
//!
//! The module graph is read from the source: every path through `crate::`,
//! `super::`, `self::` or a child module, in `use` declarations (groups
//! expanded) and in code, outside comments, string literals and
//! `#[cfg(test)]` items. Each file is a module (`scenarios/mod.rs` is
//! `scenarios`, `scenarios/idle.rs` is `scenarios::idle`); a path leads to
//! the deepest module it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `module -> modules it uses`; `""` is the crate root (main.rs).
type Graph = BTreeMap<String, BTreeSet<String>>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every module of the crate and its file.
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let mut module = prefix.to_vec();
        if path.is_dir() {
            module.push(name);
            modules(&path, &module, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        if !(name == "mod" || (name == "main" && prefix.is_empty())) {
            module.push(name);
        }
        out.insert(module.join("::"), path);
    }
}

/// The code with comments, string and character literals blanked out and
/// `#[cfg(test)]` items removed.
fn code_of(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(c.len());
    let mut i = 0;
    while i < c.len() {
        let at = |k: usize| c.get(k).copied().unwrap_or('\0');
        let ident_before = i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_');
        if c[i] == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            loop {
                if at(i) == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if at(i) == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else if i >= c.len() {
                    break;
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if !ident_before && (c[i] == 'r' || (c[i] == 'b' && at(i + 1) == 'r')) && {
            // A raw string: r"..", r#".."#, br"..".
            let mut k = i + if c[i] == 'b' { 2 } else { 1 };
            while at(k) == '#' {
                k += 1;
            }
            at(k) == '"'
        } {
            let mut k = i + if c[i] == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while at(k) == '#' {
                hashes += 1;
                k += 1;
            }
            k += 1;
            while k < c.len() && !(c[k] == '"' && (1..=hashes).all(|h| at(k + h) == '#')) {
                k += 1;
            }
            i = k + 1 + hashes;
            out.push_str("\"\"");
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c[i] == '\'' && at(i + 2) == '\'' {
            // A character literal ('x'); a lifetime has no closing quote.
            i += 3;
            out.push_str("' '");
        } else if c[i] == '\'' && at(i + 1) == '\\' {
            // An escaped one: '\n', '\'', '\u{..}'.
            let mut k = i + 3;
            while k < c.len() && c[k] != '\'' {
                k += 1;
            }
            i = k + 1;
            out.push_str("' '");
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    // Drop each `#[cfg(test)]` item: up to its `;` or its closing brace.
    while let Some(at) = out.find("#[cfg(test)]") {
        let rest = &out[at..];
        let end = match (rest.find(';'), rest.find('{')) {
            (Some(semi), Some(brace)) if semi < brace => at + semi + 1,
            (_, Some(brace)) => {
                let mut depth = 0;
                let mut end = out.len();
                for (k, ch) in out[at + brace..].char_indices() {
                    match ch {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = at + brace + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (Some(semi), None) => at + semi + 1,
            (None, None) => out.len(),
        };
        out.replace_range(at..end, " ");
    }
    out
}

/// Identifiers (raw ones included), `::`, and every other character on its own.
fn tokens(code: &str) -> Vec<String> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if c[i].is_alphanumeric() || c[i] == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '#') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            out.push(word.trim_start_matches("r#").to_string());
        } else if c[i] == ':' && c.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else {
            if !c[i].is_whitespace() {
                out.push(c[i].to_string());
            }
            i += 1;
        }
    }
    out
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// Expands the use tree at `toks[*i..]` into full paths, below `prefix`.
fn use_tree(toks: &[String], i: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    while *i < toks.len() {
        let t = toks[*i].as_str();
        if t == "{" {
            *i += 1;
            while *i < toks.len() && toks[*i] != "}" {
                use_tree(toks, i, &path, out);
                if toks.get(*i).is_some_and(|t| t == ",") {
                    *i += 1;
                }
            }
            *i += 1;
            return;
        } else if t == "*" {
            *i += 1;
            break;
        } else if is_ident(t) && t != "as" {
            path.push(t.to_string());
            *i += 1;
            if toks.get(*i).is_some_and(|t| t == "::") {
                *i += 1;
                continue;
            }
            break;
        } else {
            break;
        }
    }
    if toks.get(*i).is_some_and(|t| t == "as") {
        *i += 2;
    }
    out.push(path);
}

/// The module a path leads to, seen from module `from`; `None` for paths
/// outside the crate (std, other crates, local names).
fn resolve(from: &[String], path: &[String], mods: &BTreeMap<String, PathBuf>) -> Option<String> {
    let mut segs = path.iter().map(String::as_str).peekable();
    let mut base: Vec<String> = match *segs.peek()? {
        "crate" => {
            segs.next();
            Vec::new()
        }
        "self" | "super" => {
            let mut b = from.to_vec();
            while let Some(&s) = segs.peek() {
                match s {
                    "self" => {}
                    "super" => {
                        b.pop()?;
                    }
                    _ => break,
                }
                segs.next();
            }
            b
        }
        child => {
            // A relative path: only a child module of `from` is ours.
            let mut b = from.to_vec();
            b.push(child.to_string());
            if !mods.contains_key(&b.join("::")) {
                return None;
            }
            from.to_vec()
        }
    };
    let mut best = None;
    if mods.contains_key(&base.join("::")) {
        best = Some(base.join("::"));
    }
    for s in segs {
        if s == "self" {
            continue;
        }
        base.push(s.to_string());
        if mods.contains_key(&base.join("::")) {
            best = Some(base.join("::"));
        }
    }
    best
}

/// The module graph of the sources in `src`.
fn graph(src: &Path) -> Graph {
    let mut mods = BTreeMap::new();
    modules(src, &[], &mut mods);
    let mut g = Graph::new();
    for (module, file) in &mods {
        let from: Vec<String> = if module.is_empty() {
            Vec::new()
        } else {
            module.split("::").map(String::from).collect()
        };
        let toks = tokens(&code_of(
            &std::fs::read_to_string(file).expect("read source"),
        ));
        let mut paths = Vec::new();
        let mut i = 0;
        while i < toks.len() {
            if toks[i] == "use" {
                i += 1;
                use_tree(&toks, &mut i, &[], &mut paths);
                continue;
            }
            let starts = is_ident(&toks[i])
                && toks.get(i + 1).is_some_and(|t| t == "::")
                && (i == 0 || toks[i - 1] != "::");
            if starts {
                let mut path = vec![toks[i].clone()];
                i += 1;
                while toks.get(i).is_some_and(|t| t == "::")
                    && toks.get(i + 1).is_some_and(|t| is_ident(t))
                {
                    path.push(toks[i + 1].clone());
                    i += 2;
                }
                paths.push(path);
                continue;
            }
            i += 1;
        }
        let targets = g.entry(module.clone()).or_default();
        for p in paths {
            if let Some(to) = resolve(&from, &p, &mods) {
                if &to != module {
                    targets.insert(to);
                }
            }
        }
    }
    g
}

/// The graph's strongly connected components of more than one module:
/// each a set of modules that all reach one another, so a cycle.
fn tangles(g: &Graph) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, m: &'a str) {
            let n = self.index.len();
            self.index.insert(m, n);
            self.low.insert(m, n);
            self.stack.push(m);
            for next in self.g.get(m).into_iter().flatten() {
                let next = next.as_str();
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[m].min(self.low[next]);
                    self.low.insert(m, low);
                } else if self.stack.contains(&next) {
                    let low = self.low[m].min(self.index[next]);
                    self.low.insert(m, low);
                }
            }
            if self.low[m] == self.index[m] {
                let at = self.stack.iter().rposition(|&s| s == m).unwrap();
                let mut scc: Vec<String> = self.stack.drain(at..).map(String::from).collect();
                if scc.len() > 1 {
                    scc.sort();
                    self.out.push(scc);
                }
            }
        }
    }
    let mut t = Tarjan {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        out: Vec::new(),
    };
    for m in g.keys() {
        if !t.index.contains_key(m.as_str()) {
            t.visit(m);
        }
    }
    t.out
}

fn show(g: &Graph) -> String {
    g.iter()
        .map(|(m, to)| {
            let m = if m.is_empty() { "main" } else { m };
            let to: Vec<&str> = to.iter().map(String::as_str).collect();
            format!("  {m} -> {}\n", to.join(", "))
        })
        .collect()
}

/// The layers the crate's module doc lists: lines `//! N. \`a\` \`b\`: ...`.
fn declared_layers(main: &str) -> BTreeMap<String, u32> {
    let mut layers = BTreeMap::new();
    for line in main.lines() {
        let Some(doc) = line.strip_prefix("//! ") else {
            continue;
        };
        let Some((n, rest)) = doc.split_once(". `") else {
            continue;
        };
        let Ok(n) = n.parse::<u32>() else { continue };
        let names = rest.split(':').next().unwrap_or("");
        for name in format!("`{names}").split_whitespace() {
            let name = name.trim_matches('`');
            assert!(
                layers.insert(name.to_string(), n).is_none(),
                "`{name}` is in two layers"
            );
        }
    }
    layers
}

#[test]
fn the_harness_modules_have_no_cycle() {
    let g = graph(&src_dir());
    // Shown with --no-capture, and with a failure.
    println!("the module graph of benches/src:\n{}", show(&g));
    let tangles: Vec<String> = tangles(&g).iter().map(|t| t.join(", ")).collect();
    assert!(
        tangles.is_empty(),
        "modules of benches/src that use one another in a cycle:\n  {}",
        tangles.join("\n  ")
    );
}

#[test]
fn each_module_uses_only_its_own_layer_or_below() {
    let g = graph(&src_dir());
    let main = std::fs::read_to_string(src_dir().join("main.rs")).expect("main.rs");
    let layers = declared_layers(&main);
    let top = |m: &str| m.split("::").next().unwrap_or("").to_string();
    let tops: BTreeSet<String> = g.keys().filter(|m| !m.is_empty()).map(|m| top(m)).collect();
    let listed: BTreeSet<String> = layers.keys().cloned().collect();
    assert_eq!(
        tops, listed,
        "the module doc of main.rs lists every top-level module in one layer"
    );
    let mut wrong = Vec::new();
    for (from, targets) in g.iter().filter(|(m, _)| !m.is_empty()) {
        for to in targets {
            let (a, b) = (top(from), top(to));
            if layers[&a] < layers[&b] {
                wrong.push(format!(
                    "{from} (layer {}) uses {to} (layer {})",
                    layers[&a], layers[&b]
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "upward uses:\n{}", wrong.join("\n"));
}

#[test]
fn the_reader_sees_paths_through_crate_super_and_child_modules() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("a")).unwrap();
    std::fs::write(
        src.join("main.rs"),
        "mod a;\nmod b;\nmod c;\nfn main() { a::x::go(); }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("a/mod.rs"),
        "pub mod x;\npub mod y;\npub use y::Y;\n// crate::c::gone\n\
         pub fn run() { let _ = \"crate::c::no\"; }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("a/x.rs"),
        "use super::{y::{self, Y as Z}, Y};\npub fn go() { crate::b::f(); }\n",
    )
    .unwrap();
    std::fs::write(src.join("a/y.rs"), "pub struct Y;\n").unwrap();
    std::fs::write(
        src.join("b.rs"),
        "pub fn f() { let _ = '\"'; let _ = r#\"crate::c\"#; }\n\
         #[cfg(test)]\nmod tests { use crate::a; }\n",
    )
    .unwrap();
    std::fs::write(src.join("c.rs"), "use crate::b::*;\n").unwrap();
    let g = graph(src);
    let edges = |m: &str| -> Vec<&str> { g[m].iter().map(String::as_str).collect() };
    assert_eq!(edges(""), ["a::x"]);
    assert_eq!(edges("a"), ["a::y"]);
    assert_eq!(edges("a::x"), ["a", "a::y", "b"]);
    assert!(edges("b").is_empty(), "{g:?}");
    assert_eq!(edges("c"), ["b"]);
    assert!(tangles(&g).is_empty(), "{g:?}");
    // b -> c -> b.
    std::fs::write(src.join("b.rs"), "pub fn f() { crate::c::g(); }\n").unwrap();
    std::fs::write(src.join("c.rs"), "use crate::b::f;\npub fn g() {}\n").unwrap();
    let g = graph(src);
    assert_eq!(tangles(&g), [["b", "c"]]);
}
