// Drives the worker's approvals page (/approvals/ui) in Debian's headless Chromium through playwright-core;
// run by tests/integration/test_approvals_ui.c against a real worker.
//
//   node approvals.mjs --url http://127.0.0.1:PORT --token T --approver NAME --assignment ID
//                      --screenshot OUT.png --mode approve|xss [--decision D] [--comment C] [--prompt P]
//
// approve: signs in, waits for the approval ID, writes a comment, screenshots the pending page
//          (OUT-pending.png), clicks D, waits for the page to say "accepted" and for the approval to leave
//          the list without a reload, screenshots OUT.png.
// xss:     signs in, waits for the approval ID and checks that its prompt (P, default a hostile <img>) is
//          shown as text: the same characters, no element made from data, no dialog, after a second
//          refresh too; screenshots OUT.png, then checks that at 360 px wide nothing scrolls sideways
//          (OUT-phone.png).
// Always: the page's security headers are there, the token is in sessionStorage and nowhere else, and no
// console error, page error, dialog or Content-Security-Policy violation happens. Exit 0 when all held;
// otherwise the reasons on stderr and exit 1 (2: bad arguments).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const WAIT_MS = 60000; // generous: a 2-core machine shared with builds; events, not sleeps
const CHROMIUM = '/usr/bin/chromium';

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      url: { type: 'string' }, token: { type: 'string' }, approver: { type: 'string' },
      assignment: { type: 'string' }, decision: { type: 'string', default: 'Approve' },
      comment: { type: 'string', default: 'Checked the release notes.' },
      prompt: { type: 'string', default: '<img src=x onerror=alert(1)>' },
      screenshot: { type: 'string' }, mode: { type: 'string' },
    },
  }));
  for (const k of ['url', 'token', 'approver', 'assignment', 'screenshot', 'mode'])
    if (!opts[k]) throw new Error('--' + k + ' is required');
  if (opts.mode !== 'approve' && opts.mode !== 'xss') throw new Error('--mode must be approve or xss');
} catch (e) {
  console.error('approvals.mjs: ' + e.message);
  process.exit(2);
}

const problems = []; // everything that went wrong while the page ran (dialogs, console errors, ...)
const fail = (msg) => { throw new Error(msg); };
const cssString = (s) => JSON.stringify(s); // a JSON string is a valid CSS string for attribute selectors

async function checkHeaders(resp) {
  if (!resp) fail('no response for the page');
  if (resp.status() !== 200) fail('GET /approvals/ui answered ' + resp.status());
  const h = resp.headers();
  const csp = h['content-security-policy'] || '';
  if (!/script-src[^;]*'self'/.test(csp) && !/default-src[^;]*'self'/.test(csp))
    fail('the page has no Content-Security-Policy limiting scripts to its own: "' + csp + '"');
  if (/unsafe-inline|unsafe-eval/.test(csp)) fail('the Content-Security-Policy allows inline code: "' + csp + '"');
  if ((h['x-frame-options'] || '').toUpperCase() !== 'DENY') fail('X-Frame-Options is not DENY: ' + h['x-frame-options']);
  if (!/no-store/.test(h['cache-control'] || '')) fail('Cache-Control is not no-store: ' + h['cache-control']);
}

async function signIn(page) {
  await page.fill('#token', opts.token);
  await page.fill('#approver', opts.approver);
  await page.click('#signin-go');
  const card = `li.approval[data-assignment-id=${cssString(opts.assignment)}]`;
  await page.waitForSelector(card, { timeout: WAIT_MS });
  // the token lives in this tab's sessionStorage only: never in a cookie or the address
  const where = await page.evaluate(() => ({ cookie: document.cookie, href: location.href,
    stored: Object.keys(sessionStorage).map((k) => sessionStorage.getItem(k)) }));
  if (!where.stored.includes(opts.token)) fail('the token is not in sessionStorage');
  if (where.cookie.includes(opts.token)) fail('the token is in a cookie');
  if (where.href.includes(opts.token)) fail('the token is in the URL');
  return page.locator(card);
}

