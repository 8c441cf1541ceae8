//! Bad input and outages: duplicates send nothing twice, bad messages go to the
//! dead-letter queue with a reason and the worker carries on, an SMTP outage
//! ends in exactly one delivery.

use std::time::Duration;

use crate::support::{self, Backend, example, on_both_backends};

on_both_backends!(
    a_duplicate_event_id_gives_one_email_in_either_cloudevents_mode,
    bad_input_is_dead_lettered_with_a_reason_and_the_next_event_still_goes_out,
    smtp_down_for_a_while_then_back_gives_exactly_one_delivery,
    a_message_that_keeps_failing_is_dead_lettered_after_bounded_retries,
    a_dead_letter_is_replayed_once_its_cause_is_gone,
);

async fn a_duplicate_event_id_gives_one_email_in_either_cloudevents_mode(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, smtp, worker) = support::start("dup", backend, &[]).await;
    let passed = example("cosell.solution.validation_passed.json");
    broker.publish(&passed).await;
    broker.publish(&passed).await;
    broker.publish_binary(&passed).await;
    let settled = support::directory_events().len() + 3;
    worker.wait_settled(settled, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1, "one email for one event id");
    assert_eq!(mails[0].rcpt, ["ben@fabrikam.example"]);
    assert_eq!(worker.metric("router_events_duplicate_total").await, 2.0);

    // Binary mode on its own: a new id, attributes in headers, data as the body.
    let mut v: serde_json::Value = serde_json::from_slice(&passed).unwrap();
    v["id"] = "evt-binary-1".into();
    broker.publish_binary(&serde_json::to_vec(&v).unwrap()).await;
    assert_eq!(smtp.wait_for(2, Duration::from_secs(20)).await.len(), 2);
    broker.cleanup().await;
}

async fn bad_input_is_dead_lettered_with_a_reason_and_the_next_event_still_goes_out(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, smtp, worker) = support::start("bad", backend, &[]).await;
    let shared: serde_json::Value = serde_json::from_slice(&example("cosell.opportunity.shared.json")).unwrap();

    broker.publish_raw("cosell.opportunity.shared", b"{not json").await;
    let mut unknown = shared.clone();
    unknown["type"] = "cosell.opportunity.teleported".into();
    unknown["id"] = "evt-unknown".into();
    broker.publish(&serde_json::to_vec(&unknown).unwrap()).await;
    let mut missing = shared.clone();
    missing["id"] = "evt-missing".into();
    missing["data"]["referral"]["customer"]
        .as_object_mut()
        .unwrap()
        .remove("name");
    broker.publish(&serde_json::to_vec(&missing).unwrap()).await;
    broker.publish(&example("cosell.solution.validation_passed.json")).await;

    let mut dead = broker.dead_letters(3, Duration::from_secs(20)).await;
    // Messages are handled concurrently, so they reach the dead-letter queue in any order.
    let order = ["not_json", "unknown_type", "bad_data"];
    dead.sort_by_key(|d| order.iter().position(|r| *r == d.reason));
    let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(
        reasons,
        ["not_json", "unknown_type", "bad_data"],
        "log:\n{}",
        worker.logs()
    );
    assert_eq!(dead[0].body, b"{not json", "the original body is kept");
    assert!(
        dead[1].error.contains("cosell.opportunity.teleported"),
        "{}",
        dead[1].error
    );
    assert!(
        dead[2].error.contains("data.referral.customer") && dead[2].error.contains("name"),
        "{}",
        dead[2].error
    );
    let mails = smtp.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].rcpt, ["ben@fabrikam.example"]);
    assert_eq!(worker.metric("router_dead_lettered_total").await, 3.0);
    broker.cleanup().await;
}

async fn smtp_down_for_a_while_then_back_gives_exactly_one_delivery(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, smtp, worker) = support::start("smtpdown", backend, &[]).await;
    smtp.set_down(true);
    broker.publish(&example("lead.created.contact_me.json")).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(smtp.messages().is_empty());
    assert!(worker.metric("router_retries_total").await >= 1.0, "retried while down");
    smtp.set_down(false);
    let mails = smtp.wait_for(3, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 3, "log:\n{}", worker.logs());
    worker
        .wait_settled(support::directory_events().len() + 1, Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut rcpts: Vec<String> = smtp.messages().iter().flat_map(|m| m.rcpt.clone()).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "dana@fabrikam.example",
            "gina@fabrikam.example",
            "sales@fabrikam.example"
        ],
        "each exactly once"
    );
    broker.cleanup().await;
}

async fn a_message_that_keeps_failing_is_dead_lettered_after_bounded_retries(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, smtp, worker) = support::start("exhaust", backend, &[("ROUTER__RETRY__MAX_ATTEMPTS", "3")]).await;
    smtp.set_down(true);
    broker.publish(&example("cosell.solution.validation_passed.json")).await;
    let dead = broker.dead_letters(1, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 1, "log:\n{}", worker.logs());
    assert_eq!(dead[0].reason, "retries_exhausted");
    assert!(dead[0].error.contains("after 3 attempts"), "{}", dead[0].error);
    assert!(smtp.messages().is_empty());
    broker.cleanup().await;
}

async fn a_dead_letter_is_replayed_once_its_cause_is_gone(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, smtp, worker) = support::start("replay", backend, &[("ROUTER__RETRY__MAX_ATTEMPTS", "2")]).await;
    smtp.set_down(true);
    broker.publish(&example("cosell.solution.validation_passed.json")).await;
    broker.publish_raw("lead.created", b"{not json").await;
    worker
        .wait_settled(support::directory_events().len() + 2, Duration::from_secs(30))
        .await;
    let listed = String::from_utf8_lossy(&worker.cli(&["dlq", "list"]).stdout).to_string();
    assert!(listed.starts_with("2 dead letter(s)"), "{listed}");
    assert!(
        listed.contains("retries_exhausted") && listed.contains("cosell.solution.validation_passed"),
        "{listed}"
    );
    assert!(listed.contains("not_json"), "{listed}");

    // The outage is over: replaying the exhausted one delivers it, once; the bad one stays.
    smtp.set_down(false);
    let out = worker.cli(&["dlq", "replay", "--reason", "retries_exhausted"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        said.contains("replayed 1 dead letter(s)") && said.contains("left 1"),
        "{said}"
    );
    let mails = smtp.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].rcpt, ["ben@fabrikam.example"]);
    // Replaying again changes nothing.
    let said =
        String::from_utf8_lossy(&worker.cli(&["dlq", "replay", "--reason", "retries_exhausted"]).stdout).to_string();
    assert!(said.contains("replayed 0"), "{said}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.messages().len(), 1);
    let listed = String::from_utf8_lossy(&worker.cli(&["dlq", "list"]).stdout).to_string();
    assert!(
        listed.starts_with("1 dead letter(s)") && listed.contains("not_json"),
        "{listed}"
    );
    broker.cleanup().await;
}
