//! `replay`: routes files of events (or the store's archive) in order through
//! a rule set, with state carried across events, sending nothing; with
//! `--against`, through two rule sets, and prints what the change would do.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use crate::decode::{decode_structured, read_directory};
use crate::directory::Directory;
use crate::event::Event;
use crate::replay::diff::{Diff, diff};
use crate::replay::{Engine, Planned, replay, summary};
use crate::serving::ServingSet;

/// A line (or file) that is not an event: reported, counted, and skipped.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BadLine {
    pub file: String,
    /// 1-based; 0 for a `.json` file of one event.
    pub line: usize,
    pub error: String,
}

/// Events read from files, in order, with the lines that were not events.
#[derive(Debug, Default)]
pub struct Input {
    pub events: Vec<Event>,
    pub bad: Vec<BadLine>,
}

/// Reads `.json` files (one event each) and `.jsonl` files (one per line; blank lines and `#` comments skipped).
pub fn read_inputs(files: &[PathBuf]) -> Result<Input, String> {
    let mut input = Input::default();
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let bad = |line: usize, error: String| BadLine {
            file: file.display().to_string(),
            line,
            error,
        };
        if file.extension().is_some_and(|e| e == "jsonl") {
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                match decode_structured(line.as_bytes()) {
                    Ok(event) => input.events.push(event),
                    Err(e) => input.bad.push(bad(i + 1, e.to_string())),
                }
            }
        } else {
            match decode_structured(text.as_bytes()) {
                Ok(event) => input.events.push(event),
                Err(e) => input.bad.push(bad(0, e.to_string())),
            }
        }
    }
    Ok(input)
}

/// Which rule sets to replay through.
pub struct Sets<'a> {
    pub rules: &'a Path,
    pub templates: &'a Path,
    /// The base to compare with (`--against`, `--against-templates`).
    pub against: Option<(&'a Path, &'a Path)>,
}

/// What a replay prints (its text, or with `--json` its JSON), and how it
/// exits: 0, or 1 for a difference.
pub struct Report {
    pub out: String,
    /// For stderr: the lines that were not events, when `out` is JSON.
    pub notes: String,
    pub differs: bool,
}

fn load(rules: &Path, templates: &Path) -> Result<ServingSet, String> {
    ServingSet::load(
        rules,
        templates,
        &crate::serving::Addresses::portal(crate::cli::templates::PREVIEW_PORTAL),
    )
    .map_err(|e| e.to_string())
}

/// Replays `input` from `directory` through the set(s).
pub fn run(sets: &Sets<'_>, directory: &Directory, input: &Input, json: bool) -> Result<Report, String> {
    let change = load(sets.rules, sets.templates)?;
    let Some((base_rules, base_templates)) = sets.against else {
        let engine = Engine {
            rules: &change.rules,
            templates: None,
        };
        let (planned, duplicates) = replay(&engine, directory.clone(), &input.events);
        return Ok(plain(input, &planned, duplicates, json));
    };
    let base = load(base_rules, base_templates)?;
    // Subjects can differ only when the templates do.
    let subjects = base_templates != sets.templates;
    // The two replays are independent: side by side.
    let ((from, _), (to, duplicates)) = std::thread::scope(|scope| {
        let base = scope.spawn(|| replay(&engine(&base, subjects), directory.clone(), &input.events));
        let change = replay(&engine(&change, subjects), directory.clone(), &input.events);
        (base.join().expect("the base replay does not panic"), change)
    });
    let d = diff(input.events.len() - duplicates, &from, &to);
    Ok(differences(input, d, json))
}

/// The engine over a set, rendering subjects when they are to be compared.
fn engine(set: &ServingSet, subjects: bool) -> Engine<'_> {
    Engine {
        rules: &set.rules,
        templates: subjects.then_some(&set.templates),
    }
}

fn bad_text(input: &Input) -> String {
    let mut out = String::new();
    for b in &input.bad {
        let _ = writeln!(out, "{}:{}: {}", b.file, b.line, b.error);
    }
    if !input.bad.is_empty() {
        let _ = writeln!(out, "{} line(s) skipped: not events", input.bad.len());
    }
    out
}

