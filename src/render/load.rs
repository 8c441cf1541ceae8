//! Render step, at load: turn the `templates/` folder into engines and prove
//! them. Completeness (every part in every locale), syntax, every path against
//! the event model, then a strict render of everything against the examples.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use handlebars::Handlebars;
use handlebars::template::Template;

use super::check::{self, Partials, Usage};
use super::source::{self, ACTION_CENTER_PARTS, EMAIL_PARTS, Kind, LINK_PART, Source, TemplateError, Tree};
use super::{DEFAULT_LOCALE, Entry, Registries, RenderOptions, Templates};
use super::{helpers, inline};
use crate::event::Event;
use crate::route::rules::{Action, Channel};
use crate::route::{Delivery, Recipient, RuleSet};

/// How each template is used by the rules.
struct Uses {
    by: BTreeMap<String, BTreeSet<Usage>>,
    action_center: BTreeSet<String>,
}

fn uses(rules: &RuleSet) -> Uses {
    let mut out = Uses {
        by: BTreeMap::new(),
        action_center: BTreeSet::new(),
    };
    for rule in &rules.rules {
        let Action::Notify(n) = &rule.action else { continue };
        for ty in &rule.on {
            let fan_out = rule.for_each.is_some();
            out.by
                .entry(n.template.clone())
                .or_default()
                .insert(Usage::Event { ty: *ty, fan_out });
            if let Some(d) = &n.digest {
                out.by
                    .entry(d.template.clone())
                    .or_default()
                    .insert(Usage::Digest { item: *ty });
            }
        }
        if n.channels.contains(&Channel::ActionCenter) {
            out.action_center.insert(n.template.clone());
        }
    }
    out
}

pub(super) fn load(dir: &Path, rules: &RuleSet, options: &RenderOptions) -> Result<Templates, Vec<TemplateError>> {
    let tree = source::read_tree(dir)?;
    let uses = uses(rules);
    let mut errors = completeness(dir, &tree, &uses);
    let mut syntax = Vec::new();
    let parsed = parse_all(&tree, &mut syntax);
    if !syntax.is_empty() {
        errors.extend(syntax);
        return Err(errors);
    }
    let mut locales: BTreeSet<String> = tree.locale_partials.keys().cloned().collect();
    locales.extend(tree.notifications.values().flat_map(|l| l.keys().cloned()));
    locales.insert(DEFAULT_LOCALE.to_owned());

    // Every path each template names, for every way the rules use it.
    for (name, usages) in &uses.by {
        for (locale, parts) in tree.notifications.get(name).into_iter().flatten() {
            for (part, source) in parts {
                let partials = partials_for(&tree, &parsed, locale, source.kind);
                for usage in usages {
                    if matches!(usage, Usage::Digest { .. }) && part.starts_with("action_center") {
                        continue;
                    }
                    let doc = check::context_schema(*usage);
                    errors.extend(check::check_template(
                        source,
                        &parsed[&source.file],
                        &partials,
                        *usage,
                        &doc,
                    ));
                }
            }
        }
        if let Some(link) = tree.links.get(name) {
            for usage in usages {
                let doc = check::context_schema(*usage);
                errors.extend(check::check_template(
                    link,
                    &parsed[&link.file],
                    &Partials::new(),
                    *usage,
                    &doc,
                ));
            }
        }
    }
    errors.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    errors.dedup();
    if !errors.is_empty() {
        return Err(errors);
    }

    let mut templates = build(&tree, rules, &uses, &locales, &options.portal_base_url)?;
    templates.preferences = super::PreferenceUrls {
        portal_base_url: options.portal_base_url.trim_end_matches('/').to_owned(),
        links: options.preference_links.clone(),
    };
    render_examples(dir, &templates, &uses, &options.examples)?;
    Ok(templates)
}

