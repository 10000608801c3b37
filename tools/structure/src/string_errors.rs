//! Rule 4: no `Result<_, String>` (or `Result<_, &str>`) in library code.

use syn::spanned::Spanned;
use syn::visit::{self, Visit};
use syn::{GenericArgument, ImplItemFn, Item, PathArguments, TraitItemFn, Type, TypePath};

use crate::syntax::{is_test_code, item_attrs};

/// A `Result` type whose error is a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringError {
    pub line: usize,
    /// The type as written, on one line.
    pub text: String,
}

/// Every `Result<_, String>` outside test code in `file`; `text` is its source.
pub fn string_errors(file: &syn::File, text: &str) -> Vec<StringError> {
    let mut finder = Finder {
        text,
        found: Vec::new(),
    };
    finder.visit_file(file);
    finder.found
}

struct Finder<'a> {
    text: &'a str,
    found: Vec<StringError>,
}

/// `String` (any path ending in it) or `&str`.
fn is_string(ty: &Type) -> bool {
    match ty {
        Type::Path(path) => {
            path.qself.is_none()
                && path
                    .path
                    .segments
                    .last()
                    .is_some_and(|s| s.ident == "String")
        }
        Type::Reference(reference) => {
            matches!(&*reference.elem, Type::Path(p) if p.path.is_ident("str"))
        }
        Type::Paren(inner) => is_string(&inner.elem),
        _ => false,
    }
}

/// `Result<T, E>` with a string `E`: `Result`, `std::result::Result`, `core::result::Result`.
fn is_string_result(ty: &TypePath) -> bool {
    let Some(last) = ty.path.segments.last() else {
        return false;
    };
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return false;
    };
    let types: Vec<&Type> = args
        .args
        .iter()
        .filter_map(|arg| match arg {
            GenericArgument::Type(ty) => Some(ty),
            _ => None,
        })
        .collect();
    last.ident == "Result" && types.len() == 2 && is_string(types[1])
}

impl<'ast> Visit<'ast> for Finder<'_> {
    fn visit_item(&mut self, item: &'ast Item) {
        if !is_test_code(item_attrs(item)) {
            visit::visit_item(self, item);
        }
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

    fn visit_type_path(&mut self, ty: &'ast TypePath) {
        if is_string_result(ty) {
            let span = ty.span();
            let written = self
                .text
                .get(span.byte_range())
                .unwrap_or("Result<_, String>");
            self.found.push(StringError {
                line: span.start().line,
                text: written.split_whitespace().collect::<Vec<_>>().join(" "),
            });
        }
        visit::visit_type_path(self, ty);
    }
}
