//! Runs the todo example end to end (the same code `cargo run -p oversync-server --example
//! todo` runs) against this package's `oversync-server` binary.

#[path = "../examples/todo/main.rs"]
mod todo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_todo_example_converges_across_a_schema_rollout() {
    let report = todo::run(std::path::Path::new(env!("CARGO_BIN_EXE_oversync-server")))
        .await
        .expect("the example converges");
    assert_eq!(report.server.todos.len(), 4, "{report:?}");
    assert_eq!(report.server.tags.len(), 1, "{report:?}");
    assert!(
        report.old_device_error.contains("todos") && report.old_device_error.contains("priority"),
        "{report:?}"
    );
}
