//! LSP's base protocol on the editor's side of the pipe, checked before tower-lsp-server
//! reads it. Its codec ends the whole input stream at the first frame it cannot decode
//! (tokio-util's `FramedRead` stops after an error), so one garbage frame from an editor
//! used to end the bridge. Here every frame is read and checked first: one that would not
//! decode is answered with JSON-RPC's error (parse error or invalid request, with the
//! request's id when it has one) and never reaches the server; the rest pass unchanged.
//!
//! The answers are written to the editor between the server's own frames, never inside one:
//! one task copies whole frames from the server's output and the error answers into one
//! queue, and one writer drains it.

use serde_json::{Value, json};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::sync::mpsc;
use tower_lsp_server::jsonrpc;

/// The most header bytes one frame may have: real ones are under 100.
const MAX_HEADER_BYTES: usize = 8 << 10;
/// The largest body accepted: a 100 MB document fits, with room.
pub const MAX_BODY_BYTES: usize = 512 << 20;
/// Frames waiting for the editor: a slow editor slows the server down rather than growing
/// memory.
const QUEUE: usize = 64;

/// JSON-RPC's error codes.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;

/// What reading one frame gave.
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// A message the server can decode: its body.
    Message(Vec<u8>),
    /// A frame that is not one: the error to answer with.
    Refused(Value),
    /// The input ended.
    End,
}

/// Reads frames from the editor, resynchronizing on the next `Content-Length` header after
/// anything that is not a frame.
pub struct FrameReader<R> {
    input: R,
    /// A header line found after garbage on the same line, read before the input.
    carry: Option<Vec<u8>>,
}

impl<R: AsyncBufRead + Unpin> FrameReader<R> {
    /// Reads from `input`.
    pub fn new(input: R) -> Self {
        FrameReader { input, carry: None }
    }

    /// One header line (with its `\n`), at most [`MAX_HEADER_BYTES`]; empty at the end.
    async fn line(&mut self) -> std::io::Result<Vec<u8>> {
        if let Some(line) = self.carry.take() {
            return Ok(line);
        }
        let mut line = Vec::new();
        (&mut self.input)
            .take(MAX_HEADER_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        Ok(line)
    }

    /// Reads the next frame. After a refused one the input is positioned at the next
    /// `Content-Length` header (or its end), so reading goes on.
    pub async fn next(&mut self) -> std::io::Result<Frame> {
        let mut length: Option<Result<usize, String>> = None;
        let mut header_lines = 0;
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                return Ok(if header_lines == 0 {
                    Frame::End
                } else {
                    Frame::Refused(error_answer(
                        Value::Null,
                        PARSE_ERROR,
                        "the input ended inside a header",
                    ))
                });
            }
            if line.len() > MAX_HEADER_BYTES || !line.ends_with(b"\n") {
                skip_to_next_header(&mut self.input).await?;
                return Ok(Frame::Refused(error_answer(
                    Value::Null,
                    PARSE_ERROR,
                    "a header longer than 8 KiB",
                )));
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            if text.is_empty() {
                if header_lines == 0 {
                    // Blank lines between frames are tolerated, as the codec tolerates them.
                    continue;
                }
                break;
            }
            if !starts_with_ignore_case(&line, b"Content-") {
                // Noise: if a header starts later on this line, that is where reading resumes.
                match find(&line, b"Content-Length") {
                    Some(at) => self.carry = Some(line[at..].to_vec()),
                    None => skip_to_next_header(&mut self.input).await?,
                }
                return Ok(Frame::Refused(error_answer(
                    Value::Null,
                    PARSE_ERROR,
                    "bytes that are no LSP header were skipped",
                )));
            }
            header_lines += 1;
            if let Some((name, value)) = text.split_once(':')
                && name.trim().eq_ignore_ascii_case("content-length")
            {
                let value = value.trim();
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| format!("Content-Length {value:?} is not a number")),
                );
            }
        }
        let length = match length {
            Some(Ok(n)) if n <= MAX_BODY_BYTES => n,
            Some(Ok(n)) => {
                skip_to_next_header(&mut self.input).await?;
                return Ok(Frame::Refused(error_answer(
                    Value::Null,
                    INVALID_REQUEST,
                    format!("a message of {n} bytes; the most is {MAX_BODY_BYTES}"),
                )));
            }
            Some(Err(reason)) => {
                skip_to_next_header(&mut self.input).await?;
                return Ok(Frame::Refused(error_answer(
                    Value::Null,
                    PARSE_ERROR,
                    reason,
                )));
            }
            None => {
                return Ok(Frame::Refused(error_answer(
                    Value::Null,
                    PARSE_ERROR,
                    "a frame without Content-Length",
                )));
            }
        };
        let mut body = vec![0; length];
        if let Err(err) = self.input.read_exact(&mut body).await {
            return if err.kind() == std::io::ErrorKind::UnexpectedEof {
                Ok(Frame::End)
            } else {
                Err(err)
            };
        }
        Ok(check(body))
    }
}

