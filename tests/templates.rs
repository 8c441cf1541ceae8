//! The shipped templates, rendered for the example events through the real
//! rules and directory, and the guarantees around them: strictness, escaping,
//! header safety, MIME structure, reloads.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mail_parser::{HeaderName, MessageParser, MimeHeaders};
use referral_router::cli;
use referral_router::decode::{read_directory, read_event};
use referral_router::event::{EmailAddress, Event};
use referral_router::render::{
    ListUnsubscribe, RenderOptions, Rendered, RenderedEmail, Sender, Templates, build_email, message_id,
};
use referral_router::route::rules::Channel;
use referral_router::route::{Decision, Delivery, MemoryState, Recipient, RuleSet, route};

const PORTAL: &str = "https://partner.example";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rules() -> &'static RuleSet {
    static RULES: OnceLock<RuleSet> = OnceLock::new();
    RULES.get_or_init(|| RuleSet::load_dir(&root().join("rules")).expect("the shipped rules load"))
}

fn examples() -> Vec<Event> {
    referral_router::render::example_events(&root().join("rules")).expect("the example events decode")
}

fn options(examples: Vec<Event>) -> RenderOptions {
    RenderOptions {
        portal_base_url: PORTAL.into(),
        examples,
        preference_links: None,
    }
}

fn templates() -> &'static Templates {
    static TEMPLATES: OnceLock<Templates> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        Templates::load(&root().join("templates"), rules(), options(examples())).expect("the shipped templates load")
    })
}

fn event(file: &str) -> Event {
    read_event(&root().join("rules/tests/events").join(file)).expect("example event")
}

/// Where a person in each locale lives, so dates are deterministic.
fn zone(locale: &str) -> &'static str {
    if locale == "de-DE" {
        "Europe/Berlin"
    } else if locale == "zh-CN" {
        "Asia/Shanghai"
    } else {
        "America/Los_Angeles"
    }
}

/// The deliveries the rules plan for an event, one per notification and channel.
fn planned(event: &Event) -> Vec<Delivery> {
    let dir = read_directory(&root().join("rules/tests/directory.jsonl")).expect("directory");
    let plan = route(event, rules(), &dir, &MemoryState::new());
    let mut out: Vec<Delivery> = Vec::new();
    for d in plan.deliveries.into_iter().filter(|d| d.decision == Decision::Send) {
        if !out
            .iter()
            .any(|o| o.notification == d.notification && o.channel == d.channel)
        {
            out.push(d);
        }
    }
    out
}

fn email_snapshot(e: &RenderedEmail) -> String {
    format!(
        "subject: {}\n\n--- text ---\n{}\n--- html ---\n{}",
        e.subject, e.text, e.html
    )
}

/// The locales every notification is written in.
const LOCALES: [&str; 3] = ["en-US", "de-DE", "zh-CN"];

