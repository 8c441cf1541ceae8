//! Every SPEC row but the digest: the right people get one email each, with a
//! subject, a text part and an HTML part, and the headers operators rely on.

use std::collections::BTreeSet;
use std::time::Duration;

use mail_parser::MimeHeaders;
use referral_router::route::RuleSet;

use crate::support::{self, Backend, example, on_both_backends};

on_both_backends!(every_row_is_emailed_to_the_right_people_with_both_parts,);

/// Where the relay offers PIPELINING (RFC 2920) each envelope goes out in one
/// piece; where it does not, each command waits for its reply. Mail arrives
/// whole and once either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_are_pipelined_only_where_the_relay_offers_it() {
    let _gate = support::shared().await;
    for offered in [true, false] {
        let (broker, smtp, worker) = support::start("pipelining", Backend::Sqlite, &[]).await;
        smtp.set_pipelining(offered);
        broker.publish(&example("dealreg.review_selected.json")).await;
        let got = smtp.wait_for(2, Duration::from_secs(20)).await;
        let to: BTreeSet<String> = got.iter().flat_map(|m| m.rcpt.clone()).collect();
        assert_eq!(
            to,
            BTreeSet::from(["amy@fabrikam.example".to_string(), "ben@fabrikam.example".to_string()]),
            "offered={offered}\nlog:\n{}",
            worker.logs()
        );
        for m in &got {
            assert!(
                m.parsed().body_text(0).is_some_and(|t| !t.is_empty()),
                "a whole message"
            );
        }
        let pipelined = smtp.pipelined.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(pipelined, if offered { 2 } else { 0 }, "offered={offered}");
        worker
            .wait_settled(support::directory_events().len() + 1, Duration::from_secs(20))
            .await;
        assert_eq!(smtp.messages().len(), 2, "offered={offered}: once each");
        broker.cleanup().await;
    }
}

struct Case {
    file: &'static str,
    notification: &'static str,
    to: &'static [&'static str],
}

const CASES: &[Case] = &[
    // Rows 1 and 2: the inviting member, and the receiver's referral admins (never Microsoft).
    Case {
        file: "cosell.opportunity.shared.json",
        notification: "*",
        to: &[
            "amy@fabrikam.example",
            "cara@northwind.example",
            "ida@northwind.example",
        ],
    },
    // Row 5, before any answer is recorded (an answered receiver gets no reminder).
    Case {
        file: "cosell.opportunity.expiring.json",
        notification: "cosell-incoming-expiring",
        to: &["cara@northwind.example", "ida@northwind.example"],
    },
    Case {
        file: "cosell.opportunity.accepted.json",
        notification: "cosell-outgoing-accepted",
        to: &["amy@fabrikam.example"],
    },
    Case {
        file: "cosell.opportunity.declined.json",
        notification: "cosell-outgoing-declined",
        to: &["amy@fabrikam.example"],
    },
    Case {
        file: "cosell.opportunity.expired.json",
        notification: "cosell-outgoing-expired",
        to: &["amy@fabrikam.example"],
    },
    Case {
        file: "dealreg.action_required.json",
        notification: "dealreg-action-required",
        to: &["amy@fabrikam.example", "ben@fabrikam.example"],
    },
    Case {
        file: "dealreg.review_failed.json",
        notification: "dealreg-review-failed",
        to: &["amy@fabrikam.example", "ben@fabrikam.example"],
    },
    Case {
        file: "dealreg.review_selected.json",
        notification: "dealreg-review-selected",
        to: &["amy@fabrikam.example", "ben@fabrikam.example"],
    },
    Case {
        file: "cosell.solution.validation_failed.json",
        notification: "solution-validation-failed",
        to: &["ben@fabrikam.example"],
    },
    Case {
        file: "cosell.solution.validation_passed.json",
        notification: "solution-validation-passed",
        to: &["ben@fabrikam.example"],
    },
    Case {
        file: "lead.created.contact_me.json",
        notification: "lead-generated",
        to: &[
            "dana@fabrikam.example",
            "gina@fabrikam.example",
            "sales@fabrikam.example",
        ],
    },
    Case {
        file: "lead.created.profile.json",
        notification: "lead-profile-new",
        to: &[
            "dana@fabrikam.example",
            "gina@fabrikam.example",
            "sales@fabrikam.example",
        ],
    },
    Case {
        file: "lead.declined.json",
        notification: "lead-customer-redirected",
        to: &["sam@wideworld.example"],
    },
    Case {
        file: "lead.expired.json",
        notification: "lead-customer-redirected",
        to: &["sam@wideworld.example"],
    },
];

