//! The digest end to end: counting by the partner's own day, ten individual
//! emails then digests holding exactly the rest, a flush that dies and is
//! taken over, and suppression by terminal state, with the log saying why.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::support::{self, Backend, Broker, SmtpSink, Worker, example, fs, on_both_backends};

on_both_backends!(
    twenty_five_leads_give_ten_emails_then_digests_of_exactly_the_other_fifteen,
    leads_count_into_the_partners_own_day_not_utcs,
    a_flush_killed_mid_send_is_taken_over_and_every_lead_arrives_once,
    the_worker_flushes_a_finished_day_by_itself,
    expiring_after_accepted_is_suppressed_and_the_log_names_the_rule,
    held_leads_survive_a_rule_change_that_renames_their_counter,
    held_leads_survive_a_rule_change_that_removes_the_digest,
    a_permanently_refused_digest_recipient_is_marked_failed_and_not_retried,
    a_held_lead_is_left_out_of_the_digest_of_a_recipient_who_then_turned_it_off,
);

const RECIPIENTS: [&str; 3] = [
    "dana@fabrikam.example",
    "gina@fabrikam.example",
    "sales@fabrikam.example",
];

/// A Contact-me lead for Fabrikam (Los Angeles) at `time`, its company named `company`.
fn lead(n: usize, time: &str, company: &str) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&example("lead.created.contact_me.json")).unwrap();
    v["id"] = format!("evt-lead-{n}").into();
    v["time"] = time.into();
    v["data"]["lead"]["id"] = format!("lead-{n}").into();
    v["data"]["lead"]["customer"]["company"] = company.into();
    serde_json::to_vec(&v).unwrap()
}

fn header(mail: &support::smtp::Received, name: &str) -> String {
    mail.parsed().header_raw(name).unwrap_or_default().trim().to_string()
}

/// Per recipient: the companies emailed one by one, and the companies in each digest.
fn sorted_mail(smtp: &SmtpSink) -> BTreeMap<String, (Vec<String>, Vec<Vec<String>>)> {
    let mut out: BTreeMap<String, (Vec<String>, Vec<Vec<String>>)> = BTreeMap::new();
    for mail in smtp.messages() {
        let parsed = mail.parsed();
        let text = parsed.body_text(0).unwrap_or_default().to_string();
        let companies: Vec<String> = text
            .split(|c: char| !c.is_alphanumeric() && c != '-')
            .filter(|w| w.starts_with("Company-"))
            .map(str::to_string)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let entry = out.entry(mail.rcpt.join(",")).or_default();
        match header(&mail, "X-Router-Notification").as_str() {
            "lead-generated" => entry.0.extend(companies),
            "leads-digest" => entry.1.push(companies),
            other => panic!("unexpected notification {other}"),
        }
    }
    out
}

async fn start(name: &str, backend: Backend, extra: &[(&str, &str)]) -> (Broker, SmtpSink, Worker) {
    let mut env = vec![("ROUTER__DIGEST__CHECK_EVERY", "1h"), ("ROUTER__DIGEST__LEASE", "2s")];
    env.extend_from_slice(extra);
    support::start(name, backend, &env).await
}

