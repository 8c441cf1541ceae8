//! Staying up: the broker closing every connection, and SIGTERM mid-work.

use std::time::Duration;

use crate::support::{self, Backend, example, on_both_backends};

on_both_backends!(
    a_forced_connection_close_recovers_with_no_loss,
    sigterm_drains_in_flight_work_and_exits_zero,
);

async fn a_forced_connection_close_recovers_with_no_loss(backend: Backend) {
    let _gate = support::exclusive().await;
    let (mut broker, smtp, worker) = support::start("reconnect", backend, &[]).await;
    broker.publish(&example("cosell.solution.validation_passed.json")).await;
    assert_eq!(smtp.wait_for(1, Duration::from_secs(20)).await.len(), 1);

    let status = std::process::Command::new("rabbitmqctl")
        .args(["close_all_connections", "integration test"])
        .output()
        .expect("rabbitmqctl is installed");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    broker.reconnect().await;
    // Published while the worker may still be reconnecting: queued, not lost.
    broker.publish(&example("cosell.solution.validation_failed.json")).await;
    broker.publish(&example("lead.created.profile.json")).await;
    let mails = smtp.wait_for(5, Duration::from_secs(30)).await;
    assert_eq!(mails.len(), 5, "log:\n{}", worker.logs());
    assert!(
        worker.logs().contains("reconnecting"),
        "the worker noticed and reconnected"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.messages().len(), 5, "nothing twice");
    broker.cleanup().await;
}

async fn sigterm_drains_in_flight_work_and_exits_zero(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, smtp, mut worker) = support::start("sigterm", backend, &[]).await;
    smtp.set_delay(Duration::from_millis(800));
    broker.publish(&example("lead.created.contact_me.json")).await;
    smtp.wait_for(1, Duration::from_secs(20)).await;
    worker.signal("TERM");
    let code = worker.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "log:\n{}", worker.logs());
    assert_eq!(smtp.messages().len(), 3, "the event in flight was finished");
    assert!(worker.logs().contains("in-flight work drained"));

    // It was acked: a restarted worker finds nothing to redo.
    smtp.set_delay(Duration::ZERO);
    worker.restart().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(smtp.messages().len(), 3);
    assert_eq!(worker.metric("router_messages_consumed_total").await, 0.0);
    broker.cleanup().await;
}
