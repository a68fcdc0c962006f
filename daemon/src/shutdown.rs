//! Turning SIGTERM, SIGINT, SIGHUP and SIGQUIT into a cancellation every
//! task watches: no signal but SIGKILL ends kcld without its final
//! checkpoints and the release of its leases. (SIGHUP does not reload the
//! configuration yet: it stops kcld the same orderly way.)

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first of those signals. A second signal while
/// shutting down exits at once, for a person who does not want to wait.
pub fn on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let name = wait_for_signal().await;
        tracing::info!(
            signal = name,
            "shutdown requested: finishing the batches in hand"
        );
        token.cancel();
        let name = wait_for_signal().await;
        tracing::warn!(signal = name, "second signal: exiting now");
        std::process::exit(130);
    });
}

/// Waits for the next stopping signal and names it.
#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::quit()),
    ) {
        (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut quit)) => {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => "SIGHUP",
                _ = quit.recv() => "SIGQUIT",
            }
        }
        _ => {
            // Without signal handlers the default action (exit) applies.
            std::future::pending::<&'static str>().await
        }
    }
}

/// Waits for Ctrl-C.
#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "Ctrl-C"
}