#[test]
fn every_notification_renders_for_the_examples_in_every_locale() {
    let templates = templates();
    let mut covered = std::collections::BTreeSet::new();
    for event in examples() {
        for mut delivery in planned(&event) {
            for locale in LOCALES {
                delivery.recipient.locale = Some(locale.into());
                delivery.recipient.time_zone = Some(zone(locale).into());
                let rendered = templates.render(&event, &delivery).expect("renders");
                let name = format!(
                    "{}.{}.{locale}.{}",
                    delivery.notification, event.event_type, delivery.channel
                );
                let snapshot = match &rendered {
                    Rendered::Email(e) => {
                        assert_eq!(e.locale, locale);
                        email_snapshot(e)
                    }
                    Rendered::ActionCenter(a) => format!("title: {}\nlink: {}\n\n{}", a.title, a.link, a.body),
                };
                assert!(!snapshot.contains("{{"), "{name}: unrendered template text");
                insta::assert_snapshot!(name, snapshot);
                covered.insert(delivery.notification.clone());
            }
        }
    }
    // The digest is not planned by an event; it is rendered at flush.
    let lead = event("lead.created.contact_me.json");
    let mut second = lead.clone();
    if let referral_router::event::EventData::LeadCreated(d) = &mut second.data {
        d.lead.id = "lead-9002".into();
        d.lead.customer.company = "Tailspin Toys".into();
        d.lead.offer = None;
        d.lead.notes = None;
    }
    for locale in LOCALES {
        let recipient = person("Gina Gray", "gina@fabrikam.example", locale);
        let digest = templates
            .render_digest(
                "leads-digest",
                "leads-digest",
                &recipient,
                &[lead.clone(), second.clone()],
            )
            .expect("digest renders");
        assert!(digest.subject.starts_with('2'), "{}", digest.subject);
        assert!(digest.text.contains("Adventure Works") && digest.text.contains("Tailspin Toys"));
        insta::assert_snapshot!(format!("leads-digest.{locale}.email"), email_snapshot(&digest));
    }
    covered.insert("leads-digest".into());
    let all: Vec<&str> = templates.names().collect();
    assert_eq!(covered.iter().map(String::as_str).collect::<Vec<_>>(), all);
    for name in all {
        assert_eq!(templates.locales(name), ["de-DE", "en-US", "zh-CN"], "{name}");
    }
}

fn person(name: &str, email: &str, locale: &str) -> Recipient {
    Recipient {
        email: EmailAddress::parse(email).unwrap(),
        name: name.into(),
        user_id: None,
        partner_id: None,
        locale: Some(locale.into()),
        time_zone: Some(zone(locale).into()),
    }
}

fn delivery(notification: &str, channel: Channel, recipient: Recipient) -> Delivery {
    Delivery::stand_in(notification, channel, recipient, None)
}

fn sender() -> Sender {
    Sender {
        from: "Partner Center <referrals@partner.example>".parse().unwrap(),
        reply_to: Some("Partner Support <support@partner.example>".parse().unwrap()),
    }
}

#[test]
fn the_email_is_a_real_multipart_alternative_message() {
    let event = event("cosell.opportunity.accepted.json");
    let to = person("Jürgen Groß", "juergen@fabrikam.example", "de-DE");
    let Rendered::Email(email) = templates()
        .render(
            &event,
            &delivery("cosell-outgoing-accepted", Channel::Email, to.clone()),
        )
        .unwrap()
    else {
        panic!("an email")
    };
    let id = message_id(&event.id, "cosell-outgoing-accepted", &to.email, "partner.example");
    let bytes = build_email(&email, &sender(), &to, &id, None, "evt-test")
        .unwrap()
        .formatted();
    let parsed = MessageParser::default().parse(&bytes).expect("parses as MIME");

    assert_eq!(
        parsed.subject(),
        Some("Northwind Traders hat Ihre Co-Sell-Verkaufschance „Contoso data platform migration“ angenommen")
    );
    let content_type = parsed.content_type().unwrap();
    assert_eq!(
        (content_type.ctype(), content_type.subtype()),
        ("multipart", Some("alternative"))
    );
    let from = parsed.from().unwrap().first().unwrap();
    assert_eq!(from.address(), Some("referrals@partner.example"));
    let to_addr = parsed.to().unwrap().first().unwrap();
    assert_eq!(
        (to_addr.name(), to_addr.address()),
        (Some("Jürgen Groß"), Some("juergen@fabrikam.example"))
    );
    assert_eq!(
        parsed.reply_to().unwrap().first().unwrap().address(),
        Some("support@partner.example")
    );
    assert_eq!(Some(id.trim_matches(['<', '>'])), parsed.message_id());
    assert!(parsed.header(HeaderName::ListUnsubscribe).is_none());

    let text = parsed.body_text(0).unwrap().replace("\r\n", "\n");
    let html = parsed.body_html(0).unwrap();
    assert!(text.starts_with("Hallo Jürgen Groß,"), "{text}");
    assert!(text.contains("IHR ANSPRECHPARTNER BEI Northwind Traders\n  Cara Chen <cara@northwind.example>"));
    assert!(html.contains("Hallo Jürgen Groß,") && html.contains("<table"));
    assert_eq!(parsed.text_body.len(), 1);
    assert_eq!(parsed.html_body.len(), 1);
}