/// What every message names, in its subject and both parts: the deal, the solution or the lead's company.
fn subject_name(event: &serde_json::Value) -> String {
    [
        "/data/referral/name",
        "/data/solution/name",
        "/data/lead/customer/company",
    ]
    .iter()
    .find_map(|p| event.pointer(p).and_then(|v| v.as_str()))
    .expect("a name")
    .to_string()
}

async fn every_row_is_emailed_to_the_right_people_with_both_parts(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, smtp, worker) = support::start("rows", backend, &[]).await;
    let rules = RuleSet::load_dir(&support::root().join("rules")).unwrap();
    let mut seen = 0;
    for case in CASES {
        let raw = example(case.file);
        let event: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        broker.publish(&raw).await;
        let all = smtp.wait_for(seen + case.to.len(), Duration::from_secs(20)).await;
        let new = &all[seen..];
        seen = all.len();
        let got: BTreeSet<String> = new.iter().flat_map(|m| m.rcpt.clone()).collect();
        let want: BTreeSet<String> = case.to.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, want, "{}: recipients\nlog:\n{}", case.file, worker.logs());
        assert_eq!(new.len(), case.to.len(), "{}: one email per person", case.file);
        // The customer told to choose another partner reads about the partner they asked.
        let fact = if case.notification == "lead-customer-redirected" {
            event["data"]["partner"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        } else {
            subject_name(&event)
        };
        for m in new {
            let raw_text = String::from_utf8_lossy(&m.data);
            let msg = m.parsed();
            let subject = msg.subject().unwrap_or_default();
            let to = msg
                .to()
                .and_then(|a| a.first())
                .and_then(|a| a.address())
                .unwrap_or_default();
            let notification = if case.notification == "*" {
                if to.starts_with("amy@") {
                    "cosell-outgoing-opportunity"
                } else {
                    "cosell-incoming-opportunity"
                }
            } else {
                case.notification
            };
            assert_eq!(
                msg.header_raw("X-Router-Notification").map(str::trim),
                Some(notification),
                "{}: which notification it is",
                case.file
            );
            assert_eq!(msg.header_raw("X-Router-Event").map(str::trim), event["id"].as_str());
            // The customer told to choose another partner reads about the partner they asked.
            let named = if notification == "lead-customer-redirected" {
                event["data"]["partner"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            } else {
                fact.clone()
            };
            assert!(
                subject.contains(&named),
                "{}: subject `{subject}` does not name `{named}`",
                case.file
            );
            let ct = msg.content_type().expect("a content type");
            assert_eq!(
                (ct.ctype(), ct.subtype()),
                ("multipart", Some("alternative")),
                "{}",
                case.file
            );
            assert!(
                raw_text.contains("text/plain") && raw_text.contains("text/html"),
                "{raw_text}"
            );
            let text = msg.body_text(0).expect("a text part");
            let html = msg.body_html(0).expect("an HTML part");
            assert!(text.contains(&fact), "{}: text part lacks `{fact}`:\n{text}", case.file);
            assert!(html.contains(&fact), "{}: HTML part lacks `{fact}`:\n{html}", case.file);
            assert!(html.contains("https://"), "{}: links are absolute", case.file);
            assert!(
                msg.message_id().is_some_and(|id| id.contains('@')),
                "{}: Message-ID",
                case.file
            );
            assert!(
                msg.from().is_some() && msg.reply_to().is_some(),
                "{}: From, Reply-To",
                case.file
            );
            let optional = rules.notifications[notification].optional;
            assert_eq!(
                msg.header("List-Unsubscribe").is_some(),
                optional,
                "{}: List-Unsubscribe only on optional notifications",
                case.file
            );
        }
    }
    // Nothing else went out: the free-trial lead is informational.
    broker.publish(&example("lead.created.free_trial.json")).await;
    worker
        .wait_settled(
            support::directory_events().len() + CASES.len() + 1,
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(smtp.messages().len(), seen, "no extra mail");
    broker.cleanup().await;
}
