//! The template author's tools: `templates check` (load, check and render
//! every template against every example event in every locale) and `preview`
//! (one notification for one event as the configured worker sends it,
//! written as `.html`, `.txt` and `.eml`).

use std::path::{Path, PathBuf};

use super::{read_directory, read_event};
use crate::directory::Directory;
use crate::event::{EmailAddress, Event};
use crate::render::Templates;
use crate::route::rules::Channel;
use crate::route::{Delivery, MemoryState, Recipient, RuleSet, route};

/// The portal base URL previews and checks link to.
pub const PREVIEW_PORTAL: &str = "https://partner.example";

/// Loads rules and templates the way the worker does, with the examples;
/// the template author's tools insist on having examples to render.
pub fn load(templates_dir: &Path, rules_dir: &Path) -> Result<(RuleSet, Templates, usize), String> {
    let set = crate::serving::ServingSet::load(
        rules_dir,
        templates_dir,
        &crate::serving::Addresses::portal(PREVIEW_PORTAL),
    )
    .map_err(|e| e.to_string())?;
    if set.examples == 0 {
        return Err(format!(
            "no example events in {}",
            rules_dir.join("tests/events").display()
        ));
    }
    Ok((set.rules, set.templates, set.examples))
}

/// `templates check`: the summary on success, every error (`file:line:column: ...`) on failure.
pub fn check(templates_dir: &Path, rules_dir: &Path) -> Result<String, String> {
    let (_, templates, examples) = load(templates_dir, rules_dir)?;
    let mut locales: Vec<&str> = templates
        .names()
        .flat_map(|n| templates.locales(n))
        .map(String::as_str)
        .collect();
    locales.sort_unstable();
    locales.dedup();
    let mut out = String::new();
    if let Ok(tree) = crate::render::source::read_tree(templates_dir) {
        for gap in crate::render::source::gaps(templates_dir, &tree) {
            out.push_str(&format!("{gap}\n"));
        }
    }
    out.push_str(&format!(
        "templates ok: {} templates in {}, rendered against {examples} example events",
        templates.names().count(),
        locales.join(", "),
    ));
    Ok(out)
}

/// What `preview` renders.
pub struct PreviewRequest<'a> {
    pub notification: &'a str,
    pub event: &'a Path,
    pub recipient: Option<&'a str>,
    pub locale: Option<&'a str>,
    pub out: &'a Path,
    pub directory: Option<&'a Path>,
    pub templates: &'a Path,
    pub rules: &'a Path,
    /// The worker's configuration: its sender, links and unsubscribe headers.
    pub settings: &'a crate::config::Settings,
}

/// `preview`: one notification for one event, as the worker configured by
/// `settings` sends it (the same code: [`crate::preview`]); writes the
/// `.html`, `.txt` and `.eml` (and the Action Center entry) and lists them.
pub fn preview(req: &PreviewRequest<'_>) -> Result<String, String> {
    let addresses = crate::serving::Addresses::from_settings(req.settings);
    let set = crate::serving::ServingSet::load(req.rules, req.templates, &addresses).map_err(|e| e.to_string())?;
    let letterhead = crate::dispatch::email::Letterhead::from_settings(req.settings)?;
    let event = read_event(req.event).map_err(|e| e.to_string())?;
    let dir = match req.directory {
        Some(path) => read_directory(path).map_err(|e| e.to_string())?,
        None => Directory::default(),
    };
    std::fs::create_dir_all(req.out).map_err(|e| format!("{}: {e}", req.out.display()))?;
    let mut written = Vec::new();
    if is_digest(&set.rules, req.notification) {
        return preview_digest(req, &set, &letterhead, &dir, &event);
    }
    let ask = crate::preview::Ask::new(req.notification, &event, req.recipient, req.locale);
    let p = crate::preview::preview(&set, &letterhead, &dir, &ask)?;
    let stem = req.out.join(format!("{}.{}", req.notification, p.locale));
    write(&stem, "html", p.html.as_bytes(), &mut written)?;
    write(&stem, "txt", p.text.as_bytes(), &mut written)?;
    write(&stem, "eml", p.eml.as_bytes(), &mut written)?;
    if let Some(entry) = &p.action_center {
        let text = serde_json::to_string_pretty(entry).unwrap_or_default();
        write(&stem, "action-center.json", text.as_bytes(), &mut written)?;
    }
    Ok(format!("to {} ({}):\n{}", p.recipient, p.decision, written.join("\n")))
}

