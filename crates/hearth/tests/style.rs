//! The style rules a machine can check (see STYLE.md): no non-test function longer than
//! 80 lines in the workspace's sources.

use std::path::{Path, PathBuf};

use syn::spanned::Spanned;
use syn::visit::Visit;

/// The longest a non-test function may be, in lines from `fn` to its closing brace.
const MAX_LINES: usize = 80;

/// The workspace's root, two levels above this crate.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Every `.rs` file under `dir`, recursively.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The non-test source files: `src/` of every crate and of the benchmarks. Integration
/// tests (`tests/`) are test code and are not measured.
fn non_test_sources() -> Vec<PathBuf> {
    let root = workspace();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).unwrap().flatten() {
        sources(&entry.path().join("src"), &mut files);
    }
    sources(&root.join("bench/src"), &mut files);
    files.sort();
    files
}

/// Whether attributes mark test-only code: `#[test]`, `#[tokio::test]`, `#[cfg(test)]`.
fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        let path = attr.path();
        if path.segments.last().is_some_and(|s| s.ident == "test") {
            return true;
        }
        path.is_ident("cfg")
            && attr.meta.require_list().is_ok_and(|list| {
                list.tokens
                    .to_string()
                    .split(|c: char| !c.is_alphanumeric() && c != '_')
                    .any(|w| w == "test")
                    && !list.tokens.to_string().contains("not")
            })
    })
}

/// Collects every function longer than [`MAX_LINES`] outside test code.
struct LongFunctions<'a> {
    file: &'a Path,
    found: Vec<String>,
}

impl LongFunctions<'_> {
    fn measure(&mut self, name: &syn::Ident, start: proc_macro2::Span, block: &syn::Block) {
        let lines = block.span().end().line + 1 - start.start().line;
        if lines > MAX_LINES {
            self.found.push(format!(
                "{}:{}: fn {name} is {lines} lines",
                self.file.display(),
                start.start().line
            ));
        }
    }
}

impl<'ast> Visit<'ast> for LongFunctions<'_> {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if !is_test(&item.attrs) {
            syn::visit::visit_item_mod(self, item);
        }
    }

    fn visit_item_impl(&mut self, item: &'ast syn::ItemImpl) {
        if !is_test(&item.attrs) {
            syn::visit::visit_item_impl(self, item);
        }
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        if !is_test(&item.attrs) {
            self.measure(&item.sig.ident, item.sig.fn_token.span, &item.block);
            syn::visit::visit_item_fn(self, item);
        }
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        if !is_test(&item.attrs) {
            self.measure(&item.sig.ident, item.sig.fn_token.span, &item.block);
            syn::visit::visit_impl_item_fn(self, item);
        }
    }

    fn visit_trait_item_fn(&mut self, item: &'ast syn::TraitItemFn) {
        if let Some(block) = &item.default
            && !is_test(&item.attrs)
        {
            self.measure(&item.sig.ident, item.sig.fn_token.span, block);
        }
        syn::visit::visit_trait_item_fn(self, item);
    }
}

fn long_functions(file: &Path, source: &str) -> Vec<String> {
    let syntax = syn::parse_file(source)
        .unwrap_or_else(|e| panic!("{}: does not parse: {e}", file.display()));
    let mut visitor = LongFunctions {
        file,
        found: Vec::new(),
    };
    visitor.visit_file(&syntax);
    visitor.found
}

#[test]
fn no_non_test_function_is_longer_than_80_lines() {
    let root = workspace();
    let files = non_test_sources();
    assert!(files.len() > 50, "found only {} source files", files.len());
    let mut long = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file).unwrap();
        let shown = file.strip_prefix(&root).unwrap_or(file);
        long.extend(long_functions(shown, &source));
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_LINES} lines (STYLE.md: split them into named steps):\n{}",
        long.join("\n")
    );
}

/// The check itself measures what it says: a long function is found, a long test is not.
#[test]
fn the_check_finds_a_long_function_and_skips_tests() {
    let body = "    let x = 1;\n".repeat(MAX_LINES);
    let source = format!(
        "fn long() {{\n{body}}}\nfn short() {{}}\n#[cfg(test)]\nmod tests {{\n    #[test]\n    fn long_test() {{\n{body}}}\n}}\nimpl S {{\n    fn method() {{\n{body}}}\n}}\n"
    );
    let found = long_functions(Path::new("x.rs"), &source);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].starts_with("x.rs:1: fn long is 82 lines"),
        "{found:?}"
    );
    assert!(found[1].contains("fn method"), "{found:?}");
}
