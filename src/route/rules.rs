//! The rules language: YAML files in `rules/`, loaded, checked and compiled
//! into a [`RuleSet`]. Every error carries `file:line:column`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::model;
use super::path::Matcher;
use super::selector::{RawSelector, Selector};
use crate::event::EventType;

/// Where something was written: `rules/leads.yaml:12:7`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SourceLoc {
    pub file: PathBuf,
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for SourceLoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One problem found in the rules, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

/// Everything wrong with a rule set; it is rejected whole.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct RulesError(pub Vec<Diagnostic>);

/// The channels a notification can go out on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    ActionCenter,
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Channel::Email => "email",
            Channel::ActionCenter => "action_center",
        })
    }
}

/// What a fan-out iterates over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FanOut {
    /// Once per receiver of the event (every entry of `data.receivers`).
    Receiver,
}

/// Which calendar day a digest counter uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DayBoundary {
    /// Midnight in the partner's time zone (UTC when the directory does not know it).
    PartnerLocal,
    Utc,
}

/// A catalogued notification: the seed's name and how it is presented.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    /// The name people know it by.
    pub title: String,
    /// Optional notifications carry `List-Unsubscribe`, and recipients may turn them off.
    #[serde(default)]
    pub optional: bool,
    /// The category recipients turn it off by, as well as by itself: one of `categories`.
    #[serde(default)]
    pub category: Option<String>,
    /// How its Action Center entry is filed, when it has one.
    #[serde(default)]
    pub action_center: Option<ActionCenterSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionCenterSpec {
    pub category: String,
    #[serde(default = "default_priority")]
    pub priority: String,
    /// How long the entry stays, e.g. `14d`.
    #[serde(default, with = "opt_duration")]
    pub expires_after: Option<Duration>,
}

fn default_priority() -> String {
    "normal".into()
}

/// Holding back a busy partner's notifications into a digest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestPolicy {
    /// The counter's name; rules sharing it count together.
    pub counter: String,
    /// Items 1..=threshold of a day go out one by one; later ones are held.
    pub threshold: u32,
    pub day: DayBoundary,
    /// How often held items are flushed (`1h`); the day's end flushes too.
    #[serde(with = "humantime_serde_str")]
    pub flush_every: Duration,
    /// The path to the partner id the counter is kept for.
    pub partner: String,
    /// The notification and template of the digest itself.
    pub notification: String,
    pub template: String,
    /// The channels that are held (the others always go out).
    #[serde(default = "email_only")]
    pub channels: Vec<Channel>,
}

fn email_only() -> Vec<Channel> {
    vec![Channel::Email]
}

mod humantime_serde_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let raw = String::deserialize(d)?;
        let duration =
            humantime::parse_duration(&raw).map_err(|e| serde::de::Error::custom(format!("`{raw}`: {e}")))?;
        if duration.is_zero() {
            return Err(serde::de::Error::custom("a duration must be longer than zero"));
        }
        Ok(duration)
    }
}

mod opt_duration {
    use serde::{Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::humantime_serde_str::serialize(d, s),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::humantime_serde_str::deserialize(d).map(Some)
    }
}

/// A status a `record` rule stores: a fixed word or the value at a path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StatusValue {
    Literal(String),
    From { from: String },
}

/// What a `record` rule remembers about the referral for later events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSpec {
    #[serde(default)]
    pub receiver_status: Option<StatusValue>,
    #[serde(default)]
    pub referral_status: Option<StatusValue>,
}

/// A group of notifications recipients can turn off together.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Category {
    /// The name people see in their preferences.
    pub title: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    categories: BTreeMap<String, Spanned<Category>>,
    #[serde(default)]
    notifications: BTreeMap<String, Spanned<Notification>>,
    #[serde(default)]
    selectors: BTreeMap<String, Spanned<RawSelector>>,
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    id: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    on: Spanned<Vec<EventType>>,
    #[serde(default)]
    for_each: Option<FanOut>,
    #[serde(default)]
    when: BTreeMap<String, Spanned<Matcher>>,
    #[serde(default)]
    notify: Option<Spanned<String>>,
    #[serde(default)]
    template: Option<Spanned<String>>,
    #[serde(default)]
    channels: Option<Spanned<Vec<Channel>>>,
    #[serde(default)]
    to: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    digest: Option<Spanned<DigestPolicy>>,
    #[serde(default)]
    suppress: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    record: Option<Spanned<RecordSpec>>,
}

