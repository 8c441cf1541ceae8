//! The console in a real browser: headless Chromium driven through WebDriver
//! (Debian's `chromium` and `chromium-driver`; `scripts/test.sh` installs them).
//! A template author chooses a notification and an event and sees its
//! subject; saves a template and sees the page follow; breaks it and sees the
//! checker's error with its file and line; and the email fits a 375 px screen.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{self, fs, http};

/// A WebDriver session on a chromedriver of the test's own.
struct Browser {
    driver: Child,
    addr: String,
    session: String,
}

impl Browser {
    async fn start() -> Self {
        let port = support::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver cannot be started ({e}): these tests need Debian's chromium and \
                     chromium-driver (`apt-get install chromium chromium-driver`; scripts/test.sh does it)"
                )
            });
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while request(&addr, "GET", "/status", b"").await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"]}
        }}});
        let mut browser = Self {
            driver,
            addr,
            session: String::new(),
        };
        let created = browser.call("POST", "/session", &capabilities).await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_string();
        browser
    }

    /// One WebDriver command; its `value`.
    async fn call(&self, method: &str, path: &str, body: &Value) -> Value {
        let bytes = body.to_string().into_bytes();
        let text = tokio::time::timeout(Duration::from_secs(30), request(&self.addr, method, path, &bytes))
            .await
            .expect("WebDriver answered")
            .unwrap();
        let reply: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("WebDriver said: {text}"));
        reply["value"].clone()
    }

    async fn goto(&self, url: &str) {
        let path = format!("/session/{}/url", self.session);
        self.call("POST", &path, &json!({"url": url})).await;
    }

    /// Runs `script` (a function body) in the page; what it returns.
    async fn js(&self, script: &str) -> Value {
        let path = format!("/session/{}/execute/sync", self.session);
        self.call("POST", &path, &json!({"script": script, "args": []})).await
    }

    /// Runs `script` until it returns something truthy; that value.
    async fn wait_for(&self, script: &str, what: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let v = self.js(script).await;
            assert!(
                !(v.get("error").is_some() && v.get("message").is_some()),
                "{what}: the script failed: {v}"
            );
            if !(v.is_null() || v == json!(false) || v == json!("")) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the page never showed it (last: {v})"
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    async fn close(self) {
        let path = format!("/session/{}", self.session);
        self.call("DELETE", &path, &json!({})).await;
    }
}

