//! `replay` as the real binary: state carried across events, the difference
//! two rule sets make, and bad lines reported by number.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

#[path = "worker/support/fs.rs"]
mod fs;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn router(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_referral-router"))
        .args(args)
        .current_dir(ROOT)
        .output()
        .expect("the binary runs")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn example(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(Path::new(ROOT).join("rules/tests/events").join(name)).unwrap())
        .unwrap()
}

/// Fabrikam's Contact-me lead `n` of 20 November (Los Angeles), a minute apart.
fn lead(n: usize) -> Value {
    let mut v = example("lead.created.contact_me.json");
    v["id"] = format!("evt-r-{n}").into();
    v["time"] = format!("2026-11-20T17:{n:02}:00Z").into();
    v["data"]["lead"]["id"] = format!("lead-r-{n}").into();
    v
}

fn write_jsonl(dir: &Path, name: &str, events: &[Value]) -> PathBuf {
    let path = dir.join(name);
    let text: String = events.iter().map(|e| e.to_string() + "\n").collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn deliveries(v: &Value) -> Vec<Value> {
    v["deliveries"].as_array().cloned().unwrap_or_default()
}

fn of<'a>(rows: &'a [Value], event: &str, notification: &str, channel: &str) -> Vec<&'a Value> {
    rows.iter()
        .filter(|r| r["event"] == event && r["notification"] == notification && r["channel"] == channel)
        .collect()
}