/// A condition of a rule: the value at `path` must pass `matcher`.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub path: String,
    pub matcher: Matcher,
}

/// What a rule does when it matches.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Notify(NotifyAction),
    /// Marks these notifications of the same event (and fan-out item) suppressed.
    Suppress(Vec<String>),
    Record(RecordSpec),
}

#[derive(Clone, Debug, PartialEq)]
pub struct NotifyAction {
    pub notification: String,
    pub template: String,
    pub channels: Vec<Channel>,
    /// Selector names, resolved in order.
    pub to: Vec<String>,
    pub digest: Option<DigestPolicy>,
}

/// One compiled rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub id: String,
    pub description: Option<String>,
    pub location: SourceLoc,
    pub on: Vec<EventType>,
    pub for_each: Option<FanOut>,
    pub when: Vec<Condition>,
    pub action: Action,
}

/// The loaded, checked rule set the router routes with.
#[derive(Clone, Debug)]
pub struct RuleSet {
    pub categories: BTreeMap<String, Category>,
    pub notifications: BTreeMap<String, Notification>,
    pub selectors: BTreeMap<String, Selector>,
    pub rules: Vec<Rule>,
    /// A hash of the source files, to tell which rule set is serving.
    pub hash: String,
}

impl RuleSet {
    /// Loads every `*.yaml`/`*.yml` file directly in `dir` (not `dir/tests`).
    pub fn load_dir(dir: &Path) -> Result<Self, RulesError> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            RulesError(vec![Diagnostic {
                file: dir.to_path_buf(),
                line: 0,
                column: 0,
                message: format!("cannot read the rules directory: {e}"),
            }])
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect();
        files.sort();
        let mut sources = Vec::new();
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => sources.push((file, text)),
                Err(e) => {
                    return Err(RulesError(vec![Diagnostic {
                        file,
                        line: 0,
                        column: 0,
                        message: format!("cannot read: {e}"),
                    }]));
                }
            }
        }
        Self::from_sources(&sources)
    }

    /// Loads rules from (file name, YAML text) pairs.
    pub fn from_sources(sources: &[(PathBuf, String)]) -> Result<Self, RulesError> {
        let mut diags = Vec::new();
        let mut parsed = Vec::new();
        for (file, text) in sources {
            match serde_saphyr::from_str::<RulesFile>(text) {
                Ok(doc) => parsed.push((file.clone(), doc)),
                Err(e) => diags.push(yaml_diagnostic(file, &e)),
            }
        }
        if !diags.is_empty() {
            return Err(RulesError(diags));
        }
        let set = compile(parsed, &mut diags, &hash_sources(sources));
        if diags.is_empty() {
            Ok(set)
        } else {
            Err(RulesError(diags))
        }
    }

    /// The rules that apply to events of `ty`, in file order.
    pub fn rules_for(&self, ty: EventType) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(move |r| r.on.contains(&ty))
    }

    /// Every template name the rules use (notify rules and digests).
    pub fn templates(&self) -> BTreeSet<(&str, &SourceLoc)> {
        let mut out = BTreeSet::new();
        for rule in &self.rules {
            if let Action::Notify(n) = &rule.action {
                out.insert((n.template.as_str(), &rule.location));
                if let Some(d) = &n.digest {
                    out.insert((d.template.as_str(), &rule.location));
                }
            }
        }
        out
    }

    /// Rejects rules naming a template that `exists` says is missing.
    pub fn check_templates(&self, exists: impl Fn(&str) -> bool) -> Result<(), RulesError> {
        let diags: Vec<Diagnostic> = self
            .templates()
            .into_iter()
            .filter(|(name, _)| !exists(name))
            .map(|(name, loc)| at(loc, format!("template `{name}` does not exist")))
            .collect();
        if diags.is_empty() {
            Ok(())
        } else {
            Err(RulesError(diags))
        }
    }
}

