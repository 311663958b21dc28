use std::process::ExitCode;

fn main() -> ExitCode {
    // Flags, then `STORYLINE_*` variables, then the configuration file, then the defaults.
    match storyline::cli::Cli::from_args_and_config().and_then(storyline::cli::run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("storyline: {e:#}");
            ExitCode::FAILURE
        }
    }
}