/// Every template a rule names exists, in `en-US` at least, and every locale
/// folder has every part the notification's channels need.
fn completeness(dir: &Path, tree: &Tree, uses: &Uses) -> Vec<TemplateError> {
    let mut errors = Vec::new();
    for name in uses.by.keys() {
        if !tree.notifications.contains_key(name) {
            errors.push(TemplateError::file(
                &dir.join(name),
                format!("the rules use template `{name}`, but there is no such folder"),
            ));
        }
    }
    for (name, locales) in &tree.notifications {
        if !locales.contains_key(DEFAULT_LOCALE) {
            errors.push(TemplateError::file(
                &dir.join(name).join(DEFAULT_LOCALE),
                format!("every template needs {DEFAULT_LOCALE}, the fallback locale"),
            ));
        }
        let action_center = uses.action_center.contains(name);
        let needed = EMAIL_PARTS
            .iter()
            .chain(ACTION_CENTER_PARTS.iter().filter(|_| action_center));
        for (locale, parts) in locales {
            for (part, _) in needed.clone() {
                if !parts.contains_key(*part) {
                    errors.push(TemplateError::file(
                        &dir.join(name).join(locale).join(format!("{part}.hbs")),
                        "missing: every locale of a notification has all of its parts",
                    ));
                }
            }
        }
        if action_center && !tree.links.contains_key(name) {
            errors.push(TemplateError::file(
                &dir.join(name).join(format!("{LINK_PART}.hbs")),
                "missing: the rules send this notification to the Action Center, which needs a link",
            ));
        }
    }
    errors
}

fn all_sources(tree: &Tree) -> impl Iterator<Item = &Source> {
    tree.shared_partials
        .values()
        .chain(tree.locale_partials.values().flat_map(BTreeMap::values))
        .chain(
            tree.notifications
                .values()
                .flat_map(|l| l.values().flat_map(BTreeMap::values)),
        )
        .chain(tree.links.values())
}

/// Parses every file as written (so syntax errors have the author's line numbers).
fn parse_all(tree: &Tree, errors: &mut Vec<TemplateError>) -> HashMap<PathBuf, Template> {
    let mut parsed = HashMap::new();
    for source in all_sources(tree) {
        match Template::compile(&source.text) {
            Ok(t) => {
                parsed.insert(source.file.clone(), t);
            }
            Err(e) => {
                let (line, column) = e.pos().unwrap_or((0, 0));
                errors.push(TemplateError {
                    file: source.file.clone(),
                    line,
                    column,
                    message: format!("syntax: {}", e.reason()),
                });
            }
        }
    }
    parsed
}

/// The partials a template of `kind` in `locale` can include: the locale's own, else shared.
fn partials_for<'a>(tree: &'a Tree, parsed: &HashMap<PathBuf, Template>, locale: &str, kind: Kind) -> Partials<'a> {
    let mut out = Partials::new();
    let own = tree.locale_partials.get(locale).into_iter().flatten();
    for ((name, k), source) in tree.shared_partials.iter().chain(own) {
        if *k == kind {
            out.insert(name.clone(), (source, parsed[&source.file].clone()));
        }
    }
    out
}

fn registry(kind: Kind, portal_base_url: &str) -> Handlebars<'static> {
    let mut h = Handlebars::new();
    h.set_strict_mode(true);
    // handlebars.js indents standalone partials differently; neither engine indents.
    h.set_prevent_indent(true);
    match kind {
        Kind::Html => h.register_escape_fn(handlebars::html_escape),
        Kind::Text => h.register_escape_fn(handlebars::no_escape),
    }
    helpers::register(&mut h, portal_base_url);
    h
}

fn build(
    tree: &Tree,
    rules: &RuleSet,
    uses: &Uses,
    locales: &BTreeSet<String>,
    portal_base_url: &str,
) -> Result<Templates, Vec<TemplateError>> {
    let mut engines = Engines {
        portal_base_url,
        registries: BTreeMap::new(),
        sources: Vec::new(),
        errors: Vec::new(),
    };
    for locale in locales {
        engines.add_locale(tree, locale);
    }
    if !engines.errors.is_empty() {
        return Err(engines.errors);
    }
    Ok(Templates {
        entries: entries(tree, rules, uses),
        registries: engines.registries,
        nonce: nonce(),
        sources: engines.sources,
        preferences: super::PreferenceUrls::default(),
    })
}

/// Each locale's engines, what every engine was given, and the templates
/// that did not register.
struct Engines<'a> {
    portal_base_url: &'a str,
    registries: BTreeMap<String, Registries>,
    sources: Vec<super::EngineSource>,
    errors: Vec<TemplateError>,
}

