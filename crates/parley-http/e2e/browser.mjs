// How every browser scenario starts Chromium: headless, the binary from
// PARLEY_CHROMIUM (or /usr/bin/chromium), a fresh temporary profile each
// launch, nothing fetched in the background that a test did not ask for.
import { chromium } from "playwright-core";

export async function launchChromium() {
  return chromium.launch({
    executablePath: process.env.PARLEY_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}
