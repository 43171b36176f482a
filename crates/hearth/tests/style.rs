//! The style rules a machine can check (see STYLE.md): no non-test function longer than
//! 80 lines in the workspace's sources.

use std::path::{Path, PathBuf};

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

/// Whether an attribute line marks test-only code: `#[test]`, `#[tokio::test]`,
/// `#[cfg(test)]` (not `#[cfg(not(test))]`).
fn is_test_attribute(line: &str) -> bool {
    let Some(inner) = line.strip_prefix("#[").and_then(|l| l.strip_suffix(']')) else {
        return false;
    };
    let words: Vec<&str> = inner
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .collect();
    words.last() == Some(&"test") && !words.contains(&"cfg") && !words.contains(&"not")
        || words.first() == Some(&"cfg") && words.contains(&"test") && !words.contains(&"not")
}

/// The name of the function a (trimmed) line starts, if it starts one: `fn name`, after any
/// of `pub(...)`, `const`, `async`, `unsafe`, `extern "C"`.
fn starts_fn(line: &str) -> Option<&str> {
    let mut rest = line;
    loop {
        let next = ["pub ", "const ", "async ", "unsafe ", "extern \"C\" "]
            .iter()
            .find_map(|q| rest.strip_prefix(q))
            .or_else(|| {
                let scoped = rest.strip_prefix("pub(")?;
                Some(scoped.split_once(") ")?.1)
            });
        match next {
            Some(after) => rest = after,
            None => break,
        }
    }
    let name = rest.strip_prefix("fn ")?;
    let end = name
        .find(|c: char| !c.is_alphanumeric() && c != '_')
        .unwrap_or(name.len());
    (end > 0).then(|| &name[..end])
}

/// Every function longer than [`MAX_LINES`] (from `fn` to its closing brace) outside test
/// code, in rustfmt-formatted source: a body ends at the first `}` line at the indentation of
/// its `fn` line; an item marked test-only (`#[test]`, `#[cfg(test)]`) is skipped whole.
fn long_functions(file: &Path, source: &str) -> Vec<String> {
    let lines: Vec<&str> = source.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    // The line a skipped test item ends at, and its indentation.
    let closing = |from: usize, depth: usize| {
        (from..lines.len()).find(|&j| indent(lines[j]) == depth && lines[j].trim() == "}")
    };
    let mut found = Vec::new();
    let mut test_attribute = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim();
        if trimmed.starts_with("#[") {
            test_attribute |= is_test_attribute(trimmed);
            i += 1;
            continue;
        }
        if trimmed.starts_with("//") || trimmed.is_empty() {
            i += 1;
            continue;
        }
        let opens = trimmed.ends_with('{');
        if test_attribute && opens {
            // The whole test item (function or module) is skipped.
            i = closing(i + 1, indent(line)).map_or(lines.len(), |end| end + 1);
            test_attribute = false;
            continue;
        }
        test_attribute = false;
        // A declaration (`;`) or a one-line function (`{ .. }`) is short.
        let one_line = trimmed.ends_with(';') || trimmed.ends_with('}');
        if let Some(name) = starts_fn(trimmed).filter(|_| !one_line)
            && let Some(end) = closing(i + 1, indent(line))
        {
            let count = end + 1 - i;
            if count > MAX_LINES {
                found.push(format!(
                    "{}:{}: fn {name} is {count} lines",
                    file.display(),
                    i + 1
                ));
            }
        }
        i += 1;
    }
    found
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
        "fn long() {{\n{body}}}\nfn short() {{}}\n#[cfg(test)]\nmod tests {{\n    #[test]\n    fn long_test() {{\n{body}    }}\n\n    fn long_helper() {{\n{body}    }}\n}}\nimpl S {{\n    /// Says what it does.\n    pub(crate) async fn method(\n        x: u8,\n    ) -> u8 {{\n{body}    }}\n    fn declared(&self);\n}}\n#[tokio::test]\nasync fn long_async_test() {{\n{body}}}\n"
    );
    let found = long_functions(Path::new("x.rs"), &source);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].starts_with("x.rs:1: fn long is 82 lines"),
        "{found:?}"
    );
    assert!(found[1].contains("fn method is 84 lines"), "{found:?}");
    assert!(is_test_attribute("#[cfg(all(test, unix))]"));
    assert!(!is_test_attribute("#[cfg(not(test))]"));
    assert!(!is_test_attribute("#[derive(Debug)]"));
}
