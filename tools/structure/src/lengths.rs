//! Rules 1 and 2: how long files and functions are.

use syn::spanned::Spanned;
use syn::visit::{self, Visit};
use syn::{
    Block, ImplItemFn, Item, ItemFn, ItemImpl, ItemTrait, Signature, TraitItemFn, Visibility,
};

use crate::syntax::{is_test_code, item_attrs, type_name};

/// Rule 1: physical lines a non-test file may have.
pub const MAX_FILE_LINES: usize = 600;
/// Rule 2: lines a non-test function may span, signature to closing brace.
pub const MAX_FN_LINES: usize = 80;

/// A function with a body, and the lines it spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FnSpan {
    /// `Owner::name` for methods and nested functions, `name` otherwise.
    pub name: String,
    pub first_line: usize,
    pub last_line: usize,
}

impl FnSpan {
    pub fn lines(&self) -> usize {
        self.last_line - self.first_line + 1
    }
}

/// Every non-test function with a body in `file`, in source order.
pub fn functions(file: &syn::File) -> Vec<FnSpan> {
    let mut finder = FnFinder::default();
    finder.visit_file(file);
    finder.found
}

#[derive(Default)]
struct FnFinder {
    owners: Vec<String>,
    found: Vec<FnSpan>,
}

impl FnFinder {
    fn record(&mut self, vis: &Visibility, sig: &Signature, body: &Block) {
        let mut first = sig.span().start().line;
        if !matches!(vis, Visibility::Inherited) {
            first = first.min(vis.span().start().line);
        }
        let last = body.brace_token.span.close().end().line;
        let mut name = self.owners.clone();
        name.push(sig.ident.to_string());
        self.found.push(FnSpan {
            name: name.join("::"),
            first_line: first,
            last_line: last,
        });
    }

    fn within<F: FnOnce(&mut Self)>(&mut self, owner: String, f: F) {
        self.owners.push(owner);
        f(self);
        self.owners.pop();
    }
}

impl<'ast> Visit<'ast> for FnFinder {
    fn visit_item(&mut self, item: &'ast Item) {
        if !is_test_code(item_attrs(item)) {
            visit::visit_item(self, item);
        }
    }

    fn visit_item_fn(&mut self, item: &'ast ItemFn) {
        self.record(&item.vis, &item.sig, &item.block);
        self.within(item.sig.ident.to_string(), |me| {
            visit::visit_item_fn(me, item)
        });
    }

    fn visit_item_impl(&mut self, item: &'ast ItemImpl) {
        self.within(type_name(&item.self_ty), |me| {
            visit::visit_item_impl(me, item)
        });
    }

    fn visit_item_trait(&mut self, item: &'ast ItemTrait) {
        self.within(item.ident.to_string(), |me| {
            visit::visit_item_trait(me, item)
        });
    }

    fn visit_impl_item_fn(&mut self, item: &'ast ImplItemFn) {
        if is_test_code(&item.attrs) {
            return;
        }
        self.record(&item.vis, &item.sig, &item.block);
        self.within(item.sig.ident.to_string(), |me| {
            visit::visit_impl_item_fn(me, item)
        });
    }

    fn visit_trait_item_fn(&mut self, item: &'ast TraitItemFn) {
        if is_test_code(&item.attrs) {
            return;
        }
        if let Some(body) = &item.default {
            self.record(&Visibility::Inherited, &item.sig, body);
        }
        self.within(item.sig.ident.to_string(), |me| {
            visit::visit_trait_item_fn(me, item)
        });
    }
}