#[test]
fn optional_notifications_carry_list_unsubscribe() {
    let event = event("dealreg.review_selected.json");
    let to = person("Amy Alvarez", "amy@fabrikam.example", "en-US");
    assert!(templates().is_optional("dealreg-review-selected"));
    let Rendered::Email(email) = templates()
        .render(&event, &delivery("dealreg-review-selected", Channel::Email, to.clone()))
        .unwrap()
    else {
        panic!("an email")
    };
    let headers = |one_click: bool| {
        let unsubscribe = ListUnsubscribe {
            url: "https://partner.example/unsubscribe?u=amy".into(),
            one_click,
        };
        let bytes = build_email(
            &email,
            &sender(),
            &to,
            "<x@partner.example>",
            Some(&unsubscribe),
            "evt-test",
        )
        .unwrap()
        .formatted();
        let parsed = MessageParser::default().parse(&bytes).unwrap();
        let header = |name: HeaderName<'static>| parsed.header_raw(name).map(str::trim).map(str::to_owned);
        (
            header(HeaderName::ListUnsubscribe),
            header(HeaderName::ListUnsubscribePost),
        )
    };
    assert_eq!(
        headers(true),
        (
            Some("<https://partner.example/unsubscribe?u=amy>".into()),
            Some("List-Unsubscribe=One-Click".into())
        )
    );
    // A page for everyone is no one-click link: no List-Unsubscribe-Post.
    assert_eq!(
        headers(false),
        (Some("<https://partner.example/unsubscribe?u=amy>".into()), None)
    );
}

#[test]
fn a_line_break_in_a_name_starts_no_header() {
    let mut event = event("lead.created.contact_me.json");
    if let referral_router::event::EventData::LeadCreated(d) = &mut event.data {
        d.lead.customer.company = "Evil Corp\r\nBcc: victim@evil.example".into();
    }
    let to = person(
        "Eve\r\nBcc: victim@evil.example\r\nX-Injected: yes",
        "dana@fabrikam.example",
        "en-US",
    );
    let Rendered::Email(email) = templates()
        .render(&event, &delivery("lead-generated", Channel::Email, to.clone()))
        .unwrap()
    else {
        panic!("an email")
    };
    assert_eq!(
        email.subject,
        "New lead: Evil Corp Bcc: victim@evil.example wants to be contacted"
    );
    let bytes = build_email(&email, &sender(), &to, "<id@partner.example>", None, "evt-test")
        .unwrap()
        .formatted();
    let raw = String::from_utf8_lossy(&bytes);
    let headers = &raw[..raw.find("\r\n\r\n").expect("a header block")];
    assert!(
        !headers.contains("\nBcc:") && !headers.contains("\nX-Injected"),
        "{headers}"
    );
    let names: Vec<&str> = headers
        .lines()
        .filter(|l| !l.starts_with([' ', '\t']))
        .filter_map(|l| l.split(':').next())
        .collect();
    assert_eq!(
        names,
        [
            "From",
            "To",
            "Subject",
            "Message-ID",
            "X-Router-Notification",
            "X-Router-Event",
            "Date",
            "Reply-To",
            "MIME-Version",
            "Content-Type"
        ]
    );
    let parsed = MessageParser::default().parse(&bytes).unwrap();
    assert!(parsed.bcc().is_none());
    assert!(parsed.header(HeaderName::Other("X-Injected".into())).is_none());
    assert_eq!(
        parsed.to().unwrap().first().unwrap().name(),
        Some("Eve Bcc: victim@evil.example X-Injected: yes")
    );
    assert_eq!(
        parsed.subject(),
        Some("New lead: Evil Corp Bcc: victim@evil.example wants to be contacted")
    );
}

