//! Prometheus metrics, named after vLLM's (`vllm:` becomes `hexacoder:`) so that existing
//! dashboards carry over. Gauges and engine counters are read from the scheduler when scraped;
//! latencies are observed by the HTTP layer as events arrive.

use std::sync::Mutex;

use hexacoder_engine::SchedulerStats;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub requests_waiting: IntGauge,
    pub requests_running: IntGauge,
    pub sequences_running: IntGauge,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub e2e_latency: Histogram,
    pub request_success: IntCounterVec,
    pub prompt_tokens: IntCounter,
    pub generation_tokens: IntCounter,
    pub prefix_cache_queries: IntCounter,
    pub prefix_cache_hits: IntCounter,
    pub request_prompt_tokens: HistogramVec,
    pub lora_adapters_loaded: IntGauge,
    pub lora_adapter_bytes: IntGauge,
    pub lora_loads: IntCounterVec,
    pub lora_unloads: IntCounter,
    pub lora_load_seconds: Histogram,
    pub lora_requests: IntCounterVec,
    pub lora_requests_info: prometheus::GaugeVec,
    pub two_step_requests: IntCounterVec,
    pub two_step_first_step_seconds: Histogram,
    pub two_step_first_step_tokens: IntCounter,
    pub imports_added: IntCounter,
    pub imports_pruned: IntCounter,
    pub completion_events: IntCounterVec,
    pub verify_requests: IntCounterVec,
    pub verify_seconds: Histogram,
    pub oracle_findings: IntCounterVec,
    max_lora: usize,
    /// Counter values at the last scrape, to turn engine totals into increments.
    last: Mutex<SchedulerStats>,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0,
];
const TOKEN_LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5,
];

