//! The workspace's module boundaries: no module of `layout-core` or `layout-testkit`
//! uses a module that uses it back.
//!
//! Run it alone with `cargo nextest run -p layout-tests --test it architecture`.
//!
//! The rule, as this test reads the sources (with `syn`, every `cfg` included):
//! - A module refers to another through `use` and through paths in its code
//!   (`crate::a::b`, `super::c`, `self::d`, or a child module's name); a name re-exported
//!   by a module (`pub use x::Y`) is followed to where it comes from.
//! - A parent and its descendants may refer to each other (a parent re-exports its
//!   children; a child uses its parent's shared types).
//! - Between siblings (modules under one parent, each with everything below it) the
//!   references form no cycle.
//!
//! `#[cfg(test)]` modules are left out: unit tests use their parent by design.
//!
//! The same reading checks the public surface of `layout-core`: every public item (not
//! `#[doc(hidden)]`) is reachable by exactly one public path, either where it is defined
//! (a `pub` item in a chain of `pub mod`s) or where it is re-exported (`pub use`), never
//! both; and the crate root re-exports at most 40 items.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// A module: its absolute path (`["cluster", "member"]`), where it is written, and the
/// paths it refers to.
#[derive(Debug, Default)]
struct Module {
    file: PathBuf,
    /// Every path it refers to, absolute or relative as written, with the module it was
    /// written in (for `super`/`self`).
    refs: Vec<Vec<String>>,
    /// Names brought into scope by `use` (alias or last segment) -> the path used.
    uses: BTreeMap<String, Vec<String>>,
    /// Declared `pub mod` (the crate root counts as public), and not `#[doc(hidden)]`.
    public: bool,
    /// The items it defines (types, traits, functions, constants, statics): name -> whether
    /// they are `pub` and not `#[doc(hidden)]`.
    items: BTreeMap<String, bool>,
    /// Its `pub use` names (not `#[doc(hidden)]`), each with the path it re-exports.
    reexports: Vec<(String, Vec<String>)>,
}

struct Crate {
    modules: BTreeMap<Vec<String>, Module>,
}

fn is_doc_hidden(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("doc")
            && a.parse_args::<syn::Path>()
                .is_ok_and(|p| p.is_ident("hidden"))
    })
}

/// `pub`, not `pub(crate)` or `pub(super)`.
fn is_pub(vis: &syn::Visibility) -> bool {
    matches!(vis, syn::Visibility::Public(_))
}

/// The name and attributes of an item that has a public path of its own, with its
/// visibility.
fn named_item(item: &syn::Item) -> Option<(String, &syn::Visibility, &[syn::Attribute])> {
    match item {
        syn::Item::Struct(i) => Some((i.ident.to_string(), &i.vis, &i.attrs)),
        syn::Item::Enum(i) => Some((i.ident.to_string(), &i.vis, &i.attrs)),
        syn::Item::Union(i) => Some((i.ident.to_string(), &i.vis, &i.attrs)),
        syn::Item::Trait(i) => Some((i.ident.to_string(), &i.vis, &i.attrs)),
        syn::Item::Type(i) => Some((i.ident.to_string(), &i.vis, &i.attrs)),
        syn::Item::Fn(i) => Some((i.sig.ident.to_string(), &i.vis, &i.attrs)),
        syn::Item::Const(i) => Some((i.ident.to_string(), &i.vis, &i.attrs)),
        syn::Item::Static(i) => Some((i.ident.to_string(), &i.vis, &i.attrs)),
        _ => None,
    }
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

/// Flattens a `use` tree into (name in scope, path) pairs; globs are left out.
fn flatten(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<(String, Vec<String>)>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            let mut path = prefix.clone();
            if name != "self" {
                path.push(name.clone());
            }
            let scope = if name == "self" {
                prefix.last().cloned().unwrap_or_default()
            } else {
                name
            };
            out.push((scope, path));
        }
        syn::UseTree::Rename(r) => {
            let mut path = prefix.clone();
            if r.ident != "self" {
                path.push(r.ident.to_string());
            }
            out.push((r.rename.to_string(), path));
        }
        syn::UseTree::Glob(_) => {}
        syn::UseTree::Group(g) => {
            for t in &g.items {
                flatten(t, prefix, out);
            }
        }
    }
}

/// Collects the paths written in code (types, expressions, patterns).
struct Paths<'a>(&'a mut Vec<Vec<String>>);

