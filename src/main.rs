//! The `m365-ingest` binary: parses the command line and hands over to `cli`.

fn main() -> std::process::ExitCode {
    m365_ingest::allocator::tune_malloc();
    m365_ingest::cli::main()
}
