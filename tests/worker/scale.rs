//! Several workers: three `referral-router run` processes on one queue and one
//! PostgreSQL database share a few thousand mixed events (RabbitMQ spreads
//! them as competing consumers), and every expected email arrives exactly once;
//! a worker killed mid-event has its event taken over when its lease runs out.
//!
//! The mixed events are built so their expected emails do not depend on the
//! order the workers happen to process them in: each event has its own
//! referral and lead, and each Contact-me lead its own day. Mixed in with them,
//! 30 Contact-me leads for one partner on one day of its own: which ten go out
//! one by one depends on that order, so they are checked by count: ten single
//! emails and one digest of the other twenty per recipient, each lead once,
//! with three flushes racing for the digests.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use referral_router::event::Event;
use referral_router::render::message_id;
use referral_router::route::rules::Channel;
use referral_router::route::{Decision, DigestKey, MemoryState, RuleSet, route};

use crate::support::{self, Backend, Broker, SmtpSink, TestStore, Worker};

const WORKERS: usize = 3;
/// 15 example events per round: 2010 events, about 3200 emails.
const ROUNDS: usize = 134;
/// The domain of the default `mail.from`, which the workers use.
const MAIL_DOMAIN: &str = "partner-center.example";

/// Every example event but the directory ones, `rounds` times: new ids, a
/// referral (or lead) of their own, and the time moved by the round's number of days.
fn mixed_events(rounds: usize) -> Vec<serde_json::Value> {
    let mut files: Vec<String> = std::fs::read_dir(support::root().join("rules/tests/events"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json") && !name.starts_with("directory."))
        .collect();
    files.sort();
    let examples: Vec<(String, serde_json::Value)> = files
        .into_iter()
        .map(|f| {
            let v = serde_json::from_slice(&support::example(&f)).unwrap();
            (f.trim_end_matches(".json").to_string(), v)
        })
        .collect();
    let mut out = Vec::with_capacity(rounds * examples.len());
    for round in 0..rounds {
        for (name, example) in &examples {
            let mut v = example.clone();
            let tag = format!("scale-{round}-{name}");
            v["id"] = tag.clone().into();
            for pointer in ["/data/referral/id", "/data/lead/id", "/data/solution/id"] {
                if let Some(id) = v.pointer_mut(pointer) {
                    *id = format!("{tag}-subject").into();
                }
            }
            let time: DateTime<Utc> = v["time"].as_str().unwrap().parse().unwrap();
            let days = i64::try_from(round).unwrap();
            v["time"] = (time + chrono::Duration::days(days)).to_rfc3339().into();
            out.push(v);
        }
    }
    out
}

/// The `Message-ID` of every email the events must produce, routed as a single
/// worker would in publish order (digest positions counted as they arrive).
fn expected_emails(events: &[serde_json::Value]) -> BTreeSet<String> {
    let root = support::root();
    let rules = RuleSet::load_dir(&root.join("rules")).unwrap();
    let dir = referral_router::decode::read_directory(&root.join("rules/tests/directory.jsonl")).unwrap();
    let mut counts: BTreeMap<DigestKey, u32> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for raw in events {
        let event: Event = referral_router::decode::decode_structured(&serde_json::to_vec(raw).unwrap()).unwrap();
        let mut state = MemoryState::new();
        for key in route(&event, &rules, &dir, &state).counters {
            let n = counts.entry(key.clone()).or_default();
            *n += 1;
            state.set_count(key, *n);
        }
        for d in route(&event, &rules, &dir, &state).deliveries {
            if d.channel == Channel::Email && d.decision == Decision::Send {
                let id = message_id(&event.id, &d.notification, &d.recipient.email, MAIL_DOMAIN);
                assert!(ids.insert(id), "two expected emails share a Message-ID");
            }
        }
    }
    ids
}

/// 30 Contact-me leads for Fabrikam on 10 June 2026 in Los Angeles, a day no mixed event uses.
fn same_day_leads() -> Vec<serde_json::Value> {
    (1..=30)
        .map(|n| {
            let mut v: serde_json::Value =
                serde_json::from_slice(&support::example("lead.created.contact_me.json")).unwrap();
            v["id"] = format!("scale-digest-{n}").into();
            v["time"] = format!("2026-06-10T17:{n:02}:00Z").into();
            v["data"]["lead"]["id"] = format!("scale-digest-lead-{n}").into();
            v["data"]["lead"]["customer"]["company"] = format!("Company-{n:02}").into();
            v
        })
        .collect()
}

/// The `Company-NN` names a message's text part lists.
fn companies(m: &support::smtp::Received) -> BTreeSet<String> {
    let text = m.parsed().body_text(0).unwrap_or_default().to_string();
    text.split(|c: char| !c.is_alphanumeric() && c != '-')
        .filter(|w| w.starts_with("Company-"))
        .map(str::to_string)
        .collect()
}

fn header(m: &support::smtp::Received, name: &str) -> String {
    m.parsed().header_raw(name).unwrap_or_default().trim().to_string()
}

async fn settled(workers: &[Worker]) -> f64 {
    let mut total = 0.0;
    for w in workers {
        total += w.settled().await;
    }
    total
}

async fn wait_settled(workers: &[Worker], n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while settled(workers).await < n as f64 {
        if Instant::now() > deadline {
            let logs: Vec<String> = workers.iter().map(|w| w.logs()).collect();
            let tail: Vec<&str> = logs.iter().map(|l| &l[l.len().saturating_sub(4000)..]).collect();
            panic!(
                "only {} of {n} messages settled in {timeout:?}; log tails:\n{}",
                settled(workers).await,
                tail.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_on_one_queue_and_database_send_every_email_exactly_once() {
    let _gate = support::shared().await;
    let broker = Broker::new("scale").await;
    let smtp = SmtpSink::start().await;
    let store = TestStore::new(Backend::Postgres).await;
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let env = [
            ("ROUTER__LOG__LEVEL", "info"),
            ("ROUTER__STORE__MAX_CONNECTIONS", "6"),
            // Digests are flushed below, by three racing `digest flush` commands.
            ("ROUTER__DIGEST__CHECK_EVERY", "1h"),
        ];
        workers.push(Worker::start(&broker, &smtp, &store, &env).await);
    }
    let directory = support::directory_events();
    for line in &directory {
        broker.publish(line).await;
    }
    wait_settled(&workers, directory.len(), Duration::from_secs(30)).await;

    let events = mixed_events(ROUNDS);
    let expected = expected_emails(&events);
    let leads = same_day_leads();
    let started = Instant::now();
    for (n, event) in events.iter().enumerate() {
        broker.publish(&serde_json::to_vec(event).unwrap()).await;
        if n % 60 == 0 && n / 60 < leads.len() {
            broker.publish(&serde_json::to_vec(&leads[n / 60]).unwrap()).await;
        }
    }
    wait_settled(
        &workers,
        directory.len() + events.len() + leads.len(),
        Duration::from_secs(300),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!(
        "{} events, {} emails through {WORKERS} workers in {:?}",
        events.len(),
        expected.len(),
        started.elapsed()
    );

    // The same-day leads: ten single emails per recipient, the rest held.
    let recipients = [
        "dana@fabrikam.example",
        "gina@fabrikam.example",
        "sales@fabrikam.example",
    ];
    let mut singles: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in smtp
        .messages()
        .iter()
        .filter(|m| header(m, "X-Router-Event").starts_with("scale-digest-"))
    {
        let seen = singles.entry(m.rcpt.join(",")).or_default();
        for c in companies(m) {
            assert!(seen.insert(c.clone()), "{c} emailed twice to {:?}", m.rcpt);
        }
    }
    for r in recipients {
        assert_eq!(singles.get(r).map_or(0, BTreeSet::len), 10, "{r}: ten leads one by one");
    }
    // Three flushes at once, one per worker's settings: each recipient's digest is sent by exactly one.
    let mut flushes: Vec<_> = workers.iter().map(|w| w.spawn_cli(&["digest", "flush"])).collect();
    for f in &mut flushes {
        assert!(f.wait().unwrap().success(), "a digest flush failed");
    }
    let digests: Vec<_> = smtp
        .messages()
        .into_iter()
        .filter(|m| header(m, "X-Router-Notification") == "leads-digest")
        .collect();
    assert_eq!(digests.len(), 3, "one digest per recipient");
    let all: BTreeSet<String> = (1..=30).map(|n| format!("Company-{n:02}")).collect();
    for d in &digests {
        let r = d.rcpt.join(",");
        let listed = companies(d);
        assert_eq!(listed.len(), 20, "{r}: the twenty held leads");
        assert!(
            listed.is_disjoint(&singles[&r]),
            "{r}: a lead both alone and in the digest"
        );
        let union: BTreeSet<String> = listed.union(&singles[&r]).cloned().collect();
        assert_eq!(union, all, "{r}: every lead exactly once");
    }

    let mut received: BTreeMap<String, usize> = BTreeMap::new();
    for m in smtp
        .messages()
        .iter()
        .filter(|m| !header(m, "X-Router-Event").starts_with("scale-digest-"))
        .filter(|m| header(m, "X-Router-Notification") != "leads-digest")
    {
        let id = m.parsed().message_id().expect("a Message-ID").to_string();
        *received
            .entry(format!("<{}>", id.trim_matches(['<', '>'])))
            .or_default() += 1;
    }
    let twice: Vec<_> = received.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} emails arrived more than once: {twice:?}",
        twice.len()
    );
    let got: BTreeSet<String> = received.into_keys().collect();
    let missing: Vec<_> = expected.difference(&got).take(5).collect();
    let extra: Vec<_> = got.difference(&expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "expected {} emails, got {}; missing e.g. {missing:?}, unexpected e.g. {extra:?}",
        expected.len(),
        got.len()
    );
    for (n, w) in workers.iter().enumerate() {
        let consumed = w.metric("router_messages_consumed_total").await;
        assert!(consumed > 0.0, "worker {n} took part");
        assert_eq!(
            w.metric("router_dead_lettered_total").await,
            0.0,
            "worker {n}:\n{}",
            w.logs()
        );
    }
    drop(workers);
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_event_is_taken_over_when_its_lease_runs_out() {
    let _gate = support::shared().await;
    let broker = Broker::new("takeover").await;
    let smtp = SmtpSink::start().await;
    let store = TestStore::new(Backend::Postgres).await;
    let env = [("ROUTER__STORE__LEASE", "3s"), ("ROUTER__SMTP__TIMEOUT", "2500ms")];
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(Worker::start(&broker, &smtp, &store, &env).await);
    }
    let directory = support::directory_events();
    for line in &directory {
        broker.publish(line).await;
    }
    wait_settled(&workers, directory.len(), Duration::from_secs(30)).await;

    // Three emails; the worker that takes the lead dies while the server holds the second.
    smtp.set_delay(Duration::from_millis(1500));
    broker.publish(&support::example("lead.created.contact_me.json")).await;
    assert_eq!(smtp.wait_for(1, Duration::from_secs(20)).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut busy = None;
    for (n, w) in workers.iter().enumerate() {
        if w.metric("router_events_routed_total{type=\"lead.created\"}").await > 0.0 {
            busy = Some(n);
        }
    }
    let busy = busy.expect("a worker routed the lead");
    // The second message is refused, so the crash leaves it unsent rather than half-recorded.
    smtp.set_down(true);
    workers[busy].signal("KILL");
    workers[busy].wait_exit(Duration::from_secs(10)).await;
    // Stay down until the dead worker's held message has been refused.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    smtp.set_delay(Duration::ZERO);
    smtp.set_down(false);

    let survivor = &workers[1 - busy];
    let mails = smtp.wait_for(3, Duration::from_secs(30)).await;
    assert_eq!(mails.len(), 3, "log:\n{}", survivor.logs());
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
    assert!(
        survivor.logs().contains("another worker holds this event"),
        "the survivor waited for the lease:\n{}",
        survivor.logs()
    );
    drop(workers);
    broker.cleanup().await;
}