impl<'ast> Visit<'ast> for Paths<'_> {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.segments.len() > 1 {
            self.0
                .push(path.segments.iter().map(|s| s.ident.to_string()).collect());
        }
        syn::visit::visit_path(self, path);
    }

    // Nested modules are modules of their own; `use` items are read separately.
    fn visit_item_mod(&mut self, _: &'ast syn::ItemMod) {}
    fn visit_item_use(&mut self, _: &'ast syn::ItemUse) {}
}

impl Crate {
    fn read(src: &Path) -> Self {
        let mut krate = Self {
            modules: BTreeMap::new(),
        };
        let lib = src.join("lib.rs");
        let file = parse(&lib);
        krate.module(Vec::new(), true, &lib, src, &file.items);
        krate
    }

    /// Reads one module (its items in `items`), whose child files live in `dir`.
    fn module(
        &mut self,
        path: Vec<String>,
        public: bool,
        file: &Path,
        dir: &Path,
        items: &[syn::Item],
    ) {
        let mut module = Module {
            file: file.to_owned(),
            public,
            ..Module::default()
        };
        for item in items {
            if let Some((name, vis, attrs)) = named_item(item) {
                module
                    .items
                    .insert(name, is_pub(vis) && !is_doc_hidden(attrs));
            }
            match item {
                syn::Item::Use(u) => {
                    let mut pairs = Vec::new();
                    flatten(&u.tree, &mut Vec::new(), &mut pairs);
                    for (name, used) in pairs {
                        if is_pub(&u.vis) && !is_doc_hidden(&u.attrs) {
                            module.reexports.push((name.clone(), used.clone()));
                        }
                        module.refs.push(used.clone());
                        module.uses.insert(name, used);
                    }
                }
                syn::Item::Mod(m) if !is_cfg_test(&m.attrs) => {
                    let mut child = path.clone();
                    child.push(m.ident.to_string());
                    let child_dir = dir.join(m.ident.to_string());
                    let public = is_pub(&m.vis) && !is_doc_hidden(&m.attrs);
                    if let Some((_, inline)) = &m.content {
                        self.module(child, public, file, &child_dir, inline);
                    } else {
                        let flat = dir.join(format!("{}.rs", m.ident));
                        let (child_file, child_dir) = if flat.exists() {
                            (flat, child_dir)
                        } else {
                            (child_dir.join("mod.rs"), child_dir)
                        };
                        let parsed = parse(&child_file);
                        self.module(child, public, &child_file, &child_dir, &parsed.items);
                    }
                }
                syn::Item::Mod(_) => {}
                other => Paths(&mut module.refs).visit_item(other),
            }
        }
        self.modules.insert(path, module);
    }

    /// The module `written` (a path as written in module `from`) lands in, following
    /// re-exports; `None` when it leaves the crate.
    fn resolve(&self, from: &[String], written: &[String], depth: usize) -> Option<Vec<String>> {
        if depth > 16 || written.is_empty() {
            return None;
        }
        let mut at: Vec<String>;
        let mut rest = written;
        match written[0].as_str() {
            "crate" => {
                at = Vec::new();
                rest = &written[1..];
            }
            "self" | "super" => {
                at = from.to_vec();
                while let Some(first) = rest.first() {
                    match first.as_str() {
                        "self" => {}
                        "super" => {
                            at.pop()?;
                        }
                        _ => break,
                    }
                    rest = &rest[1..];
                }
            }
            first => {
                let mut child = from.to_vec();
                child.push(first.to_owned());
                if self.modules.contains_key(&child) {
                    at = from.to_vec();
                } else if let Some(used) = self.modules.get(from).and_then(|m| m.uses.get(first)) {
                    if used.first().map(String::as_str) == Some(first) && used.len() == 1 {
                        return None;
                    }
                    let mut full = used.clone();
                    full.extend_from_slice(&written[1..]);
                    return self.resolve(from, &full, depth + 1);
                } else {
                    return None;
                }
            }
        }
        // Descend while the next segment is a module; then follow a re-export.
        while let Some(next) = rest.first() {
            let mut child = at.clone();
            child.push(next.clone());
            if self.modules.contains_key(&child) {
                at = child;
                rest = &rest[1..];
                continue;
            }
            if let Some(used) = self.modules.get(&at).and_then(|m| m.uses.get(next)) {
                let mut full = used.clone();
                full.extend_from_slice(&rest[1..]);
                return self.resolve(&at, &full, depth + 1).or(Some(at));
            }
            break;
        }
        Some(at)
    }

    /// The item `written` (a path as written in module `from`) names, as (the module
    /// that defines it, its name), following `use`s; `None` when it is not an item of
    /// this crate (a module, an external name).
    fn resolve_item(
        &self,
        from: &[String],
        written: &[String],
        depth: usize,
    ) -> Option<(Vec<String>, String)> {
        let (name, prefix) = written.split_last()?;
        if depth > 16 {
            return None;
        }
        let module = if prefix.is_empty() {
            from.to_vec()
        } else {
            self.resolve(from, prefix, depth + 1)?
        };
        let found = self.modules.get(&module)?;
        if found.items.contains_key(name) {
            return Some((module, name.clone()));
        }
        let used = found.uses.get(name)?;
        self.resolve_item(&module, used, depth + 1)
    }

    /// Whether the module and every module above it are public.
    fn reachable(&self, path: &[String]) -> bool {
        (0..=path.len()).all(|n| self.modules.get(&path[..n]).is_some_and(|m| m.public))
    }

    /// Every public path of every public item: (defining module, name) -> its paths.
    fn public_paths(&self) -> BTreeMap<(Vec<String>, String), Vec<String>> {
        let mut paths: BTreeMap<(Vec<String>, String), Vec<String>> = BTreeMap::new();
        let spell = |module: &[String], name: &str| {
            let mut all = vec!["crate".to_owned()];
            all.extend(module.iter().cloned());
            all.push(name.to_owned());
            all.join("::")
        };
        for (path, module) in &self.modules {
            if !self.reachable(path) {
                continue;
            }
            for (name, &public) in &module.items {
                if public {
                    paths
                        .entry((path.clone(), name.clone()))
                        .or_default()
                        .push(spell(path, name));
                }
            }
            for (name, used) in &module.reexports {
                let Some(target) = self.resolve_item(path, used, 0) else {
                    continue;
                };
                let public = self.modules[&target.0].items[&target.1];
                if public {
                    paths.entry(target).or_default().push(spell(path, name));
                }
            }
        }
        paths
    }

    /// The public items with more than one public path, each with its paths.
    fn items_with_two_paths(&self) -> Vec<String> {
        self.public_paths()
            .into_values()
            .filter(|paths| paths.len() > 1)
            .map(|paths| paths.join(" and "))
            .collect()
    }

    /// The cycles between siblings, each as the edges that make it.
    fn sibling_cycles(&self) -> Vec<String> {
        // parent -> (child from, child to) -> an example reference.
        let mut edges: BTreeMap<Vec<String>, BTreeMap<(String, String), String>> = BTreeMap::new();
        for (path, module) in &self.modules {
            for written in &module.refs {
                let Some(target) = self.resolve(path, written, 0) else {
                    continue;
                };
                let common = path.iter().zip(&target).take_while(|(a, b)| a == b).count();
                if common == path.len() || common == target.len() {
                    continue; // one is an ancestor of the other (or the same module)
                }
                edges
                    .entry(path[..common].to_vec())
                    .or_default()
                    .entry((path[common].clone(), target[common].clone()))
                    .or_insert_with(|| {
                        format!("{} refers to {}", module.file.display(), written.join("::"))
                    });
            }
        }
        let mut cycles = Vec::new();
        for (parent, graph) in &edges {
            let nodes: BTreeSet<&String> = graph.keys().flat_map(|(a, b)| [a, b]).collect();
            for start in &nodes {
                // A path from start back to start, by depth-first search.
                let mut stack = vec![(*start, vec![*start])];
                let mut seen = BTreeSet::new();
                while let Some((at, trail)) = stack.pop() {
                    for ((a, b), _) in graph.range(((*at).clone(), String::new())..) {
                        if a != at {
                            break;
                        }
                        if b == *start && trail.iter().all(|n| *start <= *n) {
                            let mut cycle = trail.clone();
                            cycle.push(b);
                            let witness: Vec<String> = cycle
                                .windows(2)
                                .map(|w| graph[&(w[0].clone(), w[1].clone())].clone())
                                .collect();
                            cycles.push(format!(
                                "in crate::{}: {}\n    {}",
                                parent.join("::"),
                                cycle
                                    .iter()
                                    .map(|s| s.as_str())
                                    .collect::<Vec<_>>()
                                    .join(" -> "),
                                witness.join("\n    ")
                            ));
                        } else if seen.insert(b.clone()) {
                            let mut next = trail.clone();
                            next.push(b);
                            stack.push((b, next));
                        }
                    }
                }
            }
        }
        cycles.sort();
        cycles.dedup();
        cycles
    }
}

fn parse(file: &Path) -> syn::File {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    syn::parse_file(&text).unwrap_or_else(|e| panic!("cannot parse {}: {e}", file.display()))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package lives in the workspace")
        .to_owned()
}

fn assert_acyclic(crate_dir: &str) {
    let krate = Crate::read(&workspace().join(crate_dir).join("src"));
    assert!(
        krate.modules.len() > 10,
        "read only {} modules of {crate_dir}",
        krate.modules.len()
    );
    let cycles = krate.sibling_cycles();
    assert!(
        cycles.is_empty(),
        "module cycles in {crate_dir}:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn no_module_of_layout_core_uses_a_module_that_uses_it_back() {
    assert_acyclic("layout-core");
}

#[test]
fn every_public_item_of_layout_core_has_one_public_path() {
    let krate = Crate::read(&workspace().join("layout-core").join("src"));
    let paths = krate.public_paths();
    assert!(paths.len() > 150, "found only {} public items", paths.len());
    let twice = krate.items_with_two_paths();
    assert!(
        twice.is_empty(),
        "public items of layout-core reachable by two paths:\n{}",
        twice.join("\n")
    );
    // The main path at the root, everything else through its module.
    let root = paths
        .values()
        .flatten()
        .filter(|path| path.matches("::").count() == 1)
        .count();
    assert!(
        (30..=40).contains(&root),
        "the crate root has {root} public items"
    );
}

#[test]
fn the_check_sees_an_item_with_two_public_paths() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::write(
        src.join("lib.rs"),
        "pub mod a; mod b; pub use a::A; pub use b::B; pub use b::inner::C; \
         #[doc(hidden)] pub use a::Hidden;",
    )
    .unwrap();
    std::fs::write(
        src.join("a.rs"),
        "pub struct A; pub struct Hidden; pub(crate) struct Internal;",
    )
    .unwrap();
    std::fs::create_dir(src.join("b")).unwrap();
    std::fs::write(
        src.join("b/mod.rs"),
        "pub(crate) mod inner; pub struct B; pub use inner::C;",
    )
    .unwrap();
    std::fs::write(src.join("b/inner.rs"), "pub struct C;").unwrap();
    let krate = Crate::read(src);
    let paths = krate.public_paths();
    // `A` is public where it is defined and at the root; `B` and `C` only at the root
    // (their modules are private); `Hidden` once (the hidden re-export does not count).
    assert_eq!(
        krate.items_with_two_paths(),
        ["crate::A and crate::a::A"],
        "{paths:?}"
    );
    assert_eq!(paths.len(), 4, "{paths:?}");
    assert!(!paths.contains_key(&(vec!["a".to_owned()], "Internal".to_owned())));
}

#[test]
fn no_module_of_the_test_kit_uses_a_module_that_uses_it_back() {
    assert_acyclic("layout-testkit");
}

#[test]
fn the_check_sees_a_cycle_between_two_sibling_modules() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::write(
        src.join("lib.rs"),
        "mod a; mod b; mod c; mod d; mod e; mod f; mod g; mod h; mod i; mod j; mod k;",
    )
    .unwrap();
    for m in ["c", "d", "e", "f", "g", "h", "i", "j", "k"] {
        std::fs::write(src.join(format!("{m}.rs")), "").unwrap();
    }
    std::fs::write(src.join("a.rs"), "use super::b::B; pub struct A;").unwrap();
    std::fs::write(
        src.join("b.rs"),
        "pub struct B; fn f() -> crate::a::A { crate::a::A }",
    )
    .unwrap();
    let krate = Crate::read(src);
    let cycles = krate.sibling_cycles();
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert!(cycles[0].contains("a -> b -> a"), "{}", cycles[0]);

    // A child using its parent, and the parent re-exporting it, is no cycle.
    std::fs::write(src.join("b.rs"), "pub struct B;").unwrap();
    std::fs::write(src.join("lib.rs"), "mod a; mod b; mod c; mod d; mod e; mod f; mod g; mod h; mod i; mod j; mod k; pub use a::A; pub struct Root;").unwrap();
    std::fs::write(
        src.join("a.rs"),
        "use super::b::B; pub struct A(crate::Root);",
    )
    .unwrap();
    assert!(Crate::read(src).sibling_cycles().is_empty());

    // A sibling reached through its parent's re-export still counts.
    std::fs::write(src.join("lib.rs"), "mod a; mod b; mod c; mod d; mod e; mod f; mod g; mod h; mod i; mod j; mod k; pub use a::A;").unwrap();
    std::fs::write(src.join("b.rs"), "use crate::A; pub struct B;").unwrap();
    let cycles = Crate::read(src).sibling_cycles();
    assert_eq!(cycles.len(), 1, "{cycles:?}");
}
