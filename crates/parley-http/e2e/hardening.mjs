// The web UI's defences, in headless Chromium: without WebCrypto the login
// form says to use HTTPS or localhost; logging out leaves nothing of the
// account in the browser's storage or page; pager visitors never look like
// an account or the system, and a right-to-left override in a name or a
// body cannot reorder the text around it.
//
//   PARLEY_URL=http://127.0.0.1:PORT PARLEY_E2E_OUT=DIR node hardening.mjs
import { launchChromium } from "./browser.mjs";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const base = process.env.PARLEY_URL;
const out = process.env.PARLEY_E2E_OUT || ".";
if (!base) throw new Error("set PARLEY_URL");
mkdirSync(out, { recursive: true });

const TIMEOUT = 15000;
const suffix = Date.now().toString(36).slice(-5);
const cal = "cal" + suffix;
const dan = "dan" + suffix;
const RLO = "\u202E";

const browser = await launchChromium();

const pageErrors = [];
async function open(name, init) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  if (init) await context.addInitScript(init);
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on("dialog", (d) => d.accept());
  page.on("pageerror", (e) => pageErrors.push(`[${name}] ${e.message}`));
  await page.goto(base + "/");
  return page;
}

async function register(page, name) {
  await page.fill("#auth-name", name);
  await page.fill("#auth-password", "correct horse " + name);
  await page.click("#register-button");
  await page.waitForSelector("#chat-view:not([hidden])");
  await page.waitForFunction(() => document.getElementById("connection").dataset.state === "online");
}

function expect(condition, what) {
  if (!condition) throw new Error(what);
}

// Everything the page keeps in web storage, as [area, key, value].
async function stored(page) {
  return page.evaluate(() => {
    const all = [];
    for (const [area, storage] of [["localStorage", localStorage], ["sessionStorage", sessionStorage]]) {
      for (let i = 0; i < storage.length; i++) {
        const key = storage.key(i);
        all.push([area, key, storage.getItem(key)]);
      }
    }
    return all;
  });
}

// Each part runs even when an earlier one failed, so that one run shows
// every failure.
const failures = [];
async function part(name, body) {
  try {
    await body();
    console.log("ok   " + name);
  } catch (e) {
    failures.push(name);
    console.error("FAIL " + name + ": " + (e && e.stack ? e.stack : e));
  }
}

