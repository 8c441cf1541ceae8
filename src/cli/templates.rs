//! The template author's tools: `templates check` (load, check and render
//! every template against every example event in every locale) and `preview`
//! (one notification for one event, written as `.html`, `.txt` and `.eml`).

use std::path::{Path, PathBuf};

use lettre::message::Mailbox;

use super::{read_directory, read_event};
use crate::directory::Directory;
use crate::event::{EmailAddress, Event};
use crate::render::{self, Rendered, Sender, Templates};
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
    Ok(format!(
        "templates ok: {} templates in {}, rendered against {examples} example events",
        templates.names().count(),
        locales.join(", "),
    ))
}

/// What `preview` renders.
pub struct PreviewRequest<'a> {
    pub notification: &'a str,
    pub event: &'a Path,
    pub locale: Option<&'a str>,
    pub out: &'a Path,
    pub directory: Option<&'a Path>,
    pub templates: &'a Path,
    pub rules: &'a Path,
}

/// `preview`: renders one notification for one event and writes the files;
/// returns the list of files written.
pub fn preview(req: &PreviewRequest<'_>) -> Result<String, String> {
    let (rules, templates, _) = load(req.templates, req.rules)?;
    if !templates.has(req.notification) {
        return Err(format!("no template `{}`", req.notification));
    }
    let event = read_event(req.event).map_err(|e| e.to_string())?;
    let dir = match req.directory {
        Some(path) => read_directory(path).map_err(|e| e.to_string())?,
        None => Directory::default(),
    };
    std::fs::create_dir_all(req.out).map_err(|e| format!("{}: {e}", req.out.display()))?;
    let deliveries = deliveries(&rules, &dir, &event, req.notification, req.locale);
    let mut written = Vec::new();
    let sender = Sender {
        from: Mailbox::new(
            Some("Partner Center".into()),
            "referrals@partner.example".parse().map_err(|e| format!("{e}"))?,
        ),
        reply_to: None,
    };
    let mut session = templates.session(&event);
    for delivery in &deliveries {
        let rendered = if delivery.notification == delivery.template && is_digest(&rules, req.notification) {
            let leads = [event.clone(), event.clone(), event.clone()];
            Rendered::Email(
                templates
                    .render_digest(req.notification, req.notification, &delivery.recipient, &leads)
                    .map_err(|e| e.to_string())?,
            )
        } else {
            session.render(delivery).map_err(|e| e.to_string())?
        };
        let stem = req.out.join(format!("{}.{}", req.notification, locale_of(&rendered)));
        match rendered {
            Rendered::Email(email) => {
                let id = render::message_id(
                    &event.id,
                    req.notification,
                    &delivery.recipient.email,
                    "partner.example",
                );
                let unsubscribe = templates
                    .is_optional(req.notification)
                    .then(|| render::ListUnsubscribe {
                        url: "https://partner.example/settings/notifications".into(),
                        one_click: false,
                    });
                let message = render::build_email(
                    &email,
                    &sender,
                    &delivery.recipient,
                    &id,
                    unsubscribe.as_ref(),
                    event.id.as_str(),
                )
                .map_err(|e| e.to_string())?;
                write(&stem, "html", email.html.as_bytes(), &mut written)?;
                write(&stem, "txt", email.text.as_bytes(), &mut written)?;
                write(&stem, "eml", &message.formatted(), &mut written)?;
            }
            Rendered::ActionCenter(entry) => {
                let text = format!("{}\n\n{}\n\n{}\n", entry.title, entry.body, entry.link);
                write(&stem, "action-center.txt", text.as_bytes(), &mut written)?;
            }
        }
    }
    Ok(written.join("\n"))
}

fn locale_of(r: &Rendered) -> &str {
    match r {
        Rendered::Email(e) => &e.locale,
        Rendered::ActionCenter(a) => &a.locale,
    }
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
