// The extension end to end in a real VS Code: code-server (VS Code's own workbench and
// extension host, served to a browser) with the packaged .vsix installed, driven through
// headless Chromium like a user at the keyboard. It opens a Python file, types, waits for the
// ghost text, accepts it with Tab, saves, and checks the file on disk, including the import
// that the bridge adds through workspace/applyEdit.
//
// Run by tests/e2e/bridge/vscode.rs with CODE_SERVER, CHROMIUM, HEXACODER_VSIX,
// HEXACODER_LSP_BIN, HEXACODER_URL, HEXACODER_E2E_DIR (a folder holding app.py) and
// HEXACODER_E2E_PORT (a free loopback port for code-server) set.
// Prints "e2e ok" and exits 0 on success.

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import { chromium } from 'playwright-core';

const env = (name) => {
  const value = process.env[name];
  if (!value) {
    fail(`${name} is not set`);
  }
  return value;
};

function fail(message) {
  throw new Error(message);
}

const codeServer = env('CODE_SERVER');
const workspace = env('HEXACODER_E2E_DIR');
const file = path.join(workspace, 'app.py');
const home = fs.mkdtempSync(path.join(workspace, '..', 'code-server-'));
const userData = path.join(home, 'user');
const extensions = path.join(home, 'extensions');
// The test stays on loopback: code-server's extension gallery points at a closed local port.
const LOOPBACK_GALLERY = JSON.stringify({
  serviceUrl: 'http://127.0.0.1:9/gallery', itemUrl: 'http://127.0.0.1:9/item', resourceUrlTemplate: 'http://127.0.0.1:9/resource',
});

