//! initialize → didOpen → didChange → inlineCompletion and the rest, over real JSON-RPC on
//! stdio, against a real server.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::harness::{
    Lsp, Server, WAIT, apply_edits, free_port, lsp_binary, scripted_server, scripted_text,
    server_on,
};

const URI: &str = "file:///project/app.py";
/// A file whose import block ends in `c`, so the scripted step 1 writes `\nimport gc`.
const HEAD: &str = "import abc\n\n";

fn options(server: &Server, extra: Value) -> Value {
    let mut options = json!({"serverUrl": server.base, "debounceMs": 0, "maxTokens": 12});
    if let (Some(options), Some(extra)) = (options.as_object_mut(), extra.as_object()) {
        options.extend(extra.clone());
    }
    options
}

fn first_inline_item(result: &Value) -> &Value {
    &result["items"][0]
}

#[test]
fn inline_completion_with_the_two_step_imports_edit_applied_on_accept() {
    let server = scripted_server(0, &[]);
    let mut lsp = Lsp::spawn(&lsp_binary());
    let init = lsp.initialize(options(&server, json!({"maxTokens": 40})));
    let capabilities = &init["capabilities"];
    assert_eq!(capabilities["inlineCompletionProvider"], json!(true));
    assert_eq!(capabilities["positionEncoding"], json!("utf-16"));
    assert_eq!(capabilities["textDocumentSync"]["change"], json!(2));

    lsp.open(URI, "python", HEAD);
    // The user types `x = ` on line 2 (one incremental change per keystroke).
    for (i, c) in ["x", " ", "=", " "].iter().enumerate() {
        lsp.type_at(URI, 2 + i as i32, 2, i as u32, c);
    }
    let id = lsp.inline(URI, 2, 4);
    let result = lsp.response(id).expect("inline completion");
    let item = first_inline_item(&result);
    // Step 2 gets what step 1 left of max_tokens; the scripted text after `= ` is `gc`, then
    // `import gc` lines.
    let text = item["insertText"].as_str().expect("insertText");
    assert!(
        scripted_text("Ġ", 40).starts_with(text) && text.starts_with("gc"),
        "{text:?}"
    );
    assert_eq!(
        item["range"],
        json!({"start": {"line": 2, "character": 4}, "end": {"line": 2, "character": 4}})
    );
    let command = &item["command"];
    assert_eq!(command["command"], "hexacoder.accept");
    assert_eq!(
        command["arguments"][0]["addedImports"],
        json!(["import gc"])
    );

    // The editor inserts the text, then runs the command: the bridge asks it to apply the
    // imports edit.
    let inserted = format!("{HEAD}x = {text}");
    lsp.notify(
        "textDocument/didChange",
        json!({
            "textDocument": {"uri": URI, "version": 10},
            "contentChanges": [{"range": {"start": {"line": 2, "character": 4},
                "end": {"line": 2, "character": 4}}, "text": text}],
        }),
    );
    lsp.call("workspace/executeCommand", command.clone());
    let apply = lsp.wait_for("workspace/applyEdit", |_| true);
    let edits = apply["params"]["edit"]["changes"][URI]
        .as_array()
        .expect("edits for the document")
        .clone();
    let accepted = apply_edits(&inserted, &edits);
    assert!(
        accepted.starts_with("import abc\nimport gc\n\nx = gc"),
        "{accepted:?}"
    );
    assert_eq!(accepted.matches("import abc").count(), 1);

    // Telemetry reached the server, attributed to the model and mode.
    lsp.notify(
        "hexacoder/didShowCompletion",
        json!({"id": command["arguments"][0]["id"]}),
    );
    let deadline = Instant::now() + WAIT;
    while server.metric(
        "hexacoder:completion_events_total",
        &[
            ("event", "show"),
            ("model", "scripted"),
            ("mode", "two_step"),
        ],
    ) < 1.0
    {
        assert!(Instant::now() < deadline, "show event never counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        server.metric(
            "hexacoder:completion_events_total",
            &[("event", "accept"), ("kind", "inline")]
        ),
        1.0
    );
    // A second accept of the same suggestion is not counted again.
    lsp.call("workspace/executeCommand", command.clone());
    lsp.drain(Duration::from_millis(200));
    assert_eq!(
        server.metric("hexacoder:completion_events_total", &[("event", "accept")]),
        1.0
    );
    lsp.shutdown();
}

