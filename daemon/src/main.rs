//! The `kcld` binary: parse the command line, run, turn any error into one
//! line on stderr and an exit code (2 for configuration, 1 otherwise).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = kcld::cli::Cli::parse();
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
            eprintln!("kcld: error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
