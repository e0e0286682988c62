//! Runs the async app example end to end (the same code `cargo run --example app` runs).

#[path = "../examples/app.rs"]
mod app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_example_converges_and_shuts_down_cleanly() {
    let report = app::run().await.expect("the example converges");
    assert_eq!(report.contacts, 65);
    assert!(report.refreshes >= 1, "{report:?}");
    assert!(report.syncs >= 1, "{report:?}");
}
