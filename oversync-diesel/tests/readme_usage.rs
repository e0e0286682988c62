//! The README's usage block is the crate-level example, line for line, so the code a reader
//! copies is the code `cargo test --doc` compiles.

const README: &str = include_str!("../../README.md");
const LIB: &str = include_str!("../src/lib.rs");

/// The lines of the first fenced block starting with `fence` after `heading` in `text`.
fn block<'a>(lines: &[&'a str], heading: &str, fence: &str) -> Vec<&'a str> {
    let from = lines
        .iter()
        .position(|l| *l == heading)
        .unwrap_or_else(|| panic!("no {heading:?}"));
    let start = (from..lines.len())
        .find(|&i| lines[i].starts_with(fence))
        .unwrap_or_else(|| panic!("no {fence} block after {heading:?}"))
        + 1;
    let end = (start..lines.len())
        .find(|&i| lines[i] == "```")
        .expect("unterminated block");
    lines[start..end].to_vec()
}

#[test]
fn the_readme_usage_block_is_the_compiled_crate_example() {
    let readme: Vec<&str> = README.lines().collect();
    let shown = block(&readme, "## Usage in three steps", "```rust");
    let doc: Vec<&str> = LIB
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    let first_line = doc.first().copied().unwrap_or_default();
    let compiled = block(&doc, first_line, "```no_run");
    // Hidden doctest lines would make the README differ from what compiles.
    assert!(
        compiled.iter().all(|l| !l.starts_with("# ")),
        "the crate example must have no hidden lines"
    );
    assert_eq!(
        shown.join("\n"),
        compiled.join("\n"),
        "README.md's usage block differs from the crate example in oversync-diesel/src/lib.rs"
    );
}
