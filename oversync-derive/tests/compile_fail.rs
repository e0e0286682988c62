//! Pins the compile errors users see for models oversync cannot sync.
//! Refresh the expected output with `TRYBUILD=overwrite cargo test -p oversync-derive`.

#[test]
fn rejected_models() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