#[test]
fn script_in_event_text_arrives_escaped() {
    let mut event = event("lead.created.contact_me.json");
    if let referral_router::event::EventData::LeadCreated(d) = &mut event.data {
        d.lead.notes = Some("<script>alert('x')</script> & more".into());
        d.lead.customer.name = "<b onmouseover=\"x\">Riley</b>".into();
    }
    let to = person("<script>name</script>", "dana@fabrikam.example", "en-US");
    let Rendered::Email(email) = templates()
        .render(&event, &delivery("lead-generated", Channel::Email, to.clone()))
        .unwrap()
    else {
        panic!("an email")
    };
    assert!(!email.html.contains("<script"), "{}", email.html);
    assert!(!email.html.contains("<b onmouseover"));
    assert!(
        email
            .html
            .contains("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more")
    );
    assert!(email.html.contains("Hello &lt;script&gt;name&lt;/script&gt;,"));
    // The text part is not HTML: it shows what was typed.
    assert!(email.text.contains("<script>alert('x')</script> & more"));
}

/// A copy of the shipped templates to break on purpose.
fn scratch_templates() -> (tempfile::TempDir, PathBuf) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.path().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("templates");
    copy(&root().join("templates"), &dir);
    (tmp, dir)
}

#[test]
fn a_field_the_model_lacks_fails_check_with_file_and_line() {
    let (_tmp, dir) = scratch_templates();
    let file = dir.join("cosell-outgoing-declined/en-US/body.html.hbs");
    let text = std::fs::read_to_string(&file).unwrap();
    // Inside #if, where handlebars' own strict mode does not look.
    let broken = text.replacen(
        "{{/layout}}",
        "{{#if data.notes}}\n  <p>{{data.receiver.contact.phone_number}}</p>\n{{/if}}\n{{/layout}}",
        1,
    );
    let line = broken.lines().position(|l| l.contains("phone_number")).unwrap() + 1;
    std::fs::write(&file, broken).unwrap();

    let err = Templates::load(&dir, rules(), options(examples()))
        .unwrap_err()
        .to_string();
    let expected = format!(
        "{}:{line}:6: `data.receiver.contact.phone_number` is not in the data of cosell.opportunity.declined events",
        file.display()
    );
    assert!(err.contains(&expected), "{err}");

    let report = cli::templates::check(&dir, &root().join("rules")).unwrap_err();
    assert!(report.contains(&format!("body.html.hbs:{line}:6")), "{report}");
}

#[test]
fn a_missing_locale_part_or_partial_is_an_error() {
    let (_tmp, dir) = scratch_templates();
    std::fs::remove_file(dir.join("lead-generated/de-DE/action_center_body.hbs")).unwrap();
    std::fs::remove_file(dir.join("partials/de-DE/why.txt.hbs")).unwrap();
    let err = Templates::load(&dir, rules(), options(Vec::new()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lead-generated/de-DE/action_center_body.hbs: missing"),
        "{err}"
    );
    assert!(err.contains("no partial `why`"), "{err}");
}

#[test]
fn a_locale_variant_lacking_what_en_us_has_is_a_warning_naming_the_file() {
    let (_tmp, dir) = scratch_templates();
    let rules = root().join("rules");
    let clean = cli::templates::check(&dir, &rules).unwrap();
    assert!(!clean.contains("warning"), "{clean}");
    // A shared `why` for the text part: zh-CN without its own now falls back to it.
    std::fs::copy(dir.join("partials/en-US/why.txt.hbs"), dir.join("partials/why.txt.hbs")).unwrap();
    std::fs::remove_file(dir.join("partials/zh-CN/why.txt.hbs")).unwrap();
    let report = cli::templates::check(&dir, &rules).unwrap();
    let expected = format!(
        "{}: warning: en-US has this part and zh-CN does not (the shared partial is used)",
        dir.join("partials/zh-CN/why.txt.hbs").display()
    );
    assert!(report.contains(&expected), "{report}");
    assert_eq!(report.matches("warning").count(), 1, "{report}");
    assert!(report.lines().last().unwrap().starts_with("templates ok:"), "{report}");
}

#[test]
fn chinese_recipients_read_chinese_dates_and_text() {
    let event = event("cosell.opportunity.expiring.json");
    let mut delivery = planned(&event)
        .into_iter()
        .find(|d| d.channel == Channel::Email)
        .expect("an email");
    delivery.recipient.locale = Some("zh-CN".into());
    delivery.recipient.time_zone = Some("Asia/Shanghai".into());
    let Rendered::Email(email) = templates().render(&event, &delivery).expect("renders") else {
        panic!("an email")
    };
    assert_eq!(email.locale, "zh-CN");
    let han = |s: &str| s.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c));
    assert!(
        han(&email.subject) && han(&email.text),
        "{}\n{}",
        email.subject,
        email.text
    );
    assert!(email.text.contains("（Asia/Shanghai）"), "{}", email.text);
    assert!(email.html.contains("lang=\"zh-CN\""), "{}", email.html);
}

