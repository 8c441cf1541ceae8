// The handlebars.js side of the render benchmark (benches/render.rs).
//
// Reads the templates exactly as the Rust engines hold them (CSS already
// inlined) and one context per email, renders every email the naive way
// (full templates per recipient), and prints the median microseconds per
// email and the rendered output, which the Rust side compares byte for byte.
//
// The helpers mirror src/render/helpers.rs.
'use strict';
const fs = require('fs');
const path = require('path');
const Handlebars = require(path.join(__dirname, 'node_modules', 'handlebars'));

const input = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const iterations = Number(process.argv[3] || 30);

const MONTHS = {
  en: ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October',
    'November', 'December'],
  de: ['Januar', 'Februar', 'März', 'April', 'Mai', 'Juni', 'Juli', 'August', 'September', 'Oktober',
    'November', 'Dezember'],
};
const isGerman = (locale) => locale === 'de' || locale.startsWith('de-');
const isChinese = (locale) => locale === 'zh' || locale.startsWith('zh-');
const audience = (options) => {
  const root = options.data.root;
  return { locale: root.locale || 'en-US', tz: (root.recipient && root.recipient.time_zone) || 'UTC' };
};

const zoneFormats = new Map();
function parts(date, tz) {
  let f = zoneFormats.get(tz);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone: tz, year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric', minute: 'numeric',
      hourCycle: 'h23',
    });
    zoneFormats.set(tz, f);
  }
  const out = {};
  for (const p of f.formatToParts(date)) out[p.type] = p.value;
  return { year: +out.year, month: +out.month, day: +out.day, hour: +out.hour, minute: +out.minute };
}

function formatDate(y, m, d, locale) {
  if (isChinese(locale)) return `${y}年${m}月${d}日`;
  return isGerman(locale) ? `${d}. ${MONTHS.de[m - 1]} ${y}` : `${MONTHS.en[m - 1]} ${d}, ${y}`;
}

function dateHelper(withTime) {
  return function (value, options) {
    if (value === null || value === undefined) return '';
    const { locale, tz } = audience(options);
    const day = /^(\d{4})-(\d{2})-(\d{2})$/.exec(value);
    if (day) return formatDate(+day[1], +day[2], +day[3], locale);
    const p = parts(new Date(value), tz);
    const date = formatDate(p.year, p.month, p.day, locale);
    if (!withTime) return date;
    const mm = String(p.minute).padStart(2, '0');
    const hh = String(p.hour).padStart(2, '0');
    if (isGerman(locale)) return `${date}, ${hh}:${mm} Uhr (${tz})`;
    if (isChinese(locale)) return `${date} ${hh}:${mm}（${tz}）`;
    const h12 = p.hour % 12 === 0 ? 12 : p.hour % 12;
    return `${date}, ${h12}:${mm} ${p.hour < 12 ? 'AM' : 'PM'} (${tz})`;
  };
}

const numberFormats = new Map();
function money(value, options) {
  if (value === null || value === undefined) return '';
  const { locale } = audience(options);
  const german = isGerman(locale);
  const key = `${german}:${value.currency}`;
  let f = numberFormats.get(key);
  if (!f) {
    let digits = 2;
    try {
      digits = new Intl.NumberFormat('en-US', { style: 'currency', currency: value.currency })
        .resolvedOptions().maximumFractionDigits;
    } catch (e) { /* unknown currency: two decimals */ }
    f = new Intl.NumberFormat(german ? 'de-DE' : 'en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
    numberFormats.set(key, f);
  }
  const number = f.format(value.amount);
  return german ? `${number} ${value.currency}` : `${value.currency} ${number}`;
}

function link(base) {
  return function (...args) {
    args.pop();
    const [first, ...rest] = args;
    let url = `${base}/${String(first).replace(/^\/+|\/+$/g, '')}`;
    for (const s of rest) url += '/' + encodeURIComponent(String(s));
    return url;
  };
}

function oneLine(s) {
  return s.split(/[\s\p{Cc}]+/u).filter(Boolean).join(' ');
}

// One pair of environments (HTML escapes, text does not) per locale.
const engines = {};
for (const t of input.templates) {
  const envs = engines[t.locale] || (engines[t.locale] = { html: null, text: null, templates: {} });
  for (const kind of ['html', 'text']) {
    if (!envs[kind]) {
      const env = Handlebars.create();
      env.registerHelper('date', dateHelper(false));
      env.registerHelper('datetime', dateHelper(true));
      env.registerHelper('money', money);
      env.registerHelper('link', link(input.portal_base_url));
      env.registerHelper('eq', (a, b) => a === b);
      envs[kind] = env;
    }
  }
  const env = envs[t.kind];
  const compiled = env.compile(t.source, { noEscape: t.kind === 'text', preventIndent: true });
  env.registerPartial(t.name, compiled);
  envs.templates[`${t.kind}:${t.name}`] = compiled;
}

function renderEmail(email) {
  const t = engines[email.locale].templates;
  return {
    subject: oneLine(t[`text:${email.template}/subject`](email.context)),
    html: t[`html:${email.template}/body.html`](email.context),
    text: t[`text:${email.template}/body.txt`](email.context),
  };
}

const outputs = input.emails.map(renderEmail);
for (let i = 0; i < 20; i++) input.emails.forEach(renderEmail); // warm up the JIT
const samples = [];
for (let i = 0; i < iterations; i++) {
  const start = process.hrtime.bigint();
  for (const email of input.emails) renderEmail(email);
  samples.push(Number(process.hrtime.bigint() - start) / 1000);
}
samples.sort((a, b) => a - b);
const median = samples[Math.floor(samples.length / 2)];
process.stdout.write(JSON.stringify({ us_per_email: median / input.emails.length, outputs }));
