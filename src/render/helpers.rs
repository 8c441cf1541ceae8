//! Render step: the template helpers. Dates in the recipient's time zone and
//! locale, money with its currency, deep links into the portal, and `eq`.
//!
//! The set is small and deterministic on purpose: the render benchmark runs the
//! same templates with handlebars.js (`bench/helpers.js` mirrors these) and
//! requires byte-identical output. Helpers return values (not raw output), so
//! handlebars HTML-escapes what they produce in `{{ }}` like any other string.

use chrono::{DateTime, NaiveDate, Utc};
use handlebars::{
    Context, Handlebars, Helper, HelperDef, RenderContext, RenderError, RenderErrorReason, ScopedJson,
    handlebars_helper,
};
use num_format::ToFormattedString;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

/// The helpers templates may call, besides handlebars' own `if`, `unless`, `each`, `with`.
pub const HELPERS: &[&str] = &["date", "datetime", "money", "link", "eq"];

/// Helpers that change the context of their block (their paths are checked differently).
pub const BLOCK_HELPERS: &[&str] = &["if", "unless", "each", "with"];

/// The characters JavaScript's `encodeURIComponent` leaves alone, so links are
/// the same whichever engine renders them.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// Registers every helper; `portal_base_url` is where `link` points (no trailing `/`).
pub fn register(registry: &mut Handlebars<'static>, portal_base_url: &str) {
    registry.register_helper("date", Box::new(DateHelper { with_time: false }));
    registry.register_helper("datetime", Box::new(DateHelper { with_time: true }));
    registry.register_helper("money", Box::new(MoneyHelper));
    registry.register_helper(
        "link",
        Box::new(LinkHelper {
            base: portal_base_url.trim_end_matches('/').to_owned(),
        }),
    );
    handlebars_helper!(eq: |a: Value, b: Value| a == b);
    registry.register_helper("eq", Box::new(eq));
}

/// The locale and time zone a message is rendered for, read from the context root.
fn audience(ctx: &Context) -> (String, chrono_tz::Tz) {
    let root = ctx.data();
    let locale = root.get("locale").and_then(Value::as_str).unwrap_or("en-US").to_owned();
    let tz = root
        .pointer("/recipient/time_zone")
        .and_then(Value::as_str)
        .and_then(|t| t.parse().ok())
        .unwrap_or(chrono_tz::UTC);
    (locale, tz)
}

fn is_german(locale: &str) -> bool {
    locale == "de" || locale.starts_with("de-")
}

fn is_chinese(locale: &str) -> bool {
    locale == "zh" || locale.starts_with("zh-")
}

fn chrono_locale(locale: &str) -> chrono::Locale {
    if is_german(locale) {
        chrono::Locale::de_DE
    } else {
        chrono::Locale::en_US
    }
}

fn param<'a>(h: &'a Helper, i: usize) -> Result<&'a Value, RenderError> {
    h.param(i)
        .map(|p| p.value())
        .ok_or_else(|| RenderErrorReason::ParamNotFoundForIndex(h.name().to_owned().leak(), i).into())
}

fn invalid(h: &Helper, what: &str, value: &Value) -> RenderError {
    RenderErrorReason::Other(format!("`{}` needs {what}, got {value}", h.name())).into()
}

/// `{{date x}}` / `{{datetime x}}`: an RFC 3339 timestamp (shown in the
/// recipient's time zone) or a calendar date. `null` renders as nothing.
struct DateHelper {
    with_time: bool,
}

impl HelperDef for DateHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let value = param(h, 0)?;
        if value.is_null() {
            return Ok(ScopedJson::Derived(Value::String(String::new())));
        }
        let raw = value.as_str().ok_or_else(|| invalid(h, "a date", value))?;
        let (locale, tz) = audience(ctx);
        let text = if let Ok(at) = DateTime::parse_from_rfc3339(raw) {
            format_datetime(at.with_timezone(&Utc), tz, &locale, self.with_time)
        } else if let Ok(day) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
            format_date(day, &locale)
        } else {
            return Err(invalid(h, "an RFC 3339 time or a YYYY-MM-DD date", value));
        };
        Ok(ScopedJson::Derived(Value::String(text)))
    }
}

/// A calendar date in the locale's long form: `March 31, 2027`, `31. März 2027`, `2027年3月31日`.
pub fn format_date(day: NaiveDate, locale: &str) -> String {
    if is_chinese(locale) {
        return day.format("%Y年%-m月%-d日").to_string();
    }
    let pattern = if is_german(locale) { "%-d. %B %Y" } else { "%B %-d, %Y" };
    day.format_localized(pattern, chrono_locale(locale)).to_string()
}

