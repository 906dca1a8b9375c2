//! Command line, environment and TOML file, merged with that precedence.
//!
//! clap handles flags and environment variables. The file fills in only what neither set: its
//! values are turned into the equivalent flags and parsed by clap too, so they are validated
//! exactly like the command line and errors name the offending key.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use crate::cli::Cli;

/// Parses the process's arguments, merging `serve --config FILE` underneath them.
pub fn parse() -> Result<Cli> {
    parse_from(std::env::args_os().collect())
}

/// [`parse`] for given arguments (tests). Prints help or a usage error and exits as clap does.
pub fn parse_from(args: Vec<OsString>) -> Result<Cli> {
    let matches = Cli::command().get_matches_from(args.clone());
    let Some(("serve", serve)) = matches.subcommand() else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let Some(path) = serve.get_one::<std::path::PathBuf>("config") else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let extra = file_args(path, |id| {
        matches!(
            serve.value_source(id),
            None | Some(ValueSource::DefaultValue)
        )
    })?;
    let mut merged = args;
    merged.extend(extra);
    let matches = Cli::command()
        .try_get_matches_from(merged)
        .with_context(|| format!("invalid value in {}", path.display()))?;
    Ok(Cli::from_arg_matches(&matches)?)
}

/// Flags equivalent to the file's keys that `unset` says the user did not give otherwise.
fn file_args(path: &Path, unset: impl Fn(&str) -> bool) -> Result<Vec<OsString>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
    let serve = Cli::command()
        .find_subcommand("serve")
        .cloned()
        .context("serve subcommand")?;
    let mut args = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let Some(arg) = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
        else {
            bail!(
                "unknown key {key:?} in config file {}; keys are `serve` option names such as \"port\"",
                path.display()
            );
        };
        if long == "config" {
            bail!(
                "config file {} cannot name another config file",
                path.display()
            );
        }
        let id = arg.get_id().as_str();
        if !unset(id) {
            continue;
        }
        let flag = format!("--{long}");
        let is_switch = matches!(arg.get_action(), clap::ArgAction::SetTrue);
        match value {
            toml::Value::Boolean(true) if is_switch => args.push(flag.into()),
            toml::Value::Boolean(false) if is_switch => {}
            toml::Value::String(s) => args.push(format!("{flag}={s}").into()),
            toml::Value::Integer(i) => args.push(format!("{flag}={i}").into()),
            toml::Value::Float(f) => args.push(format!("{flag}={f}").into()),
            toml::Value::Boolean(b) => args.push(format!("{flag}={b}").into()),
            toml::Value::Array(items) => {
                for item in items {
                    match item {
                        toml::Value::String(s) => args.push(format!("{flag}={s}").into()),
                        other => bail!(
                            "config key {key:?} in {} must list strings, not {}",
                            path.display(),
                            other.type_str()
                        ),
                    }
                }
            }
            other => bail!(
                "config key {key:?} in {} must be a string, number or boolean, not {}",
                path.display(),
                other.type_str()
            ),
        }
    }
    Ok(args)
}
