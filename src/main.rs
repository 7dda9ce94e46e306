//! The `concierge` binary: parses the command line and hands over to the library.

fn main() -> std::process::ExitCode {
    concierge::cli::main()
}