#[test]
fn popup_completion_carries_the_imports_edit_in_additional_text_edits() {
    let server = scripted_server(0, &[]);
    let mut lsp = Lsp::spawn(&lsp_binary());
    lsp.initialize(options(&server, json!({"maxTokens": 40})));
    let text = format!("{HEAD}x = g");
    lsp.open(URI, "python", &text);
    let result = lsp.call(
        "textDocument/completion",
        json!({"textDocument": {"uri": URI}, "position": {"line": 2, "character": 5},
               "context": {"triggerKind": 1}}),
    );
    assert_eq!(result["isIncomplete"], json!(true));
    let item = &result["items"][0];
    // The word being typed (`g`) is part of the edit, so the client's filter keeps the item.
    let edit = &item["textEdit"];
    assert_eq!(
        edit["range"],
        json!({"start": {"line": 2, "character": 4}, "end": {"line": 2, "character": 5}})
    );
    let new_text = edit["newText"].as_str().expect("newText");
    assert!(new_text.starts_with("gc"), "{new_text:?}");
    assert_eq!(
        item["insertTextMode"],
        json!(1),
        "multi-line text keeps its indentation"
    );
    let mut all = vec![edit.clone()];
    all.extend(
        item["additionalTextEdits"]
            .as_array()
            .expect("imports edit")
            .clone(),
    );
    let accepted = apply_edits(&text, &all);
    assert!(
        accepted.starts_with(&format!("import abc\nimport gc\n\nx = {new_text}")),
        "{accepted:?}"
    );
    lsp.shutdown();
}

#[test]
fn changes_sent_just_before_a_request_are_applied_first() {
    let server = scripted_server(0, &["--two-step", "off"]);
    let mut lsp = Lsp::spawn(&lsp_binary());
    lsp.initialize(options(&server, json!({"twoStep": false, "maxTokens": 6})));
    lsp.open(URI, "python", "y = 1\nx = i");
    // No waiting between the change and the request.
    lsp.type_at(URI, 2, 1, 5, "mp");
    let id = lsp.inline(URI, 1, 7);
    let result = lsp.response(id).expect("inline");
    // After `imp` the script continues `ort gc`.
    assert_eq!(first_inline_item(&result)["insertText"], json!("ort gc"));
    lsp.shutdown();
}

#[test]
fn utf16_positions_after_multibyte_text_and_crlf() {
    let server = scripted_server(0, &["--two-step", "off"]);
    let mut lsp = Lsp::spawn(&lsp_binary());
    lsp.initialize(options(&server, json!({"twoStep": false, "maxTokens": 4})));
    // `é` is one UTF-16 unit, `𝑥` two; lines end in CRLF.
    lsp.open(URI, "python", "s = 'é𝑥'\r\nt = ");
    // Insert `imp` at the end of line 1, then ask there.
    lsp.type_at(URI, 2, 1, 4, "imp");
    let result = lsp.complete_inline(URI, 1, 7).expect("inline");
    assert_eq!(first_inline_item(&result)["insertText"], json!("ort "));
    // An edit on line 0 after the surrogate pair lands where the client meant.
    lsp.type_at(URI, 3, 0, 8, " + 'x'");
    lsp.type_at(URI, 4, 1, 7, "o");
    let result = lsp.complete_inline(URI, 1, 8).expect("inline");
    assert_eq!(first_inline_item(&result)["insertText"], json!("rt g"));
    lsp.shutdown();
}

