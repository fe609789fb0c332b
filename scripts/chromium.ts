/**
 * The headless Chromium of the status page's browser test, bench and screenshot: Debian's `chromium`
 * (installed by scripts/bootstrap.sh) driven by playwright-core, which downloads no browser. Each launch
 * gets a new empty profile and every background service off, so it never reaches the network on its
 * own; the pages it opens are on loopback.
 */
import { existsSync } from 'node:fs';
import { chromium, type Browser } from 'playwright-core';

export const CHROMIUM = process.env.FLEETGATE_CHROMIUM || '/usr/bin/chromium';

const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Launches the system Chromium headless (playwright gives it a new temporary profile). */
export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `no Chromium at ${CHROMIUM}: run "bash scripts/bootstrap.sh" (installs Debian's chromium), or set FLEETGATE_CHROMIUM to a Chromium binary`,
    );
  }
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS });
}