impl Drop for Browser {
    /// Ends the session (which closes Chromium) even when the test failed, then the driver.
    fn drop(&mut self) {
        use std::io::Write;
        if let Ok(mut tcp) = std::net::TcpStream::connect(&self.addr) {
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
                self.session, self.addr
            );
            let _ = tcp.write_all(request.as_bytes());
            let _ = std::io::Read::read(&mut tcp, &mut [0u8; 512]);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One HTTP request to chromedriver, which keeps connections open: the body,
/// read to its `Content-Length`.
async fn request(addr: &str, method: &str, path: &str, body: &[u8]) -> std::io::Result<String> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::other("chromedriver closed the connection"));
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut text = vec![0; length];
    reader.read_exact(&mut text).await?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// Chooses `value` in the `<select id=…>` as a person would.
fn choose(id: &str, value: &str) -> String {
    format!(
        "const s = document.getElementById('{id}'); s.value = '{value}'; \
         s.dispatchEvent(new Event('change')); return s.value;"
    )
}

const SUBJECT: &str = "return document.getElementById('subject').textContent;";

/// A console on a copy of the shipped rules and templates (no store), and a
/// browser on its page once the notifications are listed.
async fn console_on_a_copy() -> (tempfile::TempDir, Child, String, Browser) {
    let copy = tempfile::tempdir().unwrap();
    fs::copy_dir(&support::root().join("rules"), &copy.path().join("rules"));
    fs::copy_dir(&support::root().join("templates"), &copy.path().join("templates"));
    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let console = Command::new(env!("CARGO_BIN_EXE_referral-router"))
        .args(["console", "--addr", &addr])
        .current_dir(copy.path())
        .env(
            "ROUTER__STORE__URL",
            format!("sqlite://{}/no-store.db", copy.path().display()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http(&addr, "GET", "/api/version", None).await.is_err() {
        assert!(Instant::now() < deadline, "the console did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let browser = Browser::start().await;
    browser.goto(&format!("http://{addr}/")).await;
    browser
        .wait_for(
            "return document.getElementById('notification').options.length > 1;",
            "the notifications",
        )
        .await;
    (copy, console, addr, browser)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_author_previews_edits_breaks_and_sees_the_phone_layout() {
    let _gate = support::shared().await;
    let (copy, mut console, _, browser) = console_on_a_copy().await;

    // Choose a notification and an event: its subject.
    browser.js(&choose("notification", "dealreg-review-selected")).await;
    browser.js(&choose("event", "dealreg.review_selected")).await;
    let subject = browser
        .wait_for(
            "const t = document.getElementById('subject').textContent; return t.includes('selected for review') && t;",
            "the subject",
        )
        .await;
    assert_eq!(
        subject,
        "Deal registration for \"Contoso data platform migration\" was selected for review"
    );

    // Explain, as tables: who gets it and why; every rule of the event's type.
    let plan = browser
        .wait_for(
            "const t = document.getElementById('plan').textContent; return t.includes('ben@fabrikam.example') && t;",
            "the plan",
        )
        .await;
    assert!(plan.as_str().unwrap().contains("dealreg-review-selected"), "{plan}");
    let trace = browser
        .wait_for(
            "return document.getElementById('trace').rows.length > 1 && document.getElementById('trace').textContent;",
            "the rules",
        )
        .await;
    assert!(trace.as_str().unwrap().contains("dealreg-review-selected"), "{trace}");
    // The locale grid: a column per locale, and what a missing variant falls back to.
    let grid = browser
        .wait_for(
            "const g = document.getElementById('grid'); return g.rows.length > 10 && g.rows[0].textContent;",
            "the locale grid",
        )
        .await;
    assert!(grid.as_str().unwrap().contains("zh-CN"), "{grid}");

    // Save a change to the template: the page follows, without a reload.
    browser.js("window.notReloaded = true; return true;").await;
    let file = copy.path().join("templates/dealreg-review-selected/en-US/subject.hbs");
    std::fs::write(&file, "Picked for review: \"{{data.referral.name}}\"\n").unwrap();
    let edited = browser
        .wait_for(
            "const t = document.getElementById('subject').textContent; return t.startsWith('Picked') && t;",
            "the edited subject",
        )
        .await;
    assert_eq!(edited, "Picked for review: \"Contoso data platform migration\"");
    assert_eq!(browser.js("return window.notReloaded === true;").await, json!(true));

    // Break it (an `if` never closed): the checker's error, with file, line and
    // column (where it noticed: the end of the file), beside the last good preview.
    std::fs::write(&file, "Picked for review: {{#if data.referral.name}}\n").unwrap();
    let error = browser
        .wait_for(
            "const e = document.getElementById('error'); return e.style.display === 'block' && e.textContent;",
            "the error",
        )
        .await;
    let error = error.as_str().unwrap();
    assert!(
        error.contains("templates/dealreg-review-selected/en-US/subject.hbs:2:1: syntax"),
        "{error}"
    );
    assert_eq!(browser.js(SUBJECT).await, json!(edited), "the last good preview stays");

    // The HTML part at 375 px: nothing scrolls sideways.
    let measured = browser
        .js("const html = document.getElementById('phone').srcdoc; \
             const f = document.createElement('iframe'); f.style.width = '375px'; f.style.height = '800px'; \
             f.srcdoc = html; document.body.append(f); window.measure = f; return html.length;")
        .await;
    assert!(measured.as_u64().unwrap() > 1000);
    let widths = browser
        .wait_for(
            "const d = window.measure.contentDocument; \
             return d && d.readyState === 'complete' && d.body && d.body.children.length > 0 && \
             [d.documentElement.scrollWidth, d.documentElement.clientWidth];",
            "the 375 px layout",
        )
        .await;
    let (scroll, client) = (widths[0].as_u64().unwrap(), widths[1].as_u64().unwrap());
    assert!((300..=375).contains(&client), "{widths}");
    assert!(scroll <= client, "the email scrolls sideways at 375 px: {widths}");
    browser.close().await;
    let _ = console.kill();
    let _ = console.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_author_sees_what_an_edit_would_change_and_previews_a_pasted_event() {
    let _gate = support::shared().await;
    let (copy, mut console, _, browser) = console_on_a_copy().await;
    let unchanged = browser
        .wait_for(
            "const t = document.getElementById('changes-summary').textContent; return t.includes('nothing would change') && t;",
            "the first comparison",
        )
        .await;
    assert!(
        unchanged
            .as_str()
            .unwrap()
            .contains("example events against the working copy when the console started"),
        "{unchanged}"
    );

    // A new subject: every email of it changes, and one opens before and after.
    let subject = copy.path().join("templates/dealreg-review-selected/en-US/subject.hbs");
    let original = std::fs::read_to_string(&subject).unwrap();
    std::fs::write(&subject, "Picked for review: \"{{data.referral.name}}\"\n").unwrap();
    let changed = browser
        .wait_for(
            "const t = document.getElementById('changes-summary').textContent; return t.includes('changed') && !t.includes(' 0 changed') && t;",
            "the changed subjects",
        )
        .await;
    assert!(changed.as_str().unwrap().contains("0 added, 0 removed"), "{changed}");
    let list = browser
        .js("return document.getElementById('changes-list').textContent;")
        .await;
    let list = list.as_str().unwrap();
    assert!(
        list.contains("dealreg-review-selected") && list.contains("ben@fabrikam.example"),
        "{list}"
    );
    assert!(
        !list.contains("cosell-"),
        "only the edited notification changed: {list}"
    );
    browser
        .js("document.querySelector('#changes tr.pick[data-kind=changed]').click(); return true;")
        .await;
    let sides = browser
        .wait_for(
            "const b = document.getElementById('before-subject').textContent, a = document.getElementById('after-subject').textContent; \
             return a.startsWith('Picked') && [b, a];",
            "the email before and after",
        )
        .await;
    assert_eq!(
        sides,
        json!([
            "Deal registration for \"Contoso data platform migration\" was selected for review",
            "Picked for review: \"Contoso data platform migration\""
        ])
    );

    // Back to the shipped subject, and a routing change instead: partner-led
    // deals picked for review are no longer announced.
    std::fs::write(&subject, original).unwrap();
    browser
        .wait_for(
            "const t = document.getElementById('changes-summary').textContent; return t.includes('nothing would change') && t;",
            "the subject restored",
        )
        .await;
    let rules = copy.path().join("rules/dealreg.yaml");
    let mut text = std::fs::read_to_string(&rules).unwrap();
    text.push_str(
        "\n  - id: quiet-review-for-partner-led\n    on: [dealreg.review_selected]\n    when:\n      \
         data.referral.deal_type: { equals: partner_led }\n    suppress: [dealreg-review-selected]\n",
    );
    std::fs::write(&rules, text).unwrap();
    let suppressed = browser
        .wait_for(
            "const t = document.getElementById('changes-list').textContent; return t.includes('send → suppress') && t;",
            "the suppressed deliveries",
        )
        .await;
    let suppressed = suppressed.as_str().unwrap();
    assert!(
        suppressed.contains("ben@fabrikam.example") && suppressed.contains("amy@fabrikam.example"),
        "{suppressed}"
    );
    let summary = browser
        .js("return document.getElementById('changes-summary').textContent;")
        .await;
    assert!(
        summary.as_str().unwrap().contains("0 added, 0 removed, 2 changed"),
        "{summary}"
    );

    // A pasted event: previewed as if it had come from the broker.
    let example =
        std::fs::read_to_string(copy.path().join("rules/tests/events/cosell.opportunity.accepted.json")).unwrap();
    let pasted = example
        .replacen("\"id\": \"evt-", "\"id\": \"pasted-", 1)
        .replace("Contoso data platform migration", "Pasted platform deal");
    let script = format!(
        "document.getElementById('paste').open = true; \
         document.getElementById('pasted-json').value = {}; \
         document.getElementById('use-pasted').click(); return true;",
        serde_json::to_string(&pasted).unwrap()
    );
    browser.js(&script).await;
    let subject = browser
        .wait_for(
            "const t = document.getElementById('subject').textContent; return t.includes('Pasted platform deal') && t;",
            "the pasted event's subject",
        )
        .await;
    assert!(subject.as_str().unwrap().contains("Pasted platform deal"), "{subject}");
    let said = browser
        .js("return document.getElementById('pasted').textContent;")
        .await;
    assert!(
        said.as_str()
            .unwrap()
            .contains("the rules send cosell-outgoing-accepted"),
        "{said}"
    );

    // Not an event: said so, and the preview stays.
    browser
        .js("document.getElementById('pasted-json').value = '{\"id\": 1}'; \
             document.getElementById('use-pasted').click(); return true;")
        .await;
    let refused = browser
        .wait_for(
            "const t = document.getElementById('pasted').textContent; return t.startsWith('not an event') && t;",
            "the refusal",
        )
        .await;
    assert!(refused.as_str().unwrap().starts_with("not an event"), "{refused}");
    assert_eq!(browser.js(SUBJECT).await, subject);
    browser.close().await;
    let _ = console.kill();
    let _ = console.wait();
}
