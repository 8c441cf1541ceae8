//! Hostile input end to end: oversized and malformed messages are
//! dead-lettered while the worker carries on; CR/LF in any string that reaches
//! a header creates no header; markup in any text field arrives escaped.

use std::time::Duration;

use serde_json::Value;

use crate::support::{self, Backend, example, on_both_backends};

on_both_backends!(
    oversized_nested_and_invalid_messages_are_dead_lettered_and_the_worker_goes_on,
    crlf_in_any_string_creates_no_header,
    markup_in_any_text_field_arrives_escaped,
);

/// Text fields people type; identifiers and the values rules match on stay as they are.
const FREE_TEXT: &[&str] = &[
    "name",
    "notes",
    "reason",
    "message",
    "company",
    "title",
    "publisher",
    "phone",
    "country",
];

fn poison(v: &mut Value, with: &str) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if FREE_TEXT.contains(&k.as_str()) && child.is_string() {
                    *child = Value::String(format!("{}{with}", child.as_str().unwrap_or_default()));
                } else {
                    poison(child, with);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| poison(i, with)),
        _ => {}
    }
}

/// Every example that emails someone, with `with` appended to every text field.
fn poisoned(with: &str) -> Vec<(String, Vec<u8>)> {
    [
        "cosell.opportunity.shared.json",
        "cosell.opportunity.accepted.json",
        "cosell.opportunity.declined.json",
        "cosell.opportunity.expired.json",
        "dealreg.action_required.json",
        "dealreg.review_failed.json",
        "cosell.solution.validation_failed.json",
        "lead.created.contact_me.json",
        "lead.created.profile.json",
        "lead.declined.json",
    ]
    .iter()
    .map(|name| {
        let mut v: Value = serde_json::from_slice(&example(name)).unwrap();
        poison(&mut v["data"], with);
        (name.to_string(), serde_json::to_vec(&v).unwrap())
    })
    .collect()
}

async fn oversized_nested_and_invalid_messages_are_dead_lettered_and_the_worker_goes_on(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, smtp, worker) =
        support::start("hostile", backend, &[("ROUTER__AMQP__MAX_MESSAGE_BYTES", "65536")]).await;
    let mut big: Value = serde_json::from_slice(&example("cosell.solution.validation_passed.json")).unwrap();
    big["id"] = "evt-big".into();
    big["data"]["padding"] = "x".repeat(70_000).into();
    broker.publish(&serde_json::to_vec(&big).unwrap()).await;
    let bomb = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    broker.publish_raw("lead.created", bomb.as_bytes()).await;
    let mut bad_utf8 = example("cosell.solution.validation_passed.json");
    let at = bad_utf8.windows(6).position(|w| w == b"Brooks").unwrap();
    bad_utf8[at] = 0xff;
    broker.publish_raw("cosell.solution.validation_passed", &bad_utf8).await;
    broker.publish(&example("cosell.solution.validation_passed.json")).await;

    let dead = broker.dead_letters(3, Duration::from_secs(30)).await;
    // Handled side by side, so they reach the dead-letter queue in any order.
    let mut reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    reasons.sort_unstable();
    assert_eq!(
        reasons,
        ["not_json", "not_json", "too_large"],
        "log:\n{}",
        worker.logs()
    );
    let too_large = dead.iter().find(|d| d.reason == "too_large").unwrap();
    assert!(
        too_large.error.contains("over the limit of 65536"),
        "{}",
        too_large.error
    );
    assert_eq!(
        too_large.body.len(),
        serde_json::to_vec(&big).unwrap().len(),
        "nothing is lost"
    );
    let mails = smtp.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1, "the good event after them still goes out");
    broker.cleanup().await;
}

/// Publishes every poisoned example to a fresh worker and returns what was mailed,
/// once each event has still reached people.
async fn run_poisoned(name: &str, backend: Backend, with: &str) -> (support::Broker, Vec<support::smtp::Received>) {
    let (broker, smtp, worker) = support::start(name, backend, &[]).await;
    let events = poisoned(with);
    for (_, body) in &events {
        broker.publish(body).await;
    }
    let settled = support::directory_events().len() + events.len();
    worker.wait_settled(settled, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mails = smtp.messages();
    assert!(
        mails.len() >= events.len(),
        "every poisoned event still reaches people: {}",
        mails.len()
    );
    (broker, mails)
}

async fn crlf_in_any_string_creates_no_header(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, mails) = run_poisoned("crlf", backend, "\r\nBcc: evil@attacker.example\r\nX-Injected: yes").await;
    for mail in &mails {
        assert!(mail.rcpt.iter().all(|r| !r.contains("attacker")), "{:?}", mail.rcpt);
        let parsed = mail.parsed();
        for header in parsed.headers() {
            let name = header.name().to_ascii_lowercase();
            assert!(name != "bcc" && name != "x-injected", "an injected header: {name}");
        }
        let subject = parsed.subject().unwrap_or_default();
        assert!(!subject.contains('\r') && !subject.contains('\n'), "{subject:?}");
    }
    broker.cleanup().await;
}

async fn markup_in_any_text_field_arrives_escaped(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, mails) = run_poisoned(
        "markup",
        backend,
        "<script>alert(1)</script><img src=x onerror=alert(2)>",
    )
    .await;
    let mut escaped = 0;
    for mail in &mails {
        let parsed = mail.parsed();
        let html = parsed.body_html(0).expect("an HTML part").to_string();
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img src=x"), "{html}");
        if html.contains("&lt;script&gt;") {
            escaped += 1;
        }
    }
    assert_eq!(escaped, mails.len(), "the text shows in every message, escaped");
    broker.cleanup().await;
}
