//! The `rlhf-lab` binary: everything lives in [`rlhf_lab::cli`].
fn main() -> std::process::ExitCode {
    rlhf_lab::cli::main()
}
