//! A plain built-in renderer: the notification's title and the event's key
//! facts, as text and as minimal escaped HTML. The Handlebars templates of
//! `templates/` replace it through the same [`Renderer`] seam.

use std::fmt::Write;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{ActionCenterContent, EmailContent, Renderer};
use crate::event::{Event, EventData, Money, Referral};
use crate::route::{Delivery, RuleSet};

pub struct PlainRenderer {
    rules: Arc<RuleSet>,
    portal_url: String,
}

impl PlainRenderer {
    pub fn new(rules: Arc<RuleSet>, portal_url: String) -> Self {
        Self {
            rules,
            portal_url: portal_url.trim_end_matches('/').to_string(),
        }
    }

    fn title(&self, delivery: &Delivery) -> String {
        self.rules
            .notifications
            .get(&delivery.notification)
            .map_or_else(|| delivery.notification.clone(), |n| n.title.clone())
    }
}

/// What an event is about, and the facts worth telling.
struct Facts {
    name: String,
    path: String,
    lines: Vec<(&'static str, String)>,
}

fn when(t: &DateTime<Utc>, tz: Option<&str>) -> String {
    let tz: chrono_tz::Tz = tz.and_then(|t| t.parse().ok()).unwrap_or(chrono_tz::UTC);
    t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string()
}

fn money(m: &Money) -> String {
    format!("{:.2} {}", m.amount, m.currency)
}

fn referral_lines(r: &Referral, out: &mut Vec<(&'static str, String)>) {
    out.push(("Customer", r.customer.name.clone()));
    if let Some(country) = &r.customer.country {
        out.push(("Country", country.clone()));
    }
    if let Some(c) = &r.customer.contact {
        out.push(("Customer contact", format!("{} <{}>", c.name, c.email)));
    }
    out.push(("Deal type", r.deal_type.clone()));
    if let Some(v) = &r.value {
        out.push(("Deal value", money(v)));
    }
    if let Some(d) = &r.close_date {
        out.push(("Estimated close", d.to_string()));
    }
    if let Some(n) = &r.notes {
        out.push(("Notes", n.clone()));
    }
}

fn facts(event: &Event, tz: Option<&str>) -> Facts {
    let mut lines = Vec::new();
    let referral = |r: &Referral, lines: &mut Vec<_>| {
        referral_lines(r, lines);
        (r.name.clone(), format!("/referrals/{}", r.id))
    };
    let (name, path) = match &event.data {
        EventData::CosellShared(d) => {
            let out = referral(&d.referral, &mut lines);
            lines.push(("Shared by", d.sender.name.clone()));
            lines.push(("Respond by", when(&d.response_due, tz)));
            out
        }
        EventData::CosellAccepted(d) | EventData::CosellExpired(d) => {
            let out = referral(&d.referral, &mut lines);
            lines.push(("Receiver", d.receiver.name.clone()));
            if let Some(c) = &d.receiver.contact {
                lines.push(("Receiver contact", format!("{} <{}>", c.name, c.email)));
            }
            out
        }
        EventData::CosellDeclined(d) => {
            let out = referral(&d.referral, &mut lines);
            lines.push(("Receiver", d.receiver.name.clone()));
            lines.push(("Reason", d.reason.clone()));
            if let Some(n) = &d.notes {
                lines.push(("Receiver's notes", n.clone()));
            }
            out
        }
        EventData::CosellExpiring(d) => {
            let out = referral(&d.referral, &mut lines);
            lines.push(("Expires", when(&d.expires_at, tz)));
            out
        }
        EventData::DealregActionRequired(d) => {
            let out = referral(&d.referral, &mut lines);
            lines.push(("Message from validation", d.registration.message.clone()));
            out
        }
        EventData::DealregReviewFailed(d) => {
            let out = referral(&d.referral, &mut lines);
            lines.push(("Reason", d.registration.reason.clone()));
            if d.registration.can_request_review {
                lines.push(("Next step", "You may request an additional review.".into()));
            }
            out
        }
        EventData::DealregReviewSelected(d) => {
            let out = referral(&d.referral, &mut lines);
            lines.push(("Next step", "No action is needed.".into()));
            out
        }
        EventData::SolutionValidationFailed(d) => {
            lines.push(("Solution", d.solution.name.clone()));
            lines.push(("Report", d.report.url.clone()));
            for f in &d.report.findings {
                lines.push(("Finding", f.clone()));
            }
            (d.solution.name.clone(), format!("/solutions/{}", d.solution.id))
        }
        EventData::SolutionValidationPassed(d) => {
            lines.push(("Solution", d.solution.name.clone()));
            lines.push(("Status achieved", d.achieved_status.clone()));
            (d.solution.name.clone(), format!("/solutions/{}", d.solution.id))
        }
        EventData::LeadCreated(d) | EventData::LeadDeclined(d) | EventData::LeadExpired(d) => {
            let c = &d.lead.customer;
            lines.push(("Company", c.company.clone()));
            lines.push(("Contact", format!("{} <{}>", c.name, c.email)));
            if let Some(o) = &d.lead.offer {
                lines.push(("Offer", o.name.clone()));
            }
            if let Some(n) = &d.lead.notes {
                lines.push(("Notes", n.clone()));
            }
            if let Some(r) = &d.reason {
                lines.push(("Reason", r.clone()));
            }
            lines.push(("Partner", d.partner.name.clone()));
            (c.company.clone(), format!("/leads/{}", d.lead.id))
        }
        _ => (event.event_type.to_string(), String::new()),
    };
    Facts { name, path, lines }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

impl Renderer for PlainRenderer {
    fn email(&self, event: &Event, delivery: &Delivery) -> Result<EmailContent, String> {
        let title = self.title(delivery);
        let f = facts(event, delivery.recipient.time_zone.as_deref());
        let link = format!("{}{}", self.portal_url, f.path);
        let greeting = format!("Hello {},", delivery.recipient.name);
        let mut text = format!("{greeting}\n\n{title}: {}\n\n", f.name);
        for (label, value) in &f.lines {
            let _ = writeln!(text, "{label}: {value}");
        }
        let _ = write!(text, "\nOpen in Partner Center: {link}\n");
        let mut rows = String::new();
        for (label, value) in &f.lines {
            let _ = write!(
                rows,
                "<tr><td style=\"padding:4px 12px 4px 0;color:#555\">{}</td><td style=\"padding:4px 0\">{}</td></tr>",
                escape_html(label),
                escape_html(value)
            );
        }
        let html = format!(
            "<!DOCTYPE html><html><body style=\"font-family:Segoe UI,Arial,sans-serif\">\
             <p>{}</p><h1 style=\"font-size:18px\">{}: {}</h1>\
             <table role=\"presentation\" style=\"border-collapse:collapse\">{rows}</table>\
             <p><a href=\"{}\">Open in Partner Center</a></p></body></html>",
            escape_html(&greeting),
            escape_html(&title),
            escape_html(&f.name),
            escape_html(&link)
        );
        Ok(EmailContent {
            subject: format!("{title}: {}", f.name),
            html,
            text,
        })
    }

    fn action_center(&self, event: &Event, delivery: &Delivery) -> Result<ActionCenterContent, String> {
        let f = facts(event, delivery.recipient.time_zone.as_deref());
        let body = f
            .lines
            .iter()
            .take(3)
            .map(|(label, value)| format!("{label}: {value}"))
            .collect::<Vec<_>>()
            .join("; ");
        Ok(ActionCenterContent {
            title: format!("{}: {}", self.title(delivery), f.name),
            body,
            link: format!("{}{}", self.portal_url, f.path),
        })
    }

    fn digest(&self, digest: &Delivery, items: &[(Event, Delivery)]) -> Result<EmailContent, String> {
        let title = self.title(digest);
        let tz = digest.recipient.time_zone.as_deref();
        let greeting = format!("Hello {},", digest.recipient.name);
        let mut text = format!("{greeting}\n\n{title}: {} in all\n", items.len());
        let mut html = format!(
            "<!DOCTYPE html><html><body style=\"font-family:Segoe UI,Arial,sans-serif\"><p>{}</p>\
             <h1 style=\"font-size:18px\">{}: {}</h1>",
            escape_html(&greeting),
            escape_html(&title),
            items.len()
        );
        for (event, _) in items {
            let f = facts(event, tz);
            let link = format!("{}{}", self.portal_url, f.path);
            let _ = write!(text, "\n- {}\n", f.name);
            let _ = write!(html, "<h2 style=\"font-size:15px\">{}</h2><ul>", escape_html(&f.name));
            for (label, value) in &f.lines {
                let _ = writeln!(text, "  {label}: {value}");
                let _ = write!(html, "<li>{}: {}</li>", escape_html(label), escape_html(value));
            }
            let _ = writeln!(text, "  Open: {link}");
            let _ = write!(
                html,
                "</ul><p><a href=\"{}\">Open in Partner Center</a></p>",
                escape_html(&link)
            );
        }
        html.push_str("</body></html>");
        Ok(EmailContent {
            subject: format!("{title}: {}", items.len()),
            html,
            text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{read_directory, read_event};
    use crate::route::{MemoryState, route};
    use std::path::Path;

    #[test]
    fn renders_title_facts_and_escapes() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let rules = Arc::new(RuleSet::load_dir(&root.join("rules")).unwrap());
        let dir = read_directory(&root.join("rules/tests/directory.jsonl")).unwrap();
        let event = read_event(&root.join("rules/tests/events/cosell.opportunity.declined.json")).unwrap();
        let plan = route(&event, &rules, &dir, &MemoryState::new());
        let r = PlainRenderer::new(rules, "https://portal.example/".into());
        let mail = r.email(&event, &plan.deliveries[0]).unwrap();
        assert!(
            mail.subject.starts_with("Referrals Outgoing Co-sell Declined: "),
            "{}",
            mail.subject
        );
        assert!(mail.text.contains("Reason: "), "{}", mail.text);
        assert!(mail.html.contains("https://portal.example/referrals/"), "{}", mail.html);
        assert_eq!(escape_html("<a href='x'>&"), "&lt;a href=&#39;x&#39;&gt;&amp;");
    }
}
