//! Where a setting's value comes from: a flag, else `SWITCHBOARD_<NAME>`, else the key
//! `<name>` of the `--config` TOML file, else the default.
//!
//! clap does the first two and the last. The file is fed to clap as the flags it stands for,
//! appended only for the settings clap found neither as a flag nor in the environment; so
//! every value, whatever its source, goes through the same typed parser.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

/// The subcommands that take [`super::Settings`].
pub const ROLES: [&str; 5] = ["dev", "auth", "registry", "bus", "gateway"];

/// Why the command line was refused.
#[derive(Debug)]
pub enum ParseFailure {
    /// clap's own answer: a usage error, or the help or version text to print.
    Clap(clap::Error),
    /// The settings file is unreadable or has a key or value no setting takes.
    File(anyhow::Error),
}

/// Gives every long option of the role subcommands its variable, `SWITCHBOARD_` and the
/// option's name in capitals.
pub fn with_environment(command: Command) -> Command {
    command.mut_subcommands(|sub| {
        if !ROLES.contains(&sub.get_name()) {
            return sub;
        }
        sub.mut_args(|arg| {
            if arg.get_env().is_some() || arg.get_long().is_none() {
                return arg;
            }
            let name = format!("SWITCHBOARD_{}", arg.get_id().as_str().to_uppercase());
            // A few dozen names, once per process.
            arg.env(&*Box::leak(name.into_boxed_str()))
        })
    })
}

/// Parses `argv` against `command` (already [`with_environment`]), then merges the settings
/// file named by the global `config` argument.
///
/// # Errors
/// A usage error or help request from clap, or a settings file that is unreadable, not
/// TOML, or has a key or value no setting takes.
pub fn parse(command: &Command, argv: Vec<OsString>) -> Result<ArgMatches, ParseFailure> {
    let matches = command
        .clone()
        .try_get_matches_from(&argv)
        .map_err(ParseFailure::Clap)?;
    let Some((role, role_matches)) = matches.subcommand() else {
        return Ok(matches);
    };
    let config = matches
        .get_one::<PathBuf>("config")
        .or_else(|| role_matches.get_one::<PathBuf>("config"));
    let (Some(path), true) = (config, ROLES.contains(&role)) else {
        return Ok(matches);
    };
    let extra = file_arguments(path, command, role, role_matches).map_err(ParseFailure::File)?;
    if extra.is_empty() {
        return Ok(matches);
    }
    let mut argv = argv;
    argv.extend(extra);
    command
        .clone()
        .try_get_matches_from(&argv)
        .map_err(|error| {
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            ParseFailure::File(anyhow::anyhow!(
                "invalid settings file {}: {}",
                path.display(),
                first.trim_start_matches("error: ")
            ))
        })
}

/// The file's settings as `--name=value`, for each key set neither by a flag nor by the
/// environment.
fn file_arguments(
    path: &Path,
    command: &Command,
    role: &str,
    role_matches: &ArgMatches,
) -> anyhow::Result<Vec<OsString>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read settings file {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("invalid settings file {}", path.display()))?;
    let role_command = command
        .find_subcommand(role)
        .context("the role subcommand exists")?;
    let mut extra = Vec::new();
    for (key, value) in table {
        let arg = role_command
            .get_arguments()
            .find(|arg| arg.get_id() == key.as_str() && arg.get_long().is_some())
            .filter(|arg| !arg.is_global_set())
            .with_context(|| {
                format!(
                    "invalid settings file {}: unknown key {key:?}",
                    path.display()
                )
            })?;
        if matches!(
            role_matches.value_source(&key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let text = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                value.to_string()
            }
            _ => anyhow::bail!(
                "invalid settings file {}: {key} must be a string, a number or a boolean",
                path.display()
            ),
        };
        let long = arg.get_long().unwrap_or(key.as_str());
        extra.push(OsString::from(format!("--{long}={text}")));
    }
    Ok(extra)
}