async function approve(page, card) {
  await card.locator('textarea').fill(opts.comment);
  await shot(page, opts.screenshot.replace(/(\.png)?$/, '-pending.png'));
  const button = card.getByRole('button', { name: opts.decision, exact: true });
  if (await button.count() !== 1) fail('no single button "' + opts.decision + '" in the approval');
  await button.click();
  const id = cssString(opts.assignment);
  const done = await page.waitForSelector(`#status[data-assignment-id=${id}]:is([data-outcome="accepted"],` +
    '[data-outcome="refused"],[data-outcome="error"])', { timeout: WAIT_MS });
  const outcome = await done.getAttribute('data-outcome');
  if (outcome !== 'accepted') fail('the decision was not accepted: ' + (await done.textContent()));
  // the decided approval leaves the list by the page's own refresh, not a reload
  await card.waitFor({ state: 'detached', timeout: WAIT_MS });
  await shot(page, opts.screenshot);
}

async function xss(page, card) {
  const prompt = await card.locator('.prompt').textContent();
  if (prompt !== opts.prompt) fail('the prompt reads ' + JSON.stringify(prompt) + ', not ' + JSON.stringify(opts.prompt));
  // the same after another refresh of the list (an update must not turn it into markup either)
  const n = Number(await page.getAttribute('#list', 'data-refreshes'));
  await page.waitForFunction((m) => Number(document.getElementById('list').dataset.refreshes) > m, n,
    { timeout: WAIT_MS });
  if (await card.locator('.prompt').textContent() !== opts.prompt) fail('the prompt changed after a refresh');
  if (await page.locator('#list img').count() !== 0) fail('an <img> element is in the list');
  // nothing from the data became an element: the list holds only the page's own kinds of element
  const own = new Set(['LI', 'ARTICLE', 'H3', 'DL', 'DT', 'DD', 'P', 'PRE', 'UL', 'LABEL', 'TEXTAREA', 'DIV', 'BUTTON']);
  const tags = await page.evaluate(() => [...document.querySelectorAll('#list *')].map((e) => e.tagName));
  const foreign = tags.filter((t) => !own.has(t));
  if (foreign.length) fail('elements made from the data in the list: ' + [...new Set(foreign)].join(', '));
  if (await page.locator('img, script:not([src])').count() !== 0) fail('the page has an <img> or inline <script>');
  await shot(page, opts.screenshot);
  // at a phone's width nothing sticks out sideways (long prompts, ids and context wrap)
  await page.setViewportSize({ width: 360, height: 740 });
  const wide = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  if (wide > 0) fail('at 360 px wide the page scrolls sideways by ' + wide + ' px');
  await shot(page, opts.screenshot.replace(/(\.png)?$/, '-phone.png'));
}

async function shot(page, file) {
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  await page.screenshot({ path: file, fullPage: true });
}

async function main() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'bw-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM, headless: true, timeout: WAIT_MS, viewport: { width: 960, height: 640 },
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    const page = context.pages()[0] || await context.newPage();
    page.setDefaultTimeout(WAIT_MS);
    let navigations = 0;
    page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations++; });
    page.on('dialog', (d) => { problems.push('a dialog opened (' + d.type() + '): ' + d.message()); d.dismiss().catch(() => {}); });
    page.on('pageerror', (e) => problems.push('page error: ' + e.message));
    page.on('console', (m) => {
      // the browser's own request for /favicon.ico (404 from the worker) is not the page's doing
      if (m.type() !== 'error' || /\/favicon\.ico$/.test(m.location().url || '')) return;
      const csp = /Content.Security.Policy/i.test(m.text());
      problems.push((csp ? 'Content-Security-Policy violation: ' : 'console error: ') + m.text());
    });
    const url = opts.url.replace(/\/+$/, '') + '/approvals/ui';
    await checkHeaders(await page.goto(url, { waitUntil: 'load' }));
    const card = await signIn(page);
    if (opts.mode === 'approve') await approve(page, card); else await xss(page, card);
    if (navigations !== 1) problems.push('the page navigated ' + navigations + ' times (reloads): it should update in place');
  } finally {
    if (context) await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
  if (problems.length) fail(problems.join('\n'));
}

const watchdog = setTimeout(() => {
  console.error('approvals.mjs: still running after ' + (3 * WAIT_MS) / 1000 + ' s');
  process.exit(1);
}, 3 * WAIT_MS);
main().then(() => {
  clearTimeout(watchdog);
  console.log('approvals.mjs: ' + opts.mode + ' passed; screenshot ' + opts.screenshot);
}, (e) => {
  clearTimeout(watchdog);
  console.error('approvals.mjs (' + opts.mode + '): ' + (e && e.message ? e.message : e));
  if (problems.length && !String(e.message).includes(problems[0])) console.error(problems.join('\n'));
  process.exitCode = 1;
});
