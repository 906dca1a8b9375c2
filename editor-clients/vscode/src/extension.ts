// HexaCoder for VS Code: starts hexacoder-lsp and wires its inline completions, the status
// bar, and the commands that switch secure mode and adapters.

import * as fs from 'fs';
import * as vscode from 'vscode';
import {
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  TransportKind,
} from 'vscode-languageclient/node';

import { BridgeStatus, bridgeSettings, completionId, findBridge, modelChoices, statusBar } from './logic';

const LANGUAGES = ['python', 'c', 'cpp', 'javascript', 'javascriptreact', 'typescript',
  'typescriptreact', 'go', 'java', 'rust'];
const API_KEY_SECRET = 'hexacoder.apiKey';

let client: LanguageClient | undefined;
let status: BridgeStatus | undefined;
let item: vscode.StatusBarItem;

function config(): vscode.WorkspaceConfiguration {
  return vscode.workspace.getConfiguration('hexacoder');
}

async function settings(context: vscode.ExtensionContext) {
  const apiKey = await context.secrets.get(API_KEY_SECRET);
  return bridgeSettings((key) => config().get(key), apiKey);
}

function refreshStatus() {
  const shown = statusBar(status, config().get<string>('model'), config().get<boolean>('twoStep', true));
  item.text = shown.text;
  item.tooltip = shown.tooltip;
  item.show();
}

async function start(context: vscode.ExtensionContext, log: vscode.LogOutputChannel): Promise<void> {
  const bridge = findBridge(config().get<string>('lspPath'), context.extensionPath, process.env.PATH,
    process.platform, (file) => fs.existsSync(file));
  if (!bridge) {
    status = { state: 'disconnected', message: 'hexacoder-lsp not found' };
    refreshStatus();
    void vscode.window.showErrorMessage(
      'HexaCoder: hexacoder-lsp was not found. Set "hexacoder.lspPath" or put it on PATH '
        + '(cargo build --release -p hexacoder-lsp).');
    return;
  }
  const serverOptions: ServerOptions = {
    run: { command: bridge, transport: TransportKind.stdio },
    debug: { command: bridge, transport: TransportKind.stdio, options: { env: { ...process.env, HEXACODER_LOG: 'debug' } } },
  };
  const clientOptions: LanguageClientOptions = {
    documentSelector: LANGUAGES.map((language) => ({ language })),
    initializationOptions: await settings(context),
    outputChannel: log,
    middleware: {
      // VS Code shows the first item; tell the server, for its acceptance rate.
      provideInlineCompletionItems: async (document, position, inlineContext, token, next) => {
        const result = await next(document, position, inlineContext, token);
        const items = Array.isArray(result) ? result : result?.items;
        const first = items?.[0] as { command?: { arguments?: unknown[] } } | undefined;
        const id = first ? completionId(first) : undefined;
        if (id && client) {
          void client.sendNotification('hexacoder/didShowCompletion', { id });
        }
        return result;
      },
    },
  };
  client = new LanguageClient('hexacoder', 'HexaCoder', serverOptions, clientOptions);
  client.onNotification('hexacoder/status', (params: BridgeStatus) => {
    status = params;
    refreshStatus();
  });
  await client.start();
}

async function pushSettings(context: vscode.ExtensionContext) {
  refreshStatus();
  if (client) {
    await client.sendNotification('workspace/didChangeConfiguration', {
      settings: { hexacoder: await settings(context) },
    });
  }
}

async function pickAdapter(context: vscode.ExtensionContext) {
  const current = await settings(context);
  const base = (current.serverUrl ?? 'http://127.0.0.1:8080').replace(/\/+$/, '');
  const headers: Record<string, string> = current.apiKey ? { Authorization: `Bearer ${current.apiKey}` } : {};
  let choices;
  try {
    const response = await fetch(`${base}/v1/models`, { headers });
    choices = modelChoices(await response.json());
  } catch (error) {
    void vscode.window.showErrorMessage(`HexaCoder: cannot list models at ${base}: ${error}`);
    return;
  }
  const picked = await vscode.window.showQuickPick(
    choices.map((c) => ({ label: c.id, description: c.description })),
    { placeHolder: 'Model or adapter for completions' },
  );
  if (picked) {
    await config().update('model', picked.label, vscode.ConfigurationTarget.Global);
  }
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const log = vscode.window.createOutputChannel('HexaCoder', { log: true });
  item = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  item.command = 'hexacoder.menu';
  context.subscriptions.push(log, item);
  refreshStatus();

  const commands: Record<string, () => Promise<unknown> | unknown> = {
    'hexacoder.toggleSecureMode': () =>
      config().update('twoStep', !config().get<boolean>('twoStep', true), vscode.ConfigurationTarget.Global),
    'hexacoder.pickAdapter': () => pickAdapter(context),
    'hexacoder.setApiKey': async () => {
      const key = await vscode.window.showInputBox({ prompt: 'HexaCoder server API key', password: true });
      if (key !== undefined) {
        await context.secrets.store(API_KEY_SECRET, key);
        await pushSettings(context);
      }
    },
    'hexacoder.showLogs': () => log.show(),
    'hexacoder.restart': async () => {
      await client?.stop();
      await start(context, log);
    },
    'hexacoder.menu': async () => {
      const twoStep = config().get<boolean>('twoStep', true);
      const choice = await vscode.window.showQuickPick([
        { label: `${twoStep ? 'Turn off' : 'Turn on'} secure mode`, command: 'hexacoder.toggleSecureMode' },
        { label: 'Pick model or adapter…', command: 'hexacoder.pickAdapter' },
        { label: 'Show logs', command: 'hexacoder.showLogs' },
        { label: 'Restart language server', command: 'hexacoder.restart' },
      ]);
      if (choice) {
        await vscode.commands.executeCommand(choice.command);
      }
    },
  };
  for (const [name, run] of Object.entries(commands)) {
    context.subscriptions.push(vscode.commands.registerCommand(name, run));
  }
  context.subscriptions.push(vscode.workspace.onDidChangeConfiguration(async (event) => {
    if (event.affectsConfiguration('hexacoder.lspPath')) {
      await vscode.commands.executeCommand('hexacoder.restart');
    } else if (event.affectsConfiguration('hexacoder')) {
      await pushSettings(context);
    }
  }));
  await start(context, log);
}

export async function deactivate(): Promise<void> {
  await client?.stop();
}
