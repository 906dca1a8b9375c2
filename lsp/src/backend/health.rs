//! The server's health as the editor sees it: a probe at start and after settings change,
//! a status notification, and a backing-off watch that notices when a lost server returns.

use super::*;

impl Backend {
    /// Asks the server for its models in the background, so that the status bar says "ready"
    /// or "disconnected" when the editor starts or the settings change, not at the first
    /// completion, and a configured model the server does not serve is named at once.
    pub(super) fn probe_server(&self) {
        let backend = self.clone();
        tokio::spawn(async move {
            if let Err(error) = backend.probe().await {
                backend.report(&error).await;
            }
        });
    }

    /// One probe: on an answer, notes the server as up, remembers its first model when the
    /// settings name none, and warns when the configured model is not among its models.
    pub(super) async fn probe(&self) -> Result<(), ClientError> {
        let settings = self.settings();
        let models = self.state.server.models(&settings).await;
        if self.settings() != settings {
            // Superseded by a settings change, which probes again.
            return Ok(());
        }
        let models = models?;
        match &settings.model {
            Some(model) if !models.contains(model) => {
                let message = format!(
                    "HexaCoder: the server at {} does not serve the model {model:?}; it serves {}",
                    settings.base_url(),
                    models.join(", ")
                );
                tracing::warn!(%message, "unknown model");
                self.client
                    .show_message(MessageType::Warning, message)
                    .await;
            }
            Some(_) => {}
            None => *lock(&self.state.default_model) = models.into_iter().next(),
        }
        self.server_is(Health::Up, None).await;
        Ok(())
    }

    /// While the server is down, probes it with growing pauses, so that the status bar turns
    /// ready when it comes back even if nobody types. Stops once the health has moved on (a
    /// probe or a completion got an answer, or the settings changed, which probes anew) or a
    /// later outage has its own task.
    pub(super) fn watch_for_recovery(&self) {
        let backend = self.clone();
        let outage = self.state.outages.fetch_add(1, Ordering::Relaxed) + 1;
        tokio::spawn(async move {
            let mut pause = RECOVERY_FIRST_PAUSE;
            loop {
                tokio::time::sleep(pause).await;
                if *lock(&backend.state.health) != Health::Down
                    || backend.state.outages.load(Ordering::Relaxed) != outage
                {
                    return;
                }
                match backend.probe().await {
                    Ok(()) => return,
                    Err(error) if error.is_outage() => {
                        pause = (pause * 2).min(RECOVERY_LONGEST_PAUSE);
                    }
                    // Reachable, but refusing (a bad key, say): up, and the refusal reported.
                    Err(error) => {
                        backend.server_is(Health::Up, None).await;
                        backend.report(&error).await;
                        return;
                    }
                }
            }
        });
    }

    pub(super) async fn report(&self, error: &ClientError) {
        if error.is_outage() {
            self.server_is(Health::Down, Some(error.to_string())).await;
        } else {
            // A refused request (bad model name, prompt too long): say so once per message.
            tracing::warn!(%error, "completion failed");
            self.client
                .log_message(MessageType::Warning, format!("HexaCoder: {error}"))
                .await;
        }
    }

    /// Notes the server's health; a change is logged once and shown in the status bar.
    pub(super) async fn server_is(&self, health: Health, reason: Option<String>) {
        let previous = std::mem::replace(&mut *lock(&self.state.health), health);
        if previous == health {
            return;
        }
        let settings = self.settings();
        match health {
            Health::Down => {
                let reason = reason.unwrap_or_default();
                tracing::warn!(%reason, "server unavailable");
                self.client
                    .log_message(MessageType::Error, format!("HexaCoder: {reason}"))
                    .await;
                self.client
                    .show_message(
                        MessageType::Warning,
                        format!(
                            "HexaCoder: no completions while the server at {} is unavailable",
                            settings.base_url()
                        ),
                    )
                    .await;
                self.send_status("disconnected", Some(reason)).await;
                self.watch_for_recovery();
            }
            Health::Up => {
                if previous == Health::Down {
                    self.client
                        .log_message(MessageType::Info, "HexaCoder: server reachable again")
                        .await;
                }
                self.send_status("ready", None).await;
            }
            Health::Unknown => {}
        }
    }

    pub(super) async fn send_status(&self, state: &str, message: Option<String>) {
        let settings = self.settings();
        self.client
            .send_notification::<StatusNotification>(json!({
                "state": state,
                "message": message,
                "serverUrl": settings.base_url(),
                "model": settings.model,
                "twoStep": settings.two_step,
            }))
            .await;
    }
}
