//! Logs through tracing, always to stderr (stdout carries records): text for
//! a terminal, JSON for log shippers. `KCLD_LOG` overrides the level filter.

use kcld_config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Changes the log level of the running logger (a configuration reload).
type SetLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static SET_LEVEL: std::sync::OnceLock<SetLevel> = std::sync::OnceLock::new();

/// The filter for `level` (`KCLD_LOG` wins when set), with the SDK's own
/// chatter quietened unless asked for. The credential chain's per-provider
/// failures (with their debug dumps) are left out: kcld says in one line
/// when no provider had credentials.
fn filter(level: &str) -> EnvFilter {
    let mut filter = std::env::var("KCLD_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    for quiet in [
        "aws_config=warn",
        "aws_smithy_runtime=warn",
        "aws_config::meta::credentials::chain=error",
        "aws_config::imds=error",
        "aws_config::sts=error",
    ] {
        if let Ok(directive) = quiet.parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// Installs the global log subscriber on stderr in `format`, filtered by
/// `KCLD_LOG` if set and valid, else by `level`, else `info`; its level can
/// be changed later ([`set_level`]).
pub fn init(format: &LogFormat, level: &str) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => {
            let builder = builder
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter_reloading();
            let handle = builder.reload_handle();
            let _ = SET_LEVEL.set(Box::new(move |level| {
                handle.reload(filter(level)).map_err(|e| e.to_string())
            }));
            builder.try_init()
        }
        LogFormat::Json => {
            let builder = builder.json().flatten_event(true).with_filter_reloading();
            let handle = builder.reload_handle();
            let _ = SET_LEVEL.set(Box::new(move |level| {
                handle.reload(filter(level)).map_err(|e| e.to_string())
            }));
            builder.try_init()
        }
    };
    // A second init (in tests) keeps the first subscriber.
    let _ = result;
}

/// Sets the running logger's level (`log.level` syntax); an error when no
/// logger was installed by [`init`] or the level does not parse.
pub fn set_level(level: &str) -> Result<(), String> {
    if let Err(e) = EnvFilter::try_new(level) {
        return Err(format!("{level:?} is not a log level or filter: {e}"));
    }
    match SET_LEVEL.get() {
        Some(set) => set(level),
        None => Err("no logger to change".into()),
    }
}
