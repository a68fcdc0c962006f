//! Logs through tracing, always to stderr (stdout carries records): text for
//! a terminal, JSON for log shippers. `KCLD_LOG` overrides the level filter.

use kcld_config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global log subscriber on stderr in `format`, filtered by
/// `KCLD_LOG` if set and valid, else by `level`, else `info`.
pub fn init(format: &LogFormat, level: &str) {
    let filter = std::env::var("KCLD_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // Quieten the SDK's own chatter unless asked for. The credential
    // chain's per-provider failures (with their debug dumps) are left out:
    // kcld says in one line when no provider had credentials.
    let mut filter = filter;
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (in tests) keeps the first subscriber.
    let _ = result;
}
