// Two people chat in the web UI, in two browser contexts of headless
// Chromium: they register, talk live both ways, one reloads and sees the
// history, one deletes a message, one logs out and the other sees it go
// offline. Screenshots go to PARLEY_E2E_OUT.
//
//   PARLEY_URL=http://127.0.0.1:PORT PARLEY_E2E_OUT=DIR node chat.mjs
import { launchChromium } from "./browser.mjs";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";

const base = process.env.PARLEY_URL;
const out = process.env.PARLEY_E2E_OUT || ".";
if (!base) throw new Error("set PARLEY_URL");
mkdirSync(out, { recursive: true });

const TIMEOUT = 15000;
const suffix = Date.now().toString(36).slice(-5);
const ann = "ann" + suffix;
const ben = "ben" + suffix;

const browser = await launchChromium();

const outside = [];
// Each page's send keys (client_msg_id), in the order they went out.
const sendKeys = {};
async function open(name) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  // Nothing may be fetched from anywhere but parleyd.
  page.on("request", (r) => {
    if (!r.url().startsWith(base) && !r.url().startsWith("ws://" + new URL(base).host) && !r.url().startsWith("data:")) {
      outside.push(r.url());
    }
  });
  page.on("request", (r) => {
    if (r.method() === "POST" && r.url().endsWith("/v1/messages")) {
      (sendKeys[name] ||= []).push(JSON.parse(r.postData()).client_msg_id);
    }
  });
  page.on("dialog", (d) => d.accept());
  page.on("pageerror", (e) => console.error(`[${name}] page error: ${e.message}`));
  await page.goto(base + "/");
  return page;
}

async function register(page, name) {
  await page.fill("#auth-name", name);
  await page.fill("#auth-password", "correct horse " + name);
  await page.click("#register-button");
  await page.waitForSelector("#chat-view:not([hidden])");
  await online(page);
}

async function online(page) {
  await page.waitForFunction(() => document.getElementById("connection").dataset.state === "online");
}

async function openPeer(page, name) {
  await page.click(`#contact-list li[data-peer="${name}"]`);
}

async function waitMessage(page, text) {
  await page.waitForSelector(`#messages li.msg >> text=${text}`);
}

// Asks the test runner to restart parleyd (same data, same ports) and
// waits until it has.
const stdin = createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();
async function restartServer() {
  process.stdout.write("PARLEY_RESTART\n");
  const { value } = await lines.next();
  if (value !== "restarted") throw new Error("the server was not restarted: " + value);
}

// Records every state the connection indicator shows.
async function watchIndicator(page) {
  await page.evaluate(() => {
    const pill = document.getElementById("connection");
    window.parleyStates = [pill.dataset.state];
    new MutationObserver(() => window.parleyStates.push(pill.dataset.state)).observe(pill, { attributes: true });
  });
}

