// File transfer in the web UI, in headless Chromium: the browser sends and
// receives through the server's relay (it has no direct path). A file sent
// from one page arrives byte for byte as the other page's download; a
// refusal, a file too large for the relay and one too large for the server
// each say so in words. With PARLEY_NATIVE_USER set, a page logs in as that
// account instead and takes the file the native `parley send-file` offers
// it (PARLEY_NATIVE_FROM, the bytes at PARLEY_NATIVE_FILE).
//
//   PARLEY_URL=http://127.0.0.1:PORT PARLEY_E2E_OUT=DIR node files.mjs
//
// The server runs with --relay-max-file-bytes RELAY_MAX and
// --max-file-bytes FILE_MAX (below).
import { launchChromium } from "./browser.mjs";
import { mkdirSync, readFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { join } from "node:path";

const base = process.env.PARLEY_URL;
const out = process.env.PARLEY_E2E_OUT || ".";
if (!base) throw new Error("set PARLEY_URL");
mkdirSync(out, { recursive: true });

// The limits browser.rs starts the server with.
const RELAY_MAX = 3_000_000;
const FILE_MAX = 6_000_000;

const TIMEOUT = 20000;
const suffix = Date.now().toString(36).slice(-5);
const fay = "fay" + suffix;
const gus = "gus" + suffix;

const browser = await launchChromium();

const pageErrors = [];
async function open(name) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 }, acceptDownloads: true });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on("dialog", (d) => d.accept());
  page.on("pageerror", (e) => pageErrors.push(`[${name}] ${e.message}`));
  await page.goto(base + "/");
  // Every phase a transfer's card shows, in order, per transfer.
  await page.evaluate(() => {
    window.parleyPhases = {};
    new MutationObserver(() => {
      for (const card of document.querySelectorAll("#messages [data-transfer]")) {
        const seen = (window.parleyPhases[card.dataset.transfer] ||= []);
        if (seen[seen.length - 1] !== card.dataset.phase) seen.push(card.dataset.phase);
      }
    }).observe(document.body, { childList: true, subtree: true, attributes: true });
  });
  return page;
}

async function logIn(page, name, password, button) {
  await page.fill("#auth-name", name);
  await page.fill("#auth-password", password);
  await page.click(button);
  await page.waitForSelector("#chat-view:not([hidden])");
  await page.waitForFunction(() => document.getElementById("connection").dataset.state === "online");
}

function expect(condition, what) {
  if (!condition) throw new Error(what);
}

// Each part runs even when an earlier one failed, so that one run shows
// every failure.
const failures = [];
async function part(name, body) {
  try {
    await body();
    console.log("ok: " + name);
  } catch (e) {
    failures.push(name);
    console.error(`FAILED: ${name}: ${e && e.stack ? e.stack : e}`);
  }
}

// Picks a file for the open conversation, as the "Send file…" button does.
async function pick(page, name, buffer) {
  await page.setInputFiles("#file-input", { name, mimeType: "application/octet-stream", buffer });
}

// The card of the offer of `name` the page shows (received or sent).
const card = (page, name) => page.locator(`#messages .file:has(.file-name:text-is(${JSON.stringify(name)}))`).last();

async function waitPhase(page, name, phase) {
  await card(page, name).and(page.locator(`[data-phase="${phase}"]`)).waitFor();
  return (await card(page, name).locator(".file-status").textContent()) || "";
}

async function phasesOf(page, name) {
  const key = await card(page, name).getAttribute("data-transfer");
  return page.evaluate((k) => window.parleyPhases[k] || [], key);
}

// Accepts the offer of `name` and saves the download; its bytes.
async function acceptAndSave(page, name) {
  await card(page, name).locator("button[data-accept]").click();
  const link = card(page, name).locator("a[data-download]");
  await link.waitFor();
  const [download] = await Promise.all([page.waitForEvent("download"), link.click()]);
  expect(download.suggestedFilename() === name.replace(/[<>]/g, "_") || download.suggestedFilename() === name, "download named " + download.suggestedFilename());
  return readFileSync(await download.path());
}

