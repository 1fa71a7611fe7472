//! `hearth serve --config FILE`: a TOML file of settings whose keys are the long flag names.
//! Precedence: flags, then environment variables, then the file, then defaults. The file's
//! settings are appended to the command line as flags for the settings that neither a flag nor
//! the environment gave, so clap validates them exactly as it validates flags.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{Command, CommandFactory};

/// `argv` with the config file's settings appended (unchanged when there is no file).
pub fn apply<C: CommandFactory>(mut argv: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let cmd = C::command();
    // Parse problems are reported by the real parse later.
    let Ok(matches) = cmd.clone().try_get_matches_from(&argv) else { return Ok(argv) };
    let Some(("serve", sub)) = matches.subcommand() else { return Ok(argv) };
    let Some(path) = sub.get_one::<PathBuf>("config") else { return Ok(argv) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the config file {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let serve: &Command = cmd.find_subcommand("serve").expect("the serve subcommand exists. This is a bug.");
    for (key, value) in table {
        let id = key.replace('-', "_");
        let Some(arg) = serve.get_arguments().find(|a| a.get_id().as_str() == id && a.get_long().is_some()) else {
            bail!("{}: unknown setting `{key}` (settings are `hearth serve` flag names)", path.display());
        };
        if id == "config" {
            bail!("{}: `config` cannot be set from a config file", path.display());
        }
        if matches!(sub.value_source(&id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue;
        }
        let flag = format!("--{}", arg.get_long().expect("filtered above. This is a bug."));
        let scalar = |v: &toml::Value| -> anyhow::Result<String> {
            Ok(match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => bail!("{}: `{key}` has an unsupported value {other}", path.display()),
            })
        };
        match &value {
            toml::Value::Boolean(true) => argv.push(flag.into()),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for v in items {
                    argv.push(format!("{flag}={}", scalar(v)?).into());
                }
            }
            v => argv.push(format!("{flag}={}", scalar(v)?).into()),
        }
    }
    Ok(argv)
}
