//! The module tree of one crate root: which file is which module, found by
//! following `mod name;` declarations as the compiler does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::Result;
use syn::{Expr, Item, ItemMod, Lit, Meta};

use crate::syntax::{Source, Sources, is_cfg_test};
use crate::workspace::{Root, normalize};

/// A module path from the crate root: `[]` is the root, `["daemon", "grpc"]` is `crate::daemon::grpc`.
pub type ModPath = Vec<String>;

/// A file of a crate root's tree.
pub struct ModFile {
    pub path: PathBuf,
    pub module: ModPath,
    /// Reached only through `#[cfg(test)]` declarations.
    pub test_only: bool,
    pub source: Rc<Source>,
}

/// The tree of one crate root: its files, and which file holds each module
/// (inline modules belong to the file they are written in).
pub struct Unit {
    pub root: Root,
    pub files: Vec<ModFile>,
    pub modules: HashMap<ModPath, usize>,
}

/// A `mod name;` still to read.
struct Pending {
    path: PathBuf,
    module: ModPath,
    /// Where this file's own `mod child;` files live.
    child_dir: PathBuf,
    test_only: bool,
}

/// Where a `mod` item is written, for finding the files it declares.
struct Place<'a> {
    module: ModPath,
    /// The folder of the file being read.
    file_dir: &'a Path,
    /// The folder `mod child;` looks in at this point.
    child_dir: PathBuf,
    inline: bool,
    test_only: bool,
}

impl Unit {
    /// Reads `root` and every file its `mod` declarations reach.
    pub fn build(root: &Root, sources: &mut Sources) -> Result<Unit> {
        let mut unit = Unit {
            root: root.clone(),
            files: Vec::new(),
            modules: HashMap::new(),
        };
        let dir = root.path.parent().unwrap_or(Path::new("")).to_path_buf();
        let mut pending = vec![Pending {
            path: root.path.clone(),
            module: Vec::new(),
            child_dir: dir,
            test_only: false,
        }];
        while let Some(next) = pending.pop() {
            if unit.files.iter().any(|f| f.path == next.path) {
                continue;
            }
            let source = sources.get(&next.path)?;
            let index = unit.files.len();
            unit.modules.insert(next.module.clone(), index);
            let file_dir = next.path.parent().unwrap_or(Path::new("")).to_path_buf();
            let place = Place {
                module: next.module.clone(),
                file_dir: &file_dir,
                child_dir: next.child_dir,
                inline: false,
                test_only: next.test_only,
            };
            unit.declare(&source.ast.items, place, index, &mut pending);
            unit.files.push(ModFile {
                path: next.path,
                module: next.module,
                test_only: next.test_only,
                source,
            });
        }
        Ok(unit)
    }

    /// Registers the modules `items` declare, queueing the ones in other files.
    fn declare(&mut self, items: &[Item], place: Place, index: usize, pending: &mut Vec<Pending>) {
        for item in items {
            let Item::Mod(decl) = item else { continue };
            let mut module = place.module.clone();
            module.push(decl.ident.to_string());
            let test_only = place.test_only || is_cfg_test(&decl.attrs);
            let child_dir = place.child_dir.join(decl.ident.to_string());
            if let Some((_, inner)) = &decl.content {
                self.modules.insert(module.clone(), index);
                let inner_place = Place {
                    module,
                    file_dir: place.file_dir,
                    child_dir,
                    inline: true,
                    test_only,
                };
                self.declare(inner, inner_place, index, pending);
            } else if let Some(path) = module_file(decl, &place) {
                pending.push(Pending {
                    child_dir: child_dir_of(&path),
                    path,
                    module,
                    test_only,
                });
            }
        }
    }
}

/// The file a `mod name;` declaration loads: `#[path]`, `name.rs` or `name/mod.rs`.
fn module_file(decl: &ItemMod, place: &Place) -> Option<PathBuf> {
    if let Some(path) = path_attr(decl) {
        let base = if place.inline {
            &place.child_dir
        } else {
            place.file_dir
        };
        return Some(normalize(&base.join(path)));
    }
    let name = decl.ident.to_string();
    let flat = place.child_dir.join(format!("{name}.rs"));
    let nested = place.child_dir.join(&name).join("mod.rs");
    [flat, nested].into_iter().find(|p| p.is_file())
}

/// Where the children of the module in `path` live: beside a `mod.rs`, in a
/// folder named after any other file.
fn child_dir_of(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new(""));
    if path.file_name().is_some_and(|n| n == "mod.rs") {
        dir.to_path_buf()
    } else {
        dir.join(path.file_stem().unwrap_or_default())
    }
}

fn path_attr(decl: &ItemMod) -> Option<String> {
    decl.attrs.iter().find_map(|attr| match &attr.meta {
        Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
            Expr::Lit(lit) => match &lit.lit {
                Lit::Str(s) => Some(s.value()),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    })
}