fn plain(input: &Input, planned: &[Planned], duplicates: usize, json: bool) -> Report {
    let tallies = summary(planned);
    if json {
        let rows: Vec<_> = tallies
            .iter()
            .map(|((notification, channel), t)| {
                let mut v = serde_json::to_value(t).unwrap_or_default();
                v["notification"] = notification.clone().into();
                v["channel"] = channel.clone().into();
                v
            })
            .collect();
        let out = serde_json::json!({
            "events": input.events.len() - duplicates,
            "bad_lines": input.bad,
            "summary": rows,
            "deliveries": planned,
        });
        return Report {
            out: serde_json::to_string_pretty(&out).unwrap_or_default() + "\n",
            notes: bad_text(input),
            differs: false,
        };
    }
    let mut text = bad_text(input);
    let _ = writeln!(
        text,
        "{} events replayed ({duplicates} duplicate ids skipped), {} deliveries planned",
        input.events.len() - duplicates,
        planned.len()
    );
    let _ = writeln!(
        text,
        "{:<32} {:<14} {:>6} {:>6} {:>9} {:>11} {:>11}",
        "notification", "channel", "sent", "held", "digested", "suppressed", "recipients"
    );
    for ((notification, channel), t) in &tallies {
        let _ = writeln!(
            text,
            "{notification:<32} {channel:<14} {:>6} {:>6} {:>9} {:>11} {:>11}",
            t.sent, t.held, t.digested, t.suppressed, t.recipients
        );
        for (rule, n) in &t.suppressed_by {
            let _ = writeln!(text, "{:<48}suppressed by {rule}: {n}", "");
        }
    }
    Report {
        out: text,
        notes: String::new(),
        differs: false,
    }
}

fn differences(input: &Input, d: Diff, json: bool) -> Report {
    let (out, notes) = if json {
        (
            serde_json::to_string_pretty(&d).unwrap_or_default() + "\n",
            bad_text(input),
        )
    } else {
        (bad_text(input) + &d.to_text(), String::new())
    };
    Report {
        out,
        notes,
        differs: !d.is_empty(),
    }
}

/// The directory to start from: a file of directory events, or none.
pub fn start_directory(file: Option<&Path>) -> Result<Directory, String> {
    file.map_or_else(
        || Ok(Directory::default()),
        |f| read_directory(f).map_err(|e| e.to_string()),
    )
}

/// Which archived events `--from-store` replays.
pub struct Window {
    pub since: chrono::DateTime<chrono::Utc>,
    pub until: chrono::DateTime<chrono::Utc>,
    /// Event type patterns (`lead.*`); empty: every type. Directory events always come.
    pub types: Vec<String>,
}

/// `7d` (that long before now) or an RFC 3339 time.
pub fn parse_time(raw: &str, now: chrono::DateTime<chrono::Utc>) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let ago = humantime::parse_duration(raw)
        .map_err(|_| format!("`{raw}` is neither a duration (7d, 12h) nor an RFC 3339 time"))?;
    Ok(now - chrono::Duration::from_std(ago).map_err(|e| format!("`{raw}`: {e}"))?)
}

fn type_matches(pattern: &str, ty: &str) -> bool {
    match pattern.split_once('*') {
        Some((head, tail)) => ty.len() >= head.len() + tail.len() && ty.starts_with(head) && ty.ends_with(tail),
        None => pattern == ty,
    }
}

/// The archived events of `window`, oldest first, and the directory as of the
/// first of them: the store's directory entries no newer than it, then the
/// archived directory events received before the window, with recipients'
/// preferences as they stand now. `directory` (a file) replaces all three.
pub async fn from_store(
    store: &dyn crate::store::Store,
    window: &Window,
    directory: Option<&Path>,
) -> Result<(Directory, Input), String> {
    let archived = store
        .archived(window.since, window.until)
        .await
        .map_err(|e| e.to_string())?;
    let events: Vec<Event> = archived
        .into_iter()
        .filter(|e| {
            let ty = e.event_type.as_str();
            ty.starts_with("directory.") || window.types.is_empty() || window.types.iter().any(|p| type_matches(p, ty))
        })
        .collect();
    let dir = match directory {
        Some(file) => start_directory(Some(file))?,
        None => {
            let first = events.first().map_or(window.since, |e| e.time);
            let current = store.directory_changes(0).await.map_err(|e| e.to_string())?;
            let mut dir = Directory::from_events(current.events.iter().filter(|e| e.time <= first));
            let before = store
                .archived(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH, window.since)
                .await
                .map_err(|e| e.to_string())?;
            for e in before
                .iter()
                .filter(|e| e.event_type.as_str().starts_with("directory."))
            {
                dir.apply(e);
            }
            let preferences = store.preference_changes(0).await.map_err(|e| e.to_string())?;
            for change in &preferences.changes {
                dir.preferences.apply(change);
            }
            dir
        }
    };
    Ok((
        dir,
        Input {
            events,
            bad: Vec::new(),
        },
    ))
}
