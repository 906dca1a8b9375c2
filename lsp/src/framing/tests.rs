use super::*;

async fn frames_of(input: &[u8]) -> Vec<Frame> {
    let mut reader = FrameReader::new(BufReader::new(input));
    let mut frames = Vec::new();
    loop {
        match reader.next().await.expect("read") {
            Frame::End => return frames,
            frame => frames.push(frame),
        }
    }
}

fn framed(body: &str) -> String {
    format!("Content-Length: {}\r\n\r\n{body}", body.len())
}

const PING: &str = r#"{"jsonrpc":"2.0","id":1,"method":"shutdown"}"#;

fn refused_code(frame: &Frame) -> i64 {
    match frame {
        Frame::Refused(answer) => answer["error"]["code"].as_i64().expect("code"),
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test]
async fn good_frames_pass_and_bad_ones_are_answered_and_skipped() {
    let input = [
        framed(PING),
        framed("{not json"),
        framed(r#"{"hello": 1}"#),
        framed(r#"{"jsonrpc":"2.0","id":7,"method":5}"#),
        "Content-Length: many\r\n\r\n{}".to_string(),
        "garbage without any header\r\n\r\n".to_string(),
        framed(PING),
    ]
    .concat();
    let frames = frames_of(input.as_bytes()).await;
    assert_eq!(
        frames.first(),
        Some(&Frame::Message(PING.as_bytes().to_vec()))
    );
    assert_eq!(
        frames.last(),
        Some(&Frame::Message(PING.as_bytes().to_vec()))
    );
    let codes: Vec<i64> = frames[1..frames.len() - 1]
        .iter()
        .map(refused_code)
        .collect();
    assert_eq!(codes[..3], [PARSE_ERROR, INVALID_REQUEST, INVALID_REQUEST]);
    assert!(codes[3..].iter().all(|&c| c == PARSE_ERROR), "{codes:?}");
    // The invalid request with an id is answered under that id.
    match &frames[3] {
        Frame::Refused(answer) => assert_eq!(answer["id"], 7),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_length_past_the_limit_is_refused_without_reading_it() {
    let input = format!(
        "Content-Length: {}\r\n\r\n{{}}{}",
        MAX_BODY_BYTES + 1,
        framed(PING)
    );
    let frames = frames_of(input.as_bytes()).await;
    assert_eq!(refused_code(&frames[0]), INVALID_REQUEST);
    assert_eq!(frames[1], Frame::Message(PING.as_bytes().to_vec()));
}

#[tokio::test]
async fn a_header_without_end_is_cut_at_8_kib() {
    let input = format!("X-Long: {}", "a".repeat(MAX_HEADER_BYTES * 2)) + &framed(PING);
    let frames = frames_of(input.as_bytes()).await;
    assert_eq!(refused_code(&frames[0]), PARSE_ERROR);
    assert_eq!(frames[1], Frame::Message(PING.as_bytes().to_vec()));
}

#[tokio::test]
async fn a_length_shorter_than_the_body_costs_only_that_frame() {
    // The cut body's rest runs straight into the next frame's header.
    let body = r#"{"jsonrpc":"2.0","method":"$/noise","params":{"pad":"xxxxxxxx"}}"#;
    let input = format!("Content-Length: 10\r\n\r\n{body}{}", framed(PING));
    let frames = frames_of(input.as_bytes()).await;
    assert_eq!(
        frames.last(),
        Some(&Frame::Message(PING.as_bytes().to_vec()))
    );
    assert!(
        frames[..frames.len() - 1]
            .iter()
            .all(|f| matches!(f, Frame::Refused(_)))
    );
}
