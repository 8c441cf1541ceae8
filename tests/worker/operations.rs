//! Operating the worker: SIGHUP reloads rules and templates (a broken set is
//! rejected and the old one keeps serving), and with no SMTP host mail lands
//! as `.eml` files.

use std::time::{Duration, Instant};

use crate::support::{self, Backend, example, on_both_backends};

on_both_backends!(
    sighup_reloads_rules_and_rejects_a_broken_set,
    sighup_reloads_templates_and_rejects_a_broken_one,
    without_an_smtp_host_mail_is_written_as_eml_files,
    log_tells_never_seen_routed_to_nobody_and_dead_lettered_apart,
);

async fn rules_hash(worker: &support::Worker) -> String {
    let (_, metrics) = support::http(&worker.http, "GET", "/metrics", None).await.unwrap();
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("router_rules_info{hash=\"")?
                .split('"')
                .next()
                .map(str::to_owned)
        })
        .expect("a rules hash metric")
}

async fn wait_log(worker: &support::Worker, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !worker.logs().contains(needle) {
        assert!(Instant::now() < deadline, "`{needle}` not logged:\n{}", worker.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sighup_reloads_rules_and_rejects_a_broken_set(backend: Backend) {
    let _gate = support::shared().await;
    let rules = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(support::root().join("rules")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, rules.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let dir = rules.path().display().to_string();
    let (broker, smtp, worker) = support::start("reload", backend, &[("ROUTER__RULES__DIR", &dir)]).await;
    let first = rules_hash(&worker).await;

    // A typo in a rule: rejected, and the old set still routes.
    let leads = rules.path().join("leads.yaml");
    let good = std::fs::read_to_string(&leads).unwrap();
    std::fs::write(&leads, good.replace("to: [lead_customer]", "to: [lead_custmer]")).unwrap();
    worker.signal("HUP");
    wait_log(&worker, "reload rejected").await;
    assert!(worker.logs().contains("unknown selector `lead_custmer`"));
    assert_eq!(rules_hash(&worker).await, first);
    broker.publish(&example("lead.declined.json")).await;
    assert_eq!(smtp.wait_for(1, Duration::from_secs(20)).await.len(), 1);

    // A good change: served, and the metric shows the new hash.
    std::fs::write(&leads, format!("{good}\n# reviewed\n")).unwrap();
    worker.signal("HUP");
    wait_log(&worker, "rules reloaded").await;
    assert_ne!(rules_hash(&worker).await, first);
    broker.cleanup().await;
}

async fn sighup_reloads_templates_and_rejects_a_broken_one(backend: Backend) {
    let _gate = support::shared().await;
    let templates = tempfile::tempdir().unwrap();
    support::fs::copy_dir(&support::root().join("templates"), templates.path());
    let dir = templates.path().display().to_string();
    let (broker, smtp, worker) = support::start("treload", backend, &[("ROUTER__TEMPLATES__DIR", &dir)]).await;
    let subject_of = |n: usize| {
        let got = smtp.messages();
        got[n].parsed().subject().unwrap_or_default().to_string()
    };
    broker.publish(&example("lead.declined.json")).await;
    smtp.wait_for(1, Duration::from_secs(20)).await;
    let before = subject_of(0);

    // A misspelt field in a subject: the whole set is rejected, the old one keeps rendering.
    let notification = templates.path().join("lead-customer-redirected");
    let subjects: Vec<_> = ["en-US", "de-DE"]
        .map(|l| notification.join(l).join("subject.hbs"))
        .into();
    let good: Vec<String> = subjects.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    std::fs::write(&subjects[0], "Declined: {{data.lead.custmer.name}}\n").unwrap();
    worker.signal("HUP");
    wait_log(&worker, "reload rejected").await;
    assert!(
        worker.logs().contains("lead-customer-redirected/en-US/subject.hbs:1"),
        "{}",
        worker.logs()
    );
    let mut republished: serde_json::Value = serde_json::from_slice(&example("lead.declined.json")).unwrap();
    republished["id"] = "lead-declined-again".into();
    broker.publish(&serde_json::to_vec(&republished).unwrap()).await;
    smtp.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(subject_of(1), before, "the previous templates still serve");

    // Mended with new wording: served from the next event on.
    for (path, text) in subjects.iter().zip(&good) {
        std::fs::write(path, format!("Update: {text}")).unwrap();
    }
    worker.signal("HUP");
    wait_log(&worker, "rules reloaded").await;
    republished["id"] = "lead-declined-third".into();
    broker.publish(&serde_json::to_vec(&republished).unwrap()).await;
    smtp.wait_for(3, Duration::from_secs(20)).await;
    assert!(subject_of(2).starts_with("Update: "), "{}", subject_of(2));
    broker.cleanup().await;
}

async fn without_an_smtp_host_mail_is_written_as_eml_files(backend: Backend) {
    let _gate = support::shared().await;
    let outbox = tempfile::tempdir().unwrap();
    let dir = outbox.path().display().to_string();
    let (broker, _smtp, worker) = support::start(
        "files",
        backend,
        &[("ROUTER__SMTP__HOST", ""), ("ROUTER__SMTP__OUTBOX_DIR", &dir)],
    )
    .await;
    broker.publish(&example("cosell.solution.validation_passed.json")).await;
    worker
        .wait_settled(support::directory_events().len() + 1, Duration::from_secs(20))
        .await;
    let files: Vec<_> = std::fs::read_dir(outbox.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    assert_eq!(files.len(), 1, "log:\n{}", worker.logs());
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        name, "evt-3002.solution-validation-passed.ben@fabrikam.example.eml",
        "named by event, notification and recipient"
    );
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("To: \"Ben Brooks\" <ben@fabrikam.example>") || text.contains("ben@fabrikam.example"));
    assert!(text.contains("multipart/alternative"), "{text}");
    broker.cleanup().await;
}

async fn log_tells_never_seen_routed_to_nobody_and_dead_lettered_apart(backend: Backend) {
    let _gate = support::shared().await;
    let admin = "operator-token-for-the-log";
    let (broker, _smtp, worker) = support::start("logkinds", backend, &[("ROUTER__HTTP__ADMIN_TOKEN", admin)]).await;
    let mut broken: serde_json::Value = serde_json::from_slice(&example("lead.created.contact_me.json")).unwrap();
    broken["id"] = "evt-broken-lead".into();
    broken["data"]["lead"].as_object_mut().unwrap().remove("customer");
    broker.publish(&serde_json::to_vec(&broken).unwrap()).await;
    broker.dead_letters(1, Duration::from_secs(20)).await;
    worker
        .wait_settled(support::directory_events().len() + 1, Duration::from_secs(20))
        .await;
    let log = |id: &str| {
        let out = worker.cli(&["log", "--event", id]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dead = log("evt-broken-lead");
    assert!(
        dead.contains("dead-lettered (bad_data)") && dead.contains("customer"),
        "{dead}"
    );
    let nobody = log("dir-0001");
    assert!(
        nobody.contains("seen (directory.partner.upserted) and routed to nobody"),
        "{nobody}"
    );
    assert!(log("evt-no-such-event").contains("never seen"));
    let api = |id: &str| {
        let path = format!("/api/v1/log?event={id}");
        let http = worker.http.clone();
        async move {
            let (status, body) = support::http(&http, "GET", &path, Some(admin)).await.unwrap();
            assert_eq!(status, 200, "{body}");
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["event"].clone()
        }
    };
    let dead = api("evt-broken-lead").await;
    assert_eq!(
        (dead["state"].as_str(), dead["reason"].as_str()),
        (Some("dead_lettered"), Some("bad_data"))
    );
    assert_eq!(api("dir-0001").await["state"], "seen");
    assert_eq!(api("evt-no-such-event").await["state"], "unknown");
    broker.cleanup().await;
}