impl Metrics {
    /// Registers every metric.
    ///
    /// # Errors
    /// Only on a programming error (a duplicate or malformed name).
    pub fn new(max_lora: usize) -> prometheus::Result<Self> {
        let registry = Registry::new();
        macro_rules! register {
            ($metric:expr) => {{
                let metric = $metric;
                registry.register(Box::new(metric.clone()))?;
                metric
            }};
        }
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        };
        Ok(Metrics {
            http_requests: register!(IntCounterVec::new(
                Opts::new(
                    "hexacoder:http_requests_total",
                    "HTTP requests by route and status."
                ),
                &["route", "status"],
            )?),
            requests_waiting: register!(IntGauge::new(
                "hexacoder:num_requests_waiting",
                "Requests waiting for a place in the batch."
            )?),
            requests_running: register!(IntGauge::new(
                "hexacoder:num_requests_running",
                "Requests in the running batch."
            )?),
            sequences_running: register!(IntGauge::new(
                "hexacoder:num_sequences_running",
                "Samples being decoded (a request with n samples counts n)."
            )?),
            time_to_first_token: register!(histogram(
                "hexacoder:time_to_first_token_seconds",
                "Time from arrival to the first generated token.",
                LATENCY_BUCKETS
            )?),
            inter_token_latency: register!(histogram(
                "hexacoder:inter_token_latency_seconds",
                "Time between consecutive tokens of a request.",
                TOKEN_LATENCY_BUCKETS
            )?),
            e2e_latency: register!(histogram(
                "hexacoder:e2e_request_latency_seconds",
                "Time from arrival to the last token.",
                LATENCY_BUCKETS
            )?),
            request_success: register!(IntCounterVec::new(
                Opts::new(
                    "hexacoder:request_success_total",
                    "Finished samples by finish reason."
                ),
                &["finished_reason"],
            )?),
            prompt_tokens: register!(IntCounter::new(
                "hexacoder:prompt_tokens_total",
                "Prompt tokens of finished requests, cached or not."
            )?),
            generation_tokens: register!(IntCounter::new(
                "hexacoder:generation_tokens_total",
                "Tokens generated, including those of cancelled requests."
            )?),
            prefix_cache_queries: register!(IntCounter::new(
                "hexacoder:prefix_cache_queries_total",
                "Prompt tokens looked up in the prefix cache."
            )?),
            prefix_cache_hits: register!(IntCounter::new(
                "hexacoder:prefix_cache_hits_total",
                "Prompt tokens whose KV state the prefix cache supplied."
            )?),
            request_prompt_tokens: register!(HistogramVec::new(
                HistogramOpts::new(
                    "hexacoder:request_prompt_tokens",
                    "Prompt length of finished requests."
                )
                .buckets(prometheus::exponential_buckets(16.0, 2.0, 12)?),
                &["route"],
            )?),
            lora_adapters_loaded: register!(IntGauge::new(
                "hexacoder:lora_adapters_loaded",
                "LoRA adapters loaded."
            )?),
            lora_adapter_bytes: register!(IntGauge::new(
                "hexacoder:lora_adapter_bytes",
                "Bytes of LoRA weights loaded."
            )?),
            lora_loads: register!(IntCounterVec::new(
                Opts::new(
                    "hexacoder:lora_loads_total",
                    "Run-time adapter loads by result."
                ),
                &["result"],
            )?),
            lora_unloads: register!(IntCounter::new(
                "hexacoder:lora_unloads_total",
                "Run-time adapter unloads."
            )?),
            lora_load_seconds: register!(histogram(
                "hexacoder:lora_load_seconds",
                "Time to read, validate and prepare an adapter.",
                LATENCY_BUCKETS
            )?),
            lora_requests: register!(IntCounterVec::new(
                Opts::new("hexacoder:lora_requests_total", "Requests per adapter."),
                &["adapter"],
            )?),
            lora_requests_info: register!(prometheus::GaugeVec::new(
                Opts::new(
                    "hexacoder:lora_requests_info",
                    "Adapters with requests in flight (vLLM's lora_requests_info; the value is the Unix time)."
                ),
                &["running_lora_adapters", "waiting_lora_adapters", "max_lora"],
            )?),
            two_step_requests: register!(IntCounterVec::new(
                Opts::new(
                    "hexacoder:two_step_requests_total",
                    "Prompts completed with two-step generation, by whether step 1 ran or was skipped.",
                ),
                &["first_step"],
            )?),
            two_step_first_step_seconds: register!(histogram(
                "hexacoder:two_step_first_step_seconds",
                "Latency of two-step generation's first step (imports), queueing included.",
                LATENCY_BUCKETS
            )?),
            two_step_first_step_tokens: register!(IntCounter::new(
                "hexacoder:two_step_first_step_tokens_total",
                "Tokens generated by two-step generation's first step."
            )?),
            imports_added: register!(IntCounter::new(
                "hexacoder:imports_added_total",
                "Import statements two-step generation added and kept, over samples."
            )?),
            imports_pruned: register!(IntCounter::new(
                "hexacoder:imports_pruned_total",
                "Import statements step 1 added that the completion never used, over samples."
            )?),
            completion_events: register!(IntCounterVec::new(
                Opts::new(
                    "hexacoder:completion_events_total",
                    "Editor events on shown suggestions (show, accept, reject), by model or adapter, generation mode and UI.",
                ),
                &["event", "model", "mode", "kind"],
            )?),
            verify_requests: register!(IntCounterVec::new(
                Opts::new(
                    "hexacoder:verify_requests_total",
                    "Prompts answered in verify mode, by outcome: first_clean (the most probable candidate had no findings), replaced (a less probable clean candidate was returned), all_flagged (every candidate had findings), unchecked (none was found clean and the most probable could not be analyzed in time).",
                ),
                &["outcome"],
            )?),
            verify_seconds: register!(histogram(
                "hexacoder:verify_seconds",
                "Time the security oracle took to check one prompt's candidates.",
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0
                ]
            )?),
            oracle_findings: register!(IntCounterVec::new(
                Opts::new(
                    "hexacoder:oracle_findings_total",
                    "Findings the security oracle reported in verified candidates, by CWE and generation mode.",
                ),
                &["cwe", "mode"],
            )?),
            max_lora,
            registry,
            last: Mutex::new(SchedulerStats::default()),
        })
    }

    /// Adapter gauges, set before a scrape.
    pub fn set_adapters(&self, loaded: usize, bytes: usize, running: &[String]) {
        self.lora_adapters_loaded.set(loaded as i64);
        self.lora_adapter_bytes.set(bytes as i64);
        self.lora_requests_info.reset();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        // Requests wait in the engine's queue without an adapter being singled out, so
        // every adapter in flight is reported as running.
        self.lora_requests_info
            .with_label_values(&[
                running.join(",").as_str(),
                "",
                self.max_lora.to_string().as_str(),
            ])
            .set(now);
    }

    /// Reads the scheduler's gauges and counters, then renders the text exposition format.
    pub fn render(&self, stats: SchedulerStats) -> String {
        self.requests_waiting.set(stats.waiting_requests as i64);
        self.requests_running.set(stats.running_requests as i64);
        self.sequences_running.set(stats.running_sequences as i64);
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let delta = |now: u64, before: u64| now.saturating_sub(before);
            self.generation_tokens
                .inc_by(delta(stats.generated_tokens, last.generated_tokens));
            self.prefix_cache_queries.inc_by(delta(
                stats.prefix_cache.query_tokens,
                last.prefix_cache.query_tokens,
            ));
            self.prefix_cache_hits.inc_by(delta(
                stats.prefix_cache.hit_tokens,
                last.prefix_cache.hit_tokens,
            ));
            *last = stats;
        }
        let mut buffer = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%err, "encoding metrics failed");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }
}
