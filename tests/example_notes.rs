//! Runs the notes example end to end (the same code `cargo run --example notes` runs).

#[path = "../examples/notes.rs"]
mod notes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notes_example_converges() {
    let report = notes::run().await.expect("the example converges");
    // 3 seeded - 1 deleted + 1 added on the phone + 5000 imported.
    assert_eq!(report.notes, 5003);
    assert_eq!(report.conflicts, 1);
}
