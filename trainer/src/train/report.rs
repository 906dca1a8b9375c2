//! The loss curve (`loss.svg`) and the adapter's model card (`README.md`).

use std::path::Path;

use plotters::prelude::*;

use super::checkpoint::{METRICS_FILE, write_atomic};
use super::{Error, Result, Trainer};

/// Plots train and validation loss per step from `run_dir/metrics.jsonl` into
/// `run_dir/loss.svg`. Nothing is written before the first step.
///
/// # Errors
/// I/O failures or a failed drawing.
pub fn plot_losses(run_dir: &Path) -> Result<()> {
    let metrics = run_dir.join(METRICS_FILE);
    let Ok(text) = std::fs::read_to_string(&metrics) else {
        return Ok(());
    };
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(step) = v["step"].as_f64() else {
            continue;
        };
        if let Some(loss) = v["loss"].as_f64() {
            train.push((step, loss));
        }
        if let Some(loss) = v["validation_loss"].as_f64() {
            validation.push((step, loss));
        }
    }
    if train.is_empty() {
        return Ok(());
    }
    let max_step = train.iter().map(|p| p.0).fold(1.0, f64::max);
    let max_loss = train
        .iter()
        .chain(&validation)
        .map(|p| p.1)
        .filter(|l| l.is_finite())
        .fold(0.1, f64::max);
    crate::eval::report::register_font()
        .map_err(|e| Error::Data(format!("drawing the loss plot: {e}")))?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        let draw = |e: &dyn std::fmt::Display| Error::Data(format!("drawing the loss plot: {e}"));
        root.fill(&WHITE).map_err(|e| draw(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("masked-token loss", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(0.0..max_step * 1.02, 0.0..max_loss * 1.05)
            .map_err(|e| draw(&e))?;
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .y_desc("loss (nats per token)")
            .draw()
            .map_err(|e| draw(&e))?;
        chart
            .draw_series(LineSeries::new(train, &BLUE))
            .map_err(|e| draw(&e))?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
        if !validation.is_empty() {
            chart
                .draw_series(LineSeries::new(validation.clone(), &RED))
                .map_err(|e| draw(&e))?
                .label("validation")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
            chart
                .draw_series(validation.iter().map(|&p| Circle::new(p, 3, RED.filled())))
                .map_err(|e| draw(&e))?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()
            .map_err(|e| draw(&e))?;
        root.present().map_err(|e| draw(&e))?;
    }
    write_atomic(&run_dir.join("loss.svg"), svg.as_bytes())
}

/// Writes `README.md` beside the adapter: what it is, how it was made, how to serve it.
///
/// # Errors
/// I/O failures.
pub fn write_card(trainer: &Trainer, validation_loss: Option<f64>) -> Result<()> {
    let s = &trainer.settings;
    let report = &trainer.dataset.report;
    let command: Vec<String> = std::env::args().collect();
    let data: Vec<String> = s.data.iter().map(|p| p.display().to_string()).collect();
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.4}"));
    let card = format!(
        "# HexaCoder security adapter\n\n\
         A LoRA adapter (PEFT format) trained with HexaCoder's masked loss: only the tokens a \
         security fix changed carry loss. Serve it with\n\n\
         ```sh\nhexacoder-server serve --model {model} --adapter secure={out}\n```\n\n\
         Requests on it default to two-step generation (imports first).\n\n\
         | | |\n|---|---|\n\
         | base model | `{model_name}` |\n\
         | base sha256 | `{model_sha}` |\n\
         | data | {data} |\n\
         | data sha256 | `{data_sha}` |\n\
         | rows | {train} train, {validation} validation ({overlap} dropped for overlapping the evaluation prompts, {no_changes} without changes) |\n\
         | LoRA | r={rank}, alpha={alpha}, dropout={dropout}, rslora={rslora}, on {targets} |\n\
         | optimizer | AdamW, lr {lr}, weight decay {wd}, warm-up {warmup} of the steps then cosine, clip {clip} |\n\
         | batch | {batch} rows per step, max {seq} tokens per row |\n\
         | steps | {steps} ({epochs} epoch(s) planned, seed {seed}) |\n\
         | tokens trained on | {tokens} |\n\
         | final train loss | {train_loss} |\n\
         | validation loss (this adapter) | {val_loss} |\n\n\
         ## Reproduce\n\n```sh\n{command}\n```\n\n\
         The loss curve is `loss.svg` in the run directory; `metrics.jsonl` has every step.\n",
        model = s.model.display(),
        out = s.out.display(),
        model_name = s.model_name,
        model_sha = trainer.model_sha256,
        data = data.join(", "),
        data_sha = trainer.data_sha256,
        train = trainer.dataset.train.len(),
        validation = trainer.dataset.validation.len(),
        overlap = report.overlapping,
        no_changes = report.read.no_changes,
        rank = s.lora.rank,
        alpha = s.lora.alpha,
        dropout = s.lora.dropout,
        rslora = s.lora.rslora,
        targets = s.lora.target_modules.join(", "),
        lr = s.optim.lr,
        wd = s.optim.weight_decay,
        warmup = s.warmup_ratio,
        clip = s.max_grad_norm,
        batch = s.batch_size,
        seq = s.max_seq_len,
        steps = trainer.state.step,
        epochs = s.epochs,
        seed = s.seed,
        tokens = trainer.state.tokens,
        train_loss = fmt(trainer.state.last_train_loss),
        val_loss = fmt(validation_loss),
        command = command.join(" "),
    );
    write_atomic(&s.out.join("README.md"), card.as_bytes())
}