let failed = false;
try {
  if (process.env.PARLEY_NATIVE_USER) {
    // The native client offers a file to this account: the page takes it.
    const me = process.env.PARLEY_NATIVE_USER;
    const from = process.env.PARLEY_NATIVE_FROM;
    const bytes = readFileSync(process.env.PARLEY_NATIVE_FILE);
    const name = process.env.PARLEY_NATIVE_NAME;
    const page = await open(me);
    await part("a file from the native client arrives in the browser", async () => {
      await logIn(page, me, "pw-" + me, "#login-button");
      await page.click(`#contact-list li[data-peer="${from}"]`);
      const got = await acceptAndSave(page, name);
      expect(Buffer.compare(got, bytes) === 0, `the download differs from the file sent (${got.length} of ${bytes.length} bytes)`);
      expect((await waitPhase(page, name, "done")) === "received ✓", "no received ✓");
      await page.screenshot({ path: join(out, "native-to-browser.png") });
    });
  } else {
    const f = await open("fay");
    const g = await open("gus");
    await logIn(f, fay, "correct horse " + fay, "#register-button");
    await logIn(g, gus, "correct horse " + gus, "#register-button");
    await f.fill("#search-input", gus);
    await f.click(`#search-results li[data-result="${gus}"]`);

    await part("a file goes from one page to the other through the relay", async () => {
      // A name with markup in it is shown as text (names hold no "/").
      const name = "notes <b>1<b> & co.bin";
      const sent = randomBytes(1024 * 1024 + 12345);
      await pick(f, name, sent);
      const waiting = await waitPhase(f, name, "waiting");
      expect(waiting.includes(`waiting for ${gus} to accept`), "the sender does not say it waits: " + waiting);

      await g.click(`#contact-list li[data-peer="${fay}"]`);
      const offer = card(g, name);
      await offer.waitFor();
      const title = await offer.locator(".file-title").textContent();
      expect(title === `📎 ${name} (1.1 MB) from ${fay}`, "offer shown as " + title);
      expect((await offer.locator(".file-name b").count()) === 0, "the file name was read as HTML");
      // An offer not yet taken is not read yet.
      await g.waitForSelector(`#contact-list li[data-peer="${fay}"] .badge[data-unread="1"]`);

      const got = await acceptAndSave(g, name);
      expect(Buffer.compare(got, sent) === 0, `the download differs from the file sent (${got.length} of ${sent.length} bytes)`);
      expect((await waitPhase(g, name, "done")) === "received ✓", "the recipient does not say received");
      expect((await waitPhase(f, name, "done")) === "sent ✓", "the sender does not say sent");
      // Taken: acknowledged, no longer unread.
      await g.waitForSelector(`#contact-list li[data-peer="${fay}"]:not(:has(.badge))`);
      const senderPhases = await phasesOf(f, name);
      const recipientPhases = await phasesOf(g, name);
      for (const p of ["waiting", "moving", "done"]) expect(senderPhases.includes(p), `the sender never showed ${p}: ${senderPhases}`);
      for (const p of ["waiting", "moving", "checking", "done"]) expect(recipientPhases.includes(p), `the recipient never showed ${p}: ${recipientPhases}`);
      await f.screenshot({ path: join(out, "fay-sent.png") });
      await g.screenshot({ path: join(out, "gus-received.png") });
    });

    await part("a refusal reaches the waiting sender", async () => {
      const name = "unwanted.txt";
      await pick(f, name, Buffer.from("nobody wants this"));
      await waitPhase(f, name, "waiting");
      await card(g, name).locator("button[data-refuse]").click();
      expect((await waitPhase(g, name, "refused")) === "you refused this file.", "the recipient does not say refused");
      expect((await waitPhase(f, name, "refused")) === `${gus} refused the file.`, "the sender does not say refused");
      await f.waitForSelector(`#messages li.msg:not(.mine):has-text("refused your file ${name}")`);
      await f.screenshot({ path: join(out, "fay-refused.png") });
    });

    await part("a file too large for the relay says to use the command-line client", async () => {
      const name = "big.bin";
      await pick(f, name, randomBytes(RELAY_MAX + 1000));
      await waitPhase(f, name, "waiting");
      await card(g, name).locator("button[data-accept]").click();
      const sender = await waitPhase(f, name, "failed");
      expect(sender === "too large for the relay; use the parley command-line client, which can send directly.", "sender: " + sender);
      const recipient = await waitPhase(g, name, "failed");
      expect(recipient.includes("too large for the relay") || recipient.includes("too large for it"), "recipient: " + recipient);
    });

    await part("a file over the server's limit is refused with the limit", async () => {
      const name = "huge.bin";
      await pick(f, name, Buffer.alloc(FILE_MAX + 1, 7));
      const said = await waitPhase(f, name, "failed");
      expect(said.startsWith("too large for this server: ") && said.includes(String(FILE_MAX)), "sender: " + said);
    });
  }
  if (pageErrors.length) throw new Error("errors on the page: " + pageErrors.join("; "));
  failed = failures.length > 0;
} catch (e) {
  failed = true;
  console.error("browser file scenario failed: " + (e && e.stack ? e.stack : e));
}
if (failed) {
  for (const [i, ctx] of browser.contexts().entries()) {
    for (const page of ctx.pages()) await page.screenshot({ path: join(out, `files-failure-${i}.png`) }).catch(() => {});
  }
} else {
  console.log("browser file scenario passed; screenshots in " + out);
}
await browser.close();
process.exit(failed ? 1 : 0);
