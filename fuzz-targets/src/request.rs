//! Request bodies of every POST route, through the real router (parsing, validation into
//! engine parameters, two-step, verification, adapters, streaming) on a tiny model whose
//! context, capped at 24 positions, bounds every generation. The first byte picks the route.
//!
//! Besides panics and hangs, a 500 is a finding: bad input must be answered as the client's
//! error, never as the server's.

use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use hexacoder_server::cli::{Cli, Command};
use http_body_util::BodyExt;
use tower::ServiceExt;

const ROUTES: [&str; 8] = [
    "/v1/completions",
    "/v1/chat/completions",
    "/infill",
    "/tabby/v1/completions",
    "/tabby/v1/events",
    "/v1/hexacoder/events",
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
];

fn app() -> &'static (tokio::runtime::Runtime, Router) {
    static APP: OnceLock<(tokio::runtime::Runtime, Router)> = OnceLock::new();
    APP.get_or_init(|| {
        let model = crate::tiny_model().display().to_string();
        let adapter = format!("sec={}", crate::tiny_adapter().display());
        let root = crate::scratch().display().to_string();
        let cli = Cli::parse_from([
            "hexacoder-server",
            "serve",
            "--model",
            &model,
            "--adapter",
            &adapter,
            "--no-default-adapter",
            "--served-model-name",
            "tiny-coder",
            "--max-concurrent",
            "1",
            "--request-timeout",
            "20",
            "--enable-adapter-mutation",
            "--admin-token",
            "fuzz",
            // Generation under AddressSanitizer costs about 10 ms a step here: a cap of 24
            // positions keeps `n` samples to the end of the context within the 1 s limit.
            "--max-context",
            "24",
            "--adapter-root",
            &root,
        ]);
        let Command::Serve(args) = cli.command else {
            panic!("not a serve command");
        };
        let state = hexacoder_server::serve::app_state(&args).expect("the tiny model serves");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        (runtime, hexacoder_server::http::router(state))
    })
}

/// What the target sets up once, before its first input.
pub fn init() {
    app();
}

/// One input.
pub fn run(data: &[u8]) {
    let Some((&route, body)) = data.split_first() else {
        return;
    };
    let route = ROUTES[route as usize % ROUTES.len()];
    let (runtime, router) = app();
    let request = Request::post(route)
        .header("content-type", "application/json")
        .header("x-admin-token", "fuzz")
        .body(Body::from(body.to_vec()))
        .expect("request");
    runtime.block_on(async {
        let response = router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let body = tokio::time::timeout(Duration::from_secs(30), response.into_body().collect())
            .await
            .expect("the body ends");
        assert_ne!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{route}: {:?}",
            body.map(|b| b.to_bytes())
        );
    });
}
