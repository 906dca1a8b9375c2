// The extension's logic that does not need the VS Code API, so that it is unit-tested in
// plain Node.

import * as path from 'path';

/** Settings sent to hexacoder-lsp (its camelCase names). */
export interface BridgeSettings {
  serverUrl?: string;
  apiKey?: string;
  apiKeyEnv?: string;
  model?: string;
  twoStep?: boolean;
  verify?: boolean;
  candidates?: number;
  verifyTemperature?: number;
  seed?: number;
  maxTokens?: number;
  temperature?: number;
  debounceMs?: number;
  contextTokens?: number;
  requestTimeoutMs?: number;
  stopAtBlockEnd?: boolean;
  maxPredictMs?: number;
}

const SETTING_KEYS: (keyof BridgeSettings)[] = [
  'serverUrl', 'apiKeyEnv', 'model', 'twoStep', 'verify', 'candidates', 'verifyTemperature',
  'seed', 'maxTokens', 'temperature', 'debounceMs', 'contextTokens', 'requestTimeoutMs',
  'stopAtBlockEnd', 'maxPredictMs',
];

/**
 * The bridge's settings from the `hexacoder.*` configuration: empty strings mean "unset" and
 * are left out, so the bridge's defaults apply. The API key comes from secret storage only.
 */
export function bridgeSettings(get: (key: string) => unknown, apiKey?: string): BridgeSettings {
  const settings: Record<string, unknown> = {};
  for (const key of SETTING_KEYS) {
    const value = get(key);
    if (value === undefined || value === null || value === '') {
      continue;
    }
    settings[key] = value;
  }
  if (apiKey) {
    settings.apiKey = apiKey;
  }
  return settings as BridgeSettings;
}

/**
 * Where hexacoder-lsp is: the configured path, else the copy bundled in the extension's
 * `bin/`, else the first `hexacoder-lsp` on PATH. `undefined` when none exists.
 */
export function findBridge(
  configured: string | undefined,
  extensionDir: string,
  pathVariable: string | undefined,
  platform: string,
  exists: (file: string) => boolean,
): string | undefined {
  const exe = platform === 'win32' ? 'hexacoder-lsp.exe' : 'hexacoder-lsp';
  if (configured) {
    return exists(configured) ? configured : undefined;
  }
  const bundled = path.join(extensionDir, 'bin', exe);
  if (exists(bundled)) {
    return bundled;
  }
  const separator = platform === 'win32' ? ';' : ':';
  for (const dir of (pathVariable ?? '').split(separator)) {
    if (!dir) {
      continue;
    }
    const candidate = path.join(dir, exe);
    if (exists(candidate)) {
      return candidate;
    }
  }
  return undefined;
}

/** What `hexacoder/status` reports. */
export interface BridgeStatus {
  state: string;
  message?: string | null;
  model?: string | null;
  twoStep?: boolean;
}

/** The status bar item: text with a codicon, and its tooltip. */
export function statusBar(status: BridgeStatus | undefined, model: string | undefined, twoStep: boolean): { text: string; tooltip: string } {
  const name = model || 'server default';
  const mode = twoStep ? 'secure' : 'plain';
  if (!status || status.state === 'starting') {
    return { text: '$(loading~spin) HexaCoder', tooltip: 'HexaCoder: starting' };
  }
  if (status.state === 'disconnected') {
    return {
      text: '$(debug-disconnect) HexaCoder',
      tooltip: `HexaCoder: server unavailable${status.message ? ` (${status.message})` : ''}`,
    };
  }
  const icon = twoStep ? '$(shield)' : '$(circle-outline)';
  return {
    text: `${icon} HexaCoder: ${name}`,
    tooltip: `HexaCoder ${status.state}: ${name}, ${mode} mode (two-step imports ${twoStep ? 'on' : 'off'})`,
  };
}

/** One entry of the model picker. */
export interface ModelChoice {
  id: string;
  description: string;
}

/** Base models and adapters from `GET /v1/models`; adapters say which base they extend. */
export function modelChoices(body: unknown): ModelChoice[] {
  const data = (body as { data?: unknown })?.data;
  if (!Array.isArray(data)) {
    throw new Error('the server answered /v1/models without a `data` list');
  }
  return data
    .filter((m): m is { id: string; parent?: string | null } => typeof m?.id === 'string')
    .map((m) => ({
      id: m.id,
      description: m.parent ? `adapter on ${m.parent}` : 'base model',
    }));
}

/** The completion id an inline item carries in its accept command, for telemetry. */
export function completionId(item: { command?: { arguments?: unknown[] } }): string | undefined {
  const first = item.command?.arguments?.[0] as { id?: unknown } | undefined;
  return typeof first?.id === 'string' ? first.id : undefined;
}
