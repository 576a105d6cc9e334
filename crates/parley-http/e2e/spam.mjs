// The spam folder and the filter's refusals in the web UI, in headless
// Chromium, against a parleyd that holds every message (filter_hold_at = 0)
// and refuses those with the phrase PARLEY_BLOCKED_PHRASE: a held message
// is in the recipient's Spam folder and not in the conversation, "Not spam"
// moves it into the conversation, "Report spam" moves it back, Delete and
// "Report spam" in the folder remove it; a blocked message is refused to
// its sender and nothing arrives; the pager says its refusal to a visitor.
// Screenshots go to PARLEY_E2E_OUT.
//
//   PARLEY_URL=http://127.0.0.1:PORT PARLEY_E2E_OUT=DIR PARLEY_BLOCKED_PHRASE=PHRASE node spam.mjs
import { launchChromium } from "./browser.mjs";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const base = process.env.PARLEY_URL;
const out = process.env.PARLEY_E2E_OUT || ".";
const blocked = process.env.PARLEY_BLOCKED_PHRASE;
if (!base || !blocked) throw new Error("set PARLEY_URL and PARLEY_BLOCKED_PHRASE");
mkdirSync(out, { recursive: true });

const TIMEOUT = 15000;
const suffix = Date.now().toString(36).slice(-5);
const ann = "ann" + suffix;
const ben = "ben" + suffix;
// A body that would run script if it were ever taken as HTML.
const hostile = '<img src=x onerror="window.parleyInjected=1"> <b>not bold</b>';

const browser = await launchChromium();

// Every alert the UI shows is an error here (a refused request).
const alerts = [];
async function open(name) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on("dialog", (d) => {
    alerts.push(`[${name}] ${d.message()}`);
    d.accept();
  });
  page.on("pageerror", (e) => console.error(`[${name}] page error: ${e.message}`));
  await page.goto(base + "/");
  return page;
}

async function online(page) {
  await page.waitForFunction(() => document.getElementById("connection").dataset.state === "online");
}

async function register(page, name) {
  await page.fill("#auth-name", name);
  await page.fill("#auth-password", "correct horse " + name);
  await page.click("#register-button");
  await page.waitForSelector("#chat-view:not([hidden])");
  await online(page);
}

async function send(page, text) {
  await page.fill("#composer-input", text);
  await page.press("#composer-input", "Enter");
}

// Opens the Spam folder (which reads it again).
async function openSpam(page) {
  await page.click("#spam-folder");
  await page.waitForSelector('#peer-name[data-kind="folder"]');
}

const held = (text) => `#messages li[data-held]:has-text(${JSON.stringify(text)})`;