fn flush(worker: &Worker) -> String {
    let out = worker.cli(&["digest", "flush"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "digest flush failed: {text}\nworker log:\n{}",
        worker.logs()
    );
    text
}

async fn twenty_five_leads_give_ten_emails_then_digests_of_exactly_the_other_fifteen(backend: Backend) {
    let _gate = support::shared().await;
    // Eight at once: positions must still be exact.
    let (broker, smtp, worker) = start(
        "digest25",
        backend,
        &[("ROUTER__AMQP__PREFETCH", "32"), ("ROUTER__AMQP__CONCURRENCY", "8")],
    )
    .await;
    let dir = support::directory_events().len();
    for n in 1..=25 {
        // 09:00 to 09:48 in Los Angeles on 20 November.
        let time = format!("2026-11-20T17:{:02}:00Z", n * 2 - 2);
        broker.publish(&lead(n, &time, &format!("Company-{n:02}"))).await;
    }
    worker.wait_settled(dir + 25, Duration::from_secs(60)).await;
    smtp.wait_for(30, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        smtp.messages().len(),
        30,
        "ten individual emails for each of three recipients"
    );
    assert_eq!(
        worker
            .metric("router_deliveries_total{channel=\"action_center\",outcome=\"sent\"}")
            .await,
        75.0,
        "an Action Center entry for every lead and recipient, digested or not"
    );

    assert!(flush(&worker).contains("digests sent: 3, leads digested: 45"));
    let all: BTreeSet<String> = (1..=25).map(|n| format!("Company-{n:02}")).collect();
    let mail = sorted_mail(&smtp);
    assert_eq!(mail.len(), 3);
    for recipient in RECIPIENTS {
        let (single, digests) = &mail[recipient];
        assert_eq!(single.len(), 10, "{recipient}: {single:?}");
        assert_eq!(digests.len(), 1, "{recipient}: one digest per flush");
        assert_eq!(digests[0].len(), 15, "{recipient}: {:?}", digests[0]);
        let mut seen: BTreeSet<String> = single.iter().cloned().collect();
        for c in &digests[0] {
            assert!(seen.insert(c.clone()), "{recipient}: {c} both alone and in the digest");
        }
        assert_eq!(seen, all, "{recipient}: every lead exactly once");
    }

    // Nothing is left: a second flush sends nothing, and the log says where each lead went.
    assert!(flush(&worker).contains("digests sent: 0"));
    assert_eq!(smtp.messages().len(), 33);
    let out = worker.cli(&["log", "--recipient", "Dana@Fabrikam.example", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("log JSON");
    let count = |channel: &str, status: &str| {
        rows.iter()
            .filter(|r| r["channel"] == channel && r["status"] == status)
            .count()
    };
    assert_eq!(count("email", "sent"), 10);
    assert_eq!(count("email", "digested"), 15);
    assert_eq!(count("email", "held"), 0);
    assert_eq!(count("action_center", "sent"), 25);
    broker.cleanup().await;
}

async fn a_held_lead_is_left_out_of_the_digest_of_a_recipient_who_then_turned_it_off(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, smtp, worker) = start("digestoptout", backend, &[]).await;
    twelve_leads(&broker, &smtp, &worker).await;
    // Two leads are held for each recipient; then Dana turns lead emails off.
    let dana = support::jwt("fab-dana", support::JWT_SECRET, 600);
    let ask = br#"{"notifications": {"lead-generated": {"email": false}}}"#;
    let (status, body) = support::http_body(
        &worker.http,
        "PUT",
        "/api/v1/preferences",
        Some(&dana),
        Some(("application/json", ask)),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");

    let report = flush(&worker);
    assert!(report.contains("digests sent: 2, leads digested: 4"), "{report}");
    assert!(
        report.contains("left out because their recipient turned them off: 2"),
        "{report}"
    );
    let mail = sorted_mail(&smtp);
    assert!(mail["dana@fabrikam.example"].1.is_empty(), "no digest for Dana");
    for recipient in ["gina@fabrikam.example", "sales@fabrikam.example"] {
        assert_eq!(
            mail[recipient].1,
            [vec!["Company-11".to_string(), "Company-12".to_string()]]
        );
    }
    // Dana's held leads say why, and nothing is held any more.
    let out = worker.cli(&["log", "--recipient", "dana@fabrikam.example", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("log JSON");
    let held: Vec<_> = rows
        .iter()
        .filter(|r| {
            r["channel"] == "email" && ["evt-lead-11", "evt-lead-12"].contains(&r["event_id"].as_str().unwrap())
        })
        .collect();
    assert_eq!(held.len(), 2, "{rows:?}");
    for r in held {
        assert_eq!(r["status"], "suppressed", "{r}");
        assert!(r["rules"].as_array().unwrap().contains(&"preference".into()), "{r}");
    }
    assert!(flush(&worker).contains("digests sent: 0"));
    broker.cleanup().await;
}

async fn leads_count_into_the_partners_own_day_not_utcs(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, smtp, worker) = start("digestday", backend, &[]).await;
    let dir = support::directory_events().len();
    // Twelve leads late on 20 November in Los Angeles (07:00-07:55 UTC on the 21st),
    // then three early on the 21st there (08:00-08:20 UTC). In UTC all fifteen
    // would share one day and five would be held; in Los Angeles two are.
    for n in 1..=12 {
        broker
            .publish(&lead(
                n,
                &format!("2026-11-21T07:{:02}:00Z", n * 4 - 4),
                &format!("Company-{n:02}"),
            ))
            .await;
    }
    for n in 13..=15 {
        broker
            .publish(&lead(
                n,
                &format!("2026-11-21T08:{:02}:00Z", (n - 13) * 10),
                &format!("Company-{n:02}"),
            ))
            .await;
    }
    worker.wait_settled(dir + 15, Duration::from_secs(60)).await;
    smtp.wait_for(39, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(flush(&worker).contains("digests sent: 3, leads digested: 6"));
    let mail = sorted_mail(&smtp);
    for recipient in RECIPIENTS {
        let (single, digests) = &mail[recipient];
        assert_eq!(
            single.len(),
            13,
            "{recipient}: ten of the 20th and all three of the 21st"
        );
        assert_eq!(digests.len(), 1);
        assert_eq!(digests[0].len(), 2, "{recipient}: the 11th and 12th of the 20th");
        for early in ["Company-13", "Company-14", "Company-15"] {
            assert!(
                single.iter().any(|c| c == early),
                "{recipient}: {early} is in a new day"
            );
        }
    }
    broker.cleanup().await;
}

async fn a_flush_killed_mid_send_is_taken_over_and_every_lead_arrives_once(backend: Backend) {
    let _gate = support::shared().await;
    // A lease long enough that the next flush surely starts within it, even on a loaded machine.
    let (broker, smtp, worker) = start("digestcrash", backend, &[("ROUTER__DIGEST__LEASE", "6s")]).await;
    let dir = support::directory_events().len();
    for n in 1..=13 {
        broker
            .publish(&lead(n, "2026-11-20T18:00:00Z", &format!("Company-{n:02}")))
            .await;
    }
    worker.wait_settled(dir + 13, Duration::from_secs(60)).await;
    smtp.wait_for(30, Duration::from_secs(30)).await;

    // A flush claims a digest, connects, and is killed before its message is sent.
    smtp.set_stall(true);
    let mut doomed = worker.spawn_cli(&["digest", "flush"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while smtp.stalled() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the flush never reached the mail server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    smtp.set_stall(false);

    // While its lease runs, the killed flush's digest is left alone...
    let early = flush(&worker);
    assert!(early.contains("being flushed elsewhere: 1"), "{early}");
    // ...and once it has run out, it is taken over.
    tokio::time::sleep(Duration::from_millis(6200)).await;
    assert!(flush(&worker).contains("digests sent: 1, leads digested: 3"));

    let digests: Vec<_> = smtp
        .messages()
        .into_iter()
        .filter(|m| header(m, "X-Router-Notification") == "leads-digest")
        .collect();
    assert_eq!(digests.len(), 3, "one digest per recipient, none twice");
    let mail = sorted_mail(&smtp);
    for recipient in RECIPIENTS {
        let (single, d) = &mail[recipient];
        assert_eq!(single.len(), 10);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].len(), 3, "{recipient}: leads 11 to 13");
    }
    let ids: BTreeSet<String> = digests.iter().map(|m| header(m, "Message-ID")).collect();
    assert_eq!(ids.len(), 3, "distinct digests have distinct Message-IDs");
    broker.cleanup().await;
}

async fn the_worker_flushes_a_finished_day_by_itself(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, smtp, worker) = start("digestauto", backend, &[("ROUTER__DIGEST__CHECK_EVERY", "500ms")]).await;
    let dir = support::directory_events().len();
    // 10 November is long over in Los Angeles: the held lead is due at once.
    for n in 1..=11 {
        broker
            .publish(&lead(n, "2026-11-10T18:00:00Z", &format!("Company-{n:02}")))
            .await;
    }
    worker.wait_settled(dir + 11, Duration::from_secs(60)).await;
    let all = smtp.wait_for(33, Duration::from_secs(30)).await;
    assert_eq!(all.len(), 33, "30 single emails and 3 digests, no command needed");
    let mail = sorted_mail(&smtp);
    // Handled four at a time, so the lead admitted 11th (the held one) is any of them, the same for everyone.
    let held = &mail[RECIPIENTS[0]].1;
    let all: BTreeSet<String> = (1..=11).map(|n| format!("Company-{n:02}")).collect();
    for recipient in RECIPIENTS {
        let (single, digests) = &mail[recipient];
        assert_eq!(single.len(), 10, "{recipient}");
        assert_eq!(digests.len(), 1, "{recipient}: one digest");
        assert_eq!(digests[0].len(), 1, "{recipient}: of the one held lead");
        assert_eq!(digests, held, "{recipient}: the same lead is held for everyone");
        let seen: BTreeSet<String> = single.iter().chain(&digests[0]).cloned().collect();
        assert_eq!(seen, all, "{recipient}: every lead once");
    }
    broker.cleanup().await;
}

async fn expiring_after_accepted_is_suppressed_and_the_log_names_the_rule(backend: Backend) {
    let _gate = support::shared().await;
    let admin = "operator-token-for-tests";
    let (broker, smtp, worker) = start("terminal", backend, &[("ROUTER__HTTP__ADMIN_TOKEN", admin)]).await;
    let dir = support::directory_events().len();
    broker.publish(&example("cosell.opportunity.accepted.json")).await;
    worker.wait_settled(dir + 1, Duration::from_secs(30)).await;
    broker.publish(&example("cosell.opportunity.expiring.json")).await;
    worker.wait_settled(dir + 2, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1, "only the acceptance reached the sender");
    assert_eq!(mails[0].rcpt, ["amy@fabrikam.example"]);

    let out = worker.cli(&["log", "--event", "evt-1004"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "two admins, two channels:\n{text}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("suppressed by no-reminder-after-answer")),
        "{text}"
    );
    assert!(
        text.contains("cara@northwind.example") && text.contains("ida@northwind.example"),
        "{text}"
    );

    let (status, body) = support::http(&worker.http, "GET", "/api/v1/log?event=evt-1004", Some(admin))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 4);
    assert!(
        entries
            .iter()
            .all(|e| e["status"] == "suppressed"
                && e["suppressed_by"] == serde_json::json!(["no-reminder-after-answer"]))
    );
    // The log API is for operators only, and checks its input.
    let (status, _) = support::http(&worker.http, "GET", "/api/v1/log?event=evt-1004", None)
        .await
        .unwrap();
    assert_eq!(status, 401);
    let (status, _) = support::http(&worker.http, "GET", "/api/v1/log?event=evt-1004", Some("guess"))
        .await
        .unwrap();
    assert_eq!(status, 401);
    let (status, _) = support::http(&worker.http, "GET", "/api/v1/log", Some(admin))
        .await
        .unwrap();
    assert_eq!(status, 400);
    let (status, _) = support::http(
        &worker.http,
        "GET",
        "/api/v1/log?event=x&recipient=a%40b.example",
        Some(admin),
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
    broker.cleanup().await;
}

/// Twelve of Fabrikam's leads on one day: ten go out one by one to each
/// recipient and two (Company-11 and -12) are held. Leads are counted in the
/// order they are admitted, so the last two are published once the first ten are in.
async fn twelve_leads(broker: &Broker, smtp: &SmtpSink, worker: &Worker) {
    let dir = support::directory_events().len();
    for n in 1..=12 {
        let time = format!("2026-11-20T17:{:02}:00Z", n * 2);
        broker.publish(&lead(n, &time, &format!("Company-{n:02}"))).await;
        if n == 10 {
            worker.wait_settled(dir + 10, Duration::from_secs(60)).await;
        }
    }
    worker.wait_settled(dir + 12, Duration::from_secs(60)).await;
    smtp.wait_for(30, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.messages().len(), 30, "ten single emails each");
}

/// Starts a worker on a copy of the shipped rules; the copy's folder.
async fn start_on_copied_rules(name: &str, backend: Backend) -> (Broker, SmtpSink, Worker, tempfile::TempDir) {
    let copy = tempfile::tempdir().unwrap();
    fs::copy_dir(&support::root().join("rules"), copy.path());
    let dir = copy.path().display().to_string();
    let (broker, smtp, worker) = start(name, backend, &[("ROUTER__RULES__DIR", dir.as_str())]).await;
    (broker, smtp, worker, copy)
}

/// After the rules changed under held leads: the next flush sends each
/// recipient the two held leads, once, as the digest they were held for.
fn assert_held_leads_still_arrive_once(smtp: &SmtpSink, worker: &Worker) {
    let text = flush(worker);
    assert!(
        text.contains("digests sent: 3, leads digested: 6"),
        "{text}\n{}",
        worker.logs()
    );
    let mail = sorted_mail(smtp);
    for recipient in RECIPIENTS {
        let (single, digests) = &mail[recipient];
        assert_eq!(single.len(), 10, "{recipient}: {single:?}");
        assert_eq!(
            digests,
            &[vec!["Company-11".to_string(), "Company-12".to_string()]],
            "{recipient}"
        );
    }
    assert!(flush(worker).contains("digests sent: 0"));
    assert_eq!(smtp.messages().len(), 33);
    let log = worker.cli(&["log", "--event", "evt-lead-11"]);
    let text = String::from_utf8_lossy(&log.stdout);
    assert_eq!(text.matches("sent in digest").count(), 3, "{text}");
}

async fn held_leads_survive_a_rule_change_that_renames_their_counter(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, smtp, worker, rules) = start_on_copied_rules("digestrename", backend).await;
    twelve_leads(&broker, &smtp, &worker).await;
    let file = rules.path().join("leads.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("counter: contact-me-leads\n"));
    std::fs::write(
        &file,
        text.replace("counter: contact-me-leads\n", "counter: contact-me-leads-v2\n"),
    )
    .unwrap();
    assert_held_leads_still_arrive_once(&smtp, &worker);
    broker.cleanup().await;
}

async fn held_leads_survive_a_rule_change_that_removes_the_digest(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, smtp, worker, rules) = start_on_copied_rules("digestgone", backend).await;
    twelve_leads(&broker, &smtp, &worker).await;
    let file = rules.path().join("leads.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .scan(false, |in_digest, line| {
            if line.trim_start().starts_with("digest:") {
                *in_digest = true;
            } else if *in_digest && !line.starts_with("      ") {
                *in_digest = false;
            }
            Some((!*in_digest).then_some(line))
        })
        .flatten()
        .collect();
    assert!(kept.len() < text.lines().count(), "the digest block was found");
    std::fs::write(&file, kept.join("\n") + "\n").unwrap();
    assert_held_leads_still_arrive_once(&smtp, &worker);
    broker.cleanup().await;
}

async fn a_permanently_refused_digest_recipient_is_marked_failed_and_not_retried(backend: Backend) {
    let _gate = support::shared().await;
    let (broker, smtp, worker) = start("digestrefused", backend, &[]).await;
    twelve_leads(&broker, &smtp, &worker).await;
    smtp.refuse("dana@fabrikam.example");
    let text = flush(&worker);
    assert!(text.contains("digests sent: 2, leads digested: 4"), "{text}");
    assert!(text.contains("refused for good (marked failed): 1"), "{text}");
    assert_eq!(smtp.messages().len(), 32, "the other two recipients' digests");
    // The next flushes leave it alone: nothing held, nothing retried.
    let again = flush(&worker);
    assert!(
        again.contains("digests sent: 0") && !again.contains("refused"),
        "{again}"
    );
    let out = worker.cli(&["log", "--recipient", "dana@fabrikam.example", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("log JSON");
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| r["channel"] == "email" && r["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 2, "{rows:?}");
    assert!(
        failed
            .iter()
            .all(|r| r["error"].as_str().unwrap_or_default().contains("550")),
        "{failed:?}"
    );
    assert!(!rows.iter().any(|r| r["status"] == "held"), "{rows:?}");
    broker.cleanup().await;
}