async function waitFor(what, condition, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await condition()) {
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

function installExtension() {
  const installed = spawnSync(codeServer,
    ['--user-data-dir', userData, '--extensions-dir', extensions, '--install-extension', env('HEXACODER_VSIX')],
    { encoding: 'utf8', timeout: 120_000, env: { ...process.env, HOME: home, EXTENSIONS_GALLERY: LOOPBACK_GALLERY } });
  if (installed.status !== 0 || !/successfully installed/.test(installed.stdout)) {
    fail(`code-server --install-extension: ${installed.status}\n${installed.stdout}\n${installed.stderr}`);
  }
}

function writeSettings() {
  fs.mkdirSync(path.join(userData, 'User'), { recursive: true });
  const settings = {
    'hexacoder.lspPath': env('HEXACODER_LSP_BIN'),
    'hexacoder.serverUrl': env('HEXACODER_URL'),
    'hexacoder.debounceMs': 0,
    'hexacoder.maxTokens': 40,
    'editor.inlineSuggest.enabled': true,
    // Nothing else may offer suggestions or steal focus.
    'editor.quickSuggestions': { other: false, comments: false, strings: false },
    'editor.suggestOnTriggerCharacters': false,
    'workbench.startupEditor': 'none',
    'workbench.tips.enabled': false,
    'workbench.welcomePage.walkthroughs.openOnInstall': false,
    'extensions.ignoreRecommendations': true,
    'telemetry.telemetryLevel': 'off',
    'update.mode': 'none',
    'extensions.autoCheckUpdates': false,
    'extensions.autoUpdate': false,
    'files.autoSave': 'off',
  };
  fs.writeFileSync(path.join(userData, 'User', 'settings.json'), JSON.stringify(settings, null, 2));
}

async function startCodeServer(port) {
  const child = spawn(codeServer, [
    '--auth', 'none', '--bind-addr', `127.0.0.1:${port}`, '--disable-telemetry',
    '--disable-update-check', '--disable-workspace-trust', '--disable-getting-started-override',
    '--user-data-dir', userData, '--extensions-dir', extensions, workspace,
  ], { env: { ...process.env, HOME: home, EXTENSIONS_GALLERY: LOOPBACK_GALLERY }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let log = '';
  child.stdout.on('data', (chunk) => { log += chunk; });
  child.stderr.on('data', (chunk) => { log += chunk; });
  await waitFor('code-server to listen', async () => {
    if (child.exitCode !== null) {
      fail(`code-server exited (${child.exitCode}):\n${log}`);
    }
    try {
      return (await fetch(`http://127.0.0.1:${port}/healthz`)).ok;
    } catch {
      return false;
    }
  });
  return { child, log: () => log };
}

/** The text of the visible editor's rendered lines, top to bottom (Monaco positions them absolutely). */
async function editorLines(page) {
  return page.evaluate(() => Array.from(document.querySelectorAll('.editor-instance .view-lines .view-line'))
    .sort((a, b) => parseFloat(a.style.top) - parseFloat(b.style.top))
    .map((line) => line.textContent.replace(/\u00a0/g, ' ')));
}

/**
 * Waits for the ghost text. Keys typed before VS Code has registered the language client's
 * provider ask nobody, and VS Code asks again only on the next edit; so, as a user would,
 * retype the last space if nothing shows (at most twice). Every edit goes through the
 * automatic trigger.
 */
async function waitForGhost(page, inline) {
  for (let attempt = 0; ; attempt += 1) {
    try {
      await inline.first().waitFor({ timeout: attempt < 2 ? 15_000 : 60_000 });
      return;
    } catch (error) {
      if (attempt >= 2) {
        throw error;
      }
      await page.keyboard.press('Backspace');
      await page.keyboard.type(' ');
    }
  }
}

/** Runs a command from the palette by its title, as a user would. */
async function runCommand(page, title) {
  await page.keyboard.press('F1');
  await page.locator('.quick-input-widget input').waitFor();
  await page.keyboard.type(title);
  await page.locator('.quick-input-list .monaco-list-row', { hasText: title }).first().waitFor();
  await page.keyboard.press('Enter');
}

async function run(page, port, server) {
  await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(workspace)}`);
  await page.locator('.monaco-workbench').waitFor({ timeout: 60_000 });
  // The extension activates on Python files; open one through Quick Open, as a user would.
  await page.locator('.explorer-folders-view').waitFor({ timeout: 60_000 });
  await page.keyboard.press('Control+P');
  await page.locator('.quick-input-widget input').waitFor();
  await page.keyboard.type('app.py');
  await page.locator('.quick-input-list .monaco-list-row').first().waitFor();
  await page.keyboard.press('Enter');
  const editor = page.locator('.editor-instance .monaco-editor').first();
  await editor.waitFor();
  // The bridge asks the server for its models as it starts, so the status bar says ready
  // (the shield of secure mode) before anything is typed.
  const startItem = page.locator('.statusbar-item', { hasText: 'HexaCoder' }).first();
  await startItem.waitFor({ timeout: 60_000 });
  await waitFor('the ready status before typing', async () => (await startItem.locator('.codicon-shield').count()) === 1);
  // 1-2: on the empty third line, type `x = `.
  await page.keyboard.press('Control+End');
  await page.keyboard.type('x = ', { delay: 20 });
  // 3: the ghost text.
  // Monaco draws the suggestion's first line inline at the cursor and the rest as extra lines.
  const inline = page.locator('.ghost-text-decoration');
  await waitForGhost(page, inline);
  const shown = await inline.first().innerText();
  if (!shown.startsWith('gc')) {
    fail(`unexpected ghost text ${JSON.stringify(shown)}`);
  }
  const status = await page.locator('.statusbar-item', { hasText: 'HexaCoder' }).first().innerText();
  // 4: accept with Tab; the bridge's command then applies the imports edit.
  await page.keyboard.press('Tab');
  await waitFor('the imports edit', async () => (await editorLines(page))[1] === 'import gc');
  // 5: save, and check the file on disk.
  await page.keyboard.press('Control+S');
  await waitFor('the file to be saved', async () => fs.readFileSync(file, 'utf8').includes('import gc'));
  const text = fs.readFileSync(file, 'utf8');
  const expected = 'import abc\nimport gc\n\nx = gc';
  if (!text.startsWith(expected)) {
    fail(`app.py is\n${text}\nexpected it to start with\n${expected}`);
  }
  if (text.split('import abc').length !== 2) {
    fail(`the import block was duplicated:\n${text}`);
  }
  // VS Code asks again at the new cursor, so a fresh suggestion may be showing; the accepted
  // one must not have been inserted twice.
  if (text.split('x = gc').length !== 2) {
    fail(`the suggestion was inserted more than once:\n${text}`);
  }

  // The status bar and the commands: pick the model from the server's list, turn secure mode
  // off, and accept another suggestion.
  const statusItem = page.locator('.statusbar-item', { hasText: 'HexaCoder' }).first();
  await page.keyboard.press('Escape');
  await runCommand(page, 'HexaCoder: Pick Model or Adapter');
  await page.locator('.quick-input-list .monaco-list-row', { hasText: 'scripted' }).first().waitFor();
  await page.keyboard.press('Enter');
  await waitFor('the picked model in the status bar', async () => (await statusItem.innerText()).includes('HexaCoder: scripted'));
  if ((await statusItem.locator('.codicon-shield').count()) !== 1) {
    fail('the status bar does not show secure mode as on');
  }
  await runCommand(page, 'HexaCoder: Toggle Secure Mode');
  await waitFor('secure mode off in the status bar', async () => (await statusItem.locator('.codicon-circle-outline').count()) === 1);
  await page.keyboard.press('Control+End');
  await page.keyboard.press('Enter');
  await page.keyboard.type('y = ', { delay: 20 });
  await waitForGhost(page, inline);
  await page.keyboard.press('Tab');
  await waitFor('the second suggestion', async () => (await editorLines(page)).some((line) => line === 'y = gc'));
  await page.keyboard.press('Control+S');
  await waitFor('the file to be saved again', async () => fs.readFileSync(file, 'utf8').includes('y = gc'));
  const plain = fs.readFileSync(file, 'utf8');
  // The import block is untouched; that the request went out in plain mode is checked by the
  // server's event counts (tests/e2e/bridge/vscode.rs).
  if (!plain.startsWith(expected)) {
    fail(`with secure mode off the file is\n${plain}`);
  }
  if (process.env.HEXACODER_E2E_VERBOSE) {
    console.log(server.log());
  }
  console.log('e2e ok:', JSON.stringify({ ghost: shown, status, file: plain }));
}

/** The extension's output channel (the bridge's log messages) and the extension host's log. */
function extensionLogs() {
  const found = [];
  const walk = (dir) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) {
        walk(full);
      } else if (/HexaCoder|exthost\.log/i.test(entry.name)) {
        found.push(`--- ${full}\n${fs.readFileSync(full, 'utf8')}`);
      }
    }
  };
  try {
    walk(path.join(userData, 'logs'));
  } catch (error) {
    found.push(`no logs: ${error}`);
  }
  return found.join('\n');
}

async function main() {
  installExtension();
  writeSettings();
  const port = Number(env('HEXACODER_E2E_PORT'));
  let server;
  let browser;
  // code-server runs in its own process group, so that it and its extension host (and the
  // bridge under it) all stop with the test, whichever way the test ends.
  const stop = () => {
    try {
      process.kill(-server.child.pid, 'SIGKILL');
    } catch {
      // Not started, or already gone.
    }
  };
  process.on('SIGTERM', () => { stop(); process.exit(143); });
  try {
    server = await startCodeServer(port);
    browser = await chromium.launch({
      executablePath: env('CHROMIUM'),
      args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    });
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    const pageErrors = [];
    page.on('pageerror', (error) => pageErrors.push(String(error)));
    try {
      await run(page, port, server);
    } catch (error) {
      // HEXACODER_E2E_ARTIFACTS keeps the screenshot past the test's temporary folder.
      const shot = path.join(process.env.HEXACODER_E2E_ARTIFACTS ?? home, 'vscode-e2e-failure.png');
      await page.screenshot({ path: shot }).catch(() => {});
      throw new Error(`${error.stack ?? error}\nscreenshot: ${shot}\npage errors: ${pageErrors.join('\n')}\n`
        + `code-server log:\n${server.log()}\n${extensionLogs()}`);
    }
  } finally {
    await browser?.close();
    stop();
  }
}

main().catch((error) => {
  console.error(`FAILED: ${error.stack ?? error}`);
  process.exitCode = 1;
});