let failed = false;
try {
  const a = await open("ann");
  const b = await open("ben");
  await register(a, ann);
  await register(b, ben);

  // Ben writes to Ann: the message is held, and Ben is told so quietly.
  await b.fill("#search-input", ann);
  await b.click(`#search-results li[data-result="${ann}"]`);
  await send(b, "hello Ann, it is Ben");
  await b.waitForSelector('#messages li.msg.mine:has-text("hello Ann, it is Ben") .status >> text="sent"');
  await b.waitForSelector('#messages li.msg.mine:has-text("hello Ann, it is Ben") .held-note >> text="held by the recipient\'s spam filter"');
  await send(b, hostile);
  await b.waitForSelector('#messages li.msg.mine:has-text("not bold") .held-note');

  // Ann has no conversation with Ben: both are in her Spam folder, with
  // their sender, score and body as text.
  await openSpam(a);
  await a.waitForSelector(held("hello Ann, it is Ben"));
  await a.waitForSelector(held("not bold"));
  await a.waitForSelector('#spam-count >> text="2"');
  if ((await a.locator(`#contact-list li[data-peer="${ben}"]`).count()) !== 0) {
    throw new Error("a held message started a conversation");
  }
  const first = a.locator(held("hello Ann, it is Ben"));
  if ((await first.locator(".held-from").innerText()) !== "from " + ben) throw new Error("the sender is not shown");
  if (!/^spam score \d{1,3}%$/.test(await first.locator(".score").innerText())) throw new Error("the score is not shown");
  const shown = await a.locator(held("not bold") + " .body").innerText();
  if (shown !== hostile) throw new Error("the body was not shown as its text: " + shown);
  const injected = await a.evaluate(() => window.parleyInjected === 1 || document.querySelector("#messages img, #messages b") !== null);
  if (injected) throw new Error("a held message's body was taken as HTML");
  await a.screenshot({ path: join(out, "ann-spam.png") });

  // "Not spam": out of the folder, into the conversation with Ben.
  await a.click(held("hello Ann, it is Ben") + " button[data-release]");
  await a.waitForSelector(held("hello Ann, it is Ben"), { state: "detached" });
  await a.waitForSelector('#spam-count >> text="1"');
  await a.click(`#contact-list li[data-peer="${ben}"]`);
  await a.waitForSelector('#messages li.msg:has-text("hello Ann, it is Ben")');

  // "Report spam" on it in the conversation: back into the folder, as reported.
  await a.click('#messages li.msg:has-text("hello Ann, it is Ben") button.report');
  await a.waitForSelector('#messages li.msg:has-text("hello Ann, it is Ben")', { state: "detached" });
  await openSpam(a);
  await a.waitForSelector(held("hello Ann, it is Ben") + ' .score >> text="reported by you"');
  await a.waitForSelector('#spam-count >> text="2"');
  if ((await a.locator(held("hello Ann, it is Ben") + " button[data-report-held]").count()) !== 0) {
    throw new Error("a reported message offers to report it again");
  }

  // Delete one; report the other as spam (it is deleted too).
  await a.click(held("hello Ann, it is Ben") + " button[data-drop]");
  await a.waitForSelector(held("hello Ann, it is Ben"), { state: "detached" });
  await a.click(held("not bold") + " button[data-report-held]");
  await a.waitForSelector(held("not bold"), { state: "detached" });
  await a.waitForSelector('#messages li >> text="Nothing here."');
  await a.waitForSelector("#spam-count", { state: "hidden" });

  // After a reload the folder is still empty, and the conversation has none of it.
  await a.reload();
  await a.waitForSelector("#chat-view:not([hidden])");
  await online(a);
  await openSpam(a);
  await a.waitForSelector('#messages li >> text="Nothing here."');
  if ((await a.locator(`#contact-list li[data-peer="${ben}"]`).count()) !== 0) {
    await a.click(`#contact-list li[data-peer="${ben}"]`);
    if ((await a.locator("#messages li.msg").count()) !== 0) throw new Error("a removed message came back after a reload");
  }

  // A message with a blocked phrase is refused to Ben; nothing reaches Ann
  // (the next message, held, arrives alone).
  await send(b, `get ${blocked.toUpperCase()} today`);
  await b.waitForSelector(
    `#messages li.msg.mine:has-text("today") .status.failed >> text="not sent: the server's filter refused it: it contains a phrase this server blocks"`,
  );
  await send(b, "after the refusal");
  await b.waitForSelector('#messages li.msg.mine:has-text("after the refusal") .held-note');
  await b.screenshot({ path: join(out, "ben-refused.png") });
  await a.click("#spam-refresh-button");
  await a.waitForSelector(held("after the refusal"));
  if ((await a.locator(held("today")).count()) !== 0) throw new Error("a refused message arrived");

  // The pager: refused with a clear message, and a good one is held.
  const visitor = await open("visitor");
  await visitor.goto(base + "/pager?to=" + ann);
  await visitor.fill("#pager-name", "Vera");
  await visitor.fill("#pager-body", `paging about ${blocked}`);
  await visitor.click("#pager-send");
  await visitor.waitForSelector(
    '#pager-status.error >> text="Not sent: this server\'s filter refused the message because it contains a phrase the server blocks."',
  );
  if ((await visitor.inputValue("#pager-body")) === "") throw new Error("the refused text was cleared");
  await visitor.screenshot({ path: join(out, "visitor-refused.png") });
  await visitor.fill("#pager-body", "paging Ann");
  await visitor.click("#pager-send");
  await visitor.waitForSelector('#pager-status >> text="Message left for ' + ann + '."');
  await a.click("#spam-refresh-button");
  await a.waitForSelector(held("paging Ann"));
  const visitorShown = await a.locator(held("paging Ann") + " .held-from").innerText();
  if (visitorShown !== "from visitor ‘Vera’ (pager)") throw new Error("the visitor is shown as " + JSON.stringify(visitorShown));
  if ((await a.locator(held("paging about")).count()) !== 0) throw new Error("a refused pager message arrived");

  if (alerts.length) throw new Error("the UI showed errors: " + alerts.join("; "));
  console.log("browser spam scenario passed; screenshots in " + out);
} catch (e) {
  failed = true;
  console.error("browser spam scenario failed: " + (e && e.stack ? e.stack : e));
  if (alerts.length) console.error("alerts: " + alerts.join("; "));
  for (const [i, ctx] of browser.contexts().entries()) {
    for (const page of ctx.pages()) {
      await page.screenshot({ path: join(out, `failure-${i}.png`) }).catch(() => {});
    }
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