#[test]
fn cancelled_and_superseded_requests_stop_the_servers_generation() {
    let server = scripted_server(0, &["--two-step", "off"]);
    let mut lsp = Lsp::spawn(&lsp_binary());
    // Thousands of tokens: only cancellation ends it early.
    lsp.initialize(options(
        &server,
        json!({"twoStep": false, "maxTokens": 4000}),
    ));
    lsp.open(URI, "python", "x = ");
    let id = lsp.inline(URI, 0, 4);
    let running = |server: &Server| server.metric("hexacoder:num_sequences_running", &[]);
    let deadline = Instant::now() + WAIT;
    while running(&server) < 1.0 {
        assert!(Instant::now() < deadline, "the generation never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    lsp.notify("$/cancelRequest", json!({"id": id}));
    let response = lsp.response(id);
    assert!(
        response.as_ref().is_err_and(|e| e["code"] == json!(-32800)) || response == Ok(Value::Null),
        "{response:?}"
    );
    let deadline = Instant::now() + WAIT;
    while running(&server) > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the server kept generating after $/cancelRequest"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let tokens = server.metric("hexacoder:generation_tokens_total", &[]);
    assert!(
        tokens < 4000.0,
        "{tokens} tokens: the generation ran to the end"
    );

    // A newer request supersedes an older one for the same document.
    let first = lsp.inline(URI, 0, 4);
    while running(&server) < 1.0 {
        assert!(
            Instant::now() < deadline + WAIT,
            "the generation never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    lsp.type_at(URI, 2, 0, 4, "i");
    let first = lsp.response(first);
    assert_eq!(
        first,
        Ok(Value::Null),
        "the superseded request answers empty"
    );
    let deadline = Instant::now() + WAIT;
    while running(&server) > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the superseded generation kept running"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    lsp.shutdown();
}

#[test]
fn configuration_changes_take_effect_and_bad_values_are_reported() {
    let server = scripted_server(0, &["--two-step", "off"]);
    let mut lsp = Lsp::spawn(&lsp_binary());
    lsp.initialize(options(&server, json!({"twoStep": false, "maxTokens": 8})));
    // The bridge probes the server at start, so the status bar is right before any completion.
    lsp.wait_for("hexacoder/status", |p| p["state"] == "ready");
    lsp.open(URI, "python", "x = ");
    let long = lsp.complete_inline(URI, 0, 4).expect("inline");
    assert_eq!(
        first_inline_item(&long)["insertText"],
        json!(scripted_text("Ġ", 8))
    );
    // Pushed settings; the bridge probes the (possibly new) server again.
    lsp.seen.clear();
    lsp.notify(
        "workspace/didChangeConfiguration",
        json!({"settings": {"hexacoder": options(&server, json!({"twoStep": false, "maxTokens": 3}))}}),
    );
    lsp.wait_for("hexacoder/status", |p| p["state"] == "configured");
    lsp.wait_for("hexacoder/status", |p| p["state"] == "ready");
    lsp.seen.clear();
    let short = lsp.complete_inline(URI, 0, 4).expect("inline");
    // `gc\n`, whose trailing line break is trimmed.
    assert_eq!(first_inline_item(&short)["insertText"], json!("gc"));
    // Pulled settings: an empty notification makes the bridge ask.
    lsp.configuration = options(&server, json!({"twoStep": false, "maxTokens": 5}));
    lsp.notify(
        "workspace/didChangeConfiguration",
        json!({"settings": null}),
    );
    lsp.wait_for("hexacoder/status", |p| p["state"] == "configured");
    let pulled = lsp.complete_inline(URI, 0, 4).expect("inline");
    assert_eq!(
        first_inline_item(&pulled)["insertText"],
        json!(scripted_text("Ġ", 5))
    );
    // A bad value is shown to the user and changes nothing.
    lsp.notify(
        "workspace/didChangeConfiguration",
        json!({"settings": {"hexacoder": {"temperature": 7}}}),
    );
    let shown = lsp.wait_for("window/showMessage", |p| {
        p["message"]
            .as_str()
            .is_some_and(|m| m.contains("temperature"))
    });
    assert_eq!(shown["params"]["type"], json!(1));
    // Bad initialization options are an error response naming the field.
    let mut other = Lsp::spawn(&lsp_binary());
    let id = other.request(
        "initialize",
        json!({"processId": null, "capabilities": {}, "initializationOptions": {"maxTokens": 0}}),
    );
    let error = other.response(id).expect_err("maxTokens 0");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("maxTokens")),
        "{error}"
    );
    lsp.shutdown();
}

#[test]
fn a_server_that_is_down_gives_empty_answers_one_log_line_and_a_status() {
    let port = free_port();
    let mut lsp = Lsp::spawn(&lsp_binary());
    lsp.initialize(
        json!({"serverUrl": format!("http://127.0.0.1:{port}"), "debounceMs": 0,
        "model": "scripted", "twoStep": false, "maxTokens": 4}),
    );
    // The probe at start finds the server down before anyone types.
    lsp.wait_for("hexacoder/status", |p| p["state"] == "disconnected");
    lsp.open(URI, "python", "x = ");
    let started = Instant::now();
    for _ in 0..3 {
        let result = lsp.complete_inline(URI, 0, 4);
        assert_eq!(result, Ok(Value::Null));
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "typing must not block"
    );
    lsp.wait_for("hexacoder/status", |p| p["state"] == "disconnected");
    lsp.drain(Duration::from_millis(200));
    let errors = lsp.count("window/logMessage", |p| p["type"] == json!(1));
    let shown = lsp.count("window/showMessage", |_| true);
    assert_eq!((errors, shown), (1, 1), "{:?}", lsp.seen);
    // The server comes up on that port: the bridge's probes notice without anyone typing,
    // the user is told once, and completions resume.
    let server = scripted_server(port, &["--two-step", "off"]);
    lsp.wait_for("hexacoder/status", |p| p["state"] == "ready");
    let back = lsp.count("window/logMessage", |p| {
        p["message"]
            .as_str()
            .is_some_and(|m| m.contains("reachable again"))
    });
    assert_eq!(back, 1, "{:?}", lsp.seen);
    let result = lsp.complete_inline(URI, 0, 4).expect("inline");
    assert_eq!(first_inline_item(&result)["insertText"], json!("gc\ni"));
    drop(server);
    lsp.shutdown();
}

#[test]
fn a_model_the_server_does_not_serve_is_named_at_start() {
    let server = scripted_server(0, &["--two-step", "off"]);
    let mut lsp = Lsp::spawn(&lsp_binary());
    lsp.initialize(options(
        &server,
        json!({"twoStep": false, "model": "no-such-model"}),
    ));
    let shown = lsp.wait_for("window/showMessage", |p| {
        p["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"no-such-model\"") && m.contains("scripted"))
    });
    assert_eq!(shown["params"]["type"], json!(2), "a warning");
    // The server itself is up.
    lsp.wait_for("hexacoder/status", |p| p["state"] == "ready");
    lsp.shutdown();
}

/// Verify mode: the server's oracle picks among candidates; accepted code's findings (and the
/// reason a suggestion was replaced) come back as diagnostics with CWE codes, follow edits, and
/// clear when the flagged code is gone.
#[test]
fn verified_suggestions_publish_the_oracles_findings_as_diagnostics() {
    const VERIFY_URI: &str = "file:///project/verify.py";
    let dir = tempfile::tempdir().expect("tempdir");
    let model = hexacoder_testkit::write_eval_or_int_hf_dir(&dir.path().join("eval-or-int"));
    let server = server_on(dir, &model, 0, &[]);
    let mut lsp = Lsp::spawn(&lsp_binary());
    // Seeded sampling makes the candidates reproducible: this seed draws both branches.
    lsp.initialize(options(
        &server,
        json!({"verify": true, "candidates": 8, "verifyTemperature": 1.0, "seed": 11,
               "twoStep": false}),
    ));
    lsp.open(VERIFY_URI, "python", "def f(d):\n    return \n");
    let result = lsp
        .complete_inline(VERIFY_URI, 1, 11)
        .expect("inline completion");
    let item = first_inline_item(&result);
    assert_eq!(item["insertText"], "int(d)", "{result}");
    let insert = |lsp: &mut Lsp, version: i32, text: &str| {
        lsp.type_at(VERIFY_URI, version, 1, 11, text);
    };
    insert(&mut lsp, 2, "int(d)");
    lsp.call("workspace/executeCommand", item["command"].clone());
    let published = lsp.wait_for("textDocument/publishDiagnostics", |p| {
        p["uri"] == VERIFY_URI && p["diagnostics"].as_array().is_some_and(|d| !d.is_empty())
    });
    let note = &published["params"]["diagnostics"][0];
    assert_eq!(note["severity"], 3, "{note}");
    assert_eq!(note["source"], "hexacoder");
    let message = note["message"].as_str().expect("message");
    assert!(
        message.contains("replaced") && message.contains("CWE-094"),
        "{message}"
    );
    assert_eq!(
        note["range"],
        json!({"start": {"line": 1, "character": 11}, "end": {"line": 1, "character": 17}})
    );
    lsp.shutdown();

    // Greedy candidates are all the more probable eval: it comes back flagged, and accepting
    // it shows the finding on the inserted code.
    let mut lsp = Lsp::spawn(&lsp_binary());
    lsp.initialize(options(
        &server,
        json!({"verify": true, "candidates": 2, "verifyTemperature": 0.0, "twoStep": false}),
    ));
    lsp.open(VERIFY_URI, "python", "def f(d):\n    return \n");
    let result = lsp
        .complete_inline(VERIFY_URI, 1, 11)
        .expect("inline completion");
    let item = first_inline_item(&result).clone();
    assert_eq!(item["insertText"], "eval(d)", "{result}");
    insert(&mut lsp, 2, "eval(d)");
    lsp.call("workspace/executeCommand", item["command"].clone());
    let published = lsp.wait_for("textDocument/publishDiagnostics", |p| {
        p["diagnostics"].as_array().is_some_and(|d| !d.is_empty())
    });
    let diagnostic = &published["params"]["diagnostics"][0];
    assert_eq!(diagnostic["code"], "CWE-094", "{diagnostic}");
    assert_eq!(diagnostic["severity"], 1);
    assert_eq!(
        diagnostic["codeDescription"]["href"],
        "https://cwe.mitre.org/data/definitions/94.html"
    );
    assert!(
        diagnostic["message"]
            .as_str()
            .is_some_and(|m| m.contains("py-eval-exec")),
        "{diagnostic}"
    );
    assert_eq!(
        diagnostic["range"],
        json!({"start": {"line": 1, "character": 11}, "end": {"line": 1, "character": 18}})
    );
    assert_eq!(published["params"]["version"], 2);
    // A line added above moves the diagnostic with the code.
    lsp.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": VERIFY_URI, "version": 3}, "contentChanges": [
            {"range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}},
             "text": "import os\n"}]}),
    );
    let moved = lsp.wait_for("textDocument/publishDiagnostics", |p| p["version"] == 3);
    assert_eq!(
        moved["params"]["diagnostics"][0]["range"]["start"],
        json!({"line": 2, "character": 11})
    );
    // The user fixes it: the diagnostic goes.
    lsp.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": VERIFY_URI, "version": 4}, "contentChanges": [
            {"range": {"start": {"line": 2, "character": 11}, "end": {"line": 2, "character": 15}},
             "text": "int"}]}),
    );
    let cleared = lsp.wait_for("textDocument/publishDiagnostics", |p| p["version"] == 4);
    assert_eq!(cleared["params"]["diagnostics"], json!([]));
    lsp.shutdown();
}

