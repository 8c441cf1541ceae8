//! Replay against the worker: the example events replayed from files plan
//! exactly what the worker did with them (its notification log), and
//! `replay --from-store` reads the same events back from the archive.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::{self, Backend, example, on_both_backends};

on_both_backends!(replay_plans_what_the_worker_did_and_reads_the_archive);

/// The examples in the order they happen (directory ones excluded: the harness loads the directory).
const ORDER: &[&str] = &[
    "cosell.opportunity.shared.json",
    "cosell.opportunity.expiring.json",
    "cosell.opportunity.accepted.json",
    "cosell.opportunity.declined.json",
    "cosell.opportunity.expired.json",
    "cosell.solution.validation_failed.json",
    "cosell.solution.validation_passed.json",
    "dealreg.action_required.json",
    "dealreg.review_failed.json",
    "dealreg.review_selected.json",
    "lead.created.contact_me.json",
    "lead.created.free_trial.json",
    "lead.created.profile.json",
    "lead.declined.json",
    "lead.expired.json",
];

type Row = (String, String, String, String, String);

/// (event, notification, channel, recipient, decision) of a replay's JSON.
fn replayed(out: &std::process::Output) -> BTreeSet<Row> {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (
                s("event"),
                s("notification"),
                s("channel"),
                s("recipient"),
                s("decision"),
            )
        })
        .collect()
}

async fn replay_plans_what_the_worker_did_and_reads_the_archive(backend: Backend) {
    let _gate = support::shared().await;
    // One at a time, so the worker sees them in the order the replay does.
    let (broker, _smtp, worker) = support::start("replay", backend, &[("ROUTER__AMQP__CONCURRENCY", "1")]).await;
    let mut ids = Vec::new();
    for name in ORDER {
        let body = example(name);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
        broker.publish(&body).await;
    }
    let dir = support::directory_events().len();
    worker.wait_settled(dir + ORDER.len(), Duration::from_secs(60)).await;

    let mut logged = BTreeSet::new();
    for id in &ids {
        let out = worker.cli(&["log", "--event", id, "--json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("log JSON");
        for r in rows {
            let decision = match r["status"].as_str().unwrap() {
                "sent" => "send",
                "held" | "digested" => "hold",
                "suppressed" => "suppress",
                other => panic!("{id}: status {other}"),
            };
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            logged.insert((
                s("event_id"),
                s("notification"),
                s("channel"),
                s("recipient"),
                decision.to_string(),
            ));
        }
    }
    assert!(logged.len() > 20, "{logged:?}");

    let root = support::root();
    let files: Vec<String> = ORDER
        .iter()
        .map(|n| root.join("rules/tests/events").join(n).display().to_string())
        .collect();
    let directory = root.join("rules/tests/directory.jsonl").display().to_string();
    let mut args = vec!["replay", "--json", "--directory", directory.as_str()];
    args.extend(files.iter().map(String::as_str));
    let from_files = replayed(&worker.cli(&args));
    assert_eq!(from_files, logged, "the replay of the files plans what the worker did");

    let from_store = replayed(&worker.cli(&["replay", "--from-store", "--since", "1h", "--json"]));
    assert_eq!(from_store, logged, "the archive replays the same");
    let leads = replayed(&worker.cli(&["replay", "--from-store", "--since", "1h", "--type", "lead.*", "--json"]));
    assert!(
        !leads.is_empty() && leads.iter().all(|r| r.0.starts_with("evt-4")),
        "{leads:?}"
    );
    broker.cleanup().await;
}
