import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'path';

import { bridgeSettings, completionId, findBridge, modelChoices, statusBar } from '../logic';

test('settings leave out unset values and take the key from secret storage', () => {
  const config: Record<string, unknown> = {
    serverUrl: 'http://127.0.0.1:9000', model: '', twoStep: false, maxTokens: 64,
    apiKeyEnv: '', lspPath: '/ignored', temperature: 0,
  };
  const settings = bridgeSettings((key) => config[key], 'sk-secret');
  assert.deepEqual(settings, {
    serverUrl: 'http://127.0.0.1:9000', twoStep: false, maxTokens: 64, temperature: 0,
    apiKey: 'sk-secret',
  });
  assert.equal('model' in bridgeSettings((key) => config[key]), false);
});

test('the bridge is found by setting, then bundled, then on PATH', () => {
  const files = new Set(['/ext/bin/hexacoder-lsp', '/usr/local/bin/hexacoder-lsp', '/opt/x']);
  const exists = (file: string) => files.has(file);
  assert.equal(findBridge('/opt/x', '/ext', '/usr/local/bin', 'linux', exists), '/opt/x');
  assert.equal(findBridge('/missing', '/ext', '/usr/local/bin', 'linux', exists), undefined);
  assert.equal(findBridge('', '/ext', '/usr/local/bin', 'linux', exists), '/ext/bin/hexacoder-lsp');
  files.delete('/ext/bin/hexacoder-lsp');
  assert.equal(findBridge(undefined, '/ext', '/nope::/usr/local/bin', 'linux', exists), '/usr/local/bin/hexacoder-lsp');
  assert.equal(findBridge(undefined, '/ext', undefined, 'linux', exists), undefined);
  const windows = new Set([path.join('C:\\tools', 'hexacoder-lsp.exe')]);
  assert.equal(
    findBridge(undefined, '/ext', 'C:\\nope;C:\\tools', 'win32', (f) => windows.has(f)),
    path.join('C:\\tools', 'hexacoder-lsp.exe'),
  );
});

test('the status bar shows state, model and secure mode', () => {
  assert.match(statusBar(undefined, 'secure', true).text, /loading/);
  const down = statusBar({ state: 'disconnected', message: 'connection refused' }, 'secure', true);
  assert.match(down.text, /disconnect/);
  assert.match(down.tooltip, /connection refused/);
  const ready = statusBar({ state: 'ready' }, 'secure-py', true);
  assert.equal(ready.text, '$(shield) HexaCoder: secure-py');
  assert.match(ready.tooltip, /secure mode/);
  const plain = statusBar({ state: 'ready' }, '', false);
  assert.equal(plain.text, '$(circle-outline) HexaCoder: server default');
  assert.match(plain.tooltip, /two-step imports off/);
});

test('models and adapters come from /v1/models', () => {
  const body = {
    object: 'list',
    data: [
      { id: 'qwen2.5-coder-0.5b', object: 'model', parent: null },
      { id: 'secure-py', object: 'model', parent: 'qwen2.5-coder-0.5b' },
      { object: 'model' },
    ],
  };
  assert.deepEqual(modelChoices(body), [
    { id: 'qwen2.5-coder-0.5b', description: 'base model' },
    { id: 'secure-py', description: 'adapter on qwen2.5-coder-0.5b' },
  ]);
  assert.throws(() => modelChoices({ error: { message: 'no' } }), /data/);
});

test('the completion id comes from the accept command', () => {
  assert.equal(completionId({ command: { arguments: [{ id: 'cmpl-1:inline:3' }] } }), 'cmpl-1:inline:3');
  assert.equal(completionId({}), undefined);
  assert.equal(completionId({ command: { arguments: [42] } }), undefined);
});