#[test]
fn a_suggestion_inside_a_block_ends_with_the_block() {
    let server = scripted_server(0, &["--two-step", "off"]);
    let mut lsp = Lsp::spawn(&lsp_binary());
    lsp.initialize(options(&server, json!({"twoStep": false, "maxTokens": 20})));
    // The cursor's line is indented by 4: the scripted `\nimport gc` lines at column 0 end
    // the suggestion after `gc`.
    lsp.open(URI, "python", "def f():\n    x = \n");
    let inside = lsp.complete_inline(URI, 1, 8).expect("inline");
    assert_eq!(first_inline_item(&inside)["insertText"], json!("gc"));
    // At column 0 nothing ends it early.
    lsp.open("file:///project/top.py", "python", "x = ");
    let top = lsp
        .complete_inline("file:///project/top.py", 0, 4)
        .expect("inline");
    assert_eq!(
        first_inline_item(&top)["insertText"],
        json!(scripted_text("Ġ", 20))
    );
    // Turned off, the block's end does not end it either.
    lsp.notify(
        "workspace/didChangeConfiguration",
        json!({"settings": {"hexacoder": options(&server, json!({"twoStep": false, "maxTokens": 20, "stopAtBlockEnd": false}))}}),
    );
    lsp.wait_for("hexacoder/status", |p| p["state"] == "configured");
    let off = lsp.complete_inline(URI, 1, 8).expect("inline");
    assert_eq!(
        first_inline_item(&off)["insertText"],
        json!(scripted_text("Ġ", 20))
    );
    lsp.shutdown();
}