#[test]
fn rules_check_fails_when_a_rule_names_a_missing_template() {
    let (_tmp, dir) = scratch_templates();
    assert!(cli::rules_check(&root().join("rules"), &dir).is_ok());
    std::fs::remove_dir_all(dir.join("cosell-outgoing-expired")).unwrap();
    let err = cli::rules_check(&root().join("rules"), &dir).unwrap_err();
    assert!(
        err.contains("template `cosell-outgoing-expired` does not exist"),
        "{err}"
    );
    assert!(err.contains("cosell.yaml:"), "{err}");
}

#[test]
fn locale_falls_back_to_the_language_then_en_us() {
    let t = templates();
    assert_eq!(t.pick_locale("lead-generated", Some("de-DE")), Some("de-DE"));
    assert_eq!(t.pick_locale("lead-generated", Some("de-AT")), Some("de-DE"));
    assert_eq!(t.pick_locale("lead-generated", Some("fr-FR")), Some("en-US"));
    assert_eq!(t.pick_locale("lead-generated", None), Some("en-US"));

    // Routing gives a German admin of Northwind German text with Berlin times.
    let event = event("cosell.opportunity.shared.json");
    let cara = planned(&event)
        .into_iter()
        .find(|d| d.recipient.email.as_str() == "cara@northwind.example" && d.channel == Channel::Email)
        .expect("Cara is a referral admin of the receiver");
    let Rendered::Email(email) = t.render(&event, &cara).unwrap() else {
        panic!("an email")
    };
    assert_eq!(email.locale, "de-DE");
    assert!(
        email.text.contains("bis 4. Dezember 2026, 10:15 Uhr (Europe/Berlin)"),
        "{}",
        email.text
    );
}

#[test]
fn a_session_fills_each_recipient_into_the_shared_render() {
    let event = event("dealreg.action_required.json");
    let t = templates();
    let mut session = t.session(&event);
    let a = delivery(
        "dealreg-action-required",
        Channel::Email,
        person("Amy & Co", "amy@fabrikam.example", "en-US"),
    );
    let b = delivery(
        "dealreg-action-required",
        Channel::Email,
        person("Ben Brooks", "ben@fabrikam.example", "en-US"),
    );
    let (Rendered::Email(ra), Rendered::Email(rb)) = (session.render(&a).unwrap(), session.render(&b).unwrap()) else {
        panic!("emails")
    };
    assert!(ra.html.contains("Hello Amy &amp; Co,") && ra.html.contains("sent to amy@fabrikam.example"));
    assert!(rb.html.contains("Hello Ben Brooks,") && rb.html.contains("sent to ben@fabrikam.example"));
    assert_eq!(
        ra.html.replace("Amy &amp; Co", "X").replace("amy@", "x@"),
        rb.html.replace("Ben Brooks", "X").replace("ben@", "x@")
    );
    // Same as rendering each on its own.
    assert_eq!(t.render(&event, &b).unwrap(), Rendered::Email(rb));
}