fn hash_sources(sources: &[(PathBuf, String)]) -> String {
    // FNV-1a over names and contents: stable across runs and platforms.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (file, text) in sources {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for byte in name.bytes().chain([0]).chain(text.bytes()).chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

fn yaml_diagnostic(file: &Path, e: &serde_saphyr::Error) -> Diagnostic {
    let text = e.without_snippet().to_string();
    let (line, column) = e.location().map_or((0, 0), |l| (l.line() as u32, l.column() as u32));
    // The message ends with its own " at line L, column C"; we print the location first.
    let message = match text.rfind(" at line ") {
        Some(i) if line > 0 => text[..i].to_string(),
        _ => text,
    };
    Diagnostic {
        file: file.to_path_buf(),
        line,
        column,
        message,
    }
}

fn loc(file: &Path, l: &serde_saphyr::Location) -> SourceLoc {
    SourceLoc {
        file: file.to_path_buf(),
        line: l.line() as u32,
        column: l.column() as u32,
    }
}

fn at(loc: &SourceLoc, message: String) -> Diagnostic {
    Diagnostic {
        file: loc.file.clone(),
        line: loc.line,
        column: loc.column,
        message,
    }
}

fn compile(files: Vec<(PathBuf, RulesFile)>, diags: &mut Vec<Diagnostic>, hash: &str) -> RuleSet {
    let mut categories = BTreeMap::new();
    let mut notifications = BTreeMap::new();
    let mut categorised = Vec::new();
    let mut selectors = BTreeMap::new();
    let mut specs = Vec::new();
    for (file, doc) in files {
        for (name, spec) in doc.categories {
            if categories.insert(name.clone(), spec.value).is_some() {
                diags.push(at(
                    &loc(&file, &spec.referenced),
                    format!("category `{name}` is defined twice"),
                ));
            }
        }
        for (name, spec) in doc.notifications {
            if let Some(category) = &spec.value.category {
                categorised.push((category.clone(), name.clone(), loc(&file, &spec.referenced)));
            }
            if notifications.insert(name.clone(), spec.value).is_some() {
                diags.push(at(
                    &loc(&file, &spec.referenced),
                    format!("notification `{name}` is defined twice"),
                ));
            }
        }
        for (name, raw) in doc.selectors {
            let where_ = loc(&file, &raw.referenced);
            match Selector::try_from(raw.value) {
                Ok(sel) => {
                    if selectors.insert(name.clone(), (sel, where_.clone())).is_some() {
                        diags.push(at(&where_, format!("selector `{name}` is defined twice")));
                    }
                }
                Err(message) => diags.push(at(&where_, message)),
            }
        }
        specs.extend(doc.rules.into_iter().map(|r| (file.clone(), r)));
    }
    for (category, name, location) in categorised {
        if !categories.contains_key(&category) {
            let known: Vec<&str> = categories.keys().map(String::as_str).collect();
            diags.push(at(
                &location,
                format!(
                    "notification `{name}` names category `{category}`, which is not declared under `categories` (known: {})",
                    known.join(", ")
                ),
            ));
        }
    }
    let mut rules = Vec::new();
    let mut ids = BTreeSet::new();
    for (file, spec) in specs {
        let location = loc(&file, &spec.id.referenced);
        if !ids.insert(spec.id.value.clone()) {
            diags.push(at(&location, format!("rule id `{}` is used twice", spec.id.value)));
        }
        if spec.id.value == super::PREFERENCE {
            diags.push(at(
                &location,
                format!(
                    "rule id `{}` is reserved: it names a recipient's own choice in the log",
                    super::PREFERENCE
                ),
            ));
        }
        if let Some(rule) = compile_rule(&file, spec, location, &notifications, &selectors, diags) {
            rules.push(rule);
        }
    }
    check_suppressions(&rules, diags);
    RuleSet {
        categories,
        notifications,
        selectors: selectors.into_iter().map(|(k, (s, _))| (k, s)).collect(),
        rules,
        hash: hash.to_string(),
    }
}

/// Checks one rule and compiles it; `None` when anything about it is wrong.
fn compile_rule(
    file: &Path,
    spec: RuleSpec,
    location: SourceLoc,
    notifications: &BTreeMap<String, Notification>,
    selectors: &BTreeMap<String, (Selector, SourceLoc)>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Rule> {
    let id = spec.id.value.clone();
    let before = diags.len();
    let on_loc = loc(file, &spec.on.referenced);
    let on = spec.on.value;
    let mut check = RuleCheck {
        file,
        id: &id,
        on: &on,
        notifications,
        selectors,
        diags,
    };
    check.trigger(&on_loc, spec.for_each);
    let when = check.conditions(spec.when);
    let fields = NotifyFields {
        template: spec.template,
        channels: spec.channels,
        to: spec.to,
        digest: spec.digest,
    };
    let actions = [spec.notify.is_some(), spec.suppress.is_some(), spec.record.is_some()];
    let action = match actions {
        [true, false, false] => Action::Notify(check.notify(spec.notify.expect("checked"), fields)),
        [false, true, false] => {
            let names = check.suppress(spec.suppress.expect("checked"));
            forbid_notify_fields(&id, &location, &fields, diags);
            Action::Suppress(names)
        }
        [false, false, true] => {
            let record = check.record(spec.record.expect("checked"));
            forbid_notify_fields(&id, &location, &fields, diags);
            Action::Record(record)
        }
        _ => {
            diags.push(at(
                &location,
                format!("rule `{id}` must have exactly one of `notify`, `suppress` or `record`"),
            ));
            return None;
        }
    };
    (diags.len() == before).then_some(Rule {
        id,
        description: spec.description,
        location,
        on,
        for_each: spec.for_each,
        when,
        action,
    })
}

/// The fields of a rule that only a `notify` rule may have.
struct NotifyFields {
    template: Option<Spanned<String>>,
    channels: Option<Spanned<Vec<Channel>>>,
    to: Option<Spanned<Vec<Spanned<String>>>>,
    digest: Option<Spanned<DigestPolicy>>,
}

/// One rule being checked: where it is written, the event types it fires
/// on, the notifications and selectors it may name, and where its problems go.
struct RuleCheck<'a> {
    file: &'a Path,
    id: &'a str,
    on: &'a [EventType],
    notifications: &'a BTreeMap<String, Notification>,
    selectors: &'a BTreeMap<String, (Selector, SourceLoc)>,
    diags: &'a mut Vec<Diagnostic>,
}

impl RuleCheck<'_> {
    /// Where something in the rule's file was written.
    fn loc(&self, l: &serde_saphyr::Location) -> SourceLoc {
        loc(self.file, l)
    }

    /// Notes a problem with the rule.
    fn push(&mut self, where_: &SourceLoc, message: String) {
        self.diags.push(at(where_, message));
    }

    /// A path the rule reads must exist in every event type it fires on.
    fn check_path(&mut self, path: &str, where_: &SourceLoc, what: &str) {
        let (id, on) = (self.id, self.on);
        for ty in on {
            if !model::path_exists(*ty, path) {
                self.push(
                    where_,
                    format!("rule `{id}` can never fire: {what} `{path}` does not exist in {ty} events"),
                );
            }
        }
    }

    /// The rule fires on at least one event type, and a fan-out over
    /// receivers only on event types that have them.
    fn trigger(&mut self, on_loc: &SourceLoc, for_each: Option<FanOut>) {
        let (id, on) = (self.id, self.on);
        if on.is_empty() {
            self.push(on_loc, format!("rule `{id}` can never fire: `on` lists no event type"));
        }
        if for_each == Some(FanOut::Receiver) {
            for ty in on.iter().filter(|t| !model::has_receiver(**t)) {
                self.push(
                    on_loc,
                    format!("rule `{id}`: `for_each: receiver` but {ty} has no receiver"),
                );
            }
        }
    }

    /// The `when` conditions, each on a path the rule's events have.
    fn conditions(&mut self, when: BTreeMap<String, Spanned<Matcher>>) -> Vec<Condition> {
        let mut conditions = Vec::new();
        for (path, matcher) in when {
            self.check_path(&path, &self.loc(&matcher.referenced), "path");
            conditions.push(Condition {
                path,
                matcher: matcher.value,
            });
        }
        conditions
    }

    /// A `notify` rule: a catalogued notification, its template, at least
    /// one channel, recipients, and an optional digest.
    fn notify(&mut self, notify: Spanned<String>, fields: NotifyFields) -> NotifyAction {
        let NotifyFields {
            template,
            channels,
            to,
            digest,
        } = fields;
        let id = self.id;
        let notify_loc = self.loc(&notify.referenced);
        if !self.notifications.contains_key(&notify.value) {
            self.push(&notify_loc, format!("unknown notification `{}`", notify.value));
        }
        let template = match template {
            Some(t) => t.value,
            None => {
                self.push(&notify_loc, format!("rule `{id}` notifies but names no `template`"));
                String::new()
            }
        };
        let channels = channels.map(|c| c.value).unwrap_or_default();
        if channels.is_empty() {
            self.push(
                &notify_loc,
                format!("rule `{id}` can never fire: it names no `channels`"),
            );
        }
        let to = self.recipients(to, &notify_loc);
        let digest = digest.map(|d| self.digest(d));
        NotifyAction {
            notification: notify.value,
            template,
            channels,
            to,
            digest,
        }
    }

    /// The selectors of `to`: at least one, each known, each reading paths
    /// the rule's events have.
    fn recipients(&mut self, to: Option<Spanned<Vec<Spanned<String>>>>, notify_loc: &SourceLoc) -> Vec<String> {
        let id = self.id;
        let selectors = self.selectors;
        let mut names = Vec::new();
        match to {
            Some(list) if !list.value.is_empty() => {
                for name in list.value {
                    let where_ = self.loc(&name.referenced);
                    match selectors.get(&name.value) {
                        None => {
                            let known: Vec<&str> = selectors.keys().map(String::as_str).collect();
                            self.push(
                                &where_,
                                format!("unknown selector `{}` (known: {})", name.value, known.join(", ")),
                            );
                        }
                        Some((sel, _)) => {
                            for path in sel.paths() {
                                self.check_path(path, &where_, &format!("selector `{}` reads", name.value));
                            }
                        }
                    }
                    names.push(name.value);
                }
            }
            _ => self.push(
                notify_loc,
                format!("rule `{id}` can never fire: `to` names no recipients"),
            ),
        }
        names
    }

    /// A digest policy: a threshold of at least one, a catalogued digest
    /// notification, and a partner path the rule's events have.
    fn digest(&mut self, digest: Spanned<DigestPolicy>) -> DigestPolicy {
        let where_ = self.loc(&digest.referenced);
        let policy = digest.value;
        if policy.threshold == 0 {
            self.push(&where_, "a digest threshold must be at least 1".into());
        }
        if !self.notifications.contains_key(&policy.notification) {
            self.push(&where_, format!("unknown notification `{}`", policy.notification));
        }
        self.check_path(&policy.partner, &where_, "digest partner");
        policy
    }

    /// A `suppress` rule: at least one notification, each catalogued.
    fn suppress(&mut self, list: Spanned<Vec<Spanned<String>>>) -> Vec<String> {
        let id = self.id;
        if list.value.is_empty() {
            self.push(
                &self.loc(&list.referenced),
                format!("rule `{id}` suppresses nothing: list the notifications"),
            );
        }
        let mut names = Vec::new();
        for name in list.value {
            if !self.notifications.contains_key(&name.value) {
                self.push(
                    &self.loc(&name.referenced),
                    format!("unknown notification `{}`", name.value),
                );
            }
            names.push(name.value);
        }
        names
    }

    /// A `record` rule: at least one status, paths the rule's events have,
    /// and a receiver status only on event types with a receiver.
    fn record(&mut self, record: Spanned<RecordSpec>) -> RecordSpec {
        let (id, on) = (self.id, self.on);
        let where_ = self.loc(&record.referenced);
        let spec = record.value;
        if spec.receiver_status.is_none() && spec.referral_status.is_none() {
            self.push(&where_, format!("rule `{id}` records nothing"));
        }
        for value in [&spec.receiver_status, &spec.referral_status].into_iter().flatten() {
            if let StatusValue::From { from } = value {
                self.check_path(from, &where_, "record path");
            }
        }
        if spec.receiver_status.is_some() {
            for ty in on.iter().filter(|t| !model::has_receiver(**t)) {
                self.push(
                    &where_,
                    format!("rule `{id}` records a receiver status but {ty} has no receiver"),
                );
            }
        }
        spec
    }
}

fn forbid_notify_fields(id: &str, location: &SourceLoc, fields: &NotifyFields, diags: &mut Vec<Diagnostic>) {
    let present = [
        ("template", fields.template.is_some()),
        ("channels", fields.channels.is_some()),
        ("to", fields.to.is_some()),
        ("digest", fields.digest.is_some()),
    ];
    for (field, _) in present.iter().filter(|(_, p)| *p) {
        diags.push(at(
            location,
            format!("rule `{id}`: `{field}` only belongs to a `notify` rule"),
        ));
    }
}

/// A suppression that names a notification no rule sends for its events can
/// never fire: it is almost always a typo or a stale rule.
fn check_suppressions(rules: &[Rule], diags: &mut Vec<Diagnostic>) {
    for rule in rules {
        let Action::Suppress(names) = &rule.action else {
            continue;
        };
        for name in names {
            let reachable = rules.iter().any(|other| match &other.action {
                Action::Notify(n) => &n.notification == name && other.on.iter().any(|t| rule.on.contains(t)),
                _ => false,
            });
            if !reachable {
                diags.push(at(
                    &rule.location,
                    format!(
                        "rule `{}` can never fire: no rule sends `{name}` for its events",
                        rule.id
                    ),
                ));
            }
        }
    }
}