/// A moment in the recipient's zone, naming the zone so nobody has to guess:
/// `December 4, 2026, 1:15 AM (America/Los_Angeles)`, `4. Dezember 2026, 10:15 Uhr (Europe/Berlin)`,
/// `2026年12月4日 17:15（Asia/Shanghai）`.
pub fn format_datetime(at: DateTime<Utc>, tz: chrono_tz::Tz, locale: &str, with_time: bool) -> String {
    let local = at.with_timezone(&tz);
    if !with_time {
        return format_date(local.date_naive(), locale);
    }
    if is_chinese(locale) {
        return format!(
            "{} {}（{}）",
            format_date(local.date_naive(), locale),
            local.format("%H:%M"),
            tz.name()
        );
    }
    let pattern = if is_german(locale) {
        "%-d. %B %Y, %H:%M Uhr"
    } else {
        "%B %-d, %Y, %-I:%M %p"
    };
    format!(
        "{} ({})",
        local.format_localized(pattern, chrono_locale(locale)),
        tz.name()
    )
}

/// `{{money data.referral.value}}`: `USD 125,000.00` / `125.000,00 USD`, with
/// the currency's own number of decimals (ISO 4217). `null` renders as nothing.
struct MoneyHelper;

impl HelperDef for MoneyHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let value = param(h, 0)?;
        if value.is_null() {
            return Ok(ScopedJson::Derived(Value::String(String::new())));
        }
        let amount = value.get("amount").and_then(Value::as_f64);
        let currency = value.get("currency").and_then(Value::as_str);
        let (Some(amount), Some(currency)) = (amount, currency) else {
            return Err(invalid(h, "an object with `amount` and `currency`", value));
        };
        let (locale, _) = audience(ctx);
        Ok(ScopedJson::Derived(Value::String(format_money(
            amount, currency, &locale,
        ))))
    }
}

/// Formats an amount of `currency` for `locale`.
pub fn format_money(amount: f64, currency: &str, locale: &str) -> String {
    let digits = iso_currency::Currency::from_code(currency)
        .and_then(|c| c.exponent())
        .unwrap_or(2)
        .min(4);
    let scale = 10_i64.pow(u32::from(digits));
    let minor = (amount.abs() * scale as f64).round() as i64;
    let (whole, fraction) = (minor / scale, minor % scale);
    let number_locale = if is_german(locale) {
        num_format::Locale::de
    } else {
        num_format::Locale::en
    };
    let mut number = whole.to_formatted_string(&number_locale);
    if digits > 0 {
        number.push_str(number_locale.decimal());
        number.push_str(&format!("{fraction:0width$}", width = usize::from(digits)));
    }
    if amount < 0.0 && minor != 0 {
        number.insert(0, '-');
    }
    if is_german(locale) {
        format!("{number} {currency}")
    } else {
        format!("{currency} {number}")
    }
}

/// `{{link "referrals/cosell" data.referral.id}}`: the portal base URL, then the
/// first argument as written (a path chosen by the template author), then every
/// further argument as one percent-encoded path segment (values from events).
struct LinkHelper {
    base: String,
}

impl HelperDef for LinkHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let path = param(h, 0)?;
        let path = path.as_str().ok_or_else(|| invalid(h, "a path", path))?;
        let mut url = format!("{}/{}", self.base, path.trim_matches('/'));
        for p in h.params().iter().skip(1) {
            let segment = match p.value() {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => return Err(invalid(h, "text or a number for each segment", other)),
            };
            url.push('/');
            url.extend(utf8_percent_encode(&segment, URI_COMPONENT));
        }
        Ok(ScopedJson::Derived(Value::String(url)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_follow_locale_and_zone() {
        let at: DateTime<Utc> = "2026-12-04T09:15:00Z".parse().unwrap();
        let la: chrono_tz::Tz = "America/Los_Angeles".parse().unwrap();
        let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(
            format_datetime(at, la, "en-US", true),
            "December 4, 2026, 1:15 AM (America/Los_Angeles)"
        );
        assert_eq!(
            format_datetime(at, berlin, "de-DE", true),
            "4. Dezember 2026, 10:15 Uhr (Europe/Berlin)"
        );
        // Late evening in UTC is already the next day in Tokyo.
        let tokyo: chrono_tz::Tz = "Asia/Tokyo".parse().unwrap();
        let late: DateTime<Utc> = "2026-03-31T20:00:00Z".parse().unwrap();
        assert_eq!(format_datetime(late, tokyo, "en-US", false), "April 1, 2026");
        assert_eq!(
            format_date(NaiveDate::from_ymd_opt(2027, 3, 31).unwrap(), "de-DE"),
            "31. März 2027"
        );
        let shanghai: chrono_tz::Tz = "Asia/Shanghai".parse().unwrap();
        assert_eq!(
            format_datetime(at, shanghai, "zh-CN", true),
            "2026年12月4日 17:15（Asia/Shanghai）"
        );
        assert_eq!(format_datetime(late, shanghai, "zh-CN", false), "2026年4月1日");
    }

    #[test]
    fn money_has_its_currency_and_decimals() {
        assert_eq!(format_money(125000.0, "USD", "en-US"), "USD 125,000.00");
        assert_eq!(format_money(125000.0, "EUR", "de-DE"), "125.000,00 EUR");
        assert_eq!(format_money(1999.5, "JPY", "en-US"), "JPY 2,000");
        assert_eq!(format_money(-12.5, "USD", "en-US"), "USD -12.50");
        assert_eq!(format_money(125000.0, "CNY", "zh-CN"), "CNY 125,000.00");
    }
}
