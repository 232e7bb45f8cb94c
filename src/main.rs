//! The `cloakbench` binary: all the work is in the library; see `cloakbench --help`.
fn main() -> std::process::ExitCode {
    cloakbench::cli::main()
}