let failed = false;
try {
  await part("without WebCrypto the form says to use HTTPS or localhost", async () => {
    // 1. No WebCrypto, as on a page served over plain HTTP off loopback.
    const insecure = await open("insecure", () => {
      Object.defineProperty(Crypto.prototype, "subtle", { get: () => undefined, configurable: true });
    });
    await insecure.waitForSelector("#auth-view:not([hidden])");
    await insecure.waitForSelector("#auth-error >> text=/use HTTPS or localhost/", { timeout: 3000 }).catch(async () => {
      const says = await insecure.textContent("#auth-error");
      throw new Error("without WebCrypto the login form does not say to use HTTPS or localhost; it says: " + JSON.stringify(says));
    });
    await insecure.fill("#auth-name", "nobody");
    await insecure.fill("#auth-password", "whatever");
    await insecure.click("#login-button");
    await insecure.waitForTimeout(300);
    const insecureSays = await insecure.textContent("#auth-error");
    expect(/use HTTPS or localhost/.test(insecureSays), "after a login attempt without WebCrypto the form says: " + insecureSays);
    expect(!/TypeError|undefined/.test(insecureSays), "a raw error reached the form: " + insecureSays);
    await insecure.screenshot({ path: join(out, "no-webcrypto.png") });
  });

  const d = await open("dan");
  await register(d, dan);

  await part("logging out leaves nothing of the account", async () => {
    // 2. Cal writes to Dan, leaves a draft, logs out: nothing of Cal stays.
    const c = await open("cal");
    await register(c, cal);
    await c.fill("#search-input", dan);
    await c.click(`#search-results li[data-result="${dan}"]`);
    await c.fill("#composer-input", "secret for dan");
    await c.press("#composer-input", "Enter");
    await c.waitForSelector('#messages li.msg.mine .status >> text="sent"');
    await c.fill("#composer-input", "an unsent draft");
    const before = await stored(c);
    expect(before.some(([, , v]) => v.includes("secret for dan")), "the sent message was never stored: " + JSON.stringify(before));
    await c.click("#logout-button");
    await c.waitForSelector("#auth-view:not([hidden])");
    const after = await stored(c);
    const ours = after.filter(([, k, v]) => k.startsWith("parley.") || v.includes("secret for dan") || v.includes(cal));
    expect(ours.length === 0, "after logout the browser still holds: " + JSON.stringify(ours));
    const page = await c.evaluate(() => ({
      messages: document.querySelectorAll("#messages li").length,
      peers: document.querySelectorAll("#contact-list li").length,
      draft: document.getElementById("composer-input").value,
      me: document.getElementById("me").textContent,
      text: document.body.innerText,
    }));
    expect(page.messages === 0 && page.peers === 0, "the page still lists messages or people: " + JSON.stringify(page));
    expect(page.draft === "", "the draft is still in the composer");
    expect(page.me === "", "the page still names the account");
    expect(!page.text.includes("secret for dan"), "the page still shows the message");
    await c.reload();
    await c.waitForSelector("#auth-view:not([hidden])");
  });

  await part("pager visitors look like visitors, isolated", async () => {
    // 3. Visitors on the pager call themselves after an account, the
    // system, and with a right-to-left override.
    const visitor = await open("visitor");
    async function page_(name, body) {
      await visitor.goto(base + "/pager?to=" + dan);
      await visitor.fill("#pager-name", name);
      await visitor.fill("#pager-body", body);
      await visitor.click("#pager-send");
      await visitor.waitForSelector('#pager-status >> text="Message left for ' + dan + '."');
    }
    await page_(cal, "it is me, honest");
    await page_("system:admin", "please send your password");
    await page_("alice" + RLO + "evil", "pay " + RLO + "txt.exe now");
    await d.waitForFunction(() => document.querySelectorAll('#contact-list li[data-peer^="pager:"]').length === 3);
    const peers = await d.evaluate(() =>
      [...document.querySelectorAll("#contact-list li")].map((li) => ({
        key: li.dataset.peer,
        kind: li.dataset.kind,
        label: li.querySelector(".name").textContent,
        isolated: [...li.querySelector(".name").querySelectorAll("bdi")].map((b) => b.textContent),
      })),
    );
    const pagers = peers.filter((p) => p.key.startsWith("pager:"));
    for (const p of pagers) {
      expect(p.kind === "pager", "a pager sender is not marked as a visitor: " + JSON.stringify(p));
      expect(/^visitor ‘.*’ \(pager\)$/.test(p.label), "a pager sender is not labelled as a visitor: " + JSON.stringify(p));
      expect(p.isolated.length === 1, "a visitor's name is not bidi-isolated: " + JSON.stringify(p));
      expect(!p.label.includes(RLO) && !p.key.includes(RLO), "a right-to-left override survived in a name: " + JSON.stringify(p));
      expect(!p.isolated[0].includes(":"), "a visitor's name holds a colon: " + JSON.stringify(p));
    }
    expect(pagers.some((p) => p.label === `visitor ‘${cal}’ (pager)`), "the visitor named after Cal: " + JSON.stringify(pagers));
    expect(pagers.some((p) => p.label === "visitor ‘aliceevil’ (pager)"), "the visitor with an override: " + JSON.stringify(pagers));
    expect(!peers.some((p) => p.label === cal && p.key.startsWith("pager:")), "a visitor shows as the account");
    expect(!peers.some((p) => /^system/.test(p.label)), "a visitor shows as the system: " + JSON.stringify(peers));

    // The conversation with the override: named as a visitor, the body
    // isolated so that the override stays inside it.
    await d.click('#contact-list li[data-peer="pager:aliceevil"]');
    await d.waitForSelector("#messages li.msg >> text=/pay/");
    const shown = await d.evaluate(() => {
      const head = document.getElementById("peer-name");
      const msg = document.querySelector("#messages li.msg");
      const body = msg.querySelector(".body");
      const style = getComputedStyle(body);
      return {
        head: head.textContent,
        headKind: head.dataset.kind,
        headIsolated: head.querySelectorAll("bdi").length,
        msgClass: msg.className,
        body: body.textContent,
        bodyDir: body.getAttribute("dir"),
        bodyBidi: style.unicodeBidi,
        composerHidden: document.getElementById("composer").hidden,
      };
  });
  expect(shown.head === "visitor ‘aliceevil’ (pager)" && shown.headKind === "pager", "the conversation head: " + JSON.stringify(shown));
  expect(shown.headIsolated === 1, "the conversation head does not isolate the name: " + JSON.stringify(shown));
  expect(/\bpager\b/.test(shown.msgClass), "the message is not marked as a visitor's: " + JSON.stringify(shown));
  expect(shown.body === "pay " + RLO + "txt.exe now", "the body changed: " + JSON.stringify(shown));
  expect(shown.bodyDir === "auto" && ["isolate", "plaintext", "isolate-override"].includes(shown.bodyBidi), "the body is not bidi-isolated: " + JSON.stringify(shown));
  expect(shown.composerHidden, "a pager conversation offers a reply box");
  await d.screenshot({ path: join(out, "dan-visitors.png") });
  });

  expect(pageErrors.length === 0, "page errors: " + pageErrors.join("; "));
  expect(failures.length === 0, "failed: " + failures.join("; "));
  console.log("browser hardening scenario passed; screenshots in " + out);
} catch (e) {
  failed = true;
  console.error("browser hardening scenario failed: " + (e && e.stack ? e.stack : e));
  for (const [i, ctx] of browser.contexts().entries()) {
    for (const page of ctx.pages()) {
      await page.screenshot({ path: join(out, `hardening-failure-${i}.png`) }).catch(() => {});
    }
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
