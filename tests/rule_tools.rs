//! The rule author's tools, run as the real binary: `rules check` reports
//! file:line:column, `rules test` fails when an expectation changes, and
//! `explain --json` answers for every example event.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "worker/support/fs.rs"]
mod fs;
use fs::copy_dir;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn router(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_referral-router"))
        .args(args)
        .current_dir(ROOT)
        .output()
        .expect("the binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A copy of `rules/` (with its fixtures) in a temporary directory.
fn rules_copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("rules");
    copy_dir(&Path::new(ROOT).join("rules"), &dest);
    (tmp, dest)
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} holds {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn shipped_rules_check_and_every_rule_is_exercised() {
    let out = router(&["rules", "check"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = router(&["rules", "test"]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("every rule is exercised by a fixture"), "{report}");
    assert!(report.contains(" 0 failed"), "{report}");
    assert!(!report.contains("FAIL"), "{report}");
}

#[test]
fn rules_test_fails_when_an_expectation_changes() {
    let (_tmp, rules) = rules_copy();
    edit(
        &rules.join("tests/leads.yaml"),
        "to: sam@wideworld.example, decision: send",
        "to: sam@wideworld.example, decision: suppress",
    );
    let out = router(&["rules", "test", rules.to_str().unwrap()]);
    let report = text(&out);
    assert!(!out.status.success(), "{report}");
    assert!(
        report.contains("FAIL  leads.yaml :: a declined profile lead"),
        "{report}"
    );
    assert!(report.contains("1 failed"), "{report}");
}

#[test]
fn rules_test_fails_when_the_rules_change() {
    let (_tmp, rules) = rules_copy();
    edit(&rules.join("leads.yaml"), "threshold: 10", "threshold: 9");
    let out = router(&["rules", "test", rules.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("FAIL  leads.yaml :: the tenth Contact-me lead"),
        "{}",
        text(&out)
    );
}

#[test]
fn rules_test_lists_rules_no_fixture_exercises() {
    let (_tmp, rules) = rules_copy();
    std::fs::remove_file(rules.join("tests/solutions.yaml")).unwrap();
    let out = router(&["rules", "test", rules.to_str().unwrap()]);
    let report = text(&out);
    assert!(report.contains("rules no fixture exercises:"), "{report}");
    assert!(
        report.contains("solution-validation-failed (") && report.contains("solutions.yaml:3:"),
        "{report}"
    );
}

/// Writes `yaml` over `rules/leads.yaml` in a copy and returns what `rules check` printed.
fn check_with(yaml: &str) -> (bool, String) {
    let (_tmp, rules) = rules_copy();
    std::fs::write(rules.join("leads.yaml"), yaml).unwrap();
    let out = router(&["rules", "check", rules.to_str().unwrap()]);
    let shown = text(&out).replace(rules.to_str().unwrap(), "rules");
    (out.status.success(), shown)
}

const GOOD_RULE: &str = "rules:
  - id: lead-profile-new
    on: [lead.created]
    when:
      data.lead.kind: { equals: profile }
    notify: lead-profile-new
    template: lead-profile-new
    channels: [email]
    to: [lead_profile_contact]
";

#[test]
fn check_accepts_a_well_formed_file() {
    let (ok, shown) = check_with(GOOD_RULE);
    // The fixtures no longer match, but `check` only validates.
    assert!(ok, "{shown}");
}

#[test]
fn check_reports_a_syntax_error_with_its_position() {
    let (ok, shown) = check_with(&GOOD_RULE.replace("channels: [email]", "channels: [email"));
    assert!(!ok);
    // The parser notices the unclosed list where the next key starts.
    assert!(
        shown.contains("rules/leads.yaml:9:7: illegal placement of ':' indicator"),
        "{shown}"
    );
}

#[test]
fn check_rejects_a_duplicate_key_with_its_position() {
    let (ok, shown) = check_with(&GOOD_RULE.replace(
        "    channels: [email]\n",
        "    channels: [email]\n    channels: [action_center]\n",
    ));
    assert!(!ok);
    assert!(
        shown.contains("rules/leads.yaml:9:5: duplicate mapping key: channels"),
        "{shown}"
    );
}

#[test]
fn check_reports_an_unknown_field_with_its_position() {
    let (ok, shown) = check_with(&GOOD_RULE.replace("    channels:", "    chanels:"));
    assert!(!ok);
    assert!(
        shown.contains("rules/leads.yaml:8:5: unknown field `chanels`"),
        "{shown}"
    );
}

#[test]
fn check_reports_an_unknown_selector_with_its_position() {
    let (ok, shown) = check_with(&GOOD_RULE.replace("[lead_profile_contact]", "[lead_profile_contactt]"));
    assert!(!ok);
    assert!(
        shown.contains("rules/leads.yaml:9:10: unknown selector `lead_profile_contactt`"),
        "{shown}"
    );
}

#[test]
fn check_reports_a_bad_matcher_with_its_position() {
    let (ok, shown) = check_with(&GOOD_RULE.replace("{ equals: profile }", "{ equals: profile, in: [offer] }"));
    assert!(!ok);
    assert!(shown.contains("rules/leads.yaml:5:"), "{shown}");
    assert!(
        shown.contains("exactly one of `equals`, `in`, `not_in` or `exists`"),
        "{shown}"
    );
    let (ok, shown) = check_with(&GOOD_RULE.replace("{ equals: profile }", "{ matches: profile }"));
    assert!(!ok);
    assert!(
        shown.contains("rules/leads.yaml:5:") && shown.contains("unknown field `matches`"),
        "{shown}"
    );
}

#[test]
fn check_rejects_rules_that_can_never_fire() {
    let cases = [
        (
            GOOD_RULE.replace("data.lead.kind", "data.lead.knd"),
            "path `data.lead.knd` does not exist in lead.created",
        ),
        (
            GOOD_RULE.replace("{ equals: profile }", "{ in: [] }"),
            "`in: []` can never match",
        ),
        (
            GOOD_RULE.replace("on: [lead.created]", "on: []"),
            "`on` lists no event type",
        ),
        (
            GOOD_RULE.replace("on: [lead.created]", "on: [lead.teleported]"),
            "unknown variant `lead.teleported`",
        ),
        (
            GOOD_RULE.replace("channels: [email]", "channels: []"),
            "it names no `channels`",
        ),
        (
            GOOD_RULE.replace("to: [lead_profile_contact]", "to: [inviting_member]"),
            "selector `inviting_member` reads `data.sender.invited_by` does not exist in lead.created",
        ),
        (
            format!("{GOOD_RULE}    for_each: receiver\n"),
            "`for_each: receiver` but lead.created has no receiver",
        ),
        (
            format!("{GOOD_RULE}  - id: quiet\n    on: [lead.expired]\n    suppress: [lead-profile-new]\n"),
            "rule `quiet` can never fire: no rule sends `lead-profile-new` for its events",
        ),
        (
            GOOD_RULE.replace("notify: lead-profile-new", "notify: lead-profile-old"),
            "unknown notification `lead-profile-old`",
        ),
        (
            format!("{GOOD_RULE}{}", GOOD_RULE.replace("rules:\n", "")),
            "rule id `lead-profile-new` is used twice",
        ),
        (
            GOOD_RULE.replace("id: lead-profile-new", "id: preference"),
            "rule id `preference` is reserved",
        ),
        (
            format!("notifications:\n  lead-teaser:\n    title: Teaser\n    category: gossip\n{GOOD_RULE}"),
            "names category `gossip`, which is not declared under `categories`",
        ),
    ];
    for (yaml, message) in cases {
        let (ok, shown) = check_with(&yaml);
        assert!(!ok, "accepted:\n{yaml}");
        assert!(shown.contains("rules/leads.yaml:"), "{shown}");
        assert!(shown.contains(message), "wanted {message:?} in:\n{shown}");
    }
}

#[test]
fn explain_json_answers_for_every_example_event() {
    let events = Path::new(ROOT).join("rules/tests/events");
    let mut names: Vec<_> = std::fs::read_dir(&events).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    assert_eq!(names.len(), 19);
    for event in names {
        let out = router(&[
            "explain",
            event.to_str().unwrap(),
            "--directory",
            "rules/tests/directory.jsonl",
            "--json",
        ]);
        assert!(out.status.success(), "{}: {}", event.display(), text(&out));
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
        let deliveries = plan["deliveries"].as_array().expect("a deliveries array");
        for d in deliveries {
            for key in ["notification", "channel", "recipient", "decision", "rules"] {
                assert!(!d[key].is_null(), "{}: delivery without {key}: {d}", event.display());
            }
            assert!(["send", "hold", "suppress"].contains(&d["decision"].as_str().unwrap()));
            assert!(d["recipient"].as_str().unwrap().contains('@'));
        }
        let is_directory = event.file_name().unwrap().to_str().unwrap().starts_with("directory.");
        let is_informational = event.ends_with("lead.created.free_trial.json");
        assert_eq!(
            deliveries.is_empty(),
            is_directory || is_informational,
            "{}",
            event.display()
        );
        assert!(plan["rules"].as_array().unwrap().len() >= 23, "every rule is explained");
    }
}

#[test]
fn explain_text_says_why_a_rule_did_not_match() {
    let out = router(&[
        "explain",
        "rules/tests/events/lead.created.free_trial.json",
        "--directory",
        "rules/tests/directory.jsonl",
    ]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("(none)"), "{shown}");
    assert!(
        shown.contains("- lead-contact-me: data.lead.call_to_action is \"free_trial\", wanted equals \"contact_me\""),
        "{shown}"
    );
}

#[test]
fn explain_rejects_bad_input_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, r#"{"specversion":"1.0","id":"x","source":"s","type":"lead.created","time":"2026-11-20T09:15:00Z","data":{"lead":{}}}"#).unwrap();
    let out = router(&["explain", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("data.lead: missing field"), "{}", text(&out));
    let dir = tmp.path().join("dir.jsonl");
    std::fs::write(&dir, "{\"not\": \"an event\"}\n").unwrap();
    let out = router(&[
        "explain",
        "rules/tests/events/lead.declined.json",
        "--directory",
        dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("dir.jsonl:1:"), "{}", text(&out));
}

#[test]
fn every_configuration_problem_is_reported_at_once_naming_its_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_referral-router"))
        .args(["log", "--event", "evt-1"])
        .env("ROUTER__AMQP__PREFECH", "5")
        .env("ROUTER__SMTP__TIMEOUT", "soon")
        .env("ROUTER__STORE__MAX_CONNECTIONS", "many")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for expected in [
        "amqp.prefech (from ROUTER__AMQP__PREFECH) is not a setting",
        "smtp.timeout (from ROUTER__SMTP__TIMEOUT): `soon`",
        "store.max_connections (from ROUTER__STORE__MAX_CONNECTIONS): invalid type",
    ] {
        assert_eq!(err.matches(expected).count(), 1, "{expected}\n{err}");
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("router.toml");
    std::fs::write(&file, "[amqp]\nprefetch = 0\n[http]\naddr = \"nowhere\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_referral-router"))
        .args(["log", "--event", "evt-1", "--config", file.to_str().unwrap()])
        .env("ROUTER__HTTP__ADDR", "still-nowhere")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("amqp.prefetch must be at least 1"), "{err}");
    assert!(
        err.contains("http.addr (from ROUTER__HTTP__ADDR) `still-nowhere` is not HOST:PORT"),
        "{err}"
    );
}

#[test]
fn a_secret_can_come_from_a_file_and_a_missing_file_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("smtp-password");
    // As a Kubernetes Secret is mounted: the value, then a newline.
    std::fs::write(&secret, "hunter2-from-a-file\n").unwrap();
    let run = |vars: &[(&str, String)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_referral-router"));
        cmd.args(["log", "--event", "evt-1"])
            .env(
                "ROUTER__STORE__URL",
                format!("sqlite://{}/router.db", dir.path().display()),
            )
            .env("ROUTER__SMTP__HOST", "mail.example");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // Read from the file it is a valid password: only the username is missing.
    let (ok, err) = run(&[("ROUTER__SMTP__PASSWORD__FILE", secret.display().to_string())]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("smtp.username and smtp.password are set together"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "a secret never appears in a message: {err}");
    let (ok, err) = run(&[
        ("ROUTER__SMTP__PASSWORD__FILE", secret.display().to_string()),
        ("ROUTER__SMTP__USERNAME", "router".into()),
    ]);
    assert!(ok, "{err}");
    let missing = dir.path().join("not-there");
    let (ok, err) = run(&[("ROUTER__SMTP__PASSWORD__FILE", missing.display().to_string())]);
    assert!(!ok);
    assert!(
        err.contains("smtp.password (from ROUTER__SMTP__PASSWORD__FILE): cannot read"),
        "{err}"
    );
    let (ok, err) = run(&[
        ("ROUTER__SMTP__PASSWORD__FILE", secret.display().to_string()),
        ("ROUTER__SMTP__PASSWORD", "inline".into()),
    ]);
    assert!(!ok);
    assert!(
        err.contains("smtp.password (from ROUTER__SMTP__PASSWORD__FILE) is also set by ROUTER__SMTP__PASSWORD"),
        "{err}"
    );
}
