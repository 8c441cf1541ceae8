//! Render benchmark: µs per email over a realistic mix of notifications and
//! recipients, against handlebars.js rendering the same templates.
//!
//! The mix is every example event routed through the shipped rules against a
//! directory where each partner location has several referral admins, in the
//! partner's locale and mostly the partner's time zone (as in production,
//! where most recipients of one event share both). Rust renders the way the
//! worker does: one `Session` per event. handlebars.js renders each email
//! naively, in full. The outputs must be byte-identical.
//!
//! Run with `scripts/bench-render.sh` (it installs npm `handlebars` into
//! `bench/node_modules`). Prints:
//! `render: rust_us_per_email=X js_us_per_email=Y ratio=Z`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use referral_router::cli::templates::PREVIEW_PORTAL;
use referral_router::decode::decode_structured;
use referral_router::directory::Directory;
use referral_router::event::Event;
use referral_router::render::{RenderOptions, Rendered, RenderedEmail, Templates};
use referral_router::route::rules::Channel;
use referral_router::route::{Decision, Delivery, MemoryState, RuleSet, route};
use serde_json::{Value, json};

const ITERATIONS: usize = 50;

fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench`: stay quiet there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("render benchmark: run `scripts/bench-render.sh`");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = RuleSet::load_dir(&root.join("rules")).expect("rules");
    let examples = referral_router::render::example_events(&root.join("rules")).expect("examples");
    let options = RenderOptions {
        portal_base_url: PREVIEW_PORTAL.into(),
        examples: examples.clone(),
        preference_links: None,
    };
    let templates = Templates::load(&root.join("templates"), &rules, options).expect("templates");
    let directory = directory(root);

    let workload: Vec<(Event, Vec<Delivery>)> = examples
        .into_iter()
        .map(|event| {
            let plan = route(&event, &rules, &directory, &MemoryState::new());
            let emails = plan
                .deliveries
                .into_iter()
                .filter(|d| d.decision == Decision::Send && d.channel == Channel::Email)
                .collect();
            (event, emails)
        })
        .filter(|(_, emails): &(Event, Vec<Delivery>)| !emails.is_empty())
        .collect();
    let emails: usize = workload.iter().map(|(_, d)| d.len()).sum();
    let mut per_notification = std::collections::BTreeMap::<&str, usize>::new();
    for d in workload.iter().flat_map(|(_, d)| d) {
        *per_notification.entry(d.notification.as_str()).or_default() += 1;
    }
    println!(
        "mix: {emails} emails from {} events: {per_notification:?}",
        workload.len()
    );

    // The worker's way: one session per event.
    let render_all = || -> Vec<RenderedEmail> {
        let mut out = Vec::with_capacity(emails);
        for (event, deliveries) in &workload {
            let mut session = templates.session(event);
            for d in deliveries {
                match session.render(d).expect("renders") {
                    Rendered::Email(e) => out.push(e),
                    Rendered::ActionCenter(_) => unreachable!("emails only"),
                }
            }
        }
        out
    };
    // The naive way, for comparison: every email rendered in full on its own.
    let render_naive = || {
        for (event, deliveries) in &workload {
            for d in deliveries {
                std::hint::black_box(templates.render(event, d).expect("renders"));
            }
        }
    };
    let rust_out = render_all();
    let rust_us = median_us(|| {
        std::hint::black_box(render_all());
    }) / emails as f64;
    let naive_us = median_us(render_naive) / emails as f64;

    let mut js_emails = Vec::new();
    for (event, deliveries) in &workload {
        let mut session = templates.session(event);
        for d in deliveries {
            let locale = templates
                .pick_locale(&d.template, d.recipient.locale.as_deref())
                .unwrap_or("en-US");
            js_emails.push(json!({
                "locale": locale,
                "template": d.template,
                "context": session.context(d).expect("context"),
            }));
        }
    }
    let input = json!({
        "portal_base_url": PREVIEW_PORTAL,
        "templates": templates.engine_sources(),
        "emails": js_emails,
    });
    let input_file = std::env::temp_dir().join(format!("referral-router-bench-{}.json", std::process::id()));
    std::fs::write(&input_file, serde_json::to_vec(&input).expect("json")).expect("write bench input");
    let output = Command::new("node")
        .arg(root.join("bench/render.js"))
        .arg(&input_file)
        .arg(ITERATIONS.to_string())
        .output()
        .expect("node runs (is it installed?)");
    let _ = std::fs::remove_file(&input_file);
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        panic!("handlebars.js failed; did scripts/bench-render.sh install bench/node_modules?");
    }
    let js: Value = serde_json::from_slice(&output.stdout).expect("node prints JSON");
    let js_us = js["us_per_email"].as_f64().expect("a number");

    let mut mismatches = 0;
    for (i, (rust, js)) in rust_out
        .iter()
        .zip(js["outputs"].as_array().expect("outputs"))
        .enumerate()
    {
        for (part, mine) in [("subject", &rust.subject), ("html", &rust.html), ("text", &rust.text)] {
            let theirs = js[part].as_str().unwrap_or_default();
            if mine != theirs {
                mismatches += 1;
                let at = mine.bytes().zip(theirs.bytes()).take_while(|(a, b)| a == b).count();
                let show = |s: &str| {
                    s.get(at.saturating_sub(60)..(at + 60).min(s.len()))
                        .unwrap_or("")
                        .to_owned()
                };
                eprintln!(
                    "email {i} ({} {}) {part} differs at byte {at}:\n  rust: {:?}\n  js:   {:?}",
                    rust.notification,
                    rust.locale,
                    show(mine),
                    show(theirs)
                );
            }
        }
    }
    println!(
        "identical: {} of {} emails (subject, html and text)",
        emails - mismatches.min(emails),
        emails
    );
    println!(
        "render (naive, every email in full): rust_us_per_email={naive_us:.1} ratio={:.2}",
        naive_us / js_us
    );
    println!(
        "render: rust_us_per_email={rust_us:.1} js_us_per_email={js_us:.1} ratio={:.2}",
        rust_us / js_us
    );
    if mismatches > 0 {
        std::process::exit(1);
    }
}

/// The median wall time of `ITERATIONS` runs (after a warm-up), in µs.
fn median_us(mut f: impl FnMut()) -> f64 {
    for _ in 0..5 {
        f();
    }
    let mut samples: Vec<f64> = (0..ITERATIONS)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// The rule fixtures' directory, plus more referral admins per location:
/// each location of a partner has five, in the partner's locale, one of them
/// in another time zone.
fn directory(root: &Path) -> Directory {
    let mut events = referral_router::decode::read_jsonl(&root.join("rules/tests/directory.jsonl")).expect("directory");
    let extra = [
        (
            "fabrikam",
            "4100001",
            "en-US",
            ["America/Los_Angeles", "America/New_York"],
        ),
        ("northwind", "5200002", "de-DE", ["Europe/Berlin", "Europe/Vienna"]),
    ];
    let mut n = 0;
    for (partner, location, locale, zones) in extra {
        for i in 0..4 {
            n += 1;
            let zone = if i == 3 { zones[1] } else { zones[0] };
            let raw = json!({
                "specversion": "1.0", "id": format!("bench-{n}"), "source": "/bench",
                "type": "directory.user.upserted", "time": "2026-11-01T00:00:00Z",
                "data": {
                    "partner_id": partner,
                    "user": {"user_id": format!("{partner}-admin-{i}"), "name": format!("Admin {i} of {partner}"),
                             "email": format!("admin{i}@{partner}.example"), "locale": locale, "time_zone": zone},
                    "roles": [{"role": "referral_admin", "location_id": location}],
                },
            });
            events.push(decode_structured(raw.to_string().as_bytes()).expect("a directory event"));
        }
    }
    Directory::from_events(&events)
}