fn starts_with_ignore_case(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether `body` is a message tower-lsp-server decodes, as it decodes it.
fn check(body: Vec<u8>) -> Frame {
    let value: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(err) => {
            return Frame::Refused(error_answer(
                Value::Null,
                PARSE_ERROR,
                format!("the body is not JSON: {err}"),
            ));
        }
    };
    let is_request = serde_json::from_value::<jsonrpc::Request>(value.clone()).is_ok();
    let is_response = || serde_json::from_value::<jsonrpc::Response>(value.clone()).is_ok();
    if is_request || is_response() {
        return Frame::Message(body);
    }
    let id = match value.get("id") {
        Some(id @ (Value::Number(_) | Value::String(_))) if value.get("method").is_some() => {
            id.clone()
        }
        _ => Value::Null,
    };
    Frame::Refused(error_answer(
        id,
        INVALID_REQUEST,
        "not a JSON-RPC 2.0 request, notification or response",
    ))
}

/// Discards input up to the next line that starts a `Content-Length` header.
async fn skip_to_next_header<R: AsyncBufRead + Unpin>(input: &mut R) -> std::io::Result<()> {
    const HEADER: &[u8] = b"Content-Length";
    loop {
        let buffer = input.fill_buf().await?;
        if buffer.is_empty() {
            return Ok(());
        }
        if let Some(at) = find(buffer, HEADER) {
            input.consume(at);
            return Ok(());
        }
        // Keep the last bytes: the header may straddle two reads.
        let keep = (HEADER.len() - 1).min(buffer.len());
        let drop = buffer.len() - keep;
        if drop == 0 {
            // Fewer bytes buffered than a header: take them one by one.
            input.consume(1);
        } else {
            input.consume(drop);
        }
    }
}

fn error_answer(id: Value, code: i64, message: impl Into<String>) -> Value {
    let message = message.into();
    tracing::warn!(%message, "refused a frame from the editor");
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn encode(body: &[u8]) -> Vec<u8> {
    let mut frame = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    frame.extend_from_slice(body);
    frame
}

/// Copies checked frames from `editor` to `server`, answering refused ones through `answers`.
pub async fn relay_input<R, W>(editor: R, mut server: W, answers: mpsc::Sender<Vec<u8>>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut editor = FrameReader::new(BufReader::with_capacity(64 << 10, editor));
    loop {
        match editor.next().await {
            Ok(Frame::Message(body)) => {
                if server.write_all(&encode(&body)).await.is_err() || server.flush().await.is_err()
                {
                    return;
                }
            }
            Ok(Frame::Refused(answer)) => {
                if answers
                    .send(encode(answer.to_string().as_bytes()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(Frame::End) | Err(_) => return,
        }
    }
}

/// Copies whole frames from the server's output into `frames`.
pub async fn read_server_frames<R: AsyncRead + Unpin>(server: R, frames: mpsc::Sender<Vec<u8>>) {
    let mut server = BufReader::new(server);
    loop {
        let mut length = None;
        let mut line = String::new();
        loop {
            line.clear();
            match server.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let text = line.trim_end();
            if text.is_empty() {
                break;
            }
            if let Some(value) = text.strip_prefix("Content-Length:") {
                length = value.trim().parse::<usize>().ok();
            }
        }
        let Some(length) = length else {
            continue;
        };
        let mut body = vec![0; length];
        if server.read_exact(&mut body).await.is_err() || frames.send(encode(&body)).await.is_err()
        {
            return;
        }
    }
}

/// Writes each queued frame to the editor, whole.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    mut editor: W,
    mut frames: mpsc::Receiver<Vec<u8>>,
) {
    while let Some(frame) = frames.recv().await {
        if editor.write_all(&frame).await.is_err() || editor.flush().await.is_err() {
            return;
        }
    }
}

/// The queue both writers feed.
pub fn queue() -> (mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>) {
    mpsc::channel(QUEUE)
}

#[cfg(test)]
mod tests;
