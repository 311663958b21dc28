use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = storyline::cli::Cli::parse();
    match storyline::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("storyline: {e:#}");
            ExitCode::FAILURE
        }
    }
}