#[test]
fn state_carries_from_one_event_to_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let mut events: Vec<Value> = (1..=11).map(lead).collect();
    events.push(example("cosell.opportunity.accepted.json"));
    events.push(example("cosell.opportunity.expiring.json"));
    let file = write_jsonl(tmp.path(), "week.jsonl", &events);
    let out = router(&[
        "replay",
        "--directory",
        "rules/tests/directory.jsonl",
        "--json",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let rows = deliveries(&json(&out));
    for n in 1..=10 {
        let emails = of(&rows, &format!("evt-r-{n}"), "lead-generated", "email");
        assert_eq!(emails.len(), 3, "lead {n}");
        assert!(emails.iter().all(|r| r["decision"] == "send"), "lead {n}: {emails:?}");
    }
    let eleventh = of(&rows, "evt-r-11", "lead-generated", "email");
    assert_eq!(eleventh.len(), 3);
    assert!(
        eleventh.iter().all(|r| r["decision"] == "hold" && r["digest"] == 1),
        "{eleventh:?}"
    );
    let digests = of(&rows, "evt-r-11", "leads-digest", "email");
    assert_eq!(digests.len(), 3, "one digest each, flushed at the end: {rows:?}");
    assert!(digests.iter().all(|r| r["digest"] == 1 && r["decision"] == "send"));
    let reminders = of(&rows, "evt-1004", "cosell-incoming-expiring", "email");
    assert_eq!(reminders.len(), 2, "{rows:?}");
    assert!(
        reminders
            .iter()
            .all(|r| r["decision"] == "suppress" && r["suppressed_by"][0] == "no-reminder-after-answer"),
        "{reminders:?}"
    );

    let text = router(&[
        "replay",
        "--directory",
        "rules/tests/directory.jsonl",
        file.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("13 events replayed"), "{text}");
    assert_eq!(
        text.matches("suppressed by no-reminder-after-answer: 2").count(),
        2,
        "email and Action Center: {text}"
    );
}

/// A copy of the shipped rules, changed by `edit`.
fn changed_rules(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    fs::copy_dir(&Path::new(ROOT).join("rules"), copy.path());
    edit(copy.path());
    copy
}

#[test]
fn a_lower_threshold_moves_exactly_leads_six_to_ten_from_send_to_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write_jsonl(tmp.path(), "day.jsonl", &(1..=10).map(lead).collect::<Vec<_>>());
    let five = changed_rules(|dir| {
        let path = dir.join("leads.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("threshold: 10"));
        std::fs::write(&path, text.replace("threshold: 10", "threshold: 5")).unwrap();
    });
    let args = [
        "replay",
        "--directory",
        "rules/tests/directory.jsonl",
        "--against",
        "rules",
        "--rules",
        five.path().to_str().unwrap(),
        "--json",
        file.to_str().unwrap(),
    ];
    let out = router(&args);
    assert_eq!(out.status.code(), Some(1), "a difference exits 1");
    let d = json(&out);
    assert_eq!(d["events"], 10);
    let changed = d["changed"].as_array().unwrap();
    assert_eq!(changed.len(), 15, "leads 6-10 for three recipients: {changed:?}");
    for c in changed {
        let n: usize = c["event"]
            .as_str()
            .unwrap()
            .trim_start_matches("evt-r-")
            .parse()
            .unwrap();
        assert!((6..=10).contains(&n), "{c}");
        assert_eq!(
            (c["notification"].as_str(), c["channel"].as_str()),
            (Some("lead-generated"), Some("email"))
        );
        assert_eq!(
            (c["from"]["decision"].as_str(), c["to"]["decision"].as_str()),
            (Some("send"), Some("hold"))
        );
    }
    let added = d["added"].as_array().unwrap();
    assert_eq!(added.len(), 3, "a digest for each recipient: {added:?}");
    assert!(
        added
            .iter()
            .all(|a| a["notification"] == "leads-digest" && a["event"] == "evt-r-6")
    );
    assert_eq!(d["removed"].as_array().unwrap().len(), 0);
    assert_eq!(d["summary"]["changed"], 15);

    let text = router(
        &args[..args.len() - 2]
            .iter()
            .chain([&args[args.len() - 1]])
            .copied()
            .collect::<Vec<_>>(),
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("changed  lead-generated (email): 15"), "{text}");

    let same = router(&[
        "replay",
        "--directory",
        "rules/tests/directory.jsonl",
        "--against",
        "rules",
        file.to_str().unwrap(),
    ]);
    assert_eq!(same.status.code(), Some(0), "{}", String::from_utf8_lossy(&same.stdout));
}

#[test]
fn removing_a_rule_removes_exactly_its_deliveries() {
    let examples: Vec<String> = {
        let mut names: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("rules/tests/events"))
            .unwrap()
            .map(|e| e.unwrap().path().display().to_string())
            .collect();
        names.sort();
        names
    };
    let rule = "solution-validation-passed";
    let without = changed_rules(|dir| {
        let path = dir.join("solutions.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text.find(&format!("  - id: {rule}")).expect("the rule");
        let end = text[start + 1..]
            .find("\n  - id: ")
            .map_or(text.len(), |i| start + 1 + i + 1);
        std::fs::write(&path, format!("{}{}", &text[..start], &text[end..])).unwrap();
    });
    let mut base_args = vec!["replay", "--directory", "rules/tests/directory.jsonl", "--json"];
    base_args.extend(examples.iter().map(String::as_str));
    let base = deliveries(&json(&router(&base_args)));
    let expected: Vec<(String, String, String, String)> = base
        .iter()
        .filter(|r| r["rules"].as_array().unwrap().iter().any(|id| id == rule))
        .map(key)
        .collect();
    assert!(!expected.is_empty(), "the rule plans something in the examples");
    let mut args = vec![
        "replay",
        "--directory",
        "rules/tests/directory.jsonl",
        "--against",
        "rules",
        "--rules",
        without.path().to_str().unwrap(),
        "--json",
    ];
    args.extend(examples.iter().map(String::as_str));
    let out = router(&args);
    assert_eq!(out.status.code(), Some(1));
    let d = json(&out);
    let mut removed: Vec<_> = d["removed"].as_array().unwrap().iter().map(key).collect();
    removed.sort();
    let mut expected = expected;
    expected.sort();
    assert_eq!(removed, expected);
    assert_eq!(d["added"].as_array().unwrap().len(), 0, "{d}");
    assert_eq!(d["changed"].as_array().unwrap().len(), 0, "{d}");
}

fn key(r: &Value) -> (String, String, String, String) {
    let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
    (s("event"), s("notification"), s("channel"), s("recipient"))
}

#[test]
fn bad_lines_are_reported_with_their_numbers_and_the_rest_replayed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broken = lead(3);
    broken["data"]["lead"].as_object_mut().unwrap().remove("customer");
    let path = tmp.path().join("mixed.jsonl");
    let text = format!("{}\nnot json at all\n# a comment\n{}\n{}\n", lead(1), broken, lead(2));
    std::fs::write(&path, text).unwrap();
    let out = router(&[
        "replay",
        "--directory",
        "rules/tests/directory.jsonl",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let file = path.display().to_string();
    assert!(text.contains(&format!("{file}:2: not JSON")), "{text}");
    assert!(
        text.contains(&format!("{file}:4: bad `data`")) && text.contains("customer"),
        "{text}"
    );
    assert!(text.contains("2 line(s) skipped"), "{text}");
    assert!(text.contains("2 events replayed"), "{text}");
    let missing = router(&["replay", "no/such/file.jsonl"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no/such/file.jsonl"));
}
