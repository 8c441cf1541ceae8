//! `rules test`: runs the fixture cases under `rules/tests/` against the rules.
//! A case holds an event, a directory, state, the deliveries it must produce
//! (all of them) and the people who must not be reached.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::{read_directory, read_jsonl};
use crate::decode::decode_structured;
use crate::directory::Directory;
use crate::event::{EmailAddress, Event};
use crate::route::rules::Channel;
use crate::route::{Decision, Plan, RuleSet, route};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureFile {
    /// The directory file every case uses unless it names its own.
    #[serde(default)]
    directory: Option<String>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// An event file, relative to the fixture file.
    event: String,
    /// Values to set in the event before routing: `data.referral.origin: bulk_upload`.
    #[serde(default)]
    patch: std::collections::BTreeMap<String, Value>,
    #[serde(default)]
    directory: Option<String>,
    /// Extra directory events applied after the directory file (one CloudEvent
    /// per line, the same as the file).
    #[serde(default)]
    directory_events: Option<String>,
    #[serde(default)]
    state: CaseState,
    #[serde(default)]
    expect: Vec<Expected>,
    #[serde(default)]
    never: Vec<Never>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CaseState {
    /// The status already recorded for the event's referral and each receiver.
    receiver_status: Option<String>,
    referral_status: Option<String>,
    /// This event's position among the day's counted items (11 = the 11th lead).
    digest_position: Option<u32>,
}

#[derive(Deserialize, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
struct Expected {
    notification: String,
    channel: Channel,
    to: String,
    decision: DecisionName,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[serde(rename_all = "snake_case")]
enum DecisionName {
    Send,
    Hold,
    Suppress,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Never {
    notification: String,
    to: String,
}

/// The outcome of `rules test`.
pub struct Report {
    pub text: String,
    pub failed: usize,
    pub passed: usize,
    pub unexercised: Vec<String>,
}

/// Runs every `*.yaml` fixture in `rules_dir/tests` against the rules in `rules_dir`.
pub fn run(rules_dir: &Path) -> Result<Report, String> {
    let rules = RuleSet::load_dir(rules_dir).map_err(|e| e.to_string())?;
    let tests_dir = rules_dir.join("tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&tests_dir)
        .map_err(|e| format!("{}: {e}", tests_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    let mut report = Report {
        text: String::new(),
        failed: 0,
        passed: 0,
        unexercised: Vec::new(),
    };
    let mut exercised = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let fixture: FixtureFile = serde_saphyr::from_str(&text).map_err(|e| {
            let l = e.location();
            let (line, col) = l.map_or((0, 0), |l| (l.line(), l.column()));
            format!("{}:{line}:{col}: {}", file.display(), e.without_snippet())
        })?;
        let base = file.parent().unwrap_or(Path::new("."));
        for case in &fixture.cases {
            let title = format!(
                "{} :: {}",
                file.file_name().unwrap_or_default().to_string_lossy(),
                case.name
            );
            match run_case(case, fixture.directory.as_deref(), base, &rules) {
                Ok((plan, problems)) => {
                    for t in plan.trace.iter().filter(|t| t.matched) {
                        exercised.insert(t.rule.clone());
                    }
                    if problems.is_empty() {
                        report.passed += 1;
                        report.text.push_str(&format!("pass  {title}\n"));
                    } else {
                        report.failed += 1;
                        report.text.push_str(&format!("FAIL  {title}\n"));
                        for p in problems {
                            report.text.push_str(&format!("      {p}\n"));
                        }
                    }
                }
                Err(e) => {
                    report.failed += 1;
                    report.text.push_str(&format!("FAIL  {title}\n      {e}\n"));
                }
            }
        }
    }
    report.unexercised = rules
        .rules
        .iter()
        .filter(|r| !exercised.contains(&r.id))
        .map(|r| format!("{} ({})", r.id, r.location))
        .collect();
    if report.unexercised.is_empty() {
        report.text.push_str("every rule is exercised by a fixture\n");
    } else {
        report.text.push_str("rules no fixture exercises:\n");
        for r in &report.unexercised {
            report.text.push_str(&format!("  {r}\n"));
        }
    }
    report
        .text
        .push_str(&format!("{} passed, {} failed\n", report.passed, report.failed));
    Ok(report)
}

fn run_case(
    case: &Case,
    default_dir: Option<&str>,
    base: &Path,
    rules: &RuleSet,
) -> Result<(Plan, Vec<String>), String> {
    let event = case_event(case, base)?;
    let dir = case_directory(case, default_dir, base)?;
    let state = super::seeded_state(
        &event,
        rules,
        &dir,
        case.state.receiver_status.as_deref(),
        case.state.referral_status.as_deref(),
        case.state.digest_position,
    );
    let plan = route(&event, rules, &dir, &state);
    let mut problems = mismatches(&case.expect, &plan)?;
    problems.extend(breaches(&case.never, &plan)?);
    Ok((plan, problems))
}

/// The case's event file, with its patch applied.
fn case_event(case: &Case, base: &Path) -> Result<Event, String> {
    let event_path = base.join(&case.event);
    let mut json: Value =
        serde_json::from_slice(&std::fs::read(&event_path).map_err(|e| format!("{}: {e}", event_path.display()))?)
            .map_err(|e| format!("{}: {e}", event_path.display()))?;
    for (path, value) in &case.patch {
        set_path(&mut json, path, value.clone())?;
    }
    decode_structured(&serde_json::to_vec(&json).expect("a JSON value serializes"))
        .map_err(|e| format!("{}: {e}", event_path.display()))
}

/// The case's directory (its own file or the fixture's), with its extra
/// directory events applied.
fn case_directory(case: &Case, default_dir: Option<&str>, base: &Path) -> Result<Directory, String> {
    let mut dir = match case.directory.as_deref().or(default_dir) {
        Some(d) => read_directory(&base.join(d)).map_err(|e| e.to_string())?,
        None => Directory::new(),
    };
    if let Some(extra) = &case.directory_events {
        for e in read_jsonl(&base.join(extra)).map_err(|e| e.to_string())? {
            dir.apply(&e);
        }
    }
    Ok(dir)
}

/// A delivery as a case names it: notification, channel, address, decision.
type Planned = (String, Channel, String, DecisionName);

/// The expected deliveries that were not planned, and the planned ones that
/// were not expected.
fn mismatches(expect: &[Expected], plan: &Plan) -> Result<Vec<String>, String> {
    let actual: BTreeSet<Planned> = plan
        .deliveries
        .iter()
        .map(|d| {
            let decision = match d.decision {
                Decision::Send => DecisionName::Send,
                Decision::Hold => DecisionName::Hold,
                Decision::Suppress => DecisionName::Suppress,
            };
            (d.notification.clone(), d.channel, d.recipient.email.key(), decision)
        })
        .collect();
    let mut expected = BTreeSet::new();
    for e in expect {
        let to = EmailAddress::parse(&e.to).map_err(|err| format!("expect: {err}"))?;
        expected.insert((e.notification.clone(), e.channel, to.key(), e.decision));
    }
    let mut problems = Vec::new();
    for missing in expected.difference(&actual) {
        problems.push(format!(
            "expected {:?} {} to {} ({}), but it was not planned",
            missing.3, missing.0, missing.2, missing.1
        ));
    }
    for extra in actual.difference(&expected) {
        let rules_of = plan
            .deliveries
            .iter()
            .find(|d| d.notification == extra.0 && d.channel == extra.1 && d.recipient.email.key() == extra.2)
            .map(|d| d.rules.join(", "))
            .unwrap_or_default();
        problems.push(format!(
            "unexpected {:?} {} to {} ({}), by rules {rules_of}",
            extra.3, extra.0, extra.2, extra.1
        ));
    }
    Ok(problems)
}

/// The people a notification must never reach that it does reach (a
/// suppressed delivery does not count).
fn breaches(never: &[Never], plan: &Plan) -> Result<Vec<String>, String> {
    let mut problems = Vec::new();
    for n in never {
        let to = EmailAddress::parse(&n.to).map_err(|err| format!("never: {err}"))?;
        if plan
            .deliveries
            .iter()
            .any(|d| d.notification == n.notification && d.recipient.email == to && d.decision != Decision::Suppress)
        {
            problems.push(format!("{} must never reach {}, but it does", n.notification, n.to));
        }
    }
    Ok(problems)
}

fn set_path(root: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let mut node = root;
    let segments: Vec<&str> = path.split('.').collect();
    let (last, parents) = segments.split_last().ok_or("empty patch path")?;
    for s in parents {
        node = node
            .get_mut(*s)
            .filter(|n| n.is_object())
            .ok_or_else(|| format!("patch `{path}`: `{s}` is not an object in the event"))?;
    }
    node.as_object_mut()
        .ok_or_else(|| format!("patch `{path}`: not an object"))?
        .insert((*last).to_string(), value);
    Ok(())
}