/// A digest of three copies of the event, to the first recipient the rules find.
fn preview_digest(
    req: &PreviewRequest<'_>,
    set: &crate::serving::ServingSet,
    letterhead: &crate::dispatch::email::Letterhead,
    dir: &Directory,
    event: &Event,
) -> Result<String, String> {
    let mut written = Vec::new();
    for delivery in deliveries(&set.rules, dir, event, req.notification, req.locale) {
        let leads = [event.clone(), event.clone(), event.clone()];
        let email = set
            .templates
            .render_digest(req.notification, req.notification, &delivery.recipient, &leads)
            .map_err(|e| e.to_string())?;
        let optional = set.rules.is_optional(req.notification);
        let (message, _) = letterhead
            .compose(&email, req.notification, optional, &delivery.recipient, "dg-preview")
            .map_err(|e| e.to_string())?;
        let stem = req.out.join(format!("{}.{}", req.notification, email.locale));
        write(&stem, "html", email.html.as_bytes(), &mut written)?;
        write(&stem, "txt", email.text.as_bytes(), &mut written)?;
        write(&stem, "eml", &message.formatted(), &mut written)?;
    }
    Ok(written.join("\n"))
}

fn write(stem: &Path, ext: &str, bytes: &[u8], written: &mut Vec<String>) -> Result<(), String> {
    let path = PathBuf::from(format!("{}.{ext}", stem.display()));
    std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    written.push(path.display().to_string());
    Ok(())
}

fn is_digest(rules: &RuleSet, name: &str) -> bool {
    rules.rules.iter().any(|r| match &r.action {
        crate::route::rules::Action::Notify(n) => n.digest.as_ref().is_some_and(|d| d.template == name),
        _ => false,
    })
}

/// The first delivery per channel the rules plan for this notification; when
/// routing finds nobody (no directory given), a stand-in recipient.
fn deliveries(rules: &RuleSet, dir: &Directory, event: &Event, name: &str, locale: Option<&str>) -> Vec<Delivery> {
    let plan = route(event, rules, dir, &MemoryState::new());
    let mut out: Vec<Delivery> = Vec::new();
    for d in plan.deliveries.into_iter().filter(|d| d.template == name) {
        if !out.iter().any(|o| o.channel == d.channel) {
            out.push(d);
        }
    }
    if out.is_empty() {
        let fan_out = rules.rules.iter().any(|r| {
            r.for_each.is_some() && matches!(&r.action, crate::route::rules::Action::Notify(n) if n.template == name)
        });
        let receiver = event.receivers().iter().find(|r| r.partner_id.is_some());
        let channels = if is_digest(rules, name) {
            vec![Channel::Email]
        } else {
            rules
                .rules
                .iter()
                .filter_map(|r| match &r.action {
                    crate::route::rules::Action::Notify(n) if n.template == name => Some(n.channels.clone()),
                    _ => None,
                })
                .next()
                .unwrap_or_else(|| vec![Channel::Email])
        };
        let recipient = Recipient {
            email: EmailAddress::parse("preview@partner.example").expect("a valid address"),
            name: "Preview Recipient".into(),
            user_id: None,
            partner_id: None,
            locale: None,
            time_zone: None,
        };
        for channel in channels {
            out.push(Delivery::stand_in(
                name,
                channel,
                recipient.clone(),
                receiver.filter(|_| fan_out),
            ));
        }
    }
    if let Some(locale) = locale {
        for d in &mut out {
            d.recipient.locale = Some(locale.to_owned());
        }
    }
    out
}