impl Engines<'_> {
    /// One locale's engines: the shared partials and the locale's own, every
    /// notification's parts in the locale and every link, then each part
    /// with its partials inlined.
    fn add_locale(&mut self, tree: &Tree, locale: &str) {
        let mut regs = Registries {
            html: registry(Kind::Html, self.portal_base_url),
            text: registry(Kind::Text, self.portal_base_url),
        };
        let own = tree.locale_partials.get(locale).into_iter().flatten();
        for ((name, _), source) in tree.shared_partials.iter().chain(own) {
            self.register(&mut regs, locale, name, source);
        }
        let mut parts = Vec::new();
        for (name, by_locale) in &tree.notifications {
            for (part, source) in by_locale.get(locale).into_iter().flatten() {
                let name = format!("{name}/{part}");
                self.register(&mut regs, locale, &name, source);
                parts.push((source.kind, name));
            }
        }
        for (name, source) in &tree.links {
            self.register(&mut regs, locale, &format!("{name}/{LINK_PART}"), source);
        }
        for (kind, name) in parts {
            match kind {
                Kind::Html => inline::inline_partials(&mut regs.html, &name),
                Kind::Text => inline::inline_partials(&mut regs.text, &name),
            }
        }
        self.registries.insert(locale.to_owned(), regs);
    }

    /// Registers one template with the engine of its kind, and keeps what it was given.
    fn register(&mut self, regs: &mut Registries, locale: &str, name: &str, source: &Source) {
        let reg = match source.kind {
            Kind::Html => &mut regs.html,
            Kind::Text => &mut regs.text,
        };
        if let Err(e) = reg.register_template_string(name, &source.compiled) {
            self.errors
                .push(TemplateError::file(&source.file, format!("after inlining CSS: {e}")));
        }
        self.sources.push(super::EngineSource {
            locale: locale.to_owned(),
            kind: match source.kind {
                Kind::Html => "html",
                Kind::Text => "text",
            },
            name: name.to_owned(),
            source: source.compiled.clone(),
        });
    }
}

/// Each notification with templates: its locales, its title (the catalogue's,
/// else its name), whether it is optional and whether it has an Action Center entry.
fn entries(tree: &Tree, rules: &RuleSet, uses: &Uses) -> BTreeMap<String, Entry> {
    tree.notifications
        .iter()
        .map(|(name, by_locale)| {
            let notification = rules.notifications.get(name);
            let entry = Entry {
                locales: by_locale.keys().cloned().collect(),
                title: notification.map_or_else(|| name.clone(), |n| n.title.clone()),
                optional: notification.is_some_and(|n| n.optional),
                action_center: uses.action_center.contains(name),
            };
            (name.clone(), entry)
        })
        .collect()
}

fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in t.to_le_bytes().iter().chain(&(std::process::id()).to_le_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Renders every template against every example event of the types its rules
/// handle, in every locale, through the same code the worker uses.
fn render_examples(
    dir: &Path,
    templates: &Templates,
    uses: &Uses,
    examples: &[Event],
) -> Result<(), Vec<TemplateError>> {
    let mut errors = Vec::new();
    for (name, usages) in &uses.by {
        let locales = templates.locales(name).to_vec();
        for usage in usages {
            let matching = examples.iter().filter(|e| match usage {
                Usage::Event { ty, .. } | Usage::Digest { item: ty } => e.event_type == *ty,
            });
            for event in matching {
                for locale in &locales {
                    let recipient = example_recipient(locale);
                    let fail = |e: super::RenderError| {
                        TemplateError::file(
                            &dir.join(name).join(locale),
                            format!("rendering example event {} ({}): {e}", event.id, event.event_type),
                        )
                    };
                    if let Usage::Digest { .. } = usage {
                        let leads = [event.clone(), event.clone()];
                        if let Err(e) = templates.render_digest(name, name, &recipient, &leads) {
                            errors.push(fail(e));
                        }
                        continue;
                    }
                    let fan_out = matches!(usage, Usage::Event { fan_out: true, .. });
                    let mut channels = vec![Channel::Email];
                    if uses.action_center.contains(name) {
                        channels.push(Channel::ActionCenter);
                    }
                    let receiver = event
                        .receivers()
                        .iter()
                        .find(|r| r.partner_id.is_some())
                        .or(event.receivers().first());
                    for channel in channels {
                        let delivery =
                            Delivery::stand_in(name, channel, recipient.clone(), receiver.filter(|_| fan_out));
                        if let Err(e) = templates.render(event, &delivery) {
                            errors.push(fail(e));
                        }
                    }
                }
            }
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

fn example_recipient(locale: &str) -> Recipient {
    Recipient {
        email: crate::event::EmailAddress::parse("example.recipient@example.com").expect("a valid address"),
        name: "Example Recipient".into(),
        user_id: None,
        partner_id: None,
        locale: Some(locale.to_owned()),
        time_zone: Some("Europe/Berlin".into()),
    }
}