let failed = false;
try {
  const a = await open("ann");
  const b = await open("ben");
  await register(a, ann);
  await register(b, ben);

  // Ann finds Ben by wildcard and writes; Enter sends.
  await a.fill("#search-input", ben.slice(0, 4) + "*");
  await a.click(`#search-results li[data-result="${ben}"]`);
  await a.fill("#composer-input", "hello Ben");
  await a.press("#composer-input", "Enter");
  await a.waitForSelector('#messages li.msg.mine .status >> text="sent"');
  await a.click("#add-contact-button");
  // Ben is asked to share his presence, and approves.
  await b.click(`#request-list button[data-approve="${ann}"]`);
  await b.waitForSelector("#request-list", { state: "hidden" });

  // Ctrl+K jumps to the search box from anywhere.
  await b.click("#messages");
  await b.keyboard.press("Control+k");
  if (!(await b.evaluate(() => document.activeElement.id === "search-input"))) {
    throw new Error("Ctrl+K does not focus the search box");
  }

  // Ben sees it live with an unread count, opens it, answers.
  await b.waitForSelector(`#contact-list li[data-peer="${ann}"] .badge[data-unread="1"]`);
  await openPeer(b, ann);
  await waitMessage(b, "hello Ben");
  await b.waitForSelector(`#contact-list li[data-peer="${ann}"]:not(:has(.badge))`);
  await b.fill("#composer-input", "hi Ann, live");
  await b.press("#composer-input", "Enter");

  // Ann gets the answer without reloading (she has the conversation open).
  await waitMessage(a, "hi Ann, live");
  await a.waitForSelector(`#contact-list li[data-peer="${ben}"] .dot.online`);

  // Ann reloads: same session, the whole conversation is back, live again.
  await a.reload();
  await a.waitForSelector("#chat-view:not([hidden])");
  await online(a);
  await openPeer(a, ben);
  await waitMessage(a, "hello Ben");
  await waitMessage(a, "hi Ann, live");
  await b.fill("#composer-input", "after your reload");
  await b.press("#composer-input", "Enter");
  await waitMessage(a, "after your reload");

  // Ben deletes Ann's message; after a reload it is still gone.
  await b.click('#messages li.msg:not(.mine):has-text("hello Ben") button.delete');
  await b.waitForSelector('#messages li.msg:has-text("hello Ben")', { state: "detached" });
  await b.reload();
  await b.waitForSelector("#chat-view:not([hidden])");
  await online(b);
  await openPeer(b, ann);
  await waitMessage(b, "hi Ann, live");
  if ((await b.locator('#messages li.msg:has-text("hello Ben")').count()) !== 0) {
    throw new Error("the deleted message came back after a reload");
  }

  await a.screenshot({ path: join(out, "ann.png") });
  await b.screenshot({ path: join(out, "ben.png") });

  // The server restarts: both show that they reconnect, resume, and the
  // conversation goes on live.
  await watchIndicator(a);
  await restartServer();
  await a.waitForFunction(() => window.parleyStates.includes("reconnecting"));
  await online(a);
  await online(b);
  await b.fill("#composer-input", "after the restart");
  await b.press("#composer-input", "Enter");
  await waitMessage(a, "after the restart");

  // A visitor without an account leaves Ben a message on the pager form;
  // it shows as a pager conversation, with no reply box.
  const visitor = await open("visitor");
  await visitor.goto(base + "/pager?to=" + ben);
  await visitor.fill("#pager-name", "Vera");
  await visitor.fill("#pager-contact", "vera@example.org");
  await visitor.fill("#pager-body", "paging Ben");
  await visitor.click("#pager-send");
  await visitor.waitForSelector('#pager-status >> text="Message left for ' + ben + '."');
  const pagerPeer = "pager:Vera <vera@example.org>";
  await b.click(`#contact-list li[data-peer="${pagerPeer}"]`);
  await waitMessage(b, "paging Ben");
  if (!(await b.locator("#composer").isHidden())) throw new Error("pager conversations take no replies");
  await b.screenshot({ path: join(out, "ben-pager.png") });

  // Ben logs out; Ann sees him go offline.
  await b.click("#logout-button");
  await b.waitForSelector("#auth-view:not([hidden])");
  await a.waitForSelector(`#contact-list li[data-peer="${ben}"] .dot:not(.online)`);
  await a.screenshot({ path: join(out, "ann-after-logout.png") });

  // Ann changes her password (proving the old one), then deletes her
  // account (proving the new one); she is back at the login form and
  // cannot log in.
  await a.click("#password-button");
  await a.fill("#reauth-password", "correct horse " + ann);
  await a.fill("#reauth-new-password", "battery staple " + ann);
  await a.fill("#reauth-new-again", "battery staple " + ann);
  await a.click("#reauth-confirm");
  await a.waitForSelector("#reauth-form", { state: "hidden" });
  await a.click("#delete-account-button");
  await a.fill("#reauth-password", "not my password");
  await a.click("#reauth-confirm");
  await a.waitForSelector('#reauth-error >> text="Wrong password."');
  await a.fill("#reauth-password", "battery staple " + ann);
  await a.click("#reauth-confirm");
  await a.waitForSelector("#auth-view:not([hidden])");
  await a.fill("#auth-name", ann);
  await a.fill("#auth-password", "correct horse " + ann);
  await a.click("#login-button");
  await a.waitForSelector('#auth-error >> text="Wrong name or password."');

  if (outside.length) throw new Error("requests left parleyd: " + outside.join(", "));
  // Send keys start with the time in milliseconds (12 hex digits) so that
  // one sender's keys increase, then 80 random bits.
  const keys = Object.values(sendKeys).flat();
  if (keys.length === 0) throw new Error("no sends seen");
  for (const key of keys) {
    const millis = parseInt(key.slice(0, 12), 16);
    if (!/^[0-9a-f]{32}$/.test(key) || Math.abs(Date.now() - millis) > 600000) {
      throw new Error("send key not a time then random bits: " + key);
    }
  }
  for (const sent of Object.values(sendKeys)) {
    const list = [...new Set(sent)]; // a resend keeps its key
    for (let i = 1; i < list.length; i++) {
      if (list[i].slice(0, 12) < list[i - 1].slice(0, 12)) throw new Error("send keys went back: " + list.join(" "));
    }
  }
  console.log("browser chat scenario passed; screenshots in " + out);
} catch (e) {
  failed = true;
  console.error("browser chat scenario failed: " + (e && e.stack ? e.stack : e));
  for (const [i, ctx] of browser.contexts().entries()) {
    for (const page of ctx.pages()) {
      await page.screenshot({ path: join(out, `failure-${i}.png`) }).catch(() => {});
    }
  }
} finally {
  await browser.close();
  stdin.close();
}
process.exit(failed ? 1 : 0);
