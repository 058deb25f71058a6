//! The examples stop on SIGTERM as on Ctrl-C, and write the buffered last-use times first:
//! `docker stop`, Kubernetes and systemd send SIGTERM, and a server that waits on Ctrl-C
//! alone is killed with the times it buffered.

#![cfg(unix)]

#[path = "../examples/quickstart.rs"]
#[allow(dead_code)]
mod quickstart;

use std::time::Duration;

use apitoken::{MemoryStore, TokenStore, Verifier};

#[tokio::test]
async fn sigterm_stops_the_quickstart_after_its_final_flush() {
    let verifier = Verifier::builder(MemoryStore::new())
        .format(quickstart::token_format())
        // Far longer than the test: only the final flush can write.
        .last_used_flush_interval(Duration::from_secs(3600))
        .build();
    let token = quickstart::issue_bootstrap_token(&verifier).await.unwrap();
    let principal = verifier.authenticate(token.expose_secret()).await.unwrap();
    let id = *principal.token_id();
    let noted = verifier.store().get(&id).await.unwrap().unwrap();
    assert_eq!(noted.record.last_used_at, None, "not written yet");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = tokio::spawn(quickstart::serve(
        listener,
        verifier.clone(),
        quickstart::shutdown_signal(),
    ));
    // The signal handler is installed on the server's first poll.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!server.is_finished());

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let stopped = tokio::time::timeout(Duration::from_secs(10), server).await;
    stopped
        .expect("the server stops on SIGTERM")
        .unwrap()
        .unwrap();

    let written = verifier.store().get(&id).await.unwrap().unwrap();
    assert!(
        written.record.last_used_at.is_some(),
        "the final flush wrote the last use"
    );
    assert_eq!(verifier.last_used_pending(), 0);
}
