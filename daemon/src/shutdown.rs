//! Signals: SIGTERM, SIGINT and SIGQUIT become a cancellation every task
//! watches, so no signal but SIGKILL ends kcld without its final
//! checkpoints and the release of its leases. SIGHUP asks for a
//! configuration reload ([`crate::reload`]) and never stops kcld.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first stopping signal; a second one while
/// shutting down exits at once, for a person who does not want to wait.
/// SIGHUP sends a reload request on `reload` (or, without one, is logged
/// and ignored).
pub fn on_signal(token: CancellationToken, reload: Option<mpsc::Sender<()>>) {
    tokio::spawn(async move {
        let mut stops = 0;
        loop {
            match wait_for_signal().await {
                Signal::Hangup => match &reload {
                    // A reload already waiting covers this one too.
                    Some(tx) => {
                        let _ = tx.try_send(());
                    }
                    None => tracing::warn!(
                        "SIGHUP: this command does not reload its configuration; restart it to apply changes"
                    ),
                },
                Signal::Stop(name) if stops == 0 => {
                    stops += 1;
                    tracing::info!(
                        signal = name,
                        "shutdown requested: finishing the batches in hand"
                    );
                    token.cancel();
                }
                Signal::Stop(name) => {
                    tracing::warn!(signal = name, "second signal: exiting now");
                    std::process::exit(130);
                }
            }
        }
    });
}

enum Signal {
    Stop(&'static str),
    Hangup,
}

/// Waits for the next signal kcld handles.
#[cfg(unix)]
async fn wait_for_signal() -> Signal {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::quit()),
    ) {
        (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut quit)) => {
            tokio::select! {
                _ = term.recv() => Signal::Stop("SIGTERM"),
                _ = int.recv() => Signal::Stop("SIGINT"),
                _ = hup.recv() => Signal::Hangup,
                _ = quit.recv() => Signal::Stop("SIGQUIT"),
            }
        }
        _ => {
            // Without signal handlers the default action (exit) applies.
            std::future::pending::<Signal>().await
        }
    }
}

/// Waits for Ctrl-C.
#[cfg(not(unix))]
async fn wait_for_signal() -> Signal {
    let _ = tokio::signal::ctrl_c().await;
    Signal::Stop("Ctrl-C")
}
