// What the data team sees in the running Dagster UI, in Debian's Chromium (never a downloaded
// browser): the lineage events/clicks -> affise/<name>/clicks, a partitions view with green and
// red windows, a failed window's reason, each window's verification check and each asset's
// latest-window check. Prints one JSON line of findings; exits non-zero
// with the reason when something is not on the page.
//   node check_ui.mjs <ui url> <screenshot dir> <failed asset key, e.g. affise/beta/clicks>
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const [url, outDir, failedAsset, healthyAsset] = process.argv.slice(2);
mkdirSync(outDir, { recursive: true });
const findings = {};

function fail(message) {
  console.error(message);
  process.exit(1);
}

// Never `networkidle`: the UI polls for ever. Wait for text instead, with a deadline.
async function waitForText(page, text, what, timeout = 60_000) {
  try {
    await page.getByText(text, { exact: false }).first().waitFor({ timeout });
  } catch {
    await page.screenshot({ path: `${outDir}/failed-${what}.png` });
    fail(`${what}: "${text}" never appeared on ${page.url()}`);
  }
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  const page = await browser.newPage({ viewport: { width: 1500, height: 950 } });
  const [, name] = failedAsset.split("/");
  const assetPath = `${url}/assets/${failedAsset}`;

  // Lineage: the raw events table upstream of the integration's export.
  await page.goto(`${assetPath}?view=lineage&lineageScope=upstream`);
  await waitForText(page, "events", "lineage");
  await waitForText(page, name, "lineage");
  await page.waitForTimeout(1500); // let the graph finish its layout before the picture
  await page.screenshot({ path: `${outDir}/lineage.png` });
  const lineage = await page.locator("body").innerText();
  findings.lineage = ["events", "clicks", name].every((word) => lineage.includes(word));
  if (!findings.lineage) fail(`lineage page lacks events/clicks -> ${failedAsset}`);

  // Partitions: green (materialized) and red (failed) windows side by side.
  await page.goto(`${assetPath}?view=partitions`);
  await waitForText(page, "Failed", "partitions");
  await waitForText(page, "Materialized", "partitions");
  await page.waitForTimeout(1500);
  await page.screenshot({ path: `${outDir}/partitions.png` });
  findings.partitions = (await page.locator("body").innerText()).match(/Failed[^\n]*\n?[^\n]*/)?.[0];

  // A failed window's reason: the asset's events carry the delivery failure, no secret.
  await page.goto(`${assetPath}?view=events`);
  await waitForText(page, "delivery_failed", "events");
  await page.waitForTimeout(1000);
  await page.screenshot({ path: `${outDir}/failed-window.png` });
  const events = await page.locator("body").innerText();
  findings.reason = /UserSuspended|AccessDenied|NoSuchBucket/.test(events);
  if (!findings.reason) fail("the failed window's reason (S3 error code) is not shown");

  // Verification: a healthy integration's windows say how the store's answers verified
  // them, on the asset's events next to each window.
  await page.goto(`${url}/assets/${healthyAsset}?view=events`);
  await waitForText(page, "verified_by", "verification");
  await page.waitForTimeout(1000);
  await page.screenshot({ path: `${outDir}/verified.png` });
  const verified = await page.locator("body").innerText();
  findings.verified = /etag|content-md5 only/.test(verified);
  if (!findings.verified) fail("a delivered window does not say how it was verified");

  // Freshness that means the latest window: each asset's check `latest_window_delivered`,
  // evaluated by latest_window_sensor (once a minute): the failed integration's latest window
  // is not delivered, so its check has failed; the healthy one's has passed. Pages are
  // reloaded until the verdict shows, with a deadline.
  async function checkVerdict(asset, wanted, what) {
    for (let attempt = 0; attempt < 36; attempt++) {
      await page.goto(`${url}/assets/${asset}?view=checks`);
      await waitForText(page, "latest_window_delivered", what);
      await page.waitForTimeout(5000);
      const text = await page.locator("body").innerText();
      const found = text.match(wanted)?.[0];
      if (found) return found;
    }
    await page.screenshot({ path: `${outDir}/failed-${what}.png` });
    fail(`${what}: the check latest_window_delivered of ${asset} never showed ${wanted}`);
  }
  findings.freshness = await checkVerdict(healthyAsset, /Passed|Succeeded/, "freshness");
  await page.screenshot({ path: `${outDir}/freshness-passed.png` });
  findings.late = await checkVerdict(failedAsset, /Failed/, "late");
  await page.screenshot({ path: `${outDir}/freshness-late.png` });
  console.log(JSON.stringify(findings));
} finally {
  await browser.close();
}
