//! `airlock-emit`: delivers this job's result. See the library crate.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(airlock_emit::main_with(
        std::env::args(),
        &mut std::io::stdin(),
    ))
}
