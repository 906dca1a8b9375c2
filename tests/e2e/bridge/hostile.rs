//! The bridge under a hostile editor (issue 21): garbage frames, a `Content-Length` that lies,
//! a 100 MB document, 10,000 changes in a second, requests for documents never opened. Each
//! gets an error or is dropped, and the bridge keeps serving: after every one of them a
//! completion request still gets its completion.

use std::time::{Duration, Instant};

use serde_json::json;

use super::harness::{Lsp, Server, lsp_binary, scripted_server};

const URI: &str = "file:///project/app.py";

fn started(server: &Server) -> Lsp {
    let mut lsp = Lsp::spawn(&lsp_binary());
    lsp.initialize(json!({
        "serverUrl": server.base, "model": "scripted", "debounceMs": 0, "maxTokens": 4,
        "twoStep": false,
    }));
    lsp.open(URI, "python", "import abc\n\nx = ");
    lsp
}

/// The bridge still completes: `x = ` on line 2 gets the scripted model's text.
fn still_serves(lsp: &mut Lsp, uri: &str, line: u32, character: u32) {
    assert!(lsp.is_running(), "the bridge exited");
    let result = lsp
        .complete_inline(uri, line, character)
        .unwrap_or_else(|e| panic!("a completion failed after the hostile input: {e}"));
    let text = result["items"][0]["insertText"]
        .as_str()
        .unwrap_or_default();
    assert!(
        !text.is_empty(),
        "no completion after the hostile input: {result}"
    );
}

fn frame(body: &str) -> Vec<u8> {
    format!("Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

#[test]
fn garbage_frames_get_errors_and_the_bridge_keeps_serving() {
    let server = scripted_server(0, &["--two-step", "off"]);
    let mut lsp = started(&server);
    still_serves(&mut lsp, URI, 2, 4);
    // Not JSON; JSON that is no JSON-RPC message; a request with a wrong-typed params.
    lsp.send_raw(&frame("{this is not json"));
    lsp.send_raw(&frame(r#"{"hello": "world"}"#));
    lsp.send_raw(&frame(
        r#"{"jsonrpc": "2.0", "id": 9001, "method": "textDocument/inlineCompletion", "params": 42}"#,
    ));
    let error = lsp.response(9001).expect_err("wrong params are an error");
    assert!(error["code"].is_i64(), "{error}");
    // A header that is no header, then binary noise inside a frame.
    lsp.send_raw(b"Content-Type: nothing\r\nX: y\r\n\r\n");
    lsp.send_raw(&frame("\u{0}\u{1}\u{2}\u{fffd}\u{7f}"));
    still_serves(&mut lsp, URI, 2, 4);
    lsp.shutdown();
}

#[test]
fn a_content_length_that_lies_costs_only_the_frames_it_swallows() {
    let server = scripted_server(0, &["--two-step", "off"]);
    let mut lsp = started(&server);
    // Shorter than the body: the bridge reads a cut message, and the rest of the body is noise
    // before the next header.
    let body = json!({"jsonrpc": "2.0", "method": "$/noise", "params": {"pad": "x".repeat(64)}})
        .to_string();
    lsp.send_raw(format!("Content-Length: 10\r\n\r\n{body}").as_bytes());
    still_serves(&mut lsp, URI, 2, 4);
    // Longer than the body: the next frame is swallowed into this one, and then the bridge
    // reads on. (The swallowed one is lost, as in any LSP server; the one after it is not.)
    let short = r#"{"jsonrpc": "2.0", "method": "$/noise"}"#;
    let swallowed =
        frame(&json!({"jsonrpc": "2.0", "method": "$/noise", "params": {}}).to_string());
    let mut bytes = format!(
        "Content-Length: {}\r\n\r\n{short}",
        short.len() + swallowed.len()
    )
    .into_bytes();
    bytes.extend_from_slice(&swallowed);
    lsp.send_raw(&bytes);
    still_serves(&mut lsp, URI, 2, 4);
    // Not a number.
    lsp.send_raw(b"Content-Length: many\r\n\r\n{}");
    still_serves(&mut lsp, URI, 2, 4);
    lsp.shutdown();
}

#[test]
fn a_100_mb_document_and_10000_changes_in_a_second() {
    let server = scripted_server(0, &["--two-step", "off"]);
    let mut lsp = started(&server);
    // 100 MB of code, opened at once.
    let big_uri = "file:///project/big.py";
    let line = "value = compute(value) + 1\n";
    let text = line.repeat(100_000_000 / line.len()) + "x = ";
    let last = text.lines().count() as u32 - 1;
    lsp.open(big_uri, "python", &text);
    drop(text);
    still_serves(&mut lsp, big_uri, last, 4);
    // 10,000 incremental changes as fast as the pipe takes them: each types a character
    // at the start of line 1 of the small file and deletes it again.
    let started = Instant::now();
    for (i, version) in (0..10_000).zip(2..) {
        let at = json!({"line": 1, "character": 0});
        let changes = if i % 2 == 0 {
            json!([{"range": {"start": at, "end": at}, "text": "#"}])
        } else {
            json!([{"range": {"start": at, "end": {"line": 1, "character": 1}}, "text": ""}])
        };
        lsp.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": URI, "version": version}, "contentChanges": changes}),
        );
    }
    eprintln!("10,000 changes sent in {:?}", started.elapsed());
    // An even number of changes: the file is as it was, and the cursor position still valid.
    still_serves(&mut lsp, URI, 2, 4);
    lsp.shutdown();
}

#[test]
fn requests_for_documents_never_opened_are_answered() {
    let server = scripted_server(0, &["--two-step", "off"]);
    let mut lsp = started(&server);
    let never = "file:///project/never-opened.py";
    let answer = lsp.complete_inline(never, 0, 0);
    match &answer {
        Ok(result) => assert!(
            result.is_null() || result["items"].as_array().is_some_and(Vec::is_empty),
            "{result}"
        ),
        Err(error) => assert!(error["message"].as_str().is_some(), "{error}"),
    }
    let id = lsp.request(
        "textDocument/completion",
        json!({"textDocument": {"uri": never}, "position": {"line": 3, "character": 9}}),
    );
    let _ = lsp.response(id);
    // Changes and a close for a document never opened are dropped.
    lsp.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": never, "version": 2},
               "contentChanges": [{"range": {"start": {"line": 5, "character": 0},
                                             "end": {"line": 5, "character": 0}}, "text": "x"}]}),
    );
    lsp.notify(
        "textDocument/didClose",
        json!({"textDocument": {"uri": never}}),
    );
    // And positions past the end of an open one are an error, not a crash.
    let past = lsp.complete_inline(URI, 4000, 4000);
    eprintln!("past the end: {past:?}");
    lsp.drain(Duration::from_millis(100));
    still_serves(&mut lsp, URI, 2, 4);
    lsp.shutdown();
}
