//! Nothing wedges the worker: a panic while handling a message is caught and
//! the message retried; a worker whose output is gone keeps working and still
//! stops on SIGTERM.

use std::time::Duration;

use crate::support::{self, Backend, Broker, Output, SmtpSink, TestStore, Worker, example, on_both_backends};

on_both_backends!(
    a_panicking_task_s_message_is_retried_not_stranded,
    a_worker_whose_output_closes_still_delivers_everything_and_stops_on_sigterm,
);

/// The validation-passed example under a new id.
fn passed(id: &str) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&example("cosell.solution.validation_passed.json")).unwrap();
    v["id"] = id.into();
    serde_json::to_vec(&v).unwrap()
}

async fn a_panicking_task_s_message_is_retried_not_stranded(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, smtp, worker) = support::start("panic", backend, &[("ROUTER_TEST_PANIC_AT", "evt-panics")]).await;
    broker.publish(&passed("evt-panics")).await;
    broker.publish(&passed("evt-after")).await;
    let mails = smtp.wait_for(2, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let causes: Vec<String> = smtp
        .messages()
        .iter()
        .map(|m| {
            m.parsed()
                .header_raw("X-Router-Event")
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect();
    assert_eq!(mails.len(), 2, "{causes:?}\n{}", worker.logs());
    assert_eq!(causes.iter().filter(|c| *c == "evt-panics").count(), 1, "{causes:?}");
    assert_eq!(causes.iter().filter(|c| *c == "evt-after").count(), 1, "{causes:?}");
    assert_eq!(worker.metric("router_panics_total").await, 1.0);
    assert_eq!(worker.metric("router_retries_total").await, 1.0);
    let dir = support::directory_events().len();
    worker.wait_settled(dir + 2, Duration::from_secs(10)).await;
    assert!(worker.logs().contains("processing panicked"), "{}", worker.logs());
    let (status, body) = support::http(&worker.http, "GET", "/readyz", None).await.unwrap();
    assert_eq!(status, 200, "{body}");
    broker.cleanup().await;
}

async fn a_worker_whose_output_closes_still_delivers_everything_and_stops_on_sigterm(backend: Backend) {
    let _gate = support::shared().await;
    let broker = Broker::new("closed-output").await;
    let smtp = SmtpSink::start().await;
    let store = TestStore::new(backend).await;
    let extra = [
        ("ROUTER__LOG__LEVEL", "info"),
        ("ROUTER__SHUTDOWN__DRAIN_TIMEOUT", "5s"),
    ];
    let mut worker = Worker::start_with(&broker, &smtp, &store, &extra, Output::Pipes).await;
    let seen = worker.close_output();
    assert!(
        seen.contains("HTTP listening"),
        "the worker logged to its pipe first: {seen}"
    );
    assert!(
        !seen.contains('\u{1b}'),
        "no colours when stderr is not a terminal: {seen:?}"
    );
    for line in support::directory_events() {
        broker.publish(&line).await;
    }
    for n in 0..20 {
        broker.publish(&passed(&format!("evt-closed-{n}"))).await;
    }
    let dir = support::directory_events().len();
    worker.wait_settled(dir + 20, Duration::from_secs(60)).await;
    assert_eq!(smtp.wait_for(20, Duration::from_secs(20)).await.len(), 20);
    assert_eq!(worker.metric("router_panics_total").await, 0.0);
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(Duration::from_secs(15)).await, Some(0));
    broker.cleanup().await;
}
