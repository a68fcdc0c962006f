//! The `kcld` binary: parse the command line, run, turn any error into one
//! line on stderr and an exit code (2 for configuration, 1 otherwise).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before any thread exists: a thread that has an arena keeps it.
    kcld::memory::configure_allocator();
    let cli = kcld::cli::Cli::parse();
    let json = cli.json_errors();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kcld: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(kcld::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                // One JSON line, as the logs are, for a log shipper.
                let line = serde_json::json!({
                    "level": "ERROR",
                    "target": "kcld",
                    "message": e.to_string(),
                    "exit_code": e.exit_code(),
                });
                eprintln!("{line}");
            } else {
                eprintln!("kcld: error: {e}");
            }
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
