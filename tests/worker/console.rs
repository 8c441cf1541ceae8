//! The authors' console previews what the worker sends: for the same event
//! and recipient, the console's MIME message is the one the SMTP server
//! received, byte for byte, but for `Date`; and its test send goes through
//! the same SMTP server, marked as a test.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{self, Backend, example, http, http_body, on_both_backends};

on_both_backends!(the_console_preview_is_the_message_the_worker_sent_but_for_its_date,);

/// The message without its `Date` header.
fn undated(eml: &str) -> String {
    eml.split("\r\n")
        .filter(|line| !line.starts_with("Date: "))
        .collect::<Vec<_>>()
        .join("\r\n")
}

async fn the_console_preview_is_the_message_the_worker_sent_but_for_its_date(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, smtp, worker) = support::start("console", backend, &[]).await;
    // Optional, so its headers carry the signed one-click link as well.
    broker.publish(&example("dealreg.review_selected.json")).await;
    let sent = smtp.wait_for(2, Duration::from_secs(20)).await;
    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut console = worker.spawn_cli(&["console", "--addr", &addr]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while http(&addr, "GET", "/api/version", None).await.is_err() {
        assert!(Instant::now() < deadline, "the console did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for recipient in ["amy@fabrikam.example", "ben@fabrikam.example"] {
        let received = sent
            .iter()
            .find(|m| m.rcpt == [recipient])
            .unwrap_or_else(|| panic!("no email to {recipient}"));
        let path = format!(
            "/api/preview?notification=dealreg-review-selected&event=dealreg.review_selected&recipient={recipient}"
        );
        let (status, body) = http(&addr, "GET", &path, None).await.unwrap();
        assert_eq!(status, 200, "{body}");
        let preview: Value = serde_json::from_str(&body).unwrap();
        let eml = preview["eml"].as_str().unwrap();
        let got = String::from_utf8(received.data.clone()).unwrap();
        assert_eq!(undated(got.trim_end()), undated(eml.trim_end()), "{recipient}");
        assert!(
            preview["headers"]["List-Unsubscribe"]
                .as_str()
                .unwrap()
                .contains("/preferences/v1.")
        );
        assert_eq!(preview["decision"], "send");
        assert!(preview["subject"].as_str().unwrap().contains("selected for review"));
    }
    // A test send: the same email to the author, through the configured SMTP server, marked.
    let ask = br#"{"notification": "dealreg-review-selected", "event": "dealreg.review_selected",
                   "recipient": "ben@fabrikam.example", "to": "author@example.com"}"#;
    let (status, body) = http_body(&addr, "POST", "/api/test-send", None, Some(("application/json", ask)))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let all = smtp.wait_for(3, Duration::from_secs(20)).await;
    let test = all
        .iter()
        .find(|m| m.rcpt == ["author@example.com"])
        .expect("the test email");
    let parsed = test.parsed();
    assert!(
        parsed.subject().unwrap().starts_with("[Test] Deal registration"),
        "{:?}",
        parsed.subject()
    );
    assert!(parsed.header_raw("X-Router-Test").is_some());
    assert_eq!(all.len(), 3, "nobody else got it");
    let (status, _) = http_body(
        &addr,
        "POST",
        "/api/test-send",
        None,
        Some(("application/json", b"{\"to\": 1}")),
    )
    .await
    .unwrap();
    assert_eq!(status, 400);

    // Bad input: a clear error, nothing else.
    let (status, body) = http(
        &addr,
        "GET",
        "/api/preview?notification=dealreg-review-selected&event=nope",
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 404, "{body}");
    let (status, _) = http(&addr, "GET", "/api/preview?event=dealreg.review_selected", None)
        .await
        .unwrap();
    assert_eq!(status, 400);

    // "What would change" over what the store recorded (the directory the
    // worker was given, then the event sent above), and nothing changed since
    // the console started.
    let (status, body) = http(&addr, "GET", "/api/changes", None).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let changes: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(changes["source"], "recorded", "{body}");
    assert!(changes["events"].as_u64().unwrap() > 1, "{body}");
    assert_eq!(
        changes["summary"],
        json!({"added": 0, "removed": 0, "changed": 0}),
        "{body}"
    );
    // The recorded event by its id, previewed with the base as well.
    let path =
        "/api/preview?notification=dealreg-review-selected&event=evt-2003&recipient=ben@fabrikam.example&set=base";
    let (status, body) = http(&addr, "GET", path, None).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _) = http(&addr, "GET", &path.replace("set=base", "set=other"), None)
        .await
        .unwrap();
    assert_eq!(status, 400);
    let (status, body) = http_body(
        &addr,
        "POST",
        "/api/events",
        None,
        Some(("application/json", b"[1, 2]")),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not an event"), "{body}");
    let _ = console.kill();
    let _ = console.wait();
    broker.cleanup().await;
}
