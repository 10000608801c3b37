//! Parsed source files and the attribute questions every rule asks.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{Context, Result, anyhow};
use syn::punctuated::Punctuated;
use syn::{Attribute, Item, Meta, Token};

/// One source file: its text, its physical line count and its syntax tree.
pub struct Source {
    pub text: String,
    pub lines: usize,
    pub ast: syn::File,
}

impl Source {
    pub fn parse(text: String) -> syn::Result<Source> {
        let ast = syn::parse_file(&text)?;
        Ok(Source {
            lines: text.lines().count(),
            text,
            ast,
        })
    }
}

/// Every file read so far, parsed once.
#[derive(Default)]
pub struct Sources {
    parsed: HashMap<PathBuf, Rc<Source>>,
}

impl Sources {
    pub fn get(&mut self, path: &Path) -> Result<Rc<Source>> {
        if let Some(source) = self.parsed.get(path) {
            return Ok(source.clone());
        }
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let source = Source::parse(text).map_err(|e| {
            let at = e.span().start();
            anyhow!("{}:{}:{}: {e}", path.display(), at.line, at.column + 1)
        })?;
        let source = Rc::new(source);
        self.parsed.insert(path.to_path_buf(), source.clone());
        Ok(source)
    }
}

/// Whether a `cfg` predicate holds only when compiling tests: `test`, or an
/// `all(..)` with such a member. `not(test)` and `any(test, ..)` do not.
fn predicate_is_test(meta: &Meta) -> bool {
    match meta {
        Meta::Path(path) => path.is_ident("test"),
        Meta::List(list) if list.path.is_ident("all") => list
            .parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
            .map(|members| members.iter().any(predicate_is_test))
            .unwrap_or(false),
        _ => false,
    }
}

/// `#[cfg(test)]` (or a stricter `cfg` still requiring `test`) is among `attrs`.
pub fn is_cfg_test(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .parse_args::<Meta>()
                .map(|meta| predicate_is_test(&meta))
                .unwrap_or(false)
    })
}

/// A test function: `#[test]`, `#[tokio::test]` and the like.
pub fn is_test_fn(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path()
            .segments
            .last()
            .is_some_and(|segment| segment.ident == "test")
    })
}

/// Code that exists only in test builds.
pub fn is_test_code(attrs: &[Attribute]) -> bool {
    is_cfg_test(attrs) || is_test_fn(attrs)
}

/// The attributes of any item.
pub fn item_attrs(item: &Item) -> &[Attribute] {
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// The last identifier of a type, for naming methods (`Store` in `impl Foo for Store<T>`).
pub fn type_name(ty: &syn::Type) -> String {
    match ty {
        syn::Type::Path(path) => path
            .path
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default(),
        syn::Type::Reference(reference) => type_name(&reference.elem),
        _ => "_".into(),
    }
}
