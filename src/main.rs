use clap::Parser;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let cli = tokenmill::cli::Cli::parse();
    match tokenmill::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if let Some(stop) = e.downcast_ref::<tokenmill::cli::Interrupted>() {
                if !stop.message.is_empty() {
                    eprintln!("{stop}");
                }
                return std::process::ExitCode::from(stop.code);
            }
            eprintln!("error: {}", tokenmill::cli::render_error(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
