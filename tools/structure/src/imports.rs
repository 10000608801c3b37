//! Rule 3's edges: which file of a crate root's tree names which other file,
//! through `use` items and `crate::`/`self::`/`super::` paths in code.

use std::collections::BTreeMap;

use proc_macro2::{Spacing, TokenStream, TokenTree};
use syn::visit::{self, Visit};
use syn::{ImplItemFn, Item, ItemMod, ItemUse, Macro, TraitItemFn, UseTree, VisRestricted};

use crate::modtree::{ModFile, ModPath, Unit};
use crate::syntax::{is_test_code, item_attrs};

/// File `from` names file `to` (indexes into the unit's files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    /// Where `from` first names `to`, and the path written there.
    pub line: usize,
    pub written: String,
    /// How many places in `from` name `to`.
    pub count: usize,
}

/// A path starting with `crate`, `self` or `super`, as found in a file.
#[derive(Debug)]
struct Reference {
    line: usize,
    /// The module the path is written in (inline modules included).
    module: ModPath,
    segments: Vec<String>,
}

/// The edges between the files of `unit` that `included` accepts, without
/// self edges and without edges from a module to its own descendants.
pub fn edges(unit: &Unit, included: &dyn Fn(&ModFile) -> bool) -> Vec<Edge> {
    let mut found: BTreeMap<(usize, usize), Edge> = BTreeMap::new();
    for (from, file) in unit.files.iter().enumerate() {
        if !included(file) {
            continue;
        }
        for reference in references(file) {
            let Some(to) = target_file(unit, &reference) else {
                continue;
            };
            let target = &unit.files[to];
            if to == from || !included(target) || target.module.starts_with(&file.module) {
                continue;
            }
            found
                .entry((from, to))
                .and_modify(|edge| edge.count += 1)
                .or_insert(Edge {
                    from,
                    to,
                    line: reference.line,
                    written: reference.segments.join("::"),
                    count: 1,
                });
        }
    }
    found.into_values().collect()
}

fn references(file: &ModFile) -> Vec<Reference> {
    let mut finder = RefFinder {
        module: file.module.clone(),
        found: Vec::new(),
    };
    finder.visit_file(&file.source.ast);
    finder.found.sort_by_key(|r| r.line);
    finder.found
}

/// The file holding the longest module prefix of what `reference` names.
fn target_file(unit: &Unit, reference: &Reference) -> Option<usize> {
    let mut path = absolute(&reference.module, &reference.segments)?;
    loop {
        if let Some(&file) = unit.modules.get(&path) {
            return Some(file);
        }
        path.pop()?;
    }
}

/// `segments` (starting with `crate`, `self` or `super`) from the crate root.
fn absolute(module: &[String], segments: &[String]) -> Option<ModPath> {
    let (mut path, rest) = match segments.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &segments[1..]),
        Some("self") => (module.to_vec(), &segments[1..]),
        Some("super") => (module.to_vec(), segments),
        _ => return None,
    };
    let supers = rest.iter().take_while(|s| *s == "super").count();
    for _ in 0..supers {
        path.pop()?;
    }
    path.extend(rest[supers..].iter().cloned());
    Some(path)
}

fn is_anchor(ident: &str) -> bool {
    matches!(ident, "crate" | "self" | "super")
}

struct RefFinder {
    module: ModPath,
    found: Vec<Reference>,
}

impl RefFinder {
    fn push(&mut self, line: usize, segments: Vec<String>) {
        if segments.first().is_some_and(|s| is_anchor(s)) {
            self.found.push(Reference {
                line,
                module: self.module.clone(),
                segments,
            });
        }
    }

    /// Every leaf of a `use` tree, as a full path.
    fn use_tree(&mut self, tree: &UseTree, prefix: &mut Vec<String>) {
        match tree {
            UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(&p.tree, prefix);
                prefix.pop();
            }
            UseTree::Name(n) => self.use_leaf(prefix, &n.ident),
            UseTree::Rename(r) => self.use_leaf(prefix, &r.ident),
            UseTree::Glob(g) => self.push(g.star_token.spans[0].start().line, prefix.clone()),
            UseTree::Group(g) => g.items.iter().for_each(|item| self.use_tree(item, prefix)),
        }
    }

    fn use_leaf(&mut self, prefix: &[String], ident: &syn::Ident) {
        let mut path = prefix.to_vec();
        if ident != "self" || path.is_empty() {
            path.push(ident.to_string());
        }
        self.push(ident.span().start().line, path);
    }

    /// `crate::a::b` sequences inside a macro's tokens.
    fn macro_tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Group(group) => self.macro_tokens(group.stream()),
                TokenTree::Ident(ident) if is_anchor(&ident.to_string()) => {
                    let mut segments = vec![ident.to_string()];
                    while let Some(next) = path_step(&tokens, i) {
                        segments.push(next);
                        i += 3;
                    }
                    if segments.len() > 1 {
                        self.push(ident.span().start().line, segments);
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// The identifier after `::` following `tokens[i]`, if there is one.
fn path_step(tokens: &[TokenTree], i: usize) -> Option<String> {
    match (tokens.get(i + 1), tokens.get(i + 2), tokens.get(i + 3)) {
        (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)), Some(TokenTree::Ident(next)))
            if a.as_char() == ':' && a.spacing() == Spacing::Joint && b.as_char() == ':' =>
        {
            Some(next.to_string())
        }
        _ => None,
    }
}

impl<'ast> Visit<'ast> for RefFinder {
    fn visit_item(&mut self, item: &'ast Item) {
        if !is_test_code(item_attrs(item)) {
            visit::visit_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, item: &'ast ItemMod) {
        self.module.push(item.ident.to_string());
        visit::visit_item_mod(self, item);
        self.module.pop();
    }

    fn visit_impl_item_fn(&mut self, item: &'ast ImplItemFn) {
        if !is_test_code(&item.attrs) {
            visit::visit_impl_item_fn(self, item);
        }
    }

    fn visit_trait_item_fn(&mut self, item: &'ast TraitItemFn) {
        if !is_test_code(&item.attrs) {
            visit::visit_trait_item_fn(self, item);
        }
    }

    fn visit_item_use(&mut self, item: &'ast ItemUse) {
        if item.leading_colon.is_none() {
            self.use_tree(&item.tree, &mut Vec::new());
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        // A lone `self` is the receiver, not a module.
        if path.leading_colon.is_none() && path.segments.len() > 1 {
            let segments = path.segments.iter().map(|s| s.ident.to_string()).collect();
            self.push(path.segments[0].ident.span().start().line, segments);
        }
        visit::visit_path(self, path);
    }

    /// `pub(crate)`, `pub(super)`: visibility, not a use of the module.
    fn visit_vis_restricted(&mut self, _: &'ast VisRestricted) {}

    fn visit_macro(&mut self, mac: &'ast Macro) {
        visit::visit_macro(self, mac);
        self.macro_tokens(mac.tokens.clone());
    }
}
