use clap::Parser;

fn main() {
    let cli = portcullis::cli::Cli::parse();
    match portcullis::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("portcullis: error: {e:#}");
            std::process::exit(2);
        }
    }
}
